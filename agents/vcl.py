"""VCL: an extension making the policy a Bayesian network; the posterior after each task is the next task's prior.

Paper: Nguyen et al., "Variational Continual Learning", ICLR 2018; in continual RL as in Wołczyk et
al., "Continual World", NeurIPS 2021 (``continualworld/methods/vcl.py``, ``VCL_SAC``).

As in Continual World: every linear layer of the actor, body and head, holds a mean-field Gaussian
posterior over its weights and biases (log-variance initialised to −6; ``crl.continual.BayesianLinear``),
and each forward pass draws one sample of them. The prior starts as N(0, 1); at the start of every
later task the body's prior becomes its current posterior, and the body's LayerNorm is frozen. The loss
gains λ·KL(posterior ‖ prior) summed over the body (λ = 1, ``reg_coef``), except during the first task
(CW's reference runs: ``first_task_kl=False``). With ``first_task_kl`` the first task is regularised
too and the current head's rows join the KL, towards the head's prior, which is never updated (CW's
``_update_layer_prior`` skips multi-head layers); a single head (``multihead=False``) is treated like a
body layer. The critics are plain (CW supports no critic VCL). The KL equals CW's ``kl_divergence`` summed
over the same layers (tests/test_cw_parity.py).

Differs: the posterior means start like ``nn.Linear`` (as crl's other actors) rather than Glorot
weights and zero biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crl.continual import BayesianLinear
from crl.core import Task
from crl.extension import Extension
from crl.register import register_extension, register_variant


@dataclass
class VCLConfig:
    reg_coef: float = 1.0  # λ on the KL (CW: 1.0)
    first_task_kl: bool = False  # regularise during the first task too, and the current head (CW reference: off)
    logvar_init: float = -6.0  # initial log-variance of every weight and bias (CW: −6)


@register_extension("vcl", "Bayesian policy, each task's posterior the next prior (Nguyen et al. 2018; CW: λ=1)")
class VCL(Extension):
    config_class = VCLConfig
    requires = frozenset({"gaussian_policy"})
    excludes = {name: "they act on plain linear weights" for name in ("redo", "shrink-perturb", "reset", "nap")}

    @classmethod
    def policy_linear(cls, cfg):
        def bayesian(in_features: int, out_features: int, fp32: bool) -> BayesianLinear:
            return BayesianLinear(in_features, out_features, fp32=fp32, logvar_init=cfg.logvar_init)

        return bayesian

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        actor = learner.actor
        self.regularized_layers = [m for m in actor.body if isinstance(m, BayesianLinear)]
        if learner.num_heads == 1:  # CW treats a single head like a body layer (only multi-head layers are special)
            self.regularized_layers.append(actor.head.linear)
        self.body_norms = [m for m in actor.body if isinstance(m, nn.LayerNorm)]

    def begin_task(self, task: Task) -> None:
        if task.index > 0:  # the loop calls begin_task once per task, also across a resume
            for layer in self.regularized_layers:
                layer.posterior_to_prior()
        self.after_load()

    def after_load(self) -> None:
        # CW sets the body's LayerNorm trainable=False from the second task on (requires_grad is not
        # checkpointed: re-derived after a load)
        for norm in self.body_norms:
            norm.requires_grad_(self.learner.task_index == 0)

    def kl(self) -> torch.Tensor:
        """KL(posterior ‖ prior) of what VCL regularises: the body (with a single head, it too), and with
        ``first_task_kl`` the current one of several heads."""
        learner = self.learner
        total = sum(layer.kl() for layer in self.regularized_layers)
        if self.cfg.first_task_kl and learner.num_heads > 1:
            out = learner.actor.head.out_dim
            total = total + learner.actor.head.linear.kl(slice(learner.task_index * out, (learner.task_index + 1) * out))
        return total

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.learner.task_index == 0 and not self.cfg.first_task_kl:
            return None
        return self.cfg.reg_coef * self.kl()


register_variant("vcl", "sac+vcl", "SAC + VCL: Bayesian actor, each task's posterior the next prior "
                 "(Nguyen et al. 2018; CW: λ=1)")
