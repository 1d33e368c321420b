"""Kickstarting: an extension distilling the previous policy on the states the learner visits now.

Paper: Wołczyk et al., "Fine-tuning Reinforcement Learning Models is Secretly a Forgetting Mitigation
Problem", ICML 2024 ("KS"; after Schmitt et al., "Kickstarting Deep Reinforcement Learning", 2018).
Reference code: the authors' NetHack learner (``BartekCupial/finetuning-RL-as-CL`` @390d204,
``sf_examples/nethack/algo/learning/learner.py``: ``_kickstarting_loss`` and the coefficient's decay);
the paper's Meta-World (SAC) code is not public, so nothing here is checked against a SAC version.

At the end of each task the actor is copied as the teacher. While later tasks train, the actor also
minimises ``ks_coef`` · decay^t · mean over the current batch of KL(teacher ‖ actor), summed over
action dimensions (the reference's ``F.kl_div(log π, log π_teacher, log_target=True).sum(1)``, batch
mean, × coefficient), with t the gradient steps since the teacher was taken (the reference multiplies
its coefficient by ``kickstarting_loss_decay`` after every optimiser step; its NetHack runs: 0.75 and
0.99998; here ``ks_decay`` = 1: no decay, the reference's default). The states are those of the
current batch (the states the agent visits now, which the earlier policies never saw: the paper's
"far" states, where forgetting happens), each row through one earlier task's head drawn at random.

Differs from the reference:
- the reference distils one pre-trained categorical policy into the same task's policy on on-policy
  (APPO) rollouts; here a Gaussian actor along a sequence, on replay-buffer states, the teacher being
  the actor after the previous task with all its heads;
- ``ks_coef`` = 100 is ClonEx's cloning weight, not a value from the paper (which gives none for
  Meta-World that could be checked);
- ``ks_mean`` picks the Gaussians compared: ``pre_tanh`` (default: the exact KL of the tanh-squashed
  policies) or ``squashed`` (tanh(μ) with log σ, as the same authors' ClonEx code; agents/clonex.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from crl.continual import gaussian_kl
from crl.core import Task, UsageError
from crl.extension import Extension
from crl.register import register_extension, register_variant


@dataclass
class KickstartConfig:
    ks_coef: float = 100.0  # weight of the distillation KL
    ks_decay: float = 1.0  # the weight is multiplied by this after every gradient step since the teacher was taken
    ks_mean: str = "pre_tanh"  # pre_tanh: KL of the pre-tanh Gaussians | squashed: on tanh(μ) (ClonEx's code)


DISTILLED_MEANS = ("pre_tanh", "squashed")


@register_extension("kickstart", "distil the previous policy on current states (Wołczyk et al. 2024)")
class Kickstart(Extension):
    config_class = KickstartConfig
    requires = frozenset({"gaussian_policy"})
    state = ("teacher", "teacher_tasks", "teacher_step")

    def __init__(self, learner, cfg):
        if cfg.ks_mean not in DISTILLED_MEANS:
            raise UsageError(f"unknown ks_mean '{cfg.ks_mean}'; allowed: {', '.join(DISTILLED_MEANS)}")
        super().__init__(learner, cfg)
        self.teacher = copy.deepcopy(learner.actor).requires_grad_(False)
        self.teacher_tasks = 0  # heads 0..teacher_tasks-1 of the teacher are distilled (0: no teacher yet)
        self.teacher_step = 0  # the learner's gradient_steps when the teacher was taken (the decay's origin)

    def end_task(self, task: Task) -> None:
        self.teacher.load_state_dict(self.learner.actor.state_dict())
        self.teacher_tasks = task.index + 1
        self.teacher_step = self.learner.gradient_steps

    def coefficient(self) -> float:
        """The distillation weight of the coming gradient step: ``ks_coef`` · ``ks_decay``^steps."""
        return self.cfg.ks_coef * self.cfg.ks_decay ** (self.learner.gradient_steps - self.teacher_step)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.teacher_tasks:
            return None
        learner, obs = self.learner, batch["obs"]
        heads = torch.randint(0, self.teacher_tasks, (obs.shape[0],), device=learner.device)
        x = learner.policy_input(obs, heads)
        with torch.no_grad():
            mu_t, log_std_t = self.teacher.distribution(x, learner.heads(heads))
        mu, log_std = learner.actor.distribution(x, learner.heads(heads))
        if self.cfg.ks_mean == "squashed":
            mu_t, mu = torch.tanh(mu_t), torch.tanh(mu)
        return self.coefficient() * gaussian_kl(mu_t, log_std_t, mu, log_std).mean()


register_variant("kickstart", "sac+kickstart",
                 "SAC + kickstarting: distil the previous policy on current states (Wołczyk et al. 2024)")
