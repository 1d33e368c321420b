"""SAC fine-tuning with Continual World's architecture and protocol.

Paper: Wołczyk et al., "Continual World: A Robotic Benchmark for Continual Reinforcement Learning",
NeurIPS 2021 (code ``awarelab/continual_world``, a TF2 port of Spinning-Up SAC); SAC itself from
Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018.

As in Continual World: 4×256 bodies (LayerNorm + tanh after the first layer, LeakyReLU after the
rest), twin critics with Polyak targets, one output head and one entropy temperature per sequence
position, the body blind to the task id (``hide_task_id``), one Adam for actor, critics and α, the
replay buffer emptied and Adam's moments zeroed (step counter kept) at every task switch, 10k
uniform-random steps at the start of each task, 50 gradient steps every 50 env steps.

Differs from the original: PyTorch instead of TF2; with ``num_envs > 1`` a vector step adds several
transitions at once and updates are scheduled by transitions, not calls; no regulariser (the
continual baselines subclass this agent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crl.core import Agent, Task, Transitions
from crl.nets import MultiHead, cw_mlp
from crl.replay import ReplayBuffer


@dataclass
class SACConfig:
    hidden_sizes: tuple[int, ...] = (256, 256, 256, 256)  # body widths (CW: 4×256)
    lr: float = 1e-3  # one Adam for actor, critics and α (CW CL runs: 1e-3)
    batch_size: int = 128  # CW: 128
    buffer_size: int = 1_000_000  # FIFO capacity (CW: 1e6)
    gamma: float = 0.99
    polyak: float = 0.995  # target ← polyak·target + (1−polyak)·online
    start_steps: int = 10_000  # uniform-random actions at the start of EVERY task (CW)
    update_after: int = 1_000  # transitions of the current task before the first update
    update_every: int = 50  # transitions between update rounds
    replay_ratio: float = 1.0  # gradient steps per transition (CW: 1)
    target_output_std: float = 0.089  # target entropy = act_dim·log(std·√(2πe)) = −4.0007 for 4-d actions
    log_alpha_init: float = 1.0  # CW initialises log α to 1 (α ≈ 2.72)
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    multihead: bool = True  # one head (and α) per sequence position
    hide_task_id: bool = True  # body sees the observation only; the task id just selects heads
    reset_buffer_on_task: bool = True  # CW default; "perfect memory" keeps it
    reset_optimizer_on_task: bool = True  # zero Adam moments, keep its step counter (CW)
    reset_critic_on_task: bool = False


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy with one (μ, log σ) head per task position."""

    def __init__(self, in_dim: int, act_dim: int, num_heads: int, cfg: SACConfig):
        super().__init__()
        self.body = cw_mlp(in_dim, cfg.hidden_sizes)
        self.mu = MultiHead(cfg.hidden_sizes[-1], act_dim, num_heads)
        self.log_std = MultiHead(cfg.hidden_sizes[-1], act_dim, num_heads)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, x: torch.Tensor, head: torch.Tensor, deterministic: bool = False):
        """Returns (action in [−1, 1], log-probability of it)."""
        h = self.body(x)
        mu = self.mu(h, head)
        log_std = self.log_std(h, head).clamp(self.log_std_min, self.log_std_max)
        std = log_std.exp()
        u = mu if deterministic else mu + std * torch.randn_like(mu)
        # Gaussian log-density of u, then the tanh change of variables in its stable form
        # (Spinning-Up / CW: 2·(log 2 − u − softplus(−2u))).
        logp = (-0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), logp


class Critic(nn.Module):
    def __init__(self, in_dim: int, act_dim: int, num_heads: int, cfg: SACConfig):
        super().__init__()
        self.body = cw_mlp(in_dim + act_dim, cfg.hidden_sizes)
        self.head = MultiHead(cfg.hidden_sizes[-1], 1, num_heads)

    def forward(self, x: torch.Tensor, action: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([x, action], -1)), head).squeeze(-1)


class SAC(Agent):
    """Continual World's SAC; ``observe``/``update`` are called by crl/loop.py after every vector step."""

    learns_from = "env"
    config_class = SACConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: SACConfig, device: torch.device):
        self.cfg, self.device = config, device
        self.obs_dim, self.act_dim, self.num_tasks = obs_dim, act_dim, num_tasks
        self.num_heads = num_tasks if config.multihead else 1
        in_dim = obs_dim if config.hide_task_id else obs_dim + num_tasks
        self.actor = Actor(in_dim, act_dim, self.num_heads, config).to(device)
        self.critics = nn.ModuleList([Critic(in_dim, act_dim, self.num_heads, config) for _ in range(2)]).to(device)
        self.targets = nn.ModuleList([Critic(in_dim, act_dim, self.num_heads, config) for _ in range(2)]).to(device)
        self.targets.load_state_dict(self.critics.state_dict())
        self.targets.requires_grad_(False)
        self._online_params, self._target_params = list(self.critics.parameters()), list(self.targets.parameters())
        self.log_alpha = nn.Parameter(torch.full((self.num_heads,), config.log_alpha_init, device=device))
        self.target_entropy = act_dim * math.log(config.target_output_std * math.sqrt(2 * math.pi * math.e))
        self.optimizer = self._make_optimizer()
        self.buffer = ReplayBuffer(obs_dim, act_dim, config.buffer_size, device)
        self.task_index = 0
        self.task_steps = 0  # transitions observed in the current task
        self.pending_updates = 0.0  # gradient steps owed by the replay-ratio schedule
        self.gradient_steps = 0

    # -- the Agent contract --------------------------------------------------------------------

    def begin_task(self, task: Task) -> None:
        self.task_index, self.task_steps, self.pending_updates = task.index, 0, 0.0
        if self.cfg.reset_buffer_on_task:
            self.buffer.clear()
        if self.cfg.reset_critic_on_task:
            fresh = nn.ModuleList([Critic(self._in_dim, self.act_dim, self.num_heads, self.cfg) for _ in range(2)])
            self.critics.load_state_dict(fresh.state_dict())
            self.targets.load_state_dict(fresh.state_dict())
        if self.cfg.reset_optimizer_on_task:
            self._reset_optimizer_moments()

    def end_task(self, task: Task) -> None:
        pass

    @torch.no_grad()
    def act(self, obs, task_index, *, explore, deterministic=False, first=None):
        if explore and self.task_steps < self.cfg.start_steps:
            return torch.rand(obs.shape[0], self.act_dim, device=self.device) * 2 - 1
        heads = self._heads(task_index)
        action, _ = self.actor(self._body_input(obs, task_index), heads, deterministic=deterministic and not explore)
        return action

    def observe(self, batch: Transitions) -> None:
        self.buffer.add(batch)
        before, self.task_steps = self.task_steps, self.task_steps + len(batch)
        counted = self.task_steps - max(before, self.cfg.update_after)  # transitions past update_after
        if counted > 0:
            self.pending_updates += counted * self.cfg.replay_ratio

    def update(self) -> dict[str, float]:
        if self.pending_updates < self.cfg.update_every * self.cfg.replay_ratio:
            return {}
        n_steps = int(self.pending_updates)
        self.pending_updates -= n_steps
        stats = [self._gradient_step() for _ in range(n_steps)]
        return {k: torch.stack([s[k] for s in stats]).mean().item() for k in stats[0]}

    # -- internals ------------------------------------------------------------------------------

    @property
    def _in_dim(self) -> int:
        return self.obs_dim if self.cfg.hide_task_id else self.obs_dim + self.num_tasks

    def _heads(self, task_index: int | torch.Tensor) -> int | torch.Tensor:
        """Head selector for MultiHead: an int for a one-task batch, else a per-row tensor."""
        if self.num_heads == 1:
            return 0
        return int(task_index) if not isinstance(task_index, torch.Tensor) else task_index

    def _body_input(self, obs: torch.Tensor, task_index: int | torch.Tensor) -> torch.Tensor:
        if self.cfg.hide_task_id:
            return obs
        if isinstance(task_index, int):
            task_index = torch.full((obs.shape[0],), task_index, dtype=torch.long, device=obs.device)
        return torch.cat([obs, F.one_hot(task_index, self.num_tasks).float()], -1)

    def _make_optimizer(self) -> torch.optim.Adam:
        params = [*self.actor.parameters(), *self.critics.parameters(), self.log_alpha]
        # One fused Adam over everything: fewer optimizer kernels is the main CPU lever
        # (reference/performance.md, "fused Adam, one optimizer": −14–19% per update).
        return torch.optim.Adam(params, lr=self.cfg.lr, fused=True)

    def _reset_optimizer_moments(self) -> None:
        # CW re-creates Adam's slots but keeps its iteration counter (reference/continual-world.md).
        for state in self.optimizer.state.values():
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()

    def _gradient_step(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        b = self.buffer.sample(cfg.batch_size)
        # A buffer emptied at every switch holds only the current task: one head for the whole
        # batch skips the per-row gather (+7% updates/s, scripts/bench_sac.py profiling).
        task = self.task_index if cfg.reset_buffer_on_task else b["task_index"]
        heads = self._heads(task)
        x, x_next = self._body_input(b["obs"], task), self._body_input(b["next_obs"], task)
        alpha = self.log_alpha[heads].exp()

        with torch.no_grad():
            a_next, logp_next = self.actor(x_next, heads)
            q_next = torch.min(self.targets[0](x_next, a_next, heads), self.targets[1](x_next, a_next, heads))
            backup = b["reward"] + cfg.gamma * (1 - b["terminated"]) * (q_next - alpha * logp_next)
        q1, q2 = self.critics[0](x, b["action"], heads), self.critics[1](x, b["action"], heads)
        critic_loss = 0.5 * ((q1 - backup) ** 2).mean() + 0.5 * ((q2 - backup) ** 2).mean()

        a_pi, logp_pi = self.actor(x, heads)
        q_pi = torch.min(self.critics[0](x, a_pi, heads), self.critics[1](x, a_pi, heads))
        actor_loss = (alpha.detach() * logp_pi - q_pi).mean()
        alpha_loss = -(alpha.log() * (logp_pi + self.target_entropy).detach()).mean()

        # CW applies each loss only to its own variables, all from the same pre-update weights,
        # in one optimizer step: the actor loss must not move the critics.
        self.optimizer.zero_grad(set_to_none=True)
        critic_loss.backward(inputs=list(self.critics.parameters()))
        (actor_loss + alpha_loss).backward(inputs=[*self.actor.parameters(), self.log_alpha])
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._online_params, 1 - cfg.polyak)
        self.gradient_steps += 1
        return {
            "critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
            "alpha": alpha.detach().mean(), "entropy": -logp_pi.detach().mean(), "q": q1.detach().mean(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(), "critics": self.critics.state_dict(),
            "targets": self.targets.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
            "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
            "task_index": self.task_index, "task_steps": self.task_steps,
            "pending_updates": self.pending_updates, "gradient_steps": self.gradient_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critics.load_state_dict(state["critics"])
        self.targets.load_state_dict(state["targets"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.task_index, self.task_steps = state["task_index"], state["task_steps"]
        self.pending_updates, self.gradient_steps = state["pending_updates"], state["gradient_steps"]
