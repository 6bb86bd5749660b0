"""The image modality: datasets, decoding, corrupt files, transforms, and the digits dataset."""
import dataclasses
import io
import os

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from PIL import Image

from largekernel.engine.config import TrainConfig
from largekernel.modalities import Skipped, collate, get_modality, modality_for_file
from largekernel.modalities.digits import write_digits_dataset
from largekernel.modalities.image import (IMAGENET_MEAN, IMAGENET_STD, ImageModality, build_transform,
                                          parse_randaug, read_image, resolve_mean_std)
from largekernel.models import registry


def cfg(**kw) -> TrainConfig:
    """A small config: 16 px, no augmentation unless asked."""
    base = dict(input_size=16, crop_pct=1.0, randaug=None, reprob=0.0, hflip=0.0, val_split=0.0)
    return TrainConfig(**{**base, **kw})


def save(path, mode="RGB", size=(20, 16), color=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.new("RGB", size, color).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = Image.new(mode, size, color)
    img.save(path, format=fmt)
    return path


def folder(root, per_class=None):
    """root/<class>/ with a mix of modes and formats."""
    per_class = per_class or {"cat": 2, "dog": 3, "bird": 1}
    for c, n in per_class.items():
        for i in range(n):
            save(root / c / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- datasets

def test_registered():
    assert isinstance(get_modality("image"), ImageModality)
    assert isinstance(modality_for_file("a/b.JPEG"), ImageModality)


def test_image_folder_modes_labels_and_order(tmp_path):
    root = tmp_path / "data"
    save(root / "cat" / "rgb.png", "RGB", color=(255, 0, 0))
    save(root / "cat" / "gray.png", "L", color=128)
    save(root / "dog" / "rgba.png", "RGBA", color=(0, 0, 0, 0))  # fully transparent -> white
    save(root / "dog" / "pal.gif", "P", color=(0, 0, 255))
    save(root / "bird" / "photo.jpg", "RGB", color=(0, 255, 0), fmt="JPEG")
    (root / "bird" / "notes.txt").write_text("not an image")
    bundle = ImageModality().datasets(cfg(train=str(root)))
    assert bundle.classes == ["bird", "cat", "dog"] and bundle.val is None
    ds = bundle.train
    names = {os.path.basename(p): y for p, y in ds.samples}
    assert names == {"photo.jpg": 0, "gray.png": 1, "rgb.png": 1, "pal.gif": 2, "rgba.png": 2}
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == ds.samples[i][1]


def test_decoding_modes(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    rgba.save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.shape == (3, 4, 4) and x[:, 0, 0].tolist() == [0, 0, 0] and x[:, 3, 3].tolist() == [1, 1, 1]
    x = read_image(save(tmp_path / "p.png", "P", color=(0, 0, 255)))
    assert torch.allclose(x[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    x = read_image(save(tmp_path / "l.png", "L", color=51))
    assert x.shape == (3, 16, 20) and torch.allclose(x, torch.full_like(x, 0.2))
    Image.new("CMYK", (5, 5), (0, 0, 0, 0)).save(tmp_path / "c.jpg")  # CMYK white
    assert read_image(tmp_path / "c.jpg").min() > 0.95
    x = read_image(save(tmp_path / "rgb.png", "RGB", color=(255, 0, 0)), in_chans=1)
    assert x.shape == (1, 16, 20) and abs(x[0, 0, 0].item() - 76 / 255) < 0.01  # Pillow's luma


def test_csv_dataset(tmp_path):
    imgs = folder(tmp_path / "imgs", {"x": 1})
    a, b = save(imgs / "a.png"), save(imgs / "b.png")
    (tmp_path / "lists").mkdir()
    csv = tmp_path / "lists" / "train.csv"
    csv.write_text(f"path,label\n../imgs/a.png,zebra\n\n{b},ant\n../imgs/x/0.png,zebra\n")
    bundle = ImageModality().datasets(cfg(train=str(csv)))
    assert bundle.classes == ["ant", "zebra"]
    assert [(os.path.abspath(p), y) for p, y in bundle.train.samples] == [
        (os.path.abspath(a), 1), (str(b), 0), (os.path.abspath(imgs / "x" / "0.png"), 1)]
    # no header, and a fixed class order
    csv.write_text("../imgs/a.png,zebra\n../imgs/b.png,ant\n")
    bundle = ImageModality().datasets(cfg(train=str(csv), classes=["zebra", "ant", "unused"]))
    assert bundle.classes == ["zebra", "ant", "unused"] and bundle.train.targets == [0, 1]
    assert bundle.train[1][0].shape == (3, 16, 16)


def test_val_folder_and_eval_mode(tmp_path):
    train = folder(tmp_path / "train")
    val = folder(tmp_path / "val", {"dog": 1, "cat": 1})  # a subset of the training classes
    b = ImageModality().datasets(cfg(train=str(train), val=str(val)))
    assert b.classes == ["bird", "cat", "dog"] and len(b.train) == 6
    assert sorted(b.val.targets) == [1, 2]
    e = ImageModality().datasets(cfg(val=str(val), classes=["bird", "cat", "dog"]), train=False)
    assert e.train is None and e.classes == ["bird", "cat", "dog"] and sorted(e.val.targets) == [1, 2]
    e = ImageModality().datasets(cfg(train=str(val), classes=["dog", "cat"]), train=False)
    assert sorted(e.val.targets) == [0, 1]


def test_stratified_split_is_deterministic(tmp_path):
    root = folder(tmp_path / "d", {"a": 10, "b": 10, "c": 5})

    def split(seed):
        b = ImageModality().datasets(cfg(train=str(root), val_split=0.2, seed=seed))
        return b.train.samples, b.val.samples

    tr, va = split(0)
    assert sorted(tr + va) == sorted(ImageModality().datasets(cfg(train=str(root))).train.samples)
    assert not set(tr) & set(va)
    assert [y for _, y in va].count(0) == 2 and [y for _, y in va].count(1) == 2
    assert [y for _, y in va].count(2) == 1
    assert split(0) == (tr, va)
    assert split(1)[1] != va


@pytest.mark.parametrize("case, match", [
    ("missing_folder", r"nope does not exist; pass a folder"),
    ("missing_csv", r"nope\.csv does not exist"),
    ("empty_class", r"empty: class folder has no images"),
    ("no_images", r"no images found; expected one subfolder per class"),
    ("empty_csv", r"the CSV lists no images"),
    ("bad_label", r"train\.csv, line 2: label 'c' is not in the configured classes"),
    ("bad_row", r"train\.csv, line 3: expected 2 columns"),
    ("missing_file", r"train\.csv, line 2: file .*gone\.png does not exist"),
    ("val_not_subset", r"class\(es\) \['fish'\] are not in the training classes"),
    ("val_csv_label", r"val\.csv, line 1: label 'fish' is not in the training classes"),
])
def test_dataset_errors(tmp_path, case, match):
    img = save(tmp_path / "img.png")
    csv = tmp_path / "train.csv"
    kw = dict(train=str(tmp_path / "root"))
    folder(tmp_path / "root", {"a": 1, "b": 1})
    if case == "missing_folder":
        kw["train"] = str(tmp_path / "nope")
    elif case == "missing_csv":
        kw["train"] = str(tmp_path / "nope.csv")
    elif case == "empty_class":
        (tmp_path / "root" / "empty").mkdir()
    elif case == "no_images":
        kw["train"] = str(tmp_path / "blank")
        (tmp_path / "blank").mkdir()
        save(tmp_path / "blank" / "loose.png")  # not in a class folder
    elif case == "empty_csv":
        csv.write_text("path,label\n")
        kw = dict(train=str(csv))
    elif case == "bad_label":
        csv.write_text(f"{img},a\n{img},c\n")
        kw = dict(train=str(csv), classes=["a", "b"])
    elif case == "bad_row":
        csv.write_text(f"path,label\n{img},a\n{img}\n")
        kw = dict(train=str(csv))
    elif case == "missing_file":
        csv.write_text(f"path,label\ngone.png,a\n{img},a\n")
        kw = dict(train=str(csv))
    elif case == "val_not_subset":
        folder(tmp_path / "val", {"a": 1, "fish": 1})
        kw["val"] = str(tmp_path / "val")
    elif case == "val_csv_label":
        (tmp_path / "val.csv").write_text(f"{img},fish\n")
        kw["val"] = str(tmp_path / "val.csv")
    with pytest.raises(ValueError, match=match):
        ImageModality().datasets(cfg(**kw))


# ----------------------------------------------------------------------------- corrupt files

def corrupt_files(tmp_path):
    root = folder(tmp_path / "root", {"a": 2})
    (root / "a" / "noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "a" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return root


def test_corrupt_files_skipped_or_strict(tmp_path):
    root = corrupt_files(tmp_path)
    ds = ImageModality().datasets(cfg(train=str(root))).train
    items = {os.path.basename(p): ds[i] for i, (p, _) in enumerate(ds.samples)}
    for bad in ("noise.png", "cut.jpg"):
        assert isinstance(items[bad], Skipped) and items[bad].path.endswith(bad)
        assert "cannot read image" in items[bad].reason
    batch = collate(list(items.values()))
    assert batch["x"].shape == (2, 3, 16, 16) and batch["y"].tolist() == [0, 0]
    assert sorted(os.path.basename(s.path) for s in batch["skipped"]) == ["cut.jpg", "noise.png"]
    strict = ImageModality().datasets(cfg(train=str(root), strict=True)).train
    for i, (p, _) in enumerate(strict.samples):
        if p.endswith(("noise.png", "cut.jpg")):
            with pytest.raises(ValueError, match=rf"{os.path.basename(p)}: cannot read image"):
                strict[i]
    with pytest.raises(ValueError, match=r"noise\.png: cannot read image"):
        ImageModality().load(root / "a" / "noise.png", cfg())
    with pytest.raises(ValueError, match=r"absent\.png: cannot read image"):
        ImageModality().load(root / "absent.png", cfg())


# ----------------------------------------------------------------------------- transforms

def test_train_transform_seeded():
    tf = build_transform(cfg(input_size=24, randaug="m9", reprob=0.25, hflip=0.5, scale=(0.08, 1.0)), True)
    x = torch.rand(3, 40, 50)

    def run(seed):
        torch.manual_seed(seed)
        return tf(x)

    a = run(0)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, run(0))
    assert not torch.allclose(a, run(1))


def test_train_transform_crops():
    # the full image, square: the crop is the identity, so only the (certain) flip remains
    x = torch.linspace(0, 1, 32).expand(3, 32, 32).clone()
    tf = build_transform(cfg(input_size=32, scale=(1.0, 1.0), hflip=1.0, mean=(0.0,), std=(1.0,)), True)
    tf.rrc = K.RandomResizedCrop((32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(tf(x), x.flip(-1), atol=1e-5)


def test_parse_randaug():
    assert parse_randaug("m9") == (2, 27) and parse_randaug("rand-m9-mstd0.5-inc1") == (2, 27)
    assert parse_randaug("m10-n3") == (3, 29) and parse_randaug("m0") == (2, 1)
    assert parse_randaug(None) is None and parse_randaug("none") is None
    with pytest.raises(ValueError, match="expected e.g. 'm9'"):
        parse_randaug("strong")


def test_eval_transform_centre_crop():
    # short side already int(32 / 0.8) = 40: a pure centre crop
    x = torch.arange(40 * 80, dtype=torch.float32).reshape(1, 40, 80).expand(3, -1, -1) / 3200
    ev = build_transform(cfg(input_size=32, crop_pct=0.8, mean=(0.0,), std=(1.0,)), False)
    y = ev(x)
    assert torch.equal(y, x[:, 4:36, 24:56]) and torch.equal(ev(x), y)
    # 80 x 160 horizontal ramp -> 40 x 80 (bicubic, antialiased) -> columns 24..55
    ramp = (torch.arange(160).float() / 159).expand(3, 80, 160).clone()
    y = ev(ramp)
    j = torch.arange(24, 56).float()
    assert y.shape == (3, 32, 32) and torch.allclose(y, ((2 * j + 0.5) / 159).expand(3, 32, 32), atol=1e-4)


def test_normalisation_uses_pretrained_cfg(monkeypatch):
    real = registry.get_pretrained_cfg
    monkeypatch.setattr(registry, "get_pretrained_cfg",
                        lambda name: dataclasses.replace(real(name), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.1)))
    assert resolve_mean_std(cfg()) == ((0.1, 0.2, 0.3), (0.5, 0.25, 0.1))
    y = build_transform(cfg(), False)(torch.full((3, 16, 16), 0.5))
    assert torch.allclose(y[:, 0, 0], torch.tensor([0.8, 1.2, 2.0]))
    assert resolve_mean_std(cfg(mean=(0.5, 0.5, 0.5)))[0] == (0.5, 0.5, 0.5)  # explicit wins
    mean1, std1 = resolve_mean_std(cfg(in_chans=1))  # averaged to one channel
    assert mean1 == pytest.approx((0.2,)) and std1 == pytest.approx((0.85 / 3,))
    monkeypatch.setattr(registry, "get_pretrained_cfg", lambda name: (_ for _ in ()).throw(ValueError()))
    assert resolve_mean_std(cfg()) == (IMAGENET_MEAN, IMAGENET_STD)


def test_single_channel(tmp_path):
    root = folder(tmp_path / "root", {"a": 1})
    save(root / "a" / "rgba.png", "RGBA", color=(10, 20, 30, 100))
    c = cfg(train=str(root), in_chans=1, randaug="m9", reprob=0.5, hflip=0.5)
    for ds in (ImageModality().datasets(c).train, ImageModality().datasets(c, train=False).val):
        assert all(ds[i][0].shape == (1, 16, 16) for i in range(len(ds)))
    assert ImageModality().load(root / "a" / "0.png", cfg(in_chans=1)).shape == (1, 16, 16)


# ----------------------------------------------------------------------------- digits

def test_digits_dataset(tmp_path):
    from sklearn.datasets import load_digits

    counts = write_digits_dataset(tmp_path, size=32, seed=0)
    assert counts["train"] == 1438 and counts["val"] == 359
    assert len(list(tmp_path.rglob("*.png"))) == 1797
    per_class = np.bincount(load_digits().target)
    for d in range(10):
        n_train = len(list((tmp_path / "train" / str(d)).glob("*.png")))
        n_val = len(list((tmp_path / "val" / str(d)).glob("*.png")))
        assert n_train + n_val == per_class[d] and n_val == round(0.2 * per_class[d])
        assert counts["per_class"][str(d)] == {"train": n_train, "val": n_val}
    # the image content is the sklearn digit (a 0 has a dark hole in the middle)
    zero = next((tmp_path / s / "0" / "0000.png") for s in ("train", "val") if (tmp_path / s / "0" / "0000.png").exists())
    x = read_image(zero, in_chans=1)
    assert x.shape == (1, 32, 32) and x[0, 14:18, 14:18].mean() < 0.2 and x.max() > 0.9
    c = cfg(train=str(tmp_path / "train"), val=str(tmp_path / "val"), input_size=32, in_chans=1)
    b = ImageModality().datasets(c)
    assert b.classes == [str(d) for d in range(10)] and (len(b.train), len(b.val)) == (1438, 359)
    x, y = b.val[0]
    assert x.shape == (1, 32, 32) and y == 0
    with pytest.raises(ValueError, match="already exists"):
        write_digits_dataset(tmp_path)
