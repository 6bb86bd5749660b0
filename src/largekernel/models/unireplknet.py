"""UniRepLKNet (Ding et al., CVPR 2024 / TPAMI): blocks, model and the nine variants.

Module names follow the authors' code wherever they form the checkpoint format
(`downsample_layers`, `stages`, `dwconv.lk_origin`, `pwconv1.1`, `act.1`, `pwconv2`, `gamma`,
`norm`, `head`, `norm0..norm3`), so the released checkpoints load as they are.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import (DilatedReparamBlock, DropPath, GRN, LayerNorm2d, SEBlock, ToChannelsFirst,
                      ToChannelsLast, fuse_bn)
from ..layers.reparam import depthwise_conv, require_eval

KernelSizes = Sequence[Sequence[int]]

# Kernel layouts of the released models, keyed by depths.
DEFAULT_KERNEL_SIZES: dict[tuple[int, ...], tuple[tuple[int, ...], ...]] = {
    (2, 2, 6, 2): ((3, 3), (13, 13), (13,) * 6, (13, 13)),
    (2, 2, 8, 2): ((3, 3), (13, 13), (13,) * 8, (13, 13)),
    (3, 3, 18, 3): ((3, 3, 3), (13, 13, 13), (13, 3) * 9, (13, 13, 13)),
    (3, 3, 27, 3): ((3, 3, 3), (13, 13, 13), (13, 3, 3) * 9, (13, 13, 13)),
}


class UniRepLKNetBlock(nn.Module):
    """dwconv -> BN -> SE -> Linear(C,4C) -> GELU -> GRN -> Linear(4C,C) -> BN -> layer scale, + x.

    The dwconv is a Dilated Reparam Block for K >= 7 and a plain depthwise K x K conv for K < 7.
    """

    def __init__(self, dim: int, kernel_size: int, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6, deploy: bool = False, ffn_factor: int = 4,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        ffn_dim = ffn_factor * dim
        if kernel_size >= 7:
            self.dwconv = DilatedReparamBlock(dim, kernel_size, deploy=deploy, **dd)
        else:
            self.dwconv = depthwise_conv(dim, kernel_size, bias=deploy, **dd)
        self.norm = nn.Identity() if deploy else nn.BatchNorm2d(dim, **dd)
        self.se = SEBlock(dim, dim // 4, **dd)
        self.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(dim, ffn_dim, **dd))
        self.act = nn.Sequential(nn.GELU(), GRN(ffn_dim, use_bias=not deploy, **dd))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim, bias=True, **dd), ToChannelsFirst())
        else:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim, bias=False, **dd), ToChannelsFirst(),
                                         nn.BatchNorm2d(dim, **dd))
        if not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
        else:
            self.register_parameter("gamma", None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @property
    def deploy(self) -> bool:
        return isinstance(self.norm, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy and fast_inference(x):
            return self._forward_deploy_cpu(x)
        y = self.se(self.norm(self.dwconv(x)))
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma.view(1, -1, 1, 1) * y
        return x + self.drop_path(y)

    def _forward_deploy_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """The deploy forward with fewer memory passes (same math, <= 1e-6 relative apart): the SE
        scale writes the NHWC tensor the first Linear reads (no strided GEMM, bias fused), GELU runs
        in that GEMM's epilogue where oneDNN offers it, and GRN uses its fast reduction."""
        y = self.dwconv(x)
        n, c, h, w = y.shape
        s = torch.sigmoid(self.se.up(F.relu(self.se.down(F.adaptive_avg_pool2d(y, 1)))))
        t = torch.empty((n, h, w, c), dtype=y.dtype, device=y.device)
        torch.mul(y.permute(0, 2, 3, 1), s.view(n, 1, 1, c), out=t)
        t = linear_gelu(t, self.pwconv1[1].weight, self.pwconv1[1].bias)
        grn, down = self.act[1], self.pwconv2[0]
        if h * w > 2 * c:  # GRN's scale into the per-sample weights: C x 4C work instead of HW x 4C
            weight = down.weight * grn.scale(t).view(n, 1, -1)
            t = torch.baddbmm(down.bias.view(1, 1, c), t.view(n, h * w, -1), weight.transpose(1, 2))
            t = t.view(n, h, w, c)
        else:
            t = F.linear(grn(t), down.weight, down.bias)
        return x + t.permute(0, 3, 1, 2)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold branches, both BNs, GRN's beta and the layer scale (in place, eval mode only)."""
        if self.deploy:
            return
        require_eval(self)
        # dwconv (+ dilated branches) and the BN after it -> one depthwise conv with bias
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
            conv = self.dwconv.lk_origin
        else:
            conv = self.dwconv
        w, b = fuse_bn(conv.weight, conv.bias, self.norm)
        merged = depthwise_conv(w.shape[0], w.shape[-1], bias=True, device=w.device, dtype=w.dtype)
        merged.weight.copy_(w)
        merged.bias.copy_(b)
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.lk_origin = merged
        else:
            self.dwconv = merged
        self.norm = nn.Identity()
        # GRN beta, the down projection, its BN and the layer scale -> one Linear with bias
        grn, linear, bn = self.act[1], self.pwconv2[0], self.pwconv2[2]
        bias = linear.weight @ grn.beta.reshape(-1)
        if linear.bias is not None:
            bias = bias + linear.bias
        w, b = fuse_bn(linear.weight, bias, bn)
        if self.gamma is not None:
            w, b = w * self.gamma[:, None], b * self.gamma
        merged = nn.Linear(linear.in_features, linear.out_features, bias=True,
                           device=w.device, dtype=w.dtype)
        merged.weight.copy_(w)
        merged.bias.copy_(b)
        self.pwconv2 = nn.Sequential(merged, ToChannelsFirst())
        grn.beta = None
        self.gamma = None


def fast_inference(x: torch.Tensor) -> bool:
    """Whether the hand-scheduled CPU inference path applies: no autograd, eager, CPU float32."""
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and not torch.jit.is_scripting() and not torch.jit.is_tracing())


_fused_linear_gelu = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """GELU(x W^T + b) (exact erf GELU), fused into oneDNN's GEMM when this PyTorch build has it."""
    global _fused_linear_gelu
    if _fused_linear_gelu and x.is_contiguous() and not torch.is_autocast_enabled("cpu"):
        try:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        except (RuntimeError, NotImplementedError):
            _fused_linear_gelu = False  # a build without the op's CPU kernel: plain ops from now on
    return F.gelu(F.linear(x, weight, bias))


class FeatureInfo(list):
    """timm-style feature info: a list of dict(num_chs, reduction, module) with helpers."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def resolve_kernel_sizes(depths: Sequence[int], kernel_sizes) -> tuple[tuple[int, ...], ...]:
    """Validate `kernel_sizes` (per block, or one int per stage) against `depths`."""
    depths = tuple(int(d) for d in depths)
    if kernel_sizes is None:
        if depths not in DEFAULT_KERNEL_SIZES:
            raise ValueError(
                f"no default kernel layout for depths {depths}; pass kernel_sizes (one odd int per "
                f"stage, or one tuple per stage with one odd int per block). Known depths: "
                f"{sorted(DEFAULT_KERNEL_SIZES)}"
            )
        return DEFAULT_KERNEL_SIZES[depths]
    if len(kernel_sizes) != len(depths):
        raise ValueError(
            f"kernel_sizes has {len(kernel_sizes)} stages but depths {depths} has {len(depths)}"
        )
    out = []
    for i, (ks, d) in enumerate(zip(kernel_sizes, depths)):
        ks = (ks,) * d if isinstance(ks, int) else tuple(ks)
        if len(ks) != d:
            raise ValueError(
                f"kernel_sizes for stage {i} has {len(ks)} entries but the stage has {d} blocks"
            )
        for k in ks:
            if not isinstance(k, int) or k < 3 or k % 2 == 0:
                raise ValueError(
                    f"kernel size {k!r} in stage {i} is not allowed: use an odd integer >= 3 "
                    "(3 and 5 are plain depthwise convs, >= 7 a Dilated Reparam Block)"
                )
        out.append(ks)
    return tuple(out)


class UniRepLKNet(nn.Module):
    """UniRepLKNet classifier, or (`features_only=True`) the dense-prediction backbone.

    The backbone returns the stage outputs listed in `out_indices`, each through its own
    channels-first LayerNorm `norm{i}`, as the authors' detection/segmentation backbone does.
    """

    def __init__(self, depths: Sequence[int] = (3, 3, 27, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), kernel_sizes=None, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6,
                 head_init_scale: float = 1.0, deploy: bool = False, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3), device=None, dtype=None):
        super().__init__()
        depths, dims = tuple(int(d) for d in depths), tuple(int(c) for c in dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 stages, got depths={depths}, dims={dims}")
        if any(c % 4 for c in dims) or any(d < 1 for d in depths):
            raise ValueError(f"dims must be multiples of 4 and depths >= 1, got {dims}, {depths}")
        kernel_sizes = resolve_kernel_sizes(depths, kernel_sizes)
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = pooled features), got {num_classes}")
        if global_pool not in ("avg", "max", ""):
            raise ValueError(f"global_pool must be 'avg', 'max' or '' (no pooling), got {global_pool!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if not out_indices or any(not -4 <= i < 4 for i in out_indices):
            raise ValueError(f"out_indices must be stage indices in -4..3, got {tuple(out_indices)}")
        out_indices = tuple(sorted({i % 4 for i in out_indices}))
        dd = dict(device=device, dtype=dtype)
        self._args = dict(depths=depths, dims=dims, kernel_sizes=kernel_sizes,
                               in_chans=in_chans, num_classes=num_classes, global_pool=global_pool,
                               drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                               layer_scale_init_value=layer_scale_init_value,
                               head_init_scale=head_init_scale, deploy=deploy,
                               features_only=features_only, out_indices=out_indices)
        self.depths, self.dims = depths, dims
        self.in_chans = in_chans
        self.features_only = features_only
        self.out_indices = out_indices
        self.grad_checkpointing = False
        num_stages = max(out_indices) + 1 if features_only else 4

        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1, **dd),
            LayerNorm2d(dims[0] // 2, eps=1e-6, **dd),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1, **dd),
            LayerNorm2d(dims[0], eps=1e-6, **dd),
        )])
        for i in range(1, num_stages):
            self.downsample_layers.append(nn.Sequential(
                nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1, **dd),
                LayerNorm2d(dims[i], eps=1e-6, **dd),
            ))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                UniRepLKNetBlock(dims[i], kernel_sizes[i][j], drop_path=rates[start + j],
                                 layer_scale_init_value=layer_scale_init_value, deploy=deploy, **dd)
                for j in range(depths[i])
            ]))
        self.feature_info = FeatureInfo(
            dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}")
            for i in range(4) if not features_only or i in out_indices
        )
        self.num_features = self.head_hidden_size = dims[-1]
        if features_only:
            self.num_classes = 0
            self.global_pool = ""
            for i in out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=1e-6, **dd))
        else:
            self.num_classes = num_classes
            self.global_pool = global_pool
            self.drop_rate = drop_rate
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6, **dd)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if isinstance(getattr(self, "head", None), nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def deploy(self) -> bool:
        return all(b.deploy for stage in self.stages for b in stage)

    @property
    def model_args(self) -> dict:
        """The constructor arguments that rebuild this architecture in its current form."""
        return dict(self._args, deploy=self.deploy)

    # ---- forward -------------------------------------------------------------------------------
    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample_layers[i](x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for block in self.stages[i]:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.stages[i](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's unpooled map (B, 8C, H/32, W/32); the head's norm is not applied."""
        for i in range(len(self.stages)):
            x = self._run_stage(i, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool -> LayerNorm -> dropout -> Linear. `pre_logits=True` stops before the Linear."""
        if self.global_pool == "":
            x = self.head_drop(self.norm(x.permute(0, 2, 3, 1)))
            return (x if pre_logits else self.head(x)).permute(0, 3, 1, 2)
        x = x.mean((-2, -1)) if self.global_pool == "avg" else x.amax((-2, -1))
        x = self.head_drop(self.norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor):
        if self.features_only:
            outs = []
            for i in range(len(self.stages)):
                x = self._run_stage(i, x)
                if i in self.out_indices:
                    outs.append(getattr(self, f"norm{i}")(x))
            return outs
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs at `indices` (None = all, int n = last n, negatives allowed).

        Returns `(final, intermediates)` where `final` equals `forward_features(x)`, or only the
        list with `intermediates_only=True`. `norm=True` applies `norm{i}` on a features_only model.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = self._take_indices(indices)
        intermediates = []
        last = max(take) if (stop_early or intermediates_only) else len(self.stages) - 1
        for i in range(last + 1):
            x = self._run_stage(i, x)
            if i in take:
                y = getattr(self, f"norm{i}")(x) if norm and hasattr(self, f"norm{i}") else x
                intermediates.append(y.permute(0, 2, 3, 1) if output_fmt == "NHWC" else y)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def _take_indices(self, indices) -> list[int]:
        n = len(self.stages)
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices}: this model has {n} stages")
            return list(range(n - indices, n))
        take = []
        for i in indices:
            if not -n <= i < n:
                raise ValueError(f"stage index {i} out of range for {n} stages")
            take.append(i % n)
        return sorted(set(take))

    # ---- timm-style helpers --------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head: `num_classes=0` gives pooled features, `global_pool=''` unpooled maps."""
        if self.features_only:
            raise RuntimeError("a features_only backbone has no classifier to reset")
        if global_pool is not None:
            if global_pool not in ("avg", "max", ""):
                raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.norm.weight
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())
        if num_classes > 0:
            self._init_weights(self.head)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (saves memory; outputs are unchanged)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Layer scales and GRN parameters (GRN's are 4-D, so a 1-D rule would miss them)."""
        return {n for n, _ in self.named_parameters()
                if n.endswith(".gamma") or n.endswith(".beta")}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Regexes grouping parameters by depth, in timm's format."""
        return dict(
            stem=r"^downsample_layers\.0\.",
            blocks=r"^(?:downsample_layers|stages)\.(\d+)" if coarse else [
                (r"^downsample_layers\.(\d+)", (0,)),
                (r"^stages\.(\d+)\.(\d+)", None),
                (r"^norm(\d)\.", (99999,)),
            ],
        )

    num_layer_ids = 14

    def layer_id(self, name: str) -> int:
        """Layer-decay id of a parameter (the authors' scheme, as ConvNeXt/UniRepLKNet fine-tuning):
        stem 0, stage 0 -> 1, stage 1 and its downsampler -> 2, downsampler 2 -> 3, stage 2 block b ->
        3 + b//3 (at most 11), stage 3 and its downsampler -> 12, everything after -> 13."""
        m = re.match(r"(downsample_layers|stages)\.(\d+)(?:\.(\d+))?", name)
        if m is None:
            return 13
        kind, stage = m.group(1), int(m.group(2))
        if stage == 0:
            return 0 if kind == "downsample_layers" else 1
        if stage == 1:
            return 2
        if stage == 2:
            return 3 if kind == "downsample_layers" else min(3 + int(m.group(3)) // 3, 11)
        return 12

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every block into its inference form (in place, idempotent, eval mode only)."""
        require_eval(self)
        for stage in self.stages:
            for block in stage:
                block.reparameterize()


# name -> (depths, dims); kernel layouts follow from the depths.
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "unireplknet_a": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "unireplknet_f": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "unireplknet_p": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "unireplknet_n": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "unireplknet_t": ((3, 3, 18, 3), (80, 160, 320, 640)),
    "unireplknet_s": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "unireplknet_b": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "unireplknet_l": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "unireplknet_xl": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
