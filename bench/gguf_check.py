"""The GGUF check's generation: prompts answered together (worker/gguf/batched.py, what the check runs) against
llama-cpp-python's chat completion one prompt at a time (what it ran before), interleaved on one loaded file.

    python bench/gguf_check.py runs/<job>/models/quantized/model-Q8_0.gguf --rows 32 --threads 1 --repeats 2

The prompts are the demo test split's (app/demo_data.py); a file without a chat template cannot be checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_at_a_time(llm: Any, prompts: list[Any], max_new_tokens: int) -> tuple[list[str], int]:
    answers, tokens = [], 0
    for messages in prompts:
        out: Any = llm.create_chat_completion(
            messages=messages, max_tokens=max_new_tokens, temperature=0.0, repeat_penalty=1.0
        )
        answers.append((out["choices"][0]["message"]["content"] or "").strip())
        tokens += out["usage"]["completion_tokens"]
    return answers, tokens


def together(llm: Any, prompts: list[Any], max_new_tokens: int, threads: int) -> tuple[list[str], int]:
    from worker.gguf.batched import chat_answers

    answers = chat_answers(llm, prompts, max_new_tokens, threads)
    return [a.text for a in answers], sum(len(a.tokens) for a in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    a = parser.parse_args()

    import llama_cpp

    from app.demo_data import write_splits

    data = Path(tempfile.mkdtemp(prefix="forge-bench-gguf-"))
    write_splits(data, sizes=(8, 4, a.rows))
    rows = [json.loads(line) for line in (data / "splits/test.jsonl").read_text().splitlines()]
    prompts = [row["conversations"][:-1] for row in rows]
    llm = llama_cpp.Llama(model_path=str(a.gguf), n_ctx=2048, n_threads=a.threads, seed=0, verbose=False)
    seconds: dict[str, list[float]] = {"one_at_a_time": [], "together": []}
    answers: dict[str, list[str]] = {}
    tokens: dict[str, int] = {}
    for _ in range(a.repeats):
        for name in seconds:
            started = time.perf_counter()
            if name == "together":
                answers[name], tokens[name] = together(llm, prompts, a.max_new_tokens, a.threads)
            else:
                answers[name], tokens[name] = one_at_a_time(llm, prompts, a.max_new_tokens)
            seconds[name].append(time.perf_counter() - started)
            print(f"{name}: {seconds[name][-1]:.1f} s, {tokens[name]} tokens", flush=True)
    best = {name: min(runs) for name, runs in seconds.items()}
    summary = {
        "gguf": a.gguf.name,
        "rows": a.rows,
        "max_new_tokens": a.max_new_tokens,
        "threads": a.threads,
        "seconds_best": {name: round(s, 2) for name, s in best.items()},
        "tokens_per_second": {name: round(tokens[name] / best[name], 1) for name in best},
        "speedup": round(best["one_at_a_time"] / best["together"], 2),
        "identical_answers": sum(x == y for x, y in zip(answers["together"], answers["one_at_a_time"], strict=True)),
    }
    print("SUMMARY", json.dumps(summary))


if __name__ == "__main__":
    main()
