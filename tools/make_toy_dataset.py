"""Generate a small seeded toy few-shot segmentation dataset in the PASCAL layout.

Usage::

    python -m tools.make_toy_dataset --out data/toy --seed 0 --num-images 300

Layout written under ``--out`` (use it as ``data_root`` with ``data_set='pascal'`` and
``list_root=<out>/fss_list``)::

    JPEGImages/toy_000000.jpg ...          RGB images, 150..300 px per side, never square
    SegmentationClassAug/toy_000000.png ... labels: 0 background, 1..20 classes, 255 boundary band
    train.txt, val.txt                      base lists 'JPEGImages/x.jpg SegmentationClassAug/x.png'
    meta.json, README.txt                   parameters, class descriptions, per-fold list statistics

20 classes = 5 shapes x 4 textures, each class with its own colour; class k (1-based) has shape
``SHAPES[(k-1) % 5]``, texture ``TEXTURES[((k-1)//5 + (k-1) % 5) % 4]`` and colour
``PALETTE[k-1]``, so each PASCAL fold's five test classes mix all shapes and several textures. Every image holds 1-3 objects of DIFFERENT
classes (so the support decides what to segment), each covering >= 2048 labelled pixels (the
FSS list rule) on a noisy, cluttered background. Training images use classes of one fold group
(mostly) or two groups, so that the training filter (images with only training classes) keeps
plenty of images per class for every fold; the generator checks that every fold has at least
``shot+1 = 6`` images per class in both its train and val FSS lists and fails otherwise.

Idempotent: when ``--out`` already holds a dataset generated with the same parameters nothing is
done. The generation is atomic (temp folder + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Tuple

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import cv2
import numpy as np

from util.cli import add_debug_argument, non_negative_int, positive_int, run_entry_point
from util.io import check_output_path

GENERATOR_VERSION = 2
NUM_CLASSES = 20
NUM_FOLDS = 4
MIN_CLASS_PIXELS = 2 * 32 * 32
# Margin over the FSS threshold so that every object surely counts.
MIN_OBJECT_PIXELS = MIN_CLASS_PIXELS + 200
MIN_IMAGES_PER_CLASS = 6  # 5-shot episodes need shot + 1 distinct images of the class
IMAGE_SIDE_RANGE = (150, 300)
BAND_KERNEL = 5  # a 255 band of about 2 px on each side of every object boundary, like VOC

SHAPES = ["disc", "square", "triangle", "ring", "cross"]
TEXTURES = ["solid", "stripes", "checker", "dots"]
# 20 colours of high mutual contrast (Kelly's list without white, black and grey), one per
# class: together with the shape and the texture every class looks different from every other,
# but each colour, shape and texture recurs across base and novel classes only in combination.
PALETTE = [
    ("yellow", (243, 195, 0)), ("purple", (135, 86, 146)), ("orange", (243, 132, 0)),
    ("light-blue", (161, 202, 241)), ("red", (190, 0, 50)), ("buff", (194, 178, 128)),
    ("green", (0, 136, 86)), ("pink", (230, 143, 172)), ("blue", (0, 103, 165)),
    ("salmon", (249, 147, 121)), ("violet", (96, 78, 151)), ("amber", (246, 166, 0)),
    ("magenta", (179, 68, 108)), ("lime", (220, 211, 0)), ("brown", (136, 45, 23)),
    ("yellow-green", (141, 182, 0)), ("olive-brown", (101, 69, 34)), ("vermilion", (226, 88, 34)),
    ("dark-olive", (43, 61, 38)), ("cyan", (0, 170, 200)),
]


def class_style(class_id: int) -> dict:
    """Colour and texture of a 1-based class id."""
    index = class_id - 1
    colour_name, colour = PALETTE[index]
    texture = TEXTURES[(index // 5 + index % 5) % 4]
    return {"name": f"{colour_name}-{texture}", "colour": colour, "texture": texture}


def class_description(class_id: int) -> Dict[str, str]:
    """Shape and style of a 1-based class id."""
    index = class_id - 1
    style = class_style(class_id)
    return {"shape": SHAPES[index % 5], "style": style["name"], "texture": style["texture"]}


def fold_test_classes(fold: int) -> List[int]:
    """PASCAL fold i tests classes 5i+1 .. 5i+5."""
    return list(range(5 * fold + 1, 5 * fold + 6))


# ----------------------------------------------------------------------------------- rendering
def _shape_mask(shape: str, height: int, width: int, centre: Tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """uint8 (H, W) 0/1 mask of one shape of circumradius about ``radius`` rotated by ``angle`` rad."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = centre

    def polygon(points):
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        rotated = np.asarray(points, np.float64) @ rotation.T + np.array([cx, cy])
        cv2.fillPoly(mask, [np.round(rotated).astype(np.int32)], 1)

    if shape == "disc":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius)), 1, -1)
    elif shape == "ring":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius * 1.1)), 1, -1)
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius * 0.5)), 0, -1)
    elif shape == "square":
        half = radius * 0.85
        polygon([(-half, -half), (half, -half), (half, half), (-half, half)])
    elif shape == "triangle":
        r = radius * 1.5
        polygon([(r * np.cos(a), r * np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)])
    elif shape == "cross":
        long_half, short_half = radius * 1.1, radius * 0.4
        polygon([(-long_half, -short_half), (long_half, -short_half), (long_half, short_half), (-long_half, short_half)])
        polygon([(-short_half, -long_half), (short_half, -long_half), (short_half, long_half), (-short_half, long_half)])
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return mask


def _texture(style: dict, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (H, W, 3) RGB texture of a style with a little colour jitter."""
    colour = np.clip(np.array(style["colour"], np.float32) + rng.uniform(-20, 20, 3), 0, 255)
    dark = colour * 0.45
    light = np.clip(colour * 0.6 + 255 * 0.4, 0, 255)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = style["texture"]
    if kind == "solid":
        pattern = np.zeros((height, width), np.float32)
        second = colour
    elif kind == "stripes":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(7, 11)
        pattern = ((xx * np.cos(theta) + yy * np.sin(theta)) % period < period / 2).astype(np.float32)
        second = dark
    elif kind == "checker":
        cell = int(rng.integers(6, 10))
        pattern = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
        second = light
    else:  # dots
        pattern = np.zeros((height, width), np.float32)
        spacing = int(rng.integers(9, 13))
        offset_y, offset_x = rng.integers(0, spacing, 2)
        for y in range(int(offset_y), height, spacing):
            for x in range(int(offset_x) + (y // spacing % 2) * spacing // 2, width, spacing):
                cv2.circle(pattern, (x, y), 2, 1.0, -1)
        second = dark
    texture = colour[None, None, :] * (1 - pattern[..., None]) + second[None, None, :] * pattern[..., None]
    return texture.astype(np.float32)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (H, W, 3): smooth muted colour field + clutter (lines, blobs) in desaturated colours."""
    coarse = rng.uniform(60, 190, (4, 5, 3)).astype(np.float32)
    grey = coarse.mean(axis=2, keepdims=True)
    coarse = grey + 0.35 * (coarse - grey)  # desaturate so that clutter never looks like a class
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(8, 16))):
        value = float(rng.uniform(40, 220))
        tint = rng.uniform(-15, 15, 3)
        colour = tuple(float(np.clip(value + t, 0, 255)) for t in tint)
        kind = rng.integers(0, 3)
        if kind == 0:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, p1, p2, colour, int(rng.integers(1, 4)))
        elif kind == 1:
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(3, 14)), int(rng.integers(3, 14)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.rectangle(image, (x, y), (x + int(rng.integers(4, 20)), y + int(rng.integers(4, 20))), colour, -1)
    return image


def _pick_classes(pool: List[int], count: int, usage: Dict[int, int], rng: np.random.Generator) -> List[int]:
    """``count`` distinct classes of ``pool``, least used first (random tie-break): balanced coverage."""
    keys = rng.random(len(pool))
    order = sorted(range(len(pool)), key=lambda i: (usage[pool[i]], keys[i]))
    chosen = [pool[i] for i in order[:count]]
    for c in chosen:
        usage[c] += 1
    return chosen


def _render_image(classes: List[int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Render one image with the given classes; returns (RGB uint8, label uint8, classes kept).

    Objects are redrawn until each one keeps >= MIN_OBJECT_PIXELS labelled pixels after
    occlusion and the boundary band; if that keeps failing the last class is dropped.
    """
    while True:
        height, width = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, 2))
        if height != width:
            break
    background = _background(height, width, rng)
    kernel = np.ones((BAND_KERNEL, BAND_KERNEL), np.uint8)
    classes = list(classes)
    while True:
        for _attempt in range(25):
            image = background.copy()
            label = np.zeros((height, width), np.uint8)
            short_side = min(height, width)
            for class_id in classes:
                description = class_description(class_id)
                radius = float(rng.uniform(0.17, 0.27) * short_side)
                radius = max(radius, 32.0)
                centre = (float(rng.uniform(radius * 0.8, width - radius * 0.8)),
                          float(rng.uniform(radius * 0.8, height - radius * 0.8)))
                mask = _shape_mask(description["shape"], height, width, centre, radius, float(rng.uniform(0, 2 * np.pi)))
                style = class_style(class_id)
                left, top, box_w, box_h = cv2.boundingRect(mask)
                if box_w == 0 or box_h == 0:
                    continue
                box = (slice(top, top + box_h), slice(left, left + box_w))
                inside = mask[box] == 1
                # Texture only the object's bounding box (the texture phase is arbitrary anyway).
                texture = _texture(style, box_h, box_w, rng)
                image[box][inside] = texture[inside]
                label[box][inside] = class_id
            band = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
            label[band] = 255
            if all(np.count_nonzero(label == c) >= MIN_OBJECT_PIXELS for c in classes):
                image = image + rng.normal(0, 8, image.shape).astype(np.float32)
                return np.clip(image, 0, 255).astype(np.uint8), label, classes
        classes = classes[:-1]  # too crowded for this image size: drop one object and retry


# ----------------------------------------------------------------------------------- statistics
def fold_statistics(image_classes: Dict[str, List[List[int]]]) -> Dict[str, dict]:
    """Per fold: FSS list sizes and the smallest per-class image count (train and val).

    Every object of the generator covers >= 2048 pixels, so a class present in an image counts.
    Train applies the filter_intersection rule (only training classes in the image).
    """
    stats = {}
    for fold in range(NUM_FOLDS):
        test = set(fold_test_classes(fold))
        train = set(range(1, NUM_CLASSES + 1)) - test
        train_images = [cs for cs in image_classes["train"] if set(cs) <= train]
        val_images = [cs for cs in image_classes["val"] if set(cs) & test]
        train_counts = {c: sum(c in cs for cs in train_images) for c in sorted(train)}
        val_counts = {c: sum(c in cs for cs in val_images) for c in sorted(test)}
        stats[str(fold)] = {
            "train_data_list": len(train_images),
            "val_data_list": len(val_images),
            "train_min_images_per_class": min(train_counts.values()),
            "val_min_images_per_class": min(val_counts.values()),
        }
    return stats


# ----------------------------------------------------------------------------------- generation
def _parameters(num_images: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_images": int(num_images), "seed": int(seed)}


def _read_meta(out_dir: str):
    try:
        with open(os.path.join(out_dir, "meta.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _draw_image_classes(index: int, num_train: int, groups: List[List[int]], usage: Dict[int, int],
                        rng: np.random.Generator) -> Tuple[str, List[int]]:
    """Subset ('train' or 'val') and classes of image ``index``; the first ``num_train`` are training images."""
    if index < num_train:
        if rng.random() < 0.75:
            # One fold group: kept by the training filter of the three other folds.
            count = int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.30]))
            return "train", _pick_classes(groups[index % NUM_FOLDS], count, usage, rng)
        # Two groups: kept by two folds, and a query with classes of two groups.
        first, second = rng.choice(NUM_FOLDS, 2, replace=False)
        return "train", (_pick_classes(groups[int(first)], 1, usage, rng)
                         + _pick_classes(groups[int(second)], 1, usage, rng))
    count = int(rng.choice([1, 2, 3], p=[0.15, 0.45, 0.40]))
    return "val", _pick_classes(list(range(1, NUM_CLASSES + 1)), count, usage, rng)


def _write_image_and_label(directory: str, name: str, image: np.ndarray, label: np.ndarray) -> None:
    cv2.imwrite(os.path.join(directory, "JPEGImages", name + ".jpg"),
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    cv2.imwrite(os.path.join(directory, "SegmentationClassAug", name + ".png"), label)


def _render_all_images(directory: str, num_images: int, num_train: int, rng: np.random.Generator):
    """Draw and write every image and label; returns (base list lines, classes of every image),
    both keyed by subset."""
    groups = [fold_test_classes(fold) for fold in range(NUM_FOLDS)]
    usage = {c: 0 for c in range(1, NUM_CLASSES + 1)}
    lines: Dict[str, List[str]] = {"train": [], "val": []}
    image_classes: Dict[str, List[List[int]]] = {"train": [], "val": []}
    for index in range(num_images):
        subset, classes = _draw_image_classes(index, num_train, groups, usage, rng)
        order = rng.permutation(len(classes))
        image, label, kept = _render_image([classes[i] for i in order], rng)
        name = f"toy_{index:06d}"
        _write_image_and_label(directory, name, image, label)
        lines[subset].append(f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png\n")
        image_classes[subset].append(sorted(kept))
    return lines, image_classes


def _check_enough_images_per_class(stats: Dict[str, dict], num_images: int) -> None:
    for fold, fold_stats in stats.items():
        for key in ("train_min_images_per_class", "val_min_images_per_class"):
            if fold_stats[key] < MIN_IMAGES_PER_CLASS:
                raise ValueError(
                    f"toy dataset with num_images={num_images} is too small: fold {fold} has only "
                    f"{fold_stats[key]} image(s) for some class ({key}); 5-shot needs "
                    f"{MIN_IMAGES_PER_CLASS}. Use more images (e.g. --num-images 300)."
                )


def _dataset_meta(num_images: int, seed: int, num_train: int, num_val: int, stats: Dict[str, dict]) -> dict:
    return {
        "parameters": _parameters(num_images, seed),
        "data_set": "pascal",
        "layout": "JPEGImages/*.jpg, SegmentationClassAug/*.png, train.txt, val.txt (paths relative to this folder)",
        "list_root": "fss_list (pass list_root=<this folder>/fss_list to SemData)",
        "num_train_images": num_train,
        "num_val_images": num_val,
        "classes": {str(c): class_description(c) for c in range(1, NUM_CLASSES + 1)},
        "fold_statistics": stats,
    }


def _readme_text(num_images: int, seed: int, num_train: int, num_val: int) -> str:
    return (
        "Toy few-shot segmentation dataset (PASCAL layout), generated by tools/make_toy_dataset.py\n"
        f"seed={seed} num_images={num_images} (train {num_train}, val {num_val}) "
        f"generator_version={GENERATOR_VERSION}\n"
        "Use data_set=pascal, data_root=<this folder>, train_list=<this folder>/train.txt, "
        "val_list=<this folder>/val.txt, list_root=<this folder>/fss_list.\n"
        "Labels: 0 background, 1..20 classes, 255 boundary band. Classes:\n"
        + "".join(
            f"  {c:2d}: {d['shape']:8s} {d['style']}\n"
            for c, d in ((c, class_description(c)) for c in range(1, NUM_CLASSES + 1))
        )
        + "Per-fold FSS list statistics: see meta.json (fold_statistics).\n"
    )


def _generate_into(directory: str, num_images: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "JPEGImages"))
    os.makedirs(os.path.join(directory, "SegmentationClassAug"))
    num_val = num_images // 3
    num_train = num_images - num_val
    lines, image_classes = _render_all_images(directory, num_images, num_train, rng)
    for subset in ("train", "val"):
        with open(os.path.join(directory, f"{subset}.txt"), "w") as handle:
            handle.writelines(lines[subset])

    stats = fold_statistics(image_classes)
    _check_enough_images_per_class(stats, num_images)
    meta = _dataset_meta(num_images, seed, num_train, num_val, stats)
    with open(os.path.join(directory, "meta.json"), "w") as handle:
        json.dump(meta, handle, indent=1, sort_keys=True)
    with open(os.path.join(directory, "README.txt"), "w") as handle:
        handle.write(_readme_text(num_images, seed, num_train, num_val))
    return meta


def _share_like_a_data_folder(path: str) -> None:
    # mkdtemp creates the folder 0700; the dataset is meant to be shared like any data folder.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _move_into_place(temp_dir: str, out_dir: str, parameters: dict) -> None:
    """Rename the finished ``temp_dir`` to ``out_dir``, replacing an older toy dataset there."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    if os.path.isdir(out_dir):
        # A toy dataset with other parameters (its meta.json says so): replace it whole,
        # including its cached fss_list, which would be stale.
        trash = tempfile.mkdtemp(dir=parent, prefix=".toy_old_")
        os.rename(out_dir, os.path.join(trash, "old"))
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(temp_dir, out_dir)
    except OSError:
        # Another process finished the same dataset first (e.g. parallel test sessions).
        existing = _read_meta(out_dir)
        if existing is None or existing.get("parameters") != parameters:
            raise


def make_toy_dataset(out_dir: str, num_images: int = 300, seed: int = 0, verbose: bool = False,
                     option: str = "--out") -> str:
    """Generate the toy dataset into ``out_dir`` (skip if it exists with the same parameters).

    Returns ``out_dir``. Raises if ``out_dir`` is a non-empty folder that is not a toy dataset
    (never overwrites foreign data), if it cannot be written (a file, below a file, read-only)
    or if ``num_images`` is too small for 5-shot folds. ``option``: the caller's name for
    ``out_dir`` in the messages (bench_data's ``--data-root``).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    parameters = _parameters(num_images, seed)
    meta = _read_meta(out_dir)
    if meta is not None and meta.get("parameters") == parameters:
        if verbose:
            print(f"toy dataset already present in {out_dir} ({parameters}); nothing to do")
        return out_dir
    check_output_path(out_dir, option, folder=True)  # before the images are drawn, not at the rename
    if os.path.isdir(out_dir) and os.listdir(out_dir) and meta is None:
        raise FileExistsError(f"{option} {out_dir} exists, is not empty and holds no toy dataset meta.json; "
                              f"refusing to overwrite")

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(dir=parent, prefix=".toy_tmp_")
    start = time.time()
    try:
        _share_like_a_data_folder(temp_dir)
        _generate_into(temp_dir, num_images, seed)
        _move_into_place(temp_dir, out_dir, parameters)
    finally:
        if os.path.isdir(temp_dir):
            shutil.rmtree(temp_dir, ignore_errors=True)
    if verbose:
        print(f"toy dataset written to {out_dir} in {time.time() - start:.1f} s ({parameters})")
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.make_toy_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/toy", help="output folder (data_root), default data/toy")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="generator seed (default 0: the README's dataset)")
    parser.add_argument("--num-images", type=positive_int, default=300,
                        help="total images (default 300); one third go to val.txt. 5-shot episodes need "
                             f"{MIN_IMAGES_PER_CLASS} images of every class in train and val of every "
                             "fold, which takes at least about 240 images (seed 0); fewer are refused "
                             "with a message")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    make_toy_dataset(args.out, num_images=args.num_images, seed=args.seed, verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
