"""The segmentation plug-in end to end: `make-data scenes`, `train --task segmentation`, `eval`,
`predict`, `reparam`; the poly schedule, layer decay on the segmenter, bad files, EMA +
accumulation + bf16 + exact resume, the ADE20K preset, and a slow learning test."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from largekernel.engine.config import PRESETS, resolve_config
from largekernel.engine.optim import param_groups, poly_lr, scheduled_lr
from largekernel.engine.inference import load_trained
from largekernel.engine.plugin import get_plugin
from largekernel.engine.trainer import Trainer
from largekernel.metrics import mean_iou
from largekernel.models.segmentation import (ADE20K_RECIPE, ADE20K_VARIANT_RECIPES, build_segmenter,
                                             poly_warmup_lr)
from largekernel.models.unireplknet import VARIANTS
from largekernel.modalities.segmentation import SegmentationMetrics, inference_kwargs
from largekernel.modalities.segmentation_data import find_samples, load_pair
from largekernel.modalities.segmentation_eval import InferenceOptions, evaluate_segmenter
from largekernel.modalities.segmentation_scenes import make_seg_scenes
from clitools import run_cli, sub_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KWARGS = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [3, 5, 7, 3]}'
TINY = ["--task", "segmentation", "--model", "unireplknet_a", "--model-kwargs", KWARGS,
        "--channels", "16", "--aux-channels", "8", "--input-size", "64", "--warmup-epochs", "0.5",
        "--sched", "poly", "--lr", "1e-3"]


def tiny_cfg(data, out, **kw):
    values = dict(modality="segmentation", model="upernet_unireplknet_a", train=str(data), output=str(out),
                  model_kwargs=json.loads(KWARGS), channels=16, aux_channels=8, input_size=64,
                  batch_size=4, epochs=2, warmup_epochs=0.5, sched="poly", lr=1e-3, seed=0)
    values.update(kw)
    return resolve_config(overrides=values)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    code, out, err = run_cli(["make-data", "scenes", root, "--train", "8", "--val", "3", "--height", "64",
                              "--width", "80"])
    assert code == 0 and out == f"wrote 8 + 3 scenes (64x80, 6 classes) to {root}\n", err
    return root


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    code, out, err = run_cli(["train", "--data", scenes, "--output", run, *TINY, "--batch-size", "4",
                              "--epochs", "2"])
    assert code == 0, err[-3000:]
    assert "trained        2 epochs, 4 steps" in out and "best           mIoU" in out
    return run


# ------------------------------------------------------------------------------ schedule, groups

def test_poly_schedule_is_mmcvs_poly_with_linear_warmup():
    base, total, warm = 1e-4, 160_000, 1500
    warm_lr = base * 1e-6
    for step in (0, 1, 749, 1499, 1500, 1501, 80_000, 159_999, 160_000):
        want = poly_warmup_lr(step, total, base, warm, 1e-6, 1.0, 0.0)  # the recipe's own formula
        got = scheduled_lr(step, total, 1264, base, 0.0, warm, warm_lr, "poly")
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-20), (step, got, want)
    assert poly_lr(0, total, base, 0.0, warm, warm_lr) == pytest.approx(warm_lr, rel=1e-9)
    assert poly_lr(1500, total, base, 0.0, warm, warm_lr) == base * (1 - 1500 / total)
    assert poly_lr(80_000, total, base, 0.0, 0) == base / 2
    # min_lr is the floor the poly curve falls to; power 2 squares the decay factor
    assert poly_lr(total, total, 1e-3, 1e-5, 0) == 1e-5
    assert poly_lr(50, 100, 1.0, 0.0, 0, power=2.0) == 0.25
    with pytest.raises(ValueError, match="use cosine, poly or step"):
        scheduled_lr(0, 10, 1, 1.0, 0.0, 0, sched="linear")


def test_layer_decay_groups_follow_the_segmenters_layer_ids():
    model = build_segmenter((1, 1, 3, 1), (8, 16, 32, 64), num_classes=3, channels=16, aux_channels=8,
                            kernel_sizes=(3, 5, (7, 3, 3), 3))
    n = model.num_layers  # 3 + ceil(3 / 3) = 4; heads and norms get id n + 1
    assert n == 4
    groups = param_groups(model, 0.05, 0.9)
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert scale["decode_head.conv_seg.weight"] == scale["auxiliary_head.convs.0.conv.weight"] == 1.0
    assert scale["backbone.norm3.weight"] == 1.0
    assert scale["backbone.downsample_layers.0.0.weight"] == pytest.approx(0.9 ** (n + 1))
    stage3 = [v for k, v in scale.items() if k.startswith("backbone.stages.3.")]
    block2 = [v for k, v in scale.items() if k.startswith("backbone.stages.2.2.")]
    assert stage3 and block2
    assert stage3 == pytest.approx([0.9] * len(stage3))  # id n
    assert block2 == pytest.approx([0.9 ** (n + 1 - 3)] * len(block2))  # id 3 + 2 // 3 = 3
    grn = "backbone.stages.0.0.act.1.gamma"  # GRN, shape (1, 1, 1, 4C)
    assert decay[grn] == 0.05 and decay["decode_head.conv_seg.bias"] == 0.0  # GRN's 4-D gamma decays


# ------------------------------------------------------------------------------ metrics

def test_metrics_accumulate_over_the_set_and_resize_scores_to_the_labels():
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 3, (1, 8, 10), generator=g), torch.randint(0, 3, (1, 6, 6), generator=g)]
    labels[0][0, 0, :4] = 255
    scores = [torch.randn(1, 3, 8, 10, generator=g), torch.randn(1, 3, 3, 3, generator=g)]
    m = SegmentationMetrics(3)
    for s, t in zip(scores, labels):
        m.update(None, s, t)
    out = m.compute()
    resized = [scores[0], torch.nn.functional.interpolate(scores[1], size=(6, 6), mode="bilinear",
                                                          align_corners=False)]
    ref = mean_iou([s.argmax(1)[0] for s in resized], [t[0] for t in labels], 3)
    assert out["mIoU"] == ref["mIoU"] and out["aAcc"] == ref["aAcc"] and out["n"] == 2
    assert out["IoU"] == ref["IoU"].tolist()
    nll = sum(float(torch.nn.functional.cross_entropy(s, t, ignore_index=255, reduction="sum"))
              for s, t in zip(resized, labels))
    assert out["loss"] == pytest.approx(nll / (8 * 10 - 4 + 36), rel=1e-6)


# ------------------------------------------------------------------------------ the CLI end to end

def test_train_eval_predict_reparam_through_the_cli(trained, scenes, tmp_path):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(0 <= r["val_mIoU"] <= 1 and r["val_n"] == 3 for r in epochs)
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["modality"] == "segmentation" and cfg["aux_weight"] == 0.4 and cfg["sched"] == "poly"
    assert cfg["classes"] == ["background", "disc", "box", "triangle", "ring", "stripe"]

    code, out, err = run_cli(["eval", trained / "last.safetensors", "--data", scenes, "--json",
                              "--output", tmp_path / "ev"])
    assert code == 0, err[-3000:]
    metrics = json.loads(out)
    assert metrics["n"] == 3 and len(metrics["IoU"]) == 6 and metrics["skipped"] == []
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["mIoU"] == metrics["mIoU"]
    # the same number from the label maps `predict` writes, scored independently
    code, out, err = run_cli(["predict", scenes / "images" / "val", "--checkpoint", trained / "last.safetensors",
                              "--output", tmp_path / "pred", "--json"])
    assert code == 0, err[-3000:]
    results = json.loads(out)
    assert [len(r["written"]) for r in results] == [2, 2, 2]
    preds, labels = [], []
    for r, sample in zip(results, find_samples(scenes, "val").samples):
        label_png, overlay_png = r["written"]
        assert label_png.endswith(".png") and overlay_png.endswith("_overlay.png")
        with Image.open(label_png) as im:
            assert im.mode == "P"
            preds.append(np.array(im, dtype=np.int64))
        assert Image.open(overlay_png).size == (80, 64)
        labels.append(load_pair(sample, 6)[1])
    assert mean_iou(preds, labels, 6)["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-12)

    # test-time augmentation for this evaluation only, equal to the file-level evaluator's
    code, out, err = run_cli(["eval", trained / "last.safetensors", "--data", scenes, "--json",
                              "--set", "tta_ratios=0.75,1.0", "--set", "tta_flip=true", "--output", tmp_path])
    assert code == 0, err[-3000:]
    model = load_trained(trained / "last.safetensors").model
    ref = evaluate_segmenter(model, find_samples(scenes, "val").samples, 6,
                             options=InferenceOptions(scale=(256, 64), ratios=(0.75, 1.0), flip=True))
    assert json.loads(out)["mIoU"] == pytest.approx(ref.metrics["mIoU"], abs=1e-12)

    code, out, err = run_cli(["eval", trained / "last.safetensors", "--data", scenes])
    assert code == 0 and "background" in out and "3 images: mIoU" in out and "IoU %" in out, err
    code, out, err = run_cli(["reparam", trained / "last.safetensors", "-o", tmp_path / "d.safetensors",
                              "--input-size", "70"])
    assert code == 0 and "(OK, tolerance 1e-5)" in out, err + out
    code, out, err = run_cli(["eval", tmp_path / "d.safetensors", "--data", scenes, "--json"])
    assert code == 0 and json.loads(out)["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-9), err


def test_predict_reports_an_unreadable_image_by_name(trained, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code, out, err = run_cli(["predict", bad, "--checkpoint", trained / "last.safetensors"])
    assert code == 1 and f"{bad}: ERROR {bad}: not a readable image" in out, out + err


def test_eval_and_predict_take_an_mmseg_checkpoint_as_released(scenes, tmp_path):
    """The authors' ADE20K files are mmseg checkpoints: `eval` and `predict` read the variant, heads
    and class names off the file and use the released test pipeline (resize into 2048 x 512): the
    metrics equal the file-level evaluator's on the same model."""
    from test_segmentation import mmseg_file

    torch.manual_seed(0)
    model = build_segmenter(*VARIANTS["unireplknet_a"], num_classes=6, channels=16, aux_channels=8).eval()
    names = (scenes / "classes.txt").read_text().split()
    ckpt = tmp_path / "seg.pth"
    torch.save({"meta": {"CLASSES": tuple(names), "mmseg_version": "0.30.0"},
                "state_dict": model.state_dict()}, ckpt)
    code, out, err = run_cli(["eval", ckpt, "--data", scenes, "--json", "--output", tmp_path / "ev"])
    assert code == 0, err[-3000:]
    metrics = json.loads(out)
    assert metrics["classes"] == names and metrics["n"] == 3
    ref = evaluate_segmenter(model, find_samples(scenes, "val").samples, 6,
                             options=InferenceOptions(scale=(2048, 512)))
    assert metrics["mIoU"] == pytest.approx(ref.metrics["mIoU"], abs=1e-12)
    code, out, err = run_cli(["predict", scenes / "images" / "val", "--checkpoint", ckpt,
                              "--output", tmp_path / "pred", "--json"])
    assert code == 0 and [len(r["written"]) for r in json.loads(out)] == [2, 2, 2], err[-3000:]
    # class names in the file that disagree with the data's classes.txt: refused, not mislabelled
    code, out, err = run_cli(["eval", mmseg_file(model, tmp_path / "c.pth"), "--data", scenes])
    assert code == 2 and "they must agree" in err, err


def test_plugin_contract_pieces():
    plugin = get_plugin("segmentation")
    cfg = resolve_config(overrides=dict(modality="segmentation", model="unireplknet_a", input_size=64,
                                        channels=16, aux_channels=8, classes=["a", "b", "c"]))
    model = plugin.build_model(cfg, 3).eval()
    x = plugin.example_input(cfg, 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 64, 64) and model(x).shape == (2, 3, 64, 64)
    assert plugin.input_contract(cfg)["output"] == "N x 3 x H x W per-pixel class logits"
    assert plugin.metric == "mIoU" and plugin.higher_is_better
    with pytest.raises(ValueError, match="is not a segmenter"):
        plugin.build_model(resolve_config(overrides=dict(modality="segmentation", model="convnext")), 3)
    one = resolve_config(overrides=dict(modality="segmentation", tta_ratios="1.5", input_size=64))
    assert inference_kwargs(one)["ratios"] == (1.5,) and inference_kwargs(one)["scale"] == (256, 64)
    assert inference_kwargs(one)["crop"] == 64 and inference_kwargs(one)["stride"] == 42
    with pytest.raises(ValueError, match="tta_ratios=.* must be positive numbers"):
        inference_kwargs(resolve_config(overrides=dict(modality="segmentation", tta_ratios="0,1")))
    with pytest.raises(ValueError, match="inference='tile'; choose whole or slide"):
        plugin.datasets(resolve_config(overrides=dict(modality="segmentation", inference="tile")))


# ------------------------------------------------------------------------------ bad files

def _damage(root):
    """One training mask missing, one of the wrong size, one with a label out of range."""
    masks = root / "masks" / "train"
    (masks / "scene_0001.png").unlink()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "scene_0002.png")
    arr = np.array(Image.open(masks / "scene_0003.png"))
    arr[0, 0] = 9
    Image.fromarray(arr.astype(np.uint8)).save(masks / "scene_0003.png")


def test_bad_masks_are_skipped_and_counted_or_fail_with_strict(scenes, tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(scenes, root)
    _damage(root)
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", root, "--output", run, *TINY, "--batch-size", "2",
                              "--epochs", "1"])
    assert code == 0, err[-3000:]
    assert "skipped        3 unreadable samples (see skipped.txt)" in out
    skipped = dict(line.split("\t") for line in (run / "skipped.txt").read_text().splitlines())
    images = root / "images" / "train"
    assert "masks/train/scene_0001.png does not exist" in skipped[str(images / "scene_0001.png")]
    assert "mask is 10x10 (WxH) but its image is 80x64" in skipped[str(images / "scene_0002.png")]
    assert "label values [9] are outside 0..5" in skipped[str(images / "scene_0003.png")]

    code, out, err = run_cli(["train", "--data", root, "--output", tmp_path / "strict", *TINY,
                              "--batch-size", "2", "--epochs", "1", "--strict"])
    assert code == 2 and "scene_0001.png" in err and "no mask" in err, err[-2000:]


def test_folder_without_classes_needs_num_classes(scenes, tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(scenes, root)
    (root / "classes.txt").unlink()
    plugin = get_plugin("segmentation")
    with pytest.raises(ValueError, match="set --num-classes N"):
        plugin.datasets(tiny_cfg(root, tmp_path / "r"))
    data = plugin.datasets(tiny_cfg(root, tmp_path / "r", num_classes=6))
    assert data.classes == [str(i) for i in range(6)] and len(data.train) == 8 and len(data.val) == 3


# ------------------------------------------------------------------------------ engine features

def test_ema_accumulation_bf16_and_exact_resume(scenes, tmp_path):
    """EMA, 2-step accumulation and bf16 precision together; a run resumed from a mid-epoch
    checkpoint (what a SIGKILL leaves) ends with bitwise the same weights, EMA and optimizer."""
    root = tmp_path / "scenes"
    make_seg_scenes(root, train=12, val=2, size=(64, 64), seed=3)
    opts = dict(batch_size=2, accum_steps=2, ema_decay=0.9, precision="bf16", drop_path=0.1,
                save_every_steps=1, keep_last=20, deterministic=True)
    ref = Trainer(tiny_cfg(root, tmp_path / "ref", **opts), resume=False).fit()
    assert ref["steps"] == 6  # 12 images, 2 x 2 per step: 3 steps per epoch
    records = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert all("ema_mIoU" in r and "val_mIoU" in r for r in records if r["kind"] == "epoch")

    run = tmp_path / "killed"
    shutil.copytree(tmp_path / "ref" / "checkpoints", run / "checkpoints")
    for p in (run / "checkpoints").glob("step*.pt"):
        if int(p.stem[4:]) > 2:
            p.unlink()  # the run "died" after step 2, in the middle of epoch 1
    resumed = Trainer(tiny_cfg(root, run, **opts), resume="auto")
    assert (resumed.step, resumed.epoch, resumed.epoch_step) == (2, 0, 2)
    resumed.fit()
    a, b = load_file(tmp_path / "ref" / "last.safetensors"), load_file(run / "last.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    sa = torch.load(tmp_path / "ref" / "checkpoints" / "step00000006.pt", weights_only=True)
    sb = torch.load(run / "checkpoints" / "step00000006.pt", weights_only=True)
    assert all(torch.equal(v, sb["ema"][k]) for k, v in sa["ema"].items())
    assert not all(torch.equal(v, sa["model"][k]) for k, v in sa["ema"].items())  # EMA is in use
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"])


def test_init_checkpoint_from_a_classifier_initialises_the_backbone(scenes, tmp_path):
    import largekernel as lk
    from largekernel.models.checkpoint import save_checkpoint

    kw = json.loads(KWARGS)
    clf = lk.create_model("unireplknet_a", num_classes=10, **kw)
    save_checkpoint(clf, tmp_path / "clf.safetensors")
    trainer = Trainer(tiny_cfg(scenes, tmp_path / "run", init_checkpoint=str(tmp_path / "clf.safetensors")),
                      resume=False)
    ours, theirs = trainer.model.state_dict(), clf.state_dict()
    shared = [k for k in theirs if f"backbone.{k}" in ours]
    assert len(shared) > 20
    assert all(torch.equal(ours[f"backbone.{k}"], theirs[k]) for k in shared)


# ------------------------------------------------------------------------------ the preset

def test_ade20k_preset_follows_the_authors_recipe():
    r, v = ADE20K_RECIPE, ADE20K_VARIANT_RECIPES["upernet_unireplknet_t"]
    cfg = resolve_config("ade20k_upernet_t")
    assert cfg.modality == "segmentation" and cfg.model == "upernet_unireplknet_t"
    assert (cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.batch_size) == (r["lr"], r["weight_decay"],
                                                                            r["betas"], r["batch_size"])
    assert (cfg.input_size, cfg.input_size) == r["crop"] and cfg.sched == r["schedule"]
    assert cfg.poly_power == r["poly_power"] and cfg.min_lr == r["min_lr"] and cfg.max_steps == r["iters"]
    assert tuple(cfg.ratio_range) == r["ratio_range"] and cfg.cat_max_ratio == r["cat_max_ratio"]
    assert cfg.aux_weight == r["aux_weight"] and (cfg.channels, cfg.aux_channels) == (512, 256)
    assert cfg.drop_path == v["drop_path_rate"] and cfg.layer_decay == v["layer_decay"]
    assert cfg.pretrained_backbone == v["pretrained_backbone"]
    # 20,210 ADE20K images in batches of 16: 1,264 steps per epoch; the trainer's warmup and length
    steps_per_epoch = -(-20_210 // 16)
    assert int(cfg.warmup_epochs * steps_per_epoch) == r["warmup_iters"]
    assert cfg.epochs * steps_per_epoch >= r["iters"]
    assert cfg.warmup_lr == pytest.approx(r["lr"] * r["warmup_ratio"])
    assert "ade20k_upernet_t" in PRESETS


# ------------------------------------------------------------------------------ learning (slow)

@pytest.mark.slow
def test_ddp_matches_single_process_accumulation(scenes, tmp_path):
    """torchrun 2 processes x batch 2 against one process x batch 2 x 2 accumulation steps, same
    seed, same 8 scenes (the same crops per sample): the same parameters up to float32 reduction
    order: the two runs' weights differ by less than 1e-4 of the distance training moved them
    (other crops, or the heads' dropout masks, which each rank draws from its own stream, differ by
    O(1): measured 0.6 with dropout on; 0 without). Per tensor the bar would be wrong: a classifier
    bias's gradient sums softmax minus one-hot over every pixel and nearly cancels, so its
    reduction-order error can be ~1e-3 of itself. BN running statistics differ by design: DDP keeps
    rank 0's."""
    kwargs = dict(json.loads(KWARGS), dropout_ratio=0.0)  # no random masks: ranks draw their own
    args = ["--data", str(scenes), *TINY, "--model-kwargs", json.dumps(kwargs), "--batch-size", "2",
            "--epochs", "1", "--drop-path", "0"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "largekernel", "train", "--output", str(ddp), *args], env=sub_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "largekernel", "train", "--output", str(single), *args,
                        "--accum-steps", "2"], env=sub_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((ddp / "summary.json").read_text())["steps"] == 2
    a, b = load_file(ddp / "last.safetensors"), load_file(single / "last.safetensors")
    init = Trainer(tiny_cfg(scenes, tmp_path / "init", batch_size=2, epochs=1, drop_path=0.0,
                            model_kwargs=kwargs)).model.state_dict()  # the runs' initial weights (same seed)
    params = [k for k in b if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) > 50
    moved = sum(((b[k] - init[k]).double() ** 2).sum() for k in params).sqrt()
    apart = sum(((a[k] - b[k]).double() ** 2).sum() for k in params).sqrt()
    print(f"DDP vs accumulation: |a - b| / |b - init| = {apart / moved:.3g}")
    assert moved > 0 and apart <= 1e-4 * moved
    assert "val_mIoU" in (ddp / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_engine_learns_synthetic_scenes(tmp_path):
    """A small segmenter trained from scratch by the engine on 48 synthetic scenes (480 steps of 8
    crops, poly schedule) reaches a val mIoU far above predicting the training set's majority class
    everywhere. Measured: 0.68 vs 0.12, ~110 s of training on one thread (seeds 1 and 2 after 50
    epochs: 0.56 and 0.47, so the bar 0.5 leaves room)."""
    root = tmp_path / "scenes"
    make_seg_scenes(root, train=48, val=12, size=(64, 64), seed=0)
    cfg = tiny_cfg(root, tmp_path / "run", model_kwargs=dict(depths=[1, 1, 2, 1], dims=[16, 32, 64, 128],
                                                              kernel_sizes=[3, 13, [13, 3], 7]),
                   channels=32, aux_channels=16, batch_size=8, epochs=80, lr=2e-3, weight_decay=0.01,
                   warmup_epochs=1, img_scale=(128, 64), ratio_range=(0.75, 1.5), eval_every=80)
    summary = Trainer(cfg, resume=False).fit()
    learned = summary["best_metric"]
    train, val = find_samples(root, "train"), find_samples(root, "val")
    counts = sum(np.bincount(load_pair(s, 6)[1].ravel(), minlength=6) for s in train.samples)
    labels = [load_pair(s, 6)[1] for s in val.samples]
    majority = mean_iou([np.full_like(t, counts.argmax()) for t in labels], labels, 6)["mIoU"]
    print(f"engine-trained mIoU {learned:.3f}, majority-class mIoU {majority:.3f}, "
          f"{summary['seconds']:.0f} s")
    assert learned > 0.5 and learned > 3 * majority, (learned, majority)
