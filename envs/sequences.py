"""The registry of task sequences: name -> (description, builder).

Each family registers its own sequences when its module is imported (Meta-World's CW sequences in
envs/metaworld.py, DMC's in envs/dmc.py): ``@sequence("name", "description")`` on a builder of
one named sequence, ``@custom_sequences("prefix:", "usage")`` on a builder of the ``prefix:<spec>``
sequences (``--seq mw:reach-v3,window-close-v3``). This module imports no family, so no family
module and the registry import each other; envs/__init__.py imports every module of the package (no list
of families), which every import of ``crl.envs`` runs, so ``SEQUENCES`` and ``make_sequence`` always see
them all; a user's family registers from a plugin module (crl.register: ``CRL_PLUGINS``, entry points),
imported on the first unknown name and by ``crl list``.
"""

from __future__ import annotations

from typing import Callable

from crl.core import Sequence, UsageError
from crl.register import load_plugins

SequenceBuilder = Callable[[], Sequence]
CustomBuilder = Callable[[str, str], Sequence]  # (spec after the prefix, full name) -> Sequence

SEQUENCES: dict[str, str] = {}  # name -> one-line description
_BUILDERS: dict[str, SequenceBuilder] = {}
_CUSTOM: dict[str, tuple[str, CustomBuilder]] = {}  # prefix -> (usage after the prefix, builder)


def sequence(name: str, description: str) -> Callable[[SequenceBuilder], SequenceBuilder]:
    """Decorator registering a builder of the sequence ``name``."""

    def register(builder: SequenceBuilder) -> SequenceBuilder:
        if name in _BUILDERS:
            raise ValueError(f"sequence '{name}' is already registered")
        SEQUENCES[name] = description
        _BUILDERS[name] = builder
        return builder

    return register


def custom_sequences(prefix: str, usage: str) -> Callable[[CustomBuilder], CustomBuilder]:
    """Decorator registering ``builder(spec, name)`` for every sequence name ``<prefix><spec>``.

    ``usage`` completes ``<prefix>`` in the unknown-sequence message ("<task>,... with DMC tasks").
    """

    def register(builder: CustomBuilder) -> CustomBuilder:
        if prefix in _CUSTOM:
            raise ValueError(f"sequence prefix '{prefix}' is already registered")
        _CUSTOM[prefix] = (usage, builder)
        return builder

    return register


def make_sequence(name: str) -> Sequence:
    """The sequence registered as ``name``, or a custom one (``mw:<task>,<task>,...``,
    ``dmc:<task>,...``); UsageError listing the allowed names otherwise."""
    for attempt in range(2):
        for prefix, (_, builder) in _CUSTOM.items():
            if name.startswith(prefix):
                return builder(name[len(prefix):], name)
        if name in _BUILDERS:
            return _BUILDERS[name]()
        if attempt == 0:
            load_plugins()  # a user's family registers its sequences when its plugin module is imported
    custom = "".join(f", or {prefix}{usage}" for prefix, (usage, _) in _CUSTOM.items())
    raise UsageError(f"unknown sequence '{name}'; allowed: {', '.join(sorted(_BUILDERS))}{custom} (crl list)")
