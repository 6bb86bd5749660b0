"""Reading, adapting and writing UniRepLKNet checkpoints.

Accepts the authors' files as they are: a bare state dict, `{"model": sd}`, or a detection /
segmentation checkpoint `{"state_dict": {"backbone.<key>": ...}}`, in train or deploy form, and
safetensors files. `.pth` files are read with `weights_only=True`, so no pickled code ever runs.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .unireplknet import VARIANTS, UniRepLKNet, resolve_kernel_sizes

log = logging.getLogger(__name__)

FIRST_CONV = "downsample_layers.0.0.weight"
TRAIN_ONLY = re.compile(r"\.(origin_bn|dil_conv_k\d+_\d+|dil_bn_k\d+_\d+|pwconv2\.2)\.|"
                        r"^stages\.\d+\.\d+\.(gamma$|norm\.|act\.1\.beta$)")
STEP_CKPT = re.compile(r"step\d+\.pt$")  # the engine's training checkpoints
DEPLOY_ONLY = re.compile(r"\.pwconv2\.0\.bias$|\.dwconv(\.lk_origin)?\.bias$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


@dataclass
class LoadReport:
    """What `load_checkpoint` did beyond a plain strict load."""

    path: str
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept_init: list[str] = field(default_factory=list)


def key_report(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """The lines of a key-mismatch error: missing, unexpected and wrong-shaped keys, 12 of each shown."""
    lines = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            lines.append(f"  {title}: {shown}")
    return lines


def torch_load(path: str | Path):
    """`torch.load` of a weights file: tensors and plain containers only (`weights_only=True`), on
    the CPU, memory-mapped where the file is a zip archive (PyTorch >= 1.6's format; older files
    load whole). Mapped tensors are read from the page cache as they are used, so loading a large
    file to look at its keys, and again for its weights, costs little; the mapping is private
    (copy-on-write): nothing writes to the file."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def read_state_dict(path: str | Path, backbone_only: bool = True) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict in the authors' key format.

    `backbone_only=False` keeps a dense-task file's `backbone.*`/`decode_head.*`/... keys as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch_load(path)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors and plain "
            f"containers, and unpickling them could run arbitrary code ({first}). Nothing from the "
            "file was executed. If you trust its source, re-save only its tensors (e.g. as "
            "safetensors) and load that."
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from None
    return unwrap_state_dict(obj, source=str(path), backbone_only=backbone_only)


def unwrap_state_dict(obj, source: str = "checkpoint", backbone_only: bool = True) -> dict[str, torch.Tensor]:
    """Find the state dict in the authors' layouts and strip `module.` (and, with `backbone_only`,
    keep only the `backbone.*` keys of a dense-task file, unprefixed)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {bad[:5]}")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    if backbone_only and any(k.startswith("backbone.") for k in sd):
        others = sorted(k for k in sd if not k.startswith("backbone."))
        if others:
            log.info("%s: using the %d backbone.* keys; ignoring %d others (e.g. %s)", source,
                     len(sd) - len(others), len(others), others[0])
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def checkpoint_form(sd: dict[str, torch.Tensor]) -> str:
    """'train' or 'deploy' (re-parameterized) form of a state dict."""
    if any(TRAIN_ONLY.search(k) for k in sd):
        return "train"
    if any(DEPLOY_ONLY.search(k) for k in sd):
        return "deploy"
    raise CheckpointError("the state dict has no UniRepLKNet blocks (no stages.* keys of either form)")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-conv weight to `in_chans`: sum for 1 channel; repeat and rescale for more."""
    c = weight.shape[1]
    if in_chans == c:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def _stage_of(key: str) -> int | None:
    m = re.match(r"(?:downsample_layers|stages)\.(\d+)\.|norm(\d)\.", key)
    if m is None:
        return None
    return int(m.group(1) if m.group(1) is not None else m.group(2))


def adapt_state_dict(sd: dict[str, torch.Tensor], model: UniRepLKNet,
                     report: LoadReport | None = None) -> dict[str, torch.Tensor]:
    """Make an authors'-format state dict fit `model`: task head, in_chans, stages, train->deploy.

    Returns a state dict that loads strictly into `model`, or raises `CheckpointError` listing the
    missing, unexpected and wrong-shaped keys.
    """
    report = report or LoadReport(path="state dict")
    sd = dict(sd)
    target = model.state_dict()
    form = checkpoint_form(sd)
    if form == "deploy" and not model.deploy:
        raise CheckpointError(
            f"{report.path} is in deploy (re-parameterized) form, but the model is in train form. "
            "Build the model with deploy=True to load it; folded weights cannot be split back into "
            "training branches."
        )

    def drop(keys, why):
        keys = sorted(keys)
        if keys:
            for k in keys:
                sd.pop(k)
            report.dropped += keys
            report.notes.append(f"dropped {len(keys)} keys: {why}")

    # Task-specific parts: classifier norm/head vs the dense backbone's norm0..norm3.
    dense_norms = {k for k in sd if re.match(r"norm\d\.", k)}
    head_keys = {k for k in sd if k.startswith(("head.", "norm."))}
    if model.features_only:
        drop(head_keys, "the classifier (norm, head) is not part of a features_only backbone")
        drop({k for k in sd if (s := _stage_of(k)) is not None and s >= len(model.stages)},
             f"stages after {len(model.stages) - 1} are not built for out_indices {model.out_indices}")
        drop({k for k in sd if re.match(r"norm\d\.", k) and int(k[4]) not in model.out_indices},
             f"norms of stages outside out_indices {model.out_indices}")
    else:
        drop(dense_norms, "the dense-prediction norms norm0..norm3 are not used by a classifier")
        ckpt_classes = sd["head.weight"].shape[0] if "head.weight" in sd else None
        if ckpt_classes is not None and model.num_classes != ckpt_classes:
            drop({k for k in sd if k.startswith("head.")},
                 f"the checkpoint's head has {ckpt_classes} classes, the model {model.num_classes}"
                 " (the model's head keeps its fresh initialisation)")
            log.warning("%s: head dropped (%s classes in the checkpoint, %s in the model)",
                        report.path, ckpt_classes, model.num_classes)
    # Keys the model has but the checkpoint legitimately lacks (another task's file).
    allowed_missing = {k for k in target if k.startswith(("head.", "norm.")) or re.match(r"norm\d\.", k)}

    # First conv: adapt to another number of input channels.
    if FIRST_CONV in sd and FIRST_CONV in target and sd[FIRST_CONV].shape[1] != target[FIRST_CONV].shape[1]:
        c_in = target[FIRST_CONV].shape[1]
        report.notes.append(f"first conv adapted from {sd[FIRST_CONV].shape[1]} to {c_in} input channels")
        sd[FIRST_CONV] = adapt_input_conv(sd[FIRST_CONV], c_in)

    # Train-form checkpoint into a deploy-form model: load into a train-form twin and fold it.
    if form == "train" and model.deploy:
        sd = _fold_train_checkpoint(sd, model, allowed_missing, report)

    missing = sorted(k for k in target if k not in sd and k not in allowed_missing)
    unexpected = sorted(k for k in sd if k not in target)
    wrong = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                   for k in sd if k in target and sd[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        lines = [f"{report.path} does not fit {type(model).__name__} "
                 f"(depths={model.depths}, dims={model.dims}, deploy={model.deploy}):"]
        lines += key_report(missing, unexpected, wrong)
        lines.append("Check that the model name matches the checkpoint (e.g. unireplknet_t vs _s).")
        raise CheckpointError("\n".join(lines))
    kept = sorted(k for k in allowed_missing if k not in sd)
    if kept:
        report.kept_init += kept
        report.notes.append(f"{len(kept)} keys not in the checkpoint keep their initialisation "
                            f"({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''})")
    return sd


def _fold_train_checkpoint(sd, model: UniRepLKNet, allowed_missing, report: LoadReport):
    args = dict(model.model_args, deploy=False)
    ref = next(model.parameters())
    twin = UniRepLKNet(**args, device="cpu", dtype=torch.float32)
    twin_sd = twin.state_dict()
    current = model.state_dict()
    filled = {k: current[k] for k in allowed_missing if k not in sd and k in twin_sd}
    unexpected = sorted(k for k in sd if k not in twin_sd)
    missing = sorted(k for k in twin_sd if k not in sd and k not in filled)
    wrong = sorted(k for k in sd if k in twin_sd and sd[k].shape != twin_sd[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{report.path} (train form) does not fit the train form of this model: missing "
            f"{missing[:8]}, unexpected {unexpected[:8]}, wrong shape {wrong[:8]}"
        )
    twin.load_state_dict({**filled, **{k: v.float() for k, v in sd.items()}})
    twin.eval().reparameterize()
    report.notes.append("train-form checkpoint re-parameterized into the deploy-form model")
    folded = twin.state_dict()
    return {k: v.to(ref.dtype) for k, v in folded.items() if k not in filled}


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a checkpoint file (authors' .pth in any layout, or safetensors) into `model`.

    Adapts what a user would expect to be adapted (see `adapt_state_dict`); with `strict=False`
    keys that still do not fit are skipped and reported instead of raising.
    """
    report = LoadReport(path=str(path))
    sd = read_state_dict(path)
    if isinstance(model, UniRepLKNet):
        try:
            sd = adapt_state_dict(sd, model, report)
        except CheckpointError:
            if strict:
                raise
            target = model.state_dict()
            bad = [k for k in sd if k not in target or sd[k].shape != target[k].shape]
            report.dropped += bad
            sd = {k: v for k, v in sd.items() if k not in bad}
            report.notes.append(f"strict=False: skipped {len(bad)} keys that do not fit")
    result = model.load_state_dict(sd, strict=False)
    if strict and not isinstance(model, UniRepLKNet) and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(f"{path}: missing {result.missing_keys[:10]}, "
                              f"unexpected {result.unexpected_keys[:10]}")
    for note in report.notes:
        log.info("%s: %s", path, note)
    log.info("loaded %s (%d tensors)", path, len(sd))
    return report


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the model's weights as safetensors, with its architecture and args as metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint writes safetensors; give a path ending in .safetensors, got {path}")
    meta = {"format": "pt"}
    if hasattr(model, "model_args"):
        meta["model_args"] = json.dumps(model.model_args)
    if getattr(model, "name", None):
        meta["architecture"] = model.name
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata `save_checkpoint` wrote (architecture, model_args); {} for other files."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


DWCONV = re.compile(r"stages\.(\d+)\.(\d+)\.dwconv\.(?:lk_origin\.)?weight$")


def read_layout(sd: dict[str, torch.Tensor]) -> dict:
    """The architecture a state dict holds, read off its keys and shapes: `depths`, `dims` and
    `kernel_sizes` of the stages present (a features_only file may stop before stage 3)."""
    blocks: dict[int, dict[int, torch.Tensor]] = {}
    for key, value in sd.items():
        m = DWCONV.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), {})[int(m.group(2))] = value
    if not blocks:
        raise CheckpointError("the state dict has no UniRepLKNet blocks (no stages.I.J.dwconv keys)")
    layout = dict(depths=[], dims=[], kernel_sizes=[])
    for i in sorted(blocks):
        stage = blocks[i]
        if sorted(stage) != list(range(len(stage))):
            raise CheckpointError(f"stage {i} has blocks {sorted(stage)}: block indices must run 0..N-1")
        layout["depths"].append(len(stage))
        layout["dims"].append(int(stage[0].shape[0]))
        layout["kernel_sizes"].append(tuple(int(stage[j].shape[-1]) for j in range(len(stage))))
    if sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(f"the state dict holds stages {sorted(blocks)}: stages must run 0..N-1")
    return layout


def model_from_checkpoint(path: str | Path, model_name: str | None = None, **kwargs) -> nn.Module:
    """Build the model a checkpoint describes and load it.

    A file written by `save_checkpoint` records its architecture and constructor args. For the
    authors' files give `model_name`; the depths, widths and kernel sizes (so custom architectures
    trained with the authors' code load too), class count, input channels, train/deploy form and
    dense-backbone layout are read off the weights. An mmseg segmentation checkpoint (the authors'
    UPerNet files) builds the whole segmenter, its variant and heads read off the weights, unless
    `model_name` names a classifier or `features_only=True` asks for the dense backbone alone.
    `kwargs` override (e.g. `deploy=True`).
    """
    from .registry import create_model  # registry imports this module
    from .segmentation import is_segmenter_name, is_segmenter_state_dict, segmenter_from_checkpoint

    meta = read_metadata(path)
    name = model_name or meta.get("architecture")
    if (not meta.get("architecture") and (name is None or is_segmenter_name(name))
            and not kwargs.get("features_only")
            and is_segmenter_state_dict(read_state_dict(path, backbone_only=False))):
        return segmenter_from_checkpoint(path, model_name, **kwargs)
    if name is None:
        raise CheckpointError(f"{path} does not record its architecture; pass the model name "
                              "(e.g. model_name='unireplknet_t', CLI: --model unireplknet_t)")
    if "model_args" in meta:
        args = json.loads(meta["model_args"])
        if "kernel_sizes" in args:
            args["kernel_sizes"] = [tuple(k) for k in args["kernel_sizes"]]
    else:
        sd = read_state_dict(path)
        args = dict(deploy=checkpoint_form(sd) == "deploy")
        layout = read_layout(sd)
        arch = name.partition(".")[0]
        n = len(layout["depths"])
        if n < 4 and arch in VARIANTS:  # a dense backbone cut after stage n-1: the rest is never built
            depths, dims = VARIANTS[arch]
            layout["depths"] += depths[n:]
            layout["dims"] += dims[n:]
            layout["kernel_sizes"] += resolve_kernel_sizes(depths, None)[n:]
        args.update(layout)
        if "head.weight" in sd:
            args["num_classes"] = sd["head.weight"].shape[0]
        if FIRST_CONV in sd:
            args["in_chans"] = sd[FIRST_CONV].shape[1]
        if any(re.match(r"norm\d\.", k) for k in sd):
            args["features_only"] = True
            args["out_indices"] = tuple(sorted({int(k[4]) for k in sd if re.match(r"norm\d\.", k)}))
    args.update({k: v for k, v in kwargs.items() if v is not None})
    return create_model(name, checkpoint_path=path, **args)
