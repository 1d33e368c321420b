"""Overhead of the plasticity probes on SAC's update (CPU, gradient steps/s).

Three SAC agents with Continual World's networks (4×256, 10 heads, batch 128) on the same filled
replay buffer: probes off (``plasticity_every=0``), at the default cadence (every 1000 gradient
steps), and at every step (the worst case; Adaptive Replay Ratio's cheap per-step FAU is between).
Timed with scripts/timing.py: interleaved rounds, one window of ``--per-window`` updates per agent and round
(1000 by default, so each window of the default cadence holds exactly one probe), median and spread; the
ratio "time vs off" is taken per round. All on ``--threads`` torch threads in one process (the same cores).
Env stepping is excluded, so the overhead share of a real run is smaller still.

    python scripts/bench_plasticity.py                 # 3 rounds of 1000 updates per agent
    python scripts/bench_plasticity.py --per-window 200 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Program, measure, report  # noqa: E402

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
    parser.add_argument("--per-window", type=int, default=1000, help="gradient steps per agent in each timed window")
    parser.add_argument("--rounds", type=int, default=3)
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

    def updates(agent: SAC):
        def block():
            for _ in range(args.per_window):
                agent.gradient_step()
        return block

    programs = []
    for name, agent in agents.items():
        filled(agent, obs_dim, act_dim)
        for _ in range(20):
            agent.gradient_step()
        programs.append(Program(name, updates(agent), args.per_window, threads=f"{torch.get_num_threads()} torch",
                                warmup_calls=0))
    print(f"SAC update, CW networks 4x256, batch 128, {args.per_window} updates per window")
    results = measure(programs, rounds=args.rounds, seconds=0.0, unit="updates")
    # rate(off) / rate(x) per round = x's time relative to off
    print(report(results, [("probes off", name) for name in list(agents)[1:]]))
    print("(a ratio 'probes off / X' is X's time per update relative to probes off)")


if __name__ == "__main__":
    main()
