"""Overhead of the plasticity probes on SAC's update (CPU, gradient steps/s).

Three SAC agents with Continual World's networks (4×256, 10 heads, batch 128) on the same filled
replay buffer: probes off (``plasticity_every=0``), at the default cadence (every 1000 gradient
steps), and at every step (the worst case; Adaptive Replay Ratio's cheap per-step FAU is between).
They are timed in interleaved rounds so background load hits all alike; the ratios to "off" are
printed. Env stepping is excluded, so the overhead share of a real run is smaller still.

    python scripts/bench_plasticity.py                 # 3000 timed updates per agent
    python scripts/bench_plasticity.py --updates 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import time

import torch

from crl.registry import agent_class, make_agent_config
from crl.agents.sac import SAC, SACConfig
from crl.core import Transitions


def filled(agent: SAC, obs_dim: int, act_dim: int, n: int = 10_000) -> SAC:
    agent.observe(Transitions(obs=torch.randn(n, obs_dim), action=torch.rand(n, act_dim) * 2 - 1,
                              reward=torch.randn(n), next_obs=torch.randn(n, obs_dim), terminated=torch.zeros(n),
                              truncated=torch.zeros(n), task_index=torch.zeros(n, dtype=torch.long)))
    return agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3000, help="timed gradient steps per agent")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    obs_dim, act_dim, device = 39, 4, torch.device("cpu")
    agents = {
        "probes off": SAC(obs_dim, act_dim, 10, SACConfig(plasticity_every=0), device),
        "probes every 1000 (default)": SAC(obs_dim, act_dim, 10, SACConfig(), device),
        "probes every step": SAC(obs_dim, act_dim, 10, SACConfig(plasticity_every=1), device),
        "ARR (critic FAU every step)": agent_class("arr")(obs_dim, act_dim, 10, make_agent_config("arr"), device),
    }
    seconds = dict.fromkeys(agents, 0.0)
    per_round = args.updates // args.rounds
    for agent in agents.values():
        filled(agent, obs_dim, act_dim)
        for _ in range(20):
            agent.gradient_step()
    for _ in range(args.rounds):
        for name, agent in agents.items():
            start = time.perf_counter()
            for _ in range(per_round):
                agent.gradient_step()
            seconds[name] += time.perf_counter() - start
    n = per_round * args.rounds
    base = n / seconds["probes off"]
    print(f"SAC update, CW networks 4x256, batch 128, torch threads {torch.get_num_threads()}, "
          f"{n} timed updates per agent in {args.rounds} interleaved rounds")
    print(f"{'agent':32s} {'updates/s':>10s} {'time vs off':>12s}")
    for name in agents:
        rate = n / seconds[name]
        print(f"{name:32s} {rate:10.1f} {base / rate:12.3f}")
    print(f"overhead of the default cadence: {100 * (seconds['probes every 1000 (default)'] / seconds['probes off'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
