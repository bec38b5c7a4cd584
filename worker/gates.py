"""The spec's gate criteria as pure functions of the recorded metrics and loss history.

Each gate returns a GateResult: passed, failed (with the numbers that failed it) or not_run (with why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from app.models import GateName, GateResult, GatesReport, GateStatus
from app.training_config import LOWER_IS_BETTER, GatesSection


def _result(name: GateName, status: GateStatus, message: str, **details: Any) -> GateResult:
    return GateResult(name=name, status=status, message=message, details=details)


def baseline_established(baseline: dict[str, Any] | None, metric: str) -> GateResult:
    """The base model was scored on the test split and the gate's metric has a value."""
    name = GateName.baseline_established
    if baseline is None:
        return _result(name, GateStatus.not_run, "evaluation.baseline is false: the base model was not scored")
    value = baseline["metrics"].get(metric)
    if baseline.get("examples", 0) < 1 or value is None:
        return _result(
            name,
            GateStatus.failed,
            f"the baseline has no {metric}" + _missing_hint(metric),
            metric=metric,
            examples=baseline.get("examples", 0),
        )
    return _result(
        name,
        GateStatus.passed,
        f"base model scored on {baseline['examples']} test examples: {metric} {value:.4g}",
        metric=metric,
        value=value,
        examples=baseline["examples"],
    )


def _missing_hint(metric: str) -> str:
    if metric == "localization_score":
        return (
            ": no test example expects local terms. Set evaluation.glossary_path, or list them per example in "
            "the field evaluation.terms_field names"
        )
    return ": the test split gave no example to score"


def model_performance(
    baseline: dict[str, Any] | None, evaluation: dict[str, Any] | None, gates: GatesSection
) -> GateResult:
    """The fine-tuned model beats the baseline on gates.metric by gates.min_improvement (relative or absolute)."""
    name, metric, margin = GateName.model_performance, gates.metric, gates.min_improvement
    if evaluation is None:
        return _result(name, GateStatus.not_run, "evaluation.evaluate is false: the fine-tuned model was not scored")
    if baseline is None:
        return _result(name, GateStatus.not_run, "evaluation.baseline is false: there is no baseline to beat")
    before, after = baseline["metrics"].get(metric), evaluation["metrics"].get(metric)
    if before is None or after is None:
        which = "baseline" if before is None else "fine-tuned model"
        return _result(name, GateStatus.failed, f"the {which} has no {metric}" + _missing_hint(metric), metric=metric)
    lower = metric in LOWER_IS_BETTER
    sign = -1.0 if lower else 1.0
    gain = sign * (after - before)  # positive when the fine-tuned model is better
    if gates.improvement == "absolute":
        needed = before - margin if lower else before + margin
        achieved = f"{gain:+.4g} points"
        wanted = f"{margin:.4g} points"
    else:
        needed = before * (1 - margin) if lower else before * (1 + margin)
        achieved = f"{gain / abs(before):+.1%}" if before else "from 0"
        wanted = f"{margin:.0%}"
    meets = (after <= needed if lower else after >= needed) and gain > 0
    note = ""
    if gates.improvement == "relative" and before == 0:
        note = "; the baseline is 0, so any gain meets a relative margin: gates.improvement 'absolute' is stricter"
    verb = "beats" if meets else "does not beat"
    return _result(
        name,
        GateStatus.passed if meets else GateStatus.failed,
        f"fine-tuned {metric} {after:.4g} vs baseline {before:.4g} ({achieved}): {verb} the baseline by the "
        f"required {wanted} ({'at most' if lower else 'at least'} {needed:.4g}){note}",
        metric=metric,
        baseline=before,
        fine_tuned=after,
        improvement=gates.improvement,
        min_improvement=margin,
        threshold=needed,
    )


def _window(n: int) -> int:
    """Losses averaged at each end: a tenth of the history, 1 to 10 of them, so one noisy step decides nothing."""
    return max(1, min(10, n // 10))


def loss_converged(losses: Sequence[float], gates: GatesSection) -> GateResult:
    """No NaN, the loss at the end clearly below the start, and not climbing back at the end."""
    name = GateName.loss_converged
    if len(losses) < 2:
        return _result(
            name,
            GateStatus.failed,
            f"{len(losses)} loss value(s) logged; at least 2 are needed (train more steps or lower "
            "training.logging_steps)",
            logged=len(losses),
        )
    bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
    if bad is not None:
        return _result(name, GateStatus.failed, f"loss value {bad + 1} is {losses[bad]}", logged=len(losses))
    k = _window(len(losses))
    means = [sum(losses[i : i + k]) / k for i in range(len(losses) - k + 1)]
    start, end, best = means[0], means[-1], min(means)
    details = {"logged": len(losses), "window": k, "start": start, "end": end, "lowest": best}
    decrease = (start - end) / start if start > 0 else 0.0
    if decrease < gates.loss_min_decrease:
        return _result(
            name,
            GateStatus.failed,
            f"the loss went from {start:.4g} to {end:.4g} (mean of {k} at each end): a {decrease:.1%} decrease, "
            f"under the {gates.loss_min_decrease:.0%} gates.loss_min_decrease asks for. Train longer or raise "
            "training.learning_rate",
            **details,
        )
    rebound = (end - best) / (start - best) if start > best else 0.0
    if rebound > gates.loss_max_rebound:
        return _result(
            name,
            GateStatus.failed,
            f"the loss is diverging: it rose from its lowest {best:.4g} back to {end:.4g}, giving back {rebound:.0%} "
            f"of its drop (gates.loss_max_rebound {gates.loss_max_rebound:.0%}). Lower training.learning_rate",
            **details,
        )
    return _result(
        name,
        GateStatus.passed,
        f"the loss fell {decrease:.1%}, from {start:.4g} to {end:.4g} (mean of {k} at each end), and is not rising",
        **details,
    )


def quantization_verified(result: GateResult | None = None) -> GateResult:
    """Filled in by the GGUF export; until then it did not run."""
    if result is not None:
        return result
    return _result(
        GateName.quantization_verified,
        GateStatus.not_run,
        "no GGUF was exported and scored (save.gguf_path is null)",
    )


def report(gates: GatesSection, results: list[GateResult]) -> GatesReport:
    passed = all(result.status != GateStatus.failed for result in results)
    return GatesReport(passed=passed, required=gates.required, metric=gates.metric, gates=results)


def run_all(
    gates: GatesSection,
    baseline: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    losses: Sequence[float],
    quantization: GateResult | None = None,
    regression: GateResult | None = None,
) -> GatesReport:
    """Every gate; `quantization` comes from the GGUF export, `regression` from the comparison with the accepted
    model (worker/comparison.py): each did not run when not given."""
    return report(
        gates,
        [
            baseline_established(baseline, gates.metric),
            model_performance(baseline, evaluation, gates),
            loss_converged(losses, gates),
            quantization_verified(quantization),
            regression or _result(GateName.no_regression, GateStatus.not_run, "not compared with an accepted model"),
        ],
    )
