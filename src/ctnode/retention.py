"""Retention after a valid storage commitment.

Retention (``storage.delete_after_commit``, off by default): a local instance is removed from the
store only once a peer listed in ``storage.commitment_peers`` has committed it, never on C-STORE
success alone; removal goes through ``Store.remove`` (file unlinked, directory fsynced, index row
marked ``deleted_at``). An instance that routing still has to forward somewhere (a pending,
queued or failed match) stays; the forwarder removes it once it has been delivered everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy.exc import SQLAlchemyError

from ctnode.config import StorageSettings
from ctnode.logs import get_logger
from ctnode.storage import Store

log = get_logger("ctnode.commitment")


class Retention:
    """Removes local instances once a commitment peer has committed them (when enabled)."""

    def __init__(
        self,
        settings: StorageSettings,
        store: Store | None,
        *,
        holds: Callable[[list[str]], set[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        #: The instances among those given that must stay (routing: not yet delivered to every
        #: destination). Their removal waits for the forwarder.
        self.holds = holds

    def applies_to(self, peer: str) -> bool:
        """True if a commitment by *peer* lets local copies go."""
        return (
            self.settings.delete_after_commit
            and self.store is not None
            and peer in self.settings.commitment_peers
        )

    def apply(self, peer: str, sop_instance_uids: Iterable[str]) -> int:
        """Remove the local copies of instances *peer* committed; returns how many went."""
        if not self.applies_to(peer):
            return 0
        assert self.store is not None
        removed = 0
        uids = list(dict.fromkeys(sop_instance_uids))
        held: set[str] = set()
        if self.holds is not None:
            try:
                held = self.holds(uids)
            except SQLAlchemyError as exc:  # cannot tell: keep everything for now
                log.warning("storage.remove_failed", peer=peer, error=str(exc).splitlines()[0])
                return 0
        for uid in uids:
            if uid in held:
                continue
            try:
                if self.store.remove(uid, reason=f"committed by peer {peer!r}"):
                    removed += 1
            except (OSError, SQLAlchemyError) as exc:
                log.warning(
                    "storage.remove_failed", sop_instance_uid=uid, peer=peer, error=str(exc)
                )
        if removed:
            log.info("commitment.retention", peer=peer, removed=removed)
        return removed
