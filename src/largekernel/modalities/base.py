"""What a modality gives the engine: datasets, a model, and single-file loading for `predict`.

The engine never looks inside a modality; a new modality is one module that registers a class
with `@register_modality`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..engine.config import TrainConfig


@dataclass
class Skipped:
    """Returned by a dataset (instead of a sample) for an unreadable item when not strict."""

    path: str
    reason: str


@dataclass
class DataBundle:
    train: Dataset | None
    val: Dataset | None
    classes: list[str]


def collate(batch: list) -> dict:
    """Stack (input, label) samples; `Skipped` items are removed and handed on for counting."""
    good = [b for b in batch if not isinstance(b, Skipped)]
    skipped = [b for b in batch if isinstance(b, Skipped)]
    if not good:
        return dict(x=None, y=None, skipped=skipped)
    x = torch.stack([b[0] for b in good])
    labels = [b[1] for b in good]
    # class indices, or per-sample soft target vectors (e.g. mixed in the dataset)
    y = torch.stack(labels) if torch.is_tensor(labels[0]) else torch.as_tensor(labels)
    return dict(x=x, y=y, skipped=skipped)


class Modality:
    """Base class: classification over files of one kind.

    A modality for another task (e.g. forecasting) overrides `prepare_batch`, `loss`, `evaluate`,
    `report` and `predict`, and sets `metric` / `higher_is_better` (which pick best.safetensors).
    """

    name: str = ""
    extensions: tuple[str, ...] = ()
    metric: str = "top1"  # the validation metric that selects the best checkpoint
    higher_is_better: bool = True
    eval_copies: bool = False  # validation samples are stacks of test-time copies (V x input)

    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train/val datasets of (input tensor, class index) and the class names."""
        raise NotImplementedError

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """One evaluation-ready input for `predict`; raises ValueError naming the file if unreadable."""
        raise NotImplementedError

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        """The network: by default a UniRepLKNet from the registry with the config's options."""
        from ..models.registry import create_model

        return create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes,
                            in_chans=cfg.in_chans, drop_path_rate=cfg.drop_path,
                            head_init_scale=cfg.head_init_scale, **cfg.model_kwargs)

    def example_input(self, cfg: TrainConfig, batch: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """A random batch shaped like the model's input (for `reparam`'s equivalence check)."""
        return torch.randn(batch, cfg.in_chans, cfg.input_size, cfg.input_size, generator=generator)

    # ---- training ------------------------------------------------------------------------------
    def prepare_batch(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: TrainConfig,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-level augmentation and targets: label smoothing and mixup/cutmix (soft targets).
        Labels that are already soft (B x classes floats, e.g. mixed in the dataset) are kept."""
        from ..engine.mixup import mix_batch

        if y.is_floating_point() and y.dim() == 2:
            return x, y
        return mix_batch(x, y, num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.smoothing, gen)

    def loss(self, output: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        from ..engine.mixup import classification_loss

        return classification_loss(output, target, cfg.loss)

    # ---- evaluation and prediction ---------------------------------------------------------------
    def evaluate(self, model: nn.Module, dataset: Dataset, cfg: TrainConfig, classes: list[str],
                 device: torch.device, batch_size: int | None = None) -> dict:
        """Validation metrics (a dict of numbers, plus lists for per-class detail)."""
        from ..engine.evaluate import evaluate

        return evaluate(model, dataset, len(classes), batch_size or cfg.batch_size, device, cfg.amp,
                        workers=cfg.workers, copies=self.eval_copies)

    def report(self, metrics: dict, classes: list[str], out: Path) -> str:
        """Human-readable text for `largekernel eval`; may write figures next to `eval.json` in `out`."""
        from ..tools.table import format_table

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
            from ..engine.plots import plot_confusion
            metrics["confusion_png"] = str(plot_confusion(metrics["confusion"], classes,
                                                          out / "confusion.png"))
        except ImportError:
            pass  # matplotlib not installed: no figure
        return text

    def predict(self, trained, paths: list[str | Path], topk: int = 5,
                options: dict | None = None) -> list[dict]:
        """One result per file: `top` (label, index, prob), or `error`; a modality may instead
        write files and list them under `written`."""
        from ..engine.inference import predict_files

        return predict_files(trained, paths, topk)


MODALITIES: dict[str, Callable[[], Modality]] = {}


def register_modality(cls):
    MODALITIES[cls.name] = cls
    return cls


BUILTIN = ("image", "audio", "timeseries", "pointcloud", "video")


def _register_builtin() -> None:
    """Import the built-in modality modules (each registers itself; heavy libraries load lazily)."""
    import importlib

    for name in BUILTIN:
        importlib.import_module(f"{__package__}.{name}")


def get_modality(name: str) -> Modality:
    _register_builtin()

    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; available: {', '.join(sorted(MODALITIES))}")
    return MODALITIES[name]()


def modality_for_file(path: str | Path) -> Modality:
    """The modality that reads files with this extension."""
    _register_builtin()

    ext = Path(path).suffix.lower()
    for cls in MODALITIES.values():
        if ext in cls.extensions:
            return cls()
    known = sorted(e for cls in MODALITIES.values() for e in cls.extensions)
    raise ValueError(f"{path}: no modality reads '{ext}' files (known: {', '.join(known)})")
