"""The shared same-step autoreset of crl's VecEnv backends (crl.envs.vector), on toy envs."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.spaces import Box

from crl.core import VecStep
from crl.envs.vector import EnvPoolVecEnvBase, InProcessVecEnv, in_env_order

LENGTHS = (2, 3)  # env k's episodes last LENGTHS[k] steps; env 0 terminates, env 1 is truncated


class ToyEnv(gymnasium.Env):
    """obs = [episode number, step in episode]; success at the episode's last step."""

    def __init__(self, length: int, terminates: bool) -> None:
        self.length, self.terminates = length, terminates
        self.observation_space = Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = Box(-1.0, 1.0, (1,), np.float32)
        self.episode, self.t = -1, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        end = self.t == self.length
        obs = np.array([self.episode, self.t], np.float32)
        return obs, 1.0, end and self.terminates, end and not self.terminates, {"success": end}


class FakePool:
    """EnvPool's sync-mode semantics: an ended env resets on its next ``step`` (action ignored,
    ``elapsed_step`` 0); rows come back in reverse env-id order, float64."""

    def __init__(self) -> None:
        self.envs = [ToyEnv(length, k == 0) for k, length in enumerate(LENGTHS)]
        self.ended = [False] * len(self.envs)

    def reset(self) -> tuple[np.ndarray, dict]:
        ids = np.arange(len(self.envs))[::-1]
        return np.stack([self.envs[k].reset()[0] for k in ids]).astype(np.float64), {"env_id": ids}

    def step(self, actions: np.ndarray, env_ids: np.ndarray) -> tuple:
        ids = np.asarray(env_ids)[::-1]
        rows, reward, terminated, truncated, success, elapsed = [], [], [], [], [], []
        for k in ids:
            if self.ended[k]:
                obs, r, term, trunc, info = self.envs[k].reset()[0], 0.0, False, False, {"success": False}
            else:
                obs, r, term, trunc, info = self.envs[k].step(actions)
            self.ended[k] = term or trunc
            rows.append(obs)
            reward.append(r)
            terminated.append(term)
            truncated.append(trunc)
            success.append(float(info["success"]))
            elapsed.append(self.envs[k].t)
        info = {"env_id": ids, "success": np.array(success), "elapsed_step": np.array(elapsed)}
        return (np.stack(rows).astype(np.float64), np.array(reward), np.array(terminated), np.array(truncated), info)

    def close(self) -> None:
        pass


class FakeEnvPoolVecEnv(EnvPoolVecEnvBase):
    def __init__(self) -> None:
        super().__init__(FakePool(), len(LENGTHS))

    def _rows(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, np.float32)

    def step(self, actions: np.ndarray) -> VecStep:
        obs, reward, terminated, truncated, info = self._pool.step(actions, self._all_ids)
        ids = info["env_id"]
        final_obs = in_env_order(self._rows(obs), ids)
        terminated, truncated = in_env_order(terminated, ids), in_env_order(truncated, ids)
        return VecStep(self._autoreset(final_obs, terminated | truncated, actions), in_env_order(reward, ids),
                       terminated, truncated, in_env_order(info["success"], ids) > 0, final_obs)


def make(kind: str) -> InProcessVecEnv | FakeEnvPoolVecEnv:
    if kind == "in-process":
        return InProcessVecEnv([ToyEnv(length, k == 0) for k, length in enumerate(LENGTHS)])
    return FakeEnvPoolVecEnv()


@pytest.mark.parametrize("kind", ["in-process", "envpool"])
def test_ended_envs_start_their_next_episode_on_the_same_step(kind: str) -> None:
    vec = make(kind)
    assert np.array_equal(vec.reset(), [[0, 0], [0, 0]])
    episode, t = np.zeros(2), np.zeros(2)
    for _ in range(7):
        step = vec.step(np.zeros((2, 1), np.float32))
        t += 1
        done = t == LENGTHS
        assert np.array_equal(step.final_obs, np.stack([episode, t], 1))  # the true last obs
        assert np.array_equal(step.terminated, done & [True, False])
        assert np.array_equal(step.truncated, done & [False, True])
        assert np.array_equal(step.success, done)
        episode, t = np.where(done, episode + 1, episode), np.where(done, 0, t)
        assert np.array_equal(step.obs, np.stack([episode, t], 1))  # the next episode's first obs where done
        assert step.obs.dtype == step.final_obs.dtype == np.float32
    vec.close()
