"""Agent registry: name → (module, class, description, config defaults).

Modules are imported only when their agent is used. Variants of one method share a class and
differ by config defaults (e.g. ``l2m-oracle`` is L2M with ``method="l2m-oracle"``).
"""

from __future__ import annotations

import importlib
from typing import Any

from crl.core import UsageError

AGENTS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    # name: (module, class, one-line description, config defaults)
    "sac": ("crl.agents.sac", "SAC", "SAC fine-tuning, Continual World architecture (Wołczyk et al. 2021)", {}),
    "l2m": ("crl.agents.l2m", "L2M", "L2M: frozen pre-trained DT + LoRA pool, task-agnostic retrieval (Schmied et al. 2023)",
            {"method": "l2m"}),
    "l2m-oracle": ("crl.agents.l2m", "L2M", "L2M with modules chosen by task id (the paper's upper bound)",
                   {"method": "l2m-oracle"}),
    "l2m-lora": ("crl.agents.l2m", "L2M", "one shared LoRA module on the frozen L2M backbone", {"method": "lora"}),
    "l2m-l2p": ("crl.agents.l2m", "L2M", "L2P prefix-prompt pool on the frozen L2M backbone (Wang et al. 2022)",
                {"method": "l2p"}),
    "l2m-ft": ("crl.agents.l2m", "L2M", "full fine-tuning of the L2M backbone", {"method": "ft"}),
    "l2m-ewc": ("crl.agents.l2m", "L2M", "EWC on the L2M backbone (Kirkpatrick et al. 2017)", {"method": "ewc"}),
    "l2m-l2": ("crl.agents.l2m", "L2M", "L2 regularisation on the L2M backbone", {"method": "l2"}),
}


def _check(name: str) -> None:
    if name not in AGENTS:
        raise UsageError(f"unknown agent '{name}'; allowed: {', '.join(sorted(AGENTS))}")


def agent_class(name: str):
    _check(name)
    module, cls, _, _ = AGENTS[name]
    return getattr(importlib.import_module(module), cls)


def agent_family(name: str) -> str:
    """The method family (the agent's module name): presets configure variants of one family together."""
    _check(name)
    return AGENTS[name][0].rsplit(".", 1)[1]


def make_agent_config(name: str):
    """The agent's config dataclass with the variant's defaults applied."""
    return agent_class(name).config_class(**AGENTS[name][3])
