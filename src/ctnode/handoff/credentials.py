"""Who is connecting to the hand-off socket, and whether the node may act for them.

The kernel's credentials of the connecting process (SO_PEERCRED: pid, user and group as of its
``connect``), completed from ``/proc/<pid>``: its supplementary groups, mount namespace and root
directory. The node acts only for a process that would read the same files as the node itself
reads (``refusal``); what cannot be read counts as different.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

ANOTHER_USER = "another user"


@dataclass(frozen=True, slots=True)
class Identity:
    """What decides which files a process reads and how: user, groups, mount namespace, root."""

    uid: int
    gid: int
    groups: frozenset[int]
    #: ``/proc/<pid>/ns/mnt`` (None: unknown).
    mount_ns: str | None
    #: (device, inode) of the process's root directory (None: unknown).
    root: tuple[int, int] | None


def refusal(peer: Identity, own: Identity) -> str | None:
    """Why a process *peer* may not submit through a node running as *own*; None if it may."""
    if peer.uid != own.uid:
        return ANOTHER_USER
    if peer.gid != own.gid or peer.groups != own.groups:
        return "other groups"
    if peer.mount_ns is None or peer.mount_ns != own.mount_ns:
        return "another mount namespace"
    if peer.root is None or peer.root != own.root:
        return "another root directory"
    return None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel (SO_PEERCRED, as of its
    connect)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def identity_of(pid: int, uid: int, gid: int) -> Identity:
    """The identity of process *pid* (its user and group as the kernel reported them), read
    from ``/proc``; what cannot be read is None (and refused)."""
    proc = Path(f"/proc/{pid}")
    groups: frozenset[int] = frozenset({-1})  # never equal to a real group set
    with contextlib.suppress(OSError, ValueError):
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("Groups:"):
                groups = frozenset(int(g) for g in line.split()[1:])
    mount_ns = root = None
    with contextlib.suppress(OSError):
        mount_ns = os.readlink(proc / "ns" / "mnt")
    with contextlib.suppress(OSError):
        st = os.stat(proc / "root")
        root = (st.st_dev, st.st_ino)
    return Identity(uid, gid, groups, mount_ns, root)


def own_identity() -> Identity:
    """This process's identity."""
    mount_ns: str | None = None
    with contextlib.suppress(OSError):
        mount_ns = os.readlink("/proc/self/ns/mnt")
    st = os.stat("/")
    groups = frozenset(os.getgroups())
    return Identity(os.geteuid(), os.getegid(), groups, mount_ns, (st.st_dev, st.st_ino))
