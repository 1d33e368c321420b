"""Agent registry: name → (module, class). Modules are imported only when their agent is used."""

from __future__ import annotations

import importlib

from crl.core import UsageError

AGENTS: dict[str, tuple[str, str, str]] = {
    # name: (module, class, one-line description)
    "sac": ("crl.agents.sac", "SAC", "SAC fine-tuning, Continual World architecture (Wołczyk et al. 2021)"),
}


def agent_class(name: str):
    if name not in AGENTS:
        raise UsageError(f"unknown agent '{name}'; allowed: {', '.join(sorted(AGENTS))}")
    module, cls, _ = AGENTS[name]
    return getattr(importlib.import_module(module), cls)
