"""Task families whose dynamics change from task to task, each with its reward written in torch
(model-based agents plan with it: the reward is known, only the dynamics are learned).

HyperCRL (Huang et al. 2021; reference/hypercrl.md) benchmarks continual model-based RL on such
families. Here:

- ``cheetah-body``: gymnasium's MuJoCo HalfCheetah-v5 with one body part's geoms 1.25× thicker per
  task (HyperCRL's BigTorso / BigThigh / BigLeg / BigFoot, built as gym-extensions does: the
  geom's first ``size`` entry, its capsule radius, scaled, so the part is heavier too). The
  observation is PETS' 18-d cheetah state (HyperCRL's ``MBRLHalfCheetah``): the root's x velocity
  over the step, then gymnasium's 17-d observation; reward = obs[0] − 0.1·‖a‖², as gymnasium's.
- ``pusher-object``: gymnasium's Pusher-v5 with the pushed object's density and friction changed
  per task. A stand-in for HyperCRL's robosuite Panda pusher (a two-cube object with per-task
  left/right densities), which needs robosuite; the arm, object shape and reward are gymnasium's.
- ``cartpole-physics``: dm_control's cartpole swing-up with the pole's length or the cart's mass
  changed per task, a family cheap enough for CPU runs: control step 0.04 s (4 physics steps, the
  reward of the state reached, so the torch reward is exact), 10 s episodes = 250 steps,
  score = return / 250.

Every task is a ``Task`` of a registered sequence (``crl list``), whose ``reward_fn(obs, action,
next_obs)`` is the environment's reward in torch, batched over any leading dims
(tests/test_dynamics_envs.py checks it against the environment on recorded transitions), and a
gymnasium env of its own: ``gymnasium.make("crl/HalfCheetahBigTorso-v0")`` (``crl.envs.register_envs``).

The simulators' model files are edited as XML text (written once to a cache dir for gymnasium),
so no simulator is imported until an env is built.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np

from crl.core import Sequence, Task, UsageError

from .sequences import sequence
from .vector import InProcessVecEnv
from .wrappers import choose_offscreen_gl, render_modes_here

# -- torch rewards (batched over leading dims; torch is imported when one is called) -----------------

CHEETAH_CTRL_COST = 0.1  # gymnasium HalfCheetah-v5 ctrl_cost_weight (forward_reward_weight 1)
PUSHER_WEIGHTS = (1.0, 0.1, 0.5)  # gymnasium Pusher-v5: reward_dist, reward_control, reward_near weights


def cheetah_reward(obs, action, next_obs):
    """HalfCheetah-v5's reward on the 18-d state: x velocity over the step − 0.1·‖a‖²."""
    return next_obs[..., 0] - CHEETAH_CTRL_COST * (action ** 2).sum(-1)


def pusher_reward(obs, action, next_obs):
    """Pusher-v5's reward, computed by gymnasium after the step: −‖object − goal‖ − 0.1·‖a‖² − 0.5·‖object − tip‖
    (obs[14:17] the arm's tip, obs[17:20] the object, obs[20:23] the goal)."""
    tip, obj, goal = next_obs[..., 14:17], next_obs[..., 17:20], next_obs[..., 20:23]
    w_dist, w_ctrl, w_near = PUSHER_WEIGHTS
    return (-w_dist * (obj - goal).norm(dim=-1) - w_ctrl * (action ** 2).sum(-1)
            - w_near * (obj - tip).norm(dim=-1))


def _tolerance_gaussian(x, margin: float, value_at_margin: float = 0.1):
    """dm_control's ``rewards.tolerance(x, bounds=(0, 0), margin, sigmoid="gaussian")``."""
    scale = float(np.sqrt(-2 * np.log(value_at_margin)))
    return (-0.5 * (x.abs() / margin * scale) ** 2).exp()


def cartpole_reward(obs, action, next_obs):
    """dm_control's smooth cartpole swing-up reward on the state reached (obs = [cart x, cos θ, sin θ,
    cart ẋ, θ̇]); the control term uses the action as the env applies it (clipped to [-1, 1])."""
    upright = (next_obs[..., 1] + 1) / 2
    centered = (1 + _tolerance_gaussian(next_obs[..., 0], 2.0)) / 2
    control = action[..., 0].clamp(-1.0, 1.0)  # tolerance(margin=1, value_at_margin=0, quadratic)
    small_control = (4 + (1 - control ** 2).clamp_min(0.0)) / 5
    small_velocity = (1 + _tolerance_gaussian(next_obs[..., 4], 5.0)) / 2
    return upright * small_control * small_velocity * centered


# -- gymnasium MuJoCo families -------------------------------------------------------------------------

def _xml_cache_dir() -> Path:
    path = Path(os.environ.get("CRL_XML_CACHE", Path(tempfile.gettempdir()) / "crl-xml"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_xml(stem: str, text: str) -> str:
    """``text`` in the cache dir under a name that changes with it; returns the path (absolute)."""
    from crl.fileio import atomic_write_text

    path = _xml_cache_dir() / f"{stem}-{hashlib.sha1(text.encode()).hexdigest()[:12]}.xml"
    if not path.exists():
        atomic_write_text(path, text)
    return str(path)


def _gymnasium_asset(name: str) -> str:
    return (Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / name).read_text()


def _edit_geom(xml: str, name: str, edit: Callable[[str], str]) -> str:
    """``xml`` with the ``<geom .../>`` element named ``name`` passed through ``edit``."""
    pattern = re.compile(r'<geom\b[^>]*\bname="%s"[^>]*/>' % re.escape(name))
    if not pattern.search(xml):
        raise RuntimeError(f"the model has no geom named {name}")
    return pattern.sub(lambda m: edit(m.group(0)), xml, count=1)


def _set_attr(element: str, attr: str, value: str) -> str:
    if re.search(r'\b%s="[^"]*"' % attr, element):
        return re.sub(r'\b%s="[^"]*"' % attr, f'{attr}="{value}"', element)
    return element.replace("<geom", f'<geom {attr}="{value}"', 1)


def _scale_radius(element: str, scale: float) -> str:
    size = re.search(r'\bsize="([^"]*)"', element).group(1).split()
    size[0] = repr(float(size[0]) * scale)
    return _set_attr(element, "size", " ".join(size))


CHEETAH_PARTS = {"BigTorso": ("torso",), "BigThigh": ("bthigh", "fthigh"), "BigLeg": ("bshin", "fshin"),
                 "BigFoot": ("bfoot", "ffoot")}  # gym-extensions' body parts of HyperCRL's cheetah tasks
CHEETAH_SCALE = 1.25


def cheetah_xml(variant: str) -> str:
    xml = _gymnasium_asset("half_cheetah.xml")
    for geom in CHEETAH_PARTS[variant]:
        xml = _edit_geom(xml, geom, lambda e: _scale_radius(e, CHEETAH_SCALE))
    return xml


class CheetahState(gymnasium.Wrapper):
    """HalfCheetah-v5 with PETS' 18-d state: [x velocity over the last step (0 at reset), obs (17)], float32."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (18,), np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return np.concatenate([[0.0], obs]).astype(np.float32), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return np.concatenate([[info["x_velocity"]], obs]).astype(np.float32), reward, terminated, truncated, info


PUSHER_OBJECTS = {  # task -> (density of the pushed cylinder in kg/m³, its sliding friction); gymnasium's: 1e-5, 0.8
    "d500": (500.0, 0.8), "d100": (100.0, 0.8), "d2000": (2000.0, 0.8), "d500-slippery": (500.0, 0.2),
    "d250-rough": (250.0, 1.5),
}


def pusher_xml(variant: str) -> str:
    density, friction = PUSHER_OBJECTS[variant]
    xml = _gymnasium_asset("pusher.xml")
    old = '<geom rgba="1 1 1 1" type="cylinder" size="0.05 0.05 0.05" density="0.00001" contype="1" conaffinity="0"/>'
    if old not in xml:
        raise RuntimeError("gymnasium's pusher.xml no longer has the object geom this family edits")
    return xml.replace(old, f'<geom rgba="1 1 1 1" type="cylinder" size="0.05 0.05 0.05" density="{density}" '
                            f'friction="{friction} 0.1 0.1" contype="1" conaffinity="0"/>')


class Float32Obs(gymnasium.ObservationWrapper):
    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)

    def observation(self, obs):
        return np.asarray(obs, np.float32)


class SeededReset(gymnasium.Wrapper):
    """Reseeds on the first reset with the seed the env was built with; ``info["success"]`` is False. The
    gymnasium env inside declares "human" rendering only where there is a display (``render_modes_here``)."""

    def __init__(self, env: gymnasium.Env, seed: int | None):
        super().__init__(env)
        inner = env.unwrapped
        inner.metadata = {**inner.metadata, "render_modes": render_modes_here(inner.metadata["render_modes"])}
        self._seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        seed, self._seed = (self._seed if seed is None else seed), None
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "success": False}


def _make_cheetah(variant: str, seed: int | None = None, render_mode: str | None = None) -> gymnasium.Env:
    env = gymnasium.make("HalfCheetah-v5", xml_file=_write_xml(f"half_cheetah-{variant}", cheetah_xml(variant)),
                         render_mode=render_mode)
    return SeededReset(CheetahState(env), seed)


def _make_pusher(variant: str, seed: int | None = None, render_mode: str | None = None) -> gymnasium.Env:
    env = gymnasium.make("Pusher-v5", xml_file=_write_xml(f"pusher-{variant}", pusher_xml(variant)),
                         render_mode=render_mode)
    return SeededReset(Float32Obs(env), seed)


# -- dm_control cartpole ------------------------------------------------------------------------------

CARTPOLE_CONTROL_TIMESTEP = 0.04  # s: 4 physics steps of 0.01 s per agent step
CARTPOLE_TIME_LIMIT = 10.0  # s: 250 agent steps
CARTPOLE_VARIANTS = {"base": (1.0, 1.0), "long-pole": (1.6, 1.0), "heavy-cart": (1.0, 3.0)}  # (pole length, cart mass) × dm_control's


def cartpole_xml(variant: str) -> tuple[str, dict]:
    from dm_control.suite import cartpole

    length, cart_mass = CARTPOLE_VARIANTS[variant]
    xml, assets = cartpole.get_model_and_assets()
    xml = xml.decode() if isinstance(xml, bytes) else xml
    pole = 'fromto="0 0 0 0 0 1"'
    cart = '<geom name="cart" type="box" size="0.2 0.15 0.1" material="self"  mass="1"/>'
    if pole not in xml or cart not in xml:
        raise RuntimeError("dm_control's cartpole.xml no longer has the pole and cart this family edits")
    xml = xml.replace(pole, f'fromto="0 0 0 0 0 {length}"')
    return xml.replace(cart, cart.replace('mass="1"', f'mass="{cart_mass}"')), assets


class CartpoleEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """dm_control's cartpole swing-up (smooth reward) with one physics variant, as a gymnasium env:
    observation [cart x, cos θ, sin θ, cart ẋ, θ̇] float32, action in [-1, 1], truncated at 10 s.
    ``render_mode`` "rgb_array" / "depth_array" draw dm_control's fixed camera at its default 320×240 with
    gymnasium's MuJoCo renderer (offscreen: ``MUJOCO_GL=egl`` or ``osmesa`` without a display)."""

    metadata = {"render_modes": ["rgb_array", "depth_array"], "render_fps": round(1 / CARTPOLE_CONTROL_TIMESTEP)}

    def __init__(self, variant: str, seed: int | None = None, render_mode: str | None = None):
        from dm_control.rl import control
        from dm_control.suite import cartpole

        from .dmc import _flatten, _spec_of
        from .vector import random_seed

        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UsageError(f"unknown render_mode '{render_mode}'; allowed: {', '.join(self.metadata['render_modes'])}")
        self.render_mode = render_mode
        self._renderer = None
        if "DISPLAY" not in os.environ and render_mode is None:
            os.environ.setdefault("MUJOCO_GL", "disable")
        choose_offscreen_gl(render_mode)
        seed = random_seed() if seed is None else seed
        physics = cartpole.Physics.from_xml_string(*cartpole_xml(variant))
        self._env = control.Environment(physics, cartpole.Balance(swing_up=True, sparse=False, random=seed),
                                        time_limit=CARTPOLE_TIME_LIMIT, control_timestep=CARTPOLE_CONTROL_TIMESTEP)
        self._layout = _spec_of(self._env)[0]
        self._flatten = _flatten
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (5,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._reseed(seed)

    def _reseed(self, seed: int) -> None:
        self._env.task._random = np.random.RandomState(seed)
        super().reset(seed=seed)
        self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._reseed(seed)
        return self._flatten(self._env.reset().observation, self._layout, 5)[0], {}

    def step(self, action):
        time_step = self._env.step(np.clip(np.asarray(action, np.float64), -1.0, 1.0))
        obs = self._flatten(time_step.observation, self._layout, 5)[0]
        truncated = bool(time_step.last())
        return obs, float(time_step.reward), False, truncated, {"success": False}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        if self._renderer is None:
            from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

            physics = self._env.physics
            self._renderer = MujocoRenderer(physics.model.ptr, physics.data.ptr, width=320, height=240,
                                            camera_name="fixed")
        return self._renderer.render(self.render_mode)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


# -- families, tasks and sequences ---------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """One dynamics family: its tasks' variants, env builder, dims, reward and budgets."""

    name: str  # the sequence name and every task's ``domain`` (configs/domain/<name>.yaml)
    variants: tuple[str, ...]
    task_prefix: str  # task name = prefix + variant
    make: Callable[..., gymnasium.Env]  # (variant, seed, render_mode) -> env
    obs_dim: int
    act_dim: int
    episode_len: int
    action_bound: float
    reward_fn: Callable
    steps_per_task: int  # HyperCRL's env steps per task (cartpole: ours)
    return_scale: float  # score = return / return_scale
    gym_id: Callable[[str], str]  # variant -> gymnasium id
    description: str


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("cheetah-body", tuple(CHEETAH_PARTS), "HalfCheetah", _make_cheetah, 18, 6, 1000, 1.0, cheetah_reward,
           100_000, 1000.0, lambda v: f"crl/HalfCheetah{v}-v0",
           "HyperCRL's half-cheetah body tasks (BigTorso, BigThigh, BigLeg, BigFoot: geoms 1.25× thicker) on "
           "gymnasium HalfCheetah-v5, 18-d PETS state; 100k env steps each"),
    Family("pusher-object", tuple(PUSHER_OBJECTS), "Pusher-", _make_pusher, 23, 7, 100, 2.0, pusher_reward,
           4_000, 100.0, lambda v: f"crl/Pusher-{v}-v0",
           "gymnasium Pusher-v5 with the object's density/friction changed per task (stand-in for HyperCRL's "
           "robosuite pusher); 4k env steps each"),
    Family("cartpole-physics", tuple(CARTPOLE_VARIANTS), "cartpole-swingup-",
           lambda variant, seed=None, render_mode=None: CartpoleEnv(variant, seed, render_mode), 5, 1, 250, 1.0,
           cartpole_reward, 5_000, 250.0,
           lambda v: f"crl/cartpole-swingup-{v}-v0",
           "dm_control cartpole swing-up with the pole length or cart mass changed per task (0.04 s steps, "
           "250-step episodes, score = return / 250); 5k env steps each, cheap enough for CPU runs"),
)}


def _family_of_task(task_name: str) -> tuple[Family, str]:
    for family in FAMILIES.values():
        for variant in family.variants:
            if family.task_prefix + variant == task_name:
                return family, variant
    allowed = [f.task_prefix + v for f in FAMILIES.values() for v in f.variants]
    raise UsageError(f"unknown dynamics task '{task_name}'; allowed: {', '.join(allowed)}")


def make_env(task_name: str, seed: int | None = None, render_mode: str | None = None) -> gymnasium.Env:
    """One task of a dynamics family as a gymnasium env (``info["success"]`` always False); ``render_mode``
    as the simulator's (gymnasium's MuJoCo envs: rgb_array, depth_array, rgbd_tuple, and human with a display;
    cartpole: rgb_array, depth_array)."""
    family, variant = _family_of_task(task_name)
    if render_mode == "human" and not render_modes_here(["human"]):
        raise UsageError("render_mode 'human' opens a window and needs a display; use rgb_array")
    choose_offscreen_gl(render_mode)
    return family.make(variant, seed, render_mode)


def make_vec(task_name: str, n: int, seed: int, backend: str = "auto") -> InProcessVecEnv:
    """``n`` copies of a dynamics task in this process (env k seeded ``seed + k``); gymnasium only: EnvPool
    cannot change a model's geometry or masses."""
    if backend not in ("auto", "gymnasium"):
        raise UsageError(f"dynamics task '{task_name}' runs on backend gymnasium only (EnvPool cannot change "
                         f"the model), got '{backend}'; allowed: auto, gymnasium")
    return InProcessVecEnv([make_env(task_name, seed + k) for k in range(n)])


def family_tasks(family: Family) -> tuple[Task, ...]:
    names = [family.task_prefix + v for v in family.variants]
    return tuple(Task(
        name=name, index=i, domain=family.name, obs_dim=family.obs_dim, act_dim=family.act_dim,
        episode_len=family.episode_len, num_tasks=len(names),
        make_env=functools.partial(make_env, name), make_vec=functools.partial(make_vec, name),
        score="return", return_scale=family.return_scale, action_low=-family.action_bound,
        action_high=family.action_bound, reward_fn=family.reward_fn,
    ) for i, name in enumerate(names))


def reward_for_domain(domain: str) -> Callable:
    """The torch reward shared by every task of a dynamics family (agents restored without a Task use it)."""
    if domain not in FAMILIES:
        raise UsageError(f"domain '{domain}' has no torch reward; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[domain].reward_fn


def family_sequence(name: str) -> Sequence:
    family = FAMILIES[name]
    return Sequence(name=name, tasks=family_tasks(family), steps_per_task=family.steps_per_task,
                    description=family.description)


def gym_ids() -> dict[str, str]:
    """gymnasium id -> task name, for every task of every family."""
    return {f.gym_id(v): f.task_prefix + v for f in FAMILIES.values() for v in f.variants}


for _name, _family in FAMILIES.items():
    sequence(_name, _family.description)(functools.partial(family_sequence, _name))
