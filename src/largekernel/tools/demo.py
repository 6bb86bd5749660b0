"""The embedded demo: train a large-kernel UniRepLKNet on real handwritten digits, no downloads.

scikit-learn ships 1,797 8x8 digits; they are written as real PNG files, read back through the
image pipeline, used to train UniRepLKNet-A (13x13 kernels) on the CPU, evaluated on a held-out
split, re-parameterized (the deploy model must give the same predictions), and used to predict a few
files. Everything lands in the run directory: checkpoints, metrics, plots, weights.
"""
from __future__ import annotations

import copy
import logging
import shutil
import time
from pathlib import Path

import torch

from ..engine.config import PRESETS, resolve_config
from ..engine.evaluate import evaluate
from ..engine.inference import load_trained, predict_files
from ..engine.trainer import Trainer
from ..layers import reparameterize
from ..modalities import get_modality
from ..modalities.digits import write_digits_dataset
from ..models.checkpoint import save_checkpoint
from ..precision import resolve_precision, set_precision

log = logging.getLogger(__name__)

# The demo recipe is the `digits` preset (grayscale 32x32 inputs, no flips, no RandAugment/erasing,
# a short cosine schedule), logged and checkpointed often.
DEMO_CONFIG = dict(PRESETS["digits"], log_every=5, save_every_steps=20, seed=0)


def run_demo(output: str | Path = "runs/demo", epochs: int | None = None, fresh: bool = True,
             **overrides) -> dict:
    """Run the whole path and return its numbers (see `format_demo`)."""
    out = Path(output)
    if fresh and out.exists():
        shutil.rmtree(out)
    data = out / "data"
    if not (data / "train").is_dir():
        counts = write_digits_dataset(data, size=32)
        log.info("wrote %d train / %d val digit PNGs to %s", counts["train"], counts["val"], data)
    cfg = resolve_config(overrides=dict(DEMO_CONFIG, train=str(data / "train"), val=str(data / "val"),
                                        output=str(out / "run"),
                                        **({"epochs": epochs} if epochs else {}), **overrides))
    start = time.perf_counter()
    summary = Trainer(cfg).fit()
    train_seconds = time.perf_counter() - start

    trained = load_trained(summary["best"])
    val = get_modality("image").datasets(cfg, train=False).val
    metrics = evaluate(trained.model, val, len(trained.classes), 64, torch.device("cpu"))
    deploy = reparameterize(trained.model)
    deploy_path = save_checkpoint(deploy, out / "run" / "deploy.safetensors")
    items = [val[i] for i in range(len(val))]
    x, y = torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])
    with torch.no_grad():
        y_train, y_deploy = trained.model(x), deploy(x)
    same = bool(torch.equal(y_train.argmax(1), y_deploy.argmax(1)))
    max_diff = float((y_train - y_deploy).abs().max())
    # the bf16 accuracy guard where bf16 is in use or `auto` would choose it
    check_bf16 = cfg.precision != "fp32" or resolve_precision("auto").precision == "bf16"
    agreement, top1_bf16 = bf16_agreement(trained.model, x, y) if check_bf16 else (None, None)
    samples = [val.samples[i][0] for i in range(0, len(val), max(1, len(val) // 5))][:5]
    preds = predict_files(trained, samples, topk=1)
    return dict(run_dir=summary["run_dir"], data=str(data), epochs=summary["epochs"],
                steps=summary["steps"],
                train_seconds=train_seconds, samples_per_s=summary["samples_per_s"],
                val_top1=metrics["top1"], val_n=metrics["n"], best=summary["best"],
                deploy=str(deploy_path), deploy_same_predictions=same, deploy_max_abs_diff=max_diff,
                precision=cfg.precision, bf16_agreement=agreement, val_top1_bf16=top1_bf16,
                params_train=sum(p.numel() for p in trained.model.parameters()),
                params_deploy=sum(p.numel() for p in deploy.parameters()),
                predictions=[dict(path=p["path"], label=p["top"][0]["label"],
                                  prob=p["top"][0]["prob"]) for p in preds],
                plots=summary.get("plots", []))


def bf16_agreement(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The accuracy guard of the bf16 policy: the share of inputs whose top-1 class is the same in
    bf16 (`set_precision`, on a copy) as in fp32, in percent, and the bf16 top-1 accuracy."""
    bf16 = set_precision(copy.deepcopy(model).eval(), "bf16")
    with torch.no_grad():
        a, b = model.eval()(x).argmax(1), bf16(x).argmax(1)
    return float((a == b).double().mean() * 100), float((b == y).double().mean() * 100)


def format_demo(r: dict) -> str:
    """A short human-readable report of `run_demo`'s result."""
    lines = [
        f"largekernel demo: UniRepLKNet-A (13x13 kernels) on {r['val_n']} held-out handwritten digits",
        f"  trained         {r['epochs']} epochs in {r['train_seconds']:.0f} s "
        f"({r['samples_per_s']:.0f} images/s on this CPU)",
        f"  held-out top-1  {r['val_top1']:.2f}% (trained in {r['precision']})",
        (f"  bf16 inference  top-1 {r['val_top1_bf16']:.2f}%, same prediction as fp32 on "
         f"{r['bf16_agreement']:.2f}% of the held-out images" if r["bf16_agreement"] is not None else
         "  bf16 inference  not checked: this CPU has no bf16 units (`--precision bf16` checks it)"),
        f"  re-parameterized {r['params_train']:,} -> {r['params_deploy']:,} parameters; same "
        f"predictions: {'yes' if r['deploy_same_predictions'] else 'NO'} "
        f"(max |logit diff| {r['deploy_max_abs_diff']:.1e})",
        "  predictions:",
        *[f"    {Path(p['path']).parent.name}/{Path(p['path']).name} -> {p['label']} "
          f"({100 * p['prob']:.1f}%)" for p in r["predictions"]],
        f"  run directory   {r['run_dir']} (checkpoints, metrics.jsonl, best/last/deploy.safetensors)",
        f"  plots           {', '.join(r['plots'])}",
    ]
    return "\n".join(lines)
