"""Reproduce Continual World's table (reference/continual-world.md, "Headline results") with plain loops.

For every (agent, seed) it runs ``crl train`` into ``ROOT/<agent>__s<seed>``, plus single-task SAC
reference runs ``ROOT/reference__s<seed>`` for forward transfer (every method's transfer is measured
against single-task SAC, as in Continual World), then prints ``crl report`` over all of them: per
method the mean and 90% bootstrap CI of average performance, forgetting and forward transfer.
Runs that finished are skipped and killed ones resumed, so the script can be re-run after a crash.

    # the paper's protocol: CW20, 1M steps per task, 20 seeds (days per run on CPU; use GPUs/Ray)
    python scripts/cw_table.py --seq cw20 --seeds 0-19
    # a short study that fits two CPU cores in about an hour
    python scripts/cw_table.py --seq mw:window-close-v3,faucet-close-v3,handle-press-side-v3 \\
        --agents sac,ewc,clonex --seeds 0 --steps-per-task 50000 --jobs 3 --no-reference \\
        --set agent.start_steps=5000 --set agent.replay_ratio=0.5 --eval-every 10000 --eval-episodes 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CW_METHODS = "sac,l2,ewc,mas,vcl,packnet,agem,perfect-memory,clonex"


def seeds(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "results.json").read_text()).get("finished", False)
    except (OSError, json.JSONDecodeError):
        return False


def command(args, run_dir: Path, agent: str, seed: int, reference: bool) -> list[str]:
    if (run_dir / "checkpoint.pt").exists():
        return ["crl", "train", "--resume", str(run_dir), "--quiet"]
    cmd = ["crl", "train", "--seq", args.seq, "--agent", agent, "--seed", str(seed), "--run-dir", str(run_dir),
           "--quiet"]
    for flag in ("preset", "steps_per_task", "eval_every", "eval_episodes", "device", "backend"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    for item in args.set:
        cmd += ["--set", item]
    return cmd + (["--reference"] if reference else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", default="cw20", help="sequence (default: %(default)s, as the paper)")
    parser.add_argument("--agents", default=CW_METHODS, help="comma-separated agents (default: %(default)s)")
    parser.add_argument("--seeds", default="0-19", help="e.g. 0-19 or 0,3,5 (default: %(default)s, as the paper)")
    parser.add_argument("--root", type=Path, default=Path("runs/cw_table"), help="parent of all run dirs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one torch thread)")
    parser.add_argument("--no-reference", action="store_true", help="skip the single-task SAC reference runs")
    parser.add_argument("--preset")
    parser.add_argument("--steps-per-task", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-episodes", type=int)
    parser.add_argument("--device")
    parser.add_argument("--backend")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args()

    runs = [(args.root / f"{agent}__s{seed}", agent, seed, False)
            for seed in seeds(args.seeds) for agent in args.agents.split(",")]
    if not args.no_reference:
        runs += [(args.root / f"reference__s{seed}", "sac", seed, True) for seed in seeds(args.seeds)]
    # Two phases, references first: a continual run picks up the references present when it finishes.
    phases = [[command(args, d, a, s, r) for d, a, s, r in runs if r == reference and not finished(d)]
              for reference in (True, False)]
    for cmd in phases[0] + phases[1]:
        print(" ".join(cmd))
    if args.dry_run:
        return
    args.root.mkdir(parents=True, exist_ok=True)
    codes = []
    for todo in phases:
        with ThreadPoolExecutor(args.jobs) as pool:
            codes += list(pool.map(lambda cmd: subprocess.run(cmd).returncode, todo))
    if any(codes):
        print(f"{sum(c != 0 for c in codes)} run(s) failed; re-run this script to resume them", file=sys.stderr)
    continual = [str(d) for d, _, _, reference in runs if not reference and finished(d)]
    if continual:
        subprocess.run(["crl", "report", *continual])


if __name__ == "__main__":
    main()
