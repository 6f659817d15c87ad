"""The command's side of the hand-off: ``ctnode push`` through the running local node.

``entry`` calls ``push`` before importing the command line: when the arguments are a plain
``push`` (every option of ``ctnode push`` is understood here; anything else, ``--help``
included, is left to the full command line) and a node listens on the data dir's hand-off
socket, the node submits and follows the job and this prints what it sends. ``push`` returns
None whenever the ordinary path must run instead: not a plain push, no socket, no node, a node
that answers ``fallback`` (another user, other settings, another version...) or does not answer
within ``READY_TIMEOUT``. Until it has sent ``submit`` nothing was written, so running the
ordinary path then cannot submit twice.

Which data dir: the one the settings would name, read cheaply (the YAML file's
``storage.data_dir``, ``CTNODE_STORAGE__DATA_DIR``, the embedded default). That is only where to
look: the node loads the settings again exactly as the command would and falls back when they
are not its own, so a wrong guess costs time, never correctness.

Standard library only, plus ruamel.yaml for the file: no pydantic, SQLAlchemy, typer or rich
(rich only to draw a progress bar on a terminal). It imports nothing of the command line
either: when the node stops in the middle, ``Resume`` tells ``cli.entry`` to finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NamedTuple

import ctnode
from ctnode.handoff.wire import PROTOCOL, Closed, Message, Reader, send, submit_address
from ctnode.progress import Display, Snapshot, terminal

#: Seconds to wait for the node's first answer before running the ordinary path.
READY_TIMEOUT = 5.0
#: The value options of ``ctnode push`` and their fields.
VALUE_OPTIONS = {
    "--study": "study",
    "--series": "series",
    "--priority": "priority",
    "--idempotency-key": "idempotency_key",
}
#: Its flags.
FLAGS = {"--wait": "wait", "--commit": "commit", "--json": "as_json"}
#: The default data dir with a configuration file (``StorageSettings.data_dir``).
DEFAULT_DATA_DIR = "/var/lib/ctnode"
INTEGER = re.compile(r"[+-]?[0-9]+")


class PushArgs:
    """A plain ``ctnode [--config FILE] push ...`` command line."""

    def __init__(self) -> None:
        self.config: str | None = None
        self.peer = ""
        self.paths: list[str] = []
        self.study: str | None = None
        self.series: str | None = None
        self.priority = 0
        self.wait = False
        self.commit = False
        self.as_json = False
        self.idempotency_key: str | None = None

    def to_json(self) -> dict[str, object]:
        """The fields, as the request carries them."""
        return dict(vars(self))


def parse(argv: Sequence[str]) -> PushArgs | None:
    """*argv* as ``ctnode push`` would read it, or None when it is anything else or anything
    the full command line should handle (help, an unknown option, a missing value...)."""
    args = PushArgs()
    tokens = list(argv)
    # Options before the command: --config FILE / --config=FILE / -c FILE.
    while tokens and tokens[0] != "push":
        token = tokens.pop(0)
        if token in ("--config", "-c") and tokens and not tokens[0].startswith("-"):
            value = tokens.pop(0)
        elif token.startswith("--config="):
            value = token.partition("=")[2]
        else:
            return None
        if args.config is not None:
            return None
        args.config = value
    if not tokens:
        return None
    tokens.pop(0)
    positional: list[str] = []
    given: set[str] = set()
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("-"):
            positional.append(token)
            continue
        name, equals, value = token.partition("=")
        if name in FLAGS and not equals:
            setattr(args, FLAGS[name], True)
            continue
        if name not in VALUE_OPTIONS or name in given:
            return None
        given.add(name)
        if not equals:
            if not tokens:
                return None
            value = tokens.pop(0)
            if value.startswith("-") and not (name == "--priority" and INTEGER.fullmatch(value)):
                return None
        if name == "--priority":
            if not INTEGER.fullmatch(value):
                return None
            args.priority = int(value)
        else:
            setattr(args, VALUE_OPTIONS[name], value)
    if not positional:
        return None
    args.peer, args.paths = positional[0], positional[1:]
    return args


def settings_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the settings read: ``CTNODE_*`` (any case) and ``STATE_DIRECTORY``."""
    return {
        name: value
        for name, value in environ.items()
        if name.upper().startswith("CTNODE_") or name == "STATE_DIRECTORY"
    }


def guess_run_dir(config: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The run directory the settings would most likely name (*env*: the variables of
    ``settings_environment``), or None when that cannot be read cheaply (the node checks it
    exactly)."""
    path = config if config is not None else (env.get("CTNODE_CONFIG") or None)
    data_dir: object
    if path is None:
        state = env.get("STATE_DIRECTORY")
        data_dir = state.split(":")[0] if state else str(cwd / "var" / "ctnode")
    else:
        data_dir = file_data_dir(cwd / path)
    names = {name.lower(): value for name, value in env.items()}
    if len(names) != len(env) or "ctnode_storage" in names:
        return None  # a name given in two cases, or the whole section as JSON
    data_dir = names.get("ctnode_storage__data_dir", data_dir)
    if not isinstance(data_dir, str) or not data_dir:
        return None
    return cwd / data_dir / "run"


def file_data_dir(path: Path) -> object:
    """``storage.data_dir`` as the configuration file *path* gives it (``DEFAULT_DATA_DIR``
    when it gives none): read by ``plain_data_dir`` when the file is plain enough, as JSON when
    it is JSON, else by the YAML loader the settings use; None when the file cannot be read or
    is not a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    plain = plain_data_dir(text)
    if plain is not UNSURE:
        return plain
    if text.lstrip().startswith("{"):  # JSON, a subset of YAML 1.2 (files tools write)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            storage = data.get("storage", {})
            return storage.get("data_dir", DEFAULT_DATA_DIR) if isinstance(storage, dict) else None
    from ctnode.errors import ConfigError
    from ctnode.yamlio import load_yaml_file

    try:
        data = load_yaml_file(path)
    except ConfigError:
        return None
    storage = data.get("storage", {})
    return storage.get("data_dir", DEFAULT_DATA_DIR) if isinstance(storage, dict) else None


#: ``plain_data_dir`` could not tell.
UNSURE = object()
#: What a plain value may not start with (quotes, flow collections, anchors, aliases, tags,
#: block scalars, reserved indicators).
_NOT_PLAIN = tuple("\"'{}[]&*!|>@%`#,?-")


def plain_data_dir(text: str) -> object:
    """``storage.data_dir`` of a YAML document written the plain way (``storage:`` at the left
    margin, ``data_dir: VALUE`` on one line among its keys, VALUE a plain scalar),
    ``DEFAULT_DATA_DIR`` when such a document has no ``storage`` or no ``data_dir``; UNSURE
    for anything else (the YAML loader reads it then). This saves the command loading the YAML
    library; it never has to be right, only mostly: the node checks the settings exactly."""
    found: object = None
    seen_storage = in_storage = after_value = False
    child_indent = -1
    for raw in text.splitlines():
        line = raw.rstrip()
        content = line.lstrip(" ")
        if not content or content.startswith("#"):
            continue
        indent = len(line) - len(content)
        if "\t" in line or (after_value and indent > child_indent):
            return UNSURE  # a tab, or a value continued on the next line
        after_value = False
        if in_storage and indent > 0 and child_indent < 0:
            child_indent = indent
        key, colon, rest = content.partition(":")
        if not colon or not key.replace("_", "a").isalnum() or (rest and rest[0] != " "):
            if indent == 0 or (in_storage and indent == child_indent):
                return UNSURE  # not a plain "key: value" where it matters
            continue
        value = rest.split(" #", 1)[0].strip()
        if indent == 0:
            in_storage = key == "storage"
            if in_storage and (seen_storage or value):
                return UNSURE  # twice, or a flow mapping / scalar
            seen_storage = seen_storage or in_storage
            child_indent = -1
            continue
        if not in_storage or indent != child_indent or key != "data_dir":
            continue
        if found is not None or not value or value.startswith(_NOT_PLAIN):
            return UNSURE
        if value.lower() in ("null", "~", "true", "false") or value[0].isdigit():
            return UNSURE
        found, after_value = value, True
    return DEFAULT_DATA_DIR if found is None else found


def request(args: PushArgs, environ: Mapping[str, str], cwd: Path) -> Message:
    """The ``push`` message for *args*."""
    return {
        "t": "push",
        "protocol": PROTOCOL,
        "version": ctnode.__version__,
        "package": os.path.dirname(os.path.realpath(ctnode.__file__)),
        "env": settings_environment(environ),
        "cwd": str(cwd),
        **args.to_json(),
    }


class Resume(NamedTuple):
    """The node submitted the job but stopped before its end (it is stopping): the command
    finishes through the database, as the ordinary path does (``cli.resume_push``)."""

    args: PushArgs
    job_id: int
    extra: dict[str, object]


def push(argv: Sequence[str]) -> int | Resume | None:
    """Run ``ctnode ARGV`` through the local node if it is a plain push and the node takes it:
    the exit code (or Resume); None to run the ordinary command line instead."""
    args = parse(argv)
    if args is None:
        return None
    try:
        cwd = Path(os.getcwd())
    except OSError:
        return None
    environ = os.environ
    run_dir = guess_run_dir(args.config, settings_environment(environ), cwd)
    if run_dir is None:
        return None
    sock = _connect(run_dir)
    if sock is None:
        return None
    with sock:
        reader = Reader(sock)
        try:
            send(sock, request(args, environ, cwd))
            answer = reader.read()
            if answer.get("t") != "ready":
                return None
            send(sock, {"t": "submit"})
        except (OSError, Closed):
            return None
        sock.settimeout(None)
        return _Session(args, reader).run()


def _connect(run_dir: Path) -> socket.socket | None:
    """A connection to the node's hand-off socket, or None."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(READY_TIMEOUT)
    try:
        sock.connect(submit_address(run_dir))
    except OSError:
        sock.close()
        return None
    return sock


class _Session:
    """After ``submit``: print what the node sends until it ends."""

    def __init__(self, args: PushArgs, reader: Reader) -> None:
        self.args = args
        self.reader = reader
        self.job_id: int | None = None
        self.extra: dict[str, object] = {}
        self.display: AbstractContextManager[Display] | None = None
        self.shown: Display | None = None

    def run(self) -> int | Resume:
        try:
            while True:
                try:
                    message = self.reader.read()
                except (OSError, Closed):
                    return self._lost()
                try:
                    code = self._handle(message)
                except (KeyError, TypeError, ValueError):
                    return self._lost()  # not a message of this protocol: stop listening
                if code is not None:
                    return code
        finally:
            self._unfollow()

    def _handle(self, message: Message) -> int | Resume | None:
        kind = message["t"]
        if kind == "stderr":
            _err(str(message["text"]))
        elif kind == "job":
            self.job_id = int(message["id"])
            extra = message.get("extra")
            self.extra = extra if isinstance(extra, dict) else {}
        elif kind == "follow":
            self._unfollow()
            self.display = terminal(int(message["job"]), sys.stderr)
            self.shown = self.display.__enter__()
        elif kind == "show" and self.shown is not None:
            self.shown.show(Snapshot.from_json(message))
        elif kind == "warn" and self.shown is not None:
            self.shown.warn(str(message["text"]))
        elif kind == "unfollow":
            self._unfollow()
        elif kind == "end":
            self._unfollow()
            for line in message["stdout"]:
                sys.stdout.write(f"{line}\n")
            return int(message["code"])
        elif kind == "error":
            self._unfollow()
            _err(f"ctnode: error: {message['message']}")
            for problem in message.get("problems") or ():
                _err(f"  {problem}")
            return int(message["code"])
        elif kind == "detach":
            return self._lost()
        return None

    def _unfollow(self) -> None:
        if self.display is not None:
            display, self.display, self.shown = self.display, None, None
            display.__exit__(None, None, None)

    def _lost(self) -> int | Resume:
        """The node went away (stopped, or died) before the end."""
        self._unfollow()
        if self.job_id is None:
            _err(
                "ctnode: error: the node closed the connection before confirming the job; it "
                "may have been queued (see `ctnode jobs list`)"
            )
            return 1
        # The job is committed: follow it through the database, as the ordinary path does.
        return Resume(self.args, self.job_id, self.extra)


def _err(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()
