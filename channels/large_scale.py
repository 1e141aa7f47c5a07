r"""Large-scale SNR of each client: fixed, a per-client distribution, or distance-based.

Every draw here is fixed for a client for the whole run (heterogeneity, not
fading; under ``distance`` the noise, and so the SNR, still follows the client's share of the band,
which FDMA changes with the round's number of clients): the per-client draws and the placement come from generators seeded by
(run seed, block of 256 client ids), so a client keeps its SNR whichever rounds it is picked in
and however many clients the run has.

* ``fixed``:    :math:`\bar\gamma_k = \mathrm{snr\_db}`.
* ``uniform``:  :math:`\bar\gamma_k \sim \mathcal U[\mathrm{snr\_db} - s,\ \mathrm{snr\_db} + s]` dB, s = ``snr_spread_db``.
* ``normal``:   :math:`\bar\gamma_k \sim \mathcal N(\mathrm{snr\_db}, s^2)` dB.
* ``levels``:   :math:`\bar\gamma_k` is one of ``snr_levels_db``, each equally likely (e.g. to train a
  policy on some SNRs and test it on others in between).
* ``distance``: clients dropped uniformly over an annulus :math:`d_{min} \le d \le d_{max}`
  (:math:`d = \sqrt{U(d_{min}^2, d_{max}^2)}`), log-distance path loss with exponent
  :math:`\alpha` and log-normal shadowing :math:`X_\sigma`, thermal noise
  :math:`N_0 = -174` dBm/Hz plus the receiver's noise figure over the client's band :math:`B_k`:

  .. math::
      \mathrm{PL}(d) = \mathrm{PL}(d_0) + 10\,\alpha \log_{10}(d / d_0) \quad [\mathrm{dB}]

      \bar\gamma_k = P_{\mathrm{dBm}} - \mathrm{PL}(d_k) - X_{\sigma,k} - \left(-174 + 10\log_{10} B_k + \mathrm{NF}\right) \quad [\mathrm{dB}]

  so two clients at :math:`d_1, d_2` (same band, no shadowing) differ by exactly
  :math:`10\,\alpha\log_{10}(d_2/d_1)` dB.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

NOISE_PSD_DBM_HZ = -174.0  # thermal noise at 290 K
CLIENT_BLOCK = 256  # per-client draws are made this many clients at a time, each block from its own seed


class GeometryConfig(BaseModel):
    """Placement and propagation for `large_scale: distance`."""

    model_config = ConfigDict(extra="forbid")

    min_distance_m: float = Field(10.0, gt=0, description="Nearest client distance from the server (m).")
    max_distance_m: float = Field(500.0, gt=0, description="Farthest client distance (m); clients are uniform over the annulus.")
    path_loss_exponent: float = Field(3.5, gt=0, description="alpha of the log-distance path loss.")
    reference_distance_m: float = Field(1.0, gt=0, description="d0 of the log-distance path loss (m).")
    reference_loss_db: float = Field(40.0, description="Path loss at d0 in dB (about free space at 1 m, 2.4 GHz).")
    shadowing_db: float = Field(6.0, ge=0, description="Std of log-normal shadowing in dB (fixed per client); 0 = off.")
    noise_figure_db: float = Field(7.0, ge=0, description="Receiver noise figure in dB, added to -174 dBm/Hz.")


def watts_to_dbm(power_w: float) -> float:
    return 10.0 * np.log10(power_w * 1e3)


def path_loss_db(distance_m: np.ndarray, geometry: GeometryConfig) -> np.ndarray:
    """Log-distance path loss PL(d) = PL(d0) + 10 alpha log10(d / d0), in dB."""
    d = np.asarray(distance_m, dtype=float)
    return geometry.reference_loss_db + 10.0 * geometry.path_loss_exponent * np.log10(d / geometry.reference_distance_m)


def distance_snr_db(distance_m, tx_power_w: float, bandwidth_hz, geometry: GeometryConfig, shadowing_db=0.0) -> np.ndarray:
    """Received SNR in dB at `distance_m` over `bandwidth_hz` (see the module docstring)."""
    noise_dbm = NOISE_PSD_DBM_HZ + 10.0 * np.log10(np.asarray(bandwidth_hz, dtype=float)) + geometry.noise_figure_db
    return watts_to_dbm(tx_power_w) - path_loss_db(distance_m, geometry) - np.asarray(shadowing_db) - noise_dbm


class LargeScaleSNR:
    """Per-client large-scale SNR in dB; `kind` is one of `channels.blocks.LARGE_SCALE`."""

    def __init__(self, kind: str, snr_db: float, spread_db: float, geometry: GeometryConfig, tx_power_w: float, seed: int, levels_db=()):
        self.kind = kind
        self.levels_db = np.asarray(levels_db, dtype=float)
        self.snr_db = snr_db
        self.spread_db = spread_db
        self.geometry = geometry
        self.tx_power_w = tx_power_w
        self.seed = seed
        # Per-client draws, grown on demand: column 0 = SNR offset (dB) or distance (m), column 1 = shadowing (dB).
        self._drawn = np.zeros((0, 2))

    def _client_draws(self, client_ids: np.ndarray) -> np.ndarray:
        need = int(client_ids.max(initial=-1)) + 1
        while len(self._drawn) < need:  # clients come in seeded blocks, so a client's draw never depends on the others
            self._drawn = np.vstack([self._drawn, self._draw_block(len(self._drawn) // CLIENT_BLOCK)])
        return self._drawn[client_ids]

    def _draw_block(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7020, block])
        first, second = np.zeros(CLIENT_BLOCK), np.zeros(CLIENT_BLOCK)
        if self.kind == "uniform":
            first = rng.uniform(-self.spread_db, self.spread_db, CLIENT_BLOCK)
        elif self.kind == "normal":
            first = rng.normal(0.0, self.spread_db, CLIENT_BLOCK)
        elif self.kind == "levels":
            first = rng.choice(self.levels_db, CLIENT_BLOCK) - self.snr_db
        elif self.kind == "distance":
            g = self.geometry
            first = np.sqrt(rng.uniform(g.min_distance_m**2, g.max_distance_m**2, CLIENT_BLOCK))
            second = rng.normal(0.0, g.shadowing_db, CLIENT_BLOCK)
        return np.stack([first, second], axis=1)

    def distances(self, client_ids: np.ndarray) -> np.ndarray:
        """Client distances in metres (`distance` kind only)."""
        return self._client_draws(np.asarray(client_ids, dtype=np.int64))[:, 0]

    def draw(self, client_ids: np.ndarray, bandwidth_hz: np.ndarray) -> np.ndarray:
        """Large-scale SNR (dB) of `client_ids`, each over its own band `bandwidth_hz`."""
        ids = np.asarray(client_ids, dtype=np.int64)
        if self.kind == "fixed":
            return np.full(len(ids), float(self.snr_db))
        draws = self._client_draws(ids)
        if self.kind == "distance":
            return distance_snr_db(draws[:, 0], self.tx_power_w, bandwidth_hz, self.geometry, draws[:, 1])
        return self.snr_db + draws[:, 0]
