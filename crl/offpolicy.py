"""The off-policy actor-critic base learner that SAC and TD3 are written on, with Continual World's protocol.

What is shared: Continual World's networks (4×256 bodies, one output head per sequence position, the
body blind to the task id), twin critics with Polyak targets, one fused Adam, a replay buffer
emptied and Adam's moments zeroed (step counter kept) at every task switch, uniform-random warm-up
steps at the start of every task, and gradient steps scheduled by a replay ratio. A subclass
supplies its policy network (``make_actor``), its loss (``losses``) and what its targets track.

The continual methods are extensions (crl/extension.py) called at the named points of
``gradient_step``; what they may read of a learner is listed in ``OffPolicyLearner``'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from crl.devices import require_native_bf16
from crl.core import UsageError
from crl.learner import ReplayLearner
from crl.nets import ACTIVATION_MODULES, BODIES, HIDDEN_ACTIVATIONS, EnsembleCWMLP, cw_activations
from crl.plasticity import DORMANT_AVERAGING, PlasticityProbe, ProbeConfig

PRECISIONS = ("fp32", "bf16")


@dataclass
class OffPolicyConfig:
    hidden_sizes: tuple[int, ...] = (256, 256, 256, 256)  # body widths (CW: 4×256)
    activation: str = "leaky_relu"  # after the first layer: leaky_relu (CW, slope 0.2) | relu | elephant | hard_ash
    body: str = "cw"  # cw: first layer Linear→LayerNorm→tanh (CW) | mlp: Linear→activation throughout (SB3, Spinning Up)
    lr: float = 1e-3  # one Adam for every network (CW CL runs: 1e-3)
    adam_eps: float = 1e-7  # Adam's ε: Keras' default, CW's (sac/sac.py:184); torch's is 1e-8. It sets the step
    #                         size where gradients are ~1e-8 (PackNet's 2e-5 clip)
    batch_size: int = 128  # CW: 128
    buffer_size: int = 1_000_000  # FIFO capacity (CW: 1e6)
    gamma: float = 0.99
    polyak: float = 0.995  # target ← polyak·target + (1−polyak)·online
    start_steps: int = 10_000  # uniform-random actions at the start of EVERY task (CW)
    update_after: int = 1_000  # transitions of the current task before the first update
    update_every: int = 50  # transitions between update rounds
    replay_ratio: float = 1.0  # gradient steps per transition (CW: 1)
    multihead: bool = True  # one head per sequence position
    hide_task_id: bool = True  # body sees the observation only; the task id just selects heads
    reset_buffer_on_task: bool = True  # CW default; "perfect memory" keeps it
    reset_optimizer_on_task: bool = True  # zero Adam moments, keep its step counter (CW)
    reset_critic_on_task: bool = False
    reservoir_buffer: bool = False  # reservoir sampling once full instead of FIFO (perfect memory)
    clip_grad_norm: float | None = None  # clip each network's gradients to this global norm (CW: none)
    precision: str = "fp32"  # fp32 | bf16: the update's hidden-to-hidden matmuls in bfloat16 (autocast); input and
    #                          output layers, losses, weights, Adam and replay stay fp32 (crl/nets.py in_fp32)
    plasticity_every: int = 1000  # gradient steps between plasticity measurements of actor and critics (0: off)
    dormant_tau: float = 0.025  # τ of the dormant-unit ratio (Ma et al.; Plasticine)
    dormant_averaging: str = "global"  # global (ReDo's code) | per_layer (Plasticine)


class TwinCritic(nn.Module):
    """Two Q-networks (CW bodies, one output head per task) as one two-member ensemble."""

    def __init__(self, in_dim: int, act_dim: int, num_heads: int, cfg: OffPolicyConfig, norm_all: bool = False):
        super().__init__()
        self.net = EnsembleCWMLP(2, in_dim + act_dim, cfg.hidden_sizes, 1, num_heads, norm_all=norm_all,
                                 activation=cfg.activation, body=cfg.body)

    def forward(self, x: torch.Tensor, action: torch.Tensor, head: int | torch.Tensor, *,
                detach_params: bool = False, record=None) -> torch.Tensor:
        """(2, n) Q-values: row 0 from the first critic, row 1 from the second."""
        return self.net(torch.cat([x, action], -1), head, detach_params=detach_params, record=record).squeeze(-1)


class _ActView(nn.Module):
    """Routes ``functional_call`` to a policy's ``act`` method (evaluation with other weights: PackNet)."""

    def __init__(self, actor: nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, x, head, deterministic):
        return self.actor.act(x, head, deterministic=deterministic)


class OffPolicyLearner(ReplayLearner):
    """An extensible base learner. What extensions may use (and nothing else):

    - ``cfg``, ``device``, ``obs_dim``, ``act_dim``, ``num_tasks``, ``num_heads``, ``task_index``,
      ``task_steps``, ``gradient_steps``, ``replay_ratio`` (settable: Adaptive Replay Ratio);
    - ``actor``: the policy, with ``body`` (nn.Sequential), ``head`` (crl.nets.MultiHead),
      ``act(x, head, deterministic)`` and ``distribution(x, head) -> (μ, log σ)`` of its pre-tanh
      Gaussian (TD3: its deterministic output with the exploration noise's σ);
    - ``critics`` (TwinCritic), ``networks()``, ``fresh_networks()``, ``sync_targets()``;
    - ``buffer`` (crl.replay.ReplayBuffer), ``optimizer``, ``reset_optimizer_moments()``;
    - ``losses(batch)``, ``gradient_step()``, ``policy_input(obs, task)``, ``heads(task)``,
      ``policy_actions(obs, task, deterministic, weights=None)``, ``probes`` (plasticity probes).

    ``provides`` names these capabilities for ``Extension.requires``.
    """

    provides: ClassVar[frozenset[str]] = frozenset({"replay", "gaussian_policy", "policy_distribution", "critic",
                                                    "networks"})
    config_class: ClassVar[type] = OffPolicyConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: OffPolicyConfig, device: torch.device):
        self._validate(config, device)
        self.init_schedule(obs_dim, act_dim, num_tasks, config, device, reservoir=config.reservoir_buffer)
        extension_classes = getattr(config, "extension_classes", ())
        self.network_options: dict[str, Any] = {}
        for ext in extension_classes:
            self.network_options.update(ext.network_options(config))
        linears = [f for f in (ext.policy_linear(config) for ext in extension_classes) if f is not None]
        if len(linears) > 1:
            raise UsageError("at most one extension may change the policy's layers")
        self.policy_linear = linears[0] if linears else None
        self.actor = self.make_actor().to(device)
        self.critics = self.make_critic().to(device)
        self.target_critics = self.make_critic().to(device)
        self.target_critics.load_state_dict(self.critics.state_dict())
        self.target_critics.requires_grad_(False)
        self.build()  # the subclass's own parameters and targets (SAC's α, TD3's target actor)
        self.optimizer = self.make_optimizer()
        probe_cfg = ProbeConfig(dormant_tau=config.dormant_tau, dormant_averaging=config.dormant_averaging)
        activations = cw_activations(config.hidden_sizes, config.activation, config.body)
        actor_hooks = [m for m in self.actor.body if isinstance(m, ACTIVATION_MODULES)]
        self.probes = {
            "actor": PlasticityProbe("actor", self.actor, probe_cfg, activations,
                                     hooks=dict(zip(activations, actor_hooks))),
            # each critic measured on its own (critic0, critic1), their mean under critic (issue 24)
            "critic": PlasticityProbe("critic", self.critics, probe_cfg, activations, members=2),
        }
        self.build_extensions()

    @staticmethod
    def _validate(config: OffPolicyConfig, device: torch.device) -> None:
        if config.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{config.precision}'; allowed: {', '.join(PRECISIONS)}")
        if config.precision == "bf16":
            require_native_bf16("agent.precision=bf16", device)
        if config.activation not in HIDDEN_ACTIVATIONS:
            raise UsageError(f"unknown activation '{config.activation}'; allowed: {', '.join(HIDDEN_ACTIVATIONS)}")
        if config.body not in BODIES:
            raise UsageError(f"unknown body '{config.body}'; allowed: {', '.join(BODIES)}")
        if not config.adam_eps > 0:
            raise UsageError(f"agent.adam_eps must be positive, got {config.adam_eps}")
        if config.dormant_averaging not in DORMANT_AVERAGING:
            raise UsageError(f"unknown dormant_averaging '{config.dormant_averaging}'; "
                             f"allowed: {', '.join(DORMANT_AVERAGING)}")

    # -- what a subclass supplies ---------------------------------------------------------------

    def make_actor(self) -> nn.Module:
        raise NotImplementedError

    def build(self) -> None:
        """Create the learner's own parameters and targets (after actor, critics and buffer exist)."""

    def update_targets(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._online_params, 1 - self.cfg.polyak)

    def sync_targets(self) -> None:
        """Targets ← online networks (after an intervention changed the weights)."""
        self.target_critics.load_state_dict(self.critics.state_dict())

    def optimized_groups(self) -> list[list[torch.Tensor]]:
        """Parameter groups clipped separately (CW clips actor, critics and α each on its own)."""
        return [list(self.actor.parameters()), list(self.critics.parameters())]

    def exploration_noise(self, action: torch.Tensor) -> torch.Tensor:
        """Training actions from the policy's (SAC: the sample itself)."""
        return action

    # -- pieces for subclasses and extensions ---------------------------------------------------

    def make_critic(self) -> TwinCritic:
        return TwinCritic(self.in_dim, self.act_dim, self.num_heads, self.cfg,
                          norm_all=self.network_options.get("norm_all", False))

    def make_optimizer(self) -> torch.optim.Adam:
        params = [p for group in self.optimized_groups() for p in group]
        self._online_params, self._target_params = self.target_pairs()
        # One fused Adam over everything: fewer optimizer kernels is the main CPU lever
        # (reference/performance.md, "fused Adam, one optimizer": −14–19% per update).
        return torch.optim.Adam(params, lr=self.cfg.lr, eps=self.cfg.adam_eps, fused=True)

    def target_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return list(self.critics.parameters()), list(self.target_critics.parameters())

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critics}

    def fresh_networks(self) -> dict[str, nn.Module]:
        """Newly initialised copies of ``networks()`` (Shrink & Perturb, resets)."""
        return {"actor": self.make_actor().to(self.device), "critic": self.make_critic().to(self.device)}

    def policy_actions(self, obs: torch.Tensor, task_index: int | torch.Tensor, deterministic: bool,
                       weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The policy's actions; ``weights`` ({actor parameter name: tensor}) replace the actor's own."""
        if weights is None:
            for ext in self.extensions:
                action = ext.act(obs, task_index, deterministic)
                if action is not None:
                    return action
        args = (self.policy_input(obs, task_index), self.heads(task_index), deterministic)
        if not weights:  # the actor's own weights (an empty view too: PackNet's task in training, every env step)
            return self.actor.act(*args)
        view = {f"actor.{n}": w for n, w in weights.items()}
        return functional_call(_ActView(self.actor), view, args, strict=False)

    # -- the Agent contract (the rest is crl/learner.py's) -------------------------------------------

    def on_task_switch(self) -> None:
        if self.cfg.reset_critic_on_task:
            fresh = self.make_critic().to(self.device)
            self.critics.load_state_dict(fresh.state_dict())
            self.sync_targets()

    @torch.no_grad()
    def act(self, obs, task_index, *, explore, deterministic=False, first=None):
        if explore and self.task_steps < self.cfg.start_steps:
            for ext in self.extensions:
                action = ext.explore(obs)
                if action is not None:
                    return action
            return torch.rand(obs.shape[0], self.act_dim, device=self.device) * 2 - 1
        action = self.policy_actions(obs, task_index, deterministic and not explore)
        return self.exploration_noise(action) if explore else action

    # -- the gradient step's learner-specific points (crl/learner.py runs it) ------------------------

    def _measuring(self) -> bool:
        """Whether this gradient step takes a plasticity measurement (every ``plasticity_every`` steps)."""
        return self.cfg.plasticity_every > 0 and self.gradient_steps % self.cfg.plasticity_every == 0

    def capture(self) -> frozenset[str]:
        return frozenset(self.probes) if self._measuring() else frozenset()

    def precision(self):
        # bf16: CPUs with AVX512-BF16 (and GPUs) run the update's matmuls ~1.4× faster (scripts/bench_sac.py)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def after_backward(self, stats: dict[str, torch.Tensor]) -> None:
        if self._measuring():
            for probe in self.probes.values():  # after backward: gradient norms are part of the measurement
                stats.update(probe.collect())

    def clip_gradients(self) -> None:
        if self.cfg.clip_grad_norm is not None:
            for group in self.optimized_groups():
                nn.utils.clip_grad_norm_(group, self.cfg.clip_grad_norm, foreach=True)

    # -- checkpoints (the schedule and the extensions' state: crl/learner.py) -------------------------

    def own_state(self) -> dict[str, Any]:
        """The subclass's parameters beyond actor, critics and their targets (SAC's α, TD3's target actor)."""
        return {}

    def load_own_state(self, state: dict[str, Any]) -> None: ...

    def networks_state(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critics": self.critics.state_dict(),
                "target_critics": self.target_critics.state_dict(), "own": self.own_state(),
                "probe_initial_weights": {name: probe.initial for name, probe in self.probes.items()}}

    def load_networks_state(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critics.load_state_dict(state["critics"])
        self.target_critics.load_state_dict(state["target_critics"])
        self.load_own_state(state["own"])
        for name, initial in state["probe_initial_weights"].items():  # weight change stays measured from the start
            self.probes[name].initial = {k: v.to(self.device) for k, v in initial.items()}


def target_entropy(act_dim: int, output_std: float) -> float:
    """SAC's entropy target act_dim·log(std·√(2πe)) (CW: −4.0007 for 4-d actions at std 0.089)."""
    return act_dim * math.log(output_std * math.sqrt(2 * math.pi * math.e))
