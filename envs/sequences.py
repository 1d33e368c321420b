"""The registry of task sequences: name -> (description, builder).

A new family (DMC, gridworld, ...) adds its sequences by decorating a builder function with
``@sequence("name", "description")``; ``SEQUENCES`` and ``make_sequence`` pick it up.
"""

from __future__ import annotations

from typing import Callable

from crl.core import Sequence, UsageError

from .metaworld import CW10, V3_TASK_NAMES, metaworld_task

CW_STEPS_PER_TASK = 1_000_000  # Continual World protocol

SequenceBuilder = Callable[[], Sequence]

SEQUENCES: dict[str, str] = {}  # name -> one-line description
_BUILDERS: dict[str, SequenceBuilder] = {}


def sequence(name: str, description: str) -> Callable[[SequenceBuilder], SequenceBuilder]:
    """Decorator registering a builder of the sequence ``name``."""

    def register(builder: SequenceBuilder) -> SequenceBuilder:
        if name in _BUILDERS:
            raise ValueError(f"sequence '{name}' is already registered")
        SEQUENCES[name] = description
        _BUILDERS[name] = builder
        return builder

    return register


CUSTOM_PREFIX = "mw:"  # --seq mw:reach-v3,window-close-v3 — any Meta-World v3 tasks, in order
DMC_PREFIX = "dmc:"  # --seq dmc:walker-walk — any DMC tasks, in order


def make_sequence(name: str) -> Sequence:
    """The sequence registered as ``name``, or ``mw:<task>,<task>,...`` / ``dmc:<task>,...`` for a
    custom Meta-World / DMC sequence; UsageError listing the allowed names otherwise."""
    if name.startswith(CUSTOM_PREFIX):
        return custom_metaworld_sequence(name)
    if name.startswith(DMC_PREFIX):
        from .dmc import custom_dmc_sequence  # envs/dmc.py registers its sequences here: import it late

        return custom_dmc_sequence(name[len(DMC_PREFIX):], name)
    if name not in _BUILDERS:
        raise UsageError(f"unknown sequence '{name}'; allowed: {', '.join(sorted(_BUILDERS))}, "
                         f"or {CUSTOM_PREFIX}<task>,<task>,... with Meta-World v3 tasks, "
                         f"or {DMC_PREFIX}<task>,... with DMC tasks (crl list)")
    return _BUILDERS[name]()


def custom_metaworld_sequence(name: str) -> Sequence:
    task_names = tuple(t.strip() for t in name[len(CUSTOM_PREFIX):].split(",") if t.strip())
    unknown = [t for t in task_names if t not in V3_TASK_NAMES]
    if not task_names or unknown:
        raise UsageError(f"custom sequence '{name}': unknown Meta-World task(s) {', '.join(unknown) or '(none given)'}; "
                         f"allowed: {', '.join(V3_TASK_NAMES)}")
    tasks = tuple(metaworld_task(task, index, len(task_names)) for index, task in enumerate(task_names))
    return Sequence(name=name, tasks=tasks, steps_per_task=CW_STEPS_PER_TASK,
                    description=f"custom Meta-World sequence of {len(tasks)} tasks, 1M steps each (CW protocol)")


def metaworld_sequence(name: str, task_names: tuple[str, ...], steps_per_task: int) -> Sequence:
    """A sequence of Meta-World tasks; each position is its own Task (index = position)."""
    tasks = tuple(metaworld_task(task, index, len(task_names)) for index, task in enumerate(task_names))
    return Sequence(name=name, tasks=tasks, steps_per_task=steps_per_task, description=SEQUENCES[name])


@sequence("cw10", "Continual World CW10: ten Meta-World v3 tasks, 1M steps each")
def _cw10() -> Sequence:
    return metaworld_sequence("cw10", CW10, CW_STEPS_PER_TASK)


@sequence("cw20", "Continual World CW20: CW10 twice (positions 10-19 repeat 0-9), 1M steps each")
def _cw20() -> Sequence:
    return metaworld_sequence("cw20", CW10 + CW10, CW_STEPS_PER_TASK)


@sequence("cw2", "first two CW10 tasks with a short budget, for smoke tests")
def _cw2() -> Sequence:
    return metaworld_sequence("cw2", CW10[:2], 2_000)
