"""Pictures of episodes: supports with their masks, the query with its ground truth and with
the prediction, side by side in the network's input frame."""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from util.transform import IMAGE_MEAN, IMAGE_STD

__all__ = ["save_visualisation", "VisualisationWriter"]

MEAN = np.array(IMAGE_MEAN)
STD = np.array(IMAGE_STD)


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
    panels = [_overlay(_denormalise(s), l.cpu().numpy(), (0, 200, 0))
              for s, l in zip(support_images, support_labels)]
    query = _denormalise(image)
    panels.append(_overlay(query, label.cpu().numpy(), (200, 0, 0)))
    panels.append(_overlay(query, prediction.cpu().numpy(), (0, 0, 220)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, np.concatenate(panels, axis=1)):
        raise OSError(f"could not write {path}")


class VisualisationWriter:
    """Evaluation observer: one ``episode_<n>.png`` panel per episode in ``folder``."""

    def __init__(self, folder: str):
        self.folder = folder

    def start(self) -> None:
        os.makedirs(self.folder, exist_ok=True)

    def observe(self, batch) -> None:
        for sample in range(batch.image.shape[0]):
            save_visualisation(os.path.join(self.folder, f"episode_{batch.first_episode + sample:05d}.png"),
                               batch.image[sample], batch.label[sample], batch.support_images[sample],
                               batch.support_labels[sample], batch.input_prediction[sample])
