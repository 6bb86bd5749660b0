"""UPerNet on UniRepLKNet for semantic segmentation, in mmsegmentation 0.x's module layout.

Module and state-dict names follow mmseg (`backbone.*`, `decode_head.{psp_modules, bottleneck,
lateral_convs, fpn_convs, fpn_bottleneck, conv_seg}`, `auxiliary_head.{convs, conv_seg}`, ConvModule
`.conv`/`.bn`), so the authors' released ADE20K checkpoints load as they are. The math is the
spec's (docs/segmentation-spec.md of the project): every resize bilinear with align_corners=False.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.reparam import fuse_bn, require_eval
from .unireplknet import VARIANTS, UniRepLKNet

log = logging.getLogger(__name__)

ARCH_PREFIX = "upernet_"
DEFAULT_POOL_SCALES = (1, 2, 3, 6)
IGNORE_INDEX = 255


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with align_corners=False, mmseg's only resize mode. Sizes stay symbolic
    under torch.export (no int() on them), so exported models keep a dynamic H and W."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _pool_matrix(size, bins: int, like: torch.Tensor) -> torch.Tensor:
    """bins x size averaging matrix of adaptive pooling: bin i spans [floor(i n / b), ceil((i+1) n / b))."""
    i = torch.arange(bins, device=like.device).unsqueeze(1)
    j = torch.arange(size, device=like.device).unsqueeze(0)
    inside = (j >= (i * size) // bins) & (j < ((i + 1) * size + bins - 1) // bins)
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d that, under torch.export / ONNX export, pools with two averaging
    matrices built from the symbolic input size: the stock decomposition bakes the traced size
    into gather indices, so an exported model would fail at other input sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
            return super().forward(x)
        bh, bw = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        rows = _pool_matrix(x.shape[-2], bh, x)
        cols = _pool_matrix(x.shape[-1], bw, x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class ConvModule(nn.Module):
    """mmcv's ConvModule as the heads use it: Conv2d (no bias) -> BatchNorm2d -> ReLU.

    `reparameterize()` folds the BN into the conv (a conv with bias, `bn` becomes Identity): exact
    in eval mode, where BN is a fixed per-channel affine map.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=deploy, **dd)
        self.bn = nn.Identity() if deploy else nn.BatchNorm2d(out_channels, **dd)
        self.activate = nn.ReLU(inplace=True)

    @property
    def deploy(self) -> bool:
        return isinstance(self.bn, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the conv (in place, idempotent, eval mode only)."""
        if self.deploy:
            return
        require_eval(self)
        w, b = fuse_bn(self.conv.weight, self.conv.bias, self.bn)
        conv = self.conv
        merged = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                           bias=True, device=w.device, dtype=w.dtype)
        merged.weight.copy_(w)
        merged.bias.copy_(b)
        self.conv = merged
        self.bn = nn.Identity()


class UPerHead(nn.Module):
    """UPerNet decode head: pyramid pooling on the last map, FPN top-down fusion, fused classifier."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = DEFAULT_POOL_SCALES, dropout_ratio: float = 0.1,
                 deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(deploy=deploy, device=device, dtype=dtype)
        in_channels = [int(c) for c in in_channels]
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.pool_scales = tuple(int(s) for s in pool_scales)
        # conv_seg first: mmseg's base head registers it first, so state-dict order matches the files
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, device=device, dtype=dtype)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1, **dd))
            for s in self.pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(self.pool_scales) * channels, channels, 3,
                                     padding=1, **dd)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1, **dd) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1, **dd)
                                       for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1, **dd)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pyramid pooling: [x, up(pool_s(x)) for each scale] -> 3x3 bottleneck."""
        outs = [x] + [resize(ppm(x), x.shape[2:]) for ppm in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[-1])
        for i in range(len(outs) - 1, 0, -1):
            outs[i] = resize(outs[i], outs[0].shape[2:])
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """The auxiliary head: `num_convs` 3x3 ConvModules on one feature map, then the classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout_ratio: float = 0.1, deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(deploy=deploy, device=device, dtype=dtype)
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, device=device, dtype=dtype)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.convs = nn.Sequential(*[ConvModule(in_channels if i == 0 else channels, channels, 3,
                                                padding=1, **dd) for i in range(num_convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


def init_head_weights(head: nn.Module) -> None:
    """The authors' head init: ConvModule convs Kaiming-normal (fan_out, ReLU), BN 1/0, conv_seg N(0, 0.01)."""
    for m in head.modules():
        if isinstance(m, ConvModule):
            nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
            if m.conv.bias is not None:
                nn.init.zeros_(m.conv.bias)
            if isinstance(m.bn, nn.BatchNorm2d):
                nn.init.ones_(m.bn.weight)
                nn.init.zeros_(m.bn.bias)
    nn.init.normal_(head.conv_seg.weight, 0.0, 0.01)
    nn.init.zeros_(head.conv_seg.bias)


class UPerNet(nn.Module):
    """mmseg's EncoderDecoder: UniRepLKNet dense backbone + UPerHead (+ FCNHead auxiliary head).

    eval mode: `model(x)` is the decode head's logits resized to x's H x W (B x classes x H x W),
    for any H and W. train mode: a dict `{"logits": that, "aux_logits": the auxiliary head's logits
    at stride 16 (None without an auxiliary head)}`; `segmentation_loss` resizes both to the label.
    """

    def __init__(self, backbone: UniRepLKNet, num_classes: int, channels: int = 512,
                 aux_channels: int = 256, pool_scales: Sequence[int] = DEFAULT_POOL_SCALES,
                 dropout_ratio: float = 0.1, aux_in_index: int = 2, deploy: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if not backbone.features_only or backbone.out_indices != (0, 1, 2, 3):
            raise ValueError("UPerNet needs a UniRepLKNet built with features_only=True and "
                             "out_indices=(0, 1, 2, 3) (all four stage outputs)")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        dd = dict(deploy=deploy, device=device, dtype=dtype)
        self.backbone = backbone
        self.decode_head = UPerHead(backbone.dims, num_classes, channels, pool_scales, dropout_ratio, **dd)
        self.aux_in_index = aux_in_index
        self.auxiliary_head = (FCNHead(backbone.dims[aux_in_index], num_classes, aux_channels,
                                       dropout_ratio=dropout_ratio, **dd) if aux_channels > 0 else None)
        for head in (self.decode_head, self.auxiliary_head):
            if head is not None:
                init_head_weights(head)
        self.num_classes = num_classes
        self.in_chans = backbone.in_chans
        self._args = dict(num_classes=num_classes, channels=channels, aux_channels=aux_channels,
                          pool_scales=tuple(pool_scales), dropout_ratio=dropout_ratio,
                          aux_in_index=aux_in_index)

    @property
    def deploy(self) -> bool:
        return self.backbone.deploy and all(
            m.deploy for m in self.modules() if isinstance(m, ConvModule))

    @property
    def model_args(self) -> dict:
        """The `build_segmenter` arguments that rebuild this model in its current form (also what
        `save_checkpoint` records, so `model_from_checkpoint` rebuilds a saved segmenter)."""
        bb = self.backbone.model_args
        args = {k: bb[k] for k in ("depths", "dims", "kernel_sizes", "in_chans", "drop_path_rate",
                                   "layer_scale_init_value")}
        args.update({k: v for k, v in self._args.items() if k != "aux_in_index"})
        return dict(args, deploy=self.deploy)

    @property
    def feature_info(self):
        """The backbone's feature maps (channels, strides) the heads consume."""
        return self.backbone.feature_info

    def forward(self, x: torch.Tensor):
        feats = self.backbone(x)
        logits = resize(self.decode_head(feats), x.shape[2:])
        if not self.training:
            return logits
        aux = self.auxiliary_head(feats[self.aux_in_index]) if self.auxiliary_head is not None else None
        return {"logits": logits, "aux_logits": aux}

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the backbone's blocks and the heads' ConvModule BNs (in place, eval mode only)."""
        require_eval(self)
        self.backbone.reparameterize()
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.reparameterize()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """None beyond the 1-D/bias rule: the authors' segmentation recipe decays GRN's 4-D gamma/beta."""
        return set()

    @property
    def num_layers(self) -> int:
        """The recipe's `num_layers` N: 3 + ceil(stage-3 depth / 3) (T 9; S, B, L 12)."""
        return 3 + math.ceil(self.backbone.depths[2] / 3)

    @property
    def num_layer_ids(self) -> int:
        return self.num_layers + 2

    def layer_id(self, name: str) -> int:
        """Layer-decay id of a parameter name, the authors' segmentation scheme."""
        m = re.match(r"backbone\.(downsample_layers|stages)\.(\d+)(?:\.(\d+))?", name)
        n = self.num_layers
        if m is None:
            return n + 1
        kind, stage = m.group(1), int(m.group(2))
        if stage == 0:
            return 0 if kind == "downsample_layers" else 1
        if stage == 1:
            return 2
        if stage == 2:
            return 3 if kind == "downsample_layers" else 3 + int(m.group(3)) // 3
        return n


# The released ADE20K configs, as data for a training preset.
ADE20K_RECIPE = dict(
    iters=160_000, batch_size=16, crop=(512, 512), scale=(2048, 512), ratio_range=(0.5, 2.0),
    cat_max_ratio=0.75, optimizer="adamw", lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
    schedule="poly", poly_power=1.0, min_lr=0.0, warmup_iters=1500, warmup_ratio=1e-6,
    aux_weight=0.4, ignore_index=IGNORE_INDEX, eval_interval=4000, num_classes=150,
    reduce_zero_label=True, channels=512, aux_channels=256,
)
# Per backbone: drop-path rate, layer-wise lr decay rate, the ImageNet weights the run starts from.
ADE20K_VARIANT_RECIPES = {
    "upernet_unireplknet_t": dict(drop_path_rate=0.2, layer_decay=1.0, pretrained_backbone="in1k"),
    "upernet_unireplknet_s": dict(drop_path_rate=0.3, layer_decay=0.9, pretrained_backbone="in1k"),
    "upernet_unireplknet_b": dict(drop_path_rate=0.3, layer_decay=0.9,
                                  pretrained_backbone="in22k_ft_in1k_384"),
    "upernet_unireplknet_l": dict(drop_path_rate=0.4, layer_decay=0.85,
                                  pretrained_backbone="in22k_ft_in1k_384"),
}


def poly_warmup_lr(i: int, total_iters: int, base_lr: float, warmup_iters: int = 1500,
                   warmup_ratio: float = 1e-6, power: float = 1.0, min_lr: float = 0.0) -> float:
    """The recipe's lr at 0-based iteration i: poly decay, times mmcv's linear warmup factor."""
    lr = (base_lr - min_lr) * (1 - i / total_iters) ** power + min_lr
    if i < warmup_iters:
        lr *= 1 - (1 - i / warmup_iters) * (1 - warmup_ratio)
    return lr


# ---------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------
SEGMENTERS = {f"{ARCH_PREFIX}{name}": name for name in VARIANTS}
# The authors' released ADE20K files with known names (Hugging Face repo DingXiaoH/UniRepLKNet).
ADE20K_FILES = {
    "upernet_unireplknet_t": "upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth",
    "upernet_unireplknet_b": "upernet_unireplknet_b_in22k_640_160k_ade20k_miou53.52.pth",
}
SEGMENTER_KWARGS = {
    "depths", "dims", "num_classes", "channels", "aux_channels", "pool_scales", "dropout_ratio", "deploy", "in_chans",
    "drop_path_rate", "layer_scale_init_value", "kernel_sizes", "device", "dtype",
}


@dataclass
class SegmenterCheckpointInfo:
    """What a segmentation checkpoint's shapes say about the model that wrote it."""

    num_classes: int | None
    channels: int | None
    aux_channels: int | None
    num_pool_scales: int | None


def is_segmenter_name(name: str) -> bool:
    return name.split(".")[0] in SEGMENTERS


def split_segmenter_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split an mmseg-layout state dict into backbone / decode_head / auxiliary_head / other parts."""
    parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "decode_head": {},
                                                  "auxiliary_head": {}, "other": {}}
    for k, v in sd.items():
        prefix, _, rest = k.partition(".")
        if prefix in parts and prefix != "other" and rest:
            parts[prefix][rest] = v
        else:
            parts["other"][k] = v
    return parts


def is_segmenter_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict holds a UPerHead (a segmentation checkpoint), not only a backbone."""
    return any(k.startswith(("decode_head.bottleneck.", "decode_head.fpn_bottleneck.")) for k in sd)


def checkpoint_head_info(sd: dict[str, torch.Tensor]) -> SegmenterCheckpointInfo:
    """Class count, head widths and pyramid-pooling branches read off a segmentation state dict."""
    seg = sd.get("decode_head.conv_seg.weight")
    aux = sd.get("auxiliary_head.conv_seg.weight")
    psp = {int(m.group(1)) for k in sd if (m := re.match(r"decode_head\.psp_modules\.(\d+)\.", k))}
    has_aux = any(k.startswith("auxiliary_head.") for k in sd)
    return SegmenterCheckpointInfo(
        num_classes=int(seg.shape[0]) if seg is not None else None,
        channels=int(seg.shape[1]) if seg is not None else None,
        aux_channels=(int(aux.shape[1]) if aux is not None else None) if has_aux else 0,
        num_pool_scales=len(psp) or None)


def build_segmenter(depths: Sequence[int], dims: Sequence[int], num_classes: int = 150,
                    channels: int = 512, aux_channels: int = 256,
                    pool_scales: Sequence[int] = DEFAULT_POOL_SCALES, dropout_ratio: float = 0.1,
                    deploy: bool = False, device=None, dtype=None, **backbone_kwargs) -> UPerNet:
    """A UPerNet on a UniRepLKNet backbone of the given depths/dims (`backbone_kwargs` go to it)."""
    backbone = UniRepLKNet(depths, dims, features_only=True, out_indices=(0, 1, 2, 3), deploy=deploy,
                           device=device, dtype=dtype, **backbone_kwargs)
    return UPerNet(backbone, num_classes, channels, aux_channels, pool_scales, dropout_ratio,
                   deploy=deploy, device=device, dtype=dtype)


def create_segmenter(model_name: str, pretrained: bool = False,
                     checkpoint_path: str | Path | None = None, pretrained_backbone: bool | str = False,
                     cache_dir: str | Path | None = None, **kwargs) -> UPerNet:
    """Build `upernet_unireplknet_{a..xl}` (what `create_model` dispatches `upernet_*` names to).

    Head widths default to the authors' 512 (decode) / 256 (auxiliary; 0 = no auxiliary head).
    `checkpoint_path` loads a file after the build (a segmentation checkpoint: every part; a
    classification or backbone one: the backbone only, heads fresh); widths not given are then read
    from the checkpoint's shapes. `pretrained=True` loads the authors' ADE20K file (T and B);
    `pretrained_backbone=True` (or a tag like "in22k_ft_in1k_384") the ImageNet weights of the
    backbone, as the authors' training recipe starts. kwargs set to None are ignored.
    """
    from .checkpoint import read_state_dict

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(kwargs) - SEGMENTER_KWARGS)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {model_name}; "
                         f"allowed: {', '.join(sorted(SEGMENTER_KWARGS))}")
    arch = model_name.split(".")[0]
    if arch not in SEGMENTERS:
        known = ", ".join(sorted(SEGMENTERS, key=lambda n: list(VARIANTS).index(SEGMENTERS[n])))
        raise ValueError(f"unknown segmentation model {model_name!r}; known: {known}")
    if pretrained and checkpoint_path is None:
        checkpoint_path = _resolve_ade20k(arch, cache_dir)
    sd = read_state_dict(checkpoint_path, backbone_only=False) if checkpoint_path is not None else None
    if sd is not None and is_segmenter_state_dict(sd):
        _fill_head_kwargs(kwargs, sd, checkpoint_path)
    kwargs.setdefault("num_classes", 150)
    depths, dims = VARIANTS[SEGMENTERS[arch]]
    model = build_segmenter(kwargs.pop("depths", depths), kwargs.pop("dims", dims), **kwargs)
    model.name = arch
    model.pretrained_cfg = segmenter_cfg(arch, model.num_classes)
    if pretrained_backbone:
        from .hub import resolve_pretrained_file
        from .registry import get_pretrained_cfg

        tag = "" if pretrained_backbone is True else f".{pretrained_backbone}"
        path = resolve_pretrained_file(get_pretrained_cfg(SEGMENTERS[arch] + tag), cache_dir=cache_dir)
        load_segmenter_checkpoint(model, path)
    if sd is not None:
        load_segmenter_checkpoint(model, checkpoint_path, state_dict=sd)
    return model


def segmenter_cfg(arch: str, num_classes: int) -> dict:
    """What the authors' ADE20K configs expect of inputs: crop, test resize, normalisation (0-1 scale)."""
    from .registry import IMAGENET_MEAN, IMAGENET_STD

    return {"architecture": arch, "num_classes": num_classes, "input_size": (3, 512, 512),
            "crop_size": (512, 512), "test_scale": (2048, 512), "size_divisor": 32,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "ignore_index": IGNORE_INDEX,
            "ade20k_file": ADE20K_FILES.get(arch)}


def _fill_head_kwargs(kwargs: dict, sd: dict[str, torch.Tensor], path) -> None:
    """Set the head widths (and class count) a segmentation state dict implies, unless given."""
    info = checkpoint_head_info(sd)
    for key in ("channels", "aux_channels", "num_classes"):
        value = getattr(info, key)
        if key not in kwargs and value is not None:
            kwargs[key] = value
    if "pool_scales" not in kwargs and info.num_pool_scales not in (None, len(DEFAULT_POOL_SCALES)):
        raise ValueError(f"{path} has {info.num_pool_scales} pyramid-pooling branches; "
                         "pass pool_scales=(...) with that many scales")


def _resolve_ade20k(arch: str, cache_dir) -> Path:
    from .hub import PretrainedNotAvailable, resolve_pretrained_file
    from .weights import HUB_REPO, PretrainedCfg

    if arch not in ADE20K_FILES:
        raise PretrainedNotAvailable(
            f"{arch} has no ADE20K weights with a known file name (known: {', '.join(ADE20K_FILES)}); "
            "download the authors' file and pass checkpoint_path=PATH, or use "
            "pretrained_backbone=True to start from the ImageNet backbone")
    cfg = PretrainedCfg(architecture=arch, tag="ade20k", hf_hub_id=HUB_REPO,
                        hf_hub_filename=ADE20K_FILES[arch], num_classes=150)
    return resolve_pretrained_file(cfg, cache_dir=cache_dir)


def load_segmenter_checkpoint(model: UPerNet, path: str | Path, strict: bool = True,
                              state_dict: dict[str, torch.Tensor] | None = None):
    """Load a checkpoint into a segmenter; returns a `LoadReport`.

    An mmseg-layout segmentation checkpoint loads every part; a different class count drops the
    classifiers (`conv_seg`) with a warning. A classification or backbone checkpoint initialises
    the backbone only (the heads keep their fresh init). Train-form parts (backbone blocks, head
    ConvModule BNs) fold on load into a re-parameterized model; a folded part cannot load into a
    train-form one. Keys that do not fit raise `CheckpointError` listing them (with `strict=False`
    they are skipped and reported instead).
    """
    from .checkpoint import CheckpointError, LoadReport, adapt_state_dict, read_state_dict

    report = LoadReport(path=str(path))
    sd = dict(state_dict) if state_dict is not None else read_state_dict(path, backbone_only=False)
    parts = split_segmenter_state_dict(sd)
    segmentation = is_segmenter_state_dict(sd)
    if segmentation:
        backbone_sd = parts["backbone"]
        if parts["other"]:
            report.notes.append(f"ignored {len(parts['other'])} keys outside backbone/decode_head/"
                                f"auxiliary_head (e.g. {next(iter(parts['other']))})")
    else:  # classification / backbone checkpoint: keys with no prefix, or `backbone.`
        backbone_sd = parts["backbone"] or parts["other"]
    try:
        backbone_sd = adapt_state_dict(backbone_sd, model.backbone, report)
    except CheckpointError as e:
        if strict:
            raise CheckpointError(f"{path}: the backbone part does not fit: {e}") from None
        target = model.backbone.state_dict()
        bad = [k for k in backbone_sd if k not in target or backbone_sd[k].shape != target[k].shape]
        report.dropped += [f"backbone.{k}" for k in bad]
        report.notes.append(f"strict=False: skipped {len(bad)} backbone keys that do not fit")
        backbone_sd = {k: v for k, v in backbone_sd.items() if k not in bad}
    model.backbone.load_state_dict(backbone_sd, strict=False)
    if not segmentation:
        report.notes.append("not a segmentation checkpoint: loaded the backbone; the decode and "
                            "auxiliary heads keep their fresh initialisation")
        _log_report(report)
        return report
    for name in ("decode_head", "auxiliary_head"):
        _load_head(model, name, parts[name], path, strict, report)
    _log_report(report)
    return report


def _load_head(model: UPerNet, name: str, head_sd: dict[str, torch.Tensor], path, strict: bool,
               report) -> None:
    from .checkpoint import CheckpointError

    head = getattr(model, name)
    if head is None:
        if head_sd:
            report.dropped += [f"{name}.{k}" for k in head_sd]
            report.notes.append(f"dropped the checkpoint's {name} (the model has none)")
        return
    if not head_sd:
        report.kept_init.append(f"{name}.*")
        report.notes.append(f"the checkpoint has no {name}: it keeps its fresh initialisation")
        return
    ckpt_train = any(k.endswith(".bn.running_var") for k in head_sd)
    model_train = any(not m.deploy for m in head.modules() if isinstance(m, ConvModule))
    if ckpt_train and not model_train:
        head_sd = _fold_head_state_dict(head, head_sd)
        report.notes.append(f"{name}: train-form BNs folded into the re-parameterized head")
    elif model_train and not ckpt_train:
        raise CheckpointError(
            f"{path}: its {name} is re-parameterized (BN folded into the convs), but the model's "
            "head is in train form. Build the model with deploy=True to load it.")
    target = head.state_dict()
    seg = head_sd.get("conv_seg.weight")
    if (seg is not None and seg.shape[0] != head.num_classes
            and seg.shape[1:] == target["conv_seg.weight"].shape[1:]):
        for k in ("conv_seg.weight", "conv_seg.bias"):
            head_sd.pop(k, None)
            report.kept_init.append(f"{name}.{k}")
        report.notes.append(f"{name}: the checkpoint's classifier has {seg.shape[0]} classes, "
                            f"the model {head.num_classes} (conv_seg keeps its fresh init)")
        log.warning("%s: %s.conv_seg dropped (%d classes in the checkpoint, %d in the model)",
                    path, name, seg.shape[0], head.num_classes)
    missing = sorted(k for k in target if k not in head_sd and f"{name}.{k}" not in report.kept_init)
    unexpected = sorted(k for k in head_sd if k not in target)
    wrong = sorted(k for k in head_sd if k in target and head_sd[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        if strict:
            shapes = [f"{k}: checkpoint {tuple(head_sd[k].shape)} vs model {tuple(target[k].shape)}"
                      for k in wrong]
            raise CheckpointError(_mismatch_message(path, name, head, missing, unexpected, shapes))
        bad = set(unexpected) | set(wrong)
        report.dropped += [f"{name}.{k}" for k in sorted(bad)]
        report.notes.append(f"strict=False: skipped {len(bad)} {name} keys that do not fit")
        head_sd = {k: v for k, v in head_sd.items() if k not in bad}
    head.load_state_dict(head_sd, strict=False)


def _fold_head_state_dict(head: nn.Module, head_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A train-form head state dict in folded (deploy) form: BN of every ConvModule into its conv."""
    out = {}
    convs = {k[: -len(".bn.running_var")] for k in head_sd if k.endswith(".bn.running_var")}
    for k, v in head_sd.items():
        prefix = k.rsplit(".", 2)[0]
        if prefix in convs and ".bn." in k:
            continue
        if prefix in convs and k.endswith(".conv.weight"):
            bn = nn.BatchNorm2d(v.shape[0], dtype=torch.float64).eval()
            bn.load_state_dict({n: head_sd[f"{prefix}.bn.{n}"] for n in
                                ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
            bias = head_sd.get(f"{prefix}.conv.bias")
            w, b = fuse_bn(v.double(), None if bias is None else bias.double(), bn)
            out[k], out[f"{prefix}.conv.bias"] = w.to(v.dtype), b.to(v.dtype)
            continue
        out[k] = v
    return out


def _mismatch_message(path, name, head, missing, unexpected, wrong) -> str:
    from .checkpoint import key_report

    lines = [f"{path}: its {name} does not fit the model's {type(head).__name__} "
             f"(channels={head.channels}, classes={head.num_classes}):"]
    lines += key_report(missing, unexpected, wrong)
    lines.append("Head widths are read from the checkpoint by segmenter_from_checkpoint(); with "
                 "create_model pass channels=/aux_channels= (or leave them unset) to match the file.")
    return "\n".join(lines)


def _log_report(report) -> None:
    for note in report.notes:
        log.info("%s: %s", report.path, note)


def read_segmenter_meta(path: str | Path) -> dict:
    """`classes` and `palette` from an mmseg checkpoint's `meta` (CLASSES / PALETTE), when present.

    Read like the weights (`torch_load`); a file without them (or not a .pth) gives {}.
    """
    from .checkpoint import torch_load

    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return {}
    try:
        obj = torch_load(path)
    except Exception:  # unreadable files are reported by the weight loader, which reads them too
        return {}
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return {}
    out = {}
    if isinstance(meta.get("CLASSES"), (list, tuple)):
        out["classes"] = [str(c) for c in meta["CLASSES"]]
    if isinstance(meta.get("PALETTE"), (list, tuple)):
        out["palette"] = [tuple(int(v) for v in rgb) for rgb in meta["PALETTE"]]
    return out


def infer_backbone_variant(sd: dict[str, torch.Tensor]) -> str:
    """The UniRepLKNet variant whose depths and dims match a segmentation state dict's backbone."""
    parts = split_segmenter_state_dict(sd)
    bb = parts["backbone"]
    dims = tuple(int(bb[f"downsample_layers.{i}.{0 if i else 3}.weight"].shape[0])
                 for i in range(4) if f"downsample_layers.{i}.{0 if i else 3}.weight" in bb)
    depths = tuple(len({int(m.group(1)) for k in bb if (m := re.match(rf"stages\.{i}\.(\d+)\.", k))})
                   for i in range(4))
    for name, (d, c) in VARIANTS.items():
        if d == depths and c == dims:
            return name
    raise ValueError(f"the checkpoint's backbone (depths {depths}, dims {dims}) is none of the "
                     f"UniRepLKNet variants ({', '.join(VARIANTS)}); build it with build_segmenter()")


def is_segmenter_checkpoint(path: str | Path) -> bool:
    """Whether a file is a segmenter checkpoint that `segmenter_from_checkpoint` builds (an mmseg
    layout with a decode head); a `save_checkpoint` file records its architecture instead."""
    from .checkpoint import read_metadata, read_state_dict

    if read_metadata(path).get("architecture"):
        return False
    return is_segmenter_state_dict(read_state_dict(path, backbone_only=False))


def segmenter_from_checkpoint(path: str | Path, model_name: str | None = None, **kwargs) -> UPerNet:
    """Build the segmenter an mmseg-layout checkpoint describes (variant, classes, head widths,
    train/deploy form, in_chans read off its shapes) and load it. kwargs override."""
    from .checkpoint import checkpoint_form, read_state_dict

    sd = read_state_dict(path, backbone_only=False)
    if not is_segmenter_state_dict(sd):
        raise ValueError(f"{path} holds no UPerNet decode head (no decode_head.bottleneck.* keys); "
                         "for a classification checkpoint use create_model('upernet_unireplknet_X', "
                         "num_classes=N, checkpoint_path=...) to initialise the backbone")
    name = model_name or ARCH_PREFIX + infer_backbone_variant(sd)
    backbone = split_segmenter_state_dict(sd)["backbone"]
    args: dict = {"deploy": checkpoint_form(backbone) == "deploy"}
    if "downsample_layers.0.0.weight" in backbone:
        args["in_chans"] = int(backbone["downsample_layers.0.0.weight"].shape[1])
    args.update({k: v for k, v in kwargs.items() if v is not None})
    _fill_head_kwargs(args, sd, path)
    depths, dims = VARIANTS[SEGMENTERS[name.split(".")[0]]] if is_segmenter_name(name) else (None, None)
    if depths is None:
        raise ValueError(f"unknown segmentation model {name!r}; known: {', '.join(SEGMENTERS)}")
    model = build_segmenter(depths, dims, **args)
    model.name = name.split(".")[0]
    model.pretrained_cfg = segmenter_cfg(model.name, model.num_classes)
    load_segmenter_checkpoint(model, path, state_dict=sd)
    return model
