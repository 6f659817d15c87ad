"""An in-process node (store + SCP) for integration tests that need no subprocess."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ctnode.config import Settings
from ctnode.daemon import Runtime, build_runtime
from tests.helpers.procs import free_port, write_yaml


def make_settings(tmp: Path, db_url: str, **overrides: Any) -> Settings:
    """Settings for a node in *tmp* on a free port with *db_url*."""
    data: dict[str, Any] = {
        "node": {
            "ae_title": "CTNODE",
            "bind": "127.0.0.1",
            "port": free_port(),
            "accept_unknown_callers": False,
            "timeouts": {"acse": 5, "dimse": 10, "network": 10},
        },
        "storage": {"data_dir": str(tmp / "data"), "min_free_bytes": 0},
        "database": {"url": db_url},
        "peers_dir": str(tmp / "peers"),
        "logging": {"level": "INFO"},
    }
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    (tmp / "peers").mkdir(parents=True, exist_ok=True)
    return Settings(**data)


def write_peers(tmp: Path, peers: Mapping[str, Mapping[str, Any]]) -> None:
    """Write peer files into ``tmp/peers``."""
    for name, peer in peers.items():
        write_yaml(tmp / "peers" / f"{name}.yaml", peer)


@contextlib.contextmanager
def running_node(settings: Settings) -> Iterator[Runtime]:
    """Build the runtime and run its SCP for the duration of the block."""
    runtime = build_runtime(settings)
    runtime.server.start()
    try:
        yield runtime
    finally:
        runtime.server.stop_accepting()
        runtime.server.wait_idle(5)
        runtime.server.abort_all()
        runtime.engine.dispose()
