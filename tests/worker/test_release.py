"""release.json as the worker writes it: every hash matches its file, the model's hashes are cached, and the
network verdict comes from the routes the process has (none in a namespace without any)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from app.models import GateName, GateResult, GatesReport, GateStatus
from app.release import HashCache
from app.run_folder import RunFolder
from app.training_config import TrainingConfig
from tests.conftest import ROOT, tiny_config
from tests.offline import can_unshare_network
from worker import release
from worker.protocol import JobSpec


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_run(
    project: Path, model_dir: Path, models_root: Path, cache: Path, job_id: str
) -> tuple[JobSpec, RunFolder]:
    """A job's spec and a run folder holding what a finished job leaves: adapters, a GGUF file, metrics (gates
    among them), a log and a checkpoint (the last two not part of a release)."""
    config = TrainingConfig.model_validate(tiny_config(model_dir))
    run = RunFolder(project / "runs" / job_id, config)
    spec = JobSpec(
        job_id=job_id,
        config=config.model_dump(mode="json"),
        run_dir=str(run.root),
        project_dir=str(project),
        cache_dir=str(cache),
        model_dirs=[str(models_root)],
    )
    run.lora.mkdir(parents=True)
    (run.lora / "adapter_config.json").write_text('{"r": 4}\n')
    (run.lora / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (run.root / "models/quantized").mkdir(parents=True)
    (run.root / "models/quantized/model-Q8_0.gguf").write_bytes(b"GGUF" + os.urandom(2048))
    gates = [
        GateResult(name=GateName.model_performance, status=GateStatus.passed, message="better"),
        GateResult(name=GateName.quantization_verified, status=GateStatus.passed, message="same answers"),
    ]
    report = GatesReport(passed=True, required=True, metric="chrf", gates=gates)
    run.metrics_dir.mkdir(parents=True)
    run.gates.write_text(report.model_dump_json())
    run.training_stats.write_text('{"steps": 4}\n')
    run.logs.mkdir()
    run.log_file.write_text("training...\n")
    (run.output_dir / "checkpoint-4").mkdir(parents=True)
    (run.output_dir / "checkpoint-4" / "optimizer.pt").write_bytes(b"state")
    return spec, run


@pytest.fixture
def run(project: Path, tiny_model_dir: Path, models_root: Path, tmp_path: Path) -> tuple[JobSpec, RunFolder]:
    return finished_run(project, tiny_model_dir, models_root, tmp_path / "cache", "job1")


def test_the_record_hashes_every_file_it_lists(run: tuple[JobSpec, RunFolder], tiny_model_dir: Path) -> None:
    spec, folder = run
    release.write(spec, folder)
    record: dict[str, Any] = json.loads(folder.release.read_text())
    root = folder.root

    names = {item["path"] for item in record["artifacts"]}
    assert names == {
        "models/checkpoints/lora/adapter_config.json",
        "models/checkpoints/lora/adapter_model.safetensors",
        "models/quantized/model-Q8_0.gguf",
        "metrics/gates.json",
        "metrics/training-stats.json",
    }  # no log (it grows after the job), no checkpoint (scratch), not release.json itself
    for item in record["artifacts"]:
        assert item["sha256"] == digest(root / item["path"]) and item["bytes"] == (root / item["path"]).stat().st_size

    assert set(record["datasets"]) == {"train", "val", "test"}
    assert record["datasets"]["train"]["path"] == "data/splits/train.jsonl"
    for item in record["datasets"].values():
        assert item["sha256"] == digest(Path(item["file"]))

    model = record["base_model"]
    assert (model["kind"], model["folder"]) == ("folder", str(tiny_model_dir))
    on_disk = sorted(p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file())
    assert [item["path"] for item in model["files"]] == on_disk
    for item in model["files"]:
        assert item["sha256"] == digest(tiny_model_dir / item["path"])

    assert record["config"] == spec.config and record["seed"] == 3407
    assert (record["job_id"], record["kind"], record["adapters"]) == ("job1", "training", None)
    assert record["gates"]["verdicts"] == {"model-performance": "passed", "quantization-verified": "passed"}
    packages = record["packages"]
    assert packages["torch"] == torch.__version__.split("+")[0] or packages["torch"] == torch.__version__
    assert packages["forge-trainer"] and packages["llama-cpp-python"] and "unsloth" in packages
    assert record["network"]["access"] in ("none", "hub-offline", "available")


def test_model_hashes_are_cached_by_path_size_and_mtime(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    cache = HashCache(tmp_path / "cache")
    assert cache.sha256(weights) == digest(weights)
    (kept,) = cache.dir.iterdir()
    kept.write_text("f" * 64 + "\n")  # a hit reads the cache, not the file
    assert cache.sha256(weights) == "f" * 64
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed again
    assert cache.sha256(weights) == digest(weights)


def test_the_network_verdict_follows_routes_and_the_hub_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = release.network()
    assert found["hf_hub_offline"] is True
    assert found["access"] == ("none" if not found["routes"] else "hub-offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert release.network()["access"] == ("none" if not found["routes"] else "available")
    if not can_unshare_network():
        pytest.skip("`unshare -n` is not allowed here")
    script = "import json; from worker.release import network; print(json.dumps(network()))"
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    alone = json.loads(done.stdout)
    assert (alone["access"], alone["routes"], alone["hf_hub_offline"]) == ("none", [], False)
