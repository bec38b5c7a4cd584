"""One job on several GPUs, the worker's side: a training process of N DDP ranks started under torchrun
(`torch.distributed.run --standalone --nproc-per-node N`), that the worker loop supervises like its single one.

Rank 0 connects to the worker through a Unix socket and speaks the pipe's protocol (worker.protocol): it gets the
JobSpec, reports progress and ends with the job's outcome; the other ranks only train (worker/ranks.py). Every
rank reads the stop flag and the lease deadline from one small file the worker maps into memory (`Flags`); the
worker's lease clock writes each renewal of its heartbeat thread there too (`LeaseClock.mirror`), so a cancel, a
shutdown and the lease watchdog reach all of them. The torchrun agent dies with the worker and the ranks
with the agent (PR_SET_PDEATHSIG in each); a rank that fails makes torchrun end the others.

The worker process imports this module; it must not import torch (the agent and the ranks do, in themselves).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app import workers
from app.models import Job, JobKind
from worker import lease
from worker.lease import LeaseClock
from worker.protocol import JobSpec, StopMode
from worker.supervision import TrainingProcess

log = logging.getLogger("forge.worker")

CONTROL_ENV = "FORGE_RANKS_CONTROL"  # the launch's control folder: the flags file and rank 0's socket
AGENT_PID_ENV = "FORGE_RANKS_AGENT"  # the torchrun agent's pid, which every rank checks is its parent
WORKER_PID_ENV = "FORGE_RANKS_WORKER"  # the worker's pid, which the agent checks is its parent
FLAGS_FILE, SOCKET_FILE = "flags", "rank0.sock"
MONITOR_SECONDS = 0.5  # how often the torchrun agent looks at its ranks
FAILED_RANK_GRACE_SECONDS = 3.0  # a failed rank other than 0 waits this long before torchrun ends the others


def ranks_for(job: Job, gpus: list[int]) -> int:
    """The ranks `job` trains with on this worker (an export job, which does not train, runs in one process)."""
    wanted = job.training_config.training.num_gpus
    if job.kind != JobKind.training:
        return 1
    return workers.capacity(gpus) if wanted == "all" else wanted


class Flags:
    """The stop flag (int32 at 0) and the lease deadline (double at 8), in a file every rank maps: the same
    `.value` objects as the single training process's multiprocessing Values."""

    SIZE = 16

    def __init__(self, path: Path) -> None:
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), self.SIZE)
        self.stop = ctypes.c_int32.from_buffer(self._map, 0)
        self.deadline = ctypes.c_double.from_buffer(self._map, 8)

    @classmethod
    def create(cls, path: Path) -> Flags:
        path.write_bytes(bytes(cls.SIZE))
        flags = cls(path)
        flags.stop.value, flags.deadline.value = StopMode.RUN, lease.DISARMED
        return flags


class RankZero:
    """The worker's end of the pipe to rank 0: a socket rank 0 connects to once started. What is sent before
    waits for it; `poll` answers False until then, so the worker supervises a starting job as a running one."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.conn: Connection | None = None
        self.pending: list[Any] = []

    def _connected(self, timeout: float) -> bool:
        if self.conn is None:
            if not select.select([self.listener], [], [], timeout)[0]:
                return False
            sock, _ = self.listener.accept()
            self.conn = Connection(sock.detach())
            for message in self.pending:
                self.conn.send(message)
        return True

    def send(self, message: Any) -> None:
        if self.conn is None:
            self.pending.append(message)
        else:
            self.conn.send(message)

    def poll(self, timeout: float = 0.0) -> bool:
        if self.conn is None:
            return self._connected(timeout) and self.conn is not None and self.conn.poll(0)
        return self.conn.poll(timeout)

    def recv(self) -> Any:
        if self.conn is None:
            raise EOFError("rank 0 never connected")
        return self.conn.recv()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


class Torchrun:
    """The torchrun agent process, as the worker loop handles a training process (is_alive, kill, join,
    exitcode); its control folder goes with it."""

    def __init__(self, popen: subprocess.Popen[bytes], control: Path) -> None:
        self.popen, self.control = popen, control

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.returncode

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to the agent; each rank follows it by its parent-death signal."""
        if self.is_alive():
            os.kill(self.popen.pid, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return
        shutil.rmtree(self.control, ignore_errors=True)


def launch(spec: JobSpec, backend: str, ranks: int, gpus: list[int], lease: LeaseClock) -> TrainingProcess:
    """Start `ranks` training processes for one job under torchrun (not reused for another job); their deadline
    follows the worker's lease clock until the job ends (`LeaseClock.mirror`)."""
    control = Path(tempfile.mkdtemp(prefix=f"forge-{spec.job_id}-"))  # private (0700): the socket needs no key
    flags = Flags.create(control / FLAGS_FILE)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(control / SOCKET_FILE))
    listener.listen(1)
    env = {**os.environ, CONTROL_ENV: str(control), WORKER_PID_ENV: str(os.getpid())}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus[:ranks])
    command = [
        *(sys.executable, "-m", "worker.distributed", "--standalone", "--nproc-per-node", str(ranks)),
        *("--monitor-interval", str(MONITOR_SECONDS), "-m", "worker.distributed", "rank", str(control)),
    ]
    log.info("job %s: starting %d ranks under torchrun (GPUs %s)", spec.job_id, ranks, gpus[:ranks] or "none")
    # A session of its own: a Ctrl-C in the worker's terminal is the worker's to handle, as for one process.
    popen = subprocess.Popen(command, env=env, start_new_session=True)
    lease.mirror(flags.deadline)
    return TrainingProcess(Torchrun(popen, control), RankZero(listener), flags.stop, backend, reusable=False)


def agent_main(argv: list[str]) -> None:
    """`python -m worker.distributed <torchrun arguments>`: torchrun, tied to the worker that started it. Its exit
    code is a rank's lease-lost code when a rank ended for that, so the worker tells it from a crash."""
    lease.die_with_parent(int(os.environ[WORKER_PID_ENV]))
    os.environ[AGENT_PID_ENV] = str(os.getpid())
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError as failed:
        codes = {failure.exitcode for failure in failed.failures.values()}
        sys.exit(lease.EXIT_LEASE_LOST if lease.EXIT_LEASE_LOST in codes else 1)


class _Silent:
    """The pipe of a rank other than 0: what its steps report is rank 0's to say."""

    def send(self, message: Any) -> None:
        pass


def rank_main(control: Path) -> int:
    """`python -m worker.distributed rank <control>`, under torchrun: one rank of the job. Rank 0 gets the spec
    from the worker and runs the job as the single training process does (worker/child.py), sending its outcome;
    the other ranks train with it and exit (0 also when stopped: the worker knows from rank 0)."""
    from worker import child, ranks

    flags = Flags(control / FLAGS_FILE)
    child.prepare_process(flags.deadline, int(os.environ[AGENT_PID_ENV]))
    ranks.join()
    conn: Any = None
    if ranks.leader():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(control / SOCKET_FILE))
        conn = Connection(sock.detach())
    spec: JobSpec = ranks.from_leader(lambda: conn.recv())  # sent first, as to a single training process
    child.use_compile_cache(spec.cache_dir)
    if conn is not None:
        child.run_one(spec, conn, flags.stop, warm=False)
        conn.close()
        code = 0
    else:
        code = _follow(spec, flags.stop, ranks.rank())
    ranks.leave()
    return code


def _follow(spec: JobSpec, stop_flag: Any, rank: int) -> int:
    """A rank other than 0: the job's steps up to training; its warnings and errors go to the job's log."""
    from app.run_folder import RunFolder
    from app.training_config import TrainingConfig
    from worker import child
    from worker.protocol import StopRequested
    from worker.reporter import Reporter

    handler = child.log_to(RunFolder(Path(spec.run_dir), TrainingConfig.model_validate(spec.config)).log_file)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s"))
    try:
        child.run_job(spec, Reporter(_Silent(), stop_flag))
    except StopRequested:
        return 0
    except BaseException:
        log.exception("rank %d failed", rank)
        time.sleep(FAILED_RANK_GRACE_SECONDS)  # a failure of rank 0 too is reported by rank 0, before torchrun ends it
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["rank"]:
        sys.exit(rank_main(Path(sys.argv[2])))
    agent_main(sys.argv[1:])
