"""The data a job trains on: validated again in the worker, tokenized, counted; val.jsonl used for eval loss."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.core.errors import InvalidInput
from app.datasets.templates import TEMPLATES
from app.resolve import data_files
from app.training_config import TrainingConfig
from tests.conftest import tiny_config
from worker.data import DataError, prepare


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TEMPLATES["gemma-3"].jinja
    return tok


def test_train_and_val_are_prepared_with_counts(project: Path, tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    config = TrainingConfig.model_validate(tiny_config(tiny_model_dir))
    data = prepare(tokenizer, TEMPLATES["gemma-3"], config, data_files(config, project))
    assert len(data.train) == 48 and data.eval is not None and len(data.eval) == 8
    stats = data.stats
    assert stats["chat_template"] == "gemma-3" and stats["file"] == "data/splits/train.jsonl"
    assert (stats["examples"], stats["dropped"], stats["truncated"]) == (48, 0, 0)
    assert stats["total_tokens"] == sum(len(row.input_ids) for row in data.train)
    assert stats["mean_tokens"] == round(stats["total_tokens"] / 48, 1)
    assert stats["eval"]["file"] == "data/splits/val.jsonl" and stats["eval"]["examples"] == 8
    first = data.train[0]
    assert first.input_ids[0] == tokenizer.bos_token_id and len(first.labels) == len(first.input_ids)


def test_bad_rows_are_dropped_within_the_limit_and_counted(project: Path, tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    train = project / "data/splits/train.jsonl"
    with train.open("a") as handle:
        handle.write('{"conversations": [{"role": "user", "content": "no answer"}]}\n')
    config = TrainingConfig.model_validate(tiny_config(tiny_model_dir))
    with pytest.raises(DataError, match=r"1 of 49 rows in data/splits/train.jsonl are bad: .*train.jsonl:49"):
        prepare(tokenizer, TEMPLATES["gemma-3"], config, data_files(config, project))
    config.dataset.invalid_rows = "drop"
    data = prepare(tokenizer, TEMPLATES["gemma-3"], config, data_files(config, project))
    assert (data.stats["examples"], data.stats["dropped"]) == (48, 1)


def test_long_rows_are_truncated_and_counted(project: Path, tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    config = TrainingConfig.model_validate(tiny_config(tiny_model_dir) | {"dataset": {"val_path": None}})
    config.model.max_seq_length = 70  # the longest rows run to 80 tokens, but every answer starts by token 60
    data = prepare(tokenizer, TEMPLATES["gemma-3"], config, data_files(config, project))
    assert data.eval is None and data.stats["eval"] is None
    assert data.stats["truncated"] > 0 and all(len(row.input_ids) <= 70 for row in data.train)
    assert data.stats["total_tokens"] == sum(len(row.input_ids) for row in data.train)


def test_a_missing_val_file_named_explicitly_is_an_error(project: Path, tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    config = TrainingConfig.model_validate(tiny_config(tiny_model_dir) | {"dataset": {"val_path": "data/nope.jsonl"}})
    with pytest.raises(InvalidInput) as info:
        prepare(tokenizer, TEMPLATES["gemma-3"], config, data_files(config, project))
    assert info.value.code == "dataset_not_found" and info.value.param == "dataset.val_path"


def test_an_alpaca_file_trains_end_to_end_with_eval_loss(project: Path, tiny_model_dir: Path) -> None:
    """A real training run (the runner in-process, a tiny model) on the Data Factory format, with eval steps."""
    from multiprocessing import Value

    from worker.protocol import JobSpec, Message
    from worker.recipe import LoraRecipe
    from worker.reporter import Reporter

    rows = [json.loads(line) for line in (project / "data/splits/train.jsonl").read_text().splitlines()]
    alpaca = project / "data/factory/train.jsonl"
    alpaca.parent.mkdir(parents=True)
    with alpaca.open("w") as handle:
        for row in rows:
            turns = {t["role"]: t["content"] for t in row["conversations"]}
            handle.write(
                json.dumps(
                    {"instruction": turns.get("system", ""), "input": turns["user"], "output": turns["assistant"]}
                )
                + "\n"
            )
    (alpaca.parent / "val.jsonl").write_text(
        json.dumps({"instruction": "", "input": "What is 2 + 2?", "output": "2 + 2 = 4."}) + "\n"
    )
    config = tiny_config(tiny_model_dir, max_steps=4, eval_steps=2)
    config["dataset"] = {"path": "data/factory/train.jsonl"}

    class Pipe:
        def __init__(self) -> None:
            self.sent: list[Message] = []

        def send(self, message: Message) -> None:
            self.sent.append(message)

    run_dir = project / "runs" / "job1"
    cache = str(Path.home() / ".cache/forge-trainer")
    spec = JobSpec("job1", config, str(run_dir), str(project), cache, model_dirs=[str(tiny_model_dir.parent)])
    stats = LoraRecipe(spec, Reporter(Pipe(), Value("i", 0))).run().as_stats()
    assert stats["data"]["format"] == "alpaca" and stats["data"]["examples"] == 48
    assert stats["data"]["eval"]["examples"] == 1
    evals = [entry for entry in stats["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [2, 4]
    assert stats["eval_loss"] == evals[-1]["eval_loss"] > 0
    saved = json.loads((run_dir / "metrics/training-stats.json").read_text())
    assert saved["eval_loss"] == stats["eval_loss"]
    # The run's release record: the files as resolved (val "auto" found beside the training file), the artifacts.
    record = json.loads((run_dir / "release.json").read_text())
    assert {role: item["path"] for role, item in record["datasets"].items()} == {
        "train": "data/factory/train.jsonl",
        "val": "data/factory/val.jsonl",
        "test": "data/splits/test.jsonl",
    }
    assert "models/checkpoints/lora/adapter_model.safetensors" in {item["path"] for item in record["artifacts"]}
    for item in record["artifacts"]:
        assert item["sha256"] == hashlib.sha256((run_dir / item["path"]).read_bytes()).hexdigest(), item["path"]
