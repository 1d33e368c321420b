"""Saved state is safe to share (issue 14): loading a checkpoint, a backbone or a dataset never runs code
from the file. Each test builds a file whose pickle would run code (touch a sentinel file) and checks that
crl refuses it with one line, exit 2, and that the sentinel never appears; a control load without the
safeguard then shows that the file really would have run it."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crl import checkpoint
from crl.cli import main
from crl.core import UsageError

RUN = ["--seq", "cw2", "--agent", "sac", "--preset", "smoke", "--backend", "gymnasium", "--quiet"]
TINY = ["--steps-per-task", "50", "--eval-every", "50", "--eval-episodes", "1",
        "--set", "train.checkpoint_every=50", "--set", "train.log_every=50",
        "--set", "agent.start_steps=50", "--set", "agent.update_after=25", "--set", "agent.update_every=25"]


class RunsShell:
    """Unpickles as ``os.system(command)``: what a malicious checkpoint would carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class RunsExec:
    """Unpickles as ``exec(source)``."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        import builtins

        return builtins.exec, (self.source,)


def touch(sentinel: Path) -> RunsShell:
    return RunsShell(f"touch '{sentinel}'")


def crl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crl.cli", *argv], capture_output=True, text=True, timeout=300)


def assert_refused(code: int, err: str, path: Path, *fragments: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and "Warning" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("crl: error: ") and str(path) in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real run dir, written by ``crl train`` (a few seconds)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    proc = crl("train", *RUN, *TINY, "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / checkpoint.FILENAME).exists()
    return run_dir


def poisoned_copy(tiny_run: Path, dest: Path, payload) -> Path:
    """A copy of ``tiny_run`` whose checkpoint is the real one plus ``payload`` under an extra key,
    saved by torch.save exactly as crl saves: it looks like a normal checkpoint."""
    shutil.copytree(tiny_run, dest)
    data = checkpoint.load(dest)
    data["agent"]["extra"] = payload
    torch.save(data, dest / checkpoint.FILENAME)
    return dest


def test_a_clean_checkpoint_still_loads(tiny_run):
    data = checkpoint.load(tiny_run)
    assert data["format"] == checkpoint.FORMAT and data["loop"]["global_step"] == 100


def test_resume_and_eval_refuse_a_checkpoint_that_would_run_code(tiny_run, tmp_path):
    """The issue's acceptance test, in real processes: exit 2, one line naming the file, no traceback,
    the code never runs, the run dir is left as it was."""
    sentinel = tmp_path / "pwned"
    run_dir = poisoned_copy(tiny_run, tmp_path / "run", touch(sentinel))
    path = run_dir / checkpoint.FILENAME
    before = snapshot(run_dir)

    resumed = crl("train", "--resume", str(run_dir), "--quiet")
    line = assert_refused(resumed.returncode, resumed.stderr, path, "would run code", "only tensors and plain data")
    assert not sentinel.exists()
    evaluated = crl("eval", str(run_dir), "--episodes", "1")
    assert assert_refused(evaluated.returncode, evaluated.stderr, path) == line
    assert not sentinel.exists()
    assert snapshot(run_dir) == before  # nothing written: no eval.json, no new events, evals.jsonl kept

    torch.load(path, weights_only=False)  # control: without the safeguard the file runs its code
    assert sentinel.exists()


def _zip_exec(tiny_run, dest, sentinel):
    return poisoned_copy(tiny_run, dest, RunsExec(f"open({str(sentinel)!r}, 'w').close()"))


def _legacy_format(tiny_run, dest, sentinel):  # torch's pre-1.6 (non-zip) serialization
    shutil.copytree(tiny_run, dest)
    data = checkpoint.load(dest)
    data["loop"]["extra"] = touch(sentinel)
    torch.save(data, dest / checkpoint.FILENAME, _use_new_zipfile_serialization=False)
    return dest


def _raw_pickle(protocol):
    def make(tiny_run, dest, sentinel):  # a bare pickle stream named checkpoint.pt
        shutil.copytree(tiny_run, dest)
        payload = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "x": touch(sentinel)}
        (dest / checkpoint.FILENAME).write_bytes(pickle.dumps(payload, protocol=protocol))
        return dest
    return make


def _inside_the_zip(tiny_run, dest, sentinel):
    """Only the pickle record inside torch's zip is swapped: every tensor record stays as saved."""
    import zipfile

    shutil.copytree(tiny_run, dest)
    path = dest / checkpoint.FILENAME
    with zipfile.ZipFile(path) as z:
        records = {info.filename: z.read(info) for info in z.infolist()}
    name = next(n for n in records if n.endswith("/data.pkl"))
    records[name] = pickle.dumps({"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                                  "agent": touch(sentinel)}, protocol=2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, blob in records.items():
            z.writestr(n, blob)
    return dest


@pytest.mark.parametrize("make, fragment", [
    (_zip_exec, "would run code"),
    (_legacy_format, "would run code"),
    (_inside_the_zip, "would run code"),
    (_raw_pickle(2), "would run code"),
    (_raw_pickle(4), "not a crl checkpoint"),  # torch's safe unpickler stops at the first protocol-4 opcode
], ids=["zip-exec", "legacy-format", "pickle-in-zip", "raw-pickle-2", "raw-pickle-4"])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_every_kind_of_code_carrying_checkpoint_is_refused(tiny_run, tmp_path, capsys, make, fragment, command):
    sentinel = tmp_path / "pwned"
    run_dir = make(tiny_run, tmp_path / "run", sentinel)
    argv = ["train", "--resume", str(run_dir), "--quiet"] if command == "resume" else ["eval", str(run_dir)]
    code = main(argv)
    assert_refused(code, capsys.readouterr().err, run_dir / checkpoint.FILENAME, "crl checkpoint", fragment)
    assert not sentinel.exists()
    with pytest.raises(UsageError):
        checkpoint.load(run_dir)
    assert not sentinel.exists()


def test_torch_warnings_do_not_reach_stderr(tiny_run, tmp_path):
    """torch warns on stderr about a protocol-4 pickle before refusing it; the one-line error stays one line."""
    sentinel = tmp_path / "pwned"
    run_dir = _raw_pickle(4)(tiny_run, tmp_path / "run", sentinel)
    proc = crl("eval", str(run_dir))
    assert_refused(proc.returncode, proc.stderr, run_dir / checkpoint.FILENAME, "not a crl checkpoint")
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- the L2M backbone cache


def l2m_setup(data_dir: Path):
    """(the backbone cache path an L2M smoke run on ``data_dir`` looks up, a valid backbone payload)."""
    from crl.config import build_config
    from crl.dt import DecisionTransformer
    from crl.envs import make_sequence
    from crl.loop import make_agent
    from crl.pretrain import FORMAT, VERSION, backbone_path, dt_config

    cfg = build_config("cw2", "l2m", preset="smoke", backend="gymnasium", sets=[f"agent.data_dir={data_dir}"])
    pcfg = make_agent(cfg, make_sequence(cfg.seq), torch.device("cpu")).pretrain_cfg
    model_cfg = dt_config(pcfg.size, pcfg.context)
    payload = {"format": FORMAT, "version": VERSION, "pretrain_config": dataclasses.asdict(pcfg),
               "dt_config": dataclasses.asdict(model_cfg), "state_dict": DecisionTransformer(model_cfg).state_dict()}
    path = backbone_path(pcfg, data_dir)
    path.parent.mkdir(parents=True)
    return path, payload


L2M = ["train", "--seq", "cw2", "--agent", "l2m", "--preset", "smoke", "--backend", "gymnasium", "--quiet"]


def test_a_backbone_that_would_run_code_is_refused(tmp_path):
    from crl.pretrain import load_backbone

    sentinel = tmp_path / "pwned"
    data_dir = tmp_path / "data"
    path, payload = l2m_setup(data_dir)
    torch.save(payload, path)
    model, meta = load_backbone(path, torch.device("cpu"))  # the clean file loads
    assert meta["format"] == payload["format"]

    torch.save({**payload, "pretrain_success": {"reach-v3": touch(sentinel)}}, path)
    with pytest.raises(UsageError, match="would run code") as e:
        load_backbone(path, torch.device("cpu"))
    assert str(path) in str(e.value) and "delete it to rebuild" in str(e.value) and "\n" not in str(e.value)
    assert not sentinel.exists()

    # through the CLI: an L2M run finds the poisoned file in its backbone cache
    proc = crl(*L2M, "--set", f"agent.data_dir={data_dir}", "--run-dir", str(tmp_path / "run"))
    assert_refused(proc.returncode, proc.stderr, path, "crl backbone", "would run code")
    assert not sentinel.exists()
    assert not (data_dir / "metaworld").exists()  # refused before any data collection

    torch.load(path, weights_only=False)  # control
    assert sentinel.exists()


# ----------------------------------------------------------------------------- datasets


def write_dataset(data_dir: Path, task: str, episodes: int = 2, length: int = 3) -> Path:
    """A small valid dataset in the on-disk format of envs/data.py, written by hand."""
    from crl.envs.data import ARRAYS, FORMAT_NAME, FORMAT_VERSION, MANIFEST, task_dir

    n = episodes * length
    sizes = {"transition": n, "episode": episodes, "offsets": episodes + 1}
    directory = task_dir(task, data_dir)
    directory.mkdir(parents=True)
    for name, (dtype, trailing, kind) in ARRAYS.items():
        array = np.zeros((sizes[kind], *trailing), dtype=dtype)
        if name == "episode_starts":
            array = np.arange(0, n + 1, length, dtype=dtype)
        np.save(directory / f"{name}.npy", array, allow_pickle=False)
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "task": task, "episodes": episodes,
                "transitions": n}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def poison_npy(file: Path, sentinel: Path, rows: int) -> None:
    array = np.empty(rows, dtype=object)
    array[:] = [touch(sentinel) for _ in range(rows)]
    np.save(file, array, allow_pickle=True)


def test_a_dataset_with_a_pickled_object_array_is_refused(tmp_path):
    from crl.envs.data import load_task

    sentinel = tmp_path / "pwned"
    data_dir = tmp_path / "data"
    directory = write_dataset(data_dir, "reach-v3")
    assert load_task("reach-v3", data_dir).num_episodes == 2  # the clean dataset loads

    for name, rows in (("episode_return", 2), ("obs", 6)):
        file = directory / f"{name}.npy"
        saved = file.read_bytes()
        poison_npy(file, sentinel, rows)
        with pytest.raises(UsageError, match="corrupt dataset file") as e:
            load_task("reach-v3", data_dir)
        assert str(file) in str(e.value) and "\n" not in str(e.value)
        assert not sentinel.exists()
        file.write_bytes(saved)

    poison_npy(directory / "episode_return.npy", sentinel, 2)
    np.load(directory / "episode_return.npy", allow_pickle=True)  # control
    assert sentinel.exists()


def test_an_l2m_run_refuses_a_poisoned_dataset(tmp_path):
    """Through the CLI: a valid cached backbone, then a sequence task's dataset carrying pickled objects."""
    sentinel = tmp_path / "pwned"
    data_dir = tmp_path / "data"
    path, payload = l2m_setup(data_dir)
    torch.save(payload, path)
    directory = write_dataset(data_dir, "hammer-v3")  # cw2's first task
    file = directory / "episode_return.npy"
    poison_npy(file, sentinel, 2)
    proc = crl(*L2M, "--set", f"agent.data_dir={data_dir}", "--run-dir", str(tmp_path / "run"))
    assert_refused(proc.returncode, proc.stderr, file, "corrupt dataset file")
    assert not sentinel.exists()
