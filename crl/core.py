"""The contracts every part of crl is written against: Task, Sequence, VecEnv, Transitions, Agent
(with its optional ContextualAgent interface, LearnsFrom and Phase).

The loop that ties them together (crl/loop.py), in outline:

    agent = crl.registry.resolve(name) → AgentClass(obs_dim, act_dim, num_tasks, config, device)
    for task in sequence.tasks:                       # from the resume point
        agent.begin_task(task)
        vec = task.make_vec(n_envs, seed, backend)
        obs = vec.reset()
        while steps < budget:
            action = agent.act(obs, task.index, explore=True, first=first)
            step = vec.step(action)                   # same-step autoreset
            agent.observe(Transitions(obs, action, step.reward, step.final_obs, ...))
            agent.update()                            # the agent decides whether an update is due
            every eval interval: crl.evaluate.Evaluator(...).evaluate(agent)
        agent.phases(task) run step by step       # e.g. PackNet's retraining
        agent.end_task(task)

The loop owns time; the agent owns learning; environments own the world.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # annotations only: importing crl (and its gymnasium wrappers) must not load torch
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
    """A batch of ``num_envs`` copies of one task, stepped in lockstep (see VecStep).

    Optional: ``reseed(seed)``, after which the envs behave from their next ``reset`` on as a VecEnv built with
    ``seed`` would (the in-process backends have it; EnvPool's cannot: crl.evaluate.Evaluator.restart rebuilds
    those)."""

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

    Discrete actions (gridworld): ``n_actions > 0``; an action is then one integer per row (``act_dim == 1``).
    Safety (gridworld): ``catastrophes`` — the env's steps carry a ``catastrophe`` flag, counted apart from the
    score (in training too); ``heldout`` — the same task on held-out layouts, which every evaluation also
    runs and reports apart; ``mentor`` — a batched planner ``mentor(obs) -> actions`` (ask-for-help agents).
    ``on_device``: ``make_vec(n, seed, backend, device=...)`` builds envs whose ``reset``/``step`` take and
    return tensors on that device (envs/gridworld.py), so the loop never copies a step to the host.
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
    n_actions: int = 0  # > 0: discrete actions 0..n_actions-1
    catastrophes: bool = False  # the env flags catastrophes (VecStep.catastrophe)
    on_device: bool = False  # make_vec(..., device=) → tensors in and out on that device
    heldout: Task | None = field(default=None, repr=False, compare=False)  # held-out layouts, evaluated apart
    mentor: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)  # obs -> actions
    # The environment's reward as a torch function ``(obs, action, next_obs) -> reward`` batched over leading
    # dims, for agents that plan with a known reward (dynamics families, envs/dynamics.py); None elsewhere.
    reward_fn: Callable | None = field(default=None, repr=False, compare=False)


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
    catastrophe: torch.Tensor | None = None  # (n,) bool, where the task flags catastrophes (gridworld lava)

    def __len__(self) -> int:
        return self.obs.shape[0]


class LearnsFrom(str, enum.Enum):
    """Where an agent's experience comes from; the loop drives the two kinds differently."""

    ENV = "env"  # online: the loop collects vector steps and calls observe, then update
    DATASET = "dataset"  # offline: the agent holds the task's data; the loop calls update only


@dataclass(frozen=True)
class Phase:
    """Work an agent needs between a task's budget and its ``end_task`` (PackNet's retraining), which the
    loop runs one ``phase_step`` at a time: on the progress bar, in TensorBoard under ``phase/<name>/...``,
    and checkpointed every ``train.checkpoint_every`` of its steps, so a kill during it loses nothing."""

    name: str
    steps: int


Scalars = dict[str, "float | torch.Tensor"]
PhaseReport = Callable[[str, int, int, Scalars], None]  # (phase name, steps done, steps in all, scalars)


class Agent(abc.ABC):
    """What the loop needs from an agent; the loop it lives in (crl/loop.py)::

        agent = AgentClass(obs_dim, act_dim, num_tasks, config, device)   # config: AgentClass.config_class
        agent.prepare(tasks)              # crl train only (not crl eval): data, pre-trained models
        [agent.load_state_dict(checkpoint["agent"])]                      # on --resume
        for task in tasks (from the resume point):
            agent.begin_task(task)
            until the task's budget is spent:
                LearnsFrom.ENV:     a = agent.act(obs, task.index, explore=True, first=first)
                                    agent.observe(Transitions(...)); scalars = agent.update()
                LearnsFrom.DATASET: scalars = agent.update()
                every eval interval: agent.act(obs, task_indices, explore=False) on every task
            for phase in agent.phases(task): begin_phase, phase_step × phase.steps, end_phase
            agent.end_task(task)
            agent.measure_retention()     # the agent's own lower-is-better measurements (HyperCRL's errors)
            checkpoint: agent.state_dict()

    Construction: ``(obs_dim, act_dim, num_tasks, config, device)`` with ``config`` an instance of the
    class attribute ``config_class`` (a dataclass, one line per field). Register the class with
    ``crl.registry.register_agent`` beside it; variants with ``register_variant``.

    ``update()`` returns the scalars to log (empty when nothing happened). Values may be floats or 0-d
    tensors: the loop sums them without reading them and reads them once per ``train.log_every``
    (no host sync per step on a GPU).
    """

    learns_from: LearnsFrom = LearnsFrom.ENV
    config_class: type

    def prepare(self, tasks: list[Task], report: PhaseReport | None = None) -> None:
        """Called by ``crl train`` once per run segment, before training (and before a resume restores
        the checkpoint): fetch or build what the agent needs beyond its own weights, e.g. datasets and a
        pre-trained model (cached, and checkpointed while it is built, so a resume is quick). ``crl eval``
        does not call it: a run's own ``state_dict`` must be enough to act. ``report(name, done, total,
        scalars)`` shows the progress of long preparation in TensorBoard (``phase/<name>/...``).
        Default: nothing."""

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

    def observe(self, batch: Transitions) -> None:
        """A vector step of the current task (``LearnsFrom.ENV`` agents). Default: nothing."""

    @abc.abstractmethod
    def update(self) -> Scalars: ...

    def phases(self, task: Task) -> list[Phase]:
        """Phases to run after ``task``'s budget, before ``end_task``. Default: none."""
        return []

    def begin_phase(self, phase: Phase, task: Task) -> None:
        """Called once when a phase starts (not again when a resume continues it)."""

    def phase_step(self, phase: Phase) -> Scalars:
        raise NotImplementedError(f"{type(self).__name__} declared phase {phase.name} but has no phase_step")

    def end_phase(self, phase: Phase, task: Task) -> None: ...

    @abc.abstractmethod
    def end_task(self, task: Task) -> None: ...

    def measure_retention(self) -> dict[str, dict[int, float]]:
        """Called by the loop after every ``end_task``: what the agent itself measures on each task seen so far,
        beside the evaluator's scores, as ``{metric: {task position: value}}``, lower is better (e.g. a
        dynamics model's prediction error on held-out transitions, agents/hypercrl.py). The loop keeps them
        as error matrices in results.json, TensorBoard (``model/<task>/<metric>``) and ``crl report``.
        Default: none."""
        return {}

    def retention_tasks(self) -> list[Task]:
        """Tasks outside the sequence the agent should keep (e.g. its pre-training tasks); the loop
        evaluates them before and after the continual phase. Default: none."""
        return []

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: tensors and plain data only (checkpoints load with
        ``weights_only=True``; anything else is refused)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ContextualPolicy:
    """Acts from what came before in the episode (a Decision Transformer's window and return-to-go): the
    evaluator calls these hooks only on policies of this kind."""

    def prepare_evaluation(self, row_tasks: list[Task]) -> None:
        """Called before an evaluation with the task of every row the next ``act`` calls will see
        (e.g. a Decision Transformer looks up each row's return-to-go target)."""

    def after_step(self, reward: torch.Tensor, ended: torch.Tensor) -> None:
        """The reward of the action just taken and which rows' episodes ended, during evaluation."""


class ContextualAgent(ContextualPolicy, Agent):
    """An agent with context: the optional interface beside the Agent contract (agents/l2m.py)."""


class UsageError(Exception):
    """Bad user input: the CLI prints the message as one line and exits with code 2."""
