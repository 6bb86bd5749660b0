"""Model statistics: parameter counts (train and deploy form), MACs and feature strides/channels.

Everything is computed on the 'meta' device (shapes only, no memory, no arithmetic), so even
UniRepLKNet-XL at 384 costs a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..models.registry import create_model, get_pretrained_cfg, list_models, split_model_name
from ..models.segmentation import is_segmenter_name
from ..models.unireplknet import VARIANTS

log = logging.getLogger(__name__)

_WILDCARDS = set("*?[")


@dataclass(frozen=True)
class ModelInfo:
    """Statistics of one model: see `model_info`."""

    model: str
    params_train: int
    params_deploy: int
    macs: int
    input_size: tuple[int, int]
    num_classes: int
    in_chans: int
    feature_strides: tuple[int, ...]
    feature_channels: tuple[int, ...]

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists; adds `gmacs` = macs / 1e9, unrounded)."""
        d = dataclasses.asdict(self)
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        d["gmacs"] = self.gmacs
        return d


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once); buffers are not counted."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int | Sequence[int] = 224, in_chans: int | None = None,
               device: str | torch.device = "meta") -> int:
    """Multiply-accumulates of one forward pass on a single (1, in_chans, H, W) image.

    Counted: every convolution (`out.numel() * in_channels/groups * prod(kernel)`) and every
    `nn.Linear` (`out.numel() * in_features`), wherever they sit (stem, downsamplers, depthwise
    convs, SE 1x1 convs on the pooled 1x1 map, MLP, head). Not counted: bias additions,
    norms (LayerNorm/BatchNorm/GRN), activations, the SE gate multiply, pooling, residual adds,
    layer scale. This is what the published GMACs column counts when applied to the deploy form.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if h < 1 or w < 1:
        raise ValueError(f"input size must be positive, got {input_size!r}")
    if in_chans is None:
        in_chans = getattr(model, "in_chans", 3)
    total = 0

    def hook(mod: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features
        else:  # convolution: weight is (out, in/groups, *kernel)
            total += out.numel() * mod.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.empty(1, in_chans, h, w, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def _size_order(name: str) -> int:
    """Classifiers smallest first, then the segmenters (upernet_*) smallest first."""
    arch = split_model_name(name)[0]
    segmenter = arch.startswith("upernet_")
    return len(VARIANTS) * segmenter + list(VARIANTS).index(arch.removeprefix("upernet_"))


def resolve_model_names(patterns: Sequence[str] = ()) -> list[str]:
    """Model names for fnmatch patterns (no patterns: all variants), without repeats.

    Each pattern's matches come smallest variant first (a, f, p, n, t, s, b, l, xl).
    A plain name is checked against the registry (its error lists close matches); a pattern with
    a '.' also matches weight tags (`unireplknet_s.*`).
    """
    if not patterns:
        return list(VARIANTS)
    names: list[str] = []
    for pattern in patterns:
        if _WILDCARDS & set(pattern):
            found = sorted(list_models(pattern, pretrained="." in pattern), key=_size_order)
            if not found:
                raise ValueError(f"no model matches {pattern!r}; known models: "
                                 f"{', '.join(list_models())}")
        else:
            if not is_segmenter_name(pattern):
                get_pretrained_cfg(pattern)  # raises the registry's "unknown model ... Did you mean"
            found = [pattern]
        names += [n for n in found if n not in names]
    return names


def model_info(name: str, input_size: int | Sequence[int] = 224, num_classes: int | None = None,
               in_chans: int | None = None, **model_kwargs) -> ModelInfo:
    """Params (train and deploy form), deploy-form MACs at `input_size` and feature info of `name`.

    `num_classes`/`in_chans` of None keep the registry's defaults (1000 classes for most tags).
    """
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    kwargs.pop("deploy", None)
    train = create_model(name, device="meta", deploy=False, **kwargs)
    deploy = create_model(name, device="meta", deploy=True, **kwargs)
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    info = ModelInfo(
        model=name,
        params_train=count_params(train),
        params_deploy=count_params(deploy),
        macs=count_macs(deploy, size, device="meta"),
        input_size=size,
        num_classes=deploy.num_classes,
        in_chans=deploy.in_chans,
        feature_strides=tuple(deploy.feature_info.reduction()),
        feature_channels=tuple(deploy.feature_info.channels()),
    )
    log.debug("%s", info)
    return info
