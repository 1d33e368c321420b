"""Where agents and continual-method extensions are registered, and how a name becomes an agent.

Agents register beside their class, as sequences do (``@sequence`` in crl/envs)::

    @register_agent("sac", "SAC fine-tuning, Continual World architecture (Wołczyk et al. 2021)")
    class SAC(OffPolicyLearner): ...

    register_variant("perfect-memory", "sac", "SAC with a reservoir buffer of every task, never reset (CW)",
                     reset_buffer_on_task=False, reservoir_buffer=True)

    @register_extension("ewc", "EWC penalty on the policy body (Kirkpatrick et al. 2017; CW: λ=1e4)")
    class EWC(Extension): ...

A name given to ``crl train --agent`` is one of:
- a registered agent or variant: ``sac``, ``l2m-oracle``, ``ewc`` (a variant ``sac+ewc`` with CW's λ);
- a composition ``<agent>+<extension>+...``: ``sac+ewc+episodic-memory``, ``td3+packnet``, ``ewc+redo``;
  an extension may be ``module:Class`` too (``sac+my_pkg.anchor:CriticAnchor``);
- ``module:Class`` naming an Agent subclass in the user's own module (imported from the current
  directory or the Python path), e.g. ``my_pkg.my_agent:MyAgent``. Its file may register more names;
  its names are known to every ``crl`` command when the module is a plugin (below).

Discovery, not lists: on first lookup every module of the ``crl.agents`` package and ``crl.interventions``
is imported (a new file in agents/ is found with nothing else to edit), then the user's plugin modules:
``CRL_PLUGINS=my_pkg.agents,my_pkg.family`` (comma-separated, importable from the current directory or the
Python path), and an installed package's entry points in the group ``crl.plugins``
(``[project.entry-points."crl.plugins"] my_pkg = "my_pkg.agents"``). A plugin module registers agents,
methods and env-family sequences with the same decorators crl's own use.

The decorators and tables live in crl.register (a leaf module: what an agent file imports); this module finds
and resolves. Importing it loads no torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crl.core import Agent, UsageError
from crl.extension import Extension
from crl.register import (AGENTS, EXTENSIONS, VARIANTS, Variant, load_plugins, register_agent,  # noqa: F401
                          register_extension, register_variant)  # (users import the decorators from here too)


@dataclass(frozen=True)
class Resolved:
    """What an agent name stands for: the class to build, its config (with defaults applied), its family."""

    name: str
    agent_class: type
    extensions: tuple[type, ...]
    defaults: dict[str, Any]
    family: str  # the base agent's name: presets' ``agents: {<family>: ...}`` sections configure its members

    def make_config(self) -> Any:
        """A fresh config dataclass of this agent (base fields + each extension's), defaults applied."""
        config_class = composed_config_class(self.agent_class, self.extensions)
        return config_class(**self.defaults)


DISCOVERED = ("crl.agents", "crl.interventions")  # every module of a package, or one module: each registers what it
# defines when imported (crl.register); a new file in agents/ needs no edit here
_discovered = False


def discover() -> None:
    """Import every module of crl's agent and method packages, then the user's plugin modules (once)."""
    global _discovered
    if not _discovered:
        _discovered = True
        for name in DISCOVERED:
            module = importlib.import_module(name)
            for info in pkgutil.iter_modules(getattr(module, "__path__", ())):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{name}.{info.name}")
        load_plugins()


def _import_user_agent(spec: str) -> type:
    return _import_user_class(spec, Agent, "agent", "a crl.Agent subclass")


def _import_user_class(spec: str, base: type, kind: str, what: str) -> type:
    module_name, _, class_name = spec.partition(":")
    if str(Path.cwd()) not in sys.path:  # like `python -m`: the user's own modules beside them
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"{kind} '{spec}': cannot import module '{module_name}' ({e}); "
                         "give module:Class with the module on the Python path or in the current directory") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UsageError(f"{kind} '{spec}': '{class_name}' in {module_name} is not {what}")
    return cls


def user_agent_name(cls: type) -> str:
    """The ``module:Class`` name of an agent class (a run dir records it, so ``--resume`` finds it)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed() -> str:
    return ", ".join(sorted({**AGENTS, **VARIANTS})) + "; compose with +<extension> (" + ", ".join(sorted(EXTENSIONS)) + \
        "), or give module:Class"


def resolve(name: str) -> Resolved:
    """The agent a name stands for, or a UsageError naming what is allowed."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"agent name must be a non-empty string, got {name!r}")
    discover()
    head, *pieces = name.split("+")
    if ":" in head:  # the user's own class, perhaps with crl's extensions: my_pkg.agent:MyLearner+ewc
        cls = _import_user_agent(head)
        resolved = Resolved(head, cls, (), {}, getattr(cls, "agent_name", head))
    elif head in VARIANTS:
        variant = VARIANTS[head]
        base = resolve(variant.of)
        resolved = Resolved(head, base.agent_class, base.extensions, {**base.defaults, **variant.defaults}, base.family)
    elif head in AGENTS:
        resolved = Resolved(head, AGENTS[head], (), {}, head)
    elif head in EXTENSIONS:
        raise UsageError(f"'{head}' is an extension, not an agent: compose it onto one, e.g. sac+{head}")
    else:
        raise UsageError(f"unknown agent '{head}'; allowed: {_allowed()}")
    extensions = list(resolved.extensions)
    for piece in pieces:
        if ":" in piece:  # the user's own extension class
            extensions.append(_import_user_class(piece, Extension, "extension", "a crl.extension.Extension subclass"))
            continue
        if piece not in EXTENSIONS:
            hint = " (it is an agent: put it first)" if piece in AGENTS or piece in VARIANTS else ""
            raise UsageError(f"unknown extension '{piece}' in '{name}'{hint}; allowed: {', '.join(sorted(EXTENSIONS))}")
        ext = EXTENSIONS[piece]
        if ext in extensions:
            raise UsageError(f"extension '{piece}' appears twice in '{name}'")
        extensions.append(ext)
    check_composable(resolved.agent_class, extensions, name)
    return Resolved(name, resolved.agent_class, tuple(extensions), resolved.defaults, resolved.family)


def check_composable(agent_class: type, extensions: list[type], name: str) -> None:
    """Each extension's needs are capabilities the agent provides; no two pieces set one field differently."""
    if extensions and not getattr(agent_class, "extensible", False):
        raise UsageError(f"'{name}': agent '{getattr(agent_class, 'agent_name', agent_class.__name__)}' takes no "
                         f"extensions; extensible agents: {', '.join(sorted(n for n, c in AGENTS.items() if getattr(c, 'extensible', False)))}")
    provides = getattr(agent_class, "provides", frozenset())
    for ext in extensions:
        missing = set(ext.requires) - set(provides)
        if missing:
            raise UsageError(f"'{name}': extension '{ext.name}' needs {', '.join(sorted(missing))}, which "
                             f"'{agent_class.agent_name}' does not provide; it composes with: "
                             f"{', '.join(composes_with(ext)) or 'no registered agent'}")
        for other in extensions:
            if other is not ext and other.name in getattr(ext, "excludes", ()):
                raise UsageError(f"'{name}': extensions '{ext.name}' and '{other.name}' do not compose "
                                 f"({ext.excludes[other.name]})")
    composed_config_class(agent_class, tuple(extensions))  # field clashes raise here


def composes_with(ext: type) -> list[str]:
    return sorted(n for n, c in AGENTS.items()
                  if getattr(c, "extensible", False) and set(ext.requires) <= set(getattr(c, "provides", ())))


_config_classes: dict[tuple[type, tuple[type, ...]], type] = {}


def composed_config_class(agent_class: type, extensions: tuple[type, ...]) -> type:
    """The agent's config dataclass extended with each extension's fields (flat: ``agent.reg_coef``).

    An extension may change a base default (``base_defaults``: PackNet clips gradients at 2e-5). Two pieces
    that declare the same field must agree on its type and default, and then share it."""
    key = (agent_class, extensions)
    if key in _config_classes:
        return _config_classes[key]
    base = agent_class.config_class
    if not extensions:
        return base
    base_hints = typing.get_type_hints(base)
    declared: dict[str, tuple[Any, Any, str]] = {f.name: (base_hints[f.name], _default(f), "base") for f in
                                                 dataclasses.fields(base)}
    new_fields: dict[str, tuple[Any, Any, str]] = {}
    for ext in extensions:
        if ext.config_class is not None:
            hints = typing.get_type_hints(ext.config_class)
            for f in dataclasses.fields(ext.config_class):
                _declare(declared, new_fields, f.name, hints[f.name], _default(f), ext.name, base_field=False)
        for fname, value in getattr(ext, "base_defaults", {}).items():
            if fname not in declared:
                raise ValueError(f"extension {ext.name} sets unknown base field {fname}")
            _declare(declared, new_fields, fname, declared[fname][0], value, ext.name, base_field=True)
    spec = [(n, t, field(default=d)) for n, (t, d, _) in new_fields.items()]
    name = agent_class.__name__ + "".join(e.__name__ for e in extensions) + "Config"
    composed = dataclasses.make_dataclass(name, spec, bases=(base,))
    composed.extension_classes = extensions  # what the learner builds (crl.offpolicy.OffPolicyLearner)
    _config_classes[key] = composed
    return composed


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _declare(declared, new_fields, fname, annotation, default, owner, *, base_field: bool) -> None:
    if fname in new_fields and new_fields[fname][1] != default:
        raise UsageError(f"extensions {new_fields[fname][2]} and {owner} both set '{fname}' "
                         f"({new_fields[fname][1]!r} vs {default!r}); compose at most one of them")
    if fname in declared and not base_field and fname not in new_fields and declared[fname][2] == "base":
        raise ValueError(f"extension {owner} redeclares base field {fname}; use base_defaults")
    declared[fname] = new_fields[fname] = (annotation, default, owner)


def listing() -> dict[str, list[tuple[str, str]]]:
    """(name, description) of every agent, variant and extension, for ``crl list``."""
    discover()
    agents = [(n, c.description + ("  [takes extensions]" if getattr(c, "extensible", False) else ""))
              for n, c in AGENTS.items()]
    variants = [(n, f"= {v.of}" + (f" ({', '.join(f'{k}={d}' for k, d in v.defaults.items())})" if v.defaults else "")
                 + f" — {v.description}") for n, v in VARIANTS.items()]
    extensions = [(n, f"{e.description} — composes with: {', '.join(composes_with(e))}") for n, e in EXTENSIONS.items()]
    return {"agents": agents, "variants": variants, "extensions": extensions}


def agent_class(name: str) -> type:
    return resolve(name).agent_class


def agent_family(name: str) -> str:
    """The base agent: presets and configs/agent/<family>.yaml configure its members together."""
    return resolve(name).family


def make_agent_config(name: str) -> Any:
    """The agent's config dataclass (base fields + its extensions'), with the variant's defaults applied."""
    return resolve(name).make_config()
