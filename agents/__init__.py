"""crl's agents. Each file registers what it defines (``crl.registry``): base learners (SAC, TD3, L2M)
with ``@register_agent``, continual methods as extensions with ``@register_extension``, and the names
users know (``ewc`` = ``sac+ewc`` with Continual World's λ) with ``register_variant``.

These helpers answer the rest of crl's questions about an agent name (see ``crl.registry.resolve``).
"""

from __future__ import annotations

from typing import Any

from crl.registry import resolve


def agent_class(name: str) -> type:
    return resolve(name).agent_class


def agent_family(name: str) -> str:
    """The base agent: presets and configs/agent/<family>.yaml configure its members together."""
    return resolve(name).family


def make_agent_config(name: str) -> Any:
    """The agent's config dataclass (base fields + its extensions'), with the variant's defaults applied."""
    return resolve(name).make_config()
