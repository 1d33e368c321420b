"""PackNet: one network, a disjoint share of its weights per task, fixed by pruning.

Paper: Mallya & Lazebnik, "PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning",
CVPR 2018; in continual RL as in Wołczyk et al., "Continual World", NeurIPS 2021
(``continualworld/methods/packnet.py``).

As in Continual World: PackNet manages the actor's body (the per-task heads are not managed, nor
the critics: ``regularize_critic=False``). While task t trains, only the weight-matrix entries it
owns receive gradients; biases and LayerNorm parameters train during task 0 only. After every task
but the last, the smallest-magnitude fraction (tasks left)/(tasks left + 1) of task t's entries is
zeroed and handed to the next task, so every task gets an equal share; the kept entries are then
retrained for ``retrain_steps`` (CW: 100k) on the task's buffer with Adam's moments reset before and
after. Evaluating task t uses the weights of tasks 0..t only (later tasks' entries read as zero).
CW runs PackNet with gradient clipping at norm 2e-5 (``clip_grad_norm``).

With Adam's moments zeroed at every task switch, an entry that gets no gradient receives an update
of exactly 0 (0 / (0 + ε)), so earlier tasks' weights stay bit-identical (tests/test_continual.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from crl.agents.sac import SAC, SACConfig
from crl.continual import PackNetMasks
from crl.core import Task


@dataclass
class PackNetConfig(SACConfig):
    retrain_steps: int = 100_000  # gradient steps on the kept weights after pruning (CW: 100k)
    clip_grad_norm: float | None = 2e-5  # CW's PackNet runs


class PackNet(SAC):
    config_class = PackNetConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: PackNetConfig, device: torch.device):
        super().__init__(obs_dim, act_dim, num_tasks, config, device)
        body = dict(self.actor.body.named_parameters())
        matrices = {n: p for n, p in body.items()
                    if isinstance(self.actor.body[int(n.split(".")[0])], nn.Linear) and n.endswith("weight")}
        others = {n: p for n, p in body.items() if n not in matrices}
        self.masks = PackNetMasks(matrices, others)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if not self.cfg.reset_optimizer_on_task:  # frozen weights stay frozen only with zeroed moments
            self._reset_optimizer_moments()

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        if task.index == self.num_tasks - 1:
            return
        left = self.num_tasks - task.index - 1
        self.masks.prune(task.index, left / (left + 1))
        self.masks.freeze_others = True  # biases and LayerNorm: task 0's for good
        if self.buffer.size:
            self._reset_optimizer_moments()
            for _ in range(self.cfg.retrain_steps):
                self._gradient_step()
            self._reset_optimizer_moments()

    def _adjust_gradients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.masks.mask_gradients(self.task_index)
        return {}

    def _policy_actions(self, obs: torch.Tensor, task_index: int | torch.Tensor, deterministic: bool) -> torch.Tensor:
        if isinstance(task_index, int):
            return self._policy_view(obs, task_index, deterministic)
        action = torch.empty(obs.shape[0], self.act_dim, device=obs.device)
        for task in task_index.unique().tolist():  # batched evaluation: one weight view per task
            rows = task_index == task
            action[rows] = self._policy_view(obs[rows], task, deterministic)
        return action

    def _policy_view(self, obs: torch.Tensor, task: int, deterministic: bool) -> torch.Tensor:
        if task >= self.task_index:  # the task in training (or a later one) sees every weight
            return super()._policy_actions(obs, task, deterministic)
        view = {f"body.{n}": w for n, w in self.masks.view(task).items()}
        action, _ = functional_call(self.actor, view, (self._body_input(obs, task), self._heads(task)),
                                    {"deterministic": deterministic}, strict=False)
        return action

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "packnet": self.masks.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.masks.load_state_dict(state["packnet"])
