"""The checks of python -m tools.check_data: each returns every problem it finds, one line each,
and a summary of what it checked, rather than stopping at the first (a user fixes a folder once)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from util.dataset import MIN_CLASS_PIXELS, get_class_lists, read_pair_list, resolve_path
from util.episode_data.class_folders import IMAGE_EXTENSIONS, MASK_EXTENSION, MaskRule, read_class_split, read_mask
from util.image_files import file_problem, label_value_problem, read_image_file, read_label_file

__all__ = ["check_class_folders", "check_semantic_labels"]


def _image_size(path: str, problems: List[str]) -> Optional[Tuple[int, int]]:
    problem = file_problem(path)
    if problem is None:
        try:
            return read_image_file(path).shape[:2]
        except (ValueError, OSError) as error:
            problem = str(error)
    problems.append(f"{path}: image {problem}")
    return None


def _check_pair(image: str, mask: str, rule: MaskRule, problems: List[str]) -> bool:
    """Whether one class-folder pair is usable; its problems appended."""
    size = _image_size(image, problems)
    try:
        label = read_mask(mask, rule)
    except (ValueError, OSError) as error:
        problems.append(f"{mask}: mask unreadable: {error}")
        return False
    if size is None:
        return False
    if label.shape[:2] != size:
        problems.append(f"{mask}: mask is {label.shape[0]}x{label.shape[1]} but its image {os.path.basename(image)} "
                        f"is {size[0]}x{size[1]} (height x width)")
        return False
    if not (label == 1).any():
        problems.append(f"{mask}: empty mask: no pixel reaches the foreground threshold "
                        f"{rule.foreground_threshold}")
        return False
    return True


def _check_class_folder(folder: str, rule: MaskRule, problems: List[str]) -> int:
    """The usable pairs of one class folder (problems appended)."""
    names = sorted(os.listdir(folder))
    stems = {os.path.splitext(name)[0]: name for name in names
             if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS}
    masks = {os.path.splitext(name)[0] for name in names if os.path.splitext(name)[1] == MASK_EXTENSION}
    usable = 0
    for stem, name in stems.items():
        if stem not in masks:
            problems.append(f"{os.path.join(folder, name)}: missing mask {stem}{MASK_EXTENSION}")
        elif _check_pair(os.path.join(folder, name), os.path.join(folder, stem + MASK_EXTENSION), rule, problems):
            usable += 1
    for stem in sorted(masks - set(stems)):
        problems.append(f"{os.path.join(folder, stem + MASK_EXTENSION)}: mask without an image "
                        f"({stem}.jpg or {stem}.jpeg)")
    return usable


def _split_classes(root: str, splits: Sequence[str], present: Sequence[str], problems: List[str]) -> List[str]:
    """The classes the split files name that exist (all present ones without splits)."""
    if not splits:
        return list(present)
    named: Dict[str, str] = {}
    for split in splits:
        try:
            names = read_class_split(split)
        except (ValueError, OSError) as error:
            problems.append(f"{split}: {error}")
            continue
        for name in names:
            if name in named:
                problems.append(f"{split}: class {name!r} is also in {named[name]} (splits must be disjoint)")
            elif name not in present:
                problems.append(f"{split}: names the class {name!r}, which has no folder in {root}")
            named.setdefault(name, split)
    return [name for name in named if name in present]


def check_class_folders(root: str, splits: Sequence[str], shot: int, rule: MaskRule) -> Tuple[List[str], str]:
    """Problems of a class-folder dataset (util/episode_data/class_folders.py) and a summary."""
    if not os.path.isdir(root):
        return [f"{root}: not a folder (expected one folder per class)"], ""
    problems: List[str] = []
    present = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
    classes = _split_classes(root, splits, present, problems)
    total = 0
    for name in sorted(classes):
        usable = _check_class_folder(os.path.join(root, name), rule, problems)
        total += usable
        if usable < shot + 1:
            problems.append(f"{os.path.join(root, name)}: class {name!r} has {usable} usable image(s); {shot}-shot "
                            f"episodes need at least {shot + 1} (a query and {shot} other supports)")
    return problems, f"{len(classes)} classes, {total} image/mask pairs, at least {shot + 1} per class"


def _check_label(image: str, label_path: str, num_classes: Optional[int], where: str,
                 problems: List[str]) -> Optional[np.ndarray]:
    size = _image_size(image, problems)
    try:
        label = read_label_file(label_path)
    except (ValueError, OSError) as error:
        problems.append(f"{where}: {error}")
        return None
    value_problem = label_value_problem(label, num_classes) if num_classes else None
    if value_problem is not None:
        problems.append(f"{where}: label {label_path} {value_problem}")
    if size is not None and label.shape[:2] != size:
        problems.append(f"{where}: label {label_path} is {label.shape[0]}x{label.shape[1]} but its image is "
                        f"{size[0]}x{size[1]} (height x width)")
    if not ((label != 0) & (label != 255)).any():
        problems.append(f"{where}: empty label {label_path}: no class pixel (only background and 255)")
    return None if size is None or label.shape[:2] != size else label


def _check_base_list(root: str, base_list: str, num_classes: Optional[int], problems: List[str]) -> Dict[int, int]:
    """Per class, the images of a base list where it covers MIN_CLASS_PIXELS (problems appended)."""
    try:
        pairs = read_pair_list(base_list, warn_repeats=False)
    except (ValueError, OSError) as error:
        problems.append(f"{base_list}: {error}")
        return {}
    counts: Dict[int, int] = {}
    for image, label_path, line in pairs:
        image, label_path = resolve_path(image, root), resolve_path(label_path, root)
        label = _check_label(image, label_path, num_classes, f"{base_list}:{line}", problems)
        if label is None:
            continue
        values, pixels = np.unique(label, return_counts=True)
        for value, count in zip(values.tolist(), pixels.tolist()):
            if value not in (0, 255) and count >= MIN_CLASS_PIXELS:
                counts[value] = counts.get(value, 0) + 1
    return counts


def check_semantic_labels(root: str, base_lists: Sequence[str], shot: int, num_classes: Optional[int],
                          fold_classes) -> Tuple[List[str], str]:
    """Problems of a semantic-label dataset (SemData with data_set 'semantic') and a summary."""
    if not os.path.isdir(root):
        return [f"{root}: not a folder (the data_root the base lists are relative to)"], ""
    problems: List[str] = []
    if not base_lists:
        problems.append("no base list given (--splits FILE ..., lines '<image> <label>' relative to the root)")
    if fold_classes is not None:
        try:
            get_class_lists("semantic", 0, fold_classes=fold_classes, num_classes=num_classes)
        except ValueError as error:
            problems.append(f"fold_classes: {error}")
    # The first list trains: every class is a training class of some fold. The others evaluate:
    # each fold's test classes need episodes there.
    every_class = list(range(1, num_classes + 1)) if num_classes else []
    tested = sorted({c for fold in fold_classes or [] if isinstance(fold, (list, tuple)) for c in fold
                     if c in every_class})
    for number, base_list in enumerate(base_lists):
        counts = _check_base_list(root, base_list, num_classes, problems)
        for class_id in every_class if number == 0 else tested:
            if counts.get(class_id, 0) < shot + 1:
                problems.append(f"{base_list}: class {class_id} covers {MIN_CLASS_PIXELS} pixels in "
                                f"{counts.get(class_id, 0)} image(s); {shot}-shot episodes need at least {shot + 1}")
    return problems, f"{len(base_lists)} base list(s), classes 1..{num_classes or '?'}, {shot}-shot"
