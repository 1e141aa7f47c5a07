"""Named channel presets: `channel: {preset: harsh}` fills these fields; any field written beside it wins.

Every non-ideal preset uses per-round block fading, 1500-byte packets, the ``threshold`` packet-error
model (m = 0.023: an update is lost iff its round's instantaneous SNR is below m; every packet sees
the same fade, matching the simulator's one fading draw per client per round; see
`channels.packet_error`) and a 100 kbit/s target rate (outage when the capacity of the client's band
falls below it).

| preset      | SNR   | fading          | losses                          |
|-------------|-------|-----------------|---------------------------------|
| ideal       | 40 dB | none (AWGN)     | none                            |
| good        | 30 dB | Rician K = 10   | packet errors, outage           |
| moderate    | 20 dB | Rician K = 5    | packet errors, outage           |
| challenging | 15 dB | Rayleigh        | packet errors, outage           |
| harsh       |  5 dB | Rayleigh        | packet errors, outage           |
"""

from __future__ import annotations

_LOSSY = {"packet_error": "threshold", "packet_bits": 12000, "per_m": 0.023, "target_rate_bps": 1.0e5}

PRESETS: dict[str, dict] = {
    "ideal": {"kind": "awgn", "snr_db": 40.0, "packet_error": "none", "target_rate_bps": None},
    "good": {"kind": "rician", "k_factor": 10.0, "snr_db": 30.0, **_LOSSY},
    "moderate": {"kind": "rician", "k_factor": 5.0, "snr_db": 20.0, **_LOSSY},
    "challenging": {"kind": "rayleigh", "snr_db": 15.0, **_LOSSY},
    "harsh": {"kind": "rayleigh", "snr_db": 5.0, **_LOSSY},
}


def merge_preset(raw: dict) -> dict:
    """The preset's fields, overridden (sub-sections key by key) by what the scenario wrote."""
    name = raw.get("preset")
    if name is None:
        return raw
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    merged = {key: (dict(value) if isinstance(value, dict) else value) for key, value in PRESETS[name].items()}
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
