"""Hypothesis budget of the differential suite: a few thousand examples by default, ten times as
many with ``--ondemand``; always derandomized and without an example database (CI-stable, no
``.hypothesis`` directory written into the repository)."""

from __future__ import annotations

import pytest

from tests.conformance.strategies import set_ondemand


def pytest_configure(config: pytest.Config) -> None:
    set_ondemand(bool(config.getoption("--ondemand", default=False)))
