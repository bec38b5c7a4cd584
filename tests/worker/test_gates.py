"""Each gate on passing and failing histories."""

from __future__ import annotations

import math

import pytest

from app.models import GateName, GateStatus
from app.training_config import GatesSection
from worker import gates


def scored(examples: int = 10, **values: float | None) -> dict:
    return {"examples": examples, "metrics": values}


# ------------------------------------------------------------------------------------- baseline-established


def test_baseline_established_passes_with_the_metric() -> None:
    result = gates.baseline_established(scored(token_f1=0.31), "token_f1")
    assert result.name == GateName.baseline_established and result.status == GateStatus.passed
    assert result.details == {"metric": "token_f1", "value": 0.31, "examples": 10}


def test_baseline_established_fails_without_the_metric() -> None:
    result = gates.baseline_established(scored(localization_score=None), "localization_score")
    assert result.status == GateStatus.failed and "glossary_path" in result.message


def test_baseline_established_not_run_when_switched_off() -> None:
    assert gates.baseline_established(None, "token_f1").status == GateStatus.not_run


# ---------------------------------------------------------------------------------------- model-performance


@pytest.mark.parametrize(
    ("before", "after", "settings", "status"),
    [
        # relative +20% on a higher-is-better metric: 0.5 -> needs 0.6
        (0.5, 0.6, {}, GateStatus.passed),
        (0.5, 0.59, {}, GateStatus.failed),
        (0.5, 0.4, {}, GateStatus.failed),
        # absolute points, what a baseline of 0 needs
        (0.0, 0.25, {"improvement": "absolute", "min_improvement": 0.2}, GateStatus.passed),
        (0.0, 0.15, {"improvement": "absolute", "min_improvement": 0.2}, GateStatus.failed),
        # a relative margin on a baseline of 0: any gain meets it, none does not
        (0.0, 0.01, {}, GateStatus.passed),
        (0.0, 0.0, {}, GateStatus.failed),
        # lower is better: test loss 2.0 -> at most 1.6 for 20% better
        (2.0, 1.6, {"metric": "test_loss"}, GateStatus.passed),
        (2.0, 1.7, {"metric": "test_loss"}, GateStatus.failed),
        (2.0, 1.5, {"metric": "test_loss", "improvement": "absolute", "min_improvement": 0.5}, GateStatus.passed),
        (2.0, 1.6, {"metric": "test_loss", "improvement": "absolute", "min_improvement": 0.5}, GateStatus.failed),
        # a margin of 0 still needs a strict improvement
        (0.5, 0.5, {"min_improvement": 0.0}, GateStatus.failed),
    ],
)
def test_model_performance(before: float, after: float, settings: dict, status: GateStatus) -> None:
    config = GatesSection.model_validate({"metric": "token_f1", **settings})
    result = gates.model_performance(scored(**{config.metric: before}), scored(**{config.metric: after}), config)
    assert result.status == status, result.message
    assert result.details["baseline"] == before and result.details["fine_tuned"] == after


def test_model_performance_message_and_threshold() -> None:
    config = GatesSection(metric="exact_match", improvement="absolute", min_improvement=0.2)
    result = gates.model_performance(scored(exact_match=0.0), scored(exact_match=0.55), config)
    assert result.details["threshold"] == pytest.approx(0.2)
    assert "exact_match 0.55 vs baseline 0" in result.message and "beats" in result.message


def test_model_performance_not_run_or_failed_without_numbers() -> None:
    config = GatesSection()
    assert gates.model_performance(scored(token_f1=0.1), None, config).status == GateStatus.not_run
    assert gates.model_performance(None, scored(token_f1=0.1), config).status == GateStatus.not_run
    missing = gates.model_performance(scored(token_f1=None), scored(token_f1=0.1), config)
    assert missing.status == GateStatus.failed and "baseline has no token_f1" in missing.message


# ------------------------------------------------------------------------------------------- loss-converged


def test_loss_converged_on_a_falling_curve() -> None:
    losses = [3.0 - 0.05 * i for i in range(40)]  # 3.0 -> 1.05
    result = gates.loss_converged(losses, GatesSection())
    assert result.status == GateStatus.passed, result.message
    # windows of 4: start mean(3.0..2.85) = 2.925, end mean(1.2..1.05) = 1.125
    assert result.details["window"] == 4
    assert result.details["start"] == pytest.approx(2.925) and result.details["end"] == pytest.approx(1.125)


def test_loss_converged_fails_on_a_flat_curve() -> None:
    result = gates.loss_converged([2.0, 2.1, 1.95, 2.0, 1.98, 2.02], GatesSection())
    assert result.status == GateStatus.failed and "decrease" in result.message


def test_loss_converged_fails_on_nan() -> None:
    result = gates.loss_converged([2.0, 1.0, math.nan, 0.5], GatesSection())
    assert result.status == GateStatus.failed and "loss value 3 is nan" in result.message


def test_loss_converged_fails_when_diverging_at_the_end() -> None:
    # Falls from 3 to 0.5, then climbs back to 2.5: 80% of the drop given back.
    losses = [3.0, 2.0, 1.0, 0.5, 1.5, 2.5]
    result = gates.loss_converged(losses, GatesSection())
    assert result.status == GateStatus.failed and "diverging" in result.message
    assert result.details["lowest"] == 0.5
    # The same curve passes when the end may give back more of the drop, and a small wobble never fails.
    assert gates.loss_converged(losses, GatesSection(loss_max_rebound=0.9)).status == GateStatus.passed
    assert gates.loss_converged([3.0, 2.0, 1.0, 0.5, 0.6], GatesSection()).status == GateStatus.passed


def test_loss_converged_needs_two_values() -> None:
    assert gates.loss_converged([1.0], GatesSection()).status == GateStatus.failed


# ---------------------------------------------------------------------------------------------- the report


def test_report_counts_failed_gates_only() -> None:
    config = GatesSection(required=True)
    report = gates.run_all(config, scored(token_f1=0.2), scored(token_f1=0.5), [3.0, 2.0, 1.0])
    assert [g.name for g in report.gates] == list(GateName)
    assert [g.status for g in report.gates] == [GateStatus.passed] * 3 + [GateStatus.not_run] * 2
    assert report.passed and report.required and report.metric == "token_f1"
    failing = gates.run_all(config, scored(token_f1=0.2), scored(token_f1=0.21), [3.0, 2.0, 1.0])
    assert not failing.passed
