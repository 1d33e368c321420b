"""Plasticity interventions as extensions of any base learner that exposes its networks
(reference/plasticity.md): ReDo, Shrink & Perturb, layer resets, Normalize-and-Project.

They act on ``learner.networks()`` = {"actor": a policy with an ``nn.Sequential`` ``body`` and a
``MultiHead`` ``head``, "critic": crl.offpolicy.TwinCritic}, on ``learner.fresh_networks()`` (new
initialisations) and on the learner's optimiser; ``sync_targets()`` keeps the target networks in
step with a weight change. Compose them by name: ``sac+redo``, ``td3+shrink-perturb``, ``ewc+nap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crl.core import Task, UsageError
from crl.extension import Extension
from crl.plasticity import REDO_CONVENTIONS, dormant_mask, recycle_units, shrink_perturb
from crl.register import register_extension

RESET_GROUPS = ("actor", "actor_head", "critic", "critic_head")
_NEEDS = frozenset({"networks"})


def unit_layers(learner) -> dict[str, list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, int]]]:
    """Per network, each hidden layer as (incoming weight, bias, its unit axis, outgoing weight, its unit
    axis): nn.Linear weights are (out, in), the critics' ensemble weights (2, in, out)."""
    actor, net = learner.actor, learner.critics.net
    linears = [m for m in actor.body if isinstance(m, nn.Linear)]
    outgoing = [m.weight for m in linears[1:]] + [actor.head.linear.weight]
    return {
        "actor": [(m.weight, m.bias, 0, w_out, 1) for m, w_out in zip(linears, outgoing)],
        "critic": [(net.weights[i], net.biases[i], -1, net.weights[i + 1], -2) for i in range(len(net.weights) - 1)],
    }


def hidden_weights(learner) -> list[torch.Tensor]:
    """Every hidden weight matrix of the actor and of both critics (not the output heads)."""
    net = learner.critics.net
    return [m.weight for m in learner.actor.body if isinstance(m, nn.Linear)] + list(net.weights[:-1])


@dataclass
class ReDoConfig:
    redo_every: int = 1000  # recycle τ-dormant hidden units every N gradient steps
    redo_tau: float = 0.025  # τ (ReDo; Ma et al.)
    redo_reset_optimizer: bool = True  # zero the Adam moments of recycled weights (Dopamine's ReDo)
    redo_convention: str = "dopamine"  # dopamine (biases zeroed) | plasticine (biases re-drawn): crl.plasticity.recycle_units


@register_extension("redo", "ReDo: recycle τ-dormant units every N gradient steps (Sokar et al. 2023)")
class ReDo(Extension):
    """Units whose activation score (mean |h| over the batch, over the layer's mean) is ≤ τ get fresh incoming
    weights and zero outgoing ones; each critic of the pair is scored on its own.

    Follows Dopamine's ReDo (``labs/redo/weight_recyclers.py``, the paper authors' code) by default: dormant
    units' biases zeroed, all incoming weights re-drawn before the outgoing ones are zeroed, the weights'
    Adam moments zeroed (``redo_convention=plasticine``: Plasticine's layer-by-layer variant, biases re-drawn).
    Differs from Dopamine's: fresh incoming weights are drawn from the networks' own initialisation
    (U(±1/√fan_in), torch's Linear) where Dopamine's networks and recycler use Glorot uniform; τ = 0 marks
    scores ``isclose`` to 0 (Plasticine) where Dopamine tests ``score <= 0``."""

    config_class = ReDoConfig
    requires = _NEEDS

    def __init__(self, learner, cfg):
        if cfg.redo_convention not in REDO_CONVENTIONS:
            raise UsageError(f"unknown redo_convention '{cfg.redo_convention}'; allowed: {', '.join(REDO_CONVENTIONS)}")
        super().__init__(learner, cfg)

    def _due(self, steps: int) -> bool:
        return self.cfg.redo_every > 0 and steps > 0 and steps % self.cfg.redo_every == 0

    def capture(self) -> frozenset[str]:
        return frozenset(self.learner.probes) if self._due(self.learner.gradient_steps) else frozenset()

    def after_update(self, stats):
        # gradient_steps has just advanced: the step that captured was due at the old count
        learner = self.learner
        if not self._due(learner.gradient_steps - 1):
            return {}
        dormant = {name: [dormant_mask(h, self.cfg.redo_tau) if probe.members is None
                          else torch.stack([dormant_mask(m, self.cfg.redo_tau) for m in h])  # each member alone
                          for h in probe.captured.values()]  # captured in layer order
                   for name, probe in learner.probes.items()}
        optimizer = learner.optimizer if self.cfg.redo_reset_optimizer else None
        recycled = sum(recycle_units(layers, dormant[name], optimizer, self.cfg.redo_convention)
                       for name, layers in unit_layers(learner).items())
        return {"redo/recycled_units": torch.tensor(float(recycled))}


@dataclass
class ShrinkPerturbConfig:
    sp_shrink: float = 0.8  # θ ← shrink·θ + perturb·θ_fresh at each task switch (a setting to tune per study,
    sp_perturb: float = 0.2  # not a paper's value; Ash & Adams 2020 tune both)


@register_extension("shrink-perturb", "Shrink & Perturb at each task switch (Ash & Adams 2020)")
class ShrinkPerturb(Extension):
    config_class = ShrinkPerturbConfig
    requires = _NEEDS

    def begin_task(self, task: Task) -> None:
        learner = self.learner
        if learner.gradient_steps == 0:  # at a switch to a new task, not before the first
            return
        fresh = learner.fresh_networks()
        for name, net in learner.networks().items():
            shrink_perturb(net.parameters(), fresh[name].parameters(), self.cfg.sp_shrink, self.cfg.sp_perturb)
        learner.sync_targets()


@dataclass
class ResetConfig:
    reset_layers: tuple[str, ...] = ("actor_head", "critic_head")  # any of actor, actor_head, critic, critic_head
    reset_on_task: bool = True  # re-initialised at each task switch...
    reset_every: int = 0  # ...and/or every N gradient steps


@register_extension("reset", "re-initialise networks or their heads at task switches / every N steps "
                             "(Nikishin et al. 2022)")
class Reset(Extension):
    config_class = ResetConfig
    requires = _NEEDS

    def __init__(self, learner, cfg):
        unknown = [g for g in cfg.reset_layers if g not in RESET_GROUPS]
        if unknown:
            raise UsageError(f"unknown layer group(s) {', '.join(unknown)} in reset_layers; "
                             f"allowed: {', '.join(RESET_GROUPS)}")
        super().__init__(learner, cfg)

    def begin_task(self, task: Task) -> None:
        if self.learner.gradient_steps > 0 and self.cfg.reset_on_task:
            self.reset()

    def after_update(self, stats):
        every = self.cfg.reset_every
        if every > 0 and self.learner.gradient_steps % every == 0:
            self.reset()
        return {}

    @torch.no_grad()
    def reset(self) -> None:
        """Re-initialise whole networks or their output heads, with fresh Adam moments for them."""
        learner = self.learner
        fresh = learner.fresh_networks()
        actor, critics = learner.networks()["actor"], learner.networks()["critic"]
        pairs = {"actor": (actor, fresh["actor"]), "actor_head": (actor.head, fresh["actor"].head),
                 "critic": (critics, fresh["critic"])}
        net, fresh_net = critics.net, fresh["critic"].net
        for name in self.cfg.reset_layers:
            if name == "critic_head":  # the critics' output layer: the ensemble's last weight and bias
                params = [(net.weights[-1], fresh_net.weights[-1]), (net.biases[-1], fresh_net.biases[-1])]
            else:
                params = list(zip(pairs[name][0].parameters(), pairs[name][1].parameters()))
            for p, new in params:
                p.copy_(new)
                for moment in learner.optimizer.state.get(p, {}).values():
                    if moment.shape == p.shape:
                        moment.zero_()
        learner.sync_targets()


@register_extension("nap", "Normalize-and-Project: LayerNorm before every nonlinearity, hidden weights kept "
                           "at their initial norm (Lyle et al. 2024)")
class NaP(Extension):
    requires = _NEEDS
    state = ("norms",)

    @classmethod
    def network_options(cls, cfg):
        return {"norm_all": True}

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        self.norms = self.current_norms()

    @torch.no_grad()
    def current_norms(self) -> list[torch.Tensor]:
        """Frobenius norm of each hidden matrix; per critic for the (2, in, out) ensemble weights."""
        return [w.norm() if w.dim() == 2 else w.norm(dim=(1, 2), keepdim=True) for w in hidden_weights(self.learner)]

    @torch.no_grad()
    def after_update(self, stats):
        for w, norm, current in zip(hidden_weights(self.learner), self.norms, self.current_norms()):
            w.mul_(norm / current.clamp_min(1e-12))
        return {}
