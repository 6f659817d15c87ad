"""Senders that know exactly which instances a node acknowledged (for the fault ledger).

Both send a list of Part 10 files over one association and call ``on_ack(uid, path)`` for every
C-STORE answered Success — nothing else counts as acknowledged. They stop at the first broken
association (the node was killed, the disk filled, ...) and report what happened.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt

from tests.helpers.ledger import uid_of
from tests.helpers.procs import DCMTK_ENV
from tests.helpers.scu import _nodelay, client_ae

OnAck = Callable[[str, Path], None]


@dataclass
class SendResult:
    """What a sender saw."""

    acknowledged: list[Path] = field(default_factory=list)
    #: Non-success statuses by file.
    refused: dict[Path, int] = field(default_factory=dict)
    #: Why sending stopped early (None: every file was answered).
    broken: str | None = None


_CHUNKED_LOCK = threading.Lock()


def _meta(path: Path) -> tuple[str, str, str]:
    import pydicom

    meta = pydicom.filereader.read_file_meta_info(path)
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.TransferSyntaxUID),
        str(meta.MediaStorageSOPInstanceUID),
    )


def send_pynetdicom(
    port: int,
    files: Sequence[Path],
    on_ack: OnAck,
    *,
    calling: str = "MODALITY",
    called: str = "CTNODE",
    timeout: float = 10,
    between: Callable[[int], None] | None = None,
) -> SendResult:
    """C-STORE *files* over one pynetdicom association, data sets sent as stored in the
    files (no re-encoding). *between(n)* runs before the n-th C-STORE (e.g. to pace it)."""
    result = SendResult()
    metas = {path: _meta(path) for path in files}
    ae = client_ae(calling, timeout)
    for sop_class, syntax in sorted({(m[0], m[1]) for m in metas.values()}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    if not assoc.is_established:
        result.broken = "association not established"
        return result
    try:
        with _CHUNKED_LOCK:
            saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        try:
            for n, path in enumerate(files):
                if between is not None:
                    between(n)
                if not assoc.is_established:
                    result.broken = "association ended"
                    break
                try:
                    status = assoc.send_c_store(path, msg_id=n % 65535 + 1)
                except (RuntimeError, OSError, ValueError) as exc:
                    result.broken = f"{type(exc).__name__}: {exc}"
                    break
                code = getattr(status, "Status", None)
                if code is None:
                    result.broken = "no response (association aborted or timed out)"
                    break
                if int(code) == 0x0000:
                    result.acknowledged.append(path)
                    on_ack(metas[path][2], path)
                else:
                    result.refused[path] = int(code)
        finally:
            with _CHUNKED_LOCK:
                pynetdicom_config.STORE_SEND_CHUNKED_DATASET = saved
    finally:
        if assoc.is_established:
            with contextlib.suppress(Exception):
                assoc.release()
    return result


_SENDING = re.compile(r"^I: Sending file: (.*)$")


def send_storescu(
    port: int,
    files: Sequence[Path],
    on_ack: OnAck,
    *,
    calling: str = "STORESCU",
    called: str = "CTNODE",
    timeout: float = 120,
) -> SendResult:
    """DCMTK ``storescu -v`` over one association; acknowledged = a "Received Store Response
    (Success)" line after the "Sending file:" line of that file."""
    result = SendResult()
    proc = subprocess.Popen(
        [
            "storescu",
            "-v",
            "-aet",
            calling,
            "-aec",
            called,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=DCMTK_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    current: Path | None = None
    lines: list[str] = []
    for raw in proc.stdout:
        line = raw.strip()
        lines.append(line)
        if m := _SENDING.match(line):
            current = Path(m.group(1))
        elif line.startswith("I: Received Store Response") and current is not None:
            if "(Success)" in line:
                result.acknowledged.append(current)
                on_ack(uid_of(current), current)
            else:
                result.refused[current] = -1
            current = None
    proc.wait(timeout=timeout)
    if proc.returncode != 0:
        result.broken = f"storescu exited {proc.returncode}: " + " | ".join(lines[-3:])
    return result
