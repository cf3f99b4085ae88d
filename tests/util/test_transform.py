"""Tests of util/transform.py: alignment, draw counts/order, crop retry rule, validation resize."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from util import transform as T

MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def block_pattern(height=90, width=130, block=10, seed=0):
    """Random (asymmetric) block pattern: label 0/1 uint8 (H, W), image float32 (H, W, 3) = 20 + 200*label."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, (height // block + 1, width // block + 1)).astype(np.uint8)
    label = np.kron(blocks, np.ones((block, block), np.uint8))[:height, :width].copy()
    image = np.repeat((20.0 + 200.0 * label)[..., None], 3, axis=2).astype(np.float32)
    return image, label


def agreement(image, label):
    """Fraction of non-ignored pixels where the image's class (by threshold) equals the label."""
    image = np.asarray(image, np.float32)
    label = np.asarray(label)
    valid = label != 255
    return float(((image[..., 0] > 120) == (label == 1))[valid].mean())


def draws_after(seed, calls):
    """State of a `random.Random(seed)` after replaying the given calls ('random' or (a, b) randint)."""
    rng = random.Random(seed)
    values = [rng.random() if call == "random" else rng.randint(*call) for call in calls]
    return rng.getstate(), values


# ----------------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("make", [
    lambda: T.RandScale([0.6, 1.4]),
    lambda: T.RandRotate([-30, 30], padding=MEAN, ignore_label=255, p=1.0),
    lambda: T.RandomGaussianBlur(),
    lambda: T.RandomHorizontalFlip(p=1.0),
    lambda: T.Crop([64, 160], crop_type="rand", padding=MEAN, ignore_label=255),
    lambda: T.Crop(50, crop_type="center", padding=MEAN, ignore_label=255),
    lambda: T.test_Resize(101),
    lambda: T.test_Resize(100, resized_val=False),
])
def test_image_and_label_stay_aligned(make):
    image, label = block_pattern()
    assert agreement(image, label) == 1.0
    for seed in range(4):
        random.seed(seed)
        out_image, out_label = make()(image.copy(), label.copy())
        assert out_image.shape[:2] == out_label.shape
        # Interpolation only blurs block edges; a misaligned label would agree on about half.
        assert agreement(out_image, out_label) > 0.9


def test_horizontal_flip_moves_both_and_misalignment_would_be_detected():
    image, label = block_pattern()
    assert agreement(image, label[:, ::-1]) < 0.7  # the check above can fail
    out_image, out_label = T.RandomHorizontalFlip(p=1.0)(image, label)
    assert np.array_equal(out_label, label[:, ::-1]) and np.array_equal(out_image, image[:, ::-1])


def test_full_training_pipeline_alignment():
    image, label = block_pattern(200, 260, block=20)
    pipeline = T.build_train_transform(120, 100, 0.9, 1.1, -10, 10)
    for seed in range(5):
        random.seed(seed)
        out_image, out_label = pipeline(image.copy(), label.copy())
        assert out_image.shape == (3, 120, 100) and out_label.shape == (120, 100)
        assert out_image.dtype == torch.float32 and out_label.dtype == torch.int64
        unnormalised = out_image.permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)
        assert agreement(unnormalised, out_label.numpy()) > 0.9


# ----------------------------------------------------------------------------------- draws
def test_rand_scale_draws_once_and_resizes_by_cv2_rule():
    image, label = block_pattern(91, 133)
    random.seed(7)
    out_image, out_label = T.RandScale([0.5, 2.0])(image, label)
    state, (u,) = draws_after(7, ["random"])
    assert random.getstate() == state
    scale = 0.5 + 1.5 * u
    expected = cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out_label, expected) and out_image.shape[:2] == expected.shape


def test_rand_rotate_draw_order_and_padding():
    image, label = block_pattern(80, 100)
    rotated_seeds = 0
    for seed in range(12):
        random.seed(seed)
        out_image, out_label = T.RandRotate([-10, 10], padding=MEAN, ignore_label=255)(image, label)
        rng = random.Random(seed)
        if rng.random() < 0.5:
            angle = -10 + 20 * rng.random()
            matrix = cv2.getRotationMatrix2D((50.0, 40.0), angle, 1)
            expected_label = cv2.warpAffine(label, matrix, (100, 80), flags=cv2.INTER_NEAREST,
                                            borderMode=cv2.BORDER_CONSTANT, borderValue=255)
            assert np.array_equal(out_label, expected_label)
            if abs(angle) > 2:
                assert out_label[0, 0] == 255 or out_label[-1, -1] == 255
                corner = out_image[0, 0] if out_label[0, 0] == 255 else out_image[-1, -1]
                assert np.allclose(corner, MEAN, atol=1e-3)  # border filled with the mean
            rotated_seeds += 1
        else:
            assert out_label is label
        assert random.getstate() == rng.getstate()
    assert 0 < rotated_seeds < 12


@pytest.mark.parametrize("transform", [T.RandomGaussianBlur(), T.RandomHorizontalFlip()])
def test_blur_and_flip_draw_once(transform):
    image, label = block_pattern()
    applied = 0
    for seed in range(10):
        random.seed(seed)
        out_image, out_label = transform(image, label)
        state, (u,) = draws_after(seed, ["random"])
        assert random.getstate() == state
        changed = not np.array_equal(out_image, image)
        assert changed == (u < 0.5)
        applied += changed
        if isinstance(transform, T.RandomGaussianBlur):
            assert out_label is label  # blur never touches the label
    assert 0 < applied < 10


def test_deterministic_transforms_draw_nothing():
    image, label = block_pattern()
    random.seed(3)
    before = random.getstate()
    T.Crop(40, crop_type="center", padding=MEAN)(image, label)
    T.test_Resize(64)(image, label)
    T.Normalize(MEAN, STD)(*T.ToTensor()(image, label))
    assert random.getstate() == before


# ----------------------------------------------------------------------------------- crop
def replay_crop_offsets(seed, label, crop_h, crop_w):
    """Independent replay of the BAM crop rule: first draw + at most 31 redraws."""
    rng = random.Random(seed)
    height, width = label.shape
    total = int((label == 1).sum())
    draws = 0
    h_off, w_off = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
    while int((label[h_off:h_off + crop_h, w_off:w_off + crop_w] == 1).sum()) < 0.85 * total and draws < 31:
        h_off, w_off = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
        draws += 1
    return h_off, w_off, draws, rng.getstate()


def test_crop_retries_until_it_holds_85_percent_of_the_object():
    label = np.zeros((200, 200), np.uint8)
    label[150:170, 10:30] = 1  # small object in a corner: most random 80x80 crops miss it
    image = np.repeat(label[..., None].astype(np.float32) * 200, 3, axis=2)
    seen_retries = 0
    for seed in range(6):
        random.seed(seed)
        out_image, out_label = T.Crop(80, crop_type="rand", padding=MEAN)(image, label)
        h_off, w_off, redraws, state = replay_crop_offsets(seed, label, 80, 80)
        assert random.getstate() == state
        assert np.array_equal(out_label, label[h_off:h_off + 80, w_off:w_off + 80])
        assert np.array_equal(out_image, image[h_off:h_off + 80, w_off:w_off + 80])
        if redraws < 31:
            assert (out_label == 1).sum() >= 0.85 * 400
        seen_retries += redraws > 0
    assert seen_retries > 0


def test_crop_stops_after_31_redraws():
    label = np.ones((100, 100), np.uint8)  # no 50x50 crop can hold 85 % of the object
    image = np.zeros((100, 100, 3), np.float32)
    random.seed(11)
    _, out_label = T.Crop(50, crop_type="rand", padding=MEAN)(image, label)
    state, values = draws_after(11, [(0, 50)] * 64)  # 1 first draw + 31 redraws, 2 offsets each
    assert random.getstate() == state
    assert out_label.shape == (50, 50)


def test_crop_padding_split_and_values():
    image = np.full((29, 41, 3), 7.0, np.float32)
    label = np.ones((29, 41), np.uint8)
    random.seed(0)
    out_image, out_label = T.Crop([50, 60], crop_type="rand", padding=MEAN, ignore_label=255)(image, label)
    # pad_h = 21 -> 10 before, 11 after; pad_w = 19 -> 9 before, 10 after; no offset draw freedom.
    assert out_label.shape == (50, 60)
    assert (out_label[10:39, 9:50] == 1).all()
    assert (out_label[:10] == 255).all() and (out_label[39:] == 255).all()
    assert (out_label[:, :9] == 255).all() and (out_label[:, 50:] == 255).all()
    assert np.allclose(out_image[0, 0], MEAN) and np.allclose(out_image[49, 59], MEAN)
    assert np.allclose(out_image[10, 9], 7.0)
    with pytest.raises(ValueError, match="no padding"):
        T.Crop(50, crop_type="rand")(image, label)


# ----------------------------------------------------------------------------------- resize
def test_validation_resize_shape_floors_to_multiples_of_8():
    assert T.validation_resize_shape(500, 400, 473) == (472, 376)   # 473 -> 472, int(378.4)=378 -> 376
    assert T.validation_resize_shape(300, 600, 473) == (232, 472)   # int(236.5)=236 -> 232
    assert T.validation_resize_shape(100, 50, 473) == (472, 232)    # upscaled when resized_val
    assert T.validation_resize_shape(100, 50, 473, resized_val=False) == (100, 50)  # small: untouched
    assert T.validation_resize_shape(600, 300, 473, resized_val=False) == (472, 232)
    assert T.validation_resize_shape(480, 240, 480) == (480, 240)   # already multiples of 8


def test_validation_resize_canvas_and_padding_values():
    image, label = block_pattern(500, 400, block=25)
    out_image, out_label = T.test_Resize(473)(image, label)
    assert out_image.shape == (473, 473, 3) and out_label.shape == (473, 473)
    assert (out_image[472:] == 0).all() and (out_image[:, 376:] == 0).all()  # zero canvas
    assert (out_label[472:] == 255).all() and (out_label[:, 376:] == 255).all()  # 255 canvas
    expected_label = cv2.resize(label.astype(np.float32), (376, 472), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out_label[:472, :376], expected_label)
    assert agreement(out_image[:472, :376], out_label[:472, :376]) > 0.97
    image_tensor, label_tensor = T.build_val_transform(473)(image, label)
    assert image_tensor.shape == (3, 473, 473) and label_tensor.dtype == torch.int64
    # After normalisation the zero canvas is -mean/std per channel.
    assert torch.allclose(image_tensor[:, 472, 0], torch.tensor([-m / s for m, s in zip(MEAN, STD)]), atol=1e-5)


def test_validation_resize_without_resized_val_keeps_small_images():
    image, label = block_pattern(120, 90)
    out_image, out_label = T.test_Resize(473, resized_val=False)(image, label)
    assert np.array_equal(out_label[:120, :90], label) and (out_label[120:] == 255).all()
    assert np.array_equal(out_image[:120, :90], image) and (out_image[:, 90:] == 0).all()


# ----------------------------------------------------------------------------------- tensors
def test_to_tensor_and_normalize():
    image = np.random.default_rng(0).uniform(0, 255, (5, 6, 3)).astype(np.float32)
    label = np.arange(30, dtype=np.uint8).reshape(5, 6)
    tensor, label_tensor = T.ToTensor()(image, label)
    assert tensor.shape == (3, 5, 6) and tensor.dtype == torch.float32 and label_tensor.dtype == torch.int64
    assert np.array_equal(tensor.numpy(), image.transpose(2, 0, 1)) and np.array_equal(label_tensor.numpy(), label)
    normalised, _ = T.Normalize(MEAN, STD)(tensor.clone(), label_tensor)
    expected = (image.transpose(2, 0, 1) - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    assert np.allclose(normalised.numpy(), expected, atol=1e-5)
    with pytest.raises(TypeError):
        T.ToTensor()(torch.zeros(3, 2, 2), label)


def test_builders_compose_the_spec_pipelines():
    train = T.build_train_transform(473, 473, 0.9, 1.1, -10, 10)
    assert [type(t).__name__ for t in train.transforms] == [
        "RandScale", "RandRotate", "RandomGaussianBlur", "RandomHorizontalFlip", "Crop", "ToTensor", "Normalize"]
    crop = train.transforms[4]
    assert (crop.crop_h, crop.crop_w, crop.crop_type, crop.padding, crop.ignore_label) == (473, 473, "rand", MEAN, 255)
    assert train.transforms[1].padding == MEAN and train.transforms[1].rotate == [-10, 10]
    assert train.transforms[0].scale == [0.9, 1.1]
    assert train.transforms[6].mean == MEAN and train.transforms[6].std == STD
    val = T.build_val_transform(473, resized_val=False)
    assert [type(t).__name__ for t in val.transforms] == ["test_Resize", "ToTensor", "Normalize"]
    assert val.transforms[0].resized_val is False


@pytest.mark.parametrize("make, message", [
    (lambda: T.RandScale([1.1, 0.9]), r"RandScale: scale must be \[min, max\] with 0 < min < max, got \[1.1, 0.9\]"),
    (lambda: T.RandScale([0, 1]), r"RandScale: scale must be .*, got \[0, 1\]"),
    (lambda: T.RandRotate([10, -10], padding=MEAN),
     r"RandRotate: rotate must be \[min, max\] with min < max, got \[10, -10\]"),
    (lambda: T.RandRotate([-10, 10], padding=[1, 2]),
     r"RandRotate: padding must be a list of 3 numbers .*, got \[1, 2\]"),
    (lambda: T.Crop(0), r"Crop: size must be a positive int or \[h, w\] of positive ints, got 0"),
    (lambda: T.Crop(10, crop_type="corner"), r"Crop: crop_type must be 'center' or 'rand', got 'corner'"),
    (lambda: T.test_Resize(0), r"test_Resize: size must be a positive int, got 0"),
])
def test_invalid_parameters_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_square_resize_for_the_hsnet_protocol():
    import numpy as np
    from util.transform import build_hsnet_val_transform
    image = np.zeros((30, 60, 3), np.float32)
    image[:, 30:] = 255.0
    label = np.zeros((30, 60), np.uint8)
    label[:, 30:] = 1
    label[0, 0] = 255
    image_out, label_out = build_hsnet_val_transform(16)(image, label)
    assert tuple(image_out.shape) == (3, 16, 16) and tuple(label_out.shape) == (16, 16)
    assert set(label_out.unique().tolist()) <= {0, 1, 255}
    assert label_out[0, 0] == 255 and (label_out[1:, :7] == 0).all() and (label_out[:, 9:] == 1).all()
    assert image_out[0, 8, 15] > image_out[0, 8, 0]
