"""What a CW10 evaluation costs next to the training between two evaluations (CPU, seconds).

One SAC agent with Continual World's networks; crl/evaluate.py's Evaluator runs every task of CW10
with ``--episodes`` episodes each (CW: 10 × 10 × 200 = 20,000 env steps, all tasks batched into one
``act`` per step). In the same run, the same agent trains on hammer-v3 with CW's schedule (50
updates every 50 env steps, batch 128) for ``--train-steps`` steps; the time for CW's 20,000 steps
between evaluations is extrapolated from that, and the ratio printed.

    python scripts/bench_eval.py                       # EnvPool where it imports
    python scripts/bench_eval.py --backend gymnasium --episodes 10
"""

from __future__ import annotations

import argparse
import time

import torch

from crl.agents.sac import SAC, SACConfig
from crl.core import Transitions
from crl.envs import make_sequence
from crl.envs.vector import BACKENDS, resolve_backend
from crl.evaluate import Evaluator


def train_seconds_per_step(agent: SAC, task, backend: str, steps: int) -> float:
    """Seconds per env step of CW's training loop (act → step → observe → update), updates running."""
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
    start = time.perf_counter()
    for _ in range(steps):
        step()
    env.close()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (CW: 10)")
    parser.add_argument("--eval-every", type=int, default=20_000, help="env steps between evaluations (CW: 20k)")
    parser.add_argument("--train-steps", type=int, default=1000, help="timed training steps (a multiple of 50)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backend = resolve_backend(args.backend)
    seq = make_sequence("cw10")
    task = seq.tasks[0]
    agent = SAC(task.obs_dim, task.act_dim, len(seq), SACConfig(start_steps=1000, update_after=1000), torch.device("cpu"))
    agent.begin_task(task)
    evaluator = Evaluator(seq, args.episodes, seed=0, backend=backend, device=torch.device("cpu"))
    evaluator.evaluate(agent)  # builds the envs (not timed: once per run)
    start = time.perf_counter()
    rows = evaluator.evaluate(agent)
    eval_seconds = time.perf_counter() - start
    evaluator.close()
    per_step = train_seconds_per_step(agent, task, backend, args.train_steps)
    train_seconds = per_step * args.eval_every
    env_steps = sum(args.episodes * t.episode_len for t in seq.tasks)
    print(f"backend {backend}, torch threads {torch.get_num_threads()}, CW10: {len(rows)} tasks × {args.episodes} "
          f"episodes × 200 steps = {env_steps} env steps, one batched act per step")
    print(f"evaluation: {eval_seconds:.1f} s ({env_steps / eval_seconds:.0f} env steps/s)")
    print(f"training between evaluations: {args.eval_every} steps × {1000 * per_step:.1f} ms = {train_seconds:.0f} s "
          f"(measured over {args.train_steps} steps with CW's updates)")
    print(f"ratio evaluation / training between evaluations: {eval_seconds / train_seconds:.3f}")


if __name__ == "__main__":
    main()
