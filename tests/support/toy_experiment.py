"""Small toy experiments for the script tests: a reduced base list and command-line overrides."""
import os

from tests.support import REPOSITORY_ROOT
from util.dataset import SemData, get_class_lists

CONFIG = os.path.join(REPOSITORY_ROOT, "config", "toy", "toy_split0_resnet50.yaml")
# The base learner's toy config (train_base.py).
BASE_CONFIG = os.path.join(REPOSITORY_ROOT, "config", "toy", "toy_split0_resnet50_base.yaml")


def reduced_list(data_root: str, out_path: str, mode: str = "train", per_class: int = 2,
                 list_root: str = "") -> int:
    """Write a base list holding the first ``per_class`` images of every fold-0 class of
    ``mode`` (the base classes for 'train', enough for 1-shot episodes; the test classes for
    'val', so that a few episodes meet the same images again); returns its length."""
    dataset = SemData(split=0, shot=1, data_root=data_root, data_list=os.path.join(data_root, f"{mode}.txt"),
                      data_set="pascal", mode=mode, list_root=list_root or os.path.join(data_root, "fss_list"),
                      show_progress=False)
    chosen = []
    for class_id in get_class_lists("pascal", 0)[0 if mode == "train" else 1]:
        for pair in dataset.sub_class_file_list[class_id][:per_class]:
            if pair not in chosen:
                chosen.append(pair)
    with open(out_path, "w") as handle:
        for image, label in chosen:
            handle.write(f"{os.path.relpath(image, data_root)} {os.path.relpath(label, data_root)}\n")
    return len(chosen)


def reduced_train_list(data_root: str, out_path: str, per_class: int = 2) -> int:
    """:func:`reduced_list` of the training images."""
    return reduced_list(data_root, out_path, "train", per_class)


def toy_opts(data_root: str, save_path: str, **overrides) -> list:
    """--opts for a tiny, fast run on the toy dataset (33 px, 8x8 transformer grid)."""
    values = dict(data_root=data_root, train_list=os.path.join(data_root, "train.txt"),
                  val_list=os.path.join(data_root, "val.txt"),
                  list_root=os.path.join(data_root, "fss_list"), save_path=save_path,
                  train_h=33, train_w=33, val_size=33, feature_size=8, batch_size=4, epochs=1,
                  workers=0, evaluate=False, test_num=6, print_freq=1)
    values.update(overrides)
    opts = []
    for key, value in values.items():
        opts += [key, repr(value) if isinstance(value, str) else str(value)]
    return opts
