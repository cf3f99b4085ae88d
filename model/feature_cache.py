"""A bounded cache of frozen-backbone features for evaluation.

An evaluation of 1,000 episodes draws its queries and supports from a few hundred images, and
the validation transform is deterministic, so the same input image reaches the frozen backbone
again and again (a query of one episode is the support of another). :class:`FeatureCache`
keeps the backbone features of single images, least recently used first out once a memory
budget is reached, and :meth:`SCCAN._backbone <model.sccan.SCCAN>` asks it before running the
backbone while one is attached (:func:`attached_feature_cache`).

The key is a digest of the input tensor itself (its bytes, shape and dtype), not of the file
name: an entry can only be reused for the very same input, whatever transform produced it (the
validation transform is deterministic, so an image path and size always give the same input).
On the CPU, SCCAN computes evaluation features image by image, cached or not, so the cached
evaluation returns exactly what the plain one does; on GPUs the plain loop runs the K supports
of an episode as one batch and the cache only the missing ones, and cuDNN may pick another
algorithm for another batch size, which can change the last bits of a logit. The backbone is
frozen, and a cache lives for one evaluation run, so weights never change under it.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

__all__ = ["FeatureCache", "attached_feature_cache", "image_key"]

MEBIBYTE = 2 ** 20


def image_key(image: torch.Tensor) -> bytes:
    """Digest of one input image (3, H, W): its dtype, shape and bytes (BLAKE2b, 16 bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.dtype}{tuple(image.shape)}".encode())
    digest.update(image.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


class FeatureCache:
    """LRU cache: image digest -> its backbone features (one (1, C, h, w) tensor per level).

    Args:
        budget_mb: memory budget in MiB for the stored tensors (on their device); an entry
            larger than the whole budget is not stored. 0 stores nothing.
        levels: indices of the backbone levels to keep (others come back as None, for a model
            that does not read them); None keeps all.
    """

    def __init__(self, budget_mb: float, levels: Optional[Sequence[int]] = None):
        if budget_mb < 0:
            raise ValueError(f"budget_mb must be >= 0, got {budget_mb}")
        self.budget_bytes = int(budget_mb * MEBIBYTE)
        self.levels = None if levels is None else tuple(sorted(set(levels)))
        self.entries: "OrderedDict[bytes, List[Optional[torch.Tensor]]]" = OrderedDict()
        self.stored_bytes = 0
        self.hits = self.misses = self.evictions = 0

    def _kept(self, features: Sequence[torch.Tensor], index: int) -> List[Optional[torch.Tensor]]:
        """Image ``index`` of batched level features, the unused levels dropped."""
        return [level[index:index + 1] if self.levels is None or number in self.levels else None
                for number, level in enumerate(features)]

    def _store(self, key: bytes, features: List[Optional[torch.Tensor]]) -> None:
        # A slice of a batch would keep the whole batch alive: store compact copies.
        features = [None if level is None else level.clone() for level in features]
        size = sum(level.numel() * level.element_size() for level in features if level is not None)
        if size > self.budget_bytes:
            return
        while self.stored_bytes + size > self.budget_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.stored_bytes -= sum(level.numel() * level.element_size()
                                     for level in evicted if level is not None)
            self.evictions += 1
        self.entries[key] = features
        self.stored_bytes += size

    def features(self, compute: Callable[[torch.Tensor], List[torch.Tensor]],
                 images: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """The level features of ``images`` (N, 3, H, W): cached ones reused, the others
        computed by ``compute`` (all missing images in one call, in batch order) and stored.
        Returns one (N, C, h, w) tensor per level (None for levels not kept)."""
        keys = [image_key(image) for image in images]
        found: Dict[int, List[Optional[torch.Tensor]]] = {}
        for index, key in enumerate(keys):
            if key in self.entries:
                self.entries.move_to_end(key)
                found[index] = self.entries[key]
        missing = [index for index in range(len(keys)) if index not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            computed = compute(images[missing])
            for position, index in enumerate(missing):
                found[index] = self._kept(computed, position)
                if keys[index] not in self.entries:  # the same image twice in one batch
                    self._store(keys[index], found[index])
        per_image = [found[index] for index in range(len(keys))]
        return [None if per_image[0][level] is None
                else torch.cat([features[level] for features in per_image])
                for level in range(len(per_image[0]))]

    def statistics(self) -> dict:
        """hits, misses, hit_rate (of image lookups), evictions, entries and stored MiB."""
        lookups = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "evictions": self.evictions, "entries": len(self.entries),
                "stored_mb": round(self.stored_bytes / MEBIBYTE, 1)}


@contextlib.contextmanager
def attached_feature_cache(predictor, budget_mb: float) -> Iterator[Optional[FeatureCache]]:
    """Attach a fresh :class:`FeatureCache` to the SCCAN model behind ``predictor`` (the model
    itself, or a wrapper holding it as ``.model``) for the duration of the block; yields the
    cache, or None when ``budget_mb`` is 0 or the predictor has no SCCAN backbone to cache."""
    model = predictor if hasattr(predictor, "feature_levels") else getattr(predictor, "model", None)
    if budget_mb <= 0 or not hasattr(model, "feature_levels"):
        yield None
        return
    cache = FeatureCache(budget_mb, model.feature_levels())
    previous, model.feature_cache = model.feature_cache, cache
    try:
        yield cache
    finally:
        model.feature_cache = previous
