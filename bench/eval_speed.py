"""The evaluation steps' generation, the old way against the new, on one loaded model in one process.

Both answer the same test split (the demo data's, `--rows` of it) greedily with `--max-new-tokens`, from the model
as the job holds it: loaded by the backend, LoRA attached, in the backend's inference mode.

- `before`: the path before length scheduling: batches of 8 in file order, each padded to its own longest prompt
  (every batch a new input shape, so a compiled model compiles again).
- `after`: the evaluate step's path now: longest prompt first, `evaluation.batch_size: auto` (64 on CUDA) shared
  out evenly, fixed shapes on CUDA (width buckets, short batches filled up).

- `static` (with `--variants`): the `after` path with transformers' static KV cache
  (`cache_implementation="static"`): one cache shape for every decode step. With `--backend unsloth` this is the
  `after` path again: Unsloth's `generate` for FastModel (unsloth/models/vision.py) already picks a static cache
  for Gemma 3, and keeps transformers from compiling the decode step (nor could it: bitsandbytes' 4-bit
  quantizer is not `is_compileable`, so no CUDA graphs through transformers for a 4-bit model).
- `eager` (with `--variants`, Unsloth only): the `after` path inside unsloth_zoo's `unsloth_eager_decode()`, in
  which Unsloth's compiled regions call their eager originals. Unsloth does this for the decode steps of
  Qwen 3.5 and gpt-oss only ("at one token their guard checks and wrapper cost more than the fusion saves");
  this measures it for Gemma 3.

With `--profile FILE`, 16 decode steps of the `--profile-variant` path (default `after`) then run under torch's
profiler: the top operators by CPU time are printed (a decode step of Unsloth's inference mode took 170-200 ms on
an H100/H200 whatever the model's size: overhead, not arithmetic) and the timeline goes to FILE.

Each variant but `before` first scores the answer loss of the split's reference answers, as the steps do, in
its own context: `loss_seconds` per run (the first compiles Unsloth's inference forward: 40-75 s of a cold
baseline step on 2026-12-06) and `test_loss` (the same model, so the same loss to rounding).

Each runs `--repeats` times, interleaved; the first run (`--first`) compiles from nothing, the other one then only
for the shapes it adds. Run it once with each `--first`, each with an empty TORCHINDUCTOR_CACHE_DIR, for both cold
figures. Printed per run: wall time,
generated tokens and tokens/s; then how many answers are identical between the two, and chrF of `after` with
`before` as the reference (100: the same text).

    python bench/eval_speed.py --shape gemma3-4b --rows 40 --json eval-4b.json        # on the GPU machine
    python bench/eval_speed.py --shape gemma3-270m --rows 200
    python bench/eval_speed.py --shape tiny --backend transformers --rows 16 --max-new-tokens 8  # CPU try
    python bench/eval_speed.py --shape gemma3-270m --variants after,eager --repeats 2 --profile decode.json
    python bench/eval_speed.py --shape embedded --backend transformers --rows 24 --max-new-tokens 32  # real answers
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MAX_SEQ_LENGTH = 1024  # the model's, and the answer loss's cut, as a job's max_seq_length


def load(shape: str, backend_name: str, work: Path) -> tuple[Any, Any, Any, Any]:
    """The model as the job holds it for its baseline: loaded, LoRA attached, in inference mode."""
    from app import embedded
    from app.datasets.templates import TEMPLATES
    from app.training_config import TrainingConfig
    from worker import backends, warm_model

    backend = backends.select(backend_name)  # before transformers: Unsloth patches it on import
    import torch

    from bench.shapes import build

    cache = Path(os.environ.get("FORGE_CACHE_DIR", Path.home() / ".cache" / "forge-trainer"))
    if shape == "embedded":
        path = embedded.model_dir(cache)
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        path = build(shape, work / "models" / shape, embedded.tokenizer_dir(cache), device=device)
    config = TrainingConfig.model_validate(
        {"model": {"name": str(path), "max_seq_length": MAX_SEQ_LENGTH}, "backend": backend_name}
    )
    template = TEMPLATES["gemma-3"]
    model, tokenizer = backend.load_model(str(path), config, template)
    model = backend.attach_lora(model, config)
    warm_model.fresh_adapters(model, config.training.seed)
    backend.for_inference(model)
    return backend, model, tokenizer, template


@contextlib.contextmanager
def decoding(variant: str) -> Iterator[None]:
    """The context a variant generates in: unsloth_zoo's eager decode for `eager` (entered with grad off, as it
    asks: it stays off when entered with grad on), else none."""
    if variant != "eager":
        yield
        return
    import torch
    from unsloth_zoo.temporary_patches.utils import eager_decode_active, unsloth_eager_decode

    with torch.inference_mode(), unsloth_eager_decode():
        assert eager_decode_active(), "unsloth_eager_decode did not switch on"
        yield


def run(variant: str, model: Any, tokenizer: Any, examples: list[Any], template: Any, max_new: int) -> dict[str, Any]:
    from app.training_config import EvaluationSection
    from worker import evaluation, generation

    stop = template.stop_word
    loss: dict[str, Any] = {}
    if variant != "before":  # the steps' answer loss first, as score_stage runs it, in the variant's context
        started = time.monotonic()
        with decoding(variant):
            scored = evaluation.answer_loss(
                model,
                tokenizer,
                examples,
                template=template,
                max_length=MAX_SEQ_LENGTH,
                batch_size=generation.LOSS_BATCH,
            )
        loss = {"loss_seconds": round(time.monotonic() - started, 2), "test_loss": scored["test_loss"]}
    started = time.monotonic()
    if variant == "before":  # 8 at a time in file order, each batch padded to its own longest prompt
        stops = generation.stop_ids(tokenizer, stop)
        generate = generation.Generator(
            model, tokenizer, max_new_tokens=max_new, stop_ids=stops, rows=8, fixed_shapes=False
        )
        _, samples = evaluation.score(examples, generate, batch_size=8)
    elif variant == "static":  # the evaluate step's batches and order, with transformers' static KV cache
        settings = EvaluationSection(max_new_tokens=max_new)
        on_gpu = next(model.parameters()).device.type == "cuda"
        rows = generation.batch_rows(len(examples), generation.resolved_batch("auto", on_gpu))
        generate = evaluation.model_generator(model, tokenizer, settings, stop, 0, rows)
        generate.config.cache_implementation = "static"
        order = generation.by_length(generate.lengths([e.prompt for e in examples]))
        _, samples = evaluation.score(examples, generate, batch_size=rows, order=order)
    else:  # the evaluate step's own path, evaluation.batch_size auto (`eager`: Unsloth's compiled regions skipped)
        settings = EvaluationSection(max_new_tokens=max_new)
        with decoding(variant):
            generate, _, samples, _ = evaluation.answer(model, tokenizer, examples, settings, stop, seed=0)
    wall = time.monotonic() - started
    return {
        "variant": variant,
        "wall_seconds": round(wall, 2),
        **loss,
        **generate.throughput(),
        "answers": [s["answer"] for s in samples],
    }


def profile(
    model: Any, tokenizer: Any, examples: list[Any], stop: str, steps: int, trace: Path, variant: str = "after"
) -> None:
    """Where a decode step's time goes: the evaluate step's first batch for `steps` new tokens under torch's
    profiler (CPU and CUDA), after a warm-up run of the same shape, in `variant`'s context (`after` or `eager`);
    the top operators by CPU time are printed and the whole timeline written to `trace` (chrome://tracing,
    Perfetto)."""
    import torch
    from torch.profiler import ProfilerActivity

    from app.training_config import EvaluationSection
    from worker import evaluation

    settings = EvaluationSection(max_new_tokens=steps)
    with decoding(variant):
        evaluation.answer(model, tokenizer, examples, settings, stop, seed=0)  # compiled for these shapes
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    started = time.monotonic()
    with torch.profiler.profile(activities=activities) as prof, decoding(variant):
        generate, *_ = evaluation.answer(model, tokenizer, examples, settings, stop, seed=0)
    wall = time.monotonic() - started
    decode_steps = steps * -(-len(examples) // generate.rows)
    print(
        f"PROFILE {variant}: {decode_steps} decode steps in {wall:.2f} s ({1000 * wall / decode_steps:.1f} ms a step)"
    )
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=30), flush=True)
    if torch.cuda.is_available():  # the GPU's share: a step bound by launches shows little device time
        device_us = sum(e.self_device_time_total for e in table)
        print(f"PROFILE device time {device_us / 1e6:.2f} s of {wall:.2f} s wall")
        print(table.table(sort_by="self_device_time_total", row_limit=15), flush=True)
    prof.export_chrome_trace(str(trace))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="gemma3-270m", help="gemma3-270m, gemma3-4b, tiny, or embedded (real)")
    parser.add_argument("--backend", default="unsloth")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--first", default="before", choices=("before", "after", "eager"), help="the variant that runs first (cold)"
    )
    parser.add_argument("--variants", default="before,after", help="which paths, in this order (also: static, eager)")
    parser.add_argument("--profile", type=Path, help="also profile 16 decode steps; the timeline goes to this file")
    parser.add_argument("--profile-variant", default="after", choices=("after", "eager"), help="the path profiled")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()

    from app.demo_data import write_splits
    from worker.evaluation import read_test_split
    from worker.gguf.verify import chrf

    work = (a.work or Path(tempfile.mkdtemp(prefix="forge-bench-eval-"))).resolve()
    splits = write_splits(work / "data", sizes=(8, 2, a.rows))
    examples = read_test_split(splits["test"], "expected_terms")
    started = time.monotonic()
    backend, model, tokenizer, template = load(a.shape, a.backend, work)
    print(f"loaded {a.shape} with {backend.name} in {time.monotonic() - started:.1f} s", flush=True)
    runs = []
    variants = a.variants.split(",")
    variants = [a.first, *[v for v in variants if v != a.first]] if a.first in variants else variants
    for repeat in range(a.repeats):
        for variant in variants:
            result = run(variant, model, tokenizer, examples, template, a.max_new_tokens)
            result["repeat"] = repeat
            runs.append(result)
            shown = {k: v for k, v in result.items() if k != "answers"}
            print(json.dumps(shown), flush=True)
    last = {r["variant"]: r for r in runs[-len(variants) :]}
    reference = last[variants[0]]  # the others' answers against the first variant's
    summary = {
        "shape": a.shape,
        "backend": backend.name,
        "rows": a.rows,
        "max_new_tokens": a.max_new_tokens,
        "reference": variants[0],
        "identical_answers": {
            v: sum(x == y for x, y in zip(r["answers"], reference["answers"], strict=True)) for v, r in last.items()
        },
        "chrf_vs_reference": {v: round(chrf(r["answers"], reference["answers"]), 2) for v, r in last.items()},
        "cold": variants[0],
        "first_run_seconds": {r["variant"]: r["wall_seconds"] for r in runs[: len(variants)]},
        "tokens_per_second": {v: r["tokens_per_second"] for v, r in last.items()},
        "warm_seconds": {v: r["wall_seconds"] for v, r in last.items()},
        "loss_seconds": {v: [r["loss_seconds"] for r in runs if r["variant"] == v] for v in variants if v != "before"},
        "test_loss": {v: r["test_loss"] for v, r in last.items() if "test_loss" in r},
    }
    print("SUMMARY", json.dumps(summary), flush=True)
    if a.profile:
        profile(model, tokenizer, examples, template.stop_word, 16, a.profile, a.profile_variant)
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
