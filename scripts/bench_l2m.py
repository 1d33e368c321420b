"""Benchmark crl's DecisionTransformer against Hugging Face's DecisionTransformerModel (training updates/s).

Both models are measured in the same run under the same conditions:

- Same size: layers, heads, width (MLP 4×width), context (timesteps), batch (``--size small``: 3 layers,
  4 heads, 128 wide; ``--size paper``: 6 layers, 12 heads, 768 wide, L2M's dt_mediumplus_64).
- Same data: random batches of Meta-World shapes (state 39, action 4 in [−1, 1], RTG, timesteps), made
  before timing and cycled; the same attention mask (all steps real unless ``--pad`` pads the first
  ``--pad`` steps of every window).
- Same update: forward + loss + backward + grad-norm clip 0.25 + AdamW (lr 1e-4, weight decay 0.01;
  torch's default foreach implementation, or ``--fused`` for both), dropout 0.1 active (train mode).
- Same torch thread count (``--threads``, default 1, set before anything runs).
- Timed with scripts/timing.py: ``--warmup`` updates each, then ``--rounds`` interleaved rounds (order rotated)
  of one window of ``--steps`` updates per model; median updates/s with min–max and IQR, crl/HF per round.

What differs (stated in the output too):

- Both use 3 tokens per timestep [RTG, s, a] and predict the action from the state token.
- HF: continuous action head (Linear + tanh) with MSE loss; also computes its state and return heads;
  a learned position embedding (GPT-2 ``wpe``) on top of the timestep embedding; fused c_attn (q, k, v
  in one Linear); attention through transformers' ``attn_implementation`` (printed).
- crl: binned action head (act_dim 6 × 64 bins, CE per dim, padded dims masked), states/actions
  zero-padded to 204 / 6 inside (by slicing the embedding weights), q, k, v as separate Linears (LoRA
  hooks), ``F.scaled_dot_product_attention`` (fused ``is_causal`` without padding, a bool mask with it).

    python scripts/bench_l2m.py                       # small, batch 64, 1 thread
    python scripts/bench_l2m.py --batch 256
    python scripts/bench_l2m.py --size paper --steps 2 --rounds 1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Program, measure, report, spread  # noqa: E402


def make_batches(n: int, B: int, K: int, S: int, A: int, pad: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(B, K, dtype=torch.bool)
        mask[:, :pad] = False
        out.append(dict(
            states=torch.randn(B, K, S, generator=g),
            actions=torch.rand(B, K, A, generator=g) * 2 - 1,
            rtg=torch.rand(B, K, 1, generator=g) * 4000,
            timesteps=torch.randint(0, 195, (B, 1), generator=g) + torch.arange(K),
            mask=mask,
        ))
    return out


def crl_update_fn(cfg, args):
    from crl.dt import DecisionTransformer

    model = DecisionTransformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=args.fused or None)

    def update(b):
        mask = b["mask"] if args.pad else None  # no padding → fused causal SDPA path
        logits = model(b["states"], b["actions"], b["rtg"], b["timesteps"], mask)
        loss = model.loss(logits, b["actions"], mask, act_dim_used=b["actions"].shape[-1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    return model, update


def hf_update_fn(cfg, args, S, A):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    hf_cfg = DecisionTransformerConfig(
        state_dim=S, act_dim=A, hidden_size=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
        n_inner=4 * cfg.d_model, activation_function="gelu_new", max_ep_len=cfg.max_timestep,
        n_positions=1024, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        action_tanh=True)
    model = DecisionTransformerModel(hf_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=args.fused or None)

    def update(b):
        mask = b["mask"].long()
        out = model(states=b["states"], actions=b["actions"], rewards=None,
                    returns_to_go=b["rtg"] / cfg.reward_scale, timesteps=b["timesteps"],
                    attention_mask=mask, return_dict=True)
        err = (out.action_preds - b["actions"]) ** 2
        m = b["mask"][..., None].to(err.dtype)
        loss = (err * m).sum() / (m.sum() * A)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    return model, update, model.config._attn_implementation


def matmul_gflops(n: int = 512, reps: int = 20) -> float:
    """fp32 n³ matmul rate now, on the benchmark's threads: tells how contended the CPU is."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def update_block(update, batches, n: int):
    """A callable doing ``n`` updates, cycling through ``batches``."""
    def block() -> None:
        for i in range(n):
            update(batches[i % len(batches)])
    return block


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("small", "paper"), default="small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=None, help="timesteps per window (default: the size's, 5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed updates per round and model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pad", type=int, default=0, help="left-pad this many steps of every window (mask)")
    p.add_argument("--fused", action="store_true", help="fused AdamW for both")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from crl.dt import DT_SIZES

    cfg = DT_SIZES[args.size]
    if args.context:
        cfg = dataclasses.replace(cfg, context=args.context)
    S, A, K, B = 39, 4, cfg.context, args.batch
    batches = make_batches(4, B, K, S, A, args.pad, args.seed)

    crl_model, crl_update = crl_update_fn(cfg, args)
    hf_model, hf_update, hf_attn = hf_update_fn(cfg, args, S, A)
    n_crl = sum(q.numel() for q in crl_model.parameters())
    n_hf = sum(q.numel() for q in hf_model.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; size {args.size}: "
          f"{cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.d_model}, MLP {cfg.d_ff}; context {K} "
          f"steps = {3 * K} tokens; batch {B}; padded steps {args.pad}; AdamW {'fused' if args.fused else 'foreach'}, "
          f"clip 0.25, dropout {cfg.dropout}")
    print(f"data: Meta-World shapes, state {S}, action {A} (random)")
    print(f"crl: {n_crl / 1e6:.2f}M params (state_dim {cfg.state_dim}, act_dim {cfg.act_dim} padded); "
          f"3 tokens/step [RTG, s, a]; binned action head {cfg.act_dim}x{cfg.n_bins}, CE; "
          f"separate q/k/v Linears; F.scaled_dot_product_attention "
          f"({'bool mask' if args.pad else 'is_causal'})")
    print(f"hf : {n_hf / 1e6:.2f}M params; 3 tokens/step [RTG, s, a]; continuous tanh action head, MSE "
          f"(+ state/return heads computed); GPT-2 wpe positions + timestep embedding; fused c_attn; "
          f"attn_implementation={hf_attn}")

    probe = [matmul_gflops()]
    programs = [Program("crl DecisionTransformer", update_block(crl_update, batches, args.steps), args.steps,
                        threads=f"{args.threads} torch", warmup_calls=0),
                Program("hf DecisionTransformerModel", update_block(hf_update, batches, args.steps), args.steps,
                        threads=f"{args.threads} torch", warmup_calls=0)]
    for _ in range(args.warmup):
        crl_update(batches[0])
        hf_update(batches[0])
    results = measure(programs, rounds=args.rounds, seconds=0.0, unit="updates",
                      log=lambda line: print(line, flush=True))
    probe.append(matmul_gflops())
    print(f"fp32 512^3 matmul probe before/after: {probe[0]:.0f} / {probe[1]:.0f} GFLOP/s on {args.threads} "
          f"thread(s) (an idle 2-core EPYC runs ~105 per thread; lower means the CPU is shared)")
    print(report(results, [(programs[0].name, programs[1].name)]))
    crl_rate, hf_rate = (spread(results.rates[p.name])["median"] for p in programs)
    print(f"crl DecisionTransformer: {crl_rate:.2f} updates/s ({1e3 / crl_rate:.1f} ms/update)")
    print(f"hf  DecisionTransformerModel: {hf_rate:.2f} updates/s ({1e3 / hf_rate:.1f} ms/update)")


if __name__ == "__main__":
    main()
