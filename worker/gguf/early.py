"""GGUF files written beside the evaluate step: on a GPU, converting (CPU and disk work) starts in a thread of its
own as soon as the merged model is saved, while the GPU answers the test split, instead of after it. The export
step takes the files (`EarlyGguf.files`), or the error that stopped them; a job that will not export (its
evaluate step failed or was stopped) abandons them: the tools stop and nothing they wrote is kept."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.training_config import SaveSection
from worker.gguf import StepProgress, StopCheck
from worker.gguf.convert import write_ggufs

log = logging.getLogger("forge.worker.export")


class Abandoned(Exception):
    """The job will not export: the conversion stops."""


class Quiet:
    """The stages of a conversion run beside the evaluate step: logged, while the evaluate step's progress shows."""

    def stage(self, kind: str, detail: str) -> StepProgress:
        log.info("export: %s (beside the evaluate step)", detail)
        return lambda fraction: None


class EarlyGguf:
    def __init__(self, merged: Path, out_dir: Path, types: Sequence[str], check_stop: StopCheck) -> None:
        self._abandoned = threading.Event()

        def stop() -> None:
            if self._abandoned.is_set():
                raise Abandoned()
            check_stop()

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="early-gguf")
        self._written = pool.submit(write_ggufs, merged, out_dir, types, Quiet(), stop)
        pool.shutdown(wait=False)

    @classmethod
    def begin(
        cls, save: SaveSection, merged: Path | None, out_dir: Path | None, model: Any, check_stop: StopCheck
    ) -> EarlyGguf | None:
        """Started when the job asks for GGUF files and its model is on a GPU. On a CPU, converting would take
        the cores the evaluate step runs on: the export step writes the files, after it."""
        if not save.gguf_types or merged is None or out_dir is None:
            return None
        if next(model.parameters()).device.type != "cuda":
            return None
        return cls(merged, out_dir, save.gguf_types, check_stop)

    def files(self) -> dict[str, Path]:
        return self._written.result()

    def abandon(self) -> None:
        self._abandoned.set()
        with contextlib.suppress(BaseException):  # why it stopped is the job's own error, raised already
            for path in self._written.result().values():
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def abandoned_on_error(early: EarlyGguf | None) -> Iterator[None]:
    """A step that fails or is stopped abandons the files begun beside it."""
    try:
        yield
    except BaseException:
        if early is not None:
            early.abandon()
        raise
