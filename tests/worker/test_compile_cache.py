"""A restarted training process compiles once what the last one had to compile twice: Dynamo's profile of the
dimensions that changed (the packed sequence length, step after step) is kept in the worker's compile cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A training process in miniature: the child's cache set-up, then one compiled function called at three lengths,
# as a training step is called with a new packed length. It prints how many graphs Dynamo compiled.
PROCESS = """
import sys
from worker.child import use_compile_cache
use_compile_cache(sys.argv[1])
import torch
from torch._dynamo.utils import counters
step = torch.compile(lambda x: (x * 2).sum(), backend="eager")
for length in (3, 5, 7):
    step(torch.ones(length))
print(counters["stats"]["unique_graphs"])
"""


def graphs_compiled(cache: Path, tmp_path: Path) -> int:
    script = tmp_path / "process.py"
    script.write_text(PROCESS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, str(script), str(cache)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_a_restarted_process_compiles_the_changing_length_dynamic_at_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert graphs_compiled(cache, tmp_path) == 2  # a static graph for length 3, then a dynamic one at length 5
    assert list((cache / "compile/inductor/dynamo").glob("code_state_*.pkl"))
    assert graphs_compiled(cache, tmp_path) == 1  # the profile on disk: dynamic from the first call


TRACED = """
import sys
from worker.child import torch_logs
import torch
torch._logging.set_logs(all=50)  # as Unsloth leaves torch's logs on import: silenced
torch_logs(sys.argv[1])
step = torch.compile(lambda x: (x * 2).sum(), backend="eager", dynamic=False)
for length in (3, 5):
    step(torch.ones(length))
"""


def test_torch_logs_show_a_recompile_after_the_backend_silenced_them(tmp_path: Path) -> None:
    """FORGE_TORCH_LOGS=recompiles: the second length's compile is logged, with the guard that failed."""
    script = tmp_path / "traced.py"
    script.write_text(TRACED)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for wanted, logged in (("recompiles", True), ("", False)):
        done = subprocess.run(
            [sys.executable, str(script), wanted], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert ("Recompiling function" in done.stderr) is logged, done.stderr
