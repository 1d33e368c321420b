"""Plasticity metrics and probes (reference/plasticity.md).

Metrics are functions of tensors an agent already has: hidden activations of a training batch,
penultimate features, weights, gradients. ``PlasticityProbe`` records a network's hidden activations
during a forward pass the agent runs anyway (forward hooks, armed only when a measurement is due,
so there is no extra pass) and turns them into ``plasticity/<network>/<layer>/<metric>`` scalars.

Names follow the reference's naming trap table: ``srank_delta`` (Kumar et al. 2021, δ = 0.01; what
Plasticine and Dohare call "stable rank"), ``stable_rank_classic`` (‖Φ‖_F²/σ₁²), ``effective_rank``
(Roy & Vetterli), ``feature_rank_eps`` (Lyle et al. 2022, on Φ/√n).

Checked against the reference code on identical activations and weights (tests/test_plasticity_parity.py):
FAU as Ma et al.'s forward_with_FAU and Plasticine's compute_active_units, the dormant score and ratio as
Dopamine's estimate_neuron_score / log_dead_neurons_count (``global``) and Plasticine's compute_dormant_units
(``per_layer``), srank_delta and effective_rank as Plasticine's compute_stable_rank / compute_effective_rank,
ReDo's recycling as Dopamine's NeuronRecycler.

Differs:
- τ = 0 marks scores ``isclose`` to 0 (Plasticine); Dopamine tests ``score <= 0`` (the same for ReLU units,
  whose scores are ≥ 0, except scores below 1e-8).
- FAU counts tanh, sigmoid and the sparse activations by a saturation rule (Plasticine's for tanh and
  sigmoid); Ma et al. count ReLU layers only (Adaptive Replay Ratio's ``fau_layers``: agents/arr.py).
- ReDo re-draws incoming weights from the networks' own initialisation, U(±1/√fan_in) (torch's Linear),
  where Dopamine's draws Glorot uniform, its networks' initialisation.
- Rank metrics run on any batch size; Plasticine asserts n ≥ d.
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
    return _norm([p.grad.detach() for p in params if p.grad is not None])


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in tensors]))) if tensors else 0.0


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

    ``members``: the network is an ensemble of that many independent networks (SAC's twin critics),
    each hidden activation captured as (members, n, width) and each parameter stacked on a leading
    member dim. Every member is then measured on its own and logged as ``<name>0``, ``<name>1``, ...;
    ``<name>`` carries the mean over the members of each metric. Pooling the members instead would
    score unit j of one critic and unit j of the other as one unit (issue 24: a layer with 6 dead
    units in one critic logged a dormant ratio of 0).
    """

    def __init__(self, name: str, network: nn.Module, cfg: ProbeConfig, activations: dict[str, str],
                 hooks: dict[str, nn.Module] | None = None, members: int | None = None):
        for kind in activations.values():
            if kind not in ACTIVATIONS:
                raise ValueError(f"unknown activation '{kind}'; allowed: {', '.join(ACTIVATIONS)}")
        self.name, self.network, self.cfg, self.activations = name, network, cfg, activations
        self.members = members
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

    def fau(self, layers: Iterable[str] | None = None) -> torch.Tensor:
        """The pooled FAU of what was captured (every member, every layer or only ``layers``), as a 0-d
        tensor (Adaptive Replay Ratio reads it every update). Pooled over the members as Ma et al.'s
        critic FAU pools Q1 and Q2 (drqv2_adapt_rr.py, Critic.forward_with_FAU)."""
        self.armed = False
        names = list(self.captured) if layers is None else [n for n in layers if n in self.captured]
        return fraction_active([self.captured[n] for n in names], [self.activations[n] for n in names], as_tensor=True)

    def _activation_metrics(self, layers: dict[str, torch.Tensor]) -> dict[str, float]:
        """One network's FAU and dormant ratio per layer and over all layers, and its last layer's ranks,
        as ``<layer>/<metric>``."""
        cfg, out = self.cfg, {}
        for layer, h in layers.items():
            out[f"{layer}/fau"] = fraction_active([h], self.activations[layer])
            out[f"{layer}/dormant_ratio"] = dormant_ratio([h], cfg.dormant_tau, "global")
        if layers:
            out["all/fau"] = fraction_active(layers.values(), [self.activations[n] for n in layers])
            out["all/dormant_ratio"] = dormant_ratio(layers.values(), cfg.dormant_tau, cfg.dormant_averaging)
            if cfg.ranks:
                last = list(layers.values())[-1]
                s = singular_values(last)
                out["last/srank_delta"] = srank_delta(last, s=s)
                out["last/effective_rank"] = effective_rank(last, s=s)
                out["last/feature_rank_eps"] = feature_rank_eps(last, s=s)
        return out

    @staticmethod
    def _parameter_metrics(params: dict[str, torch.Tensor], initial: dict[str, torch.Tensor],
                           gradient_norm: float) -> dict[str, float]:
        """One network's weight magnitude and change per matrix and its gradient norm, as ``<param>/<metric>``."""
        out = {}
        for pname, p in params.items():
            if pname in initial:
                out[f"{pname}/weight_magnitude"] = weight_magnitude(p)
                out[f"{pname}/weight_change"] = weight_change(p, initial[pname])
        out["all/grad_norm"] = gradient_norm
        return out

    def collect(self) -> dict[str, float]:
        self.armed = False
        prefix = f"plasticity/{self.name}"
        params = dict(self.network.named_parameters())
        if self.members is None:
            out = self._activation_metrics(self.captured)
            out.update(self._parameter_metrics(params, self.initial, grad_norm(params.values())))
            return {f"{prefix}/{k}": v for k, v in out.items()}  # ``captured`` stays: ReDo reads it after the step
        per_member = []
        for i in range(self.members):
            member = self._activation_metrics({n: h[i] for n, h in self.captured.items()})
            # a member's matrices are (in, out) slices of the (members, in, out) weights; its (members, 1, width)
            # biases and LayerNorm gains are left out, as a single network's vectors are
            member.update(self._parameter_metrics(
                {n: p[i] for n, p in params.items() if p.dim() >= 3 and p.shape[-2] > 1},
                {n: w[i] for n, w in self.initial.items()},
                _norm([p.grad.detach()[i] for p in params.values() if p.grad is not None])))
            per_member.append(member)
        out = {f"{prefix}{i}/{k}": v for i, member in enumerate(per_member) for k, v in member.items()}
        out.update({f"{prefix}/{k}": sum(m[k] for m in per_member) / self.members for k in per_member[0]})
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


REDO_CONVENTIONS = ("dopamine", "plasticine")


@torch.no_grad()
def recycle_units(layers: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, int]], dormant: list[torch.Tensor],
                  optimizer: torch.optim.Optimizer | None = None, convention: str = "dopamine") -> int:
    """ReDo (Sokar et al., ICML 2023) on a network's hidden layers, in order: ``layers[l]`` is (incoming
    weight, its bias, the unit axis of that weight, outgoing weight, its unit axis): the unit axis is 0 for
    an nn.Linear weight (out, in), -1 of an ensemble's (members, in, out) incoming weight and -2 of its
    outgoing one. ``dormant[l]`` marks layer l's dormant units (with the parameters' leading member dims).

    Every dormant unit gets fresh incoming weights (U(±1/√fan_in), the initialisation of torch's Linear
    and of crl's networks) and zero outgoing weights, so the network's output is unchanged at that moment
    (exactly, where no normalisation follows the layer). ``convention``:
    - ``dopamine`` (Dopamine's labs/redo/weight_recyclers.py, NeuronRecycler.recycle_dead_neurons, the
      paper authors' code): the bias of a dormant unit is zeroed; every layer's incoming weights are
      re-drawn before any outgoing weight is zeroed, so a weight from a dormant unit to a dormant unit of
      the next layer ends at 0; with ``optimizer``, the Adam moments of the changed weight entries are
      zeroed, the biases' moments are kept (its masks cover kernels only).
    - ``plasticine`` (Plasticine's and CleanRL-style ReDo, layer by layer): the bias is re-drawn
      U(±1/√fan_in) with the incoming weights, then the outgoing weights are zeroed before the next
      layer is treated (a dormant-to-dormant weight ends re-drawn); with ``optimizer``, the moments of
      the changed weights and biases are zeroed.
    Returns the number of units recycled."""
    if convention not in REDO_CONVENTIONS:
        raise ValueError(f"unknown ReDo convention '{convention}'; allowed: {', '.join(REDO_CONVENTIONS)}")
    zero_bias = convention == "dopamine"

    def redraw_incoming(w_in, b_in, in_axis, mask):
        bound = 1 / math.sqrt(_unit_view(w_in, in_axis).shape[-2])
        _masked_fill(w_in, in_axis, mask, torch.empty_like(w_in).uniform_(-bound, bound))
        _masked_fill(b_in, -1, mask, 0.0 if zero_bias else torch.empty_like(b_in).uniform_(-bound, bound))

    active = [(layer, mask) for layer, mask in zip(layers, dormant, strict=True) if mask.any()]
    if zero_bias:  # Dopamine: all incoming weights first, then all outgoing ones
        for (w_in, b_in, in_axis, _, _), mask in active:
            redraw_incoming(w_in, b_in, in_axis, mask)
        for (_, _, _, w_out, out_axis), mask in active:
            _masked_fill(w_out, out_axis, mask, 0.0)
    else:
        for (w_in, b_in, in_axis, w_out, out_axis), mask in active:
            redraw_incoming(w_in, b_in, in_axis, mask)
            _masked_fill(w_out, out_axis, mask, 0.0)
    if optimizer is not None:
        for (w_in, b_in, in_axis, w_out, out_axis), mask in active:
            changed = [(w_in, in_axis), (w_out, out_axis)] + ([] if zero_bias else [(b_in, -1)])
            for param, axis in changed:
                for moment in ("exp_avg", "exp_avg_sq"):
                    if moment in optimizer.state.get(param, {}):
                        _masked_fill(optimizer.state[param][moment], axis, mask, 0.0)
    return sum(int(mask.sum()) for _, mask in active)


@torch.no_grad()
def shrink_perturb(params: Iterable[torch.Tensor], fresh: Iterable[torch.Tensor], shrink: float, perturb: float) -> None:
    """Shrink & Perturb (Ash & Adams, NeurIPS 2020): θ ← λ·θ + σ·θ_fresh, θ_fresh a new initialisation."""
    for p, f in zip(params, fresh):
        p.mul_(shrink).add_(f.to(p.device), alpha=perturb)
