"""Each GGUF loaded by llama.cpp, answering the test split through the chat template inside the file, scored
against the fine-tuned model (the evaluate step's answers, or the merged model's): the spec's
`quantization-verified` gate.

Runtime parity: each answer either ends its turn (llama.cpp stops at a token that ends generation) or runs to
the token budget. Long answers may be cut there legitimately, so a file is held to the fine-tuned model prompt by
prompt: where that model ended its turn within the budget and the GGUF ran to the limit instead, the file
rambles past the end of its turn (a template or stop token that does not end the turn) and fails."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.models import GateName, GateResult, GateStatus
from worker.evaluation import Conversation, TestExample
from worker.gguf import EVAL_MAX_NEW_TOKENS, ExportError, Stages, StepProgress, StopCheck, never_stop
from worker.gguf.tools import LLAMA_CPP, ratio, run_tool

# The spec's limit: "<5% accuracy drop from merged"; jobs use gates.quantization_max_drop, this is its default.
QUANTIZATION_MAX_DROP = 0.05
# What a GGUF is asked when there is no test split: it must still load and answer in its chat format.
SMOKE_PROMPT = [{"role": "user", "content": "What is 5 + 3?"}]
# What the job's result and metrics/gates.json keep of each file's verdict; metrics/quantization.json has it all.
SUMMARY_KEYS = ("quantization", "path", "bytes", "score", "relative_drop", "ended_turns", "passed", "reasons")

Score = Callable[[Sequence[str], Sequence[str]], float]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100): character n-gram F-score, robust on short answers and any language."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)


def gguf_predictions(
    gguf_file: Path,
    prompts: Sequence[Conversation],
    max_new_tokens: int,
    n_ctx: int,
    progress: StepProgress,
    check_stop: StopCheck = never_stop,
    end_of_turn: str = "",
) -> dict[str, Any]:
    """Load the GGUF in llama.cpp and answer each prompt greedily through the chat template inside the file.

    Returns {"predictions", "ended_turn" (per answer: it ended on a token that ends generation, not at the
    limit), "end_of_turn_stops" (`end_of_turn` is one such token in the file), "chat_template", "prompt" (the
    first prompt as llama.cpp formats it), "load_seconds", "generate_seconds", "completion_tokens",
    "tokens_per_second"}.
    """
    with tempfile.TemporaryDirectory(prefix="forge-gguf-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"prompts": list(prompts)}))
        options = ["--n-ctx", str(n_ctx), "--max-new-tokens", str(max_new_tokens), "--end-of-turn", end_of_turn]
        run_tool(
            [*LLAMA_CPP, "generate", str(gguf_file), str(request), str(result), *options],
            f"llama.cpp loading and running {gguf_file.name}",
            parse=ratio(r"^forge-progress (\d+)/(\d+)"),
            progress=progress,
            check_stop=check_stop,
        )
        return dict(json.loads(result.read_text()))


def verify_ggufs(
    files: dict[str, Path],
    examples: Sequence[TestExample],
    score: Score,
    stages: Stages,
    *,
    n_ctx: int,
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    check_stop: StopCheck = never_stop,
    end_of_turn: str = "",
) -> list[dict[str, Any]]:
    """Each GGUF loaded by llama.cpp and scored on the examples (on a smoke prompt when there are none), with
    whether each answer ended its turn; `end_of_turn`: the chat template's (<end_of_turn>, <|im_end|>, ...)."""
    prompts = [e.prompt for e in examples] or [SMOKE_PROMPT]
    checked = []
    for quantization, path in files.items():
        step = stages.stage("verify", f"loading {path.name} in llama.cpp and answering {len(prompts)} prompt(s)")
        entry: dict[str, Any] = {"quantization": quantization, "file": path.name, "bytes": path.stat().st_size}
        try:
            run = gguf_predictions(path, prompts, max_new_tokens, n_ctx, step, check_stop, end_of_turn)
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
            ended_turn=run["ended_turn"],
            ended_turns=sum(run["ended_turn"]),
            end_of_turn=end_of_turn,
            end_of_turn_stops=run["end_of_turn_stops"],
            max_new_tokens=max_new_tokens,
        )
        entry["predictions"] = predictions
        checked.append(entry)
    return checked


def relative_drop(reference: float, score: float) -> float:
    """How much worse than the reference, as a fraction of it (negative: better)."""
    if reference > 0:
        return (reference - score) / reference
    return 0.0 if score >= reference else math.inf


def rambled(item: dict[str, Any], reference_ended: Sequence[bool] | None) -> list[int]:
    """The prompts on which the merged model ended its turn within the token budget and this GGUF did not."""
    if reference_ended is None or not item.get("loaded") or "ended_turn" not in item:
        return []
    pairs = enumerate(zip(reference_ended, item["ended_turn"], strict=True))
    return [i for i, (merged, gguf) in pairs if merged and not gguf]


def rambling_reason(item: dict[str, Any], prompts: Sequence[int], reference_ended: Sequence[bool]) -> str:
    end_of_turn = item.get("end_of_turn") or "an end-of-turn token"
    reason = (
        f"rambles past the end of its turn: {len(prompts)} of {sum(reference_ended)} answers the fine-tuned model "
        f"ended within {item.get('max_new_tokens')} new tokens ran to that limit here without {end_of_turn} "
        f"(prompts {', '.join(map(str, prompts[:10]))})"
    )
    if item.get("end_of_turn_stops") is False:
        reason += f"; {end_of_turn} is not a token that ends generation in this file (its template or vocabulary)"
    return reason


def judge_files(
    reference_score: float | None,
    files: Sequence[dict[str, Any]],
    max_drop: float = QUANTIZATION_MAX_DROP,
    max_bytes: int | None = None,
    reference_ended: Sequence[bool] | None = None,
) -> list[dict[str, Any]]:
    """A verdict per GGUF: it loads in llama.cpp with its chat template, ends its turn wherever the merged model
    did (`reference_ended`, per prompt; see rambled), scores at most `max_drop` (relative) below the merged
    model, and is no larger than `max_bytes`.

    `files`: one dict per GGUF with quantization, bytes, loaded, score (None when not measured), chat_template
    and ended_turn (per prompt). Each verdict adds relative_drop, rambled (the prompts it did not end), passed
    (None: quality not measured) and the reasons it failed.
    """
    verdicts = []
    for item in files:
        reasons = []
        drop = None
        if not item.get("loaded"):
            reasons.append(f"llama.cpp could not load it: {str(item.get('error', ''))[-500:]}")
        elif not item.get("chat_template"):
            reasons.append("no chat template inside: llama.cpp would chat with the wrong turns")
        rambling = rambled(item, reference_ended)
        if rambling and reference_ended is not None:
            reasons.append(rambling_reason(item, rambling, reference_ended))
        if max_bytes is not None and item["bytes"] > max_bytes:
            reasons.append(f"{item['bytes']:,} bytes, over save.max_gguf_bytes={max_bytes:,}")
        if reference_score is not None and item.get("score") is not None:
            drop = relative_drop(reference_score, item["score"])
            if drop > max_drop:
                reasons.append(
                    f"scores {item['score']:.2f} against the fine-tuned model's {reference_score:.2f}: "
                    f"{drop:.1%} lower, over the {max_drop:.0%} limit"
                )
        measured = drop is not None
        verdicts.append(
            {
                **{k: v for k, v in item.items() if k != "predictions"},
                "relative_drop": None if drop is None else round(drop, 4),
                "rambled": rambling,
                "passed": False if reasons else (True if measured else None),
                "reasons": reasons,
            }
        )
    return verdicts


def quantization_gate(
    reference_score: float | None, verdicts: Sequence[dict[str, Any]], max_drop: float = QUANTIZATION_MAX_DROP
) -> GateResult:
    """The spec's `quantization-verified` over the files' verdicts (judge_files): failed when one failed,
    passed when all passed, not_run when no quality could be measured."""
    if any(v["passed"] is False for v in verdicts):
        status = GateStatus.failed
    elif verdicts and all(v["passed"] for v in verdicts):
        status = GateStatus.passed
    else:
        status = GateStatus.not_run
    parts = [
        f"{v['quantization']}: chrF {v['score']}, drop {v['relative_drop']}"
        + (f" ({'; '.join(v['reasons'])})" if v.get("reasons") else "")
        for v in verdicts
    ]
    message = (
        f"each GGUF against the fine-tuned model (chrF {reference_score}) on the test split, at most "
        f"{max_drop:.0%} lower: " + "; ".join(parts)
        if reference_score is not None
        else "no test split to score the GGUF files on; " + "; ".join(parts)
    )
    details = {
        "gate": GateName.quantization_verified.value,
        "status": status.value,
        "reference_score": reference_score,
        "max_drop": max_drop,
        "files": [{k: v.get(k) for k in SUMMARY_KEYS} for v in verdicts],
    }
    return GateResult(name=GateName.quantization_verified, status=status, message=message, details=details)
