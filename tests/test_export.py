"""Export to ONNX / torch.export with a dynamic batch, and parity of the exported files.

Every artefact is run (onnxruntime on CPU, `torch.export.load`) at a batch size other than the one
it was exported with, and compared with the train-form model in eval mode within 1e-4 (fp32).
"""
from __future__ import annotations

import json
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
from largekernel.tools.export import ExportResult, export_model, format_export, run_artefact
from goldens import GOLDEN_PARAMS, TINY, golden_param

ATOL = 1e-4
SIZE = 64


def trained_like(name: str, **kwargs) -> lk.UniRepLKNet:
    """A train-form model whose BN/GRN/layer-scale values are random, so the fold does real work."""
    torch.manual_seed(0)
    return simulate_trained_statistics(lk.create_model(name, **kwargs)).eval()


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
    assert r.input_shape == [2, 3, SIZE, SIZE] and r.verify_shape[0] == 3
    assert r.output_names == ["logits"] and r.output_shapes == [[2, 1000]]
    assert 0 <= r.max_abs_diff["logits"] <= ATOL and 0 <= r.max_abs_diff_source["logits"] <= ATOL
    assert r.files == [r.path] and r.size_bytes > 15 * 2**20  # weights inline, one file
    # our own run, at batch 1 and 5, against the train form
    for b in (1, 5):
        x = torch.randn(b, 3, SIZE, SIZE)
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
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert [o.name for o in model.graph.output] == ["logits"]
    # every depthwise conv is one merged KxK kernel: A has 10 blocks with 13x13, 2 with 3x3
    kernels = depthwise_kernels(onnx_a.path)
    assert kernels == expected_kernels(model_a)
    assert Counter(k for _, k in kernels) == {13: 10, 3: 2}


def test_torch_export_parity(model_a, tmp_path):
    r = export_model(model_a, tmp_path / "a.pt2", "torch-export", input_size=SIZE, batch=2)
    assert r.ok is True and r.format == "torch-export" and r.reparameterized
    assert r.max_abs_diff["logits"] <= ATOL and r.max_abs_diff_source["logits"] <= ATOL
    ep = torch.export.load(str(tmp_path / "a.pt2"))
    module = ep.module()
    for b in (1, 4):
        x = torch.randn(b, 3, SIZE, SIZE)
        with torch.no_grad():
            got, want = module(x), model_a(x)
        assert got.shape == (b, 1000) and (got - want).abs().max() <= ATOL
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
    x = torch.randn(3, 3, SIZE, SIZE)
    outs = ort_run(r.path, x)
    with torch.no_grad():
        want = model(x)
    assert [o.shape[0] for o in outs] == [3] * 4
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
    r = ExportResult(path="m.onnx", format="onnx", input_name="input", input_shape=[2, 3, 64, 64],
                     output_names=["logits"], output_shapes=[[2, 10]], verified=True,
                     verify_shape=[3, 3, 64, 64], runtime="onnxruntime CPU",
                     max_abs_diff={"logits": 3.1e-6}, ok=True)
    assert json.loads(json.dumps(r.to_dict()))["max_abs_diff"] == {"logits": 3.1e-6}
    assert "logits max |diff| = 3.1e-06 <= 1e-04 OK" in format_export(r)
    r.max_abs_diff, r.ok = {"logits": 2e-3}, False
    assert "max |diff| = 2.0e-03 > 1e-04 FAIL" in format_export(r)


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
    assert "max |diff| = " in out and "<= 1e-04 OK" in out and "result    OK" in out
    # the file holds the checkpoint's weights: it reproduces the model it was saved from
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (run_artefact(tmp_path / "mine.pt2", "torch-export", x)[0] - model_a(x)).abs().max() <= ATOL


@pytest.fixture(params=GOLDEN_PARAMS)
def golden(request):
    return golden_param(request)


def test_cli_authors_checkpoint_reproduces_their_logits(tmp_path, capsys, golden):
    """The authors' train-form .pth -> ONNX -> onnxruntime matches the authors' own outputs (the
    tiny file's custom depths and widths are read off its weights)."""
    out = tmp_path / "official.onnx"
    code = main(["export", str(golden.file("train.pth")), "--model", "unireplknet_a",
                 "-o", str(out), "--input-size", str(SIZE), "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] is True and r["reparameterized"] is True and r["format"] == "onnx"
    io = golden.load("io.pt")
    (y,) = ort_run(out, io["input"])
    assert max_diff(y, io["logits"]) <= ATOL
    (y1,) = ort_run(out, io["input"][:1])  # batch 1 as well
    assert max_diff(y1, io["logits"][:1]) <= ATOL


def test_cli_parity_failure_exits_1_with_numbers(tmp_path, monkeypatch, capsys):
    real = export_mod.run_artefact

    def corrupted(path, fmt, x):  # an exporter bug: the file computes something slightly different
        return [y + 1e-3 for y in real(path, fmt, x)]

    monkeypatch.setattr(export_mod, "run_artefact", corrupted)
    code = main(["export", "unireplknet_a", "-o", str(tmp_path / "a.pt2"), "--input-size", str(SIZE)])
    assert code == 1
    out = capsys.readouterr().out
    assert "logits max |diff| = 1.0e-03 > 1e-04 FAIL" in out and "FAILED" in out


@pytest.mark.parametrize("argv,message", [
    (["unireplknet_a", "-o", "a.pt2", "--format", "onnx"], "ending in .onnx"),
    (["unireplknet_a", "-o", "a.onnx", "--format", "torch-export"], "ending in .pt2"),
    (["unireplknet_a", "-o", "a.tflite"], "cannot tell the format"),
    (["unireplknet_a", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["unireplknet_a", "--batch", "1"], "batch must be >= 2"),
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
