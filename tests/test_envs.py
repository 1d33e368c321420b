"""Meta-World envs, VecEnv backends and sequences (crl.envs)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from crl.core import UsageError
from crl.envs import SEQUENCES, make_sequence, make_vec
from crl.envs.metaworld import (
    CW10,
    EPISODE_LEN,
    V3_TASK_NAMES,
    MetaWorldEnv,
    expert_policy,
    metaworld_task,
)
from crl.envs.vector import resolve_backend

BACKENDS = ("gymnasium", "envpool")


def first_observations(env: MetaWorldEnv, seed: int | None, resets: int = 3) -> np.ndarray:
    obs = [env.reset(seed=seed)[0]]
    obs += [env.reset()[0] for _ in range(resets - 1)]
    return np.stack(obs)


def expert_success_rate(task_name: str, backend: str, episodes: int = 10, seed: int = 0) -> float:
    """Success rate of Meta-World's scripted expert over one batched episode per env."""
    policy = expert_policy(task_name)
    vec = make_vec(task_name, episodes, seed, backend)
    obs = vec.reset()
    succeeded = np.zeros(episodes, bool)
    for _ in range(EPISODE_LEN):
        step = vec.step(np.stack([policy(o) for o in obs]))
        succeeded |= step.success
        obs = step.obs
    assert step.truncated.all()
    vec.close()
    return float(succeeded.mean())


def test_task_names_match_installed_metaworld() -> None:
    import metaworld

    installed = [name.removesuffix("-goal-observable") for name in metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE]
    assert sorted(V3_TASK_NAMES) == sorted(installed)
    assert set(CW10) <= set(V3_TASK_NAMES)


def test_importing_crl_envs_does_not_import_metaworld() -> None:
    code = "import sys, crl.envs; sys.exit('metaworld' in sys.modules or 'envpool' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_metaworld_env_passes_gymnasium_and_sb3_checkers() -> None:
    env = MetaWorldEnv("push-v3", seed=0)
    gymnasium_check_env(env)
    sb3_check_env(env)
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32


def test_reset_seed_really_reseeds_positions() -> None:
    env = MetaWorldEnv("push-v3")
    seed_0 = first_observations(env, seed=0)
    assert np.array_equal(seed_0, first_observations(env, seed=0))
    assert np.array_equal(seed_0, first_observations(MetaWorldEnv("push-v3", seed=0), seed=None))
    assert not np.array_equal(seed_0[0], first_observations(env, seed=1)[0])
    # every reset draws a fresh object/goal position (obs[4:7] object, obs[36:39] goal)
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert not np.allclose(seed_0[a, 4:7], seed_0[b, 4:7])
        assert not np.allclose(seed_0[a, 36:39], seed_0[b, 36:39])


def test_episode_truncates_at_200_steps_with_success_flag() -> None:
    env = MetaWorldEnv("push-v3", seed=0)
    policy = expert_policy("push-v3")
    obs, _ = env.reset()
    successes = []
    for t in range(1, EPISODE_LEN + 1):
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        assert obs.dtype == np.float32 and isinstance(reward, float)
        assert not terminated
        assert truncated == (t == EPISODE_LEN)
        assert isinstance(info["success"], bool)
        successes.append(info["success"])
    assert any(successes) and not successes[0]
    # a new episode starts cleanly after the truncation
    env.reset()
    assert not env.step(env.action_space.sample())[3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_vec_env_same_step_autoreset(backend: str) -> None:
    # Meta-World obs[18:36] holds the previous frame's obs[0:18]; at a reset the two are equal.
    # So continuity with the previous step proves final_obs is the true last observation.
    vec = make_vec("push-v3", 2, 0, backend)
    assert vec.backend == backend and vec.num_envs == 2
    obs = vec.reset()
    assert obs.shape == (2, 39) and obs.dtype == np.float32
    rng = np.random.default_rng(0)
    for t in range(1, EPISODE_LEN + 1):
        step = vec.step(rng.uniform(-1, 1, (2, 4)).astype(np.float32))
        assert step.obs.dtype == np.float32 and step.final_obs.dtype == np.float32
        assert step.reward.shape == step.success.shape == (2,)
        assert not step.terminated.any()
        assert step.truncated.all() == (t == EPISODE_LEN) and step.truncated.any() == (t == EPISODE_LEN)
        assert np.allclose(step.final_obs[:, 18:36], obs[:, :18])
        if t < EPISODE_LEN:
            assert np.array_equal(step.obs, step.final_obs)
        obs = step.obs
    assert np.array_equal(step.obs[:, 18:36], step.obs[:, :18])  # a fresh episode's first obs
    assert not np.allclose(step.obs[:, 36:39], step.final_obs[:, 36:39])  # with a new goal
    after = vec.step(np.zeros((2, 4), np.float32))
    assert not after.truncated.any()
    assert np.allclose(after.obs[:, 18:36], step.obs[:, :18])  # the new episode goes on from there
    vec.close()


def test_gymnasium_vec_env_k_is_seeded_seed_plus_k() -> None:
    vec = make_vec("push-v3", 2, 5, "gymnasium")
    obs = vec.reset()
    for k in range(2):
        assert np.array_equal(obs[k], MetaWorldEnv("push-v3", seed=5 + k).reset()[0])


@pytest.mark.parametrize("task_name", ["push-v3", "hammer-v3"])
def test_expert_success_rate_matches_across_backends(task_name: str) -> None:
    rates = {backend: expert_success_rate(task_name, backend) for backend in BACKENDS}
    print(f"{task_name} expert success rate: {rates}")
    # > 0.7 on EnvPool also proves its goal is observable (hidden goal: push succeeds 0%)
    assert all(rate > 0.7 for rate in rates.values()), rates
    assert abs(rates["gymnasium"] - rates["envpool"]) <= 0.3, rates


def test_unknown_task_and_backend_raise_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown Meta-World task 'push-v9'.*push-v3"):
        MetaWorldEnv("push-v9")
    with pytest.raises(UsageError, match="unknown Meta-World task"):
        make_vec("push-v9", 1, 0, "gymnasium")
    with pytest.raises(UsageError) as error:
        make_vec("push-v3", 1, 0, "cuda")
    assert str(error.value) == "unknown backend 'cuda'; allowed: auto, envpool, gymnasium"


def test_auto_backend_prefers_envpool() -> None:
    assert resolve_backend("auto") == "envpool"  # envpool is installed here
    assert resolve_backend("gymnasium") == "gymnasium"


def test_expert_policy_exists_for_every_task() -> None:
    obs = MetaWorldEnv("peg-insert-side-v3", seed=0).reset()[0]
    assert expert_policy("peg-insert-side-v3")(obs).shape == (4,)
    for task_name in V3_TASK_NAMES:
        assert callable(expert_policy(task_name))


def test_metaworld_task_fields_and_factories() -> None:
    task = metaworld_task("push-v3", 3, 10)
    assert (task.name, task.index, task.num_tasks, task.domain) == ("push-v3", 3, 10, "metaworld")
    assert (task.obs_dim, task.act_dim, task.episode_len, task.score) == (39, 4, 200, "success")
    assert np.array_equal(task.make_env(7).reset()[0], MetaWorldEnv("push-v3", seed=7).reset()[0])
    assert task.make_vec(2, 0, "gymnasium").reset().shape == (2, 39)


def test_sequences_have_continual_world_order_and_indices() -> None:
    assert {"cw2", "cw10", "cw20"} <= set(SEQUENCES)
    cw10, cw20, cw2 = make_sequence("cw10"), make_sequence("cw20"), make_sequence("cw2")
    assert [t.name for t in cw10.tasks] == list(CW10)
    assert CW10[0] == "hammer-v3" and CW10[6] == "push-v3" and CW10[9] == "peg-unplug-side-v3"
    assert [t.name for t in cw20.tasks] == list(CW10) * 2
    assert [t.name for t in cw2.tasks] == list(CW10[:2])
    for seq, n in [(cw10, 10), (cw20, 20), (cw2, 2)]:
        assert len(seq) == n
        assert [t.index for t in seq.tasks] == list(range(n))
        assert all(t.num_tasks == n for t in seq.tasks)
        assert len(set(seq.labels)) == n
        assert seq.description == SEQUENCES[seq.name]
    assert cw10.steps_per_task == cw20.steps_per_task == 1_000_000
    assert cw20.labels[10] == "hammer-v3#10"


def test_unknown_sequence_lists_allowed_names() -> None:
    with pytest.raises(UsageError, match="unknown sequence 'cw30'; allowed: .*cw10.*cw20"):
        make_sequence("cw30")


def test_custom_metaworld_sequence() -> None:
    seq = make_sequence("mw:reach-v3, window-close-v3,reach-v3")
    assert [t.name for t in seq.tasks] == ["reach-v3", "window-close-v3", "reach-v3"]
    assert [t.index for t in seq.tasks] == [0, 1, 2] and all(t.num_tasks == 3 for t in seq.tasks)
    assert seq.labels == ["reach-v3", "window-close-v3", "reach-v3#2"]
    with pytest.raises(UsageError, match="unknown Meta-World task.*reach-v9; allowed: .*window-close-v3"):
        make_sequence("mw:reach-v9")
    with pytest.raises(UsageError, match=r"\(none given\)"):
        make_sequence("mw:")
