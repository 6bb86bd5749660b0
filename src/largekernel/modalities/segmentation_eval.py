"""Evaluating and predicting with a segmenter over files: the work behind `eval` and `predict`.

Plain functions over sample lists (no engine types): each image goes through the released test
resize (`network_input_size`), the chosen inference mode and optional test-time augmentation;
metrics are accumulated at the original resolution (mmseg's protocol). Bad files are skipped and
counted, or raise with `strict=True`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..metrics import IoUAccumulator
from ..models.segmentation_inference import predict_probs
from .segmentation_data import (IGNORE_INDEX, SegmentationDataError, SegSample, load_pair,
                                normalize, read_rgb)
from .segmentation_viz import save_prediction


@dataclass
class InferenceOptions:
    """How each image is run: test resize, whole/slide, and test-time augmentation."""

    scale: tuple[int, int] | None = (2048, 512)
    size_divisor: int | None = 32
    mode: str = "whole"
    crop: int | tuple[int, int] | None = None
    stride: int | tuple[int, int] | None = None
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False


@dataclass
class SegEvalResult:
    """Metrics over a set (mmseg's definitions) plus what was skipped."""

    metrics: dict
    images: int
    skipped: list[str] = field(default_factory=list)

    def to_dict(self, classes: Sequence[str] | None = None) -> dict:
        """JSON-ready: nan becomes None; per-class values keyed by class name when given."""
        def num(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        n = len(self.metrics["IoU"])
        names = list(classes) if classes else [str(i) for i in range(n)]
        return {"aAcc": num(self.metrics["aAcc"]), "mIoU": num(self.metrics["mIoU"]),
                "mAcc": num(self.metrics["mAcc"]), "images": self.images, "skipped": self.skipped,
                "IoU": {c: num(v) for c, v in zip(names, self.metrics["IoU"].tolist())},
                "Acc": {c: num(v) for c, v in zip(names, self.metrics["Acc"].tolist())}}


@torch.no_grad()
def predict_label(model: nn.Module, image: np.ndarray, options: InferenceOptions = InferenceOptions(),
                  device: torch.device | str = "cpu") -> np.ndarray:
    """H x W int64 class map for one RGB uint8 image, at the image's own size (each view is resized
    by the test pipeline's rule inside `predict_probs` and its probabilities brought back)."""
    x = normalize(image)[None].to(device)
    probs = predict_probs(model, x, options.ratios, options.flip, options.scale, options.size_divisor,
                          options.mode, options.crop, options.stride)
    return probs.argmax(1)[0].cpu().numpy()


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, samples: Sequence[SegSample], num_classes: int,
                       reduce_zero_label: bool = False, options: InferenceOptions = InferenceOptions(),
                       strict: bool = False, device: torch.device | str = "cpu",
                       progress: Callable[[int, int], None] | None = None) -> SegEvalResult:
    """aAcc / IoU / Acc / mIoU / mAcc over `samples`, counts summed over the set."""
    was_training = model.training
    model.eval()
    acc = IoUAccumulator(num_classes, IGNORE_INDEX)
    skipped = []
    try:
        for i, sample in enumerate(samples):
            try:
                image, label = load_pair(sample, num_classes, reduce_zero_label)
            except SegmentationDataError as e:
                if strict:
                    raise
                skipped.append(str(e))
                continue
            acc.update(predict_label(model, image, options, device), label)
            if progress is not None:
                progress(i + 1, len(samples))
    finally:
        model.train(was_training)
    if acc.images == 0:
        raise SegmentationDataError(f"no image could be evaluated ({len(skipped)} skipped): "
                                    + "; ".join(skipped[:3]))
    return SegEvalResult(acc.compute(), acc.images, skipped)


def format_iou_table(result: SegEvalResult, classes: Sequence[str] | None = None) -> str:
    """A per-class IoU / Acc table in percent (mmseg's report), then the summary line."""
    n = len(result.metrics["IoU"])
    names = list(classes) if classes else [str(i) for i in range(n)]
    width = max(5, *(len(c) for c in names))
    fmt = lambda v: "  nan" if math.isnan(v) else f"{100 * v:5.2f}"  # noqa: E731
    lines = [f"{'class':<{width}}    IoU    Acc"]
    for c, iou, a in zip(names, result.metrics["IoU"].tolist(), result.metrics["Acc"].tolist()):
        lines.append(f"{c:<{width}}  {fmt(iou)}  {fmt(a)}")
    m = result.metrics
    lines.append(f"aAcc {fmt(m['aAcc'])}  mIoU {fmt(m['mIoU'])}  mAcc {fmt(m['mAcc'])}  "
                 f"({result.images} images{f', {len(result.skipped)} skipped' if result.skipped else ''})")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def predict_files(model: nn.Module, paths: Sequence[str | Path], out_dir: str | Path,
                  options: InferenceOptions = InferenceOptions(), palette=None, strict: bool = False,
                  device: torch.device | str = "cpu") -> tuple[list[dict], list[str]]:
    """Write `<stem>.png` (label map) and `<stem>_overlay.png` per image into `out_dir`.

    Returns one record per written image (paths, classes present) and the skipped files' errors.
    """
    was_training = model.training
    model.eval()
    records, skipped = [], []
    try:
        for path in paths:
            try:
                image = read_rgb(path)
            except SegmentationDataError as e:
                if strict:
                    raise
                skipped.append(str(e))
                continue
            label = predict_label(model, image, options, device)
            label_path, overlay_path = save_prediction(label, image, out_dir, Path(path).stem, palette)
            records.append({"image": str(path), "label": str(label_path), "overlay": str(overlay_path),
                            "classes": np.unique(label).tolist()})
    finally:
        model.train(was_training)
    return records, skipped
