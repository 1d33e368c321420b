"""crl report over fabricated run dirs (no training): comparability notes, groups kept apart, and forward
transfer over seeds with the reference runs averaged before normalising (hand-computed)."""

from __future__ import annotations

import json

import pytest

from crl.cli import main
from crl.config import build_config
from crl.loop import write_run_config
from crl.monitor import write_evals


def fake_run(run_dir, seed: int, scores: dict[int, list[float]], steps_per_task: int = 100, reference: bool = False):
    """A run dir of cw2 with evaluations every steps_per_task/2 steps; scores[task] lists one score per evaluation."""
    cfg = build_config("cw2", "sac", seed=seed, preset="smoke", reference=reference,
                       sets=[f"train.steps_per_task={steps_per_task}", f"train.eval_every={steps_per_task // 2}"])
    write_run_config(run_dir, cfg)
    labels = ["hammer-v3", "push-wall-v3"]
    evals = [(0, 0, -1), (1, 1, 0), (2, 2, 0), (3, 3, 1), (4, 4, 1)]
    rows = []
    for eval_id, k, active in evals:
        if reference and active < 0:
            continue
        for task in range(2):
            if reference and task != active:
                continue
            s = scores[task][eval_id]
            rows.append({"eval_id": eval_id, "step": k * steps_per_task // 2, "active_task": active,
                         "task": labels[task], "task_index": task, "score": s, "success": s, "return": s})
    write_evals(run_dir, rows)


def test_report_notes_runs_that_are_not_comparable_and_resamples_references(tmp_path, capsys):
    fake_run(tmp_path / "a0", 0, {0: [0, .2, .4, .3, .3], 1: [0, 0, 0, .5, .7]})  # AUC A .3, B .6
    fake_run(tmp_path / "a1", 1, {0: [0, .4, .6, .5, .5], 1: [0, 0, .1, .7, .9]})  # AUC A .5, B .8
    fake_run(tmp_path / "ref0", 0, {0: [0, .2, .2, 0, 0], 1: [0, 0, 0, .4, .4]}, reference=True)  # A .2, B .4
    fake_run(tmp_path / "ref1", 1, {0: [0, .4, .4, 0, 0], 1: [0, 0, 0, .6, .6]}, reference=True)  # A .4, B .6
    fake_run(tmp_path / "longer", 2, {0: [0, .9, .9, .9, .9], 1: [0, 0, 0, .9, .9]}, steps_per_task=200)
    assert main(["report", str(tmp_path / "a0"), str(tmp_path / "a1"), str(tmp_path / "longer"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["notes"]) == 1
    note = report["notes"][0]
    assert str(tmp_path / "longer") in note and "steps_per_task 200 (others 100)" in note
    groups = {(a["agent"], a["protocol"]["steps_per_task"]): a for a in report["aggregates"]}
    assert set(groups) == {("sac", 100), ("sac", 200)} and groups[("sac", 100)]["seeds"] == 2
    main_group = groups[("sac", 100)]
    assert sorted(main_group["references"]) == ["ref0", "ref1"]
    # seeds averaged first: AUC A .4, B .7; references A .3, B .5 -> FT = (.1/.7 + .2/.5) / 2
    ft, low, high = main_group["forward_transfer"]
    assert ft == pytest.approx((0.1 / 0.7 + 0.2 / 0.5) / 2)
    assert low < ft < high  # the references vary too, so the interval is not a point
    # the per-run values stay per run (each against the mean reference AUC)
    assert {r["run"].rsplit("/", 1)[-1] for r in report["runs"]} == {"a0", "a1", "longer"}
    md = (tmp_path / "report.md").read_text()
    assert "not comparable" in md and "GEM's code" in md
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") >= 3


def test_a_sweep_report_lists_the_cells_that_did_not_finish_with_their_errors(tmp_path, capsys):
    sweep = tmp_path / "grid"
    done = sweep / "cw2__sac__s0"
    fake_run(done, 0, {0: [0, .2, .4, .3, .3], 1: [0, 0, 0, .5, .7]})
    (done / "results.json").write_text(json.dumps({"finished": True}))
    fake_run(sweep / "cw2__sac__s1", 1, {0: [0, .2, .4, .4, .4], 1: [0, 0, 0, 0, 0]})
    (sweep / "cw2__sac__s1" / "error.txt").write_text("agent.lr must be positive\n")
    write_run_config(sweep / "cw2__sac__s2", build_config("cw2", "sac", seed=2, preset="smoke"))  # no evaluation
    cells = [{"name": f"cw2__sac__s{seed}", "seq": "cw2", "agent": "sac", "seed": seed} for seed in range(4)]
    cells[2]["died"] = "RayActorError: the actor died unexpectedly"
    cells.append({"name": "cw2__l2m__s0", "seq": "cw2", "agent": "l2m", "seed": 0,
                  "error": "unknown config key 'agent.hidden_sizes'"})
    (sweep / "sweep.json").write_text(json.dumps({"cells": cells}))

    assert main(["report", str(sweep), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [a["seeds"] for a in report["aggregates"]] == [2]  # the runs with evaluations
    assert report["not_finished"] == [
        {"cell": "cw2__sac__s1", "run_dir": str((sweep / "cw2__sac__s1").resolve()), "status": "failed",
         "error": "agent.lr must be positive"},
        {"cell": "cw2__sac__s2", "run_dir": str((sweep / "cw2__sac__s2").resolve()), "status": "partial",
         "error": "trial died with no retries left (RayActorError: the actor died unexpectedly)"},
        {"cell": "cw2__sac__s3", "run_dir": str((sweep / "cw2__sac__s3").resolve()), "status": "pending",
         "error": None},
        {"cell": "cw2__l2m__s0", "run_dir": str((sweep / "cw2__l2m__s0").resolve()), "status": "failed",
         "error": "unknown config key 'agent.hidden_sizes'"},
    ]
    md = (sweep / "report.md").read_text()
    assert "- cw2__sac__s1: failed: agent.lr must be positive" in md and "- cw2__sac__s3: pending" in md
    assert "cw2__l2m__s0: failed: unknown config key" in (sweep / "report.html").read_text()
    assert main(["report", str(sweep), "--no-html"]) == 0
    assert "not finished: cw2__sac__s2: partial: trial died with no retries left" in capsys.readouterr().out
