"""SAC fine-tuning with Continual World's architecture and protocol.

Paper: Wołczyk et al., "Continual World: A Robotic Benchmark for Continual Reinforcement Learning",
NeurIPS 2021 (code ``awarelab/continual_world``, a TF2 port of Spinning-Up SAC); SAC itself from
Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018.

As in Continual World: 4×256 bodies (LayerNorm + tanh after the first layer, LeakyReLU after the
rest), twin critics with Polyak targets, one output head and one entropy temperature per sequence
position, the body blind to the task id (``hide_task_id``), one Adam for actor, critics and α, the
replay buffer emptied and Adam's moments zeroed (step counter kept) at every task switch, 10k
uniform-random steps at the start of each task, 50 gradient steps every 50 env steps
(crl/offpolicy.py holds what SAC shares with TD3); Keras' defaults where CW relies on them: LayerNorm ε
1e-3 (crl/nets.py ``CW_LAYER_NORM_EPS``), Adam ε 1e-7 (``adam_eps``). Actor and critics compute CW's
forward pass on identical weights (tests/test_cw_parity.py).

Differs from the original: PyTorch instead of TF2; with ``num_envs > 1`` a vector step adds several
transitions at once and updates are scheduled by transitions, not calls. Keras' Adam adds ε to √v before
the bias correction, torch after it: at gradient step t Keras' ε is ε/√(1 − β₂ᵗ) in torch's terms (31.6ε
at t = 1, 1.01ε at t = 4,000), equal once the counter, kept across tasks as in CW, is past a few
thousand. The continual methods are extensions composed onto it (``sac+ewc``, ``sac+packnet+redo``;
crl/extension.py).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crl.core import UsageError
from crl.nets import LinearFactory, MultiHead, cw_mlp
from crl.offpolicy import OffPolicyConfig, OffPolicyLearner, target_entropy
from crl.register import register_agent, register_variant


@dataclass
class SACConfig(OffPolicyConfig):
    target_output_std: float = 0.089  # target entropy = act_dim·log(std·√(2πe)) = −4.0007 for 4-d actions
    log_alpha_init: float = 1.0  # CW initialises log α to 1 (α ≈ 2.72)
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    compile: bool = False  # torch.compile SAC's losses (forward and backward graphs); on CUDA replayed as CUDA graphs


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy with one (μ, log σ) head per task position.

    μ and log σ of a head come from one linear map (2·act_dim outputs): one matmul instead of two.
    """

    def __init__(self, in_dim: int, act_dim: int, num_heads: int, cfg: SACConfig, linear: LinearFactory | None = None,
                 norm_all: bool = False):
        super().__init__()
        self.act_dim = act_dim
        self.body = cw_mlp(in_dim, cfg.hidden_sizes, norm_all=norm_all, activation=cfg.activation, body=cfg.body,
                           linear=linear)
        self.head = MultiHead(cfg.hidden_sizes[-1], 2 * act_dim, num_heads, linear=linear)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def distribution(self, x: torch.Tensor, head: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ) of the pre-tanh Gaussian, log σ clipped to [log_std_min, log_std_max]."""
        mu, log_std = self.head(self.body(x), head).split(self.act_dim, -1)
        return mu, log_std.clamp(self.log_std_min, self.log_std_max)

    @staticmethod
    def squash(mu: torch.Tensor) -> torch.Tensor:
        """The action mean the policy outputs, tanh(μ): CW's squashed ``mu`` (sac/models.py:123-130; its
        ``action_scale`` is 1 in crl's [−1, 1] actions), what EWC and MAS differentiate by default."""
        return torch.tanh(mu)

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


@register_agent("sac", "SAC fine-tuning, Continual World architecture (Wołczyk et al. 2021)")
class SAC(OffPolicyLearner):
    """Continual World's SAC: a Gaussian actor with one (μ, log σ) head and one temperature α per task."""

    config_class = SACConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: SACConfig, device: torch.device):
        if config.compile and device.type == "cpu" and not any(map(shutil.which, ("g++", "c++", "clang++"))):
            raise UsageError("compile=true on CPU needs a C++ compiler (g++, c++ or clang++) on PATH; none found "
                             "(install one, or leave compile off)")
        super().__init__(obs_dim, act_dim, num_tasks, config, device)
        self._compiled_losses = self._compile_losses() if config.compile else None

    def make_actor(self) -> Actor:
        return Actor(self.in_dim, self.act_dim, self.num_heads, self.cfg, linear=self.policy_linear,
                     norm_all=self.network_options.get("norm_all", False))

    def build(self) -> None:
        self.log_alpha = nn.Parameter(torch.full((self.num_heads,), self.cfg.log_alpha_init, device=self.device))
        self.target_entropy = target_entropy(self.act_dim, self.cfg.target_output_std)

    def optimized_groups(self) -> list[list[torch.Tensor]]:
        return [*super().optimized_groups(), [self.log_alpha]]

    def own_state(self) -> dict[str, Any]:
        return {"log_alpha": self.log_alpha.detach().cpu()}

    def load_own_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"].to(self.device))

    def sac_losses(self, batch: dict[str, torch.Tensor], capture: frozenset[str] = frozenset()
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SAC's loss on ``batch`` as one scalar whose gradient is CW's: the critic loss reaches only
        the critics, the actor loss only the actor, the temperature loss only α; plus statistics.

        CW computes each loss's gradient for its own variables, all from the same pre-update weights.
        Here the actor loss sees the critics through detached parameters and α through a detached
        value, so one backward pass gives exactly those gradients (one pass instead of two: faster)."""
        cfg = self.cfg
        task = self.batch_task(batch)
        heads = self.heads(task)
        x, x_next = self.policy_input(batch["obs"], task), self.policy_input(batch["next_obs"], task)
        alpha = self.log_alpha[heads].exp()

        with torch.no_grad():
            a_next, logp_next = self.actor(x_next, heads)
            q_next = self.target_critics(x_next, a_next, heads).min(0).values
            backup = batch["reward"] + cfg.gamma * (1 - batch["terminated"]) * (q_next - alpha * logp_next)
        critic_probe = self.probes["critic"] if "critic" in capture else None
        if critic_probe is not None:
            critic_probe.arm()
        q = self.critics(x, batch["action"], heads, record=critic_probe.record if critic_probe else None)
        critic_loss = 0.5 * ((q - backup) ** 2).mean(1).sum()

        if "actor" in capture:
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

    def losses(self, batch: dict[str, torch.Tensor], capture: frozenset[str] = frozenset()
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``sac_losses``, compiled when ``compile`` is on, except for a step whose activations a probe
        captures (the probes' Python hooks stay eager; they run every ``plasticity_every`` steps)."""
        if self._compiled_losses is None or capture:
            return self.sac_losses(batch, capture)
        if self.device.type != "cuda":
            return self._compiled_losses(batch)
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
        loss, stats = self._compiled_losses(batch)
        # CUDA-graph outputs live in memory the next replay overwrites; update() sums stats over steps
        return loss, {k: v.clone() for k, v in stats.items()}


register_variant("perfect-memory", "sac", "SAC with a reservoir buffer of every task, never reset (CW)",
                 reset_buffer_on_task=False, reservoir_buffer=True, buffer_size=20_000_000, batch_size=512)
