"""Adaptive Replay Ratio: an extension that trains at a low replay ratio until the critic's plasticity settles.

Paper: Ma et al., "Revisiting Plasticity in Visual Reinforcement Learning: Data, Modules and Training
Stages", ICLR 2024 (code ``Guozheng-Ma/Adaptive-Replay-Ratio``, ``train_adapt_rr.py``;
reference/plasticity.md).

The rule: start at replay ratio (gradient steps per env step) 0.5; every check interval compare the
critic's Fraction of Active Units with its value at the previous check; once the change is below
τ = 0.001, switch to replay ratio 2, once and for good. The critic's FAU is measured at every update
on the update's own batch (both critics' hidden activations pooled, as Ma et al.'s Q1 and Q2 are;
crl/plasticity.py), so the rule costs no extra forward pass.

Which layers (``fau_layers``): ``all``, every hidden layer of both critics, Continual World's first
(Linear → LayerNorm → tanh) layer included, a tanh unit counting as active when |h| ≤ 0.99; or
``after_trunk``, the layers after that one only: Ma et al.'s critic FAU counts the ReLU layers of Q1 and
Q2 and leaves out DrQ-v2's LayerNorm + tanh trunk (drqv2_adapt_rr.py, Critic.forward_with_FAU). The
signal is Ma's formula exactly with ``agent.activation=relu`` and either ``fau_layers=after_trunk`` or
``agent.body=mlp`` (a body without the tanh layer, where both settings count the same layers).

Two readings of "the FAU at a check" (``mode``):
- ``paper_faithful``, as the reference code: the mean over the updates of the last episode before
  the check only, the update at the step that starts that episode included (train_adapt_rr.py resets
  its accumulator at the top of that loop iteration, before the iteration's update), compared with
  ``<=``; the first reference value is the FAU of the very first update.
- ``whole_interval``: the mean over every update since the previous check, compared with ``<`` as
  the paper writes it; the first reference is likewise the first update's FAU.

Differs from the paper: state-based SAC with Continual World's MLPs instead of pixel DrQ-v2 (no
encoder, no augmentation: crl's DMC tasks give states); checks count env steps (``check_interval``,
default 50,000 = the paper's 50 episodes of 1,000 frames) instead of episodes; ``rearm_on_task``
starts the rule over at every task switch of a sequence (the paper has one task); by default
(``fau_layers=all``) the signal includes the CW body's LayerNorm + tanh layer (see above); a check
with no update in its window reads the last update's FAU where the reference code would divide by 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crl.core import Task, Transitions, UsageError
from crl.extension import Extension
from crl.register import register_extension, register_variant

MODES = ("paper_faithful", "whole_interval")
FAU_LAYERS = ("all", "after_trunk")


@dataclass
class ARRConfig:
    high_replay_ratio: float = 2.0  # after the switch
    check_interval: int = 50_000  # env steps between checks (paper: 50 episodes × 1,000 frames)
    fau_threshold: float = 0.001  # τ
    mode: str = "paper_faithful"  # paper_faithful | whole_interval
    fau_layers: str = "all"  # all | after_trunk (without CW's LayerNorm+tanh first layer: Ma et al.'s signal)
    rearm_on_task: bool = True  # at a task switch: back to the low ratio, rule re-armed
    adaptive: bool = True  # false: a static replay ratio (replay_ratio) with everything else equal, for comparison


@register_extension("arr", "Adaptive Replay Ratio: 0.5 → 2 once the critic's FAU settles (Ma et al. 2024)")
class AdaptiveReplayRatio(Extension):
    config_class = ARRConfig
    # the starting (low) ratio, and DrQ-v2's schedule: the credit accumulator pays out every env step
    base_defaults = {"replay_ratio": 0.5, "update_every": 1}
    requires = frozenset({"replay", "critic"})
    state = ("switched", "reference_fau", "window", "next_check", "switched_at", "episode_len")

    def __init__(self, learner, cfg):
        if cfg.mode not in MODES:
            raise UsageError(f"unknown ARR mode '{cfg.mode}'; allowed: {', '.join(MODES)}")
        if cfg.fau_layers not in FAU_LAYERS:
            raise UsageError(f"unknown ARR fau_layers '{cfg.fau_layers}'; allowed: {', '.join(FAU_LAYERS)}")
        super().__init__(learner, cfg)
        activations = learner.probes["critic"].activations
        # the tanh layer is CW's first (Linear → LayerNorm → tanh); a body=mlp critic has none
        self.signal_layers = None if cfg.fau_layers == "all" else [n for n, kind in activations.items() if kind != "tanh"]
        self.episode_len = 1000
        self.switched_at: list[tuple[int, int]] = []  # (task index, env step of the task) of each switch
        self._reset_rule()

    def _reset_rule(self) -> None:
        self.learner.replay_ratio = self.learner.cfg.replay_ratio
        self.switched = False
        self.reference_fau: torch.Tensor | None = None  # the FAU the next check compares with
        self.window: list[tuple[int, torch.Tensor]] = []  # (task step, critic FAU) of each update since the last check
        self.next_check = self.cfg.check_interval

    def begin_task(self, task: Task) -> None:
        self.episode_len = task.episode_len
        if self.cfg.rearm_on_task:
            self._reset_rule()

    @property
    def adapting(self) -> bool:
        return self.cfg.adaptive and not self.switched

    def capture(self) -> frozenset[str]:
        return frozenset({"critic"}) if self.adapting else frozenset()

    def after_update(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        learner, out = self.learner, {}
        if self.adapting:
            # a 0-d tensor: the rule reads them once per check, not every update (no host sync per step)
            fau = learner.probes["critic"].fau(self.signal_layers)
            self.window.append((learner.task_steps, fau))
            if self.reference_fau is None:
                self.reference_fau = fau
            out["arr/critic_fau"] = fau
        out["arr/replay_ratio"] = torch.tensor(learner.replay_ratio)
        return out

    def observe(self, batch: Transitions) -> None:
        learner = self.learner
        if not self.adapting or learner.task_steps < self.next_check:
            return
        self.next_check += self.cfg.check_interval
        if not self.window:  # no update yet (still in the warm-up): nothing to compare
            return
        if self.cfg.mode == "paper_faithful":
            # the window starts with the update at the step that starts the last episode: the reference
            # resets its accumulator at the top of that iteration, before its update (train_adapt_rr.py)
            since = learner.task_steps - self.episode_len
            values = [f for step, f in self.window if step >= since] or [self.window[-1][1]]
        else:
            values = [f for _, f in self.window]
        fau = torch.stack(values).mean()
        change = float((fau - self.reference_fau).abs())  # the one read of the interval's FAU values
        settled = change <= self.cfg.fau_threshold if self.cfg.mode == "paper_faithful" else \
            change < self.cfg.fau_threshold
        self.reference_fau, self.window = fau, []
        if settled:
            self.switched, learner.replay_ratio = True, self.cfg.high_replay_ratio
            self.switched_at.append((learner.task_index, learner.task_steps))


register_variant("arr", "sac+arr",
                 "SAC with Adaptive Replay Ratio: 0.5 → 2 once the critic's FAU settles (Ma et al. 2024)")
