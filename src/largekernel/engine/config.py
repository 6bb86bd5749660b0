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
    # time series
    # point cloud
    # video

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
