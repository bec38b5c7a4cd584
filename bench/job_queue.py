"""The job queue alone: claim latency and jobs/s with 1, 4 and 16 worker processes, on SQLite and on Postgres.

Each worker process runs the real queue code (app.jobs.claim_next, then finish) in a loop until the queue is empty,
with no training in between: the numbers are the ceiling the queue puts on a fleet of workers, and how a claim
slows down as workers contend. Postgres is a throw-away server (tests/postgres.py: Debian's package, a temporary
folder, a unix socket, fsync off), SQLite a WAL file in a temporary project.

    python bench/job_queue.py                          # 1, 4 and 16 workers, 400 jobs each, both databases
    python bench/job_queue.py --workers 1 4 --jobs 200 --databases postgres --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ comes first on the path and this file would shadow the standard `queue` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

# One worker: wait for the common start time, then claim and finish until the queue is empty; print timings.
CLAIMER = """
import json, sys, time
from sqlmodel import Session
from app import jobs
from app.core.config import Settings
from app.core.db import make_engine
from app.models import JobStatus

name, start_at = sys.argv[1], float(sys.argv[2])
engine = make_engine(Settings().sqlalchemy_url)
with Session(engine, expire_on_commit=False) as session:
    session.connection()  # connected before the clock starts
    time.sleep(max(0.0, start_at - time.time()))
    claims, finished = [], []
    while True:
        began = time.perf_counter()
        job = jobs.claim_next(session, name, 60)
        claims.append(time.perf_counter() - began)
        if job is None:
            break
        jobs.finish(session, job, JobStatus.succeeded)
        finished.append(time.time())
print(json.dumps({"claims": claims[:-1], "finished": finished}))
"""


def _queue(url: str, project: Path, count: int) -> None:
    from app import jobs
    from app.core.config import Settings
    from app.core.db import Database
    from app.training_config import TrainingConfig

    db = Database(Settings(project_dir=project, database_url=url))
    with db.session() as session:
        for _ in range(count):
            jobs.create(session, TrainingConfig())
    db.dispose()


def run(url: str, project: Path, workers: int, count: int) -> dict[str, Any]:
    _queue(url, project, count)
    env = dict(os.environ, FORGE_PROJECT_DIR=str(project), FORGE_DATABASE_URL=url, PYTHONPATH=str(ROOT))
    start_at = time.time() + 3 + 0.5 * workers  # every process imported and connected by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, f"bench-{i}", str(start_at)], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        for i in range(workers)
    ]
    results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    claims = sorted(c for r in results for c in r["claims"])
    finished = [f for r in results for f in r["finished"]]
    assert len(finished) == count, f"{len(finished)} of {count} jobs finished"
    elapsed = max(finished) - start_at
    return {
        "workers": workers,
        "jobs": count,
        "jobs_per_second": count / elapsed,
        "claim_ms_p50": 1000 * statistics.median(claims),
        "claim_ms_p95": 1000 * claims[int(0.95 * (len(claims) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--jobs", type=int, default=400, help="jobs queued for each run")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from tests.postgres import PostgresServer

    server = PostgresServer().start() if "postgres" in args.databases else None
    rows = []
    try:
        for database in args.databases:
            for workers in args.workers:
                with tempfile.TemporaryDirectory() as tmp:
                    project = Path(tmp)
                    url = server.new_database() if server and database == "postgres" else None
                    url = url or f"sqlite:///{project / '.factory' / 'forge.db'}"
                    row = {"database": database, **run(url, project, workers, args.jobs)}
                rows.append(row)
                print(
                    f"{database:8} {workers:3} workers: {row['jobs_per_second']:7.1f} jobs/s, claim "
                    f"p50 {row['claim_ms_p50']:6.1f} ms, p95 {row['claim_ms_p95']:6.1f} ms",
                    flush=True,
                )
    finally:
        if server:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
