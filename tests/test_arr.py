"""Adaptive Replay Ratio: the switch rule in both modes, re-arming, static comparison, checkpointing."""

from __future__ import annotations

import pytest
import torch

from crl.registry import agent_class, make_agent_config
from crl.agents.sac import SAC
from crl.core import Transitions, UsageError
from crl.envs import make_sequence

OBS, ACT = 39, 4


def make(**overrides) -> SAC:
    """SAC with the ARR extension (the ``arr`` agent), small."""
    torch.manual_seed(0)
    cfg = make_agent_config("arr")
    for key, value in {"hidden_sizes": (16, 16), "batch_size": 8, "start_steps": 0, "update_after": 0,
                       "check_interval": 10, "plasticity_every": 0, **overrides}.items():
        setattr(cfg, key, value)
    agent = agent_class("arr")(OBS, ACT, 2, cfg, torch.device("cpu"))
    agent.begin_task(make_sequence("cw2").tasks[0])
    rule(agent).episode_len = 4  # paper_faithful's window: the last "episode" = the last 4 env steps
    return agent


def rule(agent):
    """The agent's Adaptive Replay Ratio extension."""
    (arr,) = agent.extensions
    return arr


def drive(agent: SAC, fau_values: list[float], steps: int) -> list[float]:
    """Step one transition at a time with the critic's FAU scripted; returns the ratio after each step."""
    values = iter(fau_values)
    agent.probes["critic"].fau = lambda layers=None: torch.tensor(next(values))
    ratios = []
    for _ in range(steps):
        agent.observe(Transitions(obs=torch.randn(1, OBS), action=torch.zeros(1, ACT), reward=torch.zeros(1),
                                  next_obs=torch.randn(1, OBS), terminated=torch.zeros(1), truncated=torch.zeros(1),
                                  task_index=torch.zeros(1, dtype=torch.long)))
        agent.update()
        ratios.append(agent.replay_ratio)
    return ratios


def test_starts_low_and_updates_every_other_step():
    agent = make()
    drive(agent, [0.5] * 100, 8)
    assert agent.gradient_steps == 4 and agent.replay_ratio == 0.5


def test_paper_faithful_compares_the_last_episode_with_the_previous_check():
    agent = make(mode="paper_faithful")
    # RR 0.5: updates at steps 2, 4, 6, ...; a check at steps 10 and 20 runs before that step's update.
    # Check 1 reads the last episode (steps 6-9: the updates at steps 6 and 8, FAU 0.6) against the first
    # update's FAU (0.9): change 0.3, no switch. Check 2 reads the updates at steps 16 and 18 (0.6005)
    # against 0.6: change 0.0005 ≤ 0.001 → switch at step 20, although the interval's mean moved far more.
    faus = [0.9, 0.1, 0.6, 0.6, 0.6] + [0.2, 0.2, 0.6005, 0.6005, 0.6005]
    ratios = drive(agent, faus + [0.5] * 100, 22)
    assert ratios[9] == 0.5 and ratios[19] == 2.0 and rule(agent).switched_at == [(0, 20)]
    assert agent.gradient_steps == 10 + 2 * 2  # two steps at RR 2 after the switch


def test_whole_interval_averages_every_update_since_the_last_check():
    faus = [0.9, 0.1, 0.6, 0.6, 0.6] + [0.2, 0.2, 0.6005, 0.6005, 0.6005]
    agent = make(mode="whole_interval")
    drive(agent, faus + [0.5] * 100, 22)
    assert not rule(agent).switched  # interval means 0.55 then 0.44: never within τ
    agent = make(mode="whole_interval")
    drive(agent, [0.5] * 100, 12)
    assert rule(agent).switched_at == [(0, 10)]  # a flat FAU: strictly below τ at the first check


def test_static_ratio_never_switches_and_rearm_on_task():
    static = make(adaptive=False, replay_ratio=2.0)
    drive(static, [0.5] * 100, 30)
    assert static.replay_ratio == 2.0 and rule(static).switched_at == [] and static.gradient_steps == 60
    agent = make(mode="whole_interval")
    drive(agent, [0.5] * 100, 12)
    assert agent.replay_ratio == 2.0
    agent.begin_task(make_sequence("cw2").tasks[1])
    assert agent.replay_ratio == 0.5 and not rule(agent).switched and rule(agent).reference_fau is None


def test_state_round_trip_and_bad_mode():
    agent = make(mode="whole_interval")
    drive(agent, [0.5] * 100, 12)
    clone = make()
    clone.load_state_dict(agent.state_dict())
    assert clone.replay_ratio == 2.0 and rule(clone).switched_at == [(0, 10)] and rule(clone).next_check == rule(agent).next_check
    with pytest.raises(UsageError, match="unknown ARR mode 'fast'; allowed: paper_faithful, whole_interval"):
        make(mode="fast")
    with pytest.raises(UsageError, match="unknown ARR fau_layers 'relu'; allowed: all, after_trunk"):
        make(fau_layers="relu")


def test_real_critic_fau_is_logged_every_update():
    agent = make()
    agent.observe(Transitions(obs=torch.randn(8, OBS), action=torch.zeros(8, ACT), reward=torch.zeros(8),
                              next_obs=torch.randn(8, OBS), terminated=torch.zeros(8), truncated=torch.zeros(8),
                              task_index=torch.zeros(8, dtype=torch.long)))
    stats = agent.update()
    assert 0 < stats["arr/critic_fau"] <= 1 and stats["arr/replay_ratio"] == 0.5


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_smoke_run_on_dmc_logs_fau_traces_and_the_switch(backend, tmp_path):
    if backend == "envpool":
        pytest.importorskip("envpool")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from crl.config import build_config
    from crl.loop import train

    cfg = build_config("dmc2", "arr", preset="smoke", backend=backend)
    cfg.train.eval_episodes, cfg.train.eval_every = 1, 400
    train(cfg, tmp_path / "run", quiet=True)
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for network in ("actor", "critic"):
        assert f"plasticity/{network}/all/fau" in tags
    assert "arr/critic_fau" in tags
    ratios = [e.value for e in acc.Scalars("arr/replay_ratio")]
    assert ratios[0] == 0.5 and 2.0 in ratios  # the smoke preset's loose τ makes the switch happen
