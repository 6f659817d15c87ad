"""A plain pynetdicom storage SCP, the "write it yourself in Python" alternative to ctnode.

    python bench/pynetdicom_scp.py --port PORT --out DIR [--ae-title PYNETDICOM]

One ``AE`` with pynetdicom's default storage presentation contexts (``StoragePresentationContexts``,
its default transfer syntaxes, default maximum PDU, any calling and called AE title accepted),
served by ``start_server`` (a thread per association). The C-STORE handler does what pynetdicom's
documentation shows, made durable:

1. the received dataset is decoded (``event.dataset``), given the association's file meta
   (``event.file_meta``) and written as a DICOM Part 10 file with ``Dataset.save_as(...,
   enforce_file_format=True)`` (pydicom 3's name for ``write_like_original=False``) to a
   temporary file ``.<uid>.tmp`` in DIR;
2. that file is ``fsync``-ed, renamed to ``<SOP Instance UID>.dcm`` (replacing an earlier one of
   the same UID) and DIR is ``fsync``-ed;
3. only then the handler answers 0x0000 (Success); any exception answers 0xA700 (and a dataset
   without a usable SOP Instance UID 0xC000).

Durability: an instance answered Success has its data and its directory entry on stable storage,
so it survives a crash of this process, of the OS or of the power at any later instant, and no
partial file ever carries a ``.dcm`` name. There is nothing more: no index or database, no
duplicate detection, no quota or free-space check, no access control, no metrics. (ctnode's
durable receive adds an index row committed with SQLite ``synchronous=FULL`` before answering.)

Stops on SIGTERM or SIGINT. Run as a subprocess by ``bench.peers.PynetdicomServer``; it needs no
import from ``bench`` or ``ctnode``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any


def durable_store_handler(out_dir: Path) -> Any:
    """The ``EVT_C_STORE`` handler writing into *out_dir* (see the module docstring)."""
    dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)

    def handle_store(event: Any) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.SOPInstanceUID)
            if not uid or "/" in uid or uid.startswith("."):
                return 0xC000  # Cannot understand: no SOP Instance UID to name a file by
            tmp = out_dir / f".{uid}.tmp"
            with tmp.open("wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, out_dir / f"{uid}.dcm")
            os.fsync(dir_fd)
        except Exception:
            logging.getLogger("pynetdicom_scp").exception("C-STORE failed")
            return 0xA700
        return 0x0000

    return handle_store


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ae-title", default="PYNETDICOM")
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    from pynetdicom import AE, StoragePresentationContexts, evt

    args.out.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=args.ae_title)
    ae.supported_contexts = StoragePresentationContexts
    handlers = [(evt.EVT_C_STORE, durable_store_handler(args.out))]

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = ae.start_server((args.bind, args.port), block=False, evt_handlers=handlers)
    print("ready", flush=True)
    try:
        signal.pause()
    finally:
        server.shutdown()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
