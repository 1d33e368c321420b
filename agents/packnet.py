"""PackNet: one policy network, a disjoint share of its weights per task, fixed by pruning (an extension).

Paper: Mallya & Lazebnik, "PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning",
CVPR 2018; in continual RL as in Wołczyk et al., "Continual World", NeurIPS 2021
(``continualworld/methods/packnet.py``).

As in Continual World (checked on identical weights: tests/test_cw_parity.py): PackNet manages the
actor's body, and with a single head (``multihead=False``) the head too (CW's ``num_heads == 1``
branch); several heads are not managed. With ``regularize_critic`` (CW's option, off in the paper's runs
and here by default) the critics are managed the same way. While task t trains, only the kernel entries
it owns receive gradients; biases and LayerNorm parameters (and a single head's biases) train during
task 0 only. After every task but the last, the smallest-magnitude fraction (tasks left)/(tasks left + 1)
of task t's entries of each kernel is zeroed and handed to the next task, so every task gets an equal
share; each CW variable is pruned by its own threshold: μ's and log σ's rows of a single head apart, each
critic apart. The kept entries are then retrained for ``retrain_steps`` (CW: 100k) on the task's buffer
with Adam's moments reset before and after: a phase the loop runs between tasks (``packnet/retrain``: on
the progress bar, in TensorBoard, checkpointed, so a kill during the retraining resumes inside it).
Evaluating task t uses the weights of tasks 0..t only (later tasks' entries read as zero). CW runs
PackNet with gradient clipping at norm 2e-5 (``clip_grad_norm``), where Adam's ε (1e-7, Keras') sets the
step size.

Differs: torch's ``clip_grad_norm_`` scales by clip/(norm + 1e-6) where TF's ``clip_by_global_norm`` uses
clip/norm (a relative 1e-6/norm, below float32 rounding at SAC's gradient norms). With Adam's moments
zeroed at every task switch, an entry that gets no gradient receives an update of exactly 0
(0 / (0 + ε)), so earlier tasks' weights stay bit-identical (tests/test_continual.py), as in CW.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crl.continual import PackNetMasks, shared_critic_parameters, shared_policy_parameters
from crl.core import Phase, Task, UsageError
from crl.extension import Extension
from crl.register import register_extension, register_variant

CRITICS = "critics."  # prefix of the critics' parameters among the managed ones


@dataclass
class PackNetConfig:
    retrain_steps: int = 100_000  # gradient steps on the kept weights after pruning (CW: 100k)
    regularize_critic: bool = False  # also manage the critics' shared weights (CW's option; off in the paper's runs)


@register_extension("packnet", "per-task weight pruning and masks of the policy body (Mallya & Lazebnik 2018)")
class PackNet(Extension):
    config_class = PackNetConfig
    base_defaults = {"clip_grad_norm": 2e-5}  # CW's PackNet runs
    requires = frozenset({"replay", "gaussian_policy"})  # actor.body (nn.Sequential of Linear), policy_actions: OffPolicyLearner
    state = ("masks",)

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        actor = learner.actor
        managed = shared_policy_parameters(actor, learner.num_heads)
        kernels = {f"{n}.weight" for n, m in actor.named_modules() if isinstance(m, nn.Linear)}
        parts = {}
        if learner.num_heads == 1 and actor.head.linear.weight.shape[0] == 2 * learner.act_dim:
            # SAC's (μ, log σ) head: CW's head_mu and head_log_std, two kernels, each pruned on its own
            parts["head.linear.weight"] = [slice(0, learner.act_dim), slice(learner.act_dim, None)]
        if cfg.regularize_critic:
            if "critic" not in getattr(learner, "provides", ()):
                raise UsageError(f"agent.regularize_critic: '{type(learner).__name__}' has no critics to manage")
            for n, p in shared_critic_parameters(learner.critics, learner.num_heads).items():
                managed[CRITICS + n] = p
                if n.startswith("net.weights."):  # (critics, in, out): each critic's kernel pruned on its own
                    kernels.add(CRITICS + n)
                    parts[CRITICS + n] = list(range(p.shape[0]))
        matrices = {n: p for n, p in managed.items() if n in kernels}
        others = {n: p for n, p in managed.items() if n not in kernels}
        self.masks = PackNetMasks(matrices, others, parts)

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
            view = self.masks.view(task, skip_prefix=CRITICS)
        return learner.policy_actions(obs, task, deterministic, weights=view)


register_variant("packnet", "sac+packnet", "SAC + PackNet: per-task weight pruning and masks (Mallya & Lazebnik 2018)")
