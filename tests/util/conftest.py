"""Fixtures shared by the tests of util/."""
import pytest

import util.config


@pytest.fixture
def fresh_legacy_warnings():
    """Legacy keys warn once per process: forget the keys warned about by earlier tests."""
    util.config._warned_legacy_keys.clear()
    yield
    util.config._warned_legacy_keys.clear()
