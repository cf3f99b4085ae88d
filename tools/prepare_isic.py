"""ISIC2018 task 1 (images and lesion masks) + a class file -> the layout of PATNet's cross-domain test.

Usage::

    python -m tools.prepare_isic --images ../data/ISIC2018_Task1-2_Training_Input \\
        --masks ../data/ISIC2018_Task1_Training_GroundTruth --out ../data/ISIC \\
        [--class-file lists/cross_domain/isic_class_id.csv]

Inputs: the ISIC 2018 challenge's task 1 training images ``ISIC_<n>.jpg`` (``--images``) and
lesion masks ``ISIC_<n>_segmentation.png`` (``--masks``), and a class file giving each image's
diagnosis. The default class file is PATNet's ``data/isic/class_id.csv`` (slei109/PATNet,
shipped as lists/cross_domain/isic_class_id.csv: ``ID,Class`` rows, 2,594 images, classes
nevus, melanoma and seborrheic_keratosis); a one-hot file of the ISIC 2017 task 3 form
(``image_id,melanoma,seborrheic_keratosis``, neither = nevus) is read too. The ISIC 2018 task 3
file does not fit: its images (HAM10000) are not task 1's.

Output (what PATNet ``data/isic.py`` reads): ``<out>/ISIC2018_Task1-2_Training_Input/<c>/<id>.jpg``
for class folder c (1 nevus, 2 melanoma, 3 seborrheic keratosis: util/episode_data/cross_domain.py
says where that order comes from) and ``<out>/ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png``,
both copies of the inputs. Every image of the class file must be there with its mask; images the
class file does not name are left out (PATNet's loader never sees them). Files already copied are
kept.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from typing import Dict, List, Sequence

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

from tools.cross_domain_preparation import (check_out_folder, copy_into, output_parser, refuse_missing,
                                            require_folder)
from tools.preparation import PrepareError
from util.cli import run_entry_point
from util.episode_data.cross_domain import CROSS_DOMAIN_LAYOUTS
from util.io import read_text

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CLASS_FILE = os.path.join(REPOSITORY_ROOT, "lists", "cross_domain", "isic_class_id.csv")
CLASS_FOLDERS = {name: index + 1 for index, name in enumerate(CROSS_DOMAIN_LAYOUTS["isic"].class_names)}
IMAGE_FOLDER, MASK_FOLDER = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"


def _named_rows(rows: List[List[str]], path: str) -> Dict[str, int]:
    classes = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[1] not in CLASS_FOLDERS:
            raise PrepareError(f"--class-file {path!r} line {number}: expected '<image id>,<class>' with a class "
                               f"of {', '.join(CLASS_FOLDERS)}, got {','.join(row)!r}")
        classes[row[0]] = CLASS_FOLDERS[row[1]]
    return classes


def _one_hot_rows(rows: List[List[str]], path: str) -> Dict[str, int]:
    classes = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or any(value.strip() not in ("0", "0.0", "1", "1.0") for value in row[1:]) or \
                float(row[1]) + float(row[2]) > 1:
            raise PrepareError(f"--class-file {path!r} line {number}: expected '<image id>,<melanoma 0/1>,"
                               f"<seborrheic_keratosis 0/1>' (at most one 1), got {','.join(row)!r}")
        melanoma, keratosis = float(row[1]) == 1, float(row[2]) == 1
        name = "melanoma" if melanoma else "seborrheic_keratosis" if keratosis else "nevus"
        classes[row[0]] = CLASS_FOLDERS[name]
    return classes


def read_class_file(path: str) -> Dict[str, int]:
    """Image id -> class folder (1..3) of a class file (PATNet's ``ID,Class`` form or ISIC 2017's
    one-hot form, told apart by the header)."""
    if not os.path.isfile(path):
        raise PrepareError(f"--class-file {path!r} is not a file: expected PATNet's data/isic/class_id.csv "
                           f"('ID,Class' rows)")
    rows = [row for row in csv.reader(io.StringIO(read_text(path, "a class file"))) if row]
    header = [cell.strip() for cell in rows[0]] if rows else []
    if header == ["ID", "Class"]:
        classes = _named_rows(rows, path)
    elif header == ["image_id", "melanoma", "seborrheic_keratosis"]:
        classes = _one_hot_rows(rows, path)
    else:
        raise PrepareError(f"--class-file {path!r}: header {','.join(header)!r} is neither 'ID,Class' (PATNet's "
                           f"class_id.csv) nor 'image_id,melanoma,seborrheic_keratosis' (ISIC 2017 task 3)")
    if not classes:
        raise PrepareError(f"--class-file {path!r} names no image")
    return classes


def prepare_isic(images: str, masks: str, out: str, class_file: str = DEFAULT_CLASS_FILE) -> Dict[int, int]:
    """Copy the images into their class folders and their masks beside; returns class -> count."""
    require_folder(images, "--images", "the ISIC 2018 task 1 training images ISIC_<n>.jpg")
    require_folder(masks, "--masks", "the ISIC 2018 task 1 training masks ISIC_<n>_segmentation.png")
    classes = read_class_file(class_file)
    hint = "--images and --masks must hold ISIC 2018 task 1's training data (PATNet's class file names those images)"
    refuse_missing(f"image(s) of the class file missing from --images {images!r}",
                   [f"{image}.jpg" for image in classes if not os.path.isfile(os.path.join(images, image + ".jpg"))],
                   hint)
    refuse_missing(f"mask(s) of the class file missing from --masks {masks!r}",
                   [f"{image}_segmentation.png" for image in classes
                    if not os.path.isfile(os.path.join(masks, image + "_segmentation.png"))], hint)
    counts = {class_id: 0 for class_id in CLASS_FOLDERS.values()}
    for image, class_id in sorted(classes.items()):
        copy_into(os.path.join(images, image + ".jpg"), os.path.join(out, IMAGE_FOLDER, str(class_id), image + ".jpg"))
        copy_into(os.path.join(masks, image + "_segmentation.png"),
                  os.path.join(out, MASK_FOLDER, image + "_segmentation.png"))
        counts[class_id] += 1
    for name, class_id in CLASS_FOLDERS.items():
        print(f"class {class_id} ({name}): {counts[class_id]:,} images in {os.path.join(out, IMAGE_FOLDER, str(class_id))}")
    return counts


def _run(argv: Sequence[str]) -> None:
    parser = output_parser("tools.prepare_isic", "ISIC2018 task 1 + a class file -> PATNet's ISIC layout "
                                                 "(cross-domain benchmark)")
    parser.add_argument("--images", required=True, help="ISIC2018_Task1-2_Training_Input (ISIC_<n>.jpg)")
    parser.add_argument("--masks", required=True, help="ISIC2018_Task1_Training_GroundTruth (ISIC_<n>_segmentation.png)")
    parser.add_argument("--class-file", default=DEFAULT_CLASS_FILE,
                        help="image classes (default: PATNet's class_id.csv, %(default)s)")
    arguments = parser.parse_args(argv)
    check_out_folder(arguments.out)
    prepare_isic(arguments.images, arguments.masks, arguments.out, arguments.class_file)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 after printing ``error: ...`` for a problem with the inputs."""
    return run_entry_point(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
