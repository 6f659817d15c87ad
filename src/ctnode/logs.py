"""Structured logging: one JSON object per line (or a console format), stdlib bridged in.

Event names are namespaced (``scp.store.accepted``, ``job.retry_scheduled``); context such as the
association or job is bound with ``structlog.contextvars`` in the thread or task doing the work,
so pynetdicom's own lines emitted there carry it too. Patient names and IDs are removed from every
event unless ``logging.log_identifiers`` is true.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from ctnode.config import LogFormat, LoggingSettings

IDENTIFIER_KEYS = frozenset({"patient_name", "patient_id", "PatientName", "PatientID"})


class _RedactIdentifiers:
    """Processor removing patient identifiers from events."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(
        self, logger: Any, name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self.enabled:
            for key in IDENTIFIER_KEYS & event.keys():
                event[key] = "<redacted>"
        return event


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger (idempotent)."""
    stream = stream or sys.stderr
    renderer: Any
    if settings.format is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _RedactIdentifiers(not settings.log_identifiers),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # pynetdicom is chatty at INFO (it logs every PDU summary); keep its warnings and errors.
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if settings.level == "DEBUG" else logging.WARNING
    )
    # Alembic narrates every step at INFO; ctnode logs one db.migrated event instead.
    logging.getLogger("alembic").setLevel(
        logging.DEBUG if settings.level == "DEBUG" else logging.WARNING
    )
    _quiet_pynetdicom_identifiers(settings.log_identifiers)


def _quiet_pynetdicom_identifiers(log_identifiers: bool) -> None:
    """pynetdicom's own identifier logging follows ours. Only when pynetdicom is loaded
    (``ctnode run`` loads it before configuring logs): ctnode's networking is its own, and
    short commands should not pay for importing pynetdicom."""
    if "pynetdicom" not in sys.modules:
        return
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = log_identifiers
    _config.LOG_RESPONSE_IDENTIFIERS = log_identifiers


def get_logger(name: str) -> Any:
    """A structlog logger for *name*."""
    return structlog.stdlib.get_logger(name)
