"""The release record, release.json in a succeeded job's run folder: what the job used (dataset files, base model,
an export's adapters) and what it made (its artifacts), each file with its sha256, beside the config as run, the
seed, package versions, gate verdicts and the worker's network access.

The worker writes it as a job ends (worker/release.py); `reverify` re-hashes what it lists, for
POST /api/training/jobs/{id}/reverify. The GGUF check is not run again there (the API never runs models): bytes
identical to those the `quantization-verified` gate checked answer the same on the same llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.artifacts import finished_files, kind_of, resolve
from app.core.errors import Conflict, NotFound
from app.files import sha256, write_text
from app.models import Job, JobStatus
from app.run_folder import RunFolder

FORMAT = 1  # release.json's own version: bumped when its keys change meaning
# What a release lists of the run folder: what the job ships and its numbers. Logs go on growing after the job
# ends and checkpoints are the trainer's scratch, so neither is part of what was shipped.
RELEASED_KINDS = ("lora", "merged", "gguf", "modelfile", "metrics")

Section = Literal["artifact", "dataset", "base_model", "adapters"]
Change = Literal[
    "changed",  #: the file's bytes differ from the sha256 the record holds
    "missing",  #: a file the record lists is gone
    "added",  #: an artifact of a released kind that the record does not list
]


def entry(name: str, path: Path, digest: str | None = None) -> dict[str, Any]:
    """One file of a release: its name as shown, its size and its sha256 (`digest` when already known)."""
    return {"path": name, "bytes": path.stat().st_size, "sha256": digest or sha256(path)}


def released(folder: RunFolder) -> list[tuple[str, Path]]:
    """The run folder's files that a release lists: LoRA adapters, merged model, GGUF files, metrics."""
    return [(name, path) for name, path in finished_files(folder) if kind_of(name, folder) in RELEASED_KINDS]


def artifact_entries(folder: RunFolder) -> list[dict[str, Any]]:
    return [entry(name, path) for name, path in released(folder)]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class HashCache:
    """sha256 of files that stay the same from job to job (a base model's), kept under the cache folder by path,
    size and mtime: the embedded model's 536 MB take about 0.6 s to hash on a warm page cache, seconds on a cold
    one. Only the worker's record uses it; reverify always reads the bytes."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "hashes"

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
        kept = self.dir / key
        if kept.is_file():
            digest = kept.read_text().strip()
            if len(digest) == 64:
                return digest
        digest = sha256(path)
        write_text(kept, digest + "\n")
        return digest


# -- reverify --------------------------------------------------------------------------------------------------
class Difference(BaseModel):
    section: Section = Field(description="artifact (the run folder), dataset, base_model or adapters (an export's).")
    path: str = Field(description="The file, as release.json names it.")
    change: Change = Field(description="changed (other bytes), missing (gone), or added (an artifact not listed).")
    recorded_sha256: str | None = Field(description="What release.json holds; null for an added file.")
    sha256: str | None = Field(description="What the file hashes to now; null for a missing file.")
    recorded_bytes: int | None = None
    bytes: int | None = None


class GgufCheck(BaseModel):
    """What the quantization-verified gate's verdict is worth now: it is not run again, the hashes prove it."""

    holds: bool = Field(description="Every GGUF file is byte-identical to the one the gate checked.")
    verdict: str | None = Field(description="The gate's recorded status (passed, failed, skipped), if it ran.")
    files: list[str] = Field(description="The GGUF files the record lists.")
    message: str


class Reverification(BaseModel):
    """POST /api/training/jobs/{id}/reverify: release.json's files hashed again and compared."""

    job_id: str
    unchanged: bool = Field(description="No file differs from release.json.")
    checked: int = Field(description="Files hashed again (artifacts, dataset, base model, adapters).")
    differences: list[Difference]
    gguf_check: GgufCheck | None = Field(description="Null when the job made no GGUF file.")
    recorded_at: str = Field(description="When the worker wrote release.json (UTC).")
    checked_at: str


def _compare(section: Section, name: str, path: Path | None, recorded: dict[str, Any]) -> Difference | None:
    found = path is not None and path.is_file()
    digest = sha256(path) if path is not None and found else None
    if digest == recorded["sha256"]:
        return None
    return Difference(
        section=section,
        path=name,
        change="changed" if found else "missing",
        recorded_sha256=recorded["sha256"],
        sha256=digest,
        recorded_bytes=recorded.get("bytes"),
        bytes=path.stat().st_size if path is not None and found else None,
    )


def _artifact(root: Path, name: str) -> Path | None:
    try:
        return resolve(root, name)  # confined to the run folder, whatever release.json says
    except NotFound:
        return None


def _inputs(record: dict[str, Any]) -> list[tuple[Section, str, Path, dict[str, Any]]]:
    """The files the job read, as (section, name, where it is, recorded entry)."""
    found: list[tuple[Section, str, Path, dict[str, Any]]] = [
        ("dataset", item["path"], Path(item["file"]), item) for item in record["datasets"].values()
    ]
    for section in ("base_model", "adapters"):
        files = record.get(section) or {}
        found += [
            (section, item["path"], Path(files["folder"]) / item["path"], item) for item in files.get("files", [])
        ]
    return found


def _gguf_check(record: dict[str, Any], differences: list[Difference]) -> GgufCheck | None:
    files = [item["path"] for item in record["artifacts"] if item["path"].endswith(".gguf")]
    if not files:
        return None
    verdict = (record.get("gates") or {}).get("verdicts", {}).get("quantization-verified")
    broken = [d.path for d in differences if d.section == "artifact" and d.path in files]
    llama, job = record["packages"].get("llama-cpp-python"), record.get("source_job_id") or record["job_id"]
    if broken:
        message = (
            f"{', '.join(broken)} differ from the files the quantization-verified gate checked, so its verdict no "
            f"longer holds for them; export again (POST /api/training/jobs/{job}/exports) to check new files"
        )
    else:
        message = (
            f"every GGUF file is byte-identical to the one the quantization-verified gate checked ({verdict}) "
            f"with llama-cpp-python {llama}: the same bytes answer the same on that llama.cpp, so the check is not "
            f"run again; an export job (POST /api/training/jobs/{job}/exports) runs it afresh (e.g. on a newer "
            "llama.cpp)"
        )
    return GgufCheck(holds=not broken, verdict=verdict, files=files, message=message)


def load(folder: RunFolder, job: Job) -> dict[str, Any]:
    """The job's release.json, or a Conflict saying why it has none."""
    if not folder.release.is_file():
        why = (
            "it succeeded before release records were written, or its file was removed; export it again "
            "(POST .../exports) for a job with one"
            if job.status == JobStatus.succeeded
            else f"it is {job.status.value}: release.json is written when a job succeeds"
        )
        raise Conflict(f"job {job.id} has no release.json: {why}", code="no_release")
    record: dict[str, Any] = json.loads(folder.release.read_text())
    return record


def reverify(folder: RunFolder, job: Job) -> Reverification:
    """Every file release.json lists hashed again; artifacts of a released kind it does not list are `added`."""
    record = load(folder, job)
    differences: list[Difference] = []
    listed = {item["path"]: item for item in record["artifacts"]}
    for name, item in listed.items():
        if (difference := _compare("artifact", name, _artifact(folder.root, name), item)) is not None:
            differences.append(difference)
    for name, path in released(folder):
        if name not in listed:
            size = path.stat().st_size
            differences.append(
                Difference(
                    section="artifact", path=name, change="added", recorded_sha256=None, sha256=sha256(path), bytes=size
                )
            )
    inputs = _inputs(record)
    for section, name, path, item in inputs:
        if (difference := _compare(section, name, path, item)) is not None:
            differences.append(difference)
    return Reverification(
        job_id=job.id,
        unchanged=not differences,
        checked=len(listed) + len(inputs),
        differences=differences,
        gguf_check=_gguf_check(record, differences),
        recorded_at=record["created_at"],
        checked_at=now(),
    )
