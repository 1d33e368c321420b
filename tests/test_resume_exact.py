"""A run killed after a checkpoint and resumed writes, bit for bit (on CPU), the evaluation rows of the same run left
alone, for every family of agents: SAC with an extension (Meta-World), TD3, DQN (lava gridworlds, on-device envs),
L2M (offline, from datasets) and HyperCRL (model-based, dm_control).

The kill is a crash inside an evaluation (``on_eval`` raises) after a mid-task checkpoint: the run dir then holds that
checkpoint and rows written after it, as after a SIGKILL (tests/test_loop.py kills a real process; in-process
keeps these tests to seconds). What resume must get right, and where crl does it: the global RNGs
(crl/checkpoint.py), the agent's state_dict (replay buffer, optimiser, schedule counters, extensions' state), the
training envs mid-episode (restarted from a seed of the step at every checkpoint: ContinualLoop._train_envs) and
the evaluation envs' RNGs (restarted from a seed of the evaluation count: Evaluator.restart); evaluations draw
from RNGs of their own (crl.checkpoint.seeded_rng)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl import checkpoint
from crl.config import build_config
from crl.loop import resume, train
from crl.monitor import read_evals


class Killed(Exception):
    """Stands for the SIGKILL: raised from inside an evaluation, so nothing after it is written."""


def rows_of(run_dir) -> list[dict]:
    """The evaluation rows without their timing (``eval_seconds``), the only field that may differ."""
    return [{k: v for k, v in row.items() if k != "eval_seconds"} for row in read_evals(run_dir)]


def leaves(state, path=""):
    """(path, value) of every tensor and plain value in a nested state dict."""
    if isinstance(state, dict):
        return [leaf for k, v in state.items() for leaf in leaves(v, f"{path}/{k}")]
    if isinstance(state, (list, tuple)):
        return [leaf for i, v in enumerate(state) for leaf in leaves(v, f"{path}/{i}")]
    return [(path, state)]


def same(a, b) -> bool:
    """Bit-identical (NaN equal to NaN)."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and bool(
            (a == b).all() if not a.is_floating_point() else torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
    return a == b or (a != a and b != b)


def kill_and_resume(tmp_path, seq: str, agent: str, sets: list[str], task_steps: int) -> list[dict]:
    """Train ``agent`` on ``seq`` twice, on CPU: left alone, and killed during the evaluation that ends the second
    task, then resumed. Every case checkpoints at every evaluation and evaluates twice per task (not at the start):
    the resume starts from the checkpoint ``task_steps`` into the second task, finishes it (restarted envs,
    end_task, that evaluation redone) and runs the rest. Asserts that both runs end with the same agent state
    and write the same rows; returns the rows."""

    def make_cfg():
        return build_config(seq, agent, preset="smoke", backend="gymnasium", device="cpu",
                            sets=["train.eval_at_start=false", "train.eval_episodes=1", *sets])

    def kill(state, rows):
        if state.eval_id == 4:  # the fourth evaluation ran: the second task's last
            raise Killed

    train(make_cfg(), tmp_path / "whole", quiet=True)
    with pytest.raises(Killed):
        train(make_cfg(), tmp_path / "killed", quiet=True, on_eval=kill)
    resumed_from = checkpoint.load(tmp_path / "killed")["loop"]
    assert (resumed_from["task"], resumed_from["task_steps"], resumed_from["eval_id"]) == (1, task_steps, 3)
    resume(tmp_path / "killed", quiet=True)

    whole_agent, resumed_agent = (leaves(checkpoint.load(tmp_path / d)["agent"]) for d in ("whole", "killed"))
    assert [k for k, _ in whole_agent] == [k for k, _ in resumed_agent]
    for (key, a), (_, b) in zip(whole_agent, resumed_agent):
        assert same(a, b), f"agent state {key} differs after the resume"
    whole, resumed = rows_of(tmp_path / "whole"), rows_of(tmp_path / "killed")
    assert len(resumed) == len(whole) > len(resumed_from["evals"])
    for a, b in zip(whole, resumed):
        assert a == b, f"eval {a['eval_id']} (step {a['step']}, {a['task']}) differs after the resume"
    return whole


OFF_POLICY = ["train.steps_per_task=100", "train.eval_every=50", "train.checkpoint_every=50",
              "agent.start_steps=30", "agent.update_after=30", "agent.update_every=10"]


def test_sac_with_ewc_on_meta_world(tmp_path):
    """The issue's case (cw2 · SAC, Meta-World's Python envs, reseeded in place), with EWC's importances from the first
    task carried over beside the buffer, Adam and the replay schedule."""
    kill_and_resume(tmp_path, "cw2", "sac+ewc", OFF_POLICY, task_steps=50)


def test_td3(tmp_path):
    kill_and_resume(tmp_path, "cartpole-physics", "td3", OFF_POLICY, task_steps=50)


def test_dqn_on_the_lava_gridworlds(tmp_path):
    """On-device envs (tensor state, a torch.Generator per VecEnv), 8 envs whose episodes end at different steps, and
    the training catastrophe counters carried in every row."""
    rows = kill_and_resume(tmp_path, "lava3", "dqn", ["train.steps_per_task=64", "train.eval_every=32",
                                                      "train.checkpoint_every=32", "agent.update_after=16",
                                                      "agent.update_every=8"], task_steps=32)
    assert rows[-1]["train_episodes"] > 0


@pytest.fixture(scope="module")
def l2m_data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("crl_data")


def test_l2m(l2m_data_dir, tmp_path):
    kill_and_resume(tmp_path, "cw2", "l2m", [f"agent.data_dir={l2m_data_dir}", "agent.retention_tasks=0",
                                             "train.steps_per_task=10", "train.eval_every=5",
                                             "train.checkpoint_every=5"], task_steps=5)


def test_hypercrl(tmp_path):
    kill_and_resume(tmp_path, "cartpole-physics", "hypercrl", ["train.steps_per_task=40", "train.eval_every=20",
                                                               "train.checkpoint_every=20", "agent.random_steps=20",
                                                               "agent.train_every=10"], task_steps=20)


@pytest.mark.parametrize("family", ["metaworld", "dmc", "dm-cartpole", "mujoco-cheetah", "gridworld"])
def test_a_reseeded_env_acts_as_one_built_with_that_seed(family):
    """``VecEnv.reseed(s)`` (used by Evaluator.restart) after any history gives the episodes of a VecEnv built with
    ``s``: what lets the uninterrupted run (reseeded) and the resumed one (built fresh) evaluate alike."""
    from crl.envs import make_sequence

    seq = {"metaworld": "cw2", "dmc": "dmc2", "dm-cartpole": "cartpole-physics", "mujoco-cheetah": "cheetah-body",
           "gridworld": "lava3"}[family]
    task = make_sequence(seq).tasks[0]
    gym = {} if task.on_device else {"backend": "gymnasium"}

    def episode_starts(env, rounds=2):
        out, rng = [], np.random.default_rng(0)
        for _ in range(rounds):
            out.append(np.asarray(env.reset(), dtype=np.float32))
            for _ in range(3):
                if task.n_actions:
                    action = torch.as_tensor(rng.integers(task.n_actions, size=env.num_envs))
                else:
                    action = rng.uniform(-1, 1, (env.num_envs, task.act_dim)).astype(np.float32)
                out.append(np.asarray(env.step(action).obs, dtype=np.float32))
        return np.stack(out)

    used = task.make_vec(2, 7, **gym)
    episode_starts(used)  # some history: resets and steps drawn from seed 7's streams
    used.reseed(1234)
    fresh = task.make_vec(2, 1234, **gym)
    np.testing.assert_array_equal(episode_starts(used), episode_starts(fresh))
    used.close()
    fresh.close()


def test_evaluation_leaves_the_global_rngs_as_it_found_them():
    """Training's random streams do not depend on when evaluations fall (crl/evaluate.py), though SAC's evaluation
    samples its actions."""
    from crl.envs import make_sequence
    from crl.evaluate import Evaluator
    from crl.loop import make_agent

    cfg = build_config("cartpole-physics", "sac", preset="smoke", device="cpu")
    seq = make_sequence("cartpole-physics")
    agent = make_agent(cfg, seq, torch.device("cpu"))
    evaluator = Evaluator(seq, 1, 0, "gymnasium", torch.device("cpu"))
    torch.manual_seed(5)
    np.random.seed(5)
    before = checkpoint.rng_state()
    first = evaluator.evaluate(agent, seq.tasks[:1])
    after = checkpoint.rng_state()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    assert all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(before["numpy"], after["numpy"]))
    evaluator.restart(0)
    assert evaluator.evaluate(agent, seq.tasks[:1]) == first  # its own draws: the same after the same restart
    evaluator.close()
