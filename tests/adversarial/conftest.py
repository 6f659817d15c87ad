"""Fixtures of the bad-input suite: one node per module, invariants after every case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.adversarial.harness import HostileNode


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    """`ctnode run` for the whole module; it must still stop cleanly (exit 0) at the end."""
    hostile = HostileNode(tmp_path_factory.mktemp("adversarial"))
    hostile.start()
    try:
        yield hostile
    finally:
        code = hostile.stop()
    assert code == 0, f"ctnode run exited with {code} after the module's cases"


@pytest.fixture(autouse=True)
def invariants(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every case that uses the node: the invariants of ``harness.HostileNode.check``."""
    yield
    if "node" in request.fixturenames:
        hostile: HostileNode = request.getfixturevalue("node")
        hostile.check()
