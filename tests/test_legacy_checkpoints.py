"""Checkpoints written by an earlier version (one per modality, tests/fixtures/legacy/) still load,
evaluate and predict, with the numbers that version printed (expected.json, recorded by it).

The fixtures were trained with `unireplknet_a` shrunk to depths (1,1,1,1) / dims (8,16,32,64) so
each file is a few hundred KB; the tests shrink it the same way. Tolerance: the numbers are float32
forward passes of the same weights on the same inputs; 1e-4 relative covers a different BLAS's
summation order (the passes have a few hundred terms per dot product, each rounding at 6e-8).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from largekernel.models import unireplknet
from clitools import run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
MODALITIES = ("image", "audio", "timeseries", "pointcloud", "video")
REL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def tiny_variant(monkeypatch):
    """The fixtures' architecture: unireplknet_a shrunk (see the module docstring)."""
    monkeypatch.setitem(unireplknet.VARIANTS, "unireplknet_a", ((1, 1, 1, 1), (8, 16, 32, 64)))


def write_data(root: Path) -> dict[str, tuple[Path, Path]]:
    """Per modality: (data to evaluate, one file to predict), written deterministically."""
    from largekernel.modalities.clips_data import make_clips
    from largekernel.modalities.series_data import make_series, write_series_csv
    from largekernel.modalities.shapes_data import make_shapes

    rng = np.random.RandomState(0)
    for c in ("a", "b"):
        (root / "img" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.randint(0, 255, (40, 36), dtype=np.uint8), "L").save(root / "img" / c / f"{i}.png")
    t = np.arange(16000) / 16000
    for k, c in enumerate(("high", "low")):
        (root / "aud" / c).mkdir(parents=True)
        for i in range(3):
            wave = 0.5 * np.sin(2 * np.pi * (310 * (k + 1) + 20 * i) * t)
            sf.write(root / "aud" / c / f"s{i}_nohash_0.wav", wave.astype(np.float32), 16000)
    times, values = make_series(200, 2, 2)
    series = write_series_csv(root / "s.csv", times, values, ["s0", "s1"])
    shapes = make_shapes(root / "shapes", 2, 1, "off")
    clips = make_clips(root / "clips", 1, 4, 32, 1, "motion")
    return {"image": (root / "img", root / "img" / "a" / "0.png"),
            "audio": (root / "aud", root / "aud" / "low" / "s1_nohash_0.wav"),
            "timeseries": (series, series),
            "pointcloud": (shapes, next((shapes / "torus" / "test").glob("*.off"))),
            "video": (clips, clips / "up" / "000.mp4")}


def legacy_results(name: str, data: Path, file: Path, out: Path) -> dict:
    """`eval --json` and `predict --json` of the fixture for `name` (numbers only)."""
    ckpt = FIXTURES / f"{name}.safetensors"
    code, text, err = run_cli(["eval", ckpt, "--data", data, "--output", out / "eval", "--json"])
    assert code == 0, err
    metrics = json.loads(text)
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or k in ("per_class", "copy_top1")}
    code, text, err = run_cli(["predict", file, "--checkpoint", ckpt, "--output", out / "pred", "--json"])
    assert code == 0, err
    pred = json.loads(text)[0]
    pred = ({"top": [[t["label"], t["prob"]] for t in pred["top"]]} if "top" in pred
            else {"forecast": pred["forecast"]})
    return {"eval": keep, "predict": pred}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return write_data(tmp_path_factory.mktemp("legacy_data"))


def close(a, b) -> bool:
    """Equal structure and strings, numbers within REL (relative, absolute near 0)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, str):
        return a == b
    return math.isclose(a, b, rel_tol=REL, abs_tol=REL)


@pytest.mark.parametrize("name", MODALITIES)
def test_legacy_checkpoint_loads_evaluates_and_predicts(name, data, tmp_path):
    expected = json.loads((FIXTURES / "expected.json").read_text())[name]
    got = legacy_results(name, *data[name], tmp_path)
    for key, value in expected["eval"].items():
        assert close(value, got["eval"].get(key)), (key, value, got["eval"].get(key))
    assert set(got["eval"]) == set(expected["eval"])
    assert close(expected["predict"], got["predict"]), (expected["predict"], got["predict"])


# ---------------------------------------------------------------------------- export through the plug-in

EXPORT_INPUT = {"image": [2, 1, 32, 32], "audio": [2, 1, 32, 40], "video": [2, 3, 64, 64],
                "timeseries": [2, 24, 6], "pointcloud": [2, 32, 3]}


@pytest.mark.parametrize("name", [pytest.param("image", marks=pytest.mark.slow), "audio", "video",
                                  "timeseries", "pointcloud"])
def test_export_runs_the_plugins_model_at_its_input_with_onnxruntime_parity(name, tmp_path):
    """The whole model (front end and head included) at the input it was trained on (audio: 32
    frames x 40 mel bins; video: a 2 x 2 mosaic of 32-px frames; time series: 24 steps x (2 + 4);
    point clouds: 32 points), folded, run by onnxruntime at batch 3 (and, for the 64-px video
    mosaic, at two other heights and widths) within the fp32 tolerance of PyTorch; the input
    contract is in the file's metadata."""
    import onnx

    out = tmp_path / f"{name}.onnx"
    code, text, err = run_cli(["export", FIXTURES / f"{name}.safetensors", "-o", out, "--json"])
    assert code == 0, err
    result = json.loads(text)
    assert result["ok"] and result["reparameterized"] and result["input_shape"] == EXPORT_INPUT[name]
    shape = EXPORT_INPUT[name]
    if len(shape) == 4 and min(shape[2:]) >= 33:  # an image-shaped input: H and W dynamic, checked
        assert result["dynamic_dims"] == {"batch": 1, "height": 33, "width": 33}  # at other sizes
        assert result["verify_shape"] == [3, shape[1], round(1.5 * shape[2]), round(1.25 * shape[3])]
    else:  # smaller than the minimum dynamic size (33) or not N x C x H x W: fixed H, W
        assert result["dynamic_dims"] == {"batch": 1} and result["static_reason"]
        assert result["verify_shape"] == [3, *shape[1:]]
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["largekernel.modality"] == name
    assert props["largekernel.input"] == result["input_contract"]["input"]
    assert props["largekernel.preprocessing"] == result["input_contract"]["preprocessing"]


def test_info_report_measures_the_backbone_inside_a_plugins_model(tmp_path):
    code, text, err = run_cli(["info", FIXTURES / "timeseries.safetensors", "--report", tmp_path / "r.md",
                               "--input-size", "64", "--json"])
    assert code == 0, err
    report = json.loads(text)[0]
    assert report["weights"].endswith("(the backbone of its timeseries model)")
    assert report["architecture"]["depths"] == [1, 1, 1, 1] and report["architecture"]["in_chans"] == 1
    assert report["reparam"]["max_rel_err"] < 1e-5  # the reparam CLI's float32 tolerance
