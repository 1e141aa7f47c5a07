"""`airllm`: PPO + DDIM rank policy, after "AirLLM: Diffusion Policy-based Adaptive LoRA for Remote
Fine-Tuning of LLM over the Air" (arXiv 2507.11515), in one file, top to bottom.

How it decides, per selected client k (weights shared by all clients; client k sees its own
channel in its features, so clients on different channels get different ranks):

 1. features s_k = policies.common.client_features(observation)[k]
 2. PPO actor: u ~ N(μ(s_k), σ), coarse action a_k = clip(u, -1, 1) in [-1, 1]^coarse_dim (the mean
    action when frozen; clipped as stable-baselines3 clips a Box action, so both ends are reachable with
    finite weights). Its first component is the share f_k = (a_k,0 + 1) / 2 of what fits that the client
    sends: its total rank is b_k = L · (r_min + f_k · (r_fit,k - r_min)) over its L adapted layers, r_fit,k
    the largest uniform rank that meets the deadline at its rate (policies.common.ranks_from_action).
    μ starts near 0 (f = 1/2) for every state.
 3. DDIM refinement of the per-layer pattern: start from x_T ~ N(0, I) in R^L and run the DDIM
    sampler (diffusers' `DDIMScheduler`, `sampling_steps` of `train_timesteps`) with a conditional
    denoiser ε_θ(x_t, t, c_k), c_k = [a_k, layer-importance shares], and classifier-free guidance
        ε = ε_θ(x_t, t, ∅) + w · (ε_θ(x_t, t, c_k) - ε_θ(x_t, t, ∅)),   w = 1.5
 4. ranks: b_k shared over layers in proportion to exp(κ · x_0,l) (`policies.common.allocate_ranks`:
    water-filling, largest remainder), each layer within `spread` - 1 of the mean rank m_k = b_k / L
    rounded down / up, so Σ_l r_kl = b_k whatever the pattern. With the default spread 1 the pattern
    decides which layers get the remainder of an uneven total: the utility g of a rank is concave (0.81 of
    a full-rank update's value at rank 1 of 8), so moving rank between layers loses utility unless their
    importance differs, and an unbounded proportional sharing put layers at rank 0 at low budgets, which
    cost airllm reward against channel-greedy's uniform ranks at the same total (a synthetic check:
    -0.056 per client-round at -5 dB).

Step 4 is a residual of the coarse action by construction: the refinement decides *where* the
client's rank goes, the coarse action *how much*. (An earlier version mapped x_0 straight to ranks;
its denoiser, trained on its own outputs, shrank the coarse action's effect by ~0.3 per update,
and the learned channel-following vanished.)

How it learns (`learn: true`), from each client's own reward term r_k (`policies.common.client_terms`:
its delivered update's calibrated utility minus λ times its cost, or -10 ρ if it missed the deadline;
0 for a forced decision, where nothing above r_min fits: `policies.common.learning_terms`):

  * PPO (clip 0.2, entropy 0.01) on the per-client transitions (s_k, u_k, r_k). γ = 0 by default:
    a rank acts on the round it is chosen in, and clients are re-sampled every round, so a
    discounted sum along client slots would credit a client with unrelated clients' rewards.
    Advantage = r_k - V(s_k).
  * DDIM on a replay buffer of (c_k, x_k, A_k), advantage-weighted (AWR, Peng et al. 2019):
        L = E[ w_k · ||ε - ε_θ(√ᾱ_t x_k + √(1-ᾱ_t) ε, t, c_k or ∅)||² ],
        w_k = exp(clip(A_k / (β · std A), -5, log w_max)), normalised to mean 1
    (the condition is dropped with p = 0.1 to learn ε_θ(·, ∅)). Patterns that scored above the
    critic's expectation are reproduced more; the budget stays the coarse action's.
  * Exploration: the coarse action samples from the Gaussian; the executed pattern gets Gaussian
    noise (σ = explore_noise). Until the denoiser has trained on `warmup_transitions`
    transitions the pattern is that noise alone (uniform allocation, jittered).

Checkpoint: policy.json (config, sizes, counters, how it was trained) + weights.safetensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from fedsim.types import FedsimError, Observation
from policies.airllm.config import AirLlmConfig
from policies.base import RankPolicy, assign_tensors, clip_ranks
from policies.common import client_features, fitting_rank, free_decisions, importance_share, learning_terms, level_ranks, n_features, within_reach

# --- networks ---------------------------------------------------------------------------------


class single_thread:
    """The policy's networks are tiny: one thread is faster than several, and far faster when cores are busy
    (intra-op threads spin-wait on a loaded machine; measured 40x slower updates with 2 threads)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def mlp(sizes: list[int], out_gain: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, nn.Tanh()]
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """PPO's Gaussian actor over the unclipped coarse action, and its critic."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, init_log_std: float):
        super().__init__()
        self.actor = mlp([obs_dim, hidden, hidden, act_dim], out_gain=0.01)
        self.critic = mlp([obs_dim, hidden, hidden, 1], out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), init_log_std))

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.actor(obs), self.log_std.exp().expand(obs.shape[0], -1))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of the diffusion step: [sin(t ω_i), cos(t ω_i)], ω_i = 10000^(-i/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.body = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.body(self.norm(h) + emb)


class Denoiser(nn.Module):
    """ε_θ(x_t, t, c): MLP with residual blocks; the time and condition embeddings enter every block.
    A dropped condition (∅) is a learned null embedding."""

    def __init__(self, x_dim: int, cond_dim: int, hidden: int, blocks: int, time_dim: int = 32):
        super().__init__()
        self.time_dim = time_dim
        self.inp = nn.Linear(x_dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cond = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.null_cond = nn.Parameter(torch.zeros(hidden))
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, x_dim))

    def condition_embedding(self, cond: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(keep[:, None], self.cond(cond), self.null_cond.expand(cond.shape[0], -1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, self.time(sinusoidal_embedding(t, self.time_dim)) + self.condition_embedding(cond, keep))

    def denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


def make_scheduler(train_timesteps: int):
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="epsilon")


@torch.inference_mode()
def ddim_sample(denoiser: Denoiser, scheduler, cond: torch.Tensor, x_dim: int, steps: int, guidance: float, generator: torch.Generator) -> torch.Tensor:
    """DDIM (η = 0) with classifier-free guidance; conditional and unconditional passes share one batch."""
    n = cond.shape[0]
    scheduler.set_timesteps(steps)
    x = torch.randn(n, x_dim, generator=generator)
    keep = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    cond_emb = denoiser.condition_embedding(torch.cat([cond, cond]), keep)  # fixed across steps: embed once
    for t in scheduler.timesteps:
        eps = denoiser.denoise(torch.cat([x, x]), denoiser.time(sinusoidal_embedding(t.reshape(1), denoiser.time_dim)) + cond_emb)
        eps_cond, eps_uncond = eps[:n], eps[n:]
        x = scheduler.step(eps_uncond + guidance * (eps_cond - eps_uncond), t, x).prev_sample
    return x.clamp(-1.0, 1.0)


def denoising_loss(
    denoiser: Denoiser, scheduler, x0: torch.Tensor, cond: torch.Tensor, weights: torch.Tensor, cond_drop: float, generator: torch.Generator
) -> torch.Tensor:
    """Reward-weighted ε-prediction loss with the condition dropped with probability `cond_drop`."""
    n = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    keep = torch.rand(n, generator=generator) >= cond_drop
    predicted = denoiser(scheduler.add_noise(x0, noise, t), t, cond, keep)
    return (weights * ((predicted - noise) ** 2).mean(dim=1)).mean()


def advantage_weights(advantages: np.ndarray, beta: float, max_weight: float) -> np.ndarray:
    """AWR weights exp(A / (β std A)), clipped to [e^-5, max_weight] and normalised to mean 1."""
    std = advantages.std()
    z = advantages / (beta * std) if std > 1e-12 else np.zeros_like(advantages)
    w = np.exp(np.clip(z, -5.0, math.log(max_weight)))
    return w / w.mean()


# --- the policy -------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Per-round PPO data: one row per selected client."""

    obs: list[np.ndarray] = field(default_factory=list)
    sample: list[np.ndarray] = field(default_factory=list)
    log_prob: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reward)


class AirLlmPolicy(RankPolicy):
    name = "airllm"
    ACTION_MAP = ("min_rank", "spread", "sharpness")  # guidance and sampling_steps are inference settings: the scenario's

    def __init__(self, config: AirLlmConfig):
        super().__init__(config)
        self.n_layers: int | None = None
        self.updates = 0
        self.ddim_trained_on = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.scheduler = make_scheduler(config.train_timesteps)
        self.rollout = Rollout()
        self.buffer: list[tuple[np.ndarray, np.ndarray, float]] = []  # (condition, pattern, advantage)
        self.pending: dict | None = None
        self.training: dict = {}  # how the checkpoint was trained (command, seeds, wall time), kept in policy.json

    # networks are sized by the first observation (or the checkpoint)
    def _build(self, n_layers: int) -> None:
        c = self.config
        with torch.random.fork_rng():  # seeded initialisation without touching the global RNG
            torch.manual_seed(c.seed)
            self.agent = ActorCritic(n_features(n_layers), c.coarse_dim, c.hidden, c.init_log_std)
            self.denoiser = Denoiser(n_layers, c.coarse_dim + n_layers, c.denoiser_hidden, c.denoiser_blocks)
        self.agent_opt = torch.optim.Adam(self.agent.parameters(), lr=c.lr, eps=1e-5)
        self.denoiser_opt = torch.optim.Adam(self.denoiser.parameters(), lr=c.ddim_lr)
        self.n_layers = n_layers

    def _ensure_built(self, n_layers: int) -> None:
        if self.n_layers is None:
            self._build(n_layers)
        elif self.n_layers != n_layers:
            raise FedsimError(f"policy airllm: trained for {self.n_layers} adapted layers, the scenario has {n_layers}; retrain it for this adapter")

    def reset(self) -> None:
        self.pending = None

    # --- acting -------------------------------------------------------------------------
    def ranks(self, observation: Observation) -> np.ndarray:
        with single_thread():
            return self._ranks(observation)

    def _ranks(self, observation: Observation) -> np.ndarray:
        c = self.config
        self._ensure_built(observation.n_layers)
        features = client_features(observation)
        obs = torch.as_tensor(features)
        if c.learn and len(self.rollout) >= c.n_steps:
            self._update(next_obs=obs)
        generator = (
            self.generator
            if c.learn
            else torch.Generator().manual_seed(hash((c.seed, observation.round, tuple(int(i) for i in observation.channel.client_ids))) & 0x7FFFFFFF)
        )
        share = importance_share(observation.layer_importance, observation.n_layers)
        with torch.no_grad():
            dist = self.agent.distribution(obs)
            sample = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator) if c.learn else dist.mean
            coarse = sample.clamp(-1.0, 1.0)
            cond = self.condition(coarse, share)
            if c.learn and self.ddim_trained_on < c.warmup_transitions:
                x = torch.zeros(len(obs), observation.n_layers)  # uniform allocation until the denoiser has data
            else:
                x = self.refine(cond, generator)
            if c.learn:
                x = (x + c.explore_noise * torch.randn(x.shape, generator=generator)).clamp(-1.0, 1.0)
                self.pending = {
                    "obs": features,
                    "sample": sample.numpy(),
                    "log_prob": dist.log_prob(sample).sum(-1).numpy(),
                    "value": self.agent.value(obs).numpy(),
                    "cond": cond.numpy(),
                    "x": x.numpy(),
                    "free": free_decisions(observation, c.min_rank),
                }
        top = fitting_rank(observation)
        ranks = self.to_ranks(coarse, x, observation.max_rank, top=top)
        return within_reach(ranks, observation.params_per_rank, np.clip(top, self.config.min_rank, observation.max_rank), self.config.min_rank)

    def condition(self, coarse: torch.Tensor, share: np.ndarray) -> torch.Tensor:
        """The denoiser's condition c_k: the coarse action and the layer-importance shares."""
        return torch.cat([coarse, torch.as_tensor(np.tile(share, (len(coarse), 1)), dtype=torch.float32)], dim=1)

    def refine(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Step 3: the per-layer pattern x_0 in [-1, 1]^L, by DDIM with classifier-free guidance."""
        c = self.config
        return ddim_sample(self.denoiser, self.scheduler, cond, self.n_layers, min(c.sampling_steps, c.train_timesteps), c.guidance, generator)

    def to_ranks(self, coarse: torch.Tensor, pattern: torch.Tensor, max_rank: int, top: np.ndarray | None = None) -> np.ndarray:
        """Step 4: the share (first coarse component) of each client's `top` (its fitting rank; R when None)
        sets its total rank; the pattern shares it over layers."""
        level = (coarse[:, 0].numpy().astype(float) + 1.0) / 2.0
        weights = np.exp(self.config.sharpness * pattern.numpy().astype(float))
        top = None if top is None else np.clip(top, 0, max_rank)
        return clip_ranks(level_ranks(level, self.n_layers, self.config.min_rank, max_rank, weights, top, self.config.spread), max_rank)

    # --- learning -----------------------------------------------------------------------
    def feedback(self, reward: float, info: dict) -> None:
        if not self.config.learn or self.pending is None:
            return
        p, self.pending = self.pending, None
        if len(self.rollout) and self.rollout.obs[-1].shape != p["obs"].shape:
            self.rollout = Rollout()  # the number of clients changed: start a fresh rollout
        terms = learning_terms(self.config.reward, info, p["free"]) if "bits_up" in info else np.zeros(0)
        if len(terms) != len(p["obs"]):  # no per-client round info (a synthetic environment): the reward is each client's
            terms = np.broadcast_to(np.asarray(reward, dtype=float), (len(p["obs"]),)).copy()
        self.rollout.obs.append(p["obs"])
        self.rollout.sample.append(p["sample"])
        self.rollout.log_prob.append(p["log_prob"])
        self.rollout.value.append(p["value"])
        self.rollout.reward.append(terms)
        done = bool(info.get("done", False))
        self.rollout.done.append(done)
        for cond, x, advantage, free in zip(p["cond"], p["x"], terms - p["value"], p["free"]):
            if free:  # a forced decision's pattern changed nothing (its ranks are r_min everywhere)
                self.buffer.append((cond, x, float(advantage)))
        del self.buffer[: max(0, len(self.buffer) - self.config.buffer_size)]
        if done:
            self._update(next_obs=None)

    def _update(self, next_obs: torch.Tensor | None) -> None:
        with single_thread():
            self._update_networks(next_obs)

    def _update_networks(self, next_obs: torch.Tensor | None) -> None:
        if len(self.rollout):
            self._ppo_update(next_obs)
        self._ddim_update()
        self.rollout = Rollout()
        self.updates += 1

    def _ppo_update(self, next_obs: torch.Tensor | None) -> None:
        c, r = self.config, self.rollout
        values = np.stack(r.value)  # [T, clients]
        next_value = self.agent.value(next_obs).detach().numpy() if next_obs is not None and not r.done[-1] else np.zeros(values.shape[1])
        if next_value.shape != values[-1].shape:
            next_value = np.zeros(values.shape[1])
        advantages = np.zeros_like(values)
        last = np.zeros(values.shape[1])
        for t in reversed(range(len(r))):
            following = next_value if t == len(r) - 1 else values[t + 1]
            nonterminal = 0.0 if r.done[t] else 1.0
            delta = r.reward[t] + c.gamma * following * nonterminal - values[t]
            last = delta + c.gamma * c.gae_lambda * nonterminal * last
            advantages[t] = last
        returns = advantages + values
        obs = torch.as_tensor(np.concatenate(r.obs))
        sample = torch.as_tensor(np.concatenate(r.sample))
        old_log_prob = torch.as_tensor(np.concatenate(r.log_prob))
        adv = torch.as_tensor(advantages.reshape(-1), dtype=torch.float32)
        ret = torch.as_tensor(returns.reshape(-1), dtype=torch.float32)
        n = len(obs)
        for _ in range(c.n_epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, c.batch_size):
                idx = order[start : start + c.batch_size]
                dist = self.agent.distribution(obs[idx])
                log_prob = dist.log_prob(sample[idx]).sum(-1)
                ratio = (log_prob - old_log_prob[idx]).exp()
                a = adv[idx]
                if len(idx) > 1:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                policy_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - c.clip, 1 + c.clip)).mean()
                value_loss = 0.5 * ((self.agent.value(obs[idx]) - ret[idx]) ** 2).mean()
                entropy = dist.entropy().sum(-1).mean()
                loss = policy_loss + c.vf_coef * value_loss - c.ent_coef * entropy
                self.agent_opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.agent.parameters(), 0.5)
                self.agent_opt.step()

    def _ddim_update(self) -> None:
        c = self.config
        if not self.buffer or c.ddim_updates == 0:
            return
        cond = torch.as_tensor(np.stack([b[0] for b in self.buffer]), dtype=torch.float32)
        x0 = torch.as_tensor(np.stack([b[1] for b in self.buffer]), dtype=torch.float32)
        weights = advantage_weights(np.array([b[2] for b in self.buffer]), c.awr_beta, c.awr_max_weight)
        weights = torch.as_tensor(weights, dtype=torch.float32)
        for _ in range(c.ddim_updates):
            idx = torch.randint(0, len(self.buffer), (min(c.ddim_batch, len(self.buffer)),), generator=self.generator)
            loss = denoising_loss(self.denoiser, self.scheduler, x0[idx], cond[idx], weights[idx], c.cond_drop, self.generator)
            self.denoiser_opt.zero_grad()
            loss.backward()
            self.denoiser_opt.step()
        self.ddim_trained_on = len(self.buffer)

    # --- persistence --------------------------------------------------------------------
    ARCHITECTURE = ("coarse_dim", "hidden", "denoiser_hidden", "denoiser_blocks", "train_timesteps")

    def state_dict(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "architecture": {k: getattr(self.config, k) for k in self.ARCHITECTURE},
            "updates": self.updates,
            "ddim_trained_on": self.ddim_trained_on,
            "training": self.training,
        }

    def load_state_dict(self, state: dict) -> None:
        # The checkpoint decides the network sizes, so `policy: {name: airllm, checkpoint: DIR}` needs no other field.
        architecture = state.get("architecture", {})
        if not isinstance(architecture, dict) or set(architecture) - set(self.ARCHITECTURE):
            raise FedsimError(f"policy checkpoint: airllm 'architecture' must hold only {list(self.ARCHITECTURE)}")
        try:
            self.config = AirLlmConfig.model_validate({**self.config.model_dump(), **architecture})
        except Exception as exc:
            raise FedsimError(f"policy checkpoint: airllm architecture {architecture} is invalid ({str(exc).splitlines()[0]})") from None
        self.scheduler = make_scheduler(self.config.train_timesteps)
        n_layers = state.get("n_layers")
        if n_layers is not None:
            if not isinstance(n_layers, int) or n_layers < 1:
                raise FedsimError(f"policy checkpoint: airllm state n_layers={n_layers!r}; expected a positive integer")
            self.n_layers = None
            self._build(n_layers)
        self.updates = int(state.get("updates", 0))
        self.ddim_trained_on = int(state.get("ddim_trained_on", 0))
        self.training = state.get("training") if isinstance(state.get("training"), dict) else {}

    def tensors(self) -> dict:
        if self.n_layers is None:
            return {}
        return {**{f"agent.{k}": v for k, v in self.agent.state_dict().items()}, **{f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()}}

    def load_tensors(self, tensors: dict, source) -> None:
        if self.n_layers is None:
            raise FedsimError(f"policy checkpoint {source}: weights present but policy.json has no n_layers")
        assign_tensors(self.tensors(), tensors, source)
