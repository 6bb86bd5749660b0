"""The video modality: PyAV decoding, dense or uniform frame sampling, clips laid out as one image.

A clip of T frames (3 x T x S x S after resize, crop and ImageNet normalisation) becomes one
3 x sqrt(T)*S x sqrt(T)*S image, so the plain image backbone (in_chans 3) classifies it:
- layout "mosaic" (default): frame t sits in grid cell (t // sqrt(T), t % sqrt(T));
- layout "reshape": the authors' raw memory reshape of the contiguous (3, T, S, S) tensor
  (for T=16, S=224: frame t fills rows 56t..56t+55, its rows h = 4j+b at row 56t+j, column block b).
The layout happens in the dataset, so checkpoints are plain UniRepLKNets.

Evaluation samples are stacks of clips x crops views (`eval_copies`); the engine averages their
softmax scores. Every random choice of the training transform comes from torch's global RNG.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..engine.classification import Classification
from ..engine.commands import RANDOM_SEED, Command, arg, positive_int
from ..engine.config import TrainConfig, option
from ..engine.data import DataBundle, Skipped
from ..engine.plugin import register_plugin
from .files import Sample, file_datasets, folder_or_csv, one_thread
from .image import resolve_mean_std
from . import video_io

log = logging.getLogger(__name__)

EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
SAMPLINGS = ("dense", "uniform")
SHORT_CLIPS = ("loop", "pad")
LAYOUTS = ("mosaic", "reshape")
_warned: set[str] = set()  # files already warned about (short clips), per process


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError('video needs PyAV: pip install "largekernel[video]"') from e
    return av


# ----------------------------------------------------------------------------- decoding

def count_frames(path: str | Path) -> int:
    """Frames in the first video stream: the container's count, else its packets (no decoding)."""
    av = _av()
    with av.open(str(path)) as container:
        stream = video_io.video_stream(container, path)
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for p in container.demux(stream) if p.size > 0)


def read_frames(path: str | Path, indices_for: Callable[[int], np.ndarray]) -> np.ndarray:
    """Decode the frames `indices_for(n frames)` names -> uint8 array of shape indices.shape + (H, W, 3).

    Raises ValueError naming the file when it cannot be opened or decoded, or has no frames.
    When the container's frame count is too high (some codecs), indices are recomputed from the
    frames actually decoded.
    """
    try:
        n = count_frames(path)
        if n == 0:
            raise ValueError("no decodable video frames")
        idx = np.asarray(indices_for(n))
        frames, seen, _ = video_io.decode_frames(path, set(idx.ravel().tolist()), _av())
        if seen == 0:
            raise ValueError("no decodable video frames")
        if len(frames) < len(set(idx.ravel().tolist())):  # fewer frames than announced
            idx = np.asarray(indices_for(seen))
            frames, seen, _ = video_io.decode_frames(path, set(idx.ravel().tolist()), _av())
    except Exception as e:  # any decoder failure names the file
        if isinstance(e, ValueError) and str(e).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: cannot decode video ({e}); the file is truncated, corrupt or "
                         "not a video") from e
    return np.stack([frames[i] for i in idx.ravel().tolist()]).reshape(*idx.shape, *frames[idx.flat[0]].shape)


# ----------------------------------------------------------------------------- sampling

def frames_needed(frames: int, stride: int, sampling: str) -> int:
    """Frames a clip must have to be sampled without looping or padding."""
    return (frames - 1) * stride + 1 if sampling == "dense" else frames


def sample_indices(n: int, frames: int, stride: int, sampling: str = "dense", short: str = "loop",
                   clips: int = 1, train: bool = False) -> np.ndarray:
    """Frame indices (clips x frames) into a clip of n frames.

    dense: `frames` frames `stride` apart; the start is random in training, else clip k of K starts
    at round(k * (n - span) / (K - 1)) (the centre when K = 1), span = (frames - 1) * stride + 1.
    A clip shorter than span loops (index mod n) or pads with its last frame.
    uniform: one frame per equal segment of the clip: random in each segment in training, else at
    offset (k + 0.5) / K of each segment for clip k of K.
    """
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    if sampling == "dense":
        span = (frames - 1) * stride + 1
        room = max(n - span, 0)
        if train:
            starts = torch.randint(0, room + 1, (clips,)).numpy()
        elif clips == 1:
            starts = np.array([room // 2])
        else:
            starts = np.array([round(k * room / (clips - 1)) for k in range(clips)])
        idx = starts[:, None] + stride * np.arange(frames)[None]
        return idx % n if short == "loop" else np.minimum(idx, n - 1)
    if sampling == "uniform":
        if train:
            offsets = torch.rand(clips, frames).double().numpy()
        else:
            offsets = np.repeat(((np.arange(clips) + 0.5) / clips)[:, None], frames, axis=1)
        idx = np.floor((np.arange(frames)[None] + offsets) * n / frames).astype(np.int64)
        return np.minimum(idx, n - 1)
    raise ValueError(f"sampling={sampling!r}; choose one of {', '.join(SAMPLINGS)}")


# ----------------------------------------------------------------------------- spatial transforms

def grid_side(frames: int) -> int:
    """sqrt(T) for a T that fits the one-image layouts; else a ValueError naming valid T."""
    s = math.isqrt(max(frames, 0))
    if frames >= 1 and s * s == frames:
        return s
    lo, hi = max(s, 1) ** 2, (s + 1) ** 2
    near = f"frames={lo} or frames={hi}" if lo != hi and lo < frames else f"frames={hi}"
    raise ValueError(f"frames={frames} cannot be laid out as one image: the mosaic and the reshape "
                     f"need a perfect square number of frames (4, 9, 16, 25, ...); use {near}")


def layout_clip(x: torch.Tensor, layout: str = "mosaic") -> torch.Tensor:
    """(..., C, T, H, W) -> (..., C, s*H, s*W) with s = sqrt(T).

    mosaic: frame t at grid cell (t // s, t % s). reshape: the authors' `x.reshape(B, C, s*H, s*W)`
    of the contiguous tensor (each frame fills H/s consecutive rows of the s*W-wide image).
    """
    *lead, c, t, h, w = x.shape
    s = grid_side(t)
    if layout == "reshape":
        return x.contiguous().reshape(*lead, c, s * h, s * w)
    if layout == "mosaic":
        return x.reshape(*lead, c, s, s, h, w).transpose(-3, -2).reshape(*lead, c, s * h, s * w)
    raise ValueError(f"layout={layout!r}; choose one of {', '.join(LAYOUTS)}")


def resize_short(x: torch.Tensor, short: int) -> torch.Tensor:
    """Resize (N, C, H, W) so that min(H, W) == short (bilinear, antialiased, aspect kept)."""
    h, w = x.shape[-2:]
    if min(h, w) == short:
        return x
    scale = short / min(h, w)
    size = (short, max(short, round(w * scale))) if h <= w else (max(short, round(h * scale)), short)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def crop_positions(h: int, w: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of `crops` size x size crops: centred on the short side, evenly spread along the
    long side (3 crops: left/centre/right, or top/centre/bottom for portrait clips)."""
    if crops == 1:
        return [((h - size) // 2, (w - size) // 2)]
    spread = [round(k * (max(h, w) - size) / (crops - 1)) for k in range(crops)]
    if w >= h:
        return [((h - size) // 2, left) for left in spread]
    return [(top, (w - size) // 2) for top in spread]


class ClipTransform:
    """uint8 frames (K, T, H, W, 3) -> views: resize the short side to round(size / crop_pct), crop
    (random + flip in training; `crops` fixed crops at eval), normalise, lay out as one image."""

    def __init__(self, size: int, crop_pct: float, hflip: float, mean, std, layout: str) -> None:
        self.size, self.short = size, max(round(size / crop_pct), size)
        self.hflip, self.layout = hflip, layout
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """(T, 3, S, S) in [0, 1] -> normalised (3, s*S, s*S)."""
        x = ((x - self.mean) / self.std).transpose(0, 1).contiguous()
        return layout_clip(x, self.layout)

    def train(self, frames: np.ndarray) -> torch.Tensor:
        x = resize_short(torch.from_numpy(frames[0]).permute(0, 3, 1, 2).float().div_(255), self.short)
        h, w = x.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, ()))
        left = int(torch.randint(0, w - self.size + 1, ()))
        x = x[..., top:top + self.size, left:left + self.size]
        if self.hflip > 0 and torch.rand(()) < self.hflip:
            x = x.flip(-1)
        return self._finish(x)

    def eval(self, frames: np.ndarray, crops: int) -> torch.Tensor:
        """-> (K * crops, 3, s*S, s*S), clip-major."""
        views = []
        for clip in frames:
            x = resize_short(torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255), self.short)
            for top, left in crop_positions(*x.shape[-2:], self.size, crops):
                views.append(self._finish(x[..., top:top + self.size, left:left + self.size]))
        return torch.stack(views)


def check_config(cfg: TrainConfig) -> None:
    """Fail early, with the fix, on video options that cannot work."""
    grid_side(cfg.frames)
    if cfg.in_chans != 3:
        raise ValueError(f"in_chans={cfg.in_chans}: video frames are decoded as RGB; use in_chans=3")
    if cfg.sampling not in SAMPLINGS:
        raise ValueError(f"sampling={cfg.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    if cfg.short_clip not in SHORT_CLIPS:
        raise ValueError(f"short_clip={cfg.short_clip!r}; choose one of {', '.join(SHORT_CLIPS)}")
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"layout={cfg.layout!r}; choose one of {', '.join(LAYOUTS)}")
    for name in ("frame_stride", "val_clips", "val_crops", "test_clips", "test_crops"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")


def load_clip(path: str | Path, cfg: TrainConfig, train: bool, clips: int = 1,
              crops: int = 1) -> torch.Tensor:
    """One training clip (3, s*S, s*S), or the eval views (clips * crops, 3, s*S, s*S).

    Raises ValueError naming the file if it cannot be decoded; a clip with too few frames is looped
    or padded (cfg.short_clip) with a warning naming it, once per file.
    """
    def indices(n: int) -> np.ndarray:
        need = frames_needed(cfg.frames, cfg.frame_stride, cfg.sampling)
        if n < need and str(path) not in _warned:
            _warned.add(str(path))
            how = ("repeating frames" if cfg.sampling == "uniform" else
                   "looping it" if cfg.short_clip == "loop" else "padding with its last frame")
            log.warning("%s: %d frames, fewer than the %d that %s sampling of %d frames needs; %s",
                        path, n, need, cfg.sampling, cfg.frames, how)
        return sample_indices(n, cfg.frames, cfg.frame_stride, cfg.sampling, cfg.short_clip,
                              1 if train else clips, train)

    frames = read_frames(path, indices)
    mean, std = resolve_mean_std(cfg)
    transform = ClipTransform(cfg.input_size, cfg.crop_pct, cfg.hflip, mean, std, cfg.layout)
    return transform.train(frames) if train else transform.eval(frames, crops)


# ----------------------------------------------------------------------------- datasets

class VideoDataset(Dataset):
    """(path, class index) samples decoded per item; unreadable files -> Skipped (unless strict).

    Training items are one clip (3, s*S, s*S); evaluation items are (clips * crops, 3, s*S, s*S).
    """

    def __init__(self, samples: list[Sample], classes: list[str], cfg: TrainConfig, train: bool,
                 clips: int = 1, crops: int = 1) -> None:
        self.samples, self.classes, self.cfg, self.train = samples, classes, cfg, train
        self.clips, self.crops = clips, crops
        self.targets = [y for _, y in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with one_thread():
            try:
                return load_clip(path, self.cfg, self.train, self.clips, self.crops), label
            except ValueError as e:
                if self.cfg.strict:
                    raise
                return Skipped(str(path), str(e).removeprefix(f"{path}: "))


# ----------------------------------------------------------------------------- command line

def _make_clips(args) -> int:
    """Render clips with numpy and encode them with PyAV (libx264, else mpeg4): 4 classes whose
    label is the motion (down, grow, shrink, up) or, with --task shape, the shape; random
    colours, position and speed."""
    from .clips_data import make_clips, task_classes

    out = make_clips(args.output, args.per_class, args.frames, args.size, args.seed, args.task)
    n = len(task_classes(args.task))
    sys.stdout.write(f"wrote {args.per_class * n} clips ({args.frames} frames, "
                     f"{args.size}x{args.size}) in {n} {args.task} classes to {out}, list {out / 'clips.csv'}\n")
    return 0


CLIPS = Command("clips", "write synthetic mp4 clips (a shape moving up/down, growing/shrinking) "
                         "in class folders plus clips.csv", _make_clips, [
    arg("output", metavar="OUT", help="folder to write OUT/<class>/NNN.mp4 and OUT/clips.csv"),
    arg("--per-class", type=positive_int, default=20, metavar="N", help="clips per class (default 20)"),
    arg("--frames", type=positive_int, default=16, metavar="F", help="frames per clip (default 16)"),
    arg("--size", type=positive_int, default=64, metavar="S", help="frame size, even (default 64)"),
    RANDOM_SEED,
    arg("--task", choices=["motion", "shape"], default="motion",
        help="the class is the motion (down/grow/shrink/up; default) or the shape "
             "(cross/diamond/disc/square)"),
], _make_clips.__doc__)


@dataclass
class VideoOptions:
    """The video plug-in's options: frame sampling, layout and test views."""

    frames: int = option(16, "frames per clip T; a perfect square (4, 9, 16, 25) for the one-image layouts")
    frame_stride: int = option(4, "step between sampled frames with sampling dense")
    sampling: str = option("dense", "dense (T frames at frame_stride) or uniform (T frames spread over the clip)")
    short_clip: str = option("loop", "a clip with too few frames: loop it, or pad with its last frame (warned per file)")
    layout: str = option("mosaic", "frames -> one image: mosaic (sqrt(T) x sqrt(T) grid) or reshape (the authors')")
    val_clips: int = option(1, "temporal clips averaged by validation during training")
    val_crops: int = option(1, "spatial crops per clip averaged by validation during training")
    test_clips: int = option(5, "temporal clips averaged by eval and predict (the authors: 5)")
    test_crops: int = option(3, "spatial crops per clip averaged by eval and predict (the authors: 3)")


@register_plugin
class VideoModality(Classification):
    """Video clips: class-per-folder or CSV datasets, PyAV decoding, clips laid out as one image."""

    name = "video"
    options = VideoOptions
    data_generators = (CLIPS,)
    extensions = EXTENSIONS
    eval_copies = True

    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train + val (given, or a stratified split); validation averages val_clips x val_crops
        views, `eval` (train=False) test_clips x test_crops."""
        check_config(cfg)
        _av()

        def make(samples: list[Sample], classes: list[str], part: str) -> VideoDataset:
            if part == "train":
                return VideoDataset(samples, classes, cfg, True)
            views = (cfg.val_clips, cfg.val_crops) if part == "val" else (cfg.test_clips, cfg.test_crops)
            return VideoDataset(samples, classes, cfg, False, *views)

        return file_datasets(cfg, train, folder_or_csv(EXTENSIONS, "videos", "<clip>.mp4"), make,
                             "a folder with one subfolder of videos per class, or a CSV of path,label",
                             "a folder or CSV of videos")

    def example_input(self, cfg: TrainConfig, batch: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """Random laid-out clips, (batch, 3, s*S, s*S) with s = sqrt(frames), S = input_size."""
        side = grid_side(cfg.frames) * cfg.input_size
        return torch.randn(batch, 3, side, side, generator=generator)

    def input_contract(self, cfg: TrainConfig) -> dict[str, str]:
        mean, std = resolve_mean_std(cfg)
        s, size = grid_side(cfg.frames), cfg.input_size
        frames = (f"{cfg.frames} frames {cfg.frame_stride} apart" if cfg.sampling == "dense"
                  else f"{cfg.frames} frames spread over the clip")
        return dict(input=f"float32 N x 3 x {s * size} x {s * size}: {cfg.frames} RGB frames of "
                          f"{size} x {size} laid out as one image ({cfg.layout}, {s} x {s})",
                    preprocessing=f"decode; sample {frames}; scale to [0, 1]; resize the short side "
                                  f"to {max(round(size / cfg.crop_pct), size)}; crop {size} x {size}; "
                                  f"subtract mean {list(mean)}, divide by std {list(std)}; lay out "
                                  f"the frames. eval and predict average the "
                                  f"softmax over {cfg.test_clips} clips x {cfg.test_crops} crops "
                                  "(rows of the batch), outside the graph",
                    output=f"N x {len(cfg.classes or [])} class logits")

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """The test_clips x test_crops views (V, 3, s*S, s*S) of one file, for `predict`."""
        check_config(cfg)
        with one_thread():
            return load_clip(path, cfg, False, cfg.test_clips, cfg.test_crops)
