"""`python -m worker`: run until stopped (SIGTERM/SIGINT), training one job at a time."""

from __future__ import annotations

import argparse
import logging

from app.core.config import Settings
from worker.loop import Worker
from worker.warm_process import PreloadInvalid


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    parser.add_argument("--exit-when-idle", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--worker-id", default=None, help="name shown in the jobs it claims")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        worker = Worker(Settings(), worker_id=args.worker_id)
    except PreloadInvalid as exc:
        parser.exit(2, f"error: {exc}\n")
    worker.install_signal_handlers()
    worker.run(max_jobs=args.max_jobs, exit_when_idle=args.exit_when_idle)


if __name__ == "__main__":
    main()
