"""Run a trained SCCAN on your own images: K support images with their masks, then any number
of queries, each segmented at its own size.

    predictor = Predictor("config/toy/toy_split0_resnet50.yaml",
                          "exp/toy/SCCAN/split0/resnet50/snapshot/final_1shot.pth")
    predictor.set_support(["cat.jpg"], ["cat_mask.png"])      # paths or RGB arrays
    mask = predictor.predict("query.jpg")                     # (H, W) bool, the query's size
    mask, probability = predictor.predict(image, return_probability=True)

Inputs go through the evaluation protocol's own code (util/transform.py, as util/dataset.py's
validation path): the longer side resized to ``val_size`` (sides floored to multiples of 8, or
small images kept with ``resized_val: False``), placed top-left on a ``val_size`` square canvas,
ImageNet-normalised; supports are stacked in the dataset's order. The logits of the picture's
part of the canvas are then mapped back onto the original pixels (bilinear, the inverse of the
resize), so the mask has exactly the query's size. ``mapping="protocol"`` maps them as the
paper's scoring does instead (logits resized to the raw label padded to a square, util/
evaluation.py), which is off by up to a few pixels where the resize floored a side.

Support masks: 0 is background and any other value foreground; where a mask also holds other
values, 255 marks pixels to ignore (the VOC convention). A 0/255 mask is a plain binary mask.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from experiment.checkpoints import stored_config
from experiment.models import build_model
from model.checkpoint import check_state_dict, extract_state_dict, load_checkpoint
from model.constants import IGNORE_LABEL
from util.cli import UserError
from util.config import Config, load_config
from util.dataset import transform_supports
from util.image_files import colour_problem, file_problem, truncation_problem
from util.runtime import default_device
from util.transform import build_val_transform, validation_resize_shape

__all__ = ["Predictor", "PredictorError", "QueryFrame", "MAPPINGS", "load_checkpoint_model",
           "logits_to_original", "read_mask", "read_rgb", "read_supports", "support_label"]

MAPPINGS = ("exact", "protocol")
# Config keys that shape the network or its input: a checkpoint trained with other values still
# loads (they hold no tensors), but segments worse; the predictor says so.
INPUT_AND_MODEL_KEYS = ("val_size", "resized_val", "feature_size", "window_size", "zoom_factor",
                        "layers", "base_learner", "low_fea")

ImageSource = Union[str, os.PathLike, np.ndarray]


class PredictorError(UserError):
    """An input the predictor cannot use; the message names it and what was expected."""


# ------------------------------------------------------------------------------ reading inputs
def _is_path(source) -> bool:
    return isinstance(source, (str, os.PathLike))


def _read_file(path, what: str, flags: int) -> np.ndarray:
    # A cut-short download is named as such even where its first bytes are all that is left.
    truncated = truncation_problem(os.fspath(path)) if os.path.isfile(path) else None
    if truncated is not None:
        raise PredictorError(f"{what} {os.fspath(path)!r} is {truncated}")
    problem = file_problem(path)
    if problem is not None:
        raise PredictorError(f"{what} {os.fspath(path)!r} {problem}")
    image = cv2.imread(os.fspath(path), flags)
    if image is None:  # a signature OpenCV knows, a body it cannot decode
        raise PredictorError(f"{what} {os.fspath(path)!r} could not be decoded as an image")
    return image


def read_rgb(source: ImageSource, what: str = "image") -> np.ndarray:
    """An image file (any format OpenCV reads) or array -> float32 (H, W, 3) RGB on 0..255.
    Files are read as util/dataset.py reads them (8-bit colour, EXIF orientation applied).
    Arrays are RGB on the 0..255 scale: (H, W) or (H, W, 1) grey, (H, W, 3), or (H, W, 4) whose
    alpha is dropped."""
    if _is_path(source):
        return np.float32(cv2.cvtColor(_read_file(source, what, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    array = np.asarray(source)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[:, :, :3] if array.shape[2] != 1 else array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype == bool or min(array.shape[:2]) < 1:
        raise PredictorError(f"{what}: expected an RGB array (H, W, 3) (or grey (H, W)), got "
                             f"shape {array.shape} of {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and 0 < array.max() <= 1.0:
        raise PredictorError(f"{what}: a float array with values in [0, 1]; expected the 0..255 scale "
                             f"(multiply by 255)")
    return np.float32(array)


def read_mask(source: ImageSource, what: str = "mask") -> np.ndarray:
    """A mask file or array -> (H, W) integer array of its values. A mask must have one
    channel; a file saved with identical colour channels (grey stored as RGB) counts as one."""
    name = repr(os.fspath(source)) if _is_path(source) else "(array)"
    mask = _read_file(source, what, cv2.IMREAD_UNCHANGED) if _is_path(source) else np.asarray(source)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        problem = colour_problem(mask)
        if problem is not None:
            raise PredictorError(
                f"{what} {name} {problem}: expected a single-channel mask (0 = background, non-zero = "
                f"foreground, 255 = ignore), e.g. a greyscale PNG")
        mask = mask[:, :, 0]
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer) and not np.issubdtype(mask.dtype, np.floating):
        raise PredictorError(f"{what} {name}: expected a single-channel (H, W) mask, got shape "
                             f"{mask.shape} of {mask.dtype}")
    return mask


def support_label(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask values -> the episode label (uint8): 1 foreground, 0 background, 255 ignored.

    Any non-zero value is foreground; 255 marks ignored pixels only where the mask also holds
    other non-zero values (a {0, 1, 255} or {0, c, 255} label): a mask whose only non-zero
    value is 255 is a plain binary mask and 255 is its foreground."""
    mask = np.asarray(mask)
    nonzero = mask != 0
    ignored = mask == IGNORE_LABEL
    if not (nonzero & ~ignored).any():
        ignored = np.zeros_like(ignored)
    label = np.zeros(mask.shape, np.uint8)
    label[nonzero] = 1
    label[ignored] = IGNORE_LABEL
    return label


def read_supports(images: Sequence[ImageSource], masks: Sequence[ImageSource]
                  ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Read and check K support images and masks: (RGB float32 images, labels 0/1/255). Errors
    name the support, its files and what was expected (sizes that differ, a mask with several
    channels or without foreground, an unreadable file)."""
    images, masks = list(images), list(masks)
    if not images or len(images) != len(masks):
        raise PredictorError(f"the supports need as many masks as images (at least one), got "
                             f"{len(images)} images and {len(masks)} masks")
    pictures, labels = [], []
    for number, (image, mask) in enumerate(zip(images, masks), start=1):
        picture = read_rgb(image, f"support {number} image")
        raw = read_mask(mask, f"support {number} mask")
        where = (f"{os.fspath(image)!r} / {os.fspath(mask)!r}" if _is_path(image) and _is_path(mask)
                 else f"support {number}")
        if raw.shape[:2] != picture.shape[:2]:
            raise PredictorError(
                f"support {number}: image and mask sizes differ ({where}: image "
                f"{picture.shape[0]}x{picture.shape[1]}, mask {raw.shape[0]}x{raw.shape[1]}, "
                f"height x width)")
        label = support_label(raw)
        if not (label == 1).any():
            raise PredictorError(f"support {number} mask has no foreground pixel ({where}): mark "
                                 f"the object with non-zero values (0 is background)")
        pictures.append(picture)
        labels.append(label)
    return pictures, labels


# --------------------------------------------------------------------------- mapping outputs
@dataclass(frozen=True)
class QueryFrame:
    """Where a query sits in the network's input: ``original`` (H, W) of the picture, ``content``
    (h, w) of its resized copy in the top-left corner of the ``canvas`` x ``canvas`` input."""
    original: Tuple[int, int]
    content: Tuple[int, int]
    canvas: int


def logits_to_original(logits: torch.Tensor, frame: QueryFrame, mapping: str = "exact") -> torch.Tensor:
    """Network output (B, C, h, w) -> (B, C, H, W) on the query's original pixels.

    'exact': the output is brought to the input canvas if it is smaller (align_corners=True, as
    the model upsamples), the picture's part ``content`` is cut out and resized to (H, W) with
    half-pixel centres, the inverse of cv2.resize's mapping that made the input. 'protocol': the
    scoring of the evaluation protocol (ori_resize), the whole output resized to the square of
    side max(H, W) (align_corners=True) and its top-left (H, W) kept."""
    height, width = frame.original
    if mapping == "protocol":
        side = max(height, width)
        square = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=True)
        return square[..., :height, :width]
    if mapping != "exact":
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    if tuple(logits.shape[-2:]) != (frame.canvas, frame.canvas):
        logits = F.interpolate(logits, size=(frame.canvas, frame.canvas), mode="bilinear",
                               align_corners=True)
    content = logits[..., :frame.content[0], :frame.content[1]]  # (B, C, h, w)
    return F.interpolate(content, size=(height, width), mode="bilinear", align_corners=False)


def _logit(threshold: float) -> float:
    if not 0.0 < threshold < 1.0:
        raise PredictorError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    return math.log(threshold / (1.0 - threshold))


# ------------------------------------------------------------------------------- the predictor
def _as_config(config) -> Config:
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    return config


def _resolve_device(device) -> torch.device:
    if device is None:
        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictorError("device 'cuda' requested but PyTorch sees no CUDA GPU: use cpu")
    return device


def load_checkpoint_model(cfg: Config, checkpoint, log: Callable[[str], None] = print
                          ) -> Tuple[nn.Module, int]:
    """The config's model with the weights of ``checkpoint`` (a path to a training checkpoint or
    bare state_dict, ours or the original's, or such an object), and the shot it was trained
    with (the checkpoint's stored config, else the config's ``shot``)."""
    name = os.fspath(checkpoint) if _is_path(checkpoint) else "checkpoint"
    loaded = load_checkpoint(name) if _is_path(checkpoint) else checkpoint
    state = extract_state_dict(loaded, name)
    # Its values are used below (the shot as a number): a damaged one is refused, not guessed.
    saved = stored_config(loaded, name, INPUT_AND_MODEL_KEYS + ("shot",))
    model = build_model(cfg, backbone_from_checkpoint=True)
    check_state_dict(model, state, source=name)
    model.load_state_dict(state, strict=True)
    if saved is not None:
        differences = [f"{key} {saved[key]!r} (config: {cfg[key]!r})" for key in INPUT_AND_MODEL_KEYS
                       if key in saved and saved[key] != cfg[key]]
        if differences:
            log(f"note: {name} was trained with " + ", ".join(differences) +
                f"; predicting with the config's values ({cfg.config_file})")
    training_shot = int(saved["shot"]) if saved is not None and "shot" in saved else int(cfg.shot)
    return model, training_shot


class Predictor:
    """SCCAN on arbitrary images: set the supports once, then predict any number of queries.

    Args:
        config: a config file path or a loaded Config (its input size ``val_size`` /
            ``resized_val`` and model keys are used).
        checkpoint: a checkpoint path (a training checkpoint of train_sccan.py, a released one,
            an ensemble one with ``base_learner: True``, or a bare state_dict) or such an object.
        device: 'cpu', 'cuda', a torch.device, or None (a GPU when there is one).
        threshold: foreground where the foreground probability exceeds it (0.5: the argmax of
            the logits, as the evaluation scores).
        mapping: 'exact' or 'protocol' (see :func:`logits_to_original`).
        log: receives the notes (one line each; default print).
    """

    def __init__(self, config, checkpoint, device=None, threshold: float = 0.5,
                 mapping: str = "exact", log: Callable[[str], None] = print):
        cfg = _as_config(config)
        model, training_shot = load_checkpoint_model(cfg, checkpoint, log)
        self._setup(model, cfg, training_shot, device, threshold, mapping, log)

    @classmethod
    def from_model(cls, model: nn.Module, config, device=None, threshold: float = 0.5,
                   mapping: str = "exact", log: Callable[[str], None] = print) -> "Predictor":
        """A predictor around a model already built and loaded (trained in this process)."""
        predictor = cls.__new__(cls)
        cfg = _as_config(config)
        predictor._setup(model, cfg, int(cfg.shot), device, threshold, mapping, log)
        return predictor

    def _setup(self, model, cfg, training_shot, device, threshold, mapping, log) -> None:
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
        _logit(threshold)
        self.cfg = cfg
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.training_shot = training_shot
        self.threshold = threshold
        self.mapping = mapping
        self.log = log
        self.canvas = int(cfg.val_size)
        self.transform = build_val_transform(self.canvas, bool(cfg.resized_val))
        self.supports: Optional[dict] = None

    # ------------------------------------------------------------------------------ inputs
    def _frame(self, image: np.ndarray, what: str) -> QueryFrame:
        height, width = image.shape[:2]
        content = validation_resize_shape(height, width, self.canvas, bool(self.cfg.resized_val))
        if min(content) < 1:
            raise PredictorError(
                f"{what} is {height}x{width} (height x width): too elongated for the network input "
                f"of {self.canvas} px (its shorter side would shrink to less than 8 px)")
        return QueryFrame((height, width), content, self.canvas)

    def prepare_query(self, query: ImageSource) -> Tuple[torch.Tensor, QueryFrame]:
        """The network input (1, 3, S, S) of a query (path or RGB array) and where it sits."""
        image = read_rgb(query, "query")
        frame = self._frame(image, "query")
        x, _ = self.transform(image, np.zeros(image.shape[:2], np.uint8))
        # contiguous like the loader's collated batch: a permuted layout picks other convolution
        # kernels, whose rounding differs from the evaluation's (~1e-7)
        return x.unsqueeze(0).contiguous().to(self.device), frame

    def set_support(self, images: Sequence[ImageSource], masks: Sequence[ImageSource]) -> None:
        """Set the K supports (paths or RGB arrays) and their masks (paths or (H, W) arrays; any
        non-zero value is foreground, see :func:`support_label`). Their inputs and backbone
        features are computed here once, for every later :meth:`predict`."""
        pictures, labels = read_supports(images, masks)
        for number, picture in enumerate(pictures, start=1):
            self._frame(picture, f"support {number} image")
        self._check_shot(len(pictures))
        s_x, s_y = transform_supports(self.transform, pictures, labels)  # (K, 3, S, S), (K, S, S)
        s_x, s_y = s_x.unsqueeze(0).to(self.device), s_y.unsqueeze(0).to(self.device)
        with torch.no_grad():
            features = self.model.support_features(s_x)
        self.supports = dict(s_x=s_x, s_y=s_y, features=features,
                             images=[np.clip(p, 0, 255).astype(np.uint8) for p in pictures], labels=labels)

    def _check_shot(self, shot: int) -> None:
        if getattr(self.model, "learner_base", None) is not None and shot != self.model.shot:
            raise PredictorError(
                f"{shot} supports given, but this checkpoint's BAM ensemble weighs exactly "
                f"{self.model.shot} (its K-shot reweighting was built for {self.model.shot}-shot "
                f"episodes): give {self.model.shot} support(s)")
        if shot > self.training_shot:
            self.log(f"note: {shot} supports, but the checkpoint was trained with {self.training_shot}-shot "
                     f"episodes; the shots' masks, features, prototypes and prior masks are averaged, "
                     f"as in the paper's K-shot inference")

    # ----------------------------------------------------------------------------- outputs
    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output (1, 2, h, w) for a prepared query ``x`` (1, 3, S, S) and the
        current supports (the ensemble's final output with a base learner)."""
        if self.supports is None:
            raise PredictorError("no supports: call set_support(images, masks) before predict")
        return self.model(x=x, s_x=self.supports["s_x"], s_y=self.supports["s_y"],
                          support_features=self.supports["features"]).logits

    def predict(self, query: ImageSource, return_probability: bool = False,
                threshold: Optional[float] = None):
        """The foreground mask (H, W) bool of a query (path or RGB array) at its own size; with
        ``return_probability`` also the foreground probability (H, W) float32 in [0, 1] (the
        softmax of the two outputs; with a base learner, of BAM's merged scores)."""
        cut = _logit(self.threshold if threshold is None else threshold)  # refused before any work
        x, frame = self.prepare_query(query)
        mapped = logits_to_original(self.logits(x).float(), frame, self.mapping)[0]  # (2, H, W)
        difference = mapped[1] - mapped[0]  # (H, W)
        mask = (difference > cut).cpu().numpy()
        if not return_probability:
            return mask
        return mask, torch.sigmoid(difference).cpu().numpy().astype(np.float32)

    @property
    def support_pictures(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The current supports as (RGB uint8 image, label 0/1/255), for drawing."""
        if self.supports is None:
            return []
        return list(zip(self.supports["images"], self.supports["labels"]))
