"""`python -m worker.gguf quantize|generate ...`: llama.cpp's steps of a GGUF export, each in a subprocess of
the job (worker/gguf/tools.py runs them), so that a llama.cpp abort never ends the job's process."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from worker.gguf import EVAL_MAX_NEW_TOKENS, K_QUANTS, batched


def _threads() -> int:
    """FORGE_LLAMA_THREADS, else the cores this process may use that are idle now (at least one).

    llama.cpp's threads wait for each other by spinning, so a thread on a core that another process keeps busy
    holds up all of them: on a GPU machine with other jobs' exports or compiles beside it, 16 threads on 16 cores
    answered at 8.8 tokens/s on the 270M model (docs/benchmarks.md). The job itself does nothing else meanwhile."""
    from app.core.config import Settings

    configured = Settings().llama_threads
    if configured is not None:
        return configured
    return idle_cores()


def idle_cores(sample_seconds: float = 0.3) -> int:
    """The cores this process may use, less the share of them that other work kept busy over `sample_seconds`."""
    import psutil

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    busy = psutil.cpu_percent(interval=sample_seconds, percpu=True)
    idle = sum(1.0 - busy[core] / 100.0 for core in allowed if core < len(busy))
    return max(1, min(len(allowed), round(idle)))


def _quantize(args: argparse.Namespace) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = _threads()
    params.ftype = getattr(llama_cpp, K_QUANTS[args.quantization])
    code = llama_cpp.llama_model_quantize(args.source.encode(), args.target.encode(), params)
    if code != 0:
        raise SystemExit(f"llama_model_quantize returned {code}")


def _generate(args: argparse.Namespace) -> None:
    import llama_cpp

    from app.files import write_json

    prompts = json.loads(Path(args.request).read_text())["prompts"]
    started = time.monotonic()
    threads = _threads()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=threads, seed=0, verbose=False)
    loaded = time.monotonic()
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        raise SystemExit(f"{args.model} has no chat template (tokenizer.chat_template); it would chat as llama-2")
    # Whether the template's end of turn is one token that ends generation here: else no answer can end on it.
    end_of_turn = llm.tokenize(args.end_of_turn.encode(), add_bos=False, special=True) if args.end_of_turn else []
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    end_of_turn_stops = len(end_of_turn) == 1 and bool(llama_cpp.llama_vocab_is_eog(vocab, end_of_turn[0]))

    def progress(done: int) -> None:
        print(f"forge-progress {done}/{len(prompts)}", file=sys.stderr, flush=True)

    answers = batched.chat_answers(llm, prompts, args.max_new_tokens, threads, progress)
    generated = time.monotonic()
    completion_tokens = sum(len(a.tokens) for a in answers)
    write_json(
        Path(args.result),
        {
            "predictions": [a.text for a in answers],
            "ended_turn": [a.ended_turn for a in answers],
            "end_of_turn_stops": end_of_turn_stops,
            "chat_template": template,
            "prompt": batched.formatter(llm)(messages=prompts[0]).prompt,  # the first prompt as llama.cpp sees it
            "load_seconds": round(loaded - started, 3),
            "generate_seconds": round(generated - loaded, 3),
            "completion_tokens": completion_tokens,
            "tokens_per_second": round(completion_tokens / max(generated - loaded, 1e-9), 1),
        },
    )
    llm.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.gguf", description="llama.cpp steps of a GGUF export")
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
    g.add_argument("--end-of-turn", default="", help="the chat template's end-of-turn token, e.g. <end_of_turn>")
    args = parser.parse_args(argv)
    {"quantize": _quantize, "generate": _generate}[args.command](args)


if __name__ == "__main__":
    main()
