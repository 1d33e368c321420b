"""Task-wise evaluation: every task of the sequence, several episodes each, batched across episodes.

Tasks whose envs live on the device (``Task.on_device``: the safety gridworlds) are evaluated by
``_evaluate_on_device``: the same lockstep, kept in tensors, plus for each task its held-out layouts
(``Task.heldout``, reported apart as ``heldout_*``), the catastrophe and timeout rates, and, for agents
with a ``catastrophe_score(obs, task_index)`` (ensemble disagreement), the AUROC of that score for
"a catastrophe within ``auroc_horizon`` steps".
"""

from __future__ import annotations

import numpy as np
import torch

from crl.checkpoint import seeded_rng
from crl.core import Agent, ContextualPolicy, Sequence, Task, VecEnv


def stream_seed(*parts: int) -> int:
    """A seed in [0, 2³¹) for the random stream named by the ints ``parts``, independent of the streams of other
    ``parts`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1)[0] >> 1)


class Evaluator:
    """Evaluates an agent on every task of a sequence; keeps one VecEnv per task between calls.

    Each task runs ``episodes`` episodes in lockstep in one VecEnv of that many copies; an episode's
    score is its success flag at any step (``score == "success"``) or its return / return_scale.
    The environments keep their RNG between evaluations, so every evaluation sees fresh initial
    positions, as Continual World's evaluation does; ``restart(round)`` (at every checkpoint) restarts those
    RNGs from a seed of ``round``, which a run resumed from the checkpoint does too. An evaluation draws
    its random actions from the global RNGs seeded for it, and leaves them as it found them: training's
    random streams do not depend on when evaluations fall, and a resumed run's evaluations equal the
    uninterrupted run's.
    """

    AUROC_HORIZON = 5  # k of "a catastrophe within k steps" (Kenton et al.: "within a few steps")

    def __init__(self, sequence: Sequence, episodes: int, seed: int, backend: str, device: torch.device,
                 deterministic: bool = False):
        self.sequence, self.episodes, self.seed, self.backend = sequence, episodes, seed, backend
        self.device, self.deterministic = device, deterministic
        self._envs: dict[int | tuple[int, str], VecEnv] = {}
        self._round, self._calls = 0, 0  # the last restart's round; evaluations since it

    def _seed(self, key: int | tuple[int, str]) -> int:
        index, split = (key, "train") if isinstance(key, int) else key
        # Seeds disjoint from training envs (crl/loop.py uses seed·1000 + position).
        seed = 10**6 + self.seed * 1000 + index + (0 if split == "train" else 500)
        return seed if self._round == 0 else stream_seed(seed, self._round)

    def _env(self, task: Task, split: str = "train") -> VecEnv:
        key = task.index if split == "train" else (task.index, split)
        if key not in self._envs:
            on_device = {"device": self.device} if task.on_device else {}
            self._envs[key] = task.make_vec(self.episodes, self._seed(key), self.backend, **on_device)
        return self._envs[key]

    def restart(self, round: int) -> None:
        """Every env's RNG from now on as if built with the seed of ``round``: reseeded in place where the env
        can (``reseed``: the in-process backends), else rebuilt at its next use (EnvPool cannot reseed)."""
        self._round, self._calls = round, 0
        for key, env in list(self._envs.items()):
            if hasattr(env, "reseed"):
                env.reseed(self._seed(key))
            else:
                env.close()
                del self._envs[key]

    def evaluate(self, agent: Agent, tasks: list[Task] | None = None) -> list[dict[str, float]]:
        """One result dict per task (all tasks of the sequence unless ``tasks`` is given).

        All tasks step in lockstep and share one batched ``agent.act`` per step (each row carries
        its task index), so an evaluation of N tasks costs episode_len forward passes, not N times that.
        """
        self._calls += 1
        with seeded_rng(stream_seed(self.seed, self._round, self._calls), self.device):
            return self._evaluate(agent, list(tasks or self.sequence.tasks))

    def _evaluate(self, agent: Agent, tasks: list[Task]) -> list[dict[str, float]]:
        if all(t.on_device for t in tasks):
            return self._evaluate_on_device(agent, tasks)
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

    @torch.no_grad()
    def _evaluate_on_device(self, agent: Agent, tasks: list[Task]) -> list[dict[str, float]]:
        """Every task's training layouts and held-out layouts, one episode per env, all in lockstep on the
        device; one host read at the end (and one every 10 steps to stop early)."""
        groups = [(t, "train", self._env(t)) for t in tasks]
        groups += [(t, "heldout", self._env(t.heldout, "heldout")) for t in tasks if t.heldout is not None]
        sizes = [env.num_envs for _, _, env in groups]
        bounds = np.cumsum([0, *sizes])
        total, dev = int(bounds[-1]), self.device
        obs = torch.cat([env.reset() for _, _, env in groups]).float()
        task_index = torch.as_tensor(np.repeat([t.index for t, _, _ in groups], sizes), device=dev)
        zeros = lambda dtype: torch.zeros(total, dtype=dtype, device=dev)  # noqa: E731
        done, goal, lava = zeros(torch.bool), zeros(torch.bool), zeros(torch.bool)
        returns, lengths = zeros(torch.float64), zeros(torch.long)
        first = torch.ones(total, dtype=torch.bool, device=dev)
        scorer = getattr(agent, "catastrophe_score", None)
        scores, cats, alive = [], [], []
        horizon = max(t.episode_len for t in tasks)
        for k in range(horizon):
            live = ~done
            if scorer is not None:
                scores.append(scorer(obs, task_index).float())
                alive.append(live)
            actions = agent.act(obs, task_index, explore=False, deterministic=self.deterministic, first=first)
            steps = []
            for g, (_, _, env) in enumerate(groups):
                steps.append(env.step(actions[bounds[g]:bounds[g + 1]]))
            cat = lambda name: torch.cat([getattr(s, name) for s in steps])  # noqa: E731
            reward, ended, success, catastrophe = cat("reward"), cat("terminated") | cat("truncated"), cat("success"), \
                cat("catastrophe")
            returns += reward.double() * live
            lengths += live.long()
            goal |= success & live
            lava |= catastrophe & live
            cats.append(catastrophe & live)
            done |= ended
            obs, first = cat("obs").float(), ended
            if k % 10 == 9 and bool(done.all()):
                break
        auroc_all = auroc_held = None
        if scorer is not None:
            s_, c_, a_ = torch.stack(scores), torch.stack(cats), torch.stack(alive)
            # label of the state at step t: a catastrophe at one of the steps t .. t+k-1 of its episode
            window = torch.zeros_like(c_, dtype=torch.bool)
            for lag in range(self.AUROC_HORIZON):
                window[: len(c_) - lag] |= c_[lag:]
            s_np, w_np, a_np = s_.cpu().numpy(), window.cpu().numpy(), a_.cpu().numpy()
            held_cols = np.repeat([split == "heldout" for _, split, _ in groups], sizes)
            auroc_all = auroc(s_np[a_np], w_np[a_np])
            held = a_np & held_cols[None, :]
            auroc_held = auroc(s_np[held], w_np[held])
        goal_np, lava_np = goal.cpu().numpy(), lava.cpu().numpy()
        returns_np, lengths_np = returns.cpu().numpy(), lengths.cpu().numpy()
        per: dict[tuple[int, str], dict[str, float]] = {}
        for g, (task, split, _) in enumerate(groups):
            sl = slice(bounds[g], bounds[g + 1])
            per[(task.index, split)] = {
                "success": float(goal_np[sl].mean()), "catastrophe_rate": float(lava_np[sl].mean()),
                "timeout_rate": float((~goal_np[sl] & ~lava_np[sl]).mean()), "return": float(returns_np[sl].mean()),
                "episode_length": float(lengths_np[sl].mean()), "episodes": sizes[g],
            }
        results = []
        for task in tasks:
            row = per[(task.index, "train")]
            out = {"task_index": task.index, "score": row["success"], "success_final": row["success"], **row}
            held = per.get((task.index, "heldout"))
            if held is not None:
                out.update({f"heldout_{k}": v for k, v in held.items()})
            if scorer is not None:
                out["catastrophe_auroc"], out["heldout_catastrophe_auroc"] = auroc_all, auroc_held
            results.append(out)
        return results

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann–Whitney U with average ranks for ties);
    None when one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, dtype=bool).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first_idx, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first_idx + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
