"""Continual methods as extensions of a base learner, hooked in at named points of its training step.

A base learner (crl/offpolicy.py: SAC, TD3) runs one gradient step as below and calls every
extension of the agent at each named point, in the order they were composed
(``sac+ewc+episodic-memory``: EWC's hooks, then the memory's)::

    begin_task(task)                                   # a new task starts (before any of its steps)
    per vector step:  observe(transitions)             # after the learner stored them
    per gradient step:
        batch = extend_batch(batch)                    # the batch: add rows (memories)
        capture()                                      # networks whose activations this step records
        loss  = learner loss + Σ loss(batch)            # extra losses (penalties, cloning, KL)
        loss.backward()
        adjust_gradients(batch)                        # gradient surgery (A-GEM, PackNet masks)
        optimiser step, target update
        after_update(stats)                            # interventions on the weights (NaP, ReDo, resets; ARR)
    end_task(task)                                     # the task's budget is spent
    phases(task) / begin_phase / phase_step / end_phase  # work the loop runs, logs and checkpoints (PackNet)
    explore(obs) / act(obs, task_index, deterministic) # warm-up actions; evaluation-time weights

Unlike Avalanche's plugins, an extension shares no mutable strategy object: it reads the learner
through the documented attributes of crl.offpolicy.OffPolicyLearner (its networks, buffer, losses,
optimiser) and keeps its own state in the attributes it names in ``state``, which the agent's
checkpoint saves and restores without hand-written code (``save_state`` / ``load_state``).
Order matters only where two pieces touch the same thing; ``excludes`` names pairs that must not meet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from crl.core import UsageError

if TYPE_CHECKING:
    import torch

    from crl.core import Phase, Task, Transitions


class Extension:
    """A continual method added to a base learner (register with ``crl.registry.register_extension``).

    Class attributes: ``config_class`` (a dataclass of its own settings, merged flat into the agent's
    config), ``base_defaults`` (base-learner settings it changes, e.g. PackNet's gradient clipping),
    ``requires`` (capabilities the learner must provide: see OffPolicyLearner.provides), ``state``
    (attributes checkpointed with the agent: tensors, plain data, or objects with state_dict /
    load_state_dict), ``excludes`` ({other extension: why}).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    base_defaults: ClassVar[dict[str, Any]] = {}
    requires: ClassVar[frozenset[str]] = frozenset()
    state: ClassVar[tuple[str, ...]] = ()
    excludes: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # register_extension sets the registered name; until then, module:Class
            cls.name = f"{cls.__module__}:{cls.__qualname__}"

    def __init__(self, learner, cfg):
        self.learner, self.cfg = learner, cfg

    @classmethod
    def policy_linear(cls, cfg):
        """A factory for the policy's linear layers, or None (VCL: Bayesian layers). Called before the
        learner builds its networks."""
        return None

    @classmethod
    def network_options(cls, cfg) -> dict[str, Any]:
        """Options for building every network (NaP: a LayerNorm before every nonlinearity)."""
        return {}

    def begin_task(self, task: Task) -> None: ...

    def observe(self, batch: Transitions) -> None: ...

    def extend_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def capture(self) -> frozenset[str]:
        """Names of networks (keys of ``learner.probes``) whose activations the coming step records."""
        return frozenset()

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def adjust_gradients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def after_update(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def end_task(self, task: Task) -> None: ...

    def phases(self, task: Task) -> list[Phase]:
        """Phases to run after the task's budget; name each ``<extension name>/<what>``."""
        return []

    def begin_phase(self, phase: Phase, task: Task) -> None: ...

    def phase_step(self, phase: Phase) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{self.name} declared phase {phase.name} but has no phase_step")

    def end_phase(self, phase: Phase, task: Task) -> None: ...

    def explore(self, obs: torch.Tensor) -> torch.Tensor | None:
        """Warm-up actions instead of uniform ones, or None."""
        return None

    def act(self, obs: torch.Tensor, task_index: int | torch.Tensor, deterministic: bool) -> torch.Tensor | None:
        """The policy's actions with other weights (PackNet: each task's own), or None."""
        return None

    def after_load(self) -> None:
        """Called after ``load_state``: re-derive what is not saved (VCL: which norms train)."""


def save_state(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """{name: value} of ``obj``'s state attributes, as tensors and plain data (``state_dict()`` of objects)."""
    out = {}
    for name in names:
        value = getattr(obj, name)
        out[name] = value.state_dict() if hasattr(value, "state_dict") else value
    return out


def load_state(obj: Any, names: tuple[str, ...], state: dict[str, Any], device, owner: str = "") -> None:
    """Inverse of ``save_state``: objects with ``load_state_dict`` load in place, the rest is set (tensors moved
    to ``device``). State a checkpoint lacks (written by a crl whose ``owner`` kept other state) is bad input:
    one line, not a KeyError from deep inside the resume."""
    missing = [name for name in names if name not in state]
    if missing:
        raise UsageError(f"the checkpoint has no {', '.join(missing)} for {owner or type(obj).__name__} (written by "
                         f"another crl version, whose {owner or 'piece'} kept other state); resume it with that "
                         f"version or start a new run")
    for name in names:
        current = getattr(obj, name)
        if hasattr(current, "load_state_dict"):
            current.load_state_dict(state[name])
        else:
            setattr(obj, name, _to_device(state[name], device))


def _to_device(value: Any, device) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value
