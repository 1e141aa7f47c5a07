"""The upload layout the server expects back: tensor names and shapes at given ranks, which arrays
cross the air, and decoding what a client sent into float32 values."""

from __future__ import annotations

import numpy as np

from channels.quantization import dequantize_payload
from fedsim.adapter_state import AdapterState
from fedsim.payload import FISHER_PREFIX, MEMORY_PREFIX, a_key, b_key


class UploadLayout:
    def __init__(self, global_state: AdapterState, algorithm, fisher: bool, server_side_keys: set[str] | frozenset[str]):
        self.global_state = global_state  # shapes only: they never change during a run
        self.algorithm = algorithm
        self.fisher = fisher
        self.server_side_keys = server_side_keys

    def shapes(self, ranks) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors in a payload at per-layer `ranks`."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, rank in enumerate(ranks):
            if rank > 0:
                shapes[a_key(i)] = (int(rank), self.global_state.A[i].shape[1])
                shapes[b_key(i)] = (self.global_state.B[i].shape[0], int(rank))
        if self.fisher:  # the Fisher estimate has the factors' shapes
            shapes |= {f"{FISHER_PREFIX}{key}": shape for key, shape in shapes.items()}
        for key, value in self.global_state.head.items():
            shapes[key] = tuple(value.shape)
        return shapes | self.algorithm.upload_shapes(shapes)

    def on_air(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays of a message that cross the air: not the server-side head of nano mode, nor the state the
        simulator carries for a client (`memory.` keys)."""
        return {k: v for k, v in encoded.items() if k not in self.server_side_keys and not k.startswith(MEMORY_PREFIX)}

    def decode(self, encoded: dict[str, np.ndarray], ranks, bits_per_param: int) -> dict[str, np.ndarray]:
        """The float32 values the client sent: its changes (`average: updates`) or its adapter (`models`)."""
        decoded = dequantize_payload(self.on_air(encoded), bits_per_param, self.shapes(ranks))
        return decoded | {k: np.asarray(encoded[k], dtype=np.float32) for k in self.server_side_keys if k in encoded}
