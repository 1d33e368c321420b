"""Plasticity metrics and probes (reference/plasticity.md).

Metrics are functions of tensors an agent already has: hidden activations of a training batch,
penultimate features, weights, gradients. ``PlasticityProbe`` records a network's hidden activations
during a forward pass the agent runs anyway (forward hooks, armed only when a measurement is due,
so there is no extra pass) and turns them into ``plasticity/<network>/<layer>/<metric>`` scalars.

Names follow the reference's naming trap table: ``srank_delta`` (Kumar et al. 2021, δ = 0.01; what
Plasticine and Dohare call "stable rank"), ``stable_rank_classic`` (‖Φ‖_F²/σ₁²), ``effective_rank``
(Roy & Vetterli), ``feature_rank_eps`` (Lyle et al. 2022, on Φ/√n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "elephant", "hard_ash")
DORMANT_AVERAGING = ("global", "per_layer")


def active_mask(h: torch.Tensor, activation: str) -> torch.Tensor:
    """Entries that are not saturated (Plasticine's rule): ReLU family f > 0 (for LeakyReLU: the
    positive, unit-slope side), tanh |f| ≤ 0.99, sigmoid 0.01 ≤ f ≤ 0.99. For the sparse activations
    (crl's own rule, no paper fixes one): Hard ASH f ≠ 0 (a kept unit may be negative), elephant
    f ≥ 0.01 (out of its flat tail)."""
    if activation in ("relu", "leaky_relu"):
        return h > 0
    if activation == "tanh":
        return h.abs() <= 0.99
    if activation == "sigmoid":
        return (h >= 0.01) & (h <= 0.99)
    if activation == "hard_ash":
        return h != 0
    if activation == "elephant":
        return h >= 0.01
    raise ValueError(f"unknown activation '{activation}'; allowed: {', '.join(ACTIVATIONS)}")


def fraction_active(layers: Iterable[torch.Tensor], activation: str | Iterable[str] = "relu", *,
                    as_tensor: bool = False) -> float | torch.Tensor:
    """FAU as Ma et al.'s code pools it: active (sample, unit) entries over all entries of all layers.
    ``activation`` is one kind for every layer or one per layer (a CW MLP has tanh, then LeakyReLU).
    ``as_tensor``: a 0-d tensor on the activations' device, read by no one yet (no host sync)."""
    layers = list(layers)
    kinds = [activation] * len(layers) if isinstance(activation, str) else list(activation)
    if not layers:
        return torch.tensor(float("nan")) if as_tensor else float("nan")
    active = sum(active_mask(h, kind).sum() for h, kind in zip(layers, kinds))
    fau = active / sum(h.numel() for h in layers)
    return fau if as_tensor else float(fau)


def neuron_scores(h: torch.Tensor) -> torch.Tensor:
    """ReDo's score per unit (last dim): E|h_i| / (mean_k E|h_k| + 1e-9), expectations over every other dim."""
    mean_abs = h.abs().reshape(-1, h.shape[-1]).mean(0)
    return mean_abs / (mean_abs.mean() + 1e-9)


def dormant_mask(h: torch.Tensor, tau: float) -> torch.Tensor:
    scores = neuron_scores(h)
    return torch.isclose(scores, torch.zeros_like(scores)) if tau == 0 else scores <= tau


def dormant_ratio(layers: Iterable[torch.Tensor], tau: float = 0.025, averaging: str = "global") -> float:
    """τ-dormant units (Sokar et al. 2023). ``global``: all dormant units / all units (Dopamine's
    ReDo code); ``per_layer``: the unweighted mean of each layer's ratio (Plasticine)."""
    if averaging not in DORMANT_AVERAGING:
        raise ValueError(f"unknown averaging '{averaging}'; allowed: {', '.join(DORMANT_AVERAGING)}")
    masks = [dormant_mask(h, tau) for h in layers]
    if not masks:
        return float("nan")
    if averaging == "global":
        return sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    return sum(float(m.float().mean()) for m in masks) / len(masks)


def singular_values(features: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(features.detach().float().reshape(-1, features.shape[-1]))


def srank_delta(features: torch.Tensor, delta: float = 0.01, *, s: torch.Tensor | None = None) -> int:
    """min{k : Σ_{i≤k} σ_i / Σ σ ≥ 1 − δ} (Kumar et al., ICLR 2021). ``s``: the singular values, if
    already computed (the rank metrics share one SVD)."""
    s = singular_values(features) if s is None else s
    cumulative = torch.cumsum(s, 0) / s.sum()
    return int((cumulative < 1 - delta).sum()) + 1


def effective_rank(features: torch.Tensor, *, s: torch.Tensor | None = None) -> float:
    """exp(−Σ p_k log p_k), p_k = σ_k / Σ σ (Roy & Vetterli 2007; no mean-centring)."""
    s = singular_values(features) if s is None else s
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank_classic(features: torch.Tensor, *, s: torch.Tensor | None = None) -> float:
    """‖Φ‖_F² / σ₁² (the classical stable rank, not what Plasticine calls stable rank)."""
    s = singular_values(features) if s is None else s
    return float((s ** 2).sum() / s[0] ** 2)


def feature_rank_eps(features: torch.Tensor, eps: float = 0.01, *, s: torch.Tensor | None = None) -> int:
    """#{σ_i(Φ/√n) > ε} (Lyle et al., ICLR 2022)."""
    n = features.reshape(-1, features.shape[-1]).shape[0]
    s = singular_values(features) if s is None else s
    return int((s / math.sqrt(n) > eps).sum())


def weight_magnitude(weight: torch.Tensor) -> float:
    """Mean |w| (Dohare et al.)."""
    return float(weight.detach().abs().mean())


def weight_change(weight: torch.Tensor, reference: torch.Tensor) -> float:
    """sqrt(Σ(θ − θ_ref)² / #params): RMS distance from a reference copy (here: the initial weights)."""
    return float(((weight.detach() - reference) ** 2).mean().sqrt())


def grad_norm(params: Iterable[torch.Tensor]) -> float:
    """Global L2 norm of the gradients present (what ``clip_grad_norm_`` returns, before clipping)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


@dataclass
class ProbeConfig:
    dormant_tau: float = 0.025  # Ma et al. / Plasticine
    dormant_averaging: str = "global"  # global (ReDo code) | per_layer (Plasticine)
    ranks: bool = True  # srank/effective/feature rank of the last hidden layer (one SVD per network)


class PlasticityProbe:
    """Measures one network: activations of its hidden layers on a batch the agent forwards anyway,
    its weight matrices (magnitude, change from their initial values) and its gradient norm.

    ``activations`` maps each hidden layer's name to its nonlinearity (for the saturation rule).
    Activations arrive through forward hooks on ``hooks[layer]`` modules, or through ``record(layer,
    h)`` from networks without hookable modules (crl.nets.EnsembleCWMLP). Either way only while
    armed: ``arm()`` before the forward pass to measure, ``collect()`` after the backward pass
    (scalars ``plasticity/<network>/<layer>/<metric>``; disarms). ``fau()`` is the cheap pooled FAU
    of what was captured (Adaptive Replay Ratio reads it at every update).
    """

    def __init__(self, name: str, network: nn.Module, cfg: ProbeConfig, activations: dict[str, str],
                 hooks: dict[str, nn.Module] | None = None):
        for kind in activations.values():
            if kind not in ACTIVATIONS:
                raise ValueError(f"unknown activation '{kind}'; allowed: {', '.join(ACTIVATIONS)}")
        self.name, self.network, self.cfg, self.activations = name, network, cfg, activations
        self.armed = False
        self.captured: dict[str, torch.Tensor] = {}
        self.initial = {n: p.detach().clone() for n, p in network.named_parameters() if p.dim() >= 2}
        for layer, module in (hooks or {}).items():
            module.register_forward_hook(self._hook(layer))

    def _hook(self, layer: str):
        def capture(module, inputs, output):
            self.record(layer, output)
        return capture

    def arm(self) -> None:
        self.armed, self.captured = True, {}

    def record(self, layer: str, h: torch.Tensor) -> None:
        if self.armed and layer not in self.captured:  # the first pass after arming: the training batch
            self.captured[layer] = h.detach()

    def fau(self) -> torch.Tensor:
        """The pooled FAU of what was captured, as a 0-d tensor (Adaptive Replay Ratio reads it every update)."""
        self.armed = False
        return fraction_active(self.captured.values(), [self.activations[n] for n in self.captured], as_tensor=True)

    def collect(self) -> dict[str, float]:
        self.armed = False
        prefix, cfg, out = f"plasticity/{self.name}", self.cfg, {}
        layers = self.captured
        for layer, h in layers.items():
            out[f"{prefix}/{layer}/fau"] = fraction_active([h], self.activations[layer])
            out[f"{prefix}/{layer}/dormant_ratio"] = dormant_ratio([h], cfg.dormant_tau, "global")
        if layers:
            out[f"{prefix}/all/fau"] = fraction_active(layers.values(), [self.activations[n] for n in layers])
            out[f"{prefix}/all/dormant_ratio"] = dormant_ratio(layers.values(), cfg.dormant_tau, cfg.dormant_averaging)
            if cfg.ranks:
                last = list(layers.values())[-1]
                s = singular_values(last)
                out[f"{prefix}/last/srank_delta"] = srank_delta(last, s=s)
                out[f"{prefix}/last/effective_rank"] = effective_rank(last, s=s)
                out[f"{prefix}/last/feature_rank_eps"] = feature_rank_eps(last, s=s)
        for pname, p in self.network.named_parameters():
            if pname in self.initial:
                out[f"{prefix}/{pname}/weight_magnitude"] = weight_magnitude(p)
                out[f"{prefix}/{pname}/weight_change"] = weight_change(p, self.initial[pname])
        out[f"{prefix}/all/grad_norm"] = grad_norm(self.network.parameters())
        return out  # ``captured`` stays until the next arm(): ReDo reads it after the optimiser step


# -- interventions ---------------------------------------------------------------------------------

def _unit_view(t: torch.Tensor, unit_axis: int) -> torch.Tensor:
    return t.movedim(unit_axis, -1)


def _masked_fill(t: torch.Tensor, unit_axis: int, mask: torch.Tensor, values: torch.Tensor | float) -> None:
    """t[..., unit j ...] = values where mask, through a view with the unit axis last. ``mask`` has the
    parameter's leading (ensemble) dims and the unit dim; other dims broadcast."""
    view = _unit_view(t, unit_axis)
    m = mask.view(*mask.shape[:-1], *([1] * (view.dim() - mask.dim())), mask.shape[-1])
    if isinstance(values, torch.Tensor):
        values = _unit_view(values, unit_axis)
    view.copy_(torch.where(m, values, view))


@torch.no_grad()
def recycle_units(w_in: torch.Tensor, b_in: torch.Tensor, in_axis: int, w_out: torch.Tensor, out_axis: int,
                  dormant: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> int:
    """ReDo (Sokar et al., ICML 2023): for each dormant unit, fresh incoming weights and bias (U(±1/√fan_in),
    torch's Linear initialisation) and zero outgoing weights, so the network's output is unchanged at
    that moment (exactly, where no normalisation follows the layer). ``in_axis``: the unit axis of
    ``w_in`` (0 for an nn.Linear weight, -1 for an ensemble's (members, in, out) weight); ``out_axis``:
    the unit axis of ``w_out``. With ``optimizer``, the Adam moments of every changed entry are zeroed
    (Dopamine's ReDo). Returns the number of units recycled."""
    if not dormant.any():
        return 0
    fan_in = _unit_view(w_in, in_axis).shape[-2]
    bound = 1 / math.sqrt(fan_in)
    _masked_fill(w_in, in_axis, dormant, torch.empty_like(w_in).uniform_(-bound, bound))
    _masked_fill(b_in, -1, dormant, torch.empty_like(b_in).uniform_(-bound, bound))
    _masked_fill(w_out, out_axis, dormant, 0.0)
    if optimizer is not None:
        for param, axis in ((w_in, in_axis), (b_in, -1), (w_out, out_axis)):
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in optimizer.state.get(param, {}):
                    _masked_fill(optimizer.state[param][moment], axis, dormant, 0.0)
    return int(dormant.sum())


@torch.no_grad()
def shrink_perturb(params: Iterable[torch.Tensor], fresh: Iterable[torch.Tensor], shrink: float, perturb: float) -> None:
    """Shrink & Perturb (Ash & Adams, NeurIPS 2020): θ ← λ·θ + σ·θ_fresh, θ_fresh a new initialisation."""
    for p, f in zip(params, fresh):
        p.mul_(shrink).add_(f.to(p.device), alpha=perturb)
