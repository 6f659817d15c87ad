"""A ``push`` request as the node receives it: checked field by field, and only from this very
ctnode (protocol, version and installation), before anything is done with it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ctnode
from ctnode.handoff.wire import PROTOCOL, Message


@dataclass(frozen=True, slots=True)
class PushRequest:
    """A ``push`` message, checked."""

    config: str | None
    env: dict[str, str]
    cwd: Path
    peer: str
    paths: tuple[str, ...]
    study: str | None
    series: str | None
    priority: int
    wait: bool
    commit: bool
    as_json: bool
    idempotency_key: str | None

    @classmethod
    def from_message(cls, message: Message) -> PushRequest:
        """The request in *message*; ValueError when it is not a well-formed one of this
        protocol and of this very ctnode (version and installation)."""
        if (
            message.get("t") != "push"
            or message.get("protocol") != PROTOCOL
            or message.get("version") != ctnode.__version__
            or message.get("package") != _package()
        ):
            raise ValueError("another protocol or another ctnode")
        env, paths, cwd = message.get("env"), message.get("paths"), message.get("cwd")
        if not isinstance(env, dict) or not all(_text(k) and _text(v) for k, v in env.items()):
            raise ValueError("malformed environment")
        if not isinstance(paths, list) or not all(_text(p) for p in paths):
            raise ValueError("malformed paths")
        if not isinstance(cwd, str) or not _text(cwd) or not os.path.isabs(cwd):
            raise ValueError("malformed working directory")
        texts = {k: message.get(k) for k in ("config", "study", "series", "idempotency_key")}
        flags = {k: message.get(k) for k in ("wait", "commit", "as_json")}
        peer, priority = message.get("peer"), message.get("priority")
        if (
            not isinstance(peer, str)
            or not _text(peer)
            or not all(v is None or _text(v) for v in texts.values())
            or not all(isinstance(f, bool) for f in flags.values())
            or type(priority) is not int
        ):
            raise ValueError("malformed options")
        return cls(
            config=_optional(texts["config"]),
            env=dict(env),
            cwd=Path(cwd),
            peer=peer,
            paths=tuple(paths),
            study=_optional(texts["study"]),
            series=_optional(texts["series"]),
            priority=priority,
            wait=flags["wait"] is True,
            commit=flags["commit"] is True,
            as_json=flags["as_json"] is True,
            idempotency_key=_optional(texts["idempotency_key"]),
        )


def _optional(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _text(value: object) -> bool:
    """A string a command line could hold (no NUL)."""
    return isinstance(value, str) and "\0" not in value


def _package() -> str:
    return os.path.dirname(os.path.realpath(ctnode.__file__))
