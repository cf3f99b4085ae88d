"""One's own class folders end to end through the scripts: train_sccan.py trains a few iterations,
test_sccan.py tests the checkpoint (two seeds, pictures, episode dump and replay), on a tiny
generated copy of FSS-1000's layout with split files of class names."""
import json
import os

import pytest

import test_sccan
import train_sccan
from tests.support.own_data import write_class_folders, write_split
from tests.support.toy_experiment import CONFIG, toy_opts


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    root = str(folder / "data")
    write_class_folders(root, {"ant": 3, "bee": 3, "cow": 4, "owl": 4}, size=41, sizes=(41, 37, 45))
    return dict(root=root, train=write_split(str(folder / "trn.txt"), ["ant", "bee"]),
                val=write_split(str(folder / "val.txt"), ["cow"]),
                test=write_split(str(folder / "test.txt"), ["cow", "owl"]))


def _opts(own_data, save_path, **overrides):
    values = dict(data_set="class_folders", train_list=own_data["train"], val_list=own_data["val"],
                  test_list=own_data["test"], list_root="", test_num=5, foreground_threshold=128)
    values.update(overrides)
    return toy_opts(own_data["root"], save_path, **values)


def test_train_then_test_on_class_folders(own_data, tmp_path):
    save_path = str(tmp_path / "exp")
    trainer = train_sccan.main(["--config", CONFIG, "--opts", *_opts(own_data, save_path, epochs=1, batch_size=2,
                                                                      evaluate=True, SubEpoch_val=False)])
    assert trainer.state.iteration == 3  # 6 training images (ant, bee), batches of 2
    weight = os.path.join(save_path, "snapshot", "final_1shot.pth")
    assert os.path.isfile(weight)
    episodes = str(tmp_path / "episodes.json")
    summary = test_sccan.run(["--config", CONFIG, "--weight", weight, "--seeds", "2", "--save-vis",
                              str(tmp_path / "vis"), "--dump-episodes", episodes, "--output",
                              str(tmp_path / "a.json"), "--opts", *_opts(own_data, save_path)])
    assert summary["class_ids"] == ["cow", "owl"] and summary["test_num"] == 5
    assert [run["seed"] for run in summary["runs"]] == [321, 322] and len(summary["runs"][0]["class_IoU"]) == 2
    with open(episodes) as handle:
        dumped = json.load(handle)
    # The test split's images in HSNet's order (classes by name, files by name), as many as test_num.
    assert [os.path.relpath(e["query"][0], own_data["root"]) for e in dumped["episodes"]] == [
        "cow/1.jpg", "cow/2.jpg", "cow/3.jpg", "cow/4.jpg", "owl/1.jpg"]
    assert [e["class_chosen"] for e in dumped["episodes"]] == ["cow"] * 4 + ["owl"]
    pictures = sorted(name for name in os.listdir(tmp_path / "vis") if name.endswith(".png"))
    assert len(pictures) == 5 and pictures[0].startswith("episode_00000_classcow_iou")
    replay = test_sccan.run(["--config", CONFIG, "--weight", weight, "--episodes-from", episodes, "--output",
                             str(tmp_path / "b.json"), "--opts", *_opts(own_data, save_path)])
    assert replay["runs"][0]["class_IoU"] == summary["runs"][0]["class_IoU"]
    assert replay["runs"][0]["mIoU"] == summary["runs"][0]["mIoU"]


def test_train_then_test_on_semantic_labels_with_the_configs_folds(tmp_path):
    from tests.support.own_data import write_semantic_labels
    root = str(tmp_path / "voc")
    write_semantic_labels(root, 12, num_classes=4, list_name="train.txt")
    write_semantic_labels(root, 6, num_classes=4, seed=1, list_name="val.txt")
    save_path = str(tmp_path / "exp")
    opts = toy_opts(root, save_path, data_set="semantic", num_classes=4, split=1, list_root=str(tmp_path / "lists"),
                    test_num=4, batch_size=2)
    opts += ["fold_classes", "[[1, 2], [3, 4]]"]
    trainer = train_sccan.main(["--config", CONFIG, "--opts", *opts])
    # Fold 1 tests 3 and 4; training keeps the images without them: those holding classes 1 and 2
    # only (image i holds i mod 4 + 1 and (i + 1) mod 4 + 1: i = 0, 4, 8), in batches of 2.
    assert trainer.state.iteration == 1
    summary = test_sccan.run(["--config", CONFIG, "--weight", os.path.join(save_path, "snapshot", "final_1shot.pth"),
                              "--output", str(tmp_path / "a.json"), "--opts", *opts])
    assert summary["class_ids"] == [3, 4] and len(summary["runs"][0]["class_IoU"]) == 2


def test_an_output_onto_the_test_split_file_names_the_test_list_key(tmp_path):
    import warnings
    from types import SimpleNamespace

    from evaluation.results import check_result_outputs
    from experiment.build import test_config
    from util.cli import UserError
    from util.config import load_config

    split = write_split(tmp_path / "test.txt", ["fox"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, opts in (("test_list", ["test_list", str(split)]), ("val_list", ["val_list", str(split), "test_list", ""])):
            cfg = test_config(load_config(os.path.join(os.path.dirname(CONFIG), "..", "fss", "fss_resnet50.yaml"),
                                          ["data_set", "class_folders", *opts]))
            arguments = SimpleNamespace(config=CONFIG, weight=None, episodes_from=None, dump_episodes=None,
                                        save_vis=None, output=str(split))
            with pytest.raises(UserError, match=f"is the same file as config key {key}: writing it would overwrite"):
                check_result_outputs(arguments, cfg, str(split), "--output")
