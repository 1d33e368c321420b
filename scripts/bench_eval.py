"""What a CW10 evaluation costs next to the training between two evaluations (CPU, seconds).

One SAC agent with Continual World's networks; crl/evaluate.py's Evaluator runs every task of CW10
with ``--episodes`` episodes each (CW: 10 × 10 × 200 = 20,000 env steps, all tasks batched into one
``act`` per step). In the same run, the same agent trains on hammer-v3 with CW's schedule (50
updates every 50 env steps, batch 128) for ``--train-steps`` steps; the time for CW's 20,000 steps
between evaluations is extrapolated from that, and the ratio printed. Timed with scripts/timing.py: the two
interleaved over ``--rounds`` rounds (one evaluation, then ``--train-steps`` steps, order rotated), median and
spread, the ratio taken per round; both on ``--threads`` torch threads in one process.

    python scripts/bench_eval.py                       # EnvPool where it imports
    python scripts/bench_eval.py --backend gymnasium --episodes 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from crl.agents.sac import SAC, SACConfig
from crl.core import Transitions
from crl.envs import make_sequence
from crl.envs.vector import BACKENDS, resolve_backend
from crl.evaluate import Evaluator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Program, measure, report, spread  # noqa: E402


def training_block(agent: SAC, task, backend: str, steps: int):
    """A callable doing ``steps`` env steps of CW's training loop (act → step → observe → update), updates running."""
    env = task.make_vec(1, 0, backend)
    obs = torch.as_tensor(env.reset())
    task_idx = torch.full((1,), task.index)

    def step() -> None:
        nonlocal obs
        action = agent.act(obs, task.index, explore=True)
        out = env.step(action.numpy())
        agent.observe(Transitions(obs=obs, action=action, reward=torch.as_tensor(out.reward),
                                  next_obs=torch.as_tensor(out.final_obs), terminated=torch.as_tensor(out.terminated).float(),
                                  truncated=torch.as_tensor(out.truncated).float(), task_index=task_idx))
        agent.update()
        obs = torch.as_tensor(out.obs)

    while agent.gradient_steps == 0 or agent.pending_updates >= 1:  # past the warm-up, at a round's end
        step()

    def block() -> None:
        for _ in range(steps):
            step()

    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (CW: 10)")
    parser.add_argument("--eval-every", type=int, default=20_000, help="env steps between evaluations (CW: 20k)")
    parser.add_argument("--train-steps", type=int, default=1000, help="timed training steps (a multiple of 50)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backend = resolve_backend(args.backend)
    seq = make_sequence("cw10")
    task = seq.tasks[0]
    agent = SAC(task.obs_dim, task.act_dim, len(seq), SACConfig(start_steps=1000, update_after=1000), torch.device("cpu"))
    agent.begin_task(task)
    evaluator = Evaluator(seq, args.episodes, seed=0, backend=backend, device=torch.device("cpu"))
    env_steps = sum(args.episodes * t.episode_len for t in seq.tasks)
    programs = [Program("evaluation", lambda: evaluator.evaluate(agent), env_steps, threads=f"{args.threads} torch",
                        warmup_calls=1),  # the first builds the envs (once per run)
                Program("training", training_block(agent, task, backend, args.train_steps), args.train_steps,
                        threads=f"{args.threads} torch", warmup_calls=0)]
    results = measure(programs, rounds=args.rounds, seconds=0.0)
    evaluator.close()
    # per round: seconds of one evaluation / seconds of the training between two evaluations
    ratios = [(env_steps / e) / (args.eval_every / t) for e, t in zip(results.rates["evaluation"], results.rates["training"])]
    print(f"backend {backend}, CW10: {len(seq.tasks)} tasks × {args.episodes} episodes × 200 steps = {env_steps} env "
          f"steps, one batched act per step; training: {args.train_steps} steps a window with CW's updates")
    print(report(results))
    eval_s, train_s = env_steps / statistics.median(results.rates["evaluation"]), \
        args.eval_every / statistics.median(results.rates["training"])
    r = spread(ratios)
    print(f"evaluation: {eval_s:.1f} s; training between evaluations ({args.eval_every} steps): {train_s:.0f} s")
    print(f"ratio evaluation / training between evaluations: median {r['median']:.3f} (per round, min–max "
          f"{r['min']:.3f}–{r['max']:.3f})")


if __name__ == "__main__":
    main()
