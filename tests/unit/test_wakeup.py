"""The wake channel: datagrams, addresses, the listener and the follower's socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ctnode.queue.wakeup import (
    FOLLOW_PREFIX,
    FollowChannel,
    WakeListener,
    decode,
    encode,
    poke,
    wake_address,
)


def test_datagrams_round_trip() -> None:
    """``job N`` and ``job N <follow address>``; anything else is ignored."""
    assert decode(encode(12)) == (12, None)
    reply = FOLLOW_PREFIX + b"1-abc"
    assert decode(encode(7, reply)) == (7, reply)
    for junk in (b"", b"job", b"job x", b"wake 1", b"job 1 zz", b"\xff\xfe", b"job 1 2 3"):
        assert decode(junk) is None
    # A follow address must be one of ours (abstract, prefixed): never a path to write to.
    assert decode(encode(1, b"/etc/passwd")) is None


def test_address_is_the_socket_file_or_an_abstract_one(tmp_path: Path) -> None:
    """Short data dirs get ``run/wake.sock``; too long a path, a stable abstract address."""
    assert wake_address(tmp_path / "run") == str(tmp_path / "run" / "wake.sock")
    deep = tmp_path / ("d" * 120) / "run"
    address = wake_address(deep)
    assert isinstance(address, bytes) and address.startswith(b"\0ctnode-wake-")
    assert wake_address(deep) == address


def test_poke_without_a_listener_is_silent(tmp_path: Path) -> None:
    """No node: False, no exception (missing file, or a stale socket file nobody holds)."""
    assert poke(wake_address(tmp_path / "run"), 1) is False
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(stale))
    assert poke(str(stale), 1) is False


@pytest.mark.parametrize("deep", [False, True], ids=["socket-file", "abstract"])
def test_listener_receives_pokes_and_notifies_followers(tmp_path: Path, deep: bool) -> None:
    """A poke reaches the listener; its notification reaches the follower's channel."""
    run_dir = (tmp_path / ("d" * 120) if deep else tmp_path) / "run"
    seen: list[tuple[int, bytes | None]] = []
    listener = WakeListener(run_dir, lambda job, reply: seen.append((job, reply)))
    assert listener.open()
    try:
        with FollowChannel() as channel:
            assert channel.sock is not None
            assert poke(listener.address, 5)
            assert poke(listener.address, 6, channel.address)
            assert listener.drain() == 2
            assert seen == [(5, None), (6, channel.address)]
            assert not channel.wait(0.01)
            listener.notify(6, [channel.address, FOLLOW_PREFIX + b"gone"])
            assert channel.wait(2)
    finally:
        listener.close()
    if not deep:
        assert not (run_dir / "wake.sock").exists()
    assert poke(listener.address, 1) is False


def test_listener_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    """A socket file left by a killed node is replaced; a plain file is left alone."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(run_dir / "wake.sock"))
    listener = WakeListener(run_dir, lambda job, reply: None)
    assert listener.open()
    listener.close()
    (run_dir / "wake.sock").write_text("not a socket")
    assert not WakeListener(run_dir, lambda job, reply: None).open()
    assert (run_dir / "wake.sock").read_text() == "not a socket"
