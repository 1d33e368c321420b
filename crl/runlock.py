"""One writer per run dir: a lock file ``<run dir>/.crl.lock`` holding the writer's pid, host and start time.

A second ``crl train`` / ``crl train --resume`` (or a sweep retry) on a run dir that a live process holds is
refused with one line (UsageError, exit 2). A lock left by a process that died without releasing it (SIGKILL,
an OOM kill, a lost node) does not block a resume:

- same host: the lock is stale when its pid no longer runs;
- another host (a shared filesystem: a Ray cluster, NFS): the holder cannot be asked, so it proves it is
  alive by touching the lock file every ``HEARTBEAT_S`` seconds; a lock not touched for ``STALE_S`` is stale.

Taking the lock is atomic (``O_CREAT | O_EXCL``); taking over a stale one removes it first, so two
processes racing for it cannot both win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from crl.core import UsageError

LOCK_FILE = ".crl.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def read_lock(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def holder_alive(info: dict | None, path: Path) -> bool:
    """Whether the process that wrote ``info`` (the lock at ``path``) may still be writing the run dir."""
    if not info:  # unreadable or torn: trust it only while it is fresh (it may be being written)
        try:
            return time.time() - path.stat().st_mtime < STALE_S
        except OSError:
            return False
    if info.get("host") == socket.gethostname():
        return _pid_alive(int(info.get("pid", -1)))
    try:
        return time.time() - path.stat().st_mtime < STALE_S
    except OSError:
        return False


def wait_while_held_elsewhere(run_dir: Path, poll_s: float = 5.0) -> None:
    """Wait while another host's lock on ``run_dir`` is fresh (at most ``STALE_S`` plus a poll): a retry that a
    scheduler starts on another machine right after losing a node must not be refused by the dead node's lock.
    A lock of this host is left to ``RunLock`` (a live pid is refused at once, a dead one taken over)."""
    path = Path(run_dir) / LOCK_FILE
    deadline = time.time() + STALE_S + poll_s
    while time.time() < deadline:
        info = read_lock(run_dir)
        if not info or info.get("host") == socket.gethostname() or not holder_alive(info, path):
            return
        time.sleep(poll_s)


class RunLock:
    """``with RunLock(run_dir):`` — hold the run dir for this process, heartbeat, release on exit."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        return True

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                break
            info = read_lock(self.run_dir)
            if holder_alive(info, self.path):
                who = f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}" if info else "another process"
                raise UsageError(f"run dir {self.run_dir} is in use by {who}; one process at a time writes a run "
                                 f"(wait for it, or stop it and resume)")
            try:  # stale: its writer is gone
                self.path.unlink()
            except FileNotFoundError:
                pass
        else:
            raise UsageError(f"run dir {self.run_dir}: could not take {LOCK_FILE} (another process keeps taking it)")
        self._thread = threading.Thread(target=self._heartbeat, name="crl-run-lock", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        info = read_lock(self.run_dir)
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
