"""Modulation modules for a frozen Decision Transformer: a LoRA pool (L2M) and a prompt pool (L2P).

``LoRAPool`` holds ``P`` modulators; each is a set of rank-``r`` LoRA pairs (A, B) for every layer at
each of its ``sites``:

- ``"q"``, ``"k"``, ``"v"``: on the d→d attention projections, ``out += scale · x A B`` where ``x`` is
  the projection's input (the block's LayerNorm output), A d×r, B r×d.
- ``"mlp"``: L2M's placement, on the post-activation 4d hidden ``h`` of the MLP (after ``c_fc`` and
  GELU): ``h ← h + scale · (h A B)``, A 4d×r, B r×4d. This is not a standard weight LoRA.

L2M's default is sites ``("q", "v", "mlp")``, rank 8, α = 2·rank (scale α/r = 2), dropout 0.
A is initialised Kaiming-uniform as ``nn.Linear``/peft do (bound 1/√fan_in, fan_in = the input width
of the pair), B zeros, so every module starts as the identity.

Parameters are stacked over modules and layers (``A_q``: (P, L, d, r), ``B_q``: (P, L, r, d), ...), so
a batch whose row b uses module ``idx[b]`` costs one gathered ``bmm`` pair per site and layer, and one
module for the whole batch (an int) is a plain matmul on a view. A pool of size 1 is the
"single LoRA" baseline.

``PromptPool`` is the L2P baseline's pool: ``num_prompts`` prompts of ``length`` tokens and one key each;
the caller selects the top-k prompts (cosine similarity of a query with the keys) and passes their
tokens to the model as ``prefix`` (prepended to the token sequence).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SITES = ("q", "k", "v", "mlp")


class LoRAPool(nn.Module):
    """``num_modules`` LoRA modulators over ``n_layers`` layers; see the module docstring."""

    def __init__(self, num_modules: int, n_layers: int, d_model: int, d_ff: int, rank: int,
                 alpha: float | None = None, sites: tuple[str, ...] = ("q", "v", "mlp")):
        super().__init__()
        unknown = [s for s in sites if s not in SITES]
        if unknown:
            raise ValueError(f"unknown LoRA site(s) {unknown}; allowed: {', '.join(SITES)}")
        if num_modules < 1 or rank < 1:
            raise ValueError("num_modules and rank must be positive")
        self.num_modules, self.n_layers, self.rank = num_modules, n_layers, rank
        self.sites = tuple(sites)
        self.alpha = float(2 * rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        self.dims = {s: (d_ff if s == "mlp" else d_model) for s in self.sites}
        for site, dim in self.dims.items():
            a = torch.empty(num_modules, n_layers, dim, rank)
            nn.init.uniform_(a, -1 / math.sqrt(dim), 1 / math.sqrt(dim))  # kaiming_uniform_(a=√5)
            setattr(self, f"A_{site}", nn.Parameter(a))
            setattr(self, f"B_{site}", nn.Parameter(torch.zeros(num_modules, n_layers, rank, dim)))

    def delta(self, site: str, layer: int, x: torch.Tensor, idx: int | torch.Tensor,
              groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
        """``scale · x A B`` for ``x`` (B, T, dim) with module ``idx``: an int (one module for the whole
        batch) or a (B,) long tensor (module per row). ``None`` for a site this pool does not modulate.

        ``groups`` = (the distinct modules U of ``idx``, one-hot (B, U) of each row's module), from
        ``module_groups``: the rows are then computed for each distinct module and the others masked
        out, U low-rank products instead of gathering a (B, dim, r) copy of the weights per site and
        layer (1.6× faster per L2M update at U = 2, issue 13)."""
        if site not in self.dims:
            return None
        a, b = getattr(self, f"A_{site}"), getattr(self, f"B_{site}")
        if isinstance(idx, int) or (isinstance(idx, torch.Tensor) and idx.dim() == 0):
            i = int(idx)
            return (x @ a[i, layer]) @ b[i, layer] * self.scale
        if groups is not None:
            modules, onehot = groups
            if modules.numel() == 1:
                return (x @ a[modules[0], layer]) @ b[modules[0], layer] * self.scale
            xa = torch.einsum("btd,udr->btur", x, a[modules, layer]) * onehot[:, None, :, None].to(x.dtype)
            return torch.einsum("btur,urd->btd", xa, b[modules, layer]) * self.scale
        # (B, dim, r) and (B, r, dim): one gather each, then two batched matmuls.
        return torch.bmm(torch.bmm(x, a[idx, layer]), b[idx, layer]) * self.scale

    MAX_GROUPS = 8  # above this many distinct modules in a batch, gathering per row is cheaper

    @classmethod
    def module_groups(cls, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(distinct modules, one-hot (B, U)) of per-row module indices, or None when there are too many."""
        modules, inverse = torch.unique(idx, return_inverse=True)
        if modules.numel() > cls.MAX_GROUPS:
            return None
        return modules, torch.nn.functional.one_hot(inverse, modules.numel())

    def bind(self, idx: int | torch.Tensor, active: torch.Tensor | None = None) -> "LoRAModulation":
        """The modulation object ``DecisionTransformer.forward`` takes: this pool with modules ``idx``.
        ``active`` (B,) bool, with per-row ``idx``: rows where it is False get no modulation."""
        return LoRAModulation(self, idx, active)

    def module_parameters(self, i: int) -> dict[str, torch.Tensor]:
        """Module ``i``'s tensors (views into the stacked parameters), e.g. ``{"A_q": (L, d, r), ...}``."""
        out = {}
        for site in self.sites:
            out[f"A_{site}"] = getattr(self, f"A_{site}")[i]
            out[f"B_{site}"] = getattr(self, f"B_{site}")[i]
        return out

    @property
    def num_parameters_per_module(self) -> int:
        return sum(t.numel() for t in self.module_parameters(0).values())

    def extra_repr(self) -> str:
        return (f"num_modules={self.num_modules}, n_layers={self.n_layers}, rank={self.rank}, "
                f"scale={self.scale:g}, sites={self.sites}, per_module={self.num_parameters_per_module}")


class LoRAModulation:
    """A ``LoRAPool`` bound to selected modules: ``delta(site, layer, x)`` as the model calls it."""

    __slots__ = ("pool", "idx", "groups", "row_scale")

    def __init__(self, pool: LoRAPool, idx: int | torch.Tensor, active: torch.Tensor | None = None):
        self.pool, self.idx = pool, idx
        per_row = isinstance(idx, torch.Tensor) and idx.dim() == 1
        self.groups = LoRAPool.module_groups(idx) if per_row else None  # once per forward, not per site
        self.row_scale = None if active is None else active.float()[:, None, None]

    def delta(self, site: str, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        out = self.pool.delta(site, layer, x, self.idx, self.groups)
        if out is None or self.row_scale is None:
            return out
        return out * self.row_scale.to(out.dtype)


class PromptPool(nn.Module):
    """L2P's pool: ``prompts`` (num_prompts, length, d_model) and ``keys`` (num_prompts, d_model),
    both initialised U(−1, 1) (L2P's ``uniform`` init; L2M's keys likewise).

    ``similarity(query)`` gives the cosine similarity (B, num_prompts) of queries (B, d_model) with the
    keys; the caller picks the top-k (with its own count penalty, key loss, ...) and ``prefix(idx)`` turns
    the selected indices (B, k) into prefix tokens (B, k·length, d_model) for ``DecisionTransformer``.
    """

    def __init__(self, num_prompts: int, length: int, d_model: int):
        super().__init__()
        self.num_prompts, self.length, self.d_model = num_prompts, length, d_model
        self.prompts = nn.Parameter(torch.empty(num_prompts, length, d_model).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(num_prompts, d_model).uniform_(-1, 1))

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        q = nn.functional.normalize(query.float(), dim=-1)
        k = nn.functional.normalize(self.keys.float(), dim=-1)
        return q @ k.T

    def prefix(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, k) prompt indices → (B, k·length, d_model) tokens, the prompts in the order given."""
        return self.prompts[idx].flatten(1, 2)
