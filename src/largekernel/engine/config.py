"""Training configuration: one flat dataclass, named presets, YAML files and `key=value` overrides.

Resolution order: dataclass defaults < preset < YAML file < command-line overrides. The resolved
config is stored in every checkpoint and in `config.yaml` of the run directory.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plugin import all_plugins, get_plugin, plugin_options


def option(default: Any, help: str) -> Any:
    """A config field with the sentence `train --help` prints for it (lists/dicts get a factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=dict(help=help))
    return field(default=default, metadata=dict(help=help))


@dataclass
class TrainConfig:
    """The engine's options; a plug-in's own options live in `options` (its dataclass) and read
    like the engine's (`cfg.mel_bins`), so configs stay flat."""

    # what to train
    modality: str = option("image", "the plug-in (modality or task) that reads the data and names the task")
    model: str = option("unireplknet_a", "the backbone's registry name, e.g. unireplknet_s")
    model_kwargs: dict = option({}, "extra create_model options as JSON, e.g. {\"kernel_sizes\": [3, 5, 7, 9]}")
    pretrained: bool = option(False, "start from the model's pretrained weights (Hub cache or download); "
                              "without --preset, the finetune preset fills the options you do not set")
    init_checkpoint: str | None = option(None, "fine-tune from this weights file instead (the head is dropped "
                                         "if the classes differ; as --pretrained, the finetune defaults apply)")
    # data
    train: str | None = option(None, "training data: a folder (one subfolder per class), a CSV of path,label, or the "
                                  "plug-in's format (config key: train or data)")
    val: str | None = option(None, "validation data in the same form; default: a split of the training data")
    val_split: float = option(0.1, "fraction held out for validation (per class) when no validation data is given")
    classes: list[str] | None = option(None, "the class names in order (default: sorted folder names or labels)")
    input_size: int = option(224, "side of the square input in pixels (a multiple of 32)")
    in_chans: int = option(3, "input channels: 3 (RGB) or 1 (grayscale) for images")
    crop_pct: float = option(0.875, "evaluation: resize the short side to input_size / crop_pct, then centre-crop")
    interpolation: str = option("bicubic", "resize interpolation: bicubic, bilinear or nearest")
    mean: tuple[float, ...] | None = option(None, "per-channel normalisation mean (default: the model's pretrained cfg)")
    std: tuple[float, ...] | None = option(None, "per-channel normalisation std (default: the model's pretrained cfg)")
    strict: bool = option(False, "fail on the first unreadable sample instead of skipping and reporting it")
    workers: int = option(0, "DataLoader worker processes (0: load in the training process)")
    # augmentation
    scale: tuple[float, float] = option((0.08, 1.0), "RandomResizedCrop's range of area fractions, as min,max")
    hflip: float = option(0.5, "probability of a horizontal flip")
    randaug: str | None = option("m9", "RandAugment magnitude, e.g. m9 or m9-n2; none disables")
    reprob: float = option(0.25, "probability of random erasing")
    mixup: float = option(0.0, "mixup alpha (0: off)")
    cutmix: float = option(0.0, "cutmix alpha (0: off)")
    mixup_prob: float = option(1.0, "probability of applying mixup/cutmix to a batch")
    smoothing: float = option(0.1, "label smoothing: the probability mass spread over all classes")
    loss: str = option("ce", "classification loss: ce (softmax cross-entropy) or bce (sigmoid, per class)")
    # optimisation
    epochs: int = option(300, "number of training epochs")
    batch_size: int = option(128, "samples per batch and process")
    accum_steps: int = option(1, "micro-batches accumulated per optimizer step")
    opt: str = option("adamw", "optimizer: adamw, adam or sgd")
    lr: float | None = option(None, "absolute learning rate (default: blr x global batch / 256)")
    blr: float = option(4e-3 * 256 / 4096, "base learning rate per 256 samples, used when lr is not given")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine schedule")
    warmup_epochs: float | None = option(None, "epochs of linear warm-up (fractions allowed); none: "
                                         "min(20, epochs / 10), the resolved number is stored")
    warmup_lr: float = option(0.0, "learning rate at the start of the warm-up")
    sched: str = option("cosine", "schedule: cosine, poly ((1 - step/total)^poly_power, by iteration, "
                        "as mmseg), or step (lr x lr_decay per epoch from lr_decay_start)")
    poly_power: float = option(1.0, "poly schedule: the power of (1 - step / total)")
    lr_decay: float = option(0.85, "step schedule: the factor per epoch")
    lr_decay_start: int = option(5, "step schedule: the first epoch that decays")
    weight_decay: float = option(0.05, "decoupled weight decay (not on norms, biases and layer scales)")
    layer_decay: float | None = option(None, "layer-wise learning-rate decay, e.g. 0.8 for fine-tuning")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas, as b1,b2")
    clip_grad: float | None = option(None, "clip the gradient norm to this value")
    drop_path: float = option(0.0, "stochastic depth rate of the last block (linear over the depth)")
    head_init_scale: float = option(1.0, "scale of the classifier's initial weights")
    ema_decay: float | None = option(None, "keep an EMA of the weights with this decay, e.g. 0.9999 (also evaluated)")
    # runtime
    amp: str | None = option(None, "mixed precision: bf16 or fp16 (CUDA only); none for float32")
    precision: str = option("fp32", "numeric precision: fp32 (exact, default), bf16 (GEMMs in bf16 with fp32 "
                            "masters; --amp bf16 is an alias) or auto (bf16 where the CPU or GPU has bf16 units)")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (CUDA when available)")
    channels_last: bool = option(False, "channels-last memory format")
    grad_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    sync_bn: bool = option(False, "synchronise batch-norm statistics across processes")
    seed: int = option(0, "seed of initialisation, data order and augmentation")
    deterministic: bool = option(False, "use deterministic algorithms only (slower)")
    # output
    output: str = option("runs/train", "run directory: checkpoints, logs, plots, weights")
    keep_last: int = option(2, "step checkpoints kept (the best weights are kept separately)")
    save_every_steps: int | None = option(None, "also checkpoint every N optimizer steps, mid-epoch")
    eval_every: int = option(1, "validate every N epochs (and after the last)")
    log_every: int = option(10, "log the loss every N optimizer steps")
    max_steps: int | None = option(None, "stop after N optimizer steps (smoke tests)")
    # the plug-in's own options (its dataclass; None when it declares none)
    options: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.warmup_epochs is None:  # unset: a tenth of the run, at most the 300-epoch recipe's 20
            self.warmup_epochs = default_warmup(self.epochs)
        if self.options is None:
            cls = plugin_options(self.modality)
            self.options = cls() if cls is not None else None

    def __getattr__(self, name: str) -> Any:
        """A plug-in option, read flat (`cfg.mel_bins`)."""
        options = self.__dict__.get("options")
        if options is not None and name in options.__dataclass_fields__:
            return getattr(options, name)
        raise AttributeError(f"no option {name!r} for modality {self.__dict__.get('modality')!r}")

    def to_dict(self) -> dict:
        """Flat `option: value` (the engine's, then the plug-in's), as stored in checkpoints."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        if self.options is not None:
            values.update(dataclasses.asdict(self.options))
        return json.loads(json.dumps(values))


def default_warmup(epochs: float) -> float:
    """Warm-up epochs when none are set: 10% of the run, at most 20 (the ImageNet recipes' value)."""
    return min(20.0, epochs / 10)


# Fine-tuning from pretrained weights on a new (usually small) dataset: lr 1e-4 at batch 32, the
# usual warm-up (a tenth of the run), light augmentation (no RandAugment, erasing or mixup: they are
# for 300-epoch runs from scratch), layer-wise lr decay so the early stages move least, a little
# stochastic depth.
FINETUNE = dict(epochs=10, batch_size=32, blr=1e-4 * 256 / 32, min_lr=1e-6,
                weight_decay=0.05, layer_decay=0.8, drop_path=0.1, smoothing=0.1, scale=(0.25, 1.0),
                randaug=None, reprob=0.0, mixup=0.0, cutmix=0.0)

# Other names of config keys (`data:` in a YAML file or `--set data=...` is `train`, as the --data flag)
KEY_ALIASES = {"data": "train"}

PRESETS: dict[str, dict[str, Any]] = {
    # Fine-tuning from weights: needs --pretrained or --init-checkpoint (also applied under a run's
    # own settings when it starts from weights without a preset)
    "finetune": FINETUNE,
    # The demo's digits recipe (`largekernel make-data digits OUT`): grayscale 32x32, UniRepLKNet-A,
    # no flips (digits are not mirror-symmetric), no RandAugment/erasing (they blot out 32-px digits)
    "digits": dict(model="unireplknet_a", input_size=32, in_chans=1, crop_pct=1.0, batch_size=64,
                   epochs=8, lr=4e-3, warmup_epochs=0.5, weight_decay=0.05, min_lr=1e-5, hflip=0.0,
                   randaug=None, reprob=0.0, scale=(0.7, 1.0), smoothing=0.1, drop_path=0.0,
                   mean=(0.5,), std=(0.5,)),
    # ImageNet-1K from scratch (the authors' recipe); lr scales linearly with the global batch.
    **{f"in1k_{v}": dict(model=f"unireplknet_{v}", epochs=300, warmup_epochs=20, blr=4e-3 * 256 / 4096,
                         weight_decay=0.05, smoothing=0.1, randaug="m9", reprob=0.25,
                         mixup=mix, cutmix=cut, drop_path=dp, input_size=224)
       for v, (mix, cut, dp) in {"a": (0.3, 0.3, 0.0), "f": (0.3, 0.3, 0.0), "p": (0.3, 0.3, 0.1),
                                 "n": (0.5, 0.5, 0.1), "t": (0.8, 1.0, 0.2),
                                 "s": (0.8, 1.0, 0.4)}.items()},
    # ImageNet-22K -> 1K fine-tuning at 384 (the authors' recipe), from the authors' 22K weights
    **{f"in22k_ft_in1k_384_{v}": dict(model=f"unireplknet_{v}.in22k", pretrained=True,
                                      input_size=384, crop_pct=1.0,
                                      epochs=30, warmup_epochs=0, blr=5e-5 * 256 / 512,
                                      weight_decay=1e-8, layer_decay=0.8, head_init_scale=0.001,
                                      mixup=0.0, cutmix=0.0, smoothing=0.1, drop_path=0.2,
                                      ema_decay=0.9999 if v in ("l", "xl") else None)
       for v in ("s", "b", "l", "xl")},
    # Speech Commands V2 (the authors' audio recipe): 128 x 128 log-mel, BCE, waveform mixup, x0.85/epoch
    "speechcommands_s": dict(modality="audio", model="unireplknet_s", in_chans=1, input_size=128,
                             mel_bins=128, target_frames=128, drop_path=0.4, opt="adam", lr=2.5e-4,
                             weight_decay=5e-7, betas=(0.95, 0.999), batch_size=128, epochs=100,
                             sched="step", lr_decay=0.85, lr_decay_start=5, warmup_epochs=0,
                             min_lr=0.0, loss="bce", mixup=10.0, mixup_prob=0.6, cutmix=0.0,
                             smoothing=0.0, randaug=None, reprob=0.0, hflip=0.0, freq_mask=48,
                             time_mask=48),
    # ModelNet-40 (the authors' point-cloud recipe): 4096 FPS points, 4 views at 224, S backbone
    "modelnet40_s": dict(modality="pointcloud", model="unireplknet_s", input_size=224, num_points=4096,
                         views=4, knn=32, test_copies=8, drop_path=0.4, smoothing=0.2, opt="adamw",
                         lr=5e-4, weight_decay=0.05, batch_size=16, epochs=300, sched="cosine",
                         mixup=0.0, cutmix=0.0),
    # Kinetics-400 from scratch (the authors' Video/run_unireplknet.sh): their --lr 4e-3
    # is a base lr (VideoMAE scales it by batch/256; 4 x 8 GPUs x update_freq 2 = 64 -> 1e-3).
    # RandAugment is not applied to clips (README, video).
    "kinetics400_s": dict(modality="video", model="unireplknet_s", frames=16, frame_stride=4,
                          sampling="dense", input_size=224, crop_pct=1.0, drop_path=0.4, opt="adamw",
                          blr=4e-3, weight_decay=0.05, epochs=90, warmup_epochs=5, layer_decay=0.75,
                          randaug=None, reprob=0.0, mixup=0.8, cutmix=1.0, smoothing=0.1,
                          batch_size=4, accum_steps=2, test_clips=5, test_crops=3,
                          model_kwargs=dict(kernel_sizes=[[3, 3, 3], [13, 13, 13], [13, 3, 3] * 9,
                                                          [11, 11, 11]])),
    # Forecasting (the authors' time-series recipe): 48 steps in, 24 out, 48 x 768 = one 192 x 192 map, S
    "forecast_s": dict(modality="timeseries", model="unireplknet_s", in_chans=1, lookback=48,
                       horizon=24, embed_dim=768, drop_path=0.1, opt="adamw", lr=1e-4,
                       weight_decay=0.05, batch_size=32, epochs=20, warmup_epochs=1, sched="cosine",
                       mixup=0.0, cutmix=0.0, smoothing=0.0),
    # ADE20K semantic segmentation (the authors' released config; models.segmentation.ADE20K_RECIPE):
    # UPerNet-T, 160k iterations of batch 16 = 1,264 steps per epoch of the 20,210 training images
    # (padded to whole batches), so 127 epochs cut at max_steps 160000, which is also the poly
    # schedule's length; the 1,500 warmup iterations are 1500/1264 epochs; mIoU every 3 epochs
    # (3,792 iterations; the authors: 4,000). Layer decay 1.0 is the authors' T value (a no-op).
    "ade20k_upernet_t": dict(modality="segmentation", model="upernet_unireplknet_t", input_size=512,
                             pretrained_backbone="in1k", drop_path=0.2, opt="adamw", lr=1e-4,
                             betas=(0.9, 0.999), weight_decay=0.05, layer_decay=1.0, batch_size=16,
                             epochs=127, max_steps=160_000, sched="poly", poly_power=1.0, min_lr=0.0,
                             warmup_epochs=1500 / 1264, warmup_lr=1e-10, aux_weight=0.4,
                             ratio_range=(0.5, 2.0), cat_max_ratio=0.75, hflip=0.5, channels=512,
                             aux_channels=256, eval_every=3, randaug=None, reprob=0.0, mixup=0.0,
                             cutmix=0.0, smoothing=0.0),
    # the same recipe on CPU: UniRepLKNet-A on a 28 x 28 map (48 x 16), every other training window
    "forecast_tiny": dict(modality="timeseries", model="unireplknet_a", in_chans=1, lookback=48,
                          horizon=24, embed_dim=16, window_stride=2, opt="adamw", lr=2e-3,
                          weight_decay=0.01, batch_size=32, epochs=4, warmup_epochs=0.2,
                          sched="cosine", mixup=0.0, cutmix=0.0, smoothing=0.0),
}


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    """Convert a YAML/CLI value to the type of field `spec` (tuples from lists, "none" -> None)."""
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
    """Defaults < preset < YAML < overrides; unknown keys raise with the allowed names.

    A run that starts from weights (`pretrained` or `init_checkpoint`) without a preset gets the
    `finetune` preset under its own settings, so it cannot inherit the from-scratch recipe."""
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
        values.update(_unalias(loaded, str(path)))
    values.update(_unalias(overrides or {}, "overrides"))  # an explicit None switches a feature off
    from_weights = _given(values.get("pretrained")) or _given(values.get("init_checkpoint"))
    if preset == "finetune" and not from_weights:
        raise ValueError("the finetune preset starts from trained weights: add --pretrained (the Hub "
                         "weights of --model, e.g. unireplknet_s.in1k) or --init-checkpoint FILE")
    if preset is None and from_weights:
        values = {**FINETUNE, **values}
    modality = values.get("modality", TrainConfig.__dataclass_fields__["modality"].default)
    get_plugin(modality)  # an unknown modality fails here, naming the known ones
    engine = {k: f for k, f in TrainConfig.__dataclass_fields__.items() if k != "options"}
    opts_cls = plugin_options(modality)
    own = opts_cls.__dataclass_fields__ if opts_cls is not None else {}
    others = {k for cls in all_plugins().values() if cls.options is not None
              for k in cls.options.__dataclass_fields__}
    unknown = sorted(set(values) - set(engine) - set(own) - others)
    if unknown:
        raise ValueError(f"unknown config option(s) {unknown}; allowed: {', '.join(sorted({*engine, *own}))}")
    # options of other plug-ins (configs stored by older versions hold every modality's) are dropped
    options = opts_cls(**{k: _coerce(own[k], v) for k, v in values.items() if k in own}) if opts_cls else None
    return TrainConfig(**{k: _coerce(engine[k], v) for k, v in values.items() if k in engine},
                       options=options)


def _given(value: Any) -> bool:
    """Whether a raw option value switches something on (True or a path; not false/none/empty)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "none", "null", "false", "0")
    return bool(value)


def _unalias(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` with alias keys (KEY_ALIASES) renamed; an alias next to its key is an error."""
    out = dict(values)
    for alias, key in KEY_ALIASES.items():
        if alias in out:
            if key in out and out[key] != out[alias]:
                raise ValueError(f"{source} set both {alias!r} and {key!r} (the same option); keep one")
            out[key] = out.pop(alias)
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["lr=1e-3", "model_kwargs={\"kernel_sizes\": [3,5,7,9]}"]` -> dict (values parsed later)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value")
        key = key.strip().replace("-", "_")
        out[KEY_ALIASES.get(key, key)] = value
    return out
