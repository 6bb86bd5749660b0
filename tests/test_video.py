"""The video modality: PyAV decoding of real files, frame sampling, the two one-image layouts,
multi-clip x multi-crop views, datasets, bad files, and `make-clips` / `train` / `eval` / `predict`
end to end (tiny: 4 frames of 16-32 px, UniRepLKNet-A).
"""
from __future__ import annotations

import json
import time
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from largekernel.engine.config import TrainConfig, resolve_config
from largekernel.models.registry import IMAGENET_MEAN, IMAGENET_STD
from largekernel.modalities import get_modality
from largekernel.modalities.clips_data import CLASSES, make_clips, render_clip, write_video
from largekernel.modalities.video import (ClipTransform, VideoModality, count_frames, crop_positions,
                                          grid_side, layout_clip, load_clip, read_frames,
                                          sample_indices)
from clitools import run_cli, sub_env

TINY = ["--model", "unireplknet_a", "--input-size", "16", "--frames", "4", "--frame-stride", "4",
        "--randaug", "none", "--reprob", "0", "--warmup-epochs", "0", "--lr", "2e-3"]


def cfg(**kw) -> TrainConfig:
    base = dict(modality="video", model="unireplknet_a", input_size=16, frames=4, frame_stride=4,
                crop_pct=1.0, randaug=None, reprob=0.0)
    return resolve_config(overrides={**base, **kw})


def ramp_clip(path: Path, n: int = 12, size: int = 32, codec: str | None = None) -> Path:
    """Solid frames whose red channel is 20 * frame index (green 100, blue 200)."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[..., 0] = (20 * np.arange(n))[:, None, None]
    frames[..., 1], frames[..., 2] = 100, 200
    if codec is None:
        return write_video(path, frames)
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=8)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


# ---------------------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("name, codec", [("a.mp4", None), ("b.webm", "libvpx"), ("c.avi", "mpeg4")])
def test_decode_real_files(tmp_path, name, codec):
    path = ramp_clip(tmp_path / name, codec=codec)
    assert count_frames(path) == 12  # webm has no frame count: counted from packets
    frames = read_frames(path, lambda n: np.array([[0, 5, 11]]))
    assert frames.shape == (1, 3, 32, 32, 3) and frames.dtype == np.uint8
    got = frames[0, :, 16, 16].astype(int)
    want = np.array([[0, 100, 200], [100, 100, 200], [220, 100, 200]])
    assert np.abs(got - want).max() <= 8, got  # codec tolerance (yuv420p)


def test_frame_count_too_high_resamples(tmp_path, monkeypatch):
    """A container announcing more frames than it has: indices are recomputed from what decodes."""
    import largekernel.modalities.video as video

    path = ramp_clip(tmp_path / "a.mp4", n=6)
    monkeypatch.setattr(video, "count_frames", lambda p: 20)
    seen = []
    frames = read_frames(path, lambda n: (seen.append(n), np.array([n - 1]))[1])
    assert seen == [20, 6] and abs(int(frames[0, 0, 0, 0]) - 100) <= 8


# ---------------------------------------------------------------------------------------- sampling

def test_dense_indices():
    assert sample_indices(16, 4, 4, "dense", clips=5).tolist() == [
        [0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [2, 6, 10, 14], [3, 7, 11, 15]]
    assert sample_indices(40, 4, 4, "dense").tolist() == [[13, 17, 21, 25]]  # centred: (40-13)//2
    torch.manual_seed(0)
    starts = {sample_indices(20, 4, 4, "dense", train=True)[0, 0] for _ in range(200)}
    assert starts == set(range(8))  # 0 .. 20 - 13
    torch.manual_seed(3)
    a = sample_indices(20, 4, 4, "dense", train=True)
    torch.manual_seed(3)
    assert (sample_indices(20, 4, 4, "dense", train=True) == a).all()  # only torch's RNG


def test_uniform_indices():
    assert sample_indices(16, 4, 4, "uniform").tolist() == [[2, 6, 10, 14]]
    assert sample_indices(16, 4, 4, "uniform", clips=2).tolist() == [[1, 5, 9, 13], [3, 7, 11, 15]]
    assert sample_indices(100, 4, 1, "uniform").tolist() == [[12, 37, 62, 87]]
    torch.manual_seed(0)
    idx = np.stack([sample_indices(16, 4, 4, "uniform", train=True)[0] for _ in range(100)])
    for i in range(4):  # one frame per segment, anywhere in it
        assert set(idx[:, i]) == set(range(4 * i, 4 * i + 4))


def test_short_clip_loop_pad_and_warning(tmp_path, caplog):
    assert sample_indices(10, 4, 4, "dense").tolist() == [[0, 4, 8, 2]]
    assert sample_indices(10, 4, 4, "dense", short="pad").tolist() == [[0, 4, 8, 9]]
    assert sample_indices(3, 4, 4, "uniform").tolist() == [[0, 1, 1, 2]]
    path = ramp_clip(tmp_path / "short.mp4", n=6)
    with caplog.at_level(logging.WARNING, logger="largekernel.modalities.video"):
        x = load_clip(path, cfg(short_clip="pad"), False)
        load_clip(path, cfg(short_clip="pad"), False)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [f"{path}: 6 frames, fewer than the 13 that dense sampling of 4 frames needs; "
                    "padding with its last frame"]
    # indices [0, 4, 5, 5]: the red channel of the mosaic cells (grid 2 x 2 of 16 px frames)
    red = x[0, 0, [0, 0, 16, 16], [0, 16, 0, 16]] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert np.abs(red.numpy() * 255 - [0, 80, 100, 100]).max() <= 8


# ---------------------------------------------------------------------------------------- layouts

def coded_clip(t: int, h: int, w: int) -> torch.Tensor:
    """(3, T, H, W) whose value encodes (channel, frame, row, column)."""
    c, tt, hh, ww = torch.meshgrid(*(torch.arange(n) for n in (3, t, h, w)), indexing="ij")
    return (c * 1_000_000 + tt * 10_000 + hh * 100 + ww).float()


def test_mosaic_places_frame_t_at_cell_t_div_s_t_mod_s():
    x = coded_clip(9, 5, 7)
    out = layout_clip(x, "mosaic")
    assert out.shape == (3, 15, 21)
    for t in range(9):
        r, c = divmod(t, 3)
        assert torch.equal(out[:, r * 5:(r + 1) * 5, c * 7:(c + 1) * 7], x[:, t])


def test_reshape_is_the_authors_raw_reshape():
    x = coded_clip(16, 8, 8)  # s = 4: each frame fills 8 / 4 = 2 rows of the 32-wide image
    out = layout_clip(x, "reshape")
    assert out.shape == (3, 32, 32)
    for t in range(16):
        for j in range(2):
            for b in range(4):  # row 2t + j, column block b holds the frame's row 4j + b
                assert torch.equal(out[:, 2 * t + j, b * 8:(b + 1) * 8], x[:, t, 4 * j + b])
    batch = torch.stack([x, x + 1])
    assert torch.equal(layout_clip(batch, "reshape"), batch.reshape(2, 3, 32, 32))
    assert torch.equal(layout_clip(batch, "mosaic")[1], layout_clip(x + 1, "mosaic"))
    # the spec's claim at full size: T=16, 224 -> 896, frame t occupies rows 56t .. 56t+55
    big = torch.arange(16).float().view(1, 16, 1, 1).expand(1, 16, 224, 224)
    rows = layout_clip(big, "reshape")[0, :, 0]
    assert rows.shape == (896,) and torch.equal(rows, torch.arange(16).float().repeat_interleave(56))


@pytest.mark.parametrize("frames, hint", [(8, "use frames=4 or frames=9"),
                                          (10, "use frames=9 or frames=16"),
                                          (2, "use frames=1 or frames=4"), (0, "use frames=1")])
def test_frames_must_be_a_square(frames, hint):
    with pytest.raises(ValueError, match=rf"frames={frames} cannot be laid out as one image: .* {hint}$"):
        grid_side(frames)
    assert grid_side(25) == 5


# ---------------------------------------------------------------------------------------- views

def test_crop_positions():
    assert crop_positions(32, 48, 32, 3) == [(0, 0), (0, 8), (0, 16)]  # left / centre / right
    assert crop_positions(50, 32, 32, 3) == [(0, 0), (9, 0), (18, 0)]  # top / centre / bottom
    assert crop_positions(40, 40, 32, 1) == [(4, 4)]


def test_multi_clip_multi_crop_views_and_normalisation():
    # 2 clips x 4 frames of 16 x 24 px; pixel (red, green, blue) = (column, clip*100 + frame, 255)
    frames = np.zeros((2, 4, 16, 24, 3), np.uint8)
    frames[..., 0] = np.arange(24)
    frames[..., 1] = (np.arange(2)[:, None] * 100 + np.arange(4)[None])[:, :, None, None]
    frames[..., 2] = 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    views = ClipTransform(16, 1.0, 0.0, IMAGENET_MEAN, IMAGENET_STD, "mosaic").eval(frames, 3)
    assert views.shape == (6, 3, 32, 32)
    pixels = (views * std + mean) * 255
    for v in range(6):
        clip, crop = divmod(v, 3)  # clip-major
        left = [0, 4, 8][crop]
        assert torch.allclose(pixels[v, 0, 0, :16], torch.arange(left, left + 16).float(), atol=1e-3)
        assert torch.allclose(pixels[v, 1, [0, 0, 16, 16], [0, 16, 0, 16]],
                              torch.tensor([0., 1, 2, 3]) + 100 * clip, atol=1e-3)
    assert torch.allclose(views[:, 2], torch.full_like(views[:, 2], (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]))


def test_training_clip_flip_and_crop_share_one_draw():
    frames = np.random.default_rng(0).integers(0, 256, (1, 4, 20, 20, 3)).astype(np.uint8)
    t = ClipTransform(16, 0.8, 1.0, (0, 0, 0), (1, 1, 1), "mosaic")  # short side 20: no resize
    torch.manual_seed(0)
    x = t.train(frames)
    torch.manual_seed(0)
    top, left = int(torch.randint(0, 5, ())), int(torch.randint(0, 5, ()))
    src = torch.from_numpy(frames[0]).permute(3, 0, 1, 2).float() / 255
    want = src[..., top:top + 16, left:left + 16].flip(-1)  # the same crop and flip for every frame
    assert torch.allclose(x, layout_clip(want, "mosaic"))


# ---------------------------------------------------------------------------------------- datasets

@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips") / "data", per_class=3, frames=16, size=24, seed=0)


def test_make_clips_layout(clips):
    assert sorted(p.name for p in clips.iterdir()) == ["clips.csv", *CLASSES]
    lines = (clips / "clips.csv").read_text().splitlines()
    assert lines[:2] == ["path,label", "down/000.mp4,down"] and len(lines) == 13
    assert count_frames(clips / "up" / "002.mp4") == 16
    # "up": the shape's rows move up over time, "grow": its area increases (within codec error)
    rng = np.random.default_rng(5)
    up = render_clip("up", 16, 32, rng)

    def shape(f):  # the shape differs from the (shaded) background by > 120 summed over RGB
        return np.abs(f.astype(int) - np.median(f, axis=(0, 1))).sum(-1) > 120

    ys = [np.nonzero(shape(f))[0].mean() for f in up]
    assert all(a > b for a, b in zip(ys, ys[1:]))
    grow = render_clip("grow", 16, 32, rng)
    areas = [shape(f).sum() for f in grow]
    assert areas[-1] > 4 * areas[0]


def test_folder_and_csv_datasets(clips, tmp_path):
    m = VideoModality()
    b = m.datasets(cfg(train=str(clips), val_split=0.34))
    assert b.classes == list(CLASSES) and len(b.train) == 8 and len(b.val) == 4
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and y == b.train.targets[0]
    views, _ = b.val[0]
    assert views.shape == (1, 3, 32, 32)  # val_clips x val_crops = 1 x 1
    lists = tmp_path / "lists"
    lists.mkdir()
    rel = os.path.relpath(clips / "down" / "001.mp4", lists)  # relative to the CSV's folder
    (lists / "k.csv").write_text(f"path,label\n{clips}/up/000.mp4,up\n{rel},down\n")
    e = m.datasets(cfg(val=str(lists / "k.csv"), classes=list(CLASSES), test_clips=2, test_crops=3),
                   train=False)
    assert e.train is None and e.val.targets == [3, 0]
    assert e.val[1][0].shape == (6, 3, 32, 32)
    assert Path(e.val.samples[1][0]).resolve() == (clips / "down" / "001.mp4").resolve()


@pytest.mark.parametrize("case, match", [
    ("missing", r"nope does not exist; pass a folder with one subfolder per class or a CSV"),
    ("no_class_dirs", r"no videos found; expected one subfolder per class"),
    ("empty_class", r"empty: class folder has no videos \(\.mp4 \.webm \.avi \.mkv \.mov\)"),
    ("bad_label", r"k\.csv, line 2: label 'cat' is not in the configured classes \['dog'\]"),
    ("missing_file", r"k\.csv, line 2: file .*gone\.mp4 does not exist"),
    ("frames", r"frames=6 cannot be laid out as one image: .*use frames=4 or frames=9"),
    ("in_chans", r"in_chans=1: video frames are decoded as RGB; use in_chans=3"),
    ("layout", r"layout='grid'; choose one of mosaic, reshape"),
    ("sampling", r"sampling='random'; choose one of dense, uniform"),
    ("short_clip", r"short_clip='zero'; choose one of loop, pad"),
])
def test_dataset_errors(tmp_path, case, match):
    (tmp_path / "root" / "dog").mkdir(parents=True)
    ramp_clip(tmp_path / "root" / "dog" / "a.mp4", n=2, size=16)
    kw = dict(train=str(tmp_path / "root"))
    if case == "missing":
        kw["train"] = str(tmp_path / "nope")
    elif case == "no_class_dirs":
        kw["train"] = str(tmp_path / "root" / "dog")
    elif case == "empty_class":
        (tmp_path / "root" / "empty").mkdir()
    elif case in ("bad_label", "missing_file"):
        (tmp_path / "k.csv").write_text("path,label\n" + ("root/dog/a.mp4,cat\n" if case == "bad_label"
                                                          else "root/gone.mp4,dog\n"))
        kw = dict(train=str(tmp_path / "k.csv"), classes=["dog"])
    else:
        kw[case] = dict(frames=6, in_chans=1, layout="grid", sampling="random", short_clip="zero")[case]
    with pytest.raises(ValueError, match=match):
        VideoModality().datasets(cfg(**kw))


# ---------------------------------------------------------------------------------------- bad files

def bad_files(tmp_path: Path) -> dict[str, Path]:
    good = ramp_clip(tmp_path / "good.mp4", n=12)
    data = good.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[:len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(np.random.RandomState(1).bytes(700))
    import av

    with av.open(str(tmp_path / "sound.mp4"), "w") as c:  # a container with no video frames
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    return dict(half=tmp_path / "half.mp4", garbage=tmp_path / "garbage.mp4", sound=tmp_path / "sound.mp4")


def test_bad_files_raise_or_skip(tmp_path):
    files = bad_files(tmp_path)
    tail = "; the file is truncated, corrupt or not a video"
    messages = {
        "half": r"half\.mp4: cannot decode video \(.*Invalid data.*\)" + tail,
        "garbage": r"garbage\.mp4: cannot decode video \(.*\)" + tail,
        "sound": r"sound\.mp4: the file has no video stream",
    }
    for name, path in files.items():
        with pytest.raises(ValueError, match=messages[name]):
            load_clip(path, cfg(), False)
    root = tmp_path / "root"
    (root / "x").mkdir(parents=True)
    for name, path in files.items():
        path.rename(root / "x" / path.name)
    ramp_clip(root / "x" / "ok.mp4", n=13, size=16)
    ds = VideoModality().datasets(cfg(train=str(root), val_split=0)).train
    items = [ds[i] for i in range(len(ds))]
    assert [type(i).__name__ for i in items] == ["Skipped", "Skipped", "tuple", "Skipped"]
    assert items[1].reason.startswith("cannot decode video")
    assert items[3].reason.startswith("the file has no video stream, it holds only audio (1 audio stream)")
    strict = VideoModality().datasets(cfg(train=str(root), val_split=0, strict=True)).train
    with pytest.raises(ValueError, match=r"garbage\.mp4: cannot decode video"):
        strict[0]


# ---------------------------------------------------------------------------------------- CLI

def test_make_clips_cli_and_errors(tmp_path):
    code, out, _ = run_cli(["make-clips", tmp_path / "c", "--per-class", "1", "--frames", "4",
                            "--size", "16", "--seed", "3"])
    assert code == 0 and out == (f"wrote 4 clips (4 frames, 16x16) in 4 motion classes to {tmp_path / 'c'}, "
                                 f"list {tmp_path / 'c' / 'clips.csv'}\n")
    assert count_frames(tmp_path / "c" / "grow" / "000.mp4") == 4
    code, _, err = run_cli(["make-clips", tmp_path / "d", "--size", "15"])
    assert code == 2 and "size=15: clips need an even size >= 16" in err


def test_train_eval_predict_end_to_end(clips, tmp_path):
    run = tmp_path / "run"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 20)
    proc = subprocess.run([sys.executable, "-m", "largekernel", "train", "--modality", "video",
                           "--data", str(clips / "clips.csv"), *TINY, "--batch-size", "4",
                           "--epochs", "1", "--val-split", "0.34", "--output", str(run)],
                          env=sub_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "best           top1" in proc.stdout
    cfg_json = json.loads((run / "config.json").read_text())
    assert cfg_json["frames"] == 4 and cfg_json["layout"] == "mosaic" and cfg_json["test_clips"] == 5
    code, out, err = run_cli(["eval", run / "last.safetensors", "--data", clips, "--batch-size", "4",
                              "--output", tmp_path / "ev"])
    assert code == 0, err
    assert out.startswith("12 samples: top-1 ")
    assert "test-time copies: 15; top-1 per copy: " in out  # 5 clips x 3 crops
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert len(metrics["copy_top1"]) == 15 and metrics["n"] == 12
    code, out, err = run_cli(["predict", "--checkpoint", run / "last.safetensors", "--topk", "2",
                              clips / "up" / "000.mp4", bad])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{clips / 'up' / '000.mp4'}: ")
    assert len(lines[0].split(", ")) == 2 and any(c in lines[0] for c in CLASSES)
    assert lines[1].startswith(f"{bad}: ERROR {bad}: cannot decode video")
    # predict averages the same test views as eval
    trained = __import__("largekernel.engine.inference", fromlist=["load_trained"]).load_trained(
        run / "last.safetensors")
    x = get_modality("video").load(clips / "up" / "000.mp4", trained.cfg)
    assert x.shape == (15, 3, 32, 32)


def test_kinetics_preset():
    c = resolve_config("kinetics400_s", overrides=dict(modality="video"))
    assert (c.model, c.frames, c.frame_stride, c.input_size) == ("unireplknet_s", 16, 4, 224)
    assert (c.drop_path, c.epochs, c.warmup_epochs, c.layer_decay) == (0.4, 90, 5, 0.75)
    assert (c.mixup, c.cutmix, c.smoothing) == (0.8, 1.0, 0.1)
    assert (c.test_clips, c.test_crops, c.crop_pct, c.randaug) == (5, 3, 1.0, None)
    assert c.blr * 64 / 256 == pytest.approx(1e-3)  # the authors' --lr 4e-3 at batch 64, VideoMAE scaling
    from largekernel.models.unireplknet import VARIANTS, resolve_kernel_sizes

    kernels = resolve_kernel_sizes(VARIANTS["unireplknet_s"][0], c.model_kwargs["kernel_sizes"])
    assert kernels[3] == (11, 11, 11) and kernels[2] == (13, 3, 3) * 9  # stage-4 kernel 11 (code)


def test_make_clips_shape_task(tmp_path):
    code, out, _ = run_cli(["make-clips", tmp_path / "s", "--per-class", "1", "--frames", "4",
                            "--size", "16", "--task", "shape"])
    assert code == 0 and "in 4 shape classes" in out
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == [
        "cross", "diamond", "disc", "square"]
    with pytest.raises(ValueError, match="unknown shape clip class 'up'"):
        render_clip("up", 4, 16, np.random.default_rng(0), task="shape")
    with pytest.raises(ValueError, match="task='colour'; choose one of motion, shape"):
        make_clips(tmp_path / "x", task="colour")


# ---------------------------------------------------------------------------------------- slow

@pytest.mark.slow
def test_tiny_model_learns_motion(tmp_path):
    """4 motion classes (chance 25%): UniRepLKNet-A on 2 x 2 mosaics of 24 px frames, 800 clips."""
    data = make_clips(tmp_path / "data", per_class=200, frames=16, size=24, seed=1)
    run = tmp_path / "run"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "largekernel", "train", "--modality", "video",
                           "--data", str(data), *TINY, "--input-size", "24", "--crop-pct", "1.0",
                           "--lr", "4e-3", "--warmup-epochs", "0.5", "--batch-size", "64",
                           "--epochs", "8", "--val-split", "0.2", "--output", str(run)],
                          env=dict(sub_env(), OMP_NUM_THREADS="2"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    print(f"best top-1 {summary['best_metric']:.1f}% in {time.perf_counter() - start:.0f} s")
    assert summary["best_metric"] >= 80.0, summary
