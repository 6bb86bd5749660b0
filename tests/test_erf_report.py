"""ERF analysis (`largekernel.tools.erf`, `largekernel erf`) and the model report (`info --report`)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import largekernel as lk
from largekernel.cli import main
from largekernel.layers import simulate_trained_statistics
from largekernel.tools.erf import (DPI, PANEL_INCHES, THRESHOLDS, area_ratios, compute_erf,
                                   parse_model_spec, plot_erf, rescale)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_force_ratios(a: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """The authors' get_rectangle loop (from side 1), one full sum per square."""
    h, w = a.shape
    out = {}
    for t in thresholds:
        for i in range(max(h, w)):
            sq = a[max(0, h // 2 - i):h // 2 + i + 1, max(0, w // 2 - i):w // 2 + i + 1]
            if sq.sum() / a.sum() > t:
                side = min(2 * i + 1, max(h, w))
                out[t] = (side, min(side, h) / h * min(side, w) / w)
                break
    return out


class ToyNet(nn.Module):
    """forward_features = one 7x7 conv (stride 1) with a known ERF. Output channel 0: +1 on the
    inner 5x5, -0.5 on the border ring; channel 1: the negative (its centre output is < 0 on
    positive inputs, so the score's relu drops it). The relu'd input gradient is the 5x5 square."""

    in_chans = 3

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 7, padding=3, bias=False)
        kernel = torch.full((7, 7), -0.5)
        kernel[1:6, 1:6] = 1.0
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack([kernel, -kernel])[:, None].expand(2, 3, 7, 7))

    def forward_features(self, x):
        return self.conv(x)


class NaNForNegativeCorner(ToyNet):
    """Adds sqrt(x00 * [x00 > 0]): its gradient is NaN (inf * 0) when x[0, 0, 0, 0] <= 0."""

    def forward_features(self, x):
        corner = x[:, :1, :1, :1]
        return self.conv(x) + torch.sqrt(corner * (corner > 0))


# ---- area ratio ----------------------------------------------------------------------------------

def test_area_ratio_centre_pixel_and_known_maps():
    size = 64
    a = np.zeros((size, size))
    a[size // 2, size // 2] = 1.0
    for t, (side, r) in area_ratios(a).items():
        assert side == 1 and r == (1 / size) ** 2, t
    # half the mass in the centre, half 10 px to the right: > 50% needs side 21
    a[size // 2, size // 2 + 10] = 1.0
    got = area_ratios(a)
    assert got[0.2] == got[0.3] == (1, (1 / size) ** 2)
    assert got[0.5] == got[0.99] == (21, (21 / size) ** 2)


@pytest.mark.parametrize("size", [64, 65, 128])
def test_area_ratio_uniform_map_grows_like_sqrt_t(size):
    got = area_ratios(np.ones((size, size)))
    for t in (0.2, 0.3, 0.5):
        side, r = got[t]
        # the smallest odd side with side^2 / size^2 > t
        expected = next(s for s in range(1, size + 1, 2) if s * s / size**2 > t)
        assert side == expected and r == pytest.approx(side**2 / size**2)
        assert t < r <= t + 4 * np.sqrt(t) / size + 4 / size**2
    assert got[0.99][1] == pytest.approx(1.0, abs=2 / size)


def test_area_ratio_matches_the_authors_loop():
    rng = np.random.default_rng(0)
    for shape in [(64, 64), (33, 33), (40, 56)]:
        a = rng.random(shape) ** 8  # peaky, with mass everywhere
        a[shape[0] // 2, shape[1] // 2] += 5
        assert area_ratios(a) == brute_force_ratios(a)


def test_area_ratio_rejects_degenerate_maps():
    with pytest.raises(ValueError, match="zero everywhere"):
        area_ratios(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="non-negative"):
        area_ratios(-np.ones((8, 8)))
    with pytest.raises(ValueError, match="thresholds"):
        area_ratios(np.ones((8, 8)), thresholds=(1.0,))


# ---- the ERF procedure ---------------------------------------------------------------------------

def test_rescale():
    np.testing.assert_allclose(rescale(np.array([[0.0, 9.0], [99.0, 0.0]])), [[0, 0.5], [1, 0]])
    with pytest.raises(ValueError, match="zero everywhere"):
        rescale(np.zeros((4, 4)))


def test_procedure_on_a_net_with_a_known_erf():
    # ones as input: channel 0's centre output is 25 - 12 > 0, channel 1's is negative; the input
    # gradient is +1 on the inner 5x5 and -0.5 on the ring in each of the 3 channels -> relu,
    # channel sum: 3 on the 5x5 square, 0 elsewhere -> rescaled to exactly 1 and 0
    res = compute_erf(ToyNet(), images=torch.ones(2, 3, 64, 64), size=64)
    square = np.zeros((64, 64))
    square[30:35, 30:35] = 1.0
    np.testing.assert_allclose(res.map, square, atol=1e-12)
    assert res.n_images == 2
    assert res.sides == {0.2: 3, 0.3: 3, 0.5: 5, 0.99: 5}  # 9/25 > 30%, 25/25 > 99%
    assert res.ratios[0.2] == (3 / 64) ** 2 and res.ratios[0.99] == (5 / 64) ** 2


def test_nan_maps_are_skipped():
    x = torch.ones(3, 3, 64, 64)
    x[1, 0, 0, 0] = -1.0  # this image's gradient map is NaN
    res = compute_erf(NaNForNegativeCorner(), images=x, size=64)
    assert res.n_images == 2 and np.isfinite(res.map).all() and res.map.max() == 1.0
    with pytest.raises(ValueError, match="all 1 gradient maps were NaN"):
        compute_erf(NaNForNegativeCorner(), images=x[1:2], size=64)


def test_erf_of_unireplknet_map_and_ratios():
    torch.manual_seed(0)
    model = lk.create_model("unireplknet_a").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = compute_erf(model, n_random=2, size=128, seed=0)
    assert res.map.shape == (128, 128) and res.map.dtype == np.float64
    assert res.map.max() == 1.0 and res.map.min() >= 0.0
    assert res.n_images == 2 and res.size == 128 and res.model == "unireplknet_a"
    rs = [res.ratios[t] for t in THRESHOLDS]
    assert all(0 < r <= 1 for r in rs) and rs == sorted(rs) and rs[0] < rs[-1]
    # the model is left as it was: train mode, trainable, weights untouched (a folded copy ran)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the folded copy computes the same map as the train form
    unfolded = compute_erf(model, n_random=2, size=128, seed=0, fold=False)
    np.testing.assert_allclose(unfolded.map, res.map, atol=1e-5)


def test_large_kernels_give_a_larger_erf_than_3x3():
    # At initialisation the layer scales are 1e-6, so the blocks barely contribute and both nets
    # show the stem/downsampler ERF; with non-trivial statistics the blocks do, and 13x13 reaches
    # much further than 3x3.
    for seed in (0, 1):
        ratios = {}
        for kernels in (None, (3, 3, 3, 3)):
            torch.manual_seed(seed)
            model = simulate_trained_statistics(lk.create_model("unireplknet_a", kernel_sizes=kernels), seed)
            ratios[kernels] = compute_erf(model, n_random=2, size=128, seed=seed).ratios
        large, small = ratios[None], ratios[(3, 3, 3, 3)]
        assert all(large[t] >= small[t] for t in THRESHOLDS), (seed, large, small)
        assert large[0.99] > 1.5 * small[0.99], (seed, large, small)


def test_images_from_a_directory_and_in_chans(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (70, 60), dtype=np.uint8)).save(tmp_path / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    torch.manual_seed(0)
    res = compute_erf(lk.create_model("unireplknet_a"), image_dir=tmp_path, size=64)
    assert res.n_images == 3 and res.map.shape == (64, 64) and "3 images" in res.source
    assert compute_erf(lk.create_model("unireplknet_a"), image_dir=tmp_path, size=64,
                       max_images=2).n_images == 2
    gray = lk.create_model("unireplknet_a", in_chans=1)
    assert compute_erf(gray, image_dir=tmp_path, size=64).map.shape == (64, 64)
    five = lk.create_model("unireplknet_a", in_chans=5)
    assert compute_erf(five, n_random=1, size=64).map.shape == (64, 64)
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        compute_erf(five, image_dir=tmp_path, size=64)
    (tmp_path / "d.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*d\.png"):
        compute_erf(lk.create_model("unireplknet_a"), image_dir=tmp_path, size=64)


def test_model_specs():
    assert parse_model_spec("unireplknet_a") == ("unireplknet_a", None)
    assert parse_model_spec("unireplknet_a:k3") == ("unireplknet_a", (3, 3, 3, 3))
    assert parse_model_spec("unireplknet_t.in1k:k3,5,7,13") == ("unireplknet_t.in1k", (3, 5, 7, 13))
    for bad in ("unireplknet_a:3", "unireplknet_a:k3,3", ":k3", "unireplknet_a:kx"):
        with pytest.raises(ValueError, match="bad model spec"):
            parse_model_spec(bad)


def test_plot_width_per_panel(tmp_path):
    res = compute_erf(ToyNet(), images=torch.ones(1, 3, 64, 64), size=64)
    for n in (1, 3):
        path = plot_erf([res] * n, tmp_path / f"{n}.png")
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.size == (round(n * PANEL_INCHES[0] * DPI), round(PANEL_INCHES[1] * DPI))


# ---- CLI -----------------------------------------------------------------------------------------

def test_cli_erf_png_json_and_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    trained = simulate_trained_statistics(lk.create_model("unireplknet_a"), 0).eval()
    ckpt = lk.save_checkpoint(trained, tmp_path / "a.safetensors")
    out = tmp_path / "erf.png"
    argv = ["erf", "unireplknet_a", "unireplknet_a:k3", "--checkpoint", str(ckpt), "-",
            "--random", "1", "--size", "64", "-o", str(out)]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["spec"] for r in rows] == ["unireplknet_a", "unireplknet_a:k3"]
    assert [r["model"] for r in rows] == ["unireplknet_a (a.safetensors)", "unireplknet_a:k3"]
    assert rows[0]["checkpoint"] == str(ckpt) and rows[1]["checkpoint"] is None
    assert rows[1]["kernel_sizes"] == [[3, 3], [3, 3], [3] * 6, [3, 3]]
    assert rows[0]["kernel_sizes"][1] == [13, 13]
    for r in rows:
        assert r["size"] == 64 and r["n_images"] == 1
        rs = [r["ratios"][str(t)] for t in THRESHOLDS]
        assert all(0 < x <= 1 for x in rs) and rs == sorted(rs)
    # the loaded checkpoint gives the ERF of the model it was saved from
    direct = compute_erf(trained, n_random=1, size=64, seed=0)
    assert rows[0]["ratios"] == {str(t): r for t, r in direct.ratios.items()}
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] == round(2 * PANEL_INCHES[0] * DPI)
    # the table: one row per model, percentages
    assert main(["erf", "unireplknet_a:k3", "--random", "1", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "r(20%)", "r(30%)", "r(50%)", "r(99%)"]
    assert lines[1].split()[0] == "unireplknet_a:k3" and len(lines) == 2
    assert all(re.fullmatch(r"\d+\.\d+%", c) for c in lines[1].split()[1:])


@pytest.mark.parametrize("argv, message", [
    (["--size", "100"], "multiple of 32"),
    (["--images", "{tmp}/missing"], "does not exist"),
    (["--images", "{tmp}/empty"], "no images in"),
    (["--images", "{tmp}/bad", "--size", "64"], "cannot read image {tmp}/bad/broken.png"),
    (["--images", "{tmp}/empty", "--random", "2"], "either --images DIR or --random N"),
    (["--checkpoint", "x.pth", "y.pth"], "one entry per MODEL"),
    (["--kernel-sizes", "3", "3"], "one K or four"),
    (["--kernel-sizes", "4", "--size", "64"], "kernel size 4"),
    (["-o", "{tmp}/erf.jpg"], "ending in .png"),
])
def test_cli_erf_errors(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["erf", "unireplknet_a", *argv]) == 2
    captured = capsys.readouterr()
    last = captured.err.splitlines()[-1]  # after any progress logs
    assert captured.out == "" and "Traceback" not in captured.err
    assert last.startswith("error: ") and message.format(tmp=tmp_path) in last


def test_cli_erf_bad_spec(capsys):
    assert main(["erf", "unireplknet_a:x3"]) == 2
    assert "bad model spec 'unireplknet_a:x3'" in capsys.readouterr().err
    assert main(["erf", "--help"]) == 0
    assert "unireplknet_a:k3" in capsys.readouterr().out


# ---- info --report -------------------------------------------------------------------------------

def test_info_report_markdown(tmp_path, capsys):
    path = tmp_path / "sub" / "a.md"
    assert main(["info", "unireplknet_a", "--report", str(path), "--input-size", "64"]) == 0
    assert capsys.readouterr().out == f"{path}\n"
    text = path.read_text()
    assert "| parameters | 4,649,060 | 4,437,300 |" in text
    assert re.search(r"train form [\d.]+ images/s, deploy form [\d.]+ images/s.*batch 8 at 64x64", text)
    assert "Feature strides 4/8/16/32, channels 40/80/160/320" in text
    rel = float(re.search(r"Max relative error between train form and deploy form: (\S+) ", text).group(1))
    assert 0 < rel <= 1e-5  # after simulate_trained_statistics every fold does real work
    assert "256x256 with 4 random normal images" in text
    assert re.search(r"\| r\(20%\) \| r\(30%\) \| r\(50%\) \| r\(99%\) \|\n\|---\|---\|---\|---\|\n"
                     r"\| [\d.]+% \| [\d.]+% \| [\d.]+% \| [\d.]+% \|", text)
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert images == ["a_unireplknet_a_erf.png"]
    with Image.open(path.parent / images[0]) as img:
        assert img.format == "PNG"


def test_info_report_html_for_a_deploy_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    deploy = lk.reparameterize(simulate_trained_statistics(lk.create_model("unireplknet_a"), 0).eval())
    ckpt = lk.save_checkpoint(deploy, tmp_path / "a_deploy.safetensors")
    path = tmp_path / "a.html"
    assert main(["info", str(ckpt), "--report", str(path), "--input-size", "64", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["architecture"]["form"] == "deploy" and r["throughput"]["train"] is None
    assert r["info"]["params_deploy"] == 4_437_300 and r["reparam"]["max_rel_err"] is None
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<td>4,437,300</td>" in text
    assert "Not applicable: the weights are already in deploy form" in text
    src = re.search(r'<img src="([^"]+)"', text).group(1)
    assert (tmp_path / src).is_file() and "a_deploy" in src


def test_info_report_errors(tmp_path, capsys):
    assert main(["info", "unireplknet_a", "--report", str(tmp_path / "a.txt")]) == 2
    assert "must end in .md" in capsys.readouterr().err
    assert main(["info", "--report", str(tmp_path / "a.md")]) == 2
    assert "name the model(s)" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.pth"), "--report", str(tmp_path / "a.md")]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
