"""The image modality: class-per-folder or CSV datasets, Pillow decoding, kornia transforms.

Every random choice of the training transform comes from torch's global RNG (kornia samples its
parameters with torch), so the engine's seeding (and DataLoader's per-worker seeds) make runs
reproducible.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from ..engine.classification import Classification
from ..engine.commands import RANDOM_SEED, Command, arg, positive_int
from ..engine.config import TrainConfig
from ..engine.data import DataBundle, Skipped
from ..engine.plugin import register_plugin
from ..models import registry
from ..models.weights import IMAGENET_MEAN, IMAGENET_STD
from . import files
from .files import Sample, file_datasets, folder_or_csv, one_thread
from .image_io import read_image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


# ----------------------------------------------------------------------------- decoding



# ----------------------------------------------------------------------------- transforms

def resolve_mean_std(cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """cfg.mean/std, else the model's pretrained cfg, else ImageNet; averaged to one channel if in_chans == 1."""
    try:
        pcfg = registry.get_pretrained_cfg(cfg.model)
        mean, std = tuple(pcfg.mean), tuple(pcfg.std)
    except ValueError:  # not a registry model: ImageNet statistics
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    mean = tuple(cfg.mean) if cfg.mean is not None else mean
    std = tuple(cfg.std) if cfg.std is not None else std
    out = []
    for name, v in (("mean", mean), ("std", std)):
        if len(v) == 1:
            v = v * cfg.in_chans
        elif len(v) != cfg.in_chans and cfg.in_chans == 1:
            v = (sum(v) / len(v),)
        if len(v) != cfg.in_chans:
            raise ValueError(f"{name}={list(v)} has {len(v)} values but in_chans={cfg.in_chans}; "
                             f"give one value per channel")
        out.append(tuple(float(a) for a in v))
    return out[0], out[1]


def parse_randaug(spec: str | None) -> tuple[int, int] | None:
    """"m9" / "m9-n2" / timm's "rand-m9-mstd0.5-inc1" -> (n ops, kornia magnitude in 1..29); None disables.

    The timm-style level m is on a 0..10 scale (m10 = strongest); kornia's RandAugment uses 0..30 over
    the same operation ranges, so kornia m = 3 * level, clamped to kornia's open interval (0, 30).
    """
    if spec is None or str(spec).lower() in ("", "none", "off", "false"):
        return None
    n, level = 2, None
    for tok in str(spec).lower().split("-"):
        if m := re.fullmatch(r"m(\d+(?:\.\d+)?)", tok):
            level = float(m.group(1))
        elif m := re.fullmatch(r"n(\d+)", tok):
            n = int(m.group(1))
        elif tok != "rand" and not re.fullmatch(r"(mstd|inc|mmax|w|p)[\d.]+", tok):
            raise ValueError(f"randaug={spec!r}: expected e.g. 'm9' (magnitude 0..10) or 'm9-n2'")
    if level is None:
        raise ValueError(f"randaug={spec!r}: no magnitude; expected e.g. 'm9' (magnitude 0..10)")
    return n, int(min(max(round(level * 3), 1), 29))


def _interp(cfg: TrainConfig) -> str:
    if cfg.interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={cfg.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    return cfg.interpolation


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


class EvalTransform:
    """Resize the short side to int(size / crop_pct) (antialiased), centre-crop size x size, normalise."""

    def __init__(self, size: int, crop_pct: float, interpolation: str, mean, std) -> None:
        self.size, self.crop_pct, self.interpolation = size, crop_pct, interpolation
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import resize

        short = max(int(self.size / self.crop_pct), self.size)
        if min(x.shape[-2:]) != short:
            x = resize(x[None], short, interpolation=self.interpolation, side="short",
                       antialias=True)[0].clamp_(0, 1)
        h, w = x.shape[-2:]
        top, left = int(round((h - self.size) / 2)), int(round((w - self.size) / 2))
        x = x[:, top:top + self.size, left:left + self.size]
        return _normalize(x, self.mean, self.std).contiguous()


class TrainTransform:
    """RandomResizedCrop -> horizontal flip -> RandAugment -> normalise -> random erasing (kornia)."""

    def __init__(self, size: int, scale: tuple[float, float], hflip: float, randaug: str | None,
                 reprob: float, interpolation: str, mean, std) -> None:
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        self.size, self.interpolation, self.mean, self.std = size, interpolation, mean, std
        self.rrc = K.RandomResizedCrop((size, size), scale=tuple(scale))  # used for its parameters only
        self.flip = K.RandomHorizontalFlip(p=hflip) if hflip > 0 else None
        ra = parse_randaug(randaug)
        self.randaug = RandAugment(n=ra[0], m=ra[1]) if ra else None
        self.erase = K.RandomErasing(p=reprob, value=0.0) if reprob > 0 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import crop_by_indices

        x = x[None]
        box = self.rrc.forward_parameters(x.shape)["src"]
        # kornia's own apply step does not antialias; crop and resize with antialiasing instead
        align = None if self.interpolation == "nearest" else False
        x = crop_by_indices(x, box, (self.size, self.size), interpolation=self.interpolation,
                            align_corners=align, antialias=True).clamp_(0, 1)
        if self.flip is not None:
            x = self.flip(x)
        if self.randaug is not None:
            c = x.shape[1]
            x = self.randaug(x.expand(-1, 3, -1, -1) if c == 1 else x)[:, :c].clamp(0, 1)
        x = _normalize(x[0], self.mean, self.std)[None]
        if self.erase is not None:
            x = self.erase(x)
        return x[0].contiguous()


def build_transform(cfg: TrainConfig, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training or evaluation transform the config describes."""
    mean, std = resolve_mean_std(cfg)
    if train:
        return TrainTransform(cfg.input_size, cfg.scale, cfg.hflip, cfg.randaug, cfg.reprob,
                              _interp(cfg), mean, std)
    return EvalTransform(cfg.input_size, cfg.crop_pct, _interp(cfg), mean, std)


# ----------------------------------------------------------------------------- datasets

class ImageDataset(Dataset):
    """(path, class index) samples decoded and transformed per item; unreadable files -> Skipped."""

    def __init__(self, samples: list[Sample], classes: list[str], transform: Callable,
                 in_chans: int = 3, strict: bool = False) -> None:
        self.samples, self.classes, self.transform = samples, classes, transform
        self.in_chans, self.strict = in_chans, strict
        self.targets = [y for _, y in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with one_thread():
            try:
                x = read_image(path, self.in_chans)
            except Exception as e:  # any decoder failure: a bad file must not kill the run
                reason = f"cannot read image: {e}"
                if self.strict:
                    raise ValueError(f"{path}: {reason}") from e
                return Skipped(str(path), reason)
            return self.transform(x), label


def load_samples(path: str | Path, classes: list[str] | None,
                 source: str = "the class list") -> tuple[list[Sample], list[str]]:
    """An image folder (one subfolder per class) or a CSV of path,label -> (samples, classes)."""
    return files.load_samples(path, classes, source, EXTENSIONS, "images", "<image>")


# ----------------------------------------------------------------------------- command line

def _make_digits(args) -> int:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled, no download) as grayscale PNGs in
    OUT/train and OUT/val, one folder per digit, split per digit."""
    from .digits import write_digits_dataset

    counts = write_digits_dataset(args.output, size=args.size, seed=args.seed,
                                  val_fraction=args.val_fraction, overwrite=args.overwrite)
    sys.stdout.write(f"wrote {counts['train']} training and {counts['val']} validation digits "
                     f"({args.size}x{args.size} PNGs) to {args.output}/train and {args.output}/val\n")
    return 0


DIGITS = Command("digits", "write scikit-learn's handwritten digits as PNGs in OUT/train and OUT/val",
                 _make_digits, [
    arg("output", metavar="OUT", help="folder to write OUT/{train,val}/<digit>/<index>.png"),
    arg("--size", type=positive_int, default=32, metavar="N", help="image side in pixels (default 32)"),
    arg("--val-fraction", type=float, default=0.2, metavar="F",
        help="fraction of each digit in OUT/val (default 0.2)"),
    RANDOM_SEED,
    arg("--overwrite", action="store_true", help="replace existing OUT/train and OUT/val"),
], _make_digits.__doc__)


@register_plugin
class ImageModality(Classification):
    """Images: ImageFolder or CSV datasets, RGB/grayscale decoding, timm-style augmentation."""

    name = "image"
    data_generators = (DIGITS,)
    extensions = EXTENSIONS

    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train + val (given, or a stratified split of train); with train=False only the eval set."""
        if cfg.in_chans not in (1, 3):
            raise ValueError(f"in_chans={cfg.in_chans}: images decode to 3 (RGB) or 1 (grayscale) channels")

        def make(samples: list[Sample], classes: list[str], part: str) -> ImageDataset:
            return ImageDataset(samples, classes, build_transform(cfg, part == "train"), cfg.in_chans,
                                cfg.strict)

        return file_datasets(cfg, train, folder_or_csv(EXTENSIONS, "images", "<image>"), make,
                             "a folder with one subfolder per class, or a CSV of path,label",
                             "a folder or CSV")

    def input_contract(self, cfg: TrainConfig) -> dict[str, str]:
        mean, std = resolve_mean_std(cfg)
        side, short = cfg.input_size, max(int(cfg.input_size / cfg.crop_pct), cfg.input_size)
        return dict(input=f"float32 N x {cfg.in_chans} x {side} x {side}, one image per row",
                    preprocessing=f"decode to {'RGB' if cfg.in_chans == 3 else 'grayscale'} in [0, 1]; "
                                  f"resize the short side to {short} ({cfg.interpolation}, antialiased); "
                                  f"centre-crop {side} x {side}; subtract mean {list(mean)}, divide by "
                                  f"std {list(std)}",
                    output=f"N x {len(cfg.classes or [])} class logits")

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """One eval-transformed (C, H, W) tensor for `predict`."""
        with one_thread():
            try:
                x = read_image(path, cfg.in_chans)
            except Exception as e:
                raise ValueError(f"{path}: cannot read image: {e}") from e
            return build_transform(cfg, train=False)(x)
