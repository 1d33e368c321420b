"""ClonEx-SAC: behaviour cloning of the earlier tasks' actors, and exploration with the best of them.

Paper: Wołczyk et al., "Disentangling Transfer in Continual Reinforcement
Learning", NeurIPS 2022 (reference/continual-world.md: CW20 performance 0.87).

At the end of each task, ``memory_per_task`` states of its buffer are kept with the actor's output
distribution on them (μ, log σ of that task's head). While later tasks train, the actor also
minimises ``bc_coef`` · KL(stored ‖ current) on a memory batch of 128, each row through its own
task's head; the critic is not regularised (the paper: the critic matters most for transfer).
During a task's first ``start_steps`` transitions, instead of uniform actions, the agent explores
with the earlier head whose episodes on the new task return the most: each earlier head is tried
for one episode (episodes of parallel envs run side by side), then the best one acts for the rest of
the warm-up. Actor, critic and α gradients are clipped at norm 0.1.

Differs from the paper (whose code is not public; settings from the reference's third-party port,
unverified): the best head is chosen from the warm-up's own episodes instead of a separate
evaluation before the task starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crl.continual import EpisodicMemory, gaussian_kl
from crl.core import Task, Transitions
from crl.extension import Extension
from crl.registry import register_extension, register_variant


@dataclass
class ClonExConfig:
    bc_coef: float = 100.0  # weight of the cloning KL
    memory_per_task: int = 10_000  # states (with the policy's μ, log σ) kept per finished task
    memory_batch_size: int = 128
    best_return_exploration: bool = True  # warm-up with the best earlier head instead of uniform actions


@register_extension("clonex", "behaviour cloning of past policies + best-return exploration (Wołczyk et al. 2022)")
class ClonEx(Extension):
    config_class = ClonExConfig
    base_defaults = {"clip_grad_norm": 0.1}
    requires = frozenset({"replay", "gaussian_policy"})
    state = ("memory", "head_returns", "row_heads", "row_returns")

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        self.memory = EpisodicMemory(learner.device)
        self.head_returns: dict[int, list[float]] = {}  # earlier head → returns of its warm-up episodes
        self.row_heads: torch.Tensor | None = None  # the head each parallel env explores with
        self.row_returns: torch.Tensor | None = None

    def begin_task(self, task: Task) -> None:
        self.head_returns, self.row_heads, self.row_returns = {}, None, None

    @torch.no_grad()
    def end_task(self, task: Task) -> None:
        learner = self.learner
        if not learner.buffer.size:
            return
        obs = learner.buffer.sample(self.cfg.memory_per_task)["obs"]
        mu, log_std = learner.actor.distribution(learner.policy_input(obs, task.index), learner.heads(task.index))
        self.memory.add({"obs": obs, "mu": mu, "log_std": log_std,
                         "task_index": torch.full((obs.shape[0],), task.index, device=learner.device)})

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not len(self.memory):
            return None
        learner = self.learner
        kept = self.memory.sample(self.cfg.memory_batch_size)
        tasks = kept["task_index"]
        mu, log_std = learner.actor.distribution(learner.policy_input(kept["obs"], tasks), learner.heads(tasks))
        return self.cfg.bc_coef * gaussian_kl(kept["mu"], kept["log_std"], mu, log_std).mean()

    # -- best-return exploration ----------------------------------------------------------------

    def _next_head(self) -> int:
        task_index = self.learner.task_index
        untried = [h for h in range(task_index) if h not in self.head_returns]
        if untried:
            self.head_returns[untried[0]] = []  # claimed: the next row takes the next head
            return untried[0]
        finished = {h: sum(r) / len(r) for h, r in self.head_returns.items() if r}
        if not finished:  # every head is being tried and none has finished an episode yet
            return int(torch.randint(0, task_index, ()))
        return max(finished, key=finished.get)

    def explore(self, obs: torch.Tensor) -> torch.Tensor | None:
        learner = self.learner
        if learner.task_index == 0 or not self.cfg.best_return_exploration:
            return None
        if self.row_heads is None or self.row_heads.shape[0] != obs.shape[0]:
            self.row_heads = torch.tensor([self._next_head() for _ in range(obs.shape[0])], device=learner.device)
            self.row_returns = torch.zeros(obs.shape[0], device=learner.device)
        return learner.policy_actions(obs, self.row_heads, deterministic=False)

    def observe(self, batch: Transitions) -> None:
        # the learner has counted these transitions already: they were explored if they fell in the warm-up
        exploring = self.row_heads is not None and self.learner.task_steps - len(batch) < self.learner.cfg.start_steps
        if not exploring:
            return
        self.row_returns += batch.reward
        for row in torch.nonzero((batch.terminated + batch.truncated) > 0).flatten().tolist():
            self.head_returns.setdefault(int(self.row_heads[row]), []).append(float(self.row_returns[row]))
            self.row_returns[row] = 0.0
            self.row_heads[row] = self._next_head()


register_variant("clonex", "sac+clonex",
                 "ClonEx-SAC: behaviour cloning of past actors + best-return exploration (Wołczyk et al. 2022)")
