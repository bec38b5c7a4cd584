"""The model's tokenizer for the API, loaded on first use and kept: lengths after templating need it.

transformers is imported here only when a tokenizer is first needed, so importing the API stays light. A hub
model whose tokenizer is not on this machine is not fetched: validation then says lengths were not checked
(the worker checks them again before it trains).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from app import files
from app.training_config import EMBEDDED_MODEL

# Fast tokenizers are not safe to call from several threads at once (their truncation state is shared).
LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _load(source: str, local_only: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=local_only)


def model_folder(name: str, project: Path, model_dirs: list[Path]) -> Path | None:
    """The model folder a name points at (absolute, or relative to the project), if it is one inside the project
    or FORGE_MODEL_DIRS (the folders a job may load a model from)."""
    if name.startswith("embedded:") or "\x00" in name:
        return None
    roots = [project.resolve(), *(d.expanduser().resolve() for d in model_dirs)]
    path = files.expand_home(name)
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        resolved = candidate.resolve()
        if (resolved / "config.json").is_file() and any(resolved.is_relative_to(root) for root in roots):
            return resolved
    return None


def for_model(name: str, project: Path, model_dirs: list[Path], cache_dir: Path) -> tuple[Any | None, str | None]:
    """(tokenizer, None), or (None, why there is none here)."""
    try:
        if name == EMBEDDED_MODEL:
            from worker import embedded

            return _load(str(embedded.tokenizer_dir(cache_dir)), True), None
        folder = model_folder(name, project, model_dirs)
        if folder is not None:
            return _load(str(folder), True), None
        if name.startswith(("/", ".", "~")):  # a path, but not to a model folder the API may read
            raise FileNotFoundError(name)
        return _load(name, True), None
    except Exception as exc:  # no such file, no cached hub copy, a malformed folder: all mean "cannot measure"
        return None, (
            f"the tokenizer of model {name!r} is not available to the API ({type(exc).__name__}), so lengths "
            "after templating were not checked here; the worker checks them before training"
        )
