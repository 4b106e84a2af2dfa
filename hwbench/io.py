"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hwbench.errors import UsageError


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` through a temporary file in the same folder and a rename (figures too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` through the same temporary file and rename (checkpoints)."""
    import torch  # only checkpoints need torch: writing a JSON result does not load it

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Fail before any work when ``path`` (a file, or a ``folder``) cannot be written: the wrong
    kind of thing is already there, or its nearest existing ancestor is not a writable folder.
    Raises ``UsageError`` (one line, exit 2)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise UsageError(f"{path} exists and is {'not ' if folder else ''}a folder")
    probe = path.parent if not folder else path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: {probe} is not writable")
    return path
