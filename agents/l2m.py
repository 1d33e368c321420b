"""L2M: a frozen pre-trained Decision Transformer modulated by a pool of LoRA modules, and its baselines.

Paper: Schmied, Hofmarcher, Paischer, Pascanu, Hochreiter, "Learning to Modulate pre-trained Models in
RL", NeurIPS 2023 (code ``ml-jku/L2M``). The backbone is pre-trained on MT40 (``crl pretrain``) and frozen;
each training batch picks, per sample, the pool module whose key is most similar (cosine, top-1) to the
query — the masked mean of the embedded state tokens of the context — trains it with cross-entropy on
the task's data plus the key loss (−0.5·cos(q, k_selected)), and a usage-count penalty refreshed at task
switches makes a new task claim modules the old ones did not use. Evaluation is task-agnostic: no task
id, no penalty, top-1 recomputed at every env step.

Methods (``method``), all on the same backbone and data:
- ``l2m``: the above. ``l2m-oracle``: the pool split into contiguous slices per task, chosen by task id.
- ``lora``: one shared LoRA module, no pool. ``l2p``: L2P-style prefix-prompt pool (top-k, count penalty).
- ``ft``: full fine-tuning. ``ewc``: full fine-tuning + EWC (Fisher from 10 batches per task).
  ``l2``: the same with importance 1.

Differs from the paper (each measured on two CPU cores; issue 13 and ``scripts/l2m_ladder.py``):
- Data: Meta-World v3 scripted experts with action noise (σ 0, 0.1, 0.25, 0.5 round-robin), 50 episodes
  per task, generated locally; the paper used the replay buffers of SAC agents on v2 (2M transitions).
- Behaviour-cloning target: the expert's noise-free action, recorded beside the executed one
  (``action_target="expert"``; L2M trains on the executed action). On the noisy executed actions the
  best reachable cross-entropy is ≈2.3 nats per dim, and fitting below it memorises noise.
- States are standardised with the pre-training data's statistics, a buffer of the frozen backbone
  (L2M feeds raw states; the same BC network succeeds 0.0 on raw and 0.8 on standardised states).
- Backbone: small (3 layers, 128 wide, 4 heads), context 2 timesteps (L2M: 6×768, context 5), pre-trained
  on MT40 only (no DMC10) for 6,000 steps of batch 256 in the quick preset; ``backbone=paper`` and
  ``context=5`` give L2M's shape.
- Tokens are [RTG, state, action] per step with all action dims predicted from the state token
  (crl/dt.py); L2M uses 9 tokens per step and one forward pass per action dim.
- Retrieval matches centred queries: the mean query over the pre-training data (a fixed vector of the
  frozen backbone) is subtracted before the cosine (``center_queries``). Raw queries of all tasks share one
  direction (cosine 0.98 between CW10 tasks' mean queries), so new keys captured old tasks' states.
- Modules reserved per task in training (``modules_per_task``, default pool_size // tasks = 3 on CW10): each task
  trains only modules no earlier task trained, chosen among them by key; evaluation stays task-agnostic (top-1
  over all keys). L2M's soft count penalty let the first four CW10 tasks claim all 30 modules (seed 1), so every
  later task trained an earlier task's modules. ``modules_per_task=0`` restores the penalty alone.
- Two-level retrieval at evaluation (``task_keys``, 64 per task): each task gets fixed retrieval keys at its start,
  the spherical k-means centres of its data's queries (frozen embeddings, so they need no training); the nearest
  one over all tasks names the task, and that task's trained module keys pick the module as in training. Still
  top-1 key-query matching per sample, without the task id. L2M matches the queries against the 30 trained keys
  at once; those told push-wall from push for 0.55 of push-wall's states, the task keys for 0.96.
- Pre-training keys (``pretrain_keys``, 64 per MT40 task, made the same way): a state nearest one of them runs the
  backbone unmodulated, so pre-training tasks keep the backbone's skills. A key that takes more than
  ``null_key_tolerance`` (0.5%) of a sequence task's data windows is dropped at that task's start (all kept: 24% of
  push-wall's states ran unmodulated and push-wall fell from 1.0 to 0.0). L2M's code has such keys
  (``n_pretrain_keys``) but no shipped config uses them.
- The task is named from the episode so far (``evidence_decay`` 0.9): each task's best key similarity is summed over
  the episode's steps, step k back weighted by 0.9^k. Push-wall's late states look like push's (the wall is not in
  the observation), and plate-slide's first state like push-wall's, so the current step alone misnames them.
- Measured on the three CW10 seeds' final checkpoints (10 episodes per task, the same episodes for every setting;
  the backbone alone scores 0.92 on the 10 pre-training tasks), CW10 / pre-training tasks, mean of seeds 0-2:
  flat retrieval ≈0.2–0.5 on the pre-training tasks; current step, any-window pruning 0.887 / 0.793 (plate-slide
  0.0: its first state goes to push-wall); current step, 0.5% tolerance 0.843 / 0.910; summed over the episode,
  any-window pruning 0.897 / 0.800; decay 0.9 and 0.5% tolerance (the defaults) 0.880 / 0.893.
- AdamW's moments are zeroed at each task switch (``reset_optimizer_on_task``, as Continual World does for SAC).
  Without it the momentum kept moving the previous task's modules and keys for tens of steps after the switch,
  and hammer fell from 1.0 to 0.0 within 500 steps of push-wall (seed 2: CW10 0.64 → 0.74 with the reset).
- Quick preset: 1,500 gradient steps of batch 128 per task at lr 3e-3 (paper: 100k of 256 at 1e-4).
- Success is the flag at any step (the paper read the final step's flag; we record both).
The RTG target of a row uses its task's data (max episode return × ``target_return_mult``), as L2M's
per-task target table does — the only use of task identity outside ``l2m-oracle``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crl.continual import ParameterRegularizer, l2_importance
from crl.core import ContextualAgent, LearnsFrom, Task, Transitions, UsageError
from crl.lora import LoRAPool, PromptPool
from crl.register import register_agent, register_variant
from crl.dt import DecisionTransformer, RollingContext, WindowSampler
from crl.pretrain import (PretrainConfig, action_targets, check_pretrain_config, dt_config, load_or_pretrain,
                          target_returns, weight_decay_groups)

METHODS = ("l2m", "l2m-oracle", "lora", "l2p", "ft", "ewc", "l2")


@dataclass
class L2MConfig:
    method: str = "l2m"  # one of METHODS
    backbone: str = "small"  # DT size (crl/dt.py DT_SIZES): "small" or "paper"
    context: int = 2  # timesteps per window (L2M: 5)
    pretrain_tasks: str = "mt40"  # task set the backbone is pre-trained on
    pretrain_episodes: int = 50  # expert episodes per pre-training task
    pretrain_updates: int = 6000  # backbone pre-training steps (≈6 min on two CPU cores for "small")
    pretrain_batch_size: int = 256
    pretrain_lr: float = 1e-3
    action_target: str = "expert"  # BC target: "expert" (noise-free scripted action) or "executed" (L2M's)
    normalize_states: bool = True  # standardise states with the pre-training data's statistics (L2M: raw)
    task_episodes: int = 50  # expert episodes per continual task (L2M: 2M transitions ≈ 10k episodes)
    data_dir: str = ""  # "" = $CRL_DATA_DIR or the user cache dir
    batch_size: int = 64  # L2M: 256
    lr: float = 1e-4  # AdamW; L2M code default 1e-4 (paper: 5e-5 on CW)
    weight_decay: float = 0.01
    grad_clip: float = 0.25  # L2M
    pool_size: int = 30  # L2M: 30 modulators
    min_modules_per_task: int = 0  # the pool grows to at least this many modules per task of the sequence (the
    #                                smoke preset's 1: its 4-module pool then holds CW10's 10 and CW20's 20 tasks)
    rank: int = 8  # LoRA rank (α = 2·rank) on q, v and the MLP activation of every layer
    key_loss_coef: float = 0.5  # L2M: loss −= 0.5·cos(query, selected key)
    center_queries: bool = True  # subtract the pre-training data's mean query before matching (L2M: no)
    reset_optimizer_on_task: bool = True  # zero AdamW's moments at each task switch, so an earlier task's modules
    #                                       and keys stop moving with the switch (L2M: no; issue 13: hammer kept)
    count_penalty: bool = True  # new tasks claim modules unused so far (only with modules_per_task=0)
    modules_per_task: int = -1  # l2m: modules reserved for each task in training, chosen among them by key;
    #                             -1 = pool_size // tasks, 0 = L2M's soft count penalty alone (issue 13)
    task_keys: int = 64  # l2m with reserved modules: fixed retrieval keys per task (k-means of its queries); at
    #                      evaluation the nearest names the task, whose own keys then pick the module; 0 = one flat top-1
    pretrain_keys: int = 64  # l2m with task_keys: the same per pre-training task, routing a state to no modulation
    #                          (L2M's code: n_pretrain_keys, unused); 0 = off
    null_key_tolerance: float = 0.005  # a pre-training key is dropped at a sequence task's start if it takes more
    #                                    than this fraction of the task's data windows from the task's own keys
    evidence_decay: float = 0.9  # two-level retrieval at evaluation names the task by its similarities summed over
    #                              the episode so far, step k back weighted by decay^k: 0 = the current step only,
    #                              1 = every step alike
    target_return_mult: float = 1.0  # RTG target = this × the task data's best episode return
    ewc_lambda: float = 400.0  # L2M's EWC (and L2) strength
    fisher_batches: int = 10  # batches for the Fisher estimate at each task end
    prompt_pool: int = 100  # L2P: prompts in the pool
    prompt_length: int = 5  # L2P: tokens per prompt
    prompt_top_k: int = 5  # L2P: prompts prepended per sample
    retention_tasks: int = 5  # pre-training tasks evaluated before and after the continual phase
    seed: int = 0  # data collection and batch sampling


def _log(message: str) -> None:
    print(f"[l2m] {message}", file=sys.stderr, flush=True)


@register_agent("l2m", "L2M: frozen pre-trained DT + LoRA pool, task-agnostic retrieval (Schmied et al. 2023)")
class L2M(ContextualAgent):
    """See the module docstring. ``update`` = one gradient step on the current task's data."""

    learns_from = LearnsFrom.DATASET
    config_class = L2MConfig

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, config: L2MConfig, device: torch.device):
        from crl.envs.data import default_data_dir

        if config.method not in METHODS:
            raise UsageError(f"unknown L2M method '{config.method}'; allowed: {', '.join(METHODS)}")
        self.cfg, self.device, self.num_tasks = config, device, num_tasks
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.method = config.method
        self.data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise UsageError(f"agent.data_dir {self.data_dir} is a file; give a directory (or '' for the default)")
        for name in ("task_episodes", "batch_size", "fisher_batches", "retention_tasks"):
            value = getattr(config, name)
            if not isinstance(value, int) or value < (0 if name == "retention_tasks" else 1):
                raise UsageError(f"agent.{name} must be a {'non-negative' if name == 'retention_tasks' else 'positive'} "
                                 f"integer, got {value!r}")
        self.pretrain_cfg = PretrainConfig(tasks=config.pretrain_tasks, size=config.backbone, context=config.context,
                                           episodes=config.pretrain_episodes, updates=config.pretrain_updates,
                                           batch_size=config.pretrain_batch_size, lr=config.pretrain_lr,
                                           action_target=config.action_target,
                                           normalize_states=config.normalize_states, seed=0)
        check_pretrain_config(self.pretrain_cfg)
        # The architecture only: ``prepare`` loads (or builds) the pre-trained weights, ``load_state_dict``
        # a run's own, so ``crl eval`` of a finished run never pre-trains.
        self.backbone = DecisionTransformer(dt_config(config.backbone, config.context)).to(device)
        self.backbone_meta: dict[str, Any] = {}
        self.dt_cfg = self.backbone.cfg
        self.trains_backbone = self.method in ("ft", "ewc", "l2")
        self.backbone.requires_grad_(self.trains_backbone)
        d = self.dt_cfg.d_model

        self.pool: LoRAPool | None = None
        self.keys: nn.Parameter | None = None
        self.prompts: PromptPool | None = None
        for name, lowest in (("modules_per_task", -1), ("task_keys", 0), ("pretrain_keys", 0)):
            value = getattr(config, name)
            if not isinstance(value, int) or value < lowest:
                raise UsageError(f"agent.{name} must be an integer >= {lowest}, got {value!r}")
        tolerance = config.null_key_tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise UsageError(f"agent.null_key_tolerance must be a number in [0, 1), got {tolerance!r}")
        decay = config.evidence_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise UsageError(f"agent.evidence_decay must be a number in [0, 1], got {decay!r}")
        # Modules per task in training: l2m-oracle's slices, or l2m's reservation (0: the count penalty decides).
        if not isinstance(config.min_modules_per_task, int) or config.min_modules_per_task < 0:
            raise UsageError(f"agent.min_modules_per_task must be an integer >= 0, got {config.min_modules_per_task!r}")
        pool_size = max(config.pool_size, config.min_modules_per_task * num_tasks)
        self.per_task = 0
        if self.method == "l2m-oracle" or (self.method == "l2m" and config.modules_per_task != 0):
            self.per_task = (pool_size // num_tasks if self.method == "l2m-oracle" or config.modules_per_task < 0
                             else config.modules_per_task)
            if self.per_task < 1 or self.per_task * num_tasks > pool_size:
                raise UsageError(f"{self.method} reserves {max(self.per_task, 1)} module(s) for each of {num_tasks} tasks "
                                 f"but agent.pool_size is {pool_size}; raise pool_size or lower modules_per_task")
        if self.method in ("l2m", "l2m-oracle", "lora"):
            size = 1 if self.method == "lora" else pool_size
            self.pool = LoRAPool(size, self.dt_cfg.n_layers, d, 4 * d, config.rank).to(device)
            self.keys = nn.Parameter(torch.empty(size, d, device=device).uniform_(-1, 1))
        elif self.method == "l2p":
            self.prompts = PromptPool(config.prompt_pool, config.prompt_length, d).to(device)
        n_select = self.keys.shape[0] if self.keys is not None else (config.prompt_pool if self.prompts else 1)
        self.counts = torch.zeros(n_select, device=device)  # selections so far, never reset (L2M)
        self.usage = torch.zeros(num_tasks, n_select, device=device)  # selections per task, for reports
        self.inv_counts = torch.ones(n_select, device=device)  # refreshed at task switches only (L2M)

        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr)
        # EWC/L2: importance summed over finished tasks, anchored at the backbone after the last one
        self.regularizer = (ParameterRegularizer(dict(self.backbone.named_parameters()), config.ewc_lambda / 2)
                            if self.method in ("ewc", "l2") else None)
        self.task_index = 0
        self.sampler = None
        self._sampler_task: str | None = None
        self._sampler_state: dict[str, Any] | None = None  # restored lazily, at the next update
        self.datasets: dict[str, Any] = {}
        self.targets: dict[str, float] = {}  # RTG target per task name, saved with the agent
        self.query_center = torch.zeros(self.dt_cfg.d_model, device=device)  # set by prepare, saved
        # Two-level retrieval (l2m with reserved modules and task_keys): fixed unit keys per task, set at its
        # begin_task, and per pre-training task ("null keys": no modulation), set by prepare; saved.
        self.two_level = self.method == "l2m" and self.per_task > 0 and config.task_keys > 0
        self.task_keys = torch.zeros(num_tasks, config.task_keys if self.two_level else 0, self.dt_cfg.d_model,
                                     device=device)
        self.tasks_keyed = 0  # tasks whose retrieval keys are set
        self.null_keys = torch.zeros(0, self.dt_cfg.d_model, device=device)
        self.null_alive = torch.zeros(0, dtype=torch.bool, device=device)  # null keys no sequence task's states took
        self._null_penalty = torch.zeros(0, device=device)  # 0 where a null key is alive, −inf where dropped
        self._evidence: torch.Tensor | None = None  # per eval row: summed task scores of its episode so far
        self.gradient_steps = 0
        self._ctx: RollingContext | None = None
        self._row_targets: torch.Tensor | None = None
        self.task_names: list[str] = []  # the sequence's tasks begun so far, by index; saved
        self._row_sequence_task: torch.Tensor | None = None  # per eval row: its sequence task's index, −1 for none

    # -- parameters ------------------------------------------------------------------------------

    def _trainable(self) -> list[nn.Parameter]:
        if self.trains_backbone:
            return list(self.backbone.parameters())
        params = []
        if self.pool is not None:
            params += list(self.pool.parameters())
        if self.keys is not None and self.method != "lora":
            params.append(self.keys)
        if self.prompts is not None:
            params += list(self.prompts.parameters())
        return params

    def _param_groups(self) -> list[dict[str, Any]]:
        if self.trains_backbone:
            return weight_decay_groups(self.backbone, self.cfg.weight_decay)
        return [{"params": self._trainable(), "weight_decay": 0.0}]

    # -- data ------------------------------------------------------------------------------------

    def prepare(self, tasks: list[Task], report=None) -> None:
        """Data and backbone before training: the pre-trained backbone (built and cached on first use:
        MT40 data, then ``crl pretrain``, checkpointed as it goes), each sequence task's expert data, the
        RTG targets."""
        self.backbone.load_state_dict(self._pretrained(report).state_dict())
        for task in tasks:
            self._dataset(task.name)
        names = [t.name for t in tasks] + [t.name for t in self.retention_tasks()]
        self.targets.update(target_returns(list(dict.fromkeys(names)), self.data_dir, self.cfg.target_return_mult))
        with_null_keys = self.two_level and self.cfg.pretrain_keys > 0
        if self.cfg.center_queries or with_null_keys:
            from crl.envs.data import load_task, resolve_tasks

            pretraining = [load_task(name, self.data_dir) for name in resolve_tasks(self.cfg.pretrain_tasks)]
        if self.cfg.center_queries:
            self.query_center = self._mean_pretraining_query(pretraining)
        if with_null_keys:
            self.null_keys = torch.cat([self._retrieval_keys(dataset, self.cfg.pretrain_keys, 777 + i)
                                        for i, dataset in enumerate(pretraining)])
            self._set_null_alive(torch.ones(self.null_keys.shape[0], dtype=torch.bool, device=self.device))

    @torch.no_grad()
    def _data_queries(self, datasets: list, windows: int, seed: int, centred: bool = True) -> torch.Tensor:
        """Retrieval queries of ``windows`` context windows sampled from ``datasets``."""
        b = WindowSampler(datasets, self.dt_cfg.context, self.device, seed=seed).sample(windows)
        return self._query(self.backbone.state_embeddings(b["obs"], b["timestep"]), b["mask"], centred=centred)

    def _set_null_alive(self, alive: torch.Tensor) -> None:
        self.null_alive = alive
        self._null_penalty = torch.zeros(alive.shape, device=alive.device).masked_fill(~alive, -torch.inf)

    @torch.no_grad()
    def _mean_pretraining_query(self, datasets: list, windows: int = 8192) -> torch.Tensor:
        """The mean retrieval query over the pre-training data: a property of the frozen backbone.

        Every task's queries share one dominant direction (cosine 0.98 between the mean queries of CW10
        tasks on the quick backbone), so a key trained towards one task is nearly as close to every
        other task's queries, and training a new task's keys pulled earlier tasks' states to its
        modules (hammer: 1.0 → 0.0 after push-wall, issue 13). Matching centred queries removes it."""
        return self._data_queries(datasets, windows, seed=12345, centred=False).mean(0)

    @torch.no_grad()
    def _retrieval_keys(self, dataset, k: int, seed: int, windows: int = 4096, iterations: int = 20) -> torch.Tensor:
        """``k`` unit keys of one task: spherical k-means of the (centred) queries of ``windows`` of its data.

        The queries come from the frozen embeddings, so these keys are fixed from the task's first step. Measured
        on CW10 (seed 2, nine tasks trained): the nearest of 64 such keys per task names the right task for 0.96 of
        push-wall's and 1.00 of faucet-close's states, where the three trained keys per task got 0.55 and 0.85."""
        q = F.normalize(self._data_queries([dataset], windows, seed).float(), dim=-1)
        gen = torch.Generator().manual_seed(seed)
        centres = q[torch.randperm(q.shape[0], generator=gen)[:k].to(q.device)]
        for _ in range(iterations):
            assign = (q @ centres.T).argmax(-1)
            sums = torch.zeros_like(centres).index_add_(0, assign, q)
            centres = torch.where(sums.norm(dim=-1, keepdim=True) > 0, F.normalize(sums, dim=-1), centres)
        return centres

    @torch.no_grad()
    def _key_task(self, task: Task) -> None:
        """Set the task's retrieval keys, and drop every null key that would take any of the task's states from
        them: such a state looks like a pre-training task's, and the sequence task wins (with the null keys kept,
        24% of push-wall's states ran unmodulated and push-wall fell from 1.0 to 0.0)."""
        keys = self._retrieval_keys(self._dataset(task.name), self.cfg.task_keys, 4242 + task.index)
        self.task_keys[task.index] = keys
        self.tasks_keyed = max(self.tasks_keyed, task.index + 1)
        if self.null_keys.shape[0]:
            q = F.normalize(self._data_queries([self._dataset(task.name)], 4096, 99 + task.index).float(), dim=-1)
            own = (q @ keys.T).max(-1).values
            taken = ((q @ self.null_keys.T) > own[:, None]).float().mean(0)
            self._set_null_alive(self.null_alive & (taken <= self.cfg.null_key_tolerance))

    def _pretrained(self, report=None) -> DecisionTransformer:
        model, self.backbone_meta = load_or_pretrain(self.pretrain_cfg, self.data_dir, self.device, log=_log,
                                                     report=report)
        return model

    def _dataset(self, task_name: str):
        from crl.envs.data import MANIFEST, CollectConfig, collect, load_task, task_dir

        if task_name not in self.datasets:
            if not (task_dir(task_name, self.data_dir) / MANIFEST).exists():
                _log(f"collecting {self.cfg.task_episodes} expert episodes of {task_name} into {self.data_dir}")
                collect([task_name], CollectConfig(episodes=self.cfg.task_episodes, seed=self.cfg.seed), self.data_dir,
                        progress=False)
            self.datasets[task_name] = load_task(task_name, self.data_dir)
        return self.datasets[task_name]

    def _target_return(self, task_name: str) -> float:
        if task_name not in self.targets:
            self.targets.update(target_returns([task_name], self.data_dir, self.cfg.target_return_mult))
        return self.targets[task_name]

    # -- the Agent contract ----------------------------------------------------------------------

    def begin_task(self, task: Task) -> None:
        self.task_index = task.index
        self.task_names += [""] * (task.index + 1 - len(self.task_names))
        self.task_names[task.index] = task.name
        self._make_sampler(task.name, seed=self.cfg.seed * 1000 + task.index)
        if self.two_level and task.index >= self.tasks_keyed:
            self._key_task(task)
        if self.cfg.reset_optimizer_on_task:
            for state in self.optimizer.state.values():  # the step count stays (bias correction continues)
                state["exp_avg"].zero_()
                state["exp_avg_sq"].zero_()
        if task.index > 0 and self.cfg.count_penalty:
            freq = self.counts / self.counts.sum().clamp_min(1.0)
            inv = 1.0 / (freq + 1e-6)
            self.inv_counts = inv / inv.max()

    def _make_sampler(self, task_name: str, seed: int) -> None:
        self.sampler = WindowSampler([self._dataset(task_name)], self.dt_cfg.context, self.device, seed=seed)
        self._sampler_task, self._sampler_state = task_name, None

    def end_task(self, task: Task) -> None:
        if self.method in ("ewc", "l2"):
            self._consolidate()

    def observe(self, batch: Transitions) -> None:
        raise RuntimeError("L2M learns from datasets; the loop never calls observe for it")

    def _query(self, state_tokens: torch.Tensor, mask: torch.Tensor, centred: bool = True) -> torch.Tensor:
        """L2M's query: the masked mean of the embedded state tokens of the context (frozen embeddings),
        minus the pre-training mean query when ``center_queries``."""
        m = mask.unsqueeze(-1).float()
        query = (state_tokens.detach() * m).sum(1) / m.sum(1).clamp_min(1.0)
        return query - self.query_center if centred and self.cfg.center_queries else query

    def _task_scores(self, q: torch.Tensor) -> torch.Tensor:
        """Per row of unit queries: the similarity of each keyed task's nearest retrieval key, then of each
        pre-training task's nearest live null key (−inf for one without): (B, tasks_keyed + pre-training tasks)."""
        T, K = self.tasks_keyed, self.task_keys.shape[1]
        scores = (q @ self.task_keys[:T].flatten(0, 1).T).view(q.shape[0], T, K).amax(-1)
        if self.null_keys.shape[0]:
            null = (q @ self.null_keys.T + self._null_penalty).view(q.shape[0], -1, self.cfg.pretrain_keys).amax(-1)
            scores = torch.cat([scores, null], 1)
        return scores

    def _select(self, query: torch.Tensor, task_index: int | torch.Tensor, train: bool,
                evidence: torch.Tensor | None = None):
        """Top-1 module per row: (indices (B,), cosine similarity with the selected key (B,), with grad,
        rows to modulate (B,) bool or None for all).

        l2m-oracle always, and l2m in training, choose among the modules reserved for the task. l2m at
        evaluation: with ``two_level``, the nearest retrieval key names the task (a null key: no modulation) and
        that task's module keys pick the module; otherwise one top-1 over all module keys (L2M). ``evidence``
        (rows, tasks): the running sums of the rows' task scores over their episodes, updated here and used in
        place of the current step's scores (``evidence_decay``).
        Why l2m reserves modules: with the soft count penalty alone the first four CW10 tasks claimed all 30
        modules (seed 1), so every later task trained modules of earlier ones and learnt little (push-back
        0.0, peg-unplug-side 0.0 right after their own training; issue 13)."""
        q = F.normalize(query.float(), dim=-1)
        sim = q @ F.normalize(self.keys.float(), dim=-1).T
        score, active = sim, None
        retrieves_task = not train and self.two_level and self.tasks_keyed > 0
        if retrieves_task:
            scores = self._task_scores(q)
            if evidence is not None:
                scores = evidence.mul_(self.cfg.evidence_decay).add_(scores)
            named = scores.argmax(-1)  # ties go to the sequence task: its scores come first
            task_index = named.clamp_max(self.tasks_keyed - 1)
            if self.null_keys.shape[0]:
                active = named < self.tasks_keyed
        if self.method == "l2m-oracle" and isinstance(task_index, torch.Tensor):
            active, task_index = task_index >= 0, task_index.clamp_min(0)  # −1: a row of no sequence task (act)
        if self.per_task and (train or self.method == "l2m-oracle" or retrieves_task):
            owner = torch.arange(self.keys.shape[0], device=self.device) // self.per_task
            rows = torch.as_tensor(task_index, device=self.device).expand(sim.shape[0])
            score = sim.masked_fill(owner[None, :] != rows[:, None], -2.0)
        elif train and self.cfg.count_penalty and self.task_index > 0:
            score = (sim.detach() + 1) / 2 * self.inv_counts
        idx = score.argmax(-1)
        return idx, sim.gather(1, idx[:, None]).squeeze(1), active

    def _forward(self, states, actions, returns_to_go, timesteps, mask, task_index, train: bool, evidence=None):
        """Embed once, select modules or prompts from the embedded state tokens, run the trunk.

        Returns (logits, key-loss term or None, selected indices or None)."""
        tokens = self.backbone.embed(states, actions, returns_to_go, timesteps)
        mod = prefix = key_loss = idx = None
        if self.method == "lora":
            mod = self.pool.bind(0)
        elif self.method in ("l2m", "l2m-oracle"):
            idx, sim, active = self._select(self._query(tokens[:, 1::3], mask), task_index, train, evidence)
            if active is not None and bool(active.all()):
                active = None
            mod, key_loss = self.pool.bind(idx, active), -self.cfg.key_loss_coef * sim.mean()
        elif self.method == "l2p":
            sim = self.prompts.similarity(self._query(tokens[:, 1::3], mask))
            score = (sim.detach() + 1) / 2 * self.inv_counts if train and self.task_index > 0 else sim
            idx = score.topk(self.cfg.prompt_top_k, dim=-1).indices
            prefix, key_loss = self.prompts.prefix(idx), -self.cfg.key_loss_coef * sim.gather(1, idx).mean()
        hidden = self.backbone.forward_tokens(tokens, mask, modulation=mod, prefix=prefix)
        return self.backbone.logits(hidden), key_loss, idx

    def update(self) -> dict[str, torch.Tensor]:
        if self._sampler_state is not None:  # resumed mid-task: the data is loaded at the first step
            state = self._sampler_state
            self._make_sampler(self._sampler_task, seed=0)
            self.sampler.load_state_dict(state)
        b = self.sampler.sample(self.cfg.batch_size)
        self.backbone.train()
        logits, key_loss, idx = self._forward(b["obs"], b["action"], b["returns_to_go"], b["timestep"], b["mask"],
                                              self.task_index, train=True)
        loss = self.backbone.loss(logits, action_targets(b, self.cfg.action_target), b["mask"])
        stats = {"action_loss": loss.detach()}
        if key_loss is not None:
            loss = loss + key_loss
            stats["key_loss"] = key_loss.detach()
            selected = torch.bincount(idx.flatten(), minlength=self.counts.numel()).float()
            self.counts += selected
            self.usage[self.task_index] += selected
        distance = None if self.regularizer is None else self.regularizer.distance()
        if distance is not None:
            loss = loss + self.regularizer.coef * distance
            stats["consolidation"] = distance.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._trainable(), self.cfg.grad_clip)
        self.optimizer.step()
        self.gradient_steps += 1
        if idx is not None:
            stats["modules_in_batch"] = (torch.bincount(idx.flatten(), minlength=self.counts.numel()) > 0).sum().float()
        return stats  # 0-d tensors: the loop reads them once per log interval (crl.core.Agent)

    def _consolidate(self) -> None:
        """EWC: add this task's diagonal Fisher (squared gradients of the action loss over
        ``fisher_batches`` batches); L2: importance 1 everywhere. Anchor at the current weights."""
        params = dict(self.backbone.named_parameters())
        if self.method == "l2":
            importance = l2_importance(params)
        else:
            importance = {n: torch.zeros_like(p) for n, p in params.items()}
            for _ in range(self.cfg.fisher_batches):
                b = self.sampler.sample(self.cfg.batch_size)
                logits = self.backbone(b["obs"], b["action"], b["returns_to_go"], b["timestep"], b["mask"])
                loss = self.backbone.loss(logits, action_targets(b, self.cfg.action_target), b["mask"])
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for f, g in zip(importance.values(), grads):
                    if g is not None:
                        f += g.detach() ** 2 / self.cfg.fisher_batches
        self.regularizer.consolidate(importance)

    # -- acting (batched, task-agnostic except l2m-oracle and the RTG target) ---------------------

    def prepare_evaluation(self, row_tasks: list[Task]) -> None:
        self._row_targets = torch.tensor([self._target_return(t.name) for t in row_tasks], device=self.device)
        index = {name: i for i, name in enumerate(self.task_names) if name}
        self._row_sequence_task = (torch.tensor([index.get(t.name, -1) for t in row_tasks], device=self.device)
                                   if index else None)  # None: no task begun, or a checkpoint without the names
        self._ctx = None

    @torch.no_grad()
    def act(self, obs, task_index, *, explore, deterministic=False, first=None):
        n = obs.shape[0]
        if self._ctx is None or self._ctx.size != n:
            self._ctx = RollingContext(n, self.dt_cfg.context, self.obs_dim, self.act_dim, self.dt_cfg.max_timestep,
                                       self.device)
            first = torch.ones(n, dtype=torch.bool, device=self.device)
            self._evidence = None
            if self.cfg.evidence_decay > 0 and self.two_level and self.tasks_keyed > 0:
                groups = self.tasks_keyed + self.null_keys.shape[0] // max(self.cfg.pretrain_keys, 1)
                self._evidence = torch.zeros(n, groups, device=self.device)
        if first is not None and bool(first.any()):
            self._ctx.reset(first, self._row_targets if self._row_targets is not None else 0.0)
            if self._evidence is not None:
                self._evidence[first] = 0.0
        self.backbone.eval()
        if self.method == "l2m-oracle" and self._row_sequence_task is not None:
            # The oracle knows each row's task by name: a pre-training task evaluated for retention (its index is
            # its place in the retention list, not in the sequence) is no sequence task and runs unmodulated.
            task_index = self._row_sequence_task
        logits, _, _ = self._forward(*self._ctx.push(obs), task_index, train=False, evidence=self._evidence)
        action = self.backbone.undiscretize(logits[:, -1].argmax(-1))[:, : self.act_dim]
        self._ctx.record(action)
        return action

    def after_step(self, reward: torch.Tensor, ended: torch.Tensor) -> None:
        if self._ctx is not None:
            self._ctx.after_step(reward)

    def retention_tasks(self) -> list[Task]:
        """``retention_tasks`` pre-training tasks, spread over the pre-training set (the paper's claim
        that modulation keeps pre-trained skills; full fine-tuning loses them)."""
        from crl.envs.data import resolve_tasks
        from crl.envs.metaworld import metaworld_task

        names = resolve_tasks(self.cfg.pretrain_tasks)
        n = min(self.cfg.retention_tasks, len(names))
        chosen = [names[i * len(names) // n] for i in range(n)] if n else []
        return [metaworld_task(name, i, len(chosen)) for i, name in enumerate(chosen)]

    def selected_module(self, states: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Task-agnostic top-1 module per row (evaluation-time retrieval), −1 where a pre-training key wins
        (no modulation), for inspection and tests."""
        with torch.no_grad():
            state_tokens = self.backbone.state_embeddings(states, timesteps)
            idx, _, active = self._select(self._query(state_tokens, mask), 0, train=False)
        return idx if active is None else idx.masked_fill(~active, -1)

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.state_dict(),
            "pool": None if self.pool is None else self.pool.state_dict(),
            "keys": None if self.keys is None else self.keys.detach().cpu(),
            "prompts": None if self.prompts is None else self.prompts.state_dict(),
            "counts": self.counts.cpu(), "inv_counts": self.inv_counts.cpu(), "usage": self.usage.cpu(),
            "optimizer": self.optimizer.state_dict(),
            "regularizer": None if self.regularizer is None else self.regularizer.state_dict(),
            "task_index": self.task_index, "gradient_steps": self.gradient_steps,
            "sampler": self._sampler_state if self.sampler is None else self.sampler.state_dict(),
            "sampler_task": self._sampler_task,
            "targets": dict(self.targets),
            "query_center": self.query_center.cpu(),
            "task_keys": self.task_keys.cpu(), "tasks_keyed": self.tasks_keyed,
            "null_keys": self.null_keys.cpu(), "null_alive": self.null_alive.cpu(),
            "task_names": list(self.task_names),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.backbone.load_state_dict(state["backbone"])
        if self.pool is not None:
            self.pool.load_state_dict(state["pool"])
        with torch.no_grad():
            if self.keys is not None:
                self.keys.copy_(state["keys"].to(self.device))
        if self.prompts is not None:
            self.prompts.load_state_dict(state["prompts"])
        # The reference code drops these two on resume (reference/l2m.md pitfall 2); crl restores them.
        self.counts = state["counts"].to(self.device)
        self.inv_counts = state["inv_counts"].to(self.device)
        self.usage = state["usage"].to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.regularizer is not None:
            self.regularizer.load_state_dict(state["regularizer"])
        self.task_index, self.gradient_steps = state["task_index"], state["gradient_steps"]
        self.targets = dict(state["targets"])
        self.query_center = state["query_center"].to(self.device)
        # absent from checkpoints written before issue 13's two-level retrieval: those runs retrieve flat
        self.task_keys = state.get("task_keys", self.task_keys[:, :0].cpu()).to(self.device)
        self.tasks_keyed = state.get("tasks_keyed", 0)
        self.two_level = self.two_level and self.task_keys.shape[1] > 0
        self.null_keys = state.get("null_keys", self.null_keys[:0].cpu()).to(self.device)
        self._set_null_alive(state.get("null_alive", self.null_alive[:0].cpu()).to(self.device))
        self.task_names = list(state.get("task_names", []))  # absent before the oracle's retention fix (issue 13)
        self.sampler, self._sampler_task, self._sampler_state = None, state["sampler_task"], state["sampler"]


register_variant("l2m-oracle", "l2m", "L2M with modules chosen by task id (the paper's upper bound)",
                 method="l2m-oracle")
register_variant("l2m-lora", "l2m", "one shared LoRA module on the frozen L2M backbone", method="lora")
register_variant("l2m-l2p", "l2m", "L2P prefix-prompt pool on the frozen L2M backbone (Wang et al. 2022)",
                 method="l2p")
register_variant("l2m-ft", "l2m", "full fine-tuning of the L2M backbone", method="ft")
register_variant("l2m-ewc", "l2m", "EWC on the L2M backbone (Kirkpatrick et al. 2017)", method="ewc")
register_variant("l2m-l2", "l2m", "L2 regularisation on the L2M backbone", method="l2")
