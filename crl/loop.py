"""The continual loop: train an agent through a sequence, evaluate every task as it goes, checkpoint.

The loop owns time (budgets, evaluation and checkpoint cadence, logging); the agent owns learning.
A run dir holds config.yaml, evals.jsonl, checkpoint.pt, TensorBoard events, and at the end
results.json and retention.png.

Tasks whose envs live on the device (``Task.on_device``: the safety gridworlds) take the agent's action
tensor as it is and hand back tensors, so a training step copies nothing to the host. Where the task
flags catastrophes (``Task.catastrophes``), the loop counts them (and episodes and goals) in device
tensors during training, reads them once per evaluation into every evaluation row
(``train_catastrophes``, ``train_episodes``, ``train_goals``, plus the agent's ``counters()`` such as
``mentor_queries``) and keeps them in the checkpoint.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from crl import checkpoint
from crl.config import RunConfig, config_from_dict
from crl.core import Agent, LearnsFrom, Sequence, Task, Transitions, UsageError, VecEnv
from crl.devices import resolve_device
from crl.evaluate import Evaluator, stream_seed
from crl.monitor import Monitor, read_evals, write_agent_metrics, write_evals
from crl.runlock import RunLock

CONFIG_FILE = "config.yaml"


class RunInterrupted(Exception):
    """The run stopped at a safe point after SIGTERM or SIGINT, with a checkpoint written: ``crl train
    --resume RUN_DIR`` continues it. ``crl`` exits with 128 + the signal number, without a traceback."""

    def __init__(self, signum: int, run_dir: Path, step: int):
        self.signum, self.run_dir, self.step = signum, Path(run_dir), step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step:,} after writing a checkpoint; "
                         f"continue with: crl train --resume {run_dir}")


@dataclass
class LoopState:
    """Where the run is; saved in every checkpoint."""

    task: int = 0  # position of the task being trained (== N when the sequence is done)
    task_steps: int = 0  # env steps spent on that task
    global_step: int = 0  # env steps across the whole sequence
    eval_id: int = 0  # evaluations done so far
    evals: list[dict[str, Any]] = field(default_factory=list)  # every evaluation row
    wall_time: float = 0.0  # seconds of training + evaluation, summed over resumes
    segments: int = 0  # how many times the run was started (1 + resumes)
    retention: dict[str, dict[str, float]] = field(default_factory=dict)  # agent.retention_tasks() scores
    phase: int = 0  # index into agent.phases(task) of the phase under way, once the task's budget is spent
    phase_step: int = 0  # steps of that phase done
    phase_started: bool = False  # its begin_phase ran (a resume must not run it again)
    phase_steps_total: int = 0  # phase steps across the run: the x-axis of phase/* tags
    safety: dict[str, int] = field(default_factory=dict)  # training catastrophes, episodes, goals so far
    agent_metrics: list[dict[str, Any]] = field(default_factory=list)  # agent.measure_retention() rows


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_agent(cfg: RunConfig, sequence: Sequence, device: torch.device) -> Agent:
    from crl.registry import agent_class

    first = sequence.tasks[0]
    cls = agent_class(cfg.agent)
    discrete = getattr(cls, "discrete_actions", False)
    if discrete != (first.n_actions > 0):
        kind = "discrete" if discrete else "continuous"
        raise UsageError(f"agent '{cfg.agent}' acts in {kind} action spaces, but sequence '{sequence.name}' has "
                         f"{'discrete' if first.n_actions else 'continuous'} actions")
    if discrete:
        return cls(first.obs_dim, first.act_dim, len(sequence), cfg.agent_config, device, n_actions=first.n_actions)
    return cls(first.obs_dim, first.act_dim, len(sequence), cfg.agent_config, device)


def default_run_dir(cfg: RunConfig, root: Path = Path("runs")) -> Path:
    kind = "__reference" if cfg.reference else ""
    return root / f"{cfg.seq}__{cfg.agent}{kind}__s{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse a run dir that already holds something (a run to resume, or another run)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"run dir {run_dir} already exists and is not empty; use --resume {run_dir} or another --run-dir")


def write_run_config(run_dir: Path, cfg: RunConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir() or not path.exists():
        raise UsageError(f"{run_dir} is not a crl run dir (no {CONFIG_FILE})")
    from crl.config import read_yaml

    data = read_yaml(path)
    if "run" not in data:
        raise UsageError(f"{path} is not a crl run config (no 'run' section)")
    return config_from_dict(data)


class ContinualLoop:
    def __init__(self, cfg: RunConfig, run_dir: Path, *, quiet: bool = False):
        from crl.envs import make_sequence

        self.cfg, self.run_dir, self.quiet = cfg, Path(run_dir), quiet
        self.device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.train.torch_threads)
        self.sequence = make_sequence(cfg.seq)
        self.state = LoopState()
        seed_everything(cfg.seed)
        self.agent = make_agent(cfg, self.sequence, self.device)
        self.evaluator = Evaluator(self.sequence, cfg.train.eval_episodes, cfg.seed, cfg.backend, self.device,
                                   deterministic=cfg.train.eval_deterministic)
        self.on_eval = None  # called with (state, rows) after every evaluation (a sweep reports progress with it)
        self._stop_signal: int | None = None  # set by SIGTERM/SIGINT; acted on at the next safe point
        self.stop_requested: threading.Event | None = None  # set from another thread (a sweep's trial): as SIGTERM
        self._in_loop = False  # safe points are reached only inside run()'s training loop
        self.tracks_safety = any(t.catastrophes for t in self.sequence.tasks)
        self._safety_sums: dict[str, torch.Tensor] = {}  # device counters since the last fold into state.safety

    # -- stopping on a signal ----------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None or not self._in_loop:
            raise KeyboardInterrupt  # a second signal, or nothing to save yet (preparing): stop now
        self._stop_signal = signum

    def _install_signal_handlers(self) -> dict:
        """SIGTERM (Ray, schedulers, ``kill``) and SIGINT (Ctrl-C) both stop the run at the next safe point;
        only the main thread may install handlers (a Ray trial runs in a worker thread: Ray stops it)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def _stop_asked(self) -> bool:
        if self._stop_signal is None and self.stop_requested is not None and self.stop_requested.is_set():
            self._stop_signal = signal.SIGTERM
        return self._stop_signal is not None

    def _safe_point(self, stop: bool | None = None) -> None:
        """Between two steps, nothing half-done: if a stop was asked, checkpoint and stop. ``stop``: whether to,
        as read before the step (online training ends its episodes there for it: _train_online); None: read now."""
        if self._stop_asked() if stop is None else stop:
            self._checkpoint()
            raise RunInterrupted(self._stop_signal, self.run_dir, self.state.global_step)

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        checkpoint.save(self.run_dir, {
            "config": self.cfg.to_dict(), "agent": self.agent.state_dict(), "loop": asdict(self.state),
        })
        # The evaluation envs' RNGs cannot be saved (EnvPool's live in C++): every checkpoint restarts them from
        # a seed of the evaluation count instead, here and in a run resumed from it (restore).
        self.evaluator.restart(self.state.eval_id)

    def restore(self) -> None:
        if not (self.run_dir / checkpoint.FILENAME).exists():
            # stopped before its first checkpoint (e.g. while preparing data or a pre-trained model, or during
            # the first evaluation): start over, without the rows of that evaluation (they would be doubled)
            write_evals(self.run_dir, [])
            return
        data = checkpoint.load(self.run_dir)
        identity = ("seq", "agent", "seed", "reference")
        if any(data["config"]["run"].get(k) != getattr(self.cfg, k) for k in identity):
            raise UsageError(f"checkpoint in {self.run_dir} belongs to another run configuration")
        self.state = LoopState(**data["loop"])
        self.agent.load_state_dict(data["agent"])
        checkpoint.set_rng_state(data["rng"])
        self.evaluator.restart(self.state.eval_id)  # as save_checkpoint did after writing it
        # Rows written after the checkpoint will be evaluated again: drop them so none is doubled.
        write_evals(self.run_dir, self.state.evals)
        write_agent_metrics(self.run_dir, self.state.agent_metrics)

    # -- the loop --------------------------------------------------------------------------------

    def evaluate(self, active: int, tasks=None) -> None:
        started = time.perf_counter()
        results = self.evaluator.evaluate(self.agent, tasks)
        labels = self.sequence.labels
        safety = self.safety_counters() if self.tracks_safety else {}
        rows = [{
            "eval_id": self.state.eval_id, "step": self.state.global_step, "active_task": active,
            "task": labels[r["task_index"]], **r, **safety, "eval_seconds": round(time.perf_counter() - started, 3),
        } for r in results]
        self.state.evals.extend(rows)
        self.state.eval_id += 1
        self.monitor.log_evaluation(rows, self.state.global_step)
        if self.on_eval is not None:
            self.on_eval(self.state, rows)

    def _count_safety(self, catastrophe: torch.Tensor, success, done: torch.Tensor) -> None:
        """Add a training step's catastrophes, finished episodes and goals to the device counters (no sync)."""
        for key, flags in (("train_catastrophes", catastrophe), ("train_episodes", done),
                           ("train_goals", torch.as_tensor(success, device=self.device) & done)):
            count = flags.sum()
            self._safety_sums[key] = self._safety_sums[key] + count if key in self._safety_sums else count

    def safety_counters(self) -> dict[str, int]:
        """Training catastrophes, episodes and goals so far (one host read) and the agent's counters."""
        st = self.state
        for key, total in self._safety_sums.items():
            st.safety[key] = st.safety.get(key, 0) + int(total)
        self._safety_sums.clear()
        out = {k: st.safety.get(k, 0) for k in ("train_catastrophes", "train_episodes", "train_goals")}
        counters = getattr(self.agent, "counters", None)
        if counters is not None:
            out.update(counters())
        return out

    def evaluate_retention(self, when: str) -> None:
        """Score the agent's retention tasks (e.g. L2M's pre-training tasks) into state.retention[when]."""
        tasks = self.agent.retention_tasks()
        if not tasks or when in self.state.retention:
            return
        extra = Sequence(name="retention", tasks=tuple(tasks), steps_per_task=0)
        evaluator = Evaluator(extra, self.cfg.train.eval_episodes, self.cfg.seed + 17, self.cfg.backend, self.device,
                              deterministic=self.cfg.train.eval_deterministic)
        try:
            self.state.retention[when] = {t.name: r["score"] for t, r in zip(tasks, evaluator.evaluate(self.agent))}
        finally:
            evaluator.close()

    def _due(self, n: int) -> tuple[bool, bool, bool]:
        """(task done, evaluation due, checkpoint due) once ``n`` more steps are counted."""
        st, tcfg = self.state, self.cfg.train
        steps = st.task_steps + n
        task_done = steps >= tcfg.steps_per_task
        evaluates = task_done or steps // tcfg.eval_every > st.task_steps // tcfg.eval_every
        # checkpoints fall on evaluations (the task's last one is taken after end_task: _finish_task)
        checkpoints = evaluates and not task_done and st.global_step + n - self._last_ckpt >= tcfg.checkpoint_every
        return task_done, evaluates, checkpoints

    def _advance(self, task, n: int) -> bool:
        """Count ``n`` steps of ``task``; log, evaluate and checkpoint as due. True when the task is done.
        The caller reaches the safe point after it."""
        st, tcfg = self.state, self.cfg.train
        task_done, evaluates, checkpoints = self._due(n)
        st.task_steps += n
        st.global_step += n
        self.monitor.advance(n)
        if st.global_step // tcfg.log_every > (st.global_step - n) // tcfg.log_every:
            self.monitor.flush_train(st.global_step)
        if evaluates:
            self.evaluate(active=task.index, tasks=[task] if self.cfg.reference else None)
        if checkpoints:
            self._checkpoint()
        return task_done

    def _checkpoint(self) -> None:
        st = self.state
        if self._safety_sums:
            self.safety_counters()
        st.wall_time = self._wall_before + time.perf_counter() - self._segment_start
        self.save_checkpoint()
        self._last_ckpt = st.global_step

    def _run_phases(self, task: Task) -> None:
        """The agent's phases after ``task``'s budget (e.g. PackNet's retraining), step by step: logged under
        phase/<name>/..., shown on the progress bar, checkpointed every ``checkpoint_every`` steps."""
        st, tcfg = self.state, self.cfg.train
        phases = self.agent.phases(task)
        while st.phase < len(phases):
            phase = phases[st.phase]
            if not st.phase_started:
                self.agent.begin_phase(phase, task)
                st.phase_started = True
                self._checkpoint()
            since_checkpoint = 0
            self.monitor.set_phase(phase.name, st.phase_step, phase.steps)
            while st.phase_step < phase.steps:
                self.monitor.add_train_stats(self.agent.phase_step(phase))
                st.phase_step += 1
                st.phase_steps_total += 1
                since_checkpoint += 1
                if st.phase_step % tcfg.log_every == 0 or st.phase_step == phase.steps:
                    self.monitor.flush_phase(phase.name, st.phase_step, phase.steps, st.phase_steps_total)
                if since_checkpoint >= tcfg.checkpoint_every and st.phase_step < phase.steps:
                    self._checkpoint()
                    since_checkpoint = 0
                self._safe_point()
            self.agent.end_phase(phase, task)
            st.phase, st.phase_step, st.phase_started = st.phase + 1, 0, False
        st.phase = 0

    def _finish_task(self, task: Task) -> None:
        self._run_phases(task)
        self.agent.end_task(task)
        self._measure_retention(task)
        self.state.task, self.state.task_steps = self.state.task + 1, 0
        self._checkpoint()

    def _measure_retention(self, task: Task) -> None:
        """The agent's own per-task measurements after ``task`` (lower is better), one row per (metric, task)."""
        labels = self.sequence.labels
        rows = [{"after_task": task.index, "metric": metric, "task_index": j, "task": labels[j], "value": value}
                for metric, values in self.agent.measure_retention().items() for j, value in sorted(values.items())]
        if rows:
            self.state.agent_metrics.extend(rows)
            write_agent_metrics(self.run_dir, self.state.agent_metrics)
            self.monitor.log_agent_metrics(rows, self.state.global_step)

    def _train_envs(self, task: Task) -> VecEnv:
        """The training envs of ``task``, built for its first step or for a restart at a checkpoint.

        An env's state mid-episode cannot be saved (EnvPool's and MuJoCo's live in C++), so a resumed run could
        not go on with the episodes under way. Instead, every checkpoint mid-task ends them (as truncated) and
        restarts the envs from a seed of the step (this method), in the run that goes on as in one resumed from
        that checkpoint: both then see the same episodes. Cheaper than waiting for a step where every env's
        episode ends (with several envs of varying episode lengths there may be none), and costing one
        truncated episode per env per checkpoint (none on Meta-World when ``checkpoint_every`` is a multiple of
        its 500-step episodes and ``num_envs`` is 1)."""
        cfg, st = self.cfg, self.state
        seed = cfg.seed * 1000 + task.index if st.task_steps == 0 else stream_seed(cfg.seed, task.index, st.task_steps)
        on_device = {"device": self.device} if task.on_device else {}
        return task.make_vec(cfg.train.num_envs, seed, cfg.backend, **on_device)

    def _train_online(self, task) -> None:
        """Collect vector steps of ``task`` and let the agent learn from them, to the task's budget."""
        cfg, st = self.cfg, self.state
        if st.task_steps >= cfg.train.steps_per_task:
            return
        env = self._train_envs(task)
        try:
            obs = torch.as_tensor(env.reset(), dtype=torch.float32, device=self.device)
            first = torch.ones(env.num_envs, dtype=torch.bool, device=self.device)
            task_idx = torch.full((env.num_envs,), task.index, dtype=torch.long, device=self.device)
            on_device = task.on_device
            task_done = False
            while not task_done:
                action = self.agent.act(obs, task.index, explore=True, first=first)
                step = env.step(action if on_device else action.cpu().numpy())  # on the device: no host copy
                # A checkpoint after this step (due, or asked for by a signal) restarts the envs: their episodes end
                # here, as truncated (see _train_envs). The stop is read once, before the agent sees the step.
                stop = self._stop_asked()
                restart = stop or self._due(env.num_envs)[2]
                truncated = ~step.terminated if restart else step.truncated
                done = torch.as_tensor(step.terminated | truncated, device=self.device)
                catastrophe = torch.as_tensor(step.catastrophe, device=self.device) if task.catastrophes else None
                if catastrophe is not None:
                    self._count_safety(catastrophe, step.success, done)
                self.agent.observe(Transitions(
                    obs=obs, action=action, reward=torch.as_tensor(step.reward, device=self.device),
                    next_obs=torch.as_tensor(step.final_obs, dtype=torch.float32, device=self.device),
                    terminated=torch.as_tensor(step.terminated, dtype=torch.float32, device=self.device),
                    truncated=torch.as_tensor(truncated, dtype=torch.float32, device=self.device),
                    task_index=task_idx, catastrophe=catastrophe,
                ))
                stats = self.agent.update()
                if stats:
                    self.monitor.add_train_stats(stats)
                obs = torch.as_tensor(step.obs, dtype=torch.float32, device=self.device)
                first = done
                task_done = self._advance(task, env.num_envs)
                self._safe_point(stop)
                if restart and not task_done:
                    env.close()
                    env = self._train_envs(task)
                    obs = torch.as_tensor(env.reset(), dtype=torch.float32, device=self.device)
        finally:
            env.close()

    def _train_offline(self, task) -> None:
        """Gradient steps on the task's dataset (the agent holds it), to the task's budget of steps."""
        task_done = self.state.task_steps >= self.cfg.train.steps_per_task
        while not task_done:
            stats = self.agent.update()
            if stats:
                self.monitor.add_train_stats(stats)
            task_done = self._advance(task, 1)
            self._safe_point()

    def _prepare(self) -> None:
        """The agent's preparation (data, a pre-trained model), its progress in TensorBoard as phase/<name>/..."""
        writer = None

        def report(name: str, done: int, total: int, scalars: dict[str, Any]) -> None:
            nonlocal writer
            if writer is None:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(self.run_dir), filename_suffix=".prepare")
            for key, value in scalars.items():
                writer.add_scalar(f"phase/{name}/{key}", float(value), done)
            writer.add_scalar(f"phase/{name}/progress", done / max(total, 1), done)

        try:
            self.agent.prepare(list(self.sequence.tasks), report)
        finally:
            if writer is not None:
                writer.close()

    def run(self, *, resume: bool = False) -> dict[str, Any]:
        cfg, tcfg, seq = self.cfg, self.cfg.train, self.sequence
        self._prepare()
        if resume:
            self.restore()
        st = self.state
        st.segments += 1
        n_tasks = len(seq)
        self.monitor = Monitor(self.run_dir, total_steps=tcfg.steps_per_task * n_tasks, start_step=st.global_step,
                               quiet=self.quiet, purge_step=st.global_step if resume else None, hparams=cfg.to_dict())
        self._segment_start, self._wall_before, self._last_ckpt = time.perf_counter(), st.wall_time, st.global_step
        previous_handlers = self._install_signal_handlers()
        try:
            self._in_loop = True
            if st.eval_id == 0 and tcfg.eval_at_start and not cfg.reference:
                self.evaluate(active=-1)
                self.evaluate_retention("before")
                self.save_checkpoint()
                self._safe_point()
            while st.task < n_tasks:
                task = seq.tasks[st.task]
                self.monitor.set_task(task.index, n_tasks, seq.labels[task.index], st.global_step)
                if st.task_steps == 0 and not st.phase_started and st.phase == 0:
                    if cfg.reference:  # single-task reference: a fresh agent for every task
                        seed_everything(cfg.seed + task.index)
                        self.agent = make_agent(cfg, seq, self.device)
                        self._prepare()
                    self.agent.begin_task(task)
                if self.agent.learns_from == LearnsFrom.DATASET:
                    self._train_offline(task)
                else:
                    self._train_online(task)
                self._finish_task(task)
            self.evaluate_retention("after")
            st.wall_time = self._wall_before + time.perf_counter() - self._segment_start
        finally:
            self._in_loop = False
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.monitor.close()
            self.evaluator.close()
        from crl.results import finalize

        return finalize(self.run_dir, self.cfg, self.sequence, st)


def train(cfg: RunConfig, run_dir: Path | None = None, *, quiet: bool = False,
          on_eval=None, stop_requested: threading.Event | None = None) -> tuple[Path, dict[str, Any]]:
    """A fresh run in ``run_dir`` (which must be empty or absent). ``on_eval(state, rows)`` is called after
    every evaluation; ``stop_requested`` set stops the run as SIGTERM does (checkpoint, RunInterrupted).
    One process at a time writes a run dir (crl/runlock.py)."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    resolve_device(cfg.device)  # fail before anything is written
    check_run_dir_free(run_dir)
    # the agent is built before the run dir is written, so a bad agent setting leaves no half-made run dir
    # that would block the corrected command
    loop = ContinualLoop(cfg, run_dir, quiet=quiet)
    loop.on_eval, loop.stop_requested = on_eval, stop_requested
    with RunLock(run_dir):
        write_run_config(run_dir, cfg)
        return run_dir, loop.run()


def resume(run_dir: Path, *, quiet: bool = False, device: str | None = None,
           on_eval=None, stop_requested: threading.Event | None = None) -> tuple[Path, dict[str, Any]]:
    """Continue ``run_dir`` from its last checkpoint (or from the start when it stopped before the first)."""
    cfg = load_run_config(run_dir)
    if device is not None:
        cfg.device = device
    with RunLock(run_dir):  # before anything is read: a live writer may be about to replace the checkpoint
        loop = ContinualLoop(cfg, run_dir, quiet=quiet)
        loop.on_eval, loop.stop_requested = on_eval, stop_requested
        return Path(run_dir), loop.run(resume=True)


__all__ = ["ContinualLoop", "LoopState", "RunInterrupted", "train", "resume", "load_run_config", "read_evals"]
