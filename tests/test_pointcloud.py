"""The point-cloud modality: readers for every format on real files, unit-sphere normalisation, FPS
and kNN against reference loops, 3x3 splatting, the view projection, the network (shapes, gradients),
augmentation, both ModelNet40 layouts, test-time copies, bad input, and the CLI end to end
(make-shapes, train, eval, predict). Everything is tiny: UniRepLKNet-A on 32x32 views of 64-128 points.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from largekernel.engine.config import PRESETS, resolve_config
from largekernel.modalities import Skipped, get_modality
from largekernel.modalities.pointcloud import (EXTENT, SPLAT, PointCloudDataset, augment,
                                               farthest_point_sample, knn, load_points,
                                               normalize_unit_sphere, random_rotation,
                                               read_mesh_or_points, rotated_copies, rotation_about,
                                               splat, view_rotations)
from largekernel.modalities.shapes_data import CLASSES, make_shapes
from clitools import run_cli, sub_env

TINY = dict(modality="pointcloud", model="unireplknet_a", input_size=32, num_points=64,
            mesh_points=500, knn=8, views=2, test_copies=3, batch_size=4)


def tiny_cfg(**kw):
    return resolve_config(overrides=dict(TINY, **kw))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """ModelNet mesh layout, 7 classes x 4 shapes (3 train, 1 test), formats off/ply/obj/stl."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), per_class=4, seed=0, fmt="mixed")


def on_box_surface(points: np.ndarray, half: float = 0.5) -> bool:
    """Every point has one coordinate at +-half and none beyond it."""
    a = np.abs(points)
    return bool((a.max(1) <= half + 1e-5).all() and (np.abs(a.max(1) - half) < 1e-5).all())


# ---------------------------------------------------------------------------------------- readers

@pytest.mark.parametrize("ext", ["off", "obj", "ply", "stl"])
def test_mesh_formats_are_sampled_on_the_surface(tmp_path, ext):
    path = tmp_path / f"box.{ext}"
    trimesh.creation.box(extents=[1, 1, 1]).export(path)
    points = read_mesh_or_points(path, mesh_points=300)
    assert points.shape == (300, 3) and points.dtype == np.float32
    assert on_box_surface(points)
    assert np.array_equal(points, read_mesh_or_points(path, mesh_points=300))  # fixed seed


def test_point_files(tmp_path):
    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    normals = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    trimesh.PointCloud(pts).export(tmp_path / "p.ply")
    np.save(tmp_path / "p.npy", np.concatenate([pts, normals], 1))
    np.savetxt(tmp_path / "p.txt", np.concatenate([pts, normals], 1), fmt="%.8f", delimiter=",")
    np.savetxt(tmp_path / "p.xyz", pts, fmt="%.8f")  # whitespace-separated
    assert np.array_equal(read_mesh_or_points(tmp_path / "p.ply", 999), pts)
    assert np.array_equal(read_mesh_or_points(tmp_path / "p.npy", 999), pts)
    np.testing.assert_allclose(read_mesh_or_points(tmp_path / "p.txt", 999), pts, atol=1e-7)
    np.testing.assert_allclose(read_mesh_or_points(tmp_path / "p.xyz", 999), pts, atol=1e-7)


def test_normalize_unit_sphere_is_exact():
    p = torch.randn(500, 3) * torch.tensor([3.0, 0.5, 1.0]) + torch.tensor([10.0, -2.0, 4.0])
    q = normalize_unit_sphere(p)
    assert q.mean(0).abs().max() < 1e-6
    assert abs(q.norm(dim=1).max().item() - 1.0) < 1e-6
    centred = p - p.mean(0)
    torch.testing.assert_close(q, centred / centred.norm(dim=1).max())


def test_load_points_gives_num_points_on_unit_sphere(tmp_path):
    trimesh.creation.icosphere(radius=3.0).export(tmp_path / "s.off")
    p = load_points(tmp_path / "s.off", num_points=100, mesh_points=2000)
    assert p.shape == (100, 3)
    assert abs(p.norm(dim=1).max().item() - 1.0) < 1e-6


# ---------------------------------------------------------------------------------------- FPS, kNN

def test_fps_picks_the_farthest_points():
    line = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0], [5, 0, 0], [7, 0, 0]])
    # from 0: 10 is farthest; then 5 (5 from both); then 2 (distance 2 to 0, 3 to 5) vs 7 (2): 2 first
    assert farthest_point_sample(line, 4).tolist() == [0, 3, 4, 2]
    assert farthest_point_sample(line, 2, start=3).tolist() == [3, 0]


def test_fps_matches_a_reference_loop_and_is_fast():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 150, 3, generator=g)

    def reference(points, k):
        chosen = [0]
        for _ in range(k - 1):
            d = [min(float(((points[i] - points[j]) ** 2).sum()) for j in chosen)
                 for i in range(len(points))]
            chosen.append(int(np.argmax(d)))
        return chosen

    got = farthest_point_sample(p, 20)
    assert got.shape == (3, 20)
    for b in range(3):
        assert got[b].tolist() == reference(p[b], 20)
    big = torch.rand(10000, 3, generator=g)
    start = time.perf_counter()
    farthest_point_sample(big, 1024)
    assert time.perf_counter() - start < 2.0


def test_knn_matches_brute_force():
    p = torch.rand(2, 200, 3, generator=torch.Generator().manual_seed(1))
    idx = knn(p, 7, chunk=2 * 200 * 37)  # several chunks of queries
    brute = torch.cdist(p, p).argsort(dim=-1)[..., :7]
    assert torch.equal(idx, brute)
    assert torch.equal(idx[..., 0], torch.arange(200).expand(2, -1))  # each point is its own nearest


# ---------------------------------------------------------------------------------------- splatting, views

def test_splat_puts_the_kernel_mass_around_one_point():
    values = torch.tensor([[[2.0, -3.0]]])  # B=1, N=1, C=2
    sums, weights = splat(torch.tensor([[[4, 6]]]), values, 10, 12)
    assert sums.shape == (1, 2, 10, 12) and weights.shape == (1, 1, 10, 12)
    expected = torch.zeros(10, 12)
    expected[3:6, 5:8] = SPLAT
    assert torch.equal(weights[0, 0], expected)
    assert torch.equal(sums[0, 0], 2 * expected) and torch.equal(sums[0, 1], -3 * expected)
    assert weights.sum().item() == 1.0
    # at a corner the part of the kernel outside the grid is lost; outside the grid, all of it
    _, corner = splat(torch.tensor([[[0, 0], [10, 3]]]), torch.ones(1, 2, 1), 10, 12)
    assert corner.sum().item() == 9 / 16 and torch.equal(corner[0, 0, :2, :2], SPLAT[1:, 1:])


def test_view_rotations_and_projection():
    r = view_rotations(4, "z")
    assert r.shape == (4, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(4, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(4))
    net = get_modality("pointcloud").build_model(tiny_cfg(views=4), 3)
    e = math.radians(30)
    p = torch.tensor([[[0.0, 0.0, 0.0], [0.6 * EXTENT, 0.0, 0.0], [0.0, 0.0, 0.5 * EXTENT]]])
    pixels, depth = net.project(p)
    assert pixels.shape == (1, 4, 3, 2) and depth.shape == (1, 4, 3)
    assert pixels[0, :, 0].tolist() == [[16, 16]] * 4  # the centre in every view
    assert pixels[0, 0, 1].tolist() == [16, 25]  # +x: right of the centre in view 0 (floor(1.6 * 16))
    assert pixels[0, 1, 1].tolist() == [20, 16]  # view 1 (yaw 90): +x is depth, seen 30 deg from above
    assert abs(depth[0, 1, 1].item() + 0.6 * math.cos(e)) < 1e-6
    row_up = math.floor((1 - 0.5 * math.cos(e)) / 2 * 32)
    assert pixels[0, 0, 2].tolist() == [row_up, 16]  # +z (up): above the centre, foreshortened
    assert abs(depth[0, 0, 2].item() + 0.5 * math.sin(e)) < 1e-6


# ---------------------------------------------------------------------------------------- model

def test_model_shapes_and_gradients_reach_the_point_convs():
    cfg = tiny_cfg(views=3, view_fusion=True)
    net = get_modality("pointcloud").build_model(cfg, 5)
    x = torch.randn(2, 64, 3) * 0.5
    assert net.render(x).shape == (6, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 5)
    out.logsumexp(-1).sum().backward()
    for name in ("point_conv.0.weight", "edge_conv.conv.0.weight", "fusion.weight", "to_rgb.weight"):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert net.head.in_features == 3 * 320  # the views' pooled UniRepLKNet-A features, concatenated


def test_model_without_fusion_and_layer_ids():
    net = get_modality("pointcloud").build_model(tiny_cfg(), 4)
    assert net.fusion is None
    assert net.layer_id("point_conv.0.weight") == 0 and net.layer_id("head.weight") == 13
    assert net.layer_id("backbone.stages.3.0.gamma") == 12
    assert "backbone.stages.0.0.gamma" in net.no_weight_decay()
    with pytest.raises(ValueError, match=r"expects \(B, N, 3\) points"):
        net(torch.randn(2, 3, 64))


def test_reparameterized_model_gives_the_same_outputs():
    import largekernel as lk

    net = get_modality("pointcloud").build_model(tiny_cfg(), 4).eval()
    x = torch.randn(3, 64, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.no_grad():
        torch.testing.assert_close(lk.reparameterize(net)(x), net(x), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------- augmentation

def test_augmentation_ranges_and_reproducibility():
    p = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    scales, shifts = [], []
    for seed in range(300):
        torch.manual_seed(seed)
        q = augment(p, "none", 2)
        shifts.append(q[0])
        scales.append(q[1] - q[0])
    scales, shifts = torch.stack(scales), torch.stack(shifts)
    assert scales.min() >= 2 / 3 - 1e-6 and scales.max() <= 1.5 + 1e-6
    assert scales.min() < 0.7 and scales.max() > 1.45
    assert shifts.abs().max() <= 0.2 + 1e-6 and shifts.min() < -0.18 and shifts.max() > 0.18
    torch.manual_seed(5)
    a = augment(p, "so3", 2)
    torch.manual_seed(5)
    assert torch.equal(a, augment(p, "so3", 2))
    for kind in ("up", "so3"):
        r = random_rotation(kind, 2)
        torch.testing.assert_close(r @ r.T, torch.eye(3))
        assert abs(torch.linalg.det(r).item() - 1) < 1e-5
    up = random_rotation("up", 1)  # about y: y is kept
    assert up[1].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="point_rotation='spin'"):
        random_rotation("spin", 2)


def test_rotated_copies():
    p = torch.randn(10, 3)
    c = rotated_copies(p, 4, 2)
    assert c.shape == (4, 10, 3)
    assert torch.equal(c[0], p)
    torch.testing.assert_close(c[1], p @ rotation_about(2, math.pi / 2).T)
    torch.testing.assert_close(c[2][:, :2], -p[:, :2], atol=1e-6, rtol=0)
    assert torch.equal(c[..., 2], p[:, 2].expand(4, -1))  # the up coordinate is kept


# ---------------------------------------------------------------------------------------- datasets

def test_modelnet_mesh_layout(shapes):
    cfg = tiny_cfg(train=str(shapes))
    data = get_modality("pointcloud").datasets(cfg)
    assert data.classes == list(CLASSES)
    assert len(data.train) == 7 * 3 and len(data.val) == 7
    assert {Path(p).suffix for p, _ in data.train.samples} == {".off", ".ply", ".obj"}
    assert all(Path(p).parent.name == "test" for p, _ in data.val.samples)
    torch.manual_seed(0)
    x, y = data.train[0]
    assert x.shape == (64, 3) and y == 0
    v, y = data.val[6]
    assert v.shape == (3, 64, 3) and y == 6
    assert abs(v[0].norm(dim=1).max().item() - 1) < 1e-6
    torch.testing.assert_close(v[1], v[0] @ rotation_about(2, 2 * math.pi / 3).T)
    assert 0 in data.train.cache  # decoded once, then cached
    evald = get_modality("pointcloud").datasets(tiny_cfg(val=str(shapes), classes=list(CLASSES)),
                                                train=False)
    assert len(evald.val) == 7


def test_resampled_text_layout(tmp_path):
    root = make_shapes(tmp_path / "txt", per_class=4, seed=1, fmt="txt")
    names = ["torus", "box", "sphere", "annulus", "capsule", "cone", "cylinder"]
    (root / "shape_names.txt").write_text("\n".join(names) + "\n")  # the file's order, not sorted
    data = get_modality("pointcloud").datasets(tiny_cfg(train=str(root), up_axis="y"))
    assert data.classes == names
    assert len(data.train) == 21 and len(data.val) == 7
    path, label = data.val.samples[0]
    assert Path(path) == root / "annulus" / "annulus_0004.txt" and label == 3
    assert data.val[0][0].shape == (3, 64, 3)
    (root / "other_test.txt").write_text("box_0004\n")
    with pytest.raises(ValueError, match=r"several test lists \(other_test.txt, shapes_test.txt\)"):
        get_modality("pointcloud").datasets(tiny_cfg(train=str(root)))
    # the real ModelNet40 folder: modelnet40_* files win over modelnet10_* ones
    for old, new in (("shape_names", "shape_names"), ("shapes_train", "train"), ("shapes_test", "test")):
        (root / f"{old}.txt").rename(root / f"modelnet40_{new}.txt")
    (root / "modelnet10_train.txt").write_text("box_0001\n")
    (root / "modelnet40_test.txt").write_text("box_0004\nbox_0099\n")
    with pytest.raises(ValueError, match=r"modelnet40_test.txt lists 1 file\(s\) that do not exist.*0099"):
        get_modality("pointcloud").datasets(tiny_cfg(train=str(root)))
    (root / "modelnet40_test.txt").write_text("box_0004\n")
    (root / "other_test.txt").unlink()
    data = get_modality("pointcloud").datasets(tiny_cfg(train=str(root)))
    assert len(data.train) == 21 and len(data.val) == 1


def test_class_per_folder_layout_is_split(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            np.save(tmp_path / c / f"{i}.npy", np.random.default_rng(i).normal(size=(80, 3)))
    data = get_modality("pointcloud").datasets(tiny_cfg(train=str(tmp_path), val_split=0.2))
    assert data.classes == ["a", "b"] and len(data.train) == 8 and len(data.val) == 2


def test_copies_are_evaluated_per_copy(shapes):
    modality = get_modality("pointcloud")
    cfg = tiny_cfg(val=str(shapes), classes=list(CLASSES))
    data = modality.datasets(cfg, train=False)
    net = modality.build_model(cfg, len(CLASSES))
    metrics = modality.evaluate(net, data.val, cfg, data.classes, torch.device("cpu"))
    assert len(metrics["copy_top1"]) == 3 and metrics["n"] == 7
    assert "mean_class_acc" in metrics


# ---------------------------------------------------------------------------------------- bad input

def test_bad_files_are_named(tmp_path):
    (tmp_path / "empty.off").write_text("")
    with pytest.raises(ValueError, match=r"empty\.off: cannot read mesh"):
        read_mesh_or_points(tmp_path / "empty.off", 100)
    flat = trimesh.Trimesh([[0, 0, 0], [1, 1, 1], [2, 2, 2]], [[0, 1, 2]], process=False)
    flat.export(tmp_path / "flat.off")
    with pytest.raises(ValueError, match=r"flat\.off: degenerate mesh: its 1 faces have zero total area"):
        read_mesh_or_points(tmp_path / "flat.off", 100)
    (tmp_path / "nan.off").write_text("OFF\n3 1 0\n0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n")
    with pytest.raises(ValueError, match=r"nan\.off: 1 of 3 points have NaN or infinite coordinates"):
        read_mesh_or_points(tmp_path / "nan.off", 100)
    (tmp_path / "nan.xyz").write_text("0,0,0\n1,nan,0\n")
    with pytest.raises(ValueError, match=r"nan\.xyz: 1 of 2 points have NaN .* \(first at row 1\)"):
        read_mesh_or_points(tmp_path / "nan.xyz", 100)
    (tmp_path / "short.txt").write_text("0,0,0\n1,2\n")
    with pytest.raises(ValueError, match=r"short\.txt, line 2: 2 value\(s\); expected rows of x,y,z"):
        read_mesh_or_points(tmp_path / "short.txt", 100)
    trimesh.creation.box().export(tmp_path / "box.ply")
    data = (tmp_path / "box.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.ply: cannot read mesh"):
        read_mesh_or_points(tmp_path / "cut.ply", 100)
    (tmp_path / "garbage.stl").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ValueError, match=r"garbage\.stl: empty or unreadable mesh"):
        read_mesh_or_points(tmp_path / "garbage.stl", 100)
    np.save(tmp_path / "same.npy", np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"same\.npy: degenerate point cloud: all 5 points coincide"):
        read_mesh_or_points(tmp_path / "same.npy", 100)
    np.save(tmp_path / "flat.npy", np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"flat\.npy: expected a numeric \(N, 3\+\) array"):
        read_mesh_or_points(tmp_path / "flat.npy", 100)


def test_too_few_points_warns_and_repeats(tmp_path):
    np.save(tmp_path / "few.npy", np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.warns(UserWarning, match=r"few\.npy: 10 points, fewer than num_points=64"):
        p = load_points(tmp_path / "few.npy", 64, 100)
    assert p.shape == (64, 3) and torch.unique(p, dim=0).shape[0] == 10


def test_unreadable_samples_are_skipped_unless_strict(tmp_path):
    (tmp_path / "bad.off").write_text("OFF\n")
    ds = PointCloudDataset([(str(tmp_path / "bad.off"), 0)], ["x"], tiny_cfg(), train=True)
    item = ds[0]
    assert isinstance(item, Skipped) and item.path.endswith("bad.off")
    strict = PointCloudDataset([(str(tmp_path / "bad.off"), 0)], ["x"], tiny_cfg(strict=True), True)
    with pytest.raises(ValueError, match=r"bad\.off"):
        strict[0]


def test_config_errors_and_preset():
    with pytest.raises(ValueError, match="mixup/cutmix are image augmentations"):
        get_modality("pointcloud").prepare_batch(torch.zeros(2, 4, 3), torch.zeros(2).long(), 2,
                                                 tiny_cfg(mixup=0.8), torch.Generator())
    with pytest.raises(ValueError, match="knn=100 exceeds num_points=64"):
        get_modality("pointcloud").build_model(tiny_cfg(knn=100), 3)
    p = PRESETS["modelnet40_s"]
    assert (p["model"], p["num_points"], p["views"], p["input_size"], p["drop_path"], p["smoothing"],
            p["lr"], p["batch_size"], p["epochs"]) == ("unireplknet_s", 4096, 4, 224, 0.4, 0.2, 5e-4, 16, 300)


# ---------------------------------------------------------------------------------------- CLI

def test_cli_make_shapes_train_eval_predict(tmp_path):
    code, out, _ = run_cli(["make-shapes", tmp_path / "shapes", "--per-class", "3", "--format", "mixed"])
    assert code == 0 and out == f"wrote 21 shapes (mixed) in 7 classes to {tmp_path / 'shapes'}\n"
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "largekernel", "train", "--modality", "pointcloud", "--data",
           tmp_path / "shapes", "--model", "unireplknet_a", "--input-size", "32", "--num-points", "64",
           "--mesh-points", "500", "--knn", "8", "--views", "2", "--test-copies", "4", "--epochs", "1",
           "--batch-size", "7", "--warmup-epochs", "0", "--output", run]
    proc = subprocess.run([str(c) for c in cmd], env=sub_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "trained        1 epochs, 2 steps" in proc.stdout
    code, out, _ = run_cli(["eval", run / "last.safetensors", "--data", tmp_path / "shapes"])
    assert code == 0
    assert out.startswith("7 samples: top-1 ")
    assert "test-time copies: 4; top-1 per copy: " in out
    metrics = json.loads((run / "eval.json").read_text())
    assert len(metrics["copy_top1"]) == 4 and metrics["n"] == 7
    shape = next((tmp_path / "shapes" / "torus" / "train").glob("*.ply"))
    (tmp_path / "bad.xyz").write_text("1,2\n")
    code, out, _ = run_cli(["predict", shape, tmp_path / "bad.xyz", "--checkpoint",
                            run / "last.safetensors", "--topk", "3", "--json"])
    assert code == 0
    results = json.loads(out)
    assert [t["label"] in CLASSES for t in results[0]["top"]] == [True] * 3
    probs = [t["prob"] for t in results[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert "bad.xyz, line 1: 2 value(s)" in results[1]["error"]
    code, out, _ = run_cli(["predict", shape, "--checkpoint", run / "last.safetensors", "--topk", "2"])
    assert code == 0 and out.startswith(f"{shape}: ") and out.count("%") == 2
    # reparam folds the backbone inside the point-cloud model; the folded file predicts the same
    code, msg, _ = run_cli(["reparam", run / "last.safetensors", "-o", tmp_path / "deploy.safetensors"])
    assert code == 0 and "(OK, tolerance 1e-5)" in msg
    code, folded, _ = run_cli(["predict", shape, "--checkpoint", tmp_path / "deploy.safetensors", "--topk", "2"])
    assert code == 0 and folded == out
    code, _, err = run_cli(["train", "--modality", "pointcloud", "--data", tmp_path / "nothing",
                            "--output", tmp_path / "r2"])
    assert code == 2 and "nothing does not exist" in err


# ---------------------------------------------------------------------------------------- learning

@pytest.mark.slow
def test_tiny_model_learns_shapes(tmp_path):
    """7 classes (chance 14.3%): a tiny model must reach >= 3x chance on held-out shapes."""
    make_shapes(tmp_path / "shapes", per_class=16, seed=0, fmt="off")
    cmd = [sys.executable, "-m", "largekernel", "train", "--modality", "pointcloud", "--data",
           tmp_path / "shapes", "--model", "unireplknet_a", "--input-size", "32", "--num-points", "128",
           "--mesh-points", "2000", "--knn", "8", "--views", "2", "--test-copies", "2", "--epochs", "8",
           "--batch-size", "8", "--warmup-epochs", "1", "--lr", "2e-3", "--smoothing", "0.1",
           "--output", tmp_path / "run"]
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], env=dict(sub_env(), OMP_NUM_THREADS="2"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    print(f"best top-1 {summary['best_metric']:.1f}% in {time.perf_counter() - start:.0f} s")
    assert summary["best_metric"] >= 3 * 100 / 7
