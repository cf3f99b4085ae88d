"""Build the COCO-20i data (semantic label PNGs and base lists) from the COCO 2014 instance annotations.

Usage::

    pip install pycocotools        # optional dependency, needed only by this tool
    python -m tools.prepare_coco --coco-root ../data/MSCOCO2014 [--lists-dir lists/coco] \\
        [--splits train2014 val2014] [--workers N] [--force] [--replace-lists]

Inputs (under ``--coco-root``)
------------------------------
``annotations/instances_train2014.json``, ``annotations/instances_val2014.json`` and the image
folders ``train2014/`` and ``val2014/``.

Outputs
-------
* ``annotations/<split>/<file stem>.png`` for EVERY image of the split (images without any
  annotation get an all-background label): plain single-channel uint8 PNG, 0 = background,
  1..80 = the COCO categories numbered in ascending category-id order (category id 1 -> 1,
  ..., category id 90 -> 80). There is no 255 band in COCO labels.
* ``<lists-dir>/train.txt`` and ``<lists-dir>/val.txt`` (for train2014 / val2014; other splits
  give ``<split>.txt``): one line ``<split>/<file_name> annotations/<split>/<stem>.png`` per
  image with at least one annotation (crowd annotations count), in ascending image-id order.
  Reference counts: val 40,137 lines, train 82,081 lines.

Lists already in ``--lists-dir`` are not replaced. ``lists/coco/val.txt`` ships the original
SCCAN repository's val list, whose order (not ascending) the shipped COCO val FSS lists follow:
it is kept, after checking that it holds the same images as the list built from the
annotations (a WARNING names the differences otherwise). The original's ``train.txt`` is not
available, so ``train.txt`` is written in ascending image-id order and the COCO training FSS
lists of folds 1-3 follow that order, not the original's. ``--replace-lists`` writes the built
lists over existing ones.

Overlapping instances -- the painting rule
------------------------------------------
Instance masks overlap in COCO, and a semantic label keeps one class per pixel. The
annotations of an image are painted in DESCENDING order of their ``area`` field (ties: ascending
annotation id), each one overwriting what is below it. So the largest instance is painted first
and smaller ones later: a small object lying on top of a large one (a cup on a dining table, a
person on a bed) stays visible instead of being swallowed. Crowd annotations (``iscrowd=1``,
stored as RLE) are painted too, by the same rule, since they do mark pixels of their class and
an image whose only annotation is a crowd region still appears in the list.
Masks are decoded exactly like pycocotools' ``COCO.annToMask`` (polygons merged into one RLE,
uncompressed RLE converted, compressed RLE used as is).

The run is resumable: a label PNG that already exists, decodes completely, has the image's size
and holds only values 0..80 is skipped (``--force`` rewrites it), and every file is written to a
temporary file and renamed into place, so an interrupted run never leaves a half-written file.

Importable: ``main(argv)``, ``build_coco(...)``, ``category_to_class_map(coco)``,
``coco_instance_label(coco, image_id, cat_to_class)``, ``instance_label_from_annotations(...)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import numpy as np

from tools.label_files import image_height_width, is_valid_label_png, write_label_png
from tools.parallel import run_tasks
from tools.preparation import (PrepareError, add_output_arguments, first_few, read_id_list, report_count,
                               write_list_unless_present)
from util.cli import run_entry_point
from util.io import check_output_path

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LISTS_DIR = os.path.join(REPOSITORY_ROOT, "lists", "coco")
DEFAULT_SPLITS = ("train2014", "val2014")
REFERENCE_LIST_COUNTS = {"train2014": 82081, "val2014": 40137}
LIST_FILE_NAMES = {"train2014": "train.txt", "val2014": "val.txt"}
EXPECTED_NUMBER_OF_CLASSES = 80
COCO_LAYOUT = "MSCOCO2014/{annotations/instances_<split>.json, <split>/*.jpg}"
PYCOCOTOOLS_MISSING_MESSAGE = (
    "pycocotools is required to decode the COCO annotations: pip install pycocotools"
)


def _import_pycocotools():
    """Import pycocotools lazily: it is an optional dependency needed only by this tool."""
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError as error:
        raise PrepareError(PYCOCOTOOLS_MISSING_MESSAGE) from error
    return COCO, mask_utils


def list_file_name(split: str) -> str:
    return LIST_FILE_NAMES.get(split, f"{split}.txt")


def category_to_class_map(coco) -> dict[int, int]:
    """COCO category id -> class 1..N in ascending category-id order (ids are not contiguous:
    1..90 with gaps, so the 80 categories become 1..80)."""
    return {category_id: index + 1 for index, category_id in enumerate(sorted(coco.getCatIds()))}


def annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """Binary mask (uint8, height x width) of one annotation, decoded like ``COCO.annToMask``."""
    _, mask_utils = _import_pycocotools()
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        # Polygons: one RLE per polygon part, merged into one mask.
        if not segmentation:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation  # compressed RLE
    else:
        raise PrepareError(f"annotation {annotation.get('id')}: unrecognised segmentation format")
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise PrepareError(
            f"annotation {annotation.get('id')}: mask size {mask.shape} differs from its image ({height}, {width})"
        )
    return mask


def painting_order(annotations: Sequence[dict], height: int, width: int) -> list[dict]:
    """Annotations sorted for painting: largest area first, so later (smaller) ones win.
    Ties are broken by annotation id so the result never depends on the json order."""

    def area(annotation: dict) -> float:
        if "area" in annotation:
            return float(annotation["area"])
        return float(annotation_mask(annotation, height, width).sum())

    return sorted(annotations, key=lambda annotation: (-area(annotation), annotation.get("id", 0)))


def instance_label_from_annotations(
    annotations: Sequence[dict], height: int, width: int, cat_to_class: dict[int, int]
) -> np.ndarray:
    """Semantic label (uint8, 0 = background) of one image from its instance annotations,
    using the documented painting rule (descending area; crowd annotations included)."""
    label = np.zeros((height, width), dtype=np.uint8)
    for annotation in painting_order(annotations, height, width):
        category_id = annotation["category_id"]
        if category_id not in cat_to_class:
            raise PrepareError(
                f"annotation {annotation.get('id')} has category id {category_id}, which is not in the "
                "json 'categories'"
            )
        label[annotation_mask(annotation, height, width) > 0] = cat_to_class[category_id]
    return label


def coco_instance_label(coco, image_id: int, cat_to_class: dict[int, int]) -> np.ndarray:
    """Semantic label of image ``image_id`` of a loaded ``pycocotools.coco.COCO`` object."""
    image_info = coco.imgs[image_id]
    annotations = coco.imgToAnns.get(image_id, [])
    return instance_label_from_annotations(annotations, image_info["height"], image_info["width"], cat_to_class)


def _write_label_task(task: tuple) -> str:
    """Worker: write one annotation PNG. Returns 'written' or 'skipped'."""
    annotations, height, width, cat_to_class, destination, force = task
    allowed_values = np.arange(len(cat_to_class) + 1, dtype=np.uint8)
    if not force and is_valid_label_png(destination, (height, width), allowed_values):
        return "skipped"
    label = instance_label_from_annotations(annotations, height, width, cat_to_class)
    write_label_png(destination, label)
    return "written"


def _load_split_annotations(coco_root: str, split: str, image_folder: str):
    """The split's loaded ``COCO`` object and its annotation file; warns when its image folder is absent."""
    COCO, _ = _import_pycocotools()
    annotation_file = os.path.join(coco_root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(annotation_file):
        raise PrepareError(f"missing file {annotation_file} (COCO {split} instance annotations); expected layout: {COCO_LAYOUT}")
    if not os.path.isdir(image_folder):
        # Labels can be built without the images, but the list would name files that are absent.
        print(f"WARNING: missing folder {image_folder} (COCO {split} images); expected layout: {COCO_LAYOUT}", file=sys.stderr)

    try:
        coco = COCO(annotation_file)
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise PrepareError(f"cannot read {annotation_file} as COCO instance annotations: {error}") from error
    return coco, annotation_file


def _checked_class_map(coco, annotation_file: str, expected_classes) -> dict[int, int]:
    """``category_to_class_map(coco)``, refused when it does not fit a uint8 label or differs from
    ``expected_classes``."""
    cat_to_class = category_to_class_map(coco)
    if len(cat_to_class) != EXPECTED_NUMBER_OF_CLASSES:
        print(
            f"WARNING: {annotation_file} has {len(cat_to_class)} categories, COCO has {EXPECTED_NUMBER_OF_CLASSES}",
            file=sys.stderr,
        )
    if len(cat_to_class) > 254:
        raise PrepareError(f"{annotation_file}: {len(cat_to_class)} categories do not fit an 8-bit label")
    if expected_classes is not None and cat_to_class != expected_classes:
        raise PrepareError(f"{annotation_file}: its categories differ from the other split's; class numbers would disagree")
    return cat_to_class


def _label_tasks_and_list_lines(coco, split: str, image_folder: str, label_folder: str,
                                cat_to_class: dict[int, int], force: bool):
    """(label-writing tasks for every image, list lines of the annotated images, the annotated
    images missing from ``image_folder``), in ascending image-id order."""
    os.makedirs(label_folder, exist_ok=True)
    tasks, list_lines, missing_images = [], [], []
    for image_id in sorted(coco.imgs):
        image_info = coco.imgs[image_id]
        file_name = image_info["file_name"]
        stem = os.path.splitext(file_name)[0]
        annotations = coco.imgToAnns.get(image_id, [])
        tasks.append(
            (annotations, image_info["height"], image_info["width"], cat_to_class, os.path.join(label_folder, stem + ".png"), force)
        )
        if annotations:
            list_lines.append(f"{split}/{file_name} annotations/{split}/{stem}.png")
            if not os.path.isfile(os.path.join(image_folder, file_name)):
                missing_images.append(file_name)
    return tasks, list_lines, missing_images


def _write_split_list(lists_dir: str, split: str, list_lines: list[str], replace_lists: bool) -> tuple[str, str]:
    """Write the split's list unless one is present; returns (list path, list outcome)."""
    os.makedirs(lists_dir, exist_ok=True)
    list_path = os.path.join(lists_dir, list_file_name(split))
    list_outcome = write_list_unless_present(list_path, list_lines, replace_lists)
    if list_outcome == "written":
        print(f"{list_path}: written in ascending image-id order")
    report_count(f"{list_path} lines", len(list_lines), REFERENCE_LIST_COUNTS.get(split))
    return list_path, list_outcome


def build_coco_split(
    coco_root: str,
    split: str,
    lists_dir: str,
    force: bool = False,
    workers: int = 1,
    expected_classes=None,
    replace_lists: bool = False,
) -> dict:
    """Labels and list of one split. ``expected_classes`` (a category-id -> class map from another
    split) guards against two splits numbering the classes differently. The summary's
    'list_outcome' says what happened to the list (see `tools.preparation.write_list_unless_present`)."""
    image_folder = os.path.join(coco_root, split)
    coco, annotation_file = _load_split_annotations(coco_root, split, image_folder)
    cat_to_class = _checked_class_map(coco, annotation_file, expected_classes)
    label_folder = os.path.join(coco_root, "annotations", split)
    tasks, list_lines, missing_images = _label_tasks_and_list_lines(
        coco, split, image_folder, label_folder, cat_to_class, force)

    outcomes = run_tasks(_write_label_task, tasks, workers, f"annotations/{split}")
    print(f"{split} labels: {outcomes['written']:,} written, {outcomes['skipped']:,} already valid and skipped")
    if missing_images:
        print(
            f"WARNING: {len(missing_images):,} listed {split} images are not in {image_folder}: "
            f"{first_few(missing_images)}",
            file=sys.stderr,
        )

    list_path, list_outcome = _write_split_list(lists_dir, split, list_lines, replace_lists)
    return {
        "split": split,
        "list_path": list_path,
        "list_count": len(list_lines),
        "list_outcome": list_outcome,
        "labels_written": outcomes["written"],
        "labels_skipped": outcomes["skipped"],
        "cat_to_class": cat_to_class,
    }


def build_coco(
    coco_root: str,
    lists_dir: str = DEFAULT_LISTS_DIR,
    splits: Sequence[str] = DEFAULT_SPLITS,
    force: bool = False,
    workers: int = 1,
    replace_lists: bool = False,
) -> dict[str, dict]:
    """Build every requested split; returns {split: summary}."""
    _import_pycocotools()  # fail early, before any work, when the dependency is missing
    if not os.path.isdir(coco_root):
        raise PrepareError(f"missing folder {coco_root} (the --coco-root folder); expected layout: {COCO_LAYOUT}")
    summaries: dict[str, dict] = {}
    expected_classes = None
    for split in splits:
        summaries[split] = build_coco_split(
            coco_root, split, lists_dir, force, workers, expected_classes, replace_lists
        )
        expected_classes = summaries[split]["cat_to_class"]
    return summaries


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.prepare_coco",
        description="Build COCO-20i semantic label PNGs and base lists from COCO 2014 instance annotations.",
    )
    parser.add_argument("--coco-root", required=True, help="folder holding annotations/, train2014/, val2014/")
    parser.add_argument("--lists-dir", default=DEFAULT_LISTS_DIR, help="where train.txt and val.txt go (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="COCO splits to convert (default: %(default)s)")
    add_output_arguments(parser, "the original's shipped val.txt")
    return parser.parse_args(argv)


def _run(argv: Sequence[str]) -> None:
    arguments = parse_arguments(argv)
    # Before the labels are converted (minutes), not when the lists are written at the end.
    check_output_path(arguments.lists_dir, "--lists-dir", folder=True)
    build_coco(
        arguments.coco_root, arguments.lists_dir, arguments.splits, arguments.force, arguments.workers,
        arguments.replace_lists,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 after printing ``error: ...`` for a problem with the inputs."""
    return run_entry_point(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
