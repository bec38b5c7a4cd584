"""What a local model's weight files say without loading them: the names of its modules, for lora.target_modules."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from app.core.errors import InvalidInput
from app.training_config import TrainingConfig

# A safetensors header larger than this is not one (a real model's is well under a megabyte).
MAX_HEADER_BYTES = 64 << 20
# The embedded Gemma 3 270M's modules, for when its folder is not converted yet (18 layers).
_GEMMA3_LAYER = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
]
EMBEDDED_MODULES = frozenset(
    ["model.embed_tokens", "model.norm", "lm_head"]
    + [f"model.layers.{i}.{name}" for i in range(18) for name in _GEMMA3_LAYER]
)


def _tensor_names(file: Path) -> list[str]:
    """The tensor names in a safetensors file's header: 8 bytes of length, then that much JSON."""
    with file.open("rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            return []
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            return []
        header = json.loads(handle.read(length))
    return [name for name in header if name != "__metadata__"] if isinstance(header, dict) else []


def module_names(folder: Path) -> frozenset[str] | None:
    """Module paths (`model.layers.0.self_attn.q_proj`) of the model in `folder`, from its safetensors headers;
    None when it has no safetensors file or they cannot be read (the worker then finds out)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    try:
        names = [name for file in files for name in _tensor_names(file)]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    # A tensor `a.b.weight` belongs to the module `a.b`.
    return frozenset(name.rsplit(".", 1)[0] for name in names if "." in name) or None


def _matches(target: str, module: str) -> bool:
    # PEFT's rule for a list of target names: the module's full name, or its last dotted parts.
    return module == target or module.endswith("." + target)


def check_target_modules(config: TrainingConfig, modules: frozenset[str] | None) -> None:
    """422 when none of the modules that would get adapters is in the model: the worker would fail on it."""
    if modules is None:
        return
    wanted = config.lora.trained_modules
    if any(_matches(target, module) for target in wanted for module in modules):
        return
    leaves = sorted({module.rsplit(".", 1)[-1] for module in modules})
    raise InvalidInput(
        f"lora.target_modules {wanted} match no module of model {config.model.name!r}, so nothing would train; "
        f"its modules end in: {', '.join(leaves[:30])}",
        code="target_modules_not_found",
        param="lora.target_modules",
    )
