"""Gymnasium registration of crl's envs: ``crl/CW10-v0``, ``crl/CW20-v0``, ``crl/<task>-v3``, and the
dynamics families' tasks (``crl/HalfCheetahBigTorso-v0``, ``crl/Pusher-d100-v0``, ``crl/cartpole-swingup-long-pole-v0``).

Entry points are strings, so registering imports neither metaworld nor this package's env
modules; they load on the first ``gymnasium.make``.

    crl.envs.register_envs()
    env = gymnasium.make("crl/CW10-v0", steps_per_task=10_000)
    env = gymnasium.make("crl/push-v3")
"""

from __future__ import annotations

import gymnasium
import numpy as np

from .metaworld import V3_TASK_NAMES

CONTINUAL_ENV_IDS = {"crl/CW10-v0": "cw10", "crl/CW20-v0": "cw20"}


def register_envs() -> None:
    """Register crl's envs with gymnasium; calling it again is a no-op."""
    for env_id, sequence_name in CONTINUAL_ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="crl.envs.registration:make_continual_env",
                kwargs={"sequence_name": sequence_name},
            )
    for task_name in V3_TASK_NAMES:
        env_id = f"crl/{task_name}"
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="crl.envs.registration:make_single_task_env",
                kwargs={"task_name": task_name},
            )
    from .dynamics import gym_ids

    for env_id, task_name in gym_ids().items():
        if env_id not in gymnasium.registry:
            # no TimeLimit here: each task's env ends its episodes itself (gymnasium's own TimeLimit inside)
            gymnasium.register(id=env_id, entry_point="crl.envs.registration:make_dynamics_env",
                               kwargs={"task_name": task_name})


def make_dynamics_env(task_name: str, seed: int | None = None) -> gymnasium.Env:
    """One task of a dynamics family (envs/dynamics.py), e.g. ``crl/HalfCheetahBigTorso-v0``."""
    from .dynamics import make_env

    return make_env(task_name, seed)


def make_continual_env(sequence_name: str, steps_per_task: int | None = None, seed: int | None = None) -> gymnasium.Env:
    """The whole sequence ``sequence_name`` as one SuccessTracker(ContinualEnv).

    ``steps_per_task`` defaults to the sequence's protocol budget. ``seed`` only seeds the envs'
    construction; seed runs with ``reset(seed=...)``.
    """
    from .sequences import make_sequence
    from .wrappers import ContinualEnv, SuccessTracker

    sequence = make_sequence(sequence_name)
    construction_seeds = np.random.SeedSequence(seed).generate_state(len(sequence))
    envs = [task.make_env(int(task_seed)) for task, task_seed in zip(sequence.tasks, construction_seeds)]
    # SuccessTracker outside ContinualEnv, so that the episode cut short by a task switch
    # also reports is_success.
    return SuccessTracker(ContinualEnv(envs, steps_per_task or sequence.steps_per_task, task_names=sequence.labels))


def make_single_task_env(task_name: str, seed: int | None = None) -> gymnasium.Env:
    """One Meta-World task with Continual World's conventions and episode success tracking."""
    from .metaworld import MetaWorldEnv
    from .wrappers import SuccessTracker

    return SuccessTracker(MetaWorldEnv(task_name, seed=seed))
