"""crl: continual reinforcement learning — task sequences, continual agents, task-wise retention evaluation.

Importing crl registers its gymnasium environments (``crl/CW10-v0``, ``crl/CW20-v0``,
``crl/<metaworld-task>``) without importing Meta-World itself.
"""

from crl.core import Agent, ContextualAgent, LearnsFrom, Phase, Sequence, Task, Transitions, UsageError, VecEnv, VecStep
from crl.envs import register_envs

__version__ = "0.1.0"

register_envs()


def train(seq: str, agent: str | type, *, seed: int = 0, preset: str | None = None, device: str = "auto",
          backend: str = "auto", run_dir=None, config_file=None, sets: list[str] | None = None, quiet: bool = True,
          **train_settings):
    """Run the same loop as ``crl train`` from Python; returns (run dir, results dict).

    ``agent`` is a name (``"sac+ewc"``, ``"my_pkg.my_agent:MyAgent"``) or an Agent subclass: crl's own run under
    their registered names, any other under ``module:Class`` (so ``crl train --resume`` can import it again). ``train_settings`` are TrainConfig fields (``steps_per_task=...``); ``sets`` are ``--set`` strings.
    """
    # imported on use: crl.loop loads torch, and `import crl` (every crl command, `crl --help` too) does not
    from crl.config import build_config
    from crl.loop import train as run
    from crl.registry import AGENTS, user_agent_name

    if isinstance(agent, type):
        builtin = agent.__module__.startswith("crl.") and AGENTS.get(getattr(agent, "agent_name", None)) is agent
        agent = agent.agent_name if builtin else user_agent_name(agent)
    cfg = build_config(seq, agent, seed=seed, device=device, backend=backend, preset=preset,
                       config_file=config_file, train_flags=train_settings, sets=sets)
    return run(cfg, run_dir, quiet=quiet)


__all__ = ["Agent", "ContextualAgent", "LearnsFrom", "Phase", "Sequence", "Task", "Transitions", "UsageError",
           "VecEnv", "VecStep", "train"]
