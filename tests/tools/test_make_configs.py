"""tools/make_configs.py: the shipped configs are the generator's output."""
import os

from tests.support import REPOSITORY_ROOT
from tools import make_configs


def test_shipped_configs_match_the_generator():
    for relative_path, text in make_configs.all_configs().items():
        with open(os.path.join(REPOSITORY_ROOT, relative_path), encoding="utf-8") as handle:
            assert handle.read() == text, f"{relative_path} is out of date: run python -m tools.make_configs"
