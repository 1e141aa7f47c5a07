"""Payloads <-> Flower records: a payload is a dict of numpy arrays keyed by `fedsim.adapter_state`'s names."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_array_record(payload: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(value) for key, value in payload.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: record[key].numpy() for key in record}
