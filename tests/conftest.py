"""Shared fixtures: a tiny random-weight Gemma 3 with the real tokenizer, projects and configs (the harness of real
API and worker processes is in tests/e2e/conftest.py)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.demo_data import write_splits
from tests import postgres
from tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two test processes on CI's two cores: llama.cpp (GGUF checks) then shares them with the
    # other test's work, and one thread runs it 1.8x faster than two (FORGE_LLAMA_THREADS, docs/benchmarks.md).
    os.environ.setdefault("FORGE_LLAMA_THREADS", "1")


def _gpu_ready() -> bool:
    if importlib.util.find_spec("unsloth") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


# The marks of a GPU test module: run with `pytest -m gpu` on a machine with CUDA and the `gpu` extra.
GPU_ONLY = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _gpu_ready(), reason="needs CUDA and the `gpu` extra (Unsloth)"),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`bench` and `long` tests run only when asked for (-m bench, -m long): `make test` and `make fast` leave them
    out. The end-to-end files (real processes, minutes each) come first: `-n 2 --dist loadfile` hands files out
    in this order, and the many short unit files then fill the gaps instead of one long file running alone last.
    The files of the real embedded model (the longest, 5-25 minutes on 2 cores) come before the other e2e files."""
    slow_files = {item.path for item in items if "slow" in item.keywords}
    # Stable: the order within a file stays.
    items.sort(key=lambda item: (not item.nodeid.startswith("tests/e2e/"), item.path not in slow_files))
    asked = config.getoption("markexpr") or ""
    for marker, why in (("bench", "benchmark-sized"), ("long", "minutes of processes on 2 cores")):
        if marker in asked:
            continue
        skip = pytest.mark.skip(reason=f"{why}: run with -m {marker}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def cache_dir() -> Path:
    return Path(os.environ.get("FORGE_CACHE_DIR", Path.home() / ".cache" / "forge-trainer"))


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    from app import embedded

    return embedded.tokenizer_dir(cache_dir())


# Each supported model's special tokens, added to the real Gemma 3 vocabulary: no other model's tokenizer is
# installable here, and what templating and masking depend on is that these strings are single special tokens.
STAND_IN_TOKENS: dict[str, dict[str, Any]] = {
    "llama-3.1": {
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    },
    "mistral": {"bos": "<s>", "eos": "</s>", "special": ["<s>", "</s>", "[INST]", "[/INST]"]},
    "qwen-2.5": {"bos": None, "eos": "<|im_end|>", "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]},
}


def stand_in_tokenizer(tokenizer_dir: Path, template: str) -> Any:
    """The real Gemma 3 tokenizer for gemma-3; for another template, Gemma's vocabulary with that model's
    special tokens (bos, eos and turn markers), as a plain fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    gemma = AutoTokenizer.from_pretrained(tokenizer_dir)
    if template == "gemma-3":
        return gemma
    tokens = STAND_IN_TOKENS[template]
    backend = Tokenizer.from_str(gemma.backend_tokenizer.to_str())
    backend.post_processor = None
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens["special"]])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tokens["bos"], eos_token=tokens["eos"], pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where test models live: outside the projects, so the API is told about it (FORGE_MODEL_DIRS)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_dir(models_root: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Gemma 3 text model with random weights and the real 262k-token tokenizer."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    out = models_root / "tiny-gemma3"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_splits(root / "data", sizes=(48, 8, 8))
    return root


@pytest.fixture
def settings(project: Path, models_root: Path) -> Settings:
    return Settings(project_dir=project, cache_dir=cache_dir(), api_token=None, model_dirs=[models_root])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real Postgres server for the session (Debian's `postgresql` package; `make test` installs it)."""
    if not postgres.available():
        if os.environ.get("CI"):
            pytest.fail("Postgres is not installed: `make system` installs Debian's `postgresql` package")
        pytest.skip("Postgres is not installed (apt-get install postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's Postgres server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The queue's database, each test run on both: None is the default SQLite file in the project."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def db_settings(settings: Settings, database_url: str | None) -> Settings:
    """`settings` on each database in turn (SQLite, then Postgres)."""
    return settings.model_copy(update={"database_url": database_url})


def tiny_config(model_dir: Path, **training: Any) -> dict[str, Any]:
    """A config in the spec's shape for the tiny model: fast, no merged/GGUF export, short test answers."""
    return {
        "model": {"name": str(model_dir), "max_seq_length": 256},
        "lora": {"r": 4, "lora_alpha": 8, "use_gradient_checkpointing": False},
        "training": {
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 0,
            "max_steps": 4,
            "learning_rate": 5e-3,
            **training,
        },
        "save": {"merged_path": None, "gguf_path": None},
        # The baseline and evaluate steps stay on, with answers short enough to keep the suite fast.
        "evaluation": {"max_new_tokens": 4, "max_examples": 4},
        "backend": "transformers",
    }
