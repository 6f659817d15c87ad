"""Shared pieces of the DCMTK / pynetdicom conformance matrix: one test file per transfer
syntax (encoded by DCMTK where DCMTK can, so that a DCMTK sender re-encodes it identically),
data set comparison (bytes, or values through pydicom), and in-process job submission."""

from __future__ import annotations

import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, JPEG2000Lossless

from ctnode.config import load_settings
from ctnode.daemon import open_database
from ctnode.dicom.contexts import (
    CT_IMAGE,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)
from ctnode.peers import load_peers
from ctnode.queue.jobs import JobKind
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from tests.helpers.dicomgen import dataset_bytes, make_dataset, new_ids, write
from tests.helpers.procs import DCMTK_ENV, CtnodeProcess, ServerProcess, free_port

SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = str(JPEG2000Lossless)
J2K = str(JPEG2000)
RLE = "1.2.840.10008.1.2.5"
DEFLATED = DEFLATED_EXPLICIT_VR_LE

#: Lossy syntaxes: a decompressed copy is compared with what pydicom decodes from the original.
LOSSY = {JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR, J2K}


@dataclass(frozen=True)
class Sample:
    """One test instance in one transfer syntax."""

    name: str
    path: Path
    transfer_syntax: str
    sop_class: str
    sop_instance: str


def _dcmtk(args: list[str]) -> None:
    done = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"


def _source(directory: Path, name: str, *, bits: int = 16, size: int = 96) -> Path:
    """A pydicom-made image (CT, or 8-bit Secondary Capture) with a fresh SOP Instance UID."""
    if bits == 8:
        ds = make_dataset(CT_IMAGE, new_ids(), size=size)
        ds.SOPClassUID = SC_IMAGE
        ds.file_meta.MediaStorageSOPClassUID = SC_IMAGE
        ds.Modality = "OT"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        for keyword in ("RescaleIntercept", "RescaleSlope", "KVP"):
            delattr(ds, keyword)
        rng = np.random.default_rng(8)
        ds.PixelData = rng.integers(0, 255, size=(size, size), dtype=np.uint8).tobytes()
    else:
        ds = make_dataset(CT_IMAGE, new_ids(), size=size)
        # 12 bits stored: JPEG extended (process 4) and JPEG-LS take it.
        ds.BitsStored = 12
        ds.HighBit = 11
    ds.SeriesDescription = f"matrix {name}"
    return write(ds, directory / "src" / f"{name}-{ds.SOPInstanceUID}.dcm")


#: name -> (DCMTK command that writes it from the pydicom source, or None for pydicom's own
#: JPEG 2000 encoder; bits of the source image; the transfer syntax it ends up in).
RECIPES: dict[str, tuple[list[str] | None, int, str]] = {
    "explicit": (["dcmconv", "+te"], 16, EXPLICIT_VR_LE),
    "implicit": (["dcmconv", "+ti"], 16, IMPLICIT_VR_LE),
    "big": (["dcmconv", "+tb"], 16, EXPLICIT_VR_BE),
    "deflated": (["dcmconv", "+td"], 16, DEFLATED_EXPLICIT_VR_LE),
    "jpeg_sv1": (["dcmcjpeg", "+e1"], 16, JPEG_LOSSLESS_SV1),
    "jpeg_baseline": (["dcmcjpeg", "+eb"], 8, JPEG_BASELINE),
    "jpeg_extended": (["dcmcjpeg", "+ee"], 16, JPEG_EXTENDED),
    "jls_lossless": (["dcmcjpls", "+el"], 16, JPEG_LS_LOSSLESS),
    "jls_near": (["dcmcjpls", "+en"], 16, JPEG_LS_NEAR),
    "rle": (["dcmcrle"], 16, RLE),
    "j2k_lossless": (None, 16, J2K_LOSSLESS),
    "j2k": (None, 16, J2K),
}

#: The PS3.5 clause defining each recipe's transfer syntax.
CLAUSE = {
    "explicit": "PS3.5 A.2",
    "implicit": "PS3.5 A.1",
    "big": "PS3.5 A.3",
    "deflated": "PS3.5 A.5",
    "jpeg_sv1": "PS3.5 A.4.1",
    "jpeg_baseline": "PS3.5 A.4.1",
    "jpeg_extended": "PS3.5 A.4.1",
    "jls_lossless": "PS3.5 A.4.3",
    "jls_near": "PS3.5 A.4.3",
    "rle": "PS3.5 A.4.2",
    "j2k_lossless": "PS3.5 A.4.4",
    "j2k": "PS3.5 A.4.4",
}
#: Recipes whose pixel data is encapsulated (compressed).
COMPRESSED = [n for n in RECIPES if n not in ("explicit", "implicit", "big", "deflated")]
#: Recipes the permissively licensed codecs of ctnode's ``codecs`` extra cannot decode (12-bit
#: JPEG Extended needs libjpeg's 12-bit build, GPL in pylibjpeg-libjpeg): ctnode refuses to
#: convert them, with a reason.
UNDECODABLE = frozenset({"jpeg_extended"})


def make_sample(directory: Path, name: str, *, size: int = 96) -> Sample:
    """A new instance (fresh UIDs) in the transfer syntax of recipe *name*, in *directory*.

    Uncompressed, deflated and the JPEG / JPEG-LS / RLE files are written by DCMTK tools
    (``dcmconv``, ``dcmcjpeg``, ``dcmcjpls``, ``dcmcrle``), JPEG 2000 by pydicom (pylibjpeg).
    """
    tool, bits, syntax = RECIPES[name]
    source = _source(directory, name, bits=bits, size=size)
    target = directory / f"{name}-{source.stem.rsplit('-', 1)[-1]}.dcm"
    if tool is not None:
        _dcmtk([*tool, str(source), str(target)])
    else:
        ds = pydicom.dcmread(source)
        extra: dict[str, Any] = {} if syntax == J2K_LOSSLESS else {"j2k_cr": [10]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.compress(syntax, encoding_plugin="pylibjpeg", generate_instance_uid=False, **extra)
        write(ds, target)
    ds = pydicom.dcmread(target, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == syntax, (name, ds.file_meta.TransferSyntaxUID)
    return Sample(name, target, syntax, str(ds.SOPClassUID), str(ds.SOPInstanceUID))


# ------------------------------------------------------------------ comparison


def _values(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag == 0x7FE00010 or elem.tag.group in (0x0002, 0xFFFE) or elem.tag.element == 0:
            continue
        if elem.VR == "SQ":
            out[str(elem.tag)] = [_values(item) for item in elem.value]
        else:
            out[str(elem.tag)] = elem.value
    return out


def pixels(path: Path) -> np.ndarray:
    """The decoded pixel values of a file."""
    return np.asarray(pydicom.dcmread(path).pixel_array)


def assert_same_dataset_bytes(received: Path, original: Path) -> None:
    """The data set part of *received* is byte for byte that of *original*, padded to even
    length the way a sender must put it on the wire (a deflated data set written by
    ``dcmconv +td`` can be odd; PS3.5 A.5 pads the deflated stream with one 00H)."""
    got, want = dataset_bytes(received), dataset_bytes(original)
    if len(want) % 2:
        want += b"\x00"
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    assert got == want, (
        f"{received.name}: data set differs from {original.name} "
        f"({len(got)} vs {len(want)} bytes, first difference at {first})"
    )


def assert_same_values(received: Path, original: Path) -> None:
    """Every element of *received* has the value it has in *original* (Pixel Data compared as
    decoded pixel values; attributes describing a compressed encoding excepted)."""
    got, want = pydicom.dcmread(received), pydicom.dcmread(original)
    got_values, want_values = _values(got), _values(want)
    if want.file_meta.TransferSyntaxUID.is_compressed:
        # A decompressed copy may describe its now native pixel data differently.
        for keyword in ("00280004", "00280006", "7FE00001"):
            for values in (got_values, want_values):
                values.pop(f"({keyword[:4]},{keyword[4:]})", None)
    assert got_values == want_values, f"{received.name}: element values differ"
    if "PixelData" in want:
        assert np.array_equal(pixels(received), pixels(original)), "pixel values differ"


def transfer_syntax_of(path: Path) -> str:
    """The transfer syntax in a file's meta information."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def find_instance(root: Path, sop_instance: str) -> Path:
    """The one file under *root* holding *sop_instance* (storescp names files by modality and
    UID, ctnode by UID)."""
    hits = [p for p in root.rglob("*") if p.is_file() and sop_instance in p.name]
    assert len(hits) == 1, f"{sop_instance}: {hits}"
    return hits[0]


# ------------------------------------------------------------------ peers and jobs


def dcmqrscp_server(
    workdir: Path,
    *,
    hosts: dict[str, tuple[str, str, int]],
    max_pdu: int = 16384,
    ae_title: str = "DCMQRSCP",
) -> ServerProcess:
    """dcmqrscp (default fork mode) with its own MaxPDUSize and HostTable."""
    port = free_port()
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    table = "\n".join(f"{n} = ({ae}, {host}, {p})" for n, (ae, host, p) in hosts.items())
    config = workdir / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort  = {port}\nMaxPDUSize      = {max_pdu}\nMaxAssociations = 16\n"
        f"HostTable BEGIN\n{table}\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{ae_title} {storage} RW (200, 1024mb) ANY\nAETable END\n"
    )
    return ServerProcess(
        ["dcmqrscp", "-c", str(config), str(port)],
        port,
        cwd=workdir,
        log_path=workdir / "dcmqrscp.log",
    )


def submit(node: CtnodeProcess, kind: JobKind, peer: str, payload: dict[str, Any]) -> int:
    """Queue a job of *kind* for *peer* in-process (as the CLI does); returns its id."""
    from ctnode.scu.push import collect_files

    settings = load_settings(node.config_path)
    target = load_peers(settings.peers_dir).get(peer)
    items = None
    if kind in (JobKind.PUSH, JobKind.COMMIT):
        items, skipped = collect_files([Path(p) for p in payload["paths"]])
        assert items and not skipped, skipped
    if kind is JobKind.COMMIT:
        policy = RetryPolicy.for_peer(settings, target)
    else:
        policy = RetryPolicy.from_settings(target.config.retry or settings.queue.retry)
    repo = JobRepository(open_database(settings, migrate_sqlite=True))
    try:
        args: list[Any] = [kind, peer, payload]
        if items is not None:
            args.append(items)
        job, _ = repo.submit(*args, policy=policy, node_name=settings.node.name)
    finally:
        repo.engine.dispose()
    return job.id


def files_payload(*paths: Path) -> dict[str, Any]:
    """The payload of a push or commit job over files."""
    return {"source": "files", "paths": [str(p) for p in paths]}
