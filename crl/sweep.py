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

Ray is an optional extra (``pip install -e ".[sweep]"``); Tune's working-directory change is turned off
(``RAY_CHDIR_TO_TRIAL_DIR=0``) and every path handed to a trial is absolute.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from crl.core import UsageError
from crl.fileio import atomic_write_text
from crl.runlock import wait_while_held_elsewhere

SWEEP_FILE = "sweep.json"
ERROR_FILE = "error.txt"
RAY_DIR = ".ray"
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
    if (run_dir / "config.yaml").exists():
        return "partial", ""
    return "pending", ""


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
    total = None
    wait_while_held_elsewhere(run_dir)  # a retry on another node: the lost node's lock goes stale first

    def on_eval(state, rows) -> None:
        scores = [r["score"] for r in rows]
        tune.report({"step": state.global_step, "task": state.task, "evaluations": state.eval_id,
                     "avg_score": sum(scores) / len(scores), "total_steps": total})

    try:
        if (run_dir / "config.yaml").exists():  # a retry, or a sweep resumed: continue from the last checkpoint
            cfg = loop.load_run_config(run_dir)
            total = cfg.train.steps_per_task * _num_tasks(cfg.seq)
            _, results = loop.resume(run_dir, quiet=True, on_eval=on_eval)
        else:
            cfg = config_from_dict(cell["config"])
            total = cfg.train.steps_per_task * _num_tasks(cfg.seq)
            _, results = loop.train(cfg, run_dir, quiet=True, on_eval=on_eval)
    except UsageError as e:  # bad input fails the same way every time: record it, no retry
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / ERROR_FILE, f"{e}\n")
        tune.report({"step": -1, "status": "failed", "error": str(e)})
        return
    m = results.get("metrics", {})
    tune.report({"step": results["steps"], "status": "finished", "total_steps": total,
                 "average_performance": m.get("average_performance")})


def _num_tasks(seq: str) -> int:
    from crl.envs import make_sequence

    return len(make_sequence(seq))


# --------------------------------------------------------------------------------- the driver


def _progress_callback(cells: list[dict[str, Any]], stream=sys.stdout):
    from ray import tune

    class Progress(tune.Callback):
        """One line per event over the whole grid: ``[done/total, running] cell: what happened``."""

        def __init__(self):
            self.state = {c["name"]: "pending" for c in cells}
            self.total = len(cells)
            self.started = time.time()

        def _line(self, name: str, text: str) -> None:
            done = sum(s in ("finished", "failed") for s in self.state.values())
            running = sum(s == "running" for s in self.state.values())
            elapsed = time.time() - self.started
            print(f"[{elapsed:6.0f}s] {done}/{self.total} done, {running} running | {name}: {text}",
                  file=stream, flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            name = trial.config["cell"]["name"]
            self.state[name] = "running"
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


def _read_spec(out: Path) -> dict[str, Any]:
    path = Path(out) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{out} is not a crl sweep dir (no {SWEEP_FILE})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is unreadable ({type(e).__name__})") from None


def summary(cells: list[dict[str, Any]], stream=sys.stdout, died: dict[str, str] | None = None) -> int:
    """Print every cell's status (``died``: cells whose trial died with no retries left); returns how many failed."""
    failed = 0
    for cell in cells:
        status, detail = cell_status(cell)
        if status == "partial" and died and cell["name"] in died:
            status, detail = "failed", f"trial died with no retries left ({died[cell['name']]}); crl sweep --resume continues it"
        failed += status == "failed"
        print(f"  {cell['name']:<40} {status}{': ' + detail if detail else ''}", file=stream)
    return failed


def sweep(*, seq: list[str] | None = None, agent: list[str] | None = None, seeds: str = "0",
          preset: str | None = None, sets: list[str] | None = None, device: str = "auto", backend: str = "auto",
          out: Path | None = None, address: str | None = None, cpus: int | None = None,
          cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_failures: int = 2,
          resume: Path | None = None) -> int:
    """Run (or resume) a sweep; returns the process exit code (0: every cell finished, 1: some failed)."""
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
        _import_ray()  # before anything is written
        cells = plan(spec, out.resolve())
        if all(c.get("error") for c in cells):  # nothing would run: a plain bad command
            raise UsageError(cells[0]["error"])
        out.mkdir(parents=True, exist_ok=True)
        spec["cells"] = cells
        spec["segments"] = 0
        atomic_write_text(out / SWEEP_FILE, json.dumps(spec, indent=2))
        for c in cells:
            if c.get("error"):
                print(f"{c['name']}: FAILED (bad config): {c['error']}")
        todo = [c for c in cells if not c.get("error")]
        print(f"sweep {out}: {len(todo)} cells to run"
              + (f" ({len(cells) - len(todo)} with a bad config reported failed)" if len(todo) < len(cells) else ""))

    ray = _import_ray()
    from ray import tune

    spec["segments"] = spec.get("segments", 0) + 1
    atomic_write_text(out / SWEEP_FILE, json.dumps(spec, indent=2))
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # trials keep our working directory; paths are absolute anyway
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # crl writes its own TensorBoard events
    if address is None:
        start_local_ray(ray, cpus)
    else:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="error")
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UsageError(f"cannot reach a Ray cluster at --address {address}: {e}") from None
    try:
        trainable = tune.with_resources(run_cell, {"cpu": spec["cpus_per_trial"], "gpu": spec["gpus_per_trial"]})
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(trial_name_creator=lambda t: t.config["cell"]["name"],
                                        trial_dirname_creator=lambda t: t.config["cell"]["name"]),
            run_config=tune.RunConfig(
                name=f"tune{spec['segments']}", storage_path=str((out / RAY_DIR).resolve()),
                failure_config=tune.FailureConfig(max_failures=spec["max_failures"]),
                callbacks=[_progress_callback(todo)], verbose=0,
            ),
        )
        grid = tuner.fit()
        died = {r.config["cell"]["name"]: str(r.error).strip().splitlines()[-1][:200]
                for r in grid if r.error is not None and r.config}
    finally:
        ray.shutdown()
    cells = spec["cells"]
    print(f"sweep {out}:")
    failed = summary(cells, died=died)
    finished = sum(cell_status(c)[0] == "finished" for c in cells)
    left = len(cells) - finished - failed
    print(f"{finished} of {len(cells)} cells finished" + (f", {failed} failed" if failed else "")
          + (f", {left} not finished (crl sweep --resume {out} continues them)" if left else "")
          + f"; report: crl report {out}; tensorboard --logdir {out}")
    return 1 if failed or left else 0
