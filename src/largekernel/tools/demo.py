"""The embedded demo: build a model, re-parameterize it exactly, save and reload it, no downloads."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..layers import reparameterize, simulate_trained_statistics
from ..models.checkpoint import save_checkpoint
from ..models.registry import create_model

log = logging.getLogger(__name__)


def _time_forward(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats


def run_demo(model_name: str = "unireplknet_a", input_size: int = 224, batch: int = 2,
             seed: int = 0) -> dict:
    """Build, re-parameterize, check equivalence and speed, save and reload; returns the numbers."""
    torch.manual_seed(seed)
    model = simulate_trained_statistics(create_model(model_name), seed).eval()
    x = torch.randn(batch, 3, input_size, input_size)
    log.info("built %s; re-parameterizing a copy", model_name)
    deploy = reparameterize(model)
    with torch.no_grad():
        y_train, y_deploy = model(x), deploy(x)
    rel_err = float((y_deploy - y_train).norm() / y_train.norm())
    t_train, t_deploy = _time_forward(model, x), _time_forward(deploy, x)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(deploy, Path(tmp) / f"{model_name}_deploy.safetensors")
        size_mb = path.stat().st_size / 2**20
        reloaded = create_model(model_name, deploy=True).eval()
        reloaded.load_state_dict(load_file(str(path)), strict=True)
        with torch.no_grad():
            reload_equal = bool(torch.equal(reloaded(x), y_deploy))
    with torch.no_grad():
        _, feats = model.forward_intermediates(x)
    return dict(
        model=model_name, input=list(x.shape),
        params_train=sum(p.numel() for p in model.parameters()),
        params_deploy=sum(p.numel() for p in deploy.parameters()),
        rel_err=rel_err, ms_train=1000 * t_train / batch, ms_deploy=1000 * t_deploy / batch,
        speedup=t_train / t_deploy, safetensors_mb=size_mb, reload_equal=reload_equal,
        features=[list(f.shape) for f in feats],
    )


def format_demo(r: dict) -> str:
    """A short human-readable report of `run_demo`'s result."""
    feats = ", ".join("x".join(map(str, s[1:])) for s in r["features"])
    return "\n".join([
        f"largekernel demo: {r['model']} on a random batch {'x'.join(map(str, r['input']))}",
        f"  parameters      train {r['params_train']:,}  ->  deploy {r['params_deploy']:,}",
        f"  re-param error  {r['rel_err']:.2e} relative (train form vs folded form, eval mode)",
        f"  CPU time/image  train {r['ms_train']:.1f} ms  ->  deploy {r['ms_deploy']:.1f} ms"
        f"  ({r['speedup']:.2f}x)",
        f"  safetensors     {r['safetensors_mb']:.1f} MB, reloaded into deploy=True strictly: "
        f"{'identical outputs' if r['reload_equal'] else 'OUTPUTS DIFFER'}",
        f"  stage features  {feats} (C x H x W)",
    ])
