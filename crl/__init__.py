"""crl: continual reinforcement learning — task sequences, continual agents, task-wise retention evaluation.

Importing crl registers its gymnasium environments (``crl/CW10-v0``, ``crl/CW20-v0``,
``crl/<metaworld-task>``) without importing Meta-World itself.
"""

from crl.core import Agent, Sequence, Task, Transitions, UsageError, VecEnv, VecStep

__version__ = "0.1.0"


def _register() -> None:
    from crl.envs import register_envs

    register_envs()


_register()

__all__ = ["Agent", "Sequence", "Task", "Transitions", "UsageError", "VecEnv", "VecStep"]
