"""Label PNG files of the prepared datasets: writing them (plain single-channel 8-bit PNG,
atomically), reading them back, and deciding whether an existing one can be kept by a resumed
preparation run."""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from tools.preparation import PrepareError
from util.io import atomic_write_bytes


def write_label_png(destination: str, label: np.ndarray) -> None:
    """Write a plain single-channel 8-bit PNG (no palette), atomically."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a label must be a 2-D uint8 array, got shape {label.shape} dtype {label.dtype}")
    succeeded, encoded = cv2.imencode(".png", label)
    if not succeeded:
        raise PrepareError(f"OpenCV could not encode the label PNG for {destination}")
    atomic_write_bytes(destination, encoded.tobytes())


def read_label_png(path: str) -> np.ndarray:
    """Read a label PNG as its stored values (palette indices for palette PNGs)."""
    with Image.open(path) as image:
        return np.array(image)


def is_valid_label_png(
    path: str,
    expected_height_width: tuple[int, int] | None,
    allowed_values: np.ndarray,
) -> bool:
    """True when ``path`` is a complete single-channel 8-bit PNG of the expected size whose values
    are all allowed. A resumed run keeps such files and rewrites anything else."""
    if not os.path.isfile(path):
        return False
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or image.mode != "L":
                return False
            # load() decodes every row; a truncated file raises here.
            image.load()
            values = np.array(image)
    except (OSError, SyntaxError, ValueError):
        return False
    if expected_height_width is not None and values.shape != tuple(expected_height_width):
        return False
    return bool(np.isin(values, allowed_values).all())


def image_height_width(path: str) -> tuple[int, int]:
    """Height and width of an image (the size its label must have), read from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as error:
        raise PrepareError(f"cannot read the image {path}: {error}") from error
    return height, width
