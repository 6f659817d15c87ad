"""Bounds on what a peer may make ctnode hold in memory, shared by the acceptor and requestor.

A peer's PDU lengths are bounded by the maximum PDU we offer; these bound the messages built from
many PDUs. A peer that exceeds one is aborted (A-ABORT), never waited for.
"""

from __future__ import annotations

from typing import Final

#: Largest command set accepted (a real one is under 1 KiB).
MAX_COMMAND_BYTES: Final = 64 * 1024
#: Largest data set held in memory for non-storage messages (C-FIND identifiers, N-EVENT-REPORT
#: and N-ACTION data); ``node.max_response_dataset_bytes`` overrides it on outbound associations.
MAX_SMALL_DATASET: Final = 16 * 1024 * 1024
