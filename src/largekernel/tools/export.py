"""Export to ONNX or torch.export (.pt2) with a dynamic batch, height and width; check the artefact.

`export_model` folds a train-form model into its inference form first (on a copy), swaps any module
that has a plain-PyTorch twin for that twin (the hook a fast custom kernel plugs into: neither
exporter can see through a custom op), exports with a symbolic batch and (for N x C x H x W inputs)
symbolic height and width, then runs the file it wrote (onnxruntime on CPU, or
`torch.export.load(...).module()`) at two input shapes NOT used for tracing and compares each output
with the PyTorch model, relative to the output's scale (see `parity_tolerance`).

Height and width have a lower bound: torch.export assumes every symbolic size is >= 2 (it
specializes 0 and 1), and UniRepLKNet's stride-32 map is ceil(H / 32) x ceil(W / 32), so H, W >= 33
(`min_dynamic_size`). Smaller example inputs are exported with a fixed H and W (`dynamic_hw=False`).

torch 2.13: `torch.onnx.export(..., dynamo=True)` (the torch.export-based exporter, needs onnx and
onnxscript) with `dynamic_shapes=`; the TorchScript exporter (`dynamo=False`) is deprecated there.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..layers import reparameterize
from ..precision import get_precision, set_precision

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
INSTALL_HINT = 'pip install "largekernel[export]"'
# protobuf cannot hold an ONNX file over 2 GiB: weights beyond this go to a side file `<name>.data`
ONNX_INLINE_LIMIT = 1800 * 2**20


@dataclass
class ExportResult:
    """What `export_model` wrote and how well the artefact matches the PyTorch model.

    `dynamic_dims`: input dimension -> its lower bound (`{"batch": 1, "height": 33, "width": 33}`);
    a dimension not listed is fixed to `input_shape`'s value, `static_reason` says why.
    `checks`: one entry per parity input shape (`shape`, and per output `max_abs_diff`, `scale` =
    max |PyTorch output|, `tolerance` = atol + rtol * scale, `max_abs_diff_source`).
    `max_abs_diff`: per output, the largest over the checks, artefact vs the exported (deploy-form)
    PyTorch model; `max_abs_diff_source`: the same vs the model as given, when it was folded first.
    `ok`: every difference <= its tolerance; None when not verified.
    `input_contract`: what the graph takes and which preprocessing stays outside it (from the
    plug-in), also written into the file's metadata.
    """

    path: str
    format: str
    input_name: str
    input_shape: list[int]
    output_names: list[str]
    output_shapes: list[list[int]]
    dynamic_batch: bool = True
    dynamic_dims: dict[str, int] = field(default_factory=lambda: {"batch": 1})
    static_reason: str | None = None
    files: list[str] = field(default_factory=list)
    size_bytes: int = 0
    reparameterized: bool = False
    verified: bool = False
    verify_shape: list[int] | None = None
    runtime: str | None = None
    atol: float = 1e-5
    rtol: float = 1e-4
    checks: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_abs_diff_source: dict[str, float] | None = None
    ok: bool | None = None
    seconds_prepare: float = 0.0
    seconds_export: float = 0.0
    seconds_verify: float = 0.0
    input_contract: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- preparation ---------------------------------------------------------------------------------

def _plain_fn(module: nn.Module):
    for attr in ("to_plain", "plain"):
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn
    return None


def has_fast_path(model: nn.Module) -> bool:
    """Whether any module offers a plain-PyTorch twin (`to_plain()` / `plain()`)."""
    return any(_plain_fn(m) is not None for m in model.modules())


def to_plain(model: nn.Module) -> nn.Module:
    """Swap (in place) every module with a `to_plain()` / `plain()` method for what it returns.

    The hook for fast kernels: a module backed by a custom op returns an equivalent module made of
    plain PyTorch ops (e.g. `nn.Conv2d`), which ONNX and torch.export can translate. Today every
    conv in largekernel is already a plain `nn.Conv2d`, so this changes nothing.
    """
    root = _plain_fn(model)
    if root is not None:
        return root()
    for name, child in list(model.named_children()):
        fn = _plain_fn(child)
        setattr(model, name, fn()) if fn is not None else to_plain(child)
    return model


def _is_train_form(model: nn.Module) -> bool:
    return any(hasattr(m, "reparameterize") and not getattr(m, "deploy", False) for m in model.modules())


def prepare_for_export(model: nn.Module) -> tuple[nn.Module, bool]:
    """The inference form of `model`, in eval mode: folded and made plain on a copy when needed.

    Returns `(deploy_model, reparameterized)`. `model` itself is only switched to eval mode (the
    caller restores its mode); its weights are never changed.
    """
    model.eval()
    folded = False
    if _is_train_form(model):
        model = reparameterize(model)  # a deep copy, folded
        folded = True
        log.info("re-parameterized a copy of the model into its inference (deploy) form")
    if has_fast_path(model):
        model = to_plain(model if folded else copy.deepcopy(model)).eval()
        log.info("swapped fast-path modules for their plain-PyTorch equivalents")
    return model, folded


# ---- helpers -------------------------------------------------------------------------------------

def _require(fmt: str, verify: bool) -> None:
    if fmt != "onnx":
        return
    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if verify else [])
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}, which is not installed: "
                          f"run `{INSTALL_HINT}` (onnx, onnxscript, onnxruntime)")


def check_path(path: str | Path, fmt: str) -> Path:
    """Validate the format and that the file suffix matches it; returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    path = Path(path)
    suffix = FORMATS[fmt]
    if path.suffix.lower() != suffix:
        other = next((f for f, s in FORMATS.items() if s == path.suffix.lower()), None)
        hint = f", or use format {other!r} for a {path.suffix} file" if other else ""
        raise ValueError(f"format {fmt!r} writes {suffix} files; give an output path ending in "
                         f"{suffix} (got {str(path)!r}){hint}")
    return path


def check_batch(batch: int) -> None:
    """The example batch must be >= 2: torch.export specializes a size-1 dimension to a constant."""
    if batch < 2:
        raise ValueError(f"batch must be >= 2 for a dynamic batch (torch.export specializes a size-1 "
                         f"dimension); got {batch}. The exported model still accepts batch 1.")


def default_input_size(model: nn.Module) -> tuple[int, int]:
    """(H, W) from the model's pretrained_cfg input_size, else 224x224."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return (int(size[-2]), int(size[-1])) if size else (224, 224)


def _hw(input_size) -> tuple[int, int]:
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    hw = tuple(int(s) for s in input_size)[-2:]
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"input_size must be N or (H, W) with positive sizes, got {input_size!r}")
    return hw


def output_names_of(model: nn.Module) -> list[str]:
    """`stage{i}` per feature map of a features_only backbone; else `logits` (`features` if no head)."""
    if getattr(model, "features_only", False):
        return [f"stage{i}" for i in model.out_indices]
    return ["logits" if getattr(model, "num_classes", 1) else "features"]


def _as_list(y) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters' upstream noise (deprecation warnings, 'torchvision is not installed') to DEBUG."""
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                             "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lg, lv in zip(noisy, levels):
            lg.setLevel(lv)
    for w in {(w.category.__name__, str(w.message)) for w in caught}:
        log.debug("exporter warning: %s: %s", *w)


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


# ---- dynamic shapes ------------------------------------------------------------------------------

def min_dynamic_size(model: nn.Module) -> int:
    """The smallest symbolic height/width the exported graph can take: total stride + 1.

    torch.export assumes every symbolic size is >= 2 (sizes 0 and 1 are specialized), and a stride-s
    conv stack (UniRepLKNet: two stride-2 stem convs, three stride-2 downsamplings) turns H into
    ceil(H / s), which is >= 2 only for H >= s + 1: 33 for UniRepLKNet and its segmenters (also
    inside a plug-in's model). A model with no `feature_info` strides in it gets 2 (the exporter
    then reports any other limit).
    """
    strides = [int(f["reduction"]) for m in model.modules() for f in (getattr(m, "feature_info", None) or [])
               if isinstance(f, dict) and "reduction" in f]
    return max(strides) + 1 if strides else 2


def default_check_sizes(hw: Sequence[int], minimum: int) -> list[tuple[int, int]]:
    """Two (H, W) parity-check sizes other than the traced one, not multiples of 32 in general:
    1.5 x / 1.25 x and 0.78 x / 1.1 x the traced size (64 x 64 -> 96 x 80 and 50 x 70)."""
    h, w = hw
    sizes = [(round(1.5 * h), round(1.25 * w)), (max(minimum, round(0.78 * h)), max(minimum, round(1.1 * w)))]
    return [s if s != (h, w) else (s[0] + 1, s[1] + 3) for s in sizes]


def parse_size(text: str) -> tuple[int, int]:
    """`HxW` (or `N` for N x N) as used by `--check-sizes`."""
    parts = text.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) not in (1, 2) or min(hw, default=0) < 1:
        raise ValueError(f"a size is HxW or N with positive integers (e.g. 96x80), got {text!r}")
    return (hw[0], hw[-1])


def _dynamic_spec(dims: dict[str, int]) -> tuple[dict[int, Any], ...]:
    from torch.export import Dim

    axes = {"batch": 0, "height": 2, "width": 3}
    return ({axes[n]: Dim(n, min=lo) if n != "batch" else Dim(n) for n, lo in dims.items()},)


def _decide_dynamic_hw(x: torch.Tensor, minimum: int, dynamic_hw: bool | None) -> str | None:
    """None when H and W can be symbolic; else why they stay fixed (an error when it was asked for)."""
    if dynamic_hw is False:
        return "fixed on request (static_hw / --static-hw)"
    if x.dim() != 4:
        reason = f"the input is {x.dim()}-D, not N x C x H x W"
    elif min(x.shape[-2:]) < minimum:
        reason = (f"the example input is {x.shape[-2]}x{x.shape[-1]}, and a symbolic height/width "
                  f"needs an example of at least {minimum} px (this model's total stride + 1); "
                  f"trace at a larger --input-size, e.g. {max(64, minimum)}, for a dynamic H and W")
    else:
        return None
    if dynamic_hw:
        raise ValueError(f"cannot export with a dynamic height and width: {reason}")
    log.warning("height and width stay fixed: %s", reason)
    return reason


# ---- export and verification ---------------------------------------------------------------------

def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path, names: list[str], dims: dict[str, int],
                 contract: dict[str, str] | None = None) -> list[Path]:
    external = _param_bytes(model) > ONNX_INLINE_LIMIT
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # a stale side file from an earlier export would mislead
    with _quiet_exporter():
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False,
                          dynamic_shapes=_dynamic_spec(dims), input_names=["input"],
                          output_names=names, external_data=external)
    if contract:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        for key, value in contract.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"largekernel.{key}", str(value)
        onnx.save(proto, str(path))
    return [path] + ([data] if data.is_file() else [])


CONTRACT_FILE = "largekernel_contract.json"  # inside a .pt2 (torch.export.load's extra_files)


def _export_torch(model: nn.Module, x: torch.Tensor, path: Path, dims: dict[str, int],
                  contract: dict[str, str] | None = None) -> list[Path]:
    with _quiet_exporter():
        # a guard the symbolic-shape solver cannot prove over the whole range (the segmenter's
        # 1 x 1 pyramid-pooling map resized to ceil(H/32) x ceil(W/32) yields `1 % ceil(W/32) != 0`)
        # becomes an assert checked at run time, as the ONNX exporter does; the parity check then
        # runs the file at other sizes
        ep = torch.export.export(model, (x,), dynamic_shapes=_dynamic_spec(dims),
                                 prefer_deferred_runtime_asserts_over_guards=True)
        extra = {CONTRACT_FILE: json.dumps(contract)} if contract else None
        torch.export.save(ep, str(path), extra_files=extra)
    return [path]


def load_artefact(path: str | Path, fmt: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """Load an exported file once: onnxruntime (CPU) for .onnx, `torch.export.load` for .pt2; the
    returned function runs it on a batch and returns its outputs."""
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: [torch.from_numpy(y) for y in sess.run(None, {name: x.detach().cpu().numpy()})]
    with _quiet_exporter():
        module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [y.detach().cpu() for y in _as_list(module(x))]
    return run


def run_artefact(path: str | Path, fmt: str, x: torch.Tensor) -> list[torch.Tensor]:
    """Run an exported file on `x` (see `load_artefact`)."""
    return load_artefact(path, fmt)(x)


def parity_tolerance(scale: float, atol: float, rtol: float) -> float:
    """The largest acceptable |artefact - PyTorch| for an output whose max |value| is `scale`.

    Both sides compute in fp32 but reduce in different orders (onnxruntime's / the exported graph's
    kernels vs PyTorch's). A length-K dot product then differs by about sqrt(K) u |y| (u = 2^-24 =
    6e-8; worst case K u |y|), the largest K here being the MLPs' 4C (1280 for A, 8192 for XL), and
    the relative differences of successive layers add up: ~1e-5 of the output scale for the deepest
    variants, a few 1e-7 measured for A. `rtol` (1e-4 by default) bounds that with a margin; `atol`
    (1e-5) covers outputs whose scale is near 0.
    """
    return atol + rtol * scale


def _compare(names, got, ref, atol: float, rtol: float) -> dict[str, dict[str, float]]:
    if len(got) != len(ref):
        raise RuntimeError(f"the artefact returned {len(got)} outputs, the model {len(ref)}")
    out = {}
    for n, a, b in zip(names, got, ref):
        b = b.detach().cpu()
        if tuple(a.shape) != tuple(b.shape):
            raise RuntimeError(f"output {n}: artefact shape {tuple(a.shape)} vs model {tuple(b.shape)}")
        diff = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
        scale = float(b.float().abs().max()) if b.numel() else 0.0
        out[n] = dict(max_abs_diff=diff, scale=scale, tolerance=parity_tolerance(scale, atol, rtol))
    return out


def _like(x: torch.Tensor, n: int, hw: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A random batch of n inputs at H x W, with the example's mean and spread (parity inputs)."""
    mean, std = x.float().mean(), x.float().std()
    return (torch.randn(n, x.shape[1], *hw, generator=generator) * std + mean).to(x.device, x.dtype)


def export_model(model: nn.Module, path: str | Path, format: str = "onnx",
                 input_size: int | Sequence[int] | None = None, batch: int = 2, verify: bool = True,
                 atol: float = 1e-5, verify_batch: int | None = None, seed: int = 0,
                 example: Callable[[int, torch.Generator], torch.Tensor] | None = None,
                 contract: dict[str, str] | None = None, rtol: float = 1e-4,
                 dynamic_hw: bool | None = None,
                 check_sizes: Sequence[Sequence[int]] | None = None) -> ExportResult:
    """Export `model` to `path` (`format` "onnx" -> .onnx, "torch-export" -> .pt2) with a dynamic
    batch, height and width.

    The model is exported in eval mode and inference form (a train-form model is re-parameterized
    on a copy; modules with a plain twin are swapped for it). `input_size` (N or (H, W)) is the size
    of the example input the graph is traced with (default: the pretrained_cfg's); the example is
    `batch` x in_chans x H x W. `dynamic_hw`: None = H and W symbolic (>= `min_dynamic_size`) when
    the input is N x C x H x W and the example is large enough, else fixed with a warning; True =
    symbolic or a ValueError saying why not; False = fixed to the example's.

    With `verify`, the file is run at batch `verify_batch` (default batch + 1) and at batch 1, at
    the two `check_sizes` (H, W) (default `default_check_sizes`; the traced size when H and W are
    fixed), and compared with the PyTorch model: `ok` when every max abs difference is <=
    `parity_tolerance(max |output|, atol, rtol)`.

    A plug-in's model gives `example(batch, generator)` (a random batch of its input, which
    replaces the image-shaped one) and `contract` (stored in the file's metadata and the result).
    """
    path = check_path(path, format)
    check_batch(batch)
    verify_batch = batch + 1 if verify_batch is None else verify_batch
    if verify and verify_batch == batch:
        raise ValueError("verify_batch must differ from batch, to show that the batch is dynamic")
    _require(format, verify)
    if example is None:
        h, w = _hw(input_size) if input_size is not None else default_input_size(model)
        in_chans = int(getattr(model, "in_chans", 3))

        def example(n: int, generator: torch.Generator) -> torch.Tensor:
            return torch.randn(n, in_chans, h, w, generator=generator)
    ref_param = next(iter(model.parameters()), None)
    device = ref_param.device if ref_param is not None else torch.device("cpu")
    dtype = ref_param.dtype if ref_param is not None else torch.float32
    names = output_names_of(model)
    minimum = min_dynamic_size(model)

    if any(getattr(get_precision(m), "precision", "fp32") != "fp32" for m in model.modules()):
        # the exporters would record bf16 casts no runtime here runs fast; export the fp32 model
        log.info("exporting in fp32: set_precision's bf16 is undone on a copy (for a smaller, faster "
                 "ONNX file use --quantize int8)")
        model = set_precision(copy.deepcopy(model), "fp32")
    was_training = model.training
    start = time.perf_counter()
    try:
        deploy, folded = prepare_for_export(model)
        gen = torch.Generator().manual_seed(seed)
        x = example(batch, gen).to(device, dtype)
        static_reason = _decide_dynamic_hw(x, minimum, dynamic_hw)
        dims = {"batch": 1} if static_reason else {"batch": 1, "height": minimum, "width": minimum}
        traced_hw = tuple(x.shape[-2:]) if x.dim() == 4 else None
        if static_reason:
            if check_sizes is not None and verify:
                raise ValueError(f"check sizes need a dynamic height and width, and they stay fixed: "
                                 f"{static_reason}")
            check_sizes = [traced_hw]
        else:
            check_sizes = [tuple(int(v) for v in s) for s in check_sizes or
                           default_check_sizes(traced_hw, minimum)]
            small = [s for s in check_sizes if min(s) < minimum]
            if small:
                raise ValueError(f"check size {small[0][0]}x{small[0][1]} is below the exported graph's "
                                 f"minimum height/width {minimum}")
            if traced_hw in check_sizes:
                raise ValueError(f"check sizes must differ from the traced size {traced_hw[0]}x"
                                 f"{traced_hw[1]}, to show that height and width are dynamic")
        if contract and not static_reason:
            contract = dict(contract, dynamic=f"batch; height >= {minimum}; width >= {minimum} "
                                              f"(traced at {traced_hw[0]} x {traced_hw[1]})")
        with torch.no_grad():
            example_out = _as_list(deploy(x))
        if len(example_out) != len(names):
            names = [f"output{i}" for i in range(len(example_out))]
        t_prepare = time.perf_counter() - start

        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("exporting to %s (%s), example input %s, dynamic: %s", path, format,
                 "x".join(map(str, x.shape)), ", ".join(dims))
        start = time.perf_counter()
        try:
            files = (_export_onnx(deploy, x, path, names, dims, contract) if format == "onnx"
                     else _export_torch(deploy, x, path, dims, contract))
        except Exception as e:
            if static_reason:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"the {format} exporter could not keep height and width symbolic "
                             f"(>= {minimum}): {first} -- export with a fixed size instead "
                             "(--static-hw / dynamic_hw=False)") from e
        t_export = time.perf_counter() - start
        log.info("exported in %.1f s", t_export)

        result = ExportResult(
            path=str(path), format=format, input_name="input" if format == "onnx" else "x",
            input_shape=list(x.shape), output_names=names,
            output_shapes=[list(y.shape) for y in example_out], files=[str(f) for f in files],
            size_bytes=sum(f.stat().st_size for f in files), reparameterized=folded, atol=atol,
            rtol=rtol, dynamic_dims=dims, static_reason=static_reason,
            seconds_prepare=t_prepare, seconds_export=t_export, input_contract=contract)
        if not verify:
            return result

        start = time.perf_counter()
        artefact = load_artefact(path, format)
        shapes = [(verify_batch, hw) for hw in check_sizes]
        if not static_reason and len(shapes) > 1:
            shapes[-1] = (1, shapes[-1][1])  # batch 1 too
        for n, hw in shapes:
            xv = example(n, gen).to(device, dtype) if hw == traced_hw else _like(x, n, hw, gen)
            try:
                got = artefact(xv)
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"the exported file {path} fails at input {'x'.join(map(str, xv.shape))}"
                                 f" ({first}): the model fixes a size the export made symbolic; export "
                                 "with a fixed height and width (--static-hw / dynamic_hw=False)") from e
            with torch.no_grad():
                outputs = _compare(names, got, _as_list(deploy(xv)), atol, rtol)
                check = dict(shape=list(xv.shape), outputs=outputs)
                if folded:
                    source = _compare(names, got, _as_list(model(xv)), atol, rtol)
                    for k, v in source.items():
                        check["outputs"][k]["max_abs_diff_source"] = v["max_abs_diff"]
            result.checks.append(check)
        result.seconds_verify = time.perf_counter() - start
    finally:
        model.train(was_training)

    result.verified = True
    result.verify_shape = result.checks[0]["shape"]
    result.runtime = "onnxruntime CPU" if format == "onnx" else "torch.export.load"
    outs = [c["outputs"] for c in result.checks]
    result.max_abs_diff = {n: max(o[n]["max_abs_diff"] for o in outs) for n in names}
    if folded:
        result.max_abs_diff_source = {n: max(o[n]["max_abs_diff_source"] for o in outs) for n in names}
    result.ok = all(max(v["max_abs_diff"], v.get("max_abs_diff_source", 0.0)) <= v["tolerance"]
                    for o in outs for v in o.values())
    (log.info if result.ok else log.warning)(
        "parity at %s (%s, %.1f s): max |diff| %s",
        ", ".join("x".join(map(str, c["shape"])) for c in result.checks), result.runtime,
        result.seconds_verify, ", ".join(f"{k} {v:.1e}" for k, v in result.max_abs_diff.items()))
    return result


def _dims_text(r: ExportResult) -> str:
    if set(r.dynamic_dims) >= {"height", "width"}:
        return (f"dynamic: batch, height >= {r.dynamic_dims['height']}, width >= {r.dynamic_dims['width']}"
                f"; traced at {r.input_shape[-2]}x{r.input_shape[-1]}")
    return "batch dynamic" + (f"; other sizes fixed: {r.static_reason}" if r.static_reason else "")


def format_export(r: ExportResult) -> str:
    """A short human-readable report of an `ExportResult`."""
    def shape(s):
        return "x".join(map(str, s))

    form = "re-parameterized copy" if r.reparameterized else "as given (inference form)"
    lines = [f"exported  {r.path}  ({r.format}, {r.size_bytes / 2**20:.1f} MiB"
             + (f" in {len(r.files)} files" if len(r.files) > 1 else "")
             + f", {r.seconds_export:.1f} s; model: {form})",
             f"input     {r.input_name} {shape(r.input_shape)}  ({_dims_text(r)})"]
    if r.input_contract:
        lines += [f"{'contract' if i == 0 else '':<9} {k}: {v}" for i, (k, v) in enumerate(r.input_contract.items())]
    width = max(len(n) for n in r.output_names)
    for i, (n, s) in enumerate(zip(r.output_names, r.output_shapes)):
        lines.append(f"{'outputs' if i == 0 else '':<9} {n:<{width}} {shape(s)}")
    if not r.verified:
        lines.append("parity    not checked (--no-verify)")
        return "\n".join(lines)
    lines.append(f"parity    vs the PyTorch model ({r.runtime}, {r.seconds_verify:.1f} s), tolerance "
                 f"{r.atol:.0e} + {r.rtol:.0e} x max|output|:")
    for c in r.checks:
        lines.append(f"  at {shape(c['shape'])}")
        for n, v in c["outputs"].items():
            d, tol = v["max_abs_diff"], v["tolerance"]
            line = (f"    {n:<{width}} max |diff| = {d:.1e} (max|output| {v['scale']:.2g}) "
                    f"{'<=' if d <= tol else '>'} {tol:.1e} {'OK' if d <= tol else 'FAIL'}")
            if "max_abs_diff_source" in v:
                s = v["max_abs_diff_source"]
                line += f"   (vs the train form: {s:.1e}{'' if s <= tol else ' FAIL'})"
            lines.append(line)
    lines.append("result    " + ("OK" if r.ok else "FAILED: a difference exceeds its tolerance"))
    return "\n".join(lines)


# ---- int8 deployment: static quantization of the exported ONNX ----------------------------------
# Only the GEMMs (MatMul/Gemm: the blocks' Linear layers, ~87% of the FLOPs) are quantized, weights
# per output channel in int8 and activations in uint8 (the u8 x s8 kernels of x86), in QDQ format;
# the depthwise convs, norms and GELU stay fp32, the same per-op split as the bf16 policy. Measured
# on unireplknet_a at 224 on the project's AVX2 CPU, quantizing the convs too made the model slower
# (their int8 depthwise kernels) and its logits 3x less accurate.
QUANTIZE_OPS = ("MatMul", "Gemm")


@dataclass
class QuantizeResult:
    """An int8 ONNX next to its fp32 source: speed (same run, interleaved medians) and accuracy."""

    path: str
    fp32_path: str
    calibration: str
    calibration_samples: int
    size_bytes: int
    fp32_size_bytes: int
    batch: int
    ms_fp32: float
    ms_int8: float
    eval_source: str
    eval_samples: int
    agreement: float  # share of eval inputs whose top-1 class is the same in int8 and fp32
    rel_error: float  # ||int8 - fp32|| / ||fp32|| over the eval outputs
    top1_fp32: float | None = None  # with labelled held-out data, in percent
    top1_int8: float | None = None

    @property
    def speedup(self) -> float:
        return self.ms_fp32 / self.ms_int8

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), speedup=self.speedup)


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a stack of inputs, one sample per call."""

    def __init__(self, name: str, x):
        self._items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._items, None)

    def rewind(self) -> None:
        """Part of the protocol; min/max calibration reads the samples once."""


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration) -> Path:
    """Static int8 quantization of an exported ONNX file with onnxruntime, calibrated (min/max) on
    `calibration`, an (N, C, H, W) float32 array; writes `out_path` and returns it."""
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise ImportError(f"int8 quantization needs onnxruntime: run `{INSTALL_HINT}`") from e
    import tempfile

    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one input sample")
    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # onnxruntime's symbolic shape inference fails on the dynamo exporter's reductions; ONNX's
        # own shape inference and graph optimisation are enough for quantization
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quietly = logging.getLogger()
        level = quietly.level
        quietly.setLevel(logging.ERROR)  # per-tensor notes ("Axis 1 is out-of-range for norm.weight")
        try:
            quantize_static(str(pre), str(out_path), _Batches(name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZE_OPS))
        finally:
            quietly.setLevel(level)
    return out_path


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_batched(sess, x, batch: int):
    import numpy as np

    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def int8_deployment(fp32_path: str | Path, out_path: str | Path, calibration, eval_x, eval_y=None,
                    batch: int = 8, rounds: int = 5, calibration_source: str = "",
                    eval_source: str = "") -> QuantizeResult:
    """Quantize `fp32_path` to int8 (`quantize_int8`), then run both files with onnxruntime: time a
    batch of `batch` eval inputs (interleaved rounds, medians) and compare the outputs on all of
    `eval_x` (top-1 agreement, relative error, and top-1 accuracy when labels `eval_y` are given)."""
    import numpy as np

    from .bench import interleaved

    out_path = quantize_int8(fp32_path, out_path, calibration)
    fp32, int8 = _session(Path(fp32_path)), _session(out_path)
    name = fp32.get_inputs()[0].name
    xb = eval_x[:batch]
    if len(xb) < batch:  # time a full batch whatever the eval set's size
        xb = np.concatenate([xb] * (batch // max(len(xb), 1) + 1))[:batch]
    t = interleaved({"fp32": lambda: fp32.run(None, {name: xb}), "int8": lambda: int8.run(None, {name: xb})},
                    rounds)
    a, b = _run_batched(fp32, eval_x, batch), _run_batched(int8, eval_x, batch)
    result = QuantizeResult(
        path=str(out_path), fp32_path=str(fp32_path), calibration=calibration_source,
        calibration_samples=len(calibration), size_bytes=out_path.stat().st_size,
        fp32_size_bytes=Path(fp32_path).stat().st_size, batch=batch, ms_fp32=1e3 * t["fp32"],
        ms_int8=1e3 * t["int8"], eval_source=eval_source, eval_samples=len(eval_x),
        agreement=float((a.argmax(-1) == b.argmax(-1)).mean()) if a.ndim == 2 else float("nan"),
        rel_error=float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30)))
    if eval_y is not None and a.ndim == 2:
        y = np.asarray(eval_y)
        result.top1_fp32 = float((a.argmax(-1) == y).mean() * 100)
        result.top1_int8 = float((b.argmax(-1) == y).mean() * 100)
    log.info("int8: %.1f ms vs fp32 %.1f ms per batch of %d (%.2fx); top-1 agreement %.1f%%",
             result.ms_int8, result.ms_fp32, batch, result.speedup, 100 * result.agreement)
    return result


def quantization_inputs(source: str | Path, model: nn.Module, data: str | Path | None,
                        input_size, calibration_samples: int = 64, eval_samples: int = 256,
                        seed: int = 0) -> dict[str, Any]:
    """Calibration and held-out inputs for `int8_deployment`.

    With `data` (a class-per-folder dataset or CSV, read with the checkpoint's recorded
    preprocessing when `source` was written by `largekernel train`, else the image defaults at
    `input_size`): the samples alternate between calibration (the first `calibration_samples`
    even-numbered ones) and held-out evaluation (odd-numbered, at most `eval_samples`), so each
    class is in both and no evaluated sample was calibrated on. Labels are returned only when the
    model's classes are the dataset's (a checkpoint from `largekernel train`). Without `data`:
    random N(0, 1) inputs for both, which the result says."""
    import numpy as np

    h, w = _hw(input_size) if input_size is not None else default_input_size(model)
    in_chans = int(getattr(model, "in_chans", 3))
    if data is None:
        gen = torch.Generator().manual_seed(seed)
        calib = torch.randn(calibration_samples, in_chans, h, w, generator=gen).numpy()
        held = torch.randn(min(eval_samples, 32), in_chans, h, w, generator=gen).numpy()
        log.warning("int8 calibration on random N(0,1) inputs (no --data given): activation ranges "
                    "will not match real data; give --data DIR for a calibration set")
        return dict(calibration=calib, eval_x=held, eval_y=None,
                    calibration_source=f"{calibration_samples} random N(0,1) inputs (no data given)",
                    eval_source="random N(0,1) inputs")
    from ..engine.config import TrainConfig
    from ..engine.inference import load_trained
    from ..modalities import collate, get_modality
    from ..models.checkpoint import read_metadata

    recorded = Path(source).is_file() and "train_config" in read_metadata(source)
    if recorded:
        trained = load_trained(source)
        cfg, modality, classes = trained.cfg, trained.modality, trained.classes
    else:
        cfg, modality, classes = TrainConfig(input_size=h, in_chans=in_chans), get_modality("image"), None
    cfg = dataclasses.replace(cfg, val=str(data), train=None, classes=classes)
    dataset = modality.datasets(cfg, train=False).val
    n = min(len(dataset), 2 * max(calibration_samples, eval_samples))
    batch = collate([dataset[i] for i in range(n)])
    if batch["x"] is None or len(batch["x"]) < 2:
        raise ValueError(f"{data}: fewer than 2 readable samples; int8 calibration and the held-out "
                         "check need at least one each")
    x, y = batch["x"].float().numpy(), batch["y"].numpy()
    calib, held, held_y = x[0::2][:calibration_samples], x[1::2][:eval_samples], y[1::2][:eval_samples]
    return dict(calibration=np.ascontiguousarray(calib), eval_x=np.ascontiguousarray(held),
                eval_y=held_y if recorded else None,
                calibration_source=f"{len(calib)} samples of {data}",
                eval_source=f"{len(held)} held-out samples of {data}"
                + ("" if recorded else " (no labels: the model's classes are not the folder's)"))


def format_quantize(r: QuantizeResult) -> str:
    """The int8 file, its speed next to the fp32 file's and the accuracy change."""
    lines = [f"int8      {r.path}  ({r.size_bytes / 2**20:.1f} MiB, "
             f"fp32 {r.fp32_size_bytes / 2**20:.1f} MiB; "
             f"GEMMs int8, calibrated on {r.calibration})",
             f"speed     onnxruntime CPU, batch {r.batch}: int8 {r.ms_int8:.1f} ms, fp32 {r.ms_fp32:.1f} ms "
             f"({r.speedup:.2f}x{'' if r.speedup > 1 else ': int8 is NOT faster here'})",
             f"accuracy  on {r.eval_source}: top-1 agreement with fp32 {100 * r.agreement:.1f}%, "
             f"relative output error {r.rel_error:.2e}"]
    if r.top1_fp32 is not None:
        lines.append(f"          top-1 fp32 {r.top1_fp32:.2f}% -> int8 {r.top1_int8:.2f}% "
                     f"({r.top1_int8 - r.top1_fp32:+.2f} points)")
    return "\n".join(lines)
