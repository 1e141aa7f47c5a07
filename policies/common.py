"""What the learning policies share: observation features, the reward, and the action <-> rank maps.

Features (one row per selected client, all roughly in [-1, 1] or [0, 1]):

    snr_db / 20, log10(fading_gain) / 2, bandwidth share (b_k / Σ b), log10(rate_bps) / 8 - 0.75,
    budget = clip(rate · T / bits_full, 0, 4) / 4    (T = deadline; 1 when there is none),
    log budget = clip(log2(rate · T / bits_full), -4, 2) / 4,
    fit = `fitting_rank` / max_rank (the largest uniform rank whose upload ends by T; -1/max_rank: not even rank 0),
    mean(last_ranks) / max_rank, token entropy / 10, OOV rate,
    round / rounds, last loss / 5, last accuracy,
    layer importance (share per layer, Σ = 1; uniform before any aggregate)

where bits_full = (Σ_l params_per_rank_l · max_rank + fixed_params) · bits_per_param is
the client's upload at full rank. `budget` is the fraction of a full-rank upload the
client's rate fits inside the deadline: the one number channel-aware ranking needs. Its log
and `fit` resolve the low-rate end, where one rank component more or less decides whether an
upload meets the deadline (a linear budget puts ranks 0, 1 and 2 of a -5 dB client within 0.03).

Reward of a round (`RewardConfig`), from the strategy's round info:

    R_t = objective_t + mean_k term_k
    objective_t = -loss_t  (objective: loss)  or  accuracy_t - accuracy_{t-1}  (accuracy-gain, accuracy_0 = 0,
                                                       so an episode's objectives add up to its last accuracy),
                  on the validation split (`data.validation_samples`), never the test split
    term_k = -P · max(ρ_k, 1)                          if client k missed the deadline (its update is lost)
           = β · U_k · delivered_k - λ · cost_k        otherwise

ρ_k = bits_k / (rate_k · T) is the upload's share of the deadline T (AirLLM's latency cost, arXiv
2507.11515: a decision with ρ > 1 is scored -10 ρ, P = deadline_penalty = 10, and its update is lost).
cost_k is normalised to about [0, 1]:

    bytes:   bits_k / mean_j bits_full_j
    latency: ρ_k  (T = the deadline, or the full-rank upload time when there is none)
    energy:  E_k / mean_j E_j^full, E^full = (E - E_compute) · bits_full / bits + E_compute (the radio's energy is
             linear in bits at fixed power and rate; the mean over the clients that sent and were not cut off)

U_k is what client k's delivered update is worth to the global model, a calibrated utility of
its ranks (β = `utility`):

    U_k = Σ_l s_l · g(r_kl / max_rank)

with s_l the shares of the global adapter's singular-value mass by layer when the round starts (Σ s_l = 1;
uniform before any aggregate), the same for every policy whatever it observes: with the observed importance,
adalora's own sensitivity, a layer it stopped sending measured 0 and its absence cost it nothing)
and g the normalised accuracy gain of a rank, interpolated linearly in `utility_curve`
(g(0) = 0, g(1) = 1). The default curve is the measured accuracy of fixed ranks 0, 1, 2, 4, 8 on
the quickstart, 10 rounds, 3 seeds (scenarios/rank_sweep.yaml; benchmarks/README.md, "Does rank matter?"):
g(r) = (acc(r) - acc(0)) / (acc(8) - acc(0)), paired over seeds: 0.81, 0.86, 0.93 at ranks 1, 2, 4 of 8.
With `utility_weight: aggregate-share` the utility of a delivered update is scaled by n / n_delivered (n the
round's clients): FedAvg averages the n_delivered updates that got through, so each weighs n / n_delivered
times what it would in a round where all were delivered, and the round's mean utility term is then
β · mean over the delivered of U_k, however many were lost. A client's expected credit then no longer falls with
its loss probability (about P_k / mean_j P_j instead of P_k), which the default undervalues at low SNR, where
half the updates are lost (benchmarks/README.md, "Policy comparison": ppo sends less there than its rank is
worth to the validation loss). No shipped checkpoint was trained with it yet.
Why a per-client utility: the shared objective is the same for every client of a round, and no
single client's rank moves it measurably in one round, so a reward made of the shared objective
and each client's own cost has rank 0 as every client's optimum (issue 15's diagnosis). With
U_k, a client's optimum is the rank whose marginal value g' exceeds its marginal cost, which
falls as its rate rises: channel-aware by construction, and it differs from "the largest rank
that fits" (channel-greedy) wherever bytes cost more than they are worth.

The learning policies learn from each client's own term_k (`client_terms`), except where no action could
change the client's ranks (`free_decisions`: nothing above r_min fits; the term is then 0 for learning);
`round_reward` is the objective they are scored on (the episode reward is its sum over rounds).

Objective credit (`objective_credit`, learning signal only; R is unchanged): a delivered update is also
credited C_k = Σ_l s_l c(r_kl / max_rank), its estimated worth to the shared objective, so a client learns from

    term_k + C_k · delivered_k.

If an episode's objective part O = Σ_t objective_t is, up to what no action changes, Σ_t mean_k C_k delivered_k,
then the episode reward Σ_t R_t = const + Σ_t mean_k (term_k + C_k delivered_k): the learning signal is the
episode reward shared out over the decisions. The curve c is fitted across fixed-rank runs of the comparison's
setup at the training SNR levels and seeds (scenarios/objective_calibration.yaml, benchmarks/objective_credit.py):
O = a_(level, seed) + c(r) · N, with N = Σ_t mean_k delivered_k the updates that got through. The credit may
depend on the channel: given as {snr_db: curve, ...}, C_k is interpolated linearly in client k's large-scale SNR
between the anchors' C (the outer anchors' beyond them), c(r, s) = Σ_j w_j(s) c_j(r) with w_j the anchors'
piecewise-linear hat weights, fitted the same way (`objective_credit.py --anchors`), or with diminishing returns,
O = a_(level, seed) + γ log(1 + Σ_t mean_k w(r_k) delivered_k), whose marginal worth γ w(r) / (1 + N_0(s)) at
each training level s (N_0 the updates that get through there) is given as one curve per level
(`objective_credit.py --returns diminishing`). It assumes the comparison's
setting, where a round's clients share one level, so a client's SNR stands for how scarce delivered updates
are in its round: fitted on the training levels, a delivered update is worth several times more at -8 dB than
at 2 dB or above (few get through, and the validation loss falls steeply in the first few). Without it, a
client's own term is nearly flat between ranks 1 and 4 at low rates (the concave g against linear airtime), the
objective's pull toward rank is invisible to the learner: ppo trained without it sent rank 0.9 at -5 dB, where
channel-greedy's 2.0 scored 0.34 higher; with the by-SNR credit, 2.0 and 0.02 (not significant): it then sends
what fits, as channel-greedy does, an optimum of that credit that R, by airllm's lead, does not share where much
fits at low SNR; with the pooled curve and small PPO updates, 1.5 and -0.04, and 0.18 more than channel-greedy
at 5 dB; with the diminishing-returns curves and small updates, 1.3 and 0.12 (not significant), and 0.20 more
at 5 dB; with those and the top of its action a band (`full_share_at` 0.2, the shipped ppo), 1.85 and -0.02
(not significant), and 0.07 more at 5 dB (benchmarks/README.md, "Which signal", "Policy comparison").

Action (`ranks_from_action`): a client's action a in [-1, 1] is the share f = (a + 1) / 2 of what fits that it
sends: r_fit (`fitting_rank`, the largest uniform rank that meets the deadline at its rate; R with no deadline)
sets the client's reach, and it sends L · (r_min + f · (max(r_fit, r_min) - r_min)) rank components over its
L layers. f = 1 is channel-greedy; the policy learns where sending less than what fits pays (where airtime
costs more than the rank is worth). The channel arithmetic (what fits) is exact, not learned, so no learned
action misses a deadline it could have met, as long as the upload's airtime is all the time it takes: with
TDMA slots, compute time or HARQ resends (which the channel's deadline also counts) it can (README, "The
action"). Both learning policies start near a = 0, the centre of the box (f = 1/2, or 1 / (a_full + 1) with
ppo's band).
`ppo`'s `full_share_at` a_full < 1 makes the top of the box a band: f = min((a + 1) / (a_full + 1), 1), so every
action from a_full up sends all that fits. With f linear up to a = 1, sending everything takes the mean action at
the box's edge, which a Gaussian policy reaches only in the limit; a ppo trained so sent f = 0.92-0.97
where r_fit is 1-2, and rounding left one of the L layers at rank 0 (benchmarks/README.md, "Policy comparison").
(The previous action, a level in [0, R] capped at r_fit, was flat above the cap at low rates and put "what
fits" at a different level for every rate; its checkpoints sent rank 6.2 at 15 dB, where channel-greedy's
7.8 scored better on their own reward.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedsim.types import Observation

CLIENT_FEATURES = 13  # features before the per-layer importance block


def n_features(n_layers: int) -> int:
    return CLIENT_FEATURES + n_layers


def full_rank_bits(observation: Observation) -> float:
    params = float(np.sum(observation.params_per_rank) * observation.max_rank + observation.fixed_params)
    return params * observation.bits_per_param


def fitting_rank(observation: Observation, deadline_s: float | None = None, margin: float = 1.0, scale_bits: int = 32) -> np.ndarray:
    """Per client, the largest uniform rank r in [0, R] whose upload ends by the deadline T, sent at its rate C_k
    (the capacity, or the channel's fixed target rate: `ChannelStates.upload_rate_bps`) from the moment s_k it
    can start:

        bits(r) = (r · Σ_l p_l + p_fixed) · b + s · n_t  <=  C_k · (T - s_k) · margin

    (p_l parameters per rank component of layer l, p_fixed the head's, b bits per parameter, and, when
    b < 32, one s-bit scale per quantised tensor, n_t of them: `Observation.upload_tensors`, by default
    A and B of L layers plus the head's two; at b = 4, whose codes pack two to a byte, up to 4 bits more per
    tensor; upper bounds, since a rank-0 layer sends no tensor).
    s_k follows `channels.access`: after the client's local training t^comp_k (`Observation.compute_s`) when
    uploads run in parallel (FDMA); in sequential slots (TDMA, `Observation.sequential_uploads`, in the round's
    order `ChannelStates.slot`) s_k = max(e_{k-1}, t^comp_k), with e_{k-1} the end of the previous slot's upload at
    *its* fitting rank (rank 0 where none fits, cut at T), so the slots fill greedily in their order. A policy that sends what
    fits (channel-greedy) is then never late; one that sends less leaves the later slots more time than
    assumed. HARQ resends are random and not budgeted: with them an upload that fits can still be late.
    Over the air (`Observation.over_the_air`) the round's updates share one analog slot of ceil(S / 2) / B seconds
    for the S entries they span on the band B, two per channel use (`channels.aircomp.slot_seconds`), starting
    after the slowest client's training; every client then gets the one common rank whose slot fits:

        r · Σ_l p_l + p_fixed  <=  2 · floor((T - max_k t^comp_k) · margin · B)

    (p counting entries; bits per entry and scales do not matter on the air).
    -1 where not even rank 0 fits; R with no deadline. T is the observation's deadline, else `deadline_s`.
    Float array [clients]."""
    deadline = observation.deadline_s if np.isfinite(observation.deadline_s) else (deadline_s if deadline_s is not None else np.inf)
    n, n_layers = observation.n_clients, observation.n_layers
    if not np.isfinite(deadline):
        return np.full(n, float(observation.max_rank))
    tensors = observation.upload_tensors or 2 * n_layers + 2
    overhead = scale_bits * tensors if observation.bits_per_param < 32 else 0
    # Codes are packed into whole bytes per tensor (channels.quantization): at 4 bits an odd-sized tensor costs 4 more.
    overhead += (-observation.bits_per_param % 8) * tensors
    per_rank = max(float(np.sum(observation.params_per_rank)), 1.0)
    rate = np.asarray(observation.channel.upload_rate_bps, dtype=float)
    compute = np.asarray(observation.compute_s, dtype=float) if len(observation.compute_s) == n else np.zeros(n)

    def largest(start: np.ndarray, k=slice(None)) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # inf rate x zero time left
            budget_params = (rate[k] * np.maximum(deadline - start, 0.0) * margin - overhead) / observation.bits_per_param
        fitting = np.floor((budget_params - observation.fixed_params) / per_rank)
        return np.clip(np.nan_to_num(fitting, nan=-1.0, posinf=observation.max_rank, neginf=-1.0), -1, observation.max_rank)

    if observation.over_the_air:
        band = float(np.max(observation.channel.bandwidth_hz, initial=0.0))
        entries = 2 * np.floor(max(deadline - float(compute.max(initial=0.0)), 0.0) * margin * band)
        return np.full(n, float(np.clip(np.floor((entries - observation.fixed_params) / per_rank), -1, observation.max_rank)))
    if not observation.sequential_uploads:
        return largest(compute)
    slot = observation.channel.slot if observation.channel.slot is not None else np.arange(n)
    fitting, end = np.empty(n), 0.0
    for k in np.argsort(slot):
        start = max(end, compute[k])
        fitting[k] = largest(np.array([start]), slice(k, k + 1))[0]
        bits = (max(fitting[k], 0.0) * per_rank + observation.fixed_params) * observation.bits_per_param + overhead
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero rate holds the band until the deadline
            end = max(start, min(start + bits / rate[k], deadline))
    return fitting


def client_features(observation: Observation) -> np.ndarray:
    """Float32 [clients, n_features(layers)], finite and clipped to [-5, 5]."""
    ch = observation.channel
    n = observation.n_clients
    deadline = observation.deadline_s if np.isfinite(observation.deadline_s) else None
    capacity = ch.upload_rate_bps * deadline if deadline is not None else np.full(n, 4.0 * full_rank_bits(observation))
    ratio = capacity / full_rank_bits(observation)
    budget = np.clip(ratio, 0, 4) / 4
    log_budget = np.clip(np.log2(np.maximum(ratio, 1e-12)), -4, 2) / 4
    fit = fitting_rank(observation) / observation.max_rank
    stats = observation.data_stats if observation.data_stats.shape == (n, 2) else np.zeros((n, 2))
    importance = np.asarray(observation.layer_importance, dtype=float)
    total = importance.sum()
    share = importance / total if total > 0 and np.isfinite(total) else np.full(observation.n_layers, 1.0 / observation.n_layers)
    loss = observation.last_loss if np.isfinite(observation.last_loss) else 0.0
    acc = observation.last_accuracy if np.isfinite(observation.last_accuracy) else 0.0
    columns = [
        ch.snr_db / 20.0,
        np.log10(np.maximum(ch.fading_gain, 1e-6)) / 2.0,
        ch.bandwidth_hz / max(float(np.sum(ch.bandwidth_hz)), 1e-12),
        np.log10(np.maximum(ch.rate_bps, 1.0)) / 8.0 - 0.75,
        budget,
        log_budget,
        fit,
        np.asarray(observation.last_ranks, dtype=float).mean(axis=1) / observation.max_rank,
        stats[:, 0] / 10.0,
        stats[:, 1],
        np.full(n, observation.round / max(observation.total_rounds, 1)),
        np.full(n, loss / 5.0),
        np.full(n, acc),
    ]
    features = np.concatenate([np.stack(columns, axis=1), np.tile(share, (n, 1))], axis=1)
    return np.clip(np.nan_to_num(features, nan=0.0, posinf=5.0, neginf=-5.0), -5, 5).astype(np.float32)


def level_ranks(
    level: np.ndarray, n_layers: int, min_rank: int, max_rank: int, weights: np.ndarray | None = None, top: np.ndarray | None = None, spread: int | None = None
) -> np.ndarray:
    """Ranks [clients, layers] from each client's level f in [0, 1]: a total of L · (r_min + f · (top - r_min))
    over its L layers (top: the client's reach, its fitting rank, clipped to [r_min, R]; R when None), shared
    in proportion to `weights` [clients, layers] (equally when None) by `allocate_ranks`. The mean rank m is
    r_min + f · (top - r_min) up to rounding. `spread` s bounds every layer's rank to
    [floor(m) - s + 1, ceil(m) + s - 1] (s = 1: the weights only decide which layers get the remainder)."""
    level = np.clip(np.nan_to_num(np.atleast_1d(np.asarray(level, dtype=float)), nan=0.0), 0.0, 1.0)
    lo = min(min_rank, max_rank)
    top = np.full(len(level), float(max_rank)) if top is None else np.clip(np.asarray(top, dtype=float), lo, max_rank)
    weights = np.ones((len(level), n_layers)) if weights is None else np.asarray(weights, dtype=float)
    means = lo + level * (top - lo)
    ranks = []
    for mean, w in zip(means, weights):
        low, high = lo, max_rank
        if spread is not None:
            low, high = max(lo, int(np.floor(mean + 1e-9)) - spread + 1), min(max_rank, int(np.ceil(mean - 1e-9)) + spread - 1)
        ranks.append(allocate_ranks(n_layers * mean, w, low, high))
    return np.stack(ranks).reshape(len(level), n_layers)


def within_reach(ranks: np.ndarray, params_per_rank: np.ndarray, top: np.ndarray, min_rank: int) -> np.ndarray:
    """Ranks [clients, layers] whose upload costs at most client k's uniform rank `top`_k: Σ_l r_kl p_l <= top_k Σ_l p_l.

    `level_ranks` keeps Σ_l r_kl <= L · top_k, the same bound only when every layer costs the same per rank component;
    with layers of different sizes an uneven pattern (airllm's, or a spread above 1) can cost more and miss the
    deadline, so the dearest layer still above r_min gives up a component until the upload fits."""
    ranks = np.array(ranks, dtype=np.int64, copy=True)
    cost = np.asarray(params_per_rank, dtype=float)
    for k, reach in enumerate(np.clip(np.asarray(top, dtype=float), 0, None)):
        budget = reach * cost.sum() + 1e-9
        while ranks[k] @ cost > budget:
            above = np.flatnonzero(ranks[k] > min_rank)
            if not len(above):
                break
            ranks[k, above[np.argmax(cost[above])]] -= 1
    return ranks


def action_to_level(action: np.ndarray, full_share_at: float = 1.0) -> np.ndarray:
    """[-1, 1] -> level in [0, 1]: (a + 1) / (a_full + 1), and 1 from a_full = `full_share_at` up."""
    return np.clip((np.clip(np.asarray(action, dtype=float), -1.0, 1.0) + 1.0) / (full_share_at + 1.0), 0.0, 1.0)


def ranks_from_action(action: np.ndarray, observation: Observation, min_rank: int, weights: np.ndarray | None = None, full_share_at: float = 1.0) -> np.ndarray:
    """The learning policies' action map (module docstring): action [clients] in [-1, 1] -> ranks
    [clients, layers], the share (a + 1) / (a_full + 1), at most 1, of each client's `fitting_rank`."""
    top = np.clip(fitting_rank(observation), 0, observation.max_rank)
    level = action_to_level(np.asarray(action, dtype=float).reshape(observation.n_clients), full_share_at)
    ranks = level_ranks(level, observation.n_layers, min_rank, observation.max_rank, weights, top)
    return within_reach(ranks, observation.params_per_rank, np.maximum(top, min_rank), min_rank)


DEFAULT_UTILITY_CURVE = [[0.0, 0.0], [0.125, 0.81], [0.25, 0.86], [0.5, 0.93], [1.0, 1.0]]  # scenarios/rank_sweep.yaml, 3 seeds


class RewardConfig(BaseModel):
    """How a round is scored for the learning policies (see the module docstring for the formulas)."""

    model_config = ConfigDict(extra="forbid")

    objective: Literal["loss", "accuracy-gain"] = Field(
        "loss", description="Shared term: 'loss': -validation loss after the round; 'accuracy-gain': the validation accuracy's change."
    )
    cost: Literal["bytes", "latency", "energy"] = Field("latency", description="Which normalised cost λ multiplies.")
    lam: float = Field(1.0, ge=0, description="λ, the weight of a client's normalised cost.")
    utility: float = Field(2.0, ge=0, description="β, the reward of a delivered full-rank update (0: no per-client utility).")
    utility_curve: list[tuple[float, float]] = Field(
        default_factory=lambda: [tuple(p) for p in DEFAULT_UTILITY_CURVE],
        description="g as [rank / max_rank, value] points, interpolated linearly; from 0 to 1 on both axes.",
    )
    deadline_penalty: float = Field(10.0, ge=0, description="P: a client that misses the deadline scores -P · max(bits / (rate · deadline), 1).")
    objective_credit: list[tuple[float, float]] | dict[float, list[tuple[float, float]]] = Field(
        default_factory=list,
        description="Learning signal only: what a delivered update is worth to the shared objective, as [rank / max_rank, "
        "credit] points interpolated like utility_curve, or {snr_db: points, ...}: one curve per large-scale SNR anchor, "
        "interpolated linearly in the client's SNR (dB) and held constant beyond the outer anchors "
        "(benchmarks/objective_credit.py fits either on scenarios/objective_calibration.yaml); [] for none. "
        "The round reward R is unchanged.",
    )
    utility_weight: Literal["update", "aggregate-share"] = Field(
        "update",
        description="How a delivered update's utility counts: 'update': β·U_k whatever else is delivered; 'aggregate-share': "
        "β·U_k·n/n_delivered, its weight in the average of the n_delivered updates that got through relative to a round "
        "where all n did, so a round's credited utility does not fall when others' updates are lost.",
    )

    @field_validator("objective_credit")
    @classmethod
    def _credit(cls, credit):
        def bad(curve):
            xs = [x for x, _ in curve]
            return len(curve) < 2 or xs != sorted(xs) or xs[0] != 0.0 or xs[-1] != 1.0 or not all(np.isfinite(y) for _, y in curve)

        if isinstance(credit, dict):
            if not credit or not all(np.isfinite(snr) for snr in credit) or any(bad(curve) for curve in credit.values()):
                raise ValueError(
                    "objective_credit by SNR needs finite snr_db keys, each with increasing rank fractions from 0 to 1 and finite "
                    "credits, e.g. {-8: [[0, 1.7], [1, 4.7]], 20: [[0, 0.1], [1, 0.6]]}"
                )
            return dict(sorted(credit.items()))
        if credit and bad(credit):
            raise ValueError("objective_credit needs increasing rank fractions from 0 to 1 with finite credits, e.g. [[0, 1.5], [1, 3.0]], or []")
        return credit

    @field_validator("utility_curve")
    @classmethod
    def _curve(cls, curve):
        xs = [x for x, _ in curve]
        if len(curve) < 2 or xs != sorted(xs) or xs[0] != 0.0 or xs[-1] != 1.0 or any(not 0 <= y <= 1 for _, y in curve):
            raise ValueError("utility_curve needs increasing rank fractions from 0 to 1, values in [0, 1], e.g. [[0, 0], [1, 1]]")
        return curve


def rank_utility(config: RewardConfig, ranks: np.ndarray, max_rank: int, layer_share: np.ndarray | None, curve=None) -> np.ndarray:
    """U_k = Σ_l s_l g(r_kl / max_rank) for ranks [clients, layers] (g: `curve`, default the utility curve)."""
    ranks = np.atleast_2d(np.asarray(ranks, dtype=float))
    xs, ys = zip(*(curve or config.utility_curve))
    gain = np.interp(ranks / max(max_rank, 1), xs, ys)
    share = importance_share(layer_share, ranks.shape[1])
    return gain @ share


def importance_share(importance, n_layers: int) -> np.ndarray:
    """Layer importance as shares summing to 1 (uniform when unknown)."""
    importance = np.zeros(n_layers) if importance is None else np.nan_to_num(np.asarray(importance, dtype=float), nan=0.0, posinf=0.0)
    importance = np.maximum(importance, 0.0)
    total = importance.sum()
    return importance / total if total > 0 else np.full(n_layers, 1.0 / n_layers)


def client_terms(config: RewardConfig, info: dict) -> np.ndarray:
    """Each selected client's own term of the round reward (see the module docstring)."""
    bits = np.asarray(info["bits_up"], dtype=float)
    full = np.asarray(info["bits_full"], dtype=float)
    rate = np.maximum(np.asarray(info["rate_bps"], dtype=float), 1e-9)
    deadline = float(info.get("deadline_s", float("inf")))
    horizon = np.full(len(bits), deadline) if np.isfinite(deadline) else full / rate
    share_of_deadline = bits / (rate * horizon)
    reasons = list(info.get("drop_reasons", [""] * len(bits)))
    late = np.array([reason == "deadline" for reason in reasons], dtype=bool)
    if config.cost == "bytes":
        cost = bits / max(float(full.mean()), 1.0) if len(bits) else bits
    elif config.cost == "latency":
        cost = share_of_deadline
    else:
        energy = np.asarray(info["energy_j"], dtype=float)
        compute = np.asarray(info.get("compute_energy_j", np.zeros(len(bits))), dtype=float)
        # Only the radio's energy scales with the bits; an upload cut off at the deadline spent only part of its bits'.
        whole = (bits > 0) & ~late
        full_energy = (energy[whole] - compute[whole]) * full[whole] / bits[whole] + compute[whole]
        mean_full = float(full_energy.mean()) if whole.any() else 0.0
        cost = energy / mean_full if mean_full > 0 else np.zeros(len(bits))
    delivered = np.asarray(info["delivered"], dtype=bool) if "delivered" in info else np.array([not r for r in reasons], dtype=bool)
    utility = np.zeros(len(bits))
    if config.utility > 0 and "ranks" in info and len(bits):
        utility = config.utility * rank_utility(config, info["ranks"], int(info["max_rank"]), info.get("layer_importance"))
        if config.utility_weight == "aggregate-share":
            utility = utility * len(bits) / max(int(delivered.sum()), 1)
    terms = utility * delivered - config.lam * cost
    return np.where(late, -config.deadline_penalty * np.maximum(share_of_deadline, 1.0), terms)


def free_decisions(observation: Observation, min_rank: int) -> np.ndarray:
    """Bool [clients]: whose ranks an action can change, i.e. more than r_min fits (`fitting_rank` > r_min).

    The learning policies learn only from these: a forced decision's term is replaced by 0 in their
    learning signal (`learning_terms`). Its action changes nothing, so an action-independent reward leaves
    the policy gradient unbiased, while its real term can be a deadline penalty -10 ρ with ρ in the
    thousands in a deep fade: one such row swamps the advantage normalisation of every minibatch it lands in
    (airllm's first training with the share action had episode returns down to -12,444 and learned too
    little in 10,080 decisions)."""
    return fitting_rank(observation) > min(min_rank, observation.max_rank)


def learning_terms(config: RewardConfig, info: dict, free: np.ndarray) -> np.ndarray:
    """What the learning policies learn from: each client's `client_terms` plus C_k · delivered_k (its credit for the
    shared objective, `objective_credit`), 0 for a forced decision."""
    terms = client_terms(config, info)
    if config.objective_credit and "ranks" in info and len(terms):
        terms = terms + objective_credit(config, info) * np.asarray(info["delivered"], dtype=bool)
    return np.where(np.asarray(free, dtype=bool), terms, 0.0)


def objective_credit(config: RewardConfig, info: dict) -> np.ndarray:
    """C_k = Σ_l s_l c(r_kl / max_rank) per client; with a curve per SNR anchor, C_k is interpolated linearly
    between the anchors' C at the client's large-scale SNR (info["snr_db"]), the outer anchors' beyond them."""
    ranks, max_rank, share = info["ranks"], int(info["max_rank"]), info.get("layer_importance")
    if not isinstance(config.objective_credit, dict):
        return rank_utility(config, ranks, max_rank, share, config.objective_credit)
    if "snr_db" not in info:
        raise ValueError("objective_credit by SNR needs the clients' large-scale SNR (round info 'snr_db')")
    by_snr = sorted(config.objective_credit.items())
    anchors = np.array([snr for snr, _ in by_snr], dtype=float)
    at_anchor = np.stack([rank_utility(config, ranks, max_rank, share, curve) for _, curve in by_snr], axis=1)
    snr = np.asarray(info["snr_db"], dtype=float)
    return np.array([np.interp(s, anchors, row) for s, row in zip(snr, at_anchor)])


def client_rewards(config: RewardConfig, info: dict) -> np.ndarray:
    """Each client's share of the round reward: the shared objective plus its own term; their mean is `round_reward`."""
    return round_objective(config, info) + client_terms(config, info)


def round_objective(config: RewardConfig, info: dict) -> float:
    if config.objective == "loss":
        return -float(info["loss"])
    last = info.get("last_accuracy", float("nan"))
    return float(info["accuracy"]) - (float(last) if np.isfinite(last) else 0.0)


def round_reward(config: RewardConfig, info: dict) -> float:
    """Score one round from the strategy's round info (keys: loss, accuracy, last_accuracy, bits_up, bits_full,
    rate_bps, energy_j, deadline_s, drop_reasons, delivered, ranks, max_rank, layer_importance)."""
    terms = client_terms(config, info)
    return round_objective(config, info) + (float(terms.mean()) if len(terms) else 0.0)


def allocate_ranks(budget: float, weights: np.ndarray, min_rank: int, max_rank: int) -> np.ndarray:
    """Integer ranks in [min_rank, max_rank] summing to round(budget) (clipped to what fits), shared in
    proportion to `weights` by water-filling (a layer that would exceed max_rank is capped and the rest
    shared again) and rounded by largest remainder."""
    weights = np.asarray(weights, dtype=float)
    n = len(weights)
    lo, hi = min(min_rank, max_rank), max_rank
    extra = float(np.clip(round(budget) - lo * n, 0, (hi - lo) * n))
    w = np.where(np.isfinite(weights) & (weights > 0), weights, 0.0)
    w = w / w.max() if w.max() > 0 else np.ones(n)
    share = np.zeros(n)
    free = np.ones(n, dtype=bool)
    remaining = extra
    while free.any():
        mass = float((w * free).sum())
        if mass <= 0:
            w, mass = np.ones(n), float(free.sum())
        proposal = remaining * w * free / mass
        over = free & (proposal >= hi - lo)
        if not over.any():
            share[free] = proposal[free]
            break
        share[over] = hi - lo
        free &= ~over
        remaining = extra - share[~free].sum()
    floor = np.floor(share + 1e-9)
    left = int(round(extra - floor.sum()))
    for i in np.argsort(-(share - floor), kind="stable")[: max(left, 0)]:
        floor[i] += 1
    return (lo + np.minimum(floor, hi - lo)).astype(np.int64)
