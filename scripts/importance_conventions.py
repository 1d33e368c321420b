"""EWC's and MAS's importances under crl's two conventions on a trained checkpoint (issue 24).

    python scripts/importance_conventions.py RUN_DIR [--batches 10] [--batch-size 256] [--seed 0]

Loads RUN_DIR/checkpoint.pt (any SAC-family run: ``sac``, ``ewc``, ...), draws ``--batches`` batches from the
replay buffer it holds (the current task's transitions) and measures, on the same batches, the importances of
the actor's shared parameters (CW's common variables) with ``agent.fisher=squashed`` (Continual World's: the
Jacobian of tanh(μ)) and with ``agent.fisher=gaussian`` (the pre-tanh μ: for EWC the exact Fisher of the
Gaussian). Prints, per layer and over all of them, the ratio gaussian / squashed of the summed importances and
the median of the per-weight ratios, so that results obtained with the pre-tanh form (crl before issue 24) can
be set against CW's λ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from crl import checkpoint
from crl.config import config_from_dict
from crl.continual import ewc_importance, mas_importance, shared_policy_parameters
from crl.core import UsageError
from crl.envs import make_sequence
from crl.loop import make_agent


def measure(agent, batches: list[torch.Tensor], task: int) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """{method: {convention: {parameter: importance averaged over the batches}}}."""
    names = list(shared_policy_parameters(agent.actor, agent.num_heads))
    head = agent.heads(task)
    squash = getattr(agent.actor, "squash", None)
    out = {}
    for method, fn in (("ewc", ewc_importance), ("mas", mas_importance)):
        out[method] = {}
        for convention, squash_fn in (("squashed", squash), ("gaussian", None)):
            total: dict[str, torch.Tensor] = {}
            for obs in batches:
                for n, w in fn(agent.actor, names, agent.policy_input(obs, task), head, squash=squash_fn).items():
                    total[n] = total.get(n, 0) + w / len(batches)
            out[method][convention] = total
    return out


def ratios(gaussian: dict[str, torch.Tensor], squashed: dict[str, torch.Tensor]) -> list[tuple[str, float, float]]:
    """(layer, sum ratio, median per-weight ratio) per parameter, then over all of them."""
    def median(g: torch.Tensor, s: torch.Tensor) -> float:  # weights no sample moves (zero input dims) left out
        moved = s > 0
        return float((g[moved] / s[moved]).median()) if moved.any() else float("nan")

    rows = [(n, float(gaussian[n].sum() / squashed[n].sum()), median(gaussian[n], squashed[n])) for n in gaussian]
    g, s = torch.cat([t.flatten() for t in gaussian.values()]), torch.cat([t.flatten() for t in squashed.values()])
    rows.append(("all", float(g.sum() / s.sum()), median(g, s)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=int, default=10, help="batches of the buffer (CW: 10)")
    parser.add_argument("--batch-size", type=int, default=256, help="(CW: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch draws")
    args = parser.parse_args(argv)
    try:
        data = checkpoint.load(args.run_dir)
        cfg = config_from_dict(data["config"])
        agent = make_agent(cfg, make_sequence(cfg.seq), torch.device("cpu"))
        if not hasattr(agent, "actor") or not hasattr(agent.actor, "squash"):
            raise UsageError(f"{args.run_dir}: agent '{cfg.agent}' has no tanh-squashed Gaussian actor (a SAC-family "
                             "agent is needed)")
        agent.load_state_dict(data["agent"])
        if agent.buffer.size == 0:
            raise UsageError(f"{args.run_dir}: the checkpoint's replay buffer is empty")
    except UsageError as e:
        print(f"crl: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    task = agent.task_index
    batches = [agent.buffer.sample(args.batch_size)["obs"] for _ in range(args.batches)]
    importances = measure(agent, batches, task)
    with torch.no_grad():
        mu, log_std = agent.actor.distribution(agent.policy_input(torch.cat(batches), task), agent.heads(task))
    saturated = (mu.abs() > 2).any(-1)  # some action dimension with tanh'(μ) < 0.071
    print(f"run {args.run_dir}: agent {cfg.agent}, task {task} ({cfg.seq}), gradient steps {agent.gradient_steps}, "
          f"{args.batches}×{args.batch_size} buffer samples, seed {args.seed}")
    print(f"policy: share of (sample, dim) with |μ| > 2: {float((mu.abs() > 2).float().mean()):.3f}; samples with "
          f"one: {float(saturated.float().mean()):.3f}; median |μ| {float(mu.abs().median()):.2f}; median σ "
          f"{float(log_std.exp().median()):.3f}")
    for method in ("ewc", "mas"):
        print(f"\n{method}: gaussian (pre-tanh) / squashed (CW)")
        print(f"{'parameter':<24}{'sum ratio':>12}{'median ratio':>15}")
        for name, total, median in ratios(importances[method]["gaussian"], importances[method]["squashed"]):
            print(f"{name:<24}{total:>12.3f}{median:>15.3f}")
    calm = [obs[~(mu_b.abs() > 2).any(-1)] for obs, mu_b in zip(batches, mu.split(args.batch_size))]
    calm = [obs for obs in calm if len(obs)]
    if calm and not saturated.all():  # the same ratios on the samples without a saturated dimension
        unsaturated = measure(agent, calm, task)
        for method in ("ewc", "mas"):
            *_, (_, total, median) = ratios(unsaturated[method]["gaussian"], unsaturated[method]["squashed"])
            print(f"{method} on the {int((~saturated).sum())} samples with every |μ| ≤ 2: sum ratio {total:.3f}, "
                  f"median ratio {median:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
