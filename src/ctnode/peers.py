"""Peers: one YAML file per remote AE in ``peers_dir`` (the file stem is the peer's name).

``load_peers`` validates the whole directory and reports every problem at once; the registry it
returns is immutable, so a reload builds a new one and swaps it in atomically.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ctnode.config import Port, RetrySettings, Seconds, check_ae_title
from ctnode.dicom.contexts import Service
from ctnode.errors import ConfigError, NotFound
from ctnode.yamlio import load_yaml_file

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

OutboundService = Literal["store", "find", "move", "commit"]


class PeerTimeouts(BaseModel):
    """Outbound timeouts towards this peer, in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: Seconds = 10
    acse: Seconds = 30
    #: Waiting for one DIMSE response. Short enough that a lost response does not stall a study.
    dimse: Seconds = 60
    network: Seconds = 60
    #: Total time a C-MOVE may keep sending pending responses before it is cancelled.
    move_total: Seconds = 3600


class PeerTls(BaseModel):
    """TLS for outbound associations to this peer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


class QueryQuirks(BaseModel):
    """C-FIND quirks of a peer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Value sent for return keys without a value; some PACS need ``*`` instead of empty.
    universal_match: Literal["", "*"] = ""


class PeerConfig(BaseModel):
    """The contents of one peer file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: str
    host: str
    port: Port
    #: What this peer may do when it calls us.
    accept: tuple[Service, ...] = (Service.ECHO,)
    #: What ctnode may ask of this peer.
    services: tuple[OutboundService, ...] = ("store", "find", "move", "commit")
    #: Concurrent outbound associations to this peer.
    max_associations: Annotated[int, Field(ge=1, le=64)] = 2
    retry: RetrySettings | None = None
    timeouts: PeerTimeouts = PeerTimeouts()
    #: Calling AE title ctnode uses towards this peer (default: node.ae_title).
    local_ae_title: str | None = None
    #: Transfer syntaxes to prefer when proposing, in order (default: the file's own, then
    #: explicit and implicit little endian).
    transfer_syntaxes: tuple[str, ...] = ()
    #: How long to wait for a storage commitment report before asking again.
    commit_timeout: Seconds = 3600
    #: After the N-ACTION, keep its association open this long for a report sent on it (some
    #: PACS answer there); 0 releases it at once. Reports on a new association always work.
    commit_linger: Annotated[float, Field(ge=0, le=300)] = 1.0
    tls: PeerTls = PeerTls()
    query: QueryQuirks = QueryQuirks()
    #: With ``accept: [move]``: the peers (by name or AE title) this peer may C-MOVE to; empty:
    #: any configured peer.
    move_destinations: tuple[str, ...] = ()

    _ae = field_validator("ae_title")(check_ae_title)

    @field_validator("local_ae_title")
    @classmethod
    def _local_ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ch.isspace() for ch in value) or len(value) > 253:
            raise ValueError(f"host {value!r} is not a host name or address")
        return value


@dataclass(frozen=True, slots=True)
class Peer:
    """A configured remote AE, with the addresses its host name resolved to."""

    name: str
    config: PeerConfig
    path: Path
    addresses: frozenset[str] = field(default_factory=frozenset)

    @property
    def ae_title(self) -> str:
        """The peer's AE title."""
        return self.config.ae_title

    @property
    def host(self) -> str:
        """Host name or address."""
        return self.config.host

    @property
    def port(self) -> int:
        """DICOM port."""
        return self.config.port

    def may(self, service: Service) -> bool:
        """True if this peer may use *service* when it calls us."""
        return service in self.config.accept

    def log_context(self) -> dict[str, Any]:
        """Fields identifying the peer in log lines."""
        return {"peer": self.name, "peer_ae": self.ae_title}


def normalize_address(address: str) -> str:
    """Canonical text form of an IP address (IPv4-mapped IPv6 becomes IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


#: Where ``ctnode echo --self`` calls from; such callers may always C-ECHO as our own AE title.
SELF_ADDRESSES = frozenset({"127.0.0.1", "::1"})


def is_self_address(address: str) -> bool:
    """True for the addresses ``ctnode echo --self`` uses (127.0.0.1 and ::1 only)."""
    return normalize_address(address) in SELF_ADDRESSES


def resolve_host(host: str) -> frozenset[str]:
    """Every address *host* resolves to (empty if it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return frozenset()
    return frozenset(normalize_address(str(info[4][0])) for info in infos)


class InboundMatch:
    """Result of looking up a caller: the peer, or why none matched."""

    __slots__ = ("peer", "problem")

    def __init__(self, peer: Peer | None, problem: str | None) -> None:
        self.peer, self.problem = peer, problem


@dataclass(frozen=True)
class PeerRegistry:
    """An immutable, validated set of peers."""

    peers: Mapping[str, Peer] = field(default_factory=dict)
    directory: Path | None = None
    warnings: tuple[str, ...] = ()

    def __iter__(self) -> Any:
        return iter(self.peers.values())

    def __len__(self) -> int:
        return len(self.peers)

    def get(self, name: str) -> Peer:
        """The peer called *name*; NotFound names the directory to look in."""
        try:
            return self.peers[name]
        except KeyError:
            where = f" in {self.directory}" if self.directory else ""
            known = ", ".join(sorted(self.peers)) or "none"
            raise NotFound(
                f"no peer named {name!r}{where} (known: {known}); add {name}.yaml to peers_dir"
            ) from None

    @property
    def known_addresses(self) -> frozenset[str]:
        """Every address any peer resolved to (for the check before any PDU is read)."""
        out: set[str] = set()
        for peer in self.peers.values():
            out |= peer.addresses
        return frozenset(out)

    def match_inbound(self, calling_ae: str, address: str) -> InboundMatch:
        """Find the peer calling as *calling_ae* from *address*."""
        address = normalize_address(address)
        candidates = [p for p in self.peers.values() if p.ae_title == calling_ae]
        if not candidates:
            return InboundMatch(None, f"calling AE {calling_ae!r} is not a configured peer")
        for peer in candidates:
            if address in peer.addresses:
                return InboundMatch(peer, None)
        names = ", ".join(p.name for p in candidates)
        return InboundMatch(
            None, f"calling AE {calling_ae!r} ({names}) called from {address}, not its host"
        )


def _problems_from(path: Path, exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(file)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        out.append(f"{path}: {key}: {message}")
    return out


def load_peers(directory: Path, *, resolve: bool = True, required: bool = False) -> PeerRegistry:
    """Load and validate every ``*.yaml``/``*.yml`` file in *directory*.

    Raises ConfigError listing every problem. A missing directory is an empty set unless
    *required*.
    """
    if not directory.is_dir():
        if required or directory.exists():
            raise ConfigError(f"peers_dir {directory} is not a directory")
        return PeerRegistry({}, directory)
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    problems: list[str] = []
    warnings: list[str] = []
    peers: dict[str, Peer] = {}
    for path in files:
        name = path.stem
        if not _NAME_RE.fullmatch(name):
            problems.append(
                f"{path}: file name must be a peer name (letters, digits, '_', '.', '-')"
            )
            continue
        if name in peers:
            problems.append(f"{path}: peer {name!r} is defined twice ({peers[name].path})")
            continue
        try:
            data = load_yaml_file(path)
            config = PeerConfig(**data)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        except ValidationError as exc:
            problems.extend(_problems_from(path, exc))
            continue
        addresses = resolve_host(config.host) if resolve else frozenset()
        if resolve and not addresses:
            warnings.append(f"{path}: host {config.host!r} does not resolve; it cannot call in")
        peers[name] = Peer(name, config, path, addresses)
    seen: dict[tuple[str, str], str] = {}
    for peer in peers.values():
        key = (peer.ae_title, peer.host.lower())
        if key in seen:
            problems.append(
                f"{peer.path}: ae_title {peer.ae_title!r} at host {peer.host!r} is also "
                f"peer {seen[key]!r}; each AE title + host pair must be unique"
            )
        seen[key] = peer.name
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {directory}", problems=problems)
    return PeerRegistry(peers, directory, tuple(warnings))
