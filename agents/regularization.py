"""L2, EWC and MAS: extensions that pull the policy's body towards its parameters after earlier tasks.

Papers: Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017 (EWC);
Aljundi et al., "Memory Aware Synapses", ECCV 2018 (MAS); in continual RL as in Wołczyk et al.,
"Continual World", NeurIPS 2021 (``continualworld/methods/{regularization,l2,ewc,mas}.py``).

As in Continual World: the penalty λ·Σ w_i (θ_i − θ*_i)² covers the actor's body (its per-task heads
are not regularised, nor the critics: ``regularize_critic=False``, CW's default in every paper run);
θ* are the parameters at the end of the last task; w sums, over finished tasks, the importance
measured on 10 batches of 256 transitions of the task's replay buffer before it is emptied:
1 for L2, the Gaussian policy's diagonal Fisher for EWC (∂μ² + 2∂σ², over σ²), the mean absolute
gradient of ‖μ‖² + ‖log σ‖² for MAS. λ: L2 1e5, EWC 1e4, MAS 1e4 (``reg_coef``; the registered
names ``l2``, ``ewc``, ``mas`` are ``sac+l2`` … with these values).

Differs: importance is taken at the end of a task rather than at the start of the next (the same
buffer, the same weights); no importance after the last task (nothing follows it). On TD3 the
"Gaussian policy" is the deterministic output with the exploration noise's σ (crl/agents/td3.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crl.continual import ParameterRegularizer, ewc_importance, l2_importance, mas_importance
from crl.core import Task
from crl.extension import Extension
from crl.registry import register_extension, register_variant


@dataclass
class RegularizerConfig:
    reg_coef: float = 1e4  # λ (CW: L2 1e5, EWC 1e4, MAS 1e4)
    importance_batches: int = 10  # batches of the finished task's buffer the importance is averaged over (CW)
    importance_batch_size: int = 256  # (CW)


class _ParameterPenalty(Extension):
    """λ·Σ w (θ − θ*)² over the policy body; subclasses say how w is measured."""

    config_class = RegularizerConfig
    # policy_distribution: ``actor.body`` and ``actor.distribution(x, head) -> (μ, log σ)`` (SAC, TD3; DQN reads
    # its Q-values as μ with a fixed σ: agents/dqn.py)
    requires = frozenset({"replay", "policy_distribution"})
    state = ("regularizer",)
    excludes = {"l2": "two parameter penalties share reg_coef", "ewc": "two parameter penalties share reg_coef",
                "mas": "two parameter penalties share reg_coef"}

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        self.regularized = {f"body.{n}": p for n, p in learner.actor.body.named_parameters()}
        self.regularizer = ParameterRegularizer(self.regularized, cfg.reg_coef)

    def end_task(self, task: Task) -> None:
        learner = self.learner
        if task.index == learner.num_tasks - 1 or learner.buffer.size == 0:
            return
        self.regularizer.consolidate(self.importance(task.index))

    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def measured_importance(self, measure, task_index: int) -> dict[str, torch.Tensor]:
        """``measure`` averaged over ``importance_batches`` batches of the task's buffer."""
        cfg, learner = self.cfg, self.learner
        names = list(self.regularized)
        total: dict[str, torch.Tensor] = {}
        for _ in range(cfg.importance_batches):
            obs = learner.policy_input(learner.buffer.sample(cfg.importance_batch_size)["obs"], task_index)
            for n, w in measure(learner.actor, names, obs, learner.heads(task_index)).items():
                total[n] = total.get(n, 0) + w / cfg.importance_batches
        return total

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return self.regularizer.penalty()


@dataclass
class L2Config(RegularizerConfig):
    reg_coef: float = 1e5  # λ (CW: 1e5)


@register_extension("l2", "L2 penalty towards the previous tasks' policy body (CW: λ=1e5)")
class L2(_ParameterPenalty):
    config_class = L2Config

    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        return l2_importance(self.regularized)


@register_extension("ewc", "EWC: Gaussian-policy Fisher penalty (Kirkpatrick et al. 2017; CW: λ=1e4)")
class EWC(_ParameterPenalty):
    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        return self.measured_importance(ewc_importance, task_index)


@register_extension("mas", "MAS: output-sensitivity importance penalty (Aljundi et al. 2018; CW: λ=1e4)")
class MAS(_ParameterPenalty):
    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        return self.measured_importance(mas_importance, task_index)


register_variant("l2", "sac+l2", "SAC + L2 penalty towards the previous tasks' actor (CW: λ=1e5)")
register_variant("ewc", "sac+ewc", "SAC + EWC, Gaussian-policy Fisher (Kirkpatrick et al. 2017; CW: λ=1e4)")
register_variant("mas", "sac+mas", "SAC + MAS, output-sensitivity importance (Aljundi et al. 2018; CW: λ=1e4)")
