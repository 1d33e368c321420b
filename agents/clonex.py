"""ClonEx-SAC: behaviour cloning of the earlier tasks' actors, and exploration with the best of them.

Paper: Wołczyk et al., "Disentangling Transfer in Continual Reinforcement Learning", NeurIPS 2022
(reference/continual-world.md: CW20 performance 0.87). Reference code: the authors' Continual World
branch (``Episodic_SAC``, cl_method ``episodic_replay``, with ``exploration_kind="best_return"``),
kept in the fork ``arczi21/continualworld-ppo`` @7032449 (Wołczyk's last commit; its SAC and methods are
unchanged since the NeurIPS runs @33dfac8): ``continualworld/methods/episodic_replay.py``,
``continualworld/sac/{sac,exploration,replay_buffers,models}.py``; tests/test_wolczyk_parity.py pins crl to it.

At the end of each task, ``memory_per_task`` states drawn uniformly (with replacement) from its buffer
are kept with the actor's output on them (that task's head). While later tasks train, the actor also
minimises ``bc_coef`` · mean over a memory batch of 128 of KL(stored ‖ current), summed over action
dimensions, each row through its own task's head; as in the reference the KL is taken between
Gaussians with the squashed mean tanh(μ) and the (clipped) log σ, with 1e-6 added to σ before squaring
(``bc_mean=squashed``). The actor's gradient is then (g_SAC + g_cloning)/2, the reference's
``merge_gradients``, before clipping; critic and α gradients are left alone (the critic is not
regularised). Actor, critics and α are each clipped to global norm ``clip_grad_norm`` = 0.1. Adam is
re-created at every task switch, step counter included (``fresh_adam_on_task``; the reference builds
three new Adams where Continual World's own code keeps the counter). During a task's first
``start_steps`` transitions, instead of uniform actions, the agent explores with the earlier head
whose episodes on the new task return the most (the reference's ``ExplorationHelper``, "best_return"):
each earlier head is tried for one episode in index order, then the head with the highest mean
episode return (ties: the lowest index) acts, its later episodes counting in its mean.

Differs from the reference:
- with several parallel envs, each env row runs its own exploration episode (the reference has one
  env): rows take untried heads in turn, and while every head is taken and none has finished an
  episode a row draws a random earlier head;
- memory batches are drawn with replacement (the reference: without, ``np.random.choice``);
- ``regularize_critic`` (the reference's MSE to stored Q-values, off in the paper's runs) is not
  offered;
- ``bc_mean=pre_tanh`` is offered: the KL of the pre-tanh Gaussians, which equals the KL of the
  tanh-squashed policies themselves (tanh is a bijection); the reference's squashed form is the default;
- ``clip_grad_norm`` = 0.1: the authors' sweeps cover None, 0.01, 0.1, 1 and 10
  (``mrunner_exps/neurips22/er_tune_clipnorm.py``); 0.1 is from the reference's third-party port docs,
  not verified against the paper's text;
- the warm-up explores for ``start_steps`` transitions where the reference's loop explores while
  ``current_task_timestep <= start_steps`` (one transition more), and the rest of SAC is crl's
  (agents/sac.py: one Adam over all networks instead of three, which Adam's per-parameter update
  makes the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crl.continual import EpisodicMemory, gaussian_kl
from crl.core import Task, Transitions, UsageError
from crl.extension import Extension
from crl.register import register_extension, register_variant


@dataclass
class ClonExConfig:
    bc_coef: float = 100.0  # weight of the cloning KL
    memory_per_task: int = 10_000  # states (with the policy's μ, log σ) kept per finished task
    memory_batch_size: int = 128
    best_return_exploration: bool = True  # warm-up with the best earlier head instead of uniform actions
    bc_mean: str = "squashed"  # squashed: KL on tanh(μ) as the reference | pre_tanh: the exact KL of the policies
    average_gradients: bool = True  # actor gradient (g_SAC + g_cloning)/2 before clipping (reference merge_gradients)
    fresh_adam_on_task: bool = True  # restart Adam's step counter at every task switch (the reference's new Adams)


CLONING_MEANS = ("squashed", "pre_tanh")
KL_STD_EPS = 1e-6  # added to σ before squaring in the reference's kl_divergence (episodic_replay.py)


@register_extension("clonex", "behaviour cloning of past policies + best-return exploration (Wołczyk et al. 2022)")
class ClonEx(Extension):
    config_class = ClonExConfig
    base_defaults = {"clip_grad_norm": 0.1}
    requires = frozenset({"replay", "gaussian_policy"})
    state = ("memory", "head_returns", "row_heads", "row_returns")

    def __init__(self, learner, cfg):
        if cfg.bc_mean not in CLONING_MEANS:
            raise UsageError(f"unknown bc_mean '{cfg.bc_mean}'; allowed: {', '.join(CLONING_MEANS)}")
        super().__init__(learner, cfg)
        self.memory = EpisodicMemory(learner.device)
        self.head_returns: dict[int, list[float]] = {}  # earlier head → returns of its warm-up episodes
        self.row_heads: torch.Tensor | None = None  # the head each parallel env explores with
        self.row_returns: torch.Tensor | None = None

    def begin_task(self, task: Task) -> None:
        self.head_returns, self.row_heads, self.row_returns = {}, None, None
        if self.cfg.fresh_adam_on_task:  # the learner zeroed the moments already (reset_optimizer_on_task)
            for state in self.learner.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"].zero_()
                elif "step" in state:
                    state["step"] = 0

    @torch.no_grad()
    def end_task(self, task: Task) -> None:
        learner = self.learner
        if not learner.buffer.size:
            return
        obs = learner.buffer.sample(self.cfg.memory_per_task)["obs"]
        mu, log_std = learner.actor.distribution(learner.policy_input(obs, task.index), learner.heads(task.index))
        self.memory.add({"obs": obs, "mu": mu, "log_std": log_std,
                         "task_index": torch.full((obs.shape[0],), task.index, device=learner.device)})

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not len(self.memory):
            return None
        learner = self.learner
        kept = self.memory.sample(self.cfg.memory_batch_size)
        tasks = kept["task_index"]
        mu, log_std = learner.actor.distribution(learner.policy_input(kept["obs"], tasks), learner.heads(tasks))
        return self.cfg.bc_coef * self.cloning_kl(kept["mu"], kept["log_std"], mu, log_std).mean()

    def cloning_kl(self, mu_kept: torch.Tensor, log_std_kept: torch.Tensor, mu: torch.Tensor,
                   log_std: torch.Tensor) -> torch.Tensor:
        """Per-row KL(kept ‖ current) from pre-tanh means (stored pre-tanh, so either form can be read)."""
        if self.cfg.bc_mean == "squashed":
            return gaussian_kl(torch.tanh(mu_kept), log_std_kept, torch.tanh(mu), log_std, std_eps=KL_STD_EPS)
        return gaussian_kl(mu_kept, log_std_kept, mu, log_std)

    def adjust_gradients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.cfg.average_gradients and len(self.memory):
            grads = [p.grad for p in self.learner.actor.parameters() if p.grad is not None]
            torch._foreach_mul_(grads, 0.5)
        return {}

    # -- best-return exploration ----------------------------------------------------------------

    def _next_head(self) -> int:
        task_index = self.learner.task_index
        untried = [h for h in range(task_index) if h not in self.head_returns]
        if untried:
            self.head_returns[untried[0]] = []  # claimed: the next row takes the next head
            return untried[0]
        finished = {h: sum(r) / len(r) for h, r in self.head_returns.items() if r}
        if not finished:  # every head is being tried and none has finished an episode yet
            return int(torch.randint(0, task_index, ()))
        return max(finished, key=finished.get)

    def explore(self, obs: torch.Tensor) -> torch.Tensor | None:
        learner = self.learner
        if learner.task_index == 0 or not self.cfg.best_return_exploration:
            return None
        if self.row_heads is None or self.row_heads.shape[0] != obs.shape[0]:
            self.row_heads = torch.tensor([self._next_head() for _ in range(obs.shape[0])], device=learner.device)
            self.row_returns = torch.zeros(obs.shape[0], device=learner.device)
        return learner.policy_actions(obs, self.row_heads, deterministic=False)

    def observe(self, batch: Transitions) -> None:
        # the learner has counted these transitions already: they were explored if they fell in the warm-up
        exploring = self.row_heads is not None and self.learner.task_steps - len(batch) < self.learner.cfg.start_steps
        if not exploring:
            return
        self.row_returns += batch.reward
        for row in torch.nonzero((batch.terminated + batch.truncated) > 0).flatten().tolist():
            self.head_returns.setdefault(int(self.row_heads[row]), []).append(float(self.row_returns[row]))
            self.row_returns[row] = 0.0
            self.row_heads[row] = self._next_head()


register_variant("clonex", "sac+clonex",
                 "ClonEx-SAC: behaviour cloning of past actors + best-return exploration (Wołczyk et al. 2022)")
