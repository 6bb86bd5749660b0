"""int8 deployment (`largekernel export --quantize int8`): onnxruntime static quantization of the
exported ONNX's GEMMs, calibrated on a data folder or random inputs, timed and compared with fp32.

Accuracy bound: min/max calibration gives each quantized activation a step of range/255 (uint8)
and each weight row a step of max|w|/127 (int8, per output channel); rounding to nearest errs by at
most half a step. With activation ranges up to ~8x their RMS, one GEMM's relative output error is
at most ~8/510 + 1/254 ~ 2e-2; the tiny model quantizes 11 GEMMs in series (2 per block, the
head), adding in quadrature: sqrt(11) x 2e-2 = 6.6e-2 < 0.1, the bound asserted on inputs inside
the calibrated ranges.
"""
import json

import numpy as np
import onnx
import pytest
import torch

import largekernel as lk
from largekernel.layers import simulate_trained_statistics
from largekernel.tools.export import (QUANTIZE_OPS, export_model, format_quantize, int8_deployment,
                                      quantization_inputs)
from clitools import run_cli
from goldens import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = simulate_trained_statistics(TINY.create().eval(), 3)
    path = tmp_path_factory.mktemp("int8") / "tiny.onnx"
    export_model(model, path, input_size=32, verify=False)
    return model, path


def write_images(root, per_class=4, size=32):
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.randint(0, 255, (size, size, 3)).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def test_int8_from_random_calibration_within_bound(exported, tmp_path):
    model, path = exported
    inputs = quantization_inputs("tiny", model, None, 32, calibration_samples=8, eval_samples=8)
    assert inputs["calibration"].shape == (8, 3, 32, 32) and "random" in inputs["calibration_source"]
    # evaluated on the calibration inputs: every activation inside its calibrated range, where the
    # bound holds (held-out inputs may exceed a range and be clipped: no bound for those)
    inputs["eval_x"] = inputs["calibration"]
    r = int8_deployment(path, tmp_path / "tiny.int8.onnx", batch=4, rounds=1, **inputs)
    assert 1e-5 < r.rel_error < 0.1, r.rel_error
    assert r.size_bytes < r.fp32_size_bytes and r.ms_int8 > 0 and r.ms_fp32 > 0
    graph = onnx.load(r.path).graph
    gemms = [n for n in graph.node if n.op_type in QUANTIZE_OPS]
    dequant_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert gemms and all(set(n.input[:2]) <= dequant_out for n in gemms)  # both GEMM operands int8
    assert not any(n.op_type == "Conv" and set(n.input[:1]) <= dequant_out for n in graph.node)
    text = format_quantize(r)
    assert "random N(0,1)" in text and "top-1 agreement" in text and "ms" in text


def test_int8_calibration_from_a_data_folder_holds_samples_out(exported, tmp_path):
    model, path = exported
    data = write_images(tmp_path / "data")
    inputs = quantization_inputs("tiny", model, data, 32, calibration_samples=3, eval_samples=10)
    # 8 images, alternating: calibration takes even-numbered (3 of 4), held-out the 4 odd-numbered
    assert len(inputs["calibration"]) == 3 and len(inputs["eval_x"]) == 4
    assert inputs["eval_y"] is None and "no labels" in inputs["eval_source"]
    r = int8_deployment(path, tmp_path / "q.int8.onnx", batch=2, rounds=1, **inputs)
    # 3 calibration images cannot cover every held-out activation range (clipping): no bound, but
    # the int8 outputs must still track the fp32 ones
    assert r.calibration_samples == 3 and r.eval_samples == 4 and r.rel_error < 0.5


def test_cli_export_quantize(tmp_path):
    out = tmp_path / "a.onnx"
    code, stdout, err = run_cli(["export", TINY.file("train.pth"), "--model", "unireplknet_a", "-o", out,
                                 "--input-size", "32", "--quantize", "int8", "--calib-samples", "4",
                                 "--no-verify", "--json"])
    assert code == 0, err[-2000:]
    r = json.loads(stdout)["int8"]
    assert r["path"] == str(tmp_path / "a.int8.onnx") and r["calibration_samples"] == 4
    assert "random N(0,1) inputs (no --data given)" in err
    code, _, err = run_cli(["export", "unireplknet_a", "-o", tmp_path / "a.pt2", "--quantize", "int8"])
    assert code == 2 and "--quantize int8 quantizes an ONNX file" in err


def test_export_of_a_bf16_model_is_fp32(tmp_path):
    torch.manual_seed(0)
    model = simulate_trained_statistics(TINY.create().eval(), 4)
    lk.set_precision(model, "bf16")
    r = export_model(model, tmp_path / "m.onnx", input_size=32)
    assert r.ok and max(r.max_abs_diff.values()) <= 1e-4  # against the fp32 model, not bf16
    graph = onnx.load(r.path).graph
    assert not any(n.op_type == "Cast" and any(a.i == onnx.TensorProto.BFLOAT16 for a in n.attribute)
                   for n in graph.node)
    assert lk.get_precision(model).precision == "bf16"  # the caller's model is left as it was
