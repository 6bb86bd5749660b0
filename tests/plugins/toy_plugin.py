"""A toy plug-in (the one tests/test_plugin_contract.py installs): random tensors whose class is
the sign of their mean, classified by the plain backbone."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from largekernel.engine.classification import Classification
from largekernel.engine.commands import Command, arg
from largekernel.engine.config import option
from largekernel.engine.plugin import DataBundle, register_plugin


@dataclass
class ToyOptions:
    """The toy's own options: read flat as cfg.toy_samples, set with --toy-samples."""

    toy_samples: int = option(16, "random tensors in all; the last quarter is the validation set")


def write_toy_files(args) -> int:
    """`largekernel make-data toy OUT --count N`: N random 2 x 32 x 32 tensors as OUT/<i>.toy."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        torch.save(torch.randn(2, 32, 32), out / f"{i}.toy")
    print(f"wrote {args.count} toy files to {out}")
    return 0


@register_plugin
class Toy(Classification):
    """Two classes ("neg", "pos") of random C x S x S tensors; `.pt` files for `predict`."""

    name = "toy"
    extensions = (".toy",)
    options = ToyOptions
    data_generators = (Command("toy", "write random .toy tensor files", write_toy_files,
                               [arg("output", metavar="OUT"), arg("--count", type=int, default=2)]),)

    def datasets(self, cfg, train: bool = True) -> DataBundle:
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(cfg.toy_samples, cfg.in_chans, cfg.input_size, cfg.input_size, generator=g)
        y = (x.mean((1, 2, 3)) > 0).long()
        n = cfg.toy_samples * 3 // 4
        return DataBundle(TensorDataset(x[:n], y[:n]) if train else None,
                          TensorDataset(x[n:], y[n:]), ["neg", "pos"])

    def load(self, path, cfg) -> torch.Tensor:
        try:
            return torch.load(path, weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a tensor file: {e}") from e
