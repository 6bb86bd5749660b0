"""Training configuration: one flat dataclass, named presets, YAML files and `key=value` overrides.

Resolution order: dataclass defaults < preset < YAML file < command-line overrides. The resolved
config is stored in every checkpoint and in `config.yaml` of the run directory.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    # what to train
    modality: str = "image"
    model: str = "unireplknet_a"
    model_kwargs: dict = field(default_factory=dict)  # extra create_model options (e.g. kernel_sizes)
    pretrained: bool = False
    init_checkpoint: str | None = None  # fine-tune from this file (head dropped if classes differ)
    # data
    train: str | None = None  # folder (class-per-folder) or CSV of path,label
    val: str | None = None
    val_split: float = 0.1  # held-out fraction when only `train` is given
    classes: list[str] | None = None
    input_size: int = 224
    in_chans: int = 3
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] | None = None  # None: the model's pretrained cfg
    std: tuple[float, ...] | None = None
    strict: bool = False  # fail on the first unreadable sample instead of skipping it
    workers: int = 0
    # augmentation
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    randaug: str | None = "m9"  # RandAugment magnitude, e.g. "m9"; None disables
    reprob: float = 0.25
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    smoothing: float = 0.1
    loss: str = "ce"  # classification loss: "ce" (softmax cross-entropy) or "bce" (sigmoid, per class)
    # optimisation
    epochs: int = 300
    batch_size: int = 128  # per process
    accum_steps: int = 1
    opt: str = "adamw"
    lr: float | None = None  # absolute lr; None: blr * global batch / 256
    blr: float = 4e-3 * 256 / 4096
    min_lr: float = 1e-6
    warmup_epochs: float = 20
    warmup_lr: float = 0.0
    sched: str = "cosine"  # "cosine", or "step": lr x `lr_decay` per epoch from epoch `lr_decay_start`
    lr_decay: float = 0.85
    lr_decay_start: int = 5
    weight_decay: float = 0.05
    layer_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    drop_path: float = 0.0
    head_init_scale: float = 1.0
    ema_decay: float | None = None  # e.g. 0.9999; evaluation then also reports the EMA copy
    # runtime
    amp: str | None = None  # None, "bf16" or "fp16" (fp16 only on CUDA)
    precision: str = "fp32"  # "fp32", "bf16" or "auto" (largekernel.precision); --amp bf16 = bf16
    device: str = "auto"
    channels_last: bool = False
    grad_checkpointing: bool = False
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    # output
    output: str = "runs/train"
    keep_last: int = 2
    save_every_steps: int | None = None  # also checkpoint mid-epoch every N optimizer steps
    eval_every: int = 1
    log_every: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests)
    # ---- modality options (each modality reads its own; see README) ----
    # audio
    sample_rate: int = 16000  # clips are mixed to mono and resampled to this rate (Hz)
    mel_bins: int = 128  # Kaldi log-mel filterbank bins: the input's width
    target_frames: int = 128  # 10 ms frames after padding/cropping: the input's height
    audio_mean: float = -6.845978  # log-mel normalisation (x - mean) / (2 * std); see audio-stats
    audio_std: float = 5.5654526
    freq_mask: int = 48  # SpecAugment: widest frequency mask in bins (0: none)
    time_mask: int = 48  # SpecAugment: widest time mask in frames (0: none)
    time_roll: int = 10  # random circular shift of the features by up to +-N frames
    noise_prob: float = 0.5  # chance of mixing in background noise (_background_noise_, else white)
    noise_snr: tuple[float, float] = (10.0, 30.0)  # its signal-to-noise ratio range in dB
    # time series
    lookback: int = 96  # input steps L per window
    horizon: int = 24  # forecast steps H
    time_column: str | None = None  # None: the first column named date/time/timestamp/datetime
    targets: list[str] | None = None  # variable columns to forecast; None: every other column
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # chronological train/val/test
    missing: str = "error"  # missing values: "error" or "interpolate" (linear in time)
    embed_dim: int = 64  # D' per step; the L x D' embedding is zero-padded to a square map
    window_stride: int = 1  # step between training windows
    season: int | None = None  # seasonal-naive period; None: from the timestamps (24 hourly, 7 daily)
    # point cloud
    num_points: int = 1024  # points per cloud after farthest-point sampling (spec: 4096)
    mesh_points: int = 10000  # points sampled uniformly on a mesh's surface before FPS
    views: int = 4  # rendered views per cloud (authors' code 4, paper 3); the grid side is input_size
    knn: int = 32  # neighbours of the DGCNN edge features
    view_fusion: bool = False  # a residual 1x1 conv across the views' decoder features
    test_copies: int = 8  # rotated copies (about the up axis) averaged by validation, eval and predict
    point_rotation: str = "up"  # training rotation: "up" (about up_axis), "so3" (any) or "none"
    up_axis: str = "z"  # the shapes' up axis: "z" (ModelNet40 meshes) or "y" (resampled .txt), "x"
    # video
    frames: int = 16  # frames per clip (T); a perfect square (4, 9, 16, 25) for the one-image layouts
    frame_stride: int = 4  # step between sampled frames with sampling="dense"
    sampling: str = "dense"  # "dense" (T frames at frame_stride) or "uniform" (T frames spread over the clip)
    short_clip: str = "loop"  # too few frames: "loop" the clip or "pad" with its last frame (warned per file)
    layout: str = "mosaic"  # frames -> one image: "mosaic" (sqrt(T) x sqrt(T) grid) or "reshape" (authors')
    val_clips: int = 1  # temporal clips x spatial crops averaged by validation during training
    val_crops: int = 1
    test_clips: int = 5  # temporal clips x spatial crops averaged by `eval` and `predict` (authors: 5 x 3)
    test_crops: int = 3

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESETS: dict[str, dict[str, Any]] = {
    # ImageNet-1K from scratch (spec section 6); lr scales linearly with the global batch.
    **{f"in1k_{v}": dict(model=f"unireplknet_{v}", epochs=300, warmup_epochs=20, blr=4e-3 * 256 / 4096,
                         weight_decay=0.05, smoothing=0.1, randaug="m9", reprob=0.25,
                         mixup=mix, cutmix=cut, drop_path=dp, input_size=224)
       for v, (mix, cut, dp) in {"a": (0.3, 0.3, 0.0), "f": (0.3, 0.3, 0.0), "p": (0.3, 0.3, 0.1),
                                 "n": (0.5, 0.5, 0.1), "t": (0.8, 1.0, 0.2),
                                 "s": (0.8, 1.0, 0.4)}.items()},
    # ImageNet-22K -> 1K fine-tuning at 384 (spec section 6)
    **{f"in22k_ft_in1k_384_{v}": dict(model=f"unireplknet_{v}", input_size=384, crop_pct=1.0,
                                      epochs=30, warmup_epochs=0, blr=5e-5 * 256 / 512,
                                      weight_decay=1e-8, layer_decay=0.8, head_init_scale=0.001,
                                      mixup=0.0, cutmix=0.0, smoothing=0.1, drop_path=0.2,
                                      ema_decay=0.9999 if v in ("l", "xl") else None)
       for v in ("s", "b", "l", "xl")},
    # Speech Commands V2 (spec section 4, audio): 128 x 128 log-mel, BCE, waveform mixup, x0.85/epoch
    "speechcommands_s": dict(modality="audio", model="unireplknet_s", in_chans=1, input_size=128,
                             mel_bins=128, target_frames=128, drop_path=0.4, opt="adam", lr=2.5e-4,
                             weight_decay=5e-7, betas=(0.95, 0.999), batch_size=128, epochs=100,
                             sched="step", lr_decay=0.85, lr_decay_start=5, warmup_epochs=0,
                             min_lr=0.0, loss="bce", mixup=10.0, mixup_prob=0.6, cutmix=0.0,
                             smoothing=0.0, randaug=None, reprob=0.0, hflip=0.0, freq_mask=48,
                             time_mask=48),
    # ModelNet-40 (spec section 4, point cloud): 4096 FPS points, 4 views at 224, S backbone
    "modelnet40_s": dict(modality="pointcloud", model="unireplknet_s", input_size=224, num_points=4096,
                         views=4, knn=32, test_copies=8, drop_path=0.4, smoothing=0.2, opt="adamw",
                         lr=5e-4, weight_decay=0.05, batch_size=16, epochs=300, sched="cosine",
                         mixup=0.0, cutmix=0.0),
    # Kinetics-400 from scratch (spec section 4; authors' Video/run_unireplknet.sh): their --lr 4e-3
    # is a base lr (VideoMAE scales it by batch/256; 4 x 8 GPUs x update_freq 2 = 64 -> 1e-3).
    # RandAugment is not applied to clips (README, video).
    "kinetics400_s": dict(modality="video", model="unireplknet_s", frames=16, frame_stride=4,
                          sampling="dense", input_size=224, crop_pct=1.0, drop_path=0.4, opt="adamw",
                          blr=4e-3, weight_decay=0.05, epochs=90, warmup_epochs=5, layer_decay=0.75,
                          randaug=None, reprob=0.0, mixup=0.8, cutmix=1.0, smoothing=0.1,
                          batch_size=4, accum_steps=2, test_clips=5, test_crops=3,
                          model_kwargs=dict(kernel_sizes=[[3, 3, 3], [13, 13, 13], [13, 3, 3] * 9,
                                                          [11, 11, 11]])),
    # Forecasting (spec section 4, time series): 48 steps in, 24 out, 48 x 768 = one 192 x 192 map, S
    "forecast_s": dict(modality="timeseries", model="unireplknet_s", in_chans=1, lookback=48,
                       horizon=24, embed_dim=768, drop_path=0.1, opt="adamw", lr=1e-4,
                       weight_decay=0.05, batch_size=32, epochs=20, warmup_epochs=1, sched="cosine",
                       mixup=0.0, cutmix=0.0, smoothing=0.0),
    # the same recipe on CPU: UniRepLKNet-A on a 28 x 28 map (48 x 16), every other training window
    "forecast_tiny": dict(modality="timeseries", model="unireplknet_a", in_chans=1, lookback=48,
                          horizon=24, embed_dim=16, window_stride=2, opt="adamw", lr=2e-3,
                          weight_decay=0.01, batch_size=32, epochs=4, warmup_epochs=0.2,
                          sched="cosine", mixup=0.0, cutmix=0.0, smoothing=0.0),
}


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the type of field `name` (tuples from lists, "none" -> None)."""
    spec = TrainConfig.__dataclass_fields__[name]
    default = spec.default
    if isinstance(value, str):
        if value.lower() in ("none", "null", ""):
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if "," in value and ("tuple" in str(spec.type) or "list" in str(spec.type)):
                value = [_coerce_item(v.strip()) for v in value.split(",")]  # a,b,c
    if isinstance(value, list) and isinstance(default, tuple):
        value = tuple(value)
    return value


def _coerce_item(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_config(preset: str | None = None, yaml_path: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < preset < YAML < overrides; unknown keys raise with the allowed names."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
        values.update(PRESETS[preset])
    if yaml_path:
        import yaml

        path = Path(yaml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of option: value")
        values.update(loaded)
    values.update(overrides or {})  # an explicit None (e.g. randaug=None) switches a feature off
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config option(s) {unknown}; allowed: {', '.join(sorted(known))}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["lr=1e-3", "model_kwargs={\"kernel_sizes\": [3,5,7,9]}"]` -> dict (values parsed later)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value")
        out[key.strip().replace("-", "_")] = value
    return out
