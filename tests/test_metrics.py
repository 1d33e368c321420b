"""crl.metrics against the worked example of shared/reference/metrics.md (3 tasks, 4 evals per window)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from crl import metrics as M

# Rows: t0, then the A-, B- and C-windows (4 evaluations each). Columns: tasks A, B, C.
SERIES = {
    0: [0.0, 0.2, 0.5, 0.8, 0.9, 0.4, 0.8, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6],
    1: [0.1, 0.1, 0.2, 0.2, 0.3, 0.5, 0.8, 0.9, 0.9, 0.4, 0.6, 0.7, 0.7],
    2: [0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.4, 0.8, 1.0, 1.0],
}
ACTIVE = [-1] + [0] * 4 + [1] * 4 + [2] * 4
REF_CURVES = {0: [0.2, 0.5, 0.8, 0.9], 1: [0.2, 0.4, 0.6, 0.8], 2: [0.3, 0.5, 0.7, 0.9]}
REF_AUC = {0: 0.6, 1: 0.5, 2: 0.6}

approx = lambda x: pytest.approx(x, abs=1e-3)  # noqa: E731


def worked_example() -> M.EvalHistory:
    perf = np.array([SERIES[t] for t in range(3)]).T
    return M.EvalHistory(steps=np.arange(13) * 100, active=np.array(ACTIVE), perf=perf)


def truncated(h: M.EvalHistory, n_evals: int) -> M.EvalHistory:
    return M.EvalHistory(h.steps[:n_evals], h.active[:n_evals], h.perf[:n_evals])


@pytest.fixture
def h() -> M.EvalHistory:
    return worked_example()


# ------------------------------------------------------------------------------ worked example


def test_retention_matrix_and_initial_row(h):
    np.testing.assert_allclose(
        M.retention_matrix(h), [[0.9, 0.3, 0.1], [1.0, 0.9, 0.2], [0.6, 0.7, 1.0]]
    )
    np.testing.assert_allclose(M.initial_performance(h), [0.0, 0.1, 0.0])


def test_continual_world(h):
    assert M.average_performance(h, last_k=1) == approx(0.767)
    f, f_task = M.forgetting(h, last_k=1)
    assert f == approx(0.167)
    np.testing.assert_allclose(f_task, [0.3, 0.2, 0.0], atol=1e-9)
    f2, f2_task = M.forgetting(h, last_k=2)
    assert f2 == approx(0.150)
    np.testing.assert_allclose(f2_task, [0.25, 0.2, 0.0], atol=1e-9)
    np.testing.assert_allclose(M.task_auc(h), [0.6, 0.775, 0.8])
    assert [M.reference_auc(REF_CURVES[i]) for i in range(3)] == [approx(v) for v in (0.6, 0.5, 0.6)]
    ft, ft_task = M.forward_transfer(h, REF_AUC)
    assert ft == approx(0.350)
    np.testing.assert_allclose(ft_task, [0.0, 0.55, 0.5], atol=1e-9)


def test_default_last_k_is_five(h):
    # last 5 evaluations: A = (1.0, .5, .6, .6, .6) -> .66, B = (.9, .4, .6, .7, .7) -> .66,
    # C = (.2, .4, .8, 1, 1) -> .68
    assert M.average_performance(h) == approx((0.66 + 0.66 + 0.68) / 3)


def test_gem_and_chaudhry(h):
    R, R0 = M.retention_matrix(h), M.initial_performance(h)
    assert M.gem_acc(R) == approx(0.767)
    assert M.gem_bwt(R) == approx(-0.25)
    assert M.gem_fwt(R, R0) == approx(0.20)
    assert M.chaudhry_forgetting(R) == approx(0.30)


def test_stability_gap(h):
    mins = M.min_acc(h)
    assert mins[:2].tolist() == [approx(0.4), approx(0.4)]
    assert np.isnan(mins[2])
    assert M.avg_min_acc(h) == approx(0.40)
    assert M.wc_acc(h) == approx(0.60)
    wf, wf_task = M.windowed_forgetting(h, 3)
    wp, wp_task = M.windowed_plasticity(h, 3)
    assert wf == approx(0.333)
    np.testing.assert_allclose(wf_task, [0.5, 0.5, 0.0], atol=1e-9)
    assert wp == approx(0.567)
    np.testing.assert_allclose(wp_task, [0.6, 0.5, 0.6], atol=1e-9)


def test_windowed_metrics_depend_on_window(h):
    # w = 2: only consecutive evaluations. A's largest drop .9 -> .4, largest rise .4 -> .8.
    assert M.windowed_forgetting(h, 2)[1][0] == approx(0.5)
    assert M.windowed_plasticity(h, 2)[1][0] == approx(0.4)
    # w = 1 has no pair at all; a huge window spans the whole series (A rises 0.0 -> 1.0).
    assert M.windowed_plasticity(h, 1)[0] == 0.0
    assert M.windowed_plasticity(h, 100)[1][0] == approx(1.0)


def test_l2_metrics(h):
    pm, pm_task = M.l2_performance_maintenance(h)
    assert pm == approx(-0.15)
    assert pm_task[:2].tolist() == [approx(-0.1), approx(-0.2)]
    assert M.l2_forward_transfer(h) == (approx(2.5), approx(0.611))
    assert M.l2_forward_transfer(h, reduce="median") == (approx(2.5), approx(0.5))
    assert M.l2_backward_transfer(h) == (approx(0.830), approx(-0.107))
    assert M.l2_backward_transfer(h, reduce="median") == (approx(0.778), approx(-0.125))


def test_relative_performance_and_sample_efficiency(h):
    rp, rp_task = M.relative_performance(h, REF_CURVES)
    assert rp == approx(1.294)
    np.testing.assert_allclose(rp_task, [1.0, 1.55, 3.2 / 2.4], atol=1e-9)
    se, se_task = M.sample_efficiency(h, REF_CURVES)
    assert se == approx(1.451)
    np.testing.assert_allclose(se_task, [1.0, 1.6875, 1.0 / 0.9 * 1.5], atol=1e-9)


def test_compute_all_worked_example(h):
    out = M.compute_all(
        h, last_k=1, windows=(3,), reference=REF_AUC, reference_curves=REF_CURVES
    )
    json.dumps(out, allow_nan=False)
    expected = {
        "average_performance": 0.767,
        "forgetting": 0.167,
        "forward_transfer": 0.350,
        "gem_acc": 0.767,
        "gem_bwt": -0.25,
        "gem_fwt": 0.20,
        "chaudhry_forgetting": 0.30,
        "avg_min_acc": 0.40,
        "wc_acc": 0.60,
        "wf_3": 0.333,
        "wp_3": 0.567,
        "l2_pm": -0.15,
        "l2_ft_ratio": 2.5,
        "l2_ft_contrast": 0.611,
        "l2_bt_ratio": 0.830,
        "l2_bt_contrast": -0.107,
        "rp": 1.294,
        "se": 1.451,
    }
    for key, value in expected.items():
        assert out[key] == approx(value), key
    assert out["forgetting_per_task"] == [approx(0.3), approx(0.2), approx(0.0)]
    assert out["forward_transfer_per_task"] == [approx(0.0), approx(0.55), approx(0.5)]
    assert out["min_acc_per_task"] == [approx(0.4), approx(0.4), None]


def test_compute_all_keys_and_omissions(h):
    out = M.compute_all(h)
    assert set(out) == {
        "average_performance", "forgetting", "forgetting_per_task", "gem_acc", "gem_bwt",
        "gem_fwt", "chaudhry_forgetting", "min_acc_per_task", "avg_min_acc", "wc_acc",
        "wf_10", "wf_100", "wp_10", "wp_100", "l2_pm", "l2_ft_ratio", "l2_ft_contrast",
        "l2_bt_ratio", "l2_bt_contrast",
    }
    with_ref = M.compute_all(h, reference=REF_AUC, reference_curves=REF_CURVES)
    assert set(with_ref) - set(out) == {"forward_transfer", "forward_transfer_per_task", "rp", "se"}
    assert with_ref["forward_transfer"] == approx(0.35)
    # Without the before-training row there is no GEM FWT (and no L2 transfer pair from LB_A).
    no_init = M.EvalHistory(h.steps[1:], h.active[1:], h.perf[1:])
    out2 = M.compute_all(no_init)
    assert "gem_fwt" not in out2
    assert out2["l2_ft_ratio"] == approx(2.0) and out2["l2_ft_contrast"] == approx(1 / 3)


# --------------------------------------------------------------------------------- from_rows


def test_from_rows_round_trip_shuffled(h):
    rows = [
        {"eval_id": e, "step": int(h.steps[e]), "active_task": int(h.active[e]),
         "task_index": t, "score": float(h.perf[e, t]), "extra": "ignored"}
        for e in range(h.num_evals) for t in range(3)
    ]
    random.Random(0).shuffle(rows)
    back = M.EvalHistory.from_rows(rows, num_tasks=3)
    np.testing.assert_array_equal(back.steps, h.steps)
    np.testing.assert_array_equal(back.active, h.active)
    np.testing.assert_array_equal(back.perf, h.perf)
    # A task missing from an evaluation is NaN there, and the metrics skip it.
    partial = M.EvalHistory.from_rows([r for r in rows if (r["eval_id"], r["task_index"]) != (12, 2)], 3)
    assert np.isnan(partial.perf[12, 2]) and partial.perf[11, 2] == 1.0
    assert M.retention_matrix(partial)[2, :2].tolist() == [0.6, 0.7]
    with pytest.raises(ValueError):
        M.EvalHistory.from_rows([{**rows[0], "task_index": 3}], num_tasks=3)


# ------------------------------------------------------------------------------- unfinished run


def test_unfinished_run_two_of_three_tasks(h):
    part = truncated(h, 9)  # t0 + windows of A and B; C never trained
    R = M.retention_matrix(part)
    assert np.isnan(R[2]).all()
    assert M.gem_acc(R) == approx(0.95)          # (1.0 + 0.9) / 2
    assert M.gem_bwt(R) == approx(0.1)           # 1.0 - 0.9
    # both pairs exist (zero-shot on C after B): (0.3 - 0.1) and (0.2 - 0.0)
    assert M.gem_fwt(R, M.initial_performance(part)) == approx(0.2)
    assert M.chaudhry_forgetting(R) == approx(-0.1)  # 0.9 - 1.0
    f, f_task = M.forgetting(part, last_k=1)
    assert f == approx(-0.05) and np.isnan(f_task[2])  # A: 0.9 - 1.0, B: 0.9 - 0.9
    assert M.average_performance(part, last_k=1) == approx((1.0 + 0.9 + 0.2) / 3)
    assert M.avg_min_acc(part) == approx(0.4)
    assert M.wc_acc(part) == approx(0.5 * 0.9 + 0.5 * 0.4)
    ft, ft_task = M.forward_transfer(part, REF_AUC)
    assert ft == approx((0.0 + 0.55) / 2) and np.isnan(ft_task[2])
    assert M.l2_performance_maintenance(part)[0] == approx(0.1)

    out = M.compute_all(part, last_k=1, reference=REF_AUC, reference_curves=REF_CURVES)
    json.dumps(out, allow_nan=False)
    for key in ("average_performance", "forgetting", "gem_acc", "gem_bwt", "gem_fwt",
                "chaudhry_forgetting", "avg_min_acc", "wc_acc", "wf_10", "wp_10", "l2_pm",
                "l2_ft_ratio", "l2_bt_ratio", "forward_transfer", "rp", "se"):
        assert out[key] is not None and np.isfinite(out[key]), key
    assert out["forgetting_per_task"][2] is None
    assert out["rp"] == approx((1.0 + 1.55) / 2)


def test_degenerate_runs_do_not_crash(h):
    only_a = truncated(h, 5)
    out = M.compute_all(only_a, reference=REF_AUC, reference_curves=REF_CURVES)
    assert out["gem_acc"] == approx(0.9)
    assert out["wc_acc"] == approx(0.9)  # k = 1: just the current task
    assert out["gem_bwt"] is None and out["chaudhry_forgetting"] is None
    assert out["avg_min_acc"] is None and out["l2_bt_ratio"] is None
    assert M.compute_all(truncated(h, 1)) == {}  # only the before-training row
    empty = M.EvalHistory(np.zeros(0), np.zeros(0), np.zeros((0, 3)))
    assert M.compute_all(empty) == {}
    assert np.isnan(M.average_performance(empty))
    assert M.initial_performance(empty) is None


# ---------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_constant():
    assert M.bootstrap_ci(np.full(7, 0.25)) == (0.25, 0.25, 0.25)


def test_bootstrap_ci_brackets_mean_and_is_deterministic():
    data = np.array([0.1, 0.4, 0.35, 0.8, 0.55, 0.6, 0.2, 0.9, 0.45, 0.3])
    mean, low, high = M.bootstrap_ci(data)
    assert mean == approx(data.mean())
    assert low < mean < high
    # 90% CI of a mean of 10 draws with sd ~0.25: roughly mean ± 1.645·0.25/√10 ≈ ± 0.13
    assert 0.05 < high - low < 0.4
    assert M.bootstrap_ci(data) == (mean, low, high)
    assert M.bootstrap_ci(data, confidence=0.5)[2] - M.bootstrap_ci(data, confidence=0.5)[1] < high - low


def test_bootstrap_ci_follows_cw_resampling_and_midpoint_quantiles():
    data = np.array([0.0, 0.3, 0.5, 0.9, 1.0])
    resamples = np.random.RandomState(3).choice(data, size=(10, data.size), replace=True)
    means = np.sort(resamples.mean(axis=1))
    # 10 sorted means: the 5% / 95% quantiles sit at positions 0.45 and 8.55; midpoint
    # interpolation takes the middle of the two neighbours (linear would not).
    expected = (0.54, (means[0] + means[1]) / 2, (means[8] + means[9]) / 2)
    assert means[1] - means[0] > 0.01 and means[9] - means[8] > 0.01
    assert M.bootstrap_ci(data, n_resamples=10, seed=3) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------- fixes against the reference codes


def test_final_window_leaves_out_the_before_training_evaluation():
    # init row (0.0, 0.9) then only two evaluations of training; last_k = 5 must not reach back to the init row
    h = M.EvalHistory(steps=[0, 10, 20], active=[-1, 0, 1], perf=[[0.0, 0.9], [0.6, 0.1], [0.4, 0.3]])
    np.testing.assert_allclose(M.final_performance(h, last_k=5), [0.5, 0.2])  # (0.6+0.4)/2, (0.1+0.3)/2
    assert M.average_performance(h, last_k=5) == approx(0.35)  # with the init row it would be 0.3667
    # forgetting uses the same final value: A: 0.6 - 0.5, B: 0.3 - 0.2
    assert M.forgetting(h, last_k=5)[0] == approx(0.1)
    only_init = M.EvalHistory(steps=[0], active=[-1], perf=[[0.3, 0.3]])
    assert np.isnan(M.final_performance(only_init)).all()


def test_windowed_metrics_start_when_the_task_starts_training():
    # Task B scores 0.9 zero-shot during A's window, then drops to 0.2 before it is ever trained: that drop
    # is not B's forgetting. B's series starts at the end of A's window (step 20, when B's training starts).
    h = M.EvalHistory(
        steps=[0, 10, 20, 30, 40], active=[-1, 0, 0, 1, 1],
        perf=[[0.0, 0.0], [0.5, 0.9], [0.9, 0.2], [0.4, 0.6], [0.3, 0.7]])
    assert [M.training_start(h, i) for i in (0, 1)] == [0, 2]
    wf, wf_task = M.windowed_forgetting(h, 3)
    wp, wp_task = M.windowed_plasticity(h, 3)
    # A: 0.0 0.5 0.9 0.4 0.3 -> largest drop within 2 steps 0.9 -> 0.3 = 0.6; largest rise 0.0 -> 0.9
    # B: 0.2 0.6 0.7 -> no drop; largest rise 0.2 -> 0.7 = 0.5
    np.testing.assert_allclose(wf_task, [0.6, 0.0], atol=1e-12)
    np.testing.assert_allclose(wp_task, [0.9, 0.5], atol=1e-12)
    assert wf == approx(0.3) and wp == approx(0.7)  # from the run's first evaluation: 0.65 and 0.9


def test_forward_transfer_ci_resamples_the_reference_runs_too():
    # Two continual seeds with the same AUC 0.5; two reference seeds with AUC 0.0 and 0.5 (one task).
    # Point estimate (CW: average AUCs over seeds, then normalise): ref = 0.25 -> FT = 0.25 / 0.75 = 1/3.
    # A resample of the references has mean 0, 0.25 or 0.5 with probability 1/4, 1/2, 1/4, so
    # FT is 0.5, 1/3 or 0 and the 5% / 95% quantiles are 0 and 0.5. Fixed references would give [1/3, 1/3].
    ft, low, high = M.forward_transfer_ci(np.array([[0.5], [0.5]]), np.array([[0.0], [0.5]]))
    assert (ft, low, high) == (approx(1 / 3), approx(0.0), approx(0.5))
    # several tasks, NaN where a reference run lacks a task; AUC^ref >= 1 leaves the task out
    cl = np.array([[0.6, 0.775, 0.8, 0.9]])
    ref = np.array([[0.6, 0.5, np.nan, 1.0], [0.6, 0.5, 0.6, 1.0]])
    # the worked example: FT = (0 + 0.55 + 0.5) / 3 = 0.35 (D left out). A resample that draws only the first
    # reference run (probability 1/4) has no C: (0 + 0.55) / 2 = 0.275, so the 5% quantile is 0.275
    ft, low, high = M.forward_transfer_ci(cl, ref)
    assert (ft, low, high) == (approx(0.350), approx(0.275), approx(0.350))
