"""Planned actions per second of crl's CEM (crl/planning.py) at HyperCRL's HalfCheetah settings: 500
candidates × horizon 30 × 5 iterations through a 4×200 probabilistic MLP (18-d state, 6-d action), the
known reward in torch, full covariance. Printed beside, measured in the same run:

- the machine's matmul peak in each precision (a plain large matmul, best of several), and the fraction of it
  the planner's model arithmetic reaches (2·MACs of every candidate's forward pass per second);
- mbrl-lib (``pip install mbrl``, the ``bench`` extra) at identical settings, two ways:
  - its whole planning stack: its own model (``GaussianMLP``, 4×200, one ensemble member, in
    ``OneDTransitionRewardModel`` with delta targets) rolled out by ``ModelEnv.evaluate_action_sequences``
    (one particle), optimised by ``CEMOptimizer`` (elite ratio 0.1, α = 0: no momentum, as HyperCRL), fp32,
    one environment per call as mbrl plans;
  - ``CEMOptimizer`` alone, handed crl's fp32 model and rollout: the optimiser against the optimiser;
  and the ceiling: how many times mbrl-lib's stack crl's arithmetic would plan at 100% of the fp32 peak (no fp32
  planner doing that arithmetic gets past it).
- crl's planner with its model in each ``--dtypes`` precision (``agent.plan_dtype`` of HyperCRL): bf16
  matmuls, states and returns in fp32; bf16 only where the device has bf16 hardware (AVX512-BF16 or AMX on a CPU,
  where crl allows it). "top-50 agreement" is the share of the fp32 model's 50 best of 500
  candidate sequences that the bf16 model also ranks in its 50 best (same candidates, same start state).

    python scripts/bench_cem.py                 # CPU, all threads
    python scripts/bench_cem.py --device cuda   # the same on a GPU

On a CPU the times are this process's CPU seconds (``time.process_time``), so a machine shared with other
jobs gives rates per CPU-second rather than per wall second; the ratios, measured together, are what count.
The planners are timed with scripts/timing.py: one warm-up call each, then ``--repeats`` interleaved rounds of
one call per planner (order rotated), median actions/s with min–max and IQR, ratios taken per round; all on
``--threads`` torch threads in one process (the same cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from crl.devices import require_native_bf16
from crl.core import UsageError
from crl.envs.dynamics import cheetah_reward
from crl.hypernet import target_forward, target_shapes
from crl.planning import CEMConfig, plan, rollout_returns

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Program, measure, report, spread  # noqa: E402

OBS, ACT, HIDDEN = 18, 6, (200, 200, 200, 200)


def model(device: torch.device, dtype: torch.dtype = torch.float32):
    """crl's planning model as HyperCRL's agent runs it: weights in ``dtype``, inputs cast to it, the predicted
    deltas back in fp32, the probabilistic output layer cut to its mean half (``HyperCRL._cached``). Returns
    (dynamics, MACs per candidate step)."""
    torch.manual_seed(0)
    weights = []
    for shape in target_shapes(OBS + ACT, HIDDEN, 2 * OBS):
        weights.append((torch.randn(shape) / (shape[-1] ** 0.5 if len(shape) == 2 else 10)).to(device, dtype))
    weights[-2], weights[-1] = weights[-2][:OBS], weights[-1][:OBS]

    def dynamics(states, actions):
        return states + 0.01 * target_forward(torch.cat([states, actions], -1).to(dtype), weights).float()

    return dynamics, sum(w.numel() for w in weights[::2])


def mbrl_cem(device: torch.device, cfg: CEMConfig):
    """mbrl-lib's ``CEMOptimizer`` at ``cfg``'s settings (elite ratio, no momentum, as HyperCRL)."""
    from mbrl.planning.trajectory_opt import CEMOptimizer

    return CEMOptimizer(num_iterations=cfg.iterations, elite_ratio=cfg.elites / cfg.samples,
                        population_size=cfg.samples, lower_bound=[[-1.0] * ACT] * cfg.horizon,
                        upper_bound=[[1.0] * ACT] * cfg.horizon, alpha=0.0, device=device)


def mbrl_stack(device: torch.device, cfg: CEMConfig):
    """mbrl-lib's own planner at the same settings: plan(start_state (obs,) numpy) -> first action."""
    import gymnasium as gym
    from mbrl.models import GaussianMLP, ModelEnv, OneDTransitionRewardModel
    from mbrl.env import termination_fns

    import crl.envs  # noqa: F401  (registers crl/HalfCheetah*: its spaces are the 18-d state, 6-d action)

    torch.manual_seed(0)
    net = GaussianMLP(OBS + ACT, OBS, device, num_layers=len(HIDDEN), hid_size=HIDDEN[0], ensemble_size=1)
    dynamics_model = OneDTransitionRewardModel(net, target_is_delta=True, learned_rewards=False)
    env = gym.make("crl/HalfCheetahBigTorso-v0")
    model_env = ModelEnv(env, dynamics_model, termination_fns.no_termination,
                         reward_fn=lambda action, next_obs: cheetah_reward(None, action, next_obs).unsqueeze(-1),
                         generator=torch.Generator(device=device).manual_seed(0))
    env.close()
    optimizer = mbrl_cem(device, cfg)

    def plan_one(start):
        return optimizer.optimize(lambda pop: model_env.evaluate_action_sequences(pop, start, num_particles=1),
                                  x0=torch.zeros(cfg.horizon, ACT, device=device))[0]

    return plan_one


def top_agreement(device: torch.device, dtype: torch.dtype, cfg: CEMConfig, k: int = 50) -> float:
    obs = torch.randn(1, OBS, device=device)
    actions = torch.rand(1, cfg.samples, cfg.horizon, ACT, device=device) * 2 - 1
    best = [set(rollout_returns(obs, actions, model(device, d)[0], cheetah_reward)[0].topk(k).indices.tolist())
            for d in (torch.float32, dtype)]
    return len(best[0] & best[1]) / k


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


def matmul_peak(device: torch.device, size: int, dtype: torch.dtype) -> float:
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    seconds = timed(lambda: a @ b, device, 10)
    return 2 * size ** 3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--envs", default="1,8", help="environments planned per call, comma-separated")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="crl planner model precisions")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    chosen = [d.strip() for d in args.dtypes.split(",")]
    if any(d not in dtypes for d in chosen):
        raise SystemExit(f"--dtypes: unknown precision in {args.dtypes!r}; allowed: {', '.join(dtypes)}")
    if "bfloat16" in chosen:
        try:
            require_native_bf16("agent.plan_dtype=bfloat16", device)
        except UsageError as refused:
            print(f"bfloat16: not measured; crl refuses it here: {refused}")
            chosen.remove("bfloat16")
    cfg = CEMConfig(horizon=30, samples=500, elites=50, iterations=5)
    fp32_dynamics, macs = model(device)
    flop_per_action = 2 * macs * cfg.samples * cfg.horizon * cfg.iterations
    full_macs = sum(s[0] * s[1] for s in target_shapes(OBS + ACT, HIDDEN, 2 * OBS) if len(s) == 2)
    size = 4096 if device.type == "cuda" else 2048
    peaks = {d: matmul_peak(device, size, dtypes[d]) for d in dict.fromkeys(["float32", *chosen])}
    unit = "wall s" if device.type == "cuda" else "CPU s"
    print(f"device {device} ({args.threads} threads), torch {torch.__version__}; rates per {unit}")
    print(f"settings: {cfg.samples} candidates × horizon {cfg.horizon} × {cfg.iterations} iterations, target MLP "
          f"{OBS + ACT}→{'→'.join(map(str, HIDDEN))}→{2 * OBS}: {flop_per_action / 1e9:.1f} GFLOP of model per action "
          f"in crl, which skips the log-variance half of the output layer "
          f"({flop_per_action * full_macs / macs / 1e9:.1f} with it, as mbrl-lib)")
    print("matmul peak (plain matmul, same run): "
          + ", ".join(f"{d} {peak / 1e9:.1f} GFLOP/s" for d, peak in peaks.items()))
    for d in chosen:
        if d != "float32":
            print(f"{d} model: top-50 agreement with fp32 over 500 candidates {top_agreement(device, dtypes[d], cfg):.2f}")
    try:
        mbrl_plan_one, mbrl_optimizer = mbrl_stack(device, cfg), mbrl_cem(device, cfg)
    except ImportError as e:
        mbrl_plan_one = None
        print(f"mbrl-lib: not installed ({e}); pip install mbrl (the bench extra)")
    for n in [int(v) for v in args.envs.split(",")]:
        obs = torch.randn(n, OBS, device=device)
        print(f"n={n}:")
        programs = []
        if mbrl_plan_one is not None:
            starts = obs.cpu().numpy()

            def mbrl_plan():
                for k in range(n):  # mbrl-lib plans one environment per call
                    mbrl_plan_one(starts[k])
                sync(device)

            def mbrl_optimizer_on_crl_model():
                for k in range(n):
                    start = obs[k:k + 1]
                    mbrl_optimizer.optimize(lambda pop: rollout_returns(start, pop.unsqueeze(0), fp32_dynamics,
                                                                   cheetah_reward)[0],
                                       x0=torch.zeros(cfg.horizon, ACT, device=device))
                sync(device)

            programs += [Program("mbrl-lib stack (fp32)", mbrl_plan, n, threads=f"{args.threads} torch", warmup_calls=1),
                         Program("mbrl-lib CEMOptimizer on crl's model", mbrl_optimizer_on_crl_model, n,
                                 threads=f"{args.threads} torch", warmup_calls=1)]

        def crl_plan(dynamics):
            def block():
                plan(obs, dynamics, cheetah_reward, cfg, -1.0, 1.0, ACT)
                sync(device)
            return block

        crl_names = {d: f"crl CEM {d}" for d in chosen}
        programs += [Program(crl_names[d], crl_plan(model(device, dtypes[d])[0]), n, threads=f"{args.threads} torch",
                             warmup_calls=1) for d in chosen]
        clock = time.perf_counter if device.type == "cuda" else time.process_time
        results = measure(programs, rounds=args.repeats, seconds=0.0, unit="actions", clock=clock)
        ratios = [(crl_names[d], p.name) for d in chosen for p in programs[:2]] if mbrl_plan_one is not None else []
        print(report(results, ratios))
        median = {name: spread(rates)["median"] for name, rates in results.rates.items()}
        if mbrl_plan_one is not None:
            # No planner doing crl's arithmetic in fp32 beats the fp32 matmul peak: this is the most it can gain.
            ceiling = peaks["float32"] / flop_per_action / median["mbrl-lib stack (fp32)"]
            print(f"  crl's arithmetic at 100% of the fp32 peak would be {ceiling:.2f}× mbrl-lib's stack")
        for d in chosen:
            achieved = median[crl_names[d]] * flop_per_action
            print(f"  crl CEM, {d:8s} model: {achieved / 1e9:7.1f} GFLOP/s = {100 * achieved / peaks[d]:5.1f}% of the "
                  f"{d} matmul peak", flush=True)


if __name__ == "__main__":
    main()
