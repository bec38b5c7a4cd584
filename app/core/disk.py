"""A full disk, told apart from other failures, and described so that a person can free what is needed."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# What libraries say when they wrap the OS error in one of their own (torch.save, safetensors, SQLite).
_FULL_MESSAGES = ("no space left on device", "disk quota exceeded", "database or disk is full")


def full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, says the disk (or the user's quota) is full."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if any(text in str(error).lower() for text in _FULL_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem holding `path` (its nearest existing parent), or None if it cannot be read."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path`: where a person looks to free space."""
    current = path.resolve()
    while not current.exists():
        current = current.parent
    while current != current.parent and not os.path.ismount(current):
        current = current.parent
    return current


def size_of(path: Path) -> int:
    """Bytes held by the files under `path` (0 when it is missing); files that vanish meanwhile are skipped."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def human(count: int | None) -> str:
    if count is None:
        return "an unknown amount"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def where(path: Path) -> str:
    """`path`'s disk, for a message: its mount point and what is free there."""
    return f"{path} (on the filesystem mounted at {mount_point(path)}, {human(free_bytes(path))} free)"
