"""A job's files under runs/<job_id>/: listing with kind and sha256, and confined path resolution."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from app.api.schemas import ArtifactRead
from app.core.errors import NotFound
from app.files import PARTIAL, sha256
from app.run_folder import MODELFILE_SUFFIX, RunFolder

# sha256 of big files is costly: remember it per (path, size, mtime).
_digest_cache: dict[tuple[str, int, int], str] = {}


def kind_of(name: str, folder: RunFolder) -> str:
    """lora, merged, gguf, modelfile, checkpoint, log, metrics, release or other: by where in the run folder a file
    is."""
    if name.endswith(".gguf"):
        return "gguf"
    if name.endswith(MODELFILE_SUFFIX):
        return "modelfile"  # an Ollama Modelfile, beside its GGUF
    if folder.root / name == folder.release:
        return "release"
    places = [
        (folder.lora, "lora"),
        (folder.merged, "merged"),
        (folder.gguf_dir, "gguf"),
        (folder.logs, "log"),
        (folder.metrics_dir, "metrics"),
        (folder.output_dir, "checkpoint"),
    ]
    path = folder.root / name
    for place, kind in places:
        if place is not None and path.is_relative_to(place):
            return kind
    return "other"


def _sha256(path: Path, stat: os.stat_result) -> str:
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        _digest_cache[key] = sha256(path)
    return _digest_cache[key]


def finished_files(folder: RunFolder) -> Iterator[tuple[str, Path]]:
    """(name relative to the run folder, path) of every finished file: no links, nothing still being written."""
    root = folder.root
    if not root.is_dir():
        return
    real_root = root.resolve()
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if not path.resolve().is_relative_to(real_root):
            continue
        name = path.relative_to(root).as_posix()
        if any(part.endswith(PARTIAL) for part in PurePosixPath(name).parts):
            continue  # still being written (a GGUF, a scratch merged model): not an artifact yet
        yield name, path


def listing(folder: RunFolder) -> list[ArtifactRead]:
    """Every finished file of a run folder, with its kind and sha256."""
    items = []
    for name, path in finished_files(folder):
        stat = path.stat()
        items.append(
            ArtifactRead(name=name, kind=kind_of(name, folder), bytes=stat.st_size, sha256=_sha256(path, stat))
        )
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
