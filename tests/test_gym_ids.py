"""Every gymnasium id crl registers (``crl.envs.register_envs``; listed from gymnasium's registry, not from a
list kept here) accepts every ``render_mode`` it declares and passes gymnasium's ``check_env`` on the
unwrapped env and SB3's ``check_env`` (issue 25, item 8).

Rendering: MuJoCo-based ids render offscreen with ``MUJOCO_GL=egl`` (set here when the variable is unset or
"disable" and there is no display; osmesa or a display work too). Where no offscreen OpenGL works at all, the
MuJoCo ids' frames are not checked (they are still made with a ``render_mode``). "human" is declared only where
there is a display (without one, gymnasium's ``check_env``, which makes every declared mode, would abort in GLFW).
Every id is made with its first mode and draws a frame; one id per entry point (EVERY_MODE) runs gymnasium's
render check (every declared mode made anew) and ours on each mode.
"""

from __future__ import annotations

import os
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.utils.passive_env_checker import env_render_passive_checker
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import crl.envs

crl.envs.register_envs()
IDS = [env_id for env_id in gymnasium.registry if env_id.startswith("crl/")]

# Warnings that describe crl's envs as designed, not a failure: unbounded observation spaces (Continual World's,
# gymnasium MuJoCo's), Pusher-v5's action space [-2, 2] (gymnasium's), and a text-only (ansi) gridworld with no fps.
EXPECTED_WARNINGS = ("observation space maximum value is infinity", "observation space minimum value is -infinity",
                     "symmetric and normalized", "No render fps was declared")


def test_the_registry_holds_every_family():
    entry_points = [gymnasium.spec(env_id).entry_point.rsplit(":", 1)[1] for env_id in IDS]
    assert {name: entry_points.count(name) for name in set(entry_points)} == {
        "make_continual_env": 2, "make_single_task_env": 50, "make_gridworld_env": 4, "make_dynamics_env": 12}


@pytest.fixture(scope="module")
def offscreen():
    """Whether MuJoCo renders offscreen here (MUJOCO_GL=egl chosen when unset or disabled without a display).

    Frames are drawn without MuJoCo's shadow map and multisampling (the model's visual quality, set as gymnasium's
    offscreen viewer is built): on a software renderer they halve the first frame's cost (1.6 -> 0.6 s for a
    Meta-World task) and change nothing of the path a frame takes from the env."""
    from gymnasium.envs.mujoco import mujoco_rendering

    build_viewer = mujoco_rendering.OffScreenViewer.__init__

    def cheap_viewer(self, model, data, *args, **kwargs):
        model.vis.quality.shadowsize, model.vis.quality.offsamples = 0, 0
        build_viewer(self, model, data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("DISPLAY") and os.environ.get("MUJOCO_GL", "disable") in ("disable", ""):
            patch.setenv("MUJOCO_GL", "egl")
        patch.setattr(mujoco_rendering.OffScreenViewer, "__init__", cheap_viewer)
        try:
            import mujoco

            model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
            renderer = mujoco_rendering.MujocoRenderer(model, mujoco.MjData(model), width=8, height=8)
            renderer.render("rgb_array")
            renderer.close()
            available = True
        except Exception:  # noqa: BLE001 - any failure to get a GL context means: no offscreen rendering here
            available = False
        yield available


def _unexpected(caught) -> list[str]:
    return [str(w.message) for w in caught if not any(e in str(w.message) for e in EXPECTED_WARNINGS)]


# Every id renders a frame in its first mode (rgb_array, or the gridworld's ansi); one id per entry point also
# renders each other declared mode. A family's ids share the code that draws another mode (the simulator's
# renderer, asked for it), while each frame of a new env costs a GL context and the model's textures (0.6 s for
# a Meta-World task on a software renderer): every mode of every id took minutes. The CW ids render their current
# task's MetaWorldEnv, whose every mode push-v3 checks.
EVERY_MODE = {"crl/push-v3", "crl/DistShift-v0", "crl/HalfCheetahBigTorso-v0", "crl/Pusher-d500-v0",
              "crl/cartpole-swingup-base-v0"}


def _check_frame(env_id: str, env: gymnasium.Env) -> None:
    env.reset(seed=0)
    env_render_passive_checker(env.unwrapped)  # warns on a wrong type, dtype or shape
    frame = env.render()
    if env.render_mode == "ansi":
        assert isinstance(frame, str) and "A" in frame
    else:
        for image in frame if env.render_mode == "rgbd_tuple" else (frame,):
            assert np.ptp(image) > 0, f"{env_id} {env.render_mode}: a blank frame"


@pytest.mark.parametrize("env_id", IDS)
def test_registered_id_passes_the_checkers_and_renders(env_id, offscreen):
    first = "ansi" if gymnasium.spec(env_id).entry_point.endswith(":make_gridworld_env") else "rgb_array"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gymnasium.make(env_id, render_mode=first)
        assert env.render_mode == env.unwrapped.render_mode == first
        assert first in env.metadata["render_modes"]
        assert "human" not in env.metadata["render_modes"] or os.environ.get("DISPLAY")
        if first == "ansi" or offscreen:
            _check_frame(env_id, env)
        # gymnasium's own render check makes the env anew in every declared mode and checks a frame of each. It
        # runs after this env's frame: closing another env's EGL renderer blanks the frames of an env that rendered
        # before (gymnasium 1.4's OffScreenViewer does not make its context current; HalfCheetah-v5 alone does it).
        check_env(env.unwrapped, skip_render_check=not (env_id in EVERY_MODE and offscreen))
        sb3_check_env(env)
        env.close()
        for mode in env.metadata["render_modes"] if env_id in EVERY_MODE else ():
            other = gymnasium.make(env_id, render_mode=mode)
            assert other.render_mode == other.unwrapped.render_mode == mode
            if offscreen:
                _check_frame(env_id, other)
            other.close()
    assert _unexpected(caught) == []


def test_gridworld_info_carries_sb3s_is_success():
    """SB3's EvalCallback reads ``info["is_success"]`` at each episode's end (as its algorithms' success buffer
    does); the shortest-safe-path mentor reaches the goal on DistShift, a policy that only goes up times out."""
    import torch
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from crl.envs.gridworld import mentor_actions

    class Mentor:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return mentor_actions(torch.as_tensor(obs)).numpy(), state

    class Up:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return np.zeros(len(obs), dtype=np.int64), state

    for policy, expected in ((Mentor(), [True, True]), (Up(), [False, False])):
        env = DummyVecEnv([lambda: Monitor(gymnasium.make("crl/DistShift-v0"))])
        callback = EvalCallback(env)
        evaluate_policy(policy, env, n_eval_episodes=2, callback=callback._log_success_callback)
        assert callback._is_success_buffer == expected
