"""One exception tree for ctnode.

Every exception's docstring is its default message; raise with a specific message that names the
file, field or peer and says how to fix it.  ``TransientError`` means "try again later" (the job
queue retries it); ``PermanentError`` means retrying cannot help.  The peer errors of an outbound
association are transient (``PeerUnreachable``, ``AssociationAborted``, ``AssociationRejected``),
except a rejection the peer calls permanent (``AssociationRejected.permanent``);
``ctnode.queue.attempt.outcome_of`` turns any of them into a job attempt's outcome.
"""

from __future__ import annotations


class CtnodeError(Exception):
    """ctnode failed; the message says why and what to do about it."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(CtnodeError):
    """The configuration is invalid: run `ctnode config check` to list every problem."""

    exit_code = 2

    def __init__(self, message: str | None = None, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if message is None and self.problems:
            message = "; ".join(self.problems)
        super().__init__(message)


class UsageError(CtnodeError):
    """The command line is invalid: see `ctnode COMMAND --help`."""

    exit_code = 2


class DatabaseError(CtnodeError):
    """The database is unreachable or not migrated.

    Check `database.url`, then run `ctnode db upgrade`.
    """


class SchemaNotAtHead(DatabaseError):
    """The database schema is not at the current version: run `ctnode db upgrade`."""

    exit_code = 2


class TransientError(CtnodeError):
    """A temporary failure (peer down, busy, out of resources); retrying later may succeed."""

    def __init__(self, message: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PermanentError(CtnodeError):
    """A failure that retrying cannot fix (refused, unsupported, unreadable)."""

    def __init__(self, message: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AssociationRejected(TransientError):
    """The peer rejected the association.

    A-ASSOCIATE-RJ result 2 ("rejected-transient": congestion, a local limit exceeded) may
    pass; result 1 ("rejected-permanent": e.g. calling or called AE title not recognised) needs
    a configuration to change, so retrying cannot help: ``permanent`` is True.
    """

    def __init__(self, message: str, *, result: int, source: int, reason: int) -> None:
        super().__init__(message)
        self.result, self.source, self.reason = result, source, reason

    @property
    def permanent(self) -> bool:
        """Anything but result 2 ("rejected-transient") is permanent."""
        return self.result != 2


class AssociationAborted(TransientError):
    """The association was aborted (A-ABORT, connection reset or timeout)."""


class PeerUnreachable(TransientError):
    """The peer could not be reached (connection refused, timed out or name not resolved)."""


class NotFound(CtnodeError):
    """The requested object does not exist (a usage error: wrong name or id)."""

    exit_code = 2
