"""Continual-learning pieces that compose with a base learner: parameter regularisers (L2, EWC, SI,
MAS), PackNet's per-task weight ownership, A-GEM's gradient projection, a per-task episodic memory,
the Gaussian KL used for cloning and distillation, and VCL's Bayesian linear layer.

They follow Continual World's implementations (``awarelab/continual_world``, continualworld/methods/;
reference/continual-world.md) and know nothing about SAC: each takes parameters, tensors or a
policy with a ``distribution(x, head) -> (μ, log σ)`` method, so the agents in agents/ (and any
other learner) assemble them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from crl.core import UsageError
from crl.nets import in_fp32


# -- what CW's methods regularise and prune: the networks' ``common_variables`` ---------------------

def shared_policy_parameters(policy: nn.Module, num_heads: int) -> dict[str, nn.Parameter]:
    """{name in ``policy``: parameter} of what the tasks share, CW's ``MlpActor.common_variables``
    (``sac/models.py:136-143``): the body, and with a single head (``multihead=False``) the head too.
    A policy without a ``head`` attribute (DQN's Q-network: heads inside its body) gives its body."""
    shared = {f"body.{n}": p for n, p in policy.body.named_parameters()}
    head = getattr(policy, "head", None)
    if num_heads == 1 and isinstance(head, nn.Module):
        shared.update({f"head.{n}": p for n, p in head.named_parameters()})
    return shared


def shared_critic_parameters(critics: nn.Module, num_heads: int) -> dict[str, nn.Parameter]:
    """{name in ``critics``: parameter} of what the tasks share in twin critics (``crl.offpolicy.TwinCritic``),
    CW's ``MlpCritic.common_variables``: everything but the per-task output heads; with a single head, all."""
    heads = {f"net.{n}" for n in critics.net.output_parameter_names()} if num_heads > 1 else set()
    return {n: p for n, p in critics.named_parameters() if n not in heads}


# -- quadratic parameter regularisers (CW's Regularization_SAC) ------------------------------------

class ParameterRegularizer:
    """Penalty coef · Σ_i w_i (θ_i − θ*_i)² over named parameters.

    ``consolidate(importance)`` is called at the end of a task: the anchors θ* become the current
    parameters and the task's importance is added to the weights w (CW sums importances over tasks,
    L2's too, whose importance is 1 per task). Before the first consolidation there is no penalty.
    """

    def __init__(self, params: dict[str, nn.Parameter], coef: float):
        self.params, self.coef = params, coef
        self.anchors = {n: p.detach().clone() for n, p in params.items()}
        self.weights = {n: torch.zeros_like(p) for n, p in params.items()}
        self.consolidations = 0

    def consolidate(self, importance: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            self.anchors[name] = p.detach().clone()
            self.weights[name] += importance[name].detach()
        self.consolidations += 1

    def distance(self) -> torch.Tensor | None:
        """Σ_i w_i (θ_i − θ*_i)², without the coefficient; None before the first consolidation."""
        if not self.consolidations:
            return None
        return sum(((p - self.anchors[n]) ** 2 * self.weights[n]).sum() for n, p in self.params.items())

    def penalty(self) -> torch.Tensor | None:
        distance = self.distance()
        return None if distance is None else self.coef * distance

    def state_dict(self) -> dict[str, Any]:
        return {"anchors": self.anchors, "weights": self.weights, "consolidations": self.consolidations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(iter(self.params.values())).device
        self.anchors = {n: t.to(device) for n, t in state["anchors"].items()}
        self.weights = {n: t.to(device) for n, t in state["weights"].items()}
        self.consolidations = state["consolidations"]


class _Distribution(nn.Module):
    """Routes ``functional_call`` to a policy's ``distribution`` method."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, x: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy.distribution(x, head)


def _per_sample_jacobians(policy: nn.Module, names: list[str], obs: torch.Tensor, head: int,
                          output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk: int):
    """Yields ({name: (chunk, *output_shape, *param_shape)}, σ of shape (chunk, act_dim)): Jacobians
    of ``output(μ, log σ)`` of single samples w.r.t. the named parameters, ``chunk`` samples at a
    time (a 256-sample Jacobian of a 4×256 body would not fit in memory at once)."""
    view = _Distribution(policy)
    fixed = {f"policy.{n}": p.detach() for n, p in policy.named_parameters() if n not in names}

    def single(chosen: dict[str, torch.Tensor], x: torch.Tensor):
        params = {**fixed, **{f"policy.{n}": p for n, p in chosen.items()}}
        mu, log_std = functional_call(view, params, (x.unsqueeze(0), head))
        return output(mu[0], log_std[0]), log_std[0].exp().detach()

    jacobian = vmap(jacrev(single, has_aux=True), in_dims=(None, 0))
    chosen = {n: p.detach() for n, p in policy.named_parameters() if n in names}
    for start in range(0, obs.shape[0], chunk):
        yield jacobian(chosen, obs[start:start + chunk])


def l2_importance(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """L2 (CW's L2_SAC): every parameter equally important."""
    return {n: torch.ones_like(p) for n, p in params.items()}


# Which mean of the policy EWC's Fisher and MAS's sensitivity differentiate (``agent.fisher``):
# squashed: the action mean as the policy outputs it, tanh(μ) (CW's ``mu`` after ``apply_squashing_func``,
#   sac/models.py:123-130; ×action_scale, 1 in crl's [−1, 1] action space), with the unsquashed log σ;
# gaussian: the pre-tanh μ, for EWC the exact Fisher of the Gaussian the policy samples before its tanh.
FISHER_CONVENTIONS = ("squashed", "gaussian")


def _identity(mu: torch.Tensor) -> torch.Tensor:
    return mu


def ewc_importance(policy: nn.Module, names: list[str], obs: torch.Tensor, head: int,
                   chunk: int = 32, squash: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of a Gaussian policy, as CW's EWC_SAC (Kirkpatrick et al. 2017,
    ``methods/ewc.py:28-66``): per sample and action dimension (∂m² + 2 ∂σ²) / (σ² + 1e-6), summed over
    dimensions, clipped below at 1e-5, averaged over samples. m = ``squash(μ)`` (CW: tanh(μ)), or the
    pre-tanh μ when ``squash`` is None; σ = exp(log σ) is never squashed."""
    squash = squash or _identity
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for jac, std in _per_sample_jacobians(policy, names, obs, head,
                                              lambda mu, log_std: torch.stack([squash(mu), log_std.exp()]), chunk):
            for n, j in jac.items():  # j: (chunk, 2 [m | σ], act_dim, *param_shape)
                inv_var = 1 / (std ** 2 + 1e-6)
                inv_var = inv_var.view(*inv_var.shape, *([1] * (j.dim() - 3)))
                fisher = (inv_var * (j[:, 0] ** 2 + 2 * j[:, 1] ** 2)).sum(1).clamp_min(1e-5)
                totals[n] = totals.get(n, 0) + fisher.sum(0)
    return {n: t / obs.shape[0] for n, t in totals.items()}


def mas_importance(policy: nn.Module, names: list[str], obs: torch.Tensor, head: int,
                   chunk: int = 32, squash: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Memory-Aware Synapses (Aljundi et al. 2018) as CW's MAS_SAC (``methods/mas.py:27-44``): the mean
    over samples of |∂(‖m‖² + ‖log σ‖²)/∂θ|, m = ``squash(μ)`` (CW: tanh(μ)) or μ when ``squash`` is None."""
    squash = squash or _identity
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for jac, _ in _per_sample_jacobians(policy, names, obs, head,
                                            lambda mu, log_std: (squash(mu) ** 2).sum() + (log_std ** 2).sum(), chunk):
            for n, j in jac.items():  # j: (chunk, *param_shape)
                totals[n] = totals.get(n, 0) + j.abs().sum(0)
    return {n: t / obs.shape[0] for n, t in totals.items()}


def _per_sample_critic_gradients(critics: nn.Module, names: list[str], x: torch.Tensor, action: torch.Tensor,
                                 head: int, output: Callable[[torch.Tensor], torch.Tensor], chunk: int):
    """Yields {name: (chunk, *param_shape)}: per-sample gradients of ``output(q)`` summed over the critics'
    members. A member's parameters reach only its own Q, so the slice of member k is ∂output(q_k)/∂θ_k."""
    fixed = {n: p.detach() for n, p in critics.named_parameters() if n not in names}

    def single(chosen: dict[str, torch.Tensor], xi: torch.Tensor, ai: torch.Tensor) -> torch.Tensor:
        q = functional_call(critics, {**fixed, **chosen}, (xi.unsqueeze(0), ai.unsqueeze(0), head))
        return output(q[:, 0]).sum()

    per_sample = vmap(grad(single), in_dims=(None, 0, 0))
    chosen = {n: p.detach() for n, p in critics.named_parameters() if n in names}
    for start in range(0, x.shape[0], chunk):
        yield per_sample(chosen, x[start:start + chunk], action[start:start + chunk])


def critic_ewc_importance(critics: nn.Module, names: list[str], x: torch.Tensor, action: torch.Tensor, head: int,
                          chunk: int = 32) -> dict[str, torch.Tensor]:
    """EWC's critic importance with CW's ``regularize_critic`` (``methods/ewc.py:68-74``): the mean over
    samples of (∂Q/∂θ)², on the batch's own actions; no clip."""
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for grads in _per_sample_critic_gradients(critics, names, x, action, head, _identity, chunk):
            for n, g in grads.items():
                totals[n] = totals.get(n, 0) + (g ** 2).sum(0)
    return {n: t / x.shape[0] for n, t in totals.items()}


def critic_mas_importance(critics: nn.Module, names: list[str], x: torch.Tensor, action: torch.Tensor, head: int,
                          chunk: int = 32) -> dict[str, torch.Tensor]:
    """MAS's critic importance with CW's ``regularize_critic`` (``methods/mas.py:34-50``): the mean over
    samples of |∂Q²/∂θ|, on the batch's own actions."""
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for grads in _per_sample_critic_gradients(critics, names, x, action, head, torch.square, chunk):
            for n, g in grads.items():
                totals[n] = totals.get(n, 0) + g.abs().sum(0)
    return {n: t / x.shape[0] for n, t in totals.items()}


# -- PackNet (Mallya & Lazebnik 2018; CW's PackNet_SAC) ----------------------------------------------

class PackNetMasks:
    """Which task owns each weight of the managed matrices, and the gradient and view masks that follow.

    ``owner[w] = t`` means weight w was kept by task t (or, for the task in training, is free to it).
    After task t, ``prune(t, fraction)`` zeroes the smallest-magnitude ``fraction`` of the weights task t
    owns and hands them to task t + 1. While task t trains, only its weights get gradients; biases and
    LayerNorm parameters (``others``) train during task 0 only (``freeze_others``). ``view(t)`` gives the
    parameters task t sees at evaluation: weights of later tasks zeroed.

    ``parts`` ({name: [index, ...]}) names the pieces of a matrix that CW keeps as separate variables and
    prunes each by its own threshold (``methods/packnet.py:_prune``): one per critic of a stacked ensemble
    weight, μ's and log σ's rows of a single head. Without an entry a matrix is one piece.
    """

    def __init__(self, matrices: dict[str, nn.Parameter], others: dict[str, nn.Parameter],
                 parts: dict[str, list[Any]] | None = None):
        self.matrices, self.others = matrices, others
        self.parts = {n: (parts or {}).get(n, [slice(None)]) for n in matrices}
        self.owner = {n: torch.zeros_like(p, dtype=torch.long) for n, p in matrices.items()}
        self.freeze_others = False

    def mask_gradients(self, task: int) -> None:
        for n, p in self.matrices.items():
            if p.grad is not None:
                p.grad.mul_(self.owner[n] == task)
        if self.freeze_others:
            for p in self.others.values():
                if p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def prune(self, task: int, fraction: float) -> None:
        for n, matrix in self.matrices.items():
            for index in self.parts[n]:
                p, owner = matrix[index], self.owner[n][index]  # views: the writes below reach the matrix
                mine = owner == task
                values = p[mine].abs().sort().values
                if not values.numel():
                    continue
                threshold = values[min(int(values.numel() * fraction), values.numel() - 1)]
                drop = mine & (p.abs() <= threshold)
                p[drop] = 0.0
                owner[drop] = task + 1

    def view(self, task: int, skip_prefix: str | None = None) -> dict[str, torch.Tensor]:
        """{name: weights as task ``task`` sees them} for the managed matrices (those named ``skip_prefix…`` left
        out: acting needs the actor's view only, not the critics')."""
        return {n: p * (self.owner[n] <= task) for n, p in self.matrices.items()
                if skip_prefix is None or not n.startswith(skip_prefix)}

    def state_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "freeze_others": self.freeze_others}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["owner"]) != set(self.matrices):
            raise UsageError(f"the checkpoint's PackNet masks cover {sorted(state['owner'])}, this agent manages "
                             f"{sorted(self.matrices)} (another multihead/regularize_critic, or a crl before issue 24)")
        device = next(iter(self.matrices.values())).device
        self.owner = {n: t.to(device) for n, t in state["owner"].items()}
        self.freeze_others = state["freeze_others"]


# -- A-GEM (Chaudhry et al. 2019; CW's AGEM_SAC) -----------------------------------------------------

def agem_project(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """In place: if ⟨g, g_ref⟩ < 0, g ← g − ⟨g, g_ref⟩/‖g_ref‖² · g_ref over all tensors jointly, so
    the step no longer increases the memory's loss to first order. Returns whether it projected (a
    0-d bool tensor: no host sync, so the update stays asynchronous on a GPU). As CW's AGEM_SAC
    (``methods/agem.py:45-60,82-97``): ‖g_ref‖² unclamped; ⟨g, g_ref⟩ < 0 implies ‖g_ref‖² > 0, and the
    division that ``where`` discards when the gradients agree never reaches the result."""
    dot = torch.stack([(g * r).sum() for g, r in zip(grads, reference)]).sum()
    norm = torch.stack([(r * r).sum() for r in reference]).sum()
    violated = dot < 0
    coefficient = torch.where(violated, dot / norm, torch.zeros_like(dot))  # 0 when the gradients agree
    torch._foreach_sub_(grads, torch._foreach_mul(reference, coefficient))
    return violated


# -- episodic memory and Gaussian KL (ClonEx, kickstarting, A-GEM, episodic replay) -----------------

class EpisodicMemory:
    """Fixed-size per-task samples of tensors (transitions, and for cloning the policy's outputs),
    kept for the whole sequence and sampled uniformly across the tasks stored so far."""

    def __init__(self, device: torch.device):
        self.device = device
        self.data: dict[str, torch.Tensor] = {}

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        rows = {k: v.detach().to(self.device) for k, v in rows.items()}
        self.data = {k: torch.cat([self.data[k], v]) if self.data else v for k, v in rows.items()}

    def __len__(self) -> int:
        return next(iter(self.data.values())).shape[0] if self.data else 0

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self), (batch_size,), device=self.device)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {k: v.cpu() for k, v in self.data.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data = {k: v.to(self.device) for k, v in state.items()}


def gaussian_kl(mu_p: torch.Tensor, log_std_p: torch.Tensor, mu_q: torch.Tensor,
                log_std_q: torch.Tensor, std_eps: float = 0.0) -> torch.Tensor:
    """KL(p ‖ q) of diagonal Gaussians, summed over the last dimension. ``std_eps`` > 0 adds ε to both σ
    before they are squared, the log-σ term staying exact (Wołczyk et al. 2022's ``kl_divergence``: ε = 1e-6)."""
    if std_eps:
        var_p, var_q = (log_std_p.exp() + std_eps) ** 2, (log_std_q.exp() + std_eps) ** 2
    else:
        var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    return (log_std_q - log_std_p + (var_p + (mu_p - mu_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


# -- VCL (Nguyen et al. 2018; CW's VCL_SAC) -----------------------------------------------------------

class BayesianLinear(nn.Module):
    """A linear layer with a mean-field Gaussian posterior over its weights and biases, as CW's
    ``BayesianDense``: each forward pass draws one weight sample for the whole batch
    (reparameterised: mean + exp(logvar / 2)·ε), log-variances start at ``logvar_init`` (CW: −6),
    the prior starts as N(0, 1). ``kl()`` is KL(posterior ‖ prior), summed; ``posterior_to_prior()``
    makes the current posterior the prior (VCL's step between tasks). Weights are (out, in) like
    ``nn.Linear``, whose initialisation the means get. ``fp32``: stays fp32 under autocast (``in_fp32``).
    """

    def __init__(self, in_features: int, out_features: int, fp32: bool = False, logvar_init: float = -6.0):
        super().__init__()
        init = nn.Linear(in_features, out_features)
        self.weight_mean = nn.Parameter(init.weight.detach().clone())
        self.bias_mean = nn.Parameter(init.bias.detach().clone())
        self.weight_logvar = nn.Parameter(torch.full_like(self.weight_mean, logvar_init))
        self.bias_logvar = nn.Parameter(torch.full_like(self.bias_mean, logvar_init))
        for name in ("weight_mean", "bias_mean", "weight_logvar", "bias_logvar"):
            self.register_buffer(f"prior_{name}", torch.zeros_like(getattr(self, name)))
        self.fp32 = fp32

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of (weight, bias) from the posterior."""
        weight = torch.addcmul(self.weight_mean, (0.5 * self.weight_logvar).exp(), torch.randn_like(self.weight_mean))
        bias = torch.addcmul(self.bias_mean, (0.5 * self.bias_logvar).exp(), torch.randn_like(self.bias_mean))
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_fp32(F.linear, x, *self.sample()) if self.fp32 else F.linear(x, *self.sample())

    def kl(self, rows: slice = slice(None)) -> torch.Tensor:
        """KL(posterior ‖ prior) summed over the weights and biases of output units ``rows``."""
        return sum(gaussian_kl(getattr(self, f"{kind}_mean")[rows], 0.5 * getattr(self, f"{kind}_logvar")[rows],
                               getattr(self, f"prior_{kind}_mean")[rows],
                               0.5 * getattr(self, f"prior_{kind}_logvar")[rows]).sum()
                   for kind in ("weight", "bias"))

    @torch.no_grad()
    def posterior_to_prior(self) -> None:
        for kind in ("weight_mean", "bias_mean", "weight_logvar", "bias_logvar"):
            getattr(self, f"prior_{kind}").copy_(getattr(self, kind))


# -- importances for any model with a per-sample loss (model-based agents; agents/hypercrl.py) ---------

def empirical_fisher(loss_fn: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor],
                     params: dict[str, torch.Tensor], samples: dict[str, torch.Tensor],
                     chunk: int = 256) -> dict[str, torch.Tensor]:
    """Empirical Fisher (EWC, Kirkpatrick et al. 2017, as HyperCRL's baseline): the mean over samples of
    the squared per-sample gradient of ``loss_fn(params, sample)`` (a sample: each tensor's row, unbatched)."""
    from torch.func import grad

    detached = {n: p.detach() for n, p in params.items()}
    per_sample = vmap(grad(loss_fn), in_dims=(None, 0))
    total = {n: torch.zeros_like(p) for n, p in detached.items()}
    count = next(iter(samples.values())).shape[0]
    with torch.no_grad():
        for start in range(0, count, chunk):
            grads = per_sample(detached, {k: v[start:start + chunk] for k, v in samples.items()})
            for n, g in grads.items():
                total[n] += g.pow(2).sum(0)
    return {n: t / max(count, 1) for n, t in total.items()}


class SynapticIntelligence:
    """SI's importance (Zenke et al. 2017): during a task, ω_i += −g_i·Δθ_i at every optimiser step; at its
    end Ω_i = ω_i / ((θ_i(end) − θ_i(start))² + ξ). The penalty c·Σ Ω (θ − θ*)² is a ParameterRegularizer's
    (its ``consolidate`` sums the tasks' Ω)."""

    def __init__(self, params: dict[str, nn.Parameter], xi: float):
        self.params, self.xi = params, xi
        self.begin_task()

    def begin_task(self) -> None:
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.omega = {n: torch.zeros_like(p) for n, p in self.params.items()}

    def before_step(self) -> dict[str, torch.Tensor]:
        """Call after backward, before the optimiser step: what ``after_step`` needs (θ and g now)."""
        return {n: (p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
                for n, p in self.params.items()}

    def after_step(self, before: dict[str, Any]) -> None:
        for n, p in self.params.items():
            old, g = before[n]
            if g is not None:
                self.omega[n] -= g * (p.detach() - old)

    def importance(self) -> dict[str, torch.Tensor]:
        return {n: (self.omega[n] / ((p.detach() - self.start[n]) ** 2 + self.xi)).clamp_min(0.0)
                for n, p in self.params.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "omega": self.omega}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(iter(self.params.values())).device
        self.start = {n: t.to(device) for n, t in state["start"].items()}
        self.omega = {n: t.to(device) for n, t in state["omega"].items()}
