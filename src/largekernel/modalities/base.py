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
    y = torch.as_tensor([b[1] for b in good])
    return dict(x=x, y=y, skipped=skipped)


class Modality:
    """Base class: classification over files of one kind."""

    name: str = ""
    extensions: tuple[str, ...] = ()

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


MODALITIES: dict[str, Callable[[], Modality]] = {}


def register_modality(cls):
    MODALITIES[cls.name] = cls
    return cls


def get_modality(name: str) -> Modality:
    from . import image  # noqa: F401  (registers the built-in modalities)

    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; available: {', '.join(sorted(MODALITIES))}")
    return MODALITIES[name]()


def modality_for_file(path: str | Path) -> Modality:
    """The modality that reads files with this extension."""
    from . import image  # noqa: F401

    ext = Path(path).suffix.lower()
    for cls in MODALITIES.values():
        if ext in cls.extensions:
            return cls()
    known = sorted(e for cls in MODALITIES.values() for e in cls.extensions)
    raise ValueError(f"{path}: no modality reads '{ext}' files (known: {', '.join(known)})")
