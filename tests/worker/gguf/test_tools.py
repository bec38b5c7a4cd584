"""The llama.cpp tools as subprocesses: their failures and stopping them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker.gguf import ExportError
from worker.gguf.tools import run_tool


def test_a_failing_tool_is_an_error_with_its_last_words() -> None:
    script = "import sys; print('loading'); print('Model Foo is not supported', file=sys.stderr); sys.exit(1)"
    with pytest.raises(ExportError) as info:
        run_tool([sys.executable, "-c", script], "the converter")
    assert "the converter failed (exit code 1)" in str(info.value)
    assert "Model Foo is not supported" in str(info.value)


def test_a_tool_stops_when_the_job_must(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    calls = []

    def check_stop() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise Stop

    with pytest.raises(Stop):
        run_tool([sys.executable, "-c", "import time; time.sleep(60)"], "sleep", check_stop=check_stop)


def test_llama_cpp_takes_only_the_cores_that_other_work_leaves_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its spinning threads collapse on a busy core: with every core kept busy by other processes it takes one."""
    import os
    import subprocess
    import time

    from worker.gguf.__main__ import _threads

    monkeypatch.delenv("FORGE_LLAMA_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert _threads() == 1
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    monkeypatch.setenv("FORGE_LLAMA_THREADS", "3")
    assert _threads() == 3  # a configured count is kept as given
