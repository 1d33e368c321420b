"""Meta-World v3 tasks for crl, with Continual World's conventions.

Continual World (CW) runs Meta-World with 200-step episodes and a fresh random object/goal
position at every reset; Meta-World 3.x defaults to 500 steps and, for the env classes, one
frozen position. This module restores CW's conventions:

- ``MetaWorldEnv``: one goal-observable Meta-World v3 task as a plain ``gymnasium.Env``
  (float32 observations, ``info["success"]`` as bool, ``reset(seed=...)`` that really reseeds).
- ``GymnasiumVecEnv`` / ``EnvPoolVecEnv``: crl ``VecEnv`` s with same-step autoreset (envs/vector.py),
  on in-process Python envs or on EnvPool's C++ port (several times faster).
- ``make_vec``, ``metaworld_task``, ``expert_policy``.
- Continual World's sequences (``cw10``, ``cw20``, ``cw2``) and ``mw:<task>,...`` custom ones.

``metaworld`` and ``envpool`` are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import gymnasium
import numpy as np

from crl.core import Sequence, Task, UsageError, VecStep

from .sequences import SEQUENCES, custom_sequences, sequence
from .vector import EnvPoolVecEnvBase, InProcessVecEnv, in_env_order, random_seed, resolve_backend
from .wrappers import choose_offscreen_gl, render_modes_here

CW10 = (
    "hammer-v3",
    "push-wall-v3",
    "faucet-close-v3",
    "push-back-v3",
    "stick-pull-v3",
    "handle-press-side-v3",
    "push-v3",
    "shelf-place-v3",
    "window-close-v3",
    "peg-unplug-side-v3",
)
EPISODE_LEN = 200
CW_STEPS_PER_TASK = 1_000_000  # Continual World's budget per task (env steps)
OBS_DIM = 39
ACT_DIM = 4

# All Meta-World v3 task names, spelled out so that callers (gymnasium registration) need not
# import metaworld; tests/test_envs.py checks the list against the installed metaworld.
V3_TASK_NAMES = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3",
    "door-lock-v3", "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3",
    "drawer-open-v3", "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3",
    "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3",
    "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3",
    "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3",
    "push-back-v3", "reach-v3", "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3",
    "window-open-v3", "window-close-v3",
)  # fmt: skip

# Scripted-policy classes whose name does not follow the task name.
_POLICY_CLASS_OVERRIDES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


def check_task_name(task_name: str) -> None:
    """Raise UsageError unless ``task_name`` is a Meta-World v3 task such as "push-v3"."""
    if task_name not in V3_TASK_NAMES:
        allowed = ", ".join(sorted(V3_TASK_NAMES))
        raise UsageError(f"unknown Meta-World task '{task_name}'; allowed: {allowed}")


def _camel_case(task_name: str) -> str:
    """"peg-unplug-side-v3" -> "PegUnplugSide" (the version suffix dropped)."""
    base = task_name.rsplit("-v", 1)[0]
    return "".join(word.capitalize() for word in base.split("-"))


def envpool_task_id(task_name: str) -> str:
    """EnvPool's id for a Meta-World task: "peg-unplug-side-v3" -> "MetaWorld/PegUnplugSide-v3"."""
    return f"MetaWorld/{_camel_case(task_name)}-v3"


class MetaWorldEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One goal-observable Meta-World v3 task with Continual World's episode conventions.

    Episodes last ``episode_len`` steps (``truncated`` at the last one, never ``terminated``);
    every reset draws a fresh object/goal position from the env's own RNG, which
    ``reset(seed=s)`` (or the constructor's ``seed``) reseeds. The raw Meta-World env is kept
    inside rather than subclassed: its ``compute_reward`` makes env checkers treat it as a
    goal-conditioned env and fail. ``render_mode`` is Meta-World's (its MuJoCo renderer, 480×480; offscreen
    modes need ``MUJOCO_GL=egl`` or ``osmesa`` without a display).
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 80}  # Meta-World's

    def __init__(self, task_name: str, seed: int | None = None, episode_len: int = EPISODE_LEN,
                 render_mode: str | None = None) -> None:
        check_task_name(task_name)
        self.metadata = {**self.metadata, "render_modes": render_modes_here(self.metadata["render_modes"])}
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UsageError(f"unknown render_mode '{render_mode}'; allowed: {', '.join(self.metadata['render_modes'])}")
        choose_offscreen_gl(render_mode)
        import metaworld

        self.task_name = task_name
        self.render_mode = render_mode
        self.episode_len = episode_len
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
        seed = random_seed() if seed is None else seed
        # Passing a seed makes the constructor restore the global np.random state it uses.
        env_class = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task_name}-goal-observable"]
        self._env = env_class(seed=seed, render_mode=render_mode)
        self._env._freeze_rand_vec = False  # fresh position at every reset ...
        self._env.seeded_rand_vec = True  # ... drawn from the env's RNG, not the global one
        self._env.max_path_length = episode_len
        self._reseed(seed)

    def _reseed(self, seed: int) -> None:
        # Meta-World ignores reset(seed=...); its own seed() replaces the RNG that draws
        # positions. That RNG is also this env's np_random, so there is one RNG to reason about.
        self._env.seed(seed)
        self.np_random = self._env.np_random
        self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._reseed(seed)
        obs, info = self._env.reset()
        return obs.astype(np.float32), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, _terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        info["success"] = bool(info["success"])
        return obs.astype(np.float32), float(reward), False, bool(truncated), info

    def render(self) -> np.ndarray | None:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


class GymnasiumVecEnv(InProcessVecEnv):
    """``num_envs`` MetaWorldEnvs stepped in a loop in this process; env k is seeded ``seed + k``."""

    def __init__(self, task_name: str, num_envs: int, seed: int) -> None:
        super().__init__([MetaWorldEnv(task_name, seed=seed + k) for k in range(num_envs)])


class EnvPoolVecEnv(EnvPoolVecEnvBase):
    """EnvPool's C++ Meta-World behind crl's VecEnv contract (same-step autoreset: envs/vector.py)."""

    def __init__(self, task_name: str, num_envs: int, seed: int) -> None:
        check_task_name(task_name)
        import envpool

        super().__init__(envpool.make(
            envpool_task_id(task_name),
            env_type="gymnasium",
            num_envs=num_envs,
            seed=seed,
            max_episode_steps=EPISODE_LEN,
            partially_observable=False,  # EnvPool's default zeroes the goal: push tasks become unsolvable
        ), num_envs)

    def _rows(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, np.float32)

    def step(self, actions: np.ndarray) -> VecStep:
        actions = np.asarray(actions, np.float32)
        obs, reward, terminated, truncated, info = self._pool.step(actions, self._all_ids)
        env_ids = info["env_id"]
        final_obs = in_env_order(self._rows(obs), env_ids)
        terminated = in_env_order(terminated, env_ids)
        truncated = in_env_order(truncated, env_ids)
        return VecStep(
            obs=self._autoreset(final_obs, terminated | truncated, actions),
            reward=in_env_order(reward, env_ids),
            terminated=terminated,
            truncated=truncated,
            success=in_env_order(info["success"], env_ids) > 0,
            final_obs=final_obs,
        )


# Tasks where EnvPool's C++ port disagrees with Python Meta-World 3.1.1 (EnvPool 1.2.5, the noise-free
# scripted expert, 20 episodes per backend, issue 13): dial-turn success 1.00 vs 0.00 on EnvPool;
# button-press-topdown-wall success 1.00 on both but return 773 vs 1; shelf-place success 0.95 vs 0.50.
# hammer: the expert succeeds on both, but EnvPool's env differs after its first episode: one L2M policy
# (a checkpoint of l2m-oracle), 10 episodes per round from one persistent VecEnv, succeeded 0.4, 0.0, 0.1
# in rounds 1-3 on EnvPool and 0.5, 0.4, 0.5 on gymnasium. Backend "auto" runs these on gymnasium
# (collection, training and evaluation alike).
ENVPOOL_MISMATCHED = frozenset({"dial-turn-v3", "button-press-topdown-wall-v3", "shelf-place-v3", "hammer-v3"})


def task_backend(task_name: str, backend: str) -> str:
    """The backend ``make_vec`` uses for ``task_name``: ``resolve_backend``, except that "auto" avoids
    EnvPool for the tasks in ``ENVPOOL_MISMATCHED``; an explicit "envpool" is honoured."""
    resolved = resolve_backend(backend)
    if resolved == "envpool" and task_name in ENVPOOL_MISMATCHED and backend == "auto":
        return "gymnasium"
    return resolved


def make_vec(task_name: str, n: int, seed: int, backend: str = "auto") -> GymnasiumVecEnv | EnvPoolVecEnv:
    """A VecEnv of ``n`` copies of a Meta-World task on ``backend`` ("auto", "envpool", "gymnasium")."""
    check_task_name(task_name)
    vec_class = {"envpool": EnvPoolVecEnv, "gymnasium": GymnasiumVecEnv}[task_backend(task_name, backend)]
    return vec_class(task_name, n, seed)


def metaworld_task(name: str, index: int, num_tasks: int) -> Task:
    """The Task for Meta-World task ``name`` at position ``index`` of a ``num_tasks`` sequence."""
    check_task_name(name)
    return Task(
        name=name,
        index=index,
        domain="metaworld",
        obs_dim=OBS_DIM,
        act_dim=ACT_DIM,
        episode_len=EPISODE_LEN,
        num_tasks=num_tasks,
        # partials rather than lambdas so that tasks pickle (e.g. into Ray workers)
        make_env=functools.partial(MetaWorldEnv, name),
        make_vec=functools.partial(make_vec, name),
        score="success",
    )


def expert_policy(task_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's scripted expert for a task: goal-observable obs (39,) -> action (4,)."""
    check_task_name(task_name)
    import metaworld.policies

    class_name = _POLICY_CLASS_OVERRIDES.get(task_name, f"Sawyer{_camel_case(task_name)}V3Policy")
    policy = getattr(metaworld.policies, class_name)()

    def act(obs: np.ndarray) -> np.ndarray:
        return np.asarray(policy.get_action(np.asarray(obs, np.float64)), np.float32)

    return act


def metaworld_sequence(name: str, task_names: tuple[str, ...], steps_per_task: int,
                       description: str | None = None) -> Sequence:
    """A sequence of Meta-World tasks; each position is its own Task (index = position)."""
    tasks = tuple(metaworld_task(task, index, len(task_names)) for index, task in enumerate(task_names))
    return Sequence(name=name, tasks=tasks, steps_per_task=steps_per_task,
                    description=SEQUENCES[name] if description is None else description)


@custom_sequences("mw:", "<task>,<task>,... with Meta-World v3 tasks")
def custom_metaworld_sequence(spec: str, name: str) -> Sequence:
    """``--seq mw:reach-v3,window-close-v3``: the named Meta-World v3 tasks in order, CW's budget each."""
    task_names = tuple(t.strip() for t in spec.split(",") if t.strip())
    unknown = [t for t in task_names if t not in V3_TASK_NAMES]
    if not task_names or unknown:
        raise UsageError(f"custom sequence '{name}': unknown Meta-World task(s) {', '.join(unknown) or '(none given)'}; "
                         f"allowed: {', '.join(V3_TASK_NAMES)}")
    return metaworld_sequence(name, task_names, CW_STEPS_PER_TASK,
                              f"custom Meta-World sequence of {len(task_names)} tasks, 1M steps each (CW protocol)")


# The registered Meta-World sequences: name -> (tasks, steps per task, description).
CW_SEQUENCES: dict[str, tuple[tuple[str, ...], int, str]] = {
    "cw10": (CW10, CW_STEPS_PER_TASK, "Continual World CW10: ten Meta-World v3 tasks, 1M steps each"),
    "cw20": (CW10 + CW10, CW_STEPS_PER_TASK,
             "Continual World CW20: CW10 twice (positions 10-19 repeat 0-9), 1M steps each"),
    "cw2": (CW10[:2], 2_000, "first two CW10 tasks with a short budget, for smoke tests"),
}
for _name, (_tasks, _steps, _description) in CW_SEQUENCES.items():
    sequence(_name, _description)(functools.partial(metaworld_sequence, _name, _tasks, _steps))
