"""Tests for evaluation/metrics.py (the protocol of docs/PROTOCOL.md section 1).

Expected values are computed independently: by hand for tiny maps, and by explicit Python
loops over pixels for random ones.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from evaluation.metrics import (
    FewShotMeter,
    intersection_and_union,
    pad_to_square,
)

IGNORE = 255


def intersection_and_union_numpy(
    prediction: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An independent NumPy implementation (BAM's intersectionAndUnion) to check the torch one."""
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} != target shape {target.shape}")
    prediction = prediction.reshape(-1).astype(np.int64)
    target = target.reshape(-1).astype(np.int64)
    prediction = np.where(target == ignore_index, ignore_index, prediction)
    intersection = prediction[prediction == target]
    bin_edges = np.arange(num_classes + 1)  # one integer per bin: [0,1), [1,2), ... [K-1, K]

    def histogram(values: np.ndarray) -> np.ndarray:
        # Drop out-of-range ids first: np.histogram's last bin is closed and would take K.
        values = values[(values >= 0) & (values < num_classes)]
        return np.histogram(values, bins=bin_edges)[0].astype(np.float64)

    area_intersection = histogram(intersection)
    area_prediction = histogram(prediction)
    area_target = histogram(target)
    area_union = area_prediction + area_target - area_intersection
    return area_intersection, area_union, area_target


def loop_areas(prediction, target, num_classes=2, ignore=IGNORE):
    """Reference: per-class intersection / union / target areas by visiting every pixel."""
    intersection = [0] * num_classes
    union = [0] * num_classes
    target_area = [0] * num_classes
    for predicted, true in zip(prediction.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if true == ignore:
            continue
        for label in range(num_classes):
            in_prediction = predicted == label
            in_target = true == label
            intersection[label] += in_prediction and in_target
            union[label] += in_prediction or in_target
            target_area[label] += in_target
    return intersection, union, target_area


# ----------------------------------------------------------------- intersection_and_union
def test_intersection_and_union_by_hand():
    prediction = torch.tensor([[0, 1, 1],
                               [1, 1, 0]])
    target = torch.tensor([[0, 1, 255],
                           [0, 255, 0]])
    # Non-ignored pixels (prediction, target): (0,0) (1,1) (1,0) (0,0).
    # Class 0: intersection 2, prediction 2, target 3 -> union 3.
    # Class 1: intersection 1, prediction 2, target 1 -> union 2.
    intersection, union, area_target = intersection_and_union(prediction, target, 2)
    assert intersection.tolist() == [2, 1]
    assert union.tolist() == [3, 2]
    assert area_target.tolist() == [3, 1]
    # The inputs are left untouched (the original overwrote the prediction in place).
    assert prediction.tolist() == [[0, 1, 1], [1, 1, 0]]

    numpy_result = intersection_and_union_numpy(prediction.numpy(), target.numpy(), 2)
    assert [part.tolist() for part in numpy_result] == [[2, 1], [3, 2], [3, 1]]


@pytest.mark.parametrize("num_classes", [2, 4])
def test_intersection_and_union_matches_pixel_loop(num_classes):
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randint(0, num_classes, (3, 9, 7), generator=generator)
    target = torch.randint(0, num_classes, (3, 9, 7), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.2] = IGNORE
    expected = loop_areas(prediction, target, num_classes)
    result = intersection_and_union(prediction, target, num_classes)
    assert [part.tolist() for part in result] == [list(map(float, values)) for values in expected]
    numpy_result = intersection_and_union_numpy(prediction.numpy(), target.numpy(), num_classes)
    assert [part.tolist() for part in numpy_result] == [list(map(float, values)) for values in expected]


def test_intersection_and_union_shape_mismatch():
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\) != target shape \(3, 2\)"):
        intersection_and_union(torch.zeros(2, 3), torch.zeros(3, 2), 2)


# ----------------------------------------------------------------------------- the meter
def test_meter_by_hand():
    meter = FewShotMeter(num_test_classes=3)
    # Episode A, class 0: 2x2 maps.
    meter.update(torch.tensor([[[1, 1], [0, 0]]]), torch.tensor([[[1, 0], [0, 255]]]), 0)
    # A (ignored pixel dropped): pairs (1,1) (1,0) (0,0) -> FG I=1 U=2; BG I=1 U=2.
    # Episode B, class 2: pairs (1,1) (1,1) (0,1) (0,0) -> FG I=2 U=3; BG I=1 U=2.
    meter.update(torch.tensor([[[1, 1], [0, 0]]]), torch.tensor([[[1, 1], [1, 0]]]), 2)
    # Episode C, class 0: pairs (0,1) (0,1) (0,0) (0,0) -> FG I=0 U=2; BG I=2 U=4.
    meter.update(torch.tensor([[0, 0], [0, 0]]), torch.tensor([[1, 1], [0, 0]]), 0)

    summary = meter.summary()
    # Totals: FG I = 1+2+0 = 3, U = 2+3+2 = 7; BG I = 1+1+2 = 4, U = 2+2+4 = 8.
    assert summary["pIoU"] == pytest.approx(3 / 7)
    assert summary["FB_IoU"] == pytest.approx((4 / 8 + 3 / 7) / 2)
    # Class 0: I = 1+0, U = 2+2 -> 0.25. Class 1: no episode -> 0. Class 2: 2/3.
    assert summary["class_IoU"] == pytest.approx([0.25, 0.0, 2 / 3])
    assert summary["mIoU"] == pytest.approx((0.25 + 0.0 + 2 / 3) / 3)
    # Accuracy: correct pixels 2+3+2 = 7 over 11 non-ignored pixels.
    assert summary["accuracy"] == pytest.approx(7 / 11)
    assert summary["episodes"] == 3


def test_meter_epsilon_on_empty_union():
    meter = FewShotMeter(num_test_classes=1)
    # All background, predicted background: foreground union is 0 -> IoU 0 (not NaN).
    meter.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long), 0)
    summary = meter.summary()
    assert summary["pIoU"] == 0.0 and summary["mIoU"] == 0.0
    assert summary["FB_IoU"] == pytest.approx(0.5)


def random_episodes(count, num_test_classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    episodes = []
    for _ in range(count):
        height, width = rng.randint(3, 8), rng.randint(3, 8)
        prediction = torch.randint(0, 2, (1, height, width), generator=generator)
        target = torch.randint(0, 2, (1, height, width), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.15] = IGNORE
        episodes.append((prediction, target, rng.randrange(num_test_classes)))
    return episodes


def loop_summary(episodes, num_test_classes):
    """Reference metrics from per-pixel loops and plain Python sums."""
    total_intersection, total_union = [0, 0], [0, 0]
    class_intersection = [0] * num_test_classes
    class_union = [0] * num_test_classes
    for prediction, target, class_index in episodes:
        intersection, union, _ = loop_areas(prediction, target)
        for label in (0, 1):
            total_intersection[label] += intersection[label]
            total_union[label] += union[label]
        class_intersection[class_index] += intersection[1]
        class_union[class_index] += union[1]
    class_iou = [i / (u + 1e-10) for i, u in zip(class_intersection, class_union)]
    return {
        "mIoU": sum(class_iou) / num_test_classes,
        "FB_IoU": sum(i / (u + 1e-10) for i, u in zip(total_intersection, total_union)) / 2,
        "pIoU": total_intersection[1] / (total_union[1] + 1e-10),
        "class_IoU": class_iou,
    }


def test_meter_matches_pixel_loop_reference():
    episodes = random_episodes(40, num_test_classes=5)
    meter = FewShotMeter(5)
    for prediction, target, class_index in episodes:
        meter.update(prediction, target, class_index)
    expected = loop_summary(episodes, 5)
    summary = meter.summary()
    for key in ("mIoU", "FB_IoU", "pIoU"):
        assert summary[key] == pytest.approx(expected[key], abs=1e-12)
    assert summary["class_IoU"] == pytest.approx(expected["class_IoU"], abs=1e-12)
    assert summary["episodes"] == 40


def test_meter_batch_with_per_sample_classes():
    episodes = random_episodes(4, num_test_classes=3, seed=1)
    # Same size so they can be batched.
    episodes = [(prediction[:, :3, :3], target[:, :3, :3], index) for prediction, target, index in episodes]
    sequential = FewShotMeter(3)
    for prediction, target, class_index in episodes:
        sequential.update(prediction, target, class_index)
    batched = FewShotMeter(3)
    batched.update(torch.cat([episode[0] for episode in episodes]),
                   torch.cat([episode[1] for episode in episodes]),
                   torch.tensor([episode[2] for episode in episodes]))
    assert batched.summary() == sequential.summary()
    with pytest.raises(IndexError, match=r"class index 3 outside 0\.\.2"):
        batched.update(episodes[0][0], episodes[0][1], 3)
    with pytest.raises(ValueError, match="3 class indices for a batch of 2"):
        batched.update(torch.zeros(2, 3, 3, dtype=torch.long), torch.zeros(2, 3, 3, dtype=torch.long), [0, 1, 2])


def test_pad_to_square_tall_and_wide():
    tall = torch.arange(2 * 5 * 3).reshape(2, 5, 3) % 3
    padded = pad_to_square(tall)
    assert padded.shape == (2, 5, 5) and padded.dtype == torch.long
    assert torch.equal(padded[:, :5, :3], tall)
    assert (padded[:, :, 3:] == 255).all()

    wide = torch.ones(1, 2, 4, dtype=torch.uint8)
    padded = pad_to_square(wide, ignore_label=7)
    assert padded.tolist() == [[[1, 1, 1, 1],
                                [1, 1, 1, 1],
                                [7, 7, 7, 7],
                                [7, 7, 7, 7]]]

    square = torch.zeros(1, 3, 3, dtype=torch.long)
    assert torch.equal(pad_to_square(square), square)
    assert pad_to_square(torch.zeros(2, 3)).shape == (3, 3)


def test_padding_is_ignored_by_the_metrics():
    label = torch.tensor([[[0, 1, 1]]])  # (1, 1, 3) -> square 3x3, two rows of padding
    target = pad_to_square(label)
    prediction = torch.ones(1, 3, 3, dtype=torch.long)  # predicts foreground in the padding too
    intersection, union, _ = intersection_and_union(prediction, target, 2)
    assert intersection.tolist() == [0, 2] and union.tolist() == [1, 3]
    # The meter scores the padded episode as the unpadded one: the 6 padding pixels, all
    # predicted foreground, would otherwise make the foreground union 9 instead of 3.
    padded, unpadded = FewShotMeter(1), FewShotMeter(1)
    padded.update(prediction, target, 0)
    unpadded.update(prediction[:, :1, :], label, 0)
    # By hand, over the 3 real pixels (prediction, target) = (1,0) (1,1) (1,1):
    # background I=0 U=1, foreground I=2 U=3; 2 of 3 pixels correct.
    expected = {"mIoU": 2 / 3, "pIoU": 2 / 3, "FB_IoU": (0 / 1 + 2 / 3) / 2, "accuracy": 2 / 3}
    for meter in (padded, unpadded):
        summary = meter.summary()
        for key, value in expected.items():
            assert summary[key] == pytest.approx(value, abs=1e-9), key
        assert summary["class_IoU"] == pytest.approx([2 / 3], abs=1e-9) and summary["episodes"] == 1
    assert padded.sums().keys() == unpadded.sums().keys()
    for name, values in padded.sums().items():
        assert np.array_equal(values, unpadded.sums()[name]), name


def test_a_two_dimensional_label_is_padded_as_one_image():
    label = torch.tensor([[1, 2, 3], [4, 5, 6]])  # (H, W) = (2, 3) -> 3x3
    assert pad_to_square(label).tolist() == [[1, 2, 3], [4, 5, 6], [255, 255, 255]]
    with pytest.raises(ValueError, match=r"expected a \(B, H, W\) label, got shape \(1, 2, 3, 4\)"):
        pad_to_square(torch.zeros(1, 2, 3, 4))


def test_the_meter_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match="^num_test_classes must be positive$"):
        FewShotMeter(0)
    with pytest.raises(ValueError, match="^few-shot episodes are binary: num_classes must be 2$"):
        FewShotMeter(3, num_classes=3)


def test_one_class_index_or_a_scalar_tensor_stands_for_the_whole_batch():
    prediction = torch.tensor([[[1, 0]], [[1, 1]], [[0, 0]]])  # 3 episodes of 1x2 pixels
    target = torch.tensor([[[1, 1]], [[0, 1]], [[1, 0]]])
    # Foreground by hand: I = 1+1+0 = 2, U = 2+2+1 = 5, all of it class 2.
    for class_index in ([2], torch.tensor(2), torch.tensor([2]), np.int64(2)):
        meter = FewShotMeter(3)
        meter.update(prediction, target, class_index)
        assert meter.class_intersection.tolist() == [0, 0, 2] and meter.class_union.tolist() == [0, 0, 5]
        assert meter.class_episodes.tolist() == [0, 0, 3], class_index


def test_the_meters_ignore_index_is_the_one_it_was_given():
    meter = FewShotMeter(1, ignore_index=7)
    # The pixel labelled 7 is left out; a 255 is then an ordinary (wrong) value: pairs
    # (1,1) (1,255) -> foreground I=1 U=2, background I=0 U=0 (+ the 255 counts nowhere).
    meter.update(torch.tensor([[[1, 1, 0]]]), torch.tensor([[[1, 255, 7]]]), 0)
    assert meter.class_intersection.tolist() == [1] and meter.class_union.tolist() == [2]
    assert meter.intersection.tolist() == [0, 1] and meter.union.tolist() == [0, 2]


def test_shares_added_with_add_sums_give_the_meter_of_every_episode():
    episodes = random_episodes(6, num_test_classes=3, seed=4)
    whole, first, second = FewShotMeter(3), FewShotMeter(3), FewShotMeter(3)
    for number, (prediction, target, class_index) in enumerate(episodes):
        whole.update(prediction, target, class_index)
        (first if number % 2 == 0 else second).update(prediction, target, class_index)
    shares = second.sums()
    first.add_sums({name: values.tolist() for name, values in shares.items()})  # any array-like
    assert first.summary() == whole.summary()
    for name, values in whole.sums().items():
        assert np.array_equal(first.sums()[name], values) and first.sums()[name].dtype == np.float64, name
    with pytest.raises(ValueError, match=r"^class_union: shape \(2,\) does not match this meter's \(3,\)$"):
        first.add_sums(dict(shares, class_union=np.zeros(2)))
    assert first.summary() == whole.summary()  # a refused share adds nothing, not half of itself
