"""The one evaluator used by in-training validation and test_sccan.py (the original's test.py
protocol, described in docs/PROTOCOL.md section 1).

Protocol: reseed (torch, numpy, random) to ``seed`` (321), then iterate the validation loader in
passes, a new iterator each pass (so workers are re-seeded like the original), until
``test_num`` episodes are done; passes = ceil(test_num / (len(loader) - batch_size)).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from util.metrics import FewShotMeter, pad_to_square
from util.transform import IMAGE_MEAN, IMAGE_STD
from util.runtime import set_seed

MEAN = np.array(IMAGE_MEAN)
STD = np.array(IMAGE_STD)


def evaluation_passes(test_num: int, loader_length: int, batch_size: int = 1) -> int:
    """Number of loader passes of the original test loop."""
    if loader_length - batch_size <= 0:
        raise ValueError(f"the validation loader has {loader_length} batches of {batch_size}: "
                         f"too few episodes for the protocol (needs more than one batch)")
    return math.ceil(test_num / (loader_length - batch_size))


class RecordingDataset(Dataset):
    """Wraps an episode dataset so that each item also carries its episode as a JSON string
    (query, class, supports): the evaluator can then dump the exact list of episodes."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        episode = self.dataset.sample_episode(index)
        return (*self.dataset.load_episode(**episode), json.dumps(_jsonable(episode)))


class ReplayDataset(Dataset):
    """Serves a fixed list of episodes (from ``--dump-episodes``) in order, without drawing."""

    def __init__(self, dataset, episodes: Sequence[dict]):
        self.dataset = dataset
        self.episodes = list(episodes)

    def __len__(self):
        return len(self.episodes)

    def __getitem__(self, index):
        episode = self.episodes[index]
        return (*self.dataset.load_episode(**episode), json.dumps(_jsonable(episode)))


def _jsonable(episode: dict) -> dict:
    return {"query": list(episode["query"]), "class_chosen": int(episode["class_chosen"]),
            "supports": [list(pair) for pair in episode["supports"]]}


def load_episodes(path: str) -> List[dict]:
    """Read an episode file written by ``--dump-episodes`` (JSON)."""
    with open(path) as handle:
        content = json.load(handle)
    episodes = content["episodes"] if isinstance(content, dict) else content
    for number, episode in enumerate(episodes):
        missing = {"query", "class_chosen", "supports"} - set(episode)
        if missing:
            raise ValueError(f"{path}: episode {number} lacks {sorted(missing)}")
        episode["query"] = tuple(episode["query"])
        episode["supports"] = [tuple(pair) for pair in episode["supports"]]
    return episodes


def save_episodes(path: str, episodes: Sequence[dict], meta: Optional[dict] = None) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump({"meta": meta or {}, "episodes": [_jsonable(e) for e in episodes]}, handle,
                  indent=1)
    os.replace(temporary, path)


def _denormalise(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised RGB tensor -> (H, W, 3) uint8 BGR for cv2."""
    array = image.detach().cpu().numpy().transpose(1, 2, 0) * STD + MEAN
    return np.clip(array, 0, 255).astype(np.uint8)[:, :, ::-1]


def _overlay(image_bgr: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    out = image_bgr.astype(np.float32).copy()
    foreground = mask == 1
    out[foreground] = 0.5 * out[foreground] + 0.5 * np.array(colour, dtype=np.float32)
    out[mask == 255] = 0.7 * out[mask == 255] + 0.3 * 255
    return out.astype(np.uint8)


def save_visualisation(path: str, image, label, support_images, support_labels, prediction) -> None:
    """One PNG panel: supports with their masks (green), query with ground truth (blue), query
    with prediction (red); all in the network's input frame."""
    import cv2
    panels = [_overlay(_denormalise(s), l.cpu().numpy(), (0, 200, 0))
              for s, l in zip(support_images, support_labels)]
    query = _denormalise(image)
    panels.append(_overlay(query, label.cpu().numpy(), (200, 0, 0)))
    panels.append(_overlay(query, prediction.cpu().numpy(), (0, 0, 220)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, np.concatenate(panels, axis=1)):
        raise OSError(f"could not write {path}")


@torch.no_grad()
def evaluate(model: Callable, loader: DataLoader, *, test_num: int, num_test_classes: int,
             device: torch.device, seed: Optional[int] = 321, seed_deterministic: bool = False,
             ori_resize: bool = True, hsnet_resize: bool = False, ignore_label: int = 255,
             record: Optional[list] = None,
             visualisation_dir: Optional[str] = None, progress: bool = False,
             log: Callable[[str], None] = None) -> Dict:
    """Run the few-shot evaluation protocol and return the metric summary.

    ``model(x=..., s_x=..., s_y=...)`` must return logits (B, 2, h, w). Batches are the
    validation tuples (image, label, s_x, s_y, subcls, raw_label[, episode_json]).
    ``record``: a list the episodes are appended to (needs a :class:`RecordingDataset` or
    :class:`ReplayDataset`). ``ignore_label``: target pixels scored as nothing (the config's
    ``ignore_label``; also the value the ori_resize target is padded with). Returns dict(mIoU, FB_IoU, pIoU, class_IoU, accuracy, episodes,
    seconds).
    """
    if seed is not None:
        set_seed(seed, seed_deterministic)
    if hasattr(model, "eval"):
        model.eval()
    meter = FewShotMeter(num_test_classes, ignore_index=ignore_label)
    batch_size = loader.batch_size or 1
    passes = evaluation_passes(test_num, len(loader), batch_size)
    done = 0
    start = time.time()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=test_num, desc="eval", leave=False, dynamic_ncols=True)
    for _ in range(passes):
        for batch in loader:  # a fresh iterator each pass, as the original
            if done >= test_num:
                break
            image, label, support_images, support_labels, subcls, raw_label = batch[:6]
            if record is not None:
                if len(batch) < 7:
                    raise ValueError("recording episodes needs a RecordingDataset/ReplayDataset")
                record.extend(json.loads(item) for item in batch[6])
            image = image.to(device, non_blocking=True)
            support_images = support_images.to(device, non_blocking=True)
            support_labels = support_labels.to(device, non_blocking=True)
            if hsnet_resize:
                target = raw_label.long()
            elif ori_resize:
                target = pad_to_square(raw_label.long(), ignore_label)
            else:
                target = label.long()
            target = target.to(device)
            logits = model(x=image, s_x=support_images, s_y=support_labels)
            input_prediction = logits.argmax(1)
            logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear",
                                   align_corners=True)
            prediction = logits.argmax(1)
            meter.update(prediction, target, subcls[0] if isinstance(subcls, (list, tuple)) else subcls)
            if visualisation_dir:
                for sample in range(image.shape[0]):
                    save_visualisation(os.path.join(visualisation_dir, f"episode_{done + sample:05d}.png"),
                                       image[sample], label[sample], support_images[sample],
                                       support_labels[sample], input_prediction[sample])
            done += image.shape[0]
            if bar is not None:
                bar.update(image.shape[0])
    if bar is not None:
        bar.close()
    result = meter.summary()
    result["seconds"] = time.time() - start
    if log is not None:
        log(f"evaluated {result['episodes']} episodes in {result['seconds']:.1f}s: "
            f"mIoU {result['mIoU']:.4f} FB-IoU {result['FB_IoU']:.4f} pIoU {result['pIoU']:.4f}")
    return result


def format_result_table(result: Dict, class_ids: Sequence[int], title: str = "") -> str:
    """Markdown table: per-class IoU then mIoU, FB-IoU and pIoU."""
    lines = [f"### {title}" if title else "", "| class | IoU |", "|---|---|"]
    lines += [f"| {class_id} | {iou:.4f} |" for class_id, iou in zip(class_ids, result["class_IoU"])]
    lines += [f"| **mIoU** | {result['mIoU']:.4f} |", f"| FB-IoU | {result['FB_IoU']:.4f} |",
              f"| pIoU | {result['pIoU']:.4f} |", f"| episodes | {result['episodes']} |"]
    return "\n".join(line for line in lines if line != "" or title)
