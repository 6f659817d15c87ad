"""pynetdicom as an independent test client (and its low-level API for crafted requests)."""

from __future__ import annotations

import contextlib
import socket
import warnings
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE

from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION


def _nodelay(event: Any) -> None:
    with contextlib.suppress(OSError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client_ae(ae_title: str = "MODALITY", timeout: float = 10) -> AE:
    """A pynetdicom AE with short timeouts."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


@contextlib.contextmanager
def associate(
    port: int,
    contexts: list[tuple[str, list[str]]],
    *,
    calling: str = "MODALITY",
    called: str = "CTNODE",
    bind_address: tuple[str, int] = ("127.0.0.1", 0),
    **kwargs: Any,
) -> Iterator[Any]:
    """An established pynetdicom association (asserted) released on exit."""
    ae = client_ae(calling)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=called,
        bind_address=bind_address,
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        **kwargs,
    )
    assert assoc.is_established, "association was not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def try_associate(
    port: int,
    contexts: list[tuple[str, list[str]]],
    *,
    calling: str = "MODALITY",
    called: str = "CTNODE",
    bind_address: tuple[str, int] = ("127.0.0.1", 0),
) -> Any:
    """Attempt an association and return it (established, rejected or aborted)."""
    ae = client_ae(calling)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=called, bind_address=bind_address)


def rejection(assoc: Any) -> tuple[int, int, int]:
    """(result, source, reason) of a rejected association."""
    assert assoc.is_rejected, "association was not rejected"
    rsp = assoc.acceptor.primitive
    return (rsp.result, rsp.result_source, rsp.diagnostic)


def raw_store(
    assoc: Any,
    sop_class: str,
    sop_instance: str,
    data: bytes,
    transfer_syntax: str = EXPLICIT_VR_LE,
) -> int:
    """Send a C-STORE with arbitrary command UIDs and raw data set bytes; returns the status.

    Uses pynetdicom's DIMSE layer directly (as ``send_c_store`` does), which lets the test
    craft what a well-behaved client would never send.
    """
    context = next(
        c
        for c in assoc.accepted_contexts
        if c.abstract_syntax == sop_class and c.transfer_syntax[0] == transfer_syntax
    )
    req = C_STORE()
    req.MessageID = 1
    req.Priority = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        req.AffectedSOPClassUID = sop_class
        if len(sop_instance) > 64:  # pynetdicom refuses to build such a request: force it
            req._affected_sop_instance_uid = sop_instance
        else:
            req.AffectedSOPInstanceUID = sop_instance
    req.DataSet = BytesIO(data)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        pass
    assoc.dimse.send_msg(req, context.context_id)
    _, rsp = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    assert rsp is not None, "no C-STORE response"
    return int(rsp.Status)


def echo_ok(port: int, calling: str = "MODALITY", called: str = "CTNODE") -> bool:
    """True if a C-ECHO succeeds."""
    assoc = try_associate(port, [(VERIFICATION, [IMPLICIT_VR_LE])], calling=calling, called=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def store_dataset(port: int, ds: Dataset, *, calling: str = "MODALITY") -> int:
    """C-STORE one pydicom data set with pynetdicom; returns the status."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    with associate(port, [(str(ds.SOPClassUID), [syntax])], calling=calling) as assoc:
        status = assoc.send_c_store(ds)
        return int(status.Status)
