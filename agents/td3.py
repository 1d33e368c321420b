"""TD3 with Continual World's networks and task-switch protocol: the second base learner of crl.

Paper: Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic Methods",
ICML 2018 (code ``sfujim/TD3``). Clipped double-Q targets (the minimum of twin target critics), target
policy smoothing (Gaussian noise σ = 0.2 clipped at ±0.5 on the target action), delayed policy and
target updates (every 2 critic steps), Gaussian exploration noise σ = 0.1 on the action; the actor
maximises the first critic's Q.

As SAC here (crl/offpolicy.py): Continual World's 4×256 bodies, one output head per sequence position,
the body blind to the task id, one Adam (lr 1e-3, batch 128), buffer emptied and Adam's moments zeroed
at each task switch, 10k uniform-random steps at the start of each task, 50 gradient steps every 50
env steps, Polyak 0.995 (TD3's τ = 0.005), Keras' LayerNorm ε 1e-3 and Adam ε 1e-7 as CW's networks.

Differs from the paper: Continual World's networks and schedule instead of 256-256 ReLU MLPs, 25k
warm-up steps and one update per step; actor, critics and target update in one backward pass
(each loss reaches only its own network, as in crl's SAC). For the extensions that read a Gaussian
policy (EWC, MAS, ClonEx, kickstarting, VCL), ``distribution`` gives the pre-tanh output with the
exploration noise's σ: their Fisher, KL and cloning terms then weigh the policy's output in units of
that noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crl.nets import LinearFactory, MultiHead, cw_mlp
from crl.offpolicy import OffPolicyConfig, OffPolicyLearner
from crl.register import register_agent


@dataclass
class TD3Config(OffPolicyConfig):
    policy_noise: float = 0.2  # σ of the target policy smoothing noise (Fujimoto et al.)
    noise_clip: float = 0.5  # its clip
    policy_delay: int = 2  # critic steps per actor (and target) step
    exploration_noise: float = 0.1  # σ of the Gaussian noise on training actions


class DeterministicActor(nn.Module):
    """tanh(head(body(x))): one action head per task position."""

    def __init__(self, in_dim: int, act_dim: int, num_heads: int, cfg: TD3Config, linear: LinearFactory | None = None,
                 norm_all: bool = False):
        super().__init__()
        self.body = cw_mlp(in_dim, cfg.hidden_sizes, norm_all=norm_all, activation=cfg.activation, body=cfg.body,
                           linear=linear)
        self.head = MultiHead(cfg.hidden_sizes[-1], act_dim, num_heads, linear=linear)
        self.log_std = math.log(cfg.exploration_noise)

    def act(self, x: torch.Tensor, head: int | torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.head(self.body(x), head))

    @staticmethod
    def squash(mu: torch.Tensor) -> torch.Tensor:
        """The action the policy outputs from ``distribution``'s μ (EWC/MAS's default ``fisher=squashed``)."""
        return torch.tanh(mu)

    def distribution(self, x: torch.Tensor, head: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-tanh output, log σ of the exploration noise) for the Gaussian-policy extensions."""
        mu = self.head(self.body(x), head)
        return mu, torch.full_like(mu, self.log_std)


@register_agent("td3", "TD3 fine-tuning, Continual World networks and heads (Fujimoto et al. 2018)")
class TD3(OffPolicyLearner):
    config_class = TD3Config

    def make_actor(self) -> DeterministicActor:
        return DeterministicActor(self.in_dim, self.act_dim, self.num_heads, self.cfg, linear=self.policy_linear,
                                  norm_all=self.network_options.get("norm_all", False))

    def build(self) -> None:
        self.target_actor = self.make_actor().to(self.device)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.target_actor.requires_grad_(False)

    def target_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([*self.critics.parameters(), *self.actor.parameters()],
                [*self.target_critics.parameters(), *self.target_actor.parameters()])

    def sync_targets(self) -> None:
        super().sync_targets()
        self.target_actor.load_state_dict(self.actor.state_dict())

    def _actor_step(self) -> bool:
        return self.gradient_steps % self.cfg.policy_delay == 0

    def update_targets(self) -> None:
        if self._actor_step():  # delayed with the actor (Fujimoto et al.)
            super().update_targets()

    def exploration_noise(self, action: torch.Tensor) -> torch.Tensor:
        return (action + self.cfg.exploration_noise * torch.randn_like(action)).clamp(-1, 1)

    def losses(self, batch: dict[str, torch.Tensor], capture: frozenset[str] = frozenset()
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Critic loss (to the clipped double-Q target of a smoothed target action) plus, every
        ``policy_delay`` steps, −Q₁ of the policy's action, reaching only the actor."""
        cfg = self.cfg
        task = self.batch_task(batch)
        heads = self.heads(task)
        x, x_next = self.policy_input(batch["obs"], task), self.policy_input(batch["next_obs"], task)
        with torch.no_grad():
            smoothing = (torch.randn_like(batch["action"]) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a_next = (self.target_actor.act(x_next, heads) + smoothing).clamp(-1, 1)
            q_next = self.target_critics(x_next, a_next, heads).min(0).values
            backup = batch["reward"] + cfg.gamma * (1 - batch["terminated"]) * q_next
        critic_probe = self.probes["critic"] if "critic" in capture else None
        if critic_probe is not None:
            critic_probe.arm()
        q = self.critics(x, batch["action"], heads, record=critic_probe.record if critic_probe else None)
        critic_loss = ((q - backup) ** 2).mean(1).sum()
        stats = {"critic_loss": critic_loss.detach(), "q": q[0].detach().mean()}
        if not self._actor_step():
            return critic_loss, stats
        if "actor" in capture:
            self.probes["actor"].arm()
        q_pi = self.critics(x, self.actor.act(x, heads), heads, detach_params=True)[0]
        actor_loss = -q_pi.mean()
        stats["actor_loss"] = actor_loss.detach()
        return critic_loss + actor_loss, stats

    def own_state(self) -> dict[str, Any]:
        return {"target_actor": self.target_actor.state_dict()}

    def load_own_state(self, state: dict[str, Any]) -> None:
        self.target_actor.load_state_dict(state["target_actor"])
