"""Model registry: names, `create_model` and pretrained configs (the table is in weights.py), on top of
checkpoint loading and the Hub."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import re
from pathlib import Path

from .checkpoint import load_checkpoint
from .hub import resolve_pretrained_file
from .segmentation import SEGMENTERS, create_segmenter
from .unireplknet import VARIANTS, UniRepLKNet
from .weights import IMAGENET_MEAN, IMAGENET_STD, PRETRAINED, PretrainedCfg  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MODEL_KWARGS = {
    "depths", "dims", "num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate",
    "layer_scale_init_value", "head_init_scale", "kernel_sizes", "deploy", "features_only",
    "out_indices", "device", "dtype",
}


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def list_models(filter: str | list[str] = "", pretrained: bool = False,
                exclude_filters: str | list[str] = ()) -> list[str]:
    """Model names matching fnmatch wildcards; `pretrained=True` lists `arch.tag` weights."""
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

    `depths`/`dims` (with `kernel_sizes` where the depths have no default layout) build a custom
    architecture on the variant's pretrained cfg, e.g. a model trained with the authors' code at
    other sizes. `pretrained=True` loads the tag's weights from the Hugging Face Hub (or its local cache, or
    `pretrained_cfg_overlay=dict(file=PATH)`); `checkpoint_path` loads a file after the build.
    kwargs set to None are ignored, so a CLI can pass unset options through.
    """
    if model_name.startswith("upernet_"):  # semantic segmentation: UPerNet on UniRepLKNet
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
    model = UniRepLKNet(kwargs.pop("depths", depths), kwargs.pop("dims", dims), **kwargs)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    model.name = cfg.architecture
    if pretrained:
        load_checkpoint(model, resolve_pretrained_file(cfg, cache_dir=cache_dir))
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model
