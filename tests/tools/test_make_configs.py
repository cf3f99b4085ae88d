"""tools/make_configs.py: the shipped configs are the generator's output."""
import os

from tests.support import REPOSITORY_ROOT
from tools import make_configs


def test_shipped_configs_match_the_generator():
    for relative_path, text in make_configs.all_configs().items():
        with open(os.path.join(REPOSITORY_ROOT, relative_path), encoding="utf-8") as handle:
            assert handle.read() == text, f"{relative_path} is out of date: run python -m tools.make_configs"


def test_the_base_configs_are_generated():
    base = [path for path in make_configs.all_configs() if path.endswith("_base.yaml")]
    assert len(base) == 16 and len(make_configs.all_configs()) == 32 + 32 + 16  # paper, _bam ensemble, base
    text = make_configs.render_base("coco", 2, 101)
    assert "split: 2 " in text and "layers: 101" in text and "epochs: 20" in text
    assert "initmodel/PSPNet/coco/split2/resnet101/best.pth" in text
