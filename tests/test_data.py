"""Offline expert datasets (crl.envs.data): collection, on-disk format, loading, window sampling, CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crl.core import UsageError
from crl.envs.data import (
    CollectConfig,
    TaskDataset,
    add_data_commands,
    collect,
    collect_task,
    default_data_dir,
    load_task,
    resolve_tasks,
    run_data_command,
)
from crl.envs.metaworld import CW10, EPISODE_LEN, V3_TASK_NAMES

TASK = "push-v3"
EPISODES = 4
NOISE = (0.0, 0.5)


@pytest.fixture(scope="module")
def push_dir(tmp_path_factory) -> Path:
    """4 push-v3 episodes on EnvPool, 3 envs (so the second round runs 3 episodes and keeps 1)."""
    data_dir = tmp_path_factory.mktemp("data")
    cfg = CollectConfig(episodes=EPISODES, noise_levels=NOISE, seed=3, num_envs=3, backend="envpool")
    collect_task(TASK, cfg, data_dir, progress=False)
    return data_dir


@pytest.fixture
def push_copy(push_dir, tmp_path) -> Path:
    """A private copy of the module's dataset, for tests that damage it."""
    shutil.copytree(push_dir / "metaworld", tmp_path / "metaworld")
    return tmp_path


def test_collect_load_round_trip(push_dir) -> None:
    ds = load_task(TASK, push_dir)
    T = EPISODES * EPISODE_LEN
    assert ds.num_episodes == EPISODES and ds.num_transitions == T
    expected = {
        "obs": ((T, 39), np.float32), "action": ((T, 4), np.float32), "expert_action": ((T, 4), np.float32),
        "reward": ((T,), np.float32),
        "success": ((T,), np.bool_), "returns_to_go": ((T,), np.float32),
        "episode_starts": ((EPISODES + 1,), np.int64), "noise": ((EPISODES,), np.float32),
        "episode_success": ((EPISODES,), np.bool_), "episode_return": ((EPISODES,), np.float32),
        "final_obs": ((EPISODES, 39), np.float32),
    }  # fmt: skip
    for name, (shape, dtype) in expected.items():
        array = getattr(ds, name)
        assert isinstance(array, np.memmap), name
        assert array.shape == shape and array.dtype == dtype, name
    np.testing.assert_array_equal(ds.episode_starts, np.arange(EPISODES + 1) * EPISODE_LEN)
    assert np.all(np.abs(ds.action) <= 1.0)

    for i in range(EPISODES):
        s, e = ds.episode_starts[i], ds.episode_starts[i + 1]
        r = np.asarray(ds.reward[s:e], np.float64)
        np.testing.assert_allclose(ds.returns_to_go[s:e], np.cumsum(r[::-1])[::-1], rtol=1e-5)
        assert ds.episode_success[i] == ds.success[s:e].any()
        np.testing.assert_allclose(ds.episode_return[i], r.sum(), rtol=1e-5)
        assert ds.returns_to_go[s] == pytest.approx(ds.episode_return[i], rel=1e-5)
    # episodes are distinct (fresh positions per reset)
    assert len({ds.obs[s].tobytes() for s in ds.episode_starts[:-1]}) == EPISODES

    # the noise mix is exact, round-robin
    np.testing.assert_array_equal(ds.noise, np.array([NOISE[i % len(NOISE)] for i in range(EPISODES)], np.float32))
    # the scripted expert solves push without noise
    assert ds.episode_success[ds.noise == 0].mean() > 0.5

    m = ds.manifest
    assert (m["format"], m["version"], m["task"]) == ("crl-metaworld-offline", 2, TASK)
    assert (m["episodes"], m["transitions"]) == (EPISODES, T)
    assert m["mean_success"] == pytest.approx(ds.episode_success.mean())
    assert m["mean_return"] == pytest.approx(float(np.mean(ds.episode_return)), rel=1e-5)
    assert m["max_return"] == pytest.approx(float(np.max(ds.episode_return)), rel=1e-5)
    gen = m["generator"]
    assert gen["noise_levels"] == list(NOISE) and gen["seed"] == 3 and gen["backend"] == "envpool"
    assert gen["metaworld_version"] and gen["crl_version"] and m["created"]


@pytest.mark.filterwarnings("ignore:Constant.*may be too high")
def test_noise_zero_is_the_expert_and_the_expert_action_is_recorded(push_dir) -> None:
    from crl.envs.metaworld import expert_policy

    ds = load_task(TASK, push_dir)
    policy = expert_policy(TASK)
    clean = np.flatnonzero(ds.noise == 0)[0]
    noisy = np.flatnonzero(ds.noise > 0)[0]
    for episode, should_match in ((clean, True), (noisy, False)):
        s = ds.episode_starts[episode]
        rows = range(s, s + 20)
        expert = np.clip(np.stack([policy(ds.obs[t]) for t in rows]), -1, 1)
        assert np.allclose(expert, ds.action[s : s + 20], atol=1e-6) == should_match
        # the expert's own action is recorded beside the executed one, noisy episodes included
        np.testing.assert_allclose(ds.expert_action[s : s + 20], expert, atol=1e-6)


def test_gymnasium_collect_stale_temp_skip_and_determinism(tmp_path, capsys) -> None:
    task = "reach-v3"
    cfg = CollectConfig(episodes=2, noise_levels=(0.0,), seed=1, num_envs=2, backend="gymnasium")
    stale = tmp_path / "metaworld" / f".{task}.tmp"
    stale.mkdir(parents=True)
    (stale / "obs.npy").write_bytes(b"half-written")

    [path] = collect([task], cfg, tmp_path, progress=False)
    assert path == tmp_path / "metaworld" / task
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "metaworld").iterdir()) == [task]  # no temp left behind
    ds = load_task(task, tmp_path)
    assert ds.manifest["generator"]["backend"] == "gymnasium"
    assert ds.episode_success.mean() > 0.5
    first = np.array(ds.obs), np.array(ds.action), ds.manifest["created"]

    # an existing valid dataset is skipped (not rewritten) ...
    before = (path / "manifest.json").stat().st_mtime_ns
    assert collect([task], cfg, tmp_path, progress=True) == [path]
    assert (path / "manifest.json").stat().st_mtime_ns == before
    assert "skipped" in capsys.readouterr().err
    # ... unless overwrite; the same settings give the same data
    collect([task], cfg, tmp_path, progress=False, overwrite=True)
    again = load_task(task, tmp_path)
    np.testing.assert_array_equal(again.obs, first[0])
    np.testing.assert_array_equal(again.action, first[1])


def test_missing_dataset(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"no dataset for task 'push-v3' in .*crl data collect --tasks push-v3"):
        load_task("push-v3", tmp_path)
    with pytest.raises(UsageError, match="unknown Meta-World task"):
        load_task("nope-v3", tmp_path)


def test_missing_file(push_copy) -> None:
    (push_copy / "metaworld" / TASK / "reward.npy").unlink()
    with pytest.raises(UsageError, match=r"no dataset .*reward\.npy"):
        load_task(TASK, push_copy)


@pytest.mark.parametrize("damage", ["bad_json", "wrong_version", "truncated_npy", "garbage_npy", "short_array"])
def test_corrupt_dataset_names_the_file(push_copy, damage) -> None:
    d = push_copy / "metaworld" / TASK
    if damage == "bad_json":
        (d / "manifest.json").write_text('{"format": "crl-metaworld-offline", ')
        name = "manifest.json"
    elif damage == "wrong_version":
        m = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps({**m, "version": 99}))
        name = "manifest.json"
    elif damage == "truncated_npy":
        data = (d / "obs.npy").read_bytes()
        (d / "obs.npy").write_bytes(data[: len(data) // 2])
        name = "obs.npy"
    elif damage == "garbage_npy":
        (d / "action.npy").write_bytes(b"not an npy file at all")
        name = "action.npy"
    else:
        np.save(d / "reward.npy", np.zeros(10, np.float32))
        name = "reward.npy"
    with pytest.raises(UsageError, match=rf"corrupt dataset file .*{name.replace('.', '[.]')}"):
        load_task(TASK, push_copy)


def test_collect_regenerates_a_corrupt_dataset(push_copy) -> None:
    (push_copy / "metaworld" / TASK / "manifest.json").write_text("{")
    cfg = CollectConfig(episodes=1, noise_levels=(0.0,), num_envs=1, backend="envpool")
    collect([TASK], cfg, push_copy, progress=False)
    assert load_task(TASK, push_copy).num_episodes == 1


# ----------------------------------------------------------------------------- WindowSampler


from crl.dt import WindowSampler  # noqa: E402  (the sampler of sequence models reads these datasets)


def synthetic(lengths: list[int], task: str = "reach-v3", base: float = 0.0) -> TaskDataset:
    """A TaskDataset whose obs[t, 0] = base + t and action[t, 0] = -(base + t), for exact checks."""
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    T, E = int(starts[-1]), len(lengths)
    t = np.arange(T, dtype=np.float32)
    obs = np.zeros((T, 39), np.float32)
    obs[:, 0] = base + t
    action = np.zeros((T, 4), np.float32)
    action[:, 0] = -(base + t)
    expert_action = action * 0.5
    reward = np.ones(T, np.float32)
    rtg = np.concatenate([np.arange(n, 0, -1, dtype=np.float32) for n in lengths])
    return TaskDataset(
        task=task, path=Path("."), manifest={}, obs=obs, action=action, expert_action=expert_action, reward=reward,
        success=np.zeros(T, bool), returns_to_go=rtg, episode_starts=starts, noise=np.zeros(E, np.float32),
        episode_success=np.zeros(E, bool), episode_return=np.array(lengths, np.float32),
        final_obs=np.zeros((E, 39), np.float32),
    )  # fmt: skip


def test_window_sampler_windows_are_left_padded_at_episode_starts() -> None:
    a = synthetic([3, 7, 1, 5])
    b = synthetic([2, 6], task="push-v3", base=1000.0)
    K = 4
    sampler = WindowSampler([a, b], context=K, device="cpu", seed=0)
    assert len(sampler) == 16 + 8
    batch = sampler.sample(512)
    assert batch["obs"].shape == (512, K, 39) and batch["obs"].dtype == torch.float32
    assert batch["action"].shape == (512, K, 4) and batch["action"].dtype == torch.float32
    for key in ("returns_to_go", "reward"):
        assert batch[key].shape == (512, K) and batch[key].dtype == torch.float32
    assert batch["timestep"].dtype == torch.long and batch["mask"].dtype == torch.bool
    assert batch["dataset_index"].shape == (512,) and batch["dataset_index"].dtype == torch.long
    # every transition of both datasets gets picked, in proportion to the number of transitions
    assert set(batch["dataset_index"].tolist()) == {0, 1}

    datasets = [a, b]
    for i in range(512):
        ds = datasets[int(batch["dataset_index"][i])]
        t = int(batch["index"][i])
        ep = int(np.searchsorted(ds.episode_starts, t, side="right") - 1)
        start = int(ds.episode_starts[ep])
        n_real = min(K, t - start + 1)
        mask = batch["mask"][i].numpy()
        np.testing.assert_array_equal(mask, np.arange(K) >= K - n_real)  # padding on the left only
        rows = np.arange(t - n_real + 1, t + 1)
        np.testing.assert_array_equal(batch["obs"][i, mask].numpy(), ds.obs[rows])
        np.testing.assert_array_equal(batch["action"][i, mask].numpy(), ds.action[rows])
        np.testing.assert_array_equal(batch["expert_action"][i, mask].numpy(), ds.expert_action[rows])
        np.testing.assert_array_equal(batch["returns_to_go"][i, mask].numpy(), ds.returns_to_go[rows])
        np.testing.assert_array_equal(batch["timestep"][i, mask].numpy(), rows - start)  # consecutive
        for key in ("obs", "action", "expert_action", "returns_to_go", "reward", "timestep"):
            assert not batch[key][i, ~torch.from_numpy(mask)].any(), key


def test_window_sampler_on_collected_data_and_state_dict(push_dir, tmp_path) -> None:
    ds = load_task(TASK, push_dir)
    sampler = WindowSampler([ds], context=5, device=torch.device("cpu"), seed=7)
    # windows ending at an episode's first, third and last steps
    s = int(ds.episode_starts[1])
    ends = np.array([s, s + 2, s + EPISODE_LEN - 1])
    w = sampler.windows(ends)
    np.testing.assert_array_equal(w["mask"].numpy(), [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(w["timestep"].numpy(), [[0, 0, 0, 0, 0], [0, 0, 0, 1, 2], [195, 196, 197, 198, 199]])
    np.testing.assert_array_equal(w["obs"][1, 2:].numpy(), ds.obs[s : s + 3])
    np.testing.assert_array_equal(w["obs"][2].numpy(), ds.obs[s + EPISODE_LEN - 5 : s + EPISODE_LEN])
    assert not w["obs"][0, :4].any() and not w["action"][1, :2].any()

    sampler.sample(32)
    state = sampler.state_dict()
    torch.save(state, tmp_path / "sampler.pt")
    expected = [sampler.sample(32) for _ in range(2)]
    restored = WindowSampler([ds], context=5, seed=123)
    restored.load_state_dict(torch.load(tmp_path / "sampler.pt"))
    for want in expected:
        got = restored.sample(32)
        for key in want:
            assert torch.equal(got[key], want[key]), key
    with pytest.raises(UsageError):
        WindowSampler([ds], context=3).load_state_dict(state)


# ----------------------------------------------------------------------------- task sets, paths, CLI


def test_resolve_tasks() -> None:
    mt40 = resolve_tasks("mt40")
    assert len(mt40) == 40 and not set(mt40) & set(CW10)
    assert mt40 == [t for t in V3_TASK_NAMES if t in mt40]  # V3_TASK_NAMES order
    assert resolve_tasks("cw10") == list(CW10) and resolve_tasks("MT50") == list(V3_TASK_NAMES)
    assert resolve_tasks("push-v3, reach-v3") == ["push-v3", "reach-v3"]
    with pytest.raises(UsageError, match="mt40, cw10, mt50"):
        resolve_tasks("push-v3,pusj-v3")
    with pytest.raises(UsageError):
        resolve_tasks("")


def test_default_data_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CRL_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("CRL_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "crl" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == Path.home() / ".cache" / "crl" / "data"


def test_collect_config_validation() -> None:
    for bad in (dict(episodes=0), dict(noise_levels=()), dict(noise_levels=(-0.1,)), dict(num_envs=0),
                dict(backend="nope")):  # fmt: skip
        with pytest.raises(UsageError):
            CollectConfig(**bad)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crl")
    add_data_commands(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_list_and_collect(push_dir, tmp_path, capsys) -> None:
    run_data_command(parser().parse_args(["data", "list", "--data-dir", str(push_dir)]))
    out = capsys.readouterr().out
    assert TASK in out and f"{EPISODES * EPISODE_LEN} transitions" in out

    run_data_command(parser().parse_args(["data", "list", "--data-dir", str(tmp_path)]))
    assert "no datasets" in capsys.readouterr().out

    args = parser().parse_args(
        ["data", "collect", "--tasks", "reach-v3", "--episodes", "1", "--noise", "0.2", "--num-envs", "1",
         "--backend", "envpool", "--data-dir", str(tmp_path), "--seed", "5"]
    )  # fmt: skip
    run_data_command(args)
    ds = load_task("reach-v3", tmp_path)
    assert ds.num_episodes == 1 and ds.noise.tolist() == [pytest.approx(0.2)] and ds.manifest["generator"]["seed"] == 5

    for bad in (["--tasks", "nope-v3"], ["--noise", "0.1,x"], ["--episodes", "0"], ["--episodes", "-3"],
                ["--backend", "gpu"]):
        with pytest.raises(UsageError):
            run_data_command(parser().parse_args(["data", "collect", "--data-dir", str(tmp_path), *bad]))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        run_data_command(parser().parse_args(["data", "collect", "--data-dir", str(a_file)]))


def test_auto_backend_avoids_envpool_where_its_port_differs() -> None:
    from crl.envs.data import collection_backend
    from crl.envs.vector import envpool_available

    assert collection_backend("dial-turn-v3", "auto") == "gymnasium"
    assert collection_backend("shelf-place-v3", "auto") == "gymnasium"  # expert 0.95 on Meta-World, 0.50 on EnvPool
    assert collection_backend("hammer-v3", "auto") == "gymnasium"  # EnvPool's env changes after its first episode
    assert collection_backend("dial-turn-v3", "gymnasium") == "gymnasium"
    assert collection_backend("dial-turn-v3", "envpool") == "envpool"  # explicit choice honoured
    assert collection_backend("push-v3", "auto") == ("envpool" if envpool_available() else "gymnasium")


def test_make_vec_auto_runs_mismatched_tasks_on_gymnasium() -> None:
    from crl.envs.metaworld import GymnasiumVecEnv, make_vec

    vec = make_vec("shelf-place-v3", 1, 0, "auto")  # training and evaluation, not only collection
    try:
        assert isinstance(vec, GymnasiumVecEnv)
    finally:
        vec.close()
