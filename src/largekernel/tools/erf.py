"""Effective receptive field (ERF), RepLKNet's procedure (Ding et al. CVPR'22, App. B).

For each input image (resized to `size` x `size`, normalised): score = sum over channels of
relu(centre pixel of `forward_features`, the last stage's map); the input gradient is relu'd and
summed over batch and channels into an H x W map; maps are averaged over images (NaN maps
skipped). The map is rescaled as `A = log10(A + 1); A /= A.max()`, and the high-contribution area
ratio r(t) is the area fraction of the smallest centred square holding more than fraction t of the
rescaled map's total (computed on the log-rescaled map, as the authors' `analyze_erf.py` does).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import reparameterize as fold_model
from ..models.weights import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
STRIDE = 32  # the last stage's total stride: the input size must be a multiple of it

# Figure geometry of `plot_erf`: each panel is PANEL_INCHES wide, rendered at DPI.
PANEL_INCHES = (4.0, 4.6)
DPI = 100


@dataclass
class ERFResult:
    """One model's ERF: the rescaled map (values in [0, 1], max 1) and r(t) per threshold."""

    model: str
    map: np.ndarray
    ratios: dict[float, float]
    sides: dict[float, int]
    size: int
    n_images: int
    source: str = "random"

    def to_dict(self) -> dict:
        """JSON-ready numbers (no map): ratios as fractions in (0, 1], sides in pixels."""
        return dict(model=self.model, size=self.size, n_images=self.n_images, source=self.source,
                    ratios={str(t): r for t, r in self.ratios.items()},
                    sides={str(t): s for t, s in self.sides.items()})


# ---- area ratio ----------------------------------------------------------------------------------

def area_ratios(erf_map: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[float, tuple[int, float]]:
    """{t: (side, r)}: the smallest centred square of side 2i+1 (i >= 0) whose sum / total > t.

    r = (side/H) * (side/W), as the authors' `get_rectangle`. All squares are evaluated at once
    from an integral image. Squares are clipped at the border; if only the whole map exceeds t,
    side is the map's size and r = 1. (The authors' loop starts at side 3 and gives up before the
    whole map; both only matter in degenerate cases.)
    """
    a = np.asarray(erf_map, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"an ERF map must be a non-empty 2-D array, got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("an ERF map must be finite and non-negative")
    total = a.sum()
    if total <= 0:
        raise ValueError("the ERF map is zero everywhere; the area ratio is undefined")
    h, w = a.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = a.cumsum(0).cumsum(1)
    i = np.arange(max(h, w) // 2 + 1)
    r0, r1 = np.clip(h // 2 - i, 0, h), np.clip(h // 2 + i + 1, 0, h)
    c0, c1 = np.clip(w // 2 - i, 0, w), np.clip(w // 2 + i + 1, 0, w)
    frac = (integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]) / total
    out = {}
    for t in thresholds:
        if not 0 < t < 1:
            raise ValueError(f"thresholds must lie in (0, 1), got {t}")
        above = np.flatnonzero(frac > t)
        k = int(above[0]) if above.size else len(i) - 1
        side = 2 * k + 1
        out[t] = (min(side, max(h, w)), min(side, h) / h * min(side, w) / w)
    return out


def rescale(raw: np.ndarray) -> np.ndarray:
    """`log10(A + 1) / max`: the authors' rescaling, values in [0, 1] with max 1."""
    a = np.log10(np.asarray(raw, dtype=np.float64) + 1.0)
    peak = a.max()
    if not peak > 0:
        raise ValueError("the ERF is zero everywhere: relu(centre output) was 0 for every image, "
                         "so no input pixel contributes")
    return a / peak


# ---- model specs ---------------------------------------------------------------------------------

def parse_model_spec(spec: str) -> tuple[str, tuple[int, ...] | None]:
    """`NAME` -> (NAME, None); `NAME:kK` -> every block's kernel K, i.e. kernel_sizes=(K, K, K, K);
    `NAME:kK0,K1,K2,K3` -> one kernel size per stage. E.g. `unireplknet_a:k3` is UniRepLKNet-A
    with 3x3 kernels everywhere."""
    name, sep, suffix = spec.partition(":")
    if not sep:
        return spec, None
    parts = suffix[1:].split(",") if suffix[:1].lower() == "k" else []
    if not name or not parts or not all(p.strip().isdigit() for p in parts) or len(parts) not in (1, 4):
        raise ValueError(f"bad model spec {spec!r}: use NAME, NAME:kK (every kernel K, e.g. "
                         "unireplknet_a:k3) or NAME:kK0,K1,K2,K3 (one kernel size per stage)")
    sizes = tuple(int(p) for p in parts)
    return name, sizes * 4 if len(sizes) == 1 else sizes


# ---- inputs --------------------------------------------------------------------------------------

def _mean_std(model: nn.Module, in_chans: int) -> tuple[list[float], list[float]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = list(cfg.get("mean", IMAGENET_MEAN)), list(cfg.get("std", IMAGENET_STD))
    if len(mean) == in_chans:
        return mean, std
    if in_chans == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    raise ValueError(f"images can feed models with 1 or {len(mean)} input channels; this model has "
                     f"{in_chans}. Use random inputs instead (--random N).")


def image_files(directory: str | Path, max_images: int | None = None) -> list[Path]:
    """Image files in `directory` (not recursive), sorted by name; at most `max_images`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image directory {directory} does not exist (or is not a directory)")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images in {directory} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files[:max_images] if max_images else files


def load_image(path: str | Path, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(1, C, size, size): decoded like training images (RGB, or L for one channel), bicubic
    resize, mean/std normalised."""
    try:
        from ..modalities.image import read_image
        x = read_image(path, len(mean))[None]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading images needs Pillow: pip install pillow") from e
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def random_images(n: int, size: int, in_chans: int = 3, seed: int = 0) -> Iterator[torch.Tensor]:
    """`n` standard-normal (1, in_chans, size, size) inputs (already 'normalised'), seeded."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(1, in_chans, size, size, generator=g)


def check_size(size: int) -> None:
    if size < STRIDE or size % STRIDE:
        raise ValueError(f"ERF input size must be a positive multiple of {STRIDE} (the last stage's "
                         f"stride), got {size}")


# ---- the map -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _frozen_eval(model: nn.Module):
    """Eval mode and no parameter gradients for the duration; restores both afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def input_gradient_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """relu(d score / d x) summed over batch and channels: (H, W); score = sum relu(centre)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model.forward_features(x)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        h, w = out.shape[-2:]
        score = F.relu(out[:, :, h // 2, w // 2]).sum()
        (grad,) = torch.autograd.grad(score, x)
    return F.relu(grad).sum(dim=(0, 1))


def erf_raw_map(model: nn.Module, images: Iterable[torch.Tensor]) -> tuple[np.ndarray, int]:
    """The average over images of `input_gradient_map` (NaN maps skipped), and the images used."""
    ref = next(model.parameters())
    total, used, skipped = None, 0, 0
    with _frozen_eval(model):
        for k, x in enumerate(images):
            m = input_gradient_map(model, x.to(device=ref.device, dtype=ref.dtype)).double().cpu()
            if torch.isnan(m).any():
                skipped += 1
                log.warning("image %d: NaN gradient map, skipped", k)
                continue
            total = m if total is None else total + m
            used += 1
            if used % 10 == 0:
                log.info("%d images done", used)
    if used == 0:
        raise ValueError(f"no usable image: all {skipped} gradient maps were NaN" if skipped
                         else "no images given")
    return (total / used).numpy(), used


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _checked(images: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    for x in images:
        if x.ndim != 4 or tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"ERF inputs must be (N, C, {size}, {size}) tensors, got {tuple(x.shape)}")
        yield x


def compute_erf(model: nn.Module, images: Iterable[torch.Tensor] | None = None, *,
                image_dir: str | Path | None = None, n_random: int = 50, size: int = 1024,
                seed: int = 0, max_images: int | None = None, name: str | None = None,
                thresholds: Sequence[float] = THRESHOLDS, fold: bool = True) -> ERFResult:
    """RepLKNet's ERF of `model` (anything with `forward_features` and `in_chans`).

    Inputs: `images` (an iterable of normalised (1, C, size, size) tensors), else the image files
    of `image_dir` (sorted, at most `max_images`), else `n_random` standard-normal images.
    `fold=True` runs on a re-parameterized copy (the same function, faster); `model` itself is
    never changed.
    """
    check_size(size)
    in_chans = getattr(model, "in_chans", 3)
    name = name or getattr(model, "name", None) or type(model).__name__
    if images is not None:
        images = _checked(images.split(1) if isinstance(images, torch.Tensor) else images, size)
        source = "given tensors"
    elif image_dir is not None:
        files = image_files(image_dir, max_images)
        mean, std = _mean_std(model, in_chans)
        images = (load_image(p, size, mean, std) for p in files)
        source = f"{_plural(len(files), 'image')} from {image_dir}"
    else:
        if n_random < 1:
            raise ValueError(f"the number of random images must be >= 1, got {n_random}")
        images = random_images(n_random, size, in_chans, seed)
        source = f"{_plural(n_random, 'random normal image')} (seed {seed})"
    log.info("%s: computing the ERF at %dx%d from %s", name, size, size, source)
    net = model
    if fold and any(hasattr(m, "reparameterize") and not getattr(m, "deploy", False)
                    for m in model.modules()):
        was_training = model.training
        net = fold_model(model.eval(), inplace=False)
        model.train(was_training)
    raw, used = erf_raw_map(net, images)
    erf = rescale(raw)
    found = area_ratios(erf, thresholds)
    result = ERFResult(model=name, map=erf, ratios={t: r for t, (_, r) in found.items()},
                       sides={t: s for t, (s, _) in found.items()}, size=size, n_images=used,
                       source=source)
    log.info("%s: ERF over %s: %s", name, _plural(used, "image"),
             ", ".join(f"r({t:.0%})={r:.2%}" for t, r in result.ratios.items()))
    return result


# ---- figure --------------------------------------------------------------------------------------

def _half_rdylgn():
    """RdYlGn as seaborn draws it with center=0 on data in [0, 1]: its upper half, yellow to green."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["RdYlGn"](np.linspace(0.5, 1.0, 256)), name="RdYlGn_upper")


def format_percent(r: float | None) -> str:
    """r as a percentage: one decimal, two below 1%."""
    if r is None or math.isnan(r):
        return "n/a"
    return f"{100 * r:.2f}%" if r < 0.01 else f"{100 * r:.1f}%"


def plot_erf(results: Sequence[ERFResult], path: str | Path) -> Path:
    """One PNG with the ERF heatmaps side by side (RdYlGn), titled with the model and r(20%)/r(99%).

    The image is `len(results) * PANEL_INCHES[0] * DPI` pixels wide.
    """
    if not results:
        raise ValueError("plot_erf needs at least one ERF result")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the ERF figure needs matplotlib: pip install 'largekernel[analysis]'") from e
    path = Path(path)
    n = len(results)
    fig = Figure(figsize=(PANEL_INCHES[0] * n, PANEL_INCHES[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    cmap = _half_rdylgn()
    image = None
    for ax, res in zip(axes, results):
        image = ax.imshow(res.map, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="antialiased")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{res.model}\nr(20%)={format_percent(res.ratios.get(0.2))}  "
                     f"r(99%)={format_percent(res.ratios.get(0.99))}", fontsize=10)
        ax.set_xlabel(f"{res.size}x{res.size}, {_plural(res.n_images, 'image')}", fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.8, aspect=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    log.info("wrote %s", path)
    return path
