"""Settings: a YAML file (``--config`` or ``CTNODE_CONFIG``) overridden by ``CTNODE_*`` variables.

Two sets of defaults: with a configuration file, production defaults (``/var/lib/ctnode``,
``/etc/ctnode/peers``, callers must be configured peers); without one, the *embedded default*
(loopback only, ``./var/ctnode``, any calling AE accepted) so that ``ctnode run`` works out of the
box. Settings are frozen; unknown keys are errors.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ctnode.dicom.uids import ae_title_problem
from ctnode.errors import ConfigError
from ctnode.yamlio import load_yaml_file

ENV_PREFIX = "CTNODE_"
CONFIG_ENV = "CTNODE_CONFIG"

#: The environment ``Settings`` reads its ``CTNODE_*`` variables from while ``load_settings``
#: runs with an *env* other than ``os.environ`` (another process's, for ``ctnode.handoff``).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("ctnode_environ", default=None)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


def check_ae_title(value: str) -> str:
    """Pydantic validator body for AE titles."""
    problem = ae_title_problem(value)
    if problem:
        raise ValueError(f"AE title {value!r} {problem}")
    return value.strip(" ")


class NodeTimeouts(_Model):
    """Inbound association timeouts, in seconds."""

    #: Time allowed for the A-ASSOCIATE-RQ to arrive after connect, and for release.
    acse: Seconds = 30
    #: While a data set is arriving, the longest wait for its next PDU (never longer than
    #: ``network``).
    dimse: Seconds = 120
    #: Idle time allowed between messages on an association, and the read deadline: a PDU
    #: must complete within this long of its first byte. A peer silent for longer is dropped.
    network: Seconds = 60


class TlsSettings(_Model):
    """DICOM TLS listener (BCP 195 profile of PS3.15)."""

    enabled: bool = False
    port: Port = 2762
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = True
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    handshake_timeout: Seconds = 10


class NodeSettings(_Model):
    """This node: identity, listener and inbound limits."""

    ae_title: str = "CTNODE"
    #: Name of this node among several sharing one database (jobs on local files are pinned to it).
    name: str = Field(default_factory=socket.gethostname)
    bind: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens on the hospital network
    port: Port = 4006
    max_associations: Annotated[int, Field(ge=1, le=1024)] = 16
    #: Concurrent associations allowed from one source address.
    max_associations_per_address: Annotated[int, Field(ge=1, le=1024)] = 8
    accept_unknown_callers: bool = False
    timeouts: NodeTimeouts = NodeTimeouts()
    #: Maximum PDU length we offer to senders (bytes). Larger PDUs mean fewer reads per object.
    max_pdu_length: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 262144
    #: Largest data set a peer may send us on an outbound association (a C-FIND identifier,
    #: an N-ACTION or N-EVENT-REPORT reply, a failed-instance list); beyond it ctnode aborts.
    max_response_dataset_bytes: Annotated[ByteSize, Field(ge=1 << 16)] = ByteSize(16 << 20)
    #: On SIGTERM, in-flight associations get this long to finish.
    shutdown_grace: Seconds = 30
    tls: TlsSettings = TlsSettings()

    _ae = field_validator("ae_title")(check_ae_title)


class OnDuplicate(StrEnum):
    """What to do when an instance arrives again with different bytes."""

    KEEP_FIRST = "keep_first"
    OVERWRITE = "overwrite"
    REJECT = "reject"


class StorageSettings(_Model):
    """The data directory: ``store/``, ``spool/``, ``quarantine/``, ``run/`` and the SQLite
    file."""

    data_dir: Path = Path("/var/lib/ctnode")
    min_free_bytes: ByteSize = ByteSize(1 << 30)
    on_duplicate: OnDuplicate = OnDuplicate.KEEP_FIRST
    #: Largest data set accepted in one C-STORE (answered 0xA700 beyond it).
    max_instance_bytes: ByteSize = ByteSize(4 << 30)
    #: True when every node sharing the database sees the same data dir (e.g. NFS).
    shared: bool = False
    #: Remove local instances once a peer in ``commitment_peers`` has committed them.
    delete_after_commit: bool = False
    commitment_peers: tuple[str, ...] = ()
    #: Worker processes placing objects (walk, hash, sync, link) for concurrent associations.
    ingest_processes: int = Field(default=0, ge=0, le=16)

    @property
    def store_dir(self) -> Path:
        """``<data_dir>/store``."""
        return self.data_dir / "store"

    @property
    def spool_dir(self) -> Path:
        """``<data_dir>/spool``."""
        return self.data_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        """``<data_dir>/quarantine``."""
        return self.data_dir / "quarantine"

    @property
    def run_dir(self) -> Path:
        """``<data_dir>/run``: the running node's wake and hand-off sockets (``wake.sock``,
        ``submit.sock``)."""
        return self.data_dir / "run"


class DatabaseSettings(_Model):
    """Where the index and the job queue live."""

    #: SQLAlchemy URL; default ``sqlite:///<data_dir>/ctnode.db``.
    url: str | None = None
    #: How long a write waits for a lock before the operation fails (0xA700 for a C-STORE).
    busy_timeout: Seconds = 10


class LogFormat(StrEnum):
    """Log line format."""

    JSON = "json"
    CONSOLE = "console"


class LoggingSettings(_Model):
    """Structured logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: LogFormat = LogFormat.JSON
    #: Put patient names and IDs in logs (off: they never appear).
    log_identifiers: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class RetrySettings(_Model):
    """Retry policy: delay(n) = min(max_delay, initial_delay * multiplier**(n-1)) +/- jitter."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 5
    initial_delay: Annotated[float, Field(ge=0)] = 10
    multiplier: Annotated[float, Field(ge=1)] = 2
    max_delay: Annotated[float, Field(ge=0)] = 600
    #: Fraction of the delay added or removed at random (0.1 = +/-10 %).
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1


class QueueSettings(_Model):
    """The job queue."""

    workers: Annotated[int, Field(ge=1, le=256)] = 4
    #: A claimed job's lease; renewed every third of it while the job runs.
    lease_seconds: Annotated[float, Field(ge=2)] = 60
    #: How often the idle workers look for work (one claim per interval between them); a job
    #: submitted on this host wakes them at once through ``<data_dir>/run/wake.sock``.
    poll_interval: Annotated[float, Field(gt=0)] = 0.5
    retry: RetrySettings = RetrySettings()


class QueryScpSettings(_Model):
    """Query/Retrieve requests peers send us (C-FIND, C-MOVE, C-GET over the local store)."""

    #: Match person names ignoring case (PS3.4 C.2.2.2.1 allows it; the default is literal).
    case_insensitive_names: bool = False


class CommitmentScpSettings(_Model):
    """Storage commitment requests peers send us (ctnode as Storage Commitment SCP)."""

    #: local: committed once durable in ctnode's store and index; upstream: once every peer in
    #: ``upstream`` has committed it too (ctnode pushes and asks them itself).
    mode: Literal["local", "upstream"] = "local"
    #: Peers that must commit an instance before ctnode reports it committed (upstream mode).
    upstream: tuple[str, ...] = ()
    #: Upstream mode: after this many seconds, what is not committed is reported failed (0x0110).
    report_within: Seconds = 3600

    @field_validator("upstream")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))


class MetricsSettings(_Model):
    """Prometheus ``/metrics`` and ``/healthz`` ``/readyz``."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: Port = 9106


class Settings(BaseSettings):
    """All of ctnode's settings (see ``config/ctnode.yaml`` for a commented example)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    peers_dir: Path = Path("/etc/ctnode/peers")
    routes_dir: Path = Path("/etc/ctnode/routes")
    logging: LoggingSettings = LoggingSettings()
    queue: QueueSettings = QueueSettings()
    metrics: MetricsSettings = MetricsSettings()
    commitment_scp: CommitmentScpSettings = CommitmentScpSettings()
    query_scp: QueryScpSettings = QueryScpSettings()

    _source_file: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables override the YAML file (which arrives as init values)."""
        environ = _ENVIRON.get()
        if environ is not None and isinstance(env_settings, EnvSettingsSource):
            # Names are matched case-insensitively (case_sensitive=False), as from os.environ.
            env_settings.env_vars = {name.lower(): value for name, value in environ.items()}
        return (env_settings, init_settings)

    @property
    def database_url(self) -> str:
        """The configured URL, or SQLite in the data dir."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.storage.data_dir.absolute() / 'ctnode.db'}"

    @property
    def source_file(self) -> Path | None:
        """The file these settings came from (None for the embedded default)."""
        return self._source_file

    @property
    def is_embedded_default(self) -> bool:
        """True when no configuration file was given."""
        return self.source_file is None


def embedded_defaults(
    cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Defaults when no configuration file is given: a loopback node that works out of the box."""
    base = cwd or Path.cwd()
    state = (os.environ if env is None else env).get("STATE_DIRECTORY")
    data_dir = Path(state.split(":")[0]) if state else base / "var" / "ctnode"
    peers = base / "config" / "peers"
    routes = base / "config" / "routes"
    return {
        "node": {"bind": "127.0.0.1", "accept_unknown_callers": True},
        "storage": {"data_dir": str(data_dir)},
        "peers_dir": str(peers),
        "routes_dir": str(routes),
    }


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def format_problems(exc: ValidationError, source: str, env: Mapping[str, str]) -> list[str]:
    """One line per problem: where it came from (file or variable), the key, what is wrong."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(part) for part in loc)
        env_name = _env_name(loc)
        origin = f"environment {env_name}" if env_name in env else source
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see config/ctnode.yaml)"
        problems.append(f"{origin}: {key}: {message}")
    return problems


def resolve_config_path(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """``--config`` wins over ``CTNODE_CONFIG``; None means the embedded default."""
    env = os.environ if env is None else env
    if explicit is not None:
        return explicit
    value = env.get(CONFIG_ENV)
    return Path(value) if value else None


def load_settings(
    config: Path | None = None, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Settings:
    """Load settings (file, then ``CTNODE_*`` variables); ConfigError lists every problem.

    By default as this process sees them; with *env* and *cwd*, as a process with that
    environment and working directory would (a relative ``--config`` is taken from *cwd*;
    relative paths inside the file stay relative).
    """
    environ = os.environ if env is None else env
    path = resolve_config_path(config, environ)
    if path is None:
        data = embedded_defaults(cwd, environ)
        source = "embedded default"
    else:
        if cwd is not None and not path.is_absolute():
            path = cwd / path
        data = load_yaml_file(path)
        source = str(path)
    token = _ENVIRON.set(None if env is None else dict(env))
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = format_problems(exc, source, environ)
        raise ConfigError(
            f"{len(problems)} problem(s) in the configuration", problems=problems
        ) from None
    finally:
        _ENVIRON.reset(token)
    settings._source_file = path
    return settings
