"""Paired image/label transforms of the original BAM/SCCAN `util/transform.py`.

Every transform is a callable ``t(image, label) -> (image, label)``. Random transforms draw their
parameters from Python's global `random` module once per call and apply the SAME parameters to the
image and the label (detectron2-like). The number and order of draws is exactly the original's,
because the episode stream of a seed depends on it (the selection draws of the next episode come
after the transform draws of this one in the same worker):

=====================  ==========================================================================
transform              draws per call
=====================  ==========================================================================
RandScale              1 x random()                     (2 with an aspect_ratio range)
RandRotate             1 x random(); +1 x random() when it rotates
RandomGaussianBlur     1 x random()
RandomHorizontalFlip   1 x random()
Crop('rand')           2 x randint() (h then w), repeated for each of at most 31 redraws
Crop('center'), ToTensor, Normalize, test_Resize   none
=====================  ==========================================================================

Input image: numpy float32 ``(H, W, 3)`` RGB in 0..255; input label: numpy uint8 ``(H, W)``
(0/1/255 in episodes). After `ToTensor` the image is a float32 tensor ``(3, H, W)`` and the
label an int64 tensor ``(H, W)``.
"""

from __future__ import annotations

import collections.abc
import math
import numbers
import random
from typing import Callable, List, Sequence, Tuple

import cv2
import numpy as np
import torch

__all__ = [
    "Compose",
    "RandScale",
    "RandRotate",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "Crop",
    "ToTensor",
    "Normalize",
    "test_Resize",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "SquareResize",
    "build_hsnet_val_transform",
    "validation_resize_shape",
    "build_train_transform",
    "build_val_transform",
]

# ImageNet statistics on the 0..255 scale, as the original's train.py/test.py define them.
IMAGE_MEAN: List[float] = [item * 255 for item in [0.485, 0.456, 0.406]]
IMAGE_STD: List[float] = [item * 255 for item in [0.229, 0.224, 0.225]]


def _is_number_pair(value) -> bool:
    return (
        isinstance(value, collections.abc.Sequence)
        and len(value) == 2
        and all(isinstance(item, numbers.Number) for item in value)
    )


def _check_padding(padding, owner: str):
    if not (
        isinstance(padding, (list, tuple))
        and len(padding) == 3
        and all(isinstance(item, numbers.Number) for item in padding)
    ):
        raise ValueError(f"{owner}: padding must be a list of 3 numbers (one per channel), got {padding!r}")
    return list(padding)


class Compose:
    """Apply transforms in order: ``Compose([t1, t2])(image, label) == t2(*t1(image, label))``."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, label):
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


class ToTensor:
    """numpy ``(H, W, C)`` or ``(H, W)`` image and ``(H, W)`` label -> float32 ``(C, H, W)`` and int64 ``(H, W)``."""

    def __call__(self, image, label):
        if not isinstance(image, np.ndarray) or not isinstance(label, np.ndarray):
            raise TypeError(
                f"ToTensor expects numpy arrays (as read by cv2.imread), got {type(image).__name__} "
                f"and {type(label).__name__}"
            )
        if image.ndim not in (2, 3):
            raise ValueError(f"ToTensor: image must have 2 or 3 dims, got shape {image.shape}")
        if image.ndim == 2:
            image = np.expand_dims(image, axis=2)
        if label.ndim != 2:
            raise ValueError(f"ToTensor: label must have 2 dims, got shape {label.shape}")
        image = torch.from_numpy(image.transpose((2, 0, 1)))
        if image.dtype != torch.float32:
            image = image.float()
        label = torch.from_numpy(np.ascontiguousarray(label))
        if label.dtype != torch.int64:
            label = label.long()
        return image, label


class Normalize:
    """Per channel ``(image - mean) / std`` on a ``(C, H, W)`` tensor (in place, as the original)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] | None = None):
        if std is not None and len(mean) != len(std):
            raise ValueError(f"Normalize: mean and std lengths differ ({len(mean)} vs {len(std)})")
        if len(mean) == 0:
            raise ValueError("Normalize: mean must not be empty")
        self.mean = list(mean)
        self.std = None if std is None else list(std)

    def __call__(self, image, label):
        # Two separate in-place float32 ops (sub_ then div_), exactly as the original, so that the
        # rounding is identical.
        if self.std is None:
            for channel, mean in zip(image, self.mean):
                channel.sub_(mean)
        else:
            for channel, mean, std in zip(image, self.mean, self.std):
                channel.sub_(mean).div_(std)
        return image, label


class RandScale:
    """Resize image (linear) and label (nearest) by a random factor ``s`` in ``[scale_min, scale_max]``.

    Draw: ``s = scale_min + (scale_max - scale_min) * random.random()`` (plus one more draw for
    the aspect ratio when ``aspect_ratio`` is given, unused by SCCAN). Output ``(round(H*s), round(W*s))``
    as cv2.resize computes it.
    """

    def __init__(self, scale: Sequence[float], aspect_ratio: Sequence[float] | None = None):
        if not (_is_number_pair(scale) and 0 < scale[0] < scale[1]):
            raise ValueError(f"RandScale: scale must be [min, max] with 0 < min < max, got {scale!r}")
        self.scale = list(scale)
        if aspect_ratio is not None and not (_is_number_pair(aspect_ratio) and 0 < aspect_ratio[0] < aspect_ratio[1]):
            raise ValueError(f"RandScale: aspect_ratio must be [min, max] with 0 < min < max, got {aspect_ratio!r}")
        self.aspect_ratio = None if aspect_ratio is None else list(aspect_ratio)

    def __call__(self, image, label):
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * random.random()
        aspect_ratio = 1.0
        if self.aspect_ratio is not None:
            aspect_ratio = self.aspect_ratio[0] + (self.aspect_ratio[1] - self.aspect_ratio[0]) * random.random()
            aspect_ratio = math.sqrt(aspect_ratio)
        scale_x = scale * aspect_ratio
        scale_y = scale / aspect_ratio
        image = cv2.resize(image, None, fx=scale_x, fy=scale_y, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, None, fx=scale_x, fy=scale_y, interpolation=cv2.INTER_NEAREST)
        return image, label


class RandRotate:
    """With probability ``p`` rotate by ``angle`` in ``[rotate_min, rotate_max]`` degrees about ``(W/2, H/2)``.

    Draws: ``random.random() < p`` then, only when rotating, ``angle = min + (max-min)*random.random()``.
    Image: linear, border = ``padding`` (per channel); label: nearest, border = ``ignore_label``.
    The output keeps the input size ``(H, W)``.
    """

    def __init__(self, rotate: Sequence[float], padding: Sequence[float], ignore_label: int = 255, p: float = 0.5):
        if not (_is_number_pair(rotate) and rotate[0] < rotate[1]):
            raise ValueError(f"RandRotate: rotate must be [min, max] with min < max, got {rotate!r}")
        self.rotate = list(rotate)
        self.padding = _check_padding(padding, "RandRotate")
        if not isinstance(ignore_label, int):
            raise ValueError(f"RandRotate: ignore_label must be an int, got {ignore_label!r}")
        self.ignore_label = ignore_label
        self.p = p

    def __call__(self, image, label):
        if random.random() < self.p:
            angle = self.rotate[0] + (self.rotate[1] - self.rotate[0]) * random.random()
            height, width = label.shape
            matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1)
            image = cv2.warpAffine(
                image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT, borderValue=self.padding,
            )
            label = cv2.warpAffine(
                label, matrix, (width, height), flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_label,
            )
        return image, label


class RandomGaussianBlur:
    """With probability 0.5 blur the image (not the label): ``cv2.GaussianBlur(radius x radius, sigma 0)``.

    Draw: one ``random.random()``. The probability is hard-coded 0.5 as in the original.
    """

    def __init__(self, radius: int = 5):
        self.radius = radius

    def __call__(self, image, label):
        if random.random() < 0.5:
            image = cv2.GaussianBlur(image, (self.radius, self.radius), 0)
        return image, label


class RandomHorizontalFlip:
    """With probability ``p`` flip image and label left-right. Draw: one ``random.random()``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, label):
        if random.random() < self.p:
            image = cv2.flip(image, 1)
            label = cv2.flip(label, 1)
        return image, label


class Crop:
    """Crop ``(crop_h, crop_w)`` from image ``(H, W, 3)`` and label ``(H, W)`` at the same offsets.

    1. When smaller than the crop, pad by ``pad = crop - size``: ``int(pad/2)`` before and the rest
       after; image with ``padding`` (per channel), label with ``ignore_label``.
    2. Offsets: 'rand' draws ``h_off = random.randint(0, H-crop_h)`` then
       ``w_off = random.randint(0, W-crop_w)``; 'center' uses ``int((H-crop_h)/2)`` (no draws).
    3. Parity quirk kept from BAM: while the crop holds fewer than 0.85 x the ``label == 1`` pixels
       of the whole (padded) label, draw both offsets again, at most 31 more times
       (``crop_cnt <= 30`` in the original), and keep the last crop even if it still fails.
       In 'center' mode the retries recompute the same crop without draws.
    """

    # The original's loop condition `crop_cnt <= 30` allows 31 redraws after the first draw.
    max_redraws = 31
    positive_fraction = 0.85

    def __init__(self, size, crop_type: str = "center", padding: Sequence[float] | None = None, ignore_label: int = 255):
        if isinstance(size, int) and size > 0:
            self.crop_h = self.crop_w = size
        elif (
            isinstance(size, collections.abc.Sequence) and len(size) == 2
            and all(isinstance(item, int) and item > 0 for item in size)
        ):
            self.crop_h, self.crop_w = int(size[0]), int(size[1])
        else:
            raise ValueError(f"Crop: size must be a positive int or [h, w] of positive ints, got {size!r}")
        if crop_type not in ("center", "rand"):
            raise ValueError(f"Crop: crop_type must be 'center' or 'rand', got {crop_type!r}")
        self.crop_type = crop_type
        self.padding = None if padding is None else _check_padding(padding, "Crop")
        if not isinstance(ignore_label, int):
            raise ValueError(f"Crop: ignore_label must be an int, got {ignore_label!r}")
        self.ignore_label = ignore_label

    def _offsets(self, height: int, width: int) -> Tuple[int, int]:
        if self.crop_type == "rand":
            h_off = random.randint(0, height - self.crop_h)
            w_off = random.randint(0, width - self.crop_w)
        else:
            h_off = int((height - self.crop_h) / 2)
            w_off = int((width - self.crop_w) / 2)
        return h_off, w_off

    def __call__(self, image, label):
        height, width = label.shape
        pad_h = max(self.crop_h - height, 0)
        pad_w = max(self.crop_w - width, 0)
        pad_h_half = int(pad_h / 2)
        pad_w_half = int(pad_w / 2)
        if pad_h > 0 or pad_w > 0:
            if self.padding is None:
                raise ValueError(
                    f"Crop: input {height}x{width} is smaller than the crop {self.crop_h}x{self.crop_w} "
                    "and no padding was given"
                )
            image = cv2.copyMakeBorder(
                image, pad_h_half, pad_h - pad_h_half, pad_w_half, pad_w - pad_w_half,
                cv2.BORDER_CONSTANT, value=self.padding,
            )
            label = cv2.copyMakeBorder(
                label, pad_h_half, pad_h - pad_h_half, pad_w_half, pad_w - pad_w_half,
                cv2.BORDER_CONSTANT, value=self.ignore_label,
            )
        height, width = label.shape
        raw_image, raw_label = image, label
        raw_positive = np.sum(raw_label == 1)

        h_off, w_off = self._offsets(height, width)
        label = raw_label[h_off:h_off + self.crop_h, w_off:w_off + self.crop_w]
        redraws = 0
        while np.sum(label == 1) < self.positive_fraction * raw_positive and redraws < self.max_redraws:
            h_off, w_off = self._offsets(height, width)
            label = raw_label[h_off:h_off + self.crop_h, w_off:w_off + self.crop_w]
            redraws += 1
        image = raw_image[h_off:h_off + self.crop_h, w_off:w_off + self.crop_w]
        # (The original's `if crop_cnt >= 50: resize` branch can never run and is omitted.)
        if image.shape[:2] != (self.crop_h, self.crop_w):
            # Unreachable after padding; kept as the original's safety net.
            image = cv2.resize(image, (self.crop_w, self.crop_h), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (self.crop_w, self.crop_h), interpolation=cv2.INTER_NEAREST)
        return image, label


def validation_resize_shape(height: int, width: int, size: int, resized_val: bool = True) -> Tuple[int, int]:
    """Target ``(new_h, new_w)`` of the validation resize (the original's ``find_new_hw``).

    The longer side becomes ``size``, the other ``int(side * size / longer)``; then each side that
    is not a multiple of 8 is floored to one (so 473 -> 472, a quirk kept for parity). With
    ``resized_val=False`` images whose longer side is <= ``size`` keep their size unchanged
    (no flooring either, as in the original ``test_Resize``).
    """
    if not resized_val and max(height, width) <= size:
        return height, width
    if height >= width:
        ratio = size * 1.0 / height
        new_h, new_w = size, int(width * ratio)
    else:
        ratio = size * 1.0 / width
        new_h, new_w = int(height * ratio), size
    if new_h % 8 != 0:
        new_h = int(new_h / 8) * 8
    if new_w % 8 != 0:
        new_w = int(new_w / 8) * 8
    return new_h, new_w


def too_elongated_message(height: int, width: int, size: int) -> str:
    """Why a ``height x width`` image has no validation input at ``size``, and the smallest
    size (a valid val_size: 9, 17, 25, ...) that keeps its shorter side."""
    if min(height, width) < 1:
        return f"a {height}x{width} (height x width) image is empty"
    fitting = 9
    while min(validation_resize_shape(height, width, fitting)) < 1:
        fitting += 8
    return (f"a {height}x{width} (height x width) image is too elongated for val_size {size}: its "
            f"shorter side would shrink below 8 px (the validation resize makes the longer side "
            f"val_size and floors both to multiples of 8); val_size {fitting} or more keeps it")


class test_Resize:  # noqa: N801 - the original's class name, kept so configs/ports read the same
    """Validation resize onto a ``size x size`` canvas (no random draws).

    ``resized_val=True`` (the configs' default; the original's ``Resize`` class): the image is
    resized (linear) to `validation_resize_shape` and placed top-left on a zero canvas
    ``(size, size, 3)``; the label (nearest) on a canvas of 255. ``resized_val=False`` (the
    original's ``test_Resize`` class): the same, but only images whose longer side exceeds
    ``size`` are shrunk. Outputs: image float64 ``(size, size, 3)``, label float64
    ``(size, size)`` (float canvases as in the original; `ToTensor` converts them).
    """

    def __init__(self, size: int, resized_val: bool = True):
        if not (isinstance(size, int) and size > 0):
            raise ValueError(f"test_Resize: size must be a positive int, got {size!r}")
        self.size = size
        self.resized_val = resized_val

    def __call__(self, image, label):
        size = self.size
        new_h, new_w = validation_resize_shape(image.shape[0], image.shape[1], size, self.resized_val)
        if min(new_h, new_w) < 1:  # cv2.resize would fail with an anonymous assertion
            raise ValueError(too_elongated_message(image.shape[0], image.shape[1], size))
        resized_image = cv2.resize(image, dsize=(int(new_w), int(new_h)), interpolation=cv2.INTER_LINEAR)
        if resized_image.ndim == 2:
            resized_image = resized_image[:, :, None]
        canvas = np.zeros((size, size, resized_image.shape[2]))
        canvas[:new_h, :new_w, :] = resized_image

        new_h, new_w = validation_resize_shape(label.shape[0], label.shape[1], size, self.resized_val)
        resized_label = cv2.resize(
            label.astype(np.float32), dsize=(int(new_w), int(new_h)), interpolation=cv2.INTER_NEAREST
        )
        label_canvas = np.ones((size, size)) * 255
        label_canvas[:new_h, :new_w] = resized_label
        return canvas, label_canvas


def build_train_transform(
    train_h: int,
    train_w: int,
    scale_min: float,
    scale_max: float,
    rotate_min: float,
    rotate_max: float,
    padding_label: int = 255,
) -> Compose:
    """The original train.py's training pipeline: scale, rotate, blur, flip, random crop, tensor,
    normalise.

    Output of the pipeline: image float32 ``(3, train_h, train_w)`` normalised, label int64
    ``(train_h, train_w)``.
    """
    return Compose([
        RandScale([scale_min, scale_max]),
        RandRotate([rotate_min, rotate_max], padding=IMAGE_MEAN, ignore_label=padding_label),
        RandomGaussianBlur(),
        RandomHorizontalFlip(),
        Crop([train_h, train_w], crop_type="rand", padding=IMAGE_MEAN, ignore_label=padding_label),
        ToTensor(),
        Normalize(mean=IMAGE_MEAN, std=IMAGE_STD),
    ])


def build_val_transform(val_size: int, resized_val: bool = True) -> Compose:
    """The original's validation pipeline: `test_Resize`, tensor, normalise (no random draws).

    Output: image float32 ``(3, val_size, val_size)``, label int64 ``(val_size, val_size)``.
    """
    return Compose([
        test_Resize(val_size, resized_val=resized_val),
        ToTensor(),
        Normalize(mean=IMAGE_MEAN, std=IMAGE_STD),
    ])


class SquareResize:
    """HSNet-style test resize (the paper's double-dagger rows): image (linear) and label
    (nearest) straight to size x size, aspect ratio not kept. Draws nothing."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, label):
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        return image, label


def build_hsnet_val_transform(val_size: int) -> Compose:
    """`SquareResize`, tensor, normalise; the evaluator then scores logits resized to the
    original label size."""
    return Compose([SquareResize(val_size), ToTensor(), Normalize(mean=IMAGE_MEAN, std=IMAGE_STD)])
