"""mmseg's segmentation metric (spec section 7): hand-computed cases, accumulation, the golden fixture."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from largekernel.metrics import IoUAccumulator, area_counts, mean_iou, reduce_zero_label

FIXTURES = Path(os.environ.get("LARGEKERNEL_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"))
SEG_IO = FIXTURES / "upernet_unireplknet_a_io.pt"
METRIC_TOL = 1e-6  # the fixture README's tolerance for the metrics


def nan_equal(a, b, tol=0.0):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.allclose(a, b, atol=tol, rtol=0, equal_nan=True)


def test_hand_computed_case():
    # valid pixels (label != 255): (pred 0, label 0), (1, 1), (1, 2); one pixel ignored
    pred = torch.tensor([[0, 1], [1, 2]])
    label = torch.tensor([[0, 1], [2, 255]])
    m = mean_iou(pred, label, num_classes=4)
    # I = [1, 1, 0, 0], P = [1, 2, 0, 0], L = [1, 1, 1, 0], U = [1, 2, 1, 0]
    assert nan_equal(m["IoU"], [1.0, 0.5, 0.0, math.nan])
    assert nan_equal(m["Acc"], [1.0, 1.0, 0.0, math.nan])
    assert m["aAcc"] == pytest.approx(2 / 3, abs=1e-15)
    assert m["mIoU"] == pytest.approx(0.5, abs=1e-15)  # nan class left out: (1 + .5 + 0) / 3
    assert m["mAcc"] == pytest.approx(2 / 3, abs=1e-15)


def test_counts_and_out_of_range_predictions():
    # a prediction of 9 with 3 classes counts toward nobody's prediction area, but its label still counts
    pred = np.array([[9, 0, 2]], dtype=np.int64)
    label = np.array([[0, 0, 2]], dtype=np.uint8)
    counts = area_counts(pred, label, 3)
    assert counts.tolist() == [[1, 0, 1], [2, 0, 1], [1, 0, 1], [2, 0, 1]]  # I, U, P, L
    m = mean_iou(pred, label, 3)
    assert nan_equal(m["IoU"], [0.5, math.nan, 1.0]) and m["aAcc"] == pytest.approx(2 / 3)


def test_reduce_zero_label_on_a_copy():
    """The spec's case where mmseg 0.x edits the caller's array in place: ours must not."""
    label = np.array([[0, 1, 2], [255, 3, 0]], dtype=np.uint8)
    before = label.copy()
    assert reduce_zero_label(torch.from_numpy(label)).tolist() == [[255, 0, 1], [255, 2, 255]]
    pred = np.array([[5, 0, 1], [0, 2, 0]], dtype=np.uint8)
    m = mean_iou(pred, label, 3, reduce_zero_label=True)
    assert (label == before).all()
    assert nan_equal(m["IoU"], [1.0, 1.0, 1.0]) and m["aAcc"] == 1.0


def test_accumulated_over_the_set_not_averaged_per_image():
    # image 1: 1 pixel of class 0, right; image 2: 3 pixels of class 0, all predicted 1
    p1, l1 = torch.tensor([[0]]), torch.tensor([[0]])
    p2, l2 = torch.tensor([[1, 1, 1]]), torch.tensor([[0, 0, 0]])
    m = mean_iou([p1, p2], [l1, l2], num_classes=2)
    assert m["aAcc"] == pytest.approx(0.25)  # per-image averaging would give 0.5
    assert nan_equal(m["IoU"], [0.25, 0.0])
    acc = IoUAccumulator(2)
    acc.update(p1, l1)
    acc.update(p2, l2)
    assert acc.images == 2
    assert nan_equal(acc.compute()["IoU"], m["IoU"]) and acc.compute()["aAcc"] == m["aAcc"]


def test_batch_equals_list():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (3, 7, 9), generator=g)
    label = torch.randint(0, 6, (3, 7, 9), generator=g)
    label[label == 5] = 255
    a, b = mean_iou(pred, label, 5), mean_iou(list(pred), list(label), 5)
    assert nan_equal(a["IoU"], b["IoU"]) and a["mIoU"] == b["mIoU"]


def test_empty_set_is_nan():
    m = mean_iou(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 255), 3)
    assert math.isnan(m["aAcc"]) and math.isnan(m["mIoU"]) and torch.isnan(m["IoU"]).all()


@pytest.mark.parametrize("pred,label,msg", [
    (torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), "differ in shape"),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), "integer class indices"),
    (torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), r"label values \[7\] are outside 0..2"),
])
def test_bad_input_errors(pred, label, msg):
    with pytest.raises(ValueError, match=msg):
        mean_iou(pred, label, 3)


@pytest.mark.shared
@pytest.mark.skipif(not SEG_IO.is_file(), reason=f"golden fixture {SEG_IO} is absent (needs ../shared)")
@pytest.mark.parametrize("reduce", [False, True])
def test_fixture_metrics(reduce):
    io = torch.load(SEG_IO, weights_only=True)
    ref = io["metrics"][f"reduce_zero_label_{str(reduce).lower()}"]
    got = mean_iou(io["pred"], io["label"], io["settings"]["num_classes"], reduce_zero_label=reduce)
    for key in ("aAcc", "IoU", "Acc", "mIoU", "mAcc"):
        assert nan_equal(got[key], ref[key], METRIC_TOL), key
