"""Semantic-segmentation data: dataset layouts, mask reading with per-file checks, the authors'
ADE20K training augmentation and test resize, on numpy/torch (no OpenCV, no torchvision).

Pure functions and classes with plain arguments (no engine or plug-in types), so the training
plug-in only wires them up. Images are RGB uint8 H x W x 3 arrays until normalisation; masks are
H x W int64 class indices with 255 = ignore.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The authors' normalisation, on the 0-255 scale (RGB).
MEAN_255 = (123.675, 116.28, 103.53)
STD_255 = (58.395, 57.12, 57.375)
LAYOUTS = ("ade20k", "voc", "cityscapes", "folders", "csv")


class SegmentationDataError(ValueError):
    """A dataset, image or mask that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class SegSample:
    """One image and its mask (None for an unlabelled image to predict on)."""

    image: str
    mask: str | None


@dataclass
class SegDatasetInfo:
    """What a layout implies: its samples, class count/names and whether labels are shifted.

    `split_found` is False when the layout has no train/val split (folders without train/ and val/
    inside, a CSV): the samples are then the whole set, for the caller to split.
    """

    samples: list[SegSample]
    layout: str
    num_classes: int | None = None
    classes: list[str] | None = None
    reduce_zero_label: bool = False
    split_found: bool = True


# ----------------------------------------------------------------------------- reading

def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to an RGB uint8 H x W x 3 array (Pillow; EXIF rotation applied)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im).convert("RGB")
            return np.array(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise SegmentationDataError(f"{path}: not a readable image ({e})") from None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG as H x W int64 class indices: palette PNGs give their indices (not colours),
    grayscale 8/16-bit PNGs their values. A colour (RGB) mask is refused with a hint."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                return np.array(im, dtype=np.int64)
            mode = im.mode
    except (OSError, ValueError) as e:
        raise SegmentationDataError(f"{path}: not a readable mask image ({e})") from None
    raise SegmentationDataError(
        f"{path}: the mask is a {mode} colour image; masks must hold class indices (a palette "
        "PNG, or an 8/16-bit grayscale PNG with values 0..C-1 and 255 for ignore). Convert colours "
        "to indices first.")


def shift_zero_label(mask: np.ndarray) -> np.ndarray:
    """ADE20K's reduce_zero_label, on a copy: 0 -> 255 (ignored), v -> v - 1, 255 stays 255."""
    out = mask.astype(np.int64) - 1
    out[(mask == 0) | (mask == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def check_mask(mask: np.ndarray, num_classes: int | None, where: str,
               image_shape: Sequence[int] | None = None) -> None:
    """Raise a `SegmentationDataError` naming `where` for a size mismatch or out-of-range labels."""
    if image_shape is not None and tuple(mask.shape[:2]) != tuple(image_shape[:2]):
        raise SegmentationDataError(
            f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
            f"{image_shape[1]}x{image_shape[0]}; a mask must have its image's size")
    if num_classes is not None:
        bad = np.unique(mask[(mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))])
        if bad.size:
            raise SegmentationDataError(
                f"{where}: label values {bad[:8].tolist()} are outside 0..{num_classes - 1} (255 = "
                "ignore); check the class count (--num-classes) or whether the dataset needs "
                "reduce_zero_label (ADE20K: 0 = 'other')")


def load_pair(sample: SegSample, num_classes: int | None = None,
              reduce_zero_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one sample: (RGB uint8 H x W x 3, int64 H x W labels after the shift)."""
    image = read_rgb(sample.image)
    if sample.mask is None:
        raise SegmentationDataError(f"{sample.image}: has no mask")
    if not Path(sample.mask).is_file():
        raise SegmentationDataError(f"{sample.image}: its mask {sample.mask} does not exist")
    mask = read_mask(sample.mask)
    if reduce_zero_label:
        mask = shift_zero_label(mask)
    check_mask(mask, num_classes, sample.mask, image.shape)
    return image, mask


# ----------------------------------------------------------------------------- layouts

def _images_under(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def _pair_by_stem(images: list[Path], image_root: Path, mask_root: Path, where: str,
                  mask_suffix: str | None = None, keep_missing: bool = False) -> list[SegSample]:
    """Pair each image with the mask of the same relative name; missing masks raise, or with
    `keep_missing` stay in as samples whose expected mask path does not exist (`load_pair` then
    names them, so a training run can skip and count them)."""
    samples, missing = [], []
    for img in images:
        rel = img.relative_to(image_root).with_suffix("")
        candidates = ([mask_root / f"{rel}{mask_suffix}"] if mask_suffix else
                      [mask_root / f"{rel}{ext}" for ext in (".png", ".PNG", ".tif", ".bmp")])
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            missing.append(str(img))
            if keep_missing:
                samples.append(SegSample(str(img), str(candidates[0])))
        else:
            samples.append(SegSample(str(img), str(mask)))
    if missing and not keep_missing:
        raise SegmentationDataError(
            f"{where}: {len(missing)} image(s) have no mask in {mask_root} (same relative path and "
            f"name, .png): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if not samples:
        raise SegmentationDataError(f"{where}: no images found in {image_root}")
    return samples


def _read_classes(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def detect_layout(root: str | Path) -> str:
    """'ade20k', 'voc', 'folders' or 'csv' from what `root` holds."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return "csv"
    if (root / "ADEChallengeData2016").is_dir() or ((root / "images" / "training").is_dir()
                                                    and (root / "annotations").is_dir()):
        return "ade20k"
    if any((r / "ImageSets" / "Segmentation").is_dir() for r in _voc_roots(root)):
        return "voc"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folders"
    raise SegmentationDataError(
        f"{root}: no known segmentation layout. Use one of: ADE20K (ADEChallengeData2016/images|"
        "annotations/training|validation), Pascal VOC 2012 (JPEGImages, SegmentationClass, "
        "ImageSets/Segmentation/{train,val}.txt), Cityscapes (leftImg8bit/, gtFine/ with "
        "*_gtFine_labelTrainIds.png), images/ + masks/ folders (optionally with "
        "train/ and val/ inside each), or a CSV file with image,mask columns")


def _voc_roots(root: Path) -> list[Path]:
    return [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]


def find_samples(root: str | Path, split: str = "train", layout: str = "auto",
                 keep_missing: bool = False) -> SegDatasetInfo:
    """The samples of `split` ("train" or "val") of a dataset in one of `LAYOUTS` (auto-detected).
    `keep_missing`: images without a mask (ADE20K, folders) are kept for `load_pair` to reject one
    by one, instead of failing the whole scan."""
    root = Path(root)
    if not root.exists():
        raise SegmentationDataError(f"{root} does not exist")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "ade20k":
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        sub = "training" if split == "train" else "validation"
        images = base / "images" / sub
        if not images.is_dir():
            raise SegmentationDataError(f"{base}: no images/{sub} folder (ADE20K layout)")
        samples = _pair_by_stem(_images_under(images), images, base / "annotations" / sub,
                                f"ADE20K {sub}", ".png", keep_missing)
        return SegDatasetInfo(samples, "ade20k", 150, None, reduce_zero_label=True)
    if layout == "voc":
        base = next((r for r in _voc_roots(root) if (r / "ImageSets" / "Segmentation").is_dir()), root)
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise SegmentationDataError(f"{listing} does not exist (Pascal VOC layout)")
        names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
        samples, missing = [], []
        for n in names:
            img, mask = base / "JPEGImages" / f"{n}.jpg", base / "SegmentationClass" / f"{n}.png"
            (samples.append(SegSample(str(img), str(mask))) if img.is_file() and mask.is_file()
             else missing.append(n))
        if missing:
            raise SegmentationDataError(
                f"{listing}: {len(missing)} listed name(s) lack JPEGImages/<name>.jpg or "
                f"SegmentationClass/<name>.png: {', '.join(missing[:5])}")
        return SegDatasetInfo(samples, "voc", 21, None, reduce_zero_label=False)
    if layout == "cityscapes":
        images = root / "leftImg8bit" / split
        if not images.is_dir():
            raise SegmentationDataError(f"{root}: no leftImg8bit/{split} folder (Cityscapes layout)")
        found = sorted(images.rglob("*_leftImg8bit.png"))
        samples, missing = [], []
        for img in found:
            rel = img.relative_to(images).as_posix().replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            mask = root / "gtFine" / split / rel
            (samples.append(SegSample(str(img), str(mask))) if mask.is_file() else missing.append(str(img)))
        if missing:
            raise SegmentationDataError(
                f"Cityscapes {split}: {len(missing)} image(s) lack gtFine/.../*_gtFine_labelTrainIds.png "
                f"(make them with cityscapesscripts' createTrainIdLabelImgs): {', '.join(missing[:3])}")
        if not samples:
            raise SegmentationDataError(f"{images}: no *_leftImg8bit.png images")
        return SegDatasetInfo(samples, "cityscapes", 19, None, reduce_zero_label=False)
    if layout == "folders":
        images, masks = root / "images", root / "masks"
        split_found = (images / split).is_dir()
        if split_found:
            images, masks = images / split, masks / split
        samples = _pair_by_stem(_images_under(images), images, masks, f"{root} ({split})",
                                keep_missing=keep_missing)
        classes = _read_classes(root)
        return SegDatasetInfo(samples, "folders", len(classes) if classes else None, classes,
                              split_found=split_found)
    if layout == "csv":
        return SegDatasetInfo(read_pairs_csv(root), "csv", None, _read_classes(root.parent),
                              split_found=False)
    raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)} or 'auto'")


def read_pairs_csv(path: str | Path) -> list[SegSample]:
    """Samples from a CSV with `image,mask` columns (paths relative to the CSV's folder allowed)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SegmentationDataError(f"{path} is empty; it needs image,mask rows")
    header = [c.strip().lower() for c in rows[0]]
    has_header = "image" in header and "mask" in header
    i, m = (header.index("image"), header.index("mask")) if has_header else (0, 1)
    samples, missing = [], []
    for n, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(i, m):
            raise SegmentationDataError(f"{path}, line {n}: expected image,mask, got {row}")
        img, mask = (Path(row[i].strip()), Path(row[m].strip()))
        img, mask = (p if p.is_absolute() else path.parent / p for p in (img, mask))
        if not img.is_file() or not mask.is_file():
            missing.append(f"line {n}: {img if not img.is_file() else mask}")
        samples.append(SegSample(str(img), str(mask)))
    if missing:
        raise SegmentationDataError(f"{path}: {len(missing)} file(s) missing: {'; '.join(missing[:5])}")
    if not samples:
        raise SegmentationDataError(f"{path} lists no image,mask pairs")
    return samples


# ----------------------------------------------------------------------------- transforms

def keep_ratio_size(height: int, width: int, scale: Sequence[int], ratio: float = 1.0) -> tuple[int, int]:
    """(h, w) fitting (long, short) = (int(max(scale) r), int(min(scale) r)), sides rounded half up."""
    long_side, short_side = int(max(scale) * ratio), int(min(scale) * ratio)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear (half-pixel centres, no antialias) resize of an H x W x C uint8/float image."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    if image.dtype == np.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out.numpy().astype(image.dtype)


def resize_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an H x W label map (source index floor(dst * in / out))."""
    if tuple(mask.shape) == tuple(size):
        return mask
    rows = np.minimum((np.arange(size[0]) * mask.shape[0] / size[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) * mask.shape[1] / size[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def crop_bbox(shape: Sequence[int], crop: Sequence[int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop window (y1, y2, x1, x2), uniform over valid offsets (0 where smaller)."""
    dy, dx = max(shape[0] - crop[0], 0), max(shape[1] - crop[1], 0)
    y, x = int(rng.integers(0, dy + 1)), int(rng.integers(0, dx + 1))
    return y, y + min(crop[0], shape[0]), x, x + min(crop[1], shape[1])


def random_crop(image: np.ndarray, mask: np.ndarray, crop: Sequence[int], rng: np.random.Generator,
                cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX):
    """mmseg's RandomCrop: redraw (up to 10 times) while the crop has < 2 labelled classes or one
    class covers >= cat_max_ratio of its labelled pixels; the last draw is then used unchecked."""
    box = crop_bbox(mask.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = box
            _, counts = np.unique(mask[y1:y2, x1:x2][mask[y1:y2, x1:x2] != ignore_index],
                                  return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = crop_bbox(mask.shape, crop, rng)
    y1, y2, x1, x2 = box
    return image[y1:y2, x1:x2], mask[y1:y2, x1:x2]


def rgb_to_hsv_u8(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> OpenCV-convention uint8 HSV (H in 0..179 = degrees / 2, S and V in 0..255)."""
    x = image.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1e-12), 0.0)
    d = np.maximum(delta, 1e-12)
    h = np.where(v == r, 60.0 * (g - b) / d, np.where(v == g, 120.0 + 60.0 * (b - r) / d,
                                                      240.0 + 60.0 * (r - g) / d))
    h = np.where(delta == 0, 0.0, h) % 360.0
    out = np.stack([np.round(h / 2) % 180, np.round(s), v], -1)
    return out.astype(np.uint8)


def hsv_u8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """OpenCV-convention uint8 HSV -> RGB uint8 (rounded)."""
    h = hsv[..., 0].astype(np.float32) * 2.0 / 60.0
    s, v = hsv[..., 1].astype(np.float32) / 255.0, hsv[..., 2].astype(np.float32)
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(hsv.shape, dtype=np.float32)
    for k, (r, g, b) in enumerate(table):
        sel = i == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], -1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _affine_u8(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """x * alpha + beta, clipped to [0, 255] and truncated to uint8 (mmseg's convert)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on a uint8 image, each step with probability 0.5: brightness,
    contrast (right after brightness or at the end, a coin flip), saturation and hue in HSV."""
    img = image
    if rng.integers(2):
        img = _affine_u8(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = _affine_u8(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = rgb_to_hsv_u8(img)
        hsv[..., 1] = _affine_u8(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = hsv_u8_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv_u8(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-hue_delta, hue_delta))) % 180
        img = hsv_u8_to_rgb(hsv)
    if not contrast_first and rng.integers(2):
        img = _affine_u8(img, alpha=rng.uniform(*contrast_range))
    return img


def normalize(image: np.ndarray, mean=MEAN_255, std=STD_255) -> torch.Tensor:
    """RGB uint8 H x W x 3 -> float C x H x W, (x - mean) / std on the 0-255 scale."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def pad_to(image: torch.Tensor, mask: torch.Tensor, size: Sequence[int],
           ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad at the bottom/right to `size`: the (normalised) image with 0, the mask with ignore."""
    dh, dw = max(size[0] - image.shape[-2], 0), max(size[1] - image.shape[-1], 0)
    if dh or dw:
        image = F.pad(image, (0, dw, 0, dh), value=0.0)
        mask = F.pad(mask, (0, dw, 0, dh), value=ignore_index)
    return image, mask


class SegTrainTransform:
    """The authors' ADE20K training pipeline after loading: random rescale (ratio in
    `ratio_range` of `scale`), random crop with cat_max_ratio, flip, photometric distortion,
    normalisation, padding to the crop (0 / ignore). Returns (C x H x W float, H x W int64)."""

    def __init__(self, crop: int | Sequence[int] = 512, scale: Sequence[int] = (2048, 512),
                 ratio_range: Sequence[float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                 flip_prob: float = 0.5, photometric: bool = True, mean=MEAN_255, std=STD_255,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
        self.scale, self.ratio_range = tuple(scale), tuple(ratio_range)
        self.cat_max_ratio, self.flip_prob, self.photometric = cat_max_ratio, flip_prob, photometric
        self.mean, self.std, self.ignore_index = mean, std, ignore_index

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None):
        """`rng` None: drawn from torch's global RNG, so the engine's seeding makes runs repeatable."""
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        ratio = rng.uniform(*self.ratio_range)
        size = keep_ratio_size(*image.shape[:2], self.scale, ratio)
        image, mask = resize_image(image, size), resize_mask(mask, size)
        image, mask = random_crop(image, mask, self.crop, rng, self.cat_max_ratio, self.ignore_index)
        if rng.random() < self.flip_prob:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        x = normalize(image, self.mean, self.std)
        y = torch.from_numpy(np.ascontiguousarray(mask)).long()
        return pad_to(x, y, self.crop, self.ignore_index)


class SegTestTransform:
    """The released test pipeline: keep-ratio resize into `scale` ((2048, 512): long side <= 2048,
    short <= 512), then up to multiples of `size_divisor`, normalise. Returns the image tensor and
    its original (H, W); the label is never resized (metrics at the original resolution)."""

    def __init__(self, scale: Sequence[int] | None = (2048, 512), size_divisor: int | None = 32,
                 mean=MEAN_255, std=STD_255) -> None:
        self.scale, self.size_divisor, self.mean, self.std = scale, size_divisor, mean, std

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        ori = tuple(image.shape[:2])
        size = keep_ratio_size(*ori, self.scale) if self.scale else ori
        if self.size_divisor:
            size = tuple(-(-s // self.size_divisor) * self.size_divisor for s in size)
        return normalize(resize_image(image, size), self.mean, self.std), ori


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) pairs through a transform; a bad file raises `SegmentationDataError` naming it
    (the training plug-in turns that into a skipped, counted sample unless --strict)."""

    def __init__(self, samples: Sequence[SegSample], num_classes: int | None, transform=None,
                 reduce_zero_label: bool = False) -> None:
        self.samples, self.num_classes = list(samples), num_classes
        self.transform, self.reduce_zero_label = transform, reduce_zero_label

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image, mask = load_pair(self.samples[i], self.num_classes, self.reduce_zero_label)
        if self.transform is None:
            return normalize(image), torch.from_numpy(mask)
        return self.transform(image, mask)
