"""data_config / create_transform: the authors' evaluation preprocessing, by hand and against the image modality.

Tolerance: every comparison is of float32 values (x / 255 - mean) / std of magnitude <= 2.7 computed by
the same or equivalent float32 operations, against references from the same uint8 pixels; 1e-6 is a few
float32 ulps at that magnitude (2.4e-7 each), so any real difference (one grey level is 0.017) fails.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import largekernel as lk
from largekernel.engine.config import TrainConfig
from largekernel.modalities import get_modality
from largekernel.models.registry import IMAGENET_MEAN, IMAGENET_STD
from largekernel.transforms import resize_shape

ATOL = 1e-6


def normalise(arr: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """A (H, W, C) uint8 array -> the normalised (C, H, W) float tensor, in float64 then cast."""
    x = arr.astype(np.float64).transpose(2, 0, 1) / 255
    x = (x - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    return torch.from_numpy(x).float()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_data_config_of_names_and_models():
    assert lk.data_config("unireplknet_a.in1k") == dict(
        input_size=(3, 224, 224), interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        crop_pct=0.875, crop_mode="center")
    c384 = lk.data_config("unireplknet_b.in22k_ft_in1k_384")
    assert (c384["input_size"], c384["crop_pct"], c384["crop_mode"]) == ((3, 384, 384), 1.0, "squash")
    assert lk.data_config("unireplknet_l.in22k")["input_size"] == (3, 192, 192)
    model = lk.create_model("unireplknet_s.in22k_ft_in1k_384", device="meta")
    assert lk.data_config(model) == c384
    assert lk.data_config(lk.get_pretrained_cfg("unireplknet_a")) == lk.data_config("unireplknet_a")


def test_data_config_overrides_and_grayscale():
    cfg = lk.data_config("unireplknet_t", input_size=256, crop_pct=0.95)
    assert (cfg["input_size"], cfg["crop_pct"]) == ((3, 256, 256), 0.95)
    gray = lk.data_config(lk.create_model("unireplknet_a", in_chans=1, device="meta"))
    assert gray["input_size"] == (1, 224, 224)
    assert gray["mean"] == pytest.approx((sum(IMAGENET_MEAN) / 3,), abs=1e-12)
    assert gray["std"] == pytest.approx((sum(IMAGENET_STD) / 3,), abs=1e-12)


def test_data_config_errors():
    with pytest.raises(ValueError, match=r"unknown data config field\(s\) \['size'\]; allowed: input_size"):
        lk.data_config("unireplknet_a", size=256)
    with pytest.raises(TypeError, match="data_config needs a model built by largekernel.create_model"):
        lk.data_config(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown model 'unireplknet_q'"):
        lk.data_config("unireplknet_q")
    with pytest.raises(ValueError, match=r"mean=\[0.5, 0.5\] has 2 values for 3 input channel"):
        lk.data_config("unireplknet_a", mean=(0.5, 0.5))


@pytest.mark.parametrize("change, message", [
    (dict(interpolation="lanczos"), "interpolation='lanczos'; choose one of bicubic, bilinear, nearest"),
    (dict(crop_mode="border"), "crop_mode='border'; choose one of center, squash"),
    (dict(crop_pct=0.0), r"crop_pct=0.0 must be in \(0, 1\]"),
    (dict(crop_pct=1.2), r"crop_pct=1.2 must be in \(0, 1\]"),
    (dict(std=(0.2, 0.0, 0.2)), "must be positive"),
    (dict(input_size=(4, 32, 32)), r"expected \(3, H, W\) or \(1, H, W\)"),
    (dict(input_size=0), r"input_size=\(3, 0, 0\): expected"),
    (dict(scale=(0.08, 1)), r"unknown data config field\(s\) \['scale'\]"),
])
def test_create_transform_errors(change, message):
    with pytest.raises(ValueError, match=message):
        lk.create_transform(lk.data_config("unireplknet_a"), **change)


def test_create_transform_needs_every_field():
    with pytest.raises(ValueError, match=r"needs \['interpolation', .*'crop_mode'\]; pass largekernel.data_config"):
        lk.create_transform(dict(input_size=(3, 32, 32)))


def test_resize_arithmetic():
    """The authors' numbers: short side int(224 / 0.875) = 256, long side int(256 * long / short)."""
    center = dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode="center")
    assert resize_shape(300, 400, **center) == (256, 341)
    assert resize_shape(400, 300, **center) == (341, 256)
    assert resize_shape(100, 100, **center) == (256, 256)
    assert resize_shape(300, 400, (3, 384, 384), 1.0, "squash") == (384, 384)
    assert resize_shape(300, 400, (3, 384, 384), 1.0, "center") == (384, 512)
    assert resize_shape(300, 400, (3, 64, 96), 0.8, "center") == (80, 120)  # non-square: both sides


def test_constant_image_gives_the_normalised_colour():
    """Any resize keeps a constant image constant: the output is (c / 255 - mean) / std everywhere."""
    colour = (10, 128, 250)
    image = Image.new("RGB", (400, 300), colour)
    for name in ("unireplknet_a.in1k", "unireplknet_s.in22k_ft_in1k_384"):
        cfg = lk.data_config(name, input_size=48)
        out = lk.create_transform(cfg)(image)
        assert out.shape == (3, 48, 48) and out.dtype == torch.float32
        want = normalise(np.broadcast_to(np.array(colour, np.uint8), (48, 48, 3)))
        torch.testing.assert_close(out, want, rtol=0, atol=ATOL)


def test_centre_crop_positions_by_hand():
    """No resize needed (short side already int(64 / 0.8) = 80): the output is pixels [8:72, 30:94]."""
    arr = noise(80, 123)
    out = lk.create_transform(lk.data_config("unireplknet_a", input_size=64, crop_pct=0.8))(Image.fromarray(arr))
    # top = round((80 - 64) / 2) = 8, left = round((123 - 64) / 2) = round(29.5) = 30 (Python's and
    # torchvision's half-to-even rounding; flooring would give 29)
    torch.testing.assert_close(out, normalise(arr[8:72, 30:94]), rtol=0, atol=ATOL)


def test_squash_keeps_the_whole_image_and_center_crops_it():
    """A 100 x 300 image, red in its left third: squash keeps the red, the centre crop cuts it off."""
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)
    arr[:, 100:] = (0, 0, 255)
    image = Image.fromarray(arr)
    red, blue = normalise(np.array([[[255, 0, 0]]], np.uint8))[:, 0, 0], normalise(np.array([[[0, 0, 255]]], np.uint8))[:, 0, 0]
    squash = lk.create_transform(lk.data_config("unireplknet_a", input_size=64, crop_pct=1.0, crop_mode="squash"))(image)
    # width 300 -> 64 (scale 4.6875, bicubic support 2 * 4.6875 input pixels): output column j is pure
    # red while (j + 0.5) * 4.6875 + 9.375 <= 100, i.e. j <= 18; pure blue from j >= 24
    torch.testing.assert_close(squash[:, :, :19], red.view(3, 1, 1).expand(3, 64, 19), rtol=0, atol=ATOL)
    torch.testing.assert_close(squash[:, :, 24:], blue.view(3, 1, 1).expand(3, 64, 40), rtol=0, atol=ATOL)
    center = lk.create_transform(lk.data_config("unireplknet_a", input_size=64, crop_pct=0.875))(image)
    torch.testing.assert_close(center, blue.view(3, 1, 1).expand(3, 64, 64), rtol=0, atol=ATOL)


@pytest.mark.parametrize("interpolation, pil_filter", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
def test_matches_the_authors_pipeline_written_out(interpolation, pil_filter):
    """The authors' torchvision eval steps on a Pillow image, spelled out: Resize(short side), CenterCrop,
    ToTensor, Normalize; and Resize((size, size)) for their 384 (squash) evaluation."""
    arr = noise(150, 200, seed=1)
    image = Image.fromarray(arr)
    out = lk.create_transform(lk.data_config("unireplknet_a", input_size=64, interpolation=interpolation))(image)
    short = int(64 / 0.875)  # 73
    resized = np.asarray(image.resize((int(short * 200 / 150), short), pil_filter))  # 97 x 73
    top, left = int(round((73 - 64) / 2)), int(round((97 - 64) / 2))
    torch.testing.assert_close(out, normalise(resized[top:top + 64, left:left + 64]), rtol=0, atol=ATOL)

    squash = lk.create_transform(lk.data_config("unireplknet_s.in22k_ft_in1k_384", input_size=64,
                                                interpolation=interpolation))(image)
    torch.testing.assert_close(squash, normalise(np.asarray(image.resize((64, 64), pil_filter))), rtol=0, atol=ATOL)


def test_paths_and_images_agree(tmp_path):
    arr = noise(90, 70, seed=2)
    Image.fromarray(arr).save(tmp_path / "x.png")
    rgba = np.dstack([arr, np.full((90, 70), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    t = lk.create_transform(lk.data_config("unireplknet_a", input_size=32))
    torch.testing.assert_close(t(tmp_path / "x.png"), t(Image.fromarray(arr)), rtol=0, atol=0)
    torch.testing.assert_close(t(str(tmp_path / "a.png")), t(Image.fromarray(rgba, "RGBA")), rtol=0, atol=0)
    # transparency is composited on white (as the image modality reads files), not dropped
    assert not torch.equal(t(tmp_path / "a.png"), t(tmp_path / "x.png"))


def test_bad_inputs(tmp_path):
    t = lk.create_transform(lk.data_config("unireplknet_a", input_size=32))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad.jpg: cannot read image"):
        t(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match=r"missing.png: cannot read image"):
        t(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="expected a PIL.Image or a file path, got Tensor"):
        t(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("size, crop_pct, shape, in_chans", [
    (64, 0.8, (80, 123), 3),   # short side int(64 / 0.8) = 80: centre crop only, left offset 29.5 -> 30
    (48, 1.0, (61, 48), 3),    # crop_pct 1: short side 48
    (40, 0.875, (45, 52), 1),  # grayscale: int(40 / 0.875) = 45
])
def test_same_tensor_as_the_image_modality(tmp_path, size, crop_pct, shape, in_chans):
    """For images whose short side is already int(size / crop_pct), create_transform and the image
    modality's eval preprocessing (`predict`'s) decode, crop and normalise to the same tensor."""
    path = tmp_path / "img.png"
    Image.fromarray(noise(*shape, seed=3)).save(path)
    cfg = TrainConfig(model="unireplknet_a", input_size=size, crop_pct=crop_pct, in_chans=in_chans)
    want = get_modality("image").load(path, cfg)
    model = lk.create_model("unireplknet_a", in_chans=in_chans, device="meta")
    got = lk.create_transform(lk.data_config(model, input_size=size, crop_pct=crop_pct))(path)
    assert got.shape == want.shape == (in_chans, size, size)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


def test_a_pretrained_shaped_pipeline_runs_end_to_end():
    """The README's Python path at a tiny size: names, config, transform, a forward pass, top-5 names."""
    model = lk.create_model("unireplknet_a").eval()
    transform = lk.create_transform(lk.data_config(model, input_size=32))
    names = lk.class_names_for(model)
    with torch.no_grad():
        probs = model(transform(Image.fromarray(noise(40, 50)))[None]).softmax(-1)[0]
    top = probs.topk(5)
    assert len(names) == probs.numel() == 1000
    assert all(isinstance(names[i], str) and names[i] for i in top.indices.tolist())
    assert torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-5)


def test_cli_predict_with_a_pretrained_name_uses_the_python_preprocessing(tmp_path, monkeypatch,
                                                                          randomize_reparam_state):
    """`predict IMG --model NAME` (and `--checkpoint AUTHORS.pth --model NAME`) gives exactly the
    probabilities of the documented Python path (create_model(pretrained=True) +
    create_transform(data_config(model))), on an image that must be resized; and they differ from the
    image modality's kornia resize, so the test tells them apart."""
    import json

    import huggingface_hub.constants

    from clitools import run_cli
    from test_hub import make_cache

    torch.manual_seed(0)
    model = lk.create_model("unireplknet_a")
    randomize_reparam_state(model, 0)  # layer scales of a trained net: the input matters
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    cache = make_cache(tmp_path / "hub", {"unireplknet_a_in1k_224_acc77.03.pth": tmp_path / "weights.pth"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = tmp_path / "photo.png"
    Image.fromarray(noise(300, 380, seed=5)).save(path)

    code, out, err = run_cli(["predict", path, "--model", "unireplknet_a.in1k", "--topk", "5", "--json"])
    assert code == 0, err
    top = json.loads(out)[0]["top"]

    model = lk.create_model("unireplknet_a.in1k", pretrained=True).eval()
    transform = lk.create_transform(lk.data_config(model))
    names = lk.class_names_for(model)
    with torch.no_grad():
        probs = model(transform(Image.open(path))[None]).softmax(-1)[0]
        kornia = model(get_modality("image").load(path, TrainConfig(model="unireplknet_a"))[None]).softmax(-1)[0]
    want = probs.topk(5)
    assert [t["index"] for t in top] == want.indices.tolist()
    assert [t["label"] for t in top] == [names[i] for i in want.indices.tolist()]
    # the same float32 operations on the same tensor: equal to the bit
    assert [t["prob"] for t in top] == want.values.tolist()
    assert (kornia - probs).abs().max() > 1e-4
    # the same file given as an authors' checkpoint with its architecture: the same preprocessing
    code, out, err = run_cli(["predict", path, "--checkpoint", tmp_path / "weights.pth", "--model",
                              "unireplknet_a.in1k", "--topk", "5", "--json"])
    assert code == 0, err
    assert json.loads(out)[0]["top"] == top
