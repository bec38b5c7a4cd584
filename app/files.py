"""Files that appear whole or not at all: written beside their target, then renamed over it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Files and folders named *.partial are being written, and become artifacts when renamed into place.
PARTIAL = ".partial"


@contextmanager
def atomic(target: Path, suffix: str = PARTIAL) -> Iterator[IO[bytes]]:
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


def write_text(target: Path, text: str, suffix: str = PARTIAL) -> None:
    """`text` as UTF-8 at `target`, atomically."""
    with atomic(target, suffix) as handle:
        handle.write(text.encode("utf-8"))


def write_json(target: Path, data: Any) -> None:
    """`data` as indented JSON at `target`, atomically: a reader sees the old file or the new one, never half."""
    write_text(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks: a model of gigabytes never sits in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expand_home(value: str) -> Path:
    """`~` and `~user` expanded where they name a home directory; otherwise the path as written (a `~nobody` that
    names no user is then a plain relative name, found or refused like any other, never an error of ours)."""
    path = Path(value)
    try:
        return path.expanduser()
    except RuntimeError:  # no such user, or no HOME to expand `~` to
        return path
