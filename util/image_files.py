"""Reading image and label files so that a damaged or wrongly encoded file is named, not scored.

OpenCV hides three kinds of bad input behind plausible arrays:

* a truncated JPEG decodes to a picture whose missing rows are grey (libjpeg only prints an
  anonymous "Premature end of JPEG file"), and a truncated PNG reads as ``None``;
* a label saved as colours (VOC's palette PNGs expanded to RGB, or a rendering of the classes)
  read as greyscale gives weighted sums of the colours, i.e. made-up class ids;
* a 16-bit label read as 8-bit is shifted right by 8 bits, so ids below 256 all become 0.

The helpers here detect each of them and return a sentence saying what the file is and what was
expected; the dataset, the base learner's data and the predictor raise it with their own context.
"""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from util.io import relative_to_cwd

__all__ = ["ImageFileError", "file_problem", "truncation_problem", "colour_problem", "label_value_problem",
           "read_image_file", "read_label_file", "read_checked", "describe_classes", "LABEL_READ_FLAGS"]

# Keep the stored depth and the colour channels, so that 16-bit and colour labels can be told
# apart; unlike IMREAD_UNCHANGED this still applies the EXIF orientation, as the original's
# IMREAD_GRAYSCALE does, and an 8-bit one-channel label reads to the same values.
LABEL_READ_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND"
# Bytes read from the end of a file to find its end marker: encoders may pad after it.
_TAIL_BYTES = 1024


class ImageFileError(ValueError):
    """An image or label file that exists but cannot be used as it is."""


def file_problem(path) -> Optional[str]:
    """Why ``path`` cannot be an image or label file, or None, from the file system and the
    file's signature (nothing is decoded). Relative paths are read from the working directory,
    as the dataset reads them, and the reason says so."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return f"does not exist{relative_to_cwd(path)}"
    if os.path.isdir(path):
        return "is a folder, not an image file"
    if not os.path.isfile(path):
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read (no permission)"
    if not cv2.haveImageReader(path):  # reads the signature only
        return "is not an image file OpenCV can read"
    return None


def truncation_problem(path: str) -> Optional[str]:
    """Why ``path`` looks cut short (a JPEG without its end-of-image marker, a PNG without its
    IEND chunk), or None. Other formats are not checked.

    Inside a JPEG's entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker,
    so 0xFFD9 near the end of the file can only be the end marker itself.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return None  # the caller's read reports a missing or unreadable file
    if head.startswith(_JPEG_START) and _JPEG_END not in tail:
        return f"a truncated JPEG ({size} bytes, no end-of-image marker): copy or download it again"
    if head.startswith(_PNG_SIGNATURE) and _PNG_END not in tail:
        return f"a truncated PNG ({size} bytes, no IEND chunk): copy or download it again"
    return None


def colour_problem(array: np.ndarray) -> Optional[str]:
    """Why a label/mask array of 3 or 4 channels cannot be read as one channel, or None.
    Identical colour channels (grey stored as RGB) are one channel; alpha is not looked at."""
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        return None
    colour = array[:, :, :3]
    if (colour == colour[:, :, :1]).all():
        return None
    return (f"has {array.shape[2]} channels with different values (a colour or palette image "
            f"expanded to RGB?)")


def label_value_problem(label: np.ndarray, num_classes: int, ignore_label: int = 255) -> Optional[str]:
    """Why ``label`` holds values that are neither background (0), a class id 1..num_classes nor
    ``ignore_label``, or None."""
    outside = (label > num_classes) & (label != ignore_label)
    if not outside.any():
        return None
    values = np.unique(label[outside])
    shown = ", ".join(str(int(value)) for value in values[:6]) + (", ..." if len(values) > 6 else "")
    return (f"has values {shown} outside 0 (background), 1..{num_classes} (the classes) and "
            f"{ignore_label} (ignored)")


def read_checked(path: str, flags: int, what: str) -> np.ndarray:
    """``cv2.imread(path, flags)``, refusing a missing, unreadable or truncated file with one line
    naming it as ``what`` (e.g. 'mask')."""
    array = cv2.imread(path, flags)
    problem = truncation_problem(path)
    if problem is not None:
        raise ImageFileError(f"{what} {path!r} is {problem}")
    if array is None:
        raise FileNotFoundError(f"cannot read {what} {path!r} (missing or not a readable image file)")
    return array


def read_image_file(path: str, what: str = "image") -> np.ndarray:
    """``cv2.imread(path, IMREAD_COLOR)`` (BGR uint8), refusing a missing or truncated file."""
    return read_checked(path, cv2.IMREAD_COLOR, what)


def read_label_file(path: str, num_classes: Optional[int] = None, ignore_label: int = 255,
                    expected: str = "a single-channel 8-bit PNG of class ids") -> np.ndarray:
    """A label file as uint8 ``(H, W)``, equal to ``cv2.imread(path, IMREAD_GRAYSCALE)`` for every
    file that is a proper label. Refused, naming the file: missing, truncated, colour, more than
    8 bits, and (with ``num_classes``) values outside 0..num_classes and ``ignore_label``."""
    label = read_checked(path, LABEL_READ_FLAGS, "label")
    problem = colour_problem(label)
    if problem is not None:
        raise ImageFileError(f"label {path!r} {problem}; expected {expected}")
    if label.ndim == 3:
        label = np.ascontiguousarray(label[:, :, 0])
    if label.dtype != np.uint8:
        bits = label.dtype.itemsize * 8
        raise ImageFileError(f"label {path!r} is a {bits}-bit image (read as 8 bits its ids would "
                             f"be shifted away); expected {expected}")
    if num_classes is not None:
        problem = label_value_problem(label, num_classes, ignore_label)
        if problem is not None:
            raise ImageFileError(f"label {path!r} {problem}; expected {expected}")
    return label


def describe_classes(num_classes: int, data_set: str, ignore_label: int = 255) -> str:
    """What a label of ``data_set`` should be, for the messages above."""
    return (f"a single-channel 8-bit PNG of {data_set} class ids (0 background, 1..{num_classes}, "
            f"{ignore_label} ignored) as python -m tools.prepare_{data_set} writes them")

