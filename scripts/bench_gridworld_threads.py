"""Steps/s of crl's batched gridworld (``GridVecEnv``, CPU) under torch's default intra-op threads, as a user
who never calls ``torch.set_num_threads`` steps it, against ways of running its small tensor ops on fewer
threads (issue 25, item 8). All in one run, interleaved, on the 8 training layouts of the ``gap`` family:

- ``caller``: the env runs on the caller's thread setting (torch's default: one thread per core);
- ``env-guard-1``: ``GridVecEnv(torch_threads=1)``, the env's default: each ``reset``/``step`` sets one intra-op
  thread and restores the caller's setting after;
- ``global-1``: the caller set ``torch.set_num_threads(1)`` once (what crl's loop does; the bound for the guard).

``--busy K`` starts K processes that spin for the whole run (a busy machine; 0 = as the machine is).
Printed: steps/s (median of ``--rounds`` windows of ``--seconds``) and each design's ratio to ``caller``.

    PYTHONPATH=. python scripts/bench_gridworld_threads.py [--busy 2] [--seconds 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def steps_per_second(env, actions, seconds: float) -> float:
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            env.step(a)
        steps += len(actions) * env.num_envs
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=2, help="spinning processes started for the run")
    p.add_argument("--seconds", type=float, default=1.0, help="one timing window")
    p.add_argument("--rounds", type=int, default=5, help="windows per design and size (interleaved)")
    p.add_argument("--sizes", default="1,64,4096")
    args = p.parse_args()
    import torch

    from crl.envs import gridworld as g

    default_threads = torch.get_num_threads()
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for proc in spinners:
        proc.start()
    layouts = g.split_layouts("gap", 8, 0)[0]
    designs = ("caller", "env-guard-1", "global-1")
    print(f"torch {torch.__version__}, default intra-op threads {default_threads}, {args.busy} spinning processes")
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            gen = torch.Generator().manual_seed(0)
            actions = [torch.randint(4, (n,), generator=gen) for _ in range(100)]
            envs = {"caller": g.GridVecEnv(layouts, n, seed=0, torch_threads=None),
                    "env-guard-1": g.GridVecEnv(layouts, n, seed=0),
                    "global-1": g.GridVecEnv(layouts, n, seed=0, torch_threads=None)}
            rates: dict[str, list[float]] = {d: [] for d in designs}
            for env in envs.values():
                env.reset()
            for _ in range(args.rounds):
                for design in designs:
                    torch.set_num_threads(1 if design == "global-1" else default_threads)
                    rates[design].append(steps_per_second(envs[design], actions, args.seconds))
            torch.set_num_threads(default_threads)
            base = statistics.median(rates["caller"])
            print(f"{n:>5} envs: " + "  ".join(
                f"{d} {statistics.median(r):>11,.0f} steps/s ({statistics.median(r) / base:.2f}x)"
                for d, r in rates.items()))
    finally:
        stop.set()
        for proc in spinners:
            proc.join()


if __name__ == "__main__":
    main()
