"""The named items the datasets serve: an episode (or a batch of them, once collated) and an
image with its label for the base learner.

They are named tuples on purpose. Code reads them by name (``batch.query_image``,
``batch.support_labels``), while code ported from the original, whose datasets return plain
tuples, keeps unpacking them by position in the original's order (``image, label, s_x, s_y,
subcls_list = episode``). PyTorch's default collate and pin-memory keep the type, so a batch
of episodes is the same named tuple with every field stacked (``class_index`` becomes the
original's collated ``subcls_list``: a list holding one (B,) tensor).

Shapes of one item (a batch adds a leading B): query image (3, H, W) float, query label (H, W)
long with values {0, 1, 255}, support images (K, 3, H, W), support labels (K, H, W) {0, 1, 255}.
"""
from __future__ import annotations

from typing import List, NamedTuple, Union

import torch

__all__ = ["TrainingEpisode", "TrainingEpisodeWithBaseLabel", "EvaluationEpisode", "RecordedEpisode",
           "LabelledImage", "class_indices", "seed_episode_draws"]


# The fields every episode starts with, in the original's order; each kind adds its own after.
_EPISODE_FIELDS = [("query_image", torch.Tensor), ("query_label", torch.Tensor),
                   ("support_images", torch.Tensor), ("support_labels", torch.Tensor),
                   ("class_index", List[int])]  # [index of the episode class in the mode's class list]

TrainingEpisode = NamedTuple("TrainingEpisode", _EPISODE_FIELDS)
TrainingEpisode.__doc__ = "A training episode (the original's five training items)."

TrainingEpisodeWithBaseLabel = NamedTuple("TrainingEpisodeWithBaseLabel",
                                          _EPISODE_FIELDS + [("base_label", torch.Tensor)])
TrainingEpisodeWithBaseLabel.__doc__ = """A training episode of SCCAN with BAM's base learner: also the
    query label in the base learner's numbering (BAM's ``y_b``: 0, base class index + 1, 255)."""

EvaluationEpisode = NamedTuple("EvaluationEpisode", _EPISODE_FIELDS + [("raw_label", torch.Tensor)])
EvaluationEpisode.__doc__ = """An evaluation episode (the original's six validation items):
    ``raw_label`` is the query label before the validation transform (H0, W0) at the image's own
    size, which the original-resolution scoring uses; ``class_index`` indexes the fold's test
    classes."""

RecordedEpisode = NamedTuple("RecordedEpisode", _EPISODE_FIELDS + [("raw_label", torch.Tensor),
                                                                   ("record", str)])
RecordedEpisode.__doc__ = """An :class:`EvaluationEpisode` with the JSON record of its draws (query,
    class, supports), which ``test_sccan.py --dump-episodes`` writes and ``--episodes-from``
    replays."""


class LabelledImage(NamedTuple):
    """An image (3, H, W) and its label (H, W) in the base learner's numbering (BAM's base
    dataset: background 0, base classes 1..N, 255 ignored)."""
    image: torch.Tensor
    label: torch.Tensor


Episode = Union[TrainingEpisode, TrainingEpisodeWithBaseLabel, EvaluationEpisode, RecordedEpisode]


def class_indices(episode: Episode) -> torch.Tensor:
    """The class index of each episode of a collated batch, (B,) long (the collated ``class_index``
    is a list holding one (B,) tensor; an uncollated one holds an int)."""
    index = episode.class_index
    index = index[0] if isinstance(index, (list, tuple)) else index
    return torch.as_tensor(index).reshape(-1).long()


def seed_episode_draws(dataset, seed: int) -> None:
    """Give ``seed`` to a dataset whose draws are keyed by (seed, episode index) rather than taken
    from the global generators (util/episode_data: ``set_episode_seed``), looking through wrappers
    that keep the wrapped dataset as ``.dataset`` (episode recording). Other datasets are left
    alone: their draws already follow the global seeding."""
    while dataset is not None:
        setter = getattr(dataset, "set_episode_seed", None)
        if setter is not None:
            setter(seed)
            return
        dataset = getattr(dataset, "dataset", None)
