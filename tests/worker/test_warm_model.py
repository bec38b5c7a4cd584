"""The model kept loaded between jobs: what it depends on, and adapters drawn afresh from a seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings
from app.training_config import EMBEDDED_MODEL, TrainingConfig
from tests.conftest import tiny_config
from worker import warm_model
from worker.backends.transformers_backend import TransformersBackend
from worker.warm_process import PreloadInvalid, preload_spec


def _key(folder: Path, **sections: dict) -> str | None:
    config = TrainingConfig.model_validate({"model": {"name": str(folder)}, **sections})
    return warm_model.key(config, "transformers", str(folder), "gemma-3")


def test_the_key_follows_the_model_and_lora_settings_not_the_job(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"a" * 64)
    first = _key(tmp_path)
    assert first is not None
    # A job's own data and training settings are not part of it: its adapters and trainer are new anyway.
    assert _key(tmp_path, training={"seed": 7, "learning_rate": 1e-3}, dataset={"path": "other.jsonl"}) == first
    assert _key(tmp_path, lora={"r": 32}) != first  # another wrapping
    assert _key(tmp_path, model={"name": str(tmp_path), "max_seq_length": 512}) != first
    config = TrainingConfig.model_validate({"model": {"name": str(tmp_path)}})
    assert warm_model.key(config, "unsloth", str(tmp_path), "gemma-3") != first
    assert warm_model.key(config, "transformers", str(tmp_path), "qwen-2.5") != first
    # Training biases changes the base model itself: such a model is never kept.
    assert _key(tmp_path, lora={"bias": "all"}) is None


def test_fresh_adapters_are_the_seeds_whatever_the_model_went_through(tiny_model_dir: Path) -> None:
    """Adapters after training, reset from a seed, equal those a freshly wrapped model gets from it; B is zero,
    so the wrapped model answers as the base does."""
    import torch

    from app.datasets import templates

    config = TrainingConfig.model_validate(tiny_config(tiny_model_dir))
    backend = TransformersBackend()
    template = templates.TEMPLATES["gemma-3"]

    def wrapped() -> torch.nn.Module:
        model, _ = backend.load_model(str(tiny_model_dir), config, template)
        return backend.attach_lora(model, config)

    def adapters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}

    ids = torch.tensor([[2, 10, 20, 30, 40]])
    base, _ = backend.load_model(str(tiny_model_dir), config, template)
    with torch.no_grad():
        expected = base(ids).logits

    cold, used = wrapped(), wrapped()
    assert warm_model.fresh_adapters(cold, seed=3) > 0
    with torch.no_grad():  # what a job leaves behind: trained adapters
        for name, parameter in used.named_parameters():
            if "lora_" in name:
                parameter.add_(torch.randn_like(parameter))
    warm_model.fresh_adapters(used, seed=3)
    fresh, reused = adapters(cold), adapters(used)
    assert fresh.keys() == reused.keys() and all(torch.equal(fresh[k], reused[k]) for k in fresh)
    assert all(not torch.any(w) for k, w in fresh.items() if "lora_B" in k)
    assert any(torch.any(w) for k, w in fresh.items() if "lora_A" in k)
    with torch.no_grad():
        assert torch.allclose(used(ids).logits, expected, atol=1e-6)

    warm_model.fresh_adapters(used, seed=4)  # another seed, other adapters
    assert not all(torch.equal(fresh[k], w) for k, w in adapters(used).items() if "lora_A" in k)


@pytest.fixture(autouse=True)
def _nothing_kept() -> None:
    warm_model.drop()


def test_a_preload_that_names_no_model_stops_the_worker_with_what_to_give(settings: Settings, tmp_path: Path) -> None:
    for value in ("no/such-model-here", str(tmp_path / "missing.yaml")):
        with pytest.raises(PreloadInvalid, match=r"FORGE_WORKER_PRELOAD=.*Give a model name"):
            preload_spec(settings.model_copy(update={"worker_preload": value}))
    config = tmp_path / "job.yaml"
    config.write_text(f"model: {{name: '{EMBEDDED_MODEL}', max_seq_length: 512}}\nlora: {{r: 4}}\n")
    spec = preload_spec(settings.model_copy(update={"worker_preload": str(config)}))
    assert spec is not None and spec.config["lora"]["r"] == 4 and spec.config["model"]["max_seq_length"] == 512
    assert preload_spec(settings) is None
