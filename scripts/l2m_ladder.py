"""Where does L2M lose success? A ladder of rungs on the same data and seeds (issue 13).

    python scripts/l2m_ladder.py                          # every rung, CW10, seed 0, quick-preset settings
    python scripts/l2m_ladder.py --rungs 1,2,4 --tasks hammer-v3,shelf-place-v3 --seeds 0,1
    python scripts/l2m_ladder.py --quick                  # rungs 1-4 on three CW10 tasks, fewer episodes

Rungs (each prints mean success, the per-task values, wall time and the command that produced it):

1. per-task MLP behaviour cloning (2×256 ReLU, tanh output, standardised inputs, MSE on the expert's
   actions): the ceiling, a few seconds per task;
2. crl's Decision Transformer trained from scratch on one task's data (the pre-training learning rate,
   the agent's batch and updates per task), evaluated on that task;
3. the pre-trained backbone on its own pre-training tasks (all of them, each row conditioned on its task's
   RTG target): how good the frozen model is before the continual phase;
4. one LoRA module on the frozen backbone, trained on one CW10 task at a time (a fresh module per task);
5. L2M and l2m-oracle through ``crl train --seq cw10`` (run dirs under ``--out``).

Rungs 2-5 use the L2M agent's settings of ``--preset`` (default quick): backbone size, context, batch,
learning rate, updates per task; rung 2 trains as many updates as the preset gives a task. The data are
the cached expert datasets (``$CRL_DATA_DIR``), built on first use. The scripted expert's own success
(noise-free) is printed beside rung 1: no imitation can beat it by much.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crl.config import build_config
from crl.core import Sequence, UsageError
from crl.devices import resolve_device
from crl.envs.data import CollectConfig, collect, load_task, resolve_tasks
from crl.envs.metaworld import metaworld_task
from crl.evaluate import Evaluator


def one_task_sequence(name: str) -> Sequence:
    return Sequence(name=name, tasks=(metaworld_task(name, 0, 1),), steps_per_task=0)


def evaluate_policy(policy, task: str, episodes: int, seed: int, device) -> float:
    evaluator = Evaluator(one_task_sequence(task), episodes, seed, "auto", device, deterministic=True)
    try:
        return evaluator.evaluate(policy)[0]["success"]
    finally:
        evaluator.close()


class MLPPolicy:
    """Rung 1: a per-task MLP trained by behaviour cloning on standardised states."""

    def __init__(self, ds, steps: int, batch: int, seed: int):
        torch.manual_seed(seed)
        obs = torch.as_tensor(np.array(ds.obs))
        act = torch.as_tensor(np.array(ds.expert_action))
        self.mean, self.std = obs.mean(0), obs.std(0).clamp_min(1e-2)
        self.net = nn.Sequential(nn.Linear(obs.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, act.shape[1]), nn.Tanh())
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        x = (obs - self.mean) / self.std
        for _ in range(steps):
            i = torch.randint(0, len(x), (batch,), generator=gen)
            loss = (self.net(x[i]) - act[i]).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def prepare_evaluation(self, row_tasks) -> None:
        pass

    @torch.no_grad()
    def act(self, obs, task_index, *, explore=False, deterministic=False, first=None):
        return self.net((obs - self.mean) / self.std)

    def after_step(self, reward, ended) -> None:
        pass


def l2m_config(preset: str, agent: str, seed: int, extra: list[str]):
    return build_config("cw10", agent, seed=seed, preset=preset, sets=extra)


def rung_mlp(tasks, seeds, args, data_dir, device):
    out = {}
    for t in tasks:
        ds = load_task(t, data_dir)
        out[t] = float(np.mean([evaluate_policy(MLPPolicy(ds, args.mlp_steps, 256, s), t, args.episodes, 1000 + s,
                                                device) for s in seeds]))
    return out


def rung_dt_scratch(tasks, seeds, args, data_dir, device):
    from crl.dt import DecisionTransformer, WindowSampler
    from crl.pretrain import (BackbonePolicy, action_targets, dt_config, state_statistics, target_returns,
                              weight_decay_groups)

    out = {}
    for t in tasks:
        scores = []
        for s in seeds:
            cfg = l2m_config(args.preset, "l2m", s, args.set).agent_config
            steps = l2m_config(args.preset, "l2m", s, args.set).train.steps_per_task
            torch.manual_seed(s)
            ds = load_task(t, data_dir)
            model = DecisionTransformer(dt_config(cfg.backbone, cfg.context)).to(device)
            if cfg.normalize_states:
                model.set_state_normalizer(*state_statistics([ds]))
            sampler = WindowSampler([ds], cfg.context, device, seed=s)
            # the backbone's own learning rate: the modulators' (agent.lr) is too high for all weights
            opt = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.pretrain_lr)
            model.train()
            for _ in range(steps):
                b = sampler.sample(cfg.batch_size)
                logits = model(b["obs"], b["action"], b["returns_to_go"], b["timestep"], b["mask"])
                loss = model.loss(logits, action_targets(b, cfg.action_target), b["mask"])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
            policy = BackbonePolicy(model, target_returns([t], data_dir, cfg.target_return_mult), device, 4)
            scores.append(evaluate_policy(policy, t, args.episodes, 1000 + s, device))
        out[t] = float(np.mean(scores))
    return out


def rung_backbone(tasks, seeds, args, data_dir, device):
    from crl.agents.l2m import L2M
    from crl.pretrain import evaluate_backbone

    cfg = l2m_config(args.preset, "l2m", seeds[0], args.set).agent_config
    agent = L2M(39, 4, 10, dataclasses.replace(cfg, data_dir=str(data_dir)), device)
    model = agent._pretrained()
    names = resolve_tasks(cfg.pretrain_tasks)
    return evaluate_backbone(model, names, data_dir, episodes=args.episodes, seed=1000 + seeds[0], device=device,
                             target_return_mult=cfg.target_return_mult)


def rung_lora(tasks, seeds, args, data_dir, device):
    from crl.agents.l2m import L2M

    out = {}
    for t in tasks:
        scores = []
        for s in seeds:
            run = l2m_config(args.preset, "l2m-lora", s, args.set)
            torch.manual_seed(s)
            agent = L2M(39, 4, 1, dataclasses.replace(run.agent_config, data_dir=str(data_dir), seed=s), device)
            task = metaworld_task(t, 0, 1)
            agent.prepare([task])
            agent.begin_task(task)
            for _ in range(run.train.steps_per_task):
                agent.update()
            scores.append(evaluate_policy(agent, t, args.episodes, 1000 + s, device))
        out[t] = float(np.mean(scores))
    return out


def rung_l2m(agent_name: str):
    def run(tasks, seeds, args, data_dir, device):
        from crl.loop import train

        per_task: dict[str, list[float]] = {}
        for s in seeds:
            cfg = l2m_config(args.preset, agent_name, s, [*args.set, f"agent.data_dir={data_dir}"])
            cfg.train.torch_threads = args.threads
            run_dir = Path(args.out) / f"cw10__{agent_name}__s{s}__{time.strftime('%Y%m%d-%H%M%S')}"
            _, results = train(cfg, run_dir, quiet=True)
            final = np.array(results["retention_matrix"], dtype=float)[-1]
            for name, score in zip(results["tasks"], final):
                per_task.setdefault(name, []).append(float(score))
            print(f"    {agent_name} seed {s}: {run_dir}", flush=True)
        return {t: float(np.mean(v)) for t, v in per_task.items()}
    return run


RUNGS = {
    1: ("per-task MLP behaviour cloning (ceiling)", rung_mlp),
    2: ("Decision Transformer from scratch, one task", rung_dt_scratch),
    3: ("pre-trained backbone on its pre-training tasks", rung_backbone),
    4: ("one LoRA on the frozen backbone, one task at a time", rung_lora),
    5: ("L2M on CW10 (task-agnostic retrieval)", rung_l2m("l2m")),
    6: ("l2m-oracle on CW10 (modules by task id)", rung_l2m("l2m-oracle")),
}


def expert_success(tasks, data_dir) -> dict[str, float]:
    """The noise-free scripted expert's success in the cached data (episodes with noise 0)."""
    out = {}
    for t in tasks:
        ds = load_task(t, data_dir)
        clean = np.asarray(ds.noise) == 0
        out[t] = float(np.asarray(ds.episode_success)[clean].mean()) if clean.any() else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", default="1,2,3,4,5,6", help="comma-separated rung numbers (5 = L2M, 6 = oracle)")
    parser.add_argument("--tasks", default="cw10", help="CW10 tasks for rungs 1, 2 and 4 (cw10 or names)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--preset", default="quick", help="the L2M settings (configs/preset/<name>.yaml)")
    parser.add_argument("--set", action="append", default=[], help="agent.KEY=VALUE / train.KEY=VALUE overrides")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task")
    parser.add_argument("--mlp-steps", type=int, default=3000, help="rung 1's gradient steps (batch 256)")
    parser.add_argument("--quick", action="store_true", help="rungs 1-4 on three CW10 tasks, 5 episodes each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/ladder", help="run dirs of rungs 5 and 6")
    args = parser.parse_args()
    try:
        rungs = [int(r) for r in args.rungs.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit("--rungs and --seeds take comma-separated integers") from None
    if any(r not in RUNGS for r in rungs):
        raise SystemExit(f"unknown rung in {rungs}; allowed: {', '.join(map(str, RUNGS))}")
    if args.quick:
        args.tasks, args.episodes = "hammer-v3,stick-pull-v3,shelf-place-v3", 5
        rungs = [r for r in rungs if r <= 4]
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    try:
        cfg = l2m_config(args.preset, "l2m", seeds[0], args.set).agent_config
        tasks = resolve_tasks(args.tasks)
        from crl.envs.data import default_data_dir

        data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
        collect(tasks, CollectConfig(episodes=cfg.task_episodes, seed=cfg.seed), data_dir, progress=False)
    except UsageError as e:
        raise SystemExit(f"error: {e}") from None
    command = "python scripts/l2m_ladder.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# {command}\n# preset {args.preset}, seeds {seeds}, {args.episodes} evaluation episodes per task, "
          f"{args.threads} threads, data {data_dir}", flush=True)
    print(f"rung 0  scripted expert, noise-free episodes of the data: "
          f"{np.mean(list(expert_success(tasks, data_dir).values())):.2f}", flush=True)
    for r in rungs:
        title, fn = RUNGS[r]
        started = time.perf_counter()
        scores = fn(tasks, seeds, args, data_dir, device)
        seconds = time.perf_counter() - started
        values = "  ".join(f"{t.removesuffix('-v3')} {v:.2f}" for t, v in scores.items())
        print(f"rung {r}  {title}: mean {np.mean(list(scores.values())):.2f}  ({seconds:.0f} s)\n        {values}",
              flush=True)


if __name__ == "__main__":
    main()
