"""evaluation/predictor.py: reading and checking inputs, the mapping back to the original pixels,
output geometry, equality with the evaluation pipeline, K-shot notes and ensemble checkpoints.
(A trained model's masks against the toy ground truth: test_predictor_trained.py.)"""
import copy
import json
import os
import random
import warnings

import cv2
import numpy as np
import pytest
import torch

import evaluation.metrics
from evaluation.episodes import RecordingDataset
from evaluation.predictor import (Predictor, PredictorError, QueryFrame, logits_to_original, read_mask,
                                  read_rgb, support_label)
from evaluation.protocol import EvaluationProtocol
from experiment.build import build_dataset, build_val_loader
from experiment.models import build_model
from tests.support.cuda import cuda_device, cuda_test, strict_fp32
from tests.support.toy_experiment import CONFIG, toy_opts
from util.config import load_config
from util.dataset import binarize_label, read_label
from util.transform import test_Resize, validation_resize_shape


@pytest.fixture(scope="module")
def tiny(toy_data_root, tmp_path_factory):
    """The toy config at the tests' tiny size (val_size 33, 8x8 grid) and a seeded random model."""
    folder = tmp_path_factory.mktemp("predictor")
    cfg = load_config(CONFIG, toy_opts(toy_data_root, str(folder / "exp"), list_root=str(folder / "fss")))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's warning
        model = build_model(cfg).eval()
    return dict(cfg=cfg, model=model, folder=folder, root=toy_data_root)


def _episode_files(root, number):
    image = os.path.join(root, "JPEGImages", f"toy_{number:06d}.jpg")
    return image, os.path.join(root, "SegmentationClassAug", f"toy_{number:06d}.png")


# ----------------------------------------------------------------------------------- inputs
def test_support_label_reads_non_zero_as_foreground_and_255_as_ignore_beside_other_values():
    assert support_label(np.array([[0, 1, 255]])).tolist() == [[0, 1, 255]]
    assert support_label(np.array([[0, 7, 255]])).tolist() == [[0, 1, 255]]
    assert support_label(np.array([[0, 255, 255]])).tolist() == [[0, 1, 1]]  # a plain 0/255 mask
    assert support_label(np.array([[0, 3, 200]])).tolist() == [[0, 1, 1]]


def test_read_rgb_and_read_mask_accept_arrays_and_files(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, rgb[:, :, ::-1])
    assert np.array_equal(read_rgb(path), rgb.astype(np.float32))  # files are BGR on disk, RGB here
    assert read_rgb(rgb[:, :, 0]).shape == (5, 7, 3)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(read_rgb(rgba), rgb.astype(np.float32))
    grey_as_rgb = np.repeat(rgb[:, :, :1], 3, axis=2)
    assert np.array_equal(read_mask(grey_as_rgb), rgb[:, :, 0])
    with pytest.raises(PredictorError, match="0..255 scale"):
        read_rgb(rgb / 255.0, "query")
    with pytest.raises(PredictorError, match="channels with different values"):
        read_mask(rgb, "support 1 mask")
    with pytest.raises(PredictorError, match="does not exist"):
        read_rgb(str(tmp_path / "missing.jpg"), "query")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(PredictorError, match="not an image file"):
        read_rgb(str(tmp_path / "text.jpg"), "query")
    cv2.imwrite(str(tmp_path / "photo.jpg"), np.random.default_rng(1).integers(0, 255, (40, 60, 3), np.uint8))
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "photo.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(PredictorError, match="query .*photo.jpg' is a truncated JPEG"):
        read_rgb(str(tmp_path / "photo.jpg"), "query")


# ------------------------------------------------------------------------------ the mapping
def _boundary_band(mask, radius):
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)


def _rectangle_round_trip(height, width, canvas, mapping):
    """A rectangle label sent through the validation resize, its canvas label read as logits
    and mapped back: the pixels that disagree with the rectangle."""
    rectangle = np.zeros((height, width), np.uint8)
    rectangle[int(0.2 * height):int(0.7 * height) + 1, int(0.3 * width):int(0.9 * width) + 1] = 1
    _, canvas_label = test_Resize(canvas)(np.zeros((height, width, 3), np.float32), rectangle)
    canvas_label = torch.from_numpy(canvas_label)
    logits = torch.stack([(canvas_label == 0).float(), (canvas_label == 1).float()]).unsqueeze(0)
    frame = QueryFrame((height, width), validation_resize_shape(height, width, canvas), canvas)
    mapped = logits_to_original(logits, frame, mapping)[0]
    assert mapped.shape == (2, height, width)
    return ((mapped[1] > mapped[0]).numpy() != rectangle.astype(bool)), rectangle


@pytest.mark.parametrize("height,width", [(500, 300), (300, 500), (131, 77), (40, 40), (7, 5), (473, 473)])
def test_exact_mapping_puts_a_rectangle_back_on_its_pixels(height, width):
    wrong, rectangle = _rectangle_round_trip(height, width, 473, "exact")
    # Nearest-neighbour resizing of the label moves its edges by up to one canvas pixel.
    assert not (wrong & ~_boundary_band(rectangle, 2)).any()


def test_protocol_mapping_is_off_where_the_resize_floored_a_side():
    """The paper's scoring maps the canvas to a square of the longer side: where the shorter
    side was floored to a multiple of 8 (300 * 473 / 500 = 283.8 -> 280 px), it lands pixels
    away, which the exact mapping avoids (and this test would notice in it)."""
    wrong, rectangle = _rectangle_round_trip(500, 300, 473, "protocol")
    assert (wrong & ~_boundary_band(rectangle, 2)).sum() > 100


def test_exact_mapping_of_a_smaller_output_inverts_the_resize_on_a_ramp():
    """An output smaller than the canvas (zoom_factor < 8) is first brought to the canvas with
    align_corners=True, then the picture's part is resized with half-pixel centres. A ramp
    (each value its column's coordinate) makes both steps visible: the first maps ramp values
    k * (S - 1) / (w - 1) onto the canvas columns exactly, the second puts original column j at
    content coordinate (j + 0.5) * cw / W - 0.5, clamped to the content (a formula written here,
    not the code's)."""
    canvas, small, (height, width), content = 65, 9, (20, 30), (40, 64)
    ramp = torch.arange(small, dtype=torch.float64) * (canvas - 1) / (small - 1)
    logits = ramp.view(1, 1, 1, small).expand(1, 1, small, small).contiguous()
    mapped = logits_to_original(logits, QueryFrame((height, width), content, canvas), "exact")
    assert mapped.shape == (1, 1, height, width)
    columns = np.clip((np.arange(width) + 0.5) * content[1] / width - 0.5, 0, content[1] - 1)
    np.testing.assert_allclose(mapped[0, 0].numpy(), np.broadcast_to(columns, (height, width)), atol=1e-9)
    # the same along the rows, with the transposed ramp
    mapped = logits_to_original(logits.transpose(-2, -1), QueryFrame((height, width), content, canvas), "exact")
    rows = np.clip((np.arange(height) + 0.5) * content[0] / height - 0.5, 0, content[0] - 1)
    np.testing.assert_allclose(mapped[0, 0].numpy(), np.broadcast_to(rows[:, None], (height, width)), atol=1e-9)
    with pytest.raises(ValueError, match=r"^mapping must be one of \('exact', 'protocol'\), got 'nearest'$"):
        logits_to_original(logits, QueryFrame((height, width), content, canvas), "nearest")


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("height,width", [(37, 53), (64, 48), (120, 41), (41, 120), (65, 65), (200, 131),
                                          (3, 5), (2, 2), (1, 1)],
                         ids=["odd", "even", "portrait", "landscape", "canvas", "large", "tiny", "2px", "1px"])
def test_output_has_the_query_size_and_probabilities_in_unit_range(tiny, height, width):
    predictor = Predictor.from_model(tiny["model"], tiny["cfg"], device="cpu")
    image, label = _episode_files(tiny["root"], 245)
    predictor.set_support([image], [label])
    query = np.random.default_rng(height * 1000 + width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    mask, probability = predictor.predict(query, return_probability=True)
    assert mask.shape == probability.shape == (height, width)
    assert mask.dtype == bool and probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    assert (mask <= (probability >= 0.5)).all() and (~mask <= (probability <= 0.5)).all()
    assert np.array_equal(predictor.predict(query), mask)


def test_a_too_elongated_query_is_a_clear_error(tiny):
    predictor = Predictor.from_model(tiny["model"], tiny["cfg"], device="cpu")
    with pytest.raises(PredictorError, match=r"^query is 2x200 \(height x width\): too elongated for the network "
                                             r"input of 33 px"):
        predictor.prepare_query(np.zeros((2, 200, 3), np.uint8))
    with pytest.raises(PredictorError, match=r"^query: expected an RGB array \(H, W, 3\)"):
        predictor.prepare_query(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(PredictorError, match="call set_support"):
        predictor.predict(np.zeros((20, 20, 3), np.uint8))


def test_the_threshold_is_strict_and_a_call_s_threshold_overrides_the_predictor_s(tiny):
    predictor = Predictor.from_model(tiny["model"], tiny["cfg"], device="cpu", threshold=0.5)
    image, label = _episode_files(tiny["root"], 245)
    predictor.set_support([image], [label])
    query = np.random.default_rng(7).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for threshold in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(PredictorError, match=rf"^threshold must lie strictly between 0 and 1, got {threshold}$"):
            predictor.predict(query, threshold=threshold)
    _, probability = predictor.predict(query, return_probability=True)
    low, high = np.quantile(probability, [0.3, 0.7])  # the random model's probabilities lie near 0.5
    strict = Predictor.from_model(tiny["model"], tiny["cfg"], device="cpu", threshold=float(high))
    strict.set_support([image], [label])
    assert np.array_equal(strict.predict(query), probability > high)
    overridden = strict.predict(query, threshold=float(low))
    assert np.array_equal(overridden, probability > low) and overridden.sum() > (probability > high).sum()
    # "above the threshold": equal logits (probability exactly 0.5) are background at 0.5
    predictor.logits = lambda x: torch.zeros(x.shape[0], 2, x.shape[-2], x.shape[-1])
    mask, probability = predictor.predict(query, return_probability=True)
    assert (probability == 0.5).all() and not mask.any()


def test_the_query_frame_follows_the_config_s_resized_val(tiny):
    """resized_val: True scales every query to the tiny canvas (val_size 33: 30 -> 33, floored to
    32; 20 * 33 / 30 = 22 -> 16); False keeps a query that fits the canvas at its size, down to
    1 px."""
    kept = copy.deepcopy(tiny["cfg"])
    kept.resized_val = False
    query = np.zeros((20, 30, 3), np.uint8)
    assert Predictor.from_model(tiny["model"], tiny["cfg"], device="cpu").prepare_query(query)[1].content == (16, 32)
    predictor = Predictor.from_model(tiny["model"], kept, device="cpu")
    assert predictor.prepare_query(query)[1].content == (20, 30)
    assert predictor.prepare_query(np.zeros((1, 5, 3), np.uint8))[1].content == (1, 5)


# ------------------------------------------------------------ the evaluation pipeline
def test_predictor_equals_the_evaluation_pipeline_on_the_same_episodes(tiny, monkeypatch):
    """The same episodes through evaluation/protocol.py and through the predictor (files and
    binarised labels as a user would give them): same input tensors, same logits, the same mask
    in the input frame and, with mapping='protocol', the very mask the protocol scores."""
    cfg, model = tiny["cfg"], copy.deepcopy(tiny["model"])
    dataset = RecordingDataset(build_dataset(cfg, "val", show_progress=False))
    loader = build_val_loader(cfg, dataset, workers=0)
    # The random model's foreground logit sits far from the background one; moving its bias to
    # the median difference of one episode gives masks with both classes, so that the
    # comparison below is not between two empty masks.
    random.seed(0)
    episode = dataset[0]
    with torch.no_grad():
        logits = model(x=episode.query_image[None], s_x=episode.support_images[None],
                       s_y=episode.support_labels[None]).logits
        model.cls_meta[-1].bias[1] -= (logits[0, 1] - logits[0, 0]).median()
    seen, scored, outputs = [], [], []
    original_update = evaluation.metrics.FewShotMeter.update
    monkeypatch.setattr(evaluation.metrics.FewShotMeter, "update", lambda meter, prediction, target, class_index:
                        scored.append((prediction.clone(), target.clone()))
                        or original_update(meter, prediction, target, class_index))

    def recording_model(x, s_x, s_y):
        outputs.append(model(x=x, s_x=s_x, s_y=s_y).logits)
        return outputs[-1]

    class Observer:
        def start(self):
            pass

        def observe(self, batch):
            seen.append(batch)

    protocol = EvaluationProtocol.from_config(cfg, 5, test_num=4)
    protocol.run(recording_model, loader, torch.device("cpu"), seed=321, observers=[Observer()])
    assert len(seen) == len(scored) == 4
    exact = Predictor.from_model(model, cfg, device="cpu")
    scoring = Predictor.from_model(model, cfg, device="cpu", mapping="protocol")
    non_trivial = 0
    for batch, (scored_prediction, target), logits in zip(seen, scored, outputs):
        episode = json.loads(batch.records[0])
        masks = [binarize_label(read_label(label), episode["class_chosen"]) for _, label in episode["supports"]]
        for predictor in (exact, scoring):
            predictor.set_support([image for image, _ in episode["supports"]], masks)
            assert torch.equal(predictor.supports["s_x"], batch.support_images)
            assert torch.equal(predictor.supports["s_y"], batch.support_labels)
        x, frame = exact.prepare_query(episode["query"][0])
        assert torch.equal(x, batch.image)
        assert torch.equal(exact.logits(x), logits)
        assert torch.equal(exact.logits(x).argmax(1)[0], batch.input_prediction[0])
        height, width = frame.original
        protocol_mask = scoring.predict(episode["query"][0])
        assert np.array_equal(protocol_mask, scored_prediction[0, :height, :width].numpy() == 1)
        assert exact.predict(episode["query"][0]).shape == (height, width)
        non_trivial += 0 < protocol_mask.mean() < 1
    assert non_trivial >= 2, "the random model's masks are all empty or full: the comparison is vacuous"


# ------------------------------------------------------------------------- shots, ensemble
def test_more_supports_than_the_training_shot_are_averaged_with_a_note(tiny):
    notes = []
    predictor = Predictor.from_model(tiny["model"], tiny["cfg"], device="cpu", log=notes.append)
    first, second = _episode_files(tiny["root"], 245), _episode_files(tiny["root"], 290)
    predictor.set_support([first[0]], [first[1]])
    assert notes == []
    predictor.set_support([first[0], second[0]], [first[1], second[1]])
    assert len(notes) == 1 and "averaged" in notes[0] and "1-shot" in notes[0]
    assert predictor.supports["s_x"].shape[:2] == (1, 2)
    assert predictor.predict(first[0]).shape == (289, 206)


def test_an_ensemble_checkpoint_runs_without_the_base_learner_file(tiny, tmp_path):
    """A full checkpoint of SCCAN with BAM's base learner holds learner_base: the predictor
    needs no initmodel/PSPNet file, and its K-shot reweighting fixes the number of supports."""
    cfg = load_config(CONFIG, toy_opts(tiny["root"], str(tmp_path / "exp"), base_learner=True,
                                       base_learner_weights=str(tmp_path / "absent.pth")))
    torch.manual_seed(0)
    model = build_model(cfg, backbone_from_checkpoint=True).eval()
    with torch.no_grad():
        # The merge starts as the meta learner alone (weights [1, 0]): weights as a training
        # leaves them give the base learner's map and the scene difference their share, so that
        # the comparison below covers learner_base, gram_merge and cls_merge too. The random
        # meta logits (within +-0.02) are spread so that the meta learner's own probabilities
        # differ clearly from the ensemble's.
        model.gram_merge.weight.copy_(torch.tensor([1.0, -0.3]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, 0.8]).view(1, 2, 1, 1))
        model.cls_meta[-1].weight.mul_(100)
        model.cls_meta[-1].bias.mul_(100)
    state = model.state_dict()
    assert any(key.startswith("learner_base.") for key in state)
    path = str(tmp_path / "ensemble.pth")
    torch.save({"epoch": 1, "state_dict": state}, path)
    predictor = Predictor(cfg, path, device="cpu")  # built anew: every tensor comes from the file
    image, label = _episode_files(tiny["root"], 245)
    predictor.set_support([image], [label])
    mask, probability = predictor.predict(image, return_probability=True)
    assert mask.shape == probability.shape == (289, 206)
    # The same episode through the model the checkpoint was saved from, in one ensemble_outputs
    # call (no reused support features): the probability is the softmax of BAM's final output
    # mapped onto the query's pixels, not the meta learner's alone.
    x, frame = predictor.prepare_query(image)
    with torch.no_grad():
        outputs = model.ensemble_outputs(x, predictor.supports["s_x"], predictor.supports["s_y"])
    final, meta = (torch.softmax(logits_to_original(output, frame), dim=1)[0, 1].numpy()
                   for output in (outputs.final, outputs.meta))
    assert np.abs(probability - final).max() < 1e-6  # float32 rounding: ~6e-8
    assert np.abs(probability - meta).max() > 0.05
    clear = np.abs(final - 0.5) > 1e-5
    assert np.array_equal(mask[clear], final[clear] > 0.5)
    with pytest.raises(PredictorError, match="weighs exactly 1"):
        predictor.set_support([image, image], [label, label])


@cuda_test
@strict_fp32()  # TF32 products would differ from the CPU's fp32 by more than the bounds below
def test_a_gpu_predicts_what_the_cpu_predicts(tiny):
    image, label = _episode_files(tiny["root"], 245)
    query = _episode_files(tiny["root"], 231)[0]
    results = []
    for device in ("cpu", cuda_device().type):
        predictor = Predictor.from_model(copy.deepcopy(tiny["model"]), tiny["cfg"], device=device)
        predictor.set_support([image], [label])
        results.append(predictor.predict(query, return_probability=True))
    (cpu_mask, cpu_probability), (gpu_mask, gpu_probability) = results
    assert np.abs(cpu_probability - gpu_probability).max() < 1e-3
    assert (cpu_mask == gpu_mask).mean() > 0.999
