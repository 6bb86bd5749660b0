"""The image modality: class-per-folder or CSV datasets, Pillow decoding, kornia transforms.

Every random choice of the training transform comes from torch's global RNG (kornia samples its
parameters with torch), so the engine's seeding (and DataLoader's per-worker seeds) make runs
reproducible.
"""
from __future__ import annotations

import csv
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from ..engine.config import TrainConfig
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD
from .base import DataBundle, Modality, Skipped, register_modality
from .image_io import read_image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_HEADER_NAMES = {"path", "file", "filename", "filepath", "image", "img", "video", "clip", "audio"}
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
Sample = tuple[str, int]


# ----------------------------------------------------------------------------- decoding

@contextmanager
def one_thread():
    """Run per-sample work on one intra-op thread: on small tensors a thread pool costs more than
    it saves (training transform at 32 px: 27 ms with 2 threads vs 3 ms with 1, on 2 busy cores)."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


# ----------------------------------------------------------------------------- transforms

def resolve_mean_std(cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """cfg.mean/std, else the model's pretrained cfg, else ImageNet; averaged to one channel if in_chans == 1."""
    from ..models.registry import get_pretrained_cfg

    try:
        pcfg = get_pretrained_cfg(cfg.model)
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


def _check_classes(found: list[str], classes: list[str], where: str, source: str) -> None:
    extra = [c for c in found if c not in classes]
    if extra:
        raise ValueError(f"{where}: class(es) {extra} are not in {source} {classes}; "
                         f"remove them or fix the class list")


def scan_folder(root: Path, classes: list[str] | None, source: str, extensions=EXTENSIONS,
                kind: str = "images", example: str = "<image>",
                skip: tuple[str, ...] = (".",)) -> tuple[list[Sample], list[str]]:
    """root/<class>/**/<file> -> samples and classes (sorted folder names unless given); files with
    `extensions` count, folders whose name starts with one of `skip` are not classes. `kind` and
    `example` word the errors (e.g. "videos", "<clip>.mp4")."""
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(skip))
    if not dirs:
        raise ValueError(f"{root}: no {kind} found; expected one subfolder per class "
                         f"({root}/<class_name>/{example}) or a CSV of path,label")
    found = [d.name for d in dirs]
    if classes is None:
        classes = found
    else:
        _check_classes(found, classes, str(root), source)
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for d in dirs:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in extensions and p.is_file()
                       and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{d}: class folder has no {kind} ({' '.join(extensions)}); "
                             f"add {kind} or remove the folder")
        samples += [(str(p), index[d.name]) for p in files]
    return samples, classes


def read_csv(path: Path, classes: list[str] | None, source: str,
             kind: str = "images") -> tuple[list[Sample], list[str]]:
    """A CSV of path,label (optional header; relative paths against the CSV's folder)."""
    rows: list[tuple[int, str, str]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}, line {line}: expected 2 columns 'path,label', got {row}")
            p, label = row[0].strip(), row[1].strip()
            if not rows and line == 1 and p.lower() in CSV_HEADER_NAMES:
                continue  # header
            rows.append((line, p, label))
    if not rows:
        raise ValueError(f"{path}: the CSV lists no {kind}; expected lines of path,label")
    if classes is None:
        classes = sorted({label for _, _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    missing = []
    for line, p, label in rows:
        if label not in index:
            raise ValueError(f"{path}, line {line}: label {label!r} is not in {source} {classes}; "
                             f"fix the label or the class list")
        file = Path(p) if Path(p).is_absolute() else path.parent / p
        if not file.is_file():
            missing.append((line, file))
        samples.append((str(file), index[label]))
    if missing:
        line, file = missing[0]
        raise ValueError(f"{path}, line {line}: file {file} does not exist ({len(missing)} missing "
                         f"file(s) in all); relative paths are resolved against the CSV's folder")
    return samples, classes


def load_samples(path: str | Path, classes: list[str] | None, source: str = "the class list",
                 extensions=EXTENSIONS, kind: str = "images",
                 example: str = "<image>") -> tuple[list[Sample], list[str]]:
    """A folder or a CSV -> (samples, classes); `source` names where a fixed class list came from."""
    p = Path(path)
    if p.is_dir():
        return scan_folder(p, classes, source, extensions, kind, example)
    if p.is_file():
        return read_csv(p, classes, source, kind)
    raise ValueError(f"{p} does not exist; pass a folder with one subfolder per class or a CSV "
                     f"of path,label")


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out round(fraction * n) of each class (at least 1 when a class has 2+ samples)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_split={fraction} must be in [0, 1)")
    if fraction == 0:
        return samples, []
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in sorted(by_class):
        items = by_class[c]
        n_val = min(max(round(fraction * len(items)), 1), len(items) - 1)
        order = torch.randperm(len(items), generator=g).tolist()
        val += [items[i] for i in sorted(order[:n_val])]
        train += [items[i] for i in sorted(order[n_val:])]
    return train, val


@register_modality
class ImageModality(Modality):
    """Images: ImageFolder or CSV datasets, RGB/grayscale decoding, timm-style augmentation."""

    name = "image"
    extensions = EXTENSIONS

    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train + val (given, or a stratified split of train); with train=False only the eval set."""
        if cfg.in_chans not in (1, 3):
            raise ValueError(f"in_chans={cfg.in_chans}: images decode to 3 (RGB) or 1 (grayscale) channels")

        def make(samples: list[Sample], classes: list[str], is_train: bool) -> ImageDataset:
            return ImageDataset(samples, classes, build_transform(cfg, is_train), cfg.in_chans, cfg.strict)

        if not train:
            path = cfg.val or cfg.train
            if not path:
                raise ValueError("no data to evaluate: pass a folder or CSV (val=PATH)")
            samples, classes = load_samples(path, cfg.classes, "the checkpoint's classes")
            return DataBundle(None, make(samples, classes, False), classes)
        if not cfg.train:
            raise ValueError("no training data: set train=PATH (a folder with one subfolder per "
                             "class, or a CSV of path,label)")
        samples, classes = load_samples(cfg.train, cfg.classes, "the configured classes")
        if cfg.val:
            val, _ = load_samples(cfg.val, classes, "the training classes")
        else:
            samples, val = stratified_split(samples, cfg.val_split, cfg.seed)
        return DataBundle(make(samples, classes, True), make(val, classes, False) if val else None,
                          classes)

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """One eval-transformed (C, H, W) tensor for `predict`."""
        with one_thread():
            try:
                x = read_image(path, cfg.in_chans)
            except Exception as e:
                raise ValueError(f"{path}: cannot read image: {e}") from e
            return build_transform(cfg, train=False)(x)
