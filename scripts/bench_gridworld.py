"""Env steps per second of crl's batched lava gridworld against Farama Minigrid and NAVIX, in one run.

    PYTHONPATH=. python scripts/bench_gridworld.py [--device cpu|cuda] [--seconds 3]

Measured, each for about ``--seconds`` of stepping with uniformly random actions and autoreset:
- crl's ``GridVecEnv`` (envs/gridworld.py) on the 8 training layouts of the ``gap`` family at 1, 64 and 4096
  envs, on ``--device`` (a CUDA run synchronises once per timing window, not per step);
- Farama Minigrid's ``MiniGrid-LavaGapS7-v0`` (numpy, one env in this process; ``pip install minigrid``);
- NAVIX's ``Navix-LavaGapS7-v0`` (JAX, ``jit(vmap(step))`` under ``lax.scan``) at 64 and 4096 envs on JAX's
  default backend (``JAX_PLATFORMS=cpu`` for its CPU backend; ``pip install navix``).
Printed as steps/s and as ratios to Minigrid measured in the same run (what DESIGN.md asks of benchmarks).
A library that does not import is reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(step_block, steps_per_call: int, seconds: float) -> float:
    """steps/s of ``step_block()`` (which does ``steps_per_call`` env steps and blocks until they are done)."""
    step_block()  # warm-up (and compilation)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step_block()
        calls += 1
    return calls * steps_per_call / (time.perf_counter() - start)


def bench_crl(n: int, device: str, seconds: float) -> float:
    import torch

    from crl.envs import gridworld as g

    env = g.GridVecEnv(g.split_layouts("gap", 8, 0)[0], n, seed=0, device=device)
    env.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    chunk = 100

    def block():
        for _ in range(chunk):
            env.step(torch.randint(4, (n,), generator=gen, device=device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return timed(block, n * chunk, seconds)


def bench_minigrid(seconds: float) -> float:
    import gymnasium
    import minigrid  # noqa: F401  (registers MiniGrid-*)
    import numpy as np

    env = gymnasium.make("MiniGrid-LavaGapS7-v0")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    chunk = 1000

    def block():
        for a in rng.integers(0, 3, chunk):  # left, right, forward: the actions that matter
            _, _, term, trunc, _ = env.step(int(a))
            if term or trunc:
                env.reset()

    return timed(block, chunk, seconds)


def bench_navix(n: int, seconds: float) -> float:
    import jax
    import navix as nx

    env = nx.make("Navix-LavaGapS7-v0")
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    timesteps = jax.vmap(env.reset)(keys)
    chunk = 100

    @jax.jit
    def run(timesteps, key):
        def body(carry, k):
            actions = jax.random.randint(k, (n,), 0, 3)
            return jax.vmap(env.step)(carry, actions), None

        timesteps, _ = jax.lax.scan(body, timesteps, jax.random.split(key, chunk))
        return timesteps

    state = {"t": timesteps, "key": jax.random.PRNGKey(1)}

    def block():
        state["key"], k = jax.random.split(state["key"])
        state["t"] = run(state["t"], k)
        jax.block_until_ready(state["t"])

    return timed(block, n * chunk, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, float | None] = {}
    try:
        results["minigrid LavaGapS7 (numpy, 1 env)"] = bench_minigrid(args.seconds)
    except ImportError as e:
        print(f"minigrid skipped: {e}")
    for n in (1, 64, 4096):
        results[f"crl GridVecEnv {n} envs ({args.device})"] = bench_crl(n, args.device, args.seconds)
    try:
        import jax

        backend = jax.default_backend()
        for n in (64, 4096):
            results[f"navix LavaGapS7 {n} envs (jax {backend})"] = bench_navix(n, args.seconds)
    except ImportError as e:
        print(f"navix skipped: {e}")
    reference = next((v for k, v in results.items() if k.startswith("minigrid")), None)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, torch threads {args.threads}")
    for name, sps in results.items():
        ratio = f"{sps / reference:10.1f}x minigrid" if reference else ""
        print(f"{name:<44} {sps:14,.0f} steps/s {ratio}")
    crl_4096 = results.get(f"crl GridVecEnv 4096 envs ({args.device})")
    navix_4096 = next((v for k, v in results.items() if k.startswith("navix") and " 4096 " in k), None)
    if crl_4096 and navix_4096:
        print(f"crl / navix at 4096 envs: {crl_4096 / navix_4096:.2f}")


if __name__ == "__main__":
    main()
