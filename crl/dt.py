"""Decision Transformer backbone for L2M (multi-domain DT with binned actions, modulation hooks).

Layout and heads
----------------
Each timestep is three tokens ``[return-to-go, state, action]`` (the classic DT layout), except that
the window's last action token is dropped (no output can see it). The action of
step t is predicted from the output at step t's STATE token by one linear head giving
``act_dim × n_bins`` logits: every action dim is discretised into ``n_bins`` uniform bins on [−1, 1],
trained with cross-entropy per dim and decoded greedily as the bin CENTRE.

**Deviation from L2M** (ml-jku/L2M, see ``shared/reference/l2m.md``): L2M's MDDT uses 9 tokens per
timestep ``[s, RTG, a1 … a6, r]``, one token per action dim (``Embedding(65, d)``), predicts action dim j
from the token before it autoregressively, decodes a bin's lower edge, and needs one full forward pass
per action dim at inference (4 per Meta-World step). Here the action input is one continuous linear
embedding, all dims are predicted at once from the state token, and there is no reward token: 3 instead
of 9 tokens per step (≈3× cheaper training, attention ≈9× cheaper) and 1 instead of 4 forward passes per
env step. Binning and cross-entropy are kept, so the output is still a categorical per action dim.

Kept from L2M: states zero-padded to ``state_dim`` (204, the DMC/MW union) and actions to ``act_dim``
(6) with padded dims masked out of the loss; RTG divided by ``reward_scale`` (MW 200, DMC 100); a
learned timestep embedding (``max_timestep`` = 1000 entries) added to every token of a step and no
position embedding; an embedding LayerNorm; GPT-2 pre-LN blocks (LN → causal self-attention →
residual; LN → MLP d→4d, GELU (tanh approximation, as GPT-2), 4d→d → residual); a final LayerNorm;
GPT-2 dropout (embedding, attention, residual) and GPT-2 initialisation.

Zero-padding is done without materialising it: a (B, K, S) state with S < ``state_dim`` goes through the
first S columns of the state embedding, which equals padding with zeros.

Modulation
----------
q, k and v are separate ``nn.Linear`` layers. ``forward(..., modulation=m)`` calls
``m.delta(site, layer, x)`` inside every block (``None`` = site not modulated):

- ``"q"``, ``"k"``, ``"v"`` with ``x`` = the block's LN output (added to the projection's output),
- ``"mlp"`` with ``x`` = the post-GELU 4d hidden (added to it), L2M's LoRA placement.

``crl.lora.LoRAPool(...).bind(idx)`` is such an object. ``prefix`` (B, P, d) are extra tokens (prompt
pool baselines) prepended to the sequence: every real token attends to all of them; they attend only to
earlier prefix tokens, so they carry no information from the trajectory and causality holds.

Padding
-------
Windows shorter than ``context`` are LEFT-padded; ``mask`` (B, K) is True at real steps. With a mask, an
explicit attention mask (causal AND key is real; a padded query attends to itself only, so no row is
empty) guarantees padded steps do not affect real ones whatever their content; timesteps are clamped to
the table, so padded steps may hold any value. ``mask=None`` means no padding and uses SDPA's fused
``is_causal`` path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crl.core import UsageError


@dataclass
class DTConfig:
    n_layers: int = 3
    n_heads: int = 4
    d_model: int = 128
    context: int = 5          # timesteps per window (3 tokens each)
    state_dim: int = 204      # L2M's union width; narrower states are zero-padded
    act_dim: int = 6          # padded action width
    n_bins: int = 64          # uniform bins per action dim on [-1, 1]
    max_timestep: int = 1000  # timestep-embedding table size
    dropout: float = 0.1
    reward_scale: float = 200.0  # RTG is divided by this (MW 200, DMC 100)

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model


DT_SIZES = {
    "tiny": DTConfig(n_layers=1, n_heads=2, d_model=32),  # tests and smoke runs only
    "small": DTConfig(),
    "paper": DTConfig(n_layers=6, n_heads=12, d_model=768),  # L2M's dt_mediumplus_64
}


class Modulation(Protocol):
    def delta(self, site: str, layer: int, x: torch.Tensor) -> torch.Tensor | None: ...


class Block(nn.Module):
    """GPT-2 pre-LN block with q/k/v as separate linears and modulation hooks."""

    def __init__(self, cfg: DTConfig, layer: int):
        super().__init__()
        d = cfg.d_model
        if d % cfg.n_heads:
            raise ValueError(f"d_model {d} is not divisible by n_heads {cfg.n_heads}")
        self.layer, self.n_heads, self.p_drop = layer, cfg.n_heads, cfg.dropout
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, cfg.d_ff)
        self.out = nn.Linear(cfg.d_ff, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                modulation: Modulation | None) -> torch.Tensor:
        B, T, d = x.shape
        h = self.ln1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        if modulation is not None:
            if (dq := modulation.delta("q", self.layer, h)) is not None:
                q = q + dq
            if (dk := modulation.delta("k", self.layer, h)) is not None:
                k = k + dk
            if (dv := modulation.delta("v", self.layer, h)) is not None:
                v = v + dv
        H = self.n_heads
        q, k, v = (t.view(B, T, H, d // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.p_drop if self.training else 0.0,
                                           is_causal=attn_mask is None)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, d)))
        f = F.gelu(self.fc(self.ln2(x)), approximate="tanh")
        if modulation is not None and (df := modulation.delta("mlp", self.layer, f)) is not None:
            f = f + df
        return x + self.drop(self.out(f))


class DecisionTransformer(nn.Module):
    """See the module docstring. Inputs: states (B, K, S ≤ state_dim), actions (B, K, A ≤ act_dim) in
    [−1, 1], returns_to_go (B, K) or (B, K, 1) unscaled, timesteps (B, K) long, mask (B, K) bool or None."""

    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_action = nn.Linear(cfg.act_dim, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.act_dim * cfg.n_bins)
        # Per-dimension state standardisation, part of the frozen backbone: set from the pre-training
        # data (``set_state_normalizer``). Issue 13: the same BC network succeeds 0.0 on raw Meta-World
        # observations and 0.8 on standardised ones; L2M feeds raw states.
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.register_buffer("bin_centres", -1 + (torch.arange(cfg.n_bins) + 0.5) * (2 / cfg.n_bins),
                             persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02/√(2L))."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:
            for lin in (blk.proj, blk.out):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layers))

    # ---- embedding -------------------------------------------------------------------------------

    STATE_CLIP = 10.0  # standardised states are clipped to ±this (a dim that barely varies in the data)

    @torch.no_grad()
    def set_state_normalizer(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-2) -> None:
        """Standardise the first ``len(mean)`` state dims with these statistics (the rest stay 0/1)."""
        n = mean.shape[-1]
        self.state_mean.zero_()[:n] = mean.to(self.state_mean)
        self.state_std.fill_(1.0)[:n] = std.to(self.state_std).clamp_min(min_std)

    def _state_linear(self, states: torch.Tensor) -> torch.Tensor:
        n = states.shape[-1]
        z = ((states - self.state_mean[:n]) / self.state_std[:n]).clamp(-self.STATE_CLIP, self.STATE_CLIP)
        return self._narrow_linear(self.embed_state, z, self.cfg.state_dim, "states")

    def _time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.embed_timestep(timesteps.long().clamp(0, self.cfg.max_timestep - 1))

    @staticmethod
    def _narrow_linear(lin: nn.Linear, x: torch.Tensor, limit: int, what: str) -> torch.Tensor:
        """``lin`` applied to ``x`` zero-padded to ``limit`` features, without the padding."""
        n = x.shape[-1]
        if n > limit:
            raise ValueError(f"{what} has {n} dims, more than the model's {limit}")
        w = lin.weight if n == limit else lin.weight[:, :n]
        return F.linear(x, w, lin.bias)

    def state_embeddings(self, states: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Embedded state tokens (B, K, d): state + timestep embedding, after the embedding LayerNorm
        (L2M's retrieval query is their masked mean). Equal to ``embed(...)[:, 1::3]``."""
        return self.embed_ln(self._state_linear(states) + self._time(timesteps))

    def embed(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
              timesteps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, 3K − 1, d) in the order [rtg_t, s_t, a_t] per step, after the embedding LayerNorm
        (before embedding dropout). The last step's action token is left out: every output is read at a
        state token before it, so no output could see it. ``mask`` is accepted for symmetry; padding is
        handled in attention."""
        B, K = states.shape[:2]
        if returns_to_go.dim() == 2:
            returns_to_go = returns_to_go.unsqueeze(-1)
        t = self._time(timesteps)
        s = self._state_linear(states)
        a = self._narrow_linear(self.embed_action, actions, self.cfg.act_dim, "actions")
        r = self.embed_return(returns_to_go / self.cfg.reward_scale)
        tokens = torch.stack((r + t, s + t, a + t), dim=2).reshape(B, 3 * K, -1)[:, :-1]
        return self.embed_ln(tokens)

    # ---- trunk -----------------------------------------------------------------------------------

    @staticmethod
    def attention_mask(mask: torch.Tensor, prefix_len: int = 0) -> torch.Tensor:
        """Bool (B, 1, T, T), True = may attend: causal over [prefix, 3K − 1 tokens], keys must be real
        (prefix tokens are always real); a padded query attends to itself so no row is empty."""
        B, K = mask.shape
        key_real = mask.bool().repeat_interleave(3, dim=1)[:, :-1]
        if prefix_len:
            key_real = torch.cat((key_real.new_ones(B, prefix_len), key_real), dim=1)
        T = key_real.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril_()
        eye = torch.eye(T, dtype=torch.bool, device=mask.device)
        return (causal & (key_real[:, None, :] | eye)).unsqueeze(1)

    def forward_tokens(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                       modulation: Modulation | None = None,
                       prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer over ``embed(...)`` tokens; returns the final-LN outputs at the state tokens
        (B, K, d). Lets a caller embed once and reuse the state tokens as a retrieval query."""
        x = self.drop(tokens)
        P = 0
        if prefix is not None:
            P = prefix.shape[1]
            x = torch.cat((prefix.to(x.dtype), x), dim=1)
        attn_mask = None if mask is None else self.attention_mask(mask, P)
        for blk in self.blocks:
            x = blk(x, attn_mask, modulation)
        return self.ln_f(x[:, P + 1::3])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Action logits (..., act_dim, n_bins) from state-token outputs (..., d)."""
        return self.head(hidden).unflatten(-1, (self.cfg.act_dim, self.cfg.n_bins))

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor | None = None, *,
                modulation: Modulation | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K, act_dim, n_bins): step t's action predicted from step t's state token."""
        tokens = self.embed(states, actions, returns_to_go, timesteps)
        return self.logits(self.forward_tokens(tokens, mask, modulation=modulation, prefix=prefix))

    # ---- actions ---------------------------------------------------------------------------------

    def discretize(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions in [−1, 1] (clipped) → bin indices (long, same shape)."""
        n = self.cfg.n_bins
        return ((actions.clamp(-1, 1) + 1) * (n / 2)).long().clamp_(0, n - 1)

    def undiscretize(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin indices → bin centres in (−1, 1)."""
        return self.bin_centres[bins]

    def loss(self, logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None,
             act_dim_used: int | torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over real steps (``mask``) and real action dims.

        ``actions`` (B, K, A) are the targets; ``act_dim_used`` is an int (default A) or a (B,) tensor
        of per-row action widths (mixed-domain batches); dims ≥ it are padding and not counted."""
        A = actions.shape[-1]
        used = A if act_dim_used is None else act_dim_used
        if isinstance(used, int):
            A = used
            actions, logits = actions[..., :A], logits[..., :A, :]
        else:
            logits = logits[..., :A, :]
        ce = F.cross_entropy(logits.reshape(-1, self.cfg.n_bins), self.discretize(actions).reshape(-1),
                             reduction="none").view(actions.shape)
        weight = None
        if not isinstance(used, int):
            weight = (torch.arange(A, device=ce.device) < used.to(ce.device)[:, None])[:, None, :]
        if mask is not None:
            m = mask.bool()[..., None]
            weight = m if weight is None else weight & m
        if weight is None:
            return ce.mean()
        weight = weight.expand_as(ce).to(ce.dtype)
        return (ce * weight).sum() / weight.sum().clamp_min(1)

    @torch.no_grad()
    def act(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
            timesteps: torch.Tensor, mask: torch.Tensor | None = None, *,
            modulation: Modulation | None = None, prefix: torch.Tensor | None = None,
            act_dim_used: int | None = None) -> torch.Tensor:
        """Greedy actions (B, act_dim_used or act_dim) for the last step of each (left-padded) window.
        The last step's action input is a placeholder: the state token precedes it, so it is unseen."""
        tokens = self.embed(states, actions, returns_to_go, timesteps)
        hidden = self.forward_tokens(tokens, mask, modulation=modulation, prefix=prefix)
        bins = self.logits(hidden[:, -1]).argmax(-1)
        if act_dim_used is not None:
            bins = bins[:, :act_dim_used]
        return self.undiscretize(bins)


class RollingContext:
    """The last ``context`` steps of ``n`` parallel episodes, as a Decision Transformer reads them at
    evaluation: ``push(obs)`` appends the current observation (its action slot a placeholder) and returns
    the window; ``record(action)`` fills that slot; ``after_step(reward)`` lowers the return-to-go.
    Rows whose episode restarts are cleared by ``reset(rows, targets)`` (targets: each row's RTG target)."""

    def __init__(self, n: int, context: int, obs_dim: int, act_dim: int, max_timestep: int,
                 device: torch.device | str):
        z = dict(device=device)
        self.max_timestep = max_timestep
        self.states = torch.zeros(n, context, obs_dim, **z)
        self.actions = torch.zeros(n, context, act_dim, **z)
        self.rtg = torch.zeros(n, context, **z)
        self.timesteps = torch.zeros(n, context, dtype=torch.long, **z)
        self.mask = torch.zeros(n, context, dtype=torch.bool, **z)
        self.rtg_now = torch.zeros(n, **z)
        self.t = torch.zeros(n, dtype=torch.long, **z)

    @property
    def size(self) -> int:
        return self.states.shape[0]

    def reset(self, rows: torch.Tensor, targets: torch.Tensor | float) -> None:
        for buf in (self.states, self.actions, self.rtg, self.timesteps, self.mask):
            buf[rows] = 0
        self.rtg_now[rows] = targets[rows] if isinstance(targets, torch.Tensor) else targets
        self.t[rows] = 0

    def push(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(states, actions, returns_to_go, timesteps, mask) after appending ``obs``."""
        for name in ("states", "actions", "rtg", "timesteps", "mask"):
            setattr(self, name, getattr(self, name).roll(-1, dims=1))
        self.states[:, -1] = obs
        self.actions[:, -1] = 0
        self.rtg[:, -1] = self.rtg_now
        self.timesteps[:, -1] = self.t.clamp_max(self.max_timestep - 1)
        self.mask[:, -1] = True
        return self.states, self.actions, self.rtg, self.timesteps, self.mask

    def record(self, action: torch.Tensor) -> None:
        self.actions[:, -1, : action.shape[-1]] = action

    def after_step(self, reward: torch.Tensor) -> None:
        self.rtg_now -= reward
        self.t += 1


class WindowSampler:
    """Random context windows for a Decision Transformer, uniformly over all transitions.

    ``sample(B)`` picks B transitions uniformly over every transition of every dataset (so an
    episode is picked in proportion to its length, as in L2M) and returns the window of the last
    ``context`` steps of its episode ending at that transition, LEFT-padded with zeros where the
    episode starts later:

    Keys are the dataset's (and the replay buffer's) field names, each per window step:

    - ``obs`` (B, K, obs_dim) float32, ``action`` (B, K, act_dim) float32 (executed),
      ``expert_action`` (B, K, act_dim) float32 (the scripted expert's, noise-free: the clean BC target)
    - ``returns_to_go`` (B, K) float32 (undiscounted, unscaled), ``reward`` (B, K) float32
    - ``timestep`` (B, K) long: step within the episode, 0 on padding
    - ``mask`` (B, K) bool: True on real steps
    - ``dataset_index`` (B,) long: position of the dataset in ``datasets``
    - ``index`` (B,) long: the sampled (last) transition's row within its dataset

    The gathering is vectorised per dataset (one fancy-index per array per dataset in the batch).
    ``state_dict`` / ``load_state_dict`` save and restore the RNG, so sampling resumes exactly.
    """

    def __init__(
        self, datasets: list[TaskDataset], context: int, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        if not datasets:
            raise UsageError("WindowSampler needs at least one dataset")
        if not isinstance(context, int) or context < 1:
            raise UsageError(f"context must be a positive integer, got {context!r}")
        self.datasets = list(datasets)
        self.context = context
        self.device = torch.device(device)
        self.sizes = np.array([d.num_transitions for d in self.datasets], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        # episode_starts are small (E+1 int64): keep them in memory for searchsorted
        self._starts = [np.asarray(d.episode_starts) for d in self.datasets]
        self.rng = np.random.default_rng(seed)
        self.obs_dim, self.act_dim = self.datasets[0].obs.shape[1], self.datasets[0].action.shape[1]

    def __len__(self) -> int:
        return self.total

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        if batch_size < 1:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        g = self.rng.integers(0, self.total, size=batch_size)
        return self.windows(g)

    def windows(self, global_index: np.ndarray) -> dict[str, torch.Tensor]:
        """The windows ending at the given global transition indices (rows of all datasets, in order)."""
        g = np.asarray(global_index, np.int64)
        b, k = len(g), self.context
        obs_dim, act_dim = self.obs_dim, self.act_dim
        d_index = np.searchsorted(self.offsets, g, side="right") - 1
        local = g - self.offsets[d_index]
        steps = np.arange(-k + 1, 1, dtype=np.int64)

        states = np.zeros((b, k, obs_dim), np.float32)
        actions = np.zeros((b, k, act_dim), np.float32)
        expert_actions = np.zeros((b, k, act_dim), np.float32)
        rtg = np.zeros((b, k), np.float32)
        rewards = np.zeros((b, k), np.float32)
        timesteps = np.zeros((b, k), np.int64)
        mask = np.zeros((b, k), bool)
        for d in np.unique(d_index):  # a loop over datasets, not samples
            rows = np.flatnonzero(d_index == d)
            ds, t = self.datasets[d], local[rows]
            start = self._starts[d][np.searchsorted(self._starts[d], t, side="right") - 1]
            idx = t[:, None] + steps[None, :]  # (r, K)
            valid = idx >= start[:, None]
            src = np.where(valid, idx, start[:, None])  # padding reads the episode's first row, zeroed below
            flat = src.ravel()
            states[rows] = np.asarray(ds.obs[flat]).reshape(len(rows), k, obs_dim)
            actions[rows] = np.asarray(ds.action[flat]).reshape(len(rows), k, act_dim)
            expert_actions[rows] = np.asarray(ds.expert_action[flat]).reshape(len(rows), k, act_dim)
            rtg[rows] = np.asarray(ds.returns_to_go[flat]).reshape(len(rows), k)
            rewards[rows] = np.asarray(ds.reward[flat]).reshape(len(rows), k)
            timesteps[rows] = np.where(valid, idx - start[:, None], 0)
            mask[rows] = valid
        pad = ~mask
        states[pad] = 0.0
        actions[pad] = 0.0
        expert_actions[pad] = 0.0
        rtg[pad] = 0.0
        rewards[pad] = 0.0

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device, non_blocking=True)

        return {
            "obs": tensor(states),  # the dataset's (and the replay buffer's) names, per window step
            "action": tensor(actions),
            "expert_action": tensor(expert_actions),
            "returns_to_go": tensor(rtg),
            "reward": tensor(rewards),
            "timestep": tensor(timesteps),
            "mask": tensor(mask),
            "dataset_index": tensor(d_index.astype(np.int64)),
            "index": tensor(local.astype(np.int64)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "context": self.context, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("total", self.total) != self.total or state.get("context", self.context) != self.context:
            raise UsageError(
                f"sampler state is for {state.get('total')} transitions / context {state.get('context')}, "
                f"this sampler has {self.total} / {self.context}"
            )
        self.rng.bit_generator.state = state["rng"]
