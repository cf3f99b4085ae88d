"""tools/toy_demo.py: the two-stage default run, end to end on tiny settings."""
import json
import os

import pytest

from tests.support.toy_experiment import reduced_train_list, toy_opts
from tools import toy_demo
from util.cli import UserError


def _opts(values: dict) -> list:
    opts = []
    for key, value in values.items():
        opts += [key, repr(value) if isinstance(value, str) else str(value)]
    return opts


def test_two_stages_then_every_row_on_the_same_episodes(toy_data_root, tmp_path, capsys):
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

    # every row after the first replayed the first run's episodes
    result_dir = os.path.join(str(tmp_path / "sccan"), "result")
    recorded = json.load(open(os.path.join(result_dir, "toy_demo_episodes.json")))
    assert len(recorded["episodes"]) == 4
    with open(os.path.join(result_dir, "toy_demo.json")) as handle:
        assert set(json.load(handle)["rows"]) == set(result["rows"])


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
