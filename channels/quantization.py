r"""Quantisation of uploads: what the client really sends, and what the server really gets back.

For ``bits_per_param`` b < 32, every tensor x is sent as integer codes plus one float32 scale
(symmetric, per tensor, L = 2^{b-1} - 1 levels each side):

.. math::
    s = \max_i |x_i| / L,\qquad
    q_i = \mathrm{round}(x_i / s) \ \text{(nearest)}\quad\text{or}\quad
    q_i = \lfloor x_i / s + u_i \rfloor,\ u_i \sim U[0, 1) \ \text{(stochastic)},\qquad
    \hat x_i = s\, q_i .

Nearest rounding errs by at most s/2; stochastic rounding is unbiased, :math:`\mathbb E[\hat x_i] = x_i`,
with error below s. Codes travel as int16 (b = 16), int8 (b = 8) or two per byte (b = 4, flattened,
the last byte half-filled when the count is odd), and the scale as one float32 under the key
``"<name>/scale"``. So an upload of tensors :math:`x^{(j)}` with :math:`n_j` entries costs exactly
:math:`\sum_j (\lceil n_j b / 8 \rceil + 4)` bytes, counted from the arrays sent. b = 32 sends float32 as is.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from channels.blocks import BITS_PER_PARAM, ROUNDING

SCALE_SUFFIX = "/scale"
CODE_DTYPES = {16: np.int16, 8: np.int8, 4: np.uint8}


class QuantizationConfig(BaseModel):
    """The scenario's `quantization:` section: how a client encodes its upload, whatever the radio."""

    model_config = ConfigDict(extra="forbid")

    bits_per_param: Literal[BITS_PER_PARAM] = Field(  # type: ignore[valid-type]
        32, description="Upload precision in bits: 32 (float32), 16, 8 or 4 (integer codes + a float32 scale per tensor)."
    )
    rounding: Literal[ROUNDING] = Field("nearest", description="Quantisation rounding: nearest or stochastic (unbiased).")  # type: ignore[valid-type]


def levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def quantize_tensor(x: np.ndarray, bits: int, rounding: str, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """(codes as sent, scale as float32[1]) for one tensor."""
    values = np.asarray(x, dtype=np.float64).ravel()
    top = levels(bits)
    peak = float(np.max(np.abs(values), initial=0.0))
    scale = np.float32(peak / top if peak > 0 else 1.0)
    scaled = values / float(scale)
    if rounding == "stochastic":
        if rng is None:
            raise ValueError("stochastic rounding needs a random generator")
        q = np.floor(scaled + rng.random(scaled.shape))
    else:
        q = np.rint(scaled)
    q = np.clip(q, -top, top).astype(np.int64)
    if bits == 4:
        nibbles = (q + 8).astype(np.uint8)  # -7..7 -> 1..15
        if len(nibbles) % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        codes = (nibbles[0::2] << 4) | nibbles[1::2]
    else:
        codes = q.astype(CODE_DTYPES[bits]).reshape(np.shape(x))
    return np.ascontiguousarray(codes), np.array([scale], dtype=np.float32)


def dequantize_tensor(codes: np.ndarray, scale: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if bits == 4:
        packed = np.asarray(codes, dtype=np.uint8).ravel()
        nibbles = np.empty(2 * len(packed), dtype=np.int64)
        nibbles[0::2], nibbles[1::2] = packed >> 4, packed & 0x0F
        q = nibbles[:count] - 8
    else:
        q = np.asarray(codes).astype(np.int64).ravel()
    if q.size != count:
        raise ValueError(f"quantised tensor has {q.size} codes, expected {count} for shape {shape}")
    return (q.astype(np.float64) * float(scale[0])).astype(np.float32).reshape(shape)


def quantize_payload(payload: dict[str, np.ndarray], bits: int, rounding: str = "nearest", rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """What the client puts on the air: float32 tensors as is (b = 32), else codes + per-tensor scales."""
    if bits == 32:
        return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in payload.items()}
    encoded: dict[str, np.ndarray] = {}
    for key in sorted(payload):
        encoded[key], encoded[key + SCALE_SUFFIX] = quantize_tensor(payload[key], bits, rounding, rng)
    return encoded


def dequantize_payload(encoded: dict[str, np.ndarray], bits: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The float32 payload the server aggregates; `shapes` are the tensor shapes the server expects."""
    if bits == 32:
        return {key: np.asarray(value, dtype=np.float32) for key, value in encoded.items()}
    return {key: dequantize_tensor(encoded[key], encoded[key + SCALE_SUFFIX], bits, shapes[key]) for key in encoded if not key.endswith(SCALE_SUFFIX)}


def encoded_bits(encoded: dict[str, np.ndarray]) -> int:
    """Bits on the air: the bytes of every array sent (codes and scales)."""
    return int(sum(np.asarray(v).nbytes for v in encoded.values())) * 8


def expected_bytes(shapes: dict[str, tuple[int, ...]], bits: int) -> int:
    """Closed form of `encoded_bits(...) / 8` for tensors of these shapes."""
    counts = [int(np.prod(s)) for s in shapes.values()]
    if bits == 32:
        return 4 * sum(counts)
    return sum(-(-n * bits // 8) + 4 for n in counts)
