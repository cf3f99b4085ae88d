"""The ``_bam`` configs (tools/make_configs.py): each is its paper config with BAM's base learner
switched on, its own output folder and no released checkpoint."""
import os

import pytest

from tests.support import REPOSITORY_ROOT
from tools.make_configs import RELEASED_WEIGHTS
from util.config import load_config

DIFFERENT_KEYS = {"base_learner", "save_path", "weight", "config_file"}


@pytest.mark.parametrize("name", sorted(RELEASED_WEIGHTS))
def test_ensemble_config_is_the_paper_config_with_the_base_learner(name):
    dataset = name.split("_")[0]
    paper = load_config(os.path.join(REPOSITORY_ROOT, "config", dataset, name + ".yaml"))
    ensemble = load_config(os.path.join(REPOSITORY_ROOT, "config", dataset, name + "_bam.yaml"))
    assert paper.base_learner is False and ensemble.base_learner is True
    assert ensemble.weight == "" and paper.weight == RELEASED_WEIGHTS[name]
    assert ensemble.save_path == f"exp/{dataset}/SCCAN_BAM/split{paper.split}/resnet{paper.layers}"
    differing = {key for key in set(paper.keys()) | set(ensemble.keys())
                 if paper.get(key) != ensemble.get(key)}
    assert differing <= DIFFERENT_KEYS
