"""UPerNet on UniRepLKNet (segmentation spec sections 1-4): mmseg parity, loading, inference modes,
re-parameterization, losses, registry."""
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import largekernel as lk
from largekernel.layers import simulate_trained_statistics
from largekernel.models.checkpoint import CheckpointError
from largekernel.models.segmentation import (ConvModule, UPerNet, build_segmenter,
                                             load_segmenter_checkpoint, poly_warmup_lr,
                                             segmenter_from_checkpoint)
from largekernel.models.segmentation_inference import (infer_logits, predict_probs, rescale_logits,
                                                       segmentation_loss, slide_windows, network_input_size)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(os.environ.get("LARGEKERNEL_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"))
SEG_CKPT = FIXTURES / "upernet_unireplknet_a_mmseg.pth"
SEG_IO = FIXTURES / "upernet_unireplknet_a_io.pt"
TINY_TRAIN = Path(__file__).resolve().parent / "fixtures" / "authors" / "tiny_train.pth"  # in the repo


def needs_fixture(test):
    """The mmseg golden fixtures live in ../shared: marked `shared` (CI runs them beside it), skipped
    with the reason in a clone of the repository alone."""
    absent = not (SEG_CKPT.is_file() and SEG_IO.is_file())
    reason = f"golden fixtures {SEG_CKPT.name}/{SEG_IO.name} absent (need ../shared)"
    return pytest.mark.shared(pytest.mark.skipif(absent, reason=reason)(test))


TOL = 1e-5  # absolute, logits of magnitude ~2 (the fixture README)
# float32 reparam: the fold changes rounding only; the classifiers' bar (tests/test_reparam.py)
REL_TOL = 1e-5
# the tiny configuration of the shared tiny fixtures: 3x3 blocks and K=13, K=7 Dilated Reparam Blocks
TINY = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), kernel_sizes=((3,), (13,), (13, 3), (7,)))


def tiny_segmenter(seed=0, num_classes=5, **kw):
    torch.manual_seed(seed)
    kw = {"channels": 16, "aux_channels": 8, **kw}
    return simulate_trained_statistics(build_segmenter(**TINY, num_classes=num_classes, **kw), seed)


def image(b=2, h=64, w=96, seed=1, dtype=torch.float32):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def mmseg_file(model, path, extra=None):
    """Write `model` the way an mmseg 0.x run saves a checkpoint."""
    meta = {"CLASSES": tuple(f"c{i}" for i in range(model.num_classes)), "mmseg_version": "0.27.0",
            "config": "model = dict(type='EncoderDecoder')", "iter": 10}
    torch.save({"meta": meta, "state_dict": {**model.state_dict(), **(extra or {})},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


# ---------------------------------------------------------------------------------------------
# An independent float64 reference of the heads, from the state dict alone (spec section 1)
# ---------------------------------------------------------------------------------------------
def ref_conv_module(sd, prefix, x, padding=0):
    y = F.conv2d(x, sd[f"{prefix}.conv.weight"], padding=padding)
    y = (y - sd[f"{prefix}.bn.running_mean"].view(1, -1, 1, 1)) / torch.sqrt(
        sd[f"{prefix}.bn.running_var"].view(1, -1, 1, 1) + 1e-5)
    return torch.relu(y * sd[f"{prefix}.bn.weight"].view(1, -1, 1, 1) + sd[f"{prefix}.bn.bias"].view(1, -1, 1, 1))


def up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def ref_uperhead(sd, feats, scales=(1, 2, 3, 6)):
    f3 = feats[3]
    pooled = [up(ref_conv_module(sd, f"psp_modules.{i}.1", F.adaptive_avg_pool2d(f3, s)), f3.shape[2:])
              for i, s in enumerate(scales)]
    lat = [ref_conv_module(sd, f"lateral_convs.{i}", feats[i]) for i in range(3)]
    lat.append(ref_conv_module(sd, "bottleneck", torch.cat([f3] + pooled, 1), 1))
    for i in (3, 2, 1):
        lat[i - 1] = lat[i - 1] + up(lat[i], lat[i - 1].shape[2:])
    outs = [ref_conv_module(sd, f"fpn_convs.{i}", lat[i], 1) for i in range(3)] + [lat[3]]
    outs = [outs[0]] + [up(o, outs[0].shape[2:]) for o in outs[1:]]
    fused = ref_conv_module(sd, "fpn_bottleneck", torch.cat(outs, 1), 1)
    return F.conv2d(fused, sd["conv_seg.weight"], sd["conv_seg.bias"])


def test_heads_match_an_independent_reference_in_float64():
    model = tiny_segmenter().double().eval()
    x = image(h=70, w=90, dtype=torch.float64)
    with torch.no_grad():
        feats = model.backbone(x)
        sd = {k: v for k, v in model.decode_head.state_dict().items()}
        want = up(ref_uperhead(sd, feats), (70, 90))
        got = model(x)
        aux_sd = model.auxiliary_head.state_dict()
        want_aux = F.conv2d(ref_conv_module(aux_sd, "convs.0", feats[2], 1),
                            aux_sd["conv_seg.weight"], aux_sd["conv_seg.bias"])
        model.train()
        model.decode_head.dropout.eval(), model.auxiliary_head.dropout.eval()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        out = model(x)
    assert (got - want).abs().max() < 1e-12
    assert (out["logits"] - want).abs().max() < 1e-12
    assert (out["aux_logits"] - want_aux).abs().max() < 1e-12


@pytest.mark.parametrize("hw", [(64, 64), (70, 90), (33, 47), (17, 100)])
def test_any_input_size(hw):
    """Stride-2 convs give floor((n-1)/2)+1 per halving; logits always come back at H x W."""
    model = tiny_segmenter().eval()
    with torch.no_grad():
        y = model(image(1, *hw))
    assert y.shape == (1, 5, *hw) and torch.isfinite(y).all()
    model.train()
    out = model(image(2, *hw))
    side = [s for s in hw]
    for _ in range(4):  # stride 16: four halvings
        side = [(s - 1) // 2 + 1 for s in side]
    assert out["logits"].shape == (2, 5, *hw) and out["aux_logits"].shape == (2, 5, *side)


def test_train_mode_dropout_zeroes_whole_channels():
    model = tiny_segmenter(dropout_ratio=0.5)
    assert isinstance(model.decode_head.dropout, torch.nn.Dropout2d)
    seen = []
    model.decode_head.conv_seg.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model.train()(image(2, 32, 32))
    per_channel = seen[0].abs().sum((2, 3))
    assert (per_channel == 0).any() and (per_channel > 0).any()


def test_no_aux_head():
    model = tiny_segmenter(aux_channels=0)
    assert model.auxiliary_head is None
    assert model.train()(image(2, 32, 32))["aux_logits"] is None
    assert not any(k.startswith("auxiliary_head") for k in model.state_dict())


def test_backbone_must_be_dense():
    with pytest.raises(ValueError, match="features_only=True"):
        UPerNet(lk.create_model("unireplknet_a", device="meta"), 5)


def test_head_init_is_the_authors():
    torch.manual_seed(0)
    model = build_segmenter(**TINY, num_classes=5, channels=32, aux_channels=16)
    w = model.decode_head.fpn_bottleneck.conv.weight  # kaiming normal, fan_out = 32 * 3 * 3
    assert w.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.05)
    assert model.decode_head.conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert (model.decode_head.conv_seg.bias == 0).all() and (model.auxiliary_head.conv_seg.bias == 0).all()
    bn = model.decode_head.bottleneck.bn
    assert (bn.weight == 1).all() and (bn.bias == 0).all()


# ---------------------------------------------------------------------------------------------
# Registry, sizes and key layout (meta device)
# ---------------------------------------------------------------------------------------------
def test_registry_and_spec_counts():
    assert lk.list_models("upernet_*") == [f"upernet_unireplknet_{v}" for v in
                                           ("a", "b", "f", "l", "n", "p", "s", "t", "xl")]
    model = lk.create_model("upernet_unireplknet_t", num_classes=150, device="meta")
    assert isinstance(model, UPerNet) and model.name == "upernet_unireplknet_t"
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 512, 512) and cfg["test_scale"] == (2048, 512)
    assert [round(m * 255, 3) for m in cfg["mean"]] == [123.675, 116.28, 103.53]  # the configs' 0-255 values
    assert [round(s * 255, 3) for s in cfg["std"]] == [58.395, 57.12, 57.375]
    sd = model.state_dict()
    assert len(sd) == 1202  # spec: the whole T checkpoint
    numel = lambda p: sum(v.numel() for k, v in sd.items() if k.startswith(p) and "num_batches" not in k)
    assert numel("decode_head.") == 30_600_342 and numel("auxiliary_head.") == 776_854
    assert sd["decode_head.bottleneck.conv.weight"].shape == (512, 2688, 3, 3)
    assert sd["auxiliary_head.convs.0.conv.weight"].shape == (256, 320, 3, 3)
    heads = [k for k in sd if not k.startswith("backbone.")]
    assert heads[:2] == ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    assert heads[-8:-6] == ["auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"]
    train_params = sum(p.numel() for p in model.parameters())
    assert round(train_params / 1e6, 2) == 62.42  # spec: T in training form with both heads
    deploy = lk.create_model("upernet_unireplknet_t", deploy=True, aux_channels=0, device="meta")
    assert round(sum(p.numel() for p in deploy.backbone.parameters()) / 1e6
                 + 30_600_342 / 1e6 - 12 * 2 * 512 / 1e6, 2) == 60.99  # README's 61M


def test_create_model_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown option.*global_pool"):
        lk.create_model("upernet_unireplknet_a", global_pool="avg", device="meta")
    with pytest.raises(ValueError, match="unknown segmentation model"):
        lk.create_model("upernet_unireplknet_q", device="meta")


def test_layer_ids_and_schedule():
    model = lk.create_model("upernet_unireplknet_t", device="meta")
    assert model.num_layers == 9 and model.num_layer_ids == 11
    lid = model.layer_id
    assert lid("backbone.downsample_layers.0.0.weight") == 0
    assert lid("backbone.stages.0.1.pwconv1.1.weight") == 1
    assert lid("backbone.downsample_layers.1.0.weight") == 2 == lid("backbone.stages.1.0.gamma")
    assert lid("backbone.downsample_layers.2.0.weight") == 3 == lid("backbone.stages.2.2.gamma")
    assert lid("backbone.stages.2.17.gamma") == 8
    assert lid("backbone.stages.3.0.gamma") == 9 == lid("backbone.downsample_layers.3.1.weight")
    assert lid("backbone.norm2.weight") == 10 == lid("decode_head.conv_seg.weight")
    assert lk.create_model("upernet_unireplknet_s", device="meta").num_layers == 12
    assert model.no_weight_decay() == set()  # GRN's 4-D gamma/beta are decayed in this recipe
    assert poly_warmup_lr(0, 160000, 1e-4) == pytest.approx(1e-10, rel=1e-9)
    assert poly_warmup_lr(1500, 160000, 1e-4) == pytest.approx(1e-4 * (1 - 1500 / 160000))
    assert poly_warmup_lr(750, 160000, 1e-4) == pytest.approx(
        1e-4 * (1 - 750 / 160000) * (1 - 0.5 * (1 - 1e-6)))


# ---------------------------------------------------------------------------------------------
# The authors' mmseg checkpoint (golden fixture)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_io():
    return torch.load(SEG_IO, weights_only=True)


@pytest.fixture(scope="module")
def official():
    return segmenter_from_checkpoint(SEG_CKPT).eval()


@needs_fixture
def test_fixture_whole_and_odd(official, seg_io):
    assert (official.decode_head.channels, official.auxiliary_head.channels) == (64, 32)
    assert official.num_classes == 7 and not official.deploy
    with torch.no_grad():
        assert (official(seg_io["input"]) - seg_io["logits"]).abs().max() < TOL
        assert (official(seg_io["input_odd"]) - seg_io["logits_odd"]).abs().max() < TOL


@needs_fixture
def test_fixture_slide_flip_rescale(official, seg_io):
    x = seg_io["input"]
    s = seg_io["settings"]
    slide = infer_logits(official, x, "slide", s["slide_crop"], s["slide_stride"])
    assert (slide - seg_io["logits_slide"]).abs().max() < TOL
    probs = predict_probs(official, x, flip=True, scale=None)
    assert (probs - seg_io["probs_flip"]).abs().max() < TOL
    with torch.no_grad():
        resc = rescale_logits(official(x), s["rescale_img_shape"], s["rescale_ori_shape"])
    assert (resc - seg_io["logits_rescaled"]).abs().max() < TOL


@needs_fixture
def test_fixture_aux_and_losses(official, seg_io):
    model = official.train()
    try:
        for m in model.modules():  # the fixture's losses are eval-mode: BN statistics, no dropout
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout2d)):
                m.eval()
        with torch.no_grad():
            out = model(seg_io["input"])
    finally:
        model.eval()
    assert (out["aux_logits"] - seg_io["logits_aux"]).abs().max() < TOL
    losses = segmentation_loss(out, seg_io["label_loss"], aux_weight=seg_io["settings"]["aux_loss_weight"])
    for key in ("loss_decode", "loss_aux"):
        assert abs(losses[key].item() - seg_io[key].item()) < TOL, key
    for key in ("acc_decode", "acc_aux"):  # percent
        assert abs(losses[key].item() - seg_io[key].item()) < 1e-4, key
    assert losses["loss"].item() == pytest.approx(losses["loss_decode"].item() + losses["loss_aux"].item())
    # the same functions on the fixture's own logits agree to float32 rounding
    exact = segmentation_loss({"logits": seg_io["logits"], "aux_logits": seg_io["logits_aux"]},
                              seg_io["label_loss"])
    for key in ("loss_decode", "loss_aux", "acc_decode", "acc_aux"):
        assert abs(exact[key].item() - seg_io[key].item()) <= 1e-6 * max(1, abs(seg_io[key].item())), key


@needs_fixture
def test_fixture_through_create_model(seg_io):
    model = lk.create_model("upernet_unireplknet_a", checkpoint_path=SEG_CKPT).eval()
    assert (model.decode_head.channels, model.auxiliary_head.channels, model.num_classes) == (64, 32, 7)
    with torch.no_grad():
        assert (model(seg_io["input_odd"]) - seg_io["logits_odd"]).abs().max() < TOL
    other = lk.create_model("upernet_unireplknet_a", num_classes=3, checkpoint_path=SEG_CKPT)
    assert other.decode_head.conv_seg.weight.shape == (3, 64, 1, 1)  # classifier dropped, rest loaded
    with pytest.raises(CheckpointError, match=r"(?s)decode_head.*wrong shape.*channels="):
        lk.create_model("upernet_unireplknet_a", channels=128, checkpoint_path=SEG_CKPT)


@needs_fixture
def test_fixture_meta():
    from largekernel.models.segmentation import read_segmenter_meta

    meta = read_segmenter_meta(SEG_CKPT)
    assert meta["classes"][:3] == ["wall", "building", "sky"] and len(meta["classes"]) == 7
    assert meta["palette"][2] == (6, 230, 230)


@needs_fixture
def test_fixture_deploy(official, seg_io):
    folded_on_load = segmenter_from_checkpoint(SEG_CKPT, deploy=True).eval()
    assert folded_on_load.deploy
    folded = lk.reparameterize(official)
    assert folded.deploy and not official.deploy
    with torch.no_grad():
        for m in (folded_on_load, folded):
            assert (m(seg_io["input"]) - seg_io["logits"]).abs().max() < TOL


# ---------------------------------------------------------------------------------------------
# The same loading paths on files the tests write (no ../shared needed)
# ---------------------------------------------------------------------------------------------
def test_mmseg_layout_round_trip(tmp_path):
    from largekernel.models.segmentation import read_segmenter_meta

    model = tiny_segmenter().eval()
    path = mmseg_file(model, tmp_path / "seg.pth")
    assert read_segmenter_meta(path) == {"classes": ["c0", "c1", "c2", "c3", "c4"]}
    assert read_segmenter_meta(tmp_path / "missing.pth") == {}
    fresh = tiny_segmenter(seed=5).eval()
    report = load_segmenter_checkpoint(fresh, path)
    assert not report.dropped and not report.kept_init
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    x = image(1, 50, 70)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_variant_file_builds_from_shapes(tmp_path):
    torch.manual_seed(0)
    model = lk.create_model("upernet_unireplknet_a", num_classes=4, channels=24, aux_channels=12)
    path = mmseg_file(simulate_trained_statistics(model).eval(), tmp_path / "a.pth")
    rebuilt = segmenter_from_checkpoint(path).eval()
    assert rebuilt.name == "upernet_unireplknet_a"
    assert (rebuilt.num_classes, rebuilt.decode_head.channels, rebuilt.auxiliary_head.channels) == (4, 24, 12)
    x = image(1, 40, 56)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    # model_from_checkpoint builds the segmenter too (no name, or a segmenter's name) ...
    for name in (None, "upernet_unireplknet_a"):
        again = lk.model_from_checkpoint(path, name).eval()
        assert isinstance(again, UPerNet) and again.name == "upernet_unireplknet_a"
        with torch.no_grad():
            assert torch.equal(again(x), model(x))
    # ... and the dense backbone alone where a classifier's name or features_only asks for it
    backbone = lk.model_from_checkpoint(path, "unireplknet_a", features_only=True).eval()
    assert not isinstance(backbone, UPerNet)
    with torch.no_grad():
        assert torch.equal(backbone(x)[-1], model.backbone(x)[-1])


def test_classification_checkpoint_initialises_the_backbone(tmp_path):
    torch.manual_seed(3)
    classifier = simulate_trained_statistics(lk.UniRepLKNet(**TINY, num_classes=10))
    path = tmp_path / "cls.pth"
    torch.save(classifier.state_dict(), path)  # a bare state dict, like the released *_in1k_*.pth
    model = tiny_segmenter()
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    report = load_segmenter_checkpoint(model, path)
    assert any("heads keep their fresh initialisation" in n for n in report.notes)
    assert set(report.dropped) >= {"head.weight", "norm.weight"}
    bb = model.backbone.state_dict()
    for k, v in classifier.state_dict().items():
        if k in bb:
            assert torch.equal(bb[k], v), k
    assert torch.equal(bb["norm0.weight"], torch.ones(16))  # norm0..3 keep LayerNorm's 1/0
    for k, v in model.state_dict().items():
        if k in heads_before:
            assert torch.equal(v, heads_before[k]), k
    # the same file into a re-parameterized segmenter folds the backbone on load
    deploy = tiny_segmenter(deploy=True)
    load_segmenter_checkpoint(deploy, path)
    classifier.eval(), model.eval(), deploy.eval()
    x = image(1, 64, 64)
    with torch.no_grad():
        want = classifier.forward_features(x)
        got = deploy.backbone(x)[3]
        ref = model.backbone(x)[3]
    assert rel_err(got, ref) < REL_TOL
    assert rel_err(model.backbone.norm3(want), ref) < 1e-6


def test_authors_tiny_classification_file_initialises_the_backbone():
    model = tiny_segmenter(num_classes=3)
    load_segmenter_checkpoint(model, TINY_TRAIN)
    ref = torch.load(TINY_TRAIN, weights_only=True)
    assert torch.equal(model.backbone.state_dict()["stages.2.0.dwconv.lk_origin.weight"],
                       ref["stages.2.0.dwconv.lk_origin.weight"])


def test_head_mismatches_give_key_reports(tmp_path):
    model = tiny_segmenter().eval()
    sd = dict(model.state_dict())
    sd.pop("decode_head.fpn_convs.1.conv.weight")
    sd["decode_head.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_segmenter_checkpoint(tiny_segmenter(), tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing: fpn_convs.1.conv.weight" in msg and "unexpected: extra.weight" in msg
    report = load_segmenter_checkpoint(tiny_segmenter(), tmp_path / "bad.pth", strict=False)
    assert "decode_head.extra.weight" in report.dropped
    # a folded head cannot go back into a train-form head
    folded = lk.reparameterize(model)
    torch.save({"state_dict": folded.state_dict()}, tmp_path / "deploy.pth")
    with pytest.raises(CheckpointError, match="deploy"):
        load_segmenter_checkpoint(tiny_segmenter(), tmp_path / "deploy.pth")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"state_dict": {"decode_head.bottleneck.conv.weight": torch.zeros(1)},
                "meta": {"hook": Path("x")}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_segmenter_checkpoint(tiny_segmenter(), tmp_path / "evil.pth")


# ---------------------------------------------------------------------------------------------
# Re-parameterization
# ---------------------------------------------------------------------------------------------
def test_reparameterize_folds_backbone_and_heads(tmp_path):
    model = tiny_segmenter().eval()
    x = image(2, 48, 80)
    with torch.no_grad():
        ref = model(x)
        folded = lk.reparameterize(model)
        out = folded(x)
    assert folded.deploy and folded.backbone.deploy
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(m.conv.bias is not None for m in folded.modules() if isinstance(m, ConvModule))
    assert rel_err(out, ref) < REL_TOL
    built = build_segmenter(**TINY, num_classes=5, channels=16, aux_channels=8, deploy=True)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in folded.state_dict().items()}
    built.load_state_dict(folded.state_dict())  # strict
    # a train-form file loads into the deploy-built model by folding on load
    load_segmenter_checkpoint(built, mmseg_file(model, tmp_path / "train.pth"))
    with torch.no_grad():
        assert rel_err(built.eval()(x), ref) < REL_TOL
    with pytest.raises(RuntimeError, match="eval"):
        lk.reparameterize(tiny_segmenter().train())


def test_reparameterize_exact_in_float64():
    model = tiny_segmenter().double().eval()
    x = image(1, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        model.reparameterize()
        out = model(x)
    assert model.deploy and rel_err(out, ref) < 1e-12


# ---------------------------------------------------------------------------------------------
# Inference modes
# ---------------------------------------------------------------------------------------------
class Pixelwise(torch.nn.Module):
    """A 'segmenter' whose logits at a pixel depend on that pixel only."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.proj(x)


class WindowMean(torch.nn.Module):
    """Logits = the window's mean everywhere: slide inference must average per-pixel window counts."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 2, x.shape[2], x.shape[3])


def test_slide_windows_grid():
    # H 100, crop 64, stride 48: (100 - 64 + 47) // 48 + 1 = 2 rows; the last shifted back to end at 100
    assert slide_windows(100, 64, 64, 48) == [(0, 64, 0, 64), (36, 100, 0, 64)]
    assert slide_windows(40, 30, 64, 48) == [(0, 40, 0, 30)]  # smaller than the crop: one window
    wins = slide_windows(96, 128, 64, 48)
    assert len(wins) == 2 * 3 and wins[-1] == (32, 96, 64, 128)


def test_slide_averages_by_count():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 20, 30)
    got = infer_logits(WindowMean(), x, "slide", (12, 16), (8, 10))
    canvas, count = torch.zeros(20, 30), torch.zeros(20, 30)
    for y1, y2, x1, x2 in slide_windows(20, 30, (12, 16), (8, 10)):
        canvas[y1:y2, x1:x2] += x[:, :, y1:y2, x1:x2].mean()
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1 and count.max() > 1
    assert torch.allclose(got[0, 0], canvas / count, atol=1e-6)
    pix = Pixelwise().eval()
    with torch.no_grad():
        assert torch.allclose(infer_logits(pix, x, "slide", 12, 8), pix(x), atol=1e-6)
    with pytest.raises(ValueError, match="crop and stride"):
        infer_logits(pix, x, "slide")
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        infer_logits(pix, x, "tiles")


def test_flip_and_multiscale_tta():
    torch.manual_seed(0)
    pix = Pixelwise().eval()
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        single = F.softmax(pix(x), dim=1)
    assert torch.allclose(predict_probs(pix, x, flip=True, scale=None), single, atol=1e-6)
    ms = predict_probs(pix, x, ratios=(0.5, 1.0, 1.5), flip=True, scale=None)
    assert ms.shape == single.shape and torch.allclose(ms.sum(1), torch.ones(2, 24, 40), atol=1e-5)
    assert not torch.allclose(ms, single, atol=1e-4)  # resized views differ at the borders
    model = tiny_segmenter().eval()
    probs = predict_probs(model, image(1, 50, 70), ratios=(0.75, 1.0), flip=True, scale=(128, 48))
    assert probs.shape == (1, 5, 50, 70)


def test_test_size_and_rescale():
    assert network_input_size(512, 683) == (512, 704)  # the spec's ADE20K example (H, W)
    assert network_input_size(512, 683, ratio=0.5) == (256, 352)  # scale (1024, 256): 256 x 342 -> x32
    assert network_input_size(1000, 3000, size_divisor=None) == (512, 1536)  # short side bound
    assert network_input_size(200, 2000, size_divisor=None) == (205, 2048)  # long side bound
    logits = torch.randn(1, 3, 10, 12)
    out = rescale_logits(logits, (8, 9), (16, 18))
    assert out.shape == (1, 3, 16, 18)
    assert torch.allclose(out, F.interpolate(logits[:, :, :8, :9], (16, 18), mode="bilinear"))
    with pytest.raises(ValueError, match="larger than the logits"):
        rescale_logits(logits, (11, 12), (5, 5))


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def test_loss_averages_over_all_pixels_including_ignored():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # 1 x 2 classes x 1 x 2
    label = torch.tensor([[[0, 255]]])
    r = segmentation_loss(logits, label)
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert r["loss_decode"].item() == pytest.approx(ce0 / 2, rel=1e-6)  # mean over 2 pixels
    assert r["acc_decode"].item() == pytest.approx(100.0, rel=1e-6)
    out = {"logits": logits, "aux_logits": torch.zeros(1, 2, 1, 1)}
    r = segmentation_loss(out, label, aux_weight=0.4)
    assert r["loss_aux"].item() == pytest.approx(0.4 * math.log(2) / 2, rel=1e-6)
    assert r["loss"].item() == pytest.approx(ce0 / 2 + 0.4 * math.log(2) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="B x H x W"):
        segmentation_loss(logits, label[0])


def test_training_step_reduces_loss():
    model = tiny_segmenter(seed=1, num_classes=3)
    x = image(2, 32, 32)
    label = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    label[:, :4] = 255
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        r = segmentation_loss(model.train()(x), label)
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
        losses.append(r["loss"].item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------
# Export with dynamic batch, height and width
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,bins", [(7, 6), (2, 6), (13, 3), (6, 6), (1, 2), (9, 1)])
def test_export_pooling_matrices_equal_adaptive_pooling(size, bins):
    """The export path of the pyramid pooling (averaging matrices from the symbolic size) is the
    same operator as adaptive average pooling, also when the map is smaller than the bins."""
    from largekernel.models.segmentation import _pool_matrix

    x = torch.randn(2, 3, size, size + 3, dtype=torch.float64)
    got = _pool_matrix(size, bins, x) @ x @ _pool_matrix(size + 3, bins, x).T
    assert torch.allclose(got, F.adaptive_avg_pool2d(x, bins), atol=1e-14)


def test_safetensors_round_trip_through_model_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = simulate_trained_statistics(
        lk.create_model("upernet_unireplknet_a", num_classes=4, channels=24, aux_channels=12)).eval()
    path = lk.save_checkpoint(model, tmp_path / "seg.safetensors")
    rebuilt = lk.model_from_checkpoint(path).eval()
    assert isinstance(rebuilt, UPerNet) and rebuilt.model_args == model.model_args
    x = image(1, 40, 56)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name,gmacs", [("upernet_unireplknet_t", 946), ("upernet_unireplknet_s", 1036)])
def test_flops_match_the_published_table(name, gmacs):
    """The README's FLOPs are mmcv's multiply-accumulates at 512 x 2048 (spec section 9); ours on
    the meta device, deploy form (the auxiliary head is in the model but not in the count: it runs
    in train mode only)."""
    from largekernel.tools.info import model_info

    info = model_info(name, input_size=(512, 2048))
    # ours counts conv/linear MACs; mmcv's counter also counts norms, activations, pooling and
    # upsampling (elementwise, a fraction of a percent) and the table rounds to 1G: 0.1% apart at most
    assert abs(info.macs / 1e9 - gmacs) / gmacs < 1e-3, info.macs
    assert info.feature_strides == (4, 8, 16, 32)


@needs_fixture
def test_authors_backbone_file_features():
    """The authors' dense-backbone file (backbone.* + a stray decode_head.conv_seg) initialises the
    segmenter's backbone only, and its features are the authors'."""
    io = torch.load(FIXTURES / "unireplknet_a_backbone_io.pt", weights_only=True)
    model = lk.create_model("upernet_unireplknet_a", num_classes=7,
                            checkpoint_path=FIXTURES / "unireplknet_a_backbone_mmseg.pth").eval()
    assert model.decode_head.channels == 512  # not a segmentation checkpoint: the default widths
    with torch.no_grad():
        for got, want in zip(model.backbone(io["input"]), io["features"]):
            assert (got - want).abs().max() < TOL


@needs_fixture
def test_pretrained_backbone_from_hub_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from largekernel.models.hub import PretrainedNotAvailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--DingXiaoH--UniRepLKNet"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    src = FIXTURES / "unireplknet_a_train.pth"
    (repo / "snapshots" / commit / "unireplknet_a_in1k_224_acc77.03.pth").write_bytes(src.read_bytes())
    model = lk.create_model("upernet_unireplknet_a", num_classes=4, pretrained_backbone=True,
                            cache_dir=tmp_path)
    ref = torch.load(src, weights_only=True)
    assert torch.equal(model.backbone.stages[3][1].pwconv1[1].weight, ref["stages.3.1.pwconv1.1.weight"])
    with pytest.raises(PretrainedNotAvailable, match="no ADE20K weights with a known file name"):
        lk.create_model("upernet_unireplknet_a", pretrained=True, cache_dir=tmp_path)
    with pytest.raises(PretrainedNotAvailable, match="upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth"):
        lk.create_model("upernet_unireplknet_t", pretrained=True, cache_dir=tmp_path)


def test_info_cli_lists_segmenters():
    import json

    from clitools import run_cli

    code, out, _ = run_cli(["info", "upernet_unireplknet_a", "--input-size", "64", "--json"])
    assert code == 0
    (info,) = json.loads(out)
    assert info["model"] == "upernet_unireplknet_a" and info["feature_channels"] == [40, 80, 160, 320]
    n = sum(p.numel() for p in lk.create_model("upernet_unireplknet_a", device="meta").parameters())
    assert info["params_train"] == n


def test_recipe_tables():
    """The spec's section 6 values, and the starting weights each variant's recipe names exist."""
    from largekernel.models.segmentation import ADE20K_RECIPE, ADE20K_VARIANT_RECIPES

    r = ADE20K_RECIPE
    assert (r["iters"], r["batch_size"], r["lr"], r["weight_decay"], r["warmup_iters"]) == (
        160_000, 16, 1e-4, 0.05, 1500)
    assert r["aux_weight"] == 0.4 and r["cat_max_ratio"] == 0.75 and r["ratio_range"] == (0.5, 2.0)
    rates = {k.rsplit("_", 1)[1]: (v["drop_path_rate"], v["layer_decay"])
             for k, v in ADE20K_VARIANT_RECIPES.items()}
    assert rates == {"t": (0.2, 1.0), "s": (0.3, 0.9), "b": (0.3, 0.9), "l": (0.4, 0.85)}
    for name, v in ADE20K_VARIANT_RECIPES.items():
        cfg = lk.get_pretrained_cfg(name.removeprefix("upernet_") + "." + v["pretrained_backbone"])
        assert cfg.hf_hub_filename.endswith(".pth")
    files = {k: lk.get_pretrained_cfg(k.removeprefix("upernet_") + "." + v["pretrained_backbone"]).hf_hub_filename
             for k, v in ADE20K_VARIANT_RECIPES.items()}
    assert files["upernet_unireplknet_t"] == "unireplknet_t_in1k_224_acc83.21.pth"  # spec section 1
    assert files["upernet_unireplknet_b"] == "unireplknet_b_in22k_to_in1k_384_acc87.40.pth"


def test_loss_under_bf16_autocast():
    model = tiny_segmenter()
    x, label = image(2, 32, 32), torch.randint(0, 5, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = segmentation_loss(model.train()(x), label)
    assert r["loss"].dtype == torch.float32 and torch.isfinite(r["loss"])
    r["loss"].backward()
    assert model.decode_head.conv_seg.weight.grad is not None
