"""Where agents, variants and continual-method extensions register: the tables and the decorators.

A module that defines an agent or a method imports these and nothing that finds agents, so crl.registry can
import every such module (it discovers them) without an import cycle (tests/test_import_graph.py). Users may
import the decorators from crl.registry too; it re-exports them. The user's plugin modules are loaded here
too, so crl.envs can find a plugin's sequences without importing crl.registry (which imports the agents).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from crl.core import UsageError


@dataclass(frozen=True)
class Variant:
    """A registered name for a composition with its own defaults (``ewc`` = ``sac+ewc`` with λ = 1e4)."""

    name: str
    of: str  # "sac", or "sac+ewc": what it is built from
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


AGENTS: dict[str, type] = {}  # base learners and standalone agents
VARIANTS: dict[str, Variant] = {}
EXTENSIONS: dict[str, type] = {}


def _taken(name: str, *kinds: dict) -> bool:
    """An agent or variant name is unique among agents and variants; an extension's among agents and extensions
    (a variant may share its extension's name: ``ewc`` first is ``sac+ewc``, after a + it is the extension)."""
    return any(name in kind for kind in kinds)


def register_agent(name: str, description: str) -> Callable[[type], type]:
    """Class decorator: ``crl train --agent <name>`` builds this class."""

    def decorate(cls: type) -> type:
        if _taken(name, AGENTS, VARIANTS) and AGENTS.get(name) is not cls:
            raise ValueError(f"agent name '{name}' is already registered")
        cls.agent_name, cls.description = name, description
        AGENTS[name] = cls
        return cls

    return decorate


def register_variant(name: str, of: str, description: str, **defaults: Any) -> None:
    """A name for a registered agent or composition with different defaults (checked when first used)."""
    if _taken(name, AGENTS):
        raise ValueError(f"agent name '{name}' is already registered")
    VARIANTS[name] = Variant(name, of, description, defaults)


def register_extension(name: str, description: str) -> Callable[[type], type]:
    """Class decorator for a crl.extension.Extension: composable as ``<agent>+<name>``."""

    def decorate(cls: type) -> type:
        if _taken(name, AGENTS) or EXTENSIONS.get(name, cls) is not cls:
            raise ValueError(f"extension name '{name}' is already registered")
        cls.name, cls.description = name, description
        EXTENSIONS[name] = cls
        return cls

    return decorate


PLUGINS_ENV = "CRL_PLUGINS"  # CRL_PLUGINS=my_pkg.agent,my_pkg.family: the user's modules (comma-separated)
PLUGINS_ENTRY_POINTS = "crl.plugins"  # an installed package's: [project.entry-points."crl.plugins"] name = "module"


def plugin_modules() -> list[str]:
    """The user's plugin modules: ``CRL_PLUGINS``'s, then the entry points', each once."""
    from importlib.metadata import entry_points  # here, not above: every `import crl` imports this module

    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    names += [entry.module for entry in entry_points(group=PLUGINS_ENTRY_POINTS)]
    return list(dict.fromkeys(names))


def load_plugins() -> None:
    """Import the user's plugin modules: each registers its agents, methods and sequences as crl's own do.
    crl.envs calls this too, so ``--seq`` finds a plugin's sequences."""
    if str(Path.cwd()) not in sys.path:  # like `python -m`: the user's own modules beside them
        sys.path.insert(0, str(Path.cwd()))
    for name in plugin_modules():
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UsageError(f"plugin module '{name}' ({PLUGINS_ENV} or a '{PLUGINS_ENTRY_POINTS}' entry point) "
                             f"cannot be imported: {e}") from None
