"""Scripted pynetdicom peers for what no real peer does on demand (odd statuses, aborts)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from tests.helpers.procs import free_port


class FakeStoreSCP:
    """A C-STORE SCP whose answer to the n-th C-STORE is ``respond(n, sop_instance_uid)``."""

    def __init__(
        self,
        respond: Callable[[int, str], int] = lambda n, uid: 0x0000,
        *,
        ae_title: str = "FAKESCP",
        require_called_aet: bool = True,
        syntaxes: list[str] | None = None,
    ) -> None:
        self.respond = respond
        self.port = free_port()
        self.received: list[str] = []
        self.statuses: list[int] = []
        self.open_associations = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called_aet
        ae.network_timeout = 10
        for cx in AllStoragePresentationContexts:
            if syntaxes:
                ae.add_supported_context(cx.abstract_syntax, syntaxes)
            else:
                ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        ae.add_supported_context(Verification)
        self.ae = ae
        self.server: Any = None

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            n = len(self.statuses)
            code = self.respond(n, uid)
            self.statuses.append(code)
            if code in (0x0000, 0xB000, 0xB006, 0xB007):
                self.received.append(uid)
        return code

    def _on_open(self, event: Any) -> None:
        with self._lock:
            self.open_associations += 1
            self.max_concurrent = max(self.max_concurrent, self.open_associations)

    def _on_close(self, event: Any) -> None:
        with self._lock:
            self.open_associations -= 1

    def start(self) -> FakeStoreSCP:
        """Serve on 127.0.0.1:port in background threads."""
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_ACCEPTED, self._on_open),
                (evt.EVT_RELEASED, self._on_close),
                (evt.EVT_ABORTED, self._on_close),
            ],
        )
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def __enter__(self) -> FakeStoreSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
