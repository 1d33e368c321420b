"""``crl report RUN_DIR...``: the metrics table of finished runs; runs of the same sequence and agent
over several seeds are also summarised as mean and 90% bootstrap CI (Continual World's convention)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from crl import metrics
from crl.core import UsageError

COLUMNS = ("average_performance", "forgetting", "forward_transfer", "gem_acc", "gem_bwt", "avg_min_acc", "wc_acc", "wf_10")


def load_run(run_dir: Path) -> dict[str, Any]:
    """Recompute a run's summary from its config.yaml and evals.jsonl (works for unfinished runs)."""
    from crl.envs import make_sequence
    from crl.loop import load_run_config, read_evals
    from crl.monitor import read_agent_metrics
    from crl.results import CURVES_FILE, write_plots, summarize

    cfg = load_run_config(run_dir)
    rows = read_evals(run_dir)
    if not rows:
        raise UsageError(f"{run_dir} has no evaluations yet (evals.jsonl is empty)")
    sequence = make_sequence(cfg.seq)
    summary = summarize(rows, sequence, cfg, run_dir, read_agent_metrics(run_dir))
    if not (Path(run_dir) / CURVES_FILE).exists():  # unfinished runs get their plots here
        write_plots(run_dir, summary, rows, sequence, cfg)
    return summary


def _fmt(v: Any) -> str:
    return f"{v:7.3f}" if isinstance(v, (int, float)) else f"{'—':>7}"


def report(run_dirs: list[Path], as_json: bool = False) -> list[dict[str, Any]]:
    runs = [(d, load_run(d)) for d in run_dirs]
    continual = [(d, s) for d, s in runs if s.get("kind") == "continual"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for _, s in continual:
        groups[(s["sequence"], s["agent"])].append(s)
    table = []
    for d, s in continual:
        table.append({"run": str(d), "sequence": s["sequence"], "agent": s["agent"], "seed": s["seed"],
                      **{c: s["metrics"].get(c) for c in COLUMNS}})
    aggregates = []
    for (seq, agent), members in groups.items():
        row: dict[str, Any] = {"sequence": seq, "agent": agent, "seeds": len(members)}
        for c in COLUMNS:
            values = [m["metrics"][c] for m in members if isinstance(m["metrics"].get(c), (int, float))]
            row[c] = list(metrics.bootstrap_ci(values)) if values else None
        aggregates.append(row)
    if as_json:
        print(json.dumps({"runs": table, "aggregates": aggregates}, indent=2))
        return table
    header = f"{'run':<44} " + " ".join(f"{c[:7]:>7}" for c in COLUMNS)
    print(header)
    for row in table:
        print(f"{Path(row['run']).name[:44]:<44} " + " ".join(_fmt(row[c]) for c in COLUMNS))
    for agg in aggregates:
        if agg["seeds"] > 1:
            print(f"\n{agg['sequence']} · {agg['agent']}: mean [90% CI] over {agg['seeds']} seeds")
            for c in COLUMNS:
                if agg[c] is not None:
                    mean, lo, hi = agg[c]
                    print(f"  {c:<22} {mean:.3f} [{lo:.3f}, {hi:.3f}]")
    for d, s in continual:
        print_error_matrices(d, s)
    for d, s in runs:
        if s.get("kind") == "reference":
            print(f"{Path(d).name}: single-task reference, AUC per task: "
                  + ", ".join(f"{k} {metrics.reference_auc(v):.2f}" for k, v in s["reference_curves"].items() if v))
    return table


def print_error_matrices(run_dir: Path, summary: dict[str, Any]) -> None:
    """A run's error matrices (Agent.measure_retention; lower is better): row = after task i, column = task j."""
    for name, E in summary.get("error_matrices", {}).items():
        m = summary["error_metrics"][name]
        print(f"\n{Path(run_dir).name}: {name} (lower is better; row = after task i, column = task j); "
              f"first task after last / right after: {_fmt(m['first_task_ratio']).strip()}, "
              f"mean ratio: {_fmt(m['mean_ratio']).strip()}")
        for i, row in enumerate(E):
            print(f"  after {i}: " + " ".join(_fmt(v) for v in row))
