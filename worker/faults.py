"""Failures of a job's surroundings rather than of its config: told apart so that the advice fits them."""

from __future__ import annotations

from pathlib import Path

from app.core import disk

# torch.save reports a full disk as "PytorchStreamWriter failed writing file ...: file write failed", without
# the OS error: a failed write on a disk this close to full is taken for what it is.
LOW_SPACE_BYTES = 16 << 20


def disk_full(exc: BaseException, run_dir: Path) -> tuple[str, str] | None:
    """(`disk_full`, advice) when the job failed because the disk holding its run folder is full, else None."""
    free = disk.free_bytes(run_dir)
    wrote = isinstance(exc, OSError) or "write" in str(exc).lower()
    if not disk.full(exc) and not (wrote and free is not None and free < LOW_SPACE_BYTES):
        return None
    checkpoints = [p for p in run_dir.rglob("checkpoint-*") if p.is_dir()]
    checkpoint = max((disk.size_of(p) for p in checkpoints), default=0)
    held = disk.size_of(run_dir)
    # Room for the checkpoint being written and the next one (save_total_limit deletes the oldest only after).
    needed = max(2 * checkpoint, 64 << 20)
    return "disk_full", (
        f"the disk ran out of space while this job wrote its files ({type(exc).__name__}: {exc}). The run folder "
        f"{disk.where(run_dir)} holds {disk.human(held)} of this job"
        + (f", a checkpoint of it about {disk.human(checkpoint)}" if checkpoint else "")
        + f". Free at least {disk.human(needed)} on {disk.mount_point(run_dir)} (or point FORGE_PROJECT_DIR at a "
        "larger disk; fewer checkpoints: lower training.save_total_limit or raise save_steps), then submit the job "
        "again"
    )
