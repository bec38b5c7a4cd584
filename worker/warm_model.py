"""The loaded, LoRA-wrapped base model, kept in the warm training process (worker/child.py) between jobs.

A job on the same base model and settings as the last one (backend, the model and lora sections, the chat
template, the model's files) starts from the model already in memory, with the kernels it compiled: no reload,
no new LoRA wrapping, no recompiling for shapes it has seen. Its adapters are drawn afresh from its own seed and
its trainer (optimizer, scheduler, data order) is new, so it trains exactly as it would in a new process.
`fresh_adapters` draws them for a freshly wrapped model too: both paths start from the same weights, bit for bit.

Training moves only the adapters (the base is frozen; a job training biases, `lora.bias` other than "none",
changes the base and is never kept), and the export reads the adapters from their saved files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.training_config import TrainingConfig
from worker import baselines, devices, ranks
from worker.protocol import JobSpec

log = logging.getLogger("forge.worker.job")


@dataclass
class Kept:
    key: str
    backend: Any  # the backend instance that loaded the model: it holds the template it was loaded with
    model: Any
    tokenizer: Any
    job_id: str  # the job that loaded it


_kept: Kept | None = None


def key(config: TrainingConfig, backend: str, model_path: str, template: str) -> str | None:
    """What the loaded, wrapped model depends on; None when it is not kept: training changes the base model, or
    the job runs on several DDP ranks (processes of its own)."""
    if config.lora.bias != "none" or ranks.count() > 1:
        return None
    parts = {
        "backend": backend,
        "model": config.model.model_dump(mode="json"),
        "lora": config.lora.model_dump(mode="json"),
        "model_files": baselines.model_fingerprint(model_path),
        "template": template,
    }
    return baselines.digest(parts)


def take(digest: str | None) -> Kept | None:
    """The kept model when it is the one this key asks for; any other kept model is let go."""
    if digest is not None and _kept is not None and _kept.key == digest:
        return _kept
    drop()
    return None


def keep(digest: str | None, backend: Any, model: Any, tokenizer: Any, job_id: str) -> None:
    """Keep the trained model loaded for the next job (`job_id`: the job that loaded it)."""
    global _kept
    if digest is not None:
        _kept = Kept(digest, backend, model, tokenizer, job_id)


def drop() -> None:
    """Let the kept model go (its memory goes back before another model loads)."""
    global _kept
    if _kept is not None:
        log.info("letting go of the model kept from job %s", _kept.job_id)
        _kept = None
        devices.free_memory()


def fresh_adapters(model: Any, seed: int) -> int:
    """Every LoRA adapter back to its start, drawn from `seed`: A as peft initialises it (Kaiming-uniform,
    a=sqrt(5)), B zero, so the wrapped model answers as the base model does. Returns the adapters reset."""
    import torch
    from peft.tuners.lora import LoraLayer

    generator = torch.Generator().manual_seed(seed)
    reset = 0
    with torch.no_grad():
        for _name, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            for adapter, lora_a in module.lora_A.items():
                lora_b = module.lora_B[adapter]
                a = lora_a.get_parameter("weight")
                drawn = torch.empty(tuple(a.shape), dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=generator)
                a.copy_(drawn)
                lora_b.get_parameter("weight").zero_()
                for parameter in (*lora_a.parameters(), *lora_b.parameters()):
                    parameter.grad = None
                reset += 1
    return reset


PRELOADED = "preloaded"  # model_kept_from of the first job on a model the worker loaded at start


def preload(spec: JobSpec) -> None:
    """Load and wrap the model of `spec`'s config and keep it, before any job asks (FORGE_WORKER_PRELOAD). A
    failure is logged and costs only the head start: the first job loads the model itself and reports why not."""
    from app.resolve import model_source, template_for
    from worker import backends

    config = TrainingConfig.model_validate(spec.config)
    try:
        source = model_source(config.model.name, Path(spec.project_dir), [Path(d) for d in spec.model_dirs])
        template = template_for(config, source)
        model_path = source.load_path(Path(spec.cache_dir))
        backend = backends.select(config.backend)  # first thing in this process: Unsloth before transformers
        model, tokenizer = backend.load_model(model_path, config, template)
        model = backend.attach_lora(model, config)
    except Exception:
        log.exception("could not pre-load %s (FORGE_WORKER_PRELOAD)", config.model.name)
        return
    keep(key(config, backend.name, model_path, template.name), backend, model, tokenizer, PRELOADED)
    log.warning("pre-loaded %s (%s) for the jobs that fit it", config.model.name, backend.name)
