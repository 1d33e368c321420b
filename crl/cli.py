"""The ``crl`` command: list, train, eval, sweep, report.

Bad input (unknown names, wrong types, unreadable files, missing devices) ends with one line on
stderr, ``crl: error: ...``, and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from crl.core import UsageError


class _StoreOnce(argparse.Action):
    """A one-value flag: given twice, argparse would silently keep the last (``--agent sac --agent ewc`` ran
    only ewc, issue 24), so the repeat is refused. List flags take ``action="extend"`` instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in given:
            parser.error(f"{option_string} given twice; it takes one value")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the whole usage first)
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def add_argument(self, *args, **kwargs):
        if args and args[0].startswith("-") and kwargs.get("action", "store") == "store" and "nargs" not in kwargs:
            kwargs["action"] = _StoreOnce
        return super().add_argument(*args, **kwargs)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an agent through a sequence, evaluating every task as it goes")
    p.add_argument("--seq", help="sequence name (crl list)")
    p.add_argument("--agent", help="agent name (crl list)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<i>")
    p.add_argument("--backend", default="auto", help="auto | envpool | gymnasium (auto: EnvPool where it imports)")
    p.add_argument("--preset", help="smoke | quick | paper (configs/preset/); default: the sequence's own protocol")
    p.add_argument("--config", type=Path, metavar="FILE", help="a YAML file of train:/agent: overrides")
    p.add_argument("--steps-per-task", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-episodes", type=int)
    p.add_argument("--num-envs", type=int, help="parallel training envs")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default 1)")
    p.add_argument("--run-dir", type=Path, help="default: runs/<seq>__<agent>__s<seed>__<time>/")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set agent.lr=1e-4 (repeatable)")
    p.add_argument("--reference", action="store_true",
                   help="single-task reference runs (fresh agent per task) that forward transfer is measured against")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crl", description="Continual reinforcement learning: train, evaluate and report.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="sequences (with their tasks), agents and presets")
    _add_train(sub)
    p = sub.add_parser("eval", help="re-evaluate a run's last checkpoint on all tasks")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--episodes", type=int, help="episodes per task (default: the run's)")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None)
    from crl.envs.data import add_data_commands

    add_data_commands(sub)
    p = sub.add_parser("pretrain", help="pre-train the Decision Transformer backbone of L2M and cache it")
    p.add_argument("--data", default="mt40", help="pre-training task set: mt40 | mt50 | comma-separated names")
    p.add_argument("--size", default="small", help="backbone size: small | paper")
    p.add_argument("--context", type=int, help="timesteps per window (default 2)")
    p.add_argument("--target", choices=("expert", "executed"), help="behaviour-cloning target (default expert)")
    p.add_argument("--eval-episodes", type=int, default=5,
                   help="episodes per pre-training task when scoring the finished backbone (0 skips)")
    p.add_argument("--episodes", type=int, help="expert episodes per task")
    p.add_argument("--updates", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--data-dir", type=Path, help="default: $CRL_DATA_DIR or ~/.cache/crl/data")
    p = sub.add_parser("sweep", help="a grid of runs (sequences × agents × seeds) as Ray Tune trials, local or on a cluster")
    # list flags: --agent sac ewc and --agent sac --agent ewc both give [sac, ewc]
    p.add_argument("--seq", nargs="+", action="extend", help="sequence name(s)")
    p.add_argument("--agent", nargs="+", action="extend", help="agent name(s), compositions allowed (sac+ewc)")
    p.add_argument("--seeds", nargs="+", action="extend", help="e.g. 0-9, 0,3,5 or 0-2 7 (default 0)")
    p.add_argument("--preset", help="smoke | quick | paper")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every cell (repeatable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", type=Path, help="sweep dir (default runs/sweep__<time>/); one run dir per cell inside")
    p.add_argument("--address", help="a Ray cluster: auto | HOST:PORT (default: a local Ray on this machine)")
    p.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: all of this machine's)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions pack runs on a GPU, e.g. 0.25")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a trial that dies (from its checkpoint)")
    p.add_argument("--resume", type=Path, metavar="SWEEP_DIR", help="skip finished cells, resume the others")
    p = sub.add_parser("report", help="metrics of runs and sweeps: per (sequence, agent) mean and 90%% CI; "
                                      "HTML page with plots + Markdown table")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--out", type=Path, help="where report.html and report.md go (default: the sweep dir, or "
                                            "the common parent of the runs)")
    p.add_argument("--no-html", action="store_true", help="terminal table only")
    p.add_argument("--bootstrap-reps", type=int, default=2000, metavar="N",
                   help="resamples of rliable's stratified bootstraps (IQM, P(X > Y), profiles; default 2000)")
    return parser


def cmd_list() -> None:
    from crl.config import available, config_dir, read_yaml
    from crl.registry import listing
    from crl.envs import SEQUENCES, make_sequence

    pieces = listing()  # discovery: imports the plugin modules, whose sequences are listed too
    print("sequences:")
    for name in SEQUENCES:
        seq = make_sequence(name)
        print(f"  {name:<14} {len(seq)} tasks, {seq.steps_per_task:,} steps/task — {SEQUENCES[name]}")
        print(" " * 17 + ", ".join(seq.labels))
    for kind, title in (("agents", "agents (base learners and standalone agents):"),
                        ("variants", "registered variants (names for a composition with its defaults):"),
                        ("extensions", "extensions (compose as <agent>+<extension>+..., e.g. sac+ewc+episodic-memory):")):
        print(title)
        for name, desc in pieces[kind]:
            print(f"  {name:<16} {desc}")
    print("presets:")
    for name in available("preset"):
        desc = read_yaml(config_dir() / "preset" / f"{name}.yaml").get("description", "")
        print(f"  {name:<8} {desc}")


def _print_summary(run_dir: Path, results: dict[str, Any]) -> None:
    print(f"run dir: {run_dir}")
    m = results.get("metrics", {})
    keys = ("average_performance", "forgetting", "forward_transfer", "gem_acc", "gem_bwt", "avg_min_acc", "wc_acc")
    print("  " + "  ".join(f"{k}={m[k]:.3f}" for k in keys if isinstance(m.get(k), float)))
    if results.get("steps_per_s"):
        unit = results.get("step_unit", "env step")
        print(f"  {results['steps']:,} {unit}s in {results['wall_time_s']:.0f}s ({results['steps_per_s']:.1f} {unit}s/s)")


def cmd_train(args) -> None:
    from crl import loop
    from crl.config import build_config

    if args.resume is not None:
        run_dir, results = loop.resume(args.resume, quiet=args.quiet, device=None if args.device == "auto" else args.device)
    else:
        missing = [f"--{n}" for n in ("seq", "agent") if getattr(args, n) is None]
        if missing:
            raise UsageError(f"crl train needs {' and '.join(missing)} (or --resume RUN_DIR); see 'crl list'")
        cfg = build_config(
            args.seq, args.agent, seed=args.seed, device=args.device, backend=args.backend, preset=args.preset,
            reference=args.reference, config_file=args.config, sets=args.set,
            train_flags={"steps_per_task": args.steps_per_task, "eval_every": args.eval_every,
                         "eval_episodes": args.eval_episodes, "num_envs": args.num_envs,
                         "torch_threads": args.threads},
        )
        run_dir, results = loop.train(cfg, args.run_dir, quiet=args.quiet)
    if not args.quiet:
        _print_summary(run_dir, results)


def cmd_eval(args) -> None:
    import torch

    from crl import checkpoint, loop
    from crl.devices import resolve_device
    from crl.envs import make_sequence
    from crl.evaluate import Evaluator

    cfg = loop.load_run_config(args.run_dir)
    data = checkpoint.load(args.run_dir)
    device = resolve_device(args.device or cfg.device)
    sequence = make_sequence(cfg.seq)
    agent = loop.make_agent(cfg, sequence, device)
    agent.load_state_dict(data["agent"])
    torch.manual_seed(cfg.seed)
    episodes = args.episodes or cfg.train.eval_episodes
    evaluator = Evaluator(sequence, episodes, cfg.seed + 7, args.backend or cfg.backend, device,
                          deterministic=cfg.train.eval_deterministic)
    rows = evaluator.evaluate(agent)
    evaluator.close()
    step = data["loop"]["global_step"]
    print(f"{args.run_dir} at env step {step:,} ({episodes} episodes per task)")
    for row, label in zip(rows, sequence.labels):
        print(f"  {label:<24} score {row['score']:.2f}  success {row['success']:.2f}  return {row['return']:.1f}")
    print(f"  {'average':<24} score {sum(r['score'] for r in rows) / len(rows):.2f}")
    out = {"step": step, "episodes": episodes, "rows": [{"task": lab, **r} for r, lab in zip(rows, sequence.labels)]}
    (Path(args.run_dir) / "eval.json").write_text(json.dumps(out, indent=2))


def cmd_pretrain(args) -> None:
    import dataclasses

    import torch

    from crl.devices import resolve_device
    from crl.envs.data import default_data_dir
    from crl.pretrain import PretrainConfig, backbone_path, check_pretrain_config, pretrain

    overrides = {"episodes": args.episodes, "updates": args.updates, "batch_size": args.batch_size, "lr": args.lr,
                 "context": args.context, "action_target": args.target}
    cfg = dataclasses.replace(PretrainConfig(tasks=args.data, size=args.size, seed=args.seed),
                              **{k: v for k, v in overrides.items() if v is not None})
    check_pretrain_config(cfg)
    if args.eval_episodes < 0:
        raise UsageError(f"--eval-episodes must be >= 0, got {args.eval_episodes}")
    if args.threads < 1:
        raise UsageError(f"--threads must be positive, got {args.threads}")
    data_dir = args.data_dir or default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is a file; give a directory")
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    path = backbone_path(cfg, data_dir)
    if path.exists():
        print(f"already pre-trained: {path}")
        return
    pretrain(cfg, data_dir, device, eval_episodes=args.eval_episodes)


def cmd_report(args) -> None:
    from crl.report import report

    report(args.run_dirs, as_json=args.json, out=args.out, html=not args.no_html, bootstrap_reps=args.bootstrap_reps)


def cmd_sweep(args) -> int:
    from crl.sweep import sweep

    return sweep(seq=args.seq, agent=args.agent, seeds=",".join(args.seeds or ["0"]), preset=args.preset, sets=args.set,
                 device=args.device, backend=args.backend, out=args.out, address=args.address, cpus=args.cpus,
                 cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                 max_failures=args.max_failures, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    from crl.loop import RunInterrupted

    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            cmd_list()
        elif args.command == "train":
            cmd_train(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "report":
            cmd_report(args)
        elif args.command == "sweep":
            return cmd_sweep(args)
        elif args.command == "pretrain":
            cmd_pretrain(args)
        elif args.command == "data":
            from crl.envs.data import run_data_command

            run_data_command(args)
    except UsageError as e:
        print(f"crl: error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:  # SIGTERM/SIGINT: stopped at a safe point, checkpoint written
        print(f"crl: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    except KeyboardInterrupt:
        print("crl: interrupted; the last checkpoint is kept (crl train --resume RUN_DIR continues)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `crl list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
