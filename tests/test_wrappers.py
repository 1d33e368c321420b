"""Reusable gymnasium wrappers (crl.envs.wrappers) and gymnasium registration."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.spaces import Box
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from crl.envs import register_envs
from crl.envs.wrappers import ContinualEnv, SuccessTracker, TaskOneHot

EPISODE_LEN = 5


class CountingEnv(gymnasium.Env):
    """Toy task: obs = [step in episode, task id]; success from step 3 on; truncated at step 5."""

    metadata = {"render_modes": []}

    def __init__(self, task_id: float = 0.0, obs_dim: int = 2) -> None:
        self.task_id = task_id
        self.observation_space = Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0
        self.last_reset_seed: int | None = None

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.observation_space.shape, np.float32)
        obs[:2] = self.t, self.task_id
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.last_reset_seed = seed
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), 1.0, False, self.t == EPISODE_LEN, {"success": self.t >= 3}


def test_task_one_hot_appends_one_hot_and_updates_space() -> None:
    env = TaskOneHot(CountingEnv(task_id=7.0), index=1, num_tasks=3)
    assert env.observation_space.shape == (5,)
    assert np.array_equal(env.observation_space.low[2:], [0, 0, 0])
    assert np.array_equal(env.observation_space.high[2:], [1, 1, 1])
    obs, _ = env.reset()
    assert np.array_equal(obs, [0, 7, 0, 1, 0]) and obs.dtype == np.float32
    obs = env.step(env.action_space.sample())[0]
    assert np.array_equal(obs, [1, 7, 0, 1, 0]) and obs in env.observation_space
    with pytest.raises(ValueError):
        TaskOneHot(CountingEnv(), index=3, num_tasks=3)


def test_success_tracker_reports_any_step_success_and_is_success_at_episode_end() -> None:
    env = SuccessTracker(CountingEnv())
    for _ in range(2):  # the second episode checks that reset clears the flag
        env.reset()
        infos = [env.step(np.zeros(1, np.float32))[4] for _ in range(EPISODE_LEN)]
        assert [info["success_any"] for info in infos] == [False, False, True, True, True]
        assert ["is_success" in info for info in infos] == [False] * (EPISODE_LEN - 1) + [True]
        assert infos[-1]["is_success"] is True


def test_continual_env_switches_task_with_truncation_and_info() -> None:
    steps_per_task = 7
    env = ContinualEnv([lambda: CountingEnv(0.0), CountingEnv(1.0), CountingEnv(2.0)], steps_per_task, ["a", "b", "c"])
    assert env.observation_space.shape == (5,)
    action = np.zeros(1, np.float32)
    log = []  # (total step, task_index, task id seen in obs, one-hot, truncated)
    obs, info = env.reset(seed=0)
    assert info == {"task_index": 0, "task_name": "a"} and np.array_equal(obs, [0, 0, 1, 0, 0])
    for total_step in range(1, 3 * steps_per_task + 9):
        obs, _, terminated, truncated, info = env.step(action)
        log.append((total_step, info["task_index"], obs[1], tuple(obs[2:]), truncated))
        assert info["task_name"] == "abc"[info["task_index"]] and not terminated
        if truncated:
            env.reset()
    # task 0: a full episode (steps 1-5), then one cut short by the switch at step 7
    assert [entry for entry in log if entry[4]][:3] == [
        (5, 0, 0.0, (1, 0, 0), True),
        (7, 0, 0.0, (1, 0, 0), True),
        (12, 1, 1.0, (0, 1, 0), True),
    ]
    assert log[7][:4] == (8, 1, 1.0, (0, 1, 0))  # task 1 starts right after the switch
    assert log[14][:4] == (15, 2, 2.0, (0, 0, 1))
    # the last task goes on past its budget, with only its natural truncations
    assert [step for step, *_, truncated in log if truncated and step > 14] == [19, 24, 29]
    assert all(task == 2 for _, task, *_ in log[14:])


def test_continual_env_reset_mid_task_keeps_the_task_and_seeds_each_task() -> None:
    tasks = [CountingEnv(0.0), CountingEnv(1.0)]
    env = ContinualEnv(tasks, steps_per_task=3)
    env.reset(seed=10)
    env.step(np.zeros(1, np.float32))
    assert env.reset()[1]["task_index"] == 0
    assert tasks[0].last_reset_seed is None  # seeded once, at the seeded reset
    env.step(np.zeros(1, np.float32))
    env.step(np.zeros(1, np.float32))
    assert env.reset()[1]["task_index"] == 1
    assert tasks[1].last_reset_seed == 11
    assert env.task_names == ["CountingEnv", "CountingEnv"]


def test_continual_env_rejects_mismatched_spaces() -> None:
    with pytest.raises(ValueError, match="identical"):
        ContinualEnv([CountingEnv(obs_dim=2), CountingEnv(obs_dim=3)], steps_per_task=10)


def test_continual_env_passes_gymnasium_checker() -> None:
    gymnasium_check_env(ContinualEnv([CountingEnv(0.0), CountingEnv(1.0)], steps_per_task=4))


def test_registered_cw10_passes_gymnasium_and_sb3_checkers() -> None:
    register_envs()
    register_envs()  # idempotent
    assert "crl/CW20-v0" in gymnasium.registry and "crl/peg-insert-side-v3" in gymnasium.registry
    env = gymnasium.make("crl/CW10-v0", steps_per_task=50)
    gymnasium_check_env(env.unwrapped, skip_render_check=True)  # rendering: tests/test_gym_ids.py (needs offscreen GL)
    sb3_check_env(env)
    obs, info = env.reset(seed=0)
    assert obs.shape == (49,) and np.array_equal(obs[39:], np.eye(10)[0])
    assert info["task_name"] == "hammer-v3"
    for _ in range(50):
        obs, _, _, truncated, info = env.step(env.action_space.sample())
    assert truncated and "is_success" in info  # the switch cuts the episode short
    obs, info = env.reset()
    assert info["task_index"] == 1 and info["task_name"] == "push-wall-v3" and obs[40] == 1


def test_registered_single_task_env() -> None:
    register_envs()
    env = gymnasium.make("crl/push-v3")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (39,) and obs.dtype == np.float32
    info = env.step(env.action_space.sample())[4]
    assert info["success_any"] is False


def test_importing_the_wrappers_loads_neither_torch_nor_a_simulator(tmp_path) -> None:
    # cwd outside the checkout, so that ``crl`` is the installed package (crl.envs -> envs/)
    code = ("import sys, crl.envs.wrappers; "
            "loaded = [m for m in ('torch', 'metaworld', 'dm_control', 'envpool') if m in sys.modules]; "
            "sys.exit(f'imported {loaded}' if loaded else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
