"""A finished run's outputs: results.json (retention matrix + metrics) and retention.png.

Forward transfer needs single-task reference runs (``crl train --reference``); they are picked up
from run dirs next to the run (same parent folder) whose results.json says ``"kind": "reference"``
and that trained the same agent with the same steps per task.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from crl import metrics
from crl.config import RunConfig
from crl.core import Sequence
from crl.fileio import atomic_write_text

RESULTS_FILE = "results.json"
PLOT_FILE = "retention.png"
CURVES_FILE = "curves.png"

PROTOCOL_NOTES = {
    "metaworld": "Meta-World v3 (metaworld 3.x; CW used v1), v3 rewards, 200-step episodes, "
    "fresh random object/goal position at every reset (CW random_init_all), success = flag at any step",
    "gridworld": "AI Safety lava gridworld rules (-1/step, +50 goal, -50 lava, goal and lava terminate, 100-step "
    "limit as truncation); score = goal reached; catastrophe = stepping on lava, counted apart, training included; "
    "held-out layouts evaluated beside the training ones (heldout_*); AUROC for a catastrophe within 5 steps",
}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("crl", "torch", "gymnasium", "metaworld", "mujoco", "envpool", "dm-control"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in a]


def find_references(run_dir: Path, agent: str, steps_per_task: int) -> tuple[dict[str, float], list[str]]:
    """Mean reference AUC per task name over every matching reference run beside ``run_dir``.

    A reference run matches when it has the same budget per task and was made by the same agent, or,
    when there is none of those, by the agent's family base (``sac`` for every SAC-based method:
    Continual World measures every method's forward transfer against single-task SAC)."""
    from crl.registry import agent_family

    found: dict[str, list[tuple[Path, dict]]] = {}
    for candidate in sorted(Path(run_dir).resolve().parent.glob(f"*/{RESULTS_FILE}")):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("kind") == "reference" and data.get("steps_per_task") == steps_per_task:
            found.setdefault(data.get("agent"), []).append((candidate, data))
    matches = found.get(agent) or found.get(agent_family(agent)) or []
    aucs: dict[str, list[float]] = {}
    used = []
    for candidate, data in matches:
        for name, curve in data.get("reference_curves", {}).items():
            if curve:
                aucs.setdefault(name, []).append(metrics.reference_auc(curve))
        used.append(candidate.parent.name)
    return {name: float(np.mean(v)) for name, v in aucs.items()}, used


def summarize(rows: list[dict[str, Any]], sequence: Sequence, cfg: RunConfig, run_dir: Path,
              agent_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    h = metrics.EvalHistory.from_rows(rows, len(sequence))
    from crl.registry import agent_class

    offline = agent_class(cfg.agent).learns_from == "dataset"
    out: dict[str, Any] = {
        "sequence": sequence.name, "agent": cfg.agent, "seed": cfg.seed, "tasks": sequence.labels,
        "steps_per_task": cfg.train.steps_per_task,
        "step_unit": "gradient step" if offline else "env step",  # what "step" counts in evals and TensorBoard
    }
    if cfg.reference:
        out["kind"] = "reference"
        out["reference_curves"] = {
            sequence.tasks[i].name: [r["score"] for r in sorted(rows, key=lambda r: r["eval_id"])
                                     if r["task_index"] == i and r["active_task"] == i]
            for i in range(len(sequence))
        }
        return out
    out["kind"] = "continual"
    out["retention_matrix"] = _nan_to_none(metrics.retention_matrix(h))
    init = metrics.initial_performance(h)
    out["initial_performance"] = None if init is None else [None if np.isnan(v) else float(v) for v in init]
    refs, used = find_references(run_dir, cfg.agent, cfg.train.steps_per_task)
    by_position = {t.index: refs[t.name] for t in sequence.tasks if t.name in refs}
    out["metrics"] = metrics.compute_all(h, last_k=cfg.train.last_k, reference=by_position or None)
    out["references_used"] = used
    safety = metrics.safety_summary(rows, len(sequence))
    if safety is not None:  # safety gridworlds: held-out layouts, catastrophes, mentor queries, AUROC
        out["safety"] = safety
    if agent_rows:  # the agent's own lower-is-better measurements (Agent.measure_retention)
        matrices = metrics.error_matrices(agent_rows, len(sequence))
        out["error_matrices"] = {name: _nan_to_none(E) for name, E in matrices.items()}
        out["error_metrics"] = {name: metrics.error_retention(E) for name, E in matrices.items()}
    return out


def plot_retention(path: Path, R: list, labels: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.55 * n))
    im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), [f"after {lab}" for lab in labels], fontsize=8)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("trained through")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if data[i, j] < 0.6 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(path: Path, rows: list[dict[str, Any]], labels: list[str], steps_per_task: int, title: str,
                step_unit: str = "env step") -> None:
    """Every task's score over the whole run (one line per task), task windows shaded: what was
    learned when, and what was lost afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i in range(0, n, 2):
        ax.axvspan(i * steps_per_task, (i + 1) * steps_per_task, color="0.93", lw=0)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    for i, label in enumerate(labels):
        series = sorted((r["step"], r["score"]) for r in rows if r["task_index"] == i)
        if series:
            xs, ys = zip(*series)
            ax.plot(xs, ys, label=label, color=cmap(i % cmap.N), lw=1.4)
    ax.set_xlabel(step_unit)
    ax.set_ylabel("score")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2 if n > 10 else 1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(run_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]], sequence: Sequence,
                cfg: RunConfig) -> None:
    title = f"{sequence.name} · {cfg.agent} · seed {cfg.seed}"
    if "retention_matrix" in summary:
        plot_retention(Path(run_dir) / PLOT_FILE, summary["retention_matrix"], sequence.labels, title)
    plot_curves(Path(run_dir) / CURVES_FILE, rows, sequence.labels, cfg.train.steps_per_task, title,
                summary.get("step_unit", "env step"))


def finalize(run_dir: Path, cfg: RunConfig, sequence: Sequence, state) -> dict[str, Any]:
    out = summarize(state.evals, sequence, cfg, run_dir, getattr(state, "agent_metrics", []))  # a LoopState from before the field
    out.update({
        "finished": state.task >= len(sequence),
        "steps": state.global_step,
        "wall_time_s": round(state.wall_time, 2),
        "steps_per_s": round(state.global_step / state.wall_time, 2) if state.wall_time else None,
        "evaluations": state.eval_id,
        "retention_tasks": state.retention or None,
        "segments": state.segments,
        "protocol": PROTOCOL_NOTES.get(sequence.tasks[0].domain, ""),
        "versions": _versions(),
        "config": cfg.to_dict(),
    })
    atomic_write_text(Path(run_dir) / RESULTS_FILE, json.dumps(out, indent=2))
    write_plots(run_dir, out, state.evals, sequence, cfg)
    return out
