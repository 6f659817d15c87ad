"""Routes: one YAML file per route in ``routes_dir`` (the file stem is the route's name).

``load_routes`` validates the whole directory against the peer registry and reports every
problem at once (unknown keys, unknown peers in ``to``, unknown DICOM keywords, bad patterns);
the ``RouteSet`` it returns is immutable and compiled (patterns as ``dicom.wildcard`` matchers, SOP
class keywords as UIDs, tag keywords as tag numbers), so a reload builds a new one and swaps it
in whole. Pure: reading the files is the only I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from ctnode.config import check_ae_title
from ctnode.dicom.uids import is_valid_uid
from ctnode.dicom.wildcard import AnyWildcard, Wildcard
from ctnode.errors import ConfigError, NotFound
from ctnode.peers import PeerRegistry
from ctnode.yamlio import load_yaml_file

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TAG_RE = re.compile(r"\(?([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)?")
#: Value representations a tag condition can read (text, and binary numbers).
NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD"})
_UNREADABLE_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW"})
#: How long instance-triggered matches gather before they go in one association (seconds).
INSTANCE_WINDOW = 2.0

Trigger = Literal["instance", "series", "study"]


class RouteMatchConfig(BaseModel):
    """``match:``: every condition given must hold; an omitted one matches anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: AE titles that sent the instance.
    calling_ae: tuple[str, ...] = ()
    #: Modality (0008,0060) values.
    modality: tuple[str, ...] = ()
    #: SOP classes, by keyword (CTImageStorage) or UID.
    sop_class: tuple[str, ...] = ()
    #: Keyword or gggg,eeee -> pattern (``*`` and ``?``), or a list of patterns (any).
    tags: dict[str, str | tuple[str, ...]] = {}

    @field_validator("calling_ae")
    @classmethod
    def _aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_ae_title(ae) for ae in value)


class RouteConfig(BaseModel):
    """The contents of one route file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: RouteMatchConfig = RouteMatchConfig()
    trigger: Trigger = "study"
    #: Seconds with no new matching instance of the series/study before it is forwarded.
    stable_after: Annotated[float, Field(ge=0, le=86400)] = 30
    #: Destination peers; one forward per destination.
    to: Annotated[tuple[str, ...], Field(min_length=1)]
    #: Request storage commitment from each destination after the push.
    commit: bool = False
    enabled: bool = True
    #: Also route instances ctnode retrieved with its own move jobs.
    include_retrieved: bool = False


@dataclass(frozen=True, slots=True)
class TagCondition:
    """``tags:`` entry: the tag, how its value is read, and the patterns (any may match)."""

    key: str
    tag: int
    numeric: str | None  # the VR when the value is a binary number, else None (text)
    patterns: tuple[str, ...]
    regex: AnyWildcard


@dataclass(frozen=True, slots=True)
class Route:
    """A validated, compiled route."""

    name: str
    config: RouteConfig
    path: Path
    calling_ae: frozenset[str]
    modality: frozenset[str]
    sop_class: frozenset[str]
    tags: tuple[TagCondition, ...]
    #: AE titles of the destinations (never forward an instance back to its sender).
    destination_aes: Mapping[str, str] = field(default_factory=dict)

    @property
    def trigger(self) -> Trigger:
        """instance, series or study."""
        return self.config.trigger

    @property
    def destinations(self) -> tuple[str, ...]:
        """Peers the route forwards to."""
        return self.config.to

    @property
    def wait_seconds(self) -> float:
        """Quiet time before forwarding: ``stable_after``, or the instance gathering window."""
        return INSTANCE_WINDOW if self.trigger == "instance" else self.config.stable_after


@dataclass(frozen=True)
class RouteSet:
    """An immutable, validated set of routes."""

    routes: Mapping[str, Route] = field(default_factory=dict)
    directory: Path | None = None

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes.values())

    def __len__(self) -> int:
        return len(self.routes)

    @property
    def active(self) -> tuple[Route, ...]:
        """Enabled routes, by name."""
        return tuple(r for r in self.routes.values() if r.config.enabled)

    @property
    def wanted_tags(self) -> frozenset[int]:
        """Tags the enabled routes' ``tags:`` conditions read."""
        return frozenset(c.tag for r in self.active for c in r.tags)

    def get(self, name: str) -> Route:
        """The route called *name*; NotFound names the directory."""
        try:
            return self.routes[name]
        except KeyError:
            known = ", ".join(sorted(self.routes)) or "none"
            where = f" in {self.directory}" if self.directory else ""
            raise NotFound(f"no route named {name!r}{where} (known: {known})") from None


def compile_pattern(pattern: str) -> Wildcard:
    """A ``*``/``?`` pattern matched case-insensitively, as a whole value, without backtracking
    (``dicom.wildcard``: a peer's value cannot stall the receive path)."""
    return Wildcard(pattern, fold=True)


def _sop_class_uid(value: str) -> str | None:
    """A SOP class keyword or UID as a UID (None if it is neither)."""
    if is_valid_uid(value) and value[0].isdigit():
        return value
    for uid, entry in UID_dictionary.items():
        if entry[4] == value:
            return str(uid)
    return None


def _tag_of(key: str) -> int | None:
    match = _TAG_RE.fullmatch(key.strip())
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(key)
    return None if tag is None else int(tag)


def _tag_condition(key: str, value: str | tuple[str, ...], where: str) -> TagCondition | str:
    tag = _tag_of(key)
    if tag is None:
        return f"{where}: unknown DICOM keyword (e.g. StudyDescription, or gggg,eeee)"
    if tag >> 16 in (0x0002, 0xFFFE) or (tag & 0xFFFF) == 0:
        return f"{where}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a data set attribute"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = "LO"  # a private or unknown tag is read as text
    if vr in _UNREADABLE_VRS:
        name = keyword_for_tag(tag) or key
        return f"{where}: {name} has VR {vr}; only text and numeric attributes can be matched"
    patterns = (value,) if isinstance(value, str) else value
    if not patterns:
        return f"{where}: give a pattern or a list of patterns"
    for pattern in patterns:
        if len(pattern) > 1024 or any(ord(ch) < 0x20 for ch in pattern):
            return f"{where}: bad pattern {pattern[:40]!r} (printable text, at most 1024 chars)"
    regex = AnyWildcard(patterns, fold=True)
    numeric = vr if vr in NUMERIC_VRS else None
    return TagCondition(key, tag, numeric, tuple(patterns), regex)


def compile_route(
    name: str, config: RouteConfig, path: Path, peers: PeerRegistry
) -> tuple[Route | None, list[str]]:
    """The compiled route, or None and every problem (``file: key: message``)."""
    problems: list[str] = []
    classes: set[str] = set()
    for index, value in enumerate(config.match.sop_class):
        uid = _sop_class_uid(value)
        if uid is None:
            problems.append(
                f"{path}: match.sop_class.{index}: {value!r} is neither a SOP class keyword "
                "(e.g. CTImageStorage) nor a UID"
            )
        else:
            classes.add(uid)
    conditions: list[TagCondition] = []
    for key, patterns in config.match.tags.items():
        made = _tag_condition(key, patterns, f"{path}: match.tags.{key}")
        if isinstance(made, str):
            problems.append(made)
        else:
            conditions.append(made)
    aes: dict[str, str] = {}
    for index, dest in enumerate(config.to):
        peer = peers.peers.get(dest)
        if peer is None:
            known = ", ".join(sorted(peers.peers)) or "none"
            problems.append(
                f"{path}: to.{index}: no peer named {dest!r} (known: {known}); add "
                f"{dest}.yaml to peers_dir"
            )
        elif "store" not in peer.config.services:
            problems.append(f"{path}: to.{index}: peer {dest!r} does not list store in services")
        elif config.commit and "commit" not in peer.config.services:
            problems.append(
                f"{path}: commit: peer {dest!r} does not list commit in services ({peer.path})"
            )
        else:
            aes[dest] = peer.ae_title
    if len(set(config.to)) != len(config.to):
        problems.append(f"{path}: to: a destination is listed twice")
    if problems:
        return None, problems
    route = Route(
        name,
        config,
        path,
        frozenset(config.match.calling_ae),
        frozenset(m.strip().upper() for m in config.match.modality),
        frozenset(classes),
        tuple(conditions),
        aes,
    )
    return route, []


def _problems_from(path: Path, exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(file)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        out.append(f"{path}: {key}: {message}")
    return out


def load_routes(directory: Path, peers: PeerRegistry) -> RouteSet:
    """Load, validate and compile every ``*.yaml``/``*.yml`` file in *directory*.

    Raises ConfigError listing every problem. A missing directory is an empty set.
    """
    if not directory.exists():
        return RouteSet({}, directory)
    if not directory.is_dir():
        raise ConfigError(f"routes_dir {directory} is not a directory")
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    problems: list[str] = []
    routes: dict[str, Route] = {}
    for path in files:
        name = path.stem
        if not _NAME_RE.fullmatch(name):
            problems.append(f"{path}: file name must be a route name (letters, digits, _ . -)")
            continue
        if name in routes:
            problems.append(f"{path}: route {name!r} is defined twice ({routes[name].path})")
            continue
        try:
            config = RouteConfig(**load_yaml_file(path))
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        except ValidationError as exc:
            problems.extend(_problems_from(path, exc))
            continue
        route, route_problems = compile_route(name, config, path, peers)
        problems.extend(route_problems)
        if route is not None:
            routes[name] = route
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {directory}", problems=problems)
    return RouteSet(routes, directory)
