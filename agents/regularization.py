"""L2, EWC and MAS: SAC whose actor is pulled towards its parameters after earlier tasks.

Papers: Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017 (EWC);
Aljundi et al., "Memory Aware Synapses", ECCV 2018 (MAS); in continual RL as in Wołczyk et al.,
"Continual World", NeurIPS 2021 (``continualworld/methods/{regularization,l2,ewc,mas}.py``).

As in Continual World: the penalty λ·Σ w_i (θ_i − θ*_i)² covers the actor's body (its per-task heads
are not regularised, nor the critics: ``regularize_critic=False``, CW's default in every paper run);
θ* are the parameters at the end of the last task; w sums, over finished tasks, the importance
measured on 10 batches of 256 transitions of the task's replay buffer before it is emptied:
1 for L2, the Gaussian policy's diagonal Fisher for EWC (∂μ² + 2∂σ², over σ²), the mean absolute
gradient of ‖μ‖² + ‖log σ‖² for MAS. λ: L2 1e5, EWC 1e4, MAS 1e4 (``reg_coef``).

Differs: importance is taken at the end of a task rather than at the start of the next (the same
buffer, the same weights); no importance after the last task (nothing follows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from crl.agents.sac import SAC, SACConfig
from crl.continual import ParameterRegularizer, ewc_importance, l2_importance, mas_importance
from crl.core import Task, UsageError

METHODS = ("l2", "ewc", "mas")


@dataclass
class RegularizedSACConfig(SACConfig):
    method: str = "ewc"  # l2 | ewc | mas
    reg_coef: float = 1e4  # λ (CW: L2 1e5, EWC 1e4, MAS 1e4)
    importance_batches: int = 10  # batches of the finished task's buffer the importance is averaged over (CW)
    importance_batch_size: int = 256  # (CW)


class RegularizedSAC(SAC):
    config_class = RegularizedSACConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: RegularizedSACConfig,
                 device: torch.device):
        if config.method not in METHODS:
            raise UsageError(f"unknown regulariser '{config.method}'; allowed: {', '.join(METHODS)}")
        super().__init__(obs_dim, act_dim, num_tasks, config, device)
        self.regularized = {f"body.{n}": p for n, p in self.actor.body.named_parameters()}
        self.regularizer = ParameterRegularizer(self.regularized, config.reg_coef)

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        if task.index == self.num_tasks - 1 or self.buffer.size == 0:
            return
        self.regularizer.consolidate(self.importance(task.index))

    def importance(self, task_index: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if cfg.method == "l2":
            return l2_importance(self.regularized)
        measure = ewc_importance if cfg.method == "ewc" else mas_importance
        names = list(self.regularized)
        total: dict[str, torch.Tensor] = {}
        for _ in range(cfg.importance_batches):
            obs = self._body_input(self.buffer.sample(cfg.importance_batch_size)["obs"], task_index)
            for n, w in measure(self.actor, names, obs, self._heads(task_index)).items():
                total[n] = total.get(n, 0) + w / cfg.importance_batches
        return total

    def _auxiliary_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return self.regularizer.penalty()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "regularizer": self.regularizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.regularizer.load_state_dict(state["regularizer"])
