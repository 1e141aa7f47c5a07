"""Client availability traces: which clients are online in which rounds, as FedScale's device
availability traces describe a real population (Lai et al., "FedScale", ICML 2022).

A trace is a CSV file with a header and one row per online interval, in rounds (1-based, inclusive):

    client,from_round,to_round
    0,1,10
    1,3,4
    1,8,10

A client may have several intervals; a client without a row is never online. Every round of the run
must have at least one client online, else the trace is refused (the server would wait forever).
`clients.availability` still applies on top: a client online by the trace checks in with that probability.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedsim.types import FedsimError

COLUMNS = ("client", "from_round", "to_round")


def load_trace(path: str | Path, num_clients: int, rounds: int) -> np.ndarray:
    """Bool [rounds, num_clients]: online[t - 1, k] is whether client k is online in round t."""
    where = f"clients.availability_trace={str(path)!r}"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            header = tuple(rows[0].keys()) if rows else ()
    except FileNotFoundError:
        raise FedsimError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FedsimError(f"{where}: cannot read it as CSV ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not rows or any(column not in header for column in COLUMNS):
        raise FedsimError(f"{where}: expected a header {','.join(COLUMNS)} and at least one row")
    online = np.zeros((rounds, num_clients), dtype=bool)
    for line, row in enumerate(rows, start=2):
        try:
            client, first, last = (int(str(row[c]).strip()) for c in COLUMNS)
        except (TypeError, ValueError):
            raise FedsimError(f"{where}, line {line}: {dict(row)} is not three integers client,from_round,to_round") from None
        if not 0 <= client < num_clients or first < 1 or last < first:
            raise FedsimError(
                f"{where}, line {line}: client {client} rounds {first}..{last}; allowed: client 0..{num_clients - 1}, 1 <= from_round <= to_round"
            )
        online[first - 1 : last, client] = True
    empty = np.flatnonzero(~online.any(axis=1))
    if len(empty):
        raise FedsimError(f"{where}: no client is online in round {empty[0] + 1} (of {rounds}); every round needs one")
    return online
