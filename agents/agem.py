"""A-GEM: SAC whose gradient never points against an episodic memory of earlier tasks.

Paper: Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019; in continual RL as in
Wołczyk et al., "Continual World", NeurIPS 2021 (``continualworld/methods/agem.py``).

As in Continual World: at the end of each task, 10k transitions sampled from its replay buffer join
the episodic memory; at every gradient step of a later task, SAC's gradient on a memory batch of
128 (each row with its own task's heads) is the reference g_ref, and if the actor-and-critic gradient
g has ⟨g, g_ref⟩ < 0 it is replaced by g − ⟨g, g_ref⟩/‖g_ref‖² g_ref (actor and critics projected
jointly; α untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from crl.agents.sac import SAC, SACConfig
from crl.continual import EpisodicMemory, agem_project
from crl.core import Task


@dataclass
class AGEMConfig(SACConfig):
    memory_per_task: int = 10_000  # transitions kept per finished task (CW)
    memory_batch_size: int = 128  # rows of the reference gradient's batch (CW)


class AGEM(SAC):
    config_class = AGEMConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: AGEMConfig, device: torch.device):
        super().__init__(obs_dim, act_dim, num_tasks, config, device)
        self.memory = EpisodicMemory(device)
        self.projected = [*self.actor.parameters(), *self.critics.parameters()]

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        if self.buffer.size:
            self.memory.add(self.buffer.sample(self.cfg.memory_per_task))

    def _adjust_gradients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not len(self.memory):
            return {}
        reference_loss, _ = self.sac_losses(self.memory.sample(self.cfg.memory_batch_size))
        reference = torch.autograd.grad(reference_loss, self.projected, allow_unused=True)
        pairs = [(p.grad, r) for p, r in zip(self.projected, reference) if p.grad is not None and r is not None]
        violated = agem_project([g for g, _ in pairs], [r for _, r in pairs])
        return {"agem_violation": violated.float()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
