"""What datasets hand the engine: samples, skipped items, and batches of them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class Skipped:
    """Returned by a dataset (instead of a sample) for an unreadable item when not strict."""

    path: str
    reason: str


@dataclass
class DataBundle:
    """A plug-in's datasets and the names of its outputs (class names, forecast variables)."""

    train: Dataset | None
    val: Dataset | None
    classes: list[str]


def collate(batch: list) -> dict:
    """Stack (input, target) samples; `Skipped` items are removed and handed on for counting."""
    good = [b for b in batch if not isinstance(b, Skipped)]
    skipped = [b for b in batch if isinstance(b, Skipped)]
    if not good:
        return dict(x=None, y=None, skipped=skipped)
    x = torch.stack([b[0] for b in good])
    labels = [b[1] for b in good]
    # class indices, per-sample soft target vectors (e.g. mixed in the dataset), or dense targets
    y = torch.stack(labels) if torch.is_tensor(labels[0]) else torch.as_tensor(labels)
    return dict(x=x, y=y, skipped=skipped)
