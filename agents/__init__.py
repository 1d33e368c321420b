"""Agent registry: name → (family, module, class, description, config defaults).

Modules are imported only when their agent is used. Variants of one method share a class and
differ by config defaults (e.g. ``l2m-oracle`` is L2M with ``method="l2m-oracle"``).
"""

from __future__ import annotations

import importlib
from typing import Any

from crl.core import UsageError

AGENTS: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {
    # name: (family, module, class, one-line description, config defaults)
    # The family names the shared config (configs/agent/<family>.yaml, preset sections ``agents: {<family>: ...}``).
    "sac": ("sac", "crl.agents.sac", "SAC", "SAC fine-tuning, Continual World architecture (Wołczyk et al. 2021)", {}),
    "l2": ("sac", "crl.agents.regularization", "RegularizedSAC",
           "SAC + L2 penalty towards the previous tasks' actor (CW: λ=1e5)", {"method": "l2", "reg_coef": 1e5}),
    "ewc": ("sac", "crl.agents.regularization", "RegularizedSAC",
            "SAC + EWC, Gaussian-policy Fisher (Kirkpatrick et al. 2017; CW: λ=1e4)", {"method": "ewc", "reg_coef": 1e4}),
    "mas": ("sac", "crl.agents.regularization", "RegularizedSAC",
            "SAC + MAS, output-sensitivity importance (Aljundi et al. 2018; CW: λ=1e4)",
            {"method": "mas", "reg_coef": 1e4}),
    "packnet": ("sac", "crl.agents.packnet", "PackNet",
                "SAC + PackNet: per-task weight pruning and masks (Mallya & Lazebnik 2018)", {}),
    "agem": ("sac", "crl.agents.agem", "AGEM",
             "SAC + A-GEM: gradients projected against an episodic memory (Chaudhry et al. 2019)", {}),
    "perfect-memory": ("sac", "crl.agents.sac", "SAC", "SAC with a reservoir buffer of every task, never reset (CW)",
                       {"reset_buffer_on_task": False, "reservoir_buffer": True, "buffer_size": 20_000_000,
                        "batch_size": 512}),
    "episodic-memory": ("sac", "crl.agents.episodic_memory", "EpisodicMemorySAC",
                        "SAC replaying kept transitions of earlier tasks (Wołczyk et al. 2024)", {}),
    "vcl": ("sac", "crl.agents.vcl", "VCL",
            "SAC + VCL: Bayesian actor, each task's posterior the next prior (Nguyen et al. 2018; CW: λ=1)", {}),
    "clonex": ("sac", "crl.agents.clonex", "ClonEx",
               "ClonEx-SAC: behaviour cloning of past actors + best-return exploration (Wołczyk et al. 2022)", {}),
    "kickstart": ("sac", "crl.agents.kickstart", "Kickstart",
                  "SAC + kickstarting: distil the previous policy on current states (Wołczyk et al. 2024)", {}),
    "arr": ("sac", "crl.agents.arr", "AdaptiveReplayRatio",
            "SAC with Adaptive Replay Ratio: 0.5 → 2 once the critic's FAU settles (Ma et al. 2024)", {}),
    "l2m": ("l2m", "crl.agents.l2m", "L2M",
            "L2M: frozen pre-trained DT + LoRA pool, task-agnostic retrieval (Schmied et al. 2023)", {"method": "l2m"}),
    "l2m-oracle": ("l2m", "crl.agents.l2m", "L2M", "L2M with modules chosen by task id (the paper's upper bound)",
                   {"method": "l2m-oracle"}),
    "l2m-lora": ("l2m", "crl.agents.l2m", "L2M", "one shared LoRA module on the frozen L2M backbone", {"method": "lora"}),
    "l2m-l2p": ("l2m", "crl.agents.l2m", "L2M", "L2P prefix-prompt pool on the frozen L2M backbone (Wang et al. 2022)",
                {"method": "l2p"}),
    "l2m-ft": ("l2m", "crl.agents.l2m", "L2M", "full fine-tuning of the L2M backbone", {"method": "ft"}),
    "l2m-ewc": ("l2m", "crl.agents.l2m", "L2M", "EWC on the L2M backbone (Kirkpatrick et al. 2017)", {"method": "ewc"}),
    "l2m-l2": ("l2m", "crl.agents.l2m", "L2M", "L2 regularisation on the L2M backbone", {"method": "l2"}),
}


def _check(name: str) -> None:
    if name not in AGENTS:
        raise UsageError(f"unknown agent '{name}'; allowed: {', '.join(sorted(AGENTS))}")


def agent_class(name: str):
    _check(name)
    _, module, cls, _, _ = AGENTS[name]
    return getattr(importlib.import_module(module), cls)


def agent_family(name: str) -> str:
    """The method family: presets and configs/agent/<family>.yaml configure its members together."""
    _check(name)
    return AGENTS[name][0]


def make_agent_config(name: str):
    """The agent's config dataclass with the variant's defaults applied."""
    return agent_class(name).config_class(**AGENTS[name][4])
