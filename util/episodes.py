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

from util.io import atomic_write_json

__all__ = ["RecordingDataset", "ReplayDataset", "EpisodeRecorder", "load_episodes",
           "save_episodes", "build_episode_loader"]


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


def load_episodes(path: str) -> List[dict]:
    """Read an episode file written by :func:`save_episodes` (JSON)."""
    with open(path) as handle:
        try:
            content = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not an episode file written by --dump-episodes ({error})") from None
    episodes = content["episodes"] if isinstance(content, dict) else content
    for number, episode in enumerate(episodes):
        missing = {"query", "class_chosen", "supports"} - set(episode)
        if missing:
            raise ValueError(f"{path}: episode {number} lacks {sorted(missing)}")
        episode["query"] = tuple(episode["query"])
        episode["supports"] = [tuple(pair) for pair in episode["supports"]]
    return episodes


def save_episodes(path: str, episodes: Sequence[dict], meta: Optional[dict] = None) -> None:
    atomic_write_json(path, {"meta": meta or {}, "episodes": [_jsonable(e) for e in episodes]})


def build_episode_loader(cfg, dataset, episodes_from: Optional[str] = None,
                         record: bool = False) -> Tuple[DataLoader, Optional[int]]:
    """The validation loader of ``dataset``, replaying the episodes of ``episodes_from`` or
    recording its own (``record``). Returns ``(loader, episode count of the replayed file or None)``."""
    from util.experiment import build_val_loader  # util.experiment imports the model package

    if episodes_from:
        episodes = load_episodes(episodes_from)
        loader = DataLoader(ReplayDataset(dataset, episodes), batch_size=1, shuffle=False,
                            num_workers=cfg.workers)
        return loader, len(episodes)
    return build_val_loader(cfg, RecordingDataset(dataset) if record else dataset), None
