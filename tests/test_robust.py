"""Runs that survive a cluster's faults: SIGTERM stops at a safe point with a checkpoint and resumes with no
evaluation lost or doubled; one writer per run dir (a live holder refuses a second, a dead one does not block)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from crl import checkpoint
from crl.cli import main
from crl.monitor import read_evals
from crl.runlock import LOCK_FILE, STALE_S, RunLock

SMOKE = ["--seq", "cw2", "--agent", "sac", "--preset", "smoke", "--backend", "gymnasium", "--quiet"]


def test_sigterm_stops_with_a_checkpoint_and_resume_loses_nothing(tmp_path):
    run_dir = tmp_path / "terminated"
    cmd = [sys.executable, "-m", "crl.cli", "train", *SMOKE, "--run-dir", str(run_dir),
           "--set", "train.checkpoint_every=100000"]  # no checkpoint would fall inside the task: SIGTERM writes it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(r["step"] == 200 for r in read_evals(run_dir)):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert (run_dir / LOCK_FILE).exists()  # the live run holds its dir
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and f"crl train --resume {run_dir}" in lines[0], err
    assert not (run_dir / LOCK_FILE).exists()  # released
    assert not (run_dir / "results.json").exists()
    ckpt = checkpoint.load(run_dir)
    # the checkpoint was written at the stop, after the step-200 evaluation (no checkpoint was due there)
    assert ckpt["loop"]["task"] == 0 and ckpt["loop"]["global_step"] >= 200
    assert ckpt["loop"]["eval_id"] == len({r["eval_id"] for r in read_evals(run_dir)})

    resumed = subprocess.run([sys.executable, "-m", "crl.cli", "train", "--resume", str(run_dir), "--quiet"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_evals(run_dir)
    assert sorted({(r["eval_id"], r["step"], r["active_task"]) for r in rows}) == [
        (0, 0, -1), (1, 200, 0), (2, 400, 0), (3, 600, 1), (4, 800, 1)]
    assert len(rows) == 10  # each evaluation once, for both tasks: none lost, none doubled
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and results["segments"] == 2
    assert np.array(results["retention_matrix"], dtype=float).shape == (2, 2)


def _fake_lock(run_dir, pid: int, host: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "started": "earlier"}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_writer_refuses_a_second_process(tmp_path, capsys):
    run_dir = tmp_path / "busy"
    _fake_lock(run_dir, os.getpid(), socket.gethostname())  # this very process: alive
    code = main(["train", *SMOKE, "--run-dir", str(tmp_path / "other")])  # another dir is not affected…
    assert code == 0
    capsys.readouterr()
    (run_dir / "config.yaml").write_text((tmp_path / "other" / "config.yaml").read_text())
    code = main(["train", "--resume", str(run_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"is in use by pid {os.getpid()} on {socket.gethostname()}" in err
    assert not (run_dir / "evals.jsonl").exists()  # nothing was written by the refused process


def test_a_stale_lock_does_not_block_a_resume(tmp_path, capsys):
    assert main(["train", *SMOKE, "--run-dir", str(tmp_path / "run")]) == 0
    run_dir = tmp_path / "run"
    (run_dir / "results.json").unlink()
    _fake_lock(run_dir, _dead_pid(), socket.gethostname())  # a SIGKILLed writer left it behind
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "results.json").read_text())["finished"]
    assert not (run_dir / LOCK_FILE).exists()


def test_locks_from_other_hosts_count_while_their_heartbeat_is_fresh(tmp_path):
    from crl.core import UsageError

    run_dir = tmp_path / "shared"
    _fake_lock(run_dir, 1, "some-other-node")
    with pytest.raises(UsageError, match="in use by pid 1 on some-other-node"):
        RunLock(run_dir).acquire()
    old = time.time() - STALE_S - 5  # the other node stopped touching it: it is gone
    os.utime(run_dir / LOCK_FILE, (old, old))
    lock = RunLock(run_dir).acquire()
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run_dir / LOCK_FILE).exists()


def test_a_retry_on_another_host_waits_for_the_lost_hosts_lock_to_go_stale(tmp_path, monkeypatch):
    """A lock from another host is trusted while it is fresh; a sweep retry waits for it to go stale instead of
    failing the cell (a lost node cannot release its lock)."""
    import json
    import time

    from crl import runlock

    monkeypatch.setattr(runlock, "STALE_S", 0.6)
    lock = tmp_path / runlock.LOCK_FILE
    lock.write_text(json.dumps({"pid": 1, "host": "a-lost-node", "started": "then"}))
    polls, real_sleep = [], time.sleep
    monkeypatch.setattr(runlock.time, "sleep", lambda s: (polls.append(s), real_sleep(s)))
    runlock.wait_while_held_elsewhere(tmp_path, poll_s=0.1)
    assert len(polls) >= 3  # it polled while the foreign lock was fresh, then went on
    with runlock.RunLock(tmp_path):  # now stale: taken over
        assert json.loads(lock.read_text())["pid"] != 1
    runlock.wait_while_held_elsewhere(tmp_path, poll_s=0.1)  # no lock at all: returns at once


def test_a_checkpoint_without_a_pieces_state_is_refused_with_one_line():
    """A checkpoint written by a crl whose extension kept other state (kickstart before ``teacher_step``)
    stops the resume with a UsageError naming what is missing, not a KeyError."""
    from crl.core import UsageError
    from crl.extension import load_state

    class Piece:
        teacher, teacher_step = None, 0

    old_state = {"teacher": None}
    with pytest.raises(UsageError, match="no teacher_step for kickstart"):
        load_state(Piece(), ("teacher", "teacher_step"), old_state, "cpu", owner="kickstart")
    piece = Piece()
    load_state(piece, ("teacher", "teacher_step"), {"teacher": None, "teacher_step": 7}, "cpu", owner="kickstart")
    assert piece.teacher_step == 7
