"""Files that appear whole or not at all: written beside their target, then renamed over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic(target: Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A binary file that appears at `target` complete, or not at all: a reader sees the old one or the new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(target: Path, text: str, suffix: str = ".tmp") -> None:
    """`text` as UTF-8 at `target`, atomically."""
    with atomic(target, suffix) as handle:
        handle.write(text.encode("utf-8"))


def expand_home(value: str) -> Path:
    """`~` and `~user` expanded where they name a home directory; otherwise the path as written (a `~nobody` that
    names no user is then a plain relative name, found or refused like any other, never an error of ours)."""
    path = Path(value)
    try:
        return path.expanduser()
    except RuntimeError:  # no such user, or no HOME to expand `~` to
        return path
