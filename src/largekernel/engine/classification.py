"""The classification task on the plug-in contract: one class per sample, soft targets from mixup,
cross-entropy or BCE, top-k metrics with a confusion matrix, top-k predictions per file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .config import TrainConfig
from .inference import Trained, predict_files
from .metrics import ClassificationMetrics
from .mixup import classification_loss, mix_batch
from .plugin import Plugin
from .table import format_table


class Classification(Plugin):
    """Base class of class-per-sample plug-ins: they add `datasets` and `load` (and, for a model
    other than the plain backbone, `build_model` and `example_input`)."""

    metric = "top1"
    higher_is_better = True

    def prepare_batch(self, x: torch.Tensor, y: torch.Tensor, num_outputs: int, cfg: TrainConfig,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Label smoothing and mixup/cutmix (soft targets). Labels that are already soft (B x
        classes floats, e.g. mixed in the dataset) are kept."""
        if y.is_floating_point() and y.dim() == 2:
            return x, y
        return mix_batch(x, y, num_outputs, cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.smoothing, gen)

    def loss(self, output: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        return classification_loss(output, target, cfg.loss)

    def task_metrics(self, cfg: TrainConfig, classes: list[str], dataset: Dataset) -> ClassificationMetrics:
        return ClassificationMetrics(len(classes), self.eval_copies)

    def report(self, metrics: dict, classes: list[str], out: Path) -> str:
        """Top-1/5, mean class accuracy, per-class table; confusion.png when matplotlib is present."""
        text = (f"{metrics['n']} samples: top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, "
                f"mean class accuracy {metrics['mean_class_acc']:.2f}%, loss {metrics['loss']:.4f}\n")
        if "copy_top1" in metrics:
            per_copy = ", ".join(f"{a:.1f}" for a in metrics["copy_top1"])
            text += (f"test-time copies: {len(metrics['copy_top1'])}; top-1 per copy: {per_copy} "
                     f"(averaged scores: {metrics['top1']:.2f}%)\n")
        rows = [[c, f"{a:.1f}", str(sum(r))] for c, a, r in
                zip(classes, metrics["per_class"], metrics["confusion"])]
        text += format_table(["class", "accuracy %", "samples"], rows, right=(1, 2))
        try:
            from .plots import plot_confusion  # needs matplotlib, an optional extra
            metrics["confusion_png"] = str(plot_confusion(metrics["confusion"], classes,
                                                          out / "confusion.png"))
        except ImportError:
            pass  # matplotlib not installed: no figure
        return text

    def predict(self, trained: Trained, paths: list[str | Path], topk: int = 5,
                options: dict | None = None) -> list[dict]:
        return predict_files(trained, paths, topk)
