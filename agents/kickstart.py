"""Kickstarting: SAC distilling the previous policy on the states it visits now.

Paper: Wołczyk et al., "Fine-tuning Reinforcement Learning Models is Secretly a Forgetting Mitigation
Problem", ICML 2024 ("KS"; after Schmitt et al., "Kickstarting Deep Reinforcement Learning", 2018).

At the end of each task the actor is copied as the teacher. While later tasks train, the actor also
minimises ``ks_coef`` · KL(teacher ‖ actor) on the states of the current batch (states the agent
visits now, which the earlier policies never saw: the paper's "far" states, where forgetting
happens), each row through one earlier task's head drawn at random, so every earlier head keeps its
behaviour where the body is changing.

Differs from the paper: the paper distils one pre-trained policy into the same task's policy; along
a sequence the teacher is the actor after the previous task with all its heads. ``ks_coef`` = 100 is
ClonEx's cloning weight, not a value from the paper (which gives none for Meta-World).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from crl.agents.sac import SAC, SACConfig
from crl.continual import gaussian_kl
from crl.core import Task


@dataclass
class KickstartConfig(SACConfig):
    ks_coef: float = 100.0  # weight of the distillation KL


class Kickstart(SAC):
    config_class = KickstartConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: KickstartConfig, device: torch.device):
        super().__init__(obs_dim, act_dim, num_tasks, config, device)
        self.teacher = None
        self.teacher_tasks = 0  # heads 0..teacher_tasks-1 of the teacher are distilled

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        self.teacher = copy.deepcopy(self.actor).requires_grad_(False)
        self.teacher_tasks = task.index + 1

    def _auxiliary_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        obs = batch["obs"]
        heads = torch.randint(0, self.teacher_tasks, (obs.shape[0],), device=self.device)
        x = self._body_input(obs, heads)
        with torch.no_grad():
            mu_t, log_std_t = self.teacher.distribution(x, self._heads(heads))
        mu, log_std = self.actor.distribution(x, self._heads(heads))
        return self.cfg.ks_coef * gaussian_kl(mu_t, log_std_t, mu, log_std).mean()

    def state_dict(self) -> dict[str, Any]:
        teacher = self.teacher.state_dict() if self.teacher is not None else None
        return {**super().state_dict(), "teacher": teacher, "teacher_tasks": self.teacher_tasks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher_tasks = state["teacher_tasks"]
        self.teacher = None
        if state["teacher"] is not None:
            self.teacher = copy.deepcopy(self.actor).requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])
