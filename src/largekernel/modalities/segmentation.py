"""The semantic-segmentation plug-in: UPerNet on UniRepLKNet trained, evaluated and used to predict
through the engine (`largekernel train --modality segmentation`).

It wires up what the segmentation modules provide: dataset layouts and the authors' augmentation
(`segmentation_data`), the segmenter (`models.segmentation`), mmseg's losses and inference modes
(`models.segmentation_inference`), the metrics (`largekernel.metrics`) and the label-map writers
(`segmentation_viz`). Training crops are `crop_size` squares (default: input_size) rescaled from
`img_scale` (default: 4 x crop by crop, the authors' (2048, 512) for 512); validation and `eval`
run one image at a time at its own size through the released test resize, so metrics are counted
at the original resolution over the whole set, as mmseg does.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..engine.commands import RANDOM_SEED, Command, arg, positive_int
from ..engine.config import TrainConfig, option
from ..engine.data import DataBundle, Skipped
from ..engine.evaluate import autocast_context
from ..engine.plugin import Plugin, register_plugin
from ..engine.table import format_table
from ..metrics import IGNORE_INDEX, IoUAccumulator
from ..models.registry import create_model
from ..models.segmentation import ARCH_PREFIX, is_segmenter_name, load_segmenter_checkpoint
from ..models.segmentation_inference import predict_probs, segmentation_loss
from .segmentation_data import (IMAGE_EXTENSIONS, MEAN_255, STD_255, SegmentationDataError,
                                SegSample, SegTrainTransform, find_samples, load_pair, normalize,
                                read_rgb)
from .segmentation_viz import save_prediction

log = logging.getLogger(__name__)

INFERENCE_MODES = ("whole", "slide")


@dataclass
class SegmentationOptions:
    """The segmentation plug-in's options: layout, labels, augmentation, heads, inference."""

    layout: str = option("auto", "dataset layout: auto, ade20k, voc, cityscapes, folders or csv")
    num_classes: int | None = option(None, "class count when the layout does not give it (folders "
                                           "without classes.txt, CSV)")
    reduce_zero_label: bool | None = option(None, "label 0 means 'other' (ignored), labels shift down by "
                                                  "one; default: the layout's (ADE20K true)")
    crop_size: int | None = option(None, "training crop side in pixels (default: input_size)")
    img_scale: tuple[int, int] | None = option(None, "(long, short) rescale target of training and test "
                                                     "images, as L,S (default: 4 x crop, crop: 2048,512 for 512)")
    ratio_range: tuple[float, float] = option((0.5, 2.0), "training: random rescale ratio range of img_scale, as min,max")
    cat_max_ratio: float = option(0.75, "training: redraw a crop (up to 10 times) where one class covers this fraction")
    photometric: bool = option(True, "training: mmseg's photometric distortion (brightness, contrast, "
                                     "saturation, hue)")
    aux_weight: float = option(0.4, "weight of the auxiliary FCN head's loss")
    channels: int = option(512, "width of the UPerNet decode head")
    aux_channels: int = option(256, "width of the auxiliary FCN head (0: no auxiliary head)")
    pretrained_backbone: str | None = option(None, "start the backbone from ImageNet weights: a tag "
                                                   "such as in1k or in22k_ft_in1k_384, or default")
    size_divisor: int | None = option(32, "test resize: round each side up to a multiple of this")
    inference: str = option("whole", "validation, eval and predict: whole (one pass) or slide (windows)")
    slide_crop: int | None = option(None, "slide inference window side (default: the crop size)")
    slide_stride: int | None = option(None, "slide inference stride (default: 2/3 of the window, 341 for 512)")
    tta_ratios: tuple[float, ...] = option((1.0,), "test-time rescale ratios of img_scale, e.g. "
                                                   "0.5,0.75,1.0,1.25,1.5,1.75 (the authors' multi-scale)")
    tta_flip: bool = option(False, "test-time augmentation: also average the horizontally flipped image")


# ----------------------------------------------------------------------------- option helpers

def crop_size(cfg: TrainConfig) -> int:
    return int(cfg.crop_size or cfg.input_size)


def img_scale(cfg: TrainConfig) -> tuple[int, int]:
    """(long, short) of the rescale: the option, or (4 c, c) for crop c (the authors' ratio)."""
    if cfg.img_scale:
        return tuple(int(v) for v in cfg.img_scale)
    c = crop_size(cfg)
    return 4 * c, c


def inference_kwargs(cfg: TrainConfig) -> dict:
    """`predict_probs` arguments: the test resize, whole/slide, the TTA views."""
    if cfg.inference not in INFERENCE_MODES:
        raise ValueError(f"inference={cfg.inference!r}; choose whole or slide")
    window = int(cfg.slide_crop or crop_size(cfg))
    stride = int(cfg.slide_stride or max(1, window * 2 // 3))
    ratios = cfg.tta_ratios if cfg.tta_ratios is not None else (1.0,)
    ratios = tuple(float(r) for r in (ratios if isinstance(ratios, (list, tuple)) else (ratios,)))
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"tta_ratios={cfg.tta_ratios!r} must be positive numbers, e.g. 0.75,1.0,1.25")
    return dict(ratios=ratios, flip=bool(cfg.tta_flip), scale=img_scale(cfg),
                size_divisor=cfg.size_divisor, mode=cfg.inference, crop=window, stride=stride)


def segmenter_name(model: str) -> str:
    """`upernet_unireplknet_t` as given, or a backbone name (`unireplknet_t`) turned into it."""
    if is_segmenter_name(model):
        return model
    candidate = ARCH_PREFIX + model
    if is_segmenter_name(candidate):
        return candidate
    raise ValueError(f"model={model!r} is not a segmenter; use upernet_unireplknet_{{a,f,p,n,t,s,b,l,xl}} "
                     "(or the backbone's name, e.g. unireplknet_t)")


def _check(cfg: TrainConfig) -> None:
    if cfg.in_chans != 3:
        raise ValueError(f"in_chans={cfg.in_chans}: the segmentation data are RGB images; leave in_chans at 3")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size={cfg.batch_size}: UPerNet's pyramid pooling has BatchNorm on "
                         "1 x 1 maps, which cannot train on one image; use batch_size 2 or more "
                         "(with accum_steps to keep memory low)")
    if crop_size(cfg) < 32:
        raise ValueError(f"crop size {crop_size(cfg)} is too small; use 32 or more (a multiple of 32)")
    if not 0 < cfg.cat_max_ratio <= 1:
        raise ValueError(f"cat_max_ratio={cfg.cat_max_ratio} must be in (0, 1] (1 switches it off)")
    low, high = cfg.ratio_range
    if not 0 < low <= high:
        raise ValueError(f"ratio_range={tuple(cfg.ratio_range)} must be min,max with 0 < min <= max")
    inference_kwargs(cfg)


# ----------------------------------------------------------------------------- datasets

class SegPairs(Dataset):
    """(image, mask) pairs through `transform` (train: the authors' augmentation; eval: normalised
    C x H x W image and H x W labels at the original size); a bad file gives `Skipped` (or raises
    with `strict`)."""

    def __init__(self, samples: list[SegSample], num_classes: int, reduce_zero_label: bool,
                 strict: bool, transform=None) -> None:
        self.samples, self.num_classes, self.reduce_zero_label = samples, num_classes, reduce_zero_label
        self.strict, self.transform = strict, transform or _eval_pair

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            image, mask = load_pair(self.samples[i], self.num_classes, self.reduce_zero_label)
        except SegmentationDataError as e:
            if self.strict:
                raise
            return Skipped(self.samples[i].image, str(e))
        return self.transform(image, mask)


def _eval_pair(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return normalize(image), torch.from_numpy(mask)


def _random_split(samples: list[SegSample], fraction: float, seed: int) -> tuple[list, list]:
    """Hold out round(fraction x n) samples (at least 1 when there are 2 or more), seeded."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_split={fraction} must be in [0, 1)")
    if fraction == 0 or len(samples) < 2:
        return samples, []
    n_val = min(max(round(fraction * len(samples)), 1), len(samples) - 1)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_val])
    return ([s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held])


def _classes(info_classes: list[str] | None, info_count: int | None, cfg: TrainConfig) -> list[str]:
    """Class names: the layout's (classes.txt), else the configured ones, else 0..C-1 from the
    layout's or the configured class count."""
    if cfg.classes:
        if info_classes and list(cfg.classes) != list(info_classes):
            raise ValueError(f"the data's classes.txt lists {info_classes[:6]}..., the configuration "
                             f"{list(cfg.classes)[:6]}...; they must agree")
        if info_count and len(cfg.classes) != info_count:
            raise ValueError(f"{len(cfg.classes)} configured classes, but the layout has {info_count}")
        return list(cfg.classes)
    if info_classes:
        return list(info_classes)
    count = info_count or cfg.num_classes
    if not count:
        raise ValueError("the data do not say how many classes there are: add classes.txt (one name "
                         "per line) next to images/ and masks/, or set --num-classes N")
    if cfg.num_classes and info_count and cfg.num_classes != info_count:
        raise ValueError(f"num_classes={cfg.num_classes}, but the layout has {info_count} classes")
    return [str(i) for i in range(count)]


# ----------------------------------------------------------------------------- metrics

class SegmentationMetrics:
    """The `Metrics` of segmentation: per-class areas summed over the whole set (mmseg's aAcc, IoU,
    Acc, mIoU, mAcc) and the mean cross-entropy over labelled pixels.

    `outputs` are per-pixel class scores (logits or log-probabilities) B x C x H x W; they are
    resized (bilinear) to the labels' size when they differ."""

    def __init__(self, num_classes: int) -> None:
        self.iou = IoUAccumulator(num_classes, IGNORE_INDEX)
        self.nll, self.pixels = 0.0, 0

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        targets = targets.long()
        if outputs.shape[-2:] != targets.shape[-2:]:
            outputs = F.interpolate(outputs, size=tuple(targets.shape[-2:]), mode="bilinear",
                                    align_corners=False)
        self.iou.update(outputs.argmax(1), targets)
        valid = targets != IGNORE_INDEX
        nll = F.cross_entropy(outputs.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        self.nll += float(nll)
        self.pixels += int(valid.sum())

    def compute(self) -> dict:
        m = self.iou.compute()

        def per_class(t: torch.Tensor) -> list:
            return [None if math.isnan(v) else v for v in t.tolist()]

        return dict(mIoU=m["mIoU"], aAcc=m["aAcc"], mAcc=m["mAcc"],
                    loss=self.nll / self.pixels if self.pixels else math.nan,
                    n=self.iou.images, IoU=per_class(m["IoU"]), Acc=per_class(m["Acc"]))


def _identity(item):
    return item


# ----------------------------------------------------------------------------- command line

def _make_scenes(args) -> int:
    """Textured discs, boxes, triangles, rings and stripes on a textured background, several per
    image and overlapping, with palette-PNG label maps, in the images/ + masks/ layout."""
    from .segmentation_scenes import make_seg_scenes

    info = make_seg_scenes(args.output, args.train, args.val, (args.height, args.width),
                           args.classes, args.seed)
    sys.stdout.write(f"wrote {args.train} + {args.val} scenes ({args.height}x{args.width}, "
                     f"{len(info['classes'])} classes) to {info['root']}\n")
    return 0


SCENES = Command("scenes", "write synthetic segmentation scenes (textured shapes, per-pixel labels) "
                           "that `train --modality segmentation` reads directly", _make_scenes, [
    arg("output", metavar="OUT", help="folder: OUT/images/{train,val}/*.png, OUT/masks/{train,val}/*.png, "
        "OUT/classes.txt"),
    arg("--train", type=positive_int, default=32, metavar="N", help="training scenes (default 32)"),
    arg("--val", type=positive_int, default=8, metavar="N", help="validation scenes (default 8)"),
    arg("--height", type=positive_int, default=96, metavar="H", help="image height (default 96)"),
    arg("--width", type=positive_int, default=128, metavar="W", help="image width (default 128)"),
    arg("--classes", type=positive_int, default=6, metavar="C",
        help="classes, background included, 2..6 (default 6)"),
    RANDOM_SEED,
], _make_scenes.__doc__)


# ----------------------------------------------------------------------------- the plug-in

@register_plugin
class SegmentationTask(Plugin):
    """Semantic segmentation: UPerNet + UniRepLKNet, mmseg's data layouts, losses and metrics."""

    name = "segmentation"
    options = SegmentationOptions
    data_generators = (SCENES,)
    metric = "mIoU"
    higher_is_better = True
    weight_options = ("pretrained_backbone",)
    predict_arguments = (
        arg("--inference", choices=INFERENCE_MODES, default=None,
            help="segmentation: whole image or sliding windows (default: the training run's)"),
        arg("--tta-ratios", default=None, metavar="R,R,...",
            help="segmentation: test-time rescale ratios, e.g. 0.75,1.0,1.25 (default: the run's)"),
        arg("--tta-flip", action="store_true", default=None,
            help="segmentation: also average the horizontally flipped image"),
        arg("--alpha", type=float, default=0.5, metavar="A",
            help="segmentation: opacity of the colours in the overlay PNG (default 0.5)"),
    )

    # ---- data ----------------------------------------------------------------------------------
    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train = the layout's train split, val = its val split (or `val` given, or a seeded
        `val_split` of a layout without splits); train=False: the val split of `val` (for `eval`)."""
        _check(cfg)
        keep = not cfg.strict  # images without a mask: skipped one by one, not a failed scan
        if not train:
            path = cfg.val or cfg.train
            if not path:
                raise ValueError("no data to evaluate: pass --data PATH (a dataset root or CSV)")
            info = find_samples(path, "val", cfg.layout, keep)
            classes = _classes(info.classes, info.num_classes, cfg)
            zero = self._zero(cfg, info.reduce_zero_label)
            return DataBundle(None, SegPairs(info.samples, len(classes), zero, cfg.strict), classes)
        if not cfg.train:
            raise ValueError("no training data: set --data PATH: an ADE20K, Pascal VOC or Cityscapes "
                             "root, images/ + masks/ folders, or a CSV of image,mask")
        info = find_samples(cfg.train, "train", cfg.layout, keep)
        samples = info.samples
        if cfg.val:
            val = find_samples(cfg.val, "val", cfg.layout, keep).samples
        elif info.split_found:
            val = find_samples(cfg.train, "val", cfg.layout, keep).samples
        else:
            samples, val = _random_split(samples, cfg.val_split, cfg.seed)
        classes = _classes(info.classes, info.num_classes, cfg)
        zero = self._zero(cfg, info.reduce_zero_label)
        crop = crop_size(cfg)
        transform = SegTrainTransform(crop, img_scale(cfg), tuple(cfg.ratio_range), cfg.cat_max_ratio,
                                      cfg.hflip, cfg.photometric)
        return DataBundle(SegPairs(samples, len(classes), zero, cfg.strict, transform),
                          SegPairs(val, len(classes), zero, cfg.strict) if val else None, classes)

    @staticmethod
    def _zero(cfg: TrainConfig, layout_default: bool) -> bool:
        return layout_default if cfg.reduce_zero_label is None else bool(cfg.reduce_zero_label)

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """One image, normalised, at its own size (3 x H x W); ValueError naming an unreadable file."""
        return normalize(read_rgb(path))

    # ---- model ---------------------------------------------------------------------------------
    def build_model(self, cfg: TrainConfig, num_outputs: int) -> nn.Module:
        """`upernet_<backbone>` with the configured heads; `pretrained` loads the authors' ADE20K
        weights (T, B), `pretrained_backbone` the ImageNet backbone (the recipe's start)."""
        _check(cfg)
        tag = cfg.pretrained_backbone
        backbone = None if tag in (None, "", "none") else (True if tag == "default" else tag)
        return create_model(segmenter_name(cfg.model), pretrained=cfg.pretrained, num_classes=num_outputs,
                            in_chans=cfg.in_chans, drop_path_rate=cfg.drop_path, channels=cfg.channels,
                            aux_channels=cfg.aux_channels, pretrained_backbone=backbone or False,
                            **cfg.model_kwargs)

    def init_weights(self, model: nn.Module, path: str | Path) -> None:
        """A segmentation checkpoint loads every part (a different class count keeps the fresh
        classifiers); a classification or backbone checkpoint initialises the backbone only."""
        load_segmenter_checkpoint(model, path)

    def example_input(self, cfg: TrainConfig, batch: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        return torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=generator)

    def input_contract(self, cfg: TrainConfig) -> dict[str, str]:
        scale = img_scale(cfg)
        return dict(input=f"float32 N x 3 x H x W RGB images (example: {cfg.input_size} x {cfg.input_size})",
                    preprocessing=f"RGB 0-255, minus mean {MEAN_255}, divided by std {STD_255}; "
                                  f"eval resizes each image (keeping its aspect ratio) into {scale[0]}x"
                                  f"{scale[1]} (long x short), sides up to multiples of "
                                  f"{cfg.size_divisor}, then resizes the logits back",
                    output=f"N x {len(cfg.classes or [])} x H x W per-pixel class logits")

    # ---- task ----------------------------------------------------------------------------------
    def prepare_batch(self, x: torch.Tensor, y: torch.Tensor, num_outputs: int, cfg: TrainConfig,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch that skipped files left with one image is repeated to two: the pyramid pooling's
        BatchNorm on 1 x 1 maps cannot train on one image (the loss is the same mean, the
        pooled branch's batch statistics are degenerate for that step; a warning says so)."""
        if x.shape[0] == 1:
            log.warning("a training batch has one readable image (the others were skipped); it is "
                        "repeated, because BatchNorm in UPerNet's pyramid pooling needs 2 or more")
            return x.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)
        return x, y

    def loss(self, output, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        """mmseg's CE over all pixels (ignored ones as 0) of the decode head plus aux_weight x the
        auxiliary head's."""
        return segmentation_loss(output, target, cfg.aux_weight)["loss"]

    def task_metrics(self, cfg: TrainConfig, classes: list[str], dataset: Dataset) -> SegmentationMetrics:
        return SegmentationMetrics(len(classes))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, cfg: TrainConfig, classes: list[str],
                 device: torch.device, batch_size: int | None = None) -> dict:
        """One image at a time at its own size (mmseg's batch 1): test resize, whole or slide, TTA
        views averaged as probabilities; metrics over the whole set. `batch_size` is not used."""
        metrics = self.task_metrics(cfg, classes, dataset)
        kwargs = inference_kwargs(cfg)
        # an explicit generator: evaluating must not draw from the global RNG (saved in checkpoints)
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=cfg.workers,
                            collate_fn=_identity, generator=torch.Generator())
        was_training = model.training
        model.eval()
        skipped = []
        try:
            for item in loader:
                if isinstance(item, Skipped):
                    skipped.append(dict(path=item.path, reason=item.reason))
                    continue
                image, label = item
                x = image[None].to(device)
                with autocast_context(cfg.amp, device):
                    probs = predict_probs(model, x, **kwargs)
                metrics.update(image[None], probs.float().clamp_min(1e-30).log().cpu(), label[None])
        finally:
            model.train(was_training)
        if metrics.iou.images == 0:
            raise SegmentationDataError(f"no image could be evaluated ({len(skipped)} skipped): "
                                        + "; ".join(s["reason"] for s in skipped[:3]))
        return dict(metrics.compute(), skipped=skipped)

    def report(self, metrics: dict, classes: list[str], out: Path) -> str:
        """mmseg's per-class table (IoU and Acc in percent), then mIoU, aAcc, mAcc."""
        def pct(v):
            return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

        rows = [[c, pct(i), pct(a)] for c, i, a in zip(classes, metrics["IoU"], metrics["Acc"])]
        text = format_table(["class", "IoU %", "Acc %"], rows, right=(1, 2))
        return text + (f"{metrics['n']} images: mIoU {pct(metrics['mIoU'])}%, aAcc {pct(metrics['aAcc'])}%, "
                       f"mAcc {pct(metrics['mAcc'])}%, loss {metrics['loss']:.4f}\n")

    @torch.no_grad()
    def trained_from_file(self, path: Path, model_name: str | None):
        """An mmseg-layout segmenter checkpoint (e.g. the authors' ADE20K files) for `eval` and
        `predict`: the segmenter read off its weights, the class names of its meta (indices when
        it has none), and the released test pipeline (resize into 2048 x 512, whole image)."""
        from ..engine.config import resolve_config
        from ..engine.inference import Trained
        from ..models.segmentation import (is_segmenter_checkpoint, read_segmenter_meta,
                                           segmenter_from_checkpoint)

        if not is_segmenter_checkpoint(path):
            return None
        model = segmenter_from_checkpoint(path, model_name).eval()
        names = read_segmenter_meta(path).get("classes")
        classes = ([str(c) for c in names] if names and len(names) == model.num_classes
                   else [str(i) for i in range(model.num_classes)])
        cfg = resolve_config(overrides=dict(modality=self.name, model=model.name, input_size=512,
                                            classes=classes, pretrained=False))
        return Trained(model, cfg, classes, self)

    def predict(self, trained, paths: list[str | Path], topk: int = 5, options: dict | None = None) -> list[dict]:
        """Per image, `<stem>.png` (palette label map: pixel values are class ids) and
        `<stem>_overlay.png` in --output (default: a `predictions` folder next to the image).
        A folder stands for the images in it."""
        from .segmentation_viz import default_palette

        options = options or {}
        cfg = trained.cfg
        kwargs = inference_kwargs(cfg)
        if options.get("inference"):
            kwargs["mode"] = options["inference"]
        if options.get("tta_ratios"):
            kwargs["ratios"] = tuple(float(r) for r in str(options["tta_ratios"]).split(","))
        if options.get("tta_flip"):
            kwargs["flip"] = True
        palette = default_palette(max(1, len(trained.classes or [])))
        device = next(trained.model.parameters()).device
        trained.model.eval()
        results = []
        for path in _expand(paths):
            try:
                image = read_rgb(path)
            except SegmentationDataError as e:
                results.append(dict(path=str(path), error=str(e)))
                continue
            x = normalize(image)[None].to(device)
            label = predict_probs(trained.model, x, **kwargs).argmax(1)[0].cpu().numpy()
            out = Path(options["output"]) if options.get("output") else Path(path).parent / "predictions"
            label_png, overlay_png = save_prediction(label, image, out, Path(path).stem, palette,
                                                     options.get("alpha", 0.5))
            present = np.unique(label).tolist()
            names = trained.classes or [str(i) for i in range(int(label.max()) + 1)]
            fractions = {names[c]: float((label == c).mean()) for c in present}
            summary = ", ".join(f"{k} {100 * v:.1f}%" for k, v in
                                sorted(fractions.items(), key=lambda kv: -kv[1])[:topk])
            results.append(dict(path=str(path), written=[str(label_png), str(overlay_png)],
                                classes=fractions, summary=summary))
        return results


def _expand(paths: list[str | Path]) -> list[Path]:
    """Files as given; a folder -> its images (sorted, not recursing into `predictions`)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    return out

