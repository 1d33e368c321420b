"""HyperCRL: continual model-based RL with a task-conditioned hypernetwork dynamics model and CEM.

Huang, Xie, Bharadhwaj, Shkurti, "Continual Model-Based Reinforcement Learning with Hypernetworks",
ICRA 2021 (code ``rvl-lab-utoronto/HyperCRL``; reference/hypercrl.md), on von Oswald et al. 2020's
hypernetworks (crl/hypernet.py). Per task t: a new embedding e_t; ``random_steps`` uniform-random
actions; then MPC with CEM (crl/planning.py) on the weights θ_t = f_h(e_t) (generated once per training
round or task switch, cached) and the task's known torch reward (``Task.reward_fn``); every
``train_every`` env steps, ``train_iters`` minibatch steps on **task t's transitions only**: the task
loss steps e_t; Θ steps on the task loss plus β·(1/(t)) Σ_{s<t} ‖f_h(e_s, Θ + ΔΘ) − f_h(e_s, Θ*)‖², ΔΘ
the look-ahead (Adam's candidate step from the task loss, detached), gradient norm clipped at 5.
The target MLP predicts normalised Δs from normalised [s, a] (per-task statistics), deterministic
(MSE) or probabilistic (Gaussian NLL with PETS' soft log-variance bounds, + 0.01·(Σ max − Σ min)).

The baselines (HyperCRL's ``lqr_exp.py``; same target size, planner and loop) are ``model=mlp``:
``hypercrl-finetune`` (one shared MLP), ``hypercrl-multihead`` (shared trunk, a head per task),
``hypercrl-coreset`` (multi-head + a per-task coreset replayed beside the current data),
``hypercrl-ewc`` / ``hypercrl-si`` (multi-head + crl/continual.py's ParameterRegularizer with the
empirical Fisher / SI importance), ``hypercrl-single`` (a separate model per task, re-initialised) and
``hypercrl-multitask`` (multi-head, keeps every transition of every task).

Retention for a model: after each task the loop asks ``measure_retention``: on held-out transitions of
every task seen so far (every ``holdout_every``-th block of 50 vector steps is kept out of training and
kept for this only), the one-step and ``error_horizon``-step prediction errors as fractions of the
held-out variance (``model_nmse_1step``, ``model_nmse_<H>step``; lower is better).

Differs from the reference: the task loss is a batch mean (β not multiplied by the batch size, the same
ratio); angles are not fed as cos/sin; previous embeddings are frozen also with chunking; the
probabilistic model's log-variance bounds are generated weights too (so the regulariser keeps them);
CEM restarts from the mid-range each step; held-out transitions of earlier tasks are kept (for the
retention measurement only, never trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crl.devices import require_native_bf16
from crl.continual import EpisodicMemory, ParameterRegularizer, SynapticIntelligence, empirical_fisher
from crl.core import Agent, Scalars, Task, Transitions, UsageError
from crl.hypernet import (ACTIVATIONS, HyperNetwork, adam_lookahead, output_regularizer, target_forward,
                          target_shapes)
from crl.planning import CEMConfig, check_config, plan
from crl.register import register_agent, register_variant

PLAN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

HOLDOUT_BLOCK = 50  # vector steps per block; every holdout_every-th block is held out


@dataclass
class HyperCRLConfig:
    model: str = "hnet"  # hnet (HyperCRL) | mlp (the baselines)
    heads: str = "multi"  # mlp: single (one shared MLP) | multi (shared trunk, a head per task) | separate
    hidden_sizes: tuple[int, ...] = (200, 200, 200, 200)  # target MLP (HyperCRL cheetah: 4×200)
    activation: str = "relu"  # target MLP activation
    probabilistic: bool = True  # Gaussian output (mean, log-variance) with PETS' bounds; False = MSE
    hnet_hidden: tuple[int, ...] = (256, 256)  # hypernetwork hidden layers (cheetah: 256, 256)
    hnet_activation: str = "relu"  # hypernetwork activation (pusher: elu)
    emb_dim: int = 10  # task embedding size (HyperCRL: 10)
    chunk_size: int = 0  # 0 = one output head per target tensor; >0 = chunked hypernetwork (HyperCRL: 4000)
    chunk_emb_dim: int = 20  # chunk embedding size when chunked
    beta: float = 0.05  # output regulariser weight β (cheetah, pusher: 0.05; door: 0.5)
    lookahead: bool = True  # regularise at Θ + ΔΘ (von Oswald et al.'s look-ahead)
    lr: float = 1e-4  # Adam learning rate (HyperCRL: 1e-4 for the hypernetwork, 1e-3 for the baselines)
    weight_decay: float = 0.0  # L2 on the baselines' weights (reference: 7.5e-5 cheetah, 1e-5 door)
    grad_clip: float = 5.0  # gradient-norm clip
    batch_size: int = 100  # minibatch (and coreset minibatch) size
    random_steps: int = 10_000  # uniform-random env steps at the start of every task
    train_every: int = 1_000  # env steps between training rounds once the random steps are done
    train_iters: int = 2_000  # minibatch steps per training round
    replay: str = "none"  # none | coreset (coreset_size random transitions per finished task) | all
    coreset_size: int = 1_000  # coreset transitions per task (cheetah 1000, pusher 100, door 600)
    ewc_lambda: float = 0.0  # EWC penalty λ (baseline: 1e4), empirical Fisher, not online
    fisher_samples: int = 1_000  # transitions the Fisher is averaged over
    si_c: float = 0.0  # SI penalty c (baseline: 0.1)
    si_xi: float = 1e-3  # SI damping ξ
    horizon: int = 30  # CEM horizon (crl/planning.py)
    samples: int = 500  # CEM candidates per environment
    elites: int = 50  # CEM elites
    iterations: int = 5  # CEM iterations
    init_std: float = 0.5  # CEM initial std, fraction of the action half-range
    full_cov: bool = True  # CEM full covariance (HyperCRL) or diagonal
    plan_dtype: str = "float32"  # the planner's model matmuls: float32 | bfloat16 (states and returns stay fp32;
    #                              bf16 runs on a CPU's AMX/AVX512-BF16 units or a GPU's tensor cores). bf16 plans
    #                              1.7-3.0x faster here but cost return: cartpole-physics 0.390 -> 0.346 (issue 16)
    holdout_every: int = 10  # every n-th block of 50 vector steps is held out for the retention errors
    holdout_max: int = 2_000  # held-out transitions kept per task
    error_horizon: int = 10  # steps of the multi-step prediction error


class _MLPModel(nn.Module):
    """The baselines' target MLP: parameter sets in ``target_shapes`` layout, trunk and head shared or per task."""

    def __init__(self, shapes: list[tuple[int, ...]], n_head: int, num_tasks: int, heads: str):
        super().__init__()
        self.heads_kind = heads
        n_trunk = len(shapes) - n_head
        n_trunks = num_tasks if heads == "separate" else 1
        n_heads = 1 if heads == "single" else num_tasks
        self.trunks = nn.ModuleList(nn.ParameterList(self._init(shapes[:n_trunk])) for _ in range(n_trunks))
        self.heads = nn.ModuleList(nn.ParameterList(self._init(shapes[n_trunk:])) for _ in range(n_heads))

    @staticmethod
    def _init(shapes: list[tuple[int, ...]]) -> list[nn.Parameter]:
        """nn.Linear's initialisation for each (weight, bias) pair; zeros for the log-variance bounds after them."""
        out: list[nn.Parameter] = []
        while len(out) < len(shapes):
            shape = shapes[len(out)]
            if len(shape) == 2:
                layer = nn.Linear(shape[1], shape[0])
                out += [nn.Parameter(layer.weight.detach().clone()), nn.Parameter(layer.bias.detach().clone())]
            else:
                out.append(nn.Parameter(torch.zeros(shape)))
        return out

    def weights(self, task: int) -> list[torch.Tensor]:
        trunk = self.trunks[task if self.heads_kind == "separate" else 0]
        head = self.heads[0 if self.heads_kind == "single" else task]
        return [*trunk, *head]


@register_agent("hypercrl", "HyperCRL: hypernetwork dynamics model + CEM MPC, output regulariser with look-ahead "
                "(Huang et al. 2021); dynamics families only")
class HyperCRL(Agent):
    config_class = HyperCRLConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: HyperCRLConfig, device: torch.device):
        self.cfg, self.device = config, torch.device(device)
        self.obs_dim, self.act_dim, self.num_tasks = obs_dim, act_dim, num_tasks
        self._check(config, self.device)
        self.cem = CEMConfig(config.horizon, config.samples, config.elites, config.iterations, config.init_std,
                             config.full_cov)
        out = 2 * obs_dim if config.probabilistic else obs_dim
        shapes = target_shapes(obs_dim + act_dim, config.hidden_sizes, out)
        if config.probabilistic:
            shapes += [(obs_dim,), (obs_dim,)]  # max and min log-variance (PETS' soft bounds)
        self.n_linear = 2 * (len(config.hidden_sizes) + 1)
        if config.model == "hnet":
            self.net: nn.Module = HyperNetwork(shapes, num_tasks, config.emb_dim, config.hnet_hidden,
                                               config.hnet_activation, config.chunk_size, config.chunk_emb_dim)
        else:
            self.net = _MLPModel(shapes, len(shapes) - self.n_linear + 2, num_tasks, config.heads)
        self.net.to(self.device)
        d_in = obs_dim + act_dim
        # per-task normalisation statistics of inputs [s, a] and outputs Δs
        self.in_mean = torch.zeros(num_tasks, d_in, device=self.device)
        self.in_std = torch.ones(num_tasks, d_in, device=self.device)
        self.out_mean = torch.zeros(num_tasks, obs_dim, device=self.device)
        self.out_std = torch.ones(num_tasks, obs_dim, device=self.device)
        self.memory = EpisodicMemory(self.device)
        params = dict(self.net.named_parameters())
        self.regularizer = ParameterRegularizer(params, config.ewc_lambda or config.si_c) \
            if (config.ewc_lambda or config.si_c) else None
        self.si = SynapticIntelligence(params, config.si_xi) if config.si_c else None
        self.holdout: dict[int, dict[str, torch.Tensor]] = {}
        self.task = -1
        self.domain = ""
        self.reward_fn = None
        self.low, self.high = -1.0, 1.0
        self._cache: dict[tuple[int, torch.dtype], list[torch.Tensor]] = {}
        self._reset_task_state()

    @staticmethod
    def _check(cfg: HyperCRLConfig, device: torch.device) -> None:
        allowed = {"model": ("hnet", "mlp"), "heads": ("single", "multi", "separate"),
                   "replay": ("none", "coreset", "all"), "activation": tuple(ACTIVATIONS),
                   "hnet_activation": tuple(ACTIVATIONS), "plan_dtype": tuple(PLAN_DTYPES)}
        for name, values in allowed.items():
            if getattr(cfg, name) not in values:
                raise UsageError(f"agent.{name} must be one of {', '.join(values)}, got {getattr(cfg, name)!r}")
        for name in ("batch_size", "train_every", "train_iters", "error_horizon", "holdout_every", "holdout_max"):
            if getattr(cfg, name) <= 0:
                raise UsageError(f"agent.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.model == "hnet" and (cfg.replay != "none" or cfg.ewc_lambda or cfg.si_c):
            raise UsageError("agent.replay/ewc_lambda/si_c apply to model=mlp (the baselines); hnet uses beta")
        check_config(CEMConfig(cfg.horizon, cfg.samples, cfg.elites, cfg.iterations))
        if cfg.plan_dtype == "bfloat16":
            require_native_bf16("agent.plan_dtype=bfloat16", device)

    # -- task boundaries ----------------------------------------------------------------------------------

    def _reset_task_state(self) -> None:
        self.data: dict[str, list[torch.Tensor]] = {"obs": [], "action": [], "next_obs": []}
        self.held: dict[str, list[torch.Tensor]] = {"obs": [], "action": [], "next_obs": [], "cont": []}
        self.task_steps = 0  # env steps of the current task
        self.vector_steps = 0
        self.last_train = None  # task_steps at the last training round
        self._prev_held_done: torch.Tensor | None = None

    def _make_optimizers(self) -> None:
        cfg = self.cfg
        if cfg.model == "hnet":
            self.emb_opt = torch.optim.Adam([self.net.embeddings[self.task]], lr=cfg.lr)
            self.opt = torch.optim.Adam(list(self.net.theta().values()), lr=cfg.lr)
        else:
            self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def prepare(self, tasks: list[Task], report=None) -> None:
        """The family's reward and action bounds, known before the first task (the loop evaluates at start)."""
        self._set_family(tasks[0])

    def _set_family(self, task: Task) -> None:
        if task.reward_fn is None:
            raise UsageError(f"hypercrl plans with a known reward: task '{task.name}' ({task.domain}) has no "
                             "torch reward; use a dynamics family (cheetah-body, pusher-object, cartpole-physics)")
        self.domain, self.reward_fn = task.domain, task.reward_fn
        self.low, self.high = task.action_low, task.action_high

    def begin_task(self, task: Task) -> None:
        self._set_family(task)
        self.task = task.index
        self._reset_task_state()
        self._make_optimizers()
        if self.cfg.model == "hnet":
            previous = list(range(self.task))
            with torch.no_grad():  # f_h(e_s, Θ*) for the earlier tasks: the regulariser's targets
                self.targets = self.net.flat(torch.stack([self.net.embeddings[s] for s in previous])) \
                    if previous else None
        if self.si is not None:
            self.si.begin_task()
        self._cache.clear()

    def end_task(self, task: Task) -> None:
        if self.held["obs"]:
            self.holdout[task.index] = {k: torch.stack(v) for k, v in self.held.items()}
        data = self._current_data()
        if data is not None and self.cfg.model == "mlp":
            n = data["obs"].shape[0]
            if self.cfg.replay != "none":
                keep = torch.randperm(n, device=self.device)[: (n if self.cfg.replay == "all" else self.cfg.coreset_size)]
                self.memory.add({**{k: v[keep] for k, v in data.items()},
                                 "task": torch.full((len(keep),), task.index, device=self.device)})
            if self.cfg.ewc_lambda:
                idx = torch.randperm(n, device=self.device)[: self.cfg.fisher_samples]
                self.regularizer.consolidate(self._fisher({k: v[idx] for k, v in data.items()}))
            elif self.si is not None:
                self.regularizer.consolidate(self.si.importance())
        self._reset_task_state()
        self._cache.clear()

    # -- data -----------------------------------------------------------------------------------------------

    def observe(self, batch: Transitions) -> None:
        cfg = self.cfg
        n = len(batch)
        held_out = (self.vector_steps // HOLDOUT_BLOCK) % cfg.holdout_every == cfg.holdout_every - 1
        done = (batch.terminated + batch.truncated) > 0
        if held_out:
            if len(self.held["obs"]) * n < cfg.holdout_max:
                prev = self._prev_held_done
                cont = torch.zeros(n, dtype=torch.bool, device=self.device) if prev is None else ~prev
                for key, value in (("obs", batch.obs), ("action", batch.action), ("next_obs", batch.next_obs),
                                   ("cont", cont)):
                    self.held[key].append(value.detach().to(self.device))
            self._prev_held_done = done
        else:
            self._prev_held_done = None
            for key in ("obs", "action", "next_obs"):
                self.data[key].append(getattr(batch, key).detach().to(self.device))
        self.vector_steps += 1
        self.task_steps += n

    def _current_data(self) -> dict[str, torch.Tensor] | None:
        if not self.data["obs"]:
            return None
        if len(self.data["obs"]) > 1:  # concatenate once; later steps append to the single block
            self.data = {k: [torch.cat(v)] for k, v in self.data.items()}
        return {k: v[0] for k, v in self.data.items()}

    # -- the model ------------------------------------------------------------------------------------------

    def _weights(self, task: int) -> list[torch.Tensor]:
        return self.net.weights(task)

    def _predict(self, x: torch.Tensor, weights: list[torch.Tensor], batched: bool = False):
        """(mean, log-variance or None) of the normalised Δs for normalised inputs ``x``."""
        out = target_forward(x, weights[: self.n_linear], self.cfg.activation, batched)
        if not self.cfg.probabilistic:
            return out, None
        mean, logvar = out.chunk(2, dim=-1)
        max_lv, min_lv = weights[-2] + 0.5, weights[-1] - 10.0
        if batched:
            max_lv, min_lv = max_lv.unsqueeze(1), min_lv.unsqueeze(1)
        logvar = max_lv - F.softplus(max_lv - logvar)
        logvar = min_lv + F.softplus(logvar - min_lv)
        return mean, logvar

    def _loss(self, weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mean, logvar = self._predict(x, weights)
        if logvar is None:
            return (mean - y).pow(2).mean()
        nll = ((mean - y).pow(2) * (-logvar).exp() + logvar).mean()
        return nll + 0.01 * (weights[-2].sum() - weights[-1].sum()) / y.shape[-1]

    def _normalised(self, task: torch.Tensor | int, obs, action, next_obs=None):
        x = (torch.cat([obs, action], -1) - self.in_mean[task]) / self.in_std[task]
        y = None if next_obs is None else (next_obs - obs - self.out_mean[task]) / self.out_std[task]
        return x, y

    def _update_stats(self, data: dict[str, torch.Tensor]) -> None:
        t = self.task
        x = torch.cat([data["obs"], data["action"]], -1)
        delta = data["next_obs"] - data["obs"]
        self.in_mean[t], self.in_std[t] = x.mean(0), x.std(0).clamp_min(1e-4) if len(x) > 1 else 1.0
        self.out_mean[t], self.out_std[t] = delta.mean(0), delta.std(0).clamp_min(1e-4) if len(x) > 1 else 1.0

    def _batch_loss(self, rows: dict[str, torch.Tensor], task: torch.Tensor | None = None) -> torch.Tensor:
        """The task loss of rows of one task (``task`` None: the current one) or of several (grouped)."""
        if task is None:
            x, y = self._normalised(self.task, rows["obs"], rows["action"], rows["next_obs"])
            return self._loss(self._weights(self.task), x, y)
        total = 0.0
        for t in task.unique().tolist():
            mask = task == t
            x, y = self._normalised(t, rows["obs"][mask], rows["action"][mask], rows["next_obs"][mask])
            total = total + self._loss(self._weights(t), x, y) * mask.float().mean()
        return total

    def _fisher(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = self._normalised(self.task, rows["obs"], rows["action"], rows["next_obs"])

        def loss_one(params: dict[str, torch.Tensor], sample: dict[str, torch.Tensor]) -> torch.Tensor:
            weights = _ParamView(self.net, params).weights(self.task)
            return self._loss(weights, sample["x"].unsqueeze(0), sample["y"].unsqueeze(0))

        return empirical_fisher(loss_one, dict(self.net.named_parameters()), {"x": x, "y": y})

    # -- learning -------------------------------------------------------------------------------------------

    def update(self) -> Scalars:
        cfg = self.cfg
        if self.task_steps < cfg.random_steps or (self.last_train is not None
                                                   and self.task_steps - self.last_train < cfg.train_every):
            return {}
        data = self._current_data()
        if data is None:
            return {}
        self.last_train = self.task_steps
        self._update_stats(data)
        n = data["obs"].shape[0]
        sums: dict[str, torch.Tensor] = {}
        for _ in range(cfg.train_iters):
            idx = torch.randint(0, n, (cfg.batch_size,), device=self.device)
            rows = {k: v[idx] for k, v in data.items()}
            stats = self._step_hnet(rows) if cfg.model == "hnet" else self._step_mlp(rows)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
        self._cache.clear()  # weights change: generate again on the next act
        return {k: v / cfg.train_iters for k, v in sums.items()}

    def _step_hnet(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        self.emb_opt.zero_grad(set_to_none=True)
        self.opt.zero_grad(set_to_none=True)
        loss = self._batch_loss(rows)
        loss.backward()
        self.emb_opt.step()
        out = {"model_loss": loss}
        if self.targets is not None and cfg.beta > 0:
            theta = self.net.theta()
            delta = adam_lookahead(self.opt, theta) if cfg.lookahead else None
            reg = output_regularizer(self.net, list(range(self.task)), self.targets, delta)
            (cfg.beta * reg).backward()
            out["output_reg"] = reg
        nn.utils.clip_grad_norm_(list(self.net.theta().values()), cfg.grad_clip)
        self.opt.step()
        return out

    def _step_mlp(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        loss = self._batch_loss(rows)
        out = {"model_loss": loss}
        total = loss
        if len(self.memory):
            replay = self.memory.sample(cfg.batch_size)
            replay_loss = self._batch_loss(replay, replay["task"].long())
            total = total + replay_loss
            out["replay_loss"] = replay_loss
        if self.regularizer is not None:
            penalty = self.regularizer.penalty()
            if penalty is not None:
                total = total + penalty
                out["penalty"] = penalty
        total.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        before = self.si.before_step() if self.si is not None else None
        self.opt.step()
        if before is not None:
            self.si.after_step(before)
        return out

    # -- acting ---------------------------------------------------------------------------------------------

    def _cached(self, task: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """The planner's weights for ``task`` in ``dtype``, generated once per task and update. States move by the
        mean, so a probabilistic model's output layer is cut to its mean half: the log-variance half is 2.7% of
        the cheetah model's arithmetic, computed on every candidate step and never read."""
        if (task, dtype) not in self._cache:
            with torch.no_grad():
                weights = [w.detach().to(dtype) for w in self._weights(task)[: self.n_linear]]
                if self.cfg.probabilistic:
                    weights[-2], weights[-1] = weights[-2][: self.obs_dim], weights[-1][: self.obs_dim]
                self._cache[task, dtype] = weights
        return self._cache[task, dtype]

    def dynamics(self, task: int | torch.Tensor):
        """The planner's model for ``task`` (one index, or one per environment row): next states of (n, S, ·)."""
        dtype = PLAN_DTYPES[self.cfg.plan_dtype]
        if isinstance(task, int):
            weights, batched = self._cached(task, dtype), False
            stats = [s[task] for s in (self.in_mean, self.in_std, self.out_mean, self.out_std)]
        else:
            unique, inverse = task.unique(return_inverse=True)
            per_task = [self._cached(t, dtype) for t in unique.tolist()]
            weights = [torch.stack([w[i] for w in per_task])[inverse] for i in range(len(per_task[0]))]
            batched = True
            stats = [s[task].unsqueeze(1) for s in (self.in_mean, self.in_std, self.out_mean, self.out_std)]
        in_mean, in_std, out_mean, out_std = stats

        def step(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
            x = ((torch.cat([states, actions], -1) - in_mean) / in_std).to(dtype)
            mean = target_forward(x, weights, self.cfg.activation, batched)
            return states + mean.float() * out_std + out_mean

        return step

    @torch.no_grad()
    def act(self, obs: torch.Tensor, task_index: int | torch.Tensor, *, explore: bool, deterministic: bool = False,
            first: torch.Tensor | None = None) -> torch.Tensor:
        n = obs.shape[0]
        if explore and self.task_steps < self.cfg.random_steps:
            return self.low + (self.high - self.low) * torch.rand(n, self.act_dim, device=self.device)
        if self.reward_fn is None:
            from crl.envs.dynamics import reward_for_domain

            self.reward_fn = reward_for_domain(self.domain)
        if isinstance(task_index, torch.Tensor):
            task_index = task_index.to(self.device)
            if bool((task_index == task_index[0]).all()):
                task_index = int(task_index[0])
        return plan(obs, self.dynamics(task_index), self.reward_fn, self.cem, self.low, self.high, self.act_dim)

    # -- retention of the model -----------------------------------------------------------------------------

    @torch.no_grad()
    def measure_retention(self) -> dict[str, dict[int, float]]:
        """Per task with held-out transitions: one-step and multi-step prediction errors as fractions of the
        held-out variance (normalised MSE, averaged over state dimensions that vary; lower is better)."""
        H = self.cfg.error_horizon
        one, multi = {}, {}
        for t, held in sorted(self.holdout.items()):
            step = self.dynamics(t)
            obs, action, next_obs, cont = held["obs"], held["action"], held["next_obs"], held["cont"]  # (T, n, ·)
            pred = step(obs, action)
            one[t] = _nmse(pred - obs, next_obs - obs)
            T = obs.shape[0]
            if T < H:
                continue
            starts = T - H + 1
            # a window starting at i is valid when transitions i+1 … i+H−1 continue their predecessors
            ok = torch.ones(starts, obs.shape[1], dtype=torch.bool, device=obs.device)
            for k in range(1, H):
                ok &= cont[k:k + starts]
            if not ok.any():
                continue
            state = obs[:starts]
            for k in range(H):
                state = step(state, action[k:k + starts])
            truth = next_obs[H - 1:H - 1 + starts]
            multi[t] = _nmse((state - obs[:starts])[ok], (truth - obs[:starts])[ok])
        return {"model_nmse_1step": one, f"model_nmse_{H}step": multi}

    # -- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        data = self._current_data()
        return {
            "net": self.net.state_dict(), "opt": self.opt.state_dict() if self.task >= 0 else None,
            "emb_opt": self.emb_opt.state_dict() if self.cfg.model == "hnet" and self.task >= 0 else None,
            "stats": [self.in_mean, self.in_std, self.out_mean, self.out_std],
            "holdout": self.holdout, "memory": self.memory.state_dict(),
            "regularizer": self.regularizer.state_dict() if self.regularizer is not None else None,
            "si": self.si.state_dict() if self.si is not None else None,
            "task": self.task, "domain": self.domain, "bounds": [float(self.low), float(self.high)],
            "data": data, "held": self.held, "task_steps": self.task_steps, "vector_steps": self.vector_steps,
            "last_train": self.last_train, "prev_held_done": self._prev_held_done,
            "targets": getattr(self, "targets", None),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.in_mean, self.in_std, self.out_mean, self.out_std = (s.to(self.device) for s in state["stats"])
        self.holdout = {t: {k: v.to(self.device) for k, v in h.items()} for t, h in state["holdout"].items()}
        self.memory.load_state_dict(state["memory"])
        if self.regularizer is not None:
            self.regularizer.load_state_dict(state["regularizer"])
        if self.si is not None:
            self.si.load_state_dict(state["si"])
        self.task, self.domain = state["task"], state["domain"]
        self.low, self.high = state["bounds"]
        self.reward_fn = None
        if self.task >= 0:
            self._make_optimizers()
            self.opt.load_state_dict(state["opt"])
            if state["emb_opt"] is not None:
                self.emb_opt.load_state_dict(state["emb_opt"])
        self.data = {k: [] for k in ("obs", "action", "next_obs")}
        if state["data"] is not None:
            self.data = {k: [v.to(self.device)] for k, v in state["data"].items()}
        self.held = {k: [t.to(self.device) for t in v] for k, v in state["held"].items()}
        self.task_steps, self.vector_steps, self.last_train = state["task_steps"], state["vector_steps"], state["last_train"]
        self._prev_held_done = state["prev_held_done"]
        self.targets = state["targets"]
        self._cache.clear()


class _ParamView:
    """``weights(task)`` of an _MLPModel read from a dict of replacement parameters (for per-sample grads)."""

    def __init__(self, net: _MLPModel, params: dict[str, torch.Tensor]):
        self.net, self.params = net, params

    def weights(self, task: int) -> list[torch.Tensor]:
        trunk = task if self.net.heads_kind == "separate" else 0
        head = 0 if self.net.heads_kind == "single" else task
        names = [f"trunks.{trunk}.{i}" for i in range(len(self.net.trunks[trunk]))]
        names += [f"heads.{head}.{i}" for i in range(len(self.net.heads[head]))]
        return [self.params[n] for n in names]


def _nmse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over state dims (those whose held-out variance is above 1e-8) of MSE / variance."""
    pred, truth = pred.reshape(-1, pred.shape[-1]), truth.reshape(-1, truth.shape[-1])
    var = truth.var(0, unbiased=False)
    varies = var > 1e-8
    if not varies.any() or truth.shape[0] < 2:
        return float("nan")
    return float(((pred - truth).pow(2).mean(0)[varies] / var[varies]).mean())


# The baselines of HyperCRL's lqr_exp.py on the same target size and planner (reference/hypercrl.md).
_MLP = {"model": "mlp", "lr": 1e-3}
register_variant("hypercrl-finetune", "hypercrl", "one MLP dynamics model fine-tuned through the tasks", heads="single",
                 **_MLP)
register_variant("hypercrl-multihead", "hypercrl", "shared MLP trunk + a head per task, fine-tuned", heads="multi",
                 **_MLP)
register_variant("hypercrl-coreset", "hypercrl", "multi-head MLP + replay of a per-task coreset (reference sizes)",
                 heads="multi", replay="coreset", **_MLP)
register_variant("hypercrl-ewc", "hypercrl", "multi-head MLP + EWC (λ = 1e4, empirical Fisher)", heads="multi",
                 ewc_lambda=1e4, **_MLP)
register_variant("hypercrl-si", "hypercrl", "multi-head MLP + SI (c = 0.1, ξ = 1e-3)", heads="multi", si_c=0.1,
                 **_MLP)
register_variant("hypercrl-single", "hypercrl", "a separate MLP per task, re-initialised (an oracle of separate "
                 "models)", heads="separate", **_MLP)
register_variant("hypercrl-multitask", "hypercrl", "multi-head MLP that keeps and replays every transition (the "
                 "upper reference)", heads="multi", replay="all", **_MLP)
