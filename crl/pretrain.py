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
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crl.core import UsageError
from crl.dt import DT_SIZES, DecisionTransformer, DTConfig

FORMAT = "crl-backbone"
VERSION = 1


@dataclass
class PretrainConfig:
    tasks: str = "mt40"  # task set (envs/data.py resolve_tasks): the 40 Meta-World tasks outside CW10
    size: str = "small"  # DT_SIZES key: "small" (minutes on 2 CPU cores) or "paper" (6 layers, 768 wide)
    episodes: int = 20  # expert episodes per task (mixed action-noise levels)
    updates: int = 3000  # optimiser steps
    batch_size: int = 64
    lr: float = 3e-4  # L2M: 1e-4 at batch 256 for 1M steps; higher for a short schedule
    weight_decay: float = 0.01  # Linear weights only (L2M)
    grad_clip: float = 0.25  # L2M
    warmup: int = 200  # linear warm-up steps, then cosine to lr/100
    seed: int = 0

    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.tasks}-{self.size}-{self.updates}u-{self.episodes}ep-s{self.seed}-{digest}"


def dt_config(size: str) -> DTConfig:
    if size not in DT_SIZES:
        raise UsageError(f"unknown backbone size '{size}'; allowed: {', '.join(DT_SIZES)}")
    return dataclasses.replace(DT_SIZES[size])


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


def pretrain(cfg: PretrainConfig, data_dir: Path, device: torch.device, *, progress: bool = True,
             log=print) -> Path:
    """Collect the data if missing, pre-train the backbone, save it atomically; returns its path."""
    from tqdm import tqdm

    from crl.envs.data import CollectConfig, WindowSampler, collect, load_task, resolve_tasks

    tasks = resolve_tasks(cfg.tasks)
    collect(tasks, CollectConfig(episodes=cfg.episodes, seed=cfg.seed), data_dir, progress=progress)
    datasets = [load_task(t, data_dir) for t in tasks]
    torch.manual_seed(cfg.seed)
    model_cfg = dt_config(cfg.size)
    model = DecisionTransformer(model_cfg).to(device)
    sampler = WindowSampler(datasets, model_cfg.context, device, seed=cfg.seed)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, cfg.warmup, cfg.updates))
    log(f"pre-training a {cfg.size} Decision Transformer ({sum(p.numel() for p in model.parameters()):,} parameters) "
        f"on {len(tasks)} tasks, {sum(d.num_transitions for d in datasets):,} transitions, {cfg.updates} updates")
    started = time.perf_counter()
    losses = []
    model.train()
    bar = tqdm(range(cfg.updates), desc="pre-training", unit="update", file=sys.stderr, disable=not progress or None)
    for _ in bar:
        b = sampler.sample(cfg.batch_size)
        logits = model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
        loss = model.loss(logits, b["actions"], b["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
        if bar.disable and progress and len(losses) % max(1, cfg.updates // 10) == 0:
            done, elapsed = len(losses), time.perf_counter() - started
            log(f"  {done}/{cfg.updates} updates, loss {sum(losses[-50:]) / len(losses[-50:]):.3f}, "
                f"{done / elapsed:.1f} updates/s, about {(cfg.updates - done) * elapsed / done / 60:.1f} min left")
    seconds = time.perf_counter() - started
    path = backbone_path(cfg, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({
        "format": FORMAT, "version": VERSION, "pretrain_config": dataclasses.asdict(cfg),
        "dt_config": dataclasses.asdict(model_cfg), "state_dict": model.state_dict(),
        "loss_first_100": sum(losses[:100]) / max(1, len(losses[:100])),
        "loss_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "seconds": seconds, "updates_per_s": cfg.updates / seconds, "tasks": tasks,
    }, tmp)
    os.replace(tmp, path)
    log(f"pre-trained in {seconds:.0f}s ({cfg.updates / seconds:.1f} updates/s), loss "
        f"{sum(losses[:100]) / max(1, len(losses[:100])):.3f} → {sum(losses[-100:]) / max(1, len(losses[-100:])):.3f}; saved {path}")
    return path


def load_backbone(path: Path, device: torch.device) -> tuple[DecisionTransformer, dict[str, Any]]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise UsageError(f"{path} is corrupt or not a crl backbone ({type(e).__name__}); delete it to rebuild") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise UsageError(f"{path} is not a crl backbone (version {VERSION}); delete it to rebuild")
    model = DecisionTransformer(DTConfig(**data["dt_config"])).to(device)
    model.load_state_dict(data["state_dict"])
    return model, data


def load_or_pretrain(cfg: PretrainConfig, data_dir: Path, device: torch.device, *, progress: bool = True,
                     log=print) -> tuple[DecisionTransformer, dict[str, Any]]:
    """The cached backbone for ``cfg``; on a fresh machine, builds data and backbone first."""
    path = backbone_path(cfg, data_dir)
    if not path.exists():
        log(f"no pre-trained backbone for these settings in {path.parent}: building it now "
            f"(data for {cfg.tasks}, then {cfg.updates} updates; minutes on two CPU cores with the small size)")
        pretrain(cfg, data_dir, device, progress=progress, log=log)
    return load_backbone(path, device)
