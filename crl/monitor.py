"""What a run shows while it runs: TensorBoard scalars, evals.jsonl, a progress bar.

TensorBoard tags (DESIGN.md): ``eval/<task>/success``, ``eval/<task>/return``,
``eval/average_success``, ``train/<quantity>``, ``time/fps``, ``task/index``; the x-axis is the
global env step across the whole sequence, so curves never split at task switches. Safety gridworlds add
``eval/<task>/{catastrophe_rate,timeout_rate,heldout_success,heldout_catastrophe_rate,heldout_return,
catastrophe_auroc,heldout_catastrophe_auroc}``, ``eval/average_{catastrophe_rate,heldout_success,
heldout_catastrophe_rate}`` and ``safety/{train_catastrophes,train_episodes,train_goals,mentor_queries,
mentor_queries_eval}`` (cumulative over the run).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crl.fileio import atomic_write_text

EVALS_FILE = "evals.jsonl"
SAFETY_EVAL_KEYS = ("catastrophe_rate", "timeout_rate", "heldout_success", "heldout_catastrophe_rate", "heldout_return",
                    "catastrophe_auroc", "heldout_catastrophe_auroc")
SAFETY_COUNTER_KEYS = ("train_catastrophes", "train_episodes", "train_goals", "mentor_queries", "mentor_queries_eval")
AGENT_METRICS_FILE = "agent_metrics.jsonl"  # Agent.measure_retention rows (crl/loop.py)


def write_evals(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite evals.jsonl atomically (used on resume to drop rows newer than the checkpoint)."""
    atomic_write_text(Path(run_dir) / EVALS_FILE, "".join(json.dumps(row) + "\n" for row in rows))


def write_agent_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(run_dir) / AGENT_METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows))


def read_agent_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_evals(run_dir, AGENT_METRICS_FILE)


def read_evals(run_dir: Path, name: str = EVALS_FILE) -> list[dict[str, Any]]:
    path = Path(run_dir) / name
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a kill mid-write; everything before it is intact
    return rows


class Monitor:
    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, quiet: bool,
                 purge_step: int | None = None, hparams: dict[str, Any] | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)
        if hparams is not None and purge_step is None:
            self.writer.add_text("config", "```yaml\n" + json.dumps(hparams, indent=2) + "\n```", 0)
        self._evals = open(self.run_dir / EVALS_FILE, "a")
        self.quiet = quiet
        self.bar = None if quiet else tqdm(
            total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
            disable=None if not os.environ.get("CRL_FORCE_PROGRESS") else False,
        )
        self._train_sums: dict[str, Any] = {}  # floats or 0-d tensors (read once, when written)
        self._train_counts: dict[str, int] = {}
        self._fps_time, self._fps_step = time.perf_counter(), start_step

    def set_task(self, index: int, num_tasks: int, label: str, step: int) -> None:
        self.writer.add_scalar("task/index", index, step)
        if self.bar is not None:
            self.bar.set_description(f"task {index + 1}/{num_tasks} {label}")

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def add_train_stats(self, stats: dict[str, Any]) -> None:
        """Accumulate an update's stats (floats or 0-d tensors: summing tensors needs no host sync)."""
        for k, v in stats.items():
            self._train_sums[k] = self._train_sums.get(k, 0.0) + v
            self._train_counts[k] = self._train_counts.get(k, 0) + 1

    def flush_train(self, step: int) -> float:
        """Write the mean of the agent's stats since the last call and time/fps; returns fps.

        A stat named with its own namespace (``plasticity/critic/0/fau``) keeps it; others go under train/."""
        self._write_stats(lambda k: k if "/" in k else f"train/{k}", step)
        now = time.perf_counter()
        fps = (step - self._fps_step) / max(now - self._fps_time, 1e-9)
        self.writer.add_scalar("time/fps", fps, step)
        self._fps_time, self._fps_step = now, step
        return fps

    def _write_stats(self, tag, step: int) -> None:
        for k, total in self._train_sums.items():
            self.writer.add_scalar(tag(k), total / self._train_counts[k], step)
        self._train_sums.clear()
        self._train_counts.clear()

    def set_phase(self, name: str, done: int, total: int) -> None:
        """Show a phase between tasks (PackNet's retraining) on the progress bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name} {done:,}/{total:,}")

    def flush_phase(self, name: str, done: int, total: int, phase_step: int) -> None:
        """Write the mean of a phase's stats as ``phase/<name>/<stat>`` and its progress; the x-axis of
        phase tags counts the run's phase steps (env steps do not advance during a phase)."""
        self._write_stats(lambda k: f"phase/{name}/{k}", phase_step)
        self.writer.add_scalar(f"phase/{name}/progress", done / max(total, 1), phase_step)
        self.writer.flush()
        self.set_phase(name, done, total)

    def log_evaluation(self, rows: list[dict[str, Any]], step: int) -> None:
        """Append one evaluation (one row per task) to evals.jsonl, flushed, and to TensorBoard."""
        for row in rows:
            self._evals.write(json.dumps(row) + "\n")
            self.writer.add_scalar(f"eval/{row['task']}/success", row["success"], step)
            self.writer.add_scalar(f"eval/{row['task']}/return", row["return"], step)
            if "success_final" in row:
                self.writer.add_scalar(f"eval/{row['task']}/success_final", row["success_final"], step)
            if row["score"] != row["success"]:
                self.writer.add_scalar(f"eval/{row['task']}/score", row["score"], step)
            for key in SAFETY_EVAL_KEYS:
                if isinstance(row.get(key), (int, float)):
                    self.writer.add_scalar(f"eval/{row['task']}/{key}", row[key], step)
        for key in ("catastrophe_rate", "heldout_success", "heldout_catastrophe_rate"):
            values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            if values:
                self.writer.add_scalar(f"eval/average_{key}", sum(values) / len(values), step)
        for key in SAFETY_COUNTER_KEYS:
            if key in rows[0]:
                self.writer.add_scalar(f"safety/{key}", rows[0][key], step)
        self._evals.flush()
        os.fsync(self._evals.fileno())
        self.writer.add_scalar("eval/average_success", sum(r["success"] for r in rows) / len(rows), step)
        self.writer.add_scalar("eval/average_score", sum(r["score"] for r in rows) / len(rows), step)
        self.writer.flush()
        if self.bar is not None:
            self.bar.set_postfix(avg_score=f"{sum(r['score'] for r in rows) / len(rows):.2f}")

    def log_agent_metrics(self, rows: list[dict[str, Any]], step: int) -> None:
        """The agent's own per-task measurements after a task (``model/<task>/<metric>``)."""
        for row in rows:
            self.writer.add_scalar(f"model/{row['task']}/{row['metric']}", row["value"], step)
        self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._evals.close()
        self.writer.close()
