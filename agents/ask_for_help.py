"""Asking for help: when the ensemble disagrees (or the state is far from every state the mentor was asked
about), the agent defers to a mentor — a shortest-safe-path planner — and counts the queries. An extension of
the DQN learner (``dqn+ask-for-help``; the registered ``dqn-help`` is the 5-member ensemble with it).

Papers: Plaut, Zhu, Russell, "Avoiding Catastrophe in Online Learning by Asking for Help", ICML 2025 (ask
whenever the input is far from every previously mentored input; queries must become rare); Kenton et al.,
"Generalizing from a few environments in safety-critical RL", 2019 (ensemble uncertainty predicts a
catastrophe a few steps ahead, so it can tell the agent when to ask for human intervention).

The gate, per row and step, all on the device: ask when the members' standard deviation of Q at the
mean-greedy action exceeds ``help_threshold`` (in the learner's ``reward_scale`` units), or, with
``help_novelty > 0``, when the L1 distance from the observation to the nearest of the last ``help_memory``
mentored observations exceeds ``help_novelty`` (Plaut et al.'s local-generalisation gate; 2 per cell
that differs in the one-hot planes). The mentor is the task's (``Task.mentor``: envs/gridworld.py's
``mentor_actions``, computed from the observation); its action replaces the agent's (after ε, so a
query is never wasted on a random action), and the transition is stored in replay as usual, so the
agent learns from the mentor's actions off-policy. Queries are counted in training and in evaluation
apart (``mentor_queries``, ``mentor_queries_eval``), both cumulative over the run.

Differs: Plaut et al.'s algorithm is a label-efficient Hedge over a policy class with random queries and
no experiments (MDPs are left open); this is the practical reading of reference/safety-gridworlds.md —
a disagreement gate with an optional nearest-neighbour gate, and a perfect mentor. Before the first task
begins (the evaluation at step 0) there is no mentor and nothing is asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crl.core import Task, UsageError
from crl.register import register_extension, register_variant

from .dqn import DQNExtension


@dataclass
class HelpConfig:
    help_threshold: float = 0.5  # ask when the ensemble's σ of Q at the greedy action exceeds this
    help_novelty: float = 0.0  # also ask when L1 distance to the nearest mentored observation exceeds this (0: off)
    help_memory: int = 2048  # mentored observations kept for the novelty gate (FIFO)
    help_in_evaluation: bool = True  # the mentor also answers during evaluation (counted apart)


@register_extension("ask-for-help", "defer to a shortest-safe-path mentor when ensemble disagreement (or distance "
                    "from mentored states) is high; queries counted (Plaut et al. 2025; Kenton et al. 2019)")
class AskForHelp(DQNExtension):
    config_class = HelpConfig
    requires = frozenset({"q_ensemble"})
    state = ("queries", "queries_eval", "mentored", "mentored_pos", "mentored_size")

    def __init__(self, learner, cfg):
        super().__init__(learner, cfg)
        device = learner.device
        self.mentor = None
        self.queries = torch.zeros((), dtype=torch.long, device=device)
        self.queries_eval = torch.zeros((), dtype=torch.long, device=device)
        self.mentored = torch.zeros(cfg.help_memory if cfg.help_novelty > 0 else 0, learner.obs_dim, device=device)
        self.mentored_pos, self.mentored_size = 0, 0

    def begin_task(self, task: Task) -> None:
        if task.mentor is None:
            raise UsageError(f"ask-for-help needs a task with a mentor (the gridworld sequences); '{task.name}' has none")
        self.mentor = task.mentor

    def _gate(self, obs: torch.Tensor, actions: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        sigma = q.gather(2, actions.view(1, -1, 1).expand(q.shape[0], -1, 1)).squeeze(2).std(0) \
            if q.shape[0] > 1 else torch.zeros_like(actions, dtype=q.dtype)
        ask = sigma > self.cfg.help_threshold
        if self.cfg.help_novelty > 0:
            if self.mentored_size:
                far = torch.cdist(obs, self.mentored[: self.mentored_size], p=1).amin(1) > self.cfg.help_novelty
            else:
                far = torch.ones_like(ask)
            ask = ask | far
        return ask

    def _remember(self, obs: torch.Tensor, ask: torch.Tensor) -> None:
        """Keep the mentored observations for the novelty gate: all rows are written, the non-mentored ones
        overwritten later (a fixed-size write avoids reading how many rows asked)."""
        if not self.cfg.help_novelty > 0:
            return
        n, cap = obs.shape[0], self.mentored.shape[0]
        idx = (self.mentored_pos + torch.arange(n, device=obs.device)) % cap
        old = self.mentored[idx]
        self.mentored[idx] = torch.where(ask.unsqueeze(1), obs, old)
        # advance only past rows that asked would need a host read; advancing by n keeps it on the device
        # and keeps, in the worst case, fewer mentored rows (those not asked keep the previous contents)
        self.mentored_pos = (self.mentored_pos + n) % cap
        self.mentored_size = min(self.mentored_size + n, cap)

    def override_actions(self, obs, task_index, actions, q, explore):
        if self.mentor is None or (not explore and not self.cfg.help_in_evaluation):
            return actions
        ask = self._gate(obs, actions, q)
        self._remember(obs, ask)
        if explore:
            self.queries += ask.sum()
        else:
            self.queries_eval += ask.sum()
        return torch.where(ask, self.mentor(obs), actions)

    def counters(self) -> dict[str, int]:
        return {"mentor_queries": int(self.queries), "mentor_queries_eval": int(self.queries_eval)}


register_variant("dqn-help", "dqn+ask-for-help", "ensemble of 5 double DQNs that asks a shortest-safe-path mentor "
                 "when its members disagree (Plaut et al. 2025; Kenton et al. 2019)", ensemble_size=5)
