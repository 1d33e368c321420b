"""Run configuration: YAML layers + CLI flags + ``--set`` overrides → a typed, validated RunConfig.

Layers, later wins: ``configs/seq/<seq>.yaml`` → ``configs/agent/<family>.yaml`` →
``configs/agent/<agent>.yaml`` → ``configs/domain/<domain of the sequence's tasks>.yaml`` →
``configs/preset/<preset>.yaml`` → ``--config FILE`` → CLI flags (``--steps-per-task`` …) → ``--set section.key=value``.
A YAML file may hold ``train:`` (TrainConfig keys) and ``agent:`` (the agent's config keys); a
domain or preset file holds agent keys per agent family, extension or name under
``agents: {<name>: {...}}`` since agents differ: for ``sac+packnet`` the sections ``sac``, then
``packnet``, then ``sac+packnet`` apply.
Unknown keys and values of the wrong type are UsageErrors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from crl.core import UsageError
from crl.envs import make_sequence  # the sequence registry: crl.envs finds the families, this module names none
from crl.registry import make_agent_config, resolve

SECTIONS = ("train", "agent")


@dataclass
class TrainConfig:
    steps_per_task: int = 1_000_000  # env steps per task; build_config starts from the sequence's own (CW: 1M)
    eval_every: int = 20_000  # env steps between evaluations of ALL tasks (CW: 20k)
    eval_episodes: int = 10  # episodes per task per evaluation (CW: 10)
    eval_deterministic: bool = False  # CW's headline numbers use the stochastic policy
    eval_at_start: bool = True  # evaluate before training: the "init" row (GEM FWT needs it)
    num_envs: int = 1  # parallel training envs of the current task (CW: 1)
    checkpoint_every: int = 100_000  # env steps between checkpoints; always at the end of a task
    log_every: int = 1_000  # env steps between train/* and time/* scalars
    last_k: int = 5  # evaluations averaged by CW's metrics (CW: 5 = the last 100k steps)
    torch_threads: int = 1  # intra-op threads; 1 avoids oversubscription (SB3 #90), scale out by processes


@dataclass
class RunConfig:
    seq: str
    agent: str
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    preset: str | None = None
    reference: bool = False  # single-task reference runs (fresh agent per task) for forward transfer
    train: TrainConfig = field(default_factory=TrainConfig)
    agent_config: Any = None  # the agent's own config dataclass

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": {k: getattr(self, k) for k in ("seq", "agent", "seed", "device", "backend", "preset", "reference")},
            "train": dataclasses.asdict(self.train),
            "agent": _plain(dataclasses.asdict(self.agent_config)),
        }


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_dir() -> Path:
    return Path(str(resources.files("crl.configs")))


def available(kind: str) -> list[str]:
    """Names of the YAML files in configs/<kind>/ (kind: seq, agent, preset)."""
    return sorted(p.stem for p in (config_dir() / kind).glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise UsageError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as the type ``annotation`` says, or a UsageError naming the key and the type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UsageError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{key}: expected an integer, got {value!r}") from None
        if as_float.is_integer():  # "1e6" in YAML is a string; accept integral numbers
            return int(as_float)
        raise UsageError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise UsageError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{key}: expected a string, got {value!r}")
    return value


def apply_overrides(obj: Any, values: dict[str, Any], prefix: str) -> None:
    """Set fields of dataclass ``obj`` from ``values`` with type checks; unknown keys are errors."""
    if not isinstance(values, dict):
        raise UsageError(f"{prefix}: expected a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise UsageError(f"unknown config key '{prefix}.{key}'; allowed: {', '.join(names)}")
        setattr(obj, key, _coerce(value, hints[key], f"{prefix}.{key}"))


def parse_set(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """``["agent.lr=1e-4", "train.eval_every=5000"]`` → ``{"agent": {"lr": "1e-4"}, ...}`` (typed later)."""
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for item in assignments:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--set expects section.key=value, got '{item}'; sections: {', '.join(SECTIONS)}")
        if section not in SECTIONS:
            raise UsageError(f"--set: unknown section '{section}'; allowed: {', '.join(SECTIONS)}")
        try:
            out[section][name] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[section][name] = raw
    return out


def build_config(
    seq: str, agent: str, *, seed: int = 0, device: str = "auto", backend: str = "auto",
    preset: str | None = None, reference: bool = False, config_file: Path | None = None,
    train_flags: dict[str, Any] | None = None, sets: list[str] | None = None,
) -> RunConfig:
    sequence = make_sequence(seq)  # validates the name
    resolved = resolve(agent)
    agent_config = resolved.make_config()
    if preset is not None and preset not in available("preset"):
        raise UsageError(f"unknown preset '{preset}'; allowed: {', '.join(available('preset'))}")
    cfg = RunConfig(seq=seq, agent=agent, seed=seed, device=device, backend=backend, preset=preset,
                    reference=reference, train=TrainConfig(steps_per_task=sequence.steps_per_task),
                    agent_config=agent_config)
    layers = []
    family = resolved.family
    pieces = [ext.name for ext in resolved.extensions]
    domain = sequence.tasks[0].domain  # e.g. dmc: SAC settings for DMC rather than Continual World's
    for kind, name in (("seq", seq), ("agent", family), ("agent", agent if agent != family else None),
                       ("domain", domain), ("preset", preset)):
        path = config_dir() / kind / f"{name}.yaml"
        if name is not None and path.exists():
            layers.append((path, read_yaml(path)))
    if config_file is not None:
        layers.append((Path(config_file), read_yaml(Path(config_file))))
    for path, data in layers:
        unknown = set(data) - {"train", "agent", "agents", "description"}
        if unknown:
            raise UsageError(f"{path}: unknown section(s) {sorted(unknown)}; allowed: train, agent, agents, description")
        apply_overrides(cfg.train, data.get("train") or {}, "train")
        apply_overrides(cfg.agent_config, data.get("agent") or {}, "agent")
        per_agent = data.get("agents") or {}
        for key in dict.fromkeys((family, *pieces, agent)):  # the family's section, each extension's, the name's
            section = dict(per_agent.get(key) or {})
            apply_overrides(cfg.train, section.pop("train", None) or {}, "train")
            apply_overrides(cfg.agent_config, section, "agent")
    apply_overrides(cfg.train, {k: v for k, v in (train_flags or {}).items() if v is not None}, "train")
    overrides = parse_set(sets or [])
    apply_overrides(cfg.train, overrides["train"], "train")
    apply_overrides(cfg.agent_config, overrides["agent"], "agent")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    t = cfg.train
    for name in ("steps_per_task", "eval_every", "eval_episodes", "num_envs", "checkpoint_every", "log_every", "last_k",
                 "torch_threads"):
        if getattr(t, name) <= 0:
            raise UsageError(f"train.{name} must be positive, got {getattr(t, name)}")
    if cfg.backend not in ("auto", "envpool", "gymnasium"):
        raise UsageError(f"unknown backend '{cfg.backend}'; allowed: auto, envpool, gymnasium")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from a run dir's config.yaml (as written by ``RunConfig.to_dict``)."""
    run = data["run"]
    cfg = RunConfig(**run, agent_config=make_agent_config(run["agent"]))
    apply_overrides(cfg.train, data.get("train", {}), "train")
    apply_overrides(cfg.agent_config, data.get("agent", {}), "agent")
    return cfg
