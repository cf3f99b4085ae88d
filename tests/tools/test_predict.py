"""python -m tools.predict: the files it writes, its summary lines, and every input mistake as
one line ``error: ...`` with exit status 2."""
import os
import shutil
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

from evaluation.predictor import Predictor
from experiment.models import build_model
from tests.support import REPOSITORY_ROOT
from tests.support.toy_experiment import CONFIG
from tools import predict
from util.cli import run_entry_point
from util.config import load_config

# The tests' tiny input size; the checkpoints below are built with it.
TINY = ["val_size", "65", "feature_size", "8"]


@pytest.fixture(scope="module")
def files(toy_data_root, tmp_path_factory):
    """A random-weight ResNet-50 checkpoint that records its config (as train_sccan.py's do),
    a ResNet-101 one, a support with its mask, and query images of several sizes."""
    folder = tmp_path_factory.mktemp("predict")
    cfg = load_config(CONFIG, TINY)
    paths = {}
    paths["support"] = os.path.join(toy_data_root, "JPEGImages", "toy_000245.jpg")
    paths["mask"] = os.path.join(toy_data_root, "SegmentationClassAug", "toy_000245.png")  # {0, 2, 255}
    queries = folder / "queries"
    queries.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in [("odd", (37, 53)), ("portrait", (90, 41)), ("tiny", (4, 3))]:
        cv2.imwrite(str(queries / f"{name}.png"), rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    (queries / "notes.txt").write_text("not an image: skipped")
    paths["queries"] = str(queries)
    paths["folder"] = folder
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, backbone_from_checkpoint=True)
    _spread_the_probabilities(model, cfg, paths["support"], paths["mask"], str(queries / "odd.png"))
    paths["weight"] = str(folder / "sccan.pth")
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "config": cfg.to_dict()}, paths["weight"])
    deep = build_model(load_config(CONFIG, TINY + ["layers", "101"]), backbone_from_checkpoint=True)
    paths["weight101"] = str(folder / "sccan101.pth")
    torch.save({"epoch": 1, "state_dict": deep.state_dict()}, paths["weight101"])
    return paths


def _spread_the_probabilities(model, cfg, support, mask, query):
    """The random model's foreground probabilities all lie within 0.50-0.52, so its masks would
    be full (or empty) at any threshold but one in that range. Its last layer is scaled and its
    foreground bias shifted so that on ``query`` the logit difference has median 0 and 90% of its
    pixels within +-2 (probabilities 0.12-0.88), as tests/evaluation/test_predictor.py shifts it."""
    predictor = Predictor.from_model(model, cfg, device="cpu", log=lambda line: None)
    predictor.set_support([support], [mask])
    x, frame = predictor.prepare_query(query)
    logits = predictor.logits(x)[0, :, :frame.content[0], :frame.content[1]]  # the picture's part
    difference = (logits[1] - logits[0]).flatten()
    centre = difference.median()
    scale = 2.0 / (difference - centre).abs().quantile(0.9)
    with torch.no_grad():
        last = model.cls_meta[-1]
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        last.bias[1] -= scale * centre


def _arguments(files, out, *extra, support=None, weight=None):
    support = support or f"{files['support']}:{files['mask']}"
    return ["--config", CONFIG, "--weight", weight or files["weight"], "--support", support,
            "--out", str(out), "--device", "cpu", *extra, "--opts", *TINY]


def _mask_follows_the_probability(mask, probability, threshold):
    """mask == (probability > threshold) both ways, up to the rounding of the 8-bit probability
    file (probability x 255 rounded: foreground pixels hold more than threshold x 255 - 0.5,
    background ones at most threshold x 255 + 0.5)."""
    foreground = mask == 255
    assert set(np.unique(mask)) <= {0, 255}
    assert (probability[foreground] > threshold * 255 - 0.5).all()
    assert (probability[~foreground] <= threshold * 255 + 0.5).all()


def test_the_cli_writes_masks_overlays_and_probabilities(files, tmp_path, capsys):
    out = tmp_path / "out"
    single = os.path.join(files["queries"], "odd.png")
    results = predict.main(_arguments(files, out, "--query", files["queries"], single, "--save-prob",
                                      "--threshold", "0.4"))
    assert [os.path.basename(r["query"]) for r in results] == ["odd.png", "portrait.png", "tiny.png", "odd.png"]
    printed = capsys.readouterr().out.splitlines()
    assert len([line for line in printed if "foreground" in line]) == 4
    names = sorted(os.listdir(out))
    assert "odd_2_mask.png" in names  # the same file twice: numbered, not overwritten
    for result in results:
        query = cv2.imread(result["query"])
        mask = cv2.imread(result["files"]["mask"], cv2.IMREAD_UNCHANGED)
        probability = cv2.imread(result["files"]["prob"], cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(result["files"]["overlay"])
        assert mask.shape == probability.shape == query.shape[:2]
        assert np.isclose((mask == 255).mean(), result["foreground"])
        assert f"foreground {result['foreground']:.1%}" in "\n".join(printed)
        _mask_follows_the_probability(mask, probability, 0.4)
        assert overlay is not None and overlay.shape[0] >= 320
    assert not any(name.endswith(".partial") for name in names)
    # Masks with both classes (else the checks above hold for any threshold), and between 0.4
    # and 0.6 pixels that a higher threshold turns to background.
    low_mask = cv2.imread(results[0]["files"]["mask"], cv2.IMREAD_UNCHANGED)
    low_probability = cv2.imread(results[0]["files"]["prob"], cv2.IMREAD_UNCHANGED)
    assert all(0.05 < result["foreground"] < 0.95 for result in results[:2]), results
    assert ((low_probability > 0.4 * 255 + 1) & (low_probability < 0.6 * 255 - 1)).mean() > 0.05

    high = predict.main(_arguments(files, tmp_path / "high", "--query", single, "--save-prob",
                                   "--threshold", "0.6"))
    assert capsys.readouterr().out.count("foreground") == 1
    high_mask = cv2.imread(high[0]["files"]["mask"], cv2.IMREAD_UNCHANGED)
    high_probability = cv2.imread(high[0]["files"]["prob"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(high_probability, low_probability)  # the threshold only cuts the mask
    _mask_follows_the_probability(high_mask, high_probability, 0.6)
    assert not (high_mask > low_mask).any() and 0 < high[0]["foreground"] < results[0]["foreground"] - 0.05


def test_a_threshold_outside_the_open_unit_interval(files, tmp_path, capsys):
    """1 itself is refused (every pixel would be background), and NaN, before the model is built
    (the checkpoint is not even looked at)."""
    for value in ("1", "nan"):
        message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"], "--threshold",
                                            value, weight=str(tmp_path / "none.pth")))
        assert message == (f"error: --threshold {float(value):g}: expected a probability strictly between 0 "
                           f"and 1 (0.5 is the argmax)")
    assert not (tmp_path / "o").exists()


def test_out_must_be_a_folder_that_can_be_written(files, tmp_path, capsys):
    """Refused before the checkpoint is read (here it does not exist)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    for out, expected in ((a_file, f"error: --out {a_file}: is a file, not a folder; give a folder path"),
                          (a_file / "o", f"error: --out {a_file / 'o'}: {a_file} is a file, not a folder")):
        message = _error(capsys, _arguments(files, out, "--query", files["queries"],
                                            weight=str(tmp_path / "none.pth")))
        assert message == expected
    assert a_file.read_text() == "kept"


def test_no_output_overwrites_an_input_or_becomes_a_query(files, tmp_path, capsys):
    """--out the --query folder: the next run would take this run's masks for queries; a query
    named like another query's output (a.png and a_mask.png in one folder) would be overwritten."""
    queries = tmp_path / "q"
    queries.mkdir()
    odd = os.path.join(files["queries"], "odd.png")
    for name in ("a.png", "a_mask.png"):
        shutil.copy(odd, queries / name)
    before = sorted(os.listdir(queries))
    message = _error(capsys, _arguments(files, queries / ".." / "q", "--query", str(queries),
                                        weight=str(tmp_path / "none.pth")))
    assert message == (f"error: --out {queries / '..' / 'q'} is also the --query folder {queries}: the masks "
                       f"and overlays written there would be taken for queries by the next run; give --out "
                       f"another folder")
    message = _error(capsys, _arguments(files, queries, "--query", str(queries / "a.png"),
                                        str(queries / "a_mask.png"), weight=str(tmp_path / "none.pth")))
    assert message == (f"error: --out {queries}: the mask of query {queries / 'a.png'} would be written to "
                       f"{queries / 'a_mask.png'}, which is --query {queries / 'a_mask.png'}: writing it would "
                       f"destroy that input; give --out another folder")
    assert sorted(os.listdir(queries)) == before


def test_output_names_never_collide():
    names = predict.output_names(["a/q.jpg", "b/q.jpg", "c/q_2.jpg", "q_2.png", "d/q.jpg"])
    assert names == ["q", "q_3", "q_2", "q_2_2", "q_4"]


def _error(capsys, argv):
    status = run_entry_point(predict.main, argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2, error
    assert error and error[-1].startswith("error: "), error
    return error[-1]


def test_a_support_mask_without_foreground(files, tmp_path, capsys):
    empty = str(tmp_path / "empty.png")
    cv2.imwrite(empty, np.zeros((289, 206), np.uint8))
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"],
                                        support=f"{files['support']}:{empty}"))
    assert "support 1 mask has no foreground pixel" in message and "empty.png" in message


def test_image_and_mask_sizes_differ(files, tmp_path, capsys):
    small = str(tmp_path / "small.png")
    cv2.imwrite(small, np.ones((20, 30), np.uint8))
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"],
                                        support=f"{files['support']}:{small}"))
    assert "sizes differ" in message and "289x206" in message and "20x30" in message


def test_a_colour_mask(files, tmp_path, capsys):
    colour = str(tmp_path / "colour.png")
    mask = np.zeros((289, 206, 3), np.uint8)
    mask[50:100, 50:100] = (0, 0, 128)  # a VOC palette colour, not a label value
    cv2.imwrite(colour, mask)
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"],
                                        support=f"{files['support']}:{colour}"))
    assert "single-channel" in message and "colour.png" in message


def test_unreadable_files(files, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", str(broken)))
    assert "broken.jpg" in message and "is a truncated JPEG" in message
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"],
                                        support=f"{tmp_path / 'nope.jpg'}:{files['mask']}"))
    assert "support 1 image" in message and "nope.jpg" in message and "does not exist" in message
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", str(tmp_path / "absent")))
    assert "--query" in message and "absent" in message
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"],
                                        weight=str(tmp_path / "none.pth")))
    assert "checkpoint not found" in message
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"],
                                        support=files["support"]))
    assert "IMAGE:MASK" in message


def test_a_checkpoint_of_another_backbone_depth(files, tmp_path, capsys):
    message = _error(capsys, _arguments(files, tmp_path / "o", "--query", files["queries"],
                                        weight=files["weight101"]))
    assert "ResNet-101" in message and "ResNet-50" in message and "layers 101" in message


def test_more_supports_than_the_training_shot_is_allowed_with_a_note(files, tmp_path, capsys):
    pair = f"{files['support']}:{files['mask']}"
    status = run_entry_point(predict.main, _arguments(files, tmp_path / "o", "--support", pair,
                                                      "--query", files["queries"]))
    captured = capsys.readouterr()
    assert status == 0
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "2 supports" in notes[0] and "averaged, as in the paper" in notes[0]
    assert len(os.listdir(tmp_path / "o")) == 6


def test_the_module_as_a_user_runs_it():
    """A subprocess from the repository root, as in the README: the error is one line."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    environment.pop("SCCAN_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "tools.predict", "--config", CONFIG, "--weight", "x.pth",
                             "--support", "missing.jpg:missing.png", "--query", "q.jpg", "--out", "o"],
                            cwd=REPOSITORY_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: support 1 image 'missing.jpg' does not exist (relative to the working directory {REPOSITORY_ROOT})"


def test_support_pairs_split_where_both_files_exist(tmp_path):
    image, mask = tmp_path / "shot:1.jpg", tmp_path / "mask.png"
    image.write_bytes(b"")
    mask.write_bytes(b"")
    assert predict.split_support(f"{image}:{mask}") == (str(image), str(mask))
    assert predict.split_support("a.jpg:b.png") == ("a.jpg", "b.png")  # neither exists: the first colon


def test_the_fss_1000_config_predicts_as_the_toy_one_with_a_binary_0_255_mask(files, tmp_path, capsys):
    # FSS-1000's masks are 0/255 (and class folders' any non-zero value): the same support as a
    # 0/255 mask through the FSS-1000 config gives the toy config's masks for the same weights.
    label = cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED)
    binary = np.where(label == 2, 255, 0).astype(np.uint8)  # the toy label's class 2, ignore dropped
    toy_label = np.where(label == 2, 2, 0).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "binary.png"), binary)
    cv2.imwrite(str(tmp_path / "toy.png"), toy_label)
    query = os.path.join(files["queries"], "odd.png")
    fss = os.path.join(REPOSITORY_ROOT, "config", "fss", "fss_resnet50.yaml")
    arguments = _arguments(files, tmp_path / "fss", "--query", query, support=f"{files['support']}:{tmp_path / 'binary.png'}")
    arguments[arguments.index(CONFIG)] = fss
    # The model keys in which the two configs differ, set to the toy's (the weights are the toy model's).
    arguments += ["window_size", "4", "random_backbone_residual_gain", "0.1", "pretrained_backbone", "False"]
    [from_fss] = predict.main(arguments)
    [from_toy] = predict.main(_arguments(files, tmp_path / "toy", "--query", query,
                                         support=f"{files['support']}:{tmp_path / 'toy.png'}"))
    capsys.readouterr()
    masks = [cv2.imread(result["files"]["mask"], cv2.IMREAD_UNCHANGED) for result in (from_fss, from_toy)]
    assert 0.05 < from_fss["foreground"] < 0.95 and np.array_equal(masks[0], masks[1])
