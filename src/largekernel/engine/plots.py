"""PNG plots of a run (loss, lr, validation accuracy) and of a confusion matrix."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(run_dir: Path) -> list[Path]:
    """Write loss.png, lr.png and accuracy.png (validation.png for non-accuracy metrics) from the run's metrics.jsonl; returns the paths."""
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch" and "val_loss" in r]
    keys = [k for k in (epochs[0] if epochs else {}) if k.startswith(("val_", "ema_"))
            and not k.endswith(("_loss", "_n")) and isinstance(epochs[0][k], (int, float))]
    written = []
    for name, xs, series, ylabel, per_epoch in (
        ("loss.png", [r["step"] for r in steps], {"train loss": [r["loss"] for r in steps]}, "loss", False),
        ("lr.png", [r["step"] for r in steps], {"lr": [r["lr"] for r in steps]}, "learning rate", False),
        ("accuracy.png" if "val_top1" in keys else "validation.png", [r["epoch"] for r in epochs],
         {k: [r[k] for r in epochs] for k in keys}, "accuracy (%)" if "val_top1" in keys else "error", True),
    ):
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, ys in series.items():
            ax.plot(xs, ys, label=label, marker="o" if per_epoch else None)
        ax.set_xlabel("epoch" if per_epoch else "step")
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
