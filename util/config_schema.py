"""The one table of configuration keys: section, type, default and meaning of each.

Every key the project reads is listed here, with the default a config file gets when it leaves
the key out (util/config.py fills it in, so code reads ``cfg.key`` and never repeats a default).
The defaults are the values the 32 paper configs share (PASCAL's where the datasets differ);
the keys are the original SCCAN/BAM config keys plus this implementation's own.

LEGACY keys are the original's keys that no code here reads. They stay accepted so that the
original's configs and command lines work, and setting one to another value than its default
warns once, saying why it has no effect (editing a key must never silently do nothing).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

__all__ = ["Key", "RANGES", "RELATIONS", "SCHEMA", "check_type", "config_value", "default_values",
           "is_number_between", "legacy_message", "range_problems"]


class Key(NamedTuple):
    section: str
    type: type          # float accepts an int; None only when ``optional``
    default: Any
    help: str
    optional: bool = False
    legacy: str = ""    # why a legacy key has no effect ('' for a key that is read)


def _keys(section: str, *rows: tuple) -> dict[str, Key]:
    return {row[0]: Key(section, *row[1:]) for row in rows}


SCHEMA: dict[str, Key] = {
    **_keys(
        "Data",
        ("data_set", str, "pascal", "'pascal' or 'coco'; test only: PATNet's cross-domain "
         "'deepglobe', 'isic', 'lung'; "
         "one's own data: 'class_folders', 'semantic'; FSS-1000: 'fss' (docs/DATASETS.md)"),
        ("data_root", str, "../data/VOCdevkit2012/VOC2012", "dataset folder; list paths are relative to it"),
        ("train_list", str, "./lists/pascal/voc_sbd_merge_noduplicate.txt", "base list of training images"),
        ("val_list", str, "./lists/pascal/val.txt", "base list of validation images"),
        ("classes", int, 2, "output classes", False,
         "SCCAN's episodes are always binary (background / the episode's class)"),
        ("split", int, 0, "fold"),
        ("shot", int, 1, "support images per episode"),
        ("use_split_coco", bool, False, "COCO fold i tests {i+1, i+5, ..., i+77} instead of 20i+1..20i+20"),
        ("train_h", int, 473, "training crop height"),
        ("train_w", int, 473, "training crop width"),
        ("val_size", int, 473, "validation longer side (floored to a multiple of 8)"),
        ("scale_min", float, 0.9, "smallest random training scale"),
        ("scale_max", float, 1.1, "largest random training scale"),
        ("rotate_min", float, -10, "smallest random rotation (degrees)"),
        ("rotate_max", float, 10, "largest random rotation (degrees)"),
        ("ignore_label", int, 255, "label value that is not scored"),
        ("padding_label", int, 255, "label value of padded pixels"),
        ("workers", int, 8, "data loader workers (episodes depend on the count)"),
        ("persistent_workers", bool, False, "CUDA with workers > 0: keep the training loader's "
         "workers between epochs (saves their start-up; the episode draws then differ from the "
         "original's per-epoch reseeding and resume is no longer exact)"),
        ("list_root", str, "", "folder of the few-shot lists; '' = ./lists/<data_set>/fss_list"),
        ("test_list", str, "", "test_sccan.py's list ('' = val_list); for class folders (data_set "
         "'fss', 'class_folders') train_list, val_list and test_list are split files of class names"),
        ("foreground_threshold", int, 1, "class folders: mask values from this one up are foreground, "
         "lower ones background (1: any non-zero value; FSS-1000 128, HSNet's read_mask)"),
        ("mask_ignore_value", int, -1, "class folders: mask pixels of this value are ignored "
         "(-1: none; e.g. 255)"),
        ("fold_classes", list, [], "data_set 'semantic': the test classes of each fold, e.g. "
         "[[1, 2], [3, 4]]; fold <split> tests fold_classes[split] and trains on the other classes"),
        ("num_classes", int, 0, "data_set 'semantic': the labels hold class ids 1..num_classes "
         "(0 background, 255 ignored)"),
    ),
    **_keys(
        "Train",
        ("batch_size", int, 8, "episodes per iteration and process"),
        ("epochs", int, 200, "training epochs"),
        ("base_lr", float, 0.005, "SGD learning rate (x10 for groups above index_split)"),
        ("transformer_lr", float, 6e-5, "AdamW learning rate of the transformer parameters"),
        ("power", float, 0.9, "poly schedule power"),
        ("momentum", float, 0.9, "SGD momentum"),
        ("weight_decay", float, 0.0001, "SGD and AdamW weight decay"),
        ("index_split", int, -1, "SGD groups with a larger index get 10x lr"),
        ("warmup", bool, False, "linear learning-rate warm-up"),
        ("fix_bn", bool, True, "keep BatchNorm layers in eval mode while training", False,
         "SCCAN has no trainable BatchNorm and the base learner's always stays in eval mode "
         "(model/sccan.py, SCCAN.train)"),
        ("stop_interval", int, 75, "early stop after this many epochs without a better val mIoU"),
        ("print_freq", int, 10, "log every this many iterations"),
        ("save_freq", int, 10, "snapshot every this many epochs (0 = none)"),
        ("resume", str, "", "training checkpoint to resume from ('' = none)"),
        ("save_path", str, "", "output folder; '' = exp/<data_set>/SCCAN/split<i>/resnet<layers>"),
        ("base_save_path", str, "", "train_base.py output folder (log, config, latest/final); "
         "'' = exp/<data_set>/PSPNet/split<i>/resnet<layers>"),
        ("evaluate", bool, True, "validate during training"),
        ("SubEpoch_val", bool, True, "also validate at half epochs (epochs <= 100)"),
        ("fix_random_seed_val", bool, True, "reseed manual_seed before every validation"),
        ("batch_size_val", int, 1, "validation batch size"),
        ("resized_val", bool, True, "validation images resized to val_size"),
        ("ori_resize", bool, True, "score against the raw label padded to a square"),
        ("manual_seed", int, 321, "random seed"),
        ("seed_deterministic", bool, False, "deterministic cuDNN / torch algorithms"),
        ("amp", str, "fp32", "'fp32' (the original's arithmetic) or 'bf16': bfloat16 autocast for "
         "training and evaluation, on CUDA and on CPUs (the prior stays float32)"),
    ),
    **_keys(
        "Method",
        ("layers", int, 50, "ResNet depth: 50 or 101"),
        ("pretrained_backbone", bool, True, "load ImageNet weights (False: a random frozen backbone)"),
        ("backbone_weights", str, "", "ImageNet weights; '' = initmodel/resnet<layers>_v2.pth"),
        ("random_backbone_residual_gain", float, 1.0, "random backbone only (SCCAN's frozen one, or "
         "the base learner's start): residual branch scale"),
        ("base_novel_label", int, 0, "train_base.py: label of novel-class pixels in the base "
         "learner's data (0 = background, as BAM; 255 = ignored)"),
        ("zoom_factor", int, 8, "logits are resized to the input size"),
        ("feature_size", int, 64, "transformer grid side"),
        ("window_size", int, 8, "transformer window side"),
        ("feature_dropout", float, 0.5, "Dropout2d after down_query/down_supp"),
        ("fast_path", bool, True, "evaluation runs the fast fp32 forward (fused attention, "
         "channels-last backbone input, one-product priors; the same logits within 1e-4); False: "
         "the straightforward path written like the original"),
        ("fast_path_training", bool, False, "training runs the fast forward too (~4% less time "
         "per CPU iteration; the loss curve then drifts from the straightforward path's by "
         "float rounding, ~1e-4 after 20 toy iterations)"),
        ("aux_weight1", float, 1.0, "weight of the first auxiliary loss (SCCAN's is zero; "
         "ensemble: the meta learner's dice loss)"),
        ("aux_weight2", float, 1.0, "weight of the second auxiliary loss (SCCAN's is zero; "
         "ensemble: the frozen base learner's CE, logged only)"),
        ("base_learner", bool, False, "BAM's ensemble: backbone and learner_base from the fold's "
         "base learner initmodel/PSPNet/<data_set>/split<i>/resnet<layers>/best.pth (train_base.py)"),
        ("base_learner_weights", str, "", "the base learner checkpoint (train_base.py keeps its best "
         "there; the ensemble reads it); '' = initmodel/PSPNet/<data_set>/split<i>/resnet<layers>/"
         "best.pth (BAM's place)"),
        ("low_fea", str, "layer2", "ensemble: backbone level of the scene difference (Gram matrices)"),
        ("kshot_trans_dim", int, 2, "ensemble, K > 1: kshot_rw width (0 = one K -> K conv)"),
        ("merge", str, "final", "generalised few-shot test: 'final' (novel pixels win) or 'base' "
         "(novel only on base background)"),
        ("merge_tau", float, 0.9, "generalised few-shot test: novel where softmax(final)_fg > merge_tau"),
    ),
    **_keys(
        "Test_Finetune",
        ("weight", str, "", "checkpoint file name in <save folder>/snapshot/ that test_sccan.py loads"),
        ("test_num", int, 1000, "episodes per evaluation"),
        ("eval_feature_cache_mb", float, 4096.0, "evaluation: MiB of frozen-backbone features kept "
         "for reuse by later episodes of the same run (on the model's device, on a GPU at most half "
         "its free memory; ~52 MiB per 473x473 image; 0 = off); the results are the same"),
        ("ann_type", str, "mask", "support annotation: 'mask' or 'bbox'"),
        ("viz", bool, False, "write TensorBoard event files (scalars)"),
    ),
    **_keys(
        "Distributed",
        ("dist_url", str, "tcp://127.0.0.1:6789", "process group address", False,
         "torchrun's environment (MASTER_ADDR, MASTER_PORT) sets the address"),
        ("dist_backend", str, "nccl", "process group backend", False,
         "the backend is nccl on CUDA and gloo on CPU"),
        ("multiprocessing_distributed", bool, False, "spawn one process per GPU", False,
         "torchrun starts the processes"),
        ("world_size", int, 1, "number of processes", False, "torchrun's environment sets the world size"),
        ("rank", int, 0, "process rank", False, "torchrun's environment sets the rank"),
        ("distributed_timeout_minutes", float, 60.0, "torchrun: minutes a collective waits for the "
         "slowest rank before the run fails (NCCL's own default is 10; rank 0 alone builds "
         "missing few-shot lists and writes checkpoints)"),
    ),
    **_keys(
        "Runtime",
        ("config_file", str, "", "the loaded file (set by the loader when the file has none)"),
        ("local_rank", int, None, "--local_rank of torch.distributed.launch (recorded only)", True),
    ),
}


def default_values() -> dict[str, Any]:
    """Key -> default of every key."""
    return {key: entry.default for key, entry in SCHEMA.items()}


def _article(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_type(key: str, value: Any, convert: bool = True, overrides: str = "") -> Any:
    """``value`` if it has ``key``'s type (an int is accepted for a float and converted when
    ``convert``; None only for optional keys), else a TypeError saying what was expected.
    ``overrides``: the option the value came from (e.g. ``--opts``, whose values are Python
    literals, not YAML), for the hint of the message; empty for a value of a YAML file."""
    entry = SCHEMA[key]
    if value is None and entry.optional:
        return None
    if type(value) is entry.type:
        return value
    # bool is an int subclass, but True for a learning rate is a mistake: not accepted.
    if entry.type is float and type(value) is int:
        return float(value) if convert else value
    expected = _article(entry.type.__name__) + (" or None" if entry.optional else "")
    hint = ""
    if entry.type is float and isinstance(value, str) and _is_float_text(value):
        hint = (f" ({overrides} reads Python literals: {value} is not a finite number)" if overrides
                else f" (YAML 1.1 reads {value} as text: write it with a dot, e.g. 6.0e-5)")
    elif entry.type is str and isinstance(value, (bool, int, float)):
        # On a command line the shell removes one level of quotes: "'5'" reaches Python as '5'.
        hint = (f" (to give it as text, quote it twice: {overrides} {key} \"'{value}'\")" if overrides
                else " (quote it to make it text)")
    raise TypeError(f"expects {expected}, got {value!r} of type {type(value).__name__}{hint}")


def legacy_message(key: str, value: Any) -> str:
    """The warning for a legacy key set to ``value``, or '' (not legacy, or at its default)."""
    entry = SCHEMA.get(key)
    if entry is None or not entry.legacy or value == entry.default:
        return ""
    return (f"configuration key {key!r} = {value!r} has no effect in this implementation: "
            f"{entry.legacy} (kept so that the original's configs load)")


# ------------------------------------------------------------------------ ranges of values
# What the network and the data pipeline can take, checked by the loader (util/config.py) before
# a script writes anything, so that a bad value is one line naming the key instead of a traceback
# from deep inside a run (cv2 for val_size 9) or a run that silently does nothing (epochs 0).
class Range(NamedTuple):
    accepts: Callable[[Any], bool]
    expected: str       # completes "expected ..."


def is_number_between(value: Any, low: float, high: float) -> bool:
    """Whether ``value`` is an int or a float from ``low`` to ``high``, both included (NaN never is).

    The range check of a value that no config type check has seen, such as a checkpoint's own
    records: anything else is out of range, a bool too (an int subclass, but True for a
    probability or an epoch is a mistake). Config keys go through ``RANGES`` instead, where
    ``range_problems`` leaves a value of another type to check_type."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _at_least(low: int) -> Range:
    return Range(lambda value: value >= low, f"an int >= {low}")


def _positive() -> Range:
    return Range(lambda value: math.isfinite(value) and value > 0, "a finite value > 0")


def _not_negative() -> Range:
    return Range(lambda value: math.isfinite(value) and value >= 0, "a finite value >= 0")


def _one_of(*choices) -> Range:
    return Range(lambda value: value in choices,
                 " or ".join([", ".join(map(str, choices[:-1])), str(choices[-1])]) if len(choices) > 1
                 else str(choices[0]))


# The largest side accepted: at 4097 px each 2048-channel layer4 map (stride 8) already takes
# 2 GB in float32; a larger value is a typo (an extra digit), found here rather than as an
# allocation failure deep inside OpenCV or the network.
MAX_SIDE = 4097
# The transformer grid: 64 in the paper; at 512 each 256-channel grid map takes 256 MB.
MAX_FEATURE_SIZE = 512


def _stride_8_side(value: int) -> bool:
    return 9 <= value <= MAX_SIDE and (value - 1) % 8 == 0


# The backbone has stride 8 and the logits are (side - 1) / 8 * zoom_factor + 1 pixels (BAM's
# PSPNet refuses other sides; the original train script asserts (train_h - 1) % 8 == 0); side 9
# gives one 8-pixel cell, the smallest input every path runs (the validation resize floors sides
# to multiples of 8, so a val_size below 8 leaves no pixel).
_SIDE = Range(_stride_8_side, f"an int 9..{MAX_SIDE} with (value - 1) a multiple of 8, the backbone's "
                              f"stride (e.g. 473, 417, 65, 33)")

RANGES: dict[str, Range] = {
    "split": _at_least(0),  # the upper bound depends on data_set (RELATIONS)
    "shot": _at_least(1),
    "train_h": _SIDE,
    "train_w": _SIDE,
    "val_size": _SIDE,
    "scale_min": _positive(),
    "scale_max": _positive(),
    "rotate_min": Range(math.isfinite, "a finite angle"),
    "rotate_max": Range(math.isfinite, "a finite angle"),
    "ignore_label": Range(lambda value: 0 <= value <= 255, "a label value 0..255 (labels are 8-bit)"),
    "padding_label": Range(lambda value: 0 <= value <= 255, "a label value 0..255 (labels are 8-bit)"),
    "workers": _at_least(0),
    "batch_size": _at_least(1),
    "epochs": _at_least(1),
    "base_lr": _positive(),
    "transformer_lr": _positive(),
    "power": _not_negative(),
    "momentum": Range(lambda value: 0 <= value < 1, "0 <= momentum < 1"),
    "weight_decay": _not_negative(),
    "stop_interval": _at_least(1),
    "print_freq": _at_least(1),
    "save_freq": Range(lambda value: value >= 0, ">= 0 (0 = no periodic snapshot)"),
    "batch_size_val": _at_least(1),
    "manual_seed": Range(lambda value: 0 <= value < 2 ** 31, "0 <= seed < 2**31 (numpy's seed range, "
                         "with room for the per-epoch reseeding, manual_seed + epoch)"),
    "layers": _one_of(50, 101),
    "base_novel_label": _one_of(0, 255),
    "zoom_factor": _one_of(1, 2, 4, 8),
    # The transformer's grid side: windows tile it (a relation below); >= 1 cell.
    "feature_size": Range(lambda value: 1 <= value <= MAX_FEATURE_SIZE, f"an int 1..{MAX_FEATURE_SIZE}"),
    # Shifted blocks pad window_size // 2 on each side of the grid, which then must still be a
    # whole number of windows: true for an even window (and 1, which has no shift), never for an
    # odd one above 1.
    "window_size": Range(lambda value: value == 1 or (value >= 2 and value % 2 == 0),
                         "1 or an even int >= 2 (shifted windows pad half a window on each side)"),
    "feature_dropout": Range(lambda value: 0 <= value <= 1, "a probability 0..1"),
    "kshot_trans_dim": _at_least(0),
    "merge_tau": Range(lambda value: 0 <= value <= 1, "a probability 0..1"),
    "test_num": _at_least(1),
    "foreground_threshold": Range(lambda value: 1 <= value <= 255, "a mask value 1..255 (masks are 8-bit)"),
    "mask_ignore_value": Range(lambda value: -1 <= value <= 255, "-1 (none) or a mask value 0..255"),
    "num_classes": Range(lambda value: 0 <= value <= 254, "0..254 (label ids are 8-bit, 255 is ignored)"),
    "eval_feature_cache_mb": Range(lambda value: math.isfinite(value) and value >= 0,
                                   "a finite value >= 0 (0 = off)"),
    "distributed_timeout_minutes": _positive(),
}


class Relation(NamedTuple):
    keys: tuple
    holds: Callable[..., bool]
    expected: str


RELATIONS: tuple = (
    # The training transforms draw from [min, max) and refuse an empty interval (as BAM's).
    Relation(("scale_min", "scale_max"), lambda low, high: low < high, "scale_min < scale_max"),
    Relation(("rotate_min", "rotate_max"), lambda low, high: low < high, "rotate_min < rotate_max"),
    Relation(("feature_size", "window_size"), lambda grid, window: grid % window == 0,
             "feature_size a multiple of window_size (windows tile the transformer grid)"),
    # The paper's datasets have four folds; one's own semantic labels as many as fold_classes lists.
    Relation(("data_set", "split", "fold_classes"),
             lambda data_set, split, folds: split < (max(len(folds), 1) if data_set == "semantic" else 4),
             "split 0..3 (the four folds), or with data_set 'semantic' 0..len(fold_classes) - 1"),
)


def range_problems(values: Mapping[str, Any], origin: Callable[[str], str] = lambda key: ""
                   ) -> list[str]:
    """One line per value outside what the code can take: ``config key K: expected ..., got V``
    followed by ``origin(K)`` (e.g. ' (file X)'). Keys absent from ``values`` (a partial
    namespace) and None values are skipped; a relation is checked when its keys are in range."""
    problems, bad = [], set()
    for key, limits in RANGES.items():
        value = values.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            accepted = limits.accepts(value)
        except TypeError:  # a value of another type: check_type reports it
            continue
        if not accepted:
            bad.add(key)
            problems.append(f"config key {key}: expected {limits.expected}, got {value!r}{origin(key)}")
    for relation in RELATIONS:
        if any(key not in values or values[key] is None or key in bad for key in relation.keys):
            continue
        found = [values[key] for key in relation.keys]
        if not relation.holds(*found):
            given = ", ".join(f"{key} {value!r}" for key, value in zip(relation.keys, found))
            origins = "".join(dict.fromkeys(origin(key) for key in relation.keys))
            problems.append(f"config keys {' and '.join(relation.keys)}: expected {relation.expected}, "
                            f"got {given}{origins}")
    return problems


def config_value(cfg: Any, key: str) -> Any:
    """``cfg``'s value of ``key`` (a Config, a dict or any namespace), else the schema default:
    for callers such as ``build_model`` that also take a partial namespace."""
    if isinstance(cfg, Mapping) or (hasattr(cfg, "keys") and hasattr(cfg, "get")):  # dict, Config
        if key in cfg:
            return cfg[key]
    elif hasattr(cfg, key):
        return getattr(cfg, key)
    return SCHEMA[key].default
