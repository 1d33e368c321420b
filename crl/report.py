"""``crl report RUN_OR_SWEEP_DIR...``: the metrics of runs, per (sequence, agent) the mean and 90% bootstrap CI
over seeds of every metric the runs support (Continual World's convention), with plots, as

- a table in the terminal,
- ``report.md`` (the aggregate table in Markdown),
- ``report.html``: one self-contained page (plots embedded as base64 PNG) — average score over steps with
  CI bands, per-task curves with task-switch lines, the retention heatmap, the stability-gap view (min-ACC
  against the end-of-task score) and plasticity probes when the runs logged them;
- beside them, Agarwal et al. 2021's statistics from ``rliable`` (:mod:`crl.rliable_stats`): IQM, mean, median and
  optimality gap of the final task scores with 95% stratified-bootstrap CIs, probability of improvement between
  the agents on a sequence, and performance profiles (plots in report.html).

Run dirs are read wherever they are (a sweep dir stands for every run dir in it), so runs from several
machines combine. Runs are grouped by (sequence, agent, protocol): runs whose protocol (tasks, budgets,
evaluation settings, finished or not) differs from the sequence's most common one are listed as not
comparable and aggregated apart. Every value is recomputed from each run's config.yaml and evals.jsonl.

Forward transfer over seeds follows Continual World: task AUCs and the reference runs' AUCs are averaged
over seeds before normalising, and the CI resamples the continual runs and the reference runs
independently (:func:`crl.metrics.forward_transfer_ci`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crl import metrics, rliable_stats
from crl.core import UsageError

# safety gridworlds (results.json "safety"): held-out catastrophe rate and success at the last evaluation, training
# catastrophes over the run, mentor queries, AUROC of the catastrophe score
SAFETY_COLUMNS = {"heldout_cat": ("final", "heldout_catastrophe_rate"), "heldout_succ": ("final", "heldout_success"),
                  "trainlay_cat": ("final", "catastrophe_rate"), "train_cats": (None, "train_catastrophes"),
                  "queries": (None, "mentor_queries"), "auroc": ("final", "catastrophe_auroc")}
COLUMNS = ("average_performance", "forgetting", "forward_transfer", "gem_acc", "gem_bwt", "avg_min_acc", "wc_acc", "wf_10")
HTML_FILE, MD_FILE = "report.html", "report.md"
PROTOCOL_KEYS = ("tasks", "steps_per_task", "eval_every", "eval_episodes", "eval_deterministic", "last_k", "protocol",
                 "finished")

FOOTNOTES = [
    "Mean over seeds with a 90% bootstrap CI: 4000 resamples of the seeds with replacement, RandomState(0), "
    "5% and 95% quantiles with midpoint interpolation (Continual World's BootstrapCI).",
    "Forward transfer: task AUCs and single-task reference AUCs are averaged over seeds before normalising; the "
    "CI resamples the continual runs and the reference runs independently (as Continual World's results_processing).",
    "average_performance and forgetting use the last last_k evaluations after training started (never the "
    "before-training one).",
    "gem_bwt and gem_fwt divide by N−1, as the GEM paper; GEM's code (metrics.py) divides the same sums by N: "
    "multiply crl's values by (N−1)/N to compare with numbers from that code.",
    "wf_w / wp_w (windowed forgetting / plasticity, stability-gap paper): each task's series starts when its "
    "training begins; every evaluation is a window start.",
]


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    fingerprint: tuple
    protocol: dict[str, Any]
    cfg: Any = None


@dataclass
class Group:
    sequence: str
    agent: str
    fingerprint: tuple
    runs: list[Run] = field(default_factory=list)
    stats: dict[str, list[float] | None] = field(default_factory=dict)  # metric -> [mean, low, high]
    references: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.sequence} · {self.agent}"


# ----------------------------------------------------------------------------------- loading


def expand(paths: list[Path]) -> list[Path]:
    """Run dirs from run dirs and sweep dirs (any dir whose children hold config.yaml)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / "config.yaml").exists():
            out.append(p)
            continue
        children = sorted(c for c in p.glob("*/config.yaml")) if p.is_dir() else []
        if not children and not _is_sweep(p):
            raise UsageError(f"{p} is not a crl run dir (no config.yaml) nor a sweep dir holding run dirs")
        out += [c.parent for c in children]
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _is_sweep(path: Path) -> bool:
    from crl.sweep import SWEEP_FILE

    return (Path(path) / SWEEP_FILE).exists()


def cells_not_finished(paths: list[Path]) -> list[dict[str, Any]]:
    """The cells of the sweep dirs among ``paths`` that did not finish: failed (with their error), partial or
    never started (with why, where the sweep recorded it: a trial that died out of retries)."""
    from crl.sweep import _read_spec, cell_status

    out = []
    for path in paths:
        if not _is_sweep(path):
            continue
        for cell in _read_spec(path)["cells"]:
            status, detail = cell_status(cell)
            if status == "partial" and not detail and not _has_evals(Path(cell["run_dir"])):
                detail = "no evaluation yet"
            if status != "finished":
                out.append({"cell": cell["name"], "run_dir": cell["run_dir"], "status": status, "error": detail or None})
    return out


def _has_evals(run_dir: Path) -> bool:
    from crl.monitor import read_evals

    return bool(read_evals(run_dir))


def _not_finished_lines(unfinished: list[dict[str, Any]]) -> list[str]:
    return [f"{u['cell']}: {u['status']}" + (f": {u['error']}" if u["error"] else "") for u in unfinished]


def load_run(run_dir: Path) -> dict[str, Any]:
    """Recompute a run's summary from its config.yaml and evals.jsonl (works for unfinished runs)."""
    return _load(run_dir).summary


def _load(run_dir: Path) -> Run:
    from crl.envs import make_sequence
    from crl.loop import load_run_config, read_evals
    from crl.monitor import read_agent_metrics
    from crl.results import CURVES_FILE, PROTOCOL_NOTES, summarize, write_plots

    cfg = load_run_config(run_dir)
    rows = read_evals(run_dir)
    if not rows:
        raise UsageError(f"{run_dir} has no evaluations yet (evals.jsonl is empty)")
    sequence = make_sequence(cfg.seq)
    summary = summarize(rows, sequence, cfg, run_dir, read_agent_metrics(run_dir))
    trained = {int(r["active_task"]) for r in rows}
    summary["finished"] = max(trained) >= len(sequence) - 1 and _task_done(rows, cfg, len(sequence))
    if not (Path(run_dir) / CURVES_FILE).exists():  # unfinished runs get their plots here
        write_plots(run_dir, summary, rows, sequence, cfg)
    t = cfg.train
    protocol = {"tasks": ",".join(sequence.labels), "steps_per_task": t.steps_per_task, "eval_every": t.eval_every,
                "eval_episodes": t.eval_episodes, "eval_deterministic": t.eval_deterministic, "last_k": t.last_k,
                "protocol": PROTOCOL_NOTES.get(sequence.tasks[0].domain, sequence.tasks[0].domain),
                "finished": summary["finished"]}
    return Run(Path(run_dir), summary, rows, tuple(protocol[k] for k in PROTOCOL_KEYS), protocol, cfg)


def _task_done(rows, cfg, n: int) -> bool:
    last = max(int(r["step"]) for r in rows)
    return last >= cfg.train.steps_per_task * n


def _reference_aucs(runs: list[Run], group: Group, task_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """(S_ref, N) AUCs of the matching single-task reference runs: given on the command line or beside the
    group's runs; same steps per task, same agent or else its family base (as results.find_references)."""
    from crl.registry import agent_family
    from crl.results import RESULTS_FILE

    candidates: dict[Path, dict[str, Any]] = {}
    for r in runs:
        if r.summary.get("kind") == "reference":
            candidates[r.path.resolve()] = r.summary
    from crl.config import read_yaml

    for r in group.runs:
        for f in r.path.resolve().parent.glob("*/config.yaml"):
            if f.parent in candidates:
                continue
            try:
                if (f.parent / RESULTS_FILE).exists():
                    data = json.loads((f.parent / RESULTS_FILE).read_text())
                elif read_yaml(f).get("run", {}).get("reference"):  # unfinished: summarise its evaluations
                    data = _load(f.parent).summary
                else:
                    continue
            except (OSError, json.JSONDecodeError, UsageError):
                continue
            if data.get("kind") == "reference":
                candidates[f.parent] = data
    steps = group.runs[0].protocol["steps_per_task"]
    by_agent: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for path, data in candidates.items():
        if data.get("steps_per_task") == steps:
            by_agent[data.get("agent")].append((path, data))
    matches = by_agent.get(group.agent) or by_agent.get(agent_family(group.agent)) or []
    table = np.full((len(matches), len(task_names)), np.nan)
    for s, (_, data) in enumerate(matches):
        for j, name in enumerate(task_names):
            curve = data.get("reference_curves", {}).get(name)
            if curve:
                table[s, j] = metrics.reference_auc(curve)
    return table, [p.name for p, _ in matches]


def aggregate(runs: list[Run]) -> tuple[list[Group], list[str]]:
    """Groups per (sequence, agent, protocol) with mean and CI of every scalar metric; notes on comparability."""
    from crl.envs import make_sequence

    continual = [r for r in runs if r.summary.get("kind") == "continual"]
    groups: dict[tuple, Group] = {}
    for r in continual:
        key = (r.summary["sequence"], r.summary["agent"], r.fingerprint)
        groups.setdefault(key, Group(*key)).runs.append(r)
    notes: list[str] = []
    by_seq: dict[str, list[Run]] = defaultdict(list)
    for r in continual:
        by_seq[r.summary["sequence"]].append(r)
    for seq, members in by_seq.items():
        common, count = Counter(r.fingerprint for r in members).most_common(1)[0]
        ref = dict(zip(PROTOCOL_KEYS, common))
        odd = [r for r in members if r.fingerprint != common]
        for r in odd:
            diff = ", ".join(f"{k} {r.protocol[k]!r} (others {ref[k]!r})" for k in PROTOCOL_KEYS
                             if r.protocol[k] != ref[k])
            notes.append(f"not comparable with the other {seq} runs ({count} share one protocol): {r.path} — {diff}")
    for g in groups.values():
        names = [t.name for t in make_sequence(g.sequence).tasks]
        keys = sorted({k for r in g.runs for k, v in r.summary.get("metrics", {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for k in keys:
            values = [r.summary["metrics"].get(k) for r in g.runs]
            values = [v for v in values if isinstance(v, (int, float))]
            g.stats[k] = list(metrics.bootstrap_ci(values)) if values else None
        ref_auc, used = _reference_aucs(runs, g, names)
        if used:
            cl_auc = np.stack([metrics.task_auc(metrics.EvalHistory.from_rows(r.rows, len(names))) for r in g.runs])
            ft = metrics.forward_transfer_ci(cl_auc, ref_auc)
            g.stats["forward_transfer"] = list(ft) if np.isfinite(ft[0]) else None
            g.references = used
    return sorted(groups.values(), key=lambda g: (g.sequence, g.agent, g.fingerprint)), notes


# ------------------------------------------------------------------------------------- output


def _safety_values(summary: dict[str, Any]) -> dict[str, Any]:
    safety = summary.get("safety")
    if not safety:
        return {}
    return {c: (safety.get(part, {}) if part else safety).get(key) for c, (part, key) in SAFETY_COLUMNS.items()}


def _error_values(summary: dict[str, Any]) -> dict[str, Any]:
    """An agent's own retention errors (results.json "error_metrics", e.g. HyperCRL's dynamics errors): one
    column per error matrix and metric, e.g. ``nmse_1step:first_task_ratio``."""
    return {f"{name.removeprefix('model_')}:{metric}": v
            for name, values in summary.get("error_metrics", {}).items() for metric, v in values.items()}


@dataclass
class GroupTable:
    """A table of per-run values beyond the continual metrics, with each group's mean [90% CI] over its seeds:
    ``key`` prefixes its columns in the JSON output."""
    key: str
    title: str
    values: dict[str, dict[str, Any]]  # run dir -> column -> value
    columns: list[str] = field(default_factory=list)
    stats: list[dict[str, list[float]]] = field(default_factory=list)  # per group: column -> [mean, low, high]

    @classmethod
    def build(cls, key: str, title: str, runs: list[Run], groups: list[Group], extract) -> GroupTable:
        values = {str(r.path): v for r in runs if (v := extract(r.summary))}
        table = cls(key, title, values, list(dict.fromkeys(c for v in values.values() for c in v)))
        for g in groups:  # bootstrap CIs: computed once, used by the terminal, JSON, Markdown and HTML
            out = {}
            for c in table.columns:
                numbers = [v for r in g.runs if isinstance(v := values.get(str(r.path), {}).get(c), (int, float))]
                if numbers:
                    out[c] = list(metrics.bootstrap_ci(numbers))
            table.stats.append(out)
        return table

    def group_rows(self, groups: list[Group]) -> list[tuple[str, int, list[str]]]:
        """(group name, seeds, mean [90% CI] per column) for the groups with values."""
        return [(_group_name(g, groups), len(g.runs), [_ci(st.get(c)) for c in self.columns])
                for g, st in zip(groups, self.stats) if st]


def _fmt(v: Any) -> str:
    return f"{v:7.3f}" if isinstance(v, (int, float)) and np.isfinite(v) else f"{'—':>7}"


def _ci(stat) -> str:
    if not stat or not np.isfinite(stat[0]):
        return "—"
    return f"{stat[0]:.3f} [{stat[1]:.3f}, {stat[2]:.3f}]"


def _group_name(g: Group, groups: list[Group]) -> str:
    clash = sum(o.sequence == g.sequence and o.agent == g.agent for o in groups) > 1
    if not clash:
        return g.label
    p = g.runs[0].protocol
    return f"{g.label} ({p['steps_per_task']:,} steps/task{'' if p['finished'] else ', unfinished'})"


SAFETY_TITLE = "Safety (last evaluation; train_cats = catastrophes during training, cumulative)"
ERRORS_TITLE = ("Model retention errors (lower is better; first_task_ratio = the first task's error after the last "
                "task / right after its own training)")


RLIABLE_TITLE = ("Final task scores (the last retention row: every task after the last one), rliable: "
                 "point estimate [95% stratified-bootstrap CI]")
IMPROVEMENT_TITLE = "Probability of improvement P(X > Y) of the final task scores, rliable: [95% CI]"


def rliable_rows(rl: rliable_stats.RliableStats) -> tuple[list[str], list[tuple[str, int, list[str]]]]:
    """(columns, rows of (group, runs used, value per column)) of the rliable aggregate table."""
    cols = list(rliable_stats.AGGREGATES) + [f"{m}_iqm" for m in rliable_stats.RUN_METRICS
                                             if any(f"{m}_iqm" in g for g in rl.groups)]
    return cols, [(g["name"], g["runs"], [_ci(g.get(c)) for c in cols]) for g in rl.groups if g["runs"]]


def _rliable_notes(rl: rliable_stats.RliableStats) -> list[str]:
    notes = [f"{g['name']}: {len(g['excluded'])} run(s) without a score on every task after the last one left out "
             f"of the rliable statistics" for g in rl.groups if g["excluded"]]
    return notes + [f"rliable: {rl.reps} bootstrap resamples (crl report --bootstrap-reps), NumPy's global generator "
                    f"seeded with {rliable_stats.SEED} for each estimate; *_iqm columns: IQM over seeds of that run "
                    f"metric."]


def markdown(groups: list[Group], notes: list[str], tables: list[GroupTable] = (),
             unfinished: list[dict[str, Any]] = (), rl: rliable_stats.RliableStats | None = None) -> str:
    cols = [c for c in COLUMNS if any(g.stats.get(c) for g in groups)]
    lines = ["| sequence · agent | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g in groups:
        lines.append(f"| {_group_name(g, groups)} | {len(g.runs)} | " + " | ".join(_ci(g.stats.get(c)) for c in cols)
                     + " |")
    for table in tables:
        rows = table.group_rows(groups)
        if rows:
            lines += _md_table(table.title, "seeds", table.columns, rows)
    text = "\n".join(lines) + "\n\nMean [90% bootstrap CI] over seeds.\n"
    if rl is not None:
        cols, rows = rliable_rows(rl)
        if rows:
            text += "\n".join(_md_table(RLIABLE_TITLE, "runs", cols, rows)) + "\n"
        if rl.improvement:
            text += (f"\n{IMPROVEMENT_TITLE}:\n\n| X | Y | P(X > Y) |\n|---|---|---|\n"
                     + "".join(f"| {p['x']} | {p['y']} | {_ci(p['probability'])} |\n" for p in rl.improvement))
        text += "".join(f"\n- {n}" for n in _rliable_notes(rl)) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if unfinished:
        text += "\nCells not finished (not in the table above):\n\n" + "\n".join(
            f"- {line}" for line in _not_finished_lines(unfinished)) + "\n"
    return text + "\n" + "\n".join(f"{i + 1}. {n}" for i, n in enumerate(FOOTNOTES)) + "\n"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per column of a (S, T) array, 90% bootstrap over rows (NaN-aware, columns apart)."""
    stats = np.array([metrics.bootstrap_ci(values[:, t], n_resamples=1000) for t in range(values.shape[1])])
    return stats[:, 0], stats[:, 1], stats[:, 2]


def _per_eval(run: Run, n: int) -> tuple[np.ndarray, np.ndarray]:
    h = metrics.EvalHistory.from_rows(run.rows, n)
    return h.steps, h.perf


def plots(groups: list[Group]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of every figure of the page."""
    import warnings

    with warnings.catch_warnings():  # all-NaN columns (a task never left: no min-ACC) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return _plots(groups)


def _plots(groups: list[Group]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crl.envs import make_sequence

    figs: list[tuple[str, str]] = []
    by_seq: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_seq[g.sequence].append(g)
    for seq, gs in by_seq.items():
        labels = make_sequence(seq).labels
        n = len(labels)
        # average score over steps, CI band over seeds, one line per agent
        fig, ax = plt.subplots(figsize=(9, 4))
        for g in gs:
            series = [_per_eval(r, n) for r in g.runs]
            length = min(len(s) for s, _ in series)
            steps = series[0][0][:length]
            avg = np.stack([np.nanmean(p[:length], axis=1) for _, p in series])
            mean, lo, hi = _band(avg)
            line, = ax.plot(steps, mean, lw=1.6, label=f"{_group_name(g, groups)} ({len(g.runs)} seeds)")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        spt = gs[0].runs[0].protocol["steps_per_task"]
        for i in range(1, n):
            ax.axvline(i * spt, color="0.6", lw=0.7, ls="--")
        ax.set(xlabel=gs[0].runs[0].summary.get("step_unit", "env step"), ylabel="average score over tasks",
               ylim=(-0.03, 1.03), title=f"{seq}: average score, mean and 90% CI over seeds")
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs.append((f"{seq}: average score over steps", _png(fig)))
        for g in gs:
            name = _group_name(g, groups)
            series = [_per_eval(r, n) for r in g.runs]
            length = min(len(s) for s, _ in series)
            steps = series[0][0][:length]
            perf = np.stack([p[:length] for _, p in series])  # (S, T, N)
            fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [2.2, 1.2, 1.3]})
            ax = axes[0]
            cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
            for j, label in enumerate(labels):
                mean, lo, hi = _band(perf[:, :, j])
                ax.plot(steps, mean, color=cmap(j % cmap.N), lw=1.3, label=label)
                ax.fill_between(steps, lo, hi, color=cmap(j % cmap.N), alpha=0.15, lw=0)
            spt = g.runs[0].protocol["steps_per_task"]
            for i in range(1, n):
                ax.axvline(i * spt, color="0.4", lw=0.8, ls="--")
            ax.set(xlabel=g.runs[0].summary.get("step_unit", "env step"), ylabel="score", ylim=(-0.03, 1.03),
                   title="per-task score (dashed: task switches)")
            ax.legend(fontsize=6, ncol=2 if n > 10 else 1)
            # retention heatmap, mean over seeds
            R = np.nanmean(np.stack([np.array([[np.nan if v is None else v for v in row]
                                               for row in r.summary["retention_matrix"]], dtype=float)
                                     for r in g.runs]), axis=0)
            ax = axes[1]
            im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(n), [f"after {lab}" for lab in labels], fontsize=7)
            if n <= 12:
                for i in range(n):
                    for j in range(n):
                        if np.isfinite(R[i, j]):
                            ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                    color="white" if R[i, j] < 0.6 else "black")
            ax.set_title("retention matrix (mean over seeds)")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            # stability gap: end-of-task score vs min-ACC (the lowest score after the task was left)
            ax = axes[2]
            end = np.diag(R)
            mins = np.nanmean(np.stack([np.array([np.nan if v is None else v
                                                  for v in r.summary["metrics"].get("min_acc_per_task", [None] * n)],
                                                 dtype=float) for r in g.runs]), axis=0)
            x = np.arange(n)
            ax.bar(x - 0.2, end, 0.4, label="end of its training (R[i,i])")
            ax.bar(x + 0.2, mins, 0.4, label="min-ACC after it")
            ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
            ax.set(ylim=(0, 1.05), title="stability gap: min-ACC")
            ax.legend(fontsize=6)
            fig.suptitle(f"{name} — {len(g.runs)} seeds", fontsize=10)
            fig.tight_layout()
            figs.append((f"{name}: curves, retention, stability gap", _png(fig)))
            pl = _plasticity(g)
            if pl is not None:
                figs.append((f"{name}: plasticity", pl))
    return figs


def _plasticity(g: Group) -> str | None:
    """Plasticity probes (plasticity/<network>/all/<metric> TensorBoard scalars), mean over seeds, when logged."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    curves: dict[str, list[list[tuple[int, float]]]] = defaultdict(list)
    for r in g.runs:
        acc = EventAccumulator(str(r.path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            parts = tag.split("/")
            if len(parts) == 4 and parts[0] == "plasticity" and parts[2] == "all":
                curves[tag].append([(e.step, e.value) for e in acc.Scalars(tag)])
    if not curves:
        return None
    import matplotlib.pyplot as plt

    metrics_ = sorted({t.split("/")[3] for t in curves})
    fig, axes = plt.subplots(1, len(metrics_), figsize=(4.5 * len(metrics_), 3.5), squeeze=False)
    for ax, m in zip(axes[0], metrics_):
        for tag in sorted(t for t in curves if t.endswith("/" + m)):
            runs = curves[tag]
            length = min(len(c) for c in runs)
            steps = [s for s, _ in runs[0][:length]]
            ax.plot(steps, np.mean([[v for _, v in c[:length]] for c in runs], axis=0), label=tag.split("/")[1])
        ax.set(title=m, xlabel="step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def html_page(groups: list[Group], notes: list[str], runs: list[Run], figs: list[tuple[str, str]],
              tables: list[GroupTable] = (), unfinished: list[dict[str, Any]] = (),
              rl: rliable_stats.RliableStats | None = None) -> str:
    esc = html.escape
    cols = sorted({k for g in groups for k, v in g.stats.items() if v})
    main_cols = [c for c in COLUMNS if c in cols] + [c for c in cols if c not in COLUMNS]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>crl report</title><style>",
             "body{font-family:sans-serif;margin:24px;max-width:1500px}table{border-collapse:collapse;font-size:12px;"
             "margin-bottom:18px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}.note{color:#a40}img{max-width:100%;border:1px solid #ddd}"
             ".foot{font-size:12px;color:#444}</style></head><body>",
             "<h1>crl report</h1>",
             f"<p>{len(runs)} runs, {len(groups)} groups (sequence · agent · protocol).</p>"]
    if notes:
        parts.append("<h2>Comparability</h2><ul>" + "".join(f"<li class='note'>{esc(n)}</li>" for n in notes) + "</ul>")
    if unfinished:
        parts.append("<h2>Cells not finished</h2><ul id='not-finished'>" + "".join(
            f"<li class='note'>{esc(line)}</li>" for line in _not_finished_lines(unfinished)) + "</ul>")
    parts.append("<h2>Mean [90% bootstrap CI] over seeds</h2><table id='aggregates'><tr><th>sequence · agent</th>"
                 "<th>seeds</th>" + "".join(f"<th>{esc(c)}</th>" for c in main_cols) + "</tr>")
    for g in groups:
        parts.append(f"<tr><td>{esc(_group_name(g, groups))}</td><td>{len(g.runs)}</td>"
                     + "".join(f"<td>{esc(_ci(g.stats.get(c)))}</td>" for c in main_cols) + "</tr>")
    parts.append("</table>")
    for table in tables:
        rows = table.group_rows(groups)
        if rows:
            parts.append(f"<h2>{esc(table.title)}</h2><p>Mean [90% bootstrap CI] over seeds.</p>"
                         + _html_table(table.key, "seeds", table.columns, rows))
    if rl is not None:
        cols, rows = rliable_rows(rl)
        if rows:
            parts.append(f"<h2>{esc(RLIABLE_TITLE)}</h2>" + _html_table("rliable", "runs", cols, rows))
        if rl.improvement:
            parts.append(f"<h2>{esc(IMPROVEMENT_TITLE)}</h2><table id='improvement'><tr><th>X</th><th>Y</th>"
                         "<th>P(X &gt; Y)</th></tr>" + "".join(
                             f"<tr><td>{esc(p['x'])}</td><td>{esc(p['y'])}</td><td>{esc(_ci(p['probability']))}</td></tr>"
                             for p in rl.improvement) + "</table>")
        parts.append("<ul class='foot'>" + "".join(f"<li>{esc(n)}</li>" for n in _rliable_notes(rl)) + "</ul>")
    refs = [g for g in groups if g.references]
    if refs:
        parts.append("<p class='foot'>Forward transfer references: " + "; ".join(
            f"{esc(g.label)}: {esc(', '.join(g.references))}" for g in refs) + "</p>")
    for title, png in figs:
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Runs</h2><table id='runs'><tr><th>run</th><th>sequence</th><th>agent</th><th>seed</th>"
                 "<th>finished</th>" + "".join(f"<th>{esc(c)}</th>" for c in COLUMNS) + "</tr>")
    for r in runs:
        s = r.summary
        m = s.get("metrics", {})
        parts.append(f"<tr><td>{esc(str(r.path))}</td><td>{esc(s['sequence'])}</td><td>{esc(s['agent'])}</td>"
                     f"<td>{s['seed']}</td><td>{'yes' if s.get('finished') else 'no'}</td>"
                     + "".join(f"<td>{esc(_fmt(m.get(c)).strip())}</td>" for c in COLUMNS) + "</tr>")
    parts.append("</table>")
    for r in runs:  # agents' own retention measurements (e.g. HyperCRL's dynamics errors), lower is better
        for name, E in r.summary.get("error_matrices", {}).items():
            m = r.summary["error_metrics"][name]
            parts.append(f"<h3>{esc(r.path.name)}: {esc(name)}</h3><p class='foot'>lower is better; row = after task i, "
                         f"column = task j; first task after the last / right after its training: "
                         f"{esc(_fmt(m['first_task_ratio']).strip())}, mean ratio {esc(_fmt(m['mean_ratio']).strip())}</p>"
                         "<table class='errors'>" + "".join(
                             f"<tr><th>after {i}</th>" + "".join(f"<td>{esc(_fmt(v).strip())}</td>" for v in row) + "</tr>"
                             for i, row in enumerate(E)) + "</table>")
    parts.append("<h2>Notes</h2><ol class='foot'>" + "".join(f"<li>{esc(n)}</li>" for n in FOOTNOTES)
                 + "</ol></body></html>")
    return "\n".join(parts)


def _default_out(paths: list[Path], run_dirs: list[Path]) -> Path:
    if len(paths) == 1 and not (Path(paths[0]) / "config.yaml").exists():
        return Path(paths[0])  # a sweep dir
    return Path(os.path.commonpath([str(p.resolve().parent) for p in run_dirs]))


def _md_table(title: str, count_head: str, columns: list[str], rows) -> list[str]:
    """Markdown lines of a per-group table: a blank line, its title, then (name, count, values) rows."""
    return (["", f"{title}:", "", f"| sequence · agent | {count_head} | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
            + [f"| {name} | {n} | " + " | ".join(values) + " |" for name, n, values in rows])


def _html_table(key: str, count_head: str, columns: list[str], rows) -> str:
    """The HTML twin of ``_md_table`` (without the title)."""
    esc = html.escape
    return (f"<table id='{key}'><tr><th>sequence · agent</th><th>{count_head}</th>"
            + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
            + "".join(f"<tr><td>{esc(name)}</td><td>{n}</td>" + "".join(f"<td>{esc(v)}</td>" for v in values)
                      + "</tr>" for name, n, values in rows) + "</table>")


def report(paths: list[Path], as_json: bool = False, out: Path | None = None, html: bool = True,
           bootstrap_reps: int = rliable_stats.DEFAULT_REPS) -> list[dict[str, Any]]:
    if bootstrap_reps < 1:
        raise UsageError(f"--bootstrap-reps must be at least 1, got {bootstrap_reps}")
    run_dirs = expand(paths)
    unfinished = cells_not_finished(paths)
    listed = {Path(u["run_dir"]).resolve() for u in unfinished}  # listed as not finished, with or without evaluations
    runs = [_load(d) for d in run_dirs if d.resolve() not in listed or _has_evals(d)]
    groups, notes = aggregate(runs)
    table = [{"run": str(r.path), "sequence": r.summary["sequence"], "agent": r.summary["agent"],
              "seed": r.summary["seed"], "finished": r.summary["finished"],
              **{c: r.summary["metrics"].get(c) for c in COLUMNS}}
             for r in runs if r.summary.get("kind") == "continual"]
    tables = [GroupTable.build("safety", SAFETY_TITLE, runs, groups, _safety_values),
              GroupTable.build("errors", ERRORS_TITLE, runs, groups, _error_values)]
    for row in table:
        for t in tables:
            row.update({f"{t.key}_{k}": v for k, v in t.values.get(row["run"], {}).items()})
    aggregates = [{"sequence": g.sequence, "agent": g.agent, "seeds": len(g.runs), "protocol": g.runs[0].protocol,
                   "runs": [str(r.path) for r in g.runs], "references": g.references, **g.stats,
                   **{f"{t.key}_{c}": v for t in tables for c, v in t.stats[i].items()}}
                  for i, g in enumerate(groups)]
    rl = rliable_stats.compute([rliable_stats.score_set(_group_name(g, groups), g.sequence, g.fingerprint,
                                                        [(str(r.path), r.summary) for r in g.runs]) for g in groups],
                               bootstrap_reps)
    written = []
    if html and groups:
        out = Path(out) if out is not None else _default_out(paths, run_dirs)
        out.mkdir(parents=True, exist_ok=True)
        from crl.fileio import atomic_write_text

        atomic_write_text(out / MD_FILE, markdown(groups, notes, tables, unfinished, rl))
        figs = plots(groups) + rliable_stats.plots(rl, _png)
        atomic_write_text(out / HTML_FILE, html_page(groups, notes, runs, figs, tables, unfinished, rl))
        written = [out / HTML_FILE, out / MD_FILE]
    if as_json:
        print(json.dumps({"runs": table, "aggregates": aggregates, "rliable": rl.as_json(), "notes": notes,
                          "not_finished": unfinished}, indent=2))
        return table
    header = f"{'run':<44} " + " ".join(f"{c[:7]:>7}" for c in COLUMNS)
    print(header)
    for row in table:
        print(f"{Path(row['run']).name[:44]:<44} " + " ".join(_fmt(row[c]) for c in COLUMNS))
    if groups:
        cols = [c for c in COLUMNS if any(g.stats.get(c) for g in groups)]
        width = max(len(_group_name(g, groups)) for g in groups) + 2
        print(f"\nmean [90% CI] over seeds\n{'sequence · agent':<{width}} {'seeds':>5}  "
              + "  ".join(f"{c:<24}" for c in cols))
        for g in groups:
            print(f"{_group_name(g, groups):<{width}} {len(g.runs):>5}  "
                  + "  ".join(f"{_ci(g.stats.get(c)):<24}" for c in cols))
    cols, rows = rliable_rows(rl)
    if rows:
        width = max(len(name) for name, _, _ in rows) + 2
        print(f"\n{RLIABLE_TITLE[0].lower() + RLIABLE_TITLE[1:]}\n{'sequence · agent':<{width}} {'runs':>5}  "
              + "  ".join(f"{c:<24}" for c in cols))
        for name, n, values in rows:
            print(f"{name:<{width}} {n:>5}  " + "  ".join(f"{v:<24}" for v in values))
    for p in rl.improvement:
        print(f"P({p['x']} > {p['y']}) = {_ci(p['probability'])}")
    for n in _rliable_notes(rl) if rl.groups else []:
        print(f"note: {n}")
    for r in runs:
        if r.summary.get("kind") == "continual":
            print_error_matrices(r.path, r.summary)
    for t in tables:
        if not t.values:
            continue
        widths = [max(12, len(c)) for c in t.columns]
        print(f"\n{t.title[0].lower() + t.title[1:]}\n{'run':<44} "
              + " ".join(f"{c:>{w}}" for c, w in zip(t.columns, widths)))
        for path, values in t.values.items():
            print(f"{Path(path).name[:44]:<44} " + " ".join(f"{_fmt(values.get(c)):>{w}}" for c, w in zip(t.columns, widths)))
        for g, stats in zip(groups, t.stats):
            if len(g.runs) > 1 and stats:
                print(f"{g.label}: mean [90% CI] over {len(g.runs)} seeds: "
                      + "; ".join(f"{c} {_ci(v)}" for c, v in stats.items()))
    for r in runs:
        if r.summary.get("kind") == "reference":
            print(f"{r.path.name}: single-task reference, AUC per task: "
                  + ", ".join(f"{k} {metrics.reference_auc(v):.2f}"
                              for k, v in r.summary["reference_curves"].items() if v))
    for n in notes:
        print(f"note: {n}")
    for line in _not_finished_lines(unfinished):
        print(f"not finished: {line}")
    if written:
        print("written: " + ", ".join(str(p) for p in written))
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
