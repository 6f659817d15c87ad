"""Durable storage of received objects under ``<data_dir>``, and their index rows.

Modules, one job each:

* ``paths`` — where an object goes under ``store/`` (pure rules, no I/O);
* ``values`` — ``StoreRequest`` (what a C-STORE asks) and ``IngestResult`` (the store's answer);
* ``spool`` — a file in ``spool/``: written as the object arrives, walked, hashed and synced;
* ``reception`` — ``Reception``, one object's receive from its command to its answer;
* ``rows`` — index rows: their values, the duplicate lookup and ``GroupCommit``;
* ``recovery`` — start-up resolution of what a crash left in ``spool/``;
* ``store`` — ``Store``: ingest (validate, sync, place, index), duplicates, removal.
"""

from ctnode.storage.paths import SPOOL_SUFFIX, contained_path, instance_relpath, quarantine_name
from ctnode.storage.reception import Reception
from ctnode.storage.recovery import recover_spool
from ctnode.storage.rows import GroupCommit
from ctnode.storage.spool import SpoolFile
from ctnode.storage.store import Store
from ctnode.storage.values import IngestResult, StoreRequest

__all__ = [
    "SPOOL_SUFFIX",
    "GroupCommit",
    "IngestResult",
    "Reception",
    "SpoolFile",
    "Store",
    "StoreRequest",
    "contained_path",
    "instance_relpath",
    "quarantine_name",
    "recover_spool",
]
