"""DeepMind Control Suite (state-based) tasks for crl, on dm_control or on EnvPool's C++ port.

- ``DMCEnv``: one dm_control suite task as a plain ``gymnasium.Env``: the observation dict flattened
  in dm_control's own key order to float32, actions in [-1, 1] (mapped affinely onto the task's
  actuator range, which is not [-1, 1] for quadruped), ``action_repeat`` env steps per agent step
  with rewards summed, ``truncated`` at dm_control's 1000-env-step time limit, ``info["success"]``
  always False, ``reset(seed=...)`` that really reseeds.
- ``DMCGymnasiumVecEnv`` / ``DMCEnvPoolVecEnv``: crl ``VecEnv`` s with same-step autoreset. Both give
  the same flat layout (EnvPool's dicts carry extra keys for some domains and order fish-swim's
  differently; the dm_control keys are picked in dm_control's order) and the same reward per step
  (tests/test_dmc.py checks both step by step from a matched physics state for walker and cheetah).
- ``make_dmc_vec``, ``dmc_task`` and the continual DMC sequences (``dmc-walker``, ``dmc-quadruped``,
  ``dmc-dog``, ``dmc-cheetah``, ``dmc6``, ``dmc2``).

Task names are ``<domain>-<task>`` in dm_control's spelling ("walker-run", "ball_in_cup-catch"). All
suite tasks are available except LQR (unbounded actions, no time limit), plus
``cheetah-run_backward``: dm_control has a single cheetah task, so ``dmc-cheetah`` uses the
run-backward task of the Unsupervised RL Benchmark (Laskin et al. 2021): cheetah-run's physics,
initial states and observations, with the reward of ``-speed``.

Action repeat is part of a task's spec (default 1, the usual setting of state-based SAC/PPO): an
episode is ``1000 // action_repeat`` agent steps and its return still sums the rewards of all 1000
env steps, so ``score = return / 1000`` stays in [0, 1]. Budgets (``steps_per_task``) count agent
steps, which equal env steps at action repeat 1.

Sequence tasks of different domains are padded to the sequence's largest observation (zeros) and
action (dims the env ignores) widths, so that every Task of one sequence has the same obs_dim and act_dim.

``dm_control`` and ``envpool`` are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gymnasium
import numpy as np

from crl.core import Sequence, Task, UsageError, VecStep

from .sequences import SEQUENCES, custom_sequences, sequence
from .vector import EnvPoolVecEnvBase, InProcessVecEnv, random_seed, resolve_backend

EPISODE_ENV_STEPS = 1000  # dm_control's time limit for every task offered here, in env (control) steps
RETURN_SCALE = 1000.0  # per-step rewards are in [0, 1], so episode returns are in [0, 1000]
DMC_STEPS_PER_TASK = 1_000_000  # Plasticine's continual DMC
DMC6_STEPS_PER_TASK = 100_000  # L2M's DMC6 fine-tuning protocol

# (obs_dim, act_dim) of every task offered, so that building a Task needs no dm_control import;
# tests/test_dmc.py checks the table against the installed dm_control.
TASK_DIMS: dict[str, tuple[int, int]] = {
    "acrobot-swingup": (6, 1), "acrobot-swingup_sparse": (6, 1), "ball_in_cup-catch": (8, 2),
    "cartpole-balance": (5, 1), "cartpole-balance_sparse": (5, 1), "cartpole-swingup": (5, 1),
    "cartpole-swingup_sparse": (5, 1), "cartpole-two_poles": (8, 1), "cartpole-three_poles": (11, 1),
    "cheetah-run": (17, 6), "cheetah-run_backward": (17, 6),
    "dog-stand": (223, 38), "dog-walk": (223, 38), "dog-trot": (223, 38), "dog-run": (223, 38),
    "dog-fetch": (232, 38), "finger-spin": (9, 2), "finger-turn_easy": (12, 2), "finger-turn_hard": (12, 2),
    "fish-upright": (21, 5), "fish-swim": (24, 5), "hopper-stand": (15, 4), "hopper-hop": (15, 4),
    "humanoid-stand": (67, 21), "humanoid-walk": (67, 21), "humanoid-run": (67, 21),
    "humanoid-run_pure_state": (55, 21), "humanoid_CMU-stand": (137, 56), "humanoid_CMU-walk": (137, 56),
    "humanoid_CMU-run": (137, 56), "manipulator-bring_ball": (44, 5), "manipulator-bring_peg": (44, 5),
    "manipulator-insert_ball": (44, 5), "manipulator-insert_peg": (44, 5), "pendulum-swingup": (3, 1),
    "point_mass-easy": (4, 2), "point_mass-hard": (4, 2), "quadruped-walk": (78, 12),
    "quadruped-run": (78, 12), "quadruped-escape": (101, 12), "quadruped-fetch": (90, 12),
    "reacher-easy": (6, 2), "reacher-hard": (6, 2), "stacker-stack_2": (49, 5), "stacker-stack_4": (63, 5),
    "swimmer-swimmer6": (25, 5), "swimmer-swimmer15": (61, 14),
    "walker-stand": (24, 6), "walker-walk": (24, 6), "walker-run": (24, 6),
}  # fmt: skip
DMC_TASK_NAMES = tuple(TASK_DIMS)

# Tasks that are not in dm_control's suite -> the suite task whose physics and observations they share.
_CUSTOM_BASE = {"cheetah-run_backward": "cheetah-run"}
_CHEETAH_RUN_SPEED = 10.0  # dm_control's cheetah _RUN_SPEED: reward 1 from this speed on


def check_task_name(task_name: str) -> None:
    """Raise UsageError unless ``task_name`` is a DMC task offered here, such as "walker-run"."""
    if task_name not in TASK_DIMS:
        raise UsageError(f"unknown DMC task '{task_name}'; allowed: {', '.join(sorted(DMC_TASK_NAMES))}")


def _check_action_repeat(action_repeat: int) -> None:
    if action_repeat < 1 or EPISODE_ENV_STEPS % action_repeat:
        raise UsageError(f"action_repeat must be a positive divisor of {EPISODE_ENV_STEPS}, got {action_repeat}")


def _padded_dims(task_name: str, obs_dim: int | None, act_dim: int | None) -> tuple[int, int]:
    """The (obs_dim, act_dim) a task is exposed with: its own, or wider ones padded to."""
    native_obs, native_act = TASK_DIMS[task_name]
    obs_dim = native_obs if obs_dim is None else obs_dim
    act_dim = native_act if act_dim is None else act_dim
    if obs_dim < native_obs or act_dim < native_act:
        raise ValueError(f"{task_name} needs obs_dim >= {native_obs} and act_dim >= {native_act}, "
                         f"got {obs_dim} and {act_dim}")
    return obs_dim, act_dim


def _split(task_name: str) -> tuple[str, str]:
    domain, task = _CUSTOM_BASE.get(task_name, task_name).split("-", 1)
    return domain, task


def envpool_task_id(task_name: str) -> str:
    """EnvPool's id for a DMC task: "ball_in_cup-catch" -> "BallInCupCatch-v1" (custom tasks: their base's)."""
    return "".join(part[:1].upper() + part[1:] for name in _split(task_name) for part in name.split("_")) + "-v1"


def _patch_quadruped_for_numpy_2_4() -> None:
    """dm_control 1.0.28's quadruped calls ``np.in1d``, which NumPy 2.4 removed; same lookup with ``np.isin``."""
    if hasattr(np, "in1d"):
        return
    from dm_control.suite import quadruped

    def _get_sensor_names(self: Any, *sensor_types: int) -> list[str]:
        if sensor_types not in self._sensor_types_to_names:
            [sensor_ids] = np.where(np.isin(self.model.sensor_type, sensor_types))
            self._sensor_types_to_names[sensor_types] = [self.model.id2name(i, "sensor") for i in sensor_ids]
        return self._sensor_types_to_names[sensor_types]

    quadruped.Physics._get_sensor_names = _get_sensor_names


@functools.cache
def _run_backward_task_class() -> type:
    from dm_control.suite import cheetah
    from dm_control.utils import rewards

    class RunBackward(cheetah.Cheetah):
        """URLB's cheetah run_backward: cheetah-run with the speed negated."""

        def get_reward(self, physics: Any) -> float:
            return rewards.tolerance(-physics.speed(), bounds=(_CHEETAH_RUN_SPEED, float("inf")),
                                     margin=_CHEETAH_RUN_SPEED, value_at_margin=0, sigmoid="linear")

    return RunBackward


def _load_dm_env(task_name: str, seed: int) -> Any:
    """The dm_control environment of a task (a ``dm_control.rl.control.Environment``)."""
    # crl's DMC tasks are state-based: without a display, tell dm_control not to look for an OpenGL
    # backend (it would warn on every import). A user who wants pixels sets MUJOCO_GL themselves.
    if "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "disable")
    domain, task = _split(task_name)
    if domain == "quadruped":
        _patch_quadruped_for_numpy_2_4()
    if task_name == "cheetah-run_backward":
        from dm_control.rl import control
        from dm_control.suite import cheetah

        physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
        return control.Environment(physics, _run_backward_task_class()(random=seed),
                                   time_limit=cheetah._DEFAULT_TIME_LIMIT)
    from dm_control import suite

    return suite.load(domain, task, task_kwargs={"random": seed})


def _spec_of(env: Any) -> tuple[tuple[tuple[str, int], ...], np.ndarray, np.ndarray]:
    """(observation layout, action minimum, action maximum) of a dm_control environment."""
    layout = tuple((key, int(np.prod(array.shape))) for key, array in env.observation_spec().items())
    action_spec = env.action_spec()
    return layout, action_spec.minimum.astype(np.float64), action_spec.maximum.astype(np.float64)


@functools.cache
def _dm_spec(task_name: str) -> tuple[tuple[tuple[str, int], ...], np.ndarray, np.ndarray]:
    return _spec_of(_load_dm_env(task_name, 0))


def observation_layout(task_name: str) -> tuple[tuple[str, int], ...]:
    """(key, size) of each entry of the task's dm_control observation dict, in the flattening order."""
    check_task_name(task_name)
    return _dm_spec(task_name)[0]


class _ActionMap:
    """Agent actions (padded, in [-1, 1]) -> the task's actuator range; extra (padding) dims dropped."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.act_dim = len(low)
        self._identity = bool(np.all(low == -1.0) and np.all(high == 1.0))
        self._low, self._half_range = low, (high - low) / 2.0

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(actions, np.float64)[..., : self.act_dim], -1.0, 1.0)
        return a if self._identity else self._low + (a + 1.0) * self._half_range


def _flatten(obs: dict[str, Any], layout: tuple[tuple[str, int], ...], obs_dim: int) -> np.ndarray:
    """One observation dict (or a batch of them, leading dim n) as flat float32 rows padded to obs_dim."""
    parts = [np.asarray(obs[key], np.float64).reshape(-1, size) for key, size in layout]
    flat = np.concatenate(parts, axis=1).astype(np.float32)
    return np.pad(flat, ((0, 0), (0, obs_dim - flat.shape[1]))) if flat.shape[1] < obs_dim else flat


class DMCEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One DMC task with crl's conventions (see the module docstring).

    ``obs_dim`` / ``act_dim`` widen the spaces for mixed-domain sequences: observations get trailing
    zeros, extra action dims are ignored. Initial states come from dm_control's task RNG, which
    ``reset(seed=s)`` (or the constructor's ``seed``) replaces by ``RandomState(s)``.
    """

    metadata = {"render_modes": []}

    def __init__(self, task_name: str, seed: int | None = None, *, obs_dim: int | None = None,
                 act_dim: int | None = None, action_repeat: int = 1) -> None:
        check_task_name(task_name)
        _check_action_repeat(action_repeat)
        self.task_name, self.action_repeat = task_name, action_repeat
        self.episode_len = EPISODE_ENV_STEPS // action_repeat
        self.obs_dim, self.act_dim = _padded_dims(task_name, obs_dim, act_dim)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.act_dim,), np.float32)
        seed = random_seed() if seed is None else seed
        self._env = _load_dm_env(task_name, seed)
        self._layout, low, high = _spec_of(self._env)
        if (sum(size for _, size in self._layout), len(low)) != TASK_DIMS[task_name]:
            raise RuntimeError(f"dm_control's {task_name} no longer has the dims in TASK_DIMS {TASK_DIMS[task_name]}")
        self._action_map = _ActionMap(low, high)
        self._reseed(seed)

    def _reseed(self, seed: int) -> None:
        # dm_control draws initial states from the task's RandomState; np_random is gymnasium's own.
        self._env.task._random = np.random.RandomState(seed)
        super().reset(seed=seed)
        self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._reseed(seed)
        return _flatten(self._env.reset().observation, self._layout, self.obs_dim)[0], {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        control = self._action_map(action)
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(control)
            reward += time_step.reward
            if time_step.last():
                break
        obs = _flatten(time_step.observation, self._layout, self.obs_dim)[0]
        # dm_control ends an episode with discount 0 on termination, 1 at its time limit.
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated)
        return obs, float(reward), terminated, truncated, {"success": False}

    def close(self) -> None:
        self._env.close()


class DMCGymnasiumVecEnv(InProcessVecEnv):
    """``num_envs`` DMCEnvs stepped in a loop in this process; env k is seeded ``seed + k``."""

    def __init__(self, task_name: str, num_envs: int, seed: int, *, obs_dim: int | None = None,
                 act_dim: int | None = None, action_repeat: int = 1) -> None:
        super().__init__([DMCEnv(task_name, seed + k, obs_dim=obs_dim, act_dim=act_dim, action_repeat=action_repeat)
                          for k in range(num_envs)])
        self.act_dim = self.envs[0].act_dim


class _CheetahBackwardReward:
    """cheetah-run_backward's reward recomputed from cheetah observations, for EnvPool's CheetahRun.

    The reward depends on the torso subtree's linear velocity, which the observation does not carry
    but determines: ``position`` is qpos without the root's x (irrelevant on flat ground) and
    ``velocity`` is qvel. A scratch dm_control physics turns each row back into that velocity.
    """

    def __init__(self) -> None:
        from dm_control.suite import cheetah
        from dm_control.utils import rewards

        self._physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
        self._tolerance = rewards.tolerance

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        out = np.empty(len(obs["position"]), np.float32)
        data = self._physics.data
        for row, (position, velocity) in enumerate(zip(obs["position"], obs["velocity"])):
            data.qpos[0], data.qpos[1:], data.qvel[:] = 0.0, position, velocity
            self._physics.forward()
            out[row] = self._tolerance(-self._physics.speed(), bounds=(_CHEETAH_RUN_SPEED, float("inf")),
                                       margin=_CHEETAH_RUN_SPEED, value_at_margin=0, sigmoid="linear")
        return out


class DMCEnvPoolVecEnv(EnvPoolVecEnvBase):
    """EnvPool's C++ dm_control behind crl's VecEnv contract, with DMCEnv's layout and action map.

    EnvPool's ``frame_skip`` is dm_control's physics substeps per control step (10 for walker),
    not an action repeat, so it is left at its default; action repeat steps the pool repeatedly,
    summing rewards. Same-step autoreset: envs/vector.py.
    """

    def __init__(self, task_name: str, num_envs: int, seed: int, *, obs_dim: int | None = None,
                 act_dim: int | None = None, action_repeat: int = 1) -> None:
        check_task_name(task_name)
        _check_action_repeat(action_repeat)
        import envpool

        self.action_repeat = action_repeat
        self.obs_dim, self.act_dim = _padded_dims(task_name, obs_dim, act_dim)
        self._layout, low, high = _dm_spec(task_name)
        self._action_map = _ActionMap(low, high)
        super().__init__(envpool.make(envpool_task_id(task_name), env_type="gymnasium", num_envs=num_envs, seed=seed,
                                      max_episode_steps=EPISODE_ENV_STEPS), num_envs)
        spaces = self._pool.observation_space.spaces
        mismatch = [key for key, size in self._layout if key not in spaces or int(np.prod(spaces[key].shape)) != size]
        if mismatch:
            raise RuntimeError(f"EnvPool's {envpool_task_id(task_name)} lacks dm_control's observation keys {mismatch}")
        self._reward_fn = _CheetahBackwardReward() if task_name == "cheetah-run_backward" else None

    def _rows(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return _flatten(obs, self._layout, self.obs_dim)

    def step(self, actions: np.ndarray) -> VecStep:
        control = self._action_map(actions)
        final_obs = np.empty((self.num_envs, self.obs_dim), np.float32)
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        ids = self._all_ids
        for _ in range(self.action_repeat):
            obs, step_reward, step_terminated, step_truncated, info = self._pool.step(control[ids], ids)
            env_ids = info["env_id"]
            if self._reward_fn is not None:
                step_reward = self._reward_fn(obs)
            final_obs[env_ids] = self._rows(obs)
            reward[env_ids] += step_reward
            terminated[env_ids], truncated[env_ids] = step_terminated, step_truncated
            ids = np.flatnonzero(~(terminated | truncated))
            if not len(ids):
                break
        next_obs = self._autoreset(final_obs, terminated | truncated, control)
        return VecStep(next_obs, reward, terminated, truncated, np.zeros(self.num_envs, bool), final_obs)


def make_dmc_vec(task_name: str, n: int, seed: int, backend: str = "auto", *, obs_dim: int | None = None,
                 act_dim: int | None = None, action_repeat: int = 1) -> DMCGymnasiumVecEnv | DMCEnvPoolVecEnv:
    """A VecEnv of ``n`` copies of a DMC task on ``backend`` ("auto", "envpool", "gymnasium")."""
    check_task_name(task_name)
    vec_class = {"envpool": DMCEnvPoolVecEnv, "gymnasium": DMCGymnasiumVecEnv}[resolve_backend(backend)]
    return vec_class(task_name, n, seed, obs_dim=obs_dim, act_dim=act_dim, action_repeat=action_repeat)


def dmc_task(name: str, index: int, num_tasks: int, obs_dim: int | None = None, act_dim: int | None = None,
             action_repeat: int = 1) -> Task:
    """The Task for DMC task ``name`` at position ``index`` of a ``num_tasks`` sequence.

    ``obs_dim`` / ``act_dim`` pad the task to a sequence's common widths (default: its own).
    """
    check_task_name(name)
    _check_action_repeat(action_repeat)
    obs_dim, act_dim = _padded_dims(name, obs_dim, act_dim)
    spec = {"obs_dim": obs_dim, "act_dim": act_dim, "action_repeat": action_repeat}
    return Task(
        name=name,
        index=index,
        domain="dmc",
        obs_dim=obs_dim,
        act_dim=act_dim,
        episode_len=EPISODE_ENV_STEPS // action_repeat,
        num_tasks=num_tasks,
        # partials rather than lambdas so that tasks pickle (e.g. into Ray workers)
        make_env=functools.partial(DMCEnv, name, **spec),
        make_vec=functools.partial(make_dmc_vec, name, **spec),
        score="return",
        return_scale=RETURN_SCALE,
    )


def dmc_sequence(name: str, task_names: tuple[str, ...], steps_per_task: int, action_repeat: int = 1,
                 description: str | None = None) -> Sequence:
    """A sequence of DMC tasks padded to common widths; each position is its own Task (index = position)."""
    for task_name in task_names:
        check_task_name(task_name)
    obs_dim = max(TASK_DIMS[t][0] for t in task_names)
    act_dim = max(TASK_DIMS[t][1] for t in task_names)
    tasks = tuple(dmc_task(t, index, len(task_names), obs_dim, act_dim, action_repeat)
                  for index, t in enumerate(task_names))
    return Sequence(name=name, tasks=tasks, steps_per_task=steps_per_task,
                    description=SEQUENCES[name] if description is None else description)


@custom_sequences("dmc:", "<task>,... with DMC tasks")
def custom_dmc_sequence(spec: str, name: str) -> Sequence:
    """``--seq dmc:walker-walk,walker-run``: the named DMC tasks in order, 1M env steps each."""
    task_names = tuple(t.strip() for t in spec.split(",") if t.strip())
    if not task_names:
        raise UsageError(f"custom sequence '{name}': no DMC task given; allowed: {', '.join(DMC_TASK_NAMES)}")
    return dmc_sequence(name, task_names, DMC_STEPS_PER_TASK,
                        description=f"custom DMC sequence of {len(task_names)} tasks, 1M env steps each")


# Plasticine's continual DMC (RLE-Foundation/Plasticine, plasticine_envs/dmc_wrappers.py ContinualDMC).
DMC_WALKER = ("walker-stand", "walker-walk", "walker-run")
DMC_QUADRUPED = ("quadruped-walk", "quadruped-run", "quadruped-walk")
DMC_DOG = ("dog-stand", "dog-walk", "dog-run", "dog-trot")
DMC_CHEETAH = ("cheetah-run", "cheetah-run_backward")
# L2M's DMC6 fine-tuning tasks (the list with reacher-easy, so that DMC10 + DMC6 are 16 distinct tasks).
DMC6 = ("ball_in_cup-catch", "cartpole-swingup", "cheetah-run", "finger-spin", "reacher-easy", "walker-walk")

# The registered DMC sequences: name -> (tasks, steps per task, description).
DMC_SEQUENCES: dict[str, tuple[tuple[str, ...], int, str]] = {
    "dmc-walker": (DMC_WALKER, DMC_STEPS_PER_TASK,
                   "continual DMC (Plasticine): walker stand, walk, run; 1M env steps each, action repeat 1"),
    "dmc-quadruped": (DMC_QUADRUPED, DMC_STEPS_PER_TASK, "continual DMC (Plasticine): quadruped walk, run, walk "
                      "again; 1M env steps each, action repeat 1"),
    "dmc-dog": (DMC_DOG, DMC_STEPS_PER_TASK,
                "continual DMC (Plasticine): dog stand, walk, run, trot; 1M env steps each, action repeat 1"),
    "dmc-cheetah": (DMC_CHEETAH, DMC_STEPS_PER_TASK, "cheetah run, then run backward (URLB's task; dm_control has "
                    "one cheetah task); 1M env steps each, action repeat 1"),
    "dmc6": (DMC6, DMC6_STEPS_PER_TASK,
             "L2M's DMC6 (six domains, padded to 24-d obs / 6-d actions); 100k env steps each, action repeat 1"),
    "dmc2": (DMC_WALKER[:2], 2_000, "walker stand, walk with a short budget (2,000 steps each), for smoke tests"),
}
for _name, (_tasks, _steps, _description) in DMC_SEQUENCES.items():
    sequence(_name, _description)(functools.partial(dmc_sequence, _name, _tasks, _steps))
