r"""Multiple access: how the round's clients share the uplink band, and what the round's upload takes.

With total bandwidth B and the K clients scheduled this round:

* ``fdma-equal``:        :math:`B_k = B / K`; clients send in parallel, the round ends with the slowest,
  :math:`T = \max_k (t^{comp}_k + t^{air}_k)`.
* ``fdma-proportional``: :math:`B_k = B\, n_k / \sum_j n_j` with :math:`n_k` the client's data size; same timing.
* ``tdma``:              :math:`B_k = B` in sequential slots, in an order drawn afresh each round (uniformly at
  random: a scheduler without priorities, so that no client is always last); the slot at place k starts when both
  the previous slot and its client's computation are done, so the upload time is the sum of the slots:
  :math:`s_k = \max(e_{k-1}, t^{comp}_k),\ e_k = s_k + t^{air}_k,\ T = e_K`.

In AirComp mode every client uses the whole band at once (see `channels.aircomp`).
"""

from __future__ import annotations

import numpy as np


def bandwidth_shares(access: str, total_hz: float, client_ids: np.ndarray, data_sizes: np.ndarray | None) -> np.ndarray:
    n = len(client_ids)
    if n == 0:
        return np.zeros(0)
    if access == "tdma":
        return np.full(n, float(total_hz))
    if access == "fdma-proportional" and data_sizes is not None:
        sizes = np.asarray(data_sizes, dtype=float)[np.asarray(client_ids, dtype=np.int64)]
        if sizes.sum() > 0:
            return total_hz * sizes / sizes.sum()
    return np.full(n, total_hz / n)


def is_sequential(access: str) -> bool:
    return access == "tdma"


def slot_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """Each of n clients' place in this round's TDMA slots (0 first): a uniformly random permutation."""
    return rng.permutation(n)


def slot_starts(compute_s: np.ndarray, airtime_s: np.ndarray, slot: np.ndarray | None) -> np.ndarray:
    """When each client starts transmitting: right after its computation (FDMA, `slot` None), or in TDMA slots,
    `slot[k]` being client k's place in the sequence."""
    compute_s = np.asarray(compute_s, dtype=float)
    if slot is None:
        return compute_s
    starts = np.empty(len(compute_s))
    end = 0.0
    for k in np.argsort(slot):
        starts[k] = max(end, compute_s[k])
        end = starts[k] + airtime_s[k]
    return starts
