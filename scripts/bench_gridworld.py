"""Env steps per second of crl's batched lava gridworld against Farama Minigrid and NAVIX, in one run.

    JAX_PLATFORMS=cpu PYTHONPATH=. python scripts/bench_gridworld.py [--rounds 5] [--seconds 1] [--cores 0,1]

Timed with scripts/timing.py (issue 26, item 2): every program warmed up, then ``--rounds`` rounds of one
``--seconds`` window each, the programs interleaved (rotated each round); median steps/s with min–max and IQR,
and each crl/peer ratio taken per round (its median and range). All programs run in this one process, so they
share the same cores (``--cores`` pins it); their threads are printed with the results:
- crl's ``GridVecEnv`` (envs/gridworld.py) on the 8 training layouts of the ``gap`` family at 1, 64 and 4096
  envs on ``--device``, flat observations (what crl's agents get), same-step autoreset; its ops run on one torch
  intra-op thread (the env's ``torch_threads=1`` guard, or ops too small for torch to split: below 130 envs).
  Actions: uniform random, drawn 100 steps at a time;
- Farama Minigrid's ``MiniGrid-LavaGapS7-v0`` (numpy, one env, one thread; ``pip install minigrid``);
- NAVIX's ``Navix-LavaGapS7-v0`` (JAX, ``jit(vmap(step))`` under ``lax.scan``, 100 steps per call, random
  actions drawn inside) at 64 and 4096 envs on JAX's default backend (``JAX_PLATFORMS=cpu`` for CPU; ``pip
  install navix``). XLA's CPU runtime uses its own thread pool over the process's cores (``--xla-one-thread``
  restricts it to one: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``).
A library that does not import is reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import Program, measure, pin_cores, report  # noqa: E402

CHUNK = 100  # env steps per timed call


def crl_program(n: int, device: str) -> Program:
    import torch

    from crl.envs import gridworld as g

    env = g.GridVecEnv(g.split_layouts("gap", 8, 0)[0], n, seed=0, device=device)
    env.reset()
    gen = torch.Generator(device=device).manual_seed(0)

    def block():
        for action in torch.randint(4, (CHUNK, n), generator=gen, device=device):
            env.step(action)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return Program(f"crl {n} envs ({device})", block, n * CHUNK,
                   threads=f"{env.torch_threads} torch thread (env guard)" if env.torch_threads else
                   "1 (ops below torch's grain size)")


def minigrid_program() -> Program:
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

    return Program("minigrid 1 env (numpy)", block, chunk, threads="1 (Python)")


def navix_program(n: int) -> Program:
    import jax
    import navix as nx

    env = nx.make("Navix-LavaGapS7-v0")
    timesteps = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), n))

    @jax.jit
    def run(timesteps, key):
        def body(carry, k):
            actions = jax.random.randint(k, (n,), 0, 3)
            return jax.vmap(env.step)(carry, actions), None

        timesteps, _ = jax.lax.scan(body, timesteps, jax.random.split(key, CHUNK))
        return timesteps

    state = {"t": timesteps, "key": jax.random.PRNGKey(1)}

    def block():
        state["key"], k = jax.random.split(state["key"])
        state["t"] = run(state["t"], k)
        jax.block_until_ready(state["t"])

    xla = os.environ.get("XLA_FLAGS", "")
    threads = "1 (XLA, one-thread flags)" if "intra_op_parallelism_threads=1" in xla else \
        f"XLA CPU pool over {len(os.sched_getaffinity(0))} CPU(s)"
    return Program(f"navix {n} envs (jax {jax.default_backend()})", block, n * CHUNK, threads=threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=1.0, help="one timing window")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one window per program each)")
    p.add_argument("--cores", default=None, help="pin the process to these cores, e.g. 0,1 (default: as started)")
    p.add_argument("--sizes", default="1,64,4096", help="crl env counts (NAVIX runs the ones of 64 and 4096)")
    p.add_argument("--xla-one-thread", action="store_true", help="run XLA's CPU backend on one thread")
    args = p.parse_args()
    pin_cores(args.cores)
    if args.xla_one_thread:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    sizes = [int(s) for s in args.sizes.split(",")]
    programs: list[Program] = []
    try:
        programs.append(minigrid_program())
    except ImportError as e:
        print(f"minigrid skipped: {e}")
    crl = {n: crl_program(n, args.device) for n in sizes}
    programs += crl.values()
    navix: dict[int, Program] = {}
    try:
        navix = {n: navix_program(n) for n in sizes if n in (64, 4096)}
        programs += navix.values()
    except ImportError as e:
        print(f"navix skipped: {e}")
    results = measure(programs, rounds=args.rounds, seconds=args.seconds,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    ratios = [(crl[n].name, navix[n].name) for n in navix]
    if programs[0].name.startswith("minigrid"):
        ratios += [(crl[n].name, programs[0].name) for n in sizes if n > 1]
    print(report(results, ratios))


if __name__ == "__main__":
    main()
