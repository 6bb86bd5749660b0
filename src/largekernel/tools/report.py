"""A model report (Markdown or HTML): size and cost, CPU throughput of the train and deploy forms,
the re-parameterization check and the ERF with its heatmap, for named models or checkpoints."""
from __future__ import annotations

import copy
import datetime as dt
import html
import logging
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import __version__
from ..layers import reparameterize, simulate_trained_statistics
from ..engine.inference import load_trained, records_training
from ..models.checkpoint import model_from_checkpoint
from ..models.registry import create_model
from ..models.unireplknet import UniRepLKNet
from ..precision import set_precision
from .erf import THRESHOLDS, ERFResult, compute_erf, format_percent, plot_erf
from .info import ModelInfo, model_info, resolve_model_names

log = logging.getLogger(__name__)

ERF_SIZE = 256
ERF_IMAGES = 4
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}


@dataclass
class Throughput:
    """Images per second of each form: see `measure_throughput`."""

    input_size: int
    batch: int
    warmup: int
    repeats: int
    train: float | None
    deploy: float
    precision: str = "fp32"  # as applied by set_precision ("auto" resolved)

    @property
    def speedup(self) -> float | None:
        return self.deploy / self.train if self.train else None


@dataclass
class ReparamCheck:
    """Train form vs deploy form on a random batch: max over samples of ||y_d - y_t|| / ||y_t||."""

    max_rel_err: float | None
    max_abs_err: float | None
    simulated_statistics: bool
    note: str = ""


@dataclass
class ModelReport:
    label: str
    weights: str
    architecture: dict
    info: ModelInfo
    throughput: Throughput
    reparam: ReparamCheck
    erf: ERFResult
    heatmap: Path | None = None

    def to_dict(self) -> dict:
        return dict(label=self.label, weights=self.weights, architecture=self.architecture,
                    info=self.info.to_dict(), throughput=asdict(self.throughput),
                    reparam=asdict(self.reparam), erf=self.erf.to_dict(),
                    heatmap=str(self.heatmap) if self.heatmap else None)


# ---- measurements --------------------------------------------------------------------------------

def measure_throughput(models: Sequence[nn.Module], input_size: int = 224, batch: int = 8,
                       warmup: int = 1, repeats: int = 3) -> list[float]:
    """Images/s of each model (eval mode, `torch.inference_mode`) on one random (batch, in_chans,
    size, size) input: the median of `repeats` timed passes after `warmup` untimed ones. The
    models' passes are interleaved, so a load change on the machine hits all of them alike."""
    ref = next(models[0].parameters())
    x = torch.randn(batch, getattr(models[0], "in_chans", 3), input_size, input_size,
                    device=ref.device, dtype=ref.dtype)
    modes = [m.training for m in models]
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for m in models:
                m.eval()
                for _ in range(warmup):
                    m(x)
            for _ in range(repeats):
                for m, ts in zip(models, times):
                    start = time.perf_counter()
                    m(x)
                    ts.append(time.perf_counter() - start)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return [batch / statistics.median(ts) for ts in times]


def _flat_output(y) -> torch.Tensor:
    if isinstance(y, (list, tuple)):
        return torch.cat([t.flatten(1) for t in y], dim=1)
    return y.flatten(1)


def reparam_check(model: nn.Module, input_size: int = 224, batch: int = 2, seed: int = 0,
                  fresh: bool = True) -> ReparamCheck:
    """Compare a copy of `model` with its folded copy. A freshly initialised model first gets
    `simulate_trained_statistics` (its BNs are identities and its layer scales ~0, so folding
    them would be trivially exact); trained weights are compared as they are."""
    if getattr(model, "deploy", False):
        return ReparamCheck(None, None, False, "the weights are already in deploy form; nothing to fold")
    train = copy.deepcopy(model).eval()
    if fresh:
        simulate_trained_statistics(train, seed)
    deploy = reparameterize(train)
    ref = next(train.parameters())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, getattr(model, "in_chans", 3), input_size, input_size, generator=g)
    x = x.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        y_t, y_d = _flat_output(train(x)).double(), _flat_output(deploy(x)).double()
    rel = ((y_d - y_t).norm(dim=1) / y_t.norm(dim=1)).max().item()
    return ReparamCheck(rel, (y_d - y_t).abs().max().item(), fresh)


# ---- building the report -------------------------------------------------------------------------

def resolve_targets(specs: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """(model name, checkpoint) pairs for report specs: model names or fnmatch patterns, checkpoint
    files (their architecture read from the file's metadata), or `NAME=CHECKPOINT`."""
    if not specs:
        raise ValueError("name the model(s) or checkpoint(s) to report on, e.g. "
                         "`largekernel info unireplknet_a --report a.md`")
    targets: list[tuple[str | None, str | None]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep:
            targets.append((name, path))
        elif Path(spec).suffix in CHECKPOINT_SUFFIXES or Path(spec).is_file():
            if not Path(spec).is_file():
                raise FileNotFoundError(f"checkpoint {spec} does not exist (or is not a file)")
            targets.append((None, spec))
        else:
            targets += [(n, None) for n in resolve_model_names([spec])]
    return targets


def _architecture(model: nn.Module) -> dict:
    args = model.model_args
    return dict(depths=list(args["depths"]), dims=list(args["dims"]),
                kernel_sizes=[sorted(set(k), reverse=True) for k in args["kernel_sizes"]],
                in_chans=args["in_chans"], num_classes=model.num_classes,
                features_only=args["features_only"], form="deploy" if model.deploy else "train")


def model_report(name: str | None = None, checkpoint: str | Path | None = None, *,
                 input_size: int = 224, batch: int = 8, warmup: int = 1, repeats: int = 3,
                 erf_size: int = ERF_SIZE, erf_images: int = ERF_IMAGES, seed: int = 0,
                 num_classes: int | None = None, in_chans: int | None = None,
                 precision: str = "fp32") -> ModelReport:
    """Measure one model (`name`, freshly initialised with `seed`) or checkpoint; the throughput
    in `precision` (see `largekernel.precision`), everything else in fp32."""
    if checkpoint is not None and name is None and records_training(checkpoint):
        # written by `train`: the plug-in rebuilds its model; the report measures its backbone
        trained = load_trained(checkpoint)
        model = next(m for m in trained.model.modules() if isinstance(m, UniRepLKNet))
        weights = f"checkpoint {checkpoint} (the backbone of its {trained.cfg.modality} model)"
    elif checkpoint is not None:
        model = model_from_checkpoint(checkpoint, name)
        weights = f"checkpoint {checkpoint}"
    else:
        torch.manual_seed(seed)
        model = create_model(name, num_classes=num_classes, in_chans=in_chans)
        weights = f"fresh initialisation (seed {seed})"
    model.eval()
    label = model.name if checkpoint is None else f"{model.name} ({Path(checkpoint).name})"
    arch = model.model_args
    log.info("%s: parameters and MACs", label)
    info = model_info(model.name, input_size=input_size, num_classes=model.num_classes,
                      in_chans=model.in_chans, kernel_sizes=arch["kernel_sizes"],
                      features_only=arch["features_only"] or None,
                      out_indices=arch["out_indices"] if arch["features_only"] else None)
    log.info("%s: CPU throughput (batch %d at %d)", label, batch, input_size)
    applied = set_precision(model, precision).largekernel_precision.precision
    deploy = model if model.deploy else reparameterize(model)
    timing = dict(input_size=input_size, batch=batch, warmup=warmup, repeats=repeats)
    if model.deploy:
        train_ips, (deploy_ips,) = None, measure_throughput([deploy], **timing)
    else:
        train_ips, deploy_ips = measure_throughput([model, deploy], **timing)
    set_precision(model, "fp32")  # the re-parameterization check and the ERF stay fp32
    log.info("%s: re-parameterization check", label)
    check = reparam_check(model, input_size, seed=seed, fresh=checkpoint is None)
    erf = compute_erf(model, n_random=erf_images, size=erf_size, seed=seed, name=label)
    return ModelReport(label=label, weights=weights, architecture=_architecture(model), info=info,
                       throughput=Throughput(train=train_ips, deploy=deploy_ips, precision=applied,
                                             **timing),
                       reparam=check, erf=erf)


# ---- rendering -----------------------------------------------------------------------------------

def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs, "
            f"torch threads: {torch.get_num_threads()}; torch {torch.__version__}, "
            f"largekernel {__version__}")


def _num(x: int) -> str:
    return f"{x:,}"


def _slash(xs) -> str:
    return "/".join(str(x) for x in xs)


def _blocks(r: ModelReport) -> list[tuple]:
    """The report of one model as format-neutral blocks: (h2|h3|p|table|img, ...)."""
    a, i, t, c, e = r.architecture, r.info, r.throughput, r.reparam, r.erf
    kernels = "/".join(",".join(map(str, k)) for k in a["kernel_sizes"])
    out: list[tuple] = [
        ("h2", r.label),
        ("p", f"Weights: {r.weights}. Form: {a['form']}. Depths {_slash(a['depths'])}, "
              f"channels {_slash(a['dims'])}, kernel sizes per stage {kernels}, "
              f"{a['in_chans']} input channels, "
              + ("dense backbone (features_only)." if a["features_only"]
                 else f"{a['num_classes']} classes.")),
        ("h3", "Size and cost"),
        ("table", ["", "train form", "deploy form"],
         [["parameters", _num(i.params_train), _num(i.params_deploy)],
          [f"GMACs at {i.input_size[0]}x{i.input_size[1]}", "", f"{i.gmacs:.3f}"]]),
        ("p", f"Feature strides {_slash(i.feature_strides)}, channels "
              f"{_slash(i.feature_channels)}. MACs count convolutions and linear layers of the "
              "deploy form (largekernel.tools.info)."),
        ("h3", "CPU throughput"),
    ]
    rows = [["train form", f"{t.train:.1f}", f"{1000 / t.train:.1f}"] if t.train else
            ["train form", "n/a", "n/a"],
            ["deploy form (re-parameterized)", f"{t.deploy:.1f}", f"{1000 / t.deploy:.1f}"]]
    speed = f", {t.speedup:.2f}x from re-parameterization" if t.speedup else ""
    out += [
        ("p", f"Throughput on this machine: train form "
              f"{f'{t.train:.1f}' if t.train else 'n/a'} images/s, deploy form {t.deploy:.1f} "
              f"images/s{speed} (batch {t.batch} at {t.input_size}x{t.input_size}, {t.precision}, "
              f"inference mode; median of {t.repeats} timed runs per form, interleaved, after "
              f"{t.warmup} warm-up)."),
        ("table", ["form", "images/s", "ms/image"], rows),
        ("p", f"Machine: {_machine()}."),
        ("h3", "Re-parameterization check"),
    ]
    if c.max_rel_err is None:
        out.append(("p", f"Not applicable: {c.note}."))
    else:
        how = ("after simulate_trained_statistics (the weights are freshly initialised, so BNs, "
               "GRN and layer scales get non-trivial values and every fold does real work)"
               if c.simulated_statistics else "with the checkpoint's weights")
        out.append(("p", f"Max relative error between train form and deploy form: "
                         f"{c.max_rel_err:.2e} (max over a random batch of 2 at "
                         f"{t.input_size}x{t.input_size} of ||y_deploy - y_train|| / ||y_train||; "
                         f"max abs difference {c.max_abs_err:.2e}), {how}."))
    out += [
        ("h3", "Effective receptive field"),
        ("p", f"RepLKNet's procedure at {e.size}x{e.size} with {e.source} (`largekernel erf` "
              "runs it at 1024 with real images): share of the image covered by the smallest "
              "centred square holding t of the (log-rescaled) input-gradient mass."),
        ("table", [f"r({t:.0%})" for t in e.ratios], [[format_percent(v) for v in e.ratios.values()]]),
    ]
    if r.weights.startswith("fresh"):
        out.append(("p", "The weights are freshly initialised (layer scale 1e-6), so the blocks "
                         "barely contribute and the ERF mostly reflects the stem and "
                         "downsamplers; run it on a trained checkpoint for meaningful numbers."))
    if r.heatmap is not None:
        out.append(("img", r.heatmap.name, f"ERF heatmap of {r.label}"))
    return out


def _markdown(title: str, blocks: list[tuple]) -> str:
    def cell(s) -> str:
        return str(s).replace("|", "\\|")

    lines = [f"# {title}", ""]
    for kind, *rest in blocks:
        if kind in ("h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "table":
            header, rows = rest
            lines.append("| " + " | ".join(cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{rest[1]}]({rest[0]})", ""]
    return "\n".join(lines)


def _html(title: str, blocks: list[tuple]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for kind, *rest in blocks:
        if kind in ("h2", "h3", "p"):
            body.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "table":
            header, rows = rest
            body.append("<table>\n<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{e(x)}</td>" for x in row) + "</tr>" for row in rows]
            body.append("</table>")
        elif kind == "img":
            body.append(f'<p><img src="{e(rest[0])}" alt="{e(rest[1])}"></p>')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def report_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"report path {path} must end in .md (Markdown) or .html; got {suffix!r}")
    return FORMATS[suffix]


def write_report(path: str | Path, specs: Sequence[str], **options) -> tuple[Path, list[ModelReport]]:
    """Measure every model/checkpoint in `specs` (see `resolve_targets`) and write one page (one
    section per model) to `path`, .md or .html by suffix, with each ERF heatmap as a PNG beside it
    (`<stem>_<model>_erf.png`). `options` go to `model_report`."""
    path = Path(path)
    fmt = report_format(path)
    targets = resolve_targets(specs)
    path.parent.mkdir(parents=True, exist_ok=True)
    reports = []
    for name, checkpoint in targets:
        r = model_report(name, checkpoint, **options)
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", r.label).strip("_")
        r.heatmap = plot_erf([r.erf], path.with_name(f"{path.stem}_{slug}_erf.png"))
        reports.append(r)
    title = "Model report: " + ", ".join(r.label for r in reports)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks = [("p", f"Generated {stamp} by largekernel {__version__}. ERF thresholds "
                    f"{', '.join(f'{t:.0%}' for t in THRESHOLDS)}.")]
    for r in reports:
        blocks += _blocks(r)
    text = _markdown(title, blocks) if fmt == "markdown" else _html(title, blocks)
    path.write_text(text, encoding="utf-8")
    log.info("wrote %s", path)
    return path, reports
