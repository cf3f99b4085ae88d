"""The few-shot evaluation protocol, shared by in-training validation, test_sccan.py and the
tools (the original's test.py protocol, described in docs/PROTOCOL.md section 1).

An :class:`EvaluationProtocol` is built once from a config: how many episodes, which seeds, which
target the logits are scored against, which label is ignored. ``protocol.run(predictor, loader,
device, seed)`` reseeds (torch, numpy, random), iterates the validation loader in passes, a new
iterator each pass (so workers are re-seeded like the original), until ``test_num`` episodes are
done, and returns the metric summary. Observers (episode recording, pictures) see every batch.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from evaluation.metrics import FewShotMeter, pad_to_square
from model.constants import IGNORE_LABEL
from model.feature_cache import attached_feature_cache, keys_from_host
from util.episode import class_indices, seed_episode_draws
from util.runtime import autocast, check_amp, gather_from_ranks, progress_bar, set_seed

__all__ = ["TARGETS", "EvaluatedBatch", "EvaluationProtocol", "FewShotScoring", "evaluation_passes",
           "format_cache_statistics", "format_result_table", "run_seeds", "summarise_runs", "write_run_scalars"]

# What the logits are scored against (docs/PROTOCOL.md section 1):
#   'original': the untransformed label padded with the ignore label to a square (ori_resize);
#   'input':    the transformed label at the network's input size (ori_resize False);
#   'raw':      the untransformed label itself (HSNet-style test, the paper's double-dagger rows).
TARGETS = ("original", "input", "raw")
SUMMARY_KEYS = ("mIoU", "FB_IoU", "pIoU")


def evaluation_passes(test_num: int, loader_length: int, batch_size: int = 1) -> int:
    """Number of loader passes of the original test loop."""
    if loader_length - batch_size <= 0:
        raise ValueError(f"the validation loader has {loader_length} batches of {batch_size}: "
                         f"too few episodes for the protocol (needs more than one batch)")
    return math.ceil(test_num / (loader_length - batch_size))


@dataclass
class EvaluatedBatch:
    """What an observer sees of one batch: the inputs, the prediction in the input frame, each
    episode's class index into the fold's test classes (B,) and, for batches of a
    :class:`~util.episode.RecordedEpisode` dataset, each episode's JSON record (else None; see
    evaluation.episodes)."""
    first_episode: int
    image: torch.Tensor
    label: torch.Tensor
    support_images: torch.Tensor
    support_labels: torch.Tensor
    input_prediction: torch.Tensor
    records: Optional[List[str]]
    class_indices: Optional[torch.Tensor] = None


class FewShotScoring:
    """The protocol's scoring of binary few-shot episodes: each output's logits are resized to
    the target, argmax-ed and accumulated in a :class:`FewShotMeter`.

    A predictor returns one logits tensor (B, 2, h, w) or an output that holds one as ``logits``
    (SCCAN's :class:`~model.sccan.SCCANOutput`), or a mapping name -> logits to score
    several outputs of the same forward on the same episodes (an ensemble model: the ensemble and
    its meta learner alone); the first entry is the headline."""

    summary_keys = SUMMARY_KEYS

    def __init__(self, num_test_classes: int, ignore_label: int = 255):
        self.num_test_classes = num_test_classes
        self.ignore_label = ignore_label
        self.meters: Dict[Optional[str], FewShotMeter] = {}

    def update(self, output, target: torch.Tensor, class_index) -> torch.Tensor:
        """Score one batch; returns the headline prediction in the input frame (B, h, w)."""
        outputs = output if isinstance(output, Mapping) else {None: getattr(output, "logits", output)}
        for name, logits in outputs.items():
            meter = self.meters.setdefault(name, FewShotMeter(self.num_test_classes,
                                                              ignore_index=self.ignore_label))
            scored = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear",
                                   align_corners=True)
            meter.update(scored.argmax(1), target, class_index)
        return next(iter(outputs.values())).argmax(1)

    def sums(self) -> Dict:
        """Each output's meter sums (evaluation.metrics.FewShotMeter.sums), headline first."""
        return {name: meter.sums() for name, meter in self.meters.items()}

    def combine(self, shares: Sequence[Dict]) -> None:
        """Replace the meters by the sum of ``shares`` (the :meth:`sums` of every process, rank
        0 first, so the headline stays first)."""
        self.meters = {}
        for share in shares:
            for name, sums in share.items():
                self.meters.setdefault(name, FewShotMeter(
                    self.num_test_classes, ignore_index=self.ignore_label)).add_sums(sums)

    def summary(self) -> Dict:
        """The headline output's summary; with named outputs also ``outputs``: name -> summary."""
        if not self.meters:
            return FewShotMeter(self.num_test_classes, ignore_index=self.ignore_label).summary()
        meters = list(self.meters.items())
        result = meters[0][1].summary()
        if meters[0][0] is not None:
            result["outputs"] = {name: meter.summary() for name, meter in meters}
        return result


@dataclass(frozen=True)
class EvaluationProtocol:
    """How a fold is evaluated. ``seeds``: one run per seed (None: no reseeding, for in-training
    validation with ``fix_random_seed_val: False``). ``amp``: 'fp32' or 'bf16' (autocast of the
    forward passes). ``feature_cache_mb``: budget of the backbone-feature cache of a run
    (model/feature_cache.py; 0 = off), which changes no result."""
    test_num: int
    num_test_classes: int
    seeds: Tuple[Optional[int], ...] = (321,)
    seed_deterministic: bool = False
    target: str = "original"
    ignore_label: int = IGNORE_LABEL
    amp: str = "fp32"
    feature_cache_mb: float = 0.0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.test_num < 1:
            raise ValueError(f"test_num must be positive, got {self.test_num}")
        check_amp(self.amp)
        if self.feature_cache_mb < 0:
            raise ValueError(f"config key eval_feature_cache_mb: expected a size in MiB >= 0, "
                             f"got {self.feature_cache_mb}")

    @classmethod
    def from_config(cls, cfg, num_test_classes: int, test_num: Optional[int] = None,
                    number_of_seeds: int = 1, hsnet_resize: bool = False,
                    validation: bool = False) -> "EvaluationProtocol":
        """The config's protocol: ``test_num`` episodes, seeds manual_seed, manual_seed + 1, ...
        (``validation``: one run, reseeded only when ``fix_random_seed_val``)."""
        if validation:
            seeds = (cfg.manual_seed if cfg.fix_random_seed_val else None,)
        else:
            seeds = tuple(cfg.manual_seed + index for index in range(number_of_seeds))
        target = "raw" if hsnet_resize else ("original" if cfg.ori_resize else "input")
        return cls(test_num=test_num or cfg.test_num, num_test_classes=num_test_classes, seeds=seeds,
                   seed_deterministic=cfg.seed_deterministic, target=target,
                   ignore_label=cfg.ignore_label, amp=cfg.amp,
                   feature_cache_mb=float(cfg.eval_feature_cache_mb))

    def scoring_target(self, label: torch.Tensor, raw_label: torch.Tensor) -> torch.Tensor:
        if self.target == "original":
            return pad_to_square(raw_label.long(), self.ignore_label)
        return raw_label.long() if self.target == "raw" else label.long()

    def run(self, predictor: Callable, loader, device: torch.device, seed: Optional[int] = 321,
            observers: Sequence[Any] = (), progress: bool = False, scoring=None,
            context=None) -> Dict:
        """Evaluate ``predictor(x=..., s_x=..., s_y=...) -> logits (B, 2, h, w)`` on ``test_num``
        episodes of ``loader`` (batches of :class:`~util.episode.EvaluationEpisode` or
        :class:`~util.episode.RecordedEpisode`). Returns dict(mIoU, FB_IoU, pIoU, class_IoU, accuracy, episodes, seconds),
        with ``feature_cache`` (its :meth:`FeatureCache.statistics
        <model.feature_cache.FeatureCache.statistics>`, hit rate included) when one was used.

        ``scoring``: what turns outputs and targets into metrics, with ``update(output, target,
        class_index) -> input-frame prediction`` and ``summary()``; default a fresh
        :class:`FewShotScoring` (the generalised test passes evaluation/gfss.py's).

        ``context``: a util.runtime.DistributedContext. Under DDP every rank iterates the same
        loader (the same seeds, so the same episodes as one process) but runs the predictor on
        batch ``i`` only when ``i % world_size == rank``; the ranks' meter sums are then added
        up, so every rank returns the result of one process scoring every episode, in about
        1 / world_size of the time. ``episodes_here`` says how many episodes this rank scored.

        The predictor runs in evaluation mode without gradients and is given back in the mode it
        came in (:func:`inference_context`): a training loop that validates goes on training."""
        rank, world_size = (context.rank, context.world_size) if context is not None else (0, 1)
        if world_size > 1 and not hasattr(scoring or FewShotScoring, "combine"):
            raise ValueError(f"{type(scoring).__name__} cannot be split across processes")
        if seed is not None:
            set_seed(seed, self.seed_deterministic)
            seed_episode_draws(getattr(loader, "dataset", None), seed)
        for observer in observers:
            observer.start()
        if scoring is None:
            scoring = FewShotScoring(self.num_test_classes, self.ignore_label)
        bar = progress_bar(self.test_num, "eval", progress)
        done, here, batch_index, start = 0, 0, 0, time.time()
        with inference_context(predictor), attached_feature_cache(predictor, self.feature_cache_mb) as cache:
            for _ in range(evaluation_passes(self.test_num, len(loader), loader.batch_size or 1)):
                for batch in loader:  # a fresh iterator each pass, as the original
                    if done >= self.test_num:
                        break
                    if batch_index % world_size == rank:
                        self._evaluate_batch(predictor, batch, device, scoring, observers, done)
                        here += len(batch.query_image)
                    batch_index += 1
                    done += len(batch.query_image)
                    bar.update(len(batch.query_image))
        bar.close()
        statistics = cache.statistics() if cache is not None else None
        if world_size > 1:
            shares = gather_from_ranks((scoring.sums(), statistics), context)
            scoring.combine([sums for sums, _ in shares])
            statistics = None if statistics is None else combined_cache_statistics(
                [share for _, share in shares])
        result = dict(scoring.summary(), seconds=time.time() - start, episodes_here=here)
        if statistics is not None:
            result["feature_cache"] = statistics
        return result

    def _evaluate_batch(self, predictor: Callable, batch, device: torch.device, scoring,
                        observers: Sequence[Any], first_episode: int) -> None:
        host_image, host_supports = batch.query_image, batch.support_images
        image = host_image.to(device, non_blocking=True)
        supports = host_supports.to(device, non_blocking=True)  # (B, K, 3, H, W)
        # The feature cache's keys are hashed from the host batch while the copies run: hashing
        # the device tensors would bring them back to the host (a sync and ~2 ms per image).
        # The model passes x and s_x.flatten(0, 1) to its backbone.
        with keys_from_host(predictor, (image, host_image),
                            (supports.flatten(0, 1), host_supports.flatten(0, 1))), \
                autocast(device, self.amp):
            output = predictor(x=image, s_x=supports, s_y=batch.support_labels.to(device, non_blocking=True))
        target = self.scoring_target(batch.query_label, batch.raw_label).to(device)
        class_index = class_indices(batch)
        prediction = scoring.update(output, target, class_index)
        evaluated = EvaluatedBatch(first_episode, image, batch.query_label, host_supports,
                                   batch.support_labels, prediction, getattr(batch, "record", None),
                                   class_index)
        for observer in observers:
            observer.observe(evaluated)


def combined_cache_statistics(shares: Sequence[Dict]) -> Dict:
    """The feature-cache statistics of several processes' runs added up (hit rate recomputed)."""
    total = dict(shares[0])
    total.update({key: sum(share[key] for share in shares)
                  for key in ("hits", "misses", "evictions", "entries", "stored_mb")})
    lookups = total["hits"] + total["misses"]
    total["hit_rate"] = total["hits"] / lookups if lookups else 0.0
    total["stored_mb"] = round(total["stored_mb"], 1)
    return total


def format_result_table(result: Dict, class_ids: Sequence[int], title: str = "") -> str:
    """Markdown table: per-class IoU then mIoU, FB-IoU and pIoU."""
    lines = [f"### {title}" if title else "", "| class | IoU |", "|---|---|"]
    lines += [f"| {class_id} | {iou:.4f} |" for class_id, iou in zip(class_ids, result["class_IoU"])]
    lines += [f"| **mIoU** | {result['mIoU']:.4f} |", f"| FB-IoU | {result['FB_IoU']:.4f} |",
              f"| pIoU | {result['pIoU']:.4f} |", f"| episodes | {result['episodes']} |"]
    return "\n".join(line for line in lines if line != "" or title)


def format_cache_statistics(statistics: Dict) -> str:
    """One line on the backbone-feature cache of a run (its hit rate first)."""
    lookups = statistics["hits"] + statistics["misses"]
    return (f"feature cache: {statistics['hit_rate']:.1%} of {lookups} image lookups reused "
            f"({statistics['entries']} images kept, {statistics['stored_mb']} MiB, "
            f"{statistics['evictions']} evicted)")


def write_run_scalars(writer, run: Dict, class_ids: Sequence[int], step: int) -> None:
    """TensorBoard scalars of one run: mIoU, FB-IoU, pIoU and every class IoU."""
    for key in SUMMARY_KEYS:
        writer.add_scalar(f"test/{key}", run[key], step)
    for class_id, iou in zip(class_ids, run["class_IoU"]):
        writer.add_scalar(f"test/class_{class_id}_IoU", iou, step)


@contextlib.contextmanager
def inference_context(model):
    """``model`` in evaluation mode and without gradients inside the block; its previous mode
    (training or evaluation) is restored afterwards, whatever happens inside (as detectron2's
    ``inference_context``), so no caller has to remember ``model.train()``. A predictor without
    modes (a plain function) is only run without gradients."""
    training = getattr(model, "training", None)
    if training is not None:
        model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        if training is not None:
            model.train(training)


def few_shot_tables(result: Dict, class_ids: Sequence[int], title: str) -> str:
    """The result table of one run, one per named output of an ensemble model."""
    return "\n".join(format_result_table(output, class_ids, title=f"{title} ({name})" if name else title)
                     for name, output in result.get("outputs", {None: result}).items())


def run_seeds(protocol: EvaluationProtocol, predictor: Callable, loader, device: torch.device,
              class_ids: Sequence[int], title: str, first_run_observers: Sequence[Any] = (),
              writer=None, new_scoring: Optional[Callable[[], Any]] = None,
              table: Callable[[Dict, Sequence[int], str], str] = few_shot_tables,
              scalars: Callable[[Any, Dict, Sequence[int], int], None] = write_run_scalars) -> List[Dict]:
    """One run of ``protocol`` per seed, the plain and the generalised test alike: ``table``
    (result, class ids, title) printed for each, ``scalars`` (writer, run, class ids, seed) written
    to TensorBoard with a ``writer``; each run scored by a fresh ``new_scoring()`` (default: the
    few-shot scoring). Only the first run is seen by ``first_run_observers`` (recording, pictures)."""
    runs = []
    for seed in protocol.seeds:
        observers = first_run_observers if not runs else ()
        result = protocol.run(predictor, loader, device, seed, observers, progress=True,
                              scoring=new_scoring() if new_scoring is not None else None)
        runs.append(dict(result, seed=seed))
        print(table(runs[-1], class_ids, f"{title}, seed {seed}"), flush=True)
        if "feature_cache" in result:
            print(format_cache_statistics(result["feature_cache"]), flush=True)
        if writer is not None:
            scalars(writer, runs[-1], class_ids, seed)
    if writer is not None:
        writer.close()
    return runs


def summarise_runs(runs: List[Dict], keys: Sequence[str] = SUMMARY_KEYS) -> Tuple[Dict, str]:
    """Mean and standard deviation of ``keys`` over several seeds' runs, and their table (empty
    for one run)."""
    if len(runs) < 2:
        return {}, ""
    summary = {"mean": {key: statistics.mean(run[key] for run in runs) for key in keys},
               "std": {key: statistics.stdev(run[key] for run in runs) for key in keys}}
    headers = [key.replace("FB_IoU", "FB-IoU") for key in keys]
    lines = ["", "| seed | " + " | ".join(headers) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {run['seed']} | " + " | ".join(f"{run[key]:.4f}" for key in keys) + " |"
              for run in runs]
    lines.append("| mean ± std | " + " | ".join(
        f"{summary['mean'][key]:.4f} ± {summary['std'][key]:.4f}" for key in keys) + " |")
    return summary, "\n".join(lines)
