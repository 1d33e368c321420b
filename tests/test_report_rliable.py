"""crl report's rliable statistics (Agarwal et al. 2021) on a synthetic sweep whose answer is known: IQM equal to
the hand-computed interquartile mean, P(A > B) = 1 where A beats B on every task, performance profiles equal to
the fraction of runs × tasks above τ; and parity: crl's numbers are rliable's on the same matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rliable import library
from rliable import metrics as rly

from crl import rliable_stats
from crl.cli import main
from crl.config import build_config
from crl.loop import write_run_config
from crl.monitor import write_evals

LABELS = ["hammer-v3", "push-wall-v3"]


def fake_run(run_dir, agent: str, seed: int, final: list[float]):
    """A finished cw2 run whose last evaluation (during the last task) scores ``final`` on the two tasks."""
    cfg = build_config("cw2", agent, seed=seed, preset="smoke",
                       sets=["train.steps_per_task=100", "train.eval_every=50"])
    write_run_config(run_dir, cfg)
    rows = []
    for eval_id, (k, active) in enumerate([(0, -1), (1, 0), (2, 0), (3, 1), (4, 1)]):
        for task in range(2):
            s = final[task] if eval_id == 4 else 0.5 * final[task]
            rows.append({"eval_id": eval_id, "step": k * 50, "active_task": active, "task": LABELS[task],
                         "task_index": task, "score": s, "success": s, "return": s})
    write_evals(run_dir, rows)


# final task scores (runs × tasks); every A score is above every B score
A = np.array([[0.90, 0.60], [0.80, 0.70], [1.00, 0.65], [0.85, 0.75]])
B = np.array([[0.10, 0.40], [0.30, 0.20], [0.35, 0.00], [0.25, 0.15]])


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for seed in range(4):
        fake_run(root / f"cw2__sac__s{seed}", "sac", seed, list(A[seed]))
        fake_run(root / f"cw2__sac+l2__s{seed}", "sac+l2", seed, list(B[seed]))
    return root


def _report(root, capsys, reps=200):
    assert main(["report", str(root), "--json", "--bootstrap-reps", str(reps)]) == 0
    return json.loads(capsys.readouterr().out)["rliable"]


def test_report_gives_iqm_improvement_and_profiles_of_a_known_sweep(sweep_report, capsys):
    rl = _report(sweep_report, capsys)
    groups = {g["name"]: g for g in rl["groups"]}
    a, b = groups["cw2 · sac"], groups["cw2 · sac+l2"]
    assert a["runs"] == b["runs"] == 4 and rl["reps"] == 200
    # IQM: the middle half of the 8 scores, sorted .60 .65 .70 .75 .80 .85 .90 1.0 -> (.70+.75+.80+.85)/4 = .775,
    # not their mean .78125
    assert a["iqm"][0] == pytest.approx((0.70 + 0.75 + 0.80 + 0.85) / 4) and A.mean() == pytest.approx(0.78125)
    assert b["iqm"][0] == pytest.approx((0.15 + 0.20 + 0.25 + 0.30) / 4) and B.mean() == pytest.approx(0.21875)
    assert a["mean"][0] == pytest.approx(A.mean()) and a["optimality_gap"][0] == pytest.approx(1 - A.mean())
    for g in (a, b):
        for m in ("iqm", "mean", "median", "optimality_gap", "average_performance_iqm"):
            point, low, high = g[m]
            assert low <= point <= high and low < high, (g["name"], m, g[m])
    [pair] = rl["improvement"]
    assert (pair["x"], pair["y"]) == ("cw2 · sac", "cw2 · sac+l2")
    assert pair["probability"] == [1.0, 1.0, 1.0]  # every resample of A still beats every resample of B
    profiles = {p["name"]: p for p in rl["profiles"]}
    tau = np.array(profiles["cw2 · sac"]["tau"])
    for name, scores in (("cw2 · sac", A), ("cw2 · sac+l2", B)):
        for t in (0.0, 0.3, 0.5, 0.7, 0.9):
            i = int(np.argmin(np.abs(tau - t)))
            assert profiles[name]["profile"][i] == pytest.approx(np.mean(scores > tau[i]))
    assert profiles["cw2 · sac"]["profile"][50] == 1.0 and profiles["cw2 · sac+l2"]["profile"][50] == 0.0
    html = (sweep_report / "report.html").read_text()
    assert "id='rliable'" in html and "id='improvement'" in html
    assert "cw2: performance profiles" in html and "cw2: probability of improvement" in html
    assert "| cw2 · sac | cw2 · sac+l2 | 1.000 [1.000, 1.000] |" in (sweep_report / "report.md").read_text()


def test_the_terminal_shows_iqm_and_improvement(sweep_report, capsys):
    assert main(["report", str(sweep_report), "--no-html", "--bootstrap-reps", "50"]) == 0
    out = capsys.readouterr().out
    assert "final task scores" in out and "iqm" in out and "P(cw2 · sac > cw2 · sac+l2) = 1.000 [1.000, 1.000]" in out


def test_bootstrap_reps_must_be_positive(sweep_report, capsys):
    assert main(["report", str(sweep_report), "--bootstrap-reps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["crl: error: --bootstrap-reps must be at least 1, got 0"]


def test_estimates_are_reproducible_whatever_else_is_in_the_report():
    x, y = rliable_stats.ScoreSet("x", "s", (), A), rliable_stats.ScoreSet("y", "s", (), B)
    alone = rliable_stats.compute([x], reps=50).as_json()
    np.random.seed(123)  # the caller's generator state does not matter
    both = rliable_stats.compute([x, y], reps=50).as_json()
    assert both["groups"][0] == alone["groups"][0] and both["profiles"][0] == alone["profiles"][0]
    assert both == rliable_stats.compute([x, y], reps=50).as_json()


def test_cis_shrink_with_more_runs_and_leave_the_global_generator_alone():
    rng = np.random.default_rng(3)
    many = rng.uniform(0, 1, (40, 5))
    state = np.random.get_state()
    few_stats = rliable_stats.compute([rliable_stats.ScoreSet("few", "s", (), many[:5])], reps=300).groups[0]
    many_stats = rliable_stats.compute([rliable_stats.ScoreSet("many", "s", (), many)], reps=300).groups[0]
    assert np.array_equal(np.random.get_state()[1], state[1])
    for m in ("iqm", "mean"):
        assert many_stats[m][2] - many_stats[m][1] < 0.6 * (few_stats[m][2] - few_stats[m][1])


# ----------------------------------------------------------------------------------------- parity with rliable


def test_aggregates_and_their_cis_are_rliables():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, (6, 3))
    crl = rliable_stats.compute([rliable_stats.ScoreSet("x", "s", (), scores)], reps=100).groups[0]
    np.random.seed(rliable_stats.SEED)
    points, cis = library.get_interval_estimates(
        {"x": scores}, lambda s: np.array([rly.aggregate_iqm(s), rly.aggregate_mean(s), rly.aggregate_median(s),
                                           rly.aggregate_optimality_gap(s)]), reps=100)
    for i, m in enumerate(rliable_stats.AGGREGATES):
        assert crl[m] == pytest.approx([points["x"][i], cis["x"][0, i], cis["x"][1, i]], abs=1e-12)


def test_probability_of_improvement_is_rliables_with_ties_and_equal_tasks():
    rng = np.random.default_rng(1)
    for runs_x, runs_y in ((3, 5), (4, 4)):
        x = rng.integers(0, 4, (runs_x, 6)) / 4  # few distinct values: ties between and within the agents
        y = rng.integers(0, 4, (runs_y, 6)) / 4
        if runs_x == runs_y:
            x[:, 0] = y[:, 0]  # a task on which the two are equal (rliable: 0.5)
        assert rliable_stats.probability_of_improvement(x, y) == pytest.approx(rly.probability_of_improvement(x, y))
    # and the bootstrap CI over both agents' runs is rliable's, resample by resample
    crl = rliable_stats.compute([rliable_stats.ScoreSet("x", "s", (), x), rliable_stats.ScoreSet("y", "s", (), y)],
                                reps=40).improvement[0]["probability"]
    np.random.seed(rliable_stats.SEED)
    point, ci = library.get_interval_estimates(
        {"x,y": [x, y]}, lambda a, b: np.array([rly.probability_of_improvement(a, b)]), reps=40)
    assert crl == pytest.approx([point["x,y"][0], ci["x,y"][0, 0], ci["x,y"][1, 0]], abs=1e-12)


def test_performance_profiles_are_rliables_score_distributions():
    scores = np.round(np.random.default_rng(2).uniform(0, 1, (5, 4)), 2)  # some scores on the τ grid itself
    crl = rliable_stats.compute([rliable_stats.ScoreSet("x", "s", (), scores)], reps=30).profiles[0]
    np.random.seed(rliable_stats.SEED)
    profile, ci = library.create_performance_profile({"x": scores}, rliable_stats.TAU, reps=30)
    assert crl["profile"] == pytest.approx(profile["x"].tolist(), abs=0)
    assert crl["low"] == pytest.approx(ci["x"][0].tolist(), abs=1e-12)
    assert crl["high"] == pytest.approx(ci["x"][1].tolist(), abs=1e-12)


def test_runs_without_a_score_on_every_task_after_the_last_are_left_out_and_named():
    finished = {"retention_matrix": [[0.5, None], [0.4, 0.9]], "metrics": {"average_performance": 0.65}}
    unfinished = {"retention_matrix": [[0.5, None], [None, None]], "metrics": {"average_performance": 0.5}}
    s = rliable_stats.score_set("g", "cw2", (), [("run/a", finished), ("run/b", unfinished)])
    assert s.scores.tolist() == [[0.4, 0.9]] and s.excluded == ["run/b"]
    assert s.run_metrics["average_performance"].tolist() == [[0.65]]
    assert rliable_stats.compute([s], reps=10).groups[0]["excluded"] == ["run/b"]
