"""One exception tree for ctnode.

Every exception's docstring is its default message; raise with a specific message that names the
file, field or peer and says how to fix it.  ``TransientError`` means "try again later" (the job
queue retries it); ``PermanentError`` means retrying cannot help.
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


class AssociationRejected(CtnodeError):
    """The peer rejected the association."""

    def __init__(self, message: str, *, result: int, source: int, reason: int) -> None:
        super().__init__(message)
        self.result, self.source, self.reason = result, source, reason

    @property
    def transient(self) -> bool:
        """A-ASSOCIATE-RJ result 2 is "rejected-transient"."""
        return self.result == 2


class AssociationAborted(CtnodeError):
    """The association was aborted (A-ABORT, connection reset or timeout)."""


class PeerUnreachable(CtnodeError):
    """The peer could not be reached (connection refused, timed out or name not resolved)."""


class NotFound(CtnodeError):
    """The requested object does not exist (a usage error: wrong name or id)."""

    exit_code = 2
