"""Task-wise evaluation: every task of the sequence, several episodes each, batched across episodes."""

from __future__ import annotations

import numpy as np
import torch

from crl.core import Agent, ContextualPolicy, Sequence, Task, VecEnv


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

    def evaluate(self, agent: Agent, tasks: list[Task] | None = None) -> list[dict[str, float]]:
        """One result dict per task (all tasks of the sequence unless ``tasks`` is given).

        All tasks step in lockstep and share one batched ``agent.act`` per step (each row carries
        its task index), so an evaluation of N tasks costs episode_len forward passes, not N times that.
        """
        tasks = list(tasks or self.sequence.tasks)
        envs = [self._env(t) for t in tasks]
        sizes = [env.num_envs for env in envs]
        bounds = np.cumsum([0, *sizes])
        total = int(bounds[-1])
        obs = np.concatenate([env.reset() for env in envs]).astype(np.float32, copy=False)
        task_index = torch.as_tensor(np.repeat([t.index for t in tasks], sizes), device=self.device)
        horizon = np.repeat([t.episode_len for t in tasks], sizes)
        done = np.zeros(total, dtype=bool)
        success = np.zeros(total, dtype=bool)
        final_success = np.zeros(total, dtype=bool)  # the flag at the episode's last step (L2M's reading)
        returns = np.zeros(total, dtype=np.float64)
        lengths = np.zeros(total, dtype=np.int64)
        first = torch.ones(total, dtype=torch.bool, device=self.device)
        contextual = isinstance(agent, ContextualPolicy)
        if contextual:
            agent.prepare_evaluation([t for t, n in zip(tasks, sizes) for _ in range(n)])
        step_reward = np.zeros(total, dtype=np.float32)
        for _ in range(int(horizon.max())):
            obs_t = torch.as_tensor(obs, device=self.device)
            actions = agent.act(obs_t, task_index, explore=False, deterministic=self.deterministic, first=first)
            actions = actions.cpu().numpy()
            ended = np.zeros(total, dtype=bool)
            for k, env in enumerate(envs):
                lo, hi = bounds[k], bounds[k + 1]
                if done[lo:hi].all():
                    continue
                step = env.step(actions[lo:hi])
                live = ~done[lo:hi]
                returns[lo:hi][live] += step.reward[live]
                lengths[lo:hi][live] += 1
                success[lo:hi][live] |= step.success[live]
                final_success[lo:hi][live] = step.success[live]
                ended[lo:hi] = step.terminated | step.truncated
                obs[lo:hi] = step.obs
                step_reward[lo:hi] = step.reward
            done |= ended
            first = torch.as_tensor(ended, device=self.device)
            if contextual:
                agent.after_step(torch.as_tensor(step_reward, device=self.device), first)
            if done.all():
                break
        results = []
        for k, task in enumerate(tasks):
            sl = slice(bounds[k], bounds[k + 1])
            scores = success[sl].astype(np.float64) if task.score == "success" else returns[sl] / task.return_scale
            results.append({
                "task_index": task.index, "score": float(scores.mean()), "success": float(success[sl].mean()),
                "success_final": float(final_success[sl].mean()),
                "return": float(returns[sl].mean()), "episode_length": float(lengths[sl].mean()),
                "episodes": sizes[k],
            })
        return results

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
