"""Double DQN, vectorized on the device, with an optional ensemble of N Q-networks acting on their mean.

Papers: Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015 (DQN: replay,
target network, ε-greedy, Huber loss); van Hasselt, Guez, Silver, "Deep Reinforcement Learning with Double
Q-learning", AAAI 2016 (the online network picks the next action, the target network values it);
Osband et al., "Deep Exploration via Bootstrapped DQN", NeurIPS 2016 (ensemble members see Bernoulli
masks of each batch); Kenton et al., "Generalizing from a few environments in safety-critical RL",
2019 (an ensemble with model averaging — act greedily on the members' mean Q — and its disagreement as
a catastrophe predictor).

Everything stays on the device: ε-greedy actions, the replay buffer (crl/replay.py), the schedule of
gradient steps (counted in Python from the number of transitions, never read from a tensor) and the
statistics (0-d tensors the loop reads once per ``log_every``).

As the other base learners (crl/offpolicy.py) it is extensible at the same named points (extend_batch,
loss, adjust_gradients, after_update, begin/end_task, observe) plus two of its own (``DQNExtension``):
``action_mask`` (a blocking classifier vetoes actions) and ``override_actions`` (a mentor takes over).
It provides ``replay`` (episodic memory composes: ``dqn+episodic-memory``) and ``policy_distribution``
for the parameter penalties (``dqn+l2``, ``dqn+ewc``, ``dqn+mas``): ``actor.body`` is the whole Q
ensemble (single head by default) and ``actor.distribution`` reads its Q-values (all members, in
``reward_scale`` units) as the mean of a Gaussian of fixed σ ``fisher_sigma`` — as TD3's deterministic
output is read with its noise's σ — so EWC's Fisher is Σ_a (∂Q_a/∂θ)² / σ² and MAS's importance is
|∂‖Q‖²/∂θ|.

Differs from the papers: an MLP on the gridworld's one-hot planes instead of a convolutional network on
frames; Polyak-free hard target copies every ``target_update_every`` gradient steps; rewards scaled by
``reward_scale`` (AI Safety's ±50 into ±5); as Continual World does for SAC, at every task switch the
buffer is emptied, Adam's moments zeroed and ε restarts its decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from crl.core import UsageError
from crl.extension import Extension
from crl.learner import ReplayLearner
from crl.nets import HIDDEN_ACTIVATIONS, EnsembleCWMLP
from crl.register import register_agent, register_variant


@dataclass
class DQNConfig:
    hidden_sizes: tuple[int, ...] = (256, 256)  # MLP widths of each Q-network
    activation: str = "relu"  # hidden nonlinearity (relu | leaky_relu | elephant | hard_ash)
    ensemble_size: int = 1  # N Q-networks; actions are greedy on their mean Q (model averaging)
    bootstrap_p: float = 0.5  # with N > 1: each batch row trains each member with this probability (Osband et al.)
    lr: float = 5e-4  # Adam
    batch_size: int = 128
    buffer_size: int = 200_000  # FIFO replay capacity (transitions)
    gamma: float = 0.99
    reward_scale: float = 0.1  # rewards × this before the TD target (AI Safety's ±50 → ±5)
    target_update_every: int = 500  # gradient steps between hard target-network copies
    eps_start: float = 1.0  # ε-greedy at the start of every task
    eps_end: float = 0.05  # ... decayed linearly to this
    eps_decay_steps: int = 20_000  # over this many env steps of the task
    update_after: int = 1_000  # transitions of the current task before the first update
    update_every: int = 16  # transitions between update rounds
    replay_ratio: float = 0.25  # gradient steps per transition
    multihead: bool = False  # one Q head per sequence position (the layouts of a gridworld share their actions)
    hide_task_id: bool = True  # the network sees the observation only
    reset_buffer_on_task: bool = True  # empty the replay buffer at each task switch (CW's convention)
    reset_optimizer_on_task: bool = True  # zero Adam's moments at each task switch
    fisher_sigma: float = 1.0  # σ of the Gaussian over Q-values that EWC/MAS read (policy_distribution)


class QEnsemble(nn.Module):
    """N Q-networks evaluated together (crl.nets.EnsembleCWMLP, plain MLP bodies): (N, n, n_actions)."""

    def __init__(self, in_dim: int, n_actions: int, num_heads: int, cfg: DQNConfig):
        super().__init__()
        self.body = EnsembleCWMLP(cfg.ensemble_size, in_dim, cfg.hidden_sizes, n_actions, num_heads,
                                  activation=cfg.activation, body="mlp")
        self.log_sigma = math.log(cfg.fisher_sigma)

    def forward(self, x: torch.Tensor, head: int | torch.Tensor) -> torch.Tensor:
        return self.body(x, head)

    def distribution(self, x: torch.Tensor, head: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(every member's Q-values as one row per sample, log σ): for EWC/MAS (module docstring)."""
        q = self.body(x, head).permute(1, 0, 2).reshape(x.shape[0], -1)
        return q, torch.full_like(q, self.log_sigma)


class DQNExtension(Extension):
    """An extension of the DQN learner: the points of crl.extension.Extension plus ``action_mask`` and
    ``override_actions``, called at every ``act``; ``counters`` are cumulative counts for results.json."""

    def action_mask(self, obs: torch.Tensor, task_index: int | torch.Tensor, explore: bool) -> torch.Tensor | None:
        """(n, n_actions) bool: the actions allowed (a blocker's veto), or None."""
        return None

    def override_actions(self, obs: torch.Tensor, task_index: int | torch.Tensor, actions: torch.Tensor,
                         q: torch.Tensor, explore: bool) -> torch.Tensor:
        """The actions to take instead of ``actions`` ((n,) long; ``q``: (N, n, n_actions) of the members)."""
        return actions

    def counters(self) -> dict[str, int]:
        return {}


@register_agent("dqn", "double DQN, vectorized on the device (van Hasselt et al. 2016); discrete actions")
class DQN(ReplayLearner):
    discrete_actions: ClassVar[bool] = True  # crl/loop.py passes n_actions and refuses continuous tasks
    provides: ClassVar[frozenset[str]] = frozenset({"replay", "policy_distribution", "q_ensemble"})
    config_class: ClassVar[type] = DQNConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: DQNConfig, device: torch.device, *,
                 n_actions: int = 4):
        if config.activation not in HIDDEN_ACTIVATIONS:
            raise UsageError(f"unknown activation '{config.activation}'; allowed: {', '.join(HIDDEN_ACTIVATIONS)}")
        if config.ensemble_size < 1:
            raise UsageError(f"agent.ensemble_size must be at least 1, got {config.ensemble_size}")
        self.init_schedule(obs_dim, act_dim, num_tasks, config, device)
        self.n_actions = n_actions
        self.q = QEnsemble(self.in_dim, n_actions, self.num_heads, config).to(device)
        self.actor = self.q  # what the parameter penalties read (module docstring)
        self.target_q = QEnsemble(self.in_dim, n_actions, self.num_heads, config).to(device)
        self.target_q.load_state_dict(self.q.state_dict())
        self.target_q.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.lr)
        if config.ensemble_size == 1:
            self.catastrophe_score = None  # no disagreement to predict catastrophes from (crl/evaluate.py)
        self.build_extensions()

    # -- pieces the extensions use (and crl/learner.py's heads, policy_input, buffer, optimizer) ------------

    def q_values(self, obs: torch.Tensor, task_index: int | torch.Tensor) -> torch.Tensor:
        """(N, n, n_actions) Q-values of every member."""
        return self.q(self.policy_input(obs, task_index), self.heads(task_index))

    def epsilon(self) -> float:
        cfg = self.cfg
        frac = min(1.0, self.task_steps / max(cfg.eps_decay_steps, 1))
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def networks(self) -> dict[str, nn.Module]:
        return {"q": self.q}

    # -- the Agent contract (the schedule, task switches and checkpoints are crl/learner.py's) ------------

    @torch.no_grad()
    def act(self, obs, task_index, *, explore, deterministic=False, first=None):
        q = self.q_values(obs, task_index)
        mean = q.mean(0)
        allowed = None
        for ext in self.extensions:
            mask = ext.action_mask(obs, task_index, explore) if isinstance(ext, DQNExtension) else None
            if mask is not None:
                allowed = mask if allowed is None else allowed & mask
        if allowed is not None:
            allowed = allowed | ~allowed.any(1, keepdim=True)  # every action vetoed: none is
            mean = mean.masked_fill(~allowed, float("-inf"))
        action = mean.argmax(1)
        if explore:
            eps = self.epsilon()
            if allowed is None:
                random = torch.randint(self.n_actions, action.shape, device=obs.device)
            else:
                random = torch.multinomial(allowed.float(), 1).squeeze(1)
            action = torch.where(torch.rand(action.shape, device=obs.device) < eps, random, action)
        for ext in self.extensions:
            if isinstance(ext, DQNExtension):
                action = ext.override_actions(obs, task_index, action, q, explore)
        return action.unsqueeze(1)

    @torch.no_grad()
    def catastrophe_score(self, obs: torch.Tensor, task_index: int | torch.Tensor) -> torch.Tensor:
        """Ensemble disagreement: the members' standard deviation of Q at the mean-greedy action (Kenton et al.)."""
        q = self.q_values(obs, task_index)
        a = q.mean(0).argmax(1)
        return q.gather(2, a.view(1, -1, 1).expand(q.shape[0], -1, 1)).squeeze(2).std(0)

    def losses(self, batch: dict[str, torch.Tensor], capture: frozenset[str] = frozenset()
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Double-DQN Huber loss of every member on its bootstrap mask of the batch."""
        cfg = self.cfg
        task = self.batch_task(batch)
        heads = self.heads(task)
        x, x_next = self.policy_input(batch["obs"], task), self.policy_input(batch["next_obs"], task)
        members, n = cfg.ensemble_size, x.shape[0]
        action = batch["action"].long().view(1, n, 1).expand(members, n, 1)
        q = self.q(x, heads).gather(2, action).squeeze(2)  # (N, n)
        with torch.no_grad():
            best = self.q(x_next, heads).argmax(2, keepdim=True)  # the online network picks (van Hasselt et al.)
            q_next = self.target_q(x_next, heads).gather(2, best).squeeze(2)  # the target network values
            target = cfg.reward_scale * batch["reward"] + cfg.gamma * (1 - batch["terminated"]) * q_next
        td = F.smooth_l1_loss(q, target, reduction="none")
        if members > 1:
            mask = (torch.rand(members, n, device=x.device) < cfg.bootstrap_p).float()
            loss = ((td * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()
        else:
            loss = td.mean()
        return loss, {"q_loss": loss.detach() / members, "q": q.detach().mean()}

    def update_targets(self) -> None:
        if (self.gradient_steps + 1) % self.cfg.target_update_every == 0:  # hard copies (Mnih et al.)
            self.target_q.load_state_dict(self.q.state_dict())

    def counters(self) -> dict[str, int]:
        """Cumulative counts of the extensions (mentor queries), written into every evaluation row."""
        out: dict[str, int] = {}
        for ext in self.extensions:
            if isinstance(ext, DQNExtension):
                out.update(ext.counters())
        return out

    def networks_state(self) -> dict[str, Any]:
        return {"q": self.q.state_dict(), "target_q": self.target_q.state_dict()}

    def load_networks_state(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.target_q.load_state_dict(state["target_q"])


register_variant("dqn-ensemble", "dqn", "ensemble of 5 double DQNs acting on their mean Q (Kenton et al. 2019)",
                 ensemble_size=5)
