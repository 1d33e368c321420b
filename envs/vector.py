"""What every crl ``VecEnv`` backend shares: same-step autoreset, written once.

crl's contract (``crl.core.VecStep``): where ``terminated | truncated``, ``obs`` already holds the
first observation of the env's next episode and ``final_obs`` the true last observation of the
one that ended; elsewhere the two are equal. ``autoreset_obs`` is that rule; the two kinds of
backend build on it:

- ``InProcessVecEnv``: gymnasium envs stepped in a loop in this process (an env that ends is
  reset at once, by ``env.reset()``).
- ``EnvPoolVecEnvBase``: an EnvPool batch. EnvPool resets an env on the ``step`` call *after* its
  episode ended (ignoring the action), so the envs that just ended are stepped once more at once,
  alone (EnvPool's sync mode accepts a subset of env ids); their reset observations become
  ``obs``. A domain subclass says how to turn EnvPool's observations into rows and writes ``step``.

Plus what the backends of every domain share: ``resolve_backend`` ("auto", "envpool",
"gymnasium"), ``in_env_order`` (EnvPool batches in env-id order) and ``random_seed``. Imports
neither EnvPool nor any simulator.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Sequence

import gymnasium
import numpy as np

from crl.core import UsageError, VecStep

BACKENDS = ("auto", "envpool", "gymnasium")


@functools.cache
def envpool_available() -> bool:
    try:
        importlib.import_module("envpool")
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """"auto" -> "envpool" when EnvPool imports, else "gymnasium"; named backends are checked."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "envpool" if envpool_available() else "gymnasium"
    return backend


def random_seed() -> int:
    """A fresh seed from OS entropy, for envs built without one."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def in_env_order(values: np.ndarray, env_ids: np.ndarray) -> np.ndarray:
    """Rows of an EnvPool batch in env-id order, floats (float64 obs) as float32."""
    out = np.empty_like(values, dtype=np.float32 if values.dtype.kind == "f" else values.dtype)
    out[env_ids] = values
    return out


def autoreset_obs(final_obs: np.ndarray, done: np.ndarray,
                  reset: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``VecStep.obs`` from ``final_obs``: the rows of the ``done`` envs replaced by their next first obs.

    ``reset(done_ids)`` resets those envs and returns ``(env_ids, first_obs)``, row i of
    ``first_obs`` belonging to env ``env_ids[i]``; it is not called when no env is done.
    """
    obs = final_obs.copy()
    done_ids = np.flatnonzero(done)
    if len(done_ids):
        env_ids, first_obs = reset(done_ids)
        obs[env_ids] = first_obs
    return obs


class InProcessVecEnv:
    """gymnasium envs (1-D float32 Box observations) stepped in a loop in this process.

    In-process rather than in subprocesses: on few CPU cores the IPC costs more than it saves.
    ``success`` is ``info["success"]`` (False where an env reports none).
    """

    backend = "gymnasium"

    def __init__(self, envs: Sequence[gymnasium.Env]) -> None:
        self.envs = list(envs)
        self.num_envs = len(self.envs)
        self.obs_dim = int(self.envs[0].observation_space.shape[0])
        self._pending_seed: int | None = None

    def reseed(self, seed: int) -> None:
        """From the next ``reset`` on, env k as if built with ``seed + k`` (the backends' convention): that
        reset is ``reset(seed=seed + k)``, which every crl env implements as a full reseed."""
        self._pending_seed = seed

    def reset(self) -> np.ndarray:
        seed, self._pending_seed = self._pending_seed, None
        return np.stack([env.reset(seed=None if seed is None else seed + k)[0] for k, env in enumerate(self.envs)])

    def step(self, actions: np.ndarray) -> VecStep:
        final_obs = np.empty((self.num_envs, self.obs_dim), np.float32)
        reward = np.empty(self.num_envs, np.float32)
        terminated = np.empty(self.num_envs, bool)
        truncated = np.empty(self.num_envs, bool)
        success = np.empty(self.num_envs, bool)
        for k, env in enumerate(self.envs):
            final_obs[k], reward[k], terminated[k], truncated[k], info = env.step(actions[k])
            success[k] = info.get("success", False)
        obs = autoreset_obs(final_obs, terminated | truncated,
                            lambda ids: (ids, np.stack([self.envs[k].reset()[0] for k in ids])))
        return VecStep(obs, reward, terminated, truncated, success, final_obs)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class EnvPoolVecEnvBase:
    """An EnvPool batch of ``num_envs`` envs behind crl's VecEnv contract (see the module docstring).

    Subclasses implement ``_rows`` (EnvPool observations, in the pool's order, as float32 rows)
    and ``step``, which ends with ``_autoreset``.
    """

    backend = "envpool"

    def __init__(self, pool: Any, num_envs: int) -> None:
        self.num_envs = num_envs
        self._pool = pool
        self._all_ids = np.arange(num_envs)

    def _rows(self, obs: Any) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> np.ndarray:
        obs, info = self._pool.reset()
        return in_env_order(self._rows(obs), info["env_id"])

    def _autoreset(self, final_obs: np.ndarray, done: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``VecStep.obs``: the ``done`` envs stepped once more (with zero actions shaped like ``actions``'
        rows), which makes EnvPool reset them."""

        def reset(done_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            obs, _, _, _, info = self._pool.step(np.zeros((len(done_ids), *actions.shape[1:]), actions.dtype), done_ids)
            if np.any(info["elapsed_step"] != 0):
                raise RuntimeError("EnvPool did not reset the envs whose episode ended")
            return info["env_id"], self._rows(obs)

        return autoreset_obs(final_obs, done, reset)

    def close(self) -> None:
        self._pool.close()
