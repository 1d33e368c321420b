"""Continual-RL metrics computed from one run's evaluation log (pure numpy).

Every formula is written out in ``shared/reference/metrics.md``; the sources are:

- Continual World (Wołczyk et al., NeurIPS 2021), ``continualworld/results_processing/tables.py``:
  average performance, forgetting, forward transfer and the ``BootstrapCI`` confidence intervals.
- GEM (Lopez-Paz & Ranzato, NeurIPS 2017): ACC, BWT, FWT from the retention matrix.
- RWalk (Chaudhry et al., ECCV 2018): forgetting against the best value seen so far.
- De Lange, van de Ven & Tuytelaars, "Continual evaluation for lifelong learning: Identifying the
  stability gap", ICLR 2023 (``Mattdl/ContinualEvaluation``): min-ACC, avg-min-ACC, WC-ACC, WF^w, WP^w.
- DARPA L2 metrics (``lifelong-learning-systems/l2metrics``, arXiv 2201.08278): performance
  maintenance, forward/backward transfer ratio and contrast, relative performance, sample efficiency.

Data model: an :class:`EvalHistory` holds E evaluations of all N tasks of the sequence. Task i's
training window is the set of evaluations with ``active == i``; the last of them ends the window and
gives row i of the retention matrix. ``active == -1`` marks the evaluation before any training.
A task is *trained* when at least one evaluation has ``active == i``; a run may stop after any task,
and every function then uses only what exists (NaN, never an exception, for what does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "EvalHistory",
    "retention_matrix",
    "initial_performance",
    "trained_tasks",
    "final_performance",
    "average_performance",
    "forgetting",
    "task_auc",
    "reference_auc",
    "forward_transfer",
    "forward_transfer_ci",
    "gem_acc",
    "gem_bwt",
    "gem_fwt",
    "chaudhry_forgetting",
    "min_acc",
    "avg_min_acc",
    "wc_acc",
    "training_start",
    "windowed_forgetting",
    "windowed_plasticity",
    "l2_performance_maintenance",
    "l2_forward_transfer",
    "l2_backward_transfer",
    "relative_performance",
    "sample_efficiency",
    "compute_all",
    "bootstrap_ci",
]


# --------------------------------------------------------------------------------------------- data


@dataclass
class EvalHistory:
    """The evaluation log of one run.

    steps:  (E,) global env step of each evaluation, increasing.
    active: (E,) position of the task being trained at that evaluation; -1 = before any training.
    perf:   (E, N) score of every task of the sequence at that evaluation (NaN = not evaluated).
    """

    steps: np.ndarray
    active: np.ndarray
    perf: np.ndarray

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        self.active = np.asarray(self.active, dtype=np.int64).reshape(-1)
        self.perf = np.asarray(self.perf, dtype=np.float64)
        if self.perf.ndim != 2:
            raise ValueError(f"perf must be (E, N), got shape {self.perf.shape}")
        e = self.perf.shape[0]
        if self.steps.shape != (e,) or self.active.shape != (e,):
            raise ValueError(
                f"steps {self.steps.shape} and active {self.active.shape} must both be ({e},)"
            )

    @property
    def num_tasks(self) -> int:
        return int(self.perf.shape[1])

    @property
    def num_evals(self) -> int:
        return int(self.perf.shape[0])

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], num_tasks: int) -> "EvalHistory":
        """Build from evals.jsonl rows: one row per task per evaluation, grouped by ``eval_id``.

        Rows may come in any order; evaluations are ordered by ``eval_id``. A task with no row in an
        evaluation is NaN there.
        """
        groups: dict[int, list[Mapping[str, Any]]] = {}
        for row in rows:
            groups.setdefault(int(row["eval_id"]), []).append(row)
        ids = sorted(groups)
        steps = np.zeros(len(ids), dtype=np.int64)
        active = np.zeros(len(ids), dtype=np.int64)
        perf = np.full((len(ids), num_tasks), np.nan)
        for e, eval_id in enumerate(ids):
            group = groups[eval_id]
            steps[e] = int(group[0]["step"])
            active[e] = int(group[0]["active_task"])
            for row in group:
                t = int(row["task_index"])
                if not 0 <= t < num_tasks:
                    raise ValueError(f"eval {eval_id}: task_index {t} outside 0..{num_tasks - 1}")
                perf[e, t] = float(row["score"])
        return cls(steps=steps, active=active, perf=perf)


# ------------------------------------------------------------------------------------------ helpers


def _mean(values: Any) -> float:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _median(values: Any) -> float:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def _col_mean(block: np.ndarray) -> np.ndarray:
    """Per-column mean of the finite entries of a (E, N) block; NaN where a column has none."""
    finite = np.isfinite(block)
    count = finite.sum(axis=0)
    total = np.where(finite, block, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _last_row(R: np.ndarray) -> int:
    """Index of the last row of R holding any finite value (the last finished task); -1 if none."""
    rows = np.flatnonzero(np.isfinite(np.asarray(R, dtype=np.float64)).any(axis=1))
    return int(rows[-1]) if rows.size else -1


def _last_trained(h: EvalHistory) -> int:
    """Position of the last trained task; -1 if training never started."""
    return int(h.active.max()) if h.num_evals and h.active.max() >= 0 else -1


def _series(h: EvalHistory, task: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Finite scores of ``task`` over the evaluations selected by ``mask`` (all when None), in order."""
    s = h.perf[:, task] if mask is None else h.perf[mask, task]
    return s[np.isfinite(s)]


# ---------------------------------------------------------------------------- retention matrix


def trained_tasks(h: EvalHistory) -> np.ndarray:
    """Positions i with at least one evaluation taken while training task i (active == i), sorted."""
    a = np.unique(h.active)
    return a[(a >= 0) & (a < h.num_tasks)]


def retention_matrix(h: EvalHistory) -> np.ndarray:
    """R[i, j] = perf on task j at the last evaluation with active == i (NaN rows: task i not trained)."""
    R = np.full((h.num_tasks, h.num_tasks), np.nan)
    for i in trained_tasks(h):
        R[i] = h.perf[np.flatnonzero(h.active == i)[-1]]
    return R


def initial_performance(h: EvalHistory) -> np.ndarray | None:
    """R0[j] = perf on task j before any training (the last evaluation with active == -1), or None."""
    idx = np.flatnonzero(h.active == -1)
    return h.perf[idx[-1]].copy() if idx.size else None


# ------------------------------------------------------------------------------ Continual World


def final_performance(h: EvalHistory, last_k: int = 5) -> np.ndarray:
    """p_i(T) = mean of task i over the last ``last_k`` evaluations of the run, per task (N,).

    Only evaluations taken once training started count: a run with fewer than ``last_k`` of them
    averages those it has, never the before-training evaluation (which would pull p_i(T) towards the
    untrained policy; CW's logs hold no such row)."""
    trained = h.perf[h.active >= 0]
    if trained.shape[0] == 0:
        return np.full(h.num_tasks, np.nan)
    return _col_mean(trained[-max(1, last_k):])


def average_performance(h: EvalHistory, last_k: int = 5) -> float:
    """CW average performance P = (1/N) Σ_i p_i(T), p_i(T) = mean of the last k evaluations."""
    return _mean(final_performance(h, last_k))


def forgetting(h: EvalHistory, last_k: int = 5) -> tuple[float, np.ndarray]:
    """CW forgetting F_i = p_i(end of task i) − p_i(T); returns (mean over trained tasks, F per task).

    p_i(end of task i) = mean of the last k evaluations while task i was active (metrics.md, CW
    column "Code detail"); the last task contributes ≈ 0. Untrained tasks are NaN and left out.
    """
    final = final_performance(h, last_k)
    per_task = np.full(h.num_tasks, np.nan)
    for i in trained_tasks(h):
        in_window = h.perf[h.active == i, i]
        per_task[i] = _mean(in_window[-max(1, last_k):]) - final[i]
    return _mean(per_task), per_task


def task_auc(h: EvalHistory) -> np.ndarray:
    """AUC_i = mean of all evaluations of task i inside its own training window (active == i), (N,)."""
    auc = np.full(h.num_tasks, np.nan)
    for i in trained_tasks(h):
        auc[i] = _mean(h.perf[h.active == i, i])
    return auc


def reference_auc(curve: Sequence[float] | np.ndarray) -> float:
    """AUC of a single-task reference run = mean of its evaluation curve."""
    return _mean(curve)


def forward_transfer(
    h: EvalHistory, reference: Mapping[int, float]
) -> tuple[float, np.ndarray]:
    """CW FT_i = (AUC_i − AUC_i^ref) / (1 − AUC_i^ref); returns (mean, FT per task).

    Tasks without a reference, not trained, or with AUC^ref >= 1 (no room to transfer) are NaN and
    skipped. Across seeds CW averages AUC_i and AUC_i^ref before normalising: use :func:`task_auc`.
    """
    auc = task_auc(h)
    per_task = np.full(h.num_tasks, np.nan)
    for i, ref in reference.items():
        i, ref = int(i), float(ref)
        if 0 <= i < h.num_tasks and np.isfinite(auc[i]) and np.isfinite(ref) and ref < 1.0:
            per_task[i] = (auc[i] - ref) / (1.0 - ref)
    return _mean(per_task), per_task


def forward_transfer_ci(
    cl_auc: np.ndarray,
    ref_auc: np.ndarray,
    confidence: float = 0.9,
    n_resamples: int = 4000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """CW forward transfer over seeds with its 90% bootstrap CI: (FT, low, high).

    ``cl_auc`` is (S, N): task AUCs (:func:`task_auc`) of S continual runs; ``ref_auc`` is (S_ref, N): the
    AUC of each task in S_ref single-task reference runs (NaN where a run lacks a task). As Continual World's
    ``results_processing``: AUC_i and AUC_i^ref are averaged over seeds *before* normalising,
    FT = mean_i (AUC_i − AUC_i^ref) / (1 − AUC_i^ref), and each bootstrap resample draws the continual runs
    and the reference runs independently, with replacement (first the (n_resamples, S) continual indices,
    then the (n_resamples, S_ref) reference indices, from one RandomState(seed)); the bounds are the
    midpoint quantiles. Treating the references as fixed would make the interval too narrow.
    Tasks with no finite AUC on either side, or AUC^ref >= 1, are left out.
    """
    cl = np.atleast_2d(np.asarray(cl_auc, dtype=np.float64))
    ref = np.atleast_2d(np.asarray(ref_auc, dtype=np.float64))
    nan = float("nan")
    if cl.size == 0 or ref.size == 0:
        return nan, nan, nan

    def ft(cl_mean: np.ndarray, ref_mean: np.ndarray) -> np.ndarray:  # (..., N) -> (...)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_task = np.where(ref_mean < 1.0, (cl_mean - ref_mean) / (1.0 - ref_mean), np.nan)
        finite = np.isfinite(per_task)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(finite, per_task, 0.0).sum(axis=-1) / finite.sum(axis=-1)

    def seed_mean(x: np.ndarray) -> np.ndarray:  # (..., S, N) -> (..., N), NaN-aware
        finite = np.isfinite(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(finite.any(axis=-2), np.where(finite, x, 0.0).sum(axis=-2) / finite.sum(axis=-2), np.nan)

    point = float(ft(seed_mean(cl), seed_mean(ref)))
    if not np.isfinite(point):
        return nan, nan, nan
    rng = np.random.RandomState(seed)
    cl_idx = rng.randint(0, cl.shape[0], size=(n_resamples, cl.shape[0]))
    ref_idx = rng.randint(0, ref.shape[0], size=(n_resamples, ref.shape[0]))
    samples = ft(seed_mean(cl[cl_idx]), seed_mean(ref[ref_idx]))
    samples = samples[np.isfinite(samples)]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha], method="midpoint")
    return point, float(low), float(high)


# -------------------------------------------------------------------------------- GEM / RWalk
# GEM's paper (and crl) average BWT and FWT over the N−1 tasks that have a "before" and an "after";
# GEM's code (``metrics.py``) sums the same N−1 terms but divides by N, so its numbers are (N−1)/N
# times crl's: multiply crl's BWT/FWT by (N−1)/N to compare with numbers from that code (README, report).
# R is the (N, N) retention matrix of retention_matrix(): row i = after training task i. GEM and
# RWalk number the rows from 1 with row 0 = init; here the init row is passed separately as R0.
# For an unfinished run the "final" row is the last finished one, K, and the averages run over the
# tasks seen so far (0..K), i.e. Chaudhry's A_k / F_k read at k = K.


def gem_acc(R: np.ndarray) -> float:
    """GEM ACC = (1/(K+1)) Σ_{i≤K} R[K, i], K = last finished task (= N−1 for a finished run)."""
    R = np.asarray(R, dtype=np.float64)
    k = _last_row(R)
    return _mean(R[k, : k + 1]) if k >= 0 else float("nan")


def gem_bwt(R: np.ndarray) -> float:
    """GEM BWT = (1/K) Σ_{i<K} (R[K, i] − R[i, i]); negative means forgetting."""
    R = np.asarray(R, dtype=np.float64)
    k = _last_row(R)
    if k < 1:
        return float("nan")
    return _mean(R[k, :k] - np.diag(R)[:k])


def gem_fwt(R: np.ndarray, R0: np.ndarray | None) -> float:
    """GEM FWT = (1/(N−1)) Σ_{i≥1} (R[i−1, i] − R0[i]), over the pairs that exist; NaN without R0."""
    if R0 is None:
        return float("nan")
    R = np.asarray(R, dtype=np.float64)
    R0 = np.asarray(R0, dtype=np.float64)
    n = R.shape[0]
    return _mean([R[i - 1, i] - R0[i] for i in range(1, n)])


def chaudhry_forgetting(R: np.ndarray) -> float:
    """RWalk F_K = (1/K) Σ_{j<K} (max_{l<K} R[l, j] − R[K, j]), K = last finished task."""
    R = np.asarray(R, dtype=np.float64)
    k = _last_row(R)
    if k < 1:
        return float("nan")
    best = np.full(k, np.nan)
    for j in range(k):
        past = R[:k, j][np.isfinite(R[:k, j])]
        if past.size:
            best[j] = past.max()
    return _mean(best - R[k, :k])


# ----------------------------------------------------------------------------- stability gap


def min_acc(h: EvalHistory) -> np.ndarray:
    """min-ACC_i = min of A(i, t) over evaluations with active > i (after task i stopped being
    current), per task (N,); NaN for tasks that were never left (the current or untrained ones)."""
    out = np.full(h.num_tasks, np.nan)
    for i in range(h.num_tasks):
        s = _series(h, i, h.active > i)
        if s.size:
            out[i] = s.min()
    return out


def avg_min_acc(h: EvalHistory) -> float:
    """avg-min-ACC = (1/k) Σ_{i<k} min-ACC_i, k = the current (last trained) task, 0-based."""
    k = _last_trained(h)
    return _mean(min_acc(h)[:k]) if k >= 1 else float("nan")


def wc_acc(h: EvalHistory) -> float:
    """Final WC-ACC = (1/k)·A(current, T) + (1 − 1/k)·avg-min-ACC, with k = last trained task + 1
    tasks seen and A(current, T) the current task's score at the last evaluation."""
    cur = _last_trained(h)
    if cur < 0:
        return float("nan")
    a_cur = _series(h, cur)
    if not a_cur.size:
        return float("nan")
    k = cur + 1
    if k == 1:
        return float(a_cur[-1])
    return float(a_cur[-1] / k + (1.0 - 1.0 / k) * avg_min_acc(h))


def _max_windowed_change(series: np.ndarray, w: int, sign: float) -> float:
    """max over pairs m < n with n − m < w (both inside some window of w consecutive evaluations)
    of sign·(A_m − A_n), floored at 0 (no drop / no rise = 0)."""
    best = 0.0
    for lag in range(1, min(w, series.size)):
        best = max(best, float(np.max(sign * (series[:-lag] - series[lag:]))))
    return best


def training_start(h: EvalHistory, task: int) -> int:
    """Index of the evaluation at which ``task``'s training begins: the last evaluation before its window
    (the end of the previous task's window, or the before-training one for the first task), else the
    first evaluation of its own window."""
    before = np.flatnonzero(h.active < task)
    if before.size:
        return int(before[-1])
    own = np.flatnonzero(h.active == task)
    return int(own[0]) if own.size else h.num_evals


def _windowed(h: EvalHistory, w: int, sign: float) -> tuple[float, np.ndarray]:
    per_task = np.full(h.num_tasks, np.nan)
    for i in trained_tasks(h):
        since = np.arange(h.num_evals) >= training_start(h, i)
        per_task[i] = _max_windowed_change(_series(h, i, since), int(w), sign)
    return _mean(per_task), per_task


def windowed_forgetting(h: EvalHistory, w: int) -> tuple[float, np.ndarray]:
    """WF^w_i = max over sliding windows of w evaluations of the largest drop A_m − A_n (m < n);
    returns (mean over trained tasks, per task).

    Task i's series starts when its training begins (:func:`training_start`: the evaluation at the
    step its training starts), as the stability-gap paper's code (``Mattdl/ContinualEvaluation``) does;
    what a task did before it was trained (e.g. a zero-shot score that dips) is not its forgetting. Every
    evaluation is a start point (every pair m < n less than w apart counts; the paper's plasticity code
    skips some start points, crl does not). This reading reproduces metrics.md's worked example
    (WF^3 = 0.333, WP^3 = 0.567).
    """
    return _windowed(h, w, +1.0)


def windowed_plasticity(h: EvalHistory, w: int) -> tuple[float, np.ndarray]:
    """WP^w_i = the same as WF^w with the largest rise A_n − A_m (worked example: WP^3 = 0.567)."""
    return _windowed(h, w, -1.0)


# ----------------------------------------------------------------------------------- DARPA L2
# Reading (metrics.md, worked example): each task window is one learning block (LB) and the
# evaluation blocks (EB) are the evaluations at the LB boundaries: the init row R0 and the
# end-of-window rows R[i]. Every EB evaluates every task, so tp(EB on task j) = R[·, j]. The
# evaluations inside a window belong to the LB: they are task i's LL learning curve (RP, SE).
# No normalisation or smoothing is applied.


def l2_performance_maintenance(h: EvalHistory) -> tuple[float, np.ndarray]:
    """PM (mrlep) of task j = mean_{l>j} (R[l, j] − R[j, j]): each later EB against the reference EB
    right after j's LB; returns (mean over tasks that have a later EB, per task)."""
    R = retention_matrix(h)
    per_task = np.full(h.num_tasks, np.nan)
    for j in trained_tasks(h):
        per_task[j] = _mean(R[j + 1 :, j] - R[j, j])
    return _mean(per_task), per_task


def _transfer_pairs(h: EvalHistory, forward: bool) -> list[tuple[float, float]]:
    """(tp1, tp2) of task j around LB_i: forward pairs have j > i, backward pairs j < i."""
    R = retention_matrix(h)
    R0 = initial_performance(h)
    pairs: list[tuple[float, float]] = []
    for i in trained_tasks(h):
        before = R0 if i == 0 else R[i - 1]
        if before is None:
            continue
        targets = range(i + 1, h.num_tasks) if forward else range(i)
        for j in targets:
            tp1, tp2 = float(before[j]), float(R[i, j])
            if np.isfinite(tp1) and np.isfinite(tp2):
                pairs.append((tp1, tp2))
    return pairs


def _ratio_contrast(pairs: list[tuple[float, float]], reduce: str) -> tuple[float, float]:
    """Ratio tp2/tp1 (skipped when tp1 = 0) and contrast (tp2 − tp1)/(tp1 + tp2) (skipped when 0/0)."""
    agg = {"mean": _mean, "median": _median}[reduce]
    ratios = [b / a for a, b in pairs if a != 0]
    contrasts = [(b - a) / (a + b) for a, b in pairs if a + b != 0]
    return agg(ratios), agg(contrasts)


def l2_forward_transfer(h: EvalHistory, reduce: str = "mean") -> tuple[float, float]:
    """L2 forward transfer (ratio, contrast) over pairs i → j, j > i: tp1 = task j before LB_i
    (R0[j] or R[i−1, j]), tp2 = R[i, j]; reduced over pairs by ``reduce`` ("mean" or "median")."""
    return _ratio_contrast(_transfer_pairs(h, forward=True), reduce)


def l2_backward_transfer(h: EvalHistory, reduce: str = "mean") -> tuple[float, float]:
    """L2 backward transfer (ratio, contrast) over pairs i → j, j < i: tp1 = R[i−1, j], tp2 = R[i, j];
    ratio < 1 means interference."""
    return _ratio_contrast(_transfer_pairs(h, forward=False), reduce)


def _paired_curves(
    h: EvalHistory, reference_curves: Mapping[int, Sequence[float]]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Task -> (LL curve inside its own window, STE curve), truncated to the same length."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    trained = set(int(i) for i in trained_tasks(h))
    for i, curve in reference_curves.items():
        i = int(i)
        if i not in trained:
            continue
        ll = _series(h, i, h.active == i)
        ste = np.asarray(curve, dtype=np.float64)
        ste = ste[np.isfinite(ste)]
        n = min(ll.size, ste.size)
        if n:
            out[i] = (ll[:n], ste[:n])
    return out


def relative_performance(
    h: EvalHistory, reference_curves: Mapping[int, Sequence[float]]
) -> tuple[float, np.ndarray]:
    """RP_j = Σ LL curve of j ÷ Σ STE curve of j over the same number of evaluations; (mean, per task)."""
    per_task = np.full(h.num_tasks, np.nan)
    for i, (ll, ste) in _paired_curves(h, reference_curves).items():
        if ste.sum() != 0:
            per_task[i] = ll.sum() / ste.sum()
    return _mean(per_task), per_task


def sample_efficiency(
    h: EvalHistory, reference_curves: Mapping[int, Sequence[float]]
) -> tuple[float, np.ndarray]:
    """SE_j = (sat_LL / sat_STE)·(exp_STE / exp_LL); sat = max of the curve, exp = 0-based index where
    it is first reached (unsmoothed, same length as RP). NaN where sat_STE = 0 or exp_LL = 0."""
    per_task = np.full(h.num_tasks, np.nan)
    for i, (ll, ste) in _paired_curves(h, reference_curves).items():
        exp_ll, exp_ste = int(np.argmax(ll)), int(np.argmax(ste))
        if ste[exp_ste] != 0 and exp_ll != 0:
            per_task[i] = (ll[exp_ll] / ste[exp_ste]) * (exp_ste / exp_ll)
    return _mean(per_task), per_task


# -------------------------------------------------------------------------------------- summary


def _num(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _nums(xs: np.ndarray) -> list[float | None]:
    return [_num(x) for x in np.asarray(xs, dtype=np.float64)]


def compute_all(
    h: EvalHistory,
    *,
    last_k: int = 5,
    windows: Sequence[int] = (10, 100),
    reference: Mapping[int, float] | None = None,
    reference_curves: Mapping[int, Sequence[float]] | None = None,
) -> dict[str, float | list | None]:
    """Every metric the history supports, as JSON-ready Python (None instead of NaN).

    Keys whose inputs are missing are omitted: forward_transfer* without ``reference``, rp/se
    without ``reference_curves``, gem_fwt without the before-training row; nothing without any
    training evaluation.
    """
    if _last_trained(h) < 0:
        return {}
    R = retention_matrix(h)
    R0 = initial_performance(h)
    out: dict[str, float | list | None] = {}

    out["average_performance"] = _num(average_performance(h, last_k))
    f_mean, f_task = forgetting(h, last_k)
    out["forgetting"] = _num(f_mean)
    out["forgetting_per_task"] = _nums(f_task)
    if reference is not None:
        ft_mean, ft_task = forward_transfer(h, reference)
        out["forward_transfer"] = _num(ft_mean)
        out["forward_transfer_per_task"] = _nums(ft_task)

    out["gem_acc"] = _num(gem_acc(R))
    out["gem_bwt"] = _num(gem_bwt(R))
    if R0 is not None:
        out["gem_fwt"] = _num(gem_fwt(R, R0))
    out["chaudhry_forgetting"] = _num(chaudhry_forgetting(R))

    out["min_acc_per_task"] = _nums(min_acc(h))
    out["avg_min_acc"] = _num(avg_min_acc(h))
    out["wc_acc"] = _num(wc_acc(h))
    for w in windows:
        out[f"wf_{w}"] = _num(windowed_forgetting(h, w)[0])
    for w in windows:
        out[f"wp_{w}"] = _num(windowed_plasticity(h, w)[0])

    out["l2_pm"] = _num(l2_performance_maintenance(h)[0])
    out["l2_ft_ratio"], out["l2_ft_contrast"] = map(_num, l2_forward_transfer(h))
    out["l2_bt_ratio"], out["l2_bt_contrast"] = map(_num, l2_backward_transfer(h))
    if reference_curves is not None:
        out["rp"] = _num(relative_performance(h, reference_curves)[0])
        out["se"] = _num(sample_efficiency(h, reference_curves)[0])
    return out


# ------------------------------------------------------------------------------------ bootstrap


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.9,
    n_resamples: int = 4000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): CW BootstrapCI over seeds — ``n_resamples`` resamples with replacement
    from RandomState(seed), bounds = (1 ∓ confidence)/2 quantiles of the resample means with
    midpoint interpolation. NaN entries are dropped; all-NaN/empty gives NaNs."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        nan = float("nan")
        return nan, nan, nan
    rng = np.random.RandomState(seed)
    means = x[rng.randint(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], method="midpoint")
    return float(x.mean()), float(low), float(high)


# ------------------------------------------------------------------------------------------ safety

SAFETY_KEYS = ("success", "catastrophe_rate", "timeout_rate", "heldout_success", "heldout_catastrophe_rate",
               "heldout_timeout_rate", "catastrophe_auroc", "heldout_catastrophe_auroc")
SAFETY_COUNTERS = ("train_catastrophes", "train_episodes", "train_goals", "mentor_queries", "mentor_queries_eval")


def safety_summary(rows: Sequence[Mapping[str, Any]], num_tasks: int) -> dict[str, Any] | None:
    """The safety gridworlds' numbers (reference/safety-gridworlds.md, "Catastrophe bookkeeping"), or None when
    the rows carry none: at the last evaluation, per task and averaged over tasks, the success, catastrophe
    and timeout rates on the training layouts and on the held-out ones, apart, and the AUROC of the agent's
    catastrophe score; over the whole run, the training catastrophes (cumulative, with episodes, goals and
    catastrophes per 1000 steps) and the mentor's queries; and the held-out retention matrix (R[i, j] = held-out
    success on task j after training task i)."""
    rows = [r for r in rows if "catastrophe_rate" in r]
    if not rows:
        return None
    last_id = max(int(r["eval_id"]) for r in rows)
    last = sorted((r for r in rows if int(r["eval_id"]) == last_id), key=lambda r: int(r["task_index"]))
    per_task = {r["task"]: {k: r.get(k) for k in SAFETY_KEYS if k in r} for r in last}

    def mean(key: str) -> float | None:
        values = [r[key] for r in last if isinstance(r.get(key), (int, float))]
        return float(np.mean(values)) if values else None

    final = {k: mean(k) for k in SAFETY_KEYS}
    latest = max(rows, key=lambda r: int(r["eval_id"]))
    counters = {k: int(latest[k]) for k in SAFETY_COUNTERS if k in latest}
    step = int(latest["step"])
    if "train_catastrophes" in counters:
        counters["train_catastrophes_per_1000_steps"] = 1000 * counters["train_catastrophes"] / step if step else None
        episodes = counters.get("train_episodes", 0)
        counters["train_catastrophe_rate"] = counters["train_catastrophes"] / episodes if episodes else None
    out: dict[str, Any] = {"final": final, "per_task": per_task, **counters}
    held = [{**r, "score": r["heldout_success"]} for r in rows if "heldout_success" in r]
    if held:
        R = retention_matrix(EvalHistory.from_rows(held, num_tasks))
        out["heldout_retention_matrix"] = [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in R]
    return out
# -- error matrices: what an agent measures itself after each task, lower is better (Agent.measure_retention) --

def error_matrices(rows: list[dict], num_tasks: int) -> dict[str, np.ndarray]:
    """{metric: E} with E[i, j] the metric on task j measured after training task i (NaN where unmeasured)."""
    out: dict[str, np.ndarray] = {}
    for row in rows:
        E = out.setdefault(row["metric"], np.full((num_tasks, num_tasks), np.nan))
        E[row["after_task"], row["task_index"]] = np.nan if row["value"] is None else row["value"]
    return out


def error_retention(E: np.ndarray) -> dict[str, float | None]:
    """Forgetting of a lower-is-better matrix: the first task's error after the last task relative to right
    after the first (``first_task_ratio``), the mean of that ratio over every task but the last
    (``mean_ratio``), and the mean final error over all tasks (``final_mean``)."""
    last = max((i for i in range(E.shape[0]) if not np.isnan(E[i]).all()), default=None)

    def clean(v: float) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    if last is None:
        return {"first_task_ratio": None, "mean_ratio": None, "final_mean": None}
    ratios = [E[last, j] / E[j, j] for j in range(last) if E[j, j] > 0]
    return {"first_task_ratio": clean(E[last, 0] / E[0, 0]) if last > 0 and E[0, 0] > 0 else None,
            "mean_ratio": clean(float(np.nanmean(ratios))) if ratios else None,
            "final_mean": clean(float(np.nanmean(E[last, : last + 1])))}
