"""``crl sweep``: a grid of runs (sequences × agents × seeds) as Ray Tune trials, locally or on a Ray cluster.

    crl sweep --seq cw10 --agent sac ewc --seeds 0-9 --preset quick --out runs/sweep1
    crl sweep --resume runs/sweep1          # finished cells are skipped, the others continue
    crl report runs/sweep1                  # mean and 90% CI per (sequence, agent), HTML + Markdown
    tensorboard --logdir runs/sweep1        # every run of the grid in one TensorBoard

The sweep dir holds ``sweep.json`` (the grid and how it was run), one normal crl run dir per cell
(``<seq>__<agent>__s<seed>/``: config.yaml, evals.jsonl, checkpoint.pt, TensorBoard events, results.json)
and Ray's own files under ``.ray/``. The run dirs are the state of the sweep: a trial that dies (its
process killed, its node lost) is retried by Tune (``--max-failures``) and the retry resumes the run from its
last checkpoint (``crl train --resume`` semantics: pickle-free loading, no evaluation lost or doubled, the
run dir's lock keeps two writers apart). ``--resume`` starts a new Tune experiment over the cells that are
not finished rather than ``Tuner.restore``: restore only finds trials under a fixed name and an unmoved
storage path (ray #36062, #28082, #40484) and leaves errored trials alone unless asked, while a run dir
resumes wherever it is.

Each cell's config is built (and validated) before Ray starts: a cell whose config is bad is reported as
failed with its error and the others run. A cell that fails while running with a UsageError (bad input)
is not retried: it would fail the same way.

SIGTERM or SIGINT to the driver stops the sweep the way ``crl train`` stops on SIGTERM: the driver writes
``SWEEP_DIR/stop-requested``, every running trial sees it (polled by a thread beside the loop) and stops at its
loop's next safe point after writing a checkpoint (``loop.train(stop_requested=...)``), no new trial starts,
and the driver prints the summary and ``crl sweep --resume SWEEP_DIR``, exiting with 128 + the signal. A second
signal stops at once (work since the last checkpoint is lost).

An ``--address`` is tried with a plain TCP connection first (5 s): Ray's own connect retries for minutes. While
Ray runs, the driver's stdout and stderr (Ray's and Tune's log lines, raylet messages and state dumps, tracebacks
of dead trials) go to ``SWEEP_DIR/.ray/driver.log``; the console has crl's one line per event, a lost node included.

Ray is an optional extra (``pip install -e ".[sweep]"``); Tune's working-directory change is turned off
(``RAY_CHDIR_TO_TRIAL_DIR=0``) and every path handed to a trial is absolute.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from crl.core import UsageError
from crl.fileio import atomic_write_text
from crl.runlock import wait_while_held_elsewhere

SWEEP_FILE = "sweep.json"
ERROR_FILE = "error.txt"
RAY_DIR = ".ray"
DRIVER_LOG = "driver.log"  # in RAY_DIR: the driver's stderr while Ray runs
STOP_FILE = "stop-requested"  # in the sweep dir while a stopping driver waits for its trials' checkpoints
STOP_POLL_S = 0.2
CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = 'crl sweep needs Ray Tune: pip install -e ".[sweep]" (or pip install "ray[tune]")'


def parse_seeds(spec: str) -> list[int]:
    """``0-9``, ``0,3,5`` or ``0-2,7`` → sorted seeds."""
    out: set[int] = set()
    for part in str(spec).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise UsageError(f"--seeds '{spec}': expected e.g. 0-9, 0,3,5 or 0-2,7") from None
        if a < 0 or b < a:
            raise UsageError(f"--seeds '{spec}': ranges go from low to high, seeds are >= 0")
        out.update(range(a, b + 1))
    return sorted(out)


def cell_name(seq: str, agent: str, seed: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", seq)
    return f"{slug}__{agent}__s{seed}"


def run_finished(run_dir: Path) -> bool:
    try:
        return bool(json.loads((Path(run_dir) / "results.json").read_text()).get("finished"))
    except (OSError, json.JSONDecodeError):
        return False


def plan(spec: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Every cell of the grid with its validated config, or the error that makes its config bad."""
    from crl.config import build_config

    cells = []
    for seq in spec["seq"]:
        for agent in spec["agent"]:
            for seed in spec["seeds"]:
                name = cell_name(seq, agent, seed)
                cell: dict[str, Any] = {"name": name, "seq": seq, "agent": agent, "seed": seed,
                                        "run_dir": str((out / name).resolve())}
                try:
                    cfg = build_config(seq, agent, seed=seed, device=spec["device"], backend=spec["backend"],
                                       preset=spec["preset"], sets=list(spec["set"]))
                    cell["config"] = cfg.to_dict()
                except UsageError as e:
                    cell["error"] = str(e)
                cells.append(cell)
    return cells


def cell_status(cell: dict[str, Any]) -> tuple[str, str]:
    """(status, detail): finished | failed | pending | partial, from the cell's run dir."""
    run_dir = Path(cell["run_dir"])
    if cell.get("error"):
        return "failed", cell["error"]
    if (run_dir / ERROR_FILE).exists():
        return "failed", (run_dir / ERROR_FILE).read_text().strip()
    if run_finished(run_dir):
        return "finished", ""
    died = f"trial died with no retries left ({cell['died']})" if cell.get("died") else ""
    if (run_dir / "config.yaml").exists():
        return "partial", died
    return "pending", died


# ------------------------------------------------------------------------------ the trial (a Ray worker)


def run_cell(config: dict[str, Any]) -> None:
    """Tune trainable: train (or resume) one cell's run dir, reporting progress after every evaluation."""
    from ray import tune

    from crl import loop
    from crl.config import config_from_dict

    cell = config["cell"]
    run_dir = Path(cell["run_dir"])
    if run_finished(run_dir):
        tune.report({"step": -1, "status": "finished"})
        return
    stop_file = Path(config["stop_file"])
    if stop_file.exists():  # started while the sweep stops: leave the cell as it is
        tune.report({"step": -1, "status": "stopped"})
        return
    total = None
    wait_while_held_elsewhere(run_dir)  # a retry on another node: the lost node's lock goes stale first

    def on_eval(state, rows) -> None:
        scores = [r["score"] for r in rows]
        tune.report({"step": state.global_step, "task": state.task, "evaluations": state.eval_id,
                     "avg_score": sum(scores) / len(scores), "total_steps": total})

    # the trial runs in a thread of a Ray worker, where no signal reaches it: the driver's stop comes as a file
    stop, trial_over = threading.Event(), threading.Event()

    def watch_stop_file() -> None:
        while not trial_over.wait(STOP_POLL_S):
            if stop_file.exists():
                stop.set()
                return

    threading.Thread(target=watch_stop_file, name="crl-stop-watch", daemon=True).start()
    try:
        if (run_dir / "config.yaml").exists():  # a retry, or a sweep resumed: continue from the last checkpoint
            cfg = loop.load_run_config(run_dir)
            total = cfg.train.steps_per_task * _num_tasks(cfg.seq)
            _, results = loop.resume(run_dir, quiet=True, on_eval=on_eval, stop_requested=stop)
        else:
            cfg = config_from_dict(cell["config"])
            total = cfg.train.steps_per_task * _num_tasks(cfg.seq)
            _, results = loop.train(cfg, run_dir, quiet=True, on_eval=on_eval, stop_requested=stop)
    except UsageError as e:  # bad input fails the same way every time: record it, no retry
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / ERROR_FILE, f"{e}\n")
        tune.report({"step": -1, "status": "failed", "error": str(e)})
        return
    except loop.RunInterrupted as e:  # the sweep is stopping: the checkpoint is written
        tune.report({"step": e.step, "status": "stopped"})
        return
    finally:
        trial_over.set()
    m = results.get("metrics", {})
    tune.report({"step": results["steps"], "status": "finished", "total_steps": total,
                 "average_performance": m.get("average_performance")})


def _num_tasks(seq: str) -> int:
    from crl.envs import make_sequence

    return len(make_sequence(seq))


# --------------------------------------------------------------------------------- the driver


class StopRequest:
    """The driver's SIGTERM/SIGINT handler: the first signal asks every trial to checkpoint and stop (the stop
    file), the second stops at once."""

    def __init__(self, stop_file: Path, console: Console):
        self.stop_file, self.console = stop_file, console
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        atomic_write_text(self.stop_file, f"{signal.Signals(signum).name}\n")
        self.console.line(f"{signal.Signals(signum).name}: stopping; running trials write a checkpoint and stop "
                          f"(signal again to stop at once, losing their work since their last checkpoint)")

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _progress_callback(cells: list[dict[str, Any]], stop: StopRequest, console: Console):
    import ray
    from ray import tune

    class Progress(tune.Callback):
        """One line per event over the whole grid: ``[done/total, running] cell: what happened``."""

        NODE_CHECK_S = 5.0

        def __init__(self):
            self.state = {c["name"]: "pending" for c in cells}
            self.total = len(cells)
            self.started = time.time()
            self.nodes_alive: dict[str, str] = {}  # node id -> address, of the nodes seen alive
            self.nodes_checked = 0.0

        def running(self) -> int:
            return sum(s == "running" for s in self.state.values())

        def _line(self, name: str, text: str) -> None:
            done = sum(s in ("finished", "failed") for s in self.state.values())
            elapsed = time.time() - self.started
            console.line(f"[{elapsed:6.0f}s] {done}/{self.total} done, {self.running()} running | {name}: {text}")

        def on_step_begin(self, iteration, trials, **info):
            """A node that was alive and is not any more: one line (Ray's own account is in .ray/driver.log)."""
            if time.time() - self.nodes_checked < self.NODE_CHECK_S:
                return
            self.nodes_checked = time.time()
            for node in ray.nodes():
                node_id, address = node.get("NodeID"), node.get("NodeManagerAddress", "?")
                if node.get("Alive"):
                    self.nodes_alive[node_id] = address
                elif node_id in self.nodes_alive:
                    del self.nodes_alive[node_id]
                    self._line(f"node {address} ({node_id[:8]})",
                               "lost; its trials are retried from their last checkpoints")

        def on_trial_start(self, iteration, trials, trial, **info):
            name = trial.config["cell"]["name"]
            self.state[name] = "running"
            if stop.signum is None:
                self._line(name, "started" if trial.num_failures == 0 else f"retry {trial.num_failures}, resuming")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            name = trial.config["cell"]["name"]
            status = result.get("status")
            if status == "failed":
                self.state[name] = "failed"
                self._line(name, f"FAILED: {result.get('error')}")
            elif status == "finished":
                self.state[name] = "finished"
                ap = result.get("average_performance")
                self._line(name, "finished" + (f", average performance {ap:.3f}" if isinstance(ap, float) else ""))
            elif status == "stopped":
                self.state[name] = "stopped"
                if result.get("step", -1) >= 0:
                    self._line(name, f"stopped at step {result['step']:,}, checkpoint written")
            else:
                total = result.get("total_steps") or 0
                self._line(name, f"step {result.get('step', 0):,}/{total:,}, eval {result.get('evaluations')}, "
                                 f"avg score {result.get('avg_score', float('nan')):.2f}")

        def on_trial_error(self, iteration, trials, trial, **info):
            name = trial.config["cell"]["name"]
            self.state[name] = "failed"
            self._line(name, "trial died; no retries left")

        def on_trial_recover(self, iteration, trials, trial, **info):
            name = trial.config["cell"]["name"]
            self.state[name] = "pending"
            self._line(name, f"trial died (failure {trial.num_failures}); retrying from its last checkpoint")

    return Progress()


def _stopper(stop: StopRequest, progress):
    from ray import tune

    class StopWhenTrialsStopped(tune.Stopper):
        """Once a stop is asked and no trial runs any more, Tune starts no pending trial. (Tune's stop_all stops
        running trials by killing them: it must wait until they have written their checkpoints.)"""

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return stop.signum is not None and progress.running() == 0

    return StopWhenTrialsStopped()


def _import_ray():
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def start_local_ray(ray, cpus: int | None) -> None:
    """A Ray on this machine for the sweep. Its worker processes run at nice 0: Ray's default of 15 starved the
    trials, which are the sweep's whole work, to about 5% of a core beside any other job (issues 15 and 16)."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             logging_level="error", object_store_memory=200 * 1024 ** 2)


def check_cluster_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds, with one line, where ``ray.init(address=...)`` would retry for minutes (issue 24)."""
    from ray._private.services import canonicalize_bootstrap_address

    where = f"cannot reach a Ray cluster at --address {address}"
    if address.startswith("ray://"):  # Ray Client: host:port of its server
        host_port = address[len("ray://"):]
    else:
        try:
            host_port = canonicalize_bootstrap_address(address)
        except (ConnectionError, ValueError) as e:  # 'auto' with no cluster started on this machine
            raise UsageError(f"{where}: {str(e).strip().splitlines()[0]}") from None
        if not host_port:
            raise UsageError(f"{where}: no running Ray cluster found (start one with 'ray start --head')")
    if host_port != address:  # Ray's form of it, e.g. 127.0.0.1 becomes this node's address
        where += f" ({host_port})"
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise UsageError(f"{where}: expected HOST:PORT or auto") from None
    except socket.timeout:
        raise UsageError(f"{where}: no answer within {timeout:.0f} s") from None
    except OSError as e:
        raise UsageError(f"{where}: {e.strerror or e}") from None


class Console:
    """Where crl's own lines go while Ray owns fds 1 and 2. Tune pickles its callbacks and stopper with the
    experiment's state, and a file opened for writing does not pickle: a copy writes to sys.stdout."""

    def __init__(self, stream):
        self.stream = stream

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.stream = sys.stdout


@contextlib.contextmanager
def ray_output_to(path: Path):
    """While Ray runs: the process's stdout and stderr (fds 1 and 2: Ray's C++ logs, the raylet messages its
    listener threads print, Tune's logging, child processes) appended to ``path``. Yields the console for crl's
    own lines: the original stdout (or sys.stdout itself where it is not fd 1, e.g. under pytest's capsys)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        to_fd1 = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout without a file descriptor
        to_fd1 = False
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    stream = os.fdopen(os.dup(saved[1]), "w", buffering=1) if to_fd1 else sys.stdout
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in (1, 2):
            os.dup2(log, fd)
        yield Console(stream)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        os.close(log)
        if stream is not sys.stdout:
            stream.close()


def _read_spec(out: Path) -> dict[str, Any]:
    path = Path(out) / SWEEP_FILE
    try:
        spec = json.loads(path.read_text())
        cells = spec["cells"]
    except FileNotFoundError:
        raise UsageError(f"{out} is not a crl sweep dir (no {SWEEP_FILE})") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is unreadable ({type(e).__name__})") from None
    for cell in cells:  # the run dirs are where the sweep dir is now (it may have moved since it was written)
        cell["run_dir"] = str((Path(out) / cell["name"]).resolve())
    return spec


def summary(cells: list[dict[str, Any]], stream=None) -> int:
    """Print every cell's status (to ``stream``, default sys.stdout as it is now); returns how many failed."""
    stream = stream or sys.stdout
    failed = 0
    for cell in cells:
        status, detail = cell_status(cell)
        failed += status == "failed"
        if status == "partial" and cell.get("died"):
            detail += "; crl sweep --resume continues it"
        print(f"  {cell['name']:<40} {status}{': ' + detail if detail else ''}", file=stream)
    return failed


def sweep(*, seq: list[str] | None = None, agent: list[str] | None = None, seeds: str = "0",
          preset: str | None = None, sets: list[str] | None = None, device: str = "auto", backend: str = "auto",
          out: Path | None = None, address: str | None = None, cpus: int | None = None,
          cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_failures: int = 2,
          resume: Path | None = None) -> int:
    """Run (or resume) a sweep; returns the process exit code (0: every cell finished, 1: some failed or not
    finished, 128 + signal: stopped by SIGTERM/SIGINT)."""
    if resume is not None:
        out = Path(resume)
        spec = _read_spec(out)
        cells = spec["cells"]
        todo = [c for c in cells if cell_status(c)[0] in ("pending", "partial")]
        if not todo:
            failed = sum(cell_status(c)[0] == "failed" for c in cells)
            print(f"sweep {out}: all {len(cells)} cells done ({len(cells) - failed} finished, {failed} failed); "
                  f"nothing to do")
            summary(cells)
            return 1 if failed else 0
        ray = _import_ray()
        if address is not None:
            check_cluster_reachable(address)
        print(f"sweep {out}: resuming {len(todo)} of {len(cells)} cells "
              f"({sum(cell_status(c)[0] == 'finished' for c in cells)} finished are skipped)")
    else:
        missing = [f"--{n}" for n, v in (("seq", seq), ("agent", agent)) if not v]
        if missing:
            raise UsageError(f"crl sweep needs {' and '.join(missing)} (or --resume SWEEP_DIR); see 'crl list'")
        if max_failures < 0 or cpus_per_trial <= 0 or gpus_per_trial < 0 or (cpus is not None and cpus < 1):
            raise UsageError("--max-failures must be >= 0, --cpus and --cpus-per-trial positive, --gpus-per-trial >= 0")
        out = Path(out) if out is not None else Path("runs") / f"sweep__{time.strftime('%Y%m%d-%H%M%S')}"
        if (out / SWEEP_FILE).exists():
            raise UsageError(f"{out} already holds a sweep; use crl sweep --resume {out} or another --out")
        spec = {"seq": list(seq), "agent": list(agent), "seeds": parse_seeds(seeds), "preset": preset,
                "set": list(sets or []), "device": device, "backend": backend,
                "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial, "max_failures": max_failures}
        ray = _import_ray()  # before anything is written
        if address is not None:
            check_cluster_reachable(address)  # before anything is written: a retry must not find a sweep here
        cells = plan(spec, out.resolve())
        if all(c.get("error") for c in cells):  # nothing would run: a plain bad command
            raise UsageError(cells[0]["error"])
        spec["cells"] = cells
        spec["segments"] = 0
        todo = [c for c in cells if not c.get("error")]

    from ray import tune

    spec["segments"] = spec.get("segments", 0) + 1
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # trials keep our working directory; paths are absolute anyway
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT is crl's (StopRequest), as SIGTERM
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # crl writes its own TensorBoard events
    stop_file = out.resolve() / STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by a driver killed while it stopped
    (out / RAY_DIR).mkdir(parents=True, exist_ok=True)
    log = out / RAY_DIR / DRIVER_LOG
    died: dict[str, str] = {}
    with ray_output_to(log) as console:
        stop = StopRequest(stop_file, console)
        try:
            if address is None:
                start_local_ray(ray, cpus)
            else:
                try:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="error")
                except (ConnectionError, ValueError, RuntimeError) as e:
                    raise UsageError(f"cannot reach a Ray cluster at --address {address}: "
                                     f"{str(e).strip().splitlines()[0]} (details in {log})") from None
            # written once Ray runs: a command that failed to start it leaves no sweep.json to block its retry
            atomic_write_text(out / SWEEP_FILE, json.dumps(spec, indent=2))
            if spec["segments"] == 1:
                for c in cells:
                    if c.get("error"):
                        console.line(f"{c['name']}: FAILED (bad config): {c['error']}")
                console.line(f"sweep {out}: {len(todo)} cells to run" + (
                    f" ({len(cells) - len(todo)} with a bad config reported failed)" if len(todo) < len(cells) else ""))
            progress = _progress_callback(todo, stop, console)
            trainable = tune.with_resources(run_cell, {"cpu": spec["cpus_per_trial"], "gpu": spec["gpus_per_trial"]})
            tuner = tune.Tuner(
                trainable,
                param_space={"cell": tune.grid_search(todo), "stop_file": str(stop_file)},
                tune_config=tune.TuneConfig(trial_name_creator=lambda t: t.config["cell"]["name"],
                                            trial_dirname_creator=lambda t: t.config["cell"]["name"]),
                run_config=tune.RunConfig(
                    name=f"tune{spec['segments']}", storage_path=str((out / RAY_DIR).resolve()),
                    failure_config=tune.FailureConfig(max_failures=spec["max_failures"]),
                    callbacks=[progress], stop=_stopper(stop, progress), verbose=0,
                ),
            )
            with stop.installed():
                grid = tuner.fit()
            died = {r.config["cell"]["name"]: str(r.error).strip().splitlines()[-1][:200]
                    for r in grid if r.error is not None and r.config}
        except KeyboardInterrupt:  # a second signal: stop at once
            if stop.signum is None:
                stop.signum = signal.SIGINT
        finally:
            ray.shutdown()
    stop_file.unlink(missing_ok=True)
    cells = spec["cells"]
    for c in todo:  # a trial that died out of retries: kept in sweep.json for the summary, crl report and --resume
        c.pop("died", None)
    for c in cells:
        if c["name"] in died and cell_status(c)[0] in ("partial", "pending"):
            c["died"] = died[c["name"]]
    atomic_write_text(out / SWEEP_FILE, json.dumps(spec, indent=2))
    print(f"sweep {out}:")
    failed = summary(cells)
    finished = sum(cell_status(c)[0] == "finished" for c in cells)
    left = len(cells) - finished - failed
    print(f"{finished} of {len(cells)} cells finished" + (f", {failed} failed" if failed else "")
          + (f", {left} not finished (crl sweep --resume {out} continues them)" if left else "")
          + f"; report: crl report {out}; tensorboard --logdir {out}")
    if stop.signum is not None:
        print(f"stopped by {signal.Signals(stop.signum).name}; continue with: crl sweep --resume {out}")
        return 128 + int(stop.signum)
    return 1 if failed or left else 0
