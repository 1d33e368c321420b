"""Atomic checkpoints: everything a run needs to continue, written to a temp file then renamed."""

from __future__ import annotations

import contextlib
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crl.core import UsageError
from crl.fileio import atomic_write

FORMAT = "crl-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # plain data only, so that ``load`` can refuse anything that would need code to unpickle
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | None = None):
    """Python's, numpy's and torch's global RNGs (and ``device``'s, if CUDA) seeded with ``seed`` inside the block,
    and as they were before it afterwards: a side computation (an evaluation) neither reads nor moves the
    streams of the computation around it."""
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    cuda = device is not None and device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it would reseed every GPU's RNG too
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)


def save(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (+ format marker and RNG states) to run_dir/checkpoint.pt atomically.

    A kill at any moment leaves either the previous checkpoint or the new one, never a torn file:
    the data is fsynced in a temp file in the same directory, then renamed over the old one.
    """
    data = {"format": FORMAT, "version": VERSION, "rng": rng_state(), **payload}
    return atomic_write(Path(run_dir) / FILENAME, lambda f: torch.save(data, f))


def load_plain(path: Path, what: str, hint: str = "") -> Any:
    """``torch.load`` of tensors and plain data only (``weights_only``): a file that would need code to
    unpickle (a class, a function such as ``os.system``) is refused with a one-line UsageError, never run.

    ``what`` names the expected file in the message ("crl checkpoint"); ``hint`` is appended to it."""
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles on stderr; the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # the pickle names a callable or class: the only way a pickle runs code
            raise UsageError(f"{path} is not a {what}: it holds Python objects that would run code when loaded "
                             f"(refused: only tensors and plain data are read){hint}") from None
        raise UsageError(f"{path} is corrupt or not a {what} (UnpicklingError){hint}") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, bad records: the same user-facing problem
        raise UsageError(f"{path} is corrupt or not a {what} ({type(e).__name__}){hint}") from None


def load(run_dir: Path) -> dict[str, Any]:
    """Load run_dir/checkpoint.pt; a missing, corrupt or foreign file is a UsageError."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        raise UsageError(f"{run_dir} has no {FILENAME}; resume needs a run dir written by 'crl train'")
    data = load_plain(path, "crl checkpoint")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{path} is not a crl checkpoint (no '{FORMAT}' marker)")
    if data.get("version") != VERSION:
        raise UsageError(f"{path} has checkpoint version {data.get('version')}; this crl reads version {VERSION}")
    return data
