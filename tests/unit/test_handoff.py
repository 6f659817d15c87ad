"""ctnode.handoff's pure parts: the command line it takes, where it looks for the node, who the
node serves, what a request must be, and the wire (the node's loading of another process's
settings and paths: test_as_another_process.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

import ctnode
from ctnode.config import load_settings
from ctnode.handoff.client import (
    DEFAULT_DATA_DIR,
    UNSURE,
    PushArgs,
    file_data_dir,
    guess_run_dir,
    parse,
    plain_data_dir,
    request,
    settings_environment,
)
from ctnode.handoff.credentials import (
    Identity,
    identity_of,
    own_identity,
    peer_credentials,
    refusal,
)
from ctnode.handoff.request import PushRequest
from ctnode.handoff.wire import MAX_LINE, PROTOCOL, Closed, Reader, encode, submit_address
from ctnode.progress import Snapshot

# ---------------------------------------------------------------- the command line


def _fields(args: PushArgs | None) -> dict[str, Any] | None:
    return None if args is None else args.to_json()


def test_plain_push_command_lines_are_taken() -> None:
    """Every option of `push`, in the forms click reads them, between the arguments."""
    args = parse(
        [
            "--config",
            "/etc/ctnode.yaml",
            "push",
            "--wait",
            "pacs",
            "a",
            "--study=1.2",
            "b",
            "--series",
            "1.2.3",
            "--priority",
            "-3",
            "--idempotency-key",
            "k",
            "--commit",
            "--json",
        ]
    )
    assert _fields(args) == {
        "config": "/etc/ctnode.yaml",
        "peer": "pacs",
        "paths": ["a", "b"],
        "study": "1.2",
        "series": "1.2.3",
        "priority": -3,
        "wait": True,
        "commit": True,
        "as_json": True,
        "idempotency_key": "k",
    }
    assert _fields(parse(["-c", "x.yaml", "push", "p"])) == {
        **_fields(PushArgs()),  # type: ignore[dict-item]
        "config": "x.yaml",
        "peer": "p",
    }
    assert parse(["--config=x.yaml", "push", "p", "--priority=+2"]).priority == 2  # type: ignore[union-attr]
    assert parse(["push", "p", "--wait", "--wait"]).wait is True  # type: ignore[union-attr]
    assert parse(["push", "p", ""]).paths == [""]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["push"],  # no peer
        ["push", "--help"],
        ["push", "p", "--help"],
        ["--help", "push", "p"],
        ["jobs", "list"],
        ["echo", "push"],
        ["push", "p", "--", "x"],
        ["push", "p", "-"],
        ["push", "p", "-x"],
        ["push", "p", "--no-wait"],
        ["push", "p", "--wait=yes"],
        ["push", "p", "--study"],  # no value
        ["push", "p", "--study", "--wait"],  # an option where the value should be
        ["push", "p", "--study", "a", "--study", "b"],
        ["push", "p", "--priority", "high"],
        ["push", "p", "--priority", "1.5"],
        ["push", "p", "--priority", "1_0"],
        ["--config", "a", "--config", "b", "push", "p"],
        ["--config", "--wait", "push", "p"],
        ["-cfile", "push", "p"],
        ["--verbose", "push", "p"],
        ["push", "p", "--config", "x"],  # a root option after the command
    ],
)
def test_anything_else_is_left_to_the_full_command_line(argv: list[str]) -> None:
    """Help, other commands, unknown or malformed options: None (Typer handles them)."""
    assert parse(argv) is None


# ---------------------------------------------------------------- where the node is


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("config", "env"),
    [
        pytest.param("storage:\n  data_dir: {tmp}/d\n", {}, id="file"),
        pytest.param("node:\n  port: 11112\n", {}, id="file-default-data-dir"),
        pytest.param("", {}, id="empty-file"),
        pytest.param("storage:\n  data_dir: rel\n", {}, id="relative-data-dir"),
        pytest.param(
            "storage:\n  data_dir: {tmp}/d\n",
            {"CTNODE_STORAGE__DATA_DIR": "{tmp}/e"},
            id="variable",
        ),
        pytest.param("", {"ctnode_storage__data_dir": "{tmp}/e"}, id="variable-lower-case"),
        pytest.param(None, {}, id="embedded"),
        pytest.param(None, {"STATE_DIRECTORY": "{tmp}/s:{tmp}/t"}, id="embedded-systemd"),
        pytest.param(None, {"CTNODE_CONFIG": "{rel}"}, id="config-variable"),
    ],
)
def test_the_guess_is_where_the_settings_put_the_run_dir(
    tmp_path: Path, config: str | None, env: dict[str, str]
) -> None:
    """Where the command looks for the node is the run dir ``load_settings`` would give it,
    with a file or without, ``CTNODE_*`` variables in any case, from its working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v.format(tmp=tmp_path, rel="c.yaml") for k, v in env.items()}
    explicit = None
    if config is not None:
        _write(cwd / "c.yaml", config.format(tmp=tmp_path))
        explicit = "c.yaml"
    elif "CTNODE_CONFIG" in env:
        _write(cwd / "c.yaml", "")
    guess = guess_run_dir(explicit, env, cwd)
    settings = load_settings(Path(explicit) if explicit else None, env=env, cwd=cwd)
    data_dir = settings.storage.data_dir
    assert guess == (data_dir if data_dir.is_absolute() else cwd / data_dir) / "run"


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ("storage: [1]\n", {}),
        ("storage:\n  data_dir: 5\n", {}),
        ("storage:\n  data_dir: [1, 2\n", {}),
        ("", {"CTNODE_STORAGE": '{"data_dir": "/x"}'}),
        ("", {"CTNODE_STORAGE__DATA_DIR": "/x", "ctnode_storage__data_dir": "/y"}),
    ],
)
def test_no_guess_when_the_settings_are_not_simple(
    tmp_path: Path, config: str, env: dict[str, str]
) -> None:
    """A data dir that is not a plain string, a file that does not load, the section as JSON,
    a variable in two cases: no guess (the ordinary path then)."""
    _write(tmp_path / "c.yaml", config)
    assert guess_run_dir("c.yaml", env, tmp_path) is None
    assert guess_run_dir("missing.yaml", {}, tmp_path) is None


PLAIN_DOCUMENTS = [
    "",
    "# nothing\n",
    "storage:\n  data_dir: /srv/ctnode\n",
    "storage:\n  data_dir: /srv/ctnode   # where it all goes\n  shared: false\n",
    "node:\n  ae_title: X\n  data_dir: /not/this\nstorage:\n  min_free_bytes: 1GiB\n"
    "  data_dir: rel/dir\npeers_dir: /etc/p\n",
    "storage:\n    commitment_peers:\n      - a\n    data_dir: /four#spaces\n",
    "storage:\n  nested:\n    data_dir: /not/this\n",
    "peers_dir: /etc/p\n",
    "storage:\n  data_dir: /x\r\n",
    "storage:\n  data_dir: '/quoted'\n",
    'storage:\n  data_dir: "/double"\n',
    "storage: {data_dir: /flow}\n",
    "{storage: {data_dir: /flow}}\n",
    "---\nstorage:\n  data_dir: /doc\n",
    "storage:\n  data_dir: /a\n    continued\n",
    "storage:\n  data_dir: /a\n  data_dir: /b\n",
    "storage:\n  data_dir: /a\nstorage:\n  data_dir: /b\n",
    "storage:\n\tdata_dir: /tab\n",
    "storage:\n  data_dir: &anchor /x\n",
    "storage:\n  data_dir: !!str /x\n",
    "storage:\n  data_dir: |\n    /block\n",
    "storage:\n  data_dir:\n",
    "storage:\n  data_dir: null\n",
    "storage:\n  data_dir: 5\n",
    "storage:\n  ? data_dir\n  : /complex\n",
    "storage:\n  data_dir:/no-space\n",
    '"storage":\n  data_dir: /quoted-key\n',
    "- a\n- b\n",
    '{"storage": {"data_dir": "/json"}, "peers_dir": "/p"}',
    '{\n  "node": {"port": 104}\n}\n',
    '{"storage": "not a mapping"}',
    '{"storage": {"data_dir": "/a", "data_dir": "/b"}}',
    "{storage: {data_dir: /yaml-flow}}\n",
]


@pytest.mark.parametrize("text", PLAIN_DOCUMENTS)
def test_the_plain_reading_agrees_with_the_yaml_loader(tmp_path: Path, text: str) -> None:
    """Whenever ``plain_data_dir`` gives an answer, it is the YAML loader's (ruamel, YAML 1.2)
    ``storage.data_dir`` or the default; otherwise it says UNSURE and the loader is used."""
    path = _write(tmp_path / "c.yaml", text)
    try:
        data = YAML(typ="safe", pure=True).load(text) or {}
    except YAMLError:
        assert file_data_dir(path) is None or plain_data_dir(text) is UNSURE
        return
    storage = data.get("storage", {}) if isinstance(data, dict) else None
    expected = storage.get("data_dir", DEFAULT_DATA_DIR) if isinstance(storage, dict) else None
    assert file_data_dir(path) == expected
    plain = plain_data_dir(text)
    assert plain is UNSURE or plain == expected


def test_the_plain_reading_takes_the_usual_files() -> None:
    """The shipped example and the files tests and benchmarks write are read the plain way."""
    shipped = (Path(__file__).resolve().parents[2] / "config" / "ctnode.yaml").read_text()
    assert plain_data_dir(shipped) == "/var/lib/ctnode"
    for text in PLAIN_DOCUMENTS[:9]:
        assert plain_data_dir(text) is not UNSURE, text


def test_the_settings_environment_is_ctnodes_variables() -> None:
    assert settings_environment(
        {"CTNODE_A": "1", "ctnode_b": "2", "STATE_DIRECTORY": "/s", "PATH": "/bin", "CTNODEX": "3"}
    ) == {"CTNODE_A": "1", "ctnode_b": "2", "STATE_DIRECTORY": "/s"}


def test_a_long_run_dir_gets_an_abstract_address(tmp_path: Path) -> None:
    assert submit_address(tmp_path / "run") == str(tmp_path / "run" / "submit.sock")
    long = tmp_path / ("x" * 120) / "run"
    address = submit_address(long)
    assert isinstance(address, bytes) and address.startswith(b"\0ctnode-submit-")
    assert submit_address(long) == address


# ---------------------------------------------------------------- who the node serves

OWN = Identity(1000, 1000, frozenset({1000, 27}), "mnt:[4026531841]", (2049, 2))


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        (OWN, None),
        (Identity(0, 1000, OWN.groups, OWN.mount_ns, OWN.root), "another user"),
        (Identity(1001, 1000, OWN.groups, OWN.mount_ns, OWN.root), "another user"),
        (Identity(1000, 1001, OWN.groups, OWN.mount_ns, OWN.root), "other groups"),
        (Identity(1000, 1000, frozenset({1000}), OWN.mount_ns, OWN.root), "other groups"),
        (Identity(1000, 1000, OWN.groups, "mnt:[1]", OWN.root), "another mount namespace"),
        (Identity(1000, 1000, OWN.groups, None, OWN.root), "another mount namespace"),
        (Identity(1000, 1000, OWN.groups, OWN.mount_ns, (2049, 3)), "another root directory"),
        (Identity(1000, 1000, OWN.groups, OWN.mount_ns, None), "another root directory"),
    ],
)
def test_only_a_process_reading_files_as_the_node_does_is_served(
    peer: Identity, reason: str | None
) -> None:
    """Same user, group and supplementary groups, mount namespace and root, or refused; what
    could not be read is refused."""
    assert refusal(peer, OWN) == reason


def test_the_kernel_reports_the_connecting_process() -> None:
    """SO_PEERCRED on a real socket pair names this process; its identity is our own."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        pid, uid, gid = peer_credentials(left)
    assert (pid, uid, gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert refusal(identity_of(pid, uid, gid), own_identity()) is None


# ---------------------------------------------------------------- the request


def _message(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    args = parse(["--config", "c.yaml", "push", "pacs", "a", "--wait"])
    assert args is not None
    return {**request(args, {"CTNODE_X": "1", "HOME": "/root"}, tmp_path), **changes}


def test_a_request_carries_what_the_settings_and_the_push_need(tmp_path: Path) -> None:
    message = _message(tmp_path)
    assert message["env"] == {"CTNODE_X": "1"}
    parsed = PushRequest.from_message(message)
    assert parsed.cwd == tmp_path and parsed.config == "c.yaml" and parsed.paths == ("a",)
    assert parsed.wait and not parsed.commit and parsed.priority == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"t": "commit"},
        {"protocol": PROTOCOL + 1},
        {"version": ctnode.__version__ + ".dev1"},
        {"package": "/elsewhere/ctnode"},
        {"cwd": "relative"},
        {"cwd": None},
        {"env": {"CTNODE_X": 1}},
        {"env": ["CTNODE_X"]},
        {"paths": "a"},
        {"paths": ["a\0b"]},
        {"peer": None},
        {"peer": "pa\0cs"},
        {"priority": True},
        {"priority": "1"},
        {"wait": 1},
        {"study": 5},
    ],
)
def test_anything_else_is_not_a_request(tmp_path: Path, changes: dict[str, Any]) -> None:
    """Another protocol, another ctnode, or a malformed field: refused (ValueError)."""
    with pytest.raises(ValueError):
        PushRequest.from_message(_message(tmp_path, **changes))


# ---------------------------------------------------------------- the wire


def test_messages_are_read_across_chunks_and_bounded() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        data = encode({"t": "a", "x": "y" * 100_000}) + encode({"t": "b"})
        right.sendall(data[:7])
        reader = Reader(left)
        right.sendall(data[7:])
        assert reader.read()["x"] == "y" * 100_000
        assert reader.read() == {"t": "b"}
        right.sendall(b'["not", "a", "message"]\n')
        with pytest.raises(Closed):
            reader.read()
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def flood() -> None:
        with contextlib.suppress(OSError):
            right.sendall(b"x" * (MAX_LINE + (1 << 20)))

    sender = threading.Thread(target=flood)
    sender.start()
    with left, right:
        with pytest.raises(Closed, match="too long"):
            Reader(left).read()
        left.shutdown(socket.SHUT_RDWR)
        sender.join(10)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left:
        right.close()
        with pytest.raises(Closed):
            Reader(left).read()


def test_snapshots_travel_as_json() -> None:
    snapshot = Snapshot("job 1 (push to p) running: 1/2 delivered, 0 failed", 2, 1, "job 1 running")
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    with pytest.raises(ValueError, match="not a snapshot"):
        Snapshot.from_json({**snapshot.to_json(), "total": True})
