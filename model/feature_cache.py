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
The evaluator computes the keys from the loader's host (CPU) batch and hands them over with the
device tensors the model will pass to the backbone (:func:`keys_from_host`): hashing a GPU
tensor would copy it to the host first, a device synchronisation and ~2 ms per 473x473 image,
more than a backbone pass on a recent GPU. Lookups of tensors whose keys were not handed over
(the predictor, direct calls) hash the tensor itself, which gives the same key (the bytes do
not change on the way to the device).

The features live where the backbone computed them, on the model's device: on a GPU, the
budget is capped at attach time to a fraction of the memory the device has free
(:func:`device_budget_mb`), so that the cache cannot take the memory the forward passes need.

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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["DEVICE_MEMORY_FRACTION", "FeatureCache", "attached_cache", "attached_feature_cache",
           "device_budget_mb", "image_key", "image_keys", "keys_from_host"]

MEBIBYTE = 2 ** 20

# The share of a GPU's free memory (at attach time) the cache may fill: the rest stays for the
# evaluation's forward passes (a 473x473 5-shot episode needs a few GiB at the 64x64 grid) and
# for whatever else the process holds (a training run's optimizer states stay allocated).
DEVICE_MEMORY_FRACTION = 0.5


def image_key(image: torch.Tensor) -> bytes:
    """Digest of one input image (3, H, W): its dtype, shape and bytes (BLAKE2b, 16 bytes).
    The same for the same values wherever the tensor lives (a device tensor is copied to the
    host to be hashed: prefer hashing the host batch, see :func:`keys_from_host`)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.dtype}{tuple(image.shape)}".encode())
    digest.update(image.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def image_keys(images: torch.Tensor) -> List[bytes]:
    """:func:`image_key` of each image of a batch (N, 3, H, W)."""
    return [image_key(image) for image in images]


def device_budget_mb(budget_mb: float, device: torch.device,
                     free_bytes: Optional[int] = None) -> float:
    """The budget the cache gets on ``device``: ``budget_mb`` in host memory; on a CUDA device at
    most :data:`DEVICE_MEMORY_FRACTION` of its free memory, that is the driver's free memory
    plus what PyTorch's allocator holds unused (``free_bytes`` overrides both, for tests)."""
    if device.type != "cuda":
        return budget_mb
    if free_bytes is None:
        driver_free, _ = torch.cuda.mem_get_info(device)
        free_bytes = driver_free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return min(budget_mb, DEVICE_MEMORY_FRACTION * free_bytes / MEBIBYTE)


def _signature(images: torch.Tensor) -> Tuple:
    """What tells a tensor handed over with its keys from any other one reaching the cache: its
    memory, layout and version. The evaluator holds the handed-over tensors while the model runs,
    so their memory cannot be reused by another tensor, and an in-place change bumps the version
    (inference tensors have none: None)."""
    try:
        version = images._version
    except RuntimeError:
        version = None
    return (images.device, images.data_ptr(), tuple(images.shape), images.stride(), images.dtype,
            version)


class FeatureCache:
    """LRU cache: image digest -> its backbone features (one (1, C, h, w) tensor per level).

    Args:
        budget_mb: memory budget in MiB for the stored tensors, in the memory of the device
            that computed them (``memory`` says which; :func:`attached_feature_cache` caps a
            GPU's budget with :func:`device_budget_mb`); an entry larger than the whole budget
            is not stored. 0 stores nothing.
        levels: indices of the backbone levels to keep (others come back as None, for a model
            that does not read them); None keeps all.
        memory: where the features are kept (the model's device, e.g. 'cpu' or 'cuda:0'), for
            the statistics.
    """

    def __init__(self, budget_mb: float, levels: Optional[Sequence[int]] = None,
                 memory: str = "cpu"):
        if budget_mb < 0:
            raise ValueError(f"budget_mb must be >= 0, got {budget_mb}")
        self.budget_bytes = int(budget_mb * MEBIBYTE)
        self.levels = None if levels is None else tuple(sorted(set(levels)))
        self.memory = memory
        self.entries: "OrderedDict[bytes, List[Optional[torch.Tensor]]]" = OrderedDict()
        self.stored_bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.handed_keys: Dict[Tuple, List[bytes]] = {}

    @contextlib.contextmanager
    def handed_over(self, *batches: Tuple[torch.Tensor, Sequence[bytes]]) -> Iterator[None]:
        """For the duration of the block, look up each given tensor (N, 3, H, W) (the very
        tensor, or a view of the same memory with the same shape and strides) by the given N
        keys instead of hashing it."""
        for images, keys in batches:
            if len(keys) != images.shape[0]:
                raise ValueError(f"{len(keys)} keys for a batch of {images.shape[0]} images")
            self.handed_keys[_signature(images)] = list(keys)
        try:
            yield
        finally:
            # Dropped after the batch: another batch could later sit at the same address.
            self.handed_keys.clear()

    def _keys(self, images: torch.Tensor) -> List[bytes]:
        """The handed-over keys of ``images`` or, when none were, the hashes of its images."""
        handed = self.handed_keys.get(_signature(images)) if self.handed_keys else None
        return handed if handed is not None else image_keys(images)

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
        keys = self._keys(images)
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
        """hits, misses, hit_rate (of image lookups), evictions, entries, stored MiB, the budget
        in MiB and the memory that holds the features (the device's: 'cpu', 'cuda:0', ...)."""
        lookups = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "evictions": self.evictions, "entries": len(self.entries),
                "stored_mb": round(self.stored_bytes / MEBIBYTE, 1),
                "budget_mb": round(self.budget_bytes / MEBIBYTE, 1), "memory": self.memory}


def _cached_model(predictor):
    """The SCCAN model behind ``predictor`` (itself, or a wrapper's ``.model``), or None."""
    model = predictor if hasattr(predictor, "feature_levels") else getattr(predictor, "model", None)
    return model if hasattr(model, "feature_levels") else None


def attached_cache(predictor) -> Optional[FeatureCache]:
    """The cache attached to the model behind ``predictor`` (None when there is none)."""
    return getattr(_cached_model(predictor), "feature_cache", None)


@contextlib.contextmanager
def attached_feature_cache(predictor, budget_mb: float) -> Iterator[Optional[FeatureCache]]:
    """Attach a fresh :class:`FeatureCache` to the SCCAN model behind ``predictor`` (the model
    itself, or a wrapper holding it as ``.model``) for the duration of the block; yields the
    cache, or None when ``budget_mb`` is 0 or the predictor has no SCCAN backbone to cache.
    The features stay on the model's device; on a GPU the budget is capped to a share of its
    free memory (:func:`device_budget_mb`)."""
    model = _cached_model(predictor)
    if budget_mb <= 0 or model is None:
        yield None
        return
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    cache = FeatureCache(device_budget_mb(budget_mb, device), model.feature_levels(), memory=str(device))
    previous, model.feature_cache = model.feature_cache, cache
    try:
        yield cache
    finally:
        model.feature_cache = previous


@contextlib.contextmanager
def keys_from_host(predictor, *batches: Tuple[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    """While the block runs, the cache attached to ``predictor``'s model (if any) looks up each
    device batch by the keys of its host copy: ``batches`` are pairs (device tensor (N, 3, H, W)
    the model will pass to its backbone, the same images on the host (N, 3, H, W)). Without a
    cache nothing is hashed."""
    cache = attached_cache(predictor)
    if cache is None:
        yield
        return
    with cache.handed_over(*((device_images, image_keys(host_images))
                             for device_images, host_images in batches)):
        yield
