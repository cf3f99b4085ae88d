"""Build the PASCAL-5i data (SegmentationClassAug labels and base lists) from VOC2012 + SBD.

Usage::

    python -m tools.prepare_pascal --voc ../data/VOCdevkit2012/VOC2012 \\
        --sbd ../data/benchmark_RELEASE/dataset [--out-root DIR] [--lists-dir lists/pascal] \\
        [--sbd-train-list FILE] [--workers N] [--force] [--replace-lists]

Inputs
------
``--voc``  a VOC2012 devkit folder holding ``JPEGImages/*.jpg``,
           ``SegmentationClass/*.png`` (palette PNGs; the palette INDICES are the class ids
           0..20, 255 = the 'void' band around objects) and
           ``ImageSets/Segmentation/{train,val}.txt``.
``--sbd``  the ``dataset`` folder of the SBD release (``benchmark_RELEASE/dataset``) holding
           ``cls/*.mat`` (MATLAB struct ``GTcls`` whose field ``Segmentation`` is the class map),
           ``img/*.jpg``, ``train.txt``, ``val.txt`` and ``train_noval.txt`` (the 5,623-image
           SBD training list without VOC2012 val images; it is a separate download on the SBD
           page -- pass ``--sbd-train-list`` if it lives elsewhere).

Outputs
-------
* ``<out-root>/SegmentationClassAug/<id>.png``: plain single-channel uint8 PNG, values 0..20 and
  255, for every VOC2012 segmentation id and every SBD id (12,031 files for the full releases).
  Where VOC2012 and SBD both annotate an image, VOC2012's label is used (it is the finer one and
  has the 255 boundary band); SBD-only labels have no 255 band and are kept as they are.
* ``<out-root>/JPEGImages/<id>.jpg`` for every labelled id: images already there are left alone,
  missing ones are copied from VOC ``JPEGImages`` or else from SBD ``img``.
  ``--out-root`` defaults to the VOC2012 folder, so usually only a handful of SBD images are copied.
* ``<lists-dir>/val.txt``: VOC2012 ``val.txt`` in its own order (1,449 lines).
* ``<lists-dir>/voc_sbd_merge_noduplicate.txt``: the SBD ``train_noval`` ids in ascending order
  followed by the VOC2012 ``train`` ids in ascending order, de-duplicated keeping the first
  occurrence (5,953 lines). This is the original SCCAN repository's rule, checked against its
  shipped lists: ``voc_sbd_merge_noduplicate.txt`` is ``sbd_data.txt`` (5,623 ids, ascending)
  followed by ``voc_original_train.txt`` (1,464 ids, ascending) with the 1,134 repeated ids
  dropped at their second occurrence, so the SBD-only ids come first.
  Lines read ``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png`` (relative to the data root).

Lists already in ``--lists-dir`` (``lists/pascal`` ships the original repository's ``val.txt`` and
``voc_sbd_merge_noduplicate.txt``) are
not replaced: the FSS lists are built in base-list order, so the order of a list decides the
episodes. A list is written only where none exists; an existing one is compared with the list
built from the data and kept, with a note when it is identical or holds the same entries in
another order, and a WARNING naming the differing entries otherwise. ``--replace-lists`` writes
the built lists over existing ones.

The run is resumable: label PNGs that already exist and decode to a valid label of the image's
size are skipped (``--force`` rewrites them), and every file is written to a temporary file and
then renamed into place, so an interrupted run never leaves a half-written file.

Importable: ``main(argv)``, ``prepare_pascal(...)``, ``convert_sbd_mat(path)``,
``read_voc_label(path)``, ``build_pascal_lists(...)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple, Sequence

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import numpy as np
import scipy.io
from PIL import Image

from tools.label_files import image_height_width, is_valid_label_png, write_label_png
from tools.parallel import run_tasks
from tools.preparation import (PrepareError, add_output_arguments, first_few, read_id_list, report_count,
                               write_list_unless_present)
from util.cli import run_entry_point
from util.io import atomic_copy, check_output_path

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LISTS_DIR = os.path.join(REPOSITORY_ROOT, "lists", "pascal")

REFERENCE_VAL_COUNT = 1449
REFERENCE_TRAIN_COUNT = 5953
REFERENCE_LABEL_COUNT = 12031  # |VOC2012 seg train+val  U  SBD train+val|

VAL_LIST_NAME = "val.txt"
TRAIN_LIST_NAME = "voc_sbd_merge_noduplicate.txt"
LABEL_FOLDER = "SegmentationClassAug"
IMAGE_FOLDER = "JPEGImages"

NUMBER_OF_CLASSES = 20  # foreground classes; 0 is background
IGNORE_VALUE = 255
ALLOWED_LABEL_VALUES = np.array(list(range(NUMBER_OF_CLASSES + 1)) + [IGNORE_VALUE], dtype=np.uint8)


def voc_colormap() -> np.ndarray:
    """The standard VOC palette (256 x 3), used only when a label PNG was saved as RGB."""
    colormap = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        colormap[index] = (red, green, blue)
    return colormap


def _check_label_values(label: np.ndarray, source: str) -> None:
    unexpected = np.setdiff1d(np.unique(label), ALLOWED_LABEL_VALUES)
    if unexpected.size:
        raise PrepareError(
            f"{source}: label values {unexpected.tolist()[:10]} are outside 0..{NUMBER_OF_CLASSES} and "
            f"{IGNORE_VALUE}; is this really a PASCAL VOC class label?"
        )


def read_voc_label(path: str) -> np.ndarray:
    """Read a VOC2012 ``SegmentationClass`` PNG as class ids (uint8, 0..20 and 255).

    The VOC PNGs are palette images whose palette INDEX is the class id; converting them to RGB
    or grayscale would give colours, so the indices are read directly. Labels already stored as
    plain grayscale are taken as they are, and RGB-coloured labels are mapped back through the
    VOC palette (some redistributions ship those)."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            values = np.array(image)
    except OSError as error:
        raise PrepareError(f"cannot read the VOC label PNG {path}: {error}") from error
    if mode in ("P", "L"):
        label = values.astype(np.uint8)
    elif mode in ("RGB", "RGBA"):
        colours = values[..., :3].astype(np.int64)
        colour_codes = (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]
        palette = voc_colormap().astype(np.int64)
        palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
        label = np.full(colour_codes.shape, -1, dtype=np.int64)
        for class_value in ALLOWED_LABEL_VALUES:
            label[colour_codes == palette_codes[class_value]] = class_value
        if (label < 0).any():
            raise PrepareError(f"{path}: RGB label holds colours that are not VOC palette colours")
        label = label.astype(np.uint8)
    else:
        raise PrepareError(f"{path}: unsupported PNG mode {mode!r}; expected a palette ('P') label PNG")
    _check_label_values(label, path)
    return label


def _struct_field(value, field_name: str):
    """Return ``value.<field_name>`` for every layout scipy.io.loadmat may produce for a MATLAB
    struct (mat_struct objects, record arrays, 1x1 object arrays, dicts); None when absent."""
    if value is None:
        return None
    if hasattr(value, "_fieldnames"):  # scipy.io.matlab.mat_struct (struct_as_record=False)
        return getattr(value, field_name) if field_name in value._fieldnames else None
    if isinstance(value, dict):
        return value.get(field_name)
    if isinstance(value, np.ndarray):
        if value.dtype.names is not None:  # record array (struct_as_record=True)
            if field_name not in value.dtype.names:
                return None
            field_value = value[field_name]
            # A 1x1 struct gives a 1-element object array around the real content.
            while isinstance(field_value, np.ndarray) and field_value.dtype == object and field_value.size == 1:
                field_value = field_value.item()
            return field_value
        if value.dtype == object and value.size == 1:
            return _struct_field(value.item(), field_name)
    return None


def convert_sbd_mat(path: str) -> np.ndarray:
    """Read an SBD ``cls/<id>.mat`` file and return its class map as uint8 (0..20).

    SBD stores a MATLAB struct ``GTcls`` with fields ``Segmentation`` (the class map),
    ``Boundaries`` and ``CategoriesPresent``; only ``Segmentation`` is used. SBD has no 255
    boundary band, and none is added (the reference SegmentationClassAug labels have none for
    SBD-only images either)."""
    try:
        contents = scipy.io.loadmat(path, mat_dtype=False, squeeze_me=True, struct_as_record=False)
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5) files
        raise PrepareError(f"{path}: MATLAB v7.3 files are not supported ({error}); SBD ships v5 .mat files") from error
    except Exception as error:  # scipy raises several types for damaged files
        raise PrepareError(f"cannot read the SBD .mat file {path}: {type(error).__name__}: {error}") from error

    variables = {name: value for name, value in contents.items() if not name.startswith("__")}
    if "GTcls" in variables:
        struct = variables["GTcls"]
    elif "GTinst" in variables:
        raise PrepareError(
            f"{path} holds 'GTinst' (an SBD instance label from inst/); use the class labels in cls/ "
            "(struct 'GTcls' with field 'Segmentation')"
        )
    else:
        # Tolerate a renamed variable as long as exactly one struct carries a Segmentation field.
        candidates = [value for value in variables.values() if _struct_field(value, "Segmentation") is not None]
        if len(candidates) != 1:
            raise PrepareError(
                f"{path}: expected a MATLAB struct 'GTcls' with field 'Segmentation' (SBD cls/ layout); "
                f"found variables {sorted(variables)}"
            )
        struct = candidates[0]

    segmentation = _struct_field(struct, "Segmentation")
    if segmentation is None:
        raise PrepareError(f"{path}: the struct 'GTcls' has no field 'Segmentation' (SBD cls/ layout expected)")
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2 or segmentation.dtype == object:
        raise PrepareError(
            f"{path}: field 'GTcls.Segmentation' should be a 2-D class map, got shape {segmentation.shape} "
            f"dtype {segmentation.dtype}"
        )
    if not np.issubdtype(segmentation.dtype, np.integer):
        # Files re-saved by other tools may store doubles; accept them only if they are whole numbers.
        if not np.all(np.isfinite(segmentation)) or not np.all(segmentation == np.round(segmentation)):
            raise PrepareError(f"{path}: field 'GTcls.Segmentation' holds non-integer values")
    if segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255):
        raise PrepareError(f"{path}: field 'GTcls.Segmentation' holds values outside 0..255")
    label = segmentation.astype(np.uint8)
    _check_label_values(label, f"{path} (field 'GTcls.Segmentation')")
    return label


def merge_without_duplicates(*identifier_sequences: Sequence[str]) -> list[str]:
    """Concatenate id sequences, keeping only the first occurrence of each id (order preserved)."""
    seen: set[str] = set()
    merged = []
    for sequence in identifier_sequences:
        for identifier in sequence:
            if identifier not in seen:
                seen.add(identifier)
                merged.append(identifier)
    return merged


def list_line(identifier: str) -> str:
    return f"{IMAGE_FOLDER}/{identifier}.jpg {LABEL_FOLDER}/{identifier}.png"


def build_pascal_lists(
    voc_train_ids: Sequence[str], voc_val_ids: Sequence[str], sbd_train_noval_ids: Sequence[str]
) -> dict[str, list[str]]:
    """The two base lists, as {file name: lines}.

    val: VOC2012 val in its own order (duplicates, which the release has none of, are dropped).
    train: SBD train_noval ascending, then VOC2012 train ascending, each id once, first occurrence
    wins -- the original repository's ``sbd_data.txt`` + ``voc_original_train.txt`` ->
    ``voc_sbd_merge_noduplicate.txt``. The FSS lists are built in this order, so it decides
    which images the original's episodes use."""
    return {
        VAL_LIST_NAME: [list_line(identifier) for identifier in merge_without_duplicates(voc_val_ids)],
        TRAIN_LIST_NAME: [
            list_line(identifier)
            for identifier in merge_without_duplicates(sorted(sbd_train_noval_ids), sorted(voc_train_ids))
        ],
    }


def _require_folder(path: str, what: str, layout: str) -> None:
    if not os.path.isdir(path):
        raise PrepareError(f"missing folder {path} ({what}); expected layout: {layout}")


def _require_file(path: str, what: str, layout: str) -> None:
    if not os.path.isfile(path):
        raise PrepareError(f"missing file {path} ({what}); expected layout: {layout}")


VOC_LAYOUT = "VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt}"
SBD_LAYOUT = "benchmark_RELEASE/dataset/{cls/*.mat, img/*.jpg, train.txt, val.txt, train_noval.txt}"


def _convert_label_task(task: tuple) -> str:
    """Worker: write one SegmentationClassAug PNG. Returns 'written' or 'skipped'."""
    source_kind, source_path, destination, image_path, force = task
    expected_height_width = image_height_width(image_path)
    if not force and is_valid_label_png(destination, expected_height_width, ALLOWED_LABEL_VALUES):
        return "skipped"
    label = read_voc_label(source_path) if source_kind == "voc" else convert_sbd_mat(source_path)
    if label.shape != expected_height_width:
        raise PrepareError(
            f"{source_path}: label size {label.shape[1]}x{label.shape[0]} differs from its image "
            f"{image_path} ({expected_height_width[1]}x{expected_height_width[0]})"
        )
    write_label_png(destination, label)
    return "written"


class _SourceFolders(NamedTuple):
    """Where the VOC2012 devkit and the SBD release keep what the preparation reads."""

    voc_images: str
    voc_labels: str
    voc_lists: str
    sbd_labels: str
    sbd_images: str

    @classmethod
    def of(cls, voc_root: str, sbd_root: str) -> "_SourceFolders":
        return cls(voc_images=os.path.join(voc_root, IMAGE_FOLDER),
                   voc_labels=os.path.join(voc_root, "SegmentationClass"),
                   voc_lists=os.path.join(voc_root, "ImageSets", "Segmentation"),
                   sbd_labels=os.path.join(sbd_root, "cls"),
                   sbd_images=os.path.join(sbd_root, "img"))


def _check_layout(voc_root: str, sbd_root: str, sources: _SourceFolders, sbd_train_list: str) -> None:
    """Check the layout before doing any work, naming what is missing."""
    _require_folder(voc_root, "the --voc VOC2012 devkit folder", VOC_LAYOUT)
    _require_folder(sources.voc_images, "VOC2012 images", VOC_LAYOUT)
    _require_folder(sources.voc_labels, "VOC2012 class labels", VOC_LAYOUT)
    for name in ("train.txt", "val.txt"):
        _require_file(os.path.join(sources.voc_lists, name), "VOC2012 segmentation list", VOC_LAYOUT)
    _require_folder(sbd_root, "the --sbd SBD dataset folder", SBD_LAYOUT)
    _require_folder(sources.sbd_labels, "SBD class labels", SBD_LAYOUT)
    _require_file(
        sbd_train_list,
        "SBD train_noval list (5,623 ids; a separate download on the SBD page, or pass --sbd-train-list)",
        SBD_LAYOUT,
    )


def _read_unlisted_ids(sbd_root: str, sources: _SourceFolders) -> tuple[list[str], list[str]]:
    """(SBD train + val ids, VOC2012 trainval ids): labelled ids that the lists may leave out."""
    # SBD train.txt / val.txt are optional: they only add labels outside the lists (for a
    # complete SegmentationClassAug folder), so their absence is a warning, not an error.
    sbd_extra_ids: list[str] = []
    for name in ("train.txt", "val.txt"):
        path = os.path.join(sbd_root, name)
        if os.path.isfile(path):
            sbd_extra_ids += read_id_list(path)
        else:
            print(f"WARNING: {path} not found; its ids get no SegmentationClassAug label", file=sys.stderr)
    voc_trainval_path = os.path.join(sources.voc_lists, "trainval.txt")
    voc_extra_ids = read_id_list(voc_trainval_path) if os.path.isfile(voc_trainval_path) else []
    return sbd_extra_ids, voc_extra_ids


def _label_sources(all_ids: Sequence[str], listed_ids: set[str], sources: _SourceFolders) -> dict[str, tuple[str, str]]:
    """Decide the label source of every id, {id: (kind, path)}: VOC2012 wins, then SBD. A listed
    id without a label is an error; an unlisted one is skipped with a warning."""
    label_sources: dict[str, tuple[str, str]] = {}
    missing_listed, missing_extra = [], []
    for identifier in all_ids:
        voc_path = os.path.join(sources.voc_labels, identifier + ".png")
        sbd_path = os.path.join(sources.sbd_labels, identifier + ".mat")
        if os.path.isfile(voc_path):
            label_sources[identifier] = ("voc", voc_path)
        elif os.path.isfile(sbd_path):
            label_sources[identifier] = ("sbd", sbd_path)
        elif identifier in listed_ids:
            missing_listed.append(identifier)
        else:
            missing_extra.append(identifier)
    if missing_listed:
        raise PrepareError(
            f"no label for {len(missing_listed):,} listed ids (looked for {sources.voc_labels}/<id>.png and "
            f"{sources.sbd_labels}/<id>.mat): {first_few(missing_listed)}"
        )
    if missing_extra:
        print(
            f"WARNING: {len(missing_extra):,} SBD ids outside the lists have no label and are skipped: "
            f"{first_few(missing_extra)}",
            file=sys.stderr,
        )
    return label_sources


def _copy_images(label_sources: dict[str, tuple[str, str]], listed_ids: set[str], sources: _SourceFolders,
                 out_image_folder: str) -> int:
    """Every labelled id needs <out-root>/JPEGImages/<id>.jpg: copy the missing ones from VOC2012,
    else SBD. An unlisted id without an image loses its entry in ``label_sources`` (a warning);
    a listed one is an error. Returns the number of images copied."""
    images_copied, missing_images = 0, []
    for identifier in list(label_sources):
        destination = os.path.join(out_image_folder, identifier + ".jpg")
        if os.path.isfile(destination):
            continue
        for source_folder in (sources.voc_images, sources.sbd_images):
            source = os.path.join(source_folder, identifier + ".jpg")
            if os.path.isfile(source):
                atomic_copy(source, destination)
                images_copied += 1
                break
        else:
            missing_images.append(identifier)
    missing_listed_images = [identifier for identifier in missing_images if identifier in listed_ids]
    if missing_listed_images:
        raise PrepareError(
            f"no image for {len(missing_listed_images):,} listed ids (looked in {sources.voc_images} and "
            f"{sources.sbd_images}): {first_few(missing_listed_images)}"
        )
    if missing_images:
        print(
            f"WARNING: {len(missing_images):,} ids outside the lists have no image; their labels are skipped: "
            f"{first_few(missing_images)}",
            file=sys.stderr,
        )
        for identifier in missing_images:
            del label_sources[identifier]
    print(f"images copied into {out_image_folder}: {images_copied:,}")
    return images_copied


def _convert_labels(label_sources: dict[str, tuple[str, str]], out_image_folder: str, out_label_folder: str,
                    force: bool, workers: int) -> dict:
    """Write the SegmentationClassAug PNG of every id in ``label_sources``; returns the outcome
    counts ('written', 'skipped')."""
    tasks = [
        (
            kind,
            source_path,
            os.path.join(out_label_folder, identifier + ".png"),
            os.path.join(out_image_folder, identifier + ".jpg"),
            force,
        )
        for identifier, (kind, source_path) in label_sources.items()
    ]
    outcomes = run_tasks(_convert_label_task, tasks, workers, "SegmentationClassAug")
    from_voc = sum(1 for kind, _ in label_sources.values() if kind == "voc")
    print(
        f"labels: {outcomes['written']:,} written, {outcomes['skipped']:,} already valid and skipped "
        f"({from_voc:,} from VOC2012, {len(label_sources) - from_voc:,} from SBD)"
    )
    report_count(f"labels in {LABEL_FOLDER}", len(label_sources), REFERENCE_LABEL_COUNT)
    return outcomes


def _write_lists(lists: dict[str, list[str]], lists_dir: str, replace_lists: bool) -> dict[str, str]:
    """Write the base lists (see `tools.preparation.write_list_unless_present`); returns what
    happened to each."""
    os.makedirs(lists_dir, exist_ok=True)
    list_outcomes = {
        name: write_list_unless_present(os.path.join(lists_dir, name), lines, replace_lists)
        for name, lines in lists.items()
    }
    report_count(f"{os.path.join(lists_dir, VAL_LIST_NAME)} lines", len(lists[VAL_LIST_NAME]), REFERENCE_VAL_COUNT)
    report_count(
        f"{os.path.join(lists_dir, TRAIN_LIST_NAME)} lines", len(lists[TRAIN_LIST_NAME]), REFERENCE_TRAIN_COUNT
    )
    return list_outcomes


def prepare_pascal(
    voc_root: str,
    sbd_root: str,
    out_root: str | None = None,
    lists_dir: str = DEFAULT_LISTS_DIR,
    force: bool = False,
    workers: int = 1,
    sbd_train_list: str | None = None,
    replace_lists: bool = False,
) -> dict:
    """Do the whole preparation; returns a summary dict (counts, output paths and, under
    'lists', what happened to each list: see `tools.preparation.write_list_unless_present`)."""
    out_root = out_root or voc_root
    sources = _SourceFolders.of(voc_root, sbd_root)
    sbd_train_list = sbd_train_list or os.path.join(sbd_root, "train_noval.txt")
    _check_layout(voc_root, sbd_root, sources, sbd_train_list)

    voc_train_ids = read_id_list(os.path.join(sources.voc_lists, "train.txt"))
    voc_val_ids = read_id_list(os.path.join(sources.voc_lists, "val.txt"))
    sbd_train_noval_ids = read_id_list(sbd_train_list)
    sbd_extra_ids, voc_extra_ids = _read_unlisted_ids(sbd_root, sources)
    lists = build_pascal_lists(voc_train_ids, voc_val_ids, sbd_train_noval_ids)
    listed_ids = set(merge_without_duplicates(voc_train_ids, voc_val_ids, sbd_train_noval_ids))
    all_ids = merge_without_duplicates(voc_train_ids, voc_val_ids, voc_extra_ids, sbd_train_noval_ids, sbd_extra_ids)

    label_sources = _label_sources(all_ids, listed_ids, sources)
    out_image_folder = os.path.join(out_root, IMAGE_FOLDER)
    out_label_folder = os.path.join(out_root, LABEL_FOLDER)
    os.makedirs(out_image_folder, exist_ok=True)
    os.makedirs(out_label_folder, exist_ok=True)
    images_copied = _copy_images(label_sources, listed_ids, sources, out_image_folder)
    outcomes = _convert_labels(label_sources, out_image_folder, out_label_folder, force, workers)
    # Lists written last, so a list never names a label that is not there yet.
    list_outcomes = _write_lists(lists, lists_dir, replace_lists)
    return {
        "out_root": out_root,
        "lists_dir": lists_dir,
        "labels_written": outcomes["written"],
        "labels_skipped": outcomes["skipped"],
        "labels_total": len(label_sources),
        "images_copied": images_copied,
        "val_count": len(lists[VAL_LIST_NAME]),
        "train_count": len(lists[TRAIN_LIST_NAME]),
        "lists": list_outcomes,
    }


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.prepare_pascal",
        description="Build PASCAL-5i SegmentationClassAug labels and base lists from VOC2012 + SBD.",
    )
    parser.add_argument("--voc", required=True, help="VOC2012 devkit folder (VOCdevkit/VOC2012)")
    parser.add_argument("--sbd", required=True, help="SBD dataset folder (benchmark_RELEASE/dataset)")
    parser.add_argument("--out-root", default=None, help="data root to write into (default: the --voc folder)")
    parser.add_argument("--lists-dir", default=DEFAULT_LISTS_DIR, help="where val.txt and the train list go (default: %(default)s)")
    parser.add_argument(
        "--sbd-train-list", default=None, help="SBD train_noval.txt (default: <sbd>/train_noval.txt)"
    )
    add_output_arguments(parser, "the original's shipped one")
    return parser.parse_args(argv)


def _run(argv: Sequence[str]) -> None:
    arguments = parse_arguments(argv)
    # Before the labels are converted (minutes), not when the lists are written at the end.
    check_output_path(arguments.lists_dir, "--lists-dir", folder=True)
    check_output_path(arguments.out_root, "--out-root", folder=True)
    prepare_pascal(
        voc_root=arguments.voc,
        sbd_root=arguments.sbd,
        out_root=arguments.out_root,
        lists_dir=arguments.lists_dir,
        force=arguments.force,
        workers=arguments.workers,
        sbd_train_list=arguments.sbd_train_list,
        replace_lists=arguments.replace_lists,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 after printing ``error: ...`` for a problem with the inputs."""
    return run_entry_point(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
