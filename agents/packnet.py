"""PackNet: one policy network, a disjoint share of its weights per task, fixed by pruning (an extension).

Paper: Mallya & Lazebnik, "PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning",
CVPR 2018; in continual RL as in Wołczyk et al., "Continual World", NeurIPS 2021
(``continualworld/methods/packnet.py``).

As in Continual World: PackNet manages the actor's body (the per-task heads are not managed, nor
the critics: ``regularize_critic=False``). While task t trains, only the weight-matrix entries it
owns receive gradients; biases and LayerNorm parameters train during task 0 only. After every task
but the last, the smallest-magnitude fraction (tasks left)/(tasks left + 1) of task t's entries is
zeroed and handed to the next task, so every task gets an equal share; the kept entries are then
retrained for ``retrain_steps`` (CW: 100k) on the task's buffer with Adam's moments reset before and
after: a phase the loop runs between tasks (``packnet/retrain``: on the progress bar, in TensorBoard,
checkpointed, so a kill during the retraining resumes inside it). Evaluating task t uses the weights of tasks 0..t only (later tasks' entries read as zero).
CW runs PackNet with gradient clipping at norm 2e-5 (``clip_grad_norm``).

With Adam's moments zeroed at every task switch, an entry that gets no gradient receives an update
of exactly 0 (0 / (0 + ε)), so earlier tasks' weights stay bit-identical (tests/test_continual.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crl.continual import PackNetMasks
from crl.core import Phase, Task
from crl.extension import Extension
from crl.registry import register_extension, register_variant


@dataclass
class PackNetConfig:
    retrain_steps: int = 100_000  # gradient steps on the kept weights after pruning (CW: 100k)


@register_extension("packnet", "per-task weight pruning and masks of the policy body (Mallya & Lazebnik 2018)")
class PackNet(Extension):
    config_class = PackNetConfig
    base_defaults = {"clip_grad_norm": 2e-5}  # CW's PackNet runs
    requires = frozenset({"replay", "gaussian_policy"})  # actor.body (nn.Sequential of Linear), policy_actions: OffPolicyLearner
    state = ("masks",)

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        body = dict(learner.actor.body.named_parameters())
        matrices = {n: p for n, p in body.items()
                    if isinstance(learner.actor.body[int(n.split(".")[0])], nn.Linear) and n.endswith("weight")}
        others = {n: p for n, p in body.items() if n not in matrices}
        self.masks = PackNetMasks(matrices, others)

    def begin_task(self, task: Task) -> None:
        if not self.learner.cfg.reset_optimizer_on_task:  # frozen weights stay frozen only with zeroed moments
            self.learner.reset_optimizer_moments()

    def phases(self, task: Task) -> list[Phase]:
        if task.index == self.learner.num_tasks - 1:
            return []
        # with an empty buffer the weights are still pruned, only not retrained
        return [Phase("packnet/retrain", self.cfg.retrain_steps if self.learner.buffer.size else 0)]

    def begin_phase(self, phase: Phase, task: Task) -> None:
        left = self.learner.num_tasks - task.index - 1
        self.masks.prune(task.index, left / (left + 1))
        self.masks.freeze_others = True  # biases and LayerNorm: task 0's for good
        self.learner.reset_optimizer_moments()

    def phase_step(self, phase: Phase) -> dict[str, torch.Tensor]:
        return self.learner.gradient_step()

    def end_phase(self, phase: Phase, task: Task) -> None:
        self.learner.reset_optimizer_moments()

    def adjust_gradients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.masks.mask_gradients(self.learner.task_index)
        return {}

    def act(self, obs: torch.Tensor, task_index: int | torch.Tensor, deterministic: bool) -> torch.Tensor | None:
        learner = self.learner
        if isinstance(task_index, int):
            return self._view_actions(obs, task_index, deterministic)
        action = torch.empty(obs.shape[0], learner.act_dim, device=obs.device)
        for task in task_index.unique().tolist():  # batched evaluation: one weight view per task
            rows = task_index == task
            action[rows] = self._view_actions(obs[rows], task, deterministic)
        return action

    def _view_actions(self, obs: torch.Tensor, task: int, deterministic: bool) -> torch.Tensor:
        learner = self.learner
        if task >= learner.task_index:  # the task in training (or a later one) sees every weight
            view = {}
        else:
            view = {f"body.{n}": w for n, w in self.masks.view(task).items()}
        return learner.policy_actions(obs, task, deterministic, weights=view)


register_variant("packnet", "sac+packnet", "SAC + PackNet: per-task weight pruning and masks (Mallya & Lazebnik 2018)")
