"""Exact episode lists: record the episodes of an evaluation and replay them later.

Methods compared on identical episodes need the (query, class, supports) choices themselves,
not only a seed: those depend on the worker count and on the list order (docs/PROTOCOL.md). A
:class:`RecordingDataset` makes every item carry its episode, an :class:`EpisodeRecorder`
observer of the evaluation protocol collects them, :func:`save_episodes` writes them as JSON and
a :class:`ReplayDataset` serves them again in order, without drawing.
"""
from __future__ import annotations

import json
from typing import List, Optional, Sequence, Tuple

from torch.utils.data import DataLoader, Dataset

from util.io import atomic_write_json, read_text
from util.runtime import limit_opencv_threads

__all__ = ["RecordingDataset", "ReplayDataset", "EpisodeRecorder", "check_episodes_fit",
           "load_episode_file", "load_episodes", "save_episodes", "build_episode_loader"]


def _jsonable(episode: dict) -> dict:
    return {"query": list(episode["query"]), "class_chosen": int(episode["class_chosen"]),
            "supports": [list(pair) for pair in episode["supports"]]}


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
        return (*self.dataset.load_episode(**episode), json.dumps(_jsonable(episode)))


class ReplayDataset(Dataset):
    """Serves a fixed list of episodes (from ``--dump-episodes``) in order, without drawing;
    items carry their episode like :class:`RecordingDataset`'s."""

    def __init__(self, dataset, episodes: Sequence[dict]):
        self.dataset = dataset
        self.episodes = list(episodes)

    def __len__(self):
        return len(self.episodes)

    def __getitem__(self, index):
        episode = self.episodes[index]
        return (*self.dataset.load_episode(**episode), json.dumps(_jsonable(episode)))


class EpisodeRecorder:
    """Evaluation observer: collects the episodes of a run, in order (the batches must come from
    a :class:`RecordingDataset` or a :class:`ReplayDataset`)."""

    def __init__(self):
        self.episodes: List[dict] = []

    def start(self) -> None:
        self.episodes.clear()

    def observe(self, batch) -> None:
        if not batch.extras:
            raise ValueError("recording episodes needs a RecordingDataset or a ReplayDataset")
        self.episodes.extend(json.loads(item) for item in batch.extras[0])


EPISODE_FILE = "episodes written by test_sccan.py --dump-episodes"


def _is_path_pair(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(part, str) for part in value)


def _check_episode(path: str, number: int, episode) -> None:
    if not isinstance(episode, dict):
        raise ValueError(f"{path}: episode {number} is a {type(episode).__name__}, expected an object "
                         f"with query, class_chosen and supports ({EPISODE_FILE})")
    missing = {"query", "class_chosen", "supports"} - set(episode)
    if missing:
        raise ValueError(f"{path}: episode {number} lacks {sorted(missing)} ({EPISODE_FILE})")
    if not _is_path_pair(episode["query"]) or not isinstance(episode["supports"], list) or \
            not episode["supports"] or not all(_is_path_pair(pair) for pair in episode["supports"]) or \
            isinstance(episode["class_chosen"], bool) or not isinstance(episode["class_chosen"], int):
        raise ValueError(f"{path}: episode {number} is malformed: expected query [image, label], an "
                         f"integer class_chosen and supports [[image, label], ...]")


def load_episode_file(path: str) -> Tuple[List[dict], dict]:
    """Read and check an episode file written by :func:`save_episodes` (JSON): its kind (a
    result file or any other JSON is named as such) and every episode's fields. Returns the
    episodes and the file's ``meta`` record ({} for a bare list or an older file)."""
    try:
        text = read_text(path, "an episode file")
    except FileNotFoundError:
        raise FileNotFoundError(f"episode file not found: {path!r}") from None
    except ValueError as error:  # a byte that is not UTF-8, named with its line
        raise ValueError(f"{error}; not an episode file ({EPISODE_FILE})") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not an episode file ({EPISODE_FILE}): {error}") from None
    if isinstance(content, dict) and "episodes" not in content:
        what = ("a result file of test_sccan.py (it has 'runs')" if "runs" in content else
                f"a JSON object with keys {sorted(content)[:6]}")
        raise ValueError(f"{path} is {what}, not an episode file: pass the file that "
                         f"--dump-episodes wrote")
    episodes = content["episodes"] if isinstance(content, dict) else content
    if not isinstance(episodes, list) or not episodes:
        raise ValueError(f"{path}: expected a non-empty list of episodes ({EPISODE_FILE})")
    for number, episode in enumerate(episodes):
        _check_episode(path, number, episode)
        episode["query"] = tuple(episode["query"])
        episode["supports"] = [tuple(pair) for pair in episode["supports"]]
    meta = content.get("meta") if isinstance(content, dict) else None
    return episodes, meta if isinstance(meta, dict) else {}


def load_episodes(path: str) -> List[dict]:
    """The checked episodes of an episode file (:func:`load_episode_file`)."""
    return load_episode_file(path)[0]


def check_episodes_fit(path: str, episodes: Sequence[dict], test_classes: Sequence[int], shot: int,
                       meta: Optional[dict] = None) -> None:
    """Refuse episodes that the config cannot replay: a class that is not one of the fold's test
    classes (a file dumped for another split or dataset), or another number of supports."""
    meta = meta or {}
    dumped = ", ".join(f"{key} {meta[key]}" for key in ("data_set", "split", "shot") if key in meta)
    dumped = f" (the file was dumped with {dumped})" if dumped else ""
    for number, episode in enumerate(episodes):
        if episode["class_chosen"] not in test_classes:
            raise ValueError(f"{path}: episode {number} is of class {episode['class_chosen']}, not one "
                             f"of this config's test classes {list(test_classes)}{dumped}: replay it "
                             f"with the config it was dumped with")
        if len(episode["supports"]) != shot:
            raise ValueError(f"{path}: episode {number} has {len(episode['supports'])} supports but "
                             f"the config's shot is {shot}{dumped}")


def save_episodes(path: str, episodes: Sequence[dict], meta: Optional[dict] = None) -> None:
    atomic_write_json(path, {"meta": meta or {}, "episodes": [_jsonable(e) for e in episodes]})


def build_episode_loader(cfg, dataset, episodes_from: Optional[str] = None,
                         record: bool = False) -> Tuple[DataLoader, Optional[int]]:
    """The validation loader of ``dataset``, replaying the episodes of ``episodes_from`` or
    recording its own (``record``). Returns ``(loader, episode count of the replayed file or None)``."""
    from util.experiment import build_val_loader  # util.experiment imports the model package

    if episodes_from:
        episodes, meta = load_episode_file(episodes_from)
        check_episodes_fit(episodes_from, episodes, dataset.val_classes, cfg.shot, meta)
        loader = DataLoader(ReplayDataset(dataset, episodes), batch_size=1, shuffle=False,
                            num_workers=cfg.workers, worker_init_fn=limit_opencv_threads)
        return loader, len(episodes)
    return build_val_loader(cfg, RecordingDataset(dataset) if record else dataset), None
