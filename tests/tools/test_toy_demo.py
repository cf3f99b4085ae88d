"""tools/toy_demo.py: the two-stage default run, end to end on tiny settings."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import test_sccan
from tests.support.toy_experiment import reduced_train_list, toy_opts
from tools import toy_demo
from util.cli import UserError

# PASCAL-5i fold i tests classes 5i+1..5i+5; the toy data keeps the PASCAL layout.
FOLD_0_TEST_CLASSES = [1, 2, 3, 4, 5]
IGNORE = 255


def _opts(values: dict) -> list:
    opts = []
    for key, value in values.items():
        opts += [key, repr(value) if isinstance(value, str) else str(value)]
    return opts


class EpisodesScored:
    """Evaluation observer: the episode each scored batch carried, None for a batch that carried
    none (a loader that neither records nor replays)."""

    def __init__(self):
        self.episodes = []

    def start(self):
        self.episodes.clear()

    def observe(self, batch):
        self.episodes += [json.loads(item) for item in batch.records] if batch.records is not None else [None]


def all_foreground_scores(episodes, test_classes):
    """The protocol's metrics of predicting foreground everywhere, counted from the query label
    files: the score is taken against the untransformed label (ori_resize), whose square padding
    is ignore-valued and so adds nothing. Foreground is the episode's class; 255 is not scored."""
    object_pixels = dict.fromkeys(test_classes, 0)
    scored_pixels = dict.fromkeys(test_classes, 0)
    for episode in episodes:
        label = np.array(Image.open(episode["query"][1]))
        object_pixels[episode["class_chosen"]] += int(np.count_nonzero(label == episode["class_chosen"]))
        scored_pixels[episode["class_chosen"]] += int(np.count_nonzero(label != IGNORE))
    # Every scored pixel is predicted foreground: the intersection is the object, the union is
    # every scored pixel. A class without an episode still counts, as 0.
    class_iou = [object_pixels[c] / scored_pixels[c] if scored_pixels[c] else 0.0 for c in test_classes]
    foreground_iou = sum(object_pixels.values()) / sum(scored_pixels.values())
    # Nothing is predicted background, so the background IoU is 0.
    return dict(mIoU=sum(class_iou) / len(class_iou), class_IoU=class_iou, pIoU=foreground_iou,
                FB_IoU=foreground_iou / 2, accuracy=foreground_iou, episodes=len(episodes))


def test_two_stages_then_every_row_on_the_same_episodes(toy_data_root, tmp_path, capsys, monkeypatch):
    # The result files do not name the episodes they scored: watch the batches of every
    # evaluation test_sccan.py runs instead (the generalised test draws its own, by design).
    scored_by_run = []
    run_seeds = test_sccan.run_seeds

    def run_seeds_watching_the_episodes(protocol, predictor, loader, device, class_ids, title,
                                        first_run_observers=(), writer=None):
        watcher = EpisodesScored()
        scored_by_run.append(watcher.episodes)
        return run_seeds(protocol, predictor, loader, device, class_ids, title,
                         [*first_run_observers, watcher], writer)

    monkeypatch.setattr(test_sccan, "run_seeds", run_seeds_watching_the_episodes)
    small_list = str(tmp_path / "train_small.txt")
    reduced_train_list(toy_data_root, small_list, per_class=2)
    base_weights = str(tmp_path / "base" / "best.pth")
    base_opts = _opts(dict(data_root=toy_data_root, train_list=small_list, val_list=small_list,
                           base_save_path=str(tmp_path / "base"), base_learner_weights=base_weights,
                           train_h=33, train_w=33, val_size=33, batch_size=4, epochs=1, print_freq=1))
    opts = toy_opts(toy_data_root, str(tmp_path / "sccan"), train_list=small_list,
                    list_root=str(tmp_path / "fss_list"), base_learner_weights=base_weights,
                    test_num=4)
    result = toy_demo.main(["--base-opts", *base_opts, "--opts", *opts])

    assert os.path.isfile(base_weights)  # stage 1 wrote the base learner that stage 2 read
    assert list(result["rows"]) == [name for name, *_ in toy_demo.ROWS]
    for run in result["rows"].values():
        assert run["episodes"] == 4 and 0.0 <= run["mIoU"] <= 1.0
    gfss = result["gfss"]["runs"][0]
    assert all(0.0 <= gfss[key] <= 1.0 for key in ("mIoU_n", "mIoU_b", "mIoU_t"))
    assert set(result["seconds"]) == {"stage 1 (base learner)", "stage 2 (SCCAN + ensemble)", "tests"}

    printed = capsys.readouterr().out
    for name, *_ in toy_demo.ROWS:
        assert name in printed
    assert "mIoU_n (novel)" in printed

    result_dir = os.path.join(str(tmp_path / "sccan"), "result")
    with open(os.path.join(result_dir, "toy_demo_episodes.json")) as handle:
        dumped = json.load(handle)
    episodes = dumped["episodes"]
    assert len(episodes) == 4 and dumped["meta"]["test_num"] == 4
    assert all(episode["class_chosen"] in FOLD_0_TEST_CLASSES for episode in episodes)

    # One evaluation per distinct run of the table, each scoring exactly the dumped episodes in
    # their order: the first recorded them, every other one replayed them.
    assert len(scored_by_run) == len({stem for _, _, stem, _ in toy_demo.ROWS})
    for scored in scored_by_run:
        assert scored == episodes

    with open(os.path.join(result_dir, "toy_demo.json")) as handle:
        written = json.load(handle)["rows"]
    assert written == json.loads(json.dumps(result["rows"]))

    # A row that needs no model, recomputed from the dumped episodes' label files alone.
    name = "predict everything foreground"
    expected = all_foreground_scores(episodes, FOLD_0_TEST_CLASSES)
    assert result["rows"][name]["episodes"] == expected["episodes"]
    for key in ("mIoU", "FB_IoU", "pIoU", "accuracy"):
        assert result["rows"][name][key] == pytest.approx(expected[key], rel=0, abs=1e-9), key
    assert result["rows"][name]["class_IoU"] == pytest.approx(expected["class_IoU"], rel=0, abs=1e-9)
    assert f"| {name} | {expected['mIoU']:.4f} | {expected['FB_IoU']:.4f} | {expected['pIoU']:.4f} |" in printed


def test_stage_paths_must_agree(toy_data_root, tmp_path):
    with pytest.raises(UserError, match="base_learner_weights"):
        toy_demo.main(["--base-opts", "base_learner_weights", str(tmp_path / "a.pth"),
                       "--opts", "base_learner_weights", str(tmp_path / "b.pth")])


def test_one_stage_config_skips_the_base_learner_and_the_generalised_test(toy_data_root, tmp_path):
    small_list = str(tmp_path / "train_small.txt")
    reduced_train_list(toy_data_root, small_list, per_class=2)
    opts = toy_opts(toy_data_root, str(tmp_path / "sccan"), train_list=small_list,
                    list_root=str(tmp_path / "fss_list"), test_num=3)
    result = toy_demo.main(["--config", "config/toy/toy_split0_resnet50.yaml", "--opts", *opts])
    assert list(result["rows"]) == [name for name, *_ in toy_demo.ONE_STAGE_ROWS]
    assert result["gfss"] is None and set(result["seconds"]) == {"training", "tests"}
    assert not os.path.exists(str(tmp_path / "base"))
