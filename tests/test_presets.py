"""Every preset builds, for every agent ``crl list`` shows (base agents and registered variants) on every sequence
of the agent's env families, a config and the agent, with no refusal (issue 25, item 8: ``--seq cw10 --agent l2m
--preset smoke`` stopped with "l2m reserves 1 module(s) for each of 10 tasks but agent.pool_size is 4"). Config
and construction only, no training."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from crl.config import available, build_config
from crl.envs import SEQUENCES, make_sequence
from crl.envs.dynamics import FAMILIES as DYNAMICS_FAMILIES
from crl.loop import make_agent
from crl.registry import listing, resolve


def _family(sequence_name: str) -> str:
    domain = make_sequence(sequence_name).tasks[0].domain
    return "dynamics" if domain in DYNAMICS_FAMILIES else domain


SEQUENCE_FAMILIES = {name: _family(name) for name in SEQUENCES}


def _agent_families(name: str) -> set[str]:
    """The env families an agent runs on: DQN's discrete gridworlds, HyperCRL's dynamics families (its planner
    needs their torch reward), L2M's Meta-World (its data are the scripted experts'), and SAC/TD3 on every
    continuous family."""
    resolved = resolve(name)
    if getattr(resolved.agent_class, "discrete_actions", False):
        return {"gridworld"}
    return {"hypercrl": {"dynamics"}, "l2m": {"metaworld"}}.get(resolved.family, {"metaworld", "dmc", "dynamics"})


AGENT_NAMES = [name for kind in ("agents", "variants") for name, _ in listing()[kind]]


def test_every_family_has_sequences_and_agents():
    assert set(SEQUENCE_FAMILIES.values()) == {"metaworld", "dmc", "gridworld", "dynamics"}
    assert set().union(*map(_agent_families, AGENT_NAMES)) == set(SEQUENCE_FAMILIES.values())


@pytest.fixture(scope="module")
def yaml_read_once():
    """Each config file parsed once for this module (PyYAML's parsing was 2/3 of ``build_config``'s time);
    every caller gets its own copy."""
    import crl.config

    parsed = functools.lru_cache(maxsize=None)(crl.config.read_yaml)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crl.config, "read_yaml", lambda path: copy.deepcopy(parsed(path)))
        yield


@pytest.mark.parametrize("agent", AGENT_NAMES)
def test_every_preset_builds_the_agent_on_every_sequence_of_its_families(agent, yaml_read_once):
    """Configs at every preset; the agent itself built at smoke (its constructor holds refusals that depend on
    the sequence, like L2M's modules per task)."""
    families = _agent_families(agent)
    sequences = [s for s, family in SEQUENCE_FAMILIES.items() if family in families]
    assert sequences
    for name in sequences:
        sequence = make_sequence(name)
        for preset in available("preset"):
            cfg = build_config(name, agent, preset=preset)
            if preset == "smoke":
                make_agent(cfg, sequence, torch.device("cpu"))
