"""Image decoding with Pillow: every mode it opens -> float RGB or grayscale, with a pixel limit.

Pillow reads JPEG (RGB, grayscale, CMYK, Adobe-inverted CMYK), PNG (8/16-bit, palette, alpha), GIF,
WebP, BMP and TIFF (8/16-bit, float, CMYK, multi-page); this module turns what it returns into one
layout: EXIF orientation applied, transparency composited on white, 16-bit and float samples scaled
by their own range, animations and multi-page files read at their first frame (said once per file),
and images above `max_pixels()` refused by size before any pixel is decoded.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MAX_PIXELS = 100_000_000  # 100 megapixels: 1.2 GB as float RGB; LARGEKERNEL_MAX_PIXELS overrides it
_told: set[str] = set()  # files already reported as animated / multi-page, per process


def max_pixels() -> int:
    """The largest image (width x height) read: LARGEKERNEL_MAX_PIXELS, else MAX_PIXELS."""
    return int(os.environ.get("LARGEKERNEL_MAX_PIXELS", MAX_PIXELS))


def _too_large(path, width: int, height: int) -> ValueError:
    return ValueError(f"{path}: {width} x {height} pixels ({width * height / 1e6:.0f} megapixels) is above "
                      f"the limit of {max_pixels() / 1e6:g} megapixels; downscale it first (e.g. "
                      "`convert IN -resize 8000x8000 OUT`), or raise the limit with "
                      "LARGEKERNEL_MAX_PIXELS=N if the memory allows")


def _scaled(arr: np.ndarray, mode: str) -> np.ndarray:
    """Samples of an integer or float single-channel image in [0, 1]."""
    arr = arr.astype(np.float32)
    if mode.startswith("I;16"):
        return arr / 65535.0
    if mode == "F" and np.nanmax(arr, initial=0) <= 1.0:  # float images are usually 0..1
        return np.clip(arr, 0, 1)
    # 32-bit integer ("I", older Pillow's 16-bit PNG) or float beyond 1: 16-bit or 8-bit range
    return np.clip(arr / (65535.0 if np.nanmax(arr, initial=0) > 255 else 255.0), 0, 1)


def read_image(path: str | Path, in_chans: int = 3) -> torch.Tensor:
    """Decode a file to a float (C, H, W) tensor in [0, 1]; RGB, or grayscale when in_chans == 1.

    Raises ValueError for an image above the pixel limit, and whatever Pillow raises for unreadable
    or truncated files.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():  # the size limit below replaces Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:  # beyond Pillow's own hard limit, which still applies
        raise ValueError(f"{path}: {e}; downscale it first (e.g. `convert IN -resize 8000x8000 OUT`), "
                         "or raise PIL.Image.MAX_IMAGE_PIXELS and LARGEKERNEL_MAX_PIXELS") from None
    with im:
        if im.width * im.height > max_pixels():
            raise _too_large(path, im.width, im.height)
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and str(path) not in _told:
            _told.add(str(path))
            log.warning("%s: %s %s with %d frames; using the first", path,
                        "animated" if getattr(im, "is_animated", False) else "multi-page",
                        im.format or "image", frames)
        im.load()  # decode now: truncated/corrupt data fails here, not later
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float grayscale
            x = torch.from_numpy(np.ascontiguousarray(_scaled(np.asarray(im), im.mode)[None]))
            return x if in_chans == 1 else x.expand(3, -1, -1).contiguous()
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        im = im.convert("L" if in_chans == 1 else "RGB")
        arr = np.array(im, dtype=np.uint8)  # a writable copy
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255)

