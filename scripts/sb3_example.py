"""Train Stable-Baselines3 SAC through Continual World CW10 in one ``learn()`` call.

The task switches happen inside the env (``crl/CW10-v0``), so SB3 sees a single run and a
single TensorBoard curve. A callback collects each finished episode's success per task.

    python scripts/sb3_example.py --steps 300 --steps-per-task 100
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import gymnasium
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback

from crl.envs import register_envs


class SuccessPerTask(BaseCallback):
    """Records ``info["is_success"]`` of every finished episode under ``info["task_name"]``."""

    def __init__(self) -> None:
        super().__init__()
        self.successes: dict[str, list[bool]] = defaultdict(list)

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "is_success" in info:
                self.successes[info["task_name"]].append(bool(info["is_success"]))
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="total env steps (default: %(default)s)")
    parser.add_argument("--steps-per-task", type=int, default=100, help="steps before switching task (CW: 1000000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1, help="CPU threads for torch (default: %(default)s)")
    args = parser.parse_args()

    # SAC's MLPs are too small to gain from several threads, and OpenMP threads that spin
    # while the env steps (or another process runs) can slow training down many times.
    torch.set_num_threads(args.torch_threads)

    register_envs()
    env = gymnasium.make("crl/CW10-v0", steps_per_task=args.steps_per_task)
    model = SAC("MlpPolicy", env, learning_starts=min(100, args.steps), seed=args.seed, verbose=0)
    callback = SuccessPerTask()
    model.learn(total_timesteps=args.steps, callback=callback)

    for task_name, successes in callback.successes.items():
        print(f"{task_name:24s} episodes {len(successes):4d}  success rate {sum(successes) / len(successes):.2f}")
    env.close()


if __name__ == "__main__":
    main()
