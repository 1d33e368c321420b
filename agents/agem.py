"""A-GEM: an extension whose learner's gradient never points against an episodic memory of earlier tasks.

Paper: Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019; in continual RL as in
Wołczyk et al., "Continual World", NeurIPS 2021 (``continualworld/methods/agem.py``).

As in Continual World: at the end of each task, 10k transitions sampled from its replay buffer join
the episodic memory; at every gradient step of a later task, SAC's gradient on a memory batch of
128 (each row with its own task's heads) is the reference g_ref, and if the actor-and-critic gradient
g has ⟨g, g_ref⟩ < 0 it is replaced by g − ⟨g, g_ref⟩/‖g_ref‖² g_ref (actor and critics projected
jointly; α untouched; ‖g_ref‖² unclamped, as CW: tests/test_cw_parity.py).

Differs: the memory is sampled at the end of a task rather than at the start of the next (the same buffer).
"""

from __future__ import annotations

import torch

from crl.continual import EpisodicMemory, agem_project
from crl.core import Task
from crl.extension import Extension
from crl.register import register_extension, register_variant

from .episodic_memory import MemoryConfig


@register_extension("agem", "A-GEM: gradients projected against an episodic memory (Chaudhry et al. 2019)")
class AGEM(Extension):
    config_class = MemoryConfig  # memory_per_task (CW: 10k), memory_batch_size: the reference batch (CW: 128)
    requires = frozenset({"replay", "critic"})
    state = ("memory",)

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        self.memory = EpisodicMemory(learner.device)
        self.projected = [*learner.actor.parameters(), *learner.critics.parameters()]

    def end_task(self, task: Task) -> None:
        if self.learner.buffer.size:
            self.memory.add(self.learner.buffer.sample(self.cfg.memory_per_task))

    def adjust_gradients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not len(self.memory):
            return {}
        reference_loss, _ = self.learner.losses(self.memory.sample(self.cfg.memory_batch_size))
        reference = torch.autograd.grad(reference_loss, self.projected, allow_unused=True)
        pairs = [(p.grad, r) for p, r in zip(self.projected, reference) if p.grad is not None and r is not None]
        violated = agem_project([g for g, _ in pairs], [r for _, r in pairs])
        return {"agem_violation": violated.float()}


register_variant("agem", "sac+agem", "SAC + A-GEM: gradients projected against an episodic memory (Chaudhry et al. 2019)")
