"""training.select_checkpoint best: the validation split picks the checkpoint the save step saves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.core.errors import InvalidInput
from app.resolve import resolve
from app.training_config import TrainingConfig
from tests.conftest import cache_dir, tiny_config
from worker.protocol import CheckpointSaved, JobSpec
from worker.recipe import LoraRecipe
from worker.reporter import Reporter


def _rows(path: Path, answer: str, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": answer}]}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


class Sent(list[Any]):
    def send(self, message: Any) -> None:
        self.append(message)


def test_best_validation_checkpoint_is_saved_not_the_last(
    tmp_path: Path, tiny_model_dir: Path, models_root: Path
) -> None:
    """Training on answers contrary to the validation split's, at a high learning rate: the validation loss is
    lowest early, so the LoRA saved is an earlier evaluation point's, and checkpoints.json says so."""
    project = tmp_path / "project"
    _rows(project / "data/splits/train.jsonl", "zebra " * 12, 16)
    _rows(project / "data/splits/val.jsonl", "The answer is four.", 4)
    _rows(project / "data/splits/test.jsonl", "The answer is four.", 2)
    config = tiny_config(tiny_model_dir, max_steps=8, eval_steps=2, learning_rate=5e-2)
    config["training"]["lr_scheduler_type"] = "constant"
    config["gates"] = {"metric": "test_loss"}
    config["evaluation"] = {"baseline": False, "max_new_tokens": 2, "max_examples": 2}
    config = TrainingConfig.model_validate(config).model_dump(mode="json")
    run_dir = tmp_path / "run"
    spec = JobSpec("job-best", config, str(run_dir), str(project), str(cache_dir()), model_dirs=[str(models_root)])
    sent = Sent()
    result = LoraRecipe(spec, Reporter(sent, SimpleNamespace(value=0))).run()

    report = json.loads((run_dir / "metrics/checkpoints.json").read_text())
    scores = {c["step"]: c["score"] for c in report["checkpoints"]}
    assert sorted(scores) == [2, 4, 6, 8] and report["direction"] == "lower"
    assert report["picked_step"] == min(scores, key=lambda s: scores[s]) != 8, scores
    assert report["picked_last"] is False and report["last_step"] == 8
    assert result.checkpoint == {
        "picked_step": report["picked_step"],
        "metric": "test_loss",
        "score": scores[report["picked_step"]],
    }
    scored = [m for m in sent if isinstance(m, CheckpointSaved) and m.score is not None]
    assert [m.step for m in scored] == [2, 4, 6, 8]

    # The saved adapters are the picked point's weights (kept when it was scored), not the last step's.
    best = torch.load(run_dir / "outputs/best-checkpoint-lora.pt", weights_only=True)
    saved = load_file(run_dir / "models/checkpoints/lora/adapter_model.safetensors")
    assert saved.keys() == best.keys()
    assert all(torch.equal(saved[k], best[k].to(saved[k].dtype)) for k in saved)
    # The evaluate step scored that model on the test split: its test loss is the picked checkpoint's league.
    evaluated = json.loads((run_dir / "metrics/evaluation.json").read_text())
    assert evaluated["metrics"]["test_loss"] == pytest.approx(scores[report["picked_step"]], rel=0.05)


def test_best_without_a_validation_split_is_refused(project: Path, tiny_model_dir: Path, models_root: Path) -> None:
    (project / "data/splits/val.jsonl").unlink()
    config = TrainingConfig.model_validate(tiny_config(tiny_model_dir, select_checkpoint="best"))
    with pytest.raises(InvalidInput) as caught:
        resolve(config, project=project, model_dirs=[models_root])
    assert caught.value.param == "training.select_checkpoint"
    assert "dataset.val_path" in str(caught.value)
    # Left out, it resolves to last: the job is accepted.
    resolve(TrainingConfig.model_validate(tiny_config(tiny_model_dir)), project=project, model_dirs=[models_root])


def test_the_last_step_as_the_only_candidate_is_picked_without_answering(
    tmp_path: Path, tiny_model_dir: Path, models_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One evaluation point (the epoch's end, no eval_steps), as in the spec's standard config: a choice of one needs
    no score, so no validation answers are generated for it; the pick is the last step."""
    project = tmp_path / "project"
    _rows(project / "data/splits/train.jsonl", "The answer is four.", 4)
    _rows(project / "data/splits/val.jsonl", "Four.", 4)
    _rows(project / "data/splits/test.jsonl", "It is four.", 2)
    config = tiny_config(tiny_model_dir, max_steps=2, num_train_epochs=1)
    config["evaluation"] = {"baseline": False, "max_new_tokens": 2, "max_examples": 2}
    config = TrainingConfig.model_validate(config).model_dump(mode="json")
    run_dir = tmp_path / "run"
    spec = JobSpec("job-one", config, str(run_dir), str(project), str(cache_dir()), model_dirs=[str(models_root)])
    sent = Sent()
    with caplog.at_level("INFO", logger="forge.worker.job"):
        result = LoraRecipe(spec, Reporter(sent, SimpleNamespace(value=0))).run()

    report = json.loads((run_dir / "metrics/checkpoints.json").read_text())
    assert report["checkpoints"] == [{"step": 2, "epoch": 1.0, "score": None}]
    assert (report["picked_step"], report["picked_last"], report["metric"]) == (2, True, "token_f1")
    assert result.checkpoint == {"picked_step": 2, "metric": "token_f1", "score": None}
    assert "checkpoint at step 2: the only candidate, picked without scoring" in caplog.text
