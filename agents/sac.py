"""SAC fine-tuning with Continual World's architecture and protocol.

Paper: Wołczyk et al., "Continual World: A Robotic Benchmark for Continual Reinforcement Learning",
NeurIPS 2021 (code ``awarelab/continual_world``, a TF2 port of Spinning-Up SAC); SAC itself from
Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018.

As in Continual World: 4×256 bodies (LayerNorm + tanh after the first layer, LeakyReLU after the
rest), twin critics with Polyak targets, one output head and one entropy temperature per sequence
position, the body blind to the task id (``hide_task_id``), one Adam for actor, critics and α, the
replay buffer emptied and Adam's moments zeroed (step counter kept) at every task switch, 10k
uniform-random steps at the start of each task, 50 gradient steps every 50 env steps.

Differs from the original: PyTorch instead of TF2; with ``num_envs > 1`` a vector step adds several
transitions at once and updates are scheduled by transitions, not calls; no regulariser (the
continual baselines subclass this agent).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crl.core import Agent, Task, Transitions, UsageError
from crl.nets import BODIES, HIDDEN_ACTIVATIONS, EnsembleCWMLP, LinearFactory, MultiHead, cw_activations, cw_mlp
from crl.plasticity import (DORMANT_AVERAGING, PlasticityProbe, ProbeConfig, dormant_mask, recycle_units,
                            shrink_perturb)
from crl.replay import ReplayBuffer


PRECISIONS = ("fp32", "bf16")
RESET_GROUPS = ("actor", "actor_head", "critic", "critic_head")


@dataclass
class SACConfig:
    hidden_sizes: tuple[int, ...] = (256, 256, 256, 256)  # body widths (CW: 4×256)
    activation: str = "leaky_relu"  # after the first layer: leaky_relu (CW, slope 0.2) | relu (Ma et al.'s critics)
    body: str = "cw"  # cw: first layer Linear→LayerNorm→tanh (CW) | mlp: Linear→activation throughout (SB3, Spinning Up)
    lr: float = 1e-3  # one Adam for actor, critics and α (CW CL runs: 1e-3)
    batch_size: int = 128  # CW: 128
    buffer_size: int = 1_000_000  # FIFO capacity (CW: 1e6)
    gamma: float = 0.99
    polyak: float = 0.995  # target ← polyak·target + (1−polyak)·online
    start_steps: int = 10_000  # uniform-random actions at the start of EVERY task (CW)
    update_after: int = 1_000  # transitions of the current task before the first update
    update_every: int = 50  # transitions between update rounds
    replay_ratio: float = 1.0  # gradient steps per transition (CW: 1)
    target_output_std: float = 0.089  # target entropy = act_dim·log(std·√(2πe)) = −4.0007 for 4-d actions
    log_alpha_init: float = 1.0  # CW initialises log α to 1 (α ≈ 2.72)
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    multihead: bool = True  # one head (and α) per sequence position
    hide_task_id: bool = True  # body sees the observation only; the task id just selects heads
    reset_buffer_on_task: bool = True  # CW default; "perfect memory" keeps it
    reset_optimizer_on_task: bool = True  # zero Adam moments, keep its step counter (CW)
    reset_critic_on_task: bool = False
    reservoir_buffer: bool = False  # reservoir sampling once full instead of FIFO (perfect memory)
    clip_grad_norm: float | None = None  # clip actor, critic and α gradients to this global norm (CW: none)
    precision: str = "fp32"  # fp32 | bf16: the update's hidden-to-hidden matmuls in bfloat16 (autocast); input and
    #                          output layers, losses, weights, Adam and replay stay fp32 (crl/nets.py in_fp32)
    compile: bool = False  # torch.compile SAC's losses (forward and backward graphs); on CUDA replayed as CUDA graphs
    plasticity_every: int = 1000  # gradient steps between plasticity measurements of actor and critics (0: off)
    dormant_tau: float = 0.025  # τ of the dormant-unit ratio (Ma et al.; Plasticine)
    dormant_averaging: str = "global"  # global (ReDo's code) | per_layer (Plasticine)
    # Plasticity interventions (reference/plasticity.md); all off by default, as in Continual World.
    redo_every: int = 0  # ReDo (Sokar et al. 2023): recycle τ-dormant hidden units every N gradient steps
    redo_tau: float = 0.025
    redo_reset_optimizer: bool = True  # zero the Adam moments of recycled weights (Dopamine's ReDo)
    sp_shrink: float = 1.0  # Shrink & Perturb (Ash & Adams 2020) at each task switch: θ ← shrink·θ + perturb·θ_fresh
    sp_perturb: float = 0.0  # (shrink 1, perturb 0: off)
    reset_layers: tuple[str, ...] = ()  # any of actor, actor_head, critic, critic_head: re-initialised...
    reset_on_task: bool = False  # ...at each task switch
    reset_every: int = 0  # ...and/or every N gradient steps
    nap: bool = False  # Normalize-and-Project (Lyle et al. 2024): LayerNorm before every nonlinearity, and
    #                    each hidden weight matrix rescaled to its initial norm after every optimizer step


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy with one (μ, log σ) head per task position.

    μ and log σ of a head come from one linear map (2·act_dim outputs): one matmul instead of two.
    """

    def __init__(self, in_dim: int, act_dim: int, num_heads: int, cfg: SACConfig, linear: LinearFactory | None = None):
        super().__init__()
        self.act_dim = act_dim
        self.body = cw_mlp(in_dim, cfg.hidden_sizes, norm_all=cfg.nap, activation=cfg.activation, body=cfg.body,
                           linear=linear)
        self.head = MultiHead(cfg.hidden_sizes[-1], 2 * act_dim, num_heads, linear=linear)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def distribution(self, x: torch.Tensor, head: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ) of the pre-tanh Gaussian, log σ clipped to [log_std_min, log_std_max]."""
        mu, log_std = self.head(self.body(x), head).split(self.act_dim, -1)
        return mu, log_std.clamp(self.log_std_min, self.log_std_max)

    def act(self, x: torch.Tensor, head: int | torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The action alone (what ``forward`` returns first, same noise draw), without its log-probability."""
        mu, log_std = self.distribution(x, head)
        return torch.tanh(mu if deterministic else mu + log_std.exp() * torch.randn_like(mu))

    def forward(self, x: torch.Tensor, head: int | torch.Tensor, deterministic: bool = False):
        """Returns (action in [−1, 1], log-probability of it)."""
        mu, log_std = self.distribution(x, head)
        noise = torch.zeros_like(mu) if deterministic else torch.randn_like(mu)
        u = mu + log_std.exp() * noise
        # Gaussian log-density of u ((u − μ)/σ is the noise itself, with the same gradients), then the
        # tanh change of variables in its stable form (Spinning-Up / CW: 2·(log 2 − u − softplus(−2u))).
        logp = -(0.5 * noise.square() + log_std + 2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        logp = logp - 0.5 * math.log(2 * math.pi) * self.act_dim
        return torch.tanh(u), logp


class TwinCritic(nn.Module):
    """SAC's two Q-networks (CW bodies, one output head per task) as one two-member ensemble."""

    def __init__(self, in_dim: int, act_dim: int, num_heads: int, cfg: SACConfig):
        super().__init__()
        self.net = EnsembleCWMLP(2, in_dim + act_dim, cfg.hidden_sizes, 1, num_heads, norm_all=cfg.nap,
                                 activation=cfg.activation, body=cfg.body)

    def forward(self, x: torch.Tensor, action: torch.Tensor, head: int | torch.Tensor, *,
                detach_params: bool = False, record=None) -> torch.Tensor:
        """(2, n) Q-values: row 0 from the first critic, row 1 from the second."""
        return self.net(torch.cat([x, action], -1), head, detach_params=detach_params, record=record).squeeze(-1)


class SAC(Agent):
    """Continual World's SAC; ``observe``/``update`` are called by crl/loop.py after every vector step.

    The continual methods (agents/regularization.py, packnet.py, agem.py, episodic_memory.py,
    clonex.py, kickstart.py, vcl.py) and Adaptive Replay Ratio (agents/arr.py) subclass it and fill in the
    hooks below with shared pieces from crl/continual.py and crl/plasticity.py; the update itself is
    written once:

    - ``_sample_batch()``: the batch of a gradient step (memories add rows of earlier tasks);
    - ``_auxiliary_loss(batch)``: a loss added to SAC's (regularisers, cloning, distillation);
    - ``_adjust_gradients(batch)``: gradient surgery before the optimiser step (A-GEM, PackNet);
    - ``_networks_to_capture(measure)``: whose activations a step captures (plasticity probes);
    - ``_explore_actions(obs)``: actions of the warm-up phase (uniform; ClonEx: best earlier policy);
    - ``_policy_actions(obs, task_index, deterministic)``: the policy (PackNet: per-task weights);
    - ``_make_actor()``: the policy network (VCL: Bayesian layers).
    """

    learns_from = "env"
    config_class = SACConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: SACConfig, device: torch.device):
        if config.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{config.precision}'; allowed: {', '.join(PRECISIONS)}")
        if config.activation not in HIDDEN_ACTIVATIONS:
            raise UsageError(f"unknown activation '{config.activation}'; allowed: {', '.join(HIDDEN_ACTIVATIONS)}")
        if config.body not in BODIES:
            raise UsageError(f"unknown body '{config.body}'; allowed: {', '.join(BODIES)}")
        if config.compile and device.type == "cpu" and not any(map(shutil.which, ("g++", "c++", "clang++"))):
            raise UsageError("compile=true on CPU needs a C++ compiler (g++, c++ or clang++) on PATH; none found "
                             "(install one, or leave compile off)")
        if config.dormant_averaging not in DORMANT_AVERAGING:
            raise UsageError(f"unknown dormant_averaging '{config.dormant_averaging}'; "
                             f"allowed: {', '.join(DORMANT_AVERAGING)}")
        unknown = [g for g in config.reset_layers if g not in RESET_GROUPS]
        if unknown:
            raise UsageError(f"unknown layer group(s) {', '.join(unknown)} in reset_layers; allowed: {', '.join(RESET_GROUPS)}")
        self.cfg, self.device = config, device
        self.obs_dim, self.act_dim, self.num_tasks = obs_dim, act_dim, num_tasks
        self.num_heads = num_tasks if config.multihead else 1
        self.actor = self._make_actor().to(device)
        self.critics = TwinCritic(self._in_dim, act_dim, self.num_heads, config).to(device)
        self.targets = TwinCritic(self._in_dim, act_dim, self.num_heads, config).to(device)
        self.targets.load_state_dict(self.critics.state_dict())
        self.targets.requires_grad_(False)
        self._online_params, self._target_params = list(self.critics.parameters()), list(self.targets.parameters())
        self.log_alpha = nn.Parameter(torch.full((self.num_heads,), config.log_alpha_init, device=device))
        self.target_entropy = act_dim * math.log(config.target_output_std * math.sqrt(2 * math.pi * math.e))
        self.optimizer = self._make_optimizer()
        self.buffer = ReplayBuffer(obs_dim, act_dim, config.buffer_size, device, reservoir=config.reservoir_buffer)
        self.task_index = 0
        self.task_steps = 0  # transitions observed in the current task
        self.pending_updates = 0.0  # gradient steps owed by the replay-ratio schedule
        self.replay_ratio = config.replay_ratio  # gradient steps per transition (Adaptive Replay Ratio changes it)
        self.gradient_steps = 0
        probe_cfg = ProbeConfig(dormant_tau=config.dormant_tau, dormant_averaging=config.dormant_averaging)
        activations = cw_activations(config.hidden_sizes, config.activation, config.body)
        actor_hooks = [m for m in self.actor.body if isinstance(m, (nn.Tanh, nn.LeakyReLU, nn.ReLU))]
        self.probes = {
            "actor": PlasticityProbe("actor", self.actor, probe_cfg, activations,
                                     hooks=dict(zip(activations, actor_hooks))),
            "critic": PlasticityProbe("critic", self.critics, probe_cfg, activations),  # both critics pooled
        }
        self._capture: frozenset[str] = frozenset()  # networks whose activations this gradient step measures
        self.nap_norms = self._hidden_weight_norms() if config.nap else None
        self._compiled_losses = self._compile_losses() if config.compile else None

    # -- the Agent contract --------------------------------------------------------------------

    def begin_task(self, task: Task) -> None:
        self.task_index, self.task_steps, self.pending_updates = task.index, 0, 0.0
        if self.cfg.reset_buffer_on_task:
            self.buffer.clear()
        if self.cfg.reset_critic_on_task:
            fresh = TwinCritic(self._in_dim, self.act_dim, self.num_heads, self.cfg).to(self.device)
            self.critics.load_state_dict(fresh.state_dict())
            self.targets.load_state_dict(fresh.state_dict())
        if self.cfg.reset_optimizer_on_task:
            self._reset_optimizer_moments()
        if self.gradient_steps > 0:  # interventions at a switch to a new task, not before the first
            if self.cfg.sp_shrink != 1.0 or self.cfg.sp_perturb != 0.0:
                self._shrink_perturb()
            if self.cfg.reset_on_task and self.cfg.reset_layers:
                self._reset_layers(self.cfg.reset_layers)

    def end_task(self, task: Task) -> None:
        pass

    @torch.no_grad()
    def act(self, obs, task_index, *, explore, deterministic=False, first=None):
        if explore and self.task_steps < self.cfg.start_steps:
            return self._explore_actions(obs)
        return self._policy_actions(obs, task_index, deterministic and not explore)

    def observe(self, batch: Transitions) -> None:
        self.buffer.add(batch)
        before, self.task_steps = self.task_steps, self.task_steps + len(batch)
        counted = self.task_steps - max(before, self.cfg.update_after)  # transitions past update_after
        if counted > 0:
            self.pending_updates += counted * self.replay_ratio

    def update(self) -> dict[str, torch.Tensor]:
        if self.pending_updates < self.cfg.update_every * self.replay_ratio:
            return {}
        n_steps = int(self.pending_updates)
        self.pending_updates -= n_steps
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for _ in range(n_steps):
            for k, v in self._gradient_step().items():  # some keys (plasticity) come from a few steps only
                sums[k] = sums[k] + v if k in sums else torch.as_tensor(v, dtype=torch.float32)
                counts[k] = counts.get(k, 0) + 1
        # 0-d tensors, read by the monitor when it writes (no host sync per update on a GPU, and no
        # .item() per stat per env step at update_every=1)
        return {k: v / counts[k] if counts[k] > 1 else v for k, v in sums.items()}

    # -- hooks for the continual methods ---------------------------------------------------------

    def _sample_batch(self) -> dict[str, torch.Tensor]:
        batch = self.buffer.sample(self.cfg.batch_size)
        batch["single_task"] = self.cfg.reset_buffer_on_task  # then every row is the current task
        return batch

    def _auxiliary_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def _adjust_gradients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def _networks_to_capture(self, measure: bool) -> frozenset[str]:
        """Networks whose activations this gradient step captures (all of them when a plasticity
        measurement is due; Adaptive Replay Ratio also wants the critic's at every step)."""
        return frozenset(self.probes) if measure else frozenset()

    def _make_actor(self) -> Actor:
        """The policy network (VCL: one with Bayesian layers)."""
        return Actor(self._in_dim, self.act_dim, self.num_heads, self.cfg)

    def _explore_actions(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.rand(obs.shape[0], self.act_dim, device=self.device) * 2 - 1

    def _policy_actions(self, obs: torch.Tensor, task_index: int | torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.actor.act(self._body_input(obs, task_index), self._heads(task_index), deterministic=deterministic)

    # -- internals ------------------------------------------------------------------------------

    @property
    def _in_dim(self) -> int:
        return self.obs_dim if self.cfg.hide_task_id else self.obs_dim + self.num_tasks

    def _heads(self, task_index: int | torch.Tensor) -> int | torch.Tensor:
        """Head selector for MultiHead: an int for a one-task batch, else a per-row tensor."""
        if self.num_heads == 1:
            return 0
        return int(task_index) if not isinstance(task_index, torch.Tensor) else task_index

    def _body_input(self, obs: torch.Tensor, task_index: int | torch.Tensor) -> torch.Tensor:
        if self.cfg.hide_task_id:
            return obs
        if isinstance(task_index, int):
            task_index = torch.full((obs.shape[0],), task_index, dtype=torch.long, device=obs.device)
        return torch.cat([obs, F.one_hot(task_index, self.num_tasks).float()], -1)

    def _batch_task(self, batch: dict[str, torch.Tensor]) -> int | torch.Tensor:
        """The batch's task: one int when every row is the current task, else per-row indices."""
        # A buffer emptied at every switch holds only the current task: one head for the whole
        # batch skips the per-row gather (+7% updates/s, scripts/bench_sac.py profiling).
        return self.task_index if batch.get("single_task", False) else batch["task_index"]

    def _make_optimizer(self) -> torch.optim.Adam:
        params = [*self.actor.parameters(), *self.critics.parameters(), self.log_alpha]
        # One fused Adam over everything: fewer optimizer kernels is the main CPU lever
        # (reference/performance.md, "fused Adam, one optimizer": −14–19% per update).
        return torch.optim.Adam(params, lr=self.cfg.lr, fused=True)

    def _reset_optimizer_moments(self) -> None:
        # CW re-creates Adam's slots but keeps its iteration counter (reference/continual-world.md).
        for state in self.optimizer.state.values():
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()

    def sac_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SAC's loss on ``batch`` as one scalar whose gradient is CW's: the critic loss reaches only
        the critics, the actor loss only the actor, the temperature loss only α; plus statistics.

        CW computes each loss's gradient for its own variables, all from the same pre-update weights.
        Here the actor loss sees the critics through detached parameters and α through a detached
        value, so one backward pass gives exactly those gradients (one pass instead of two: faster)."""
        cfg = self.cfg
        task = self._batch_task(batch)
        heads = self._heads(task)
        x, x_next = self._body_input(batch["obs"], task), self._body_input(batch["next_obs"], task)
        alpha = self.log_alpha[heads].exp()

        with torch.no_grad():
            a_next, logp_next = self.actor(x_next, heads)
            q_next = self.targets(x_next, a_next, heads).min(0).values
            backup = batch["reward"] + cfg.gamma * (1 - batch["terminated"]) * (q_next - alpha * logp_next)
        critic_probe = self.probes["critic"] if "critic" in self._capture else None
        if critic_probe is not None:
            critic_probe.arm()
        q = self.critics(x, batch["action"], heads, record=critic_probe.record if critic_probe else None)
        critic_loss = 0.5 * ((q - backup) ** 2).mean(1).sum()

        if "actor" in self._capture:
            self.probes["actor"].arm()  # its hooks capture this forward pass (the batch's states)
        a_pi, logp_pi = self.actor(x, heads)
        q_pi = self.critics(x, a_pi, heads, detach_params=True).min(0).values
        actor_loss = (alpha.detach() * logp_pi - q_pi).mean()
        alpha_loss = -(alpha.log() * (logp_pi + self.target_entropy).detach()).mean()
        stats = {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                 "alpha": alpha.detach().mean(), "entropy": -logp_pi.detach().mean(), "q": q[0].detach().mean()}
        return critic_loss + actor_loss + alpha_loss, stats

    def _compile_losses(self):
        """``sac_losses`` through ``torch.compile``: one fused graph for the forward pass and one for the
        backward (AOTAutograd). On CUDA, mode ``reduce-overhead`` replays both as CUDA graphs, the main
        lever for a small-MLP update at one update per env step (LeanRL: eager 130 → compiled with CUDA
        graphs 730 sps, reference/performance.md; crl on an H100: 145 → 490 updates/s, SB3 70, with
        scripts/bench_sac.py --device cuda). On CPU it fuses what surrounds the matmuls (CW's
        LayerNorm and tanh, bf16 casts): with CW's networks +14% env-steps/s in fp32 and +25% in bf16 on one
        thread, nothing with plain MLPs (scripts/bench_sac.py --compile off,on). Sampling, Adam and the
        target lerp stay eager: each is one or a few fused kernels already."""
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        return torch.compile(self.sac_losses, mode=mode)

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``sac_losses``, compiled when ``compile`` is on, except for a step whose activations a probe
        captures (the probes' Python hooks stay eager; they run every ``plasticity_every`` steps)."""
        if self._compiled_losses is None or self._capture:
            return self.sac_losses(batch)
        if self.device.type != "cuda":
            return self._compiled_losses(batch)
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
        loss, stats = self._compiled_losses(batch)
        # CUDA-graph outputs live in memory the next replay overwrites; update() sums stats over steps
        return loss, {k: v.clone() for k, v in stats.items()}

    def _gradient_step(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        batch = self._sample_batch()
        measure = cfg.plasticity_every > 0 and self.gradient_steps % cfg.plasticity_every == 0
        redo = cfg.redo_every > 0 and self.gradient_steps > 0 and self.gradient_steps % cfg.redo_every == 0
        self._capture = self._networks_to_capture(measure or redo)
        # bf16: CPUs with AVX512-BF16 (and GPUs) run the update's matmuls ~1.4× faster (scripts/bench_sac.py)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss, stats = self._losses(batch)
            self._capture = frozenset()  # later passes (memories, references) are not the measured batch
            auxiliary = self._auxiliary_loss(batch)
        if auxiliary is not None:
            loss = loss + auxiliary
            stats["auxiliary_loss"] = auxiliary.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dormant = self._dormant_units(cfg.redo_tau) if redo else None
        if measure:  # after backward: gradient norms are part of the measurement
            for probe in self.probes.values():
                stats.update(probe.collect())
        stats.update(self._adjust_gradients(batch))
        if cfg.clip_grad_norm is not None:  # CW clips actor, critics and α separately
            for group in (self.actor.parameters(), self.critics.parameters(), [self.log_alpha]):
                nn.utils.clip_grad_norm_(group, cfg.clip_grad_norm, foreach=True)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._online_params, 1 - cfg.polyak)
        self.gradient_steps += 1
        if self.nap_norms is not None:
            self._nap_project()
        if dormant is not None:
            stats["redo/recycled_units"] = torch.tensor(float(self._recycle(dormant)))
        if cfg.reset_every > 0 and cfg.reset_layers and self.gradient_steps % cfg.reset_every == 0:
            self._reset_layers(cfg.reset_layers)
        return stats

    # -- plasticity interventions ----------------------------------------------------------------

    def _unit_layers(self) -> dict[str, list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, int]]]:
        """Per network, each hidden layer as (incoming weight, bias, its unit axis, outgoing weight, its
        unit axis) for ReDo: nn.Linear weights are (out, in), the critics' ensemble weights (2, in, out)."""
        linears = [m for m in self.actor.body if isinstance(m, nn.Linear)]
        outgoing = [m.weight for m in linears[1:]] + [self.actor.head.linear.weight]
        net = self.critics.net
        return {
            "actor": [(m.weight, m.bias, 0, w_out, 1) for m, w_out in zip(linears, outgoing)],
            "critic": [(net.weights[i], net.biases[i], -1, net.weights[i + 1], -2) for i in range(len(net.weights) - 1)],
        }

    def _dormant_units(self, tau: float) -> dict[str, list[torch.Tensor]]:
        """τ-dormant masks of every hidden layer from the activations this step captured: (width,)
        for the actor, (2, width) for the twin critics (each critic's units scored on its own)."""
        masks = {}
        for name, probe in self.probes.items():
            masks[name] = [dormant_mask(h, tau) if h.dim() == 2 else torch.stack([dormant_mask(m, tau) for m in h])
                           for h in probe.captured.values()]  # captured in layer order
        return masks

    def _recycle(self, dormant: dict[str, list[torch.Tensor]]) -> int:
        optimizer = self.optimizer if self.cfg.redo_reset_optimizer else None
        return sum(recycle_units(w_in, b_in, in_axis, w_out, out_axis, mask, optimizer)
                   for name, layers in self._unit_layers().items()
                   for (w_in, b_in, in_axis, w_out, out_axis), mask in zip(layers, dormant[name]))

    def _hidden_weights(self) -> list[torch.Tensor]:
        """Weight matrices followed by a normalisation when ``nap`` is on: every hidden layer of the
        actor and of both critics (not the output heads: projecting those would change the function)."""
        net = self.critics.net
        return [m.weight for m in self.actor.body if isinstance(m, nn.Linear)] + list(net.weights[:-1])

    @torch.no_grad()
    def _hidden_weight_norms(self) -> list[torch.Tensor]:
        """Frobenius norm of each hidden matrix; per critic for the (2, in, out) ensemble weights."""
        return [w.norm() if w.dim() == 2 else w.norm(dim=(1, 2), keepdim=True) for w in self._hidden_weights()]

    @torch.no_grad()
    def _nap_project(self) -> None:
        for w, norm, current in zip(self._hidden_weights(), self.nap_norms, self._hidden_weight_norms()):
            w.mul_(norm / current.clamp_min(1e-12))

    def _fresh_networks(self) -> tuple[Actor, TwinCritic]:
        return (self._make_actor().to(self.device),
                TwinCritic(self._in_dim, self.act_dim, self.num_heads, self.cfg).to(self.device))

    def _shrink_perturb(self) -> None:
        actor, critics = self._fresh_networks()
        shrink_perturb(self.actor.parameters(), actor.parameters(), self.cfg.sp_shrink, self.cfg.sp_perturb)
        shrink_perturb(self.critics.parameters(), critics.parameters(), self.cfg.sp_shrink, self.cfg.sp_perturb)
        self.targets.load_state_dict(self.critics.state_dict())

    @torch.no_grad()
    def _reset_layers(self, names: tuple[str, ...]) -> None:
        """Re-initialise whole networks or their output heads, with fresh Adam moments for them."""
        actor, critics = self._fresh_networks()
        pairs = {"actor": (self.actor, actor), "actor_head": (self.actor.head, actor.head),
                 "critic": (self.critics, critics)}
        net, fresh_net = self.critics.net, critics.net
        for name in names:
            if name == "critic_head":  # the critics' output layer: the ensemble's last weight and bias
                params = [(net.weights[-1], fresh_net.weights[-1]), (net.biases[-1], fresh_net.biases[-1])]
            else:
                params = list(zip(pairs[name][0].parameters(), pairs[name][1].parameters()))
            for p, fresh in params:
                p.copy_(fresh)
                for moment in self.optimizer.state.get(p, {}).values():
                    if moment.shape == p.shape:
                        moment.zero_()
            if name.startswith("critic"):
                self.targets.load_state_dict(self.critics.state_dict())


    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(), "critics": self.critics.state_dict(),
            "targets": self.targets.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
            "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
            "task_index": self.task_index, "task_steps": self.task_steps,
            "pending_updates": self.pending_updates, "gradient_steps": self.gradient_steps,
            "probe_initial_weights": {name: probe.initial for name, probe in self.probes.items()},
            "nap_norms": self.nap_norms,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critics.load_state_dict(state["critics"])
        self.targets.load_state_dict(state["targets"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.task_index, self.task_steps = state["task_index"], state["task_steps"]
        self.pending_updates, self.gradient_steps = state["pending_updates"], state["gradient_steps"]
        if state["nap_norms"] is not None:
            self.nap_norms = [n.to(self.device) for n in state["nap_norms"]]
        for name, initial in state["probe_initial_weights"].items():  # weight change stays measured from the start
            self.probes[name].initial = {k: v.to(self.device) for k, v in initial.items()}
