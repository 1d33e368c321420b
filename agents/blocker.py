"""A blocking classifier: p(catastrophe | state, action) learned from the catastrophes met on the training
layouts, vetoing actions above a threshold — an extension of the DQN learner (``dqn+blocker``; the
registered ``dqn-blocker`` is the 5-member ensemble with it).

Papers: Saunders, Sastry, Stuhlmüller, Evans, "Trial without Error: Towards Safe Reinforcement Learning
via Human Intervention", AAMAS 2018 (a blocker trained on a human overseer's labels stops catastrophic
actions); Kenton et al., "Generalizing from a few environments in safety-critical RL", 2019 (a blocking
classifier trained on the training environments reduces catastrophes on unseen lava layouts).

Here the labels come from the environment, not a human: every training transition (s, a) is kept with its
``catastrophe`` flag (crl.core.Transitions), and after each of the learner's gradient steps the classifier
(an MLP, one logit per action) takes one step of binary cross-entropy on a class-balanced batch (rows
drawn with probability ∝ 1 / count of their class, so the rare catastrophes weigh as much as the rest).
From ``blocker_warmup`` classifier steps on, ``act`` vetoes every action whose p(catastrophe) exceeds
``blocker_threshold`` — in training (ε-greedy picks among the allowed actions) and in evaluation; when
every action is vetoed none is. Everything stays on the device (no host read per step).

Differs: Saunders et al. block during training with a human's labels before the blocker takes over;
Kenton et al.'s blocker details (features, threshold) are not given (reference/safety-gridworlds.md):
threshold 0.5 and a 2×128 MLP are our choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crl.core import Transitions
from crl.register import register_extension, register_variant

from .dqn import DQNExtension


@dataclass
class BlockerConfig:
    blocker_threshold: float = 0.5  # veto an action when p(catastrophe | s, a) exceeds this
    blocker_hidden: int = 128  # width of the classifier's two hidden layers
    blocker_lr: float = 1e-3  # its own Adam
    blocker_batch_size: int = 128  # class-balanced rows per classifier step
    blocker_memory: int = 20_000  # labelled (s, a) kept (FIFO)
    blocker_warmup: int = 200  # classifier steps before it may veto


class LabelledMemory:
    """A FIFO of (obs, action, catastrophe) on the device, sampled class-balanced without host reads."""

    def __init__(self, obs_dim: int, capacity: int, device: torch.device):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.action = torch.zeros(capacity, dtype=torch.long, device=device)
        self.label = torch.zeros(capacity, device=device)

    def add(self, obs: torch.Tensor, action: torch.Tensor, label: torch.Tensor) -> None:
        n = obs.shape[0]
        idx = (self.pos + torch.arange(n, device=obs.device)) % self.capacity
        self.obs[idx], self.action[idx], self.label[idx] = obs, action.view(-1).long(), label.float()
        self.pos, self.size = (self.pos + n) % self.capacity, min(self.size + n, self.capacity)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        label = self.label[: self.size]
        pos = label.sum()
        weight = label / pos.clamp_min(1) + (1 - label) / (self.size - pos).clamp_min(1)
        idx = torch.multinomial(weight, n, replacement=True)
        return self.obs[idx], self.action[idx], self.label[idx]

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": self.size, "obs": self.obs[: self.size].cpu(),
                "action": self.action[: self.size].cpu(), "label": self.label[: self.size].cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for name in ("obs", "action", "label"):
            getattr(self, name)[: self.size] = state[name].to(self.obs.device)


@register_extension("blocker", "blocking classifier: vetoes actions with p(catastrophe) > threshold (Saunders et al. "
                    "2018; Kenton et al. 2019)")
class Blocker(DQNExtension):
    config_class = BlockerConfig
    requires = frozenset({"q_ensemble"})
    state = ("classifier", "optimizer", "memory", "steps")

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        h = cfg.blocker_hidden
        self.classifier = nn.Sequential(nn.Linear(learner.obs_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                        nn.Linear(h, learner.n_actions)).to(learner.device)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=cfg.blocker_lr)
        self.memory = LabelledMemory(learner.obs_dim, cfg.blocker_memory, learner.device)
        self.steps = 0

    def observe(self, batch: Transitions) -> None:
        if batch.catastrophe is not None:
            self.memory.add(batch.obs, batch.action, batch.catastrophe)

    def after_update(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.memory.size:
            return {}
        obs, action, label = self.memory.sample(self.cfg.blocker_batch_size)
        logit = self.classifier(obs).gather(1, action.unsqueeze(1)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logit, label)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return {"blocker_loss": loss.detach()}

    @torch.no_grad()
    def probabilities(self, obs: torch.Tensor) -> torch.Tensor:
        """(n, n_actions) p(catastrophe | s, a)."""
        return torch.sigmoid(self.classifier(obs))

    def action_mask(self, obs, task_index, explore):
        if self.steps < self.cfg.blocker_warmup:
            return None
        return self.probabilities(obs) <= self.cfg.blocker_threshold


register_variant("dqn-blocker", "dqn+blocker", "ensemble of 5 double DQNs with a blocking classifier "
                 "(Kenton et al. 2019)", ensemble_size=5)
