"""A job's files under runs/<job_id>/: listing with kind and sha256, and confined path resolution."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from app.core.errors import NotFound
from app.models import ArtifactRead

# Files and folders named *.partial are being written, and become artifacts when renamed into place.
PARTIAL = ".partial"

_KINDS = (
    ("models/checkpoints/lora", "lora"),
    ("models/checkpoints/merged", "merged"),
    ("models/quantized", "gguf"),
    ("logs", "log"),
    ("metrics", "metrics"),
    ("outputs", "checkpoint"),
)

# sha256 of big files is costly: remember it per (path, size, mtime).
_digest_cache: dict[tuple[str, int, int], str] = {}


def run_dir(runs_root: Path, job_id: str) -> Path:
    return runs_root / job_id


def kind_of(name: str, save: dict[str, str | None] | None = None) -> str:
    prefixes = list(_KINDS)
    if save:
        for key, kind in (("lora_path", "lora"), ("merged_path", "merged"), ("gguf_path", "gguf")):
            if save.get(key):
                prefixes.insert(0, (str(save[key]).strip("/"), kind))
    if name.endswith(".gguf"):
        return "gguf"
    for prefix, kind in prefixes:
        if name == prefix or name.startswith(prefix + "/"):
            return kind
    return "other"


def _sha256(path: Path, stat: os.stat_result) -> str:
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def listing(root: Path, save: dict[str, str | None] | None = None) -> list[ArtifactRead]:
    if not root.is_dir():
        return []
    items = []
    real_root = root.resolve()
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if not path.resolve().is_relative_to(real_root):
            continue
        name = path.relative_to(root).as_posix()
        if any(part.endswith(PARTIAL) for part in PurePosixPath(name).parts):
            continue  # still being written (a GGUF, a scratch merged model): not an artifact yet
        stat = path.stat()
        items.append(ArtifactRead(name=name, kind=kind_of(name, save), bytes=stat.st_size, sha256=_sha256(path, stat)))
    return items


def resolve(root: Path, name: str) -> Path:
    """The file `name` inside `root`, or NotFound: no '..', no absolute paths, no symlinks out, no NULs."""
    missing = NotFound(f"no artifact {name!r} in this job; list them with GET .../artifacts", param="path")
    cleaned = name.replace("\\", "/")
    pure = PurePosixPath(cleaned)
    if not cleaned or "\x00" in cleaned or pure.is_absolute() or ".." in pure.parts:
        raise missing
    candidate = root / pure
    try:
        real_root = root.resolve(strict=True)
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise missing from None
    if not real.is_relative_to(real_root) or not real.is_file():
        raise missing
    if any(part.endswith(PARTIAL) for part in (*pure.parts, *real.relative_to(real_root).parts)):
        raise missing  # still being written: not an artifact until it is renamed into place
    return real
