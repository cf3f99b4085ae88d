"""Deepglobe land cover (the originals) -> the layout of PATNet's cross-domain test.

Usage::

    python -m tools.prepare_deepglobe --source ../data/deepglobe/train --out ../data/Deepglobe

Input: ``--source`` holds the Deepglobe Land Cover Classification training images
``<n>_sat.jpg`` (2448 x 2448) with their colour masks ``<n>_mask.png`` (Kaggle's
``deepglobe-land-cover-classification-dataset``, folder ``train``; the valid and test folders
have no masks).

PATNet's preparation (slei109/PATNet ``data/preprocess.py``), step by step:

1. each image and mask is cut into 6 x 6 tiles, tile (i, j) covering rows
   ``int(i * H / 6) .. int((i + 1) * H / 6)`` and the same of the columns (408 x 408 for 2448);
2. a tile is kept only when its mask has more than one colour and every colour covers more than
   4.8 % of it (PATNet divides the colour counts by 166464 = 408 x 408, the area of a tile of a
   2448-pixel original; here by the tile's own area, the same number for Deepglobe's images);
3. for each class c of PATNet's label set, compared with OpenCV's BGR pixels (agriculture,
   urban, rangeland, forest, water, barren; util/episode_data/cross_domain.py), a kept tile whose
   mask has a pixel of exactly that colour goes to class folder ``c`` with a binary mask (255
   where that colour, else 0).

Output (what PATNet ``data/deepglobe.py`` reads): ``<out>/<c>/test/origin/<n>_<i><j>.jpg`` (the
image tile, written by OpenCV as PATNet does) and ``<out>/<c>/test/groundtruth/<n>_<i><j>.png``.
PATNet's loader finds a tile's mask by the tile's name; the names here are this tool's own.
Tiles already written are written again (the run is repeatable; files are replaced atomically).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Sequence, Tuple

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import cv2
import numpy as np

from tools.cross_domain_preparation import check_out_folder, output_parser, refuse_missing, require_folder
from tools.preparation import PrepareError
from util.cli import run_entry_point
from util.io import atomic_write

TILES_PER_SIDE = 6  # PATNet data/preprocess.py: "get 6 roi" per side
SMALLEST_COLOUR_SHARE = 0.048  # PATNet: percent_min > 0.048
# PATNet's label set, BGR as cv2.imread returns the mask; class folder = index + 1.
CLASS_COLOURS_BGR = ((0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255))
SOURCE_LAYOUT = "the Deepglobe land-cover training folder of <n>_sat.jpg images with their <n>_mask.png masks"


def source_pairs(source: str) -> List[Tuple[str, str, str]]:
    """(name n, image path, mask path) of every ``<n>_sat.jpg`` of ``source``, sorted; refuses a
    folder without any, and images without their mask."""
    require_folder(source, "--source", SOURCE_LAYOUT)
    names = sorted(entry[:-len("_sat.jpg")] for entry in os.listdir(source) if entry.endswith("_sat.jpg"))
    if not names:
        raise PrepareError(f"--source {source!r} holds no <n>_sat.jpg image: expected {SOURCE_LAYOUT}")
    missing = [f"{name}_mask.png" for name in names if not os.path.isfile(os.path.join(source, f"{name}_mask.png"))]
    refuse_missing(f"image(s) of --source {source!r} without their mask", missing,
                   f"expected {SOURCE_LAYOUT}")
    return [(name, os.path.join(source, f"{name}_sat.jpg"), os.path.join(source, f"{name}_mask.png"))
            for name in names]


def tile_bounds(length: int, tiles: int = TILES_PER_SIDE) -> List[Tuple[int, int]]:
    """PATNet's tile edges along one side: ``(int(i * length / tiles), int((i + 1) * length / tiles))``."""
    return [(int(index * length / tiles), int((index + 1) * length / tiles)) for index in range(tiles)]


def keeps_tile(mask_tile: np.ndarray) -> bool:
    """PATNet's filter: more than one colour, and every colour covers more than 4.8 % of the tile."""
    # One integer per colour (B, G, R packed): np.unique over rows of three is several times slower.
    pixels = mask_tile.reshape(-1, 3).astype(np.int32)
    _, counts = np.unique((pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2], return_counts=True)
    return len(counts) > 1 and counts.min() / counts.sum() > SMALLEST_COLOUR_SHARE


def class_masks(mask_tile: np.ndarray) -> Dict[int, np.ndarray]:
    """Class folder -> binary mask (uint8, 255 where exactly that class's colour) of the classes
    present in a BGR mask tile."""
    found = {}
    for index, colour in enumerate(CLASS_COLOURS_BGR):
        where = np.all(mask_tile == np.array(colour, np.uint8), axis=-1)
        if where.any():
            found[index + 1] = np.where(where, 255, 0).astype(np.uint8)
    return found


def _write_image(path: str, array: np.ndarray) -> None:
    extension = os.path.splitext(path)[1]
    ok, encoded = cv2.imencode(extension, array)
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write(path, lambda handle: handle.write(encoded.tobytes()))


def _read(path: str, what: str) -> np.ndarray:
    array = cv2.imread(path, cv2.IMREAD_COLOR)
    if array is None:
        raise PrepareError(f"cannot read the {what} {path!r} (not an image file OpenCV can read)")
    return array


def prepare_tiles(name: str, image_path: str, mask_path: str, out: str) -> Dict[int, int]:
    """Cut one original into tiles, keep PATNet's, write each into its class folders. Returns
    class -> number of tiles written."""
    image, mask = _read(image_path, "image"), _read(mask_path, "mask")
    if image.shape[:2] != mask.shape[:2]:
        raise PrepareError(f"image {image_path!r} is {image.shape[0]}x{image.shape[1]} but its mask {mask_path!r} "
                           f"is {mask.shape[0]}x{mask.shape[1]}")
    written: Dict[int, int] = {}
    for row, (top, bottom) in enumerate(tile_bounds(image.shape[0])):
        for column, (left, right) in enumerate(tile_bounds(image.shape[1])):
            mask_tile = mask[top:bottom, left:right]
            if not keeps_tile(mask_tile):
                continue
            tile_name = f"{name}_{row}{column}"
            for class_id, binary in class_masks(mask_tile).items():
                folder = os.path.join(out, str(class_id), "test")
                _write_image(os.path.join(folder, "origin", tile_name + ".jpg"), image[top:bottom, left:right])
                _write_image(os.path.join(folder, "groundtruth", tile_name + ".png"), binary)
                written[class_id] = written.get(class_id, 0) + 1
    return written


def prepare_deepglobe(source: str, out: str) -> Dict[int, int]:
    """The whole preparation; returns class -> number of tiles (printed per class)."""
    pairs = source_pairs(source)
    totals = {class_id: 0 for class_id in range(1, len(CLASS_COLOURS_BGR) + 1)}
    for name, image_path, mask_path in pairs:
        for class_id, count in prepare_tiles(name, image_path, mask_path, out).items():
            totals[class_id] += count
    for class_id, count in totals.items():
        print(f"class {class_id}: {count:,} tiles in {os.path.join(out, str(class_id), 'test')}")
    return totals


def _run(argv: Sequence[str]) -> None:
    parser = output_parser("tools.prepare_deepglobe", "Deepglobe land-cover originals -> PATNet's tiles "
                                                      "per class (cross-domain benchmark)")
    parser.add_argument("--source", required=True, help="folder of <n>_sat.jpg images and <n>_mask.png masks")
    arguments = parser.parse_args(argv)
    check_out_folder(arguments.out)
    prepare_deepglobe(arguments.source, arguments.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 after printing ``error: ...`` for a problem with the inputs."""
    return run_entry_point(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
