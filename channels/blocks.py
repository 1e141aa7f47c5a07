"""Registries of the composable blocks. A new variant is one class (in its own file) plus one line here."""

from __future__ import annotations

from channels.fading import Fading, NoFading, RayleighFading, RicianFading

# Small-scale fading, chosen by `channel.kind`.
FADING: dict[str, type[Fading]] = {
    "awgn": NoFading,
    "rayleigh": RayleighFading,
    "rician": RicianFading,
}

# Large-scale SNR per client, chosen by `channel.large_scale` (see channels.large_scale).
LARGE_SCALE = ("fixed", "uniform", "normal", "levels", "distance")

# Multiple access, chosen by `channel.access` (see channels.access).
ACCESS = ("fdma-equal", "fdma-proportional", "tdma")

# Upload precision, `quantization.bits_per_param` (see channels.quantization).
BITS_PER_PARAM = (32, 16, 8, 4)
ROUNDING = ("nearest", "stochastic")
