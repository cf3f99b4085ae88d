"""Chest X-ray lung masks (the published folder) -> the layout of PATNet's cross-domain test.

Usage::

    python -m tools.prepare_lung --source "../data/chest-xray/Lung Segmentation" --out ../data/LungSegmentation

Input: ``--source`` holds ``CXR_png/<id>.png`` (the radiographs) and ``masks/`` (the lung masks)
as Kaggle's ``chest-xray-masks-and-labels`` publishes them (README of slei109/PATNet). A mask is
named ``<id>_mask.png`` or, like its image, ``<id>.png`` (the release is not uniform: PATNet
issue #9); radiographs without a mask have no episode.

PATNet's loader (``data/lung.py``) lists the masks and finds a mask's image by cutting the last 9
characters (``_mask.png``) off its name, so a mask named like its image would point at no file
(PATNet issue #9 reports that error). This tool gives every mask the ``_mask.png`` name.

Output (what PATNet ``data/lung.py`` reads): ``<out>/masks/<id>_mask.png`` and
``<out>/CXR_png/<id>.png``, copies of the inputs, for every mask whose image is there. Files
already copied are kept.
"""
from __future__ import annotations

import os
import sys
from typing import List, Sequence, Tuple

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

from tools.cross_domain_preparation import (check_out_folder, copy_into, output_parser, refuse_missing,
                                            require_folder)
from tools.preparation import PrepareError
from util.cli import run_entry_point

MASK_SUFFIX = "_mask.png"
SOURCE_LAYOUT = "the 'Lung Segmentation' folder of the chest X-ray data, holding CXR_png/ and masks/"


def mask_image_pairs(source: str) -> List[Tuple[str, str, str]]:
    """(image id, mask path, image path) of every mask of ``source``, sorted by id; refuses a
    folder without CXR_png/ or masks/, and masks whose radiograph is missing."""
    require_folder(source, "--source", SOURCE_LAYOUT)
    for folder in ("CXR_png", "masks"):
        if not os.path.isdir(os.path.join(source, folder)):
            raise PrepareError(f"--source {source!r} has no {folder}/ folder: expected {SOURCE_LAYOUT}")
    masks = sorted(name for name in os.listdir(os.path.join(source, "masks")) if name.endswith(".png"))
    if not masks:
        raise PrepareError(f"{os.path.join(source, 'masks')!r} holds no .png mask: expected {SOURCE_LAYOUT}")
    pairs = []
    for name in masks:
        image_id = name[:-len(MASK_SUFFIX)] if name.endswith(MASK_SUFFIX) else name[:-len(".png")]
        pairs.append((image_id, os.path.join(source, "masks", name), os.path.join(source, "CXR_png", image_id + ".png")))
    ids = [image_id for image_id, _, _ in pairs]
    repeated = sorted({image_id for image_id in ids if ids.count(image_id) > 1})
    refuse_missing("image id(s) with two masks (<id>.png and <id>_mask.png)", repeated,
                   "keep one mask per radiograph")
    refuse_missing(f"mask(s) without their radiograph in {os.path.join(source, 'CXR_png')!r}",
                   [os.path.basename(mask) for _, mask, image in pairs if not os.path.isfile(image)],
                   f"expected {SOURCE_LAYOUT}, a mask <id>_mask.png or <id>.png for the image <id>.png")
    return pairs


def prepare_lung(source: str, out: str) -> int:
    """Copy every mask (as <id>_mask.png) and its radiograph; returns the number of pairs."""
    pairs = mask_image_pairs(source)
    for image_id, mask, image in pairs:
        copy_into(mask, os.path.join(out, "masks", image_id + MASK_SUFFIX))
        copy_into(image, os.path.join(out, "CXR_png", image_id + ".png"))
    without_mask = len([name for name in os.listdir(os.path.join(source, "CXR_png")) if name.endswith(".png")]) - len(pairs)
    print(f"{len(pairs):,} radiographs with their masks in {out} ({without_mask:,} without a mask left out)")
    return len(pairs)


def _run(argv: Sequence[str]) -> None:
    parser = output_parser("tools.prepare_lung", "Chest X-ray lung masks -> PATNet's lung layout "
                                                 "(cross-domain benchmark)")
    parser.add_argument("--source", required=True, help="folder holding CXR_png/ and masks/")
    arguments = parser.parse_args(argv)
    check_out_folder(arguments.out)
    prepare_lung(arguments.source, arguments.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 after printing ``error: ...`` for a problem with the inputs."""
    return run_entry_point(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
