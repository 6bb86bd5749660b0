"""Export to ONNX / torch.export with a dynamic batch, height and width, and parity of the files.

Every artefact is run (onnxruntime on CPU, `torch.export.load`) at batch sizes AND heights/widths
other than the ones it was traced with (traced at 64 x 64; checked at 96 x 80, 50 x 70 and others,
most not multiples of 32), and compared with the train-form model in eval mode. The bar: fp32 on both
sides, different reduction orders, so |diff| <= 1e-5 + 1e-4 x max |output| (`parity_tolerance`,
derived there); the measured differences are ~1e-6 for outputs of magnitude 1-2.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import largekernel as lk
from largekernel.cli import main
from largekernel.layers import simulate_trained_statistics
from largekernel.tools import export as export_mod
from largekernel.models.segmentation import build_segmenter
from largekernel.tools.export import (ExportResult, default_check_sizes, export_model, format_export,
                                      min_dynamic_size, parity_tolerance, parse_size, run_artefact)
from goldens import GOLDEN_PARAMS, OFFICIAL, TINY, golden_param

ATOL = 1e-4  # absolute, for the outputs of magnitude ~1-2 below: >= parity_tolerance(scale ~1)
SIZE = 64
DYNAMIC = {"batch": 1, "height": 33, "width": 33}  # UniRepLKNet: stride 32, so H, W >= 33
CHECKS = [[3, 3, 96, 80], [1, 3, 50, 70]]  # export_model's parity inputs when traced at 2 x 64 x 64
# a small UniRepLKNet (one block per stage; 3x3, 13x13, 13x13, 7x7 kernels) for fast exports
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), kernel_sizes=(3, 13, 13, 7))


def trained_like(name: str, **kwargs) -> lk.UniRepLKNet:
    """A train-form model whose BN/GRN/layer-scale values are random, so the fold does real work."""
    torch.manual_seed(0)
    return simulate_trained_statistics(lk.create_model(name, **kwargs)).eval()


def small_segmenter(num_classes: int = 3) -> nn.Module:
    """A train-form UPerNet on SMALL, heads 16 / 8 wide, random statistics."""
    torch.manual_seed(0)
    model = build_segmenter(**SMALL, num_classes=num_classes, channels=16, aux_channels=8)
    return simulate_trained_statistics(model).eval()


def ort_run(path, x: torch.Tensor) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def depthwise_kernels(path) -> list[tuple[int, int]]:
    """(channels, K) of every ONNX Conv with group == channels (and one input channel per group)."""
    graph = onnx.load(str(path)).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = shapes[node.input[1]]
        if group > 1 and group == w[0] and w[1] == 1:
            assert w[2] == w[3]
            found.append((w[0], w[2]))
    return sorted(found)


def expected_kernels(model: lk.UniRepLKNet) -> list[tuple[int, int]]:
    args = model.model_args
    return sorted((dim, k) for dim, ks in zip(args["dims"], args["kernel_sizes"]) for k in ks)


@pytest.fixture(scope="module")
def model_a():
    return trained_like("unireplknet_a")


@pytest.fixture(scope="module")
def onnx_a(model_a, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "a.onnx"
    before = {k: v.clone() for k, v in model_a.state_dict().items()}
    result = export_model(model_a, path, "onnx", input_size=SIZE, batch=2)
    # the model as given is untouched: still the train form, same weights, still in eval mode
    assert not model_a.deploy and not model_a.training
    assert all(torch.equal(before[k], v) for k, v in model_a.state_dict().items())
    return result


# ---- API -----------------------------------------------------------------------------------------

def test_onnx_classifier_parity_at_other_batch_sizes(model_a, onnx_a):
    r = onnx_a
    assert r.ok is True and r.verified and r.reparameterized
    assert r.input_shape == [2, 3, SIZE, SIZE] and r.dynamic_dims == DYNAMIC and r.static_reason is None
    assert [c["shape"] for c in r.checks] == CHECKS and r.verify_shape == CHECKS[0]
    assert r.output_names == ["logits"] and r.output_shapes == [[2, 1000]]
    assert 0 <= r.max_abs_diff["logits"] <= ATOL and 0 <= r.max_abs_diff_source["logits"] <= ATOL
    for c in r.checks:
        v = c["outputs"]["logits"]
        assert v["tolerance"] == parity_tolerance(v["scale"], 1e-5, 1e-4) and v["max_abs_diff"] <= v["tolerance"]
    assert r.files == [r.path] and r.size_bytes > 15 * 2**20  # weights inline, one file
    # our own run, at batch 1 and 5 and at sizes not traced (the minimum 33, odd, wide), against
    # the train form
    for b, h, w in ((1, SIZE, SIZE), (5, SIZE, SIZE), (2, 33, 129), (1, 117, 45)):
        x = torch.randn(b, 3, h, w)
        (y,) = ort_run(r.path, x)
        with torch.no_grad():
            want = model_a(x)
        assert y.shape == (b, 1000)
        assert max_diff(y, want) <= ATOL


def test_onnx_graph_is_folded_with_dynamic_batch(model_a, onnx_a):
    model = onnx.load(onnx_a.path)
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert "BatchNormalization" not in ops and ops["Conv"] > 0
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    for i in (0, 2, 3):  # symbolic batch, height and width
        assert dims[i].dim_param and not dims[i].dim_value
    assert [o.name for o in model.graph.output] == ["logits"]
    # every depthwise conv is one merged KxK kernel: A has 10 blocks with 13x13, 2 with 3x3
    kernels = depthwise_kernels(onnx_a.path)
    assert kernels == expected_kernels(model_a)
    assert Counter(k for _, k in kernels) == {13: 10, 3: 2}


def test_torch_export_parity(model_a, tmp_path):
    r = export_model(model_a, tmp_path / "a.pt2", "torch-export", input_size=SIZE, batch=2)
    assert r.ok is True and r.format == "torch-export" and r.reparameterized
    assert r.dynamic_dims == DYNAMIC and [c["shape"] for c in r.checks] == CHECKS
    assert r.max_abs_diff["logits"] <= ATOL and r.max_abs_diff_source["logits"] <= ATOL
    ep = torch.export.load(str(tmp_path / "a.pt2"))
    module = ep.module()
    for b, h, w in ((1, SIZE, SIZE), (4, SIZE, SIZE), (2, 100, 36)):
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            got, want = module(x), model_a(x)
        assert got.shape == (b, 1000) and (got - want).abs().max() <= ATOL
    # below the minimum the program refuses the input by name instead of computing something
    with pytest.raises(Exception, match=r">= 33"):
        module(torch.randn(1, 3, 32, SIZE))
    # the exported program has no BatchNorm left
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("batch_norm" in t for t in targets), targets


def test_dense_backbone_onnx_four_outputs(tmp_path):
    model = trained_like("unireplknet_a", features_only=True)
    r = export_model(model, tmp_path / "bb.onnx", "onnx", input_size=SIZE, batch=2)
    assert r.ok is True
    assert r.output_names == ["stage0", "stage1", "stage2", "stage3"]
    assert r.output_shapes == [[2, 40, 16, 16], [2, 80, 8, 8], [2, 160, 4, 4], [2, 320, 2, 2]]
    assert set(r.max_abs_diff) == set(r.output_names) and max(r.max_abs_diff.values()) <= ATOL
    assert r.dynamic_dims == DYNAMIC and [c["shape"] for c in r.checks] == CHECKS
    # stage i is ceil(H / 2^(i+2)) x ceil(W / 2^(i+2)): 50 x 70 -> 13x18, 7x9, 4x5, 2x3
    x = torch.randn(3, 3, 50, 70)
    outs = ort_run(r.path, x)
    with torch.no_grad():
        want = model(x)
    assert [list(o.shape) for o in outs] == [[3, 40, 13, 18], [3, 80, 7, 9], [3, 160, 4, 5], [3, 320, 2, 3]]
    assert max(max_diff(a, b) for a, b in zip(outs, want)) <= ATOL
    graph = onnx.load(r.path).graph
    assert [o.name for o in graph.output] == r.output_names
    assert "BatchNormalization" not in {n.op_type for n in graph.node}


@pytest.mark.slow
def test_t_sized_onnx(tmp_path):
    """UniRepLKNet-T (31M params, 27 blocks, 3x3 and 13x13 blocks mixed in stage 2): 17-22 s to
    build, fold, export and verify on 2 cores, so slow."""
    model = trained_like("unireplknet_t")
    r = export_model(model, tmp_path / "t.onnx", "onnx", input_size=SIZE, batch=2)
    assert r.ok is True and r.max_abs_diff_source["logits"] <= ATOL
    kernels = depthwise_kernels(r.path)
    assert kernels == expected_kernels(model)
    assert Counter(k for _, k in kernels) == {13: 15, 3: 12}


def test_fast_path_modules_are_swapped_for_plain_ones(tmp_path):
    """The hook for fast kernels: a module with `to_plain()` is exported as what it returns."""
    class FastConv(nn.Module):  # stands in for a custom-op kernel: torch.export cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.from_numpy(nn.functional.conv2d(x, self.conv.weight, self.conv.bias,
                                                         padding=1).numpy())

        def to_plain(self):
            return self.conv

    net = nn.Sequential(FastConv(), nn.ReLU())
    with pytest.raises(Exception):
        torch.export.export(net.eval(), (torch.randn(2, 3, 8, 8),))
    r = export_model(net, tmp_path / "n.pt2", "torch-export", input_size=8)
    assert r.ok is True and r.max_abs_diff["logits"] == 0.0
    assert isinstance(net[0], FastConv)  # the model as given is untouched
    with torch.no_grad():
        x = torch.randn(3, 3, 8, 8)
        assert torch.allclose(run_artefact(r.path, "torch-export", x)[0], net(x), atol=ATOL)


@pytest.mark.parametrize("fmt,name,match", [
    ("onnx", "a.pt2", "ending in .onnx"),
    ("torch-export", "a.onnx", "ending in .pt2"),
    ("tflite", "a.tflite", "unknown export format"),
])
def test_bad_format_or_suffix(model_a, tmp_path, fmt, name, match):
    with pytest.raises(ValueError, match=match):
        export_model(model_a, tmp_path / name, fmt)
    assert not (tmp_path / name).exists()


def test_batch_one_is_refused(model_a, tmp_path):
    with pytest.raises(ValueError, match="batch must be >= 2"):
        export_model(model_a, tmp_path / "a.pt2", "torch-export", batch=1)


def test_missing_onnx_dependencies(model_a, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now fails
    with pytest.raises(ImportError, match=r'pip install "largekernel\[export\]"'):
        export_model(model_a, tmp_path / "a.onnx", "onnx")
    assert main(["export", "unireplknet_a", "-o", str(tmp_path / "a.onnx")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the INFO log lines
    assert last.startswith("error: ONNX export needs onnxscript") and 'largekernel[export]' in last


def test_result_json_and_report():
    check = {"shape": [3, 3, 96, 80], "outputs": {"logits": dict(max_abs_diff=3.1e-6, scale=2.0, tolerance=2.1e-4)}}
    r = ExportResult(path="m.onnx", format="onnx", input_name="input", input_shape=[2, 3, 64, 64],
                     output_names=["logits"], output_shapes=[[2, 10]], verified=True,
                     verify_shape=[3, 3, 96, 80], runtime="onnxruntime CPU", dynamic_dims=DYNAMIC,
                     max_abs_diff={"logits": 3.1e-6}, ok=True, checks=[check])
    assert json.loads(json.dumps(r.to_dict()))["max_abs_diff"] == {"logits": 3.1e-6}
    text = format_export(r)
    assert "(dynamic: batch, height >= 33, width >= 33; traced at 64x64)" in text
    assert "tolerance 1e-05 + 1e-04 x max|output|" in text and "  at 3x3x96x80\n" in text
    assert "logits max |diff| = 3.1e-06 (max|output| 2) <= 2.1e-04 OK" in text
    check["outputs"]["logits"]["max_abs_diff"], r.ok = 2e-3, False
    assert "max |diff| = 2.0e-03 (max|output| 2) > 2.1e-04 FAIL" in format_export(r)
    r.dynamic_dims, r.static_reason = {"batch": 1}, "fixed on request"
    assert "(batch dynamic; other sizes fixed: fixed on request)" in format_export(r)


# ---- CLI -----------------------------------------------------------------------------------------

def test_cli_from_model_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["export", "unireplknet_a", "--format", "torch-export", "--features-only",
                 "--in-chans", "1", "--input-size", str(SIZE), "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["path"] == str(tmp_path / "unireplknet_a.pt2") and (tmp_path / "unireplknet_a.pt2").is_file()
    assert r["input_shape"] == [2, 1, SIZE, SIZE] and r["ok"] is True
    assert r["output_names"] == ["stage0", "stage1", "stage2", "stage3"]
    assert max(r["max_abs_diff"].values()) <= ATOL


def test_cli_from_checkpoint_file(model_a, tmp_path, monkeypatch, capsys):
    ckpt = lk.save_checkpoint(model_a, tmp_path / "mine.safetensors")
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(ckpt), "--format", "torch-export", "--input-size", str(SIZE)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "mine.pt2").is_file()  # default OUT: <source stem>.pt2 in the cwd
    assert "input     x 2x3x64x64" in out and "logits 2x1000" in out
    assert "max |diff| = " in out and " OK" in out and "result    OK" in out
    assert "(dynamic: batch, height >= 33, width >= 33; traced at 64x64)" in out
    # the file holds the checkpoint's weights: it reproduces the model it was saved from
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (run_artefact(tmp_path / "mine.pt2", "torch-export", x)[0] - model_a(x)).abs().max() <= ATOL


@pytest.fixture(params=GOLDEN_PARAMS)
def golden(request):
    return golden_param(request)


def test_cli_authors_checkpoint_reproduces_their_logits(tmp_path, capsys, golden):
    """The authors' train-form .pth -> ONNX -> onnxruntime matches the authors' own outputs (the
    tiny file's custom depths and widths are read off its weights). Traced at 48 x 48, so the
    fixture's 64 x 64 inputs are a size the graph was not traced at."""
    out = tmp_path / "official.onnx"
    code = main(["export", str(golden.file("train.pth")), "--model", "unireplknet_a",
                 "-o", str(out), "--input-size", "48", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] is True and r["reparameterized"] is True and r["format"] == "onnx"
    assert r["input_shape"][2:] == [48, 48] and r["dynamic_dims"] == DYNAMIC
    io = golden.load("io.pt")
    (y,) = ort_run(out, io["input"])
    assert max_diff(y, io["logits"]) <= ATOL
    (y1,) = ort_run(out, io["input"][:1])  # batch 1 as well
    assert max_diff(y1, io["logits"][:1]) <= ATOL


def test_cli_parity_failure_exits_1_with_numbers(tmp_path, monkeypatch, capsys):
    real = export_mod.load_artefact

    def corrupted(path, fmt):  # an exporter bug: the file computes something slightly different
        run = real(path, fmt)
        return lambda x: [y + 1e-3 for y in run(x)]

    monkeypatch.setattr(export_mod, "load_artefact", corrupted)
    code = main(["export", "unireplknet_a", "-o", str(tmp_path / "a.pt2"), "--input-size", str(SIZE)])
    assert code == 1
    out = capsys.readouterr().out
    assert re.search(r"logits max \|diff\| = 1\.0e-03 \(max\|output\| [\d.]+\) > 1\.\de-04 FAIL", out)
    assert "FAILED" in out


@pytest.mark.parametrize("argv,message", [
    (["unireplknet_a", "-o", "a.pt2", "--format", "onnx"], "ending in .onnx"),
    (["unireplknet_a", "-o", "a.onnx", "--format", "torch-export"], "ending in .pt2"),
    (["unireplknet_a", "-o", "a.tflite"], "cannot tell the format"),
    (["unireplknet_a", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["unireplknet_a", "--batch", "1"], "batch must be >= 2"),
    (["unireplknet_a", "--check-sizes", "96by80"], "a size is HxW or N"),
    (["unireplknet_a", "--input-size", "64", "--check-sizes", "32x80"], "check size 32x80 is below the "
                                                                       "exported graph's minimum height/width 33"),
    (["unireplknet_a", "--input-size", "64", "--check-sizes", "64x64"], "must differ from the traced size"),
    (["unireplknet_a", "--input-size", "64", "--static-hw", "--check-sizes", "96x80"],
     "check sizes need a dynamic height and width"),
    (["unireplknet_zz"], "unknown model 'unireplknet_zz'"),
    (["missing.pth"], "does not exist"),
    (["AUTHORS"], "does not record its architecture; pass the model name"),
])
def test_cli_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [str(TINY.file("train.pth")) if a == "AUTHORS" else a for a in argv]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not list(tmp_path.iterdir())  # nothing written


# ---- dynamic height and width: rules, fallbacks and failures -------------------------------------

def test_minimum_size_and_default_check_sizes():
    assert min_dynamic_size(lk.create_model("unireplknet_a", **SMALL)) == 33  # stride 32 + 1
    assert min_dynamic_size(small_segmenter()) == 33
    assert min_dynamic_size(nn.Sequential(nn.Conv2d(3, 4, 3))) == 2  # no strides known
    assert default_check_sizes((64, 64), 33) == [(96, 80), (50, 70)]
    assert default_check_sizes((224, 224), 33) == [(336, 280), (175, 246)]
    assert default_check_sizes((40, 40), 33) == [(60, 50), (33, 44)]  # kept >= the minimum
    assert parse_size("96x80") == (96, 80) and parse_size("50") == (50, 50)
    for bad in ("96x", "0x5", "1x2x3", "big"):
        with pytest.raises(ValueError, match="a size is HxW or N"):
            parse_size(bad)
    assert parity_tolerance(2.0, 1e-5, 1e-4) == pytest.approx(2.1e-4)


def test_deploy_form_classifier_torch_export(tmp_path):
    """A model given already folded is exported as it is; parity at two untraced sizes."""
    model = lk.reparameterize(trained_like("unireplknet_a", **SMALL, num_classes=7))
    r = export_model(model, tmp_path / "d.pt2", "torch-export", input_size=SIZE)
    assert r.ok is True and not r.reparameterized and r.max_abs_diff_source is None
    assert r.dynamic_dims == DYNAMIC and [c["shape"] for c in r.checks] == CHECKS
    assert r.max_abs_diff["logits"] <= ATOL
    x = torch.randn(2, 3, 41, 77)
    with torch.no_grad():
        assert (run_artefact(r.path, "torch-export", x)[0] - model(x)).abs().max() <= ATOL


@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torch-export", "pt2")])
def test_segmenter_export_dynamic_logits_at_input_size(tmp_path, fmt, suffix):
    """A train-form segmenter (given in train mode): exported in eval form, whose output is the
    logits resized to the input's H x W; the final resize and the pyramid pooling stay symbolic."""
    model = small_segmenter().train()
    r = export_model(model, tmp_path / f"seg.{suffix}", fmt, input_size=SIZE)
    assert model.training and not model.deploy  # given back as it came
    assert r.ok is True and r.reparameterized and r.dynamic_dims == DYNAMIC
    assert r.output_names == ["logits"] and r.output_shapes == [[2, 3, SIZE, SIZE]]
    assert [c["shape"] for c in r.checks] == CHECKS
    assert max(r.max_abs_diff["logits"], r.max_abs_diff_source["logits"]) <= ATOL
    model.eval()
    for b, h, w in ((2, 33, 47), (1, 130, 90)):  # the minimum, and sizes not multiples of 32
        x = torch.randn(b, 3, h, w)
        (got,) = run_artefact(r.path, fmt, x)
        with torch.no_grad():
            want = model(x)
        assert got.shape == (b, 3, h, w) and (got - want).abs().max() <= ATOL
    if fmt == "onnx":
        graph = onnx.load(r.path).graph
        dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
                for t in (graph.input[0], graph.output[0])]
        assert dims == [["batch", 3, "height", "width"], ["batch", 3, "height", "width"]]


def test_static_hw_on_request_and_below_the_minimum(tmp_path, caplog):
    model = trained_like("unireplknet_a", **SMALL)
    r = export_model(model, tmp_path / "s.onnx", "onnx", input_size=40, dynamic_hw=False)
    assert r.ok is True and r.dynamic_dims == {"batch": 1} and r.static_reason.startswith("fixed on request")
    assert [c["shape"] for c in r.checks] == [[3, 3, 40, 40]]  # the traced size, another batch
    dims = onnx.load(r.path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 40, 40]
    with pytest.raises(Exception):  # onnxruntime refuses another size
        ort_run(r.path, torch.randn(1, 3, 48, 48))
    # an example below 33 px: H and W stay fixed, with the reason in the log and the result
    with caplog.at_level("WARNING"):
        r = export_model(model, tmp_path / "t.pt2", "torch-export", input_size=32)
    assert r.ok is True and r.dynamic_dims == {"batch": 1}
    assert "at least 33 px" in r.static_reason and "at least 33 px" in caplog.text
    assert "other sizes fixed: the example input is 32x32" in format_export(r)
    with pytest.raises(ValueError, match=r"cannot export with a dynamic height and width: the example "
                                         r"input is 32x32.*at least 33 px.*--input-size, e.g. 64"):
        export_model(model, tmp_path / "u.pt2", "torch-export", input_size=32, dynamic_hw=True)
    assert not (tmp_path / "u.pt2").exists()


def test_non_image_input_keeps_its_sizes(tmp_path):
    """A 3-D input (N x L x C, as the time-series plug-in's) has no height and width to free."""
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU()).eval()

    def example(n, generator):
        return torch.randn(n, 24, 6, generator=generator)

    r = export_model(net, tmp_path / "n.pt2", "torch-export", example=example)
    assert r.ok is True and r.dynamic_dims == {"batch": 1} and "3-D" in r.static_reason
    with pytest.raises(ValueError, match="the input is 3-D, not N x C x H x W"):
        export_model(net, tmp_path / "m.pt2", "torch-export", example=example, dynamic_hw=True)


def test_a_model_that_fixes_its_size_gets_a_clear_error(tmp_path):
    """Flattening a feature map into a Linear layer bakes H and W in: the file cannot take other
    sizes, and the parity check says so and what to do (instead of a deep runtime trace)."""
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.fc = nn.Linear(4 * 20 * 20, 3)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(ValueError, match=r"fails at input 3x3x60x50 .*fixed height and width \(--static-hw"):
        export_model(Flat().eval(), tmp_path / "f.pt2", "torch-export", input_size=40)
    r = export_model(Flat().eval(), tmp_path / "g.pt2", "torch-export", input_size=40, dynamic_hw=False)
    assert r.ok is True


def mmseg_checkpoint(model: nn.Module, path):
    """`model` saved the way an mmseg 0.x run saves (meta, state_dict, optimizer)."""
    meta = {"CLASSES": tuple(f"c{i}" for i in range(model.num_classes)), "mmseg_version": "0.27.0"}
    torch.save({"meta": meta, "state_dict": model.state_dict(),
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def test_cli_exports_an_mmseg_segmenter_checkpoint(tmp_path, capsys):
    """An mmseg-layout UPerNet-A checkpoint (heads 16 / 8 wide) -> .pt2 from the CLI: the variant,
    classes and head widths are read off the file; the program takes other sizes."""
    torch.manual_seed(0)
    depths, dims = lk.models.unireplknet.VARIANTS["unireplknet_a"]
    model = simulate_trained_statistics(build_segmenter(depths, dims, num_classes=3, channels=16,
                                                        aux_channels=8)).eval()
    ckpt = mmseg_checkpoint(model, tmp_path / "seg.pth")
    out = tmp_path / "seg.pt2"
    assert main(["export", str(ckpt), "-o", str(out), "--input-size", "48", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] is True and r["reparameterized"] is True and r["dynamic_dims"] == DYNAMIC
    assert r["output_names"] == ["logits"] and r["output_shapes"] == [[2, 3, 48, 48]]
    assert [c["shape"] for c in r["checks"]] == [[3, 3, 72, 60], [1, 3, 37, 53]]
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        assert (run_artefact(out, "torch-export", x)[0] - model(x)).abs().max() <= ATOL
    assert main(["export", str(ckpt), "--features-only"]) == 2
    assert "is a segmenter (UPerNet) checkpoint; --features-only" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.shared
def test_cli_official_segmenter_fixture_reproduces_mmseg_logits(tmp_path, capsys):
    """The authors' mmseg fixture -> ONNX traced at 64 x 64 -> onnxruntime at the fixture's 2 x 96 x
    128 and 1 x 100 x 140 reproduces mmseg's logits. Bar: the fixture's 1e-5 (eager vs mmseg) plus
    the export's parity_tolerance at logits of magnitude ~2. ~60 s on 2 busy cores, so slow."""
    folder = OFFICIAL
    if not (folder / "upernet_unireplknet_a_mmseg.pth").is_file():
        pytest.skip(f"{folder} is absent (a clone of the repository alone): the same path ran on a "
                    "synthetic mmseg file in test_cli_exports_an_mmseg_segmenter_checkpoint")
    out = tmp_path / "seg.onnx"
    assert main(["export", str(folder / "upernet_unireplknet_a_mmseg.pth"), "-o", str(out),
                 "--input-size", "64", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] is True and r["output_shapes"] == [[2, 7, 64, 64]]
    io = torch.load(folder / "upernet_unireplknet_a_io.pt", map_location="cpu", weights_only=True)
    for x, want in ((io["input"], io["logits"]), (io["input_odd"], io["logits_odd"])):
        (y,) = ort_run(out, x)
        bar = 1e-5 + parity_tolerance(float(want.abs().max()), 1e-5, 1e-4)
        assert y.shape == tuple(want.shape) and max_diff(y, want) <= bar
