"""Planned actions per second of crl's CEM (crl/planning.py) at HyperCRL's HalfCheetah settings: 500
candidates × horizon 30 × 5 iterations through a 4×200 probabilistic MLP (18-d state, 6-d action), the
known reward in torch, full covariance. Printed beside, measured in the same run:

- the machine's matmul peak (a plain large fp32 matmul, best of several), and the fraction of it the
  planner's model arithmetic reaches (2·MACs of every candidate's forward pass per second);
- mbrl-lib's ``CEMOptimizer`` (``pip install mbrl``, the ``bench`` extra) at identical settings (same
  model, same rollout, elite ratio 0.1, α = 0: no momentum, as HyperCRL), one environment per call
  as mbrl plans; with n environments it is called n times.

    python scripts/bench_cem.py                 # CPU, all threads
    python scripts/bench_cem.py --device cuda   # the same on a GPU

On a CPU the times are this process's CPU seconds (``time.process_time``), so a machine shared with other
jobs gives rates per CPU-second rather than per wall second; the ratios, measured together, are what count.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from crl.envs.dynamics import cheetah_reward
from crl.hypernet import target_forward, target_shapes
from crl.planning import CEMConfig, plan, rollout_returns

OBS, ACT, HIDDEN = 18, 6, (200, 200, 200, 200)


def model(device: torch.device):
    torch.manual_seed(0)
    weights = []
    for shape in target_shapes(OBS + ACT, HIDDEN, 2 * OBS):
        weights.append((torch.randn(shape) / (shape[-1] ** 0.5 if len(shape) == 2 else 10)).to(device))

    def dynamics(states, actions):
        out = target_forward(torch.cat([states, actions], -1), weights)
        return states + 0.01 * out[..., :OBS]  # the mean half of a probabilistic output

    macs = sum(s[0] * s[1] for s in target_shapes(OBS + ACT, HIDDEN, 2 * OBS) if len(s) == 2)
    return dynamics, macs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best seconds of ``fn`` over ``repeats``: CPU time of this process on a CPU (on a shared machine wall time
    mostly measures the other processes; CPU seconds count the work, so rates are per CPU-second of all the
    threads used), wall time on a GPU."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        sync(device)
        best = min(best, clock() - start)
    return best


def matmul_peak(device: torch.device, size: int) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = timed(lambda: a @ b, device, 10)
    return 2 * size ** 3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--envs", default="1,8", help="environments planned per call, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cfg = CEMConfig(horizon=30, samples=500, elites=50, iterations=5)
    dynamics, macs = model(device)
    flop_per_action = 2 * macs * cfg.samples * cfg.horizon * cfg.iterations
    peak = matmul_peak(device, 4096 if device.type == "cuda" else 2048)
    unit = "wall s" if device.type == "cuda" else "CPU s"
    print(f"device {device} ({args.threads} threads), torch {torch.__version__}; rates per {unit}")
    print(f"settings: {cfg.samples} candidates × horizon {cfg.horizon} × {cfg.iterations} iterations, target MLP "
          f"{OBS + ACT}→{'→'.join(map(str, HIDDEN))}→{2 * OBS}: {flop_per_action / 1e9:.1f} GFLOP of model per action")
    print(f"matmul peak (plain fp32 matmul, same run): {peak / 1e9:.1f} GFLOP/s")
    try:
        from mbrl.planning.trajectory_opt import CEMOptimizer
    except ImportError as e:
        CEMOptimizer = None
        print(f"mbrl-lib: not installed ({e}); pip install mbrl (the bench extra)")
    for n in [int(v) for v in args.envs.split(",")]:
        obs = torch.randn(n, OBS, device=device)
        seconds = timed(lambda: plan(obs, dynamics, cheetah_reward, cfg, -1.0, 1.0, ACT), device, args.repeats)
        rate = n / seconds
        achieved = rate * flop_per_action
        line = (f"n={n:<3} crl CEM: {rate:8.2f} actions/s, {achieved / 1e9:7.1f} GFLOP/s = "
                f"{100 * achieved / peak:5.1f}% of matmul peak")
        if CEMOptimizer is not None:
            optimizer = CEMOptimizer(num_iterations=cfg.iterations, elite_ratio=cfg.elites / cfg.samples,
                                     population_size=cfg.samples, lower_bound=[[-1.0] * ACT] * cfg.horizon,
                                     upper_bound=[[1.0] * ACT] * cfg.horizon, alpha=0.0, device=device)

            def mbrl_plan():
                for k in range(n):  # mbrl-lib plans one environment per call
                    start = obs[k:k + 1]
                    optimizer.optimize(lambda pop: rollout_returns(start, pop.unsqueeze(0), dynamics,
                                                                   cheetah_reward)[0],
                                       x0=torch.zeros(cfg.horizon, ACT, device=device))

            mbrl_rate = n / timed(mbrl_plan, device, max(1, args.repeats - 1))
            line += f"; mbrl-lib CEMOptimizer: {mbrl_rate:8.2f} actions/s; crl / mbrl-lib = {rate / mbrl_rate:5.2f}×"
        print(line, flush=True)


if __name__ == "__main__":
    main()
