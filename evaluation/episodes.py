"""Exact episode lists: record the episodes of an evaluation and replay them later.

Methods compared on identical episodes need the (query, class, supports) choices themselves,
not only a seed: those depend on the worker count and on the list order (docs/PROTOCOL.md). A
:class:`RecordingDataset` makes every item carry its episode, an :class:`EpisodeRecorder`
observer of the evaluation protocol collects them, :func:`save_episodes` writes them as JSON and
a :class:`ReplayDataset` serves them again in order, without drawing.

A replayed file is checked completely before the model is built (:func:`read_episode_file`):
its structure (every key known, none repeated, every field of its type), its ``meta`` against
the config, every episode's class and support count, and every image and label it names (a file
OpenCV can read, image and label of one size). What can only be seen when an episode is decoded
(a truncated file, a class missing from its labels) is named with the file and the episode.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import List, Optional, Sequence, Tuple

from torch.utils.data import DataLoader, Dataset

from experiment.build import build_val_loader, test_class_ids
from util.cli import error_message
from util.episode import RecordedEpisode
from util.image_files import file_problem, read_image_file, read_label_file
from util.io import atomic_write_json, read_text, relative_to_cwd
from util.runtime import limit_opencv_threads

__all__ = ["RecordingDataset", "ReplayDataset", "EpisodeRecorder", "check_episodes_fit",
           "check_episode_meta", "check_episode_files", "read_episode_file", "load_episode_file",
           "load_episodes", "save_episodes", "build_episode_loader"]


def _jsonable(episode: dict) -> dict:
    chosen = episode["class_chosen"]  # a class id, or a class folder's name
    return {"query": list(episode["query"]), "class_chosen": chosen if isinstance(chosen, str) else int(chosen),
            "supports": [list(pair) for pair in episode["supports"]]}


def _in_episode(error: BaseException, where: str) -> BaseException:
    """``error`` again, its message led by ``where`` (the episode file and the episode)."""
    message = f"{where}: {error_message(error)}"
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(message)
    return OSError(message) if isinstance(error, OSError) else ValueError(message)


class RecordingDataset(Dataset):
    """Wraps an episode dataset so that each item also carries its episode, JSON-encoded: the
    episode is drawn in a loader worker and must travel to the main process with the batch,
    and the default collate passes a string through untouched."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        episode = self.dataset.sample_episode(index)
        return RecordedEpisode(*self.dataset.load_episode(**episode), json.dumps(_jsonable(episode)))


class ReplayDataset(Dataset):
    """Serves a fixed list of episodes (from ``--dump-episodes``) in order, without drawing;
    items carry their episode like :class:`RecordingDataset`'s. ``source`` (the episode file)
    names the file and the episode in the errors of a file that cannot be used."""

    def __init__(self, dataset, episodes: Sequence[dict], source: Optional[str] = None):
        self.dataset = dataset
        self.episodes = list(episodes)
        self.source = source

    def __len__(self):
        return len(self.episodes)

    def __getitem__(self, index):
        episode = self.episodes[index]
        try:
            items = self.dataset.load_episode(**episode)
        except (ValueError, OSError) as error:
            if self.source is None:
                raise
            raise _in_episode(error, f"{self.source}: episode {index}") from None
        return RecordedEpisode(*items, json.dumps(_jsonable(episode)))


class EpisodeRecorder:
    """Evaluation observer: collects the episodes of a run, in order (the batches must come from
    a :class:`RecordingDataset` or a :class:`ReplayDataset`)."""

    def __init__(self):
        self.episodes: List[dict] = []

    def start(self) -> None:
        self.episodes.clear()

    def observe(self, batch) -> None:
        if batch.records is None:
            raise ValueError("recording episodes needs a RecordingDataset or a ReplayDataset")
        self.episodes.extend(json.loads(item) for item in batch.records)


EPISODE_FILE = "episodes written by test_sccan.py --dump-episodes"
EPISODE_KEYS = ("query", "class_chosen", "supports")
FILE_KEYS = ("meta", "episodes")
# What test_sccan.py records in meta, with the types. The keys that decide which episodes are
# possible (SHAPING_META_KEYS) must equal the config's; the others say how the episodes were
# drawn (seed, worker count, count), which a replay does not repeat.
META_TYPES = {"config": str, "data_set": str, "split": int, "shot": int, "use_split_coco": bool,
              "seed": int, "workers": int, "test_num": int}
SHAPING_META_KEYS = ("data_set", "split", "shot", "use_split_coco")
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean"}


class _JsonObject(dict):
    """A JSON object that remembers the keys it held more than once (json.loads keeps the last
    value silently: a hand-edited ``class_chosen`` given twice would replay the other class)."""
    duplicate_keys: Tuple[str, ...] = ()


def _json_object(pairs) -> _JsonObject:
    content = _JsonObject(pairs)
    if len(content) != len(pairs):
        keys = [key for key, _ in pairs]
        content.duplicate_keys = tuple(dict.fromkeys(key for key in keys if keys.count(key) > 1))
    return content


def _refuse_duplicate_keys(content, where: str) -> None:
    duplicated = getattr(content, "duplicate_keys", ())
    if duplicated:
        raise ValueError(f"{where} has the key {duplicated[0]!r} twice (JSON would keep only the last "
                         f"value); give each key once ({EPISODE_FILE})")


def _json_type(value) -> str:
    return {dict: "object", _JsonObject: "object", list: "list", str: "string", bool: "boolean",
            int: "integer", float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return f"{text[:80]}{'...' if len(text) > 80 else ''} ({_a(_json_type(value))})"


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _is_path_pair(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and
            all(isinstance(part, str) and part and "\0" not in part for part in value))


def _same_files(first, second) -> bool:
    return [os.path.normpath(part) for part in first] == [os.path.normpath(part) for part in second]


def _check_episode(path: str, number: int, episode) -> None:
    where = f"{path}: episode {number}"
    if not isinstance(episode, dict):
        raise ValueError(f"{where} is {_a(_json_type(episode))}, expected an object with query, class_chosen "
                         f"and supports ({EPISODE_FILE})")
    _refuse_duplicate_keys(episode, where)
    missing = sorted(set(EPISODE_KEYS) - set(episode))
    if missing:
        raise ValueError(f"{where} lacks {missing} ({EPISODE_FILE})")
    unknown = sorted(set(episode) - set(EPISODE_KEYS))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}: an episode has exactly query, class_chosen "
                         f"and supports ({EPISODE_FILE})")
    pair = "[image path, label path] (two non-empty strings)"
    if not _is_path_pair(episode["query"]):
        raise ValueError(f"{where} is malformed: query must be {pair}, got {_shown(episode['query'])}")
    class_chosen = episode["class_chosen"]
    # A class id of the numbered datasets, or a class folder's name (util/episode_data/class_folders.py).
    if isinstance(class_chosen, bool) or not isinstance(class_chosen, (int, str)) or class_chosen == "":
        raise ValueError(f"{where} is malformed: class_chosen must be an integer class id or a class folder's "
                         f"name, got {_shown(class_chosen)}")
    supports = episode["supports"]
    if not isinstance(supports, list) or not supports:
        raise ValueError(f"{where} is malformed: supports must be a non-empty list of {pair} pairs, "
                         f"got {_shown(supports)}")
    for shot, support in enumerate(supports):
        if not _is_path_pair(support):
            raise ValueError(f"{where} is malformed: supports[{shot}] must be {pair}, got {_shown(support)}")
        if _same_files(support, episode["query"]):
            raise ValueError(f"{where}: supports[{shot}] is the query itself ({support[0]!r}); the original "
                             f"never draws the query as its own support")


def _check_meta(path: str, meta) -> None:
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta is {_shown(meta)}, expected an object with the data_set, split and "
                         f"shot the episodes were dumped with ({EPISODE_FILE})")
    _refuse_duplicate_keys(meta, f"{path}: meta")
    unknown = sorted(set(meta) - set(META_TYPES))
    if unknown:
        raise ValueError(f"{path}: meta has unknown key(s) {unknown}; known: {', '.join(META_TYPES)} "
                         f"({EPISODE_FILE})")
    for key, value in meta.items():
        expected = META_TYPES[key]
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise ValueError(f"{path}: meta.{key} must be {_TYPE_NAMES[expected]}, got {_shown(value)}")
        if expected is int and value < 0:
            raise ValueError(f"{path}: meta.{key} must not be negative, got {value}")


def _open_episode_file(path: str, option: str) -> str:
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder, not an episode file: pass the JSON file that "
                         f"test_sccan.py --dump-episodes wrote")
    try:
        return read_text(path, "an episode file")
    except FileNotFoundError:
        raise FileNotFoundError(f"{option} {path}: episode file not found{relative_to_cwd(path)}") from None
    except ValueError as error:  # a byte that is not UTF-8, named with its line
        raise ValueError(f"{error}; not an episode file ({EPISODE_FILE})") from None
    except OSError as error:
        raise OSError(f"{option} {path}: cannot read the episode file ({error.strerror or error})") from None


def load_episode_file(path: str, option: str = "--episodes-from") -> Tuple[List[dict], dict]:
    """Read and check an episode file written by :func:`save_episodes` (JSON): its kind (a
    result file or any other JSON is named as such), its keys (known, none repeated), ``meta``'s
    types and every episode's fields. Returns the episodes and the file's ``meta`` record ({}
    for a bare list or an older file). ``option``: the command-line option that named ``path``."""
    text = _open_episode_file(path, option)
    try:
        content = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not an episode file ({EPISODE_FILE}): {error}") from None
    except RecursionError:
        raise ValueError(f"{path}: not an episode file ({EPISODE_FILE}): its JSON is nested too deeply") from None
    if isinstance(content, dict):
        if "episodes" not in content:
            what = ("a result file of test_sccan.py (it has 'runs')" if "runs" in content else
                    f"a JSON object with keys {sorted(content)[:6]}")
            raise ValueError(f"{path} is {what}, not an episode file: pass the file that "
                             f"--dump-episodes wrote")
        _refuse_duplicate_keys(content, path)
        unknown = sorted(set(content) - set(FILE_KEYS))
        if unknown:
            raise ValueError(f"{path} has unknown key(s) {unknown}; an episode file has 'meta' and "
                             f"'episodes' ({EPISODE_FILE})")
    episodes = content["episodes"] if isinstance(content, dict) else content
    if not isinstance(episodes, list) or not episodes:
        raise ValueError(f"{path}: expected a non-empty list of episodes, got {_shown(episodes)} ({EPISODE_FILE})")
    meta = content.get("meta", {}) if isinstance(content, dict) else {}
    _check_meta(path, meta)
    for number, episode in enumerate(episodes):
        _check_episode(path, number, episode)
    return [{"query": tuple(episode["query"]), "class_chosen": episode["class_chosen"],
             "supports": [tuple(pair) for pair in episode["supports"]]} for episode in episodes], dict(meta)


def load_episodes(path: str) -> List[dict]:
    """The checked episodes of an episode file (:func:`load_episode_file`)."""
    return load_episode_file(path)[0]


def check_episode_meta(path: str, meta: dict, cfg) -> None:
    """Refuse a file dumped with another data set, fold, shot or COCO fold definition than the
    config's (the keys of ``meta`` that decide which episodes exist)."""
    expected = {"data_set": cfg.data_set, "split": cfg.split, "shot": cfg.shot}
    if cfg.data_set == "coco":  # PASCAL's folds do not depend on it
        expected["use_split_coco"] = bool(cfg.use_split_coco)
    differing = [key for key in SHAPING_META_KEYS if key in meta and key in expected and meta[key] != expected[key]]
    if differing:
        dumped = ", ".join(f"{key} {meta[key]}" for key in differing)
        configured = ", ".join(f"{key} {expected[key]}" for key in differing)
        source = f" ({meta['config']})" if "config" in meta else ""
        raise ValueError(f"{path} was dumped with {dumped}, but the config has {configured}: replay it with "
                         f"the config it was dumped with{source}")


def check_episodes_fit(path: str, episodes: Sequence[dict], test_classes: Sequence[int], shot: int,
                       meta: Optional[dict] = None) -> None:
    """Refuse episodes that the config cannot replay: a class that is not one of the fold's test
    classes (a file dumped for another split or dataset), or another number of supports."""
    meta = meta or {}
    dumped = ", ".join(f"{key} {meta[key]}" for key in ("data_set", "split", "shot") if key in meta)
    dumped = f" (the file was dumped with {dumped})" if dumped else ""
    for number, episode in enumerate(episodes):
        if episode["class_chosen"] not in test_classes:
            chosen = episode["class_chosen"]
            shown = repr(chosen) if isinstance(chosen, str) else chosen  # '2' is not the class id 2
            raise ValueError(f"{path}: episode {number} is of class {shown}, not one "
                             f"of this config's test classes {list(test_classes)}{dumped}: replay a file "
                             f"with the config it was dumped with (was it dumped for another fold, or edited?)")
        if len(episode["supports"]) != shot:
            raise ValueError(f"{path}: episode {number} has {len(episode['supports'])} supports but "
                             f"the config's shot is {shot}{dumped}")


def _header_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) from the file's header (no decoding), or None where Pillow cannot tell."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's decompression-bomb warning on large files
            with Image.open(path) as image:
                return image.size[1], image.size[0]
    except Exception:  # noqa: BLE001 - any failure leaves the check to the decoding of the episode
        return None


def _size_problem(image: str, label: str) -> Optional[str]:
    header_image, header_label = _header_size(image), _header_size(label)
    if header_image is None or header_label is None or header_image == header_label:
        return None  # a difference the headers miss (EXIF orientation) is found when decoded
    # The headers differ: decode both as the dataset does (OpenCV applies the EXIF orientation).
    image_shape, label_shape = read_image_file(image).shape[:2], read_label_file(label).shape[:2]
    if image_shape == label_shape:
        return None
    return (f"image {image!r} is {image_shape[0]}x{image_shape[1]} but its label {label!r} is "
            f"{label_shape[0]}x{label_shape[1]}")


def check_episode_files(path: str, episodes: Sequence[dict]) -> None:
    """Every image and label of every episode exists, is a file OpenCV can read, and every
    image has its label's size (read from the headers; decoded only where they differ). The
    first problem is named with the episode file, the episode, the field and the path."""
    file_problems, size_problems = {}, {}
    for number, episode in enumerate(episodes):
        fields = [("query", episode["query"])]
        fields += [(f"supports[{shot}]", pair) for shot, pair in enumerate(episode["supports"])]
        for field, (image, label) in fields:
            where = f"{path}: episode {number}, {field}"
            for kind, file in (("image", image), ("label", label)):
                if file not in file_problems:
                    file_problems[file] = file_problem(file)
                if file_problems[file] is not None:
                    error = FileNotFoundError if not os.path.exists(file) else ValueError
                    raise error(f"{where}: {kind} {file!r} {file_problems[file]}")
            if (image, label) not in size_problems:
                try:
                    size_problems[(image, label)] = _size_problem(image, label)
                except (ValueError, OSError) as error:
                    raise _in_episode(error, where) from None
            if size_problems[(image, label)] is not None:
                raise ValueError(f"{where}: {size_problems[(image, label)]}")


def read_episode_file(path: str, cfg, option: str = "--episodes-from") -> List[dict]:
    """The episodes of ``path`` after every check a config allows before decoding them:
    :func:`load_episode_file`, :func:`check_episode_meta`, :func:`check_episodes_fit` (the
    config's test classes and shot) and :func:`check_episode_files`."""
    episodes, meta = load_episode_file(path, option)
    check_episode_meta(path, meta, cfg)
    test_classes = test_class_ids(cfg)
    check_episodes_fit(path, episodes, test_classes, cfg.shot, meta)
    check_episode_files(path, episodes)
    return episodes


def episode_file_meta(cfg, config_path: str, seed: int, test_num: int) -> dict:
    """What an episode file records of the run that drew its episodes (``check_episode_meta``
    compares it with the replaying run's config)."""
    return dict(config=config_path, data_set=cfg.data_set, split=cfg.split, shot=cfg.shot,
                use_split_coco=cfg.use_split_coco, seed=seed, workers=cfg.workers, test_num=test_num)


def save_episodes(path: str, episodes: Sequence[dict], meta: Optional[dict] = None) -> None:
    atomic_write_json(path, {"meta": meta or {}, "episodes": [_jsonable(e) for e in episodes]})


def build_episode_loader(cfg, dataset, episodes_from: Optional[str] = None,
                         record: bool = False, episodes: Optional[List[dict]] = None
                         ) -> Tuple[DataLoader, Optional[int]]:
    """The validation loader of ``dataset``, replaying the episodes of ``episodes_from`` or
    recording its own (``record``). ``episodes``: those of ``episodes_from`` already read with
    :func:`read_episode_file` (a script checks the file before it builds anything). Returns
    ``(loader, episode count of the replayed file or None)``."""
    if episodes_from:
        if episodes is None:
            episodes = read_episode_file(episodes_from, cfg)
        loader = DataLoader(ReplayDataset(dataset, episodes, source=episodes_from), batch_size=1, shuffle=False,
                            num_workers=cfg.workers, worker_init_fn=limit_opencv_threads)
        return loader, len(episodes)
    return build_val_loader(cfg, RecordingDataset(dataset) if record else dataset), None
