"""Training checkpoints in a job's run folder: which one is complete enough to resume from."""

from __future__ import annotations

import re
from pathlib import Path

# What Trainer writes for a resumable LoRA checkpoint; trainer_state.json comes last.
_REQUIRED = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
_NAME = re.compile(r"^checkpoint-(\d+)$")


def latest_complete(folder: Path) -> Path | None:
    """The newest checkpoint-N folder holding everything a resume needs, or None."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and all((child / name).is_file() for name in _REQUIRED):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None
