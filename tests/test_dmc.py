"""DeepMind Control Suite tasks, their two VecEnv backends and the DMC sequences (crl.envs.dmc).

Backend parity, what is checked and why:

- **Step-by-step, from a matched state** (walker-walk, cheetah-run, cheetah-run_backward, the latter
  two with action repeat 2 as well): EnvPool and dm_control draw initial states from different RNGs,
  so the seeds cannot be matched; instead each gymnasium env's physics is set to the state of the
  EnvPool env's first observation (cheetah: position = qpos[1:], velocity = qvel; walker: joint
  angles from the bodies' orientations, height, velocity = qvel; the root's x is unobserved and
  irrelevant on flat ground). Then both get the same random actions and must give the same flat
  observations (same keys, order, values) and rewards to float32 precision for 40 steps. This
  checks the layout, the action map, action repeat and the reward (including run_backward's
  reward, recomputed from observations on EnvPool). Longer rollouts are chaotic: the backends
  agree to ~1e-12 for about 100 steps and drift apart after ~200.
- **Structurally** (quadruped-walk: its state cannot be rebuilt from the observation, and its
  actuator range is not [-1, 1]): EnvPool's observation dict has dm_control's keys with the same
  sizes, both backends give the same obs width, rewards in [0, 1] of a similar size under the
  same random actions, truncation at the same step with same-step autoreset, and a re-run with the
  same seed is identical on each backend.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from crl.core import UsageError
from crl.envs import SEQUENCES, make_sequence
from crl.envs.dmc import (
    DMC_TASK_NAMES,
    EPISODE_ENV_STEPS,
    TASK_DIMS,
    DMCEnv,
    dmc_task,
    envpool_task_id,
    make_dmc_vec,
    observation_layout,
)

DMC_SEQUENCES = {
    "dmc-walker": (["walker-stand", "walker-walk", "walker-run"], 1_000_000, (24, 6)),
    "dmc-quadruped": (["quadruped-walk", "quadruped-run", "quadruped-walk"], 1_000_000, (78, 12)),
    "dmc-dog": (["dog-stand", "dog-walk", "dog-run", "dog-trot"], 1_000_000, (223, 38)),
    "dmc-cheetah": (["cheetah-run", "cheetah-run_backward"], 1_000_000, (17, 6)),
    "dmc6": (["ball_in_cup-catch", "cartpole-swingup", "cheetah-run", "finger-spin", "reacher-easy", "walker-walk"],
             100_000, (24, 6)),
    "dmc2": (["walker-stand", "walker-walk"], 2_000, (24, 6)),
}


def rollout(vec, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Everything a VecEnv returns over ``steps`` steps of seeded uniform random actions."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"reset": [vec.reset()]}
    for _ in range(steps):
        step = vec.step(rng.uniform(-1, 1, (vec.num_envs, vec.act_dim)))
        for field in ("obs", "reward", "terminated", "truncated", "final_obs"):
            out.setdefault(field, []).append(getattr(step, field))
    return {k: np.stack(v) for k, v in out.items()}


def unflatten(task_name: str, flat: np.ndarray) -> dict[str, np.ndarray]:
    layout = observation_layout(task_name)
    bounds = np.cumsum([0] + [size for _, size in layout])
    return {key: np.asarray(flat[lo:hi], np.float64) for (key, _), lo, hi in zip(layout, bounds, bounds[1:])}


def set_state_from_obs(task_name: str, env: DMCEnv, flat_obs: np.ndarray) -> None:
    """Put a (freshly reset) DMCEnv into the physics state that produced ``flat_obs``."""
    obs, physics = unflatten(task_name, flat_obs), env._env.physics
    with physics.reset_context():
        if task_name.startswith("cheetah"):
            physics.data.qpos[0] = 0.0
            physics.data.qpos[1:] = obs["position"]
        else:  # walker: every body's pitch from its orientation (xx, xz) = (cos, sin)
            pitch = np.arctan2(obs["orientations"][1::2], obs["orientations"][0::2])
            axis_sign = physics.model.jnt_axis[2:, 1]  # rooty, then the six leg hinges
            relative = pitch[1:] - pitch[physics.model.body_parentid[2:] - 1]
            physics.data.qpos[0] = obs["height"][0] - physics.model.body_pos[1, 2]  # rootz
            physics.data.qpos[1] = 0.0  # rootx
            physics.data.qpos[2] = pitch[0] * axis_sign[0]
            physics.data.qpos[3:] = (np.mod(relative + np.pi, 2 * np.pi) - np.pi) * axis_sign[1:]
        physics.data.qvel[:] = obs["velocity"]


# --- the task table and names ------------------------------------------------------------------


def test_task_table_matches_installed_dm_control() -> None:
    from dm_control import suite

    suite_names = {f"{d}-{t}" for d, t in suite.ALL_TASKS if d != "lqr"}
    assert set(DMC_TASK_NAMES) == suite_names | {"cheetah-run_backward"}
    # One env per distinct model/observation function (dog stand/walk/trot share dog-run's).
    for name in DMC_TASK_NAMES:
        if name in ("dog-stand", "dog-walk", "dog-trot"):
            continue
        env = DMCEnv(name, seed=0)  # raises if its dims disagree with TASK_DIMS
        assert (env.obs_dim, env.act_dim) == TASK_DIMS[name]


def test_unknown_task_raises_usage_error_listing_allowed_names() -> None:
    for build in (lambda: dmc_task("walker-fly", 0, 1), lambda: DMCEnv("walker-fly"),
                  lambda: make_dmc_vec("walker-fly", 1, 0, "gymnasium"), lambda: dmc_task("lqr-lqr_2_1", 0, 1)):
        with pytest.raises(UsageError, match="unknown DMC task") as excinfo:
            build()
        assert "walker-run" in str(excinfo.value) and "quadruped-walk" in str(excinfo.value)
    with pytest.raises(UsageError, match="action_repeat"):
        dmc_task("walker-run", 0, 1, action_repeat=3)  # 1000 is not a multiple of 3


def test_importing_crl_envs_does_not_import_dm_control() -> None:
    code = "import sys, crl.envs; sys.exit(any(m in sys.modules for m in ('dm_control', 'envpool', 'mujoco')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- DMCEnv --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", [
    ("walker-walk", {}),
    ("quadruped-walk", {}),  # actuator range not [-1, 1]
    ("cartpole-swingup", {"obs_dim": 24, "act_dim": 6, "action_repeat": 2}),  # padded, as in dmc6
    ("cheetah-run_backward", {}),
])
def test_env_passes_gymnasium_checker(name: str, kwargs: dict) -> None:
    env = DMCEnv(name, seed=0, **kwargs)
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (kwargs.get("obs_dim", TASK_DIMS[name][0]),)
    assert env.action_space.shape == (kwargs.get("act_dim", TASK_DIMS[name][1]),)
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and info == {}
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and 0.0 <= reward <= env.action_repeat and info["success"] is False


def test_reset_seed_reseeds() -> None:
    env = DMCEnv("walker-walk", seed=0)
    first = env.reset(seed=5)[0]
    assert np.array_equal(env.reset(seed=5)[0], first)
    assert not np.array_equal(env.reset(seed=6)[0], first)
    assert np.array_equal(DMCEnv("walker-walk", seed=5).reset()[0], first)  # the constructor's seed too
    env.reset(seed=5)
    assert not np.array_equal(env.reset()[0], first)  # an unseeded reset continues the stream


def test_padding_zero_fills_obs_and_ignores_extra_action_dims() -> None:
    env = DMCEnv("cartpole-swingup", seed=0, obs_dim=24, act_dim=6)
    assert not env.reset(seed=0)[0][5:].any()
    a = np.zeros(6, np.float32)
    a[0] = 0.5
    obs_a = env.step(a)[0]
    env.reset(seed=0)
    a[1:] = 1.0  # padding dims
    assert np.array_equal(env.step(a)[0], obs_a) and not obs_a[5:].any()


def test_truncation_at_the_episode_limit_and_action_repeat_sums_rewards() -> None:
    env = DMCEnv("walker-walk", seed=0)
    env.reset(seed=0)
    action = np.full(6, 0.3, np.float32)
    rewards = []
    for t in range(EPISODE_ENV_STEPS):
        _, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        assert not terminated and truncated == (t == EPISODE_ENV_STEPS - 1)
    repeat = DMCEnv("walker-walk", seed=0, action_repeat=4)
    assert repeat.episode_len == EPISODE_ENV_STEPS // 4
    repeat.reset(seed=0)
    for t in range(repeat.episode_len):
        _, reward, terminated, truncated, _ = repeat.step(action)
        assert reward == pytest.approx(sum(rewards[4 * t:4 * t + 4]), abs=1e-9)
        assert not terminated and truncated == (t == repeat.episode_len - 1)


# --- VecEnvs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_vec_truncates_and_autoresets_on_the_same_step(backend: str) -> None:
    if backend == "envpool":
        pytest.importorskip("envpool")
    vec = make_dmc_vec("cheetah-run", 2, 0, backend, action_repeat=10)
    assert vec.backend == backend
    out = rollout(vec, 100 + 3)
    ended = out["truncated"].any(axis=1)
    assert np.flatnonzero(ended).tolist() == [99] and out["truncated"][99].all() and not out["terminated"].any()
    assert not np.array_equal(out["obs"][99], out["final_obs"][99])  # obs already starts the next episode
    same = np.delete(np.arange(103), 99)
    assert np.array_equal(out["obs"][same], out["final_obs"][same])
    assert out["obs"].dtype == np.float32 and out["reward"].dtype == np.float32
    assert ((0 <= out["reward"]) & (out["reward"] <= 10)).all()
    vec.close()


@pytest.mark.parametrize("name, action_repeat", [
    ("walker-walk", 1), ("cheetah-run", 1), ("cheetah-run", 2), ("cheetah-run_backward", 1),
])
def test_backends_agree_step_by_step_from_a_matched_state(name: str, action_repeat: int) -> None:
    pytest.importorskip("envpool")
    pool = make_dmc_vec(name, 2, 3, "envpool", action_repeat=action_repeat)
    gym = make_dmc_vec(name, 2, 0, "gymnasium", action_repeat=action_repeat)
    # The state is rebuilt from EnvPool's float64 observation (pool.reset() rounds to float32, and a
    # rounding error grows past float32 precision within 40 steps of walker).
    raw, info = pool._pool.reset()
    obs = np.empty((2, TASK_DIMS[name][0]))
    obs[info["env_id"]] = np.concatenate([np.reshape(raw[key], (2, size)) for key, size in observation_layout(name)], 1)
    gym.reset()
    for env, row in zip(gym.envs, obs):
        set_state_from_obs(name, env, row)
        rebuilt = np.concatenate([np.ravel(v) for v in env._env.task.get_observation(env._env.physics).values()])
        np.testing.assert_allclose(rebuilt, row, atol=1e-12)
    rng = np.random.default_rng(1)
    rewards = []
    for _ in range(40):
        actions = rng.uniform(-1, 1, (2, TASK_DIMS[name][1]))
        a, b = pool.step(actions), gym.step(actions)
        np.testing.assert_allclose(a.obs, b.obs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.reward, b.reward, atol=1e-5)
        rewards.append(a.reward)
    if name == "cheetah-run_backward":
        assert np.any(np.array(rewards) > 0)  # the comparison is not vacuous: some backward speed
    pool.close()
    gym.close()


def quadruped_walk_reward(obs: dict[str, np.ndarray]) -> float:
    """dm_control's quadruped-walk reward, which is a function of two observation entries."""
    from dm_control.utils import rewards

    upright = rewards.tolerance(obs["torso_upright"][0], bounds=(1, float("inf")), sigmoid="linear", margin=2,
                                value_at_margin=0)
    move = rewards.tolerance(obs["torso_velocity"][0], bounds=(0.5, float("inf")), margin=0.5, value_at_margin=0.5,
                             sigmoid="linear")
    return float(upright * move)


def test_backends_agree_structurally_on_quadruped() -> None:
    envpool = pytest.importorskip("envpool")
    name = "quadruped-walk"
    spaces = envpool.make_spec(envpool_task_id(name)).observation_space.spaces
    for key, size in observation_layout(name):  # EnvPool has extra keys (origin, rangefinder, ...)
        assert int(np.prod(spaces[key].shape)) == size
    for backend in ("gymnasium", "envpool"):
        out = rollout(make_dmc_vec(name, 2, 0, backend), EPISODE_ENV_STEPS + 2)
        again = rollout(make_dmc_vec(name, 2, 0, backend), EPISODE_ENV_STEPS + 2)
        for field in out:
            assert np.array_equal(out[field], again[field]), (backend, field)
        assert out["obs"].shape[-1] == TASK_DIMS[name][0]
        assert np.flatnonzero(out["truncated"].any(axis=1)).tolist() == [EPISODE_ENV_STEPS - 1]
        assert out["truncated"][EPISODE_ENV_STEPS - 1].all() and not out["terminated"].any()
        # Each step's reward is dm_control's formula applied to the entries at their layout positions.
        expected = [[quadruped_walk_reward(unflatten(name, row)) for row in rows] for rows in out["final_obs"]]
        np.testing.assert_allclose(out["reward"], expected, atol=1e-5, err_msg=backend)
        assert out["reward"].std() > 0.01


# --- tasks and sequences -------------------------------------------------------------------------


def test_dmc_task_fields_and_pickling() -> None:
    task = dmc_task("walker-run", 2, 3, obs_dim=30, act_dim=8, action_repeat=2)
    assert (task.name, task.index, task.num_tasks, task.domain) == ("walker-run", 2, 3, "dmc")
    assert (task.obs_dim, task.act_dim, task.episode_len) == (30, 8, 500)
    assert (task.score, task.return_scale, task.action_low, task.action_high) == ("return", 1000.0, -1.0, 1.0)
    task = pickle.loads(pickle.dumps(task))
    env = task.make_env(0)
    assert env.observation_space.shape == (30,) and env.action_space.shape == (8,) and env.action_repeat == 2
    vec = task.make_vec(2, 0, "gymnasium")
    assert vec.reset().shape == (2, 30) and vec.step(np.zeros((2, 8))).obs.shape == (2, 30)


@pytest.mark.parametrize("seq_name", list(DMC_SEQUENCES))
def test_sequences(seq_name: str) -> None:
    task_names, steps_per_task, dims = DMC_SEQUENCES[seq_name]
    assert seq_name in SEQUENCES
    seq = make_sequence(seq_name)
    assert [t.name for t in seq.tasks] == task_names
    assert [t.index for t in seq.tasks] == list(range(len(task_names)))
    assert seq.steps_per_task == steps_per_task and seq.description == SEQUENCES[seq_name]
    for task in seq.tasks:
        assert (task.obs_dim, task.act_dim) == dims
        assert (task.domain, task.score, task.return_scale, task.episode_len) == ("dmc", "return", 1000.0, 1000)
        assert task.num_tasks == len(task_names)
    if steps_per_task == 1_000_000:
        assert "1M env steps each" in seq.description


def test_custom_dmc_sequence() -> None:
    seq = make_sequence("dmc:walker-walk,cheetah-run")
    assert [t.name for t in seq.tasks] == ["walker-walk", "cheetah-run"]
    assert all(t.obs_dim == 24 and t.act_dim == 6 and t.score == "return" for t in seq.tasks)
    with pytest.raises(UsageError, match="unknown DMC task"):
        make_sequence("dmc:walker-fly")
