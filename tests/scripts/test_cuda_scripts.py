"""The scripts on a CUDA device (``pytest -m cuda``; skipped without one; dry run on the CPU: see
tests/support/cuda.py), on the paths that tests/scripts/test_cuda_training.py leaves out:
train_base.py; train_sccan.py validating with the evaluation feature cache, with BAM's ensemble
on a base learner trained here, 5-shot, and with ``fast_path_training``; test_sccan.py on the
ensemble and its meta learner alone, the baselines, ``--gfss``, the episode recorder (recorded on
the GPU, replayed on the CPU) and ``--save-vis``.

Every run is tiny (65 px episodes, 33 px base-learner crops, a few iterations and episodes) so
that the whole ``pytest -m cuda`` stays within a few minutes. Where a GPU run is compared with a
CPU run of the same weights on the same episodes, both run in fp32 without TF32."""
import dataclasses
import json
import os
import re

import cv2
import pytest
import torch

import test_sccan
import train_base
import train_sccan
from engine.trainer import Trainer
from experiment.models import load_base_learner
from model.backbone import Backbone
from model.checkpoint import load_model_weights
from model.pspnet import PSPNet
from tests.support import REPOSITORY_ROOT
from tests.support.cuda import CUDA, cuda_device, strict_fp32
from tests.support.files import page_references
from tests.support.toy_experiment import BASE_CONFIG, CONFIG, reduced_list, reduced_train_list, toy_opts
from util.config import load_config

pytestmark = CUDA
DEVICE = cuda_device()
BAM_CONFIG = os.path.join(REPOSITORY_ROOT, "config", "toy", "toy_split0_resnet50_bam.yaml")
FIVE_SHOT_CONFIG = os.path.join(REPOSITORY_ROOT, "config", "toy", "toy_split0_resnet50_5s.yaml")
TOY_BASE_CLASSES = 15  # PASCAL's folds: 15 base classes per fold

# A GPU score against the CPU score of the same weights and episodes: both fp32 without TF32, so
# the logits differ by rounding (~1e-6 relative) and only a pixel whose two logits are that close
# can flip; one flipped pixel moves a class IoU of these 65 px episodes by about 1/500 and the
# mean over the 5 test classes by about 4e-4. 0.01 allows a few dozen such pixels, while a device
# bug (a wrong input, label or weight) moves the scores by far more.
SCORE_TOLERANCE = 0.01


def _opts(values: dict) -> list:
    """--opts from a dict (texts quoted, as toy_opts writes them)."""
    opts = []
    for key, value in values.items():
        opts += [key, repr(value) if isinstance(value, str) else str(value)]
    return opts


def reduced_val_list(data_root: str, out_path: str, per_class: int = 2) -> int:
    """The first ``per_class`` images of every fold-0 test class (a few episodes meet the same
    images again); returns the list's length."""
    return reduced_list(data_root, out_path, "val", per_class,
                        list_root=os.path.join(os.path.dirname(out_path), "fss_full"))


def _on_the_device(model, what: str) -> None:
    """Every parameter of ``model`` on the tests' device and finite."""
    for name, parameter in model.named_parameters():
        assert parameter.device.type == DEVICE.type, f"{what}: {name} on {parameter.device}"
        assert torch.isfinite(parameter).all(), f"{what}: {name} is not finite"


@pytest.fixture
def recorded_steps(monkeypatch):
    """Every Trainer.train_step of the test: its loss (read after the step), the number of
    supports of its batch and whether the model ran its fast path."""
    steps = []
    original = Trainer.train_step

    def train_step(self, batch, current, iterations):
        fast = self.model.uses_fast_path
        result = original(self, batch, current, iterations)
        loss, _ = result
        steps.append(dict(loss=loss.detach().item(), shot=batch.support_images.shape[1], fast=fast))
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return steps


@pytest.fixture(scope="module")
def train_list(toy_data_root, tmp_path_factory):
    """Two training images of every base class (1-shot episodes); (path, length)."""
    path = str(tmp_path_factory.mktemp("cuda_lists") / "train_small.txt")
    return path, reduced_train_list(toy_data_root, path)


# ----------------------------------------------------------------------------- train_sccan.py
@strict_fp32()
def test_validation_during_training_with_the_feature_cache(toy_data_root, tmp_path, train_list):
    val_list = str(tmp_path / "val_small.txt")
    images = reduced_val_list(toy_data_root, val_list)
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), train_list=train_list[0], val_list=val_list,
                    list_root=str(tmp_path / "fss"), batch_size=8, evaluate=True, test_num=8,
                    eval_feature_cache_mb=64.0)
    trainer = train_sccan.main(["--config", CONFIG, "--opts", *opts])
    assert trainer.device.type == DEVICE.type
    _on_the_device(trainer.model, "after training")
    result = trainer.last_validation
    assert result["episodes"] == 8 and 0.0 <= result["mIoU"] <= 1.0 and 0.0 <= result["FB_IoU"] <= 1.0
    # 8 episodes look up 16 images among the list's `images` (10); the budget holds them all, so
    # each image misses once at most and at least 6 lookups must hit.
    cache = result["feature_cache"]
    assert cache["hits"] + cache["misses"] == 16 and cache["misses"] <= images and cache["hits"] >= 16 - images
    if result["mIoU"] > 0:
        assert os.path.isfile(trainer.state.best.path)
    # The cache changes no score: the same episodes without it. On the CPU the features are
    # computed image by image either way (equal bit for bit); on a GPU the plain loop batches an
    # episode's images, and cuDNN may choose another algorithm for another batch size.
    plain = dataclasses.replace(trainer.protocol, feature_cache_mb=0.0).run(
        trainer.model, trainer.val_loader, trainer.device, seed=trainer.protocol.seeds[0])
    assert "feature_cache" not in plain
    tolerance = 0.0 if DEVICE.type == "cpu" else SCORE_TOLERANCE
    for key in ("mIoU", "FB_IoU"):
        assert abs(plain[key] - result[key]) <= tolerance, key


@strict_fp32()
def test_five_shot_training_and_validation(toy_data_root, tmp_path, recorded_steps):
    # Six images of every base class: five supports and a query for any class a query holds.
    train_five = str(tmp_path / "train_five.txt")
    length = reduced_train_list(toy_data_root, train_five, per_class=6)
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), train_list=train_five, list_root=str(tmp_path / "fss"),
                    batch_size=8, evaluate=True, SubEpoch_val=False, test_num=4)
    trainer = train_sccan.main(["--config", FIVE_SHOT_CONFIG, "--opts", *opts])
    assert trainer.model.shot == 5 and trainer.state.iteration == length // 8
    assert [step["shot"] for step in recorded_steps] == [5] * (length // 8)
    assert all(torch.isfinite(torch.tensor(step["loss"])) for step in recorded_steps)
    _on_the_device(trainer.model, "5-shot")
    assert trainer.last_validation["episodes"] == 4 and 0.0 <= trainer.last_validation["mIoU"] <= 1.0
    checkpoint = torch.load(tmp_path / "exp" / "snapshot" / "final_5shot.pth", weights_only=True,
                            map_location="cpu")
    assert checkpoint["config"]["shot"] == 5


def test_fast_path_training_gives_the_straightforward_first_loss(toy_data_root, tmp_path, train_list,
                                                                  recorded_steps):
    runs = {}
    for fast in (False, True):
        opts = toy_opts(toy_data_root, str(tmp_path / f"exp_{fast}"), train_list=train_list[0],
                        list_root=str(tmp_path / "fss"), batch_size=8, fast_path_training=fast,
                        feature_dropout=0.0)  # no dropout masks: nothing random differs between the paths
        recorded_steps.clear()
        with strict_fp32():
            trainer = train_sccan.main(["--config", CONFIG, "--opts", *opts])
        runs[fast] = list(recorded_steps)
        _on_the_device(trainer.model, f"fast_path_training {fast}")
    assert [step["fast"] for step in runs[True]] == [True] * len(runs[True])
    assert not any(step["fast"] for step in runs[False])
    losses = {fast: torch.tensor([step["loss"] for step in steps]) for fast, steps in runs.items()}
    assert torch.isfinite(losses[True]).all() and len(losses[True]) == len(losses[False]) >= 2
    # Same seeded weights and first batch: the fast path's logits are the straightforward ones
    # within 1e-4 (config_schema's fast_path), so are the first losses. Later losses drift by
    # the rounding that training amplifies (BENCHMARKS.md, "Same loss curve").
    torch.testing.assert_close(losses[True][0], losses[False][0], atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------- train_base.py and the ensemble
@pytest.fixture(scope="module")
def base_learner(toy_data_root, tmp_path_factory):
    """BAM's base learner trained by train_base.py for 4 iterations (33 px crops, batch 2, the
    first 8 training images, validated on them); dict(trainer, path of best.pth)."""
    folder = tmp_path_factory.mktemp("cuda_base")
    small = str(folder / "train_small.txt")
    with open(os.path.join(toy_data_root, "train.txt")) as source, open(small, "w") as handle:
        handle.writelines(source.readlines()[:8])
    best = str(folder / "best.pth")
    opts = _opts(dict(data_root=toy_data_root, train_list=small, val_list=small, base_save_path=str(folder / "exp"),
                      base_learner_weights=best, train_h=33, train_w=33, val_size=33, batch_size=2, epochs=1,
                      workers=0, print_freq=1, base_lr=0.01, evaluate=True))
    with strict_fp32():
        trainer = train_base.main(["--config", BASE_CONFIG, "--opts", *opts])
    return dict(trainer=trainer, path=best)


def test_train_base_on_the_gpu(base_learner):
    trainer = base_learner["trainer"]
    assert trainer.device.type == DEVICE.type and trainer.state.iteration == 4
    _on_the_device(trainer.model, "base learner")
    assert 0.0 < trainer.state.best.miou <= 1.0  # background alone scores above 0
    best = torch.load(base_learner["path"], weights_only=True, map_location="cpu")
    assert set(best) == {"epoch", "state_dict", "optimizer"}  # BAM's format
    model = PSPNet(layers=50, classes=TOY_BASE_CLASSES + 1, pretrained_backbone=False)
    load_model_weights(model, base_learner["path"])  # strict


@pytest.fixture(scope="module")
def ensemble(toy_data_root, tmp_path_factory, base_learner, train_list):
    """SCCAN with BAM's ensemble on the base learner above, trained for one epoch of the small
    training list (batch 8); dict(trainer, opts, path of final_1shot.pth)."""
    folder = tmp_path_factory.mktemp("cuda_ensemble")
    opts = toy_opts(toy_data_root, str(folder / "exp"), train_list=train_list[0], list_root=str(folder / "fss"),
                    base_learner_weights=base_learner["path"], batch_size=8, test_num=6)
    with strict_fp32():
        trainer = train_sccan.main(["--config", BAM_CONFIG, "--opts", *opts])
    return dict(trainer=trainer, opts=opts, path=str(folder / "exp" / "snapshot" / "final_1shot.pth"))


def test_ensemble_training_keeps_the_base_learner_frozen(ensemble, base_learner, train_list):
    trainer = ensemble["trainer"]
    assert trainer.state.iteration == train_list[1] // 8
    _on_the_device(trainer.model, "ensemble")
    assert trainer.model.learner_base is not None and trainer.model.gram_merge is not None
    # The backbone and the base learner's head come from best.pth and stay frozen through the
    # GPU steps: equal to a fresh CPU load of the file, bit for bit.
    cfg = load_config(BAM_CONFIG, ensemble["opts"])
    backbone = Backbone(50, dilate_first_block=True)
    head = load_base_learner(cfg, backbone)
    for reference, trained in ((backbone, trainer.model.backbone), (head, trainer.model.learner_base)):
        expected = reference.state_dict()
        for key, value in trained.state_dict().items():
            assert torch.equal(value.cpu(), expected[key]), key


def _test(argv: list, opts: list, on_cpu: bool = False) -> dict:
    """test_sccan.run on the device of the tests, or on the CPU (SCCAN_FORCE_CPU) when ``on_cpu``."""
    with pytest.MonkeyPatch.context() as patch:
        if on_cpu:
            patch.setenv("SCCAN_FORCE_CPU", "1")
        with strict_fp32():
            return test_sccan.run([*argv, "--opts", *opts])


def _close(gpu: dict, cpu: dict, keys=("mIoU", "FB_IoU")) -> None:
    for key in keys:
        assert 0.0 <= gpu[key] <= 1.0 and abs(gpu[key] - cpu[key]) <= SCORE_TOLERANCE, (key, gpu[key], cpu[key])


# ------------------------------------------------------------------------------- test_sccan.py
def test_the_ensemble_and_its_meta_learner_score_as_on_the_cpu(ensemble, tmp_path):
    runs = {}
    for on_cpu in (False, True):
        output = str(tmp_path / f"plain_{on_cpu}.json")
        argv = ["--config", BAM_CONFIG, "--weight", ensemble["path"], "--output", output]
        runs[on_cpu] = _test(argv, ensemble["opts"], on_cpu)["runs"][0]
        assert os.path.isfile(output) and os.path.isfile(output[:-5] + ".png")
    gpu, cpu = runs[False], runs[True]
    assert set(gpu["outputs"]) == {"ensemble", "meta"} and gpu["mIoU"] == gpu["outputs"]["ensemble"]["mIoU"]
    for name in ("ensemble", "meta"):
        assert gpu["outputs"][name]["episodes"] == 6
        _close(gpu["outputs"][name], cpu["outputs"][name])


def test_gfss_scores_as_on_the_cpu(ensemble, tmp_path):
    runs = {}
    for on_cpu in (False, True):
        output = str(tmp_path / f"gfss_{on_cpu}.json")
        argv = ["--config", BAM_CONFIG, "--weight", ensemble["path"], "--gfss", "--output", output]
        summary = _test([*argv, "--episodes", "5"], ensemble["opts"], on_cpu)
        assert summary["test"] == "gfss" and os.path.isfile(output) and os.path.isfile(output[:-5] + ".png")
        runs[on_cpu] = summary["runs"][0]
    assert runs[False]["episodes"] == 5
    _close(runs[False], runs[True], keys=("mIoU_n", "mIoU_b", "mIoU_t"))


def test_baselines_score_as_on_the_cpu(toy_data_root, tmp_path):
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"), test_num=6)
    for baseline in ("--all-foreground", "--prior-baseline"):
        gpu, cpu = (_test(["--config", CONFIG, baseline, "--output", str(tmp_path / f"{baseline}_{on_cpu}.json")],
                          opts, on_cpu)["runs"][0] for on_cpu in (False, True))
        assert gpu["episodes"] == 6
        if baseline == "--all-foreground":
            # No arithmetic in the prediction: the counts, and so the scores, are exact.
            assert (gpu["mIoU"], gpu["FB_IoU"]) == (cpu["mIoU"], cpu["FB_IoU"])
        _close(gpu, cpu)


def test_episodes_recorded_on_the_gpu_replay_on_the_cpu(toy_data_root, tmp_path):
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"), test_num=6)
    episodes = str(tmp_path / "episodes.json")
    recorded = _test(["--config", CONFIG, "--untrained", "--dump-episodes", episodes,
                      "--output", str(tmp_path / "gpu.json")], opts)
    with open(episodes) as handle:
        dumped = json.load(handle)
    assert len(dumped["episodes"]) == 6 and dumped["meta"]["seed"] == 321
    # Another folder of lists: the replay must not depend on the recording run's files.
    replay_opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss_replay"), test_num=6)
    replayed = _test(["--config", CONFIG, "--untrained", "--episodes-from", episodes,
                      "--output", str(tmp_path / "cpu.json")], replay_opts, True)
    assert replayed["test_num"] == 6
    _close(recorded["runs"][0], replayed["runs"][0])


def test_save_vis_writes_a_picture_per_episode(toy_data_root, tmp_path):
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"), test_num=4)
    folder = tmp_path / "vis"
    summary = _test(["--config", CONFIG, "--untrained", "--save-vis", str(folder),
                     "--output", str(tmp_path / "vis.json")], opts)
    pictures = sorted(name for name in os.listdir(folder) if name.endswith(".png"))
    names = [re.fullmatch(r"episode_(\d{5})_class(\d+)_iou(\d\.\d{3})\.png", name) for name in pictures]
    assert len(pictures) == 4 and all(names), pictures
    assert [int(name.group(1)) for name in names] == list(range(4))
    assert {int(name.group(2)) for name in names} <= set(summary["class_ids"])
    assert all(0.0 <= float(name.group(3)) <= 1.0 for name in names)
    for name in pictures:
        picture = cv2.imread(str(folder / name))
        assert picture is not None and picture.ndim == 3 and min(picture.shape[:2]) >= 65, name
    references = page_references(str(folder / "index.html"))
    assert {reference for reference in references if reference.endswith(".png")} == set(pictures)
