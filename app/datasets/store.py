"""Datasets inside the project: uploads stored whole or not at all, reproducible splits, and a listing."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from app.core.errors import Conflict, InvalidInput

UPLOADS = Path("data") / "uploads"
SPLITS = Path("data") / "splits"
SPLIT_NAMES = ("train", "val", "test")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class DatasetInfo(BaseModel):
    path: str = Field(description="Relative to the project; use it as dataset.path.")
    bytes: int
    modified_at: datetime
    format: str | None = Field(description="sharegpt, sharegpt-from-value, openai or alpaca; null if unreadable.")
    rows: int = Field(description="Non-blank lines.")
    valid_rows: int = Field(description="Rows that pass validation.")
    bad_rows: int
    total_tokens: int | None = Field(description="Tokens of the valid rows after templating; null if not measured.")
    mean_tokens: float | None


def upload_name(name: str) -> str:
    """A plain file name ending in .jsonl, or a 422 saying what is allowed."""
    name = name.strip()
    if not name.endswith(".jsonl"):
        name += ".jsonl"
    if not _NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"name {name!r} is not a plain file name: use letters, digits, '.', '_' and '-' (up to 100), "
            "e.g. lessons-v2.jsonl",
            code="invalid_name",
            param="name",
        )
    return name


def stage(source: IO[bytes], target: Path) -> Path:
    """Copy an upload in chunks (never whole in memory) to a hidden name of its own beside `target`: two uploads of
    one name never share a file, and no listing or job sees it before `publish`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".upload", dir=target.parent)
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(source, handle, length=1 << 20)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def publish(staged: Path, target: Path, overwrite: bool) -> None:
    """Move a validated upload in under its name in one step. Without `overwrite` the name must still be free: a
    hard link fails when it is not, so of two uploads of one name exactly one wins and the other gets 409."""
    if overwrite:
        os.replace(staged, target)
        return
    try:
        os.link(staged, target)
    except FileExistsError:
        raise Conflict(
            f"{target.name} was stored by another upload meanwhile; send overwrite=true to replace it", code="exists"
        ) from None
    staged.unlink()


def parse_ratios(value: str) -> tuple[float, float, float]:
    """ "0.8,0.1,0.1" (or "80,10,10"): train, val and test shares, summing to 1 (or 100)."""
    try:
        parts = [float(part) for part in value.split(",")]
    except ValueError:
        parts = []
    total = sum(parts)
    if len(parts) != 3 or any(p < 0 or p != p for p in parts) or total <= 0 or parts[0] == 0:
        raise InvalidInput(
            f"split {value!r} must be three non-negative train,val,test shares with a train share, e.g. 0.8,0.1,0.1",
            code="invalid_split",
            param="split",
        )
    if abs(total - 1) > 1e-6 and abs(total - 100) > 1e-6:
        raise InvalidInput(f"split {value!r} must add up to 1 (or 100)", code="invalid_split", param="split")
    return parts[0] / total, parts[1] / total, parts[2] / total


def split(rows: list[Any], ratios: tuple[float, float, float], seed: int) -> dict[str, list[Any]]:
    """Shuffle with `seed` and cut: the same rows, shares and seed always give the same three lists."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(len(rows) * ratios[1]), round(len(rows) * ratios[2])
    n_train = len(rows) - n_val - n_test
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {name: [rows[i] for i in cuts[name]] for name in SPLIT_NAMES}


def stage_splits(project: Path, parts: dict[str, list[list[dict[str, str]]]]) -> dict[str, Path]:
    """The three splits written to hidden names beside their targets, for `publish_splits` to move in."""
    staged = {}
    for name in SPLIT_NAMES:
        target = project / SPLITS / f"{name}.jsonl"
        body = b"".join(json.dumps({"conversations": t}, ensure_ascii=False).encode() + b"\n" for t in parts[name])
        staged[name] = stage(io.BytesIO(body), target)
    return staged


def publish_splits(project: Path, staged: dict[str, Path]) -> dict[str, str]:
    """Move staged splits into data/splits/; their project-relative paths."""
    written = {}
    for name, path in staged.items():
        target = project / SPLITS / f"{name}.jsonl"
        os.replace(path, target)
        written[name] = str(target.relative_to(project))
    return written


# Listing counts, by (path, size, mtime, model, template): a file is only re-read when it changes.
_counted: dict[tuple[str, int, int, str, str | None], DatasetInfo] = {}
_counted_lock = threading.Lock()


def jsonl_files(project: Path) -> list[Path]:
    data = project / "data"
    if not data.is_dir():
        return []
    found = []
    for path in sorted(data.rglob("*.jsonl")):
        relative = path.relative_to(project)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.resolve().is_relative_to(project):  # a symlink out of the project is not listed
            found.append(path)
    return found


def cached(path: Path, model: str, template: str | None, count: Any) -> DatasetInfo:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, model, template)
    with _counted_lock:
        hit = _counted.get(key)
    if hit is not None:
        return hit
    info: DatasetInfo = count(path, stat)
    with _counted_lock:
        _counted[key] = info
    return info


def info(path: Path, project: Path, stat: os.stat_result, report: Any) -> DatasetInfo:
    return DatasetInfo(
        path=str(path.relative_to(project)),
        bytes=stat.st_size,
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        format=report.format,
        rows=report.rows,
        valid_rows=report.used,
        bad_rows=report.bad,
        total_tokens=report.total_tokens,
        mean_tokens=report.mean_tokens,
    )
