"""The demo's dataset: scikit-learn's 1,797 bundled handwritten digits written as real PNG files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .files import stratified_split


def write_digits_dataset(root: str | Path, size: int = 32, seed: int = 0, val_fraction: float = 0.2,
                         overwrite: bool = False) -> dict:
    """Write root/{train,val}/<digit>/<index>.png (8-bit grayscale "L" PNGs, size x size) and return counts.

    The 8x8 images (ink 0..16, white on black) are scaled to 0..255 and upsampled with Pillow's
    bicubic filter. The split is stratified per digit (`val_fraction` of each, from `seed`, via the
    shared `files.stratified_split`), so it is the same on every machine. File names are the
    sample's index in `sklearn.datasets.load_digits()`. Existing train/val folders are an error
    unless `overwrite=True`, which deletes them first.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    for sub in ("train", "val"):
        d = root / sub
        if d.exists() and any(d.iterdir()):
            if not overwrite:
                raise ValueError(f"{d} already exists and is not empty; pass overwrite=True or "
                                 f"choose another folder")
            shutil.rmtree(d)
    digits = load_digits()
    pixels = np.clip(np.round(digits.images * (255 / 16)), 0, 255).astype(np.uint8)
    samples = [(str(i), int(y)) for i, y in enumerate(digits.target)]
    train, val = stratified_split(samples, val_fraction, seed)
    counts: dict = {"train": len(train), "val": len(val), "size": size,
                    "per_class": {str(c): {"train": 0, "val": 0} for c in range(10)}}
    for split, items in (("train", train), ("val", val)):
        for index, label in items:
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(pixels[int(index)])  # uint8 2-D: mode "L"
            img.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{int(index):04d}.png")
            counts["per_class"][str(label)][split] += 1
    return counts
