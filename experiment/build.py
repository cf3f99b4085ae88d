"""Config -> datasets, loaders and output folders, shared by train_sccan.py and test_sccan.py."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiment.models import build_model
from model.backbone import calibrate_frozen_batch_norm
from util import transform as transforms
from util.base_dataset import BaseData
from util.dataset import SemData, get_class_lists, read_image, read_pair_list, relative_to_cwd, resolve_path
from util.episode_data.class_folders import (CLASS_FOLDER_LAYOUT, ClassFolderData, MaskRule, class_images,
                                             read_class_split)
from util.episode_data.cross_domain import CROSS_DOMAIN_LAYOUTS, CrossDomainData
from util.gfss_dataset import GFSSData
from util.runtime import limit_opencv_threads

CALIBRATION_IMAGES = 16


def experiment_dir(cfg) -> str:
    """exp/<data_set>/SCCAN/split<i>/resnet<layers>, like the original, unless save_path is set."""
    if cfg.save_path:
        return cfg.save_path
    return os.path.join("exp", cfg.data_set, "SCCAN", f"split{cfg.split}", f"resnet{cfg.layers}")


def base_experiment_dir(cfg) -> str:
    """train_base.py's folder: exp/<data_set>/PSPNet/split<i>/resnet<layers> unless
    base_save_path is set."""
    if cfg.base_save_path:
        return cfg.base_save_path
    return os.path.join("exp", cfg.data_set, "PSPNet", f"split{cfg.split}", f"resnet{cfg.layers}")


def snapshot_dir(cfg) -> str:
    return os.path.join(experiment_dir(cfg), "snapshot")


def per_shot_name(cfg, stem: str, extension: str = "") -> str:
    """``latest`` -> ``latest_1shot`` (+ extension): 1-shot and 5-shot runs of one fold and
    backbone share the original's output folder, so every file this implementation adds to it
    carries the shot (the original's best-checkpoint names already do: train_ / train5_)."""
    return f"{stem}_{cfg.shot}shot{extension}"


def default_result_path(cfg, source: str) -> str:
    """<exp>/result/test_<weight or predictor>_<K>shot.json."""
    tag = os.path.splitext(os.path.basename(source))[0].replace(" ", "_")
    return os.path.join(result_dir(cfg), per_shot_name(cfg, f"test_{tag}", ".json"))


def tensorboard_writer(cfg, *subfolders: str):
    """A TensorBoard writer in <exp>/tensorboard_<K>shot[/subfolder] (the scripts' --viz)."""
    from tensorboardX import SummaryWriter
    return SummaryWriter(os.path.join(experiment_dir(cfg), per_shot_name(cfg, "tensorboard"), *subfolders))


def _is_toy(cfg) -> bool:
    return "toy" in (os.path.basename(os.path.normpath(str(cfg.data_root))),
                     os.path.basename(os.path.dirname(os.path.abspath(str(cfg.config_file)))))


def check_data_root(cfg) -> None:
    """A missing data_root is the most common first-run mistake: say which key and how to get it."""
    if os.path.isdir(str(cfg.data_root)):
        return
    repository_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data_root = str(cfg.data_root)
    if not os.path.isabs(data_root) and os.path.isdir(os.path.join(repository_root, data_root)):
        hint = (f"it exists under the repository root {repository_root}: run from there, "
                f"or give data_root as an absolute path")
    elif _is_toy(cfg):
        hint = (f"generate it with 'python -m tools.make_toy_dataset --out {cfg.data_root}' "
                f"(python -m tools.toy_demo does this by itself)")
    elif cfg.data_set == "coco":
        hint = "download COCO 2014 and run python -m tools.prepare_coco (README, 'Data')"
    elif cfg.data_set in CLASS_FOLDER_DATA_SETS:
        hint = (f"it holds one folder per class ({CLASS_FOLDER_LAYOUT}); check it with python -m "
                f"tools.check_data --layout class_folders (docs/DATASETS.md)")
    elif cfg.data_set in CROSS_DOMAIN_LAYOUTS:
        hint = (f"prepare it with python -m {CROSS_DOMAIN_LAYOUTS[cfg.data_set].prepare_tool} "
                f"(docs/DATASETS.md, 'Cross-domain benchmark')")
    else:
        hint = "download VOC2012 + SBD and run python -m tools.prepare_pascal (README, 'Data')"
    raise FileNotFoundError(f"data_root {cfg.data_root!r} (config key data_root){relative_to_cwd(cfg.data_root)} "
                            f"is not a folder: {hint}, or point it at your copy with --opts data_root PATH")


def result_dir(cfg) -> str:
    return os.path.join(experiment_dir(cfg), "result")


def test_class_ids(cfg):
    if cfg.data_set in CROSS_DOMAIN_LAYOUTS:  # the benchmark's class folders 1..N, in PATNet's order
        return CROSS_DOMAIN_LAYOUTS[cfg.data_set].class_ids
    if cfg.data_set in CLASS_FOLDER_DATA_SETS:  # the evaluation split's class names, sorted
        return read_class_split(cfg.val_list, f"config key {evaluated_list_key(cfg)} (split file)")
    return class_lists(cfg)[1]


def class_lists(cfg):
    """The fold's (train classes, test classes) of a config with numbered classes: PASCAL's and
    COCO's fixed folds, or the user's ``fold_classes`` of data_set 'semantic'."""
    return get_class_lists(cfg.data_set, cfg.split, cfg.use_split_coco, **semantic_folds(cfg))


def evaluated_list_key(cfg) -> str:
    """The config key of the list an evaluation reads as ``cfg.val_list``: ``test_list`` once
    :func:`test_config` has put it there, for the messages."""
    return "test_list" if cfg.test_list and cfg.val_list == cfg.test_list else "val_list"


def test_config(cfg, episodes: Optional[int] = None):
    """The config test_sccan.py evaluates: ``val_list`` replaced by ``test_list`` when that is set
    (e.g. FSS-1000's test classes, while training validates on its val classes), and ``test_num``
    by ``episodes`` when given (the class-folder data draw that many episodes). A copy."""
    cfg = cfg.copy()
    if cfg.test_list:
        cfg.val_list = cfg.test_list
    if episodes:
        cfg.test_num = episodes
    return cfg


def transform_and_list(cfg, mode: str, hsnet_resize: bool = False):
    """``(transform, base list)`` of a config's ``mode``: the training augmentation and
    train_list, or the validation resize and val_list (shared by the episode data and the base
    learner's data, util/base_dataset.py)."""
    if mode == "train":
        transform = transforms.build_train_transform(
            cfg.train_h, cfg.train_w, cfg.scale_min, cfg.scale_max, cfg.rotate_min, cfg.rotate_max,
            padding_label=cfg.padding_label)
        data_list = cfg.train_list
    elif mode == "val":
        transform = transforms.build_hsnet_val_transform(cfg.val_size) if hsnet_resize else \
            transforms.build_val_transform(cfg.val_size, cfg.resized_val)
        data_list = cfg.val_list
    else:
        raise ValueError(f"mode must be 'train' or 'val', got {mode!r}")
    return transform, data_list


def _build_cross_domain_dataset(cfg, mode: str, hsnet_resize: bool, show_progress: bool) -> CrossDomainData:
    """PATNet's cross-domain test episodes (util/episode_data/cross_domain.py): inputs resized to
    val_size squared whatever ``hsnet_resize`` says (PATNet's square resize), scored at 400 x 400."""
    if mode != "val":
        raise ValueError(f"data_set {cfg.data_set!r} is a test-only benchmark (PATNet's cross-domain test of a "
                         f"PASCAL-trained model): train with a PASCAL config, then test with this one")
    check_data_root(cfg)
    return CrossDomainData(cfg.data_set, cfg.data_root, cfg.shot, transforms.build_hsnet_val_transform(cfg.val_size),
                           episodes=cfg.test_num, seed=cfg.manual_seed)


# data_set -> builder(cfg, mode, hsnet_resize, show_progress) of the datasets that are not SemData's.
DATASET_BUILDERS = {name: _build_cross_domain_dataset for name in CROSS_DOMAIN_LAYOUTS}


def _build_class_folder_dataset(cfg, mode: str, hsnet_resize: bool, show_progress: bool) -> ClassFolderData:
    """Class-folder episodes (util/episode_data/class_folders.py: FSS-1000 and one's own folders):
    the classes of the split file train_list or val_list, the transforms of SemData's data."""
    if cfg.base_learner:
        raise ValueError(f"data_set {cfg.data_set!r}: class folders have no base classes for BAM's base learner "
                         f"(base_learner: True); train SCCAN alone")
    check_data_root(cfg)
    transform, split_file = transform_and_list(cfg, mode, hsnet_resize)
    key = "train_list" if mode == "train" else evaluated_list_key(cfg)
    rule = MaskRule(cfg.foreground_threshold, None if cfg.mask_ignore_value < 0 else cfg.mask_ignore_value)
    return ClassFolderData(cfg.data_root, read_class_split(split_file, f"config key {key} (split file)"),
                           shot=cfg.shot, mode=mode, transform=transform, mask_rule=rule,
                           episodes=cfg.test_num, seed=cfg.manual_seed, ann_type=cfg.ann_type)


# FSS-1000 (HSNet's split, lists/fss/) and one's own class folders: the same data, other configs.
CLASS_FOLDER_DATA_SETS = ("fss", "class_folders")
DATASET_BUILDERS.update({name: _build_class_folder_dataset for name in CLASS_FOLDER_DATA_SETS})


def build_dataset(cfg, mode: str, hsnet_resize: bool = False, show_progress: bool = True):
    """The training or validation episode dataset of a config; with ``base_learner`` the training
    items also carry the base label (BAM's ``y_b``, for the ensemble's losses)."""
    if cfg.data_set in DATASET_BUILDERS:
        return DATASET_BUILDERS[cfg.data_set](cfg, mode, hsnet_resize, show_progress)
    check_data_root(cfg)
    transform, data_list = transform_and_list(cfg, mode, hsnet_resize)
    return SemData(split=cfg.split, shot=cfg.shot, data_root=cfg.data_root, data_list=data_list,
                   data_set=cfg.data_set, use_split_coco=cfg.use_split_coco,
                   transform=transform, mode=mode, ann_type=cfg.ann_type,
                   list_root=cfg.list_root or None, show_progress=show_progress,
                   base_label=bool(cfg.base_learner) and mode == "train",
                   **semantic_folds(cfg))


def semantic_folds(cfg) -> dict:
    """SemData's fold arguments of data_set 'semantic' (the user's fold_classes and num_classes);
    none for PASCAL and COCO, whose folds are fixed."""
    if cfg.data_set != "semantic":
        return {}
    return dict(fold_classes=cfg.fold_classes, num_classes=cfg.num_classes)


def build_gfss_dataset(cfg, show_progress: bool = True):
    """The generalised few-shot episodes of a config (evaluation/gfss.py): every image of ``val_list``
    as a query, the validation transform."""
    check_data_root(cfg)
    return GFSSData(split=cfg.split, shot=cfg.shot, data_root=cfg.data_root, data_list=cfg.val_list,
                    data_set=cfg.data_set, use_split_coco=cfg.use_split_coco,
                    transform=transforms.build_val_transform(cfg.val_size, cfg.resized_val),
                    ann_type=cfg.ann_type, show_progress=show_progress)


def build_val_loader(cfg, dataset, workers: Optional[int] = None) -> DataLoader:
    """Batch batch_size_val, no shuffle, the configured worker count (episodes depend on it)."""
    return DataLoader(dataset, batch_size=cfg.batch_size_val, shuffle=False,
                      num_workers=cfg.workers if workers is None else workers, pin_memory=False,
                      drop_last=False, worker_init_fn=limit_opencv_threads)


def build_experiment_model(cfg, device, backbone_from_checkpoint: bool = False,
                           base_learner_state: Optional[dict] = None) -> torch.nn.Module:
    """build_model(cfg) on ``device``; a random backbone (``pretrained_backbone: False``) gets its
    frozen BN statistics calibrated on the first images of the training base list, so that the
    training and the test script (``--untrained`` baseline) build the very same backbone.
    ``backbone_from_checkpoint``: a full checkpoint is loaded next, so no backbone is prepared.
    ``base_learner_state``: the base learner's checked weights when already read
    (experiment/models.precheck_base_learner)."""
    model = build_model(cfg, backbone_from_checkpoint=backbone_from_checkpoint,
                        base_learner_state=base_learner_state)
    # A base learner (base_learner: True) brings its own trained backbone: nothing to calibrate.
    if not backbone_from_checkpoint and not cfg.pretrained_backbone and not cfg.base_learner:
        check_data_root(cfg)
        if not os.path.isfile(cfg.train_list):
            raise FileNotFoundError(f"train_list {cfg.train_list!r} (config key train_list) not "
                                    f"found; the random backbone is calibrated on its first images")
        transform = transforms.build_val_transform(cfg.val_size, True)
        paths = _calibration_image_paths(cfg)
        if not paths:
            raise ValueError(f"train_list {cfg.train_list!r} is empty: the random backbone "
                             f"(pretrained_backbone: False) is calibrated on its first "
                             f"{CALIBRATION_IMAGES} images")
        images = []
        for path in paths:
            image = read_image(path)
            try:
                images.append(transform(image, np.zeros(image.shape[:2], np.uint8))[0])
            except ValueError as error:  # an image too elongated for val_size
                raise ValueError(f"{path!r}: {error}") from None
        calibrate_frozen_batch_norm(model.backbone, torch.stack(images))
    return model.to(device)


def _calibration_image_paths(cfg) -> list:
    """The first CALIBRATION_IMAGES training images: of the base list, or for class folders of
    the training classes in the dataset's order (sorted classes, sorted file names)."""
    if cfg.data_set in CLASS_FOLDER_DATA_SETS:
        paths = []
        for name in read_class_split(cfg.train_list, "config key train_list (split file)"):
            if len(paths) == CALIBRATION_IMAGES:  # enough: the other class folders are not listed
                break
            paths += [image for image, _ in class_images(cfg.data_root, name)][:CALIBRATION_IMAGES - len(paths)]
        return paths
    return [resolve_path(image, cfg.data_root) for image, _, _ in read_pair_list(cfg.train_list)[:CALIBRATION_IMAGES]]


def build_base_dataset(cfg, mode: str) -> BaseData:
    """The base-class training (BAM's augmentation, crop train_h x train_w) or validation
    (resize to val_size) dataset of a base config."""
    check_data_root(cfg)
    transform, data_list = transform_and_list(cfg, mode)
    return BaseData(split=cfg.split, data_root=cfg.data_root, data_list=data_list,
                    data_set=cfg.data_set, use_split_coco=cfg.use_split_coco,
                    transform=transform, mode=mode, novel_label=cfg.base_novel_label)
