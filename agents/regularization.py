"""L2, EWC and MAS: extensions that pull the policy's shared parameters towards their values after earlier tasks.

Papers: Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017 (EWC);
Aljundi et al., "Memory Aware Synapses", ECCV 2018 (MAS); in continual RL as in Wołczyk et al.,
"Continual World", NeurIPS 2021 (``continualworld/methods/{regularization,l2,ewc,mas}.py``).

As in Continual World (checked formula by formula on identical weights and batches: tests/test_cw_parity.py):
the penalty λ·Σ w_i (θ_i − θ*_i)² (no ½) covers CW's ``common_variables``: the actor's body, and with a
single head (``multihead=False``) its head too; with ``regularize_critic`` (CW's option, off in every paper
run and here by default) also the critics' (body; with one head their heads). θ* are the parameters at
the end of the last task; w sums, over finished tasks, the importance measured on 10 batches of 256
transitions of the task's replay buffer before it is emptied: 1 for L2; for EWC the Gaussian policy's
diagonal Fisher (∂m² + 2∂σ²)/(σ² + 1e-6), summed over action dimensions and clipped below at 1e-5; for MAS
the mean |∂(‖m‖² + ‖log σ‖²)/∂θ|, where m is the squashed mean tanh(μ) and log σ the unsquashed one
(``agent.fisher=squashed``, CW's ``mu`` of ``sac/models.py:123-130``). The critics' importance: EWC mean
(∂Q/∂θ)², MAS mean |∂Q²/∂θ|, on the batch's own actions, each critic on its own. λ: L2 1e5, EWC 1e4, MAS
1e4 (``reg_coef``; the registered names ``l2``, ``ewc``, ``mas`` are ``sac+l2`` … with these values).

Differs: importance is taken at the end of a task rather than at the start of the next (the same
buffer, the same weights); no importance after the last task (nothing follows it). ``agent.fisher=gaussian``
(crl's default before issue 24) differentiates the pre-tanh μ instead, for EWC the exact Fisher of the
Gaussian the policy samples before its tanh: after hammer (cw2, quick preset) its summed importances are
166× CW's for EWC and 1.19× for MAS (scripts/importance_conventions.py), so CW's λ means a far stronger
EWC penalty with it. On TD3 the "Gaussian policy" is the deterministic output with the exploration
noise's σ (crl/agents/td3.py), squashed by its tanh; on DQN the Q-values, which have no squashing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crl.continual import (FISHER_CONVENTIONS, ParameterRegularizer, critic_ewc_importance, critic_mas_importance,
                           ewc_importance, l2_importance, mas_importance, shared_critic_parameters,
                           shared_policy_parameters)
from crl.core import Task, UsageError
from crl.extension import Extension
from crl.register import register_extension, register_variant

CRITICS = "critics."  # prefix of the critics' parameters among the regularised ones


@dataclass
class RegularizerConfig:
    reg_coef: float = 1e4  # λ (CW: L2 1e5, EWC 1e4, MAS 1e4)
    importance_batches: int = 10  # batches of the finished task's buffer the importance is averaged over (CW)
    importance_batch_size: int = 256  # (CW)
    regularize_critic: bool = False  # also the critics' shared parameters (CW's option; off in every paper run)


class _ParameterPenalty(Extension):
    """λ·Σ w (θ − θ*)² over what the tasks share (CW's common_variables); subclasses say how w is measured."""

    config_class = RegularizerConfig
    # policy_distribution: ``actor.body`` and ``actor.distribution(x, head) -> (μ, log σ)`` (SAC, TD3; DQN reads
    # its Q-values as μ with a fixed σ: agents/dqn.py)
    requires = frozenset({"replay", "policy_distribution"})
    state = ("regularizer",)
    excludes = {"l2": "two parameter penalties share reg_coef", "ewc": "two parameter penalties share reg_coef",
                "mas": "two parameter penalties share reg_coef"}

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        self.actor_params = shared_policy_parameters(learner.actor, learner.num_heads)
        self.critic_params = {}
        if cfg.regularize_critic:
            if "critic" not in getattr(learner, "provides", ()):
                raise UsageError(f"agent.regularize_critic: '{type(learner).__name__}' has no critics to regularise")
            self.critic_params = shared_critic_parameters(learner.critics, learner.num_heads)
        self.regularized = {**self.actor_params, **{CRITICS + n: p for n, p in self.critic_params.items()}}
        self.regularizer = ParameterRegularizer(self.regularized, cfg.reg_coef)

    def end_task(self, task: Task) -> None:
        learner = self.learner
        if task.index == learner.num_tasks - 1 or learner.buffer.size == 0:
            return
        self.regularizer.consolidate(self.importance(task.index))

    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def measured_importance(self, actor_measure, critic_measure, task_index: int) -> dict[str, torch.Tensor]:
        """``actor_measure`` (and with ``regularize_critic`` ``critic_measure``) averaged over
        ``importance_batches`` batches of the task's buffer."""
        cfg, learner = self.cfg, self.learner
        head = learner.heads(task_index)
        total: dict[str, torch.Tensor] = {}

        def add(importance: dict[str, torch.Tensor], prefix: str = "") -> None:
            for n, w in importance.items():
                total[prefix + n] = total.get(prefix + n, 0) + w / cfg.importance_batches

        for _ in range(cfg.importance_batches):
            batch = learner.buffer.sample(cfg.importance_batch_size)
            x = learner.policy_input(batch["obs"], task_index)
            add(actor_measure(learner.actor, list(self.actor_params), x, head))
            if self.critic_params:
                add(critic_measure(learner.critics, list(self.critic_params), x, batch["action"], head), CRITICS)
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


@dataclass
class MeasuredImportanceConfig(RegularizerConfig):
    # the mean EWC's Fisher and MAS's sensitivity differentiate: squashed (CW: tanh(μ)) | gaussian (pre-tanh μ;
    # for EWC the Gaussian's exact Fisher). gaussian/squashed summed over the actor's body after hammer (cw2,
    # quick preset, seed 0): EWC 166×, MAS 1.19× (scripts/importance_conventions.py; README)
    fisher: str = "squashed"


class _MeasuredPenalty(_ParameterPenalty):
    config_class = MeasuredImportanceConfig

    def __init__(self, learner, cfg):
        if cfg.fisher not in FISHER_CONVENTIONS:
            raise UsageError(f"unknown fisher '{cfg.fisher}'; allowed: {', '.join(FISHER_CONVENTIONS)}")
        super().__init__(learner, cfg)
        # the policy's own squashing (SAC, TD3: tanh); a policy without one (DQN's Q-values) is read as it is
        self.squash = getattr(learner.actor, "squash", None) if cfg.fisher == "squashed" else None


@register_extension("ewc", "EWC: Gaussian-policy Fisher penalty (Kirkpatrick et al. 2017; CW: λ=1e4)")
class EWC(_MeasuredPenalty):
    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        def actor(policy, names, x, head):
            return ewc_importance(policy, names, x, head, squash=self.squash)

        return self.measured_importance(actor, critic_ewc_importance, task_index)


@register_extension("mas", "MAS: output-sensitivity importance penalty (Aljundi et al. 2018; CW: λ=1e4)")
class MAS(_MeasuredPenalty):
    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        def actor(policy, names, x, head):
            return mas_importance(policy, names, x, head, squash=self.squash)

        return self.measured_importance(actor, critic_mas_importance, task_index)


register_variant("l2", "sac+l2", "SAC + L2 penalty towards the previous tasks' actor (CW: λ=1e5)")
register_variant("ewc", "sac+ewc", "SAC + EWC, Gaussian-policy Fisher (Kirkpatrick et al. 2017; CW: λ=1e4)")
register_variant("mas", "sac+mas", "SAC + MAS, output-sensitivity importance (Aljundi et al. 2018; CW: λ=1e4)")
