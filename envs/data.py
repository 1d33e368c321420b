"""Offline Meta-World datasets from the scripted expert policies, for offline continual agents.

Nothing is downloaded: every dataset is generated locally by running Meta-World's scripted expert
(``crl.envs.metaworld.expert_policy``) with Gaussian action noise in a VecEnv (200-step episodes,
fresh object/goal positions at every reset, goal visible: Continual World's conventions).

On-disk layout, one directory per task::

    <data_dir>/metaworld/<task>/
        manifest.json          format, version, task, counts, summary statistics, generator settings
        obs.npy                (T, 39) float32   observation the action was taken in
        action.npy             (T, 4)  float32   action actually executed (noisy, clipped to [-1, 1])
        expert_action.npy      (T, 4)  float32   the scripted expert's action in that state (clipped, no noise)
        reward.npy             (T,)    float32
        success.npy            (T,)    bool      success flag at that step
        returns_to_go.npy      (T,)    float32   undiscounted, within the episode (inclusive of step t)
        episode_starts.npy     (E+1,)  int64     offsets; episode i is [starts[i], starts[i+1])
        noise.npy              (E,)    float32   action-noise sigma of each episode
        episode_success.npy    (E,)    bool      success flag at any step
        episode_return.npy     (E,)    float32
        final_obs.npy          (E, 39) float32   true last observation (after the last action)

Plain ``.npy`` files so that ``np.load(mmap_mode="r")`` memory-maps them: a loader touches only
the pages it samples. A dataset is written into a temp directory beside its final place and moved
there with ``os.replace``, so a killed collection never leaves a half-written dataset behind.

Public API: ``default_data_dir``, ``resolve_tasks``, ``CollectConfig``, ``collect_task``,
``collect``, ``TaskDataset``, ``load_task``, ``list_datasets``,
``add_data_commands`` / ``run_data_command`` (the ``crl data`` CLI).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crl.core import UsageError
from crl.fileio import write_synced

from .metaworld import (ACT_DIM, CW10, ENVPOOL_MISMATCHED, EPISODE_LEN, OBS_DIM, V3_TASK_NAMES, check_task_name,
                        task_backend)
from .vector import resolve_backend

FORMAT_NAME = "crl-metaworld-offline"
FORMAT_VERSION = 2  # 2: expert_action.npy beside the executed action (issue 13)
DOMAIN_DIR = "metaworld"
MANIFEST = "manifest.json"

TASK_SETS: dict[str, tuple[str, ...]] = {
    "mt40": tuple(t for t in V3_TASK_NAMES if t not in CW10),
    "cw10": CW10,
    "mt50": V3_TASK_NAMES,
}

# name -> (dtype, trailing shape, "transition" | "episode" | "offsets")
ARRAYS: dict[str, tuple[np.dtype, tuple[int, ...], str]] = {
    "obs": (np.dtype(np.float32), (OBS_DIM,), "transition"),
    "action": (np.dtype(np.float32), (ACT_DIM,), "transition"),
    "expert_action": (np.dtype(np.float32), (ACT_DIM,), "transition"),
    "reward": (np.dtype(np.float32), (), "transition"),
    "success": (np.dtype(np.bool_), (), "transition"),
    "returns_to_go": (np.dtype(np.float32), (), "transition"),
    "episode_starts": (np.dtype(np.int64), (), "offsets"),
    "noise": (np.dtype(np.float32), (), "episode"),
    "episode_success": (np.dtype(np.bool_), (), "episode"),
    "episode_return": (np.dtype(np.float32), (), "episode"),
    "final_obs": (np.dtype(np.float32), (OBS_DIM,), "episode"),
}


# ----------------------------------------------------------------------------- paths and task sets


def default_data_dir() -> Path:
    """``$CRL_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/crl/data`` or ``~/.cache/crl/data``."""
    if os.environ.get("CRL_DATA_DIR"):
        return Path(os.environ["CRL_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "crl" / "data"


def task_dir(task: str, data_dir: str | Path | None = None) -> Path:
    """Where the dataset of ``task`` lives: ``<data_dir>/metaworld/<task>/``."""
    return Path(data_dir if data_dir is not None else default_data_dir()) / DOMAIN_DIR / task


def resolve_tasks(spec: str) -> list[str]:
    """"mt40" (the 40 v3 tasks outside CW10, in V3_TASK_NAMES order), "cw10", "mt50", or "a-v3,b-v3"."""
    spec = spec.strip()
    if spec.lower() in TASK_SETS:
        return list(TASK_SETS[spec.lower()])
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise UsageError(f"no tasks given; use one of {', '.join(TASK_SETS)} or comma-separated task names")
    unknown = [name for name in names if name not in V3_TASK_NAMES]
    if unknown:
        raise UsageError(
            f"unknown task(s) {', '.join(repr(u) for u in unknown)}; use one of the sets "
            f"{', '.join(TASK_SETS)} or comma-separated Meta-World v3 task names (e.g. push-v3)"
        )
    return list(dict.fromkeys(names))  # duplicates dropped, order kept


# ----------------------------------------------------------------------------- collection


@dataclass
class CollectConfig:
    """How expert data is generated.

    Episode ``i`` of a task gets noise ``noise_levels[i % len(noise_levels)]`` (the mix is exact
    whenever ``episodes`` is a multiple of the number of levels). Noise is N(0, sigma^2) per action
    dim, added to the expert's action, then clipped to [-1, 1]; the clipped action is executed and
    recorded.
    """

    episodes: int = 50
    noise_levels: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
    seed: int = 0
    num_envs: int = 10
    backend: str = "auto"

    def __post_init__(self) -> None:
        try:
            self.noise_levels = tuple(float(s) for s in self.noise_levels)
        except (TypeError, ValueError):
            raise UsageError(f"noise levels must be numbers, got {self.noise_levels!r}") from None
        if not self.noise_levels or any(not math.isfinite(s) or s < 0 for s in self.noise_levels):
            raise UsageError(f"noise levels must be finite and >= 0, got {self.noise_levels}")
        if not isinstance(self.episodes, int) or self.episodes < 1:
            raise UsageError(f"episodes must be a positive integer, got {self.episodes!r}")
        if not isinstance(self.num_envs, int) or self.num_envs < 1:
            raise UsageError(f"num_envs must be a positive integer, got {self.num_envs!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed must be a non-negative integer, got {self.seed!r}")
        resolve_backend(self.backend)  # UsageError for unknown names

    def noise_of(self, episode: int) -> float:
        return self.noise_levels[episode % len(self.noise_levels)]


def collection_backend(task: str, backend: str) -> str:
    """The backend ``collect_task`` uses for ``task`` (``crl.envs.metaworld.task_backend``)."""
    return task_backend(task, backend)


def _env_seed(task: str, seed: int) -> int:
    """The VecEnv seed for (task, seed): distinct per task and per seed, and far apart, so that env
    k of seed s never replays env 0 of seed s + k (make_vec seeds env k with ``seed + k``)."""
    ss = np.random.SeedSequence([seed, zlib.crc32(task.encode())])
    return int(ss.generate_state(1)[0] % (2**30))


def _package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def _rtg(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted returns-to-go: rtg[t] = sum(rewards[t:]) (float64 sums, float32 out)."""
    return np.cumsum(rewards[::-1].astype(np.float64))[::-1].astype(np.float32)


def collect_task(
    task: str, cfg: CollectConfig | None = None, data_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """Generate ``cfg.episodes`` complete expert episodes of ``task`` and write them atomically.

    Overwrites an existing dataset of the task (``collect`` is the one that skips). Returns the
    dataset directory.
    """
    from .metaworld import expert_policy, make_vec

    cfg = cfg or CollectConfig()
    check_task_name(task)
    backend = collection_backend(task, cfg.backend)
    if backend == "envpool" and task in ENVPOOL_MISMATCHED:
        print(f"{task}: EnvPool's port of this task disagrees with Meta-World (see ENVPOOL_MISMATCHED); "
              "backend 'auto' would use gymnasium", file=sys.stderr)
    final_dir = task_dir(task, data_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)

    started = time.time()
    policy = expert_policy(task)
    env_seed = _env_seed(task, cfg.seed)
    n = min(cfg.num_envs, cfg.episodes)  # no env whose episodes would all be thrown away
    vec = make_vec(task, n, env_seed, backend)

    # Episodes are numbered in the order they start (deterministic: envs step in lockstep and
    # start their next episode on the step the previous one ends); numbers >= episodes are run
    # to keep the batch together but discarded.
    next_episode = 0
    rows = np.arange(n)
    cap = EPISODE_LEN  # per-env episode buffers grow if an episode ever runs longer
    env_episode = np.zeros(n, np.int64)
    env_sigma = np.zeros(n, np.float32)
    env_t = np.zeros(n, np.int64)  # step within the current episode
    noise = np.zeros((n, cap, ACT_DIM), np.float32)  # each episode's noise, drawn when it starts
    rec = {
        "obs": np.zeros((n, cap, OBS_DIM), np.float32),
        "action": np.zeros((n, cap, ACT_DIM), np.float32),
        "expert_action": np.zeros((n, cap, ACT_DIM), np.float32),
        "reward": np.zeros((n, cap), np.float32),
        "success": np.zeros((n, cap), bool),
    }

    def start_episode(k: int) -> None:
        nonlocal next_episode
        env_episode[k], env_sigma[k], env_t[k] = next_episode, cfg.noise_of(next_episode), 0
        # one noise stream per episode, so the data do not depend on which env ran it
        noise[k] = np.random.default_rng([cfg.seed, next_episode, 0xC0FFEE]).standard_normal((cap, ACT_DIM))
        next_episode += 1

    episodes: dict[int, dict[str, np.ndarray]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.episodes, desc=task, unit="ep", file=sys.stderr, dynamic_ncols=True, leave=True)
    try:
        with warnings.catch_warnings():
            # Some scripted policies warn once that their gains exceed the action range: expected.
            warnings.filterwarnings("ignore", message="Constant.*may be too high")
            obs = vec.reset()
            for k in range(n):
                start_episode(k)
            while len(episodes) < cfg.episodes:
                if env_t.max() >= cap:  # longer than EPISODE_LEN: grow the buffers (not for Meta-World)
                    extra = np.random.default_rng([cfg.seed, next_episode, cap]).standard_normal((n, cap, ACT_DIM))
                    noise = np.concatenate([noise, extra.astype(np.float32)], axis=1)
                    rec = {key: np.concatenate([a, np.zeros_like(a)], axis=1) for key, a in rec.items()}
                    cap *= 2
                expert = np.stack([policy(o) for o in obs])
                actions = np.clip(expert + env_sigma[:, None] * noise[rows, env_t], -1.0, 1.0).astype(np.float32)
                step = vec.step(actions)
                rec["obs"][rows, env_t] = obs
                rec["action"][rows, env_t] = actions
                rec["expert_action"][rows, env_t] = np.clip(expert, -1.0, 1.0)
                rec["reward"][rows, env_t] = step.reward
                rec["success"][rows, env_t] = step.success
                env_t += 1
                for k in np.flatnonzero(step.terminated | step.truncated):
                    if env_episode[k] < cfg.episodes:
                        length = env_t[k]
                        episodes[int(env_episode[k])] = {
                            **{key: a[k, :length].copy() for key, a in rec.items()},
                            "final_obs": np.asarray(step.final_obs[k], np.float32),
                            "noise": np.float32(env_sigma[k]),
                        }
                        if bar is not None:
                            bar.update(1)
                    start_episode(k)
                obs = step.obs
    finally:
        vec.close()
        if bar is not None:
            bar.close()

    order = [episodes[i] for i in range(cfg.episodes)]
    lengths = np.array([len(e["reward"]) for e in order], np.int64)
    arrays = {
        "obs": np.concatenate([e["obs"] for e in order]),
        "action": np.concatenate([e["action"] for e in order]),
        "expert_action": np.concatenate([e["expert_action"] for e in order]),
        "reward": np.concatenate([e["reward"] for e in order]),
        "success": np.concatenate([e["success"] for e in order]),
        "returns_to_go": np.concatenate([_rtg(e["reward"]) for e in order]),
        "episode_starts": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "noise": np.array([e["noise"] for e in order], np.float32),
        "episode_success": np.array([e["success"].any() for e in order], bool),
        "episode_return": np.array([e["reward"].astype(np.float64).sum() for e in order], np.float32),
        "final_obs": np.stack([e["final_obs"] for e in order]),
    }
    total = int(lengths.sum())
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "domain": DOMAIN_DIR,
        "task": task,
        "episodes": cfg.episodes,
        "transitions": total,
        "episode_len": EPISODE_LEN,
        "obs_dim": OBS_DIM,
        "act_dim": ACT_DIM,
        "mean_success": float(arrays["episode_success"].mean()),
        "mean_return": float(arrays["episode_return"].astype(np.float64).mean()),
        "max_return": float(arrays["episode_return"].max()),
        "success_by_noise": {
            str(s): float(arrays["episode_success"][arrays["noise"] == np.float32(s)].mean())
            for s in dict.fromkeys(cfg.noise_levels)
            if (arrays["noise"] == np.float32(s)).any()
        },
        "generator": {
            "policy": "metaworld scripted expert",
            "noise_levels": list(cfg.noise_levels),
            "noise_schedule": "episode i gets noise_levels[i % len(noise_levels)]; clip to [-1, 1] after noise",
            "seed": cfg.seed,
            "env_seed": env_seed,
            "num_envs": n,
            "backend": backend,
            "metaworld_version": _package_version("metaworld"),
            "envpool_version": _package_version("envpool") if backend == "envpool" else None,
            "crl_version": _package_version("crl"),  # not crl.__version__: no module imports the top package (test_import_graph)
        },
        "arrays": {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "collect_seconds": round(time.time() - started, 3),
    }
    _write_atomic(final_dir, arrays, manifest)
    return final_dir


def _write_atomic(final_dir: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Build the dataset in ``.<task>.tmp`` beside ``final_dir``, then ``os.replace`` it into place.

    A stale temp dir (a killed earlier run) is removed first. An existing dataset is first moved
    aside to ``.<task>.old`` (``os.replace`` cannot replace a non-empty directory), then deleted.
    """
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    old = final_dir.with_name(f".{final_dir.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        write_synced(tmp / f"{name}.npy", lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))
    write_synced(tmp / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2) + "\n"), mode="w")
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def collect(
    tasks: list[str],
    cfg: CollectConfig | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """``collect_task`` for each task, skipping tasks whose dataset already loads (unless ``overwrite``).

    A skipped dataset generated with other settings (episodes, noise levels, seed) is kept as is,
    with a note on stderr: pass ``overwrite=True`` to regenerate it.
    """
    cfg = cfg or CollectConfig()
    for task in tasks:
        check_task_name(task)
    paths = []
    for task in tasks:
        existing = None
        if not overwrite and (task_dir(task, data_dir) / MANIFEST).exists():
            try:
                existing = load_task(task, data_dir)
            except UsageError:
                existing = None  # corrupt: regenerate
        if existing is not None:
            gen = existing.manifest.get("generator", {})
            same = (
                existing.num_episodes == cfg.episodes
                and tuple(gen.get("noise_levels", ())) == cfg.noise_levels
                and gen.get("seed") == cfg.seed
            )
            if progress:
                note = "" if same else " (generated with other settings; --overwrite to regenerate)"
                print(f"{task}: dataset exists, skipped{note}", file=sys.stderr)
            paths.append(existing.path)
            continue
        paths.append(collect_task(task, cfg, data_dir, progress=progress))
    return paths


# ----------------------------------------------------------------------------- loading


@dataclass
class TaskDataset:
    """One task's dataset, its arrays memory-mapped read-only (see the module docstring for the layout)."""

    task: str
    path: Path
    manifest: dict[str, Any]
    obs: np.ndarray
    action: np.ndarray
    expert_action: np.ndarray
    reward: np.ndarray
    success: np.ndarray
    returns_to_go: np.ndarray
    episode_starts: np.ndarray
    noise: np.ndarray
    episode_success: np.ndarray
    episode_return: np.ndarray
    final_obs: np.ndarray = field(repr=False)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts) - 1

    @property
    def num_transitions(self) -> int:
        return int(self.episode_starts[-1])

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_starts)

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """The per-transition arrays of episode ``i`` (views into the memory maps)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range for {self.num_episodes} episodes")
        s, e = int(self.episode_starts[i]), int(self.episode_starts[i + 1])
        return {name: getattr(self, name)[s:e] for name, (_, _, kind) in ARRAYS.items() if kind == "transition"}


def _read_manifest(path: Path, task: str) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"corrupt dataset file {path}: {e}") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"corrupt dataset file {path}: not a JSON object")
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise UsageError(
            f"corrupt dataset file {path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}; regenerate with "
            f"'crl data collect --tasks {task} --overwrite'"
        )
    if manifest.get("task") != task:
        raise UsageError(f"corrupt dataset file {path}: holds task {manifest.get('task')!r}, expected {task!r}")
    return manifest


def load_task(task: str, data_dir: str | Path | None = None) -> TaskDataset:
    """Memory-map the dataset of ``task``; ``UsageError`` if it is missing or corrupt."""
    check_task_name(task)
    root = Path(data_dir if data_dir is not None else default_data_dir())
    directory = task_dir(task, root)
    missing = f"no dataset for task '{task}' in {root}; run 'crl data collect --tasks {task}'"
    if not (directory / MANIFEST).is_file():
        raise UsageError(missing)
    manifest = _read_manifest(directory / MANIFEST, task)

    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, trailing, _) in ARRAYS.items():
        file = directory / f"{name}.npy"
        if not file.is_file():
            raise UsageError(f"{missing} (missing file {file})")
        try:
            with open(file, "rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise ValueError("not an .npy file (bad magic)")
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # truncated, bad header, not an npy file
            raise UsageError(f"corrupt dataset file {file}: {type(e).__name__}: {e}") from None
        if array.dtype != dtype or array.shape[1:] != trailing:
            raise UsageError(
                f"corrupt dataset file {file}: dtype {array.dtype} shape {array.shape}, "
                f"expected {dtype} (N, {', '.join(map(str, trailing))})".replace(", )", ")")
            )
        arrays[name] = array

    starts = arrays["episode_starts"]
    num_episodes, num_transitions = len(starts) - 1, int(starts[-1]) if len(starts) else -1
    if (
        num_episodes < 1
        or starts[0] != 0
        or np.any(np.diff(starts) <= 0)
        or num_episodes != manifest.get("episodes")
        or num_transitions != manifest.get("transitions")
    ):
        raise UsageError(
            f"corrupt dataset file {directory / 'episode_starts.npy'}: episode offsets do not match "
            f"the manifest ({manifest.get('episodes')} episodes, {manifest.get('transitions')} transitions)"
        )
    for name, (_, _, kind) in ARRAYS.items():
        expected = {"transition": num_transitions, "episode": num_episodes, "offsets": num_episodes + 1}[kind]
        if len(arrays[name]) != expected:
            raise UsageError(
                f"corrupt dataset file {directory / (name + '.npy')}: {len(arrays[name])} rows, "
                f"expected {expected} ({kind}s)"
            )
    return TaskDataset(task=task, path=directory, manifest=manifest, **arrays)


def load_tasks(tasks: list[str], data_dir: str | Path | None = None) -> list[TaskDataset]:
    return [load_task(task, data_dir) for task in tasks]


def list_datasets(data_dir: str | Path | None = None) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """(task, manifest or None, error or None) for every task directory under ``data_dir/metaworld``."""
    root = Path(data_dir if data_dir is not None else default_data_dir()) / DOMAIN_DIR
    out = []
    if not root.is_dir():
        return out
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            out.append((directory.name, _read_manifest(directory / MANIFEST, directory.name), None))
        except UsageError as e:
            out.append((directory.name, None, str(e)))
    return out


# ----------------------------------------------------------------------------- CLI


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``crl data collect`` and ``crl data list`` to the top-level subparsers."""
    p = subparsers.add_parser("data", help="offline Meta-World datasets from the scripted experts: collect, list")
    sub = p.add_subparsers(dest="data_command", required=True)
    c = sub.add_parser("collect", help="generate expert datasets (noisy scripted policies), one directory per task")
    c.add_argument("--tasks", default="cw10", help="mt40 | cw10 | mt50 | comma-separated task names (default cw10)")
    c.add_argument(
        "--episodes", type=int, default=CollectConfig.episodes, help="episodes per task (default %(default)s)"
    )
    c.add_argument(
        "--noise",
        default=",".join(str(s) for s in CollectConfig.noise_levels),
        help="comma-separated Gaussian action-noise sigmas, used round-robin over episodes (default %(default)s)",
    )
    c.add_argument("--seed", type=int, default=CollectConfig.seed)
    c.add_argument("--num-envs", type=int, default=CollectConfig.num_envs, help="parallel envs (default %(default)s)")
    c.add_argument("--backend", default=CollectConfig.backend, help="auto | envpool | gymnasium")
    c.add_argument("--data-dir", type=Path, help="default: $CRL_DATA_DIR or ~/.cache/crl/data")
    c.add_argument("--overwrite", action="store_true", help="regenerate datasets that already exist")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    ls = sub.add_parser("list", help="the datasets in the data dir, one line each")
    ls.add_argument("--data-dir", type=Path, help="default: $CRL_DATA_DIR or ~/.cache/crl/data")


def _parse_noise(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--noise must be comma-separated numbers, got '{text}'") from None
    if not levels:
        raise UsageError("--noise needs at least one level")
    return levels


def run_data_command(args: argparse.Namespace) -> None:
    """Run a parsed ``crl data ...`` command."""
    data_dir = args.data_dir if getattr(args, "data_dir", None) is not None else default_data_dir()
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise UsageError(f"data dir {data_dir} is a file; give a directory")
    if args.data_command == "collect":
        tasks = resolve_tasks(args.tasks)
        cfg = CollectConfig(
            episodes=args.episodes,
            noise_levels=_parse_noise(args.noise),
            seed=args.seed,
            num_envs=args.num_envs,
            backend=args.backend,
        )
        quiet = getattr(args, "quiet", False)
        for path in collect(tasks, cfg, data_dir, progress=not quiet, overwrite=args.overwrite):
            if not quiet:
                m = json.loads((path / MANIFEST).read_text())
                print(_summary_line(m["task"], m))
    elif args.data_command == "list":
        entries = list_datasets(data_dir)
        if not entries:
            print(f"no datasets in {data_dir}; run 'crl data collect'")
            return
        print(f"{data_dir}:")
        for task, manifest, error in entries:
            print(_summary_line(task, manifest) if manifest is not None else f"  {task:<28} CORRUPT: {error}")
    else:
        raise UsageError(f"unknown data command {args.data_command!r}; use collect or list")


def _summary_line(task: str, m: dict[str, Any]) -> str:
    return (
        f"  {task:<28} {m.get('episodes', '?'):>6} episodes {m.get('transitions', '?'):>9} transitions  "
        f"success {m.get('mean_success', float('nan')):.2f}  return {m.get('mean_return', float('nan')):8.1f}"
    )


__all__ = [
    "CollectConfig",
    "TASK_SETS",
    "TaskDataset",
    "add_data_commands",
    "collect",
    "collect_task",
    "collection_backend",
    "default_data_dir",
    "list_datasets",
    "load_task",
    "load_tasks",
    "resolve_tasks",
    "run_data_command",
    "task_dir",
]
