"""Gymnasium wrappers for continual RL, usable from any project (they need only gymnasium + numpy).

- ``TaskOneHot``: appends a task one-hot to the observation.
- ``SuccessTracker``: episode-level success (``info["success_any"]``, and ``info["is_success"]``
  on the last step, which Stable-Baselines3 logs as ``rollout/success_rate``).
- ``ContinualEnv``: one env that walks through a list of tasks, switching every
  ``steps_per_task`` steps, as Continual World's ``ContinualLearningEnv`` does.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence, SupportsFloat, Union

import gymnasium
import numpy as np
from gymnasium.spaces import Box

EnvOrFactory = Union[gymnasium.Env, Callable[[], gymnasium.Env]]


def render_modes_here(modes: Sequence[str]) -> list[str]:
    """``modes`` without "human" where there is no display: it opens a window, and without one MuJoCo's GLFW
    aborts the process (gymnasium's ``check_env`` makes every declared mode)."""
    return [mode for mode in modes if mode != "human" or os.environ.get("DISPLAY")]


def choose_offscreen_gl(render_mode: str | None) -> None:
    """Without a display MuJoCo draws frames only with ``MUJOCO_GL=egl`` (or osmesa); unset, gymnasium's renderer
    tries GLFW and fails (gymnasium's own MuJoCo envs too). Chooses egl for a frame-returning mode when unset."""
    if render_mode not in (None, "human", "ansi") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")


def with_one_hot_space(space: gymnasium.Space, num_tasks: int) -> Box:
    """``space`` (a 1-D Box) extended by ``num_tasks`` dims in [0, 1]."""
    if not isinstance(space, Box) or len(space.shape) != 1:
        raise ValueError(f"a task one-hot needs a 1-D Box observation space, got {space}")
    low = np.concatenate([space.low, np.zeros(num_tasks, space.dtype)])
    high = np.concatenate([space.high, np.ones(num_tasks, space.dtype)])
    return Box(low, high, dtype=space.dtype)


def append_one_hot(obs: np.ndarray, index: int, num_tasks: int) -> np.ndarray:
    """``obs`` followed by the one-hot of ``index`` among ``num_tasks``, in obs's dtype."""
    one_hot = np.zeros(num_tasks, obs.dtype)
    one_hot[index] = 1
    return np.concatenate([obs, one_hot])


class TaskOneHot(gymnasium.ObservationWrapper):
    """Appends the one-hot of task ``index`` (of ``num_tasks``) to every observation."""

    def __init__(self, env: gymnasium.Env, index: int, num_tasks: int) -> None:
        if not 0 <= index < num_tasks:
            raise ValueError(f"task index {index} is outside [0, {num_tasks})")
        super().__init__(env)
        self.index = index
        self.num_tasks = num_tasks
        self.observation_space = with_one_hot_space(env.observation_space, num_tasks)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return append_one_hot(observation, self.index, self.num_tasks)


class SuccessTracker(gymnasium.Wrapper):
    """Episode success = the env's ``info["success"]`` flag seen at any step so far.

    Sets ``info["success_any"]`` every step and ``info["is_success"]`` on the step that ends
    the episode (terminated or truncated).
    """

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self._success_any = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._success_any = False
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._success_any = self._success_any or bool(info.get("success", False))
        info["success_any"] = self._success_any
        if terminated or truncated:
            info["is_success"] = self._success_any
        return obs, reward, terminated, truncated, info


def _task_name(env: gymnasium.Env) -> str:
    """A readable name for an env: its ``task_name`` attribute, spec id, or class name."""
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "task_name"):
        return str(unwrapped.task_name)
    if env.spec is not None:
        return env.spec.id
    return type(unwrapped).__name__


class ContinualEnv(gymnasium.Env):
    """A sequence of tasks behind one env: task k runs for steps [k·spt, (k+1)·spt).

    ``envs`` are envs or zero-argument factories (all built here, so that mismatched spaces
    fail at once). The episode in progress when a task's budget runs out ends with
    ``truncated=True``; the next ``reset`` starts the next task. After the last task's budget
    the last task goes on. Observations are the task's observation followed by the one-hot of
    the current position; ``info["task_index"]`` and ``info["task_name"]`` say which task
    produced a step. ``reset(seed=s)`` reseeds task k with ``s + k`` at its next reset.
    """

    metadata = {"render_modes": []}

    def __init__(self, envs: Sequence[EnvOrFactory], steps_per_task: int, task_names: Sequence[str] | None = None) -> None:
        if not envs:
            raise ValueError("ContinualEnv needs at least one task")
        if steps_per_task < 1:
            raise ValueError(f"steps_per_task must be positive, got {steps_per_task}")
        self.envs: list[gymnasium.Env] = [env if isinstance(env, gymnasium.Env) else env() for env in envs]
        first = self.envs[0]
        for position, env in enumerate(self.envs[1:], start=1):
            if env.observation_space != first.observation_space or env.action_space != first.action_space:
                raise ValueError(
                    f"task {position} has spaces ({env.observation_space}, {env.action_space}); "
                    f"task 0 has ({first.observation_space}, {first.action_space}): they must be identical"
                )
        if task_names is not None and len(task_names) != len(self.envs):
            raise ValueError(f"{len(task_names)} task names for {len(self.envs)} tasks")
        self.task_names = list(task_names) if task_names is not None else [_task_name(env) for env in self.envs]
        self.steps_per_task = steps_per_task
        self.num_tasks = len(self.envs)
        self.observation_space = with_one_hot_space(first.observation_space, self.num_tasks)
        self.action_space = first.action_space
        self.metadata = first.metadata  # rendering is the current task's
        self.render_mode = first.render_mode
        self.total_steps = 0
        self.task_index = 0
        self._pending_seeds: dict[int, int] = {}

    @property
    def current_env(self) -> gymnasium.Env:
        return self.envs[self.task_index]

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        info["task_index"] = self.task_index
        info["task_name"] = self.task_names[self.task_index]
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._pending_seeds = {position: seed + position for position in range(self.num_tasks)}
        self.task_index = min(self.total_steps // self.steps_per_task, self.num_tasks - 1)
        obs, info = self.current_env.reset(seed=self._pending_seeds.pop(self.task_index, None), options=options)
        return append_one_hot(obs, self.task_index, self.num_tasks), self._info(info)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.current_env.step(action)
        self.total_steps += 1
        budget_spent = self.total_steps >= (self.task_index + 1) * self.steps_per_task
        if budget_spent and self.task_index < self.num_tasks - 1:
            truncated = True
        return append_one_hot(obs, self.task_index, self.num_tasks), reward, terminated, truncated, self._info(info)

    def render(self) -> Any:
        return self.current_env.render()

    def close(self) -> None:
        for env in self.envs:
            env.close()
