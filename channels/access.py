r"""Multiple access: how the round's clients share the uplink band, and what the round's upload takes.

With total bandwidth B and the K clients scheduled this round:

* ``fdma-equal``:        :math:`B_k = B / K`; clients send in parallel, the round ends with the slowest,
  :math:`T = \max_k (t^{comp}_k + t^{air}_k)`.
* ``fdma-proportional``: :math:`B_k = B\, n_k / \sum_j n_j` with :math:`n_k` the client's data size; same timing.
* ``tdma``:              :math:`B_k = B` in sequential slots, in client order; slot k starts when both the
  previous slot and client k's computation are done, so the upload time is the sum of the slots:
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


def slot_starts(compute_s: np.ndarray, airtime_s: np.ndarray, sequential: bool) -> np.ndarray:
    """When each client starts transmitting: right after its computation (FDMA), or in TDMA slot order."""
    if not sequential:
        return np.asarray(compute_s, dtype=float)
    starts = np.empty(len(compute_s))
    end = 0.0
    for k, (compute, air) in enumerate(zip(compute_s, airtime_s)):
        starts[k] = max(end, compute)
        end = starts[k] + air
    return starts
