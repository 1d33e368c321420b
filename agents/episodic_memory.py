"""Episodic memory: SAC that keeps replaying transitions of earlier tasks beside the current task's.

Paper: Wołczyk et al., "Fine-tuning Reinforcement Learning Models is Secretly a Forgetting
Mitigation Problem", ICML 2024 ("EM": the pre-trained task's data stay in SAC's replay buffer);
here applied along a sequence: at the end of each task ``memory_per_task`` transitions of its buffer
are kept, and every gradient step's batch gets ``memory_batch_size`` of them (each row with its own
task's heads and α), so actor and critics keep fitting earlier tasks.

Differs from the paper: the paper keeps the whole pre-training buffer for one earlier task; a
sequence needs a budget per task, so this keeps a uniform sample of each (10k by default, as
A-GEM's memory in Continual World) and adds a fixed share of rows to each batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from crl.agents.sac import SAC, SACConfig
from crl.continual import EpisodicMemory
from crl.core import Task


@dataclass
class EpisodicMemoryConfig(SACConfig):
    memory_per_task: int = 10_000  # transitions kept per finished task
    memory_batch_size: int = 128  # memory rows added to every batch (next to batch_size current ones)


class EpisodicMemorySAC(SAC):
    config_class = EpisodicMemoryConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: EpisodicMemoryConfig,
                 device: torch.device):
        super().__init__(obs_dim, act_dim, num_tasks, config, device)
        self.memory = EpisodicMemory(device)

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        if self.buffer.size:
            self.memory.add(self.buffer.sample(self.cfg.memory_per_task))

    def _sample_batch(self) -> dict[str, torch.Tensor]:
        batch = super()._sample_batch()
        if not len(self.memory):
            return batch
        kept = self.memory.sample(self.cfg.memory_batch_size)
        return {**{k: torch.cat([batch[k], kept[k]]) for k in kept}, "single_task": False}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
