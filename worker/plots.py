"""metrics/loss.png: the training loss curve, drawn from the logged history at the end of training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from app import files


def write_loss_plot(log_history: list[dict[str, Any]], path: Path, title: str = "training loss") -> bool:
    """Draw loss (and learning rate) per step; False when no finite loss was logged."""
    points = [(e["step"], float(e["loss"])) for e in log_history if "loss" in e and math.isfinite(float(e["loss"]))]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display in a worker
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    steps, losses = zip(*points, strict=True)
    axes.plot(steps, losses, marker="." if len(points) < 50 else None, color="tab:blue", label="loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    rates = [(e["step"], float(e["learning_rate"])) for e in log_history if "learning_rate" in e]
    if rates:
        twin = axes.twinx()
        twin.plot(*zip(*rates, strict=True), color="tab:orange", alpha=0.6, label="learning rate")
        twin.set_ylabel("learning rate")
    figure.tight_layout()
    with files.atomic(path) as handle:
        figure.savefig(handle, format="png")
    return True
