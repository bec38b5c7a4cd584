"""The real embedded Gemma 3 270M exported to GGUF on a worker with no network (slow: its own file, so that
`-n 2 --dist loadfile` starts it first and runs the other export tests beside it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Processes
from tests.e2e.test_export import watch
from tests.offline import NoNetwork


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_embedded_gemma3_exports_q8_0_and_q4_k_m_that_llama_cpp_chats_with(
    processes: Processes, project: Path, offline: NoNetwork
) -> None:
    """The issue's CI check: a short training run of the real Gemma 3 270M, exported to Q8_0 and Q4_K_M on a
    worker with no network, both loaded by llama.cpp and held to the fine-tuned model's answers on the test
    split, and a copy of Q8_0 with an end-of-turn token that does not stop failing the runtime-parity check."""
    import llama_cpp

    from tests.worker.gguf.broken import end_of_turn_that_does_not_stop
    from worker.evaluation import read_test_split
    from worker.export import Tracker
    from worker.gguf.verify import chrf, judge_files, verify_ggufs

    base = processes.api()
    processes.worker(prefix=offline.prefix, **offline.env)
    client = httpx.Client(base_url=base, timeout=60)
    config = {
        "model": {"name": "embedded:gemma-3-270m", "max_seq_length": 256},
        "lora": {"use_gradient_checkpointing": False},
        # One pass over the 48 training conversations at a high rate: enough for the model to answer in the data's
        # style and end its turn (chrF ~90 on the test split), so the gate compares answers, not rambling.
        "training": {
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_steps": 12,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
        },
        "save": {"gguf_quantization": ["Q8_0", "Q4_K_M"]},
    }
    job, _ = watch(client, client.post("/api/training", json=config).json()["id"], 1500)
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    run = project / "runs" / job["id"]
    report = json.loads((run / "metrics/quantization.json").read_text())
    print("EMBEDDED GATE", json.dumps({k: v for k, v in report.items() if k != "files"}))
    for item in report["files"]:
        print("EMBEDDED GGUF", json.dumps({k: item[k] for k in ("quantization", "bytes", "score", "relative_drop")}))
        print("EMBEDDED SAMPLE", json.dumps(item["sample"]))
    verdicts = {item["quantization"]: item for item in report["files"]}
    assert set(verdicts) == {"Q8_0", "Q4_K_M"} and report["examples"] == 8
    assert report["reference"]["score"] > 50  # it learned the answers' style
    # Q8_0 is all but lossless in score: within the drop; Q4_K_M's numbers are recorded, whatever the verdict.
    # Greedy decoding of this small, briefly trained model can still loop after quantization where the merged
    # model stopped (Q8_0 did on 1 of 7 such prompts here: "GH₵18 ÷ 6 = GH₵18 ÷ 6 = ..."): runtime parity
    # fails the file for it, and it is the only reason Q8_0 may fail.
    assert verdicts["Q8_0"]["relative_drop"] <= 0.05, verdicts["Q8_0"]
    assert len(verdicts["Q8_0"]["rambled"]) <= 2, verdicts["Q8_0"]
    assert all(r.startswith("rambles past the end of its turn") for r in verdicts["Q8_0"]["reasons"])
    assert verdicts["Q4_K_M"]["loaded"] and verdicts["Q4_K_M"]["score"] is not None
    assert verdicts["Q4_K_M"]["bytes"] < verdicts["Q8_0"]["bytes"]

    # llama.cpp, here in the test, chats with each file through the gemma-3 template it carries.
    prompt, budget = report["reference"]["sample"]["prompt"], report["max_new_tokens"]
    for quantization, item in verdicts.items():
        llm = llama_cpp.Llama(model_path=str(run / item["path"]), n_ctx=512, seed=0, verbose=False)
        try:
            assert llm.metadata["tokenizer.chat_template"].startswith("{{ bos_token }}")
            out: Any = llm.create_chat_completion(
                messages=prompt, max_tokens=budget, temperature=0.0, repeat_penalty=1.0
            )
        finally:
            llm.close()
        answer = (out["choices"][0]["message"]["content"] or "").strip()
        print("EMBEDDED ANSWER", quantization, json.dumps(answer))
        assert answer and answer == item["sample"]["answer"]  # greedy: what the worker scored
        assert item["sample"]["prompt"].startswith("<bos><start_of_turn>user\n")

    # Runtime parity: the fine-tuned model ends its turns within the budget, so must each file. Q8_0 ends nearly all;
    # the same file with an end-of-turn token that no longer stops (its template's <end_of_turn> is no token of
    # it) ends none, and fails for every one.
    ended = report["reference"]["ended_turn"]
    assert sum(ended) >= 4, ended  # enough ended turns for the check to mean something
    assert verdicts["Q8_0"]["ended_turns"] >= sum(ended) - len(verdicts["Q8_0"]["rambled"])
    broken = end_of_turn_that_does_not_stop(run / verdicts["Q8_0"]["path"], project / "broken.gguf", "<end_of_turn>")
    examples = read_test_split(project / report["test_split"], "expected_terms")[: report["examples"]]
    stages = Tracker.planned(lambda f, d: None, ["Q8_0"], merging=False, scoring=[])
    # The evaluate step's budget, whose answers the files are held to.
    assert report["reference"]["model"] == "fine-tuned (the evaluate step's answers)" and budget == 128
    checked = verify_ggufs(
        {"broken": broken},
        examples,
        chrf,
        stages,
        n_ctx=256 + budget,
        max_new_tokens=budget,
        end_of_turn="<end_of_turn>",
    )
    (verdict,) = judge_files(report["reference_score"], checked, reference_ended=ended)
    print("EMBEDDED BROKEN", json.dumps({k: verdict[k] for k in ("ended_turn", "score", "reasons")}))
    assert verdict["passed"] is False and verdict["rambled"] == [i for i, e in enumerate(ended) if e]
    (reason,) = [r for r in verdict["reasons"] if r.startswith("rambles past the end of its turn")]
    assert "without <end_of_turn>" in reason and "is not a token that ends generation in this file" in reason
    assert offline.attempts() == "", offline.attempts()
