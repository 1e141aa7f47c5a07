"""Stage `uplink`: what each client sent, metered by the channel, and decoded into float32 values.

Bits are those of the arrays the client sent (quantised codes and scales), split by kind (adapter,
Fisher estimate, control variate, split-computation activations); the server aggregates their
dequantised values, so quantisation error is real. A digital upload is charged in full once the client
transmits it, whether it arrives or is lost to outage, packet errors or the deadline cut-off (its
latency and energy are the airtime actually used); one whose TDMA slot or local training ends at or after
the deadline never transmits and is charged nothing (bytes, parameters, packets: 0); over the air only
the senders are charged, since a truncated or late client stays silent. A NaN/inf update would poison the global adapter
(and the SVD): it is never aggregated and is logged as non-finite; over the air a client would not
superpose it, so it is left out of the AirComp sum too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from channels.quantization import SCALE_SUFFIX, encoded_bits
from fedsim.payload import FISHER_PREFIX
from fedsim.round.replies import Replies


@dataclass
class Uplink:
    encoded: list[dict | None]  # per selected client, as sent (None: no reply)
    uploads: list[dict | None]  # decoded float32 values (None: no reply or non-finite)
    finite: list[bool]
    adapter_bits: np.ndarray
    fisher_bits: np.ndarray
    control_bits: np.ndarray
    activation_bytes: np.ndarray  # nano mode: activations sent up at every local step
    gradient_bytes: np.ndarray  # nano mode: gradients sent back down
    transmissions: list  # channels.base.Transmission per client
    downlinks: list
    superposition: object | None  # AirComp's received sum (channels.aircomp), else None
    params_up: np.ndarray  # parameters on the air (codes, not their scales), as charged
    intended_bits: np.ndarray  # what each reply costs at its ranks, charged or not: the policies' reward prices this

    @property
    def up_bits(self) -> np.ndarray:
        return self.adapter_bits + 8 * self.activation_bytes


def _bits(encoded: list[dict | None], layout, prefix: str | None = None) -> np.ndarray:
    def count(e: dict) -> int:
        arrays = layout.on_air(e)
        return encoded_bits(arrays if prefix is None else {k: v for k, v in arrays.items() if k.startswith(prefix)})

    return np.array([count(e) if e is not None and prefix != "" else 0 for e in encoded])


def _params(encoded: list[dict | None], layout, ranks) -> np.ndarray:
    """Parameters each client put on the air: the entries of its arrays (the server-side head and carried state
    excluded), counted from the shapes the server expects, as 4-bit codes pack two to a byte."""
    counts = []
    for e, r in zip(encoded, ranks):
        shapes = layout.shapes(r) if e is not None else {}
        counts.append(sum(int(np.prod(shapes[k])) for k in layout.on_air(e) if not k.endswith(SCALE_SUFFIX)) if e is not None else 0)
    return np.array(counts, dtype=np.int64)


def meter_uplink(pending, replies: Replies, layout, channel, bits_per_param: int, algorithm, samples: np.ndarray, max_rank: int, rng) -> Uplink:
    """Meter the round's replies on `channel` (uplink or AirComp superposition, then the downlink); the uploads were
    encoded at `bits_per_param` (the scenario's quantization)."""
    clients = [int(c) for c in pending.clients]
    encoded = [replies.payload(c) for c in clients]
    metrics = [replies.metrics(c) or {} for c in clients]
    activation_bytes = np.array([int(m.get("bytes-up-activations", 0)) for m in metrics])
    gradient_bytes = np.array([int(m.get("bytes-down-gradients", 0)) for m in metrics])
    uploads = [layout.decode(e, r, bits_per_param) if e is not None else None for e, r in zip(encoded, pending.ranks)]
    finite = [u is None or all(np.isfinite(v).all() for v in u.values()) for u in uploads]
    uploads = [u if ok else None for u, ok in zip(uploads, finite)]
    adapter_bits = _bits(encoded, layout)
    fisher_bits = _bits(encoded, layout, FISHER_PREFIX)
    control_bits = _bits(encoded, layout, algorithm.upload_prefix or "")
    params_up = _params(encoded, layout, pending.ranks)
    up_bits = adapter_bits + 8 * activation_bytes
    superposition = None
    if channel.mode == "aircomp":
        sizes = np.array([float(m["num-examples"]) if c in replies.received else 0.0 for c, m in zip(clients, metrics)])
        shapes = layout.shapes([max_rank] * len(layout.global_state.A))
        transmissions, superposition = channel.superpose(uploads, sizes, pending.states, rng, shapes, samples, bits_per_param)
        silent = ~np.array([t.delivered for t in transmissions], dtype=bool)
        adapter_bits, fisher_bits, control_bits, params_up = (np.where(silent, 0, x) for x in (adapter_bits, fisher_bits, control_bits, params_up))
    else:
        transmissions = channel.uplink(pending.states, up_bits, rng, samples)
        # The deadline came before its slot or the end of its training: it never transmitted, so it is charged nothing.
        unsent = np.array([t.n_bits == 0 for t in transmissions], dtype=bool) & (up_bits > 0)
        adapter_bits, fisher_bits, control_bits, params_up, activation_bytes = (
            np.where(unsent, 0, x) for x in (adapter_bits, fisher_bits, control_bits, params_up, activation_bytes)
        )
    downlinks = channel.downlink(pending.states, (pending.bytes_down + gradient_bytes) * 8)
    return Uplink(
        encoded=encoded,
        uploads=uploads,
        finite=finite,
        adapter_bits=adapter_bits,
        fisher_bits=fisher_bits,
        control_bits=control_bits,
        activation_bytes=activation_bytes,
        gradient_bytes=gradient_bytes,
        transmissions=transmissions,
        downlinks=downlinks,
        superposition=superposition,
        params_up=params_up,
        intended_bits=up_bits,
    )
