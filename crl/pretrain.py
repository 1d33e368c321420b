"""Pre-training the multi-domain Decision Transformer that L2M modulates (``crl pretrain``).

L2M (Schmied et al., NeurIPS 2023) pre-trains on MT40 + DMC10 for 1M micro-batches; crl pre-trains
on its own scripted-expert MT40 data (envs/data.py), with L2M's optimiser recipe (AdamW, weight
decay 0.01, grad clip 0.25, linear warm-up then cosine decay) at a budget that fits two CPU cores.
The result is cached (atomic write) under ``<data dir>/backbones/`` keyed by every setting, so a
second run with the same settings loads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crl.core import ContextualPolicy, UsageError
from crl.dt import DT_SIZES, DecisionTransformer, DTConfig
from crl.fileio import atomic_write

FORMAT = "crl-backbone"
VERSION = 2  # 2: state normaliser in the weights, expert-action targets, context in the config (issue 13)


@dataclass
class PretrainConfig:
    tasks: str = "mt40"  # task set (envs/data.py resolve_tasks): the 40 Meta-World tasks outside CW10
    size: str = "small"  # DT_SIZES key: "small" (minutes on 2 CPU cores) or "paper" (6 layers, 768 wide)
    context: int = 2  # timesteps per window (L2M: 5); 2 costs 2.5× less than 5 on a CPU (issue 13)
    episodes: int = 50  # expert episodes per task (mixed action-noise levels)
    updates: int = 6000  # optimiser steps: ≈6 min for "small" on two CPU cores, MT40 success 0.85 (issue 13)
    batch_size: int = 256
    lr: float = 1e-3  # L2M: 1e-4 at batch 256 for 1M steps; higher for a short schedule
    action_target: str = "expert"  # "expert": the scripted expert's noise-free action; "executed": the noisy one
    normalize_states: bool = True  # standardise states with the pre-training data's statistics
    min_state_std: float = 0.1  # floor of those standard deviations (below)
    weight_decay: float = 0.01  # Linear weights only (L2M)
    grad_clip: float = 0.25  # L2M
    warmup: int = 200  # linear warm-up steps, then cosine to lr/100
    seed: int = 0

    def key(self) -> str:
        """Names the cached backbone: every field, the data's generator settings and format, the model size."""
        from crl.envs.data import FORMAT_VERSION, CollectConfig

        settings = {**dataclasses.asdict(self), "data_format": FORMAT_VERSION, "format": VERSION,
                    "noise_levels": list(CollectConfig().noise_levels),
                    "dt_config": dataclasses.asdict(dt_config(self.size, self.context))}
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.tasks}-{self.size}-{self.updates}u-{self.episodes}ep-s{self.seed}-{digest}"


ACTION_TARGETS = ("expert", "executed")


def dt_config(size: str, context: int | None = None) -> DTConfig:
    if size not in DT_SIZES:
        raise UsageError(f"unknown backbone size '{size}'; allowed: {', '.join(DT_SIZES)}")
    if context is not None and (not isinstance(context, int) or context < 1):
        raise UsageError(f"context must be a positive integer, got {context!r}")
    return dataclasses.replace(DT_SIZES[size], **({} if context is None else {"context": context}))


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """UsageError naming the first bad setting."""
    from crl.envs.data import resolve_tasks

    resolve_tasks(cfg.tasks)
    dt_config(cfg.size, cfg.context)
    for name in ("episodes", "updates", "batch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value <= 0:
            raise UsageError(f"pre-training {name} must be a positive integer, got {value!r}")
    if cfg.action_target not in ACTION_TARGETS:
        raise UsageError(f"unknown action target '{cfg.action_target}'; allowed: {', '.join(ACTION_TARGETS)}")
    if not cfg.min_state_std > 0:
        raise UsageError(f"min_state_std must be positive, got {cfg.min_state_std!r}")
    if not cfg.lr > 0:
        raise UsageError(f"pre-training lr must be positive, got {cfg.lr!r}")


def state_statistics(datasets) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of the states of ``datasets`` (float64 sums)."""
    import numpy as np

    n = sum(d.num_transitions for d in datasets)
    total = sum(np.asarray(d.obs, np.float64).sum(0) for d in datasets)
    mean = total / n
    var = sum(((np.asarray(d.obs, np.float64) - mean) ** 2).sum(0) for d in datasets) / n
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(np.sqrt(var), dtype=torch.float32)


def action_targets(batch: dict[str, torch.Tensor], target: str) -> torch.Tensor:
    """The behaviour-cloning targets of a window batch: the expert's actions or the executed ones.

    Issue 13: the executed actions carry the collection noise (75% of episodes), so their best
    reachable cross-entropy is ≈2.3 nats per dim and fitting below it memorises noise; the expert's
    action in the same state is the clean label."""
    return batch["expert_action"] if target == "expert" else batch["action"]


def backbone_path(cfg: PretrainConfig, data_dir: Path) -> Path:
    return Path(data_dir) / "backbones" / f"{cfg.key()}.pt"


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on Linear weights only (L2M / minGPT convention)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (decay if isinstance(module, torch.nn.Linear) and name == "weight" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


PARTIAL_EVERY = 500  # updates between the checkpoints of an unfinished pre-training


def pretrain(cfg: PretrainConfig, data_dir: Path, device: torch.device, *, progress: bool = True,
             log=print, eval_episodes: int = 5, report=None) -> Path:
    """Collect the data if missing, pre-train the backbone, score it on its own pre-training tasks
    (``eval_episodes`` each; 0 skips), save it atomically; returns its path.

    Every ``PARTIAL_EVERY`` updates the unfinished run is checkpointed beside the cache (``.partial.pt``:
    model, optimiser, schedule, sampler and RNG); a killed pre-training continues from there, with the
    same result as an uninterrupted one. ``report(name, done, total, scalars)``, when given, receives
    the progress (crl train logs it to TensorBoard as ``phase/pretrain/...``)."""
    from crl.checkpoint import load_plain
    from tqdm import tqdm

    from crl.dt import WindowSampler
    from crl.envs.data import CollectConfig, collect, load_task, resolve_tasks

    check_pretrain_config(cfg)
    tasks = resolve_tasks(cfg.tasks)
    collect(tasks, CollectConfig(episodes=cfg.episodes, seed=cfg.seed), data_dir, progress=progress)
    datasets = [load_task(t, data_dir) for t in tasks]
    torch.manual_seed(cfg.seed)
    model_cfg = dt_config(cfg.size, cfg.context)
    model = DecisionTransformer(model_cfg).to(device)
    if cfg.normalize_states:
        # The floor matters: a dim nearly constant over MT40 (a second object's quaternion, a goal
        # coordinate) varies in CW10 tasks; with a 0.01 floor hammer's goal y went past ±10 σ in 60% of
        # its states and was clipped (issue 13). 0.1 keeps every Meta-World position within the clip.
        model.set_state_normalizer(*state_statistics(datasets), min_std=cfg.min_state_std)
    sampler = WindowSampler(datasets, model_cfg.context, device, seed=cfg.seed)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, cfg.warmup, cfg.updates))
    log(f"pre-training a {cfg.size} Decision Transformer ({sum(p.numel() for p in model.parameters()):,} parameters) "
        f"on {len(tasks)} tasks, {sum(d.num_transitions for d in datasets):,} transitions, {cfg.updates} updates")
    path = backbone_path(cfg, data_dir)
    partial = path.with_name(path.stem + ".partial.pt")
    started = time.perf_counter()
    losses: list[float] = []
    if partial.exists():
        state = load_plain(partial, "crl pre-training checkpoint", "; delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"])
        losses = state["losses"]
        log(f"continuing the pre-training from its checkpoint at update {len(losses)} ({partial})")
    first_update = len(losses)
    model.train()
    bar = tqdm(range(len(losses), cfg.updates), desc="pre-training", unit="update", file=sys.stderr,
               initial=len(losses), total=cfg.updates, disable=not progress or None)
    for _ in bar:
        b = sampler.sample(cfg.batch_size)
        logits = model(b["obs"], b["action"], b["returns_to_go"], b["timestep"], b["mask"])
        loss = model.loss(logits, action_targets(b, cfg.action_target), b["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
            if report is not None:
                report("pretrain", len(losses), cfg.updates, {"loss": sum(losses[-50:]) / 50})
        if len(losses) % PARTIAL_EVERY == 0 and len(losses) < cfg.updates:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "sampler": sampler.state_dict(), "rng": torch.get_rng_state(), "losses": losses}
            partial.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(partial, lambda f: torch.save(state, f))
        if bar.disable and progress and len(losses) % max(1, cfg.updates // 10) == 0:
            done, elapsed = len(losses), time.perf_counter() - started
            log(f"  {done}/{cfg.updates} updates, loss {sum(losses[-50:]) / len(losses[-50:]):.3f}, "
                f"{(done - first_update) / elapsed:.1f} updates/s, "
                f"about {(cfg.updates - done) * elapsed / max(1, done - first_update) / 60:.1f} min left")
    seconds = time.perf_counter() - started
    success: dict[str, float] = {}
    if eval_episodes > 0:
        log(f"scoring the backbone on its {len(tasks)} pre-training tasks ({eval_episodes} episodes each)")
        success = evaluate_backbone(model, tasks, data_dir, episodes=eval_episodes, seed=cfg.seed + 1,
                                    device=device)
        log(f"pre-training-task success {sum(success.values()) / len(success):.2f} (mean of {len(success)} tasks)")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "version": VERSION, "pretrain_config": dataclasses.asdict(cfg),
        "dt_config": dataclasses.asdict(model_cfg), "state_dict": model.state_dict(),
        "loss_first_100": sum(losses[:100]) / max(1, len(losses[:100])),
        "loss_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "seconds": seconds, "updates_per_s": (cfg.updates - first_update) / seconds, "tasks": tasks,
        "pretrain_success": success,
    }
    atomic_write(path, lambda f: torch.save(payload, f))  # a kill leaves the old cache or the new one
    partial.unlink(missing_ok=True)
    log(f"pre-trained in {seconds:.0f}s ({(cfg.updates - first_update) / seconds:.1f} updates/s), loss "
        f"{sum(losses[:100]) / max(1, len(losses[:100])):.3f} → {sum(losses[-100:]) / max(1, len(losses[-100:])):.3f}; saved {path}")
    return path


def load_backbone(path: Path, device: torch.device) -> tuple[DecisionTransformer, dict[str, Any]]:
    from crl.checkpoint import load_plain

    data = load_plain(path, "crl backbone", "; delete it to rebuild")  # tensors and plain data only: no code runs
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise UsageError(f"{path} is not a crl backbone (version {VERSION}); delete it to rebuild")
    model = DecisionTransformer(DTConfig(**data["dt_config"])).to(device)
    model.load_state_dict(data["state_dict"])
    return model, data


def load_or_pretrain(cfg: PretrainConfig, data_dir: Path, device: torch.device, *, progress: bool = True,
                     log=print, report=None) -> tuple[DecisionTransformer, dict[str, Any]]:
    """The cached backbone for ``cfg``; on a fresh machine, builds data and backbone first."""
    path = backbone_path(cfg, data_dir)
    if not path.exists():
        log(f"no pre-trained backbone for these settings in {path.parent}: building it now "
            f"(data for {cfg.tasks}, then {cfg.updates} updates; minutes on two CPU cores with the small size)")
        # Forked RNG: a run must not depend on whether the backbone was already cached (pretrain seeds torch).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            pretrain(cfg, data_dir, device, progress=progress, log=log, report=report)
    return load_backbone(path, device)


def target_returns(tasks: list[str], data_dir: Path, mult: float = 1.0) -> dict[str, float]:
    """Each task's return-to-go target: its dataset's best episode return × ``mult`` (L2M's per-task
    table, "max return in dataset × 2")."""
    from crl.envs.data import load_task

    return {t: float(load_task(t, data_dir).episode_return.max()) * mult for t in tasks}


class BackbonePolicy(ContextualPolicy):
    """A Decision Transformer on its own as an evaluation policy (what ``crl.evaluate.Evaluator`` calls of
    an agent): greedy binned actions from a rolling context, each row conditioned on its task's RTG target."""

    def __init__(self, model: DecisionTransformer, targets: dict[str, float], device: torch.device, act_dim: int):
        self.model, self.targets, self.device, self.act_dim = model, targets, device, act_dim
        self._row_targets: torch.Tensor | None = None
        self._ctx = None

    def prepare_evaluation(self, row_tasks) -> None:
        self._row_targets = torch.tensor([self.targets[t.name] for t in row_tasks], device=self.device)
        self._ctx = None

    @torch.no_grad()
    def act(self, obs, task_index, *, explore: bool = False, deterministic: bool = False, first=None):
        from crl.dt import RollingContext

        if self._ctx is None or self._ctx.size != obs.shape[0]:
            cfg = self.model.cfg
            self._ctx = RollingContext(obs.shape[0], cfg.context, obs.shape[1], cfg.act_dim, cfg.max_timestep,
                                       self.device)
            first = torch.ones(obs.shape[0], dtype=torch.bool, device=self.device)
        if first is not None and bool(first.any()):
            self._ctx.reset(first, self._row_targets)
        self.model.eval()
        action = self.model.act(*self._ctx.push(obs), act_dim_used=self.act_dim)
        self._ctx.record(action)
        return action

    def after_step(self, reward: torch.Tensor, ended: torch.Tensor) -> None:
        if self._ctx is not None:
            self._ctx.after_step(reward)


def evaluate_backbone(model: DecisionTransformer, tasks: list[str], data_dir: Path, *, episodes: int = 5,
                      seed: int = 0, backend: str = "auto", device: torch.device | None = None,
                      target_return_mult: float = 1.0) -> dict[str, float]:
    """Success rate of the backbone alone on each of ``tasks`` (Meta-World names), all tasks batched."""
    from crl.core import Sequence
    from crl.envs.metaworld import metaworld_task
    from crl.evaluate import Evaluator

    device = device or next(model.parameters()).device
    seq = Sequence(name="backbone", tasks=tuple(metaworld_task(t, i, len(tasks)) for i, t in enumerate(tasks)),
                   steps_per_task=0)
    policy = BackbonePolicy(model, target_returns(tasks, data_dir, target_return_mult), device, seq.tasks[0].act_dim)
    evaluator = Evaluator(seq, episodes, seed, backend, device, deterministic=True)
    try:
        rows = evaluator.evaluate(policy)
    finally:
        evaluator.close()
    return {t: r["success"] for t, r in zip(tasks, rows)}
