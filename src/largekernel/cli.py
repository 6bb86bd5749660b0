"""The `largekernel` command line: one function per subcommand, registered with `@command`.

To add a subcommand, write `@command("name", help=..., args=[arg(...), ...])` over a function
`(args: argparse.Namespace) -> int` that writes its result to stdout and logs diagnostics.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .engine.commands import Command, arg, non_negative_int, positive_int
from .engine.plugin import all_plugins
from .engine.table import format_table
from .malloc import keep_freed_memory
from .models.checkpoint import CheckpointError
from .models.hub import PretrainedNotAvailable

log = logging.getLogger("largekernel.cli")

# Errors caused by the user's input: one line on stderr, exit code 2 (a traceback only with -v).
USER_ERRORS = (ValueError, CheckpointError, FileNotFoundError, PretrainedNotAvailable,
               ImportError)  # ImportError: an optional extra is missing; the message names it

Handler = Callable[[argparse.Namespace], int]
Groups = Callable[[], list[tuple[str, list[tuple[tuple, dict]]]]]
_COMMANDS: list[tuple[str, str, list[tuple[tuple, dict]], Groups | None, Handler]] = []


def command(name: str, help: str, args: Sequence[tuple[tuple, dict]] = (),
            groups: Groups | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated function as subcommand `name` with the given arguments, plus the
    argument groups `groups()` returns when the parser is built (titled lists of arguments)."""
    def register(fn: Handler) -> Handler:
        _COMMANDS.append((name, help, list(args), groups, fn))
        return fn
    return register


# ---- subcommands ---------------------------------------------------------------------------------

@command("info", help="parameters, MACs and feature strides/channels of models", args=[
    arg("models", nargs="*", metavar="MODEL",
        help="model names or fnmatch patterns such as 'unireplknet_*' (default: all variants)"),
    arg("--input-size", type=positive_int, default=224, metavar="N",
        help="square input size for the MACs (default: 224)"),
    arg("--num-classes", type=non_negative_int, default=None, metavar="N",
        help="classifier classes (default: the model's, usually 1000; 0 = no head)"),
    arg("--in-chans", type=positive_int, default=None, metavar="N",
        help="input channels (default: 3)"),
    arg("--json", action="store_true", help="print a JSON list of objects instead of a table"),
    arg("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
        help="with --report: the precision of the throughput measurement (default fp32)"),
    arg("--report", default=None, metavar="OUT.md",
        help="write a report page (.md or .html) instead: params, GMACs, strides, measured CPU "
             "throughput (train vs deploy form) and the re-parameterization check at --input-size, "
             "the ERF (256x256, 4 random images) with heatmap PNGs beside it; prints the page's "
             "path (--json: the numbers). MODEL may also be a checkpoint file, or NAME=CHECKPOINT "
             "for the authors' files"),
])
def cmd_info(args: argparse.Namespace) -> int:
    """Table (or JSON) of params in train/deploy form, deploy-form GMACs and feature info."""
    from .tools.info import model_info, resolve_model_names

    if args.report is not None:
        return _info_report(args)
    names = resolve_model_names(args.models)
    log.debug("models: %s", ", ".join(names))
    infos = [model_info(n, input_size=args.input_size, num_classes=args.num_classes,
                        in_chans=args.in_chans) for n in names]
    if args.json:
        sys.stdout.write(json.dumps([i.to_dict() for i in infos], indent=2) + "\n")
        return 0
    header = ["model", "params (train)", "params (deploy)", f"GMACs@{args.input_size}",
              "strides", "channels"]
    rows = [[i.model, f"{i.params_train:,}", f"{i.params_deploy:,}", f"{i.gmacs:.3f}",
             "/".join(map(str, i.feature_strides)), "/".join(map(str, i.feature_channels))]
            for i in infos]
    sys.stdout.write(format_table(header, rows, right=(1, 2, 3)))
    return 0


def _info_report(args: argparse.Namespace) -> int:
    """`info --report`: measure each model, write the page, print its path (or the numbers as JSON)."""
    from .tools.report import report_format, write_report

    report_format(args.report)  # a wrong suffix fails before any measurement
    path, reports = write_report(args.report, args.models, input_size=args.input_size,
                                 num_classes=args.num_classes, in_chans=args.in_chans,
                                 precision=args.precision)
    sys.stdout.write(json.dumps([r.to_dict() for r in reports], indent=2) + "\n" if args.json
                     else f"{path}\n")
    return 0


@command("demo", help="embedded demo: train UniRepLKNet on real digits, evaluate, re-parameterize, predict", args=[
    arg("--output", default="runs/demo", metavar="DIR", help="run directory (default: runs/demo; replaced)"),
    arg("--epochs", type=positive_int, default=None, metavar="N", help="epochs (default: the demo recipe's)"),
    arg("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
        help="training precision (default fp32); bf16 inference is checked against fp32 when bf16 "
             "is used or auto would choose it"),
    arg("--json", action="store_true", help="print the numbers as JSON"),
])
def cmd_demo(args: argparse.Namespace) -> int:
    """Write scikit-learn's 1,797 digits as PNGs, train UniRepLKNet-A (13x13 kernels) on 2 CPU
    cores, evaluate the held-out split, re-parameterize (same predictions), predict a few files.
    Needs no downloads."""
    from .tools.demo import format_demo, run_demo

    result = run_demo(args.output, epochs=args.epochs, precision=args.precision)
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else format_demo(result) + "\n")
    return 0 if result["deploy_same_predictions"] else 1


@command("export", help="export to ONNX or torch.export (.pt2) with a dynamic batch, height and width "
                         "and check parity", args=[
    arg("source", metavar="SOURCE",
        help="a model name (e.g. unireplknet_a, upernet_unireplknet_a; random weights) or a checkpoint "
             "file (.pth/.safetensors; an mmseg segmenter checkpoint too)"),
    arg("--format", choices=["onnx", "torch-export"], default=None,
        help="onnx (.onnx, run with onnxruntime) or torch-export (.pt2); default: from -o, else onnx"),
    arg("-o", "--output", metavar="OUT", default=None,
        help="output file (default: <source stem>.onnx / .pt2 in the current directory)"),
    arg("--model", default=None, metavar="NAME",
        help="architecture of a checkpoint that does not record it (the authors' .pth files)"),
    arg("--num-classes", type=non_negative_int, default=None, metavar="N",
        help="classes of the classifier or segmenter (default: the model's / the checkpoint's; "
             "0 = pooled features)"),
    arg("--in-chans", type=positive_int, default=None, metavar="N", help="input channels"),
    arg("--features-only", action="store_true",
        help="export the dense-prediction backbone (four outputs stage0..stage3)"),
    arg("--input-size", type=positive_int, default=None, metavar="N",
        help="square size of the example input the graph is traced with (default: the model's "
             "pretrained_cfg, else 224); the file then takes any height and width >= 33 (the "
             "stride-32 map must be >= 2 x 2), unless --static-hw or N < 33 fixes them to N"),
    arg("--static-hw", action="store_true",
        help="fix height and width to --input-size (only the batch stays dynamic)"),
    arg("--batch", type=positive_int, default=2, metavar="N",
        help="batch of the example input, >= 2 (default: 2); the batch stays dynamic"),
    arg("--check-sizes", nargs="+", default=None, metavar="HxW",
        help="input sizes the exported file is checked at (default: two derived from --input-size "
             "other than it, e.g. 96x80 and 50x70 for 64)"),
    arg("--atol", type=float, default=1e-5,
        help="parity tolerance: absolute part (default: 1e-5); a check passes when max |diff| <= "
             "atol + rtol x max |output|"),
    arg("--rtol", type=float, default=1e-4,
        help="parity tolerance relative to the output's scale (default: 1e-4, fp32 reduction-order "
             "differences)"),
    arg("--no-verify", action="store_true", help="skip running the exported file"),
    arg("--quantize", choices=["int8"], default=None,
        help="also write OUT.int8.onnx (onnxruntime static quantization of the GEMMs), timed against "
             "the fp32 file, with the accuracy change on held-out data (onnx only)"),
    arg("--data", default=None, metavar="DIR",
        help="with --quantize: a dataset (class folders or CSV) for calibration and the held-out "
             "check; without it, random inputs (stated in the output)"),
    arg("--calib-samples", type=positive_int, default=64, metavar="N",
        help="with --quantize: calibration samples (default 64)"),
    arg("--json", action="store_true", help="print the result as JSON"),
])
def cmd_export(args: argparse.Namespace) -> int:
    """Export a model in its inference form (a train-form model is re-parameterized first) with a
    dynamic batch, height and width, then run the file (onnxruntime / torch.export.load) at two
    input shapes other than the traced one and compare with PyTorch. Exit code 1 when a difference
    exceeds its tolerance."""
    from pathlib import Path

    from .engine.inference import load_trained, records_training
    from .models.checkpoint import model_from_checkpoint
    from .models.registry import create_model
    from .models.segmentation import is_segmenter_checkpoint
    from .tools.export import FORMATS, check_batch, check_path, export_model, format_export, parse_size

    fmt = args.format
    if fmt is None and args.output is not None:
        suffix = Path(args.output).suffix.lower()
        fmt = next((f for f, s in FORMATS.items() if s == suffix), None)
        if fmt is None:
            raise ValueError(f"cannot tell the format from {args.output!r}: name it .onnx or .pt2, "
                             "or give --format onnx|torch-export")
    fmt = fmt or "onnx"
    source = Path(args.source)
    opts = dict(num_classes=args.num_classes, in_chans=args.in_chans,
                features_only=True if args.features_only else None)
    if source.is_file():
        stem = source.stem
    elif source.suffix.lower() in (".pth", ".pt", ".bin", ".safetensors") or "/" in args.source:
        raise FileNotFoundError(f"checkpoint {args.source} does not exist (SOURCE is a checkpoint "
                                "file or a model name such as unireplknet_a)")
    else:
        if args.model is not None:
            raise ValueError(f"--model names the architecture of a checkpoint file; {args.source!r} "
                             "is not a file (to export a model by name, give the name as SOURCE)")
        stem = args.source
    out = check_path(args.output if args.output is not None else Path.cwd() / (stem + FORMATS[fmt]), fmt)
    check_batch(args.batch)
    check_sizes = [parse_size(t) for t in args.check_sizes] if args.check_sizes else None
    example = contract = None
    if source.is_file() and records_training(source) and args.model is None and \
            not any(v is not None for v in opts.values()):
        # a model written by `train`: the plug-in's whole model, at the input it was trained on
        trained = load_trained(source)
        cfg = dataclasses.replace(trained.cfg, input_size=args.input_size or trained.cfg.input_size)
        model = trained.model

        def example(n: int, generator):
            return trained.modality.example_input(cfg, n, generator)
        contract = dict(modality=cfg.modality, **trained.modality.input_contract(cfg))
    elif source.is_file():
        if args.features_only and is_segmenter_checkpoint(source):
            raise ValueError(f"{source} is a segmenter (UPerNet) checkpoint; --features-only exports a "
                             "classifier's dense backbone: drop it to export the segmenter")
        model = model_from_checkpoint(source, args.model, **opts)  # mmseg segmenter files too
    else:
        model = create_model(args.source, **opts)
        log.info("%s: random initialisation (no weights loaded)", args.source)
    if args.quantize and fmt != "onnx":
        raise ValueError("--quantize int8 quantizes an ONNX file: use --format onnx (or -o OUT.onnx)")
    result = export_model(model, out, fmt, input_size=args.input_size, batch=args.batch,
                          verify=not args.no_verify, atol=args.atol, rtol=args.rtol, example=example,
                          contract=contract, dynamic_hw=False if args.static_hw else None,
                          check_sizes=check_sizes)
    quantized = None
    if args.quantize:
        from .tools.export import format_quantize, int8_deployment, quantization_inputs

        inputs = quantization_inputs(args.source, model, args.data, args.input_size, args.calib_samples)
        quantized = int8_deployment(out, out.with_name(out.stem + ".int8.onnx"), **inputs)
    if args.json:
        extra = {"int8": quantized.to_dict()} if quantized else {}
        sys.stdout.write(json.dumps(dict(result.to_dict(), **extra), indent=2) + "\n")
    else:
        sys.stdout.write(format_export(result) + "\n"
                         + (format_quantize(quantized) + "\n" if quantized else ""))
    return 1 if result.ok is False else 0


@command("erf", help="effective receptive field (RepLKNet's procedure): area ratios and heatmaps", args=[
    arg("models", nargs="+", metavar="MODEL",
        help="model specs compared side by side: NAME (e.g. unireplknet_a), NAME:kK for the same "
             "net with every block's kernel set to K (unireplknet_a:k3 is UniRepLKNet-A with 3x3 "
             "kernels), or NAME:kK0,K1,K2,K3 for one kernel size per stage"),
    arg("--checkpoint", nargs="+", default=None, metavar="CKPT",
        help="one checkpoint per MODEL, in order ('-' for none: fresh initialisation), loaded with "
             "model_from_checkpoint"),
    arg("--images", default=None, metavar="DIR",
        help="image directory (jpg/png/...; sorted by name, the first --max-images used)"),
    arg("--random", type=positive_int, default=None, metavar="N",
        help="use N random normal images instead of real ones (default: 50 when --images is not given)"),
    arg("--max-images", type=positive_int, default=50, metavar="N",
        help="at most N images from --images (default: 50, as RepLKNet)"),
    arg("--size", type=positive_int, default=1024, metavar="N",
        help="input size, a multiple of 32 (default: 1024)"),
    arg("--kernel-sizes", type=positive_int, nargs="+", default=None, metavar="K",
        help="kernel sizes for every MODEL without a :k suffix: one K for all blocks, or four (one "
             "per stage), as the kernel_sizes constructor argument"),
    arg("--simulate-trained", action="store_true",
        help="give freshly initialised models non-trivial BN/GRN/layer-scale values "
             "(simulate_trained_statistics); at initialisation the layer scales are 1e-6, so the "
             "blocks barely contribute and every kernel size gives the same ERF"),
    arg("--seed", type=int, default=0, help="seed of the initialisation and random images (default: 0)"),
    arg("-o", "--output", default=None, metavar="OUT.png",
        help="write the heatmaps side by side to this PNG"),
    arg("--json", action="store_true", help="print the numbers as JSON"),
])
def cmd_erf(args: argparse.Namespace) -> int:
    """Effective receptive field, RepLKNet's procedure: the input gradient of the last stage's
    centre pixel, averaged over images and log-rescaled, and the high-contribution area ratios
    r(t): the share of the image covered by the smallest centred square holding t of the total,
    for t = 20/30/50/99%. Example: `largekernel erf unireplknet_a unireplknet_a:k3
    --simulate-trained --random 8 -o erf.png` compares 13x13 with 3x3 kernels."""
    from pathlib import Path

    import torch

    from .layers import simulate_trained_statistics
    from .models.checkpoint import model_from_checkpoint
    from .models.registry import create_model
    from .tools.erf import (check_size, compute_erf, format_percent, image_files,
                            parse_model_spec, plot_erf)

    check_size(args.size)
    if args.output is not None and not args.output.lower().endswith(".png"):
        raise ValueError(f"-o writes a PNG; give a path ending in .png, got {args.output!r}")
    if args.images is not None and args.random is not None:
        raise ValueError("give either --images DIR or --random N, not both")
    if args.images is not None:
        image_files(args.images, args.max_images)  # fail early on a missing or empty directory
    checkpoints = args.checkpoint or ["-"] * len(args.models)
    if len(checkpoints) != len(args.models):
        raise ValueError(f"--checkpoint needs one entry per MODEL ('-' for none): got "
                         f"{len(checkpoints)} for {len(args.models)} models")
    default_kernels = None
    if args.kernel_sizes is not None:
        if len(args.kernel_sizes) not in (1, 4):
            raise ValueError(f"--kernel-sizes takes one K or four (one per stage), got {args.kernel_sizes}")
        default_kernels = tuple(args.kernel_sizes) * (4 // len(args.kernel_sizes))
    specs = [parse_model_spec(s) for s in args.models]
    results, rows = [], []
    for spec, (name, kernels), ckpt in zip(args.models, specs, checkpoints):
        kernels = kernels or default_kernels
        torch.manual_seed(args.seed)
        if ckpt != "-":
            model = model_from_checkpoint(ckpt, name, kernel_sizes=kernels)
            label = f"{spec} ({Path(ckpt).name})"
            if args.simulate_trained:
                log.warning("%s: --simulate-trained applies to fresh models only; using the "
                            "checkpoint's weights", label)
        else:
            model = create_model(name, kernel_sizes=kernels)
            if args.simulate_trained:
                simulate_trained_statistics(model, args.seed)
            label = spec
        result = compute_erf(model, image_dir=args.images, max_images=args.max_images,
                             n_random=args.random or 50, size=args.size, seed=args.seed, name=label)
        results.append(result)
        rows.append(dict(result.to_dict(), spec=spec, checkpoint=None if ckpt == "-" else ckpt,
                         kernel_sizes=[list(k) for k in model.model_args["kernel_sizes"]],
                         simulated_statistics=bool(args.simulate_trained and ckpt == "-")))
    if args.output is not None:
        plot_erf(results, args.output)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    header = ["model"] + [f"r({t:.0%})" for t in results[0].ratios]
    table = [[r.model] + [format_percent(v) for v in r.ratios.values()] for r in results]
    sys.stdout.write(format_table(header, table, right=range(1, len(header))))
    return 0


def _train_args() -> list[tuple[tuple, dict]]:
    """--preset/--config/--set/--resume; the options themselves come in groups (`_train_groups`)."""
    return [
        arg("--preset", default=None, help="a named recipe (see `largekernel train --list-presets`)"),
        arg("--task", dest="cfg_modality", default=None, metavar="NAME",
            help="the same as --modality (e.g. --task segmentation)"),
        arg("--list-presets", action="store_true", help="list the presets and exit"),
        arg("--config", default=None, metavar="YAML", help="a YAML file of option: value"),
        arg("--set", action="append", default=[], metavar="KEY=VALUE",
            help="override any option (repeatable), e.g. --set model_kwargs='{\"kernel_sizes\": [3,5,7,9]}'"),
        arg("--resume", nargs="?", const=True, default="auto", metavar="CKPT",
            help="continue from CKPT, or (no value) the newest checkpoint in --output; by default a "
                 "run directory with checkpoints is resumed automatically"),
        arg("--no-resume", dest="resume", action="store_false",
            help="start from scratch (refuses a run directory that already has checkpoints)"),
    ]


def _option_flag(f: dataclasses.Field) -> tuple[tuple, dict]:
    """One --flag for a config field, with its help sentence and default (values parsed like YAML)."""
    names = ("--data", "--train") if f.name == "train" else (f"--{f.name.replace('_', '-')}",)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    text = f"{f.metadata['help']} (default: {json.dumps(default) if default is not None else 'none'})"
    if f.type == "bool":
        return arg(*names, dest=f"cfg_{f.name}", default=None, action=argparse.BooleanOptionalAction,
                   help=text)
    return arg(*names, dest=f"cfg_{f.name}", default=None, metavar="V", help=text)


def _plugin_groups(attribute: str, title: str) -> list[tuple[str, list[tuple[tuple, dict]]]]:
    """One argument group per registered plug-in that declares arguments under `attribute`."""
    return [(f"{name} {title} (--modality {name})", list(getattr(cls, attribute)))
            for name, cls in sorted(all_plugins().items()) if getattr(cls, attribute)]


def _train_groups() -> list[tuple[str, list[tuple[tuple, dict]]]]:
    """The engine's options, then one group per registered plug-in with the options it declares."""
    from .engine.config import TrainConfig
    from .engine.plugin import all_plugins

    groups = [("engine options", [_option_flag(f) for f in dataclasses.fields(TrainConfig)
                                  if f.name != "options"])]
    for name, cls in sorted(all_plugins().items()):
        if cls.options is not None:
            groups.append((f"{name} options (--modality {name})",
                           [_option_flag(f) for f in dataclasses.fields(cls.options)]))
    return groups


@command("train", help="train (or fine-tune) a model; resumable, checkpointed, logged", args=_train_args(),
         groups=_train_groups)
def cmd_train(args: argparse.Namespace) -> int:
    """Train a model on a folder (one subfolder per class) or a CSV of path,label.

    Options resolve as: defaults < --preset < --config YAML < --set < the flags below. The run
    directory (--output) gets checkpoints/, metrics.jsonl, PNG plots, best/last.safetensors and a
    summary. Killed or interrupted runs continue from their last checkpoint when started again."""
    from .engine.config import PRESETS, parse_overrides, resolve_config
    from .engine.state import latest_checkpoint
    from .engine.trainer import Trainer

    if args.list_presets:
        for name, values in PRESETS.items():
            sys.stdout.write(f"{name}: {json.dumps(values)}\n")
        return 0
    overrides = parse_overrides(args.set)
    overrides.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None})
    cfg = resolve_config(args.preset, args.config, overrides)
    ckpt_dir = Path(cfg.output) / "checkpoints"
    if args.resume is False and latest_checkpoint(ckpt_dir) is not None:
        raise ValueError(f"{cfg.output} already holds checkpoints; resume it (drop --no-resume) or "
                         "pick another --output")
    summary = Trainer(cfg, resume=args.resume).fit()
    if summary["rank"] == 0:
        sys.stdout.write(format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    best = (f"{s['metric']} {s['best_metric']:.4g} (epoch {s['best_epoch']})"
            if s.get("best_metric") is not None else "n/a")
    lines = [f"run directory  {s['run_dir']}",
             f"trained        {s['epochs']} epochs, {s['steps']} steps in {s['seconds']:.0f} s "
             f"({s['samples_per_s']:.1f} samples/s)",
             f"best           {best}",
             f"weights        {s.get('best')} (best), {s.get('final')} (last)",
             f"checkpoints    {s['checkpoints']}"]
    if s.get("skipped"):
        lines.append(f"skipped        {s['skipped']} unreadable samples (see skipped.txt)")
    if s.get("plots"):
        lines.append(f"plots          {', '.join(s['plots'])}")
    return "\n".join(lines) + "\n"


def set_missing(cfg, missing: str | None) -> None:
    """`--missing` of eval/predict: the time-series plug-in's option, for this run only."""
    if missing is None:
        return
    if not hasattr(cfg.options, "missing"):
        raise ValueError(f"--missing is an option of time-series checkpoints; this one is {cfg.modality!r}")
    cfg.options = dataclasses.replace(cfg.options, missing=missing)


@command("eval", help="evaluate a checkpoint on a dataset: the task's metrics (top-1/5, per-class accuracy and "
                      "confusion matrix; mIoU and per-class IoU; forecast errors)", args=[
    arg("checkpoint", metavar="CKPT", help="a run's best/last.safetensors or checkpoints/step*.pt "
        "(or a file a plug-in reads, e.g. an mmseg segmentation checkpoint)"),
    arg("--data", required=True, help="the evaluation data in the task's layout: a folder with one "
        "subfolder per class or a CSV of path,label; a segmentation dataset root; a series file"),
    arg("--batch-size", type=positive_int, default=64, metavar="N"),
    arg("--ema", action="store_true", help="use the EMA weights of a step*.pt checkpoint"),
    arg("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
        help="fp32 (default, exact), bf16 (bf16 GEMMs, fp32 statistics; docs/precision.md) or auto "
             "(bf16 where the CPU has amx_bf16/avx512_bf16)"),
    arg("--output", default=None, metavar="DIR", help="where to write confusion.png and eval.json "
        "(default: next to the checkpoint)"),
    arg("--json", action="store_true", help="print all metrics as JSON"),
    arg("--missing", choices=("error", "interpolate"), default=None,
        help="time series: missing values and time steps (default: the training run's choice)"),
    arg("--set", action="append", default=[], metavar="KEY=VALUE",
        help="change a recorded evaluation option for this run (repeatable), e.g. segmentation's "
             "--set tta_ratios=0.75,1.0,1.25 --set tta_flip=true --set inference=slide"),
])
def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate with the preprocessing and classes recorded in the checkpoint."""
    import torch

    from .engine.inference import load_trained
    from .precision import set_precision

    trained = load_trained(args.checkpoint, ema=args.ema)
    set_precision(trained.model, args.precision)
    if trained.modality is None:
        raise ValueError(f"{args.checkpoint} records no training config; evaluate a checkpoint "
                         "written by `largekernel train`")
    cfg = trained.cfg
    if args.set:
        from .engine.config import parse_overrides, resolve_config
        cfg = resolve_config(overrides=dict(cfg.to_dict(), **parse_overrides(args.set)))
    cfg = dataclasses.replace(cfg, val=args.data, train=None, classes=trained.classes)
    set_missing(cfg, args.missing)
    data = trained.modality.datasets(cfg, train=False)
    metrics = trained.modality.evaluate(trained.model, data.val, cfg, trained.classes,
                                        torch.device("cpu"), args.batch_size)
    out = Path(args.output) if args.output else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    metrics["classes"] = trained.classes
    text = trained.modality.report(metrics, trained.classes, out)
    (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    if args.json:
        sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
        return 0
    sys.stdout.write(text)
    if metrics.get("skipped"):
        sys.stdout.write(f"skipped {len(metrics['skipped'])} unreadable files\n")
    figures = [v for k, v in metrics.items() if k.endswith("_png")]
    sys.stdout.write(f"wrote {out / 'eval.json'}" + "".join(f" and {f}" for f in figures) + "\n")
    return 0


@command("predict", help="predict files: top-k classes, or the files a plug-in writes (e.g. forecasts); "
                         "the plug-in comes from the checkpoint", args=[
    arg("paths", nargs="+", metavar="PATH"),
    arg("--checkpoint", default=None, metavar="CKPT", help="a run's best/last.safetensors or step*.pt"),
    arg("--model", default=None, metavar="NAME",
        help="without --checkpoint: a pretrained model (e.g. unireplknet_a.in1k, from the Hub cache); "
             "with an authors' .pth checkpoint: its architecture"),
    arg("--topk", type=positive_int, default=5, metavar="K", help="classes listed per file (default: 5)"),
    arg("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
        help="fp32 (default, exact), bf16 or auto (bf16 where the CPU has amx_bf16/avx512_bf16)"),
    arg("--output", default=None, metavar="DIR",
        help="where plug-ins that write files (e.g. forecasts) put them (default: next to each input)"),
    arg("--json", action="store_true", help="print the results as JSON"),
    arg("--missing", choices=("error", "interpolate"), default=None,
        help="time series: missing values and time steps (default: the training run's choice)"),
], groups=lambda: _plugin_groups("predict_arguments", "predict options"))
def cmd_predict(args: argparse.Namespace) -> int:
    """Predict each file; unreadable files are reported by name (exit 1 if none could be read)."""
    from .engine.inference import Trained, load_trained, predict_files
    from .engine.config import TrainConfig
    from .labels import class_names_for
    from .models.registry import create_model
    from .precision import set_precision
    from .transforms import DATA_CONFIG_KEYS, create_transform, data_config

    load = None
    if args.checkpoint:
        trained = load_trained(args.checkpoint, args.model)
        if trained.modality is None:  # an authors' file: ImageNet names when its head has 1000/21841
            trained.classes = class_names_for(trained.model)  # classes, and its weights' preprocessing
            if set(DATA_CONFIG_KEYS) <= set(getattr(trained.model, "pretrained_cfg", None) or {}):
                load = create_transform(data_config(trained.model))
    elif args.model:  # the weights' own preprocessing, as Python users get it
        model = create_model(args.model, pretrained=True).eval()
        load = create_transform(data_config(model))
        pcfg = model.pretrained_cfg
        cfg = TrainConfig(model=args.model, input_size=pcfg["input_size"][-1], crop_pct=pcfg["crop_pct"])
        trained = Trained(model, cfg, class_names_for(model), None)
    else:
        raise ValueError("give --checkpoint CKPT (a trained model) or --model NAME (pretrained weights)")
    own = {"command", "func", "verbose", "quiet", "paths", "checkpoint", "model", "topk", "json", "precision", "missing"}
    set_missing(trained.cfg, args.missing)
    set_precision(trained.model, args.precision)
    options = {k: v for k, v in vars(args).items() if k not in own}  # --output, plug-ins' options
    if trained.modality is not None:
        results = trained.modality.predict(trained, args.paths, args.topk, options)
    else:
        results = predict_files(trained, args.paths, args.topk, load)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        for r in results:
            if "error" in r:
                sys.stdout.write(f"{r['path']}: ERROR {r['error']}\n")
            elif "top" in r:
                tops = ", ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in r["top"])
                sys.stdout.write(f"{r['path']}: {tops}\n")
            else:
                sys.stdout.write(f"{r['path']}: {r.get('summary', 'done')}; wrote "
                                 f"{', '.join(r.get('written', []))}\n")
    return 0 if any("error" not in r for r in results) else 1


@command("reparam", help="re-parameterize a checkpoint into the deploy form (safetensors) and check it", args=[
    arg("checkpoint", metavar="CKPT"),
    arg("-o", "--output", required=True, metavar="OUT.safetensors"),
    arg("--model", default=None, metavar="NAME", help="architecture of an authors' .pth checkpoint"),
    arg("--input-size", type=positive_int, default=None, metavar="N",
        help="input size of the equivalence check (default: the checkpoint's)"),
])
def cmd_reparam(args: argparse.Namespace) -> int:
    """Fold the training-form branches and BNs, verify on random inputs, write safetensors."""
    import torch

    from .engine.inference import load_trained
    from .layers import reparameterize
    from .models.checkpoint import read_metadata, save_checkpoint

    trained = load_trained(args.checkpoint, args.model)
    model = trained.model.eval()
    size = args.input_size or trained.cfg.input_size
    gen = torch.Generator().manual_seed(0)
    if trained.modality is not None:
        x = trained.modality.example_input(dataclasses.replace(trained.cfg, input_size=size), 2, gen)
    else:
        x = torch.randn(2, model.in_chans, size, size, generator=gen)
    deploy = reparameterize(model)
    with torch.no_grad():
        ref, out = model(x), deploy(x)
    pairs = zip(ref, out) if isinstance(ref, list) else [(ref, out)]
    err = max(float((b - a).norm() / a.norm().clamp(min=1e-12)) for a, b in pairs)
    meta = {k: v for k, v in read_metadata(args.checkpoint).items() if k not in ("model_args", "format")}
    path = save_checkpoint(deploy, args.output, metadata=meta)
    n_train = sum(p.numel() for p in model.parameters())
    n_deploy = sum(p.numel() for p in deploy.parameters())
    sys.stdout.write(f"wrote {path}: {n_train:,} -> {n_deploy:,} parameters; equivalence check at "
                     f"{size}x{size}: relative error {err:.2e} ({'OK' if err <= 1e-5 else 'FAILED'}, "
                     "tolerance 1e-5)\n")
    return 0 if err <= 1e-5 else 1


@command("bench", help="speed: inference and training img/s against the authors' forward and ConvNeXt-T, "
                       "depthwise convs against the roofline (same run, interleaved medians)", args=[
    arg("--model", default="unireplknet_t", metavar="NAME"),
    arg("--size", type=positive_int, default=224, metavar="N", help="input size (default 224)"),
    arg("--batch", type=int, default=16, metavar="N", help="inference batch (0 skips; default 16)"),
    arg("--train-batch", type=int, default=8, metavar="N", help="training batch (0 skips; default 8)"),
    arg("--dw-batch", type=positive_int, default=8, metavar="N", help="depthwise micro-benchmark batch"),
    arg("--rounds", type=positive_int, default=5, metavar="N", help="interleaved rounds (default 5)"),
    arg("--parts", default="dwconv,models,memory", metavar="LIST",
        help="comma list of dwconv, models, memory (default: all)"),
    arg("--threads", type=positive_int, default=None, metavar="N", help="torch threads (default: all cores)"),
    arg("--precision", choices=["fp32", "bf16", "auto", "all"], default="fp32",
        help="largekernel's precision (all: fp32 and bf16); with bf16 the baselines also run under "
             "bf16 autocast and the bf16 GEMM roof is measured (default fp32)"),
    arg("--json", action="store_true"),
])
def cmd_bench(args: argparse.Namespace) -> int:
    """Print (or --json) throughput ratios; the machine, threads, dtype and paths are stated."""
    import torch

    from .tools.bench import format_bench, run_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = sorted(set(parts) - {"dwconv", "models", "memory"})
    if unknown:
        raise ValueError(f"--parts: unknown {unknown}; choose from dwconv, models, memory")
    result = run_bench(args.model, args.size, args.batch, args.train_batch, args.rounds, parts,
                       args.dw_batch, args.precision)
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else format_bench(result))
    return 0


# ---- plumbing ------------------------------------------------------------------------------------

def _verbosity_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, and tracebacks for errors")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="log errors only")


def _plugin_commands() -> list[tuple[str, str, list[tuple[tuple, dict]], None, Handler]]:
    """The plug-ins' extra subcommands and, for each data generator NAME, the alias `make-NAME`."""
    found = []
    for cls in all_plugins().values():
        for c in cls.commands:
            found.append((c.name, c.help, c.arguments, None, c.run, c.description))
        for g in cls.data_generators:
            found.append((f"make-{g.name}", g.help, g.arguments, None, g.run,
                          f"{g.description} (Same as `largekernel make-data {g.name}`.)"))
    return found


def _add_make_data(sub) -> None:
    """`make-data KIND ...`: one subcommand per data generator the plug-ins declare."""
    p = sub.add_parser("make-data", help="write a dataset a plug-in can generate (KIND: "
                       + ", ".join(g.name for g in _generators()) + ")",
                       description="Write a synthetic (or bundled) dataset in the file layout its "
                                   "plug-in reads; `largekernel make-data KIND --help` lists KIND's options.")
    _verbosity_flags(p, default=argparse.SUPPRESS)
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for g in _generators():
        k = kinds.add_parser(g.name, help=g.help, description=(g.description or g.help).strip())
        _verbosity_flags(k, default=argparse.SUPPRESS)
        for names, kwargs in g.arguments:
            k.add_argument(*names, **kwargs)
        k.set_defaults(func=g.run)


def _generators() -> list[Command]:
    return sorted((g for cls in all_plugins().values() for g in cls.data_generators), key=lambda g: g.name)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand and the plug-ins' commands."""
    parser = argparse.ArgumentParser(
        prog="largekernel", description="UniRepLKNet large-kernel ConvNets: tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _verbosity_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = [(*c, None) for c in _COMMANDS] + _plugin_commands()
    for name, help_text, arguments, groups, fn, description in commands:
        p = sub.add_parser(name, help=help_text,
                           description=(description or fn.__doc__ or help_text).strip())
        # SUPPRESS: -v/-q given before the subcommand are not overwritten by the subparser
        _verbosity_flags(p, default=argparse.SUPPRESS)
        for names, kwargs in arguments:
            p.add_argument(*names, **kwargs)
        for title, group_args in groups() if groups else ():
            group = p.add_argument_group(title)
            for names, kwargs in group_args:
                if not any(n in p._option_string_actions for n in names):  # shared by two plug-ins
                    group.add_argument(*names, **kwargs)
        p.set_defaults(func=fn)
    _add_make_data(sub)
    return parser


def _install_log_handler(level: int) -> Callable[[], None]:
    """Send `largekernel.*` logs to stderr at `level`; returns a function restoring the old state."""
    logger = logging.getLogger("largekernel")
    old = logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv[1:]) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    restore = _install_log_handler(level)
    keep_freed_memory()  # our own process: reuse freed pages instead of page-faulting on new ones
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if args.verbose:
            log.exception("%s failed", args.command)
        sys.stderr.write(f"error: {' '.join(str(e).split()) or type(e).__name__}\n")
        return 2
    except KeyboardInterrupt as e:
        sys.stderr.write(f"{e or 'interrupted'}\n")
        return 130
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
