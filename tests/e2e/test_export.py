"""GGUF export through the real service, on a worker with no network: train, export, verify, re-export, cancel."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.release import RELEASED_KINDS
from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for
from tests.offline import NoNetwork

TERMINAL = ("succeeded", "failed", "cancelled")


def watch(client: httpx.Client, job_id: str, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll the job as the Forge UI would until it ends; returns it and every distinct status seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/training/jobs/{job_id}").json()
        snapshot = {k: job[k] for k in ("status", "phase", "phase_progress", "phase_detail")}
        if not seen or seen[-1] != snapshot:
            seen.append(snapshot)
        if job["status"] in TERMINAL:
            return job, seen
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s; last seen {seen[-3:]}")


def artifacts(client: httpx.Client, job_id: str) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]}


def no_partial_files(run: Path) -> bool:
    return not [p for p in run.rglob("*") if p.name.endswith(".partial")]


def test_export_verify_reexport_and_cancel_with_no_network(
    processes: Processes, project: Path, tiny_model_dir: Path, offline: NoNetwork
) -> None:
    base = processes.api()
    processes.worker(prefix=offline.prefix, **offline.env)
    client = httpx.Client(base_url=base, timeout=60)
    config = tiny_config(tiny_model_dir, max_steps=4)
    config["save"] = {"merged_path": "models/checkpoints/merged", "gguf_quantization": "q4_k_m"}
    job_id = client.post("/api/training", json=config).json()["id"]

    job, seen = watch(client, job_id, 600)
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    # The export phase reports how far it is, step by step, after training and saving.
    phases = [s["phase"] for s in seen]
    assert phases.index("exporting") > phases.index("saving")
    exporting = [s for s in seen if s["phase"] == "exporting" and s["phase_progress"] is not None]
    assert any("quantizing f16 to Q4_K_M" in s["phase_detail"] for s in exporting)
    assert any("model-Q4_K_M.gguf in llama.cpp" in s["phase_detail"] for s in exporting)
    fractions = [s["phase_progress"] for s in exporting]
    assert fractions == sorted(fractions) and len(set(fractions)) >= 3
    assert job["phase_progress"] is None and job["phase_detail"] is None  # cleared once done

    result = job["result"]
    assert result["exports"] == {
        "lora": "models/checkpoints/lora",
        "merged": "models/checkpoints/merged",
        "gguf": ["models/quantized/model-Q4_K_M.gguf"],
    }
    gate = result["quantization"]
    assert gate["gate"] == "quantization-verified" and gate["status"] in ("passed", "failed")
    (verdict,) = gate["files"]
    reference = gate["reference_score"]
    assert verdict["relative_drop"] == pytest.approx((reference - verdict["score"]) / reference, abs=1e-4)
    assert verdict["passed"] is (verdict["relative_drop"] <= 0.05)

    files = artifacts(client, job_id)
    kinds = {a["kind"] for a in files.values()}
    assert {"lora", "merged", "gguf", "log", "metrics"} <= kinds
    gguf = files["models/quantized/model-Q4_K_M.gguf"]
    run = project / "runs" / job_id
    on_disk = run / gguf["name"]
    assert gguf["kind"] == "gguf" and gguf["bytes"] == on_disk.stat().st_size
    assert gguf["sha256"] == hashlib.sha256(on_disk.read_bytes()).hexdigest()
    head = client.get(f"/api/training/jobs/{job_id}/artifacts/{gguf['name']}", headers={"Range": "bytes=0-3"})
    assert head.status_code == 206 and head.content == b"GGUF"
    # Ollama's Modelfile beside it: the GGUF, the gemma-3 turns, its stops and the job's sequence length.
    assert files["models/quantized/model-Q4_K_M.Modelfile"]["kind"] == "modelfile"
    modelfile = client.get(f"/api/training/jobs/{job_id}/artifacts/models/quantized/model-Q4_K_M.Modelfile").text
    assert "\nFROM ./model-Q4_K_M.gguf\n" in modelfile
    assert "<start_of_turn>model\n{{ .Content }}<end_of_turn>" in modelfile
    assert 'PARAMETER stop "<end_of_turn>"\nPARAMETER stop "<eos>"\n' in modelfile
    assert modelfile.endswith("PARAMETER num_ctx 256\n")
    report = client.get(f"/api/training/jobs/{job_id}/artifacts/metrics/quantization.json").json()
    # Held to the evaluate step's answers (its 4 examples, its 4 new tokens): the merged model answers nothing again.
    assert (report["metric"], report["test_split"], report["examples"]) == ("chrf", "data/splits/test.jsonl", 4)
    assert (report["reference"]["model"], report["max_new_tokens"]) == ("fine-tuned (the evaluate step's answers)", 4)
    samples = [json.loads(line) for line in (project / "runs" / job_id / "metrics/samples.jsonl").open()]
    evaluated = [s for s in samples if s["stage"] == "evaluate"]
    assert report["reference"]["ended_turn"] == [s["ended_turn"] for s in evaluated]
    assert report["reference"]["sample"]["answer"] == evaluated[0]["answer"]
    assert "answering 8 test prompts with the merged model" not in processes.log_text()
    assert report["files"][0]["sample"]["prompt"].startswith("<bos><start_of_turn>user\n")
    assert report["files"][0]["sample"]["prompt"].endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert report["reference"]["score"] == reference
    # Whether each answer ended its turn, the merged model's and the file's (a random model's never do).
    assert len(report["reference"]["ended_turn"]) == len(report["files"][0]["ended_turn"]) == 4
    assert report["files"][0]["modelfile"] == "models/quantized/model-Q4_K_M.Modelfile"
    assert sorted(p.name for p in (run / "models/quantized").iterdir()) == [
        "model-Q4_K_M.Modelfile",
        "model-Q4_K_M.gguf",  # no f16 left
    ]
    assert no_partial_files(run)
    # release.json lists every shipped file with the hash the API serves, and the worker's lack of network.
    record = client.get(f"/api/training/jobs/{job_id}/artifacts/release.json").json()
    assert files["release.json"]["kind"] == "release"
    shipped = {name: a["sha256"] for name, a in files.items() if a["kind"] in RELEASED_KINDS}
    assert {item["path"]: item["sha256"] for item in record["artifacts"]} == shipped
    assert {role: item["sha256"] for role, item in record["datasets"].items()} == {
        role: hashlib.sha256((project / f"data/splits/{role}.jsonl").read_bytes()).hexdigest()
        for role in ("train", "val", "test")
    }
    assert record["base_model"]["folder"] == str(tiny_model_dir) and record["base_model"]["files"]
    assert record["gates"]["verdicts"]["quantization-verified"] == gate["status"]
    assert record["network"]["access"] == ("none" if offline.prefix else "hub-offline")

    # Another format later, from the same adapters, without training again: a job of its own.
    export = client.post(f"/api/training/jobs/{job_id}/exports", json={"gguf_quantization": "Q8_0"}).json()
    export, seen = watch(client, export["id"], 600)
    assert export["status"] == "succeeded", (export["error"], processes.log_text())
    assert (export["kind"], export["source_job_id"], export["step"]) == ("export", job_id, 0)
    assert next(s["phase"] for s in seen if s["phase"] != "queued") in ("starting", "exporting")
    assert "training" not in [s["phase"] for s in seen]
    assert any("merging the LoRA adapters" in (s["phase_detail"] or "") for s in seen)
    exported = artifacts(client, export["id"])
    assert exported["models/quantized/model-Q8_0.gguf"]["kind"] == "gguf"
    assert exported["models/quantized/model-Q8_0.Modelfile"]["kind"] == "modelfile"
    assert "metrics/quantization.json" in exported and not any(a["kind"] == "merged" for a in exported.values())
    assert export["result"]["exports"] == {"gguf": ["models/quantized/model-Q8_0.gguf"]}
    assert export["result"]["quantization"]["files"][0]["quantization"] == "Q8_0"
    # An export job has no evaluate step of its own: its files are held to the source job's evaluate answers, which
    # the merged model does not generate again.
    reexported = client.get(f"/api/training/jobs/{export['id']}/artifacts/metrics/quantization.json").json()
    assert (reexported["reference"]["model"], reexported["examples"], reexported["max_new_tokens"]) == (
        "fine-tuned (the evaluate step's answers)",
        4,
        4,
    )
    assert reexported["reference"]["ended_turn"] == report["reference"]["ended_turn"]
    assert not any("with the merged model" in (s["phase_detail"] or "") for s in seen)
    assert no_partial_files(project / "runs" / export["id"])
    exported_record = client.get(f"/api/training/jobs/{export['id']}/artifacts/release.json").json()
    assert (exported_record["kind"], exported_record["source_job_id"], list(exported_record["datasets"])) == (
        "export",
        job_id,
        ["test"],
    )
    lora = {i["path"]: i["sha256"] for i in record["artifacts"] if i["path"].startswith("models/checkpoints/lora/")}
    adapters = exported_record["adapters"]["files"]
    assert {f"models/checkpoints/lora/{i['path']}": i["sha256"] for i in adapters} == lora

    # An export is cancelled like any job: the converter stops and leaves no half-written file behind.
    slow = client.post(f"/api/training/jobs/{job_id}/exports", json={"gguf_quantization": ["f16", "bf16"]}).json()
    wait_for(
        lambda: "converting" in (client.get(f"/api/training/jobs/{slow['id']}").json()["phase_detail"] or ""),
        300,
        "the export to start converting",
    )
    client.post(f"/api/training/jobs/{slow['id']}/cancel")
    cancelled, _ = watch(client, slow["id"], 180)
    assert cancelled["status"] == "cancelled"
    assert no_partial_files(project / "runs" / slow["id"])
    assert not [a for a in artifacts(client, slow["id"]).values() if a["kind"] == "gguf"]

    # Reverify: the training job's files are as recorded; a byte changed in its GGUF file voids the GGUF check.
    clean = client.post(f"/api/training/jobs/{job_id}/reverify").json()
    assert clean["unchanged"] is True and clean["gguf_check"]["holds"] is True, clean
    data = bytearray(on_disk.read_bytes())
    data[-1] ^= 0xFF
    on_disk.write_bytes(bytes(data))
    tampered = client.post(f"/api/training/jobs/{job_id}/reverify").json()
    assert [(d["path"], d["change"]) for d in tampered["differences"]] == [(gguf["name"], "changed")]
    assert tampered["gguf_check"]["holds"] is False
    assert client.post(f"/api/training/jobs/{slow['id']}/reverify").status_code == 409  # cancelled: no release

    assert offline.attempts() == "", offline.attempts()
    print("NETWORK", "unshare -n" if offline.prefix else "no unshare: proxies and the socket guard only")
    print("TINY GATE", json.dumps(gate))


def test_an_architecture_the_converter_lacks_fails_before_training(
    processes: Processes, project: Path, models_root: Path, tokenizer_dir: Path
) -> None:
    from transformers import AutoTokenizer, OPTConfig

    folder = models_root / "tiny-opt"
    config = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
    config.architectures = ["OPTForCausalLM"]
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)  # the submission checks the data with it
    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    # OPT names no chat template of ours: the job names one, so that the export check is what refuses it.
    request = tiny_config(folder) | {"save": {"gguf_quantization": "Q8_0"}, "dataset": {"chat_template": "gemma-3"}}
    job, seen = watch(client, client.post("/api/training", json=request).json()["id"], 120)
    assert job["status"] == "failed" and job["error"]["code"] == "gguf_architecture_unsupported"
    assert "OPTForCausalLM" in job["error"]["message"] and "save.gguf_path to null" in job["error"]["message"]
    assert "training" not in [s["phase"] for s in seen] and job["step"] == 0
