"""Label maps as images: a class palette, colour rendering, overlays, and the prediction writer."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np



def default_palette(num_classes: int) -> np.ndarray:
    """A num_classes x 3 uint8 palette of well-separated colours, the same for every call.

    Class k's bits are spread over the high bits of R, G and B (bit 0 -> 128 of R, bit 1 -> 128 of
    G, bit 2 -> 128 of B, bit 3 -> 64 of R, ...), so neighbouring class ids get distinct colours.
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        c, value = k + 1, [0, 0, 0]  # k + 1: class 0 is not black, black marks ignored pixels
        for shift in range(7, -1, -1):
            for ch in range(3):
                value[ch] |= (c & 1) << shift
                c >>= 1
        palette[k] = value
    return palette


def colorize(label: np.ndarray, palette: np.ndarray | Sequence[Sequence[int]] | None = None,
             ignore_index: int = 255) -> np.ndarray:
    """H x W class indices -> H x W x 3 uint8 colours (ignored and unknown ids black)."""
    label = np.asarray(label)
    palette = np.asarray(palette if palette is not None else default_palette(int(label.max(initial=0)) + 1),
                         dtype=np.uint8)
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    known = (label >= 0) & (label < len(palette)) & (label != ignore_index)
    out[known] = palette[label[known]]
    return out


def overlay(image: np.ndarray, label: np.ndarray, palette=None, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend the colour label map over an RGB uint8 image (ignored pixels show the image)."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    colours = colorize(label, palette, ignore_index).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = (label == ignore_index)[..., None]
    return np.where(keep, image, np.round(out)).astype(np.uint8)


def save_label_png(label: np.ndarray, path: str | Path, palette=None) -> Path:
    """Write a label map as a palette PNG: its pixels ARE the class ids, viewers show colours."""
    from PIL import Image

    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError("a PNG label map holds ids 0..255; got values outside that range")
    palette = np.asarray(palette if palette is not None else default_palette(256), dtype=np.uint8)
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: min(len(palette), 256)] = palette[:256]
    h, w = label.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    im.putpalette(flat.reshape(-1).tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def save_prediction(label: np.ndarray, image: np.ndarray, out_dir: str | Path, stem: str,
                    palette=None, alpha: float = 0.5) -> tuple[Path, Path]:
    """Write `<stem>.png` (palette label map) and `<stem>_overlay.png` (colours over the image)."""
    from PIL import Image

    out_dir = Path(out_dir)
    label_path = save_label_png(label, out_dir / f"{stem}.png", palette)
    over = out_dir / f"{stem}_overlay.png"
    Image.fromarray(overlay(image, np.asarray(label), palette, alpha)).save(over)
    return label_path, over
