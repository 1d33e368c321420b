"""The agent contract (issue 14): agents defined outside crl register themselves and train through the CLI and
``crl.train``; compositions are checked by name; an agent's phases are logged and survive a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from crl.cli import main
from crl.core import LearnsFrom
from crl.registry import resolve

USER_AGENT = textwrap.dedent('''
    """A user's agent in one file outside crl: uniform random actions (a baseline people do write)."""
    from dataclasses import dataclass

    import torch

    from crl.core import Agent, LearnsFrom
    from crl.registry import register_agent, register_variant


    @dataclass
    class RandomConfig:
        scale: float = 1.0  # actions uniform in [-scale, scale]


    @register_agent("random", "uniform random actions")
    class RandomAgent(Agent):
        learns_from = LearnsFrom.ENV
        config_class = RandomConfig

        def __init__(self, obs_dim, act_dim, num_tasks, config, device):
            self.act_dim, self.cfg, self.device = act_dim, config, device
            self.seen = 0
            self.tasks_begun = []

        def begin_task(self, task):
            self.tasks_begun.append(task.index)

        def act(self, obs, task_index, *, explore, deterministic=False, first=None):
            return (torch.rand(obs.shape[0], self.act_dim, device=self.device) * 2 - 1) * self.cfg.scale

        def observe(self, batch):
            self.seen += len(batch)

        def update(self):
            return {"seen": torch.tensor(float(self.seen))}

        def end_task(self, task):
            pass

        def state_dict(self):
            return {"seen": self.seen, "tasks_begun": self.tasks_begun}

        def load_state_dict(self, state):
            self.seen, self.tasks_begun = state["seen"], state["tasks_begun"]


    register_variant("random-half", "random", "random actions in [-0.5, 0.5]", scale=0.5)
''')

SMOKE = ["--seq", "cw2", "--preset", "smoke", "--backend", "gymnasium", "--steps-per-task", "100", "--eval-every",
         "100", "--eval-episodes", "1"]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_agent.py").write_text(USER_AGENT)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_agent", None)


def test_an_agent_in_its_own_file_registers_itself_and_trains_through_the_cli(user_module):
    run_dir = user_module / "run"
    env = {**os.environ, "PYTHONPATH": ""}  # found in the current directory, as `crl train` users run it
    proc = subprocess.run([sys.executable, "-m", "crl.cli", "train", "--agent", "my_agent:RandomAgent", *SMOKE,
                           "--run-dir", str(run_dir), "--quiet", "--set", "agent.scale=0.5"],
                          cwd=user_module, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and results["agent"] == "my_agent:RandomAgent" and results["steps"] == 200
    assert "scale: 0.5" in (run_dir / "config.yaml").read_text()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["agent"] == {"seen": 200, "tasks_begun": [0, 1]}


def test_crl_train_from_python_runs_the_same_loop_and_the_file_registers_its_names(user_module):
    import crl

    module = __import__("my_agent")
    assert resolve("random-half").agent_class is module.RandomAgent  # registered when its file was imported
    assert resolve("random-half").make_config().scale == 0.5
    run_dir, results = crl.train("cw2", module.RandomAgent, preset="smoke", backend="gymnasium", steps_per_task=100,
                                 eval_every=100, eval_episodes=1, run_dir=user_module / "py")
    assert results["finished"] and results["agent"] == "my_agent:RandomAgent"
    assert len(results["retention_matrix"]) == 2


@pytest.mark.parametrize("name, fragments", [
    ("sac+dqn", ["unknown extension 'dqn'", "ewc", "packnet"]),
    ("ewc+ewc", ["extension 'ewc' appears twice"]),
    ("sac+l2+ewc", ["'l2' and 'ewc' do not compose"]),
    ("l2m+ewc", ["agent 'l2m' takes no extensions", "sac", "td3"]),
    ("ewc", None),
    ("packnet+sac", ["it is an agent: put it first"]),
    ("redo", ["'redo' is an extension, not an agent", "sac+redo"]),
    ("no_such_module:Agent", ["cannot import module 'no_such_module'"]),
    ("json:JSONDecoder", ["not a crl.Agent subclass"]),
])
def test_compositions_are_checked_by_name(capsys, name, fragments):
    if fragments is None:  # a registered variant: fine
        assert resolve(name).family == "sac"
        return
    code = main(["train", "--agent", name, *SMOKE])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert all(f in err[0] for f in fragments), err[0]


def test_a_variant_keeps_its_defaults_and_a_composition_merges_its_pieces_settings():
    ewc, l2 = resolve("ewc").make_config(), resolve("l2").make_config()
    assert (ewc.reg_coef, l2.reg_coef) == (1e4, 1e5)  # Continual World's λ for each
    packnet_td3 = resolve("td3+packnet").make_config()
    assert packnet_td3.clip_grad_norm == 2e-5 and packnet_td3.retrain_steps == 100_000 and packnet_td3.policy_delay == 2
    assert resolve("arr").make_config().replay_ratio == 0.5 and resolve("sac").make_config().replay_ratio == 1.0
    assert resolve("l2m").agent_class.learns_from is LearnsFrom.DATASET and LearnsFrom.DATASET == "dataset"


def test_packnet_retraining_is_a_logged_phase_that_survives_a_kill_during_it(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from crl import loop as loop_module
    from crl.agents.sac import SAC
    from crl.config import build_config

    cfg = build_config("cw2", "packnet", preset="smoke", backend="gymnasium",
                       sets=["agent.retrain_steps=30", "train.log_every=10", "train.checkpoint_every=10"])
    cfg.train.eval_episodes = 1
    run_dir = tmp_path / "packnet"
    real_step = SAC.phase_step
    calls = {"n": 0}

    def dying_step(self, phase):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt  # a kill (Ctrl-C) in the middle of the retraining
        return real_step(self, phase)

    monkeypatch.setattr(SAC, "phase_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        loop_module.train(cfg, run_dir, quiet=True)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["loop"]
    assert (saved["task"], saved["phase_started"], saved["phase_step"]) == (0, True, 20)  # the last checkpoint
    monkeypatch.setattr(SAC, "phase_step", real_step)
    steps = []
    monkeypatch.setattr(SAC, "begin_phase", lambda self, phase, task: steps.append("begin"))  # must not prune again
    _, results = loop_module.resume(run_dir, quiet=True)
    assert results["finished"] and steps == []  # cw2: one phase, after task 0, already begun before the kill
    final = torch.load(run_dir / "checkpoint.pt", weights_only=True)["loop"]
    assert final["phase_steps_total"] == 30  # 20 before the kill (the 4 after the checkpoint redone), 10 after
    events = EventAccumulator(str(run_dir)).Reload()
    tags = events.Tags()["scalars"]
    assert "phase/packnet/retrain/critic_loss" in tags and "phase/packnet/retrain/progress" in tags
    progress = events.Scalars("phase/packnet/retrain/progress")
    assert progress[-1].value == 1.0 and progress[-1].step == 30


def test_the_readme_example_extension_composes_and_applies_its_penalty(tmp_path, monkeypatch):
    """README's "Adding a continual method" code, run as written: composed with SAC and the episodic memory."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index('"""Critic anchor')
    (tmp_path / "critic_anchor.py").write_text(readme[start:readme.index("```", start)])
    monkeypatch.syspath_prepend(str(tmp_path))
    from crl.envs import make_sequence

    resolved = resolve("sac+critic_anchor:CriticAnchor+episodic-memory")
    cfg = resolved.make_config()
    cfg.hidden_sizes, cfg.batch_size, cfg.critic_coef, cfg.memory_per_task = (16, 16), 8, 3.0, 20
    agent = resolved.agent_class(39, 4, 2, cfg, torch.device("cpu"))
    anchor = agent.extensions[0]
    task0, task1 = make_sequence("cw2").tasks
    agent.begin_task(task0)
    agent.observe(transitions(32, 0))
    agent.gradient_step()
    agent.end_task(task0)
    agent.begin_task(task1)
    agent.observe(transitions(32, 1))
    assert anchor.loss({}).item() == 0.0  # at the anchor
    stats = [agent.gradient_step() for _ in range(3)]
    assert stats[-1]["auxiliary_loss"].item() > 0  # the critics moved: the penalty pulls them back
    restored = resolved.agent_class(39, 4, 2, cfg, torch.device("cpu"))
    restored.load_state_dict(agent.state_dict())  # its state was declared, so the checkpoint carries it
    assert torch.equal(restored.extensions[0].loss({}), anchor.loss({}))
    sys.modules.pop("critic_anchor", None)


def transitions(n: int, task: int):
    from crl.core import Transitions

    return Transitions(obs=torch.randn(n, 39), action=torch.rand(n, 4) * 2 - 1, reward=torch.randn(n),
                       next_obs=torch.randn(n, 39), terminated=torch.zeros(n), truncated=torch.zeros(n),
                       task_index=torch.full((n,), task))
