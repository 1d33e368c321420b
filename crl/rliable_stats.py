"""The statistics of Agarwal et al. 2021 ("Deep RL at the edge of the statistical precipice") for ``crl report``,
computed by ``rliable`` (google-research/rliable), beside Continual World's mean and 90% CI over seeds:

- per (sequence, agent): IQM, mean, median and optimality gap of the final task scores, each with a 95%
  stratified-bootstrap CI (``rliable.library.get_interval_estimates``; runs resampled within each task);
  and the IQM [95% CI] over seeds of the run-level metrics in ``RUN_METRICS`` as (runs × 1) matrices;
- probability of improvement P(X > Y) between every two agents on the same sequence and protocol, with a
  95% CI from rliable's independent stratified bootstrap;
- performance profiles (score distributions: the fraction of runs × tasks whose score is above τ, τ on [0, 1])
  with 95% CIs (``rliable.library.create_performance_profile``), plotted with ``rliable.plot_utils``.

A run's final task scores are the last row of its retention matrix: every task's score at the last evaluation
while the last task trained (``metrics.retention_matrix``), so the "tasks" of rliable's (runs × tasks) matrix
are the sequence's tasks. Runs whose last row is incomplete (unfinished runs) are left out and listed.

Differs (from calling rliable with its defaults):

- P(X > Y) and the score distributions are computed by vectorised equivalents of rliable's
  ``metrics.probability_of_improvement`` and ``library.score_distributions``, passed to rliable's bootstraps:
  the same numbers (tests/test_report_rliable.py pins both, resample by resample), where rliable's own took 37 s
  and 4 s per group for 2000 resamples of 5 × 10 scores on a loaded two-core machine.
- ``reps`` is 2000, not 50000 (``crl report --bootstrap-reps``).
- Every estimate is reproducible: rliable's stratified bootstraps draw their indices from NumPy's global
  generator (``np.random.choice`` in ``StratifiedBootstrap.update_indices``) whatever ``random_state`` is given, so
  each estimate runs with the global generator seeded with ``SEED`` and restored afterwards; each group, pair and
  profile is seeded on its own, so its numbers do not depend on what else is in the report.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

SEED = 0
CONFIDENCE = 0.95
DEFAULT_REPS = 2000
TAU = np.linspace(0.0, 1.0, 101)
AGGREGATES = ("iqm", "mean", "median", "optimality_gap")
RUN_METRICS = ("average_performance", "forgetting")  # run-level metrics whose IQM over seeds is reported


@dataclass
class ScoreSet:
    """The final task scores of one (sequence, agent, protocol) group: ``scores`` is (runs × tasks)."""
    name: str
    sequence: str
    protocol: tuple
    scores: np.ndarray
    run_metrics: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (runs × 1)
    excluded: list[str] = field(default_factory=list)  # runs without a complete final row


@dataclass
class RliableStats:
    reps: int
    groups: list[dict[str, Any]] = field(default_factory=list)
    improvement: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"reps": self.reps, "confidence": CONFIDENCE, "seed": SEED, "groups": self.groups,
                "improvement": self.improvement, "profiles": self.profiles}


def final_task_scores(summary: dict[str, Any]) -> np.ndarray | None:
    """The last row of a run's retention matrix, or None when it has a task without a score."""
    matrix = summary.get("retention_matrix") or []
    if not matrix:
        return None
    row = np.array([np.nan if v is None else v for v in matrix[-1]], dtype=float)
    return row if np.all(np.isfinite(row)) else None


def score_set(name: str, sequence: str, protocol: tuple, runs: list[tuple[str, dict[str, Any]]]) -> ScoreSet:
    """A group's ScoreSet from its runs' (path, summary)."""
    rows, kept, excluded = [], [], []
    for path, summary in runs:
        row = final_task_scores(summary)
        if row is None:
            excluded.append(path)
        else:
            rows.append(row)
            kept.append(summary)
    scores = np.stack(rows) if rows else np.zeros((0, 0))
    run_metrics = {}
    for m in RUN_METRICS:
        values = [s.get("metrics", {}).get(m) for s in kept]
        if rows and all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
            run_metrics[m] = np.array(values, dtype=float)[:, None]
    return ScoreSet(name, sequence, protocol, scores, run_metrics, excluded)


@contextmanager
def _seeded_global_numpy() -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(SEED)
    try:
        with warnings.catch_warnings():  # arch warns when every resample is equal (e.g. one run)
            warnings.simplefilter("ignore")
            yield
    finally:
        np.random.set_state(state)


def _aggregates(scores: np.ndarray) -> np.ndarray:
    from rliable import metrics as rly

    return np.array([rly.aggregate_iqm(scores), rly.aggregate_mean(scores), rly.aggregate_median(scores),
                     rly.aggregate_optimality_gap(scores)])


def _interval(func, scores, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """(point, (2, k) CI) of func on one score matrix, or on a list of matrices (independent bootstrap)."""
    from rliable import library

    with _seeded_global_numpy():
        points, intervals = library.get_interval_estimates({"x": scores}, func, reps=reps,
                                                           confidence_interval_size=CONFIDENCE)
    return np.atleast_1d(points["x"]), np.asarray(intervals["x"]).reshape(2, -1)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable.metrics.probability_of_improvement, vectorised: per task the Mann-Whitney U of X over Y divided by
    runs_x × runs_y (pairs with X > Y, ties counting half), averaged over tasks. rliable's calls scipy's
    mannwhitneyu per task, which also computes an exact p-value: 37 s for 2000 resamples of two 5 × 10 matrices on
    a loaded two-core machine against 0.6 s here; tests/test_report_rliable.py pins the two equal."""
    diff = scores_x[:, None, :] - scores_y[None, :, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def score_distribution(scores: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """rliable.library.score_distributions (the fraction of runs × tasks with score > τ, per τ), vectorised:
    rliable's np.vectorize calls run_score_deviation once per τ and resample."""
    return np.mean(scores.reshape(-1, 1) > np.asarray(tau).reshape(1, -1), axis=0)


def _triple(point, low, high) -> list[float]:
    return [float(point), float(low), float(high)]


def compute(sets: list[ScoreSet], reps: int = DEFAULT_REPS) -> RliableStats:
    from rliable import library
    from rliable import metrics as rly

    out = RliableStats(reps)
    usable = [s for s in sets if len(s.scores)]
    for s in sets:
        entry: dict[str, Any] = {"name": s.name, "sequence": s.sequence, "runs": len(s.scores), "excluded": s.excluded}
        if len(s.scores):
            point, ci = _interval(_aggregates, s.scores, reps)
            entry.update({m: _triple(point[i], ci[0, i], ci[1, i]) for i, m in enumerate(AGGREGATES)})
            for m, values in s.run_metrics.items():
                point, ci = _interval(lambda x: np.array([rly.aggregate_iqm(x)]), values, reps)
                entry[f"{m}_iqm"] = _triple(point[0], ci[0, 0], ci[1, 0])
        out.groups.append(entry)
    for i, x in enumerate(usable):
        for y in usable[i + 1:]:
            if x.sequence != y.sequence or x.protocol != y.protocol:
                continue
            point, ci = _interval(lambda a, b: np.array([probability_of_improvement(a, b)]),
                                  [x.scores, y.scores], reps)
            out.improvement.append({"sequence": x.sequence, "x": x.name, "y": y.name,
                                    "probability": _triple(point[0], ci[0, 0], ci[1, 0])})
    for s in usable:
        with _seeded_global_numpy():
            profile, ci = library.create_performance_profile({"x": s.scores}, TAU, custom_profile_func=score_distribution,
                                                             reps=reps, confidence_interval_size=CONFIDENCE)
        low, high = np.asarray(ci["x"])
        out.profiles.append({"sequence": s.sequence, "name": s.name, "tau": TAU.round(4).tolist(),
                             "profile": np.asarray(profile["x"]).tolist(), "low": low.tolist(),
                             "high": high.tolist()})
    return out


def plots(stats: RliableStats, png) -> list[tuple[str, str]]:
    """(title, base64 PNG) per sequence: performance profiles, and P(X > Y) where there are pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    figs = []
    for seq in dict.fromkeys(p["sequence"] for p in stats.profiles):
        members = [p for p in stats.profiles if p["sequence"] == seq]
        fig, ax = plt.subplots(figsize=(8, 4.2))
        plot_utils.plot_performance_profiles(
            {p["name"]: np.array(p["profile"]) for p in members}, TAU,
            performance_profile_cis={p["name"]: (np.array(p["low"]), np.array(p["high"])) for p in members},
            ax=ax, xlabel=r"final task score ($\tau$)", ylabel=r"fraction of runs × tasks with score $> \tau$",
            labelsize="medium", ticklabelsize="medium")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title(f"{seq}: performance profiles (score distributions, {CONFIDENCE:.0%} stratified-bootstrap CI)",
                     fontsize=9)
        fig.tight_layout()
        figs.append((f"{seq}: performance profiles", png(fig)))
        pairs = [p for p in stats.improvement if p["sequence"] == seq]
        if pairs:
            key = {f"{p['x']};{p['y']}": p["probability"] for p in pairs}
            fig, ax = plt.subplots(figsize=(7, 0.9 + 0.45 * len(pairs)))
            plot_utils.plot_probability_of_improvement(
                {k: v[0] for k, v in key.items()}, {k: (v[1], v[2]) for k, v in key.items()}, pair_separator=";",
                ax=ax, xticks=[0, 0.25, 0.5, 0.75, 1], ticklabelsize="small", labelsize="small")
            ax.set_title(f"{seq}: probability of improvement P(X > Y), {CONFIDENCE:.0%} CI", fontsize=9)
            fig.tight_layout()
            figs.append((f"{seq}: probability of improvement", png(fig)))
    return figs
