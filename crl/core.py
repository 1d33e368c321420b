"""The contracts every part of crl is written against: Task, Sequence, VecEnv, Transitions, Agent.

The loop that ties them together (crl/loop.py), in outline:

    agent = make_agent(name, spec, config)
    for task in sequence.tasks:                       # from the resume point
        agent.begin_task(task)
        vec = task.make_vec(n_envs, seed, backend)
        obs = vec.reset()
        while steps < budget:
            action = agent.act(obs, task.index, explore=True, first=first)
            step = vec.step(action)                   # same-step autoreset
            agent.observe(Transitions(obs, action, step.reward, step.final_obs, ...))
            agent.update()                            # the agent decides whether an update is due
            every eval interval: crl.evaluate.evaluate_all(agent, sequence)
        agent.end_task(task)

The loop owns time; the agent owns learning; environments own the world.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

@dataclass(frozen=True)
class VecStep:
    """One batched environment step, with same-step autoreset.

    Where ``terminated | truncated`` is set, ``obs`` already holds the first observation of the
    next episode and ``final_obs`` the true last observation of the one that ended; elsewhere
    the two are equal. ``success`` is the task's success flag at this step (False where the
    domain has none).
    """

    obs: np.ndarray  # (n, obs_dim) float32
    reward: np.ndarray  # (n,) float32
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    success: np.ndarray  # (n,) bool
    final_obs: np.ndarray  # (n, obs_dim) float32


class VecEnv(Protocol):
    """A batch of ``num_envs`` copies of one task, stepped in lockstep (see VecStep)."""

    num_envs: int
    backend: str

    def reset(self) -> np.ndarray:  # (n, obs_dim) float32
        ...

    def step(self, actions: np.ndarray) -> VecStep:
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class Task:
    """One task at one position of a sequence.

    ``make_env(seed)`` gives one gymnasium env of the task (task id NOT in the observation);
    ``make_vec(n, seed, backend)`` a VecEnv of n copies on backend "auto" or a named one.
    ``score`` says how an episode is scored: "success" = the success flag at any step
    (Meta-World, gridworld); "return" = episode return / ``return_scale`` (DMC).
    """

    name: str
    index: int
    domain: str
    obs_dim: int
    act_dim: int
    episode_len: int
    num_tasks: int
    make_env: Callable[[int], Any] = field(repr=False, compare=False)
    make_vec: Callable[[int, int, str], VecEnv] = field(repr=False, compare=False)
    score: str = "success"
    return_scale: float = 1.0
    action_low: float = -1.0
    action_high: float = 1.0


@dataclass(frozen=True)
class Sequence:
    """An ordered list of tasks with the protocol's default budgets."""

    name: str
    tasks: tuple[Task, ...]
    steps_per_task: int
    description: str = ""

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def labels(self) -> list[str]:
        """Unique names per position: a task seen twice (CW20) gets ``name#position``."""
        seen: dict[str, int] = {}
        out = []
        for t in self.tasks:
            seen[t.name] = seen.get(t.name, 0) + 1
            out.append(t.name if seen[t.name] == 1 else f"{t.name}#{t.index}")
        return out


@dataclass
class Transitions:
    """A batch of transitions as device tensors; ``next_obs`` is the true next observation."""

    obs: torch.Tensor  # (n, obs_dim)
    action: torch.Tensor  # (n, act_dim)
    reward: torch.Tensor  # (n,)
    next_obs: torch.Tensor  # (n, obs_dim)
    terminated: torch.Tensor  # (n,) float 0/1
    truncated: torch.Tensor  # (n,) float 0/1
    task_index: torch.Tensor  # (n,) long

    def __len__(self) -> int:
        return self.obs.shape[0]


class Agent(abc.ABC):
    """What the loop needs from an agent.

    ``learns_from`` is "env" for online agents (the loop collects and calls observe/update) or
    "dataset" for offline agents (the loop calls update only). ``update`` is called after every
    observed vector step and decides by itself whether a gradient step is due; it returns the
    scalars to log (empty dict when nothing happened).
    """

    learns_from: str = "env"

    def prepare(self, tasks: list[Task]) -> None:
        """Called by ``crl train`` once per run segment, before training (and before a resume restores
        the checkpoint): fetch or build what the agent needs beyond its own weights, e.g. datasets and a
        pre-trained model (cached, so a resume is quick). ``crl eval`` does not call it: a run's own
        ``state_dict`` must be enough to act. Default: nothing."""

    @abc.abstractmethod
    def begin_task(self, task: Task) -> None: ...

    @abc.abstractmethod
    def act(
        self, obs: torch.Tensor, task_index: int | torch.Tensor, *, explore: bool, deterministic: bool = False,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batched actions (n, act_dim) for observations (n, obs_dim) of task ``task_index``.

        ``task_index`` is one position for the whole batch or an (n,) long tensor, one per row
        (batched evaluation steps every task of the sequence at once).

        ``explore=True`` is training behaviour (warm-up random actions, exploration noise);
        ``explore=False`` is evaluation: a sample from the policy, or its mode if ``deterministic``.
        ``first`` marks observations that start an episode, for agents that keep context.
        """

    @abc.abstractmethod
    def observe(self, batch: Transitions) -> None: ...

    def prepare_evaluation(self, row_tasks: list[Task]) -> None:
        """Called before an evaluation with the task of every row the next ``act`` calls will see
        (e.g. a Decision Transformer looks up each row's return-to-go target). Default: nothing."""

    def retention_tasks(self) -> list[Task]:
        """Tasks outside the sequence the agent should keep (e.g. its pre-training tasks); the loop
        evaluates them before and after the continual phase. Default: none."""
        return []

    def after_step(self, reward: torch.Tensor, ended: torch.Tensor) -> None:
        """The reward of the action just taken and which rows' episodes ended, during evaluation,
        for agents that keep a context (a Decision Transformer's return-to-go). Default: nothing."""

    @abc.abstractmethod
    def update(self) -> dict[str, float]: ...

    @abc.abstractmethod
    def end_task(self, task: Task) -> None: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UsageError(Exception):
    """Bad user input: the CLI prints the message as one line and exits with code 2."""
