"""Reports in `output/data/`: per-epoch histories as CSV and learning curves as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import pandas as pd


def write_history(folder: Path, name: str, history: list[dict[str, float]]) -> None:
    """`<name>.csv` and `<name>.png`: every per-epoch series, losses on the left axis."""
    if not history:
        return
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(history).set_index("epoch")
    frame.to_csv(folder / f"{name}.csv")
    losses = [c for c in frame.columns if "loss" in c]
    scores = [c for c in frame.columns if c not in losses]
    if "validation_log_loss" in losses and "validation_loss" in losses:
        losses.remove("validation_log_loss")  # the same series for classification
    palette = plt.get_cmap("tab10").colors
    figure, left = plt.subplots(figsize=(9, 4.5))
    frame[losses].plot(ax=left, marker=".", color=palette[: len(losses)])
    left.set_xlabel("epoch")
    left.set_ylabel("loss (solid)")
    left.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.08, 1.0))
    if scores:
        right = left.twinx()
        colors = palette[len(losses) : len(losses) + len(scores)]
        frame[scores].plot(ax=right, linestyle="--", marker=".", color=colors)
        right.set_ylabel("validation metric (dashed)")
        right.legend(loc="lower left", fontsize="small", bbox_to_anchor=(1.08, 0.0))
    left.set_title(name.replace("_", " "))
    figure.tight_layout()
    figure.savefig(folder / f"{name}.png", dpi=100)
    plt.close(figure)
