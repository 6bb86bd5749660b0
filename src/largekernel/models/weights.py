"""The pretrained weights table: what each set of weights expects and where it lives (a leaf module:
data only, imported by the registry, the Hub loader and the modalities' normalisation)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
