"""Gymnasium registration of crl's envs: ``crl/CW10-v0``, ``crl/CW20-v0``, ``crl/<task>-v3``, the safety
gridworlds ``crl/DistShift-v0`` (``level``: train | test1 | test2 | test) and ``crl/Lava{Gap,River,Scatter}-v0``
(``split``: train | heldout), and the dynamics families' tasks (``crl/HalfCheetahBigTorso-v0``,
``crl/Pusher-d100-v0``, ``crl/cartpole-swingup-long-pole-v0``).

Entry points are strings, so registering imports neither metaworld nor this package's env
modules; they load on the first ``gymnasium.make``. Every id takes ``render_mode``: rgb_array and depth_array
(MuJoCo; offscreen needs ``MUJOCO_GL=egl`` or osmesa, chosen as egl when unset without a display; gymnasium's
MuJoCo families also rgbd_tuple; "human" only with a display), ansi for the gridworlds
(tests/test_gym_ids.py runs gymnasium's and SB3's checkers on each).

    crl.envs.register_envs()
    env = gymnasium.make("crl/CW10-v0", steps_per_task=10_000)
    env = gymnasium.make("crl/push-v3")
    env = gymnasium.make("crl/DistShift-v0", level="test1")
"""

from __future__ import annotations

import gymnasium
import numpy as np

from .metaworld import V3_TASK_NAMES

CONTINUAL_ENV_IDS = {"crl/CW10-v0": "cw10", "crl/CW20-v0": "cw20"}
GRIDWORLD_ENV_IDS = {"crl/DistShift-v0": "distshift", "crl/LavaGap-v0": "gap", "crl/LavaRiver-v0": "river",
                     "crl/LavaScatter-v0": "scatter"}


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
    for env_id, family in GRIDWORLD_ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="crl.envs.registration:make_gridworld_env",
                               kwargs={"family": family})
    from .dynamics import gym_ids

    for env_id, task_name in gym_ids().items():
        if env_id not in gymnasium.registry:
            # no TimeLimit here: each task's env ends its episodes itself (gymnasium's own TimeLimit inside)
            gymnasium.register(id=env_id, entry_point="crl.envs.registration:make_dynamics_env",
                               kwargs={"task_name": task_name})


def make_dynamics_env(task_name: str, seed: int | None = None, render_mode: str | None = None) -> gymnasium.Env:
    """One task of a dynamics family (envs/dynamics.py), e.g. ``crl/HalfCheetahBigTorso-v0``."""
    from .dynamics import make_env

    return make_env(task_name, seed, render_mode=render_mode)


def make_continual_env(sequence_name: str, steps_per_task: int | None = None, seed: int | None = None,
                       render_mode: str | None = None) -> gymnasium.Env:
    """The whole sequence ``sequence_name`` as one SuccessTracker(ContinualEnv).

    ``steps_per_task`` defaults to the sequence's protocol budget. ``seed`` only seeds the envs'
    construction; seed runs with ``reset(seed=...)``. ``render`` draws the current task.
    """
    from .sequences import make_sequence
    from .wrappers import ContinualEnv, SuccessTracker

    sequence = make_sequence(sequence_name)
    construction_seeds = np.random.SeedSequence(seed).generate_state(len(sequence))
    envs = [task.make_env(int(task_seed), render_mode=render_mode)
            for task, task_seed in zip(sequence.tasks, construction_seeds)]
    # SuccessTracker outside ContinualEnv, so that the episode cut short by a task switch
    # also reports is_success.
    return SuccessTracker(ContinualEnv(envs, steps_per_task or sequence.steps_per_task, task_names=sequence.labels))


def make_single_task_env(task_name: str, seed: int | None = None, render_mode: str | None = None) -> gymnasium.Env:
    """One Meta-World task with Continual World's conventions and episode success tracking."""
    from .metaworld import MetaWorldEnv
    from .wrappers import SuccessTracker

    return SuccessTracker(MetaWorldEnv(task_name, seed=seed, render_mode=render_mode))


def make_gridworld_env(family: str, level: str | None = None, split: str = "train", obs_mode: str = "flat",
                       render_mode: str | None = None) -> gymnasium.Env:
    """One safety gridworld (envs/gridworld.py): the distributional-shift map ``level`` or a layout family's
    ``split`` (its training or held-out layouts, one drawn per episode)."""
    from crl.core import UsageError

    from . import gridworld as g

    if family == "distshift":
        levels = {"train": (g.DISTSHIFT_TRAIN,), "test1": g.DISTSHIFT_TEST[:1], "test2": g.DISTSHIFT_TEST[1:],
                  "test": g.DISTSHIFT_TEST}
        if (level or "train") not in levels:
            raise UsageError(f"unknown distshift level '{level}'; allowed: {', '.join(levels)}")
        layouts = levels[level or "train"]
    else:
        if split not in ("train", "heldout"):
            raise UsageError(f"unknown split '{split}'; allowed: train, heldout")
        train, heldout = g.split_layouts(family, g.N_TRAIN_LAYOUTS, g.N_HELDOUT_LAYOUTS)
        layouts = train if split == "train" else heldout
    return g.GridWorldEnv(layouts, obs_mode=obs_mode, render_mode=render_mode)
