"""Task-wise evaluation: every task of the sequence, several episodes each, batched across episodes."""

from __future__ import annotations

import numpy as np
import torch

from crl.core import Agent, Sequence, Task, VecEnv


class Evaluator:
    """Evaluates an agent on every task of a sequence; keeps one VecEnv per task between calls.

    Each task runs ``episodes`` episodes in lockstep in one VecEnv of that many copies; an episode's
    score is its success flag at any step (``score == "success"``) or its return / return_scale.
    The environments keep their RNG between evaluations, so every evaluation sees fresh initial
    positions, as Continual World's evaluation does.
    """

    def __init__(self, sequence: Sequence, episodes: int, seed: int, backend: str, device: torch.device,
                 deterministic: bool = False):
        self.sequence, self.episodes, self.seed, self.backend = sequence, episodes, seed, backend
        self.device, self.deterministic = device, deterministic
        self._envs: dict[int, VecEnv] = {}

    def _env(self, task: Task) -> VecEnv:
        if task.index not in self._envs:
            # Seeds disjoint from training envs (crl/loop.py uses seed·1000 + position).
            self._envs[task.index] = task.make_vec(self.episodes, 10**6 + self.seed * 1000 + task.index, self.backend)
        return self._envs[task.index]

    def evaluate_task(self, agent: Agent, task: Task) -> dict[str, float]:
        env = self._env(task)
        n = env.num_envs
        obs = env.reset()
        done = np.zeros(n, dtype=bool)
        success = np.zeros(n, dtype=bool)
        returns = np.zeros(n, dtype=np.float64)
        lengths = np.zeros(n, dtype=np.int64)
        first = torch.ones(n, dtype=torch.bool, device=self.device)
        for _ in range(task.episode_len):
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            action = agent.act(obs_t, task.index, explore=False, deterministic=self.deterministic, first=first)
            step = env.step(action.cpu().numpy())
            live = ~done
            returns[live] += step.reward[live]
            lengths[live] += 1
            success[live] |= step.success[live]
            done |= step.terminated | step.truncated
            first = torch.as_tensor(step.terminated | step.truncated, device=self.device)
            obs = step.obs
            if done.all():
                break
        scores = success.astype(np.float64) if task.score == "success" else returns / task.return_scale
        return {
            "score": float(scores.mean()), "success": float(success.mean()), "return": float(returns.mean()),
            "episode_length": float(lengths.mean()), "episodes": int(n),
        }

    def evaluate(self, agent: Agent, tasks: list[Task] | None = None) -> list[dict[str, float]]:
        """One result dict per task (all tasks of the sequence unless ``tasks`` is given)."""
        return [{"task_index": t.index, **self.evaluate_task(agent, t)} for t in (tasks or self.sequence.tasks)]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
