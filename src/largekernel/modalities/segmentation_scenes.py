"""Synthetic segmentation scenes: textured shapes on textured backgrounds, with per-pixel labels.

Each class has its own colour range and texture, so a small segmenter can learn them; shapes
overlap (later ones occlude earlier ones) and several classes share each image. Written in the
generic layout (`images/{train,val}`, `masks/{train,val}` palette PNGs, `classes.txt`), fully
determined by the seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .segmentation_viz import save_label_png

CLASSES = ("background", "disc", "box", "triangle", "ring", "stripe")


def _texture(kind: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An H x W x 3 float texture in [0, 255] for class `kind`: hue range and pattern per class."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array([[90, 90, 90], [220, 60, 50], [50, 170, 60], [60, 80, 220], [230, 200, 40],
                     [170, 60, 200]][kind % 6], dtype=np.float32)
    base = np.clip(base + rng.normal(0, 18, 3), 0, 255)
    period = rng.uniform(4, 9)
    angle = rng.uniform(0, np.pi)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    pattern = [0.25 * wave, 0.5 * np.sign(wave) * 0.4, 0.15 * wave, 0.3 * (wave > 0.6),
               0.1 * wave, 0.35 * np.sign(wave)][kind % 6]
    noise = rng.normal(0, 10, (h, w, 1))
    return np.clip(base[None, None] * (1 + pattern[..., None]) + noise, 0, 255)


def _draw_shape(kind: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A boolean H x W mask of one shape of class `kind` at a random place and size."""
    from PIL import Image, ImageDraw

    h, w = size
    im = Image.new("1", (w, h), 0)
    d = ImageDraw.Draw(im)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    r = rng.uniform(0.12, 0.3) * min(h, w)
    if kind == 1:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif kind == 2:
        d.rectangle([cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r], fill=1)
    elif kind == 3:
        a = rng.uniform(0, 2 * np.pi)
        d.polygon([(cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3))
                   for k in range(3)], fill=1)
    elif kind == 4:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        d.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=0)
    else:
        thick = max(2.0, 0.25 * r)
        a = rng.uniform(0, np.pi)
        dx, dy = 1.6 * r * np.cos(a), 1.6 * r * np.sin(a)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=1, width=int(thick))
    return np.array(im, dtype=bool)


def make_scene(size: tuple[int, int], rng: np.random.Generator, num_classes: int = len(CLASSES),
               min_shapes: int = 2, max_shapes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 H x W x 3 scene and its H x W uint8 label map (0 = background)."""
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in 2..{len(CLASSES)}, got {num_classes}")
    image = _texture(0, size, rng)
    label = np.zeros(size, dtype=np.uint8)
    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        kind = int(rng.integers(1, num_classes))
        mask = _draw_shape(kind, size, rng)
        image[mask] = _texture(kind, size, rng)[mask]
        label[mask] = kind
    return np.round(image).astype(np.uint8), label


def make_seg_scenes(out: str | Path, train: int = 32, val: int = 8, size: tuple[int, int] = (96, 128),
                    num_classes: int = len(CLASSES), seed: int = 0) -> dict:
    """Write `train` + `val` scenes under `out` in the generic layout; returns a summary."""
    from PIL import Image

    out = Path(out)
    rng = np.random.default_rng(seed)
    counts = np.zeros(num_classes, dtype=np.int64)
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            image, label = make_scene(tuple(size), rng, num_classes)
            counts += np.bincount(label.ravel(), minlength=num_classes)
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / "images" / split / f"scene_{i:04d}.png")
            save_label_png(label, out / "masks" / split / f"scene_{i:04d}.png")
    (out / "classes.txt").write_text("\n".join(CLASSES[:num_classes]) + "\n")
    return {"root": str(out), "train": train, "val": val, "size": list(size),
            "classes": list(CLASSES[:num_classes]), "pixel_fraction": (counts / counts.sum()).tolist()}
