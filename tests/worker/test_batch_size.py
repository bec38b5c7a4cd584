"""`per_device_train_batch_size: auto`: real training passes of the tiny Gemma 3 (262k-token vocabulary, so the
logits make memory grow with the batch) measured on this machine's memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.training_config import TrainingConfig
from tests.conftest import tiny_config
from worker import batch_size
from worker.backends.transformers_backend import TransformersBackend
from worker.data import prepare


def auto_config(model_dir: Path, **training: Any) -> TrainingConfig:
    config = tiny_config(model_dir)
    config["training"] = {"per_device_train_batch_size": "auto", "learning_rate": 5e-3, **training}
    return TrainingConfig.model_validate(config)


@pytest.fixture(scope="module")
def job(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Any]]:
    """The tiny model with LoRA attached and the project's training rows, as the worker has them."""
    from app.demo_data import write_splits

    project = tmp_path_factory.mktemp("project")
    write_splits(project / "data", sizes=(48, 8, 8))
    config = auto_config(tiny_model_dir)
    backend = TransformersBackend()
    from app.resolve import data_files, model_source, template_for

    template = template_for(config, model_source(str(tiny_model_dir), project, [tiny_model_dir.parent]))
    model, tokenizer = backend.load_model(str(tiny_model_dir), config, template)
    model = backend.attach_lora(model, config)
    data = prepare(tokenizer, template, config, data_files(config, project))
    return model, data.train


def test_candidates_double_up_to_the_effective_batch() -> None:
    assert batch_size.candidates(1) == [1]
    assert batch_size.candidates(8) == [1, 2, 4, 8]
    assert batch_size.candidates(12) == [1, 2, 4, 8, 12]


def test_a_fixed_batch_is_used_as_configured(tiny_model_dir: Path, job: tuple[Any, list[Any]]) -> None:
    config = TrainingConfig.model_validate(tiny_config(tiny_model_dir, per_device_train_batch_size=3))
    plan = batch_size.plan(config, job[0], job[1])
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps, plan.auto) == (3, 1, False)
    assert plan.trials == []


def test_auto_picks_the_effective_batch_when_it_fits(tiny_model_dir: Path, job: tuple[Any, list[Any]]) -> None:
    model, rows = job
    seen: list[str] = []
    plan = batch_size.plan(
        auto_config(tiny_model_dir, auto_batch_memory_fraction=1.0), model, rows, lambda f, d: seen.append(d)
    )
    assert plan.auto and plan.device == "cpu"
    assert [t.batch for t in plan.trials] == [1, 2, 4, 8] and all(t.fits for t in plan.trials)
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps, plan.effective_batch_size) == (8, 1, 8)
    assert plan.sequence_length == max(len(r.input_ids) for r in rows)
    assert len(seen) == 4 and "batch 8" in seen[-1]
    peaks = [t.peak_gib for t in plan.trials]
    assert peaks[-1] > peaks[0]  # eight copies of the longest row cost more than one
    assert all(p.grad is None for p in model.parameters())  # the tries leave no gradients behind


def test_auto_stops_at_the_first_batch_over_the_memory_limit(tiny_model_dir: Path, job: tuple[Any, list[Any]]) -> None:
    model, rows = job
    measured = batch_size.plan(auto_config(tiny_model_dir, auto_batch_memory_fraction=1.0), model, rows)
    peaks = {t.batch: t.peak_gib for t in measured.trials}
    assert measured.limit_gib is not None and peaks[4] > peaks[2]
    # A limit halfway between what batch 2 and batch 4 took: 2 is picked, and accumulation keeps 8 per step.
    fraction = (peaks[2] + peaks[4]) / 2 / measured.limit_gib
    plan = batch_size.plan(auto_config(tiny_model_dir, auto_batch_memory_fraction=fraction), model, rows)
    assert [(t.batch, t.fits) for t in plan.trials] == [(1, True), (2, True), (4, False)], plan.trials
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps, plan.effective_batch_size) == (2, 4, 8)


def test_auto_batch_is_never_larger_than_the_data(tiny_model_dir: Path, job: tuple[Any, list[Any]]) -> None:
    model, rows = job
    config = auto_config(tiny_model_dir, effective_batch_size=64, auto_batch_memory_fraction=1.0)
    plan = batch_size.plan(config, model, rows[:5])
    assert [t.batch for t in plan.trials] == [1, 2, 4, 5]
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (5, 13)  # 5 x 13 >= 64


def test_under_a_limit_even_batch_one_exceeds_the_job_still_trains_with_one(
    tiny_model_dir: Path, job: tuple[Any, list[Any]]
) -> None:
    model, rows = job
    plan = batch_size.plan(auto_config(tiny_model_dir, auto_batch_memory_fraction=1e-6), model, rows)
    assert [(t.batch, t.fits) for t in plan.trials] == [(1, False)]
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (1, 8)
