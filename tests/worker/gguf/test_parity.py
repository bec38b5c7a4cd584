"""Runtime parity in the quantization-verified gate: a GGUF must end its turn wherever the merged model does.

A random tiny model never ends a turn, so this one is made to end every turn at once: its layers add nothing
and its logits read one embedding dimension, largest for <end_of_turn>. Its merged (transformers) answers and
its intact GGUF's end their turns; the same GGUF with an end-of-turn token that no longer stops runs to the limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.datasets.templates import TEMPLATES
from tests.worker.gguf.broken import end_of_turn_that_does_not_stop
from worker import export
from worker.evaluation import TestExample as Example
from worker.gguf.convert import write_ggufs
from worker.gguf.modelfile import END_OF_TURN
from worker.gguf.verify import chrf, judge_files, quantization_gate, verify_ggufs

END_OF_TURN_TOKEN = END_OF_TURN["gemma-3"]
PROMPTS = ["What is 5 + 3?", "Name a colour."]


@pytest.fixture(scope="module")
def turn_ender(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma 3, rewired so that greedy decoding answers <end_of_turn> to anything."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("turn-ender")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:  # attention and MLP outputs zero: the last hidden state is its embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(-1.0)  # Gemma's norm scales by (1 + w): only dimension 0 reaches the logits
        model.model.norm.weight[0] = 0.0
        embeddings = model.model.embed_tokens.weight  # tied: the logit of token t is proportional to E[t, 0]
        embeddings[:, 0] = 1.0
        embeddings[tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN), 0] = 2.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_gguf_whose_end_of_turn_does_not_stop_fails_as_rambling(turn_ender: Path, tmp_path: Path) -> None:
    tracker = export.Tracker.planned(lambda f, d: None, ["Q8_0"], merging=False, scoring=[1])
    examples = [Example([{"role": "user", "content": p}], "8", []) for p in PROMPTS]
    answers, merged_ended = export.merged_predictions(
        turn_ender, [e.prompt for e in examples], TEMPLATES["gemma-3"].stop_word, lambda f: None
    )
    assert answers == ["", ""] and merged_ended == [True, True]  # the reference ends every turn at once

    intact = write_ggufs(turn_ender, tmp_path, ["Q8_0"], tracker)["Q8_0"]
    broken = end_of_turn_that_does_not_stop(intact, tmp_path / "model-broken.gguf", END_OF_TURN_TOKEN)
    files = {"Q8_0": intact, "broken": broken}
    checked = verify_ggufs(files, examples, chrf, tracker, n_ctx=256, max_new_tokens=16, end_of_turn=END_OF_TURN_TOKEN)
    by_name = {item["quantization"]: item for item in checked}
    assert by_name["Q8_0"]["ended_turn"] == [True, True] and by_name["Q8_0"]["end_of_turn_stops"] is True
    assert by_name["broken"]["ended_turn"] == [False, False] and by_name["broken"]["end_of_turn_stops"] is False
    assert by_name["broken"]["chat_template"]  # it still carries a template: only the turn's end is broken

    verdicts = {v["quantization"]: v for v in judge_files(0.0, checked, reference_ended=merged_ended)}
    assert (verdicts["Q8_0"]["passed"], verdicts["Q8_0"]["rambled"], verdicts["Q8_0"]["reasons"]) == (True, [], [])
    (reason,) = verdicts["broken"]["reasons"]
    assert verdicts["broken"]["passed"] is False and verdicts["broken"]["rambled"] == [0, 1]
    assert reason.startswith("rambles past the end of its turn: 2 of 2 answers the fine-tuned model ended within 16")
    assert "without <end_of_turn>" in reason
    assert "<end_of_turn> is not a token that ends generation in this file" in reason
    gate = quantization_gate(0.0, list(verdicts.values()))
    assert gate.status.value == "failed" and "rambles past the end of its turn" in gate.message
    assert {f["quantization"]: f["ended_turns"] for f in gate.details["files"]} == {"Q8_0": 2, "broken": 0}
