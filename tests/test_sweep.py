"""crl sweep on a local Ray (2 CPUs): every cell a normal run dir; a trial killed mid-run is retried from its
checkpoint and the sweep finishes every cell; a cell with a bad config is reported failed while the others run;
crl report of the sweep has both agents with CIs (HTML page + Markdown); --resume of a finished sweep does
nothing and says so; without Ray, one line saying how to install it. SIGTERM to the driver: the running trial
writes a checkpoint and stops, no pending trial starts, exit 143 with the resume hint, and --resume finishes
every cell with nothing run twice; an unreachable --address fails with one line and leaves nothing behind."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from crl import checkpoint
from crl.cli import main
from crl.monitor import read_evals
from crl.runlock import read_lock

if os.environ.get("CRL_REQUIRE_RAY") != "1":  # CI sets it (.ci/run installs the sweep extra): never skipped there
    pytest.importorskip("ray", reason="crl sweep needs Ray: pip install -e '.[sweep]'")

TINY = ["--preset", "smoke", "--backend", "gymnasium", "--set", "train.steps_per_task=100",
        "--set", "train.eval_every=50", "--set", "train.eval_episodes=1", "--set", "agent.hidden_sizes=[32,32]"]


# distshift · dqn: one task of fast on-device steps; checkpoints only at the start and the end (0, 8,000) unless a
# stop writes one; evaluations every 1,000 steps
STOPPABLE = ["--seq", "distshift", "--agent", "dqn", "--preset", "smoke", "--set", "train.steps_per_task=8000",
             "--set", "train.eval_every=1000", "--set", "train.checkpoint_every=1000000"]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self._in_td = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    # l2m takes no hidden_sizes: its two cells have a bad config and fail; sac and td3 run
    cmd = [sys.executable, "-m", "crl.cli", "sweep", "--seq", "cw2", "--agent", "sac", "td3", "l2m", "--seeds", "0-1",
           *TINY, "--cpus", "2", "--max-failures", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    victim = out / "cw2__sac__s0"
    killed = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and killed is None:
        # mid-run: past its first training evaluation, not finished; kill the trial's process without warning
        if any(r["step"] >= 50 for r in read_evals(victim)) and not (victim / "results.json").exists():
            lock = read_lock(victim)
            if lock:
                os.kill(lock["pid"], signal.SIGKILL)
                killed = lock["pid"]
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=1200)  # a hang guard, not a speed check: a loaded 2-core machine is slow
    return out, proc.returncode, stdout, stderr, killed


def test_sweep_finishes_every_cell_despite_a_killed_trial_and_a_bad_config(swept):
    out, code, stdout, stderr, killed = swept
    assert killed is not None, stdout + stderr
    assert code == 1, stdout + stderr  # two cells failed (bad config): non-zero
    assert "trial died" in stdout and "retrying from its last checkpoint" in stdout, stdout
    for noise in ("Traceback", "Trial task failed", "(raylet)", "\x1b["):  # Ray's and Tune's: in .ray/driver.log
        assert noise not in stdout + stderr, stdout + stderr
    for agent in ("sac", "td3"):
        for seed in (0, 1):
            run_dir = out / f"cw2__{agent}__s{seed}"
            results = json.loads((run_dir / "results.json").read_text())
            assert results["finished"], run_dir
            rows = read_evals(run_dir)  # init + 2 per task, both tasks each: nothing lost, nothing doubled
            assert sorted({(r["eval_id"], r["step"]) for r in rows}) == [(0, 0), (1, 50), (2, 100), (3, 150), (4, 200)]
            assert len(rows) == 10
            assert not (run_dir / ".crl.lock").exists()
    assert json.loads((out / "cw2__sac__s0" / "results.json").read_text())["segments"] == 2  # resumed once
    for seed in (0, 1):
        assert not (out / f"cw2__l2m__s{seed}").exists()
        assert f"cw2__l2m__s{seed}                             failed: unknown config key 'agent.hidden_sizes'" in stdout
    assert "4 of 6 cells finished, 2 failed" in stdout


def test_report_of_the_sweep_has_both_agents_with_cis(swept, capsys):
    out, *_ = swept
    assert main(["report", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    aggregates = {a["agent"]: a for a in report["aggregates"]}
    assert set(aggregates) == {"sac", "td3"}
    for agg in aggregates.values():
        assert agg["seeds"] == 2
        mean, low, high = agg["average_performance"]
        assert low <= mean <= high
    assert report["notes"] == []  # same protocol everywhere
    md = (out / "report.md").read_text()
    assert "| cw2 · sac | 2 |" in md and "| cw2 · td3 | 2 |" in md
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert len(page.images) >= 3  # average curve + one figure per agent
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cw2 · sac" in page.cells and "cw2 · td3" in page.cells
    assert sum(str(out / "cw2__sac__s") in c for c in page.cells) == 2  # the runs table lists every run


def test_resume_of_a_finished_sweep_does_nothing_and_says_so(swept, capsys):
    out, *_ = swept
    before = json.loads((out / "sweep.json").read_text())["segments"]
    code = main(["sweep", "--resume", str(out)])
    text = capsys.readouterr().out
    assert "all 6 cells done (4 finished, 2 failed); nothing to do" in text
    assert code == 1  # the failed cells are still failed
    assert json.loads((out / "sweep.json").read_text())["segments"] == before  # no Tune experiment started


def test_without_ray_one_line_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["sweep", "--seq", "cw2", "--agent", "sac", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert 'pip install -e ".[sweep]"' in err
    assert not (tmp_path / "s").exists()


def test_local_ray_runs_trials_at_normal_priority():
    """Ray's workers default to nice 15, where trials starved beside other jobs; crl's local Ray runs them at 0."""
    probe = ("import os, ray\nfrom crl.sweep import start_local_ray\nstart_local_ray(ray, 1)\n"
             "print(ray.get(ray.remote(lambda: os.nice(0)).remote()))\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(os.nice(0))


def test_sigterm_checkpoints_the_running_trial_and_resume_runs_nothing_twice(tmp_path):
    out = tmp_path / "grid"
    sweep = [sys.executable, "-m", "crl.cli", "sweep"]
    # one CPU: one cell runs, the other waits and must not start once the sweep stops
    proc = subprocess.Popen([*sweep, *STOPPABLE, "--seeds", "0-1", "--cpus", "1", "--max-failures", "0",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    cells = [out / "distshift__dqn__s0", out / "distshift__dqn__s1"]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(r["step"] >= 1000 for c in cells
                                                                    for r in read_evals(c)):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)  # mid-task, after the first training evaluation
    stdout, stderr = proc.communicate(timeout=600)  # a hang guard
    assert proc.returncode == 143, stdout + stderr
    assert f"continue with: crl sweep --resume {out}" in stdout, stdout
    started, waiting = cells if read_evals(cells[0]) else cells[::-1]
    assert not waiting.exists(), stdout  # the pending cell was not started
    stopped_at = checkpoint.load(started)["loop"]["global_step"]
    assert 1000 <= stopped_at < 8000, stopped_at  # a checkpoint no cadence asks for: the stop wrote it
    assert f"{started.name}: stopped at step {stopped_at:,}, checkpoint written" in stdout, stdout
    assert not (started / "results.json").exists() and not (started / ".crl.lock").exists()
    assert "Trial" not in stdout + stderr and "\x1b[" not in stdout + stderr  # Ray's noise went to .ray/driver.log
    before = read_evals(started)

    resumed = subprocess.run([*sweep, "--resume", str(out), "--cpus", "1"], capture_output=True, text=True,
                             env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 of 2 cells finished" in resumed.stdout
    for cell in cells:
        rows = read_evals(cell)  # every evaluation once: nothing lost, nothing doubled
        assert sorted({(r["eval_id"], r["step"]) for r in rows}) == [(i, 1000 * i) for i in range(9)]
        assert len(rows) == 9 * sum(r["eval_id"] == 0 for r in rows)
    # the stopped cell's rows up to its stop are the ones written before it (eval_seconds included): not rerun
    assert read_evals(started)[:len(before)] == before and all(r["step"] <= stopped_at for r in before)
    assert json.loads((started / "results.json").read_text())["segments"] == 2
    assert json.loads((waiting / "results.json").read_text())["segments"] == 1


def test_an_unreachable_address_fails_with_one_line_and_leaves_nothing(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "crl.cli", "sweep", "--seq", "cw2", "--agent", "sac", *TINY,
           "--address", f"127.0.0.1:{port}", "--out", str(out)]
    for _ in range(2):  # the same command again: the same line, not "already holds a sweep"
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)  # a hang guard
        assert done.returncode == 2, done.stdout + done.stderr
        line, = done.stderr.strip().splitlines()
        assert line.startswith(f"crl: error: cannot reach a Ray cluster at --address 127.0.0.1:{port}"), line
        assert line.endswith(": Connection refused"), line
        assert not out.exists()
