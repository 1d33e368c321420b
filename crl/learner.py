"""What every replay-based, extensible base learner shares: the replay-ratio schedule, per-task heads, the
task-switch protocol, the gradient step with the extensions at their named points (crl/extension.py),
phases, and checkpoints that carry each extension's declared state.

Its subclasses: crl.offpolicy.OffPolicyLearner (SAC, TD3: actor-critic) and crl.agents.dqn.DQN (a Q-ensemble).
A subclass builds its networks and optimiser and supplies ``losses``; the settings it reads from its config:
``batch_size``, ``update_after``, ``update_every``, ``replay_ratio``, ``multihead``, ``hide_task_id``,
``reset_buffer_on_task``, ``reset_optimizer_on_task``.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from crl.core import Agent, LearnsFrom, Phase, Task, Transitions
from crl.extension import Extension, load_state, save_state
from crl.replay import ReplayBuffer


class ReplayLearner(Agent):
    """The schedule and the named points; see the module docstring for what a subclass supplies."""

    learns_from = LearnsFrom.ENV
    extensible: ClassVar[bool] = True

    def init_schedule(self, obs_dim: int, act_dim: int, num_tasks: int, config, device: torch.device, *,
                      reservoir: bool = False) -> None:
        """Dimensions, heads, the replay buffer and the counters (call before building anything that reads them)."""
        self.cfg, self.device = config, device
        self.obs_dim, self.act_dim, self.num_tasks = obs_dim, act_dim, num_tasks
        self.num_heads = num_tasks if config.multihead else 1
        self.buffer = ReplayBuffer(obs_dim, act_dim, config.buffer_size, device, reservoir=reservoir)
        self.task_index = 0
        self.task_steps = 0  # transitions observed in the current task
        self.pending_updates = 0.0  # gradient steps owed by the replay-ratio schedule
        self.replay_ratio = config.replay_ratio  # gradient steps per transition (Adaptive Replay Ratio changes it)
        self.gradient_steps = 0

    def build_extensions(self) -> None:
        # a composed config (crl.registry.composed_config_class) names the extensions to build
        self.extensions: list[Extension] = [ext(self, self.cfg) for ext in getattr(self.cfg, "extension_classes", ())]

    # -- what a subclass supplies -----------------------------------------------------------------

    def losses(self, batch: dict[str, torch.Tensor], capture: frozenset[str] = frozenset()
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The learner's loss on ``batch`` and statistics. ``capture``: networks whose plasticity probes record
        this forward pass."""
        raise NotImplementedError

    def on_task_switch(self) -> None:
        """Learner-specific resets at a task switch, after the buffer's and before the optimiser's."""

    def capture(self) -> frozenset[str]:
        """Networks whose activations this step records (plasticity measurements that are due)."""
        return frozenset()

    def precision(self):
        """The context the losses run in (bf16 autocast, where a learner offers it)."""
        return contextlib.nullcontext()

    def after_backward(self, stats: dict[str, torch.Tensor]) -> None:
        """After the backward pass, before the extensions adjust the gradients (plasticity probes read them)."""

    def clip_gradients(self) -> None: ...

    def update_targets(self) -> None:
        """Target networks after the optimiser step (``gradient_steps`` not yet advanced)."""

    def networks_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_networks_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- pieces for subclasses and extensions -----------------------------------------------------

    @property
    def in_dim(self) -> int:
        return self.obs_dim if self.cfg.hide_task_id else self.obs_dim + self.num_tasks

    def heads(self, task_index: int | torch.Tensor) -> int | torch.Tensor:
        """Head selector for MultiHead: an int for a one-task batch, else a per-row tensor."""
        if self.num_heads == 1:
            return 0
        return int(task_index) if not isinstance(task_index, torch.Tensor) else task_index

    def policy_input(self, obs: torch.Tensor, task_index: int | torch.Tensor) -> torch.Tensor:
        if self.cfg.hide_task_id:
            return obs
        if isinstance(task_index, int):
            task_index = torch.full((obs.shape[0],), task_index, dtype=torch.long, device=obs.device)
        return torch.cat([obs, F.one_hot(task_index, self.num_tasks).float()], -1)

    def batch_task(self, batch: dict[str, torch.Tensor]) -> int | torch.Tensor:
        """The batch's task: one int when every row is the current task, else per-row indices."""
        # A buffer emptied at every switch holds only the current task: one head for the whole
        # batch skips the per-row gather (+7% updates/s, scripts/bench_sac.py profiling).
        return self.task_index if batch.get("single_task", False) else batch["task_index"]

    def reset_optimizer_moments(self) -> None:
        # CW re-creates Adam's slots but keeps its iteration counter (reference/continual-world.md).
        for state in self.optimizer.state.values():
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()

    # -- the Agent contract -------------------------------------------------------------------------

    def begin_task(self, task: Task) -> None:
        self.task_index, self.task_steps, self.pending_updates = task.index, 0, 0.0
        if self.cfg.reset_buffer_on_task:
            self.buffer.clear()
        self.on_task_switch()
        if self.cfg.reset_optimizer_on_task:
            self.reset_optimizer_moments()
        for ext in self.extensions:
            ext.begin_task(task)

    def end_task(self, task: Task) -> None:
        for ext in self.extensions:
            ext.end_task(task)

    def phases(self, task: Task) -> list[Phase]:
        return [phase for ext in self.extensions for phase in ext.phases(task)]

    def _phase_owner(self, phase: Phase) -> Extension:
        return next(ext for ext in self.extensions if phase.name.startswith(ext.name + "/"))

    def begin_phase(self, phase: Phase, task: Task) -> None:
        self._phase_owner(phase).begin_phase(phase, task)

    def phase_step(self, phase: Phase) -> dict[str, torch.Tensor]:
        return self._phase_owner(phase).phase_step(phase)

    def end_phase(self, phase: Phase, task: Task) -> None:
        self._phase_owner(phase).end_phase(phase, task)

    def observe(self, batch: Transitions) -> None:
        self.buffer.add(batch)
        before, self.task_steps = self.task_steps, self.task_steps + len(batch)
        counted = self.task_steps - max(before, self.cfg.update_after)  # transitions past update_after
        if counted > 0:
            self.pending_updates += counted * self.replay_ratio
        for ext in self.extensions:
            ext.observe(batch)

    def update(self) -> dict[str, torch.Tensor]:
        if self.pending_updates < self.cfg.update_every * self.replay_ratio:
            return {}
        n_steps = int(self.pending_updates)
        self.pending_updates -= n_steps
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for _ in range(n_steps):
            for k, v in self.gradient_step().items():  # some keys (plasticity) come from a few steps only
                sums[k] = sums[k] + v if k in sums else torch.as_tensor(v, dtype=torch.float32)
                counts[k] = counts.get(k, 0) + 1
        # 0-d tensors, read by the monitor when it writes (no host sync per update on a GPU)
        return {k: v / counts[k] if counts[k] > 1 else v for k, v in sums.items()}

    def sample_batch(self) -> dict[str, torch.Tensor]:
        batch = self.buffer.sample(self.cfg.batch_size)
        batch["single_task"] = self.cfg.reset_buffer_on_task  # then every row is the current task
        return batch

    def gradient_step(self) -> dict[str, torch.Tensor]:
        """One gradient step, with the extensions at their named points (crl/extension.py)."""
        batch = self.sample_batch()
        for ext in self.extensions:
            batch = ext.extend_batch(batch)
        capture = self.capture()
        for ext in self.extensions:
            capture |= ext.capture()
        with self.precision():
            loss, stats = self.losses(batch, capture)
            extra = [term for term in (ext.loss(batch) for ext in self.extensions) if term is not None]
        if extra:
            auxiliary = torch.stack(extra).sum() if len(extra) > 1 else extra[0]
            loss = loss + auxiliary
            stats["auxiliary_loss"] = auxiliary.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward(stats)
        for ext in self.extensions:
            stats.update(ext.adjust_gradients(batch))
        self.clip_gradients()
        self.optimizer.step()
        self.update_targets()
        self.gradient_steps += 1
        for ext in self.extensions:
            stats.update(ext.after_update(stats))
        return stats

    # -- checkpoints: the networks, the schedule, then each extension's declared state -------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.networks_state(), "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
            "task_index": self.task_index, "task_steps": self.task_steps, "replay_ratio": self.replay_ratio,
            "pending_updates": self.pending_updates, "gradient_steps": self.gradient_steps,
            "extensions": {ext.name: save_state(ext, ext.state) for ext in self.extensions},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_networks_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.task_index, self.task_steps = state["task_index"], state["task_steps"]
        self.pending_updates, self.gradient_steps = state["pending_updates"], state["gradient_steps"]
        self.replay_ratio = state["replay_ratio"]
        for ext in self.extensions:
            load_state(ext, ext.state, state["extensions"][ext.name], self.device, owner=ext.name)
            ext.after_load()
