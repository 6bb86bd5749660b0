"""Model registry: names, pretrained configs (weights described by data) and `create_model`."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .unireplknet import VARIANTS, UniRepLKNet

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_REPO = "DingXiaoH/UniRepLKNet"


@dataclass(frozen=True)
class PretrainedCfg:
    """What a set of weights expects and where it lives (timm's `pretrained_cfg` fields)."""

    architecture: str
    tag: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    file: str | None = None
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)
    pool_size: tuple[int, int] = (7, 7)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    first_conv: str = "downsample_layers.0.0"
    classifier: str = "head"
    top1: float | None = None
    license: str = "apache-2.0"
    paper_ids: tuple[str, ...] = field(default=("arXiv:2311.15599", "arXiv:2410.08049"))
    description: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cfg(arch: str, tag: str, filename: str, **kw) -> PretrainedCfg:
    size = kw.pop("size", 224)
    return PretrainedCfg(architecture=arch, tag=tag, hf_hub_id=HUB_REPO, hf_hub_filename=filename,
                         input_size=(3, size, size), pool_size=(size // 32, size // 32), **kw)


def _build_pretrained() -> dict[str, PretrainedCfg]:
    cfgs: dict[str, PretrainedCfg] = {}
    in1k = {"a": 77.03, "f": 78.58, "p": 80.23, "n": 81.64, "t": 83.21, "s": 83.91}
    ft384 = {"s": 86.44, "b": 87.40, "l": 87.88, "xl": 87.96}
    pre22k_size = {"s": 224, "b": 224, "l": 192, "xl": 192}
    # The first tag listed for an architecture is its default.
    for v in ("a", "f", "p", "n", "t", "s", "b", "l", "xl"):
        arch = f"unireplknet_{v}"
        if v in in1k:
            cfgs[f"{arch}.in1k"] = _cfg(arch, "in1k", f"{arch}_in1k_224_acc{in1k[v]:.2f}.pth",
                                        top1=in1k[v], description="ImageNet-1K, 224")
        if v in ft384:
            cfgs[f"{arch}.in22k_ft_in1k_384"] = _cfg(
                arch, "in22k_ft_in1k_384", f"{arch}_in22k_to_in1k_384_acc{ft384[v]:.2f}.pth",
                size=384, crop_pct=1.0, crop_mode="squash", top1=ft384[v],
                description="ImageNet-22K pretrained, fine-tuned on ImageNet-1K at 384")
        if v in pre22k_size:
            cfgs[f"{arch}.in22k"] = _cfg(arch, "in22k", f"{arch}_in22k_pretrain.pth",
                                         size=pre22k_size[v], num_classes=21841,
                                         description="ImageNet-22K pretrained (21841 classes)")
    return cfgs


PRETRAINED: dict[str, PretrainedCfg] = _build_pretrained()

MODEL_KWARGS = {
    "num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate",
    "layer_scale_init_value", "head_init_scale", "kernel_sizes", "deploy", "features_only",
    "out_indices", "device", "dtype",
}


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def list_models(filter: str | list[str] = "", pretrained: bool = False,
                exclude_filters: str | list[str] = ()) -> list[str]:
    """Model names matching fnmatch wildcards; `pretrained=True` lists `arch.tag` weights."""
    from .segmentation import SEGMENTERS

    names = list(PRETRAINED) if pretrained else list(VARIANTS) + list(SEGMENTERS)
    includes = [filter] if isinstance(filter, str) else list(filter)
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    if any(includes):
        names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in includes if f)]
    names = [n for n in names if not any(fnmatch.fnmatch(n, f) for f in excludes)]
    return sorted(names, key=_natural_key)


def split_model_name(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    return arch, tag or None


def _unknown(name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}"
                      " (list_models(pretrained=True) lists the weight tags).")


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The cfg of `arch` (its default tag) or `arch.tag`."""
    arch, tag = split_model_name(name)
    if arch not in VARIANTS:
        raise _unknown(name, list(VARIANTS) + list(PRETRAINED))
    if tag is None:
        return next(c for k, c in PRETRAINED.items() if split_model_name(k)[0] == arch)
    if f"{arch}.{tag}" not in PRETRAINED:
        tags = [k for k in PRETRAINED if k.startswith(arch + ".")]
        raise ValueError(f"{arch} has no weights tagged {tag!r}; available: {', '.join(tags)}")
    return PRETRAINED[f"{arch}.{tag}"]


def create_model(model_name: str, pretrained: bool = False, checkpoint_path: str | Path | None = None,
                 pretrained_cfg_overlay: dict | None = None, cache_dir: str | Path | None = None,
                 **kwargs) -> UniRepLKNet:
    """Build a UniRepLKNet variant by name (`unireplknet_t`, `unireplknet_s.in22k`, ...).

    `pretrained=True` loads the tag's weights from the Hugging Face Hub (or its local cache, or
    `pretrained_cfg_overlay=dict(file=PATH)`); `checkpoint_path` loads a file after the build.
    kwargs set to None are ignored, so a CLI can pass unset options through.
    """
    if model_name.startswith("upernet_"):  # semantic segmentation: UPerNet on UniRepLKNet
        from .segmentation import create_segmenter
        return create_segmenter(model_name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                                cache_dir=cache_dir, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(kwargs) - MODEL_KWARGS)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {model_name}; "
                         f"allowed: {', '.join(sorted(MODEL_KWARGS))}")
    cfg = get_pretrained_cfg(model_name)
    if pretrained_cfg_overlay:
        cfg = dataclasses.replace(cfg, **pretrained_cfg_overlay)
    kwargs.setdefault("num_classes", cfg.num_classes)
    depths, dims = VARIANTS[cfg.architecture]
    model = UniRepLKNet(depths, dims, **kwargs)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    model.name = cfg.architecture
    if pretrained:
        from .checkpoint import load_checkpoint
        from .hub import resolve_pretrained_file
        load_checkpoint(model, resolve_pretrained_file(cfg, cache_dir=cache_dir))
    if checkpoint_path is not None:
        from .checkpoint import load_checkpoint
        load_checkpoint(model, checkpoint_path)
    return model
