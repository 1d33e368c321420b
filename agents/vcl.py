"""VCL: SAC whose actor is a Bayesian network; the posterior after each task is the next task's prior.

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
body layer. The critics are plain (CW supports no critic VCL).

Differs: the posterior means start like ``nn.Linear`` (as crl's other actors) rather than Glorot
weights and zero biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crl.agents.sac import SAC, Actor, SACConfig
from crl.continual import BayesianLinear
from crl.core import Task, UsageError


@dataclass
class VCLConfig(SACConfig):
    reg_coef: float = 1.0  # λ on the KL (CW: 1.0)
    first_task_kl: bool = False  # regularise during the first task too, and the current head (CW reference: off)
    logvar_init: float = -6.0  # initial log-variance of every weight and bias (CW: −6)


class VCL(SAC):
    config_class = VCLConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: VCLConfig, device: torch.device):
        unsupported = [name for name, on in (("redo_every", config.redo_every), ("reset_layers", config.reset_layers),
                                             ("sp_shrink/sp_perturb", config.sp_shrink != 1 or config.sp_perturb != 0),
                                             ("nap", config.nap)) if on]
        if unsupported:
            raise UsageError(f"vcl does not support {', '.join(unsupported)} (they act on plain linear weights); "
                             "allowed with vcl: the plasticity probes and the other SAC options")
        super().__init__(obs_dim, act_dim, num_tasks, config, device)
        self.regularized_layers = [m for m in self.actor.body if isinstance(m, BayesianLinear)]
        if self.num_heads == 1:  # CW treats a single head like a body layer (only multi-head layers are special)
            self.regularized_layers.append(self.actor.head.linear)
        self.body_norms = [m for m in self.actor.body if isinstance(m, nn.LayerNorm)]

    def _make_actor(self) -> Actor:
        def bayesian(in_features: int, out_features: int, fp32: bool) -> BayesianLinear:
            return BayesianLinear(in_features, out_features, fp32=fp32, logvar_init=self.cfg.logvar_init)

        return Actor(self._in_dim, self.act_dim, self.num_heads, self.cfg, linear=bayesian)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.index > 0:  # the loop calls begin_task once per task, also across a resume
            for layer in self.regularized_layers:
                layer.posterior_to_prior()
        self._freeze_norms()

    def _freeze_norms(self) -> None:
        # CW sets the body's LayerNorm trainable=False from the second task on (requires_grad is not
        # checkpointed: load_state_dict calls this again)
        for norm in self.body_norms:
            norm.requires_grad_(self.task_index == 0)

    def kl(self) -> torch.Tensor:
        """KL(posterior ‖ prior) of what VCL regularises: the body (with a single head, it too), and with
        ``first_task_kl`` the current one of several heads."""
        total = sum(layer.kl() for layer in self.regularized_layers)
        if self.cfg.first_task_kl and self.num_heads > 1:
            out = self.actor.head.out_dim
            total = total + self.actor.head.linear.kl(slice(self.task_index * out, (self.task_index + 1) * out))
        return total

    def _auxiliary_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.task_index == 0 and not self.cfg.first_task_kl:
            return None
        return self.cfg.reg_coef * self.kl()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._freeze_norms()
