"""End-to-end: a smoke run through cw2 writes every output; a SIGKILLed run resumes and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crl import checkpoint
from crl.cli import main
from crl.config import build_config
from crl.loop import train
from crl.monitor import read_evals

SMOKE = ["--seq", "cw2", "--agent", "sac", "--preset", "smoke", "--backend", "gymnasium", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "cw2_smoke"
    cfg = build_config("cw2", "sac", preset="smoke", backend="gymnasium")
    _, results = train(cfg, run_dir, quiet=True)
    return run_dir, results


def scalar_tags(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_outputs_of_a_finished_run(finished_run):
    run_dir, results = finished_run
    for name in ("config.yaml", "evals.jsonl", "results.json", "retention.png", "curves.png", "checkpoint.pt"):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["finished"] and saved["tasks"] == ["hammer-v3", "push-wall-v3"]
    R = np.array(saved["retention_matrix"], dtype=float)
    assert R.shape == (2, 2) and np.all((R >= 0) & (R <= 1))
    for key in ("average_performance", "forgetting", "gem_acc", "gem_bwt", "gem_fwt", "avg_min_acc", "wc_acc", "wf_10"):
        assert key in saved["metrics"], key
    assert saved["steps"] == 800 and saved["versions"]["metaworld"].startswith("3.")
    # evaluation before training, then every 200 steps; every evaluation covers every task
    rows = read_evals(run_dir)
    steps = sorted({(r["eval_id"], r["step"], r["active_task"]) for r in rows})
    assert steps == [(0, 0, -1), (1, 200, 0), (2, 400, 0), (3, 600, 1), (4, 800, 1)]
    assert all(sum(r["eval_id"] == e for r in rows) == 2 for e in range(5))
    assert all(0 <= r["success_final"] <= r["success"] <= 1 for r in rows)  # last-step flag implies any-step
    # the retention matrix is the end-of-task rows
    end_a = {r["task_index"]: r["score"] for r in rows if r["eval_id"] == 2}
    assert R[0].tolist() == [end_a[0], end_a[1]]


def test_tensorboard_tags_on_one_global_axis(finished_run):
    run_dir, _ = finished_run
    tags = scalar_tags(run_dir)
    for task in ("hammer-v3", "push-wall-v3"):
        assert [s for s, _ in tags[f"eval/{task}/success"]] == [0, 200, 400, 600, 800]
        assert f"eval/{task}/return" in tags
    assert "eval/average_success" in tags and "time/fps" in tags and "task/index" in tags
    assert [v for _, v in tags["task/index"]] == [0.0, 1.0]
    assert any(t.startswith("train/critic_loss") for t in tags)
    critic_steps = [s for s, _ in tags["train/critic_loss"]]
    assert max(critic_steps) > 400  # the second task continues the x-axis
    for network in ("actor", "critic"):  # plasticity probes: on by default, under their own namespace
        assert f"plasticity/{network}/all/fau" in tags and f"plasticity/{network}/0/dormant_ratio" in tags


def test_existing_run_is_not_overwritten(finished_run, capsys):
    run_dir, _ = finished_run
    before = (run_dir / "results.json").read_bytes()
    assert main(["train", *SMOKE, "--run-dir", str(run_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "results.json").read_bytes() == before


def test_eval_and_report_commands(finished_run, capsys):
    run_dir, _ = finished_run
    assert main(["eval", str(run_dir), "--episodes", "1", "--backend", "gymnasium"]) == 0
    out = capsys.readouterr().out
    assert "hammer-v3" in out and "push-wall-v3" in out
    assert json.loads((run_dir / "eval.json").read_text())["episodes"] == 1
    assert main(["report", str(run_dir), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["runs"][0]["agent"] == "sac" and "average_performance" in table["runs"][0]


def test_corrupt_and_foreign_checkpoints(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    for name, payload in (("corrupt", b"not a checkpoint at all"), ("foreign", None)):
        copy = tmp_path / name
        copy.mkdir()
        (copy / "config.yaml").write_text((run_dir / "config.yaml").read_text())
        if payload is None:
            torch.save({"weights": torch.zeros(3)}, copy / "checkpoint.pt")
        else:
            (copy / "checkpoint.pt").write_bytes(payload)
        assert main(["train", "--resume", str(copy), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not a crl checkpoint" in err


def test_sigkill_mid_task_then_resume_loses_nothing(tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "crl.cli", "train", *SMOKE, "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Wait for the mid-task evaluation of task 0 (step 200 of 400), then kill without warning.
    while time.time() < deadline and not any(r["step"] == 200 for r in read_evals(run_dir)):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.json").exists()
    ckpt = checkpoint.load(run_dir)
    assert ckpt["loop"]["task"] == 0  # killed in the middle of the first task

    resumed = subprocess.run([sys.executable, "-m", "crl.cli", "train", "--resume", str(run_dir), "--quiet"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_evals(run_dir)
    evals = sorted({(r["eval_id"], r["step"], r["active_task"]) for r in rows})
    assert evals == [(0, 0, -1), (1, 200, 0), (2, 400, 0), (3, 600, 1), (4, 800, 1)]
    assert len(rows) == 10  # each evaluation once, every task in it: nothing lost, nothing doubled
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and results["segments"] == 2
    assert np.array(results["retention_matrix"], dtype=float).shape == (2, 2)


def test_reference_runs_feed_forward_transfer(finished_run, capsys):
    run_dir, results = finished_run
    assert "forward_transfer" not in results["metrics"]  # no references yet
    ref_dir = run_dir.parent / "cw2_reference"
    cfg = build_config("cw2", "sac", preset="smoke", backend="gymnasium", reference=True)
    _, ref = train(cfg, ref_dir, quiet=True)
    assert ref["kind"] == "reference" and set(ref["reference_curves"]) == {"hammer-v3", "push-wall-v3"}
    rows = read_evals(ref_dir)
    assert all(r["task_index"] == r["active_task"] for r in rows)  # only the task being trained is evaluated
    assert [len(c) for c in ref["reference_curves"].values()] == [2, 2]
    assert main(["report", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # smoke runs learn nothing, so both AUCs are 0 and FT_i = (0 - 0) / (1 - 0) = 0
    assert report["runs"][0]["forward_transfer"] == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA path: runs where a GPU is present")
def test_smoke_run_on_cuda(tmp_path):
    cfg = build_config("cw2", "sac", preset="smoke", backend="gymnasium", device="cuda")
    _, results = train(cfg, tmp_path / "cuda", quiet=True)
    assert results["finished"] and np.array(results["retention_matrix"], dtype=float).shape == (2, 2)
