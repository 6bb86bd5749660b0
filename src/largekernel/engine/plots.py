"""PNG plots of a run (loss, lr, validation accuracy) and of a confusion matrix."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(run_dir: Path) -> list[Path]:
    """Write loss.png, lr.png and accuracy.png from the run's metrics.jsonl; returns the paths."""
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch" and "val_top1" in r]
    written = []
    for name, xs, series, ylabel in (
        ("loss.png", [r["step"] for r in steps], {"train loss": [r["loss"] for r in steps]}, "loss"),
        ("lr.png", [r["step"] for r in steps], {"lr": [r["lr"] for r in steps]}, "learning rate"),
        ("accuracy.png", [r["epoch"] for r in epochs],
         {k: [r[k] for r in epochs] for k in ("val_top1", "val_top5", "ema_top1") if epochs and k in epochs[0]},
         "accuracy (%)"),
    ):
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, ys in series.items():
            ax.plot(xs, ys, label=label, marker="o" if name == "accuracy.png" else None)
        ax.set_xlabel("epoch" if name == "accuracy.png" else "step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=100)
        plt.close(fig)
        written.append(run_dir / name)
    return written


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """A confusion-matrix heatmap (rows: true class, columns: predicted)."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * n + 2), max(4, 0.4 * n + 2)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, confusion[i][j], ha="center", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
