"""Crash-safe file writing: the one place crl fsyncs and renames files.

``atomic_write`` writes into ``<name>.tmp`` beside the target, flushes and fsyncs it, then
``os.replace`` s it over the target, so a kill at any moment leaves the previous file or the new
one, never a torn one. ``write_synced`` is the fsynced write alone, for files that become visible
by some other rename (a dataset directory, envs/data.py).

Needs only the standard library: callers pass what to write as a function of the open file,
e.g. ``atomic_write(path, lambda f: torch.save(obj, f))``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable


def write_synced(path: Path, write: Callable[[IO[Any]], object], mode: str = "wb") -> None:
    """Open ``path`` with ``mode``, call ``write(file)``, then flush and fsync before closing."""
    with open(path, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, write: Callable[[IO[Any]], object], mode: str = "wb") -> Path:
    """Replace ``path`` by what ``write(file)`` writes, atomically (fsynced temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write_synced(tmp, write, mode)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Replace ``path`` by ``text`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: f.write(text), mode="w")
