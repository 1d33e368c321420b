"""Episodic memory: an extension that keeps replaying transitions of earlier tasks beside the current task's.

Paper: Wołczyk et al., "Fine-tuning Reinforcement Learning Models is Secretly a Forgetting
Mitigation Problem", ICML 2024 ("EM": the pre-trained task's data stay in SAC's replay buffer);
here applied along a sequence: at the end of each task ``memory_per_task`` transitions drawn
uniformly (with replacement) from its buffer are kept, and every gradient step's batch gets
``memory_batch_size`` of them after its ``batch_size`` current rows (each row with its own task's
heads and α), so actor and critics keep fitting earlier tasks; SAC's losses average over all rows alike.

Reference code: none to check against. The authors' public code for that paper
(``BartekCupial/finetuning-RL-as-CL``) is the NetHack (APPO) part; its Meta-World SAC code is not
public, and no search of the code index found it. The memory is filled and sampled as the same
group's ClonEx code fills its episodic memory (``arczi21/continualworld-ppo`` @7032449,
``Episodic_SAC.on_task_start``: ``replay_buffer.sample_batch(episodic_mem_per_task)``).

Differs from the paper: the paper keeps the whole pre-training buffer for one earlier task, its rows
sampled with the new ones from one buffer; a sequence needs a budget per task, so this keeps a
uniform sample of each (10k by default, as A-GEM's memory in Continual World) and adds a fixed number
of rows to each batch whatever the buffers' sizes (tests/test_wolczyk_parity.py pins this); memory rows
are drawn with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crl.continual import EpisodicMemory
from crl.core import Task
from crl.extension import Extension
from crl.register import register_extension, register_variant


@dataclass
class MemoryConfig:
    memory_per_task: int = 10_000  # transitions kept per finished task
    memory_batch_size: int = 128  # memory rows (added to every batch; A-GEM: its reference batch)


@register_extension("episodic-memory", "replay kept transitions of earlier tasks in every batch (Wołczyk et al. 2024)")
class EpisodicReplay(Extension):
    config_class = MemoryConfig
    requires = frozenset({"replay"})
    state = ("memory",)

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        self.memory = EpisodicMemory(learner.device)

    def end_task(self, task: Task) -> None:
        if self.learner.buffer.size:
            self.memory.add(self.learner.buffer.sample(self.cfg.memory_per_task))

    def extend_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not len(self.memory):
            return batch
        kept = self.memory.sample(self.cfg.memory_batch_size)
        return {**{k: torch.cat([batch[k], kept[k]]) for k in kept}, "single_task": False}


register_variant("episodic-memory", "sac+episodic-memory", "SAC replaying kept transitions of earlier tasks "
                 "(Wołczyk et al. 2024)")
