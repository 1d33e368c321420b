"""Kickstarting: an extension distilling the previous policy on the states the learner visits now.

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

import torch

from crl.continual import gaussian_kl
from crl.core import Task
from crl.extension import Extension
from crl.registry import register_extension, register_variant


@dataclass
class KickstartConfig:
    ks_coef: float = 100.0  # weight of the distillation KL


@register_extension("kickstart", "distil the previous policy on current states (Wołczyk et al. 2024)")
class Kickstart(Extension):
    config_class = KickstartConfig
    requires = frozenset({"gaussian_policy"})
    state = ("teacher", "teacher_tasks")

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        self.teacher = copy.deepcopy(learner.actor).requires_grad_(False)
        self.teacher_tasks = 0  # heads 0..teacher_tasks-1 of the teacher are distilled (0: no teacher yet)

    def end_task(self, task: Task) -> None:
        self.teacher.load_state_dict(self.learner.actor.state_dict())
        self.teacher_tasks = task.index + 1

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.teacher_tasks:
            return None
        learner, obs = self.learner, batch["obs"]
        heads = torch.randint(0, self.teacher_tasks, (obs.shape[0],), device=learner.device)
        x = learner.policy_input(obs, heads)
        with torch.no_grad():
            mu_t, log_std_t = self.teacher.distribution(x, learner.heads(heads))
        mu, log_std = learner.actor.distribution(x, learner.heads(heads))
        return self.cfg.ks_coef * gaussian_kl(mu_t, log_std_t, mu, log_std).mean()


register_variant("kickstart", "sac+kickstart",
                 "SAC + kickstarting: distil the previous policy on current states (Wołczyk et al. 2024)")
