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

from app.resolve import ModelSource

# Fast tokenizers are not safe to call from several threads at once (their truncation state is shared).
LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _load(source: str, local_only: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=local_only)


def for_model(model: ModelSource, cache_dir: Path) -> tuple[Any | None, str | None]:
    """(tokenizer, None), or (None, why there is none here)."""
    try:
        if model.kind == "embedded":
            from app import embedded

            return _load(str(embedded.tokenizer_dir(cache_dir)), True), None
        return _load(model.load_path(cache_dir), True), None
    except Exception as exc:  # no cached hub copy, a malformed folder: all mean "cannot measure"
        return None, (
            f"the tokenizer of model {model.name!r} is not available to the API ({type(exc).__name__}), so lengths "
            "after templating were not checked here; the worker checks them before training"
        )
