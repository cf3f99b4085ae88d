"""The cross-domain benchmark's evaluation episodes (util/episode_data/cross_domain.py) on tiny
generated copies of PATNet's prepared layouts: which files an episode takes, the class, the
shot, the shapes, the 400 x 400 scored mask, the draws' reproducibility (seed, worker count,
record and replay) and the refusals of a broken layout."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from evaluation.episodes import RecordingDataset, ReplayDataset
from experiment import build as experiment_build
from tests.support import REPOSITORY_ROOT
from tests.support.cross_domain import make_prepared_deepglobe, make_prepared_isic, make_prepared_lung
from util.episode import seed_episode_draws
from util.episode_data.cross_domain import (BENCHMARK_EPISODES, BENCHMARK_LABEL_SIZE, CROSS_DOMAIN_LAYOUTS,
                                            CrossDomainData, read_benchmark_mask)
from tests.util.test_shipped_configs import EXPECTED_WEIGHTS
from util.config import load_config
from util.transform import build_hsnet_val_transform

INPUT_SIZE = 33


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """benchmark -> (data_root, class -> [(image, mask)]) of a generated prepared copy."""
    root = tmp_path_factory.mktemp("cross_domain")
    return {
        "deepglobe": (str(root / "Deepglobe"), make_prepared_deepglobe(str(root / "Deepglobe"), [3, 2, 4, 2, 3, 2])),
        "isic": (str(root / "ISIC"), make_prepared_isic(str(root / "ISIC"), [4, 3, 2])),
        "lung": (str(root / "LungSegmentation"), make_prepared_lung(str(root / "LungSegmentation"), 4)),
    }


def _dataset(layouts, benchmark, shot=1, episodes=12, seed=5):
    return CrossDomainData(benchmark, layouts[benchmark][0], shot, build_hsnet_val_transform(INPUT_SIZE),
                           episodes=episodes, seed=seed)


def _nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize by index arithmetic: output pixel i takes input pixel
    floor(i * in / out) (torch's 'nearest', which PATNet uses)."""
    rows = (np.arange(size) * mask.shape[0]) // size
    columns = (np.arange(size) * mask.shape[1]) // size
    return mask[rows][:, columns]


@pytest.mark.parametrize("benchmark", ["deepglobe", "isic", "lung"])
@pytest.mark.parametrize("shot", [1, 2])
def test_episodes_have_the_class_shot_files_and_shapes(layouts, benchmark, shot):
    data_root, pairs = layouts[benchmark]
    dataset = _dataset(layouts, benchmark, shot=shot)
    classes = len(pairs)
    assert len(dataset) == 12 and dataset.class_ids == list(range(1, classes + 1))
    for index in range(len(dataset)):
        drawn = dataset.sample_episode(index)
        class_id = index % classes + 1  # PATNet: class_id = idx % len(class_ids)
        assert drawn["class_chosen"] == class_id
        assert drawn["query"] in pairs[class_id] and len(drawn["supports"]) == shot
        assert all(support in pairs[class_id] and support != drawn["query"] for support in drawn["supports"])
        episode = dataset[index]
        assert episode.class_index == [class_id - 1]
        assert episode.query_image.shape == (3, INPUT_SIZE, INPUT_SIZE)
        assert episode.query_label.shape == (INPUT_SIZE, INPUT_SIZE)
        assert episode.support_images.shape == (shot, 3, INPUT_SIZE, INPUT_SIZE)
        assert episode.support_labels.shape == (shot, INPUT_SIZE, INPUT_SIZE)
        # The scored label is the query's mask file, 255 -> 1, resized to PATNet's 400 x 400.
        mask = cv2.imread(drawn["query"][1], cv2.IMREAD_GRAYSCALE)
        expected = _nearest((mask == 255).astype(np.int64), BENCHMARK_LABEL_SIZE)
        assert episode.raw_label.dtype == torch.int64
        assert torch.equal(episode.raw_label, torch.from_numpy(expected))
        # The input label: the same mask resized to the input by cv2's nearest neighbour.
        small = cv2.resize((mask == 255).astype(np.uint8), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_NEAREST)
        assert torch.equal(episode.query_label, torch.from_numpy(small.astype(np.int64)))
        # s_x[0] is the last shot (SemData's stacking order).
        last = cv2.imread(drawn["supports"][-1][1], cv2.IMREAD_GRAYSCALE)
        last = cv2.resize((last == 255).astype(np.uint8), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_NEAREST)
        assert torch.equal(episode.support_labels[0], torch.from_numpy(last.astype(np.int64)))


def test_the_draws_follow_the_seed_and_the_index_only(layouts):
    first = [_dataset(layouts, "isic", shot=2).sample_episode(index) for index in range(12)]
    again = _dataset(layouts, "isic", shot=2)
    assert [again.sample_episode(index) for index in reversed(range(12))] == first[::-1]
    other = _dataset(layouts, "isic", shot=2, seed=6)
    assert [other.sample_episode(index) for index in range(12)] != first
    other.set_episode_seed(5)
    assert [other.sample_episode(index) for index in range(12)] == first
    # The protocol's hook reaches the dataset through the recording wrapper.
    seed_episode_draws(RecordingDataset(other), 9)
    assert other.seed == 9


def _stream(dataset, workers):
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers)
    return [(batch.query_image.clone(), batch.support_images.clone(), batch.raw_label.clone(),
             int(batch.class_index[0])) for batch in loader]


def test_the_episode_stream_is_the_same_with_zero_and_two_workers(layouts):
    dataset = _dataset(layouts, "deepglobe", shot=2, episodes=8)
    torch.manual_seed(0)
    serial = _stream(dataset, 0)
    torch.manual_seed(1)  # another global state: the draws must not read it
    parallel = _stream(dataset, 2)
    assert len(serial) == len(parallel) == 8
    for one, other in zip(serial, parallel):
        assert all(torch.equal(a, b) for a, b in zip(one[:3], other[:3])) and one[3] == other[3]


def test_recorded_episodes_replay_to_the_same_items(layouts):
    dataset = _dataset(layouts, "lung", shot=2, episodes=4)
    recorded = [RecordingDataset(dataset)[index] for index in range(4)]
    episodes = [json.loads(item.record) for item in recorded]
    replayed = ReplayDataset(dataset, [dict(query=tuple(e["query"]), class_chosen=e["class_chosen"],
                                            supports=[tuple(pair) for pair in e["supports"]]) for e in episodes])
    for index, item in enumerate(recorded):
        again = replayed[index]
        for field in ("query_image", "query_label", "support_images", "support_labels", "raw_label"):
            assert torch.equal(getattr(item, field), getattr(again, field)), field
        assert again.record == item.record


def test_patnet_counts_sizes_and_class_lists():
    # PATNet data/{deepglobe,isic,lung}.py: num=600; test.py: img_size=400; categories 1..6, 1..3, 1.
    assert BENCHMARK_EPISODES == 600 and BENCHMARK_LABEL_SIZE == 400
    assert {name: len(layout.class_names) for name, layout in CROSS_DOMAIN_LAYOUTS.items()} == \
        {"deepglobe": 6, "isic": 3, "lung": 1}


def test_masks_are_binarised_at_128_of_their_grey_value(tmp_path):
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    assert read_benchmark_mask(str(tmp_path / "grey.png")).tolist() == [[0, 0, 1, 1]]
    # A colour mask counts by its luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B): pure blue is
    # 29 (background), pure green 150 (foreground).
    colour = np.zeros((1, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)  # BGR blue
    colour[0, 1] = (0, 255, 0)  # green
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    assert read_benchmark_mask(str(tmp_path / "colour.png")).tolist() == [[0, 1]]


def test_a_broken_layout_is_refused_in_one_line(tmp_path):
    transform = build_hsnet_val_transform(INPUT_SIZE)
    with pytest.raises(FileNotFoundError, match="is not a folder; expected layout: .*prepare_isic"):
        CrossDomainData("isic", str(tmp_path / "absent"), 1, transform)
    make_prepared_isic(str(tmp_path / "few"), [3, 1, 2])
    with pytest.raises(ValueError, match=r"at least 2 images .*class 2 \(melanoma\): 1 image"):
        CrossDomainData("isic", str(tmp_path / "few"), 1, transform)
    pairs = make_prepared_deepglobe(str(tmp_path / "glob"), [2] * 6)
    os.remove(pairs[4][1][1])
    with pytest.raises(FileNotFoundError, match=f"deepglobe class 4: 1 image.*{os.path.basename(pairs[4][1][1])}"):
        CrossDomainData("deepglobe", str(tmp_path / "glob"), 1, transform)
    pairs = make_prepared_lung(str(tmp_path / "lung"), 3)
    os.rename(pairs[1][0][1], pairs[1][0][1].replace("_mask.png", ".png"))
    with pytest.raises(ValueError, match="1 mask.* not named <id>_mask.png.*prepare_lung"):
        CrossDomainData("lung", str(tmp_path / "lung"), 1, transform)
    with pytest.raises(ValueError, match="unknown cross-domain benchmark 'chest'"):
        CrossDomainData("chest", str(tmp_path / "lung"), 1, transform)


# ----------------------------------------------------------------------------- shipped configs
CONFIG_FOLDER = os.path.join(REPOSITORY_ROOT, "config", "cross_domain")


@pytest.mark.parametrize("benchmark", ["deepglobe", "isic", "lung", "fss"])
@pytest.mark.parametrize("layers", [50, 101])
@pytest.mark.parametrize("suffix, shot", [("", 1), ("_5s", 5)])
def test_the_shipped_configs_test_the_pascal_fold_0_checkpoint(benchmark, layers, suffix, shot):
    cfg = load_config(os.path.join(CONFIG_FOLDER, f"{benchmark}_resnet{layers}{suffix}.yaml"))
    assert (cfg.data_set, cfg.layers, cfg.shot) == (benchmark, layers, shot)
    # The released fold-0 checkpoint of the backbone and shot (tests/util/test_shipped_configs.py
    # transcribes the original's names by hand).
    assert cfg.weight == EXPECTED_WEIGHTS[f"pascal_split0_resnet{layers}{suffix}"]
    assert cfg.backbone_weights == f"initmodel/resnet{layers}_v2.pth"
    if benchmark == "fss":  # PATNet's FSS-1000 test is HSNet's: config/fss's settings, another model
        fss = load_config(os.path.join(REPOSITORY_ROOT, "config", "fss", f"fss_resnet101{suffix}.yaml"))
        differing = {key for key in fss.keys() if fss[key] != cfg[key]}
        assert differing <= {"layers", "backbone_weights", "weight", "config_file"}
        assert cfg.test_num == 2400 and cfg.test_list == "./lists/fss/test.txt"
    else:
        assert cfg.test_num == 600 and cfg.val_size == 473 and cfg.ori_resize
        assert experiment_build.test_class_ids(cfg) == list(range(1, {"deepglobe": 6, "isic": 3, "lung": 1}[benchmark] + 1))


def test_a_cross_domain_benchmark_is_test_only(layouts):
    cfg = load_config(os.path.join(CONFIG_FOLDER, "lung_resnet50.yaml"),
                      ["data_root", layouts["lung"][0], "val_size", "33", "test_num", "7"])
    dataset = experiment_build.build_dataset(cfg, "val")
    assert isinstance(dataset, CrossDomainData) and len(dataset) == 7 and dataset.seed == 321
    assert dataset[0].query_image.shape == (3, 33, 33)
    with pytest.raises(ValueError, match="'lung' is a test-only benchmark"):
        experiment_build.build_dataset(cfg, "train")
