"""The GGUF check answers its prompts together (worker/gguf/batched.py): the same greedy answers as llama.cpp's
own chat completion gives one prompt at a time, on prompts of uneven length, in a group of fewer than all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker import export
from worker.gguf.convert import write_ggufs

SYSTEM = {"role": "system", "content": "You are a patient maths tutor. Answer in one short sentence."}
PROMPTS = [
    [{"role": "user", "content": "What is 5 + 3?"}],
    [SYSTEM, {"role": "user", "content": "Kofi has 12 mangoes and gives a third to Ama. " * 6 + "How many are left?"}],
    [{"role": "user", "content": "Name a colour."}],
    [SYSTEM, {"role": "user", "content": "Ama buys 9 oranges. Each costs GH₵2. How much does Ama pay?"}],
    [{"role": "user", "content": "Count to ten."}],
]
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tracker = export.Tracker.planned(lambda f, d: None, ["Q8_0"], merging=False, scoring=[1])
    return write_ggufs(tiny_model_dir, tmp_path_factory.mktemp("gguf"), ["Q8_0"], tracker)["Q8_0"]


def test_answers_together_equal_one_prompt_at_a_time(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    # Three answers a context: the five prompts take two groups, the second one short.
    monkeypatch.setenv("FORGE_LLAMA_THREADS", "1")
    request, result = tmp_path / "request.json", tmp_path / "result.json"
    request.write_text(json.dumps({"prompts": PROMPTS}))
    code = (
        f"from worker.gguf import __main__ as m, batched; batched.PARALLEL_ANSWERS = 3; "
        f"m.main({['generate', str(tiny_gguf), str(request), str(result), '--max-new-tokens', str(MAX_NEW_TOKENS)]})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "forge-progress 5/5" in done.stderr
    together = json.loads(result.read_text())

    llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=1024, n_threads=1, seed=0, verbose=False)
    alone = [
        llm.create_chat_completion(messages=m, max_tokens=MAX_NEW_TOKENS, temperature=0.0, repeat_penalty=1.0)
        for m in PROMPTS
    ]
    llm.close()
    assert together["predictions"] == [(o["choices"][0]["message"]["content"] or "").strip() for o in alone]
    assert together["ended_turn"] == [o["choices"][0]["finish_reason"] == "stop" for o in alone]
    assert together["completion_tokens"] == sum(o["usage"]["completion_tokens"] for o in alone)
    assert together["completion_tokens"] > 0 and any(together["predictions"])  # something was generated
