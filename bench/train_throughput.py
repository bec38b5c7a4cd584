"""Training throughput and peak GPU memory: the service's worker against Unsloth called directly and against
transformers + PEFT + bitsandbytes 4-bit, on one GPU, same model shape, data and settings. Also the time from
submitting a job to its first training step, on a cold worker and for a second job on the same worker.

Each stack runs in its own process (Unsloth patches transformers on import). Models are random weights of the
real architectures (bench/shapes.py) with the real Gemma 3 tokenizer; the data are multi-turn conversations of
about `--tokens` tokens from the demo generator. tokens/s counts real (non-padding) tokens: the median over the
steps after `--warmup` of (tokens in the step / step time), which leaves out compiling.

    python bench/train_throughput.py --shape gemma3-4b --batch 4 --tokens 1200 --stacks unsloth hf worker
    python bench/train_throughput.py --shape gemma3-270m --batch 8 --tokens 360 --json out.json
    python bench/train_throughput.py --shape gemma3-270m --stacks unsloth worker --jobs 1 --repeats 3

With `--repeats N` the stacks run N times, interleaved (unsloth, worker, unsloth, worker, ...), so that a drift of
the machine touches both; the ratios are then those of the stacks' medians, and each repeat's ratio is printed too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none"}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_data(path: Path, tokens: int, rows: int, tokenizer_dir: Path) -> None:
    """Conversations of about `tokens` tokens each: demo questions and answers, several turns per row."""
    from transformers import AutoTokenizer

    from app.demo_data import write_splits

    source = path.parent / "source"
    write_splits(source, sizes=(400, 1, 1))
    turns = [json.loads(line)["conversations"] for line in (source / "splits" / "train.jsonl").open()]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    per_turn = statistics.mean(len(tokenizer(t[0]["content"] + t[1]["content"])["input_ids"]) + 8 for t in turns[:50])
    per_row = max(1, round(tokens / per_turn))
    with path.open("w") as out:
        for i in range(rows):
            conversation = [turn for j in range(per_row) for turn in turns[(i * per_row + j) % len(turns)][-2:]]
            out.write(json.dumps({"conversations": conversation}) + "\n")


def steady_tokens_per_second(history: list[dict[str, Any]], warmup: int) -> float:
    """Median over steps after warm-up of tokens in the step / its duration."""
    rates = []
    for before, after in itertools.pairwise(history):
        if after["step"] <= warmup or after["time"] <= before["time"]:
            continue
        rates.append((after["tokens_seen"] - before["tokens_seen"]) / (after["time"] - before["time"]))
    return round(statistics.median(rates), 1) if rates else float("nan")


# -- one stack in this process ------------------------------------------------------------------------
def _recorder() -> Any:
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.history.append(
                {"step": state.global_step, "time": time.time(), "tokens_seen": int(state.num_input_tokens_seen)}
            )

    return Recorder()


def _sft_args(a: argparse.Namespace, out: Path) -> Any:
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        max_steps=a.steps,
        learning_rate=2e-4,
        warmup_steps=2,
        optim="adamw_8bit",
        logging_steps=1,
        bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        max_length=a.max_seq_length,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        include_num_input_tokens_seen="non_padding",
        dataset_text_field="text",
        seed=3407,
    )


def _texts(tokenizer: Any, data: Path) -> Any:
    from datasets import Dataset

    rows = [json.loads(line)["conversations"] for line in data.open()]
    texts = [tokenizer.apply_chat_template(c, tokenize=False).removeprefix("<bos>") for c in rows]
    return Dataset.from_dict({"text": texts})


def run_unsloth(a: argparse.Namespace) -> dict[str, Any]:
    """Unsloth as its notebooks use it: FastModel, get_peft_model, SFTTrainer, train_on_responses_only."""
    import torch
    import unsloth  # noqa: F401
    from trl import SFTTrainer
    from unsloth import FastModel
    from unsloth.chat_templates import get_chat_template, train_on_responses_only

    model, tokenizer = FastModel.from_pretrained(a.model, max_seq_length=a.max_seq_length, load_in_4bit=True)
    model = FastModel.get_peft_model(
        model, target_modules=PROJECTIONS, use_gradient_checkpointing="unsloth", random_state=3407, **LORA
    )
    tokenizer = get_chat_template(tokenizer, chat_template="gemma-3")
    recorder = _recorder()
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=_texts(tokenizer, a.data),
        args=_sft_args(a, a.work / "unsloth"),
        callbacks=[recorder],
    )
    trainer = train_on_responses_only(
        trainer, instruction_part="<start_of_turn>user\n", response_part="<start_of_turn>model\n"
    )
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"history": recorder.history, "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def run_hf(a: argparse.Namespace) -> dict[str, Any]:
    """The usual QLoRA stack without Unsloth: bitsandbytes 4-bit NF4, PEFT, gradient checkpointing, TRL."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTTrainer

    from app.datasets.encoding import Markers, encode  # the loss mask of the service's transformers backend
    from app.datasets.templates import TEMPLATES

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=quant, dtype=torch.bfloat16)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(target_modules=PROJECTIONS, task_type="CAUSAL_LM", **LORA))
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    from datasets import Dataset

    texts = _texts(tokenizer, a.data)["text"]
    markers = Markers.of(tokenizer, TEMPLATES["gemma-3"])
    rows = [encode(tokenizer, t, markers, a.max_seq_length) for t in texts]
    dataset = Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})
    recorder = _recorder()
    args = _sft_args(a, a.work / "hf")
    trainer = SFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=dataset, args=args, callbacks=[recorder]
    )
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"history": recorder.history, "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def run_worker(a: argparse.Namespace) -> dict[str, Any]:
    """The service end to end: real API and worker processes, two identical jobs one after the other."""
    from bench.service import run_to_end, wait_for_api

    project = a.work / "project"
    (project / "data").mkdir(parents=True, exist_ok=True)
    dataset = project / "data" / "bench.jsonl"
    dataset.write_bytes(a.data.read_bytes())
    env = dict(
        os.environ,
        FORGE_PROJECT_DIR=str(project),
        FORGE_MODEL_DIRS=json.dumps([str(Path(a.model).parent)]),
        FORGE_PORT=str(a.port),
        FORGE_WORKER_POLL_SECONDS="0.2",
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", mod], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for mod, log in (("app", (a.work / "api.log").open("wb")), ("worker", (a.work / "worker.log").open("wb")))
    ]
    base = f"http://127.0.0.1:{a.port}"
    config = {
        "model": {"name": a.model, "max_seq_length": a.max_seq_length, "load_in_4bit": True},
        "lora": {**LORA, "target_modules": PROJECTIONS, "use_gradient_checkpointing": "unsloth"},
        "training": {
            "per_device_train_batch_size": a.batch,
            "gradient_accumulation_steps": 1,
            "max_steps": a.steps,
            "warmup_steps": 2,
            "logging_steps": 1,
        },
        "dataset": {"path": "data/bench.jsonl"},
        "save": {"merged_path": None, "gguf_path": None},
        "evaluation": {"baseline": False, "evaluate": False},  # submission to first step means training's
        "backend": a.worker_backend,
    }
    jobs = []
    try:
        wait_for_api(base)
        for attempt in range(a.jobs):
            submitted = time.time()
            job = run_to_end(base, config)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {attempt + 1} {job['status']}: {job.get('error')}")
            run = project / "runs" / job["id"]
            stats = json.loads((run / "metrics" / "training-stats.json").read_text())
            history = [e for e in stats["log_history"] if "loss" in e]
            jobs.append(
                {
                    "history": history,
                    "peak_gpu_memory_gib": stats.get("peak_gpu_memory_gib"),
                    "submit_to_first_step_s": round(history[0]["time"] - submitted, 1),
                }
            )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    return {"jobs": jobs, **jobs[0]}


# -- the driver -----------------------------------------------------------------------------------------
def of_stack(rows: list[dict[str, Any]], stack: str) -> list[dict[str, Any]]:
    """The rows of one stack that measured something, in the order they ran."""
    return [r for r in rows if r["stack"] == stack and "tokens_per_s" in r]


def medians(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each stack's median tokens/s and peak memory over its repeats."""
    found = {}
    for stack in dict.fromkeys(r["stack"] for r in rows):
        measured = of_stack(rows, stack)
        if measured:
            found[stack] = {
                key: statistics.median(r[key] for r in measured) for key in ("tokens_per_s", "peak_gpu_memory_gib")
            }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="gemma3-270m", help="gemma3-270m, gemma3-4b, llama3.1-8b")
    parser.add_argument("--stacks", nargs="+", default=["unsloth", "hf", "worker"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=360, help="about this many tokens per conversation")
    parser.add_argument("--max-seq-length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--jobs", type=int, default=2, help="jobs one after the other on the same worker")
    parser.add_argument("--repeats", type=int, default=1, help="run the stacks this many times, interleaved")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--work", type=Path, help="where models, data and logs go (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker-backend", default="unsloth", help="the worker stack's backend")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    a = parser.parse_args()

    if a.one:  # a child: one stack
        result = {"unsloth": run_unsloth, "hf": run_hf, "worker": run_worker}[a.one](a)
        (a.work / f"{a.one}.json").write_text(json.dumps(result))
        return

    from app import embedded
    from bench.shapes import build

    a.work = (a.work or Path(tempfile.mkdtemp(prefix="forge-bench-train-"))).resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("FORGE_CACHE_DIR", Path.home() / ".cache" / "forge-trainer"))
    tokenizer_dir = embedded.tokenizer_dir(cache)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: only to try the script out
    model = build(a.shape, a.work / "models" / a.shape, tokenizer_dir, device=device)
    data = a.work / "data.jsonl"
    write_data(data, a.tokens, max(64, a.batch * (a.steps + 2)), tokenizer_dir)
    rows = []
    for repeat, stack in itertools.product(range(a.repeats), a.stacks):
        args = [sys.executable, __file__, "--one", stack, "--model", str(model), "--data", str(data)]
        args += ["--work", str(a.work), "--batch", str(a.batch), "--steps", str(a.steps)]
        args += ["--max-seq-length", str(a.max_seq_length), "--jobs", str(a.jobs), "--port", str(a.port)]
        args += ["--worker-backend", a.worker_backend]
        began = time.time()
        done = subprocess.run(args, cwd=ROOT, check=False)
        row: dict[str, Any] = {"stack": stack, "shape": a.shape, "batch": a.batch, "repeat": repeat}
        row["wall_s"] = round(time.time() - began)
        if done.returncode != 0:
            row["error"] = f"exit code {done.returncode}"
        else:
            result = json.loads((a.work / f"{stack}.json").read_text())
            row["tokens_per_s"] = steady_tokens_per_second(result["history"], a.warmup)
            row["peak_gpu_memory_gib"] = round(result["peak_gpu_memory_gib"] or 0, 2)
            for i, job in enumerate(result.get("jobs", [])):
                row[f"job{i + 1}_submit_to_first_step_s"] = job["submit_to_first_step_s"]
                row[f"job{i + 1}_tokens_per_s"] = steady_tokens_per_second(job["history"], a.warmup)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.json:  # after each stack, so a run cut short keeps what it measured
            a.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    by = medians(rows)
    ratios: dict[str, Any] = {}
    if a.repeats > 1 and {"worker", "unsloth"} <= set(a.stacks):
        ratios["worker_vs_unsloth_tokens_each_repeat"] = [
            round(w["tokens_per_s"] / u["tokens_per_s"], 3)
            for u, w in zip(of_stack(rows, "unsloth"), of_stack(rows, "worker"), strict=False)
        ]
    if "worker" in by and "unsloth" in by:
        ratios["worker_vs_unsloth_tokens"] = round(by["worker"]["tokens_per_s"] / by["unsloth"]["tokens_per_s"], 3)
    if "worker" in by and "hf" in by:
        ratios["worker_vs_hf_tokens"] = round(by["worker"]["tokens_per_s"] / by["hf"]["tokens_per_s"], 3)
        ratios["worker_vs_hf_memory"] = round(by["worker"]["peak_gpu_memory_gib"] / by["hf"]["peak_gpu_memory_gib"], 3)
    if "unsloth" in by and "hf" in by:
        ratios["unsloth_vs_hf_tokens"] = round(by["unsloth"]["tokens_per_s"] / by["hf"]["tokens_per_s"], 3)
    print(json.dumps({"ratios": ratios}), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
