"""This job against the project's accepted model: the no-regression gate, the examples that flipped
(metrics/comparison.json) and the per-slice results (metrics/slices.json).

The worker names the accepted job when it claims this one (JobSpec.accepted_job_id, kept on the job as
accepted_job_id), so the training process reads the accepted job's files only, never the database: its
metrics/evaluation.json and the `evaluate` rows of its metrics/samples.jsonl, in the runs folder every worker shares.

Two jobs are compared only on the same test split: the same scored examples (prompt and reference answer, in
order), told by a sha256 of them; another split skips the gate with the reason. An answer is right when its own
score on gates.metric says so: exact match 1, localized (localization_score), or token F1 / chrF / ROUGE-L of
that one answer at least gates.right_threshold. test_loss and perplexity have no per-answer value: their flips are
judged by token F1.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.files import write_json
from app.models import GateName, GateResult, GateStatus
from app.run_folder import RunFolder
from app.training_config import EXACT_MATCH, LOCALIZATION_SCORE, LOWER_IS_BETTER, TOKEN_F1, GatesSection
from worker.evaluation import read_samples, slice_metrics

log = logging.getLogger("forge.worker.job")


@dataclass
class Scored:
    """One model on the test split: its metrics (metrics/<stage>.json) and its answers (samples.jsonl rows)."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def digest(self) -> str:
        """sha256 of the scored examples (prompt and reference, in order): equal digests, same test split."""
        shown = [[row["prompt"], row["reference"]] for row in sorted(self.rows, key=lambda r: r["index"])]
        return hashlib.sha256(json.dumps(shown, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def read(folder: RunFolder, stage: str) -> Scored | None:
    """A run folder's scoring of one stage (baseline, evaluate); None when its files are missing or unreadable."""
    try:
        report = json.loads(folder.metrics("baseline" if stage == "baseline" else "evaluate").read_text())
        rows = read_samples(folder.samples, stage)
    except (OSError, ValueError):
        return None
    return Scored(report["metrics"], rows) if rows else None


def right(row: dict[str, Any], metric: str, threshold: float) -> bool | None:
    """Whether one answer is right by gates.metric (module docstring); None when it cannot be judged."""
    if metric == EXACT_MATCH:
        return bool(row[EXACT_MATCH] == 1)
    if metric == LOCALIZATION_SCORE:
        localized = row.get("localized")
        return None if localized is None else bool(localized)
    score = row.get(TOKEN_F1 if metric in LOWER_IS_BETTER else metric)
    return None if score is None else bool(score >= threshold)


def flips(accepted: Scored, current: Scored, gates: GatesSection) -> dict[str, list[dict[str, Any]]]:
    """The examples right for one model and wrong for the other, with both answers."""
    before = {row["index"]: row for row in accepted.rows}
    found: dict[str, list[dict[str, Any]]] = {"right_to_wrong": [], "wrong_to_right": []}
    for row in sorted(current.rows, key=lambda r: r["index"]):
        old = before[row["index"]]
        was, now = right(old, gates.metric, gates.right_threshold), right(row, gates.metric, gates.right_threshold)
        if was is None or now is None or was == now:
            continue
        judged = TOKEN_F1 if gates.metric in LOWER_IS_BETTER else gates.metric
        found["right_to_wrong" if was else "wrong_to_right"].append(
            {
                "index": row["index"],
                "prompt": row["prompt"],
                "reference": row["reference"],
                "accepted_answer": old["answer"],
                "answer": row["answer"],
                f"accepted_{judged}": old.get(judged),
                judged: row.get(judged),
                **({"slice": row["slice"]} if "slice" in row else {}),
            }
        )
    return found


def _result(status: GateStatus, message: str, **details: Any) -> GateResult:
    return GateResult(name=GateName.no_regression, status=status, message=message, details=details)


def no_regression(
    accepted_id: str | None, accepted: Scored | None, current: Scored | None, gates: GatesSection
) -> GateResult:
    """Fails when gates.metric is worse than the accepted model's by more than gates.max_regression (relative)."""
    metric, allowed = gates.metric, gates.max_regression
    if accepted_id is None:
        return _result(GateStatus.not_run, "the project has no accepted model (POST /api/training/jobs/{id}/promote)")
    if current is None:
        return _result(GateStatus.not_run, "evaluation.evaluate is false: the fine-tuned model was not scored")
    if accepted is None:
        return _result(
            GateStatus.not_run,
            f"the accepted job {accepted_id} has no metrics/evaluation.json and evaluate answers to compare with",
            accepted_job_id=accepted_id,
        )
    if accepted.digest != current.digest:
        return _result(
            GateStatus.not_run,
            f"the test split differs from the accepted job {accepted_id}'s ({len(current.rows)} vs "
            f"{len(accepted.rows)} examples, sha256 {current.digest[:12]} vs {accepted.digest[:12]}): not comparable",
            accepted_job_id=accepted_id,
        )
    before, after = accepted.metrics.get(metric), current.metrics.get(metric)
    if before is None or after is None:
        which = "accepted model" if before is None else "fine-tuned model"
        return _result(GateStatus.not_run, f"the {which} has no {metric}", accepted_job_id=accepted_id)
    worse = (after - before) if metric in LOWER_IS_BETTER else (before - after)  # positive: a regression
    drop = worse / abs(before) if before else (float("inf") if worse > 0 else 0.0)
    changed = flips(accepted, current, gates)
    counts = {kind: len(rows) for kind, rows in changed.items()}
    failed = drop > allowed
    return _result(
        GateStatus.failed if failed else GateStatus.passed,
        f"fine-tuned {metric} {after:.4g} vs the accepted job {accepted_id}'s {before:.4g} ({-drop:+.1%}): "
        f"{'more' if failed else 'no more'} than the {allowed:.0%} gates.max_regression allows to lose; "
        f"{counts['right_to_wrong']} answer(s) went right -> wrong, {counts['wrong_to_right']} wrong -> right "
        "(metrics/comparison.json)",
        metric=metric,
        accepted_job_id=accepted_id,
        accepted=before,
        fine_tuned=after,
        drop=drop if drop != float("inf") else None,
        max_regression=allowed,
        **counts,
    )


def run(gates: GatesSection, folder: RunFolder, accepted_id: str | None) -> GateResult:
    """The gate, with metrics/comparison.json when compared and metrics/slices.json when gates.slice_field is set."""
    accepted_folder = RunFolder(folder.root.parent / accepted_id, folder.config) if accepted_id else None
    accepted = read(accepted_folder, "evaluate") if accepted_folder else None
    current = read(folder, "evaluate")
    result = no_regression(accepted_id, accepted, current, gates)
    comparable = accepted is not None and current is not None and accepted.digest == current.digest
    if accepted is not None and current is not None and comparable:
        write_json(
            folder.metrics_dir / "comparison.json",
            {
                "accepted_job_id": accepted_id,
                "metric": gates.metric,
                "right_threshold": gates.right_threshold,
                "test_split_sha256": current.digest,
                "examples": len(current.rows),
                "accepted": accepted.metrics,
                "fine_tuned": current.metrics,
                "gate": result.model_dump(mode="json"),
                **flips(accepted, current, gates),
            },
        )
    if gates.slice_field:
        models = {
            "baseline": read(folder, "baseline"),
            "fine_tuned": current,
            "accepted": accepted if comparable else None,
        }
        write_slices(folder.metrics_dir / "slices.json", gates, models)
    return result


def write_slices(path: Path, gates: GatesSection, models: dict[str, Scored | None]) -> None:
    """metrics/slices.json: per tag, each model's answer metrics on the rows of that tag."""
    scored = {name: model for name, model in models.items() if model is not None}
    own = [model for name, model in scored.items() if name != "accepted"]  # this job's tags, not the accepted's
    tags = {row["index"]: row["slice"] for model in own for row in model.rows if "slice" in row}
    per_model = {name: slice_metrics(model.rows, tags) for name, model in scored.items()}
    slices = sorted({tag for table in per_model.values() for tag in table})
    report = {
        "field": gates.slice_field,
        "metric": gates.metric,
        "models": list(scored),
        "slices": {tag: {name: table[tag] for name, table in per_model.items() if tag in table} for tag in slices},
    }
    write_json(path, report)
    log.info("slices (%s): %s", gates.slice_field, ", ".join(slices))
