"""The evaluation preprocessing the authors' weights expect, for Python users (timm's shape).

`data_config(model)` reads it off the model's `pretrained_cfg`; `create_transform(config)` gives a
callable image -> (C, H, W) float tensor that does what the authors' evaluation did with Pillow and
torchvision: resize (bicubic) the short side to int(size / crop_pct) and centre-crop ("center"), or
resize both sides to the size ("squash", their 384 fine-tuned weights), then scale to [0, 1] and
normalise. Pillow does the resizing, as in their pipeline.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models.registry import PretrainedCfg, get_pretrained_cfg

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
CROP_MODES = ("center", "squash")


def _pretrained_cfg(model_or_name) -> tuple[dict, int | None]:
    """The pretrained cfg dict of a model, name, PretrainedCfg or dict, and the model's in_chans."""
    if isinstance(model_or_name, str):
        return get_pretrained_cfg(model_or_name).to_dict(), None
    if isinstance(model_or_name, PretrainedCfg):
        return model_or_name.to_dict(), None
    if isinstance(model_or_name, dict):
        return dict(model_or_name), None
    cfg = getattr(model_or_name, "pretrained_cfg", None)
    if isinstance(model_or_name, nn.Module) and isinstance(cfg, dict):
        return cfg, getattr(model_or_name, "in_chans", None)
    raise TypeError(f"data_config needs a model built by largekernel.create_model (it carries a "
                    f"pretrained_cfg), a model name such as 'unireplknet_t.in1k', a PretrainedCfg or "
                    f"a dict; got {type(model_or_name).__name__}")


def _per_channel(name: str, values, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    elif len(values) != channels and channels == 1:  # a grayscale model: the channels' average
        values = (sum(values) / len(values),)
    if len(values) != channels:
        raise ValueError(f"{name}={list(values)} has {len(values)} values for {channels} input "
                         f"channel(s); give one value per channel")
    return values


def data_config(model_or_name, **overrides) -> dict:
    """The evaluation preprocessing of a model (or `arch.tag` name): input_size (C, H, W),
    interpolation, mean, std, crop_pct, crop_mode; keyword overrides replace fields (an int
    input_size means a square one)."""
    cfg, in_chans = _pretrained_cfg(model_or_name)
    unknown = sorted(set(overrides) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown data config field(s) {unknown}; allowed: {', '.join(DATA_CONFIG_KEYS)}")
    missing = [k for k in DATA_CONFIG_KEYS if k not in cfg and k not in overrides]
    if missing:
        raise ValueError(f"the pretrained cfg lacks {missing}; pass them as keyword overrides")
    out = {k: overrides.get(k, cfg.get(k)) for k in DATA_CONFIG_KEYS}
    size = out["input_size"]
    channels = in_chans or (size[0] if isinstance(size, (tuple, list)) else 3)
    out["input_size"] = ((channels, int(size), int(size)) if isinstance(size, (int, float))
                         else (channels, int(size[-2]), int(size[-1])))
    if channels not in (1, 3) or min(out["input_size"][1:]) < 1:
        raise ValueError(f"input_size={out['input_size']}: expected (3, H, W) or (1, H, W) with H, W >= 1")
    out["mean"] = _per_channel("mean", out["mean"], channels)
    out["std"] = _per_channel("std", out["std"], channels)
    out["crop_pct"] = float(out["crop_pct"])
    return out


def resize_shape(height: int, width: int, input_size: tuple[int, int, int], crop_pct: float,
                 crop_mode: str) -> tuple[int, int]:
    """(height, width) an image is resized to before the centre crop (the authors' arithmetic)."""
    h_out, w_out = input_size[-2:]
    if crop_mode == "squash":
        return h_out, w_out
    if h_out != w_out:  # a non-square target: scale both sides by 1 / crop_pct
        return math.floor(h_out / crop_pct), math.floor(w_out / crop_pct)
    short = int(h_out / crop_pct)
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


class ImageTransform:
    """Pillow image or file path -> normalised float32 (C, H, W) tensor, as `create_transform` describes."""

    def __init__(self, input_size: tuple[int, int, int], interpolation: str, mean: tuple[float, ...],
                 std: tuple[float, ...], crop_pct: float, crop_mode: str) -> None:
        self.input_size, self.interpolation = tuple(input_size), interpolation
        self.crop_pct, self.crop_mode, self.mean_values, self.std_values = crop_pct, crop_mode, mean, std
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __repr__(self) -> str:
        return (f"ImageTransform(input_size={self.input_size}, interpolation={self.interpolation!r}, "
                f"crop_pct={self.crop_pct}, crop_mode={self.crop_mode!r}, "
                f"mean={self.mean_values}, std={self.std_values})")

    def _open(self, path: str | Path):
        """Decode like the image modality does (EXIF rotation, transparency on white), as 8-bit Pillow."""
        from PIL import Image

        from .modalities.image import read_image

        try:
            x = read_image(path, self.input_size[0])
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read image: {e}") from e
        arr = x.mul(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)

    def _convert(self, image):
        from PIL import Image

        mode = "L" if self.input_size[0] == 1 else "RGB"
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return image.convert(mode)

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        if isinstance(image, (str, Path)):
            image = self._open(image)
        elif not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL.Image or a file path, got {type(image).__name__}; "
                            "for a tensor batch, preprocess each image before stacking")
        image = self._convert(image)
        filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
        h, w = resize_shape(image.height, image.width, self.input_size, self.crop_pct, self.crop_mode)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), filters[self.interpolation])
        th, tw = self.input_size[-2:]
        top, left = int(round((h - th) / 2)), int(round((w - tw) / 2))
        image = image.crop((left, top, left + tw, top + th))
        arr = np.array(image, dtype=np.uint8)  # a writable copy
        x = torch.from_numpy(np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)))
        return ((x.float() / 255 - self.mean) / self.std).contiguous()


def create_transform(config: dict | None = None, **kwargs) -> ImageTransform:
    """The evaluation transform of a `data_config` dict (keywords override its fields)."""
    cfg = {**(config or {}), **kwargs}
    missing = [k for k in DATA_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"create_transform needs {missing}; pass largekernel.data_config(model)")
    unknown = sorted(set(cfg) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown data config field(s) {unknown}; allowed: {', '.join(DATA_CONFIG_KEYS)}")
    cfg = data_config(dict(cfg))  # normalises input_size, mean and std
    if cfg["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"interpolation={cfg['interpolation']!r}; choose one of {', '.join(INTERPOLATIONS)}")
    if cfg["crop_mode"] not in CROP_MODES:
        raise ValueError(f"crop_mode={cfg['crop_mode']!r}; choose one of {', '.join(CROP_MODES)}")
    if not 0 < cfg["crop_pct"] <= 1:
        raise ValueError(f"crop_pct={cfg['crop_pct']} must be in (0, 1]: the fraction of the resized "
                         "image the centre crop keeps (0.875 for 224 -> resize 256)")
    if min(cfg["std"]) <= 0:
        raise ValueError(f"std={list(cfg['std'])} must be positive")
    try:
        import PIL  # noqa: F401
    except ImportError as e:
        raise ImportError("create_transform resizes with Pillow: pip install pillow "
                          "(or largekernel[train])") from e
    return ImageTransform(**cfg)
