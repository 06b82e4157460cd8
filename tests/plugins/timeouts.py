"""No test can hang (issue 13): every test without its own pytest-timeout mark gets this bound,
so a stuck wait fails the test (with the stacks of every thread) instead of stalling the suite."""
from __future__ import annotations

from typing import List

import pytest

DEFAULT_TEST_TIMEOUT = 900


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))
