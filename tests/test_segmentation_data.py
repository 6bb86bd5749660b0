"""Segmentation data (spec sections 5 and 8): layouts, mask reading and per-file errors, the
authors' augmentation (image and mask transformed together, padding 0/255), the test resize,
synthetic scenes and the label-map writers."""
import numpy as np
import pytest
import torch
from PIL import Image

from largekernel.modalities.segmentation_data import (
    MEAN_255, STD_255, SegmentationDataError, SegmentationDataset, SegSample, SegTestTransform,
    SegTrainTransform, find_samples, hsv_u8_to_rgb, keep_ratio_size, load_pair, photometric_distortion,
    random_crop, read_mask, resize_mask, rgb_to_hsv_u8)
from largekernel.modalities.segmentation_scenes import make_scene, make_seg_scenes
from largekernel.modalities.segmentation_viz import (colorize, default_palette, overlay,
                                                     save_label_png, save_prediction)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_rgb(path, h=12, w=16, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def write_index(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(label, dtype=np.uint8)).save(path)  # 8-bit grayscale PNG


def denormalize(x):
    return (x * torch.tensor(STD_255).view(3, 1, 1) + torch.tensor(MEAN_255).view(3, 1, 1)).permute(1, 2, 0)


# ---------------------------------------------------------------------------------------------
# Layouts and per-file errors
# ---------------------------------------------------------------------------------------------
def test_ade20k_layout_and_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split, names in (("training", ["b", "a"]), ("validation", ["c"])):
        for n in names:
            write_rgb(base / "images" / split / f"ADE_{n}.jpg")
            write_index(base / "annotations" / split / f"ADE_{n}.png",
                        np.array([[0, 1, 150, 255] * 4] * 12))
    info = find_samples(tmp_path, "train")
    assert info.layout == "ade20k" and info.reduce_zero_label and info.num_classes == 150
    assert [SegSample(str(base / "images/training" / f"ADE_{n}.jpg"),
                      str(base / "annotations/training" / f"ADE_{n}.png")) for n in "ab"] == info.samples
    _, mask = load_pair(info.samples[0], 150, reduce_zero_label=True)
    assert mask[0, :4].tolist() == [255, 0, 149, 255]
    assert len(find_samples(base, "val").samples) == 1
    with pytest.raises(SegmentationDataError, match=r"label values \[150\].*reduce_zero_label"):
        load_pair(info.samples[0], 150, reduce_zero_label=False)


def test_voc_layout_reads_palette_indices(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    label = np.zeros((12, 16), dtype=np.uint8)
    label[2:6, 3:9], label[6] = 15, 255  # person, a boundary line
    for n in ("2007_000032", "2007_000039"):
        write_rgb(base / "JPEGImages" / f"{n}.jpg")
        save_label_png(label, base / "SegmentationClass" / f"{n}.png")  # palette PNG, like VOC's
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000039\n2008_999999\n")
    info = find_samples(tmp_path, "train")
    assert info.layout == "voc" and info.num_classes == 21 and not info.reduce_zero_label
    assert Image.open(info.samples[0].mask).mode == "P"
    _, mask = load_pair(info.samples[0], 21)
    assert np.array_equal(mask, label)  # the indices, not the palette colours
    with pytest.raises(SegmentationDataError, match="2008_999999"):
        find_samples(tmp_path, "val")


def test_folders_and_csv_layouts(tmp_path):
    make_seg_scenes(tmp_path / "scenes", train=3, val=2, size=(24, 32), seed=0)
    info = find_samples(tmp_path / "scenes", "val")
    assert info.layout == "folders" and info.num_classes == 6 and info.classes[0] == "background"
    assert info.split_found
    assert [s.image.rsplit("/", 1)[-1] for s in info.samples] == ["scene_0000.png", "scene_0001.png"]
    csv = tmp_path / "scenes" / "pairs.csv"
    csv.write_text("image,mask\nimages/train/scene_0001.png,masks/train/scene_0001.png\n")
    csv_info = find_samples(csv)
    samples = csv_info.samples
    assert not csv_info.split_found
    assert samples == [SegSample(str(tmp_path / "scenes/images/train/scene_0001.png"),
                                 str(tmp_path / "scenes/masks/train/scene_0001.png"))]
    csv.write_text("image,mask\nimages/train/scene_0001.png,masks/train/nope.png\n")
    with pytest.raises(SegmentationDataError, match="line 2: .*nope.png"):
        find_samples(csv)


def test_missing_mask_size_mismatch_and_colour_mask_errors(tmp_path):
    root = tmp_path / "d"
    write_rgb(root / "images" / "a.png")
    write_rgb(root / "images" / "b.png")
    write_index(root / "masks" / "a.png", np.zeros((12, 16)))
    with pytest.raises(SegmentationDataError, match=r"1 image\(s\) have no mask.*b.png"):
        find_samples(root)
    write_index(root / "masks" / "b.png", np.zeros((12, 15)))
    info = find_samples(root)
    assert not info.split_found and len(info.samples) == 2  # no train/ val/ inside: the whole set
    with pytest.raises(SegmentationDataError, match=r"b.png: mask is 15x12 \(WxH\) but its image is 16x12"):
        load_pair(info.samples[1], 3)
    write_rgb(root / "masks" / "b.png")
    with pytest.raises(SegmentationDataError, match="RGB colour image.*class indices"):
        read_mask(root / "masks" / "b.png")
    with pytest.raises(SegmentationDataError, match="no known segmentation layout"):
        find_samples(tmp_path)
    (root / "images" / "c.png").write_bytes(b"not an image")
    write_index(root / "masks" / "c.png", np.zeros((12, 16)))
    with pytest.raises(SegmentationDataError, match="c.png: not a readable image"):
        load_pair(SegSample(str(root / "images" / "c.png"), str(root / "masks" / "c.png")))


def test_dataset_returns_normalised_tensors(tmp_path):
    rgb = write_rgb(tmp_path / "images" / "a.png")
    write_index(tmp_path / "masks" / "a.png", np.full((12, 16), 2))
    ds = SegmentationDataset(find_samples(tmp_path).samples, num_classes=3)
    x, y = ds[0]
    assert x.shape == (3, 12, 16) and y.dtype == torch.int64 and (y == 2).all()
    assert torch.allclose(denormalize(x), torch.from_numpy(rgb).float(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------
def coloured_scene(h, w, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), dtype=np.int64)
    for _ in range(4):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        label[y:y + rng.integers(3, h // 2), x:x + rng.integers(3, w // 2)] = rng.integers(1, 5)
    label[0, :3] = 255
    palette = default_palette(5)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[label != 255] = palette[label[label != 255]]
    return image, label, palette


@pytest.mark.parametrize("seed", range(6))
def test_crop_flip_pad_keep_image_and_mask_together(seed):
    image, label, palette = coloured_scene(40, 50, seed)
    # scale (50, 40) and ratio 1: no rescale, so colours stay exact through crop, flip and pad
    for crop in (32, 64):
        t = SegTrainTransform(crop=crop, scale=(50, 40), ratio_range=(1.0, 1.0), photometric=False)
        x, y = t(image, label, np.random.default_rng(seed))
        assert x.shape == (3, crop, crop) and y.shape == (crop, crop)
        rgb = denormalize(x).round()
        labelled = y != 255
        want = torch.from_numpy(palette.astype(np.float32))[y[labelled]]
        assert torch.equal(rgb[labelled], want)
        if crop == 64:  # padded bottom/right: image 0 after normalisation, mask 255
            assert (x[:, 40:, :] == 0).all() and (x[:, :, 50:] == 0).all()
            assert (y[40:, :] == 255).all() and (y[:, 50:] == 255).all()
            assert int((y != 255).sum()) == int((label != 255).sum())


def test_rescale_keeps_image_and_mask_aligned():
    image, label, palette = coloured_scene(40, 50, 3)
    t = SegTrainTransform(crop=200, scale=(100, 80), ratio_range=(1.0, 1.0), photometric=False,
                          flip_prob=0.0)
    x, y = t(image, label, np.random.default_rng(0))
    assert keep_ratio_size(40, 50, (100, 80)) == (80, 100)
    rgb = denormalize(x)[:80, :100].round().numpy()
    y = y[:80, :100].numpy()
    assert np.array_equal(y, resize_mask(label, (80, 100)))
    # away from label edges (3 x 3 uniform neighbourhood) the bilinear image shows the label's colour
    inner = np.ones_like(y, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner[1:-1, 1:-1] &= (np.roll(np.roll(y, dy, 0), dx, 1) == y)[1:-1, 1:-1]
    inner[[0, -1], :], inner[:, [0, -1]] = False, False
    inner &= y != 255
    assert inner.sum() > 1000
    assert np.abs(rgb[inner] - palette[y[inner]]).max() <= 1


def test_cat_max_ratio_redraws():
    """Only offset 0 gives a crop with two classes: with up to 10 redraws it wins in
    1 - (10/11)^11 = 65% of draws, without redraws in 1/11 = 9%."""
    mask = np.zeros((4, 20), dtype=np.int64)
    mask[:, :3] = 1  # offset 0: 28/40 = 0.7 of class 0; offset 1: 0.8; later ones more
    image = np.zeros((4, 20, 3), dtype=np.uint8)
    hits = {0.75: 0, 1.0: 0}
    for ratio in hits:
        for seed in range(300):
            _, m = random_crop(image, mask, (4, 10), np.random.default_rng(seed), cat_max_ratio=ratio)
            hits[ratio] += int(m[0, 2] == 1)  # only offset 0 keeps column 2
    assert 0.55 < hits[0.75] / 300 < 0.75 and hits[1.0] / 300 < 0.16


def test_hsv_convention_and_photometric():
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]], dtype=np.uint8)
    assert rgb_to_hsv_u8(colours).tolist() == [[[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128]]]
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.abs(hsv_u8_to_rgb(rgb_to_hsv_u8(rgb)).astype(int) - rgb).max() <= 4  # H quantised to 2 degrees
    outs = [photometric_distortion(rgb, np.random.default_rng(s)) for s in range(8)]
    assert all(o.dtype == np.uint8 and o.shape == rgb.shape for o in outs)
    assert any(not np.array_equal(o, rgb) for o in outs)
    assert np.array_equal(outs[3], photometric_distortion(rgb, np.random.default_rng(3)))


def test_train_transform_follows_torch_seed():
    image, label, _ = coloured_scene(40, 50, 1)
    t = SegTrainTransform(crop=32, scale=(100, 40))
    torch.manual_seed(7)
    a = t(image, label)
    torch.manual_seed(7)
    b = t(image, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_test_transform():
    image = np.zeros((64, 85, 3), dtype=np.uint8)
    x, ori = SegTestTransform(scale=(256, 64))(image)
    assert ori == (64, 85) and x.shape == (3, 64, 96)  # 85 -> next multiple of 32
    x, _ = SegTestTransform(scale=(2048, 512))(np.zeros((512, 683, 3), dtype=np.uint8))
    assert x.shape == (3, 512, 704)  # the spec's example


# ---------------------------------------------------------------------------------------------
# Synthetic scenes and writers
# ---------------------------------------------------------------------------------------------
def test_scenes_are_deterministic(tmp_path):
    a = make_seg_scenes(tmp_path / "a", train=3, val=1, size=(32, 40), seed=4)
    make_seg_scenes(tmp_path / "b", train=3, val=1, size=(32, 40), seed=4)
    make_seg_scenes(tmp_path / "c", train=3, val=1, size=(32, 40), seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 8
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    assert abs(sum(a["pixel_fraction"]) - 1) < 1e-9


def test_scenes_have_several_classes_and_occlusions():
    rng = np.random.default_rng(0)
    per_image = []
    for _ in range(10):
        image, label = make_scene((48, 64), rng)
        assert image.shape == (48, 64, 3) and label.shape == (48, 64) and label.max() < 6
        per_image.append(len(np.unique(label)))
    assert min(per_image) >= 2 and np.mean(per_image) >= 3
    # occlusion: a shape drawn later covers part of one drawn earlier
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(10):
        _, label = make_scene((48, 64), rng, min_shapes=5, max_shapes=5)
        covered += len(np.unique(label)) < 6
    assert covered > 0


def test_label_png_and_overlay(tmp_path):
    pal = default_palette(8)
    assert len({tuple(c) for c in pal}) == 8 and tuple(pal[0]) != (0, 0, 0)
    label = np.array([[0, 1], [7, 255]])
    path = save_label_png(label, tmp_path / "l.png")
    assert np.array_equal(read_mask(path), label)  # palette PNG: the pixels are the ids
    assert np.array_equal(np.array(Image.open(path).convert("RGB"))[0, 1], default_palette(256)[1])
    assert colorize(label, pal)[1, 1].tolist() == [0, 0, 0]  # ignore is black
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    over = overlay(image, label, pal, alpha=0.5)
    assert over[1, 1].tolist() == [100, 100, 100]
    assert over[0, 0].tolist() == np.round((100 + pal[0].astype(float)) / 2).astype(int).tolist()
    lp, op = save_prediction(label, image, tmp_path / "out", "img1", pal)
    assert lp.name == "img1.png" and op.name == "img1_overlay.png" and op.is_file()
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((3, 3), dtype=int))


def test_cityscapes_layout(tmp_path):
    for city in ("aachen", "bremen"):
        write_rgb(tmp_path / "leftImg8bit" / "train" / city / f"{city}_000000_000019_leftImg8bit.png")
        write_index(tmp_path / "gtFine" / "train" / city / f"{city}_000000_000019_gtFine_labelTrainIds.png",
                    np.full((12, 16), 18))
    info = find_samples(tmp_path, "train")
    assert info.layout == "cityscapes" and info.num_classes == 19 and len(info.samples) == 2
    assert info.samples[0].mask.endswith("aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
    assert load_pair(info.samples[1], 19)[1].max() == 18
    write_rgb(tmp_path / "leftImg8bit" / "train" / "bremen" / "bremen_000001_000019_leftImg8bit.png")
    with pytest.raises(SegmentationDataError, match="1 image.*createTrainIdLabelImgs"):
        find_samples(tmp_path, "train")


# ---------------------------------------------------------------------------------------------
# Evaluation and prediction over files
# ---------------------------------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """A 'segmenter' that reads the scene's class back from its texture colour: it returns one-hot
    logits of the nearest class colour, so its predictions are known in advance."""

    def __init__(self, colours):
        super().__init__()
        self.colours = torch.tensor(colours, dtype=torch.float32)  # K x 3, normalised

    def forward(self, x):
        d = ((x[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)
        return -d


def test_evaluate_and_predict_files(tmp_path):
    from largekernel.metrics import mean_iou
    from largekernel.modalities.segmentation_data import normalize
    from largekernel.modalities.segmentation_eval import (InferenceOptions, evaluate_segmenter,
                                                          format_iou_table, predict_files)

    pal = default_palette(5)
    labels = []
    for i in range(3):
        image, label, _ = coloured_scene(30, 44, seed=i)
        label[label == 255] = 0
        image = pal[label].astype(np.uint8)
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / "images" / f"s{i}.png")
        write_index(tmp_path / "masks" / f"s{i}.png", np.where(np.arange(44)[None] < 3, 255, label))
        labels.append(label)
    write_rgb(tmp_path / "images" / "bad.png", h=10, w=10)
    write_index(tmp_path / "masks" / "bad.png", np.zeros((11, 10)))
    model = Oracle(normalize(pal[None]).squeeze(1).T.tolist())
    samples = find_samples(tmp_path).samples
    opts = InferenceOptions(scale=None, size_divisor=None)
    result = evaluate_segmenter(model, samples, 5, options=opts)
    assert result.images == 3 and len(result.skipped) == 1 and "bad.png" in result.skipped[0]
    masked = [np.where(np.arange(44)[None] < 3, 255, lab) for lab in labels]
    want = mean_iou(labels, masked, 5)  # the oracle predicts every label exactly
    assert result.metrics["mIoU"] == want["mIoU"] == 1.0 and result.metrics["aAcc"] == 1.0
    table = format_iou_table(result, ["bg", "a", "b", "c", "d"])
    assert "mIoU 100.00" in table and "1 skipped" in table
    assert result.to_dict(["bg", "a", "b", "c", "d"])["IoU"]["bg"] == 1.0
    with pytest.raises(SegmentationDataError, match="bad.png"):
        evaluate_segmenter(model, samples, 5, options=opts, strict=True)
    # flip + multi-scale + slide through the test resize still recovers the flat-colour regions
    tta = InferenceOptions(scale=(88, 30), size_divisor=8, mode="slide", crop=24, stride=16,
                           ratios=(1.0, 1.5), flip=True)
    good = [s for s in samples if "bad" not in s.image]
    assert evaluate_segmenter(model, good, 5, options=tta).metrics["aAcc"] > 0.95
    paths = [tmp_path / "images" / "s0.png", tmp_path / "images" / "s1.png", tmp_path / "nope.png"]
    records, skipped = predict_files(model, paths, tmp_path / "pred", opts, pal)
    assert len(records) == 2 and len(skipped) == 1
    assert np.array_equal(read_mask(records[0]["label"]), labels[0])
    assert Image.open(records[0]["overlay"]).size == (44, 30)


def test_csv_without_header_and_swapped_columns(tmp_path):
    write_rgb(tmp_path / "a.png")
    write_index(tmp_path / "a_mask.png", np.zeros((12, 16)))
    (tmp_path / "plain.csv").write_text("a.png,a_mask.png\nb.png,a_mask.png\n")
    with pytest.raises(SegmentationDataError, match=r"line 2: .*b.png"):
        find_samples(tmp_path / "plain.csv")
    (tmp_path / "swapped.csv").write_text("mask,image\na_mask.png,a.png\n")
    assert find_samples(tmp_path / "swapped.csv").samples == [
        SegSample(str(tmp_path / "a.png"), str(tmp_path / "a_mask.png"))]
