"""The baseline of a base model, scored once per (base model, test split, generation settings) and reused.

The base model's answers do not depend on the job's training data or LoRA settings (LoRA's B matrices start at
zero), so a second job on the same model and test split would score exactly what the first one did. The first
job's report and answers are kept in the project's `.factory/baselines/<key>.json`, on the storage every worker
shares; a later job with the same key copies them (its metrics/baseline.json names the job they came from).

The key covers everything the baseline's numbers depend on: the backend and the model section (4-bit or not,
sequence length), the model's files (names, sizes, modification times) or the hub snapshot it loads, the chat
template, every scored test example (the split's content, `max_examples`, the glossary's terms), the generation
settings (the inference prompts too, answered in the same batches), the seed when sampling, the device that answers
(a CPU's float32 and a GPU's bfloat16 round differently, and so do two kinds of GPU), and the versions of this code
and of torch and transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from app.files import write_json
from app.run_folder import RunFolder
from app.training_config import TrainingConfig
from worker import evaluation
from worker.evaluation import TestExample

log = logging.getLogger("forge.worker.job")

# The inference prompts too: both steps answer them in the test split's batches (worker/evaluation.py).
GENERATION = ("batch_size", "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "inference_prompts")


def store(project: Path) -> Path:
    return project / ".factory" / "baselines"


def _versions() -> dict[str, str]:
    found = {}
    for package in ("forge-trainer", "torch", "transformers", "peft", "unsloth"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def model_fingerprint(model_path: str) -> Any:
    """The model's files as (name, bytes, mtime) for a folder; for a hub id, the cached snapshot it resolves to."""
    folder = Path(model_path)
    if folder.is_dir():
        stats = {str(p.relative_to(folder)): p.stat() for p in folder.rglob("*") if p.is_file()}
        return sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats.items())
    try:
        from huggingface_hub import try_to_load_from_cache

        snapshot = try_to_load_from_cache(model_path, "config.json")
    except Exception:  # a name the hub client refuses: the key then rests on the name alone
        snapshot = None
    return str(snapshot) if isinstance(snapshot, str) else model_path


def device_of(model: Any) -> str:
    """Where `model` answers: "cpu", or the GPU's name."""
    import torch

    device = next(model.parameters()).device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def key(
    config: TrainingConfig, backend: str, model_path: str, template: str, examples: list[TestExample], device: str
) -> str:
    settings = config.evaluation
    parts = {
        "backend": backend,
        "device": device,
        "model": config.model.model_dump(mode="json"),
        "model_files": model_fingerprint(model_path),
        "template": template,
        "examples": [asdict(example) for example in examples],
        "generation": settings.model_dump(mode="json", include=set(GENERATION)),
        "seed": config.training.seed if settings.do_sample else None,
        "versions": _versions(),
    }
    return digest(parts)


def digest(parts: dict[str, Any]) -> str:
    """A short, stable key for what `parts` holds (also the warm model's: worker/warm_model.py)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def find(project: Path, digest: str) -> dict[str, Any] | None:
    """A kept baseline (its job id, report and answers), or None when none is kept or it cannot be read."""
    path = store(project) / f"{digest}.json"
    try:
        kept: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or not {"job_id", "report", "samples"} <= kept.keys():
        return None
    return kept


def keep(project: Path, digest: str, job_id: str, report: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    """Keep a scored baseline for later jobs; a store that cannot be written costs only the reuse."""
    try:
        write_json(store(project) / f"{digest}.json", {"job_id": job_id, "report": report, "samples": samples})
    except OSError as exc:
        log.warning("baseline: not kept for reuse (%s)", exc)


def reuse(project: Path, digest: str, folder: RunFolder) -> dict[str, Any] | None:
    """A kept baseline written into this job's run folder as its own (metrics/baseline.json naming the job it came
    from, its answers in samples.jsonl); None when none is kept."""
    kept = find(project, digest)
    if kept is None:
        return None
    report: dict[str, Any] = {**kept["report"], "reused_from": {"job_id": kept["job_id"], "key": digest}}
    write_json(folder.metrics("baseline"), report)
    evaluation.write_samples(folder.samples, "baseline", kept["samples"])
    log.info("baseline: reused from job %s (same model, test split and generation settings)", kept["job_id"])
    return report
