"""Task-conditioned hypernetworks (von Oswald et al. 2020, "Continual learning with hypernetworks";
code ``chrhenning/hypercl``) and the functional target networks they generate weights for.

- ``target_shapes`` / ``target_forward``: an MLP whose weights are a list of tensors handed in, shaped
  like ``nn.Linear``'s ((out, in) and (out,)), optionally with a leading dimension of one weight set per
  row group (``target_forward(x (n, S, in), weights with leading n)`` is one batched matmul per layer).
- ``HyperNetwork``: task embedding e_t (N(0, 1), one parameter per task) → an MLP → either one linear
  head per target tensor (hypercl's non-chunked net, HyperCRL's default) or chunks: learned chunk
  embeddings concatenated with e_t, one call per chunk, outputs concatenated and the surplus dropped.
- ``output_regularizer``: (1/|T'|) Σ_{t∈T'} ‖f_h(e_t, Θ + ΔΘ) − f_h(e_t, Θ*)‖², the targets f_h(e_t, Θ*)
  stored when the current task began, ΔΘ the look-ahead (detached).
- ``adam_lookahead``: ΔΘ as hypercl computes it, the step ``torch.optim.Adam`` would take with the
  gradients now in ``.grad`` (tests/test_hypercrl.py checks it against the optimiser's real step).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "tanh": torch.tanh, "silu": F.silu}
# The same, in place: without autograd (planning) the activation overwrites the matmul's output instead of writing a
# new tensor. On a CPU core ReLU over a 4000×200 fp32 block took 460 µs out of place and 190 µs in place.
_INPLACE = {"relu": torch.relu_, "elu": lambda x: F.elu(x, inplace=True), "tanh": torch.tanh_,
            "silu": lambda x: F.silu(x, inplace=True)}


def target_shapes(in_dim: int, hidden: Sequence[int], out_dim: int) -> list[tuple[int, ...]]:
    """Weight and bias shapes of an MLP in → hidden… → out (nn.Linear's layout)."""
    sizes = [in_dim, *hidden, out_dim]
    shapes: list[tuple[int, ...]] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        shapes += [(b, a), (b,)]
    return shapes


def _fuses_linear_relu(x: torch.Tensor, activation: str, batched: bool) -> bool:
    """Whether oneDNN's fused linear + ReLU (``mkldnn._linear_pointwise``, the kernel torch.compile emits for it on
    CPUs) runs this forward pass: bf16 on a CPU, without autograd. There it took 430 µs per 4000×200×200 layer
    against 740 µs for linear then ReLU, with bit-identical output; in fp32 it gained nothing."""
    return (_LINEAR_POINTWISE is not None and not batched and activation == "relu" and x.dtype == torch.bfloat16
            and x.device.type == "cpu" and not torch.is_grad_enabled())


# oneDNN has no bf16 inner product on CPUs without bf16 hardware (AVX2 only): there it refuses the primitive.
_LINEAR_POINTWISE = (getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available()
                     and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None)


def target_forward(x: torch.Tensor, weights: Sequence[torch.Tensor], activation: str = "relu",
                   batched: bool = False) -> torch.Tensor:
    """The MLP with ``weights`` [W0, b0, W1, b1, ...] on ``x`` (..., in). ``batched``: every weight has a
    leading dim n and ``x`` is (n, S, in): row group k uses weight set k (one bmm per layer)."""
    act = (ACTIVATIONS if torch.is_grad_enabled() else _INPLACE)[activation]
    layers = len(weights) // 2
    if _fuses_linear_relu(x, activation, batched):
        lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])
        for i in range(layers - 1):
            x = _LINEAR_POINTWISE(x, weights[2 * i], weights[2 * i + 1], "relu", [], "")
        return F.linear(x, weights[-2], weights[-1]).reshape(*lead, -1)
    for i in range(layers):
        w, b = weights[2 * i], weights[2 * i + 1]
        x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if batched else F.linear(x, w, b)
        if i < layers - 1:
            x = act(x)
    return x


class HyperNetwork(nn.Module):
    """f_h(e_t, Θ) → the target's weights for task t (see the module docstring)."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], num_tasks: int, emb_dim: int = 10,
                 hidden: Sequence[int] = (256, 256), activation: str = "relu", chunk_size: int = 0,
                 chunk_emb_dim: int = 20):
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        self.numels = [math.prod(s) for s in self.shapes]
        self.total = sum(self.numels)
        self.activation = activation
        self.chunk_size = chunk_size
        self.embeddings = nn.ParameterList([nn.Parameter(torch.randn(emb_dim)) for _ in range(num_tasks)])
        in_dim = emb_dim
        if chunk_size:
            self.num_chunks = math.ceil(self.total / chunk_size)
            self.chunk_embeddings = nn.Parameter(torch.randn(self.num_chunks, chunk_emb_dim))
            in_dim += chunk_emb_dim
        sizes = [in_dim, *hidden]
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        if chunk_size:
            self.heads = nn.ModuleList([nn.Linear(sizes[-1], chunk_size)])
        else:
            self.heads = nn.ModuleList(nn.Linear(sizes[-1], n) for n in self.numels)
        for layer in [*self.trunk, *self.heads]:  # Xavier, as hypercl
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def theta(self) -> dict[str, nn.Parameter]:
        """Θ: every parameter but the task embeddings."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("embeddings.")}

    def forward(self, emb: torch.Tensor) -> list[torch.Tensor]:
        """Target weights for the embeddings ``emb`` (E, emb_dim): a list of tensors (E, *shape)."""
        act = ACTIVATIONS[self.activation]
        E = emb.shape[0]
        if self.chunk_size:
            h = torch.cat([emb.unsqueeze(1).expand(E, self.num_chunks, emb.shape[1]),
                           self.chunk_embeddings.unsqueeze(0).expand(E, -1, -1)], dim=-1)
        else:
            h = emb
        for layer in self.trunk:
            h = act(layer(h))
        if self.chunk_size:
            flat = self.heads[0](h).reshape(E, -1)[:, : self.total]
        else:
            flat = torch.cat([head(h) for head in self.heads], dim=-1)
        return [t.reshape(E, *s) for t, s in zip(flat.split(self.numels, dim=-1), self.shapes)]

    def weights(self, task: int) -> list[torch.Tensor]:
        """The target's weights for one task (no leading dim)."""
        return [w[0] for w in self(self.embeddings[task].unsqueeze(0))]

    def flat(self, emb: torch.Tensor, theta: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """f_h(emb, Θ) flattened to (E, total); ``theta`` replaces Θ (the look-ahead)."""
        out = self(emb) if theta is None else functional_call(self, theta, (emb,), strict=False)
        return torch.cat([w.reshape(emb.shape[0], -1) for w in out], dim=-1)


def output_regularizer(hnet: HyperNetwork, tasks: Sequence[int], targets: torch.Tensor,
                       delta: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(1/|tasks|) Σ_t ‖f_h(e_t, Θ + ΔΘ) − targets[t]‖² (the embeddings e_t of earlier tasks detached);
    ``targets`` (len(tasks), total) are f_h(e_t, Θ*) stored before the current task."""
    emb = torch.stack([hnet.embeddings[t].detach() for t in tasks])
    theta = None
    if delta is not None:
        theta = {n: p + delta[n].detach() for n, p in hnet.theta().items()}
    out = hnet.flat(emb, theta)
    return (out - targets).pow(2).sum() / len(tasks)


@torch.no_grad()
def adam_lookahead(optimizer: torch.optim.Adam, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ΔΘ: the step ``optimizer`` (torch Adam, no weight decay, not amsgrad) would take now with the
    gradients in ``.grad`` of ``params``, without taking it (zeros where a parameter has no gradient)."""
    out = {}
    for name, p in params.items():
        if p.grad is None:
            out[name] = torch.zeros_like(p)
            continue
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        beta1, beta2 = group["betas"]
        state = optimizer.state.get(p, {})
        step = float(state["step"]) + 1 if "step" in state else 1.0
        m = state["exp_avg"] * beta1 + (1 - beta1) * p.grad if "exp_avg" in state else (1 - beta1) * p.grad
        v = (state["exp_avg_sq"] * beta2 + (1 - beta2) * p.grad ** 2 if "exp_avg_sq" in state
             else (1 - beta2) * p.grad ** 2)
        denom = v.sqrt() / math.sqrt(1 - beta2 ** step) + group["eps"]
        out[name] = -group["lr"] / (1 - beta1 ** step) * m / denom
    return out
