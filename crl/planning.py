"""Model-predictive control by the cross-entropy method (CEM), batched over environments and candidates.

Any model-based agent plans with it: it gives ``plan`` a learned (or known) dynamics function and a
reward function, both batched, and gets the first action of the best action sequence found.

HyperCRL's CEM (``rvl-lab-utoronto/HyperCRL``, hypercrl/control/; reference/hypercrl.md): a Gaussian
over whole action sequences with a **full** covariance of size (H·|A|)², initially diagonal
(``init_std`` of the action half-range), refitted to the elites each iteration with 1e-3 added to its
diagonal; samples clipped to the action bounds; the best sequence seen over all iterations is
returned (``choose_best``); states are propagated with the model's mean; re-planned every step, from
scratch (no warm start from the previous step's plan).

Reference settings per family (configs/domain/<family>.yaml set them for hypercrl; the defaults
here are HalfCheetah's):

    family        horizon  samples  elites  iterations
    pusher           20       500      40        5
    door             10      2000      40        5
    half-cheetah     30       500      50        5

Batching: ``obs`` of n environments → n·samples candidate sequences, and each horizon step is one
call of ``dynamics`` on all of them, shaped (n, samples, ·): one matrix product per layer of the
model for every candidate of every environment. The random numbers can be given (``noise``), so
planning n environments at once equals planning each alone with its slice of them
(tests/test_hypercrl.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (states (n, S, obs), actions (n, S, act)) -> next
Reward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (obs, action, next_obs) -> (n, S)


@dataclass
class CEMConfig:
    horizon: int = 30  # planning horizon H in env steps (HyperCRL cheetah: 30)
    samples: int = 500  # candidate action sequences per environment per iteration (500)
    elites: int = 50  # best candidates the distribution is refitted to (50)
    iterations: int = 5  # refits per plan (5)
    init_std: float = 0.5  # initial standard deviation, as a fraction of the action half-range (mag_noise)
    full_cov: bool = True  # full (H·|A|)² covariance as HyperCRL; False = diagonal (PETS)
    cov_jitter: float = 1e-3  # added to the covariance's diagonal (in half-range² units) after each refit
    choose_best: bool = True  # return the best sequence seen; False = the final mean


def check_config(cfg: CEMConfig) -> None:
    from crl.core import UsageError

    for name in ("horizon", "samples", "elites", "iterations"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"planner {name} must be positive, got {getattr(cfg, name)}")
    if cfg.elites > cfg.samples:
        raise UsageError(f"planner elites ({cfg.elites}) must not exceed samples ({cfg.samples})")


def rollout_returns(obs: torch.Tensor, actions: torch.Tensor, dynamics: Dynamics, reward: Reward) -> torch.Tensor:
    """Returns (n, S) of action sequences ``actions`` (n, S, H, act) from states ``obs`` (n, obs_dim):
    one ``dynamics`` call per horizon step on all n·S candidates."""
    n, samples, horizon, _ = actions.shape
    state = obs.unsqueeze(1).expand(n, samples, obs.shape[-1])
    total = torch.zeros(n, samples, dtype=obs.dtype, device=obs.device)
    for h in range(horizon):
        action = actions[:, :, h]
        next_state = dynamics(state, action)
        total = total + reward(state, action, next_state)
        state = next_state
    return total


@torch.no_grad()
def plan(obs: torch.Tensor, dynamics: Dynamics, reward: Reward, cfg: CEMConfig, low: float | torch.Tensor,
         high: float | torch.Tensor, act_dim: int, *, noise: torch.Tensor | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """First actions (n, act_dim) of the CEM plans for the n states ``obs``.

    ``noise``: the standard normal draws, (iterations, n, samples, horizon·act_dim); drawn here (with
    ``generator``) when not given. Row k of every tensor belongs to environment k only."""
    n, device, dtype = obs.shape[0], obs.device, obs.dtype
    dim = cfg.horizon * act_dim
    low_t = torch.as_tensor(low, dtype=dtype, device=device).expand(act_dim)
    high_t = torch.as_tensor(high, dtype=dtype, device=device).expand(act_dim)
    mid, half = (high_t + low_t) / 2, (high_t - low_t) / 2
    if noise is None:
        noise = torch.randn(cfg.iterations, n, cfg.samples, dim, generator=generator, device=device, dtype=dtype)
    # The search runs in units of the half-range around the middle: u in [-1, 1]^dim.
    mean = torch.zeros(n, dim, dtype=dtype, device=device)
    if cfg.full_cov:
        chol = torch.eye(dim, dtype=dtype, device=device).expand(n, dim, dim) * cfg.init_std
    else:
        std = torch.full((n, dim), cfg.init_std, dtype=dtype, device=device)
    best_u = torch.zeros(n, dim, dtype=dtype, device=device)
    best_return = torch.full((n,), -torch.inf, dtype=dtype, device=device)
    rows = torch.arange(n, device=device)
    eye = torch.eye(dim, dtype=dtype, device=device)
    for it in range(cfg.iterations):
        eps = noise[it]
        offsets = eps @ chol.transpose(1, 2) if cfg.full_cov else eps * std.unsqueeze(1)
        u = (mean.unsqueeze(1) + offsets).clamp(-1.0, 1.0)  # (n, S, dim)
        actions = mid + half * u.view(n, cfg.samples, cfg.horizon, act_dim)
        returns = rollout_returns(obs, actions, dynamics, reward)  # (n, S)
        top, idx = returns.topk(cfg.elites, dim=1)
        better = top[:, 0] > best_return
        best_return = torch.where(better, top[:, 0], best_return)
        best_u = torch.where(better.unsqueeze(1), u[rows, idx[:, 0]], best_u)
        elites = u.gather(1, idx.unsqueeze(-1).expand(n, cfg.elites, dim))
        mean = elites.mean(1)
        centred = elites - mean.unsqueeze(1)
        if cfg.full_cov:
            cov = centred.transpose(1, 2) @ centred / cfg.elites + cfg.cov_jitter * eye
            chol = torch.linalg.cholesky(cov)
        else:
            std = (centred.pow(2).mean(1) + cfg.cov_jitter).sqrt()
    chosen = best_u if cfg.choose_best else mean
    return mid + half * chosen.view(n, cfg.horizon, act_dim)[:, 0]
