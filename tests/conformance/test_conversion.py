"""Transfer syntax conversion on send keeps every value, or refuses the item (issue 12).

The clauses: PS3.5 7.3 (big endian byte ordering: OW as 16-bit words, OF/OL 32-bit, OD/OV
64-bit, AT as two 16-bit words), PS3.5 A.1/A.2 (implicit and explicit VR little endian),
PS3.5 A.5 (deflated), PS3.5 8.2 (encapsulated pixel data decoded to native pixel cells) and
PS3.4 B.4.1 (a storage SCU conveys the instance: the values the SCP receives are the original
values). A conversion that would change any value is refused with a reason naming the element.

The oracle is independent of ctnode's code: DCMTK's ``dcmconv`` re-encodes the same instance in
the target syntax, from the little endian twin of a big endian test file when pydicom ships one
(``MR_small_expb.dcm`` is ``MR_small.dcm`` byte-swapped, and so on), and element values are
compared as pydicom decodes both; pixels are compared as the arrays pydicom decodes from the
original (for a lossy original: exactly what pydicom decodes from it).
"""

from __future__ import annotations

import array
import io
import json
import shutil
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from ctnode.dicom import convert as conversion
from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ctnode.dicom.convert import ConversionError, convert
from tests.conformance.strategies import budget
from tests.helpers.dicomgen import IMAGE_CLASSES, SIX_CLASSES, make_dataset, write
from tests.helpers.procs import CtnodeProcess, ServerProcess, free_port, run_tool
from tests.helpers.qrdata import FAST_QUEUE
from tests.helpers.qrdata import peer as loopback_peer

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
TARGETS = {"explicit": EXPLICIT_VR_LE, "implicit": IMPLICIT_VR_LE}
DCMCONV = {IMPLICIT_VR_LE: "+ti", EXPLICIT_VR_LE: "+te", ExplicitVRBigEndian: "+tb"}
#: Checked through the decoded pixel values when the original is compressed.
PIXEL_ENCODING = {"(7FE0,0010)", "(0028,0004)", "(0028,0006)", "(7FE0,0001)", "(7FE0,0002)"}

#: pydicom's test files: (file, its little endian uncompressed twin or None).
BIG_ENDIAN = [
    ("MR_small_bigendian.dcm", "MR_small_implicit.dcm"),
    ("MR_small_expb.dcm", "MR_small.dcm"),
    ("rtdose_expb_1frame.dcm", "rtdose_1frame.dcm"),  # 32-bit pixel cells in OW
    ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ("ExplVR_BigEnd.dcm", None),
]
LITTLE_ENDIAN = [
    ("image_dfl.dcm", None),  # deflated
    ("MR_small.dcm", None),
    ("MR_small_implicit.dcm", None),
    ("CT_small.dcm", None),
    ("priv_SQ.dcm", None),  # private sequence
    ("waveform_ecg.dcm", None),  # private elements, OW waveform
    ("examples_overlay.dcm", None),  # OW overlay data
    ("reportsi.dcm", None),  # SR content tree
    ("rtplan.dcm", None),
]
COMPRESSED = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("SC_rgb_rle_16bit_2frame.dcm", None),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("JPEG2000.dcm", None),  # lossy, with private elements
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("SC_rgb_jpeg_gdcm.dcm", None),  # JPEG lossless SV1
    ("SC_rgb_jpeg_dcmtk.dcm", None),  # JPEG baseline (lossy, YBR_FULL_422 -> RGB)
    ("JPEGLSNearLossless_16.dcm", None),  # JPEG-LS near-lossless
]


# ------------------------------------------------------------------ the oracle


def _tool(*args: str) -> None:
    result = run_tool(list(args))
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"


def _testdata(name: str) -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), name
    return Path(found)


def _syntax(path: Path) -> UID:
    return UID(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _decoded(encoded: bytes, target: str) -> Dataset:
    """The data set ctnode produced, decoded as a receiver does."""
    ds = read_dataset(io.BytesIO(encoded), target == IMPLICIT_VR_LE, True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(target)
    return ds


def _reference(original: Path, twin: Path | None, syntax: str, workdir: Path) -> Dataset:
    """DCMTK's re-encoding in *syntax* of the same instance (its twin if it has one; without
    pixel data when the original is compressed, as DCMTK cannot decode every codec)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = twin or original
    if _syntax(source).is_compressed:
        copy = workdir / "no-pixels.dcm"
        shutil.copyfile(source, copy)
        _tool("dcmodify", "-nb", "-ea", "(7fe0,0010)", str(copy))
        source = copy
    out = workdir / f"reference-{DCMCONV[syntax]}.dcm"
    _tool("dcmconv", DCMCONV[syntax], str(source), str(out))
    return pydicom.dcmread(out)


def _flatten(ds: Dataset, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Every element as ``path -> (VR, decoded value)``, sequences item by item (group lengths
    and Data Set Trailing Padding, which a receiver may drop, are not values: left out)."""
    out: dict[str, tuple[str, Any]] = {}
    for elem in ds:
        if elem.tag.element == 0 or elem.tag == 0xFFFCFFFC:  # trailing padding: no value
            continue
        key = prefix + f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            out[key] = ("SQ", len(elem.value))
            for number, item in enumerate(elem.value):
                out.update(_flatten(item, f"{key}[{number}]."))
            continue
        value = elem.value
        if isinstance(value, bytes | bytearray):
            value = bytes(value)
        elif isinstance(value, list | pydicom.multival.MultiValue):
            value = [v if isinstance(v, int | float) else str(v) for v in value]
        elif value is not None and not isinstance(value, int | float):
            value = str(value)
        out[key] = (str(elem.VR), value)
    return out


def assert_same_instance(
    produced: Dataset, original: Path, twin: Path | None, workdir: Path
) -> None:
    """*produced* holds every value of *original*: element-equal to DCMTK's re-encoding in the
    same syntax, pixel-equal to what pydicom decodes from the original (or its twin)."""
    syntax = str(produced.file_meta.TransferSyntaxUID)
    reference = _reference(original, twin, syntax, workdir)
    got, want = _flatten(produced), _flatten(reference)
    if _syntax(original).is_compressed:
        got = {k: v for k, v in got.items() if k not in PIXEL_ENCODING}
        want = {k: v for k, v in want.items() if k not in PIXEL_ENCODING}
    differing = [k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
    assert not differing, [(k, str(got.get(k))[:80], str(want.get(k))[:80]) for k in differing]
    source = pydicom.dcmread(twin or original)
    if "PixelData" in source:
        assert np.array_equal(produced.pixel_array, source.pixel_array), original.name


# ------------------------------------------------------------------ pydicom's real files


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
@pytest.mark.parametrize(("name", "twin"), BIG_ENDIAN + LITTLE_ENDIAN + COMPRESSED, ids=str)
def test_real_file_converts_value_for_value(
    tmp_path: Path, name: str, twin: str | None, target: str
) -> None:
    """Big endian, deflated, explicit, implicit and compressed (RLE, JPEG 2000, JPEG-LS,
    JPEG lossless and baseline) files re-encoded in explicit and implicit VR little endian
    decode element-equal and pixel-equal to the original (PS3.5 7.3, A.1, A.2, A.5, 8.2)."""
    original = _testdata(name)
    produced = _decoded(convert(str(original), target), target)
    assert_same_instance(produced, original, _testdata(twin) if twin else None, tmp_path)


def test_big_endian_pixels_are_the_little_endian_twins() -> None:
    """The OW Pixel Data of ``MR_small_bigendian.dcm`` arrives as the very bytes of its little
    endian twin (the defect of issue 12: the bytes went out unswapped)."""
    produced = convert(str(_testdata("MR_small_bigendian.dcm")), IMPLICIT_VR_LE)
    twin = pydicom.dcmread(_testdata("MR_small_implicit.dcm"))
    assert _decoded(produced, IMPLICIT_VR_LE).PixelData == twin.PixelData


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPGExtended.dcm"])
def test_undecodable_compression_is_refused(name: str) -> None:
    """A codec no installed decoder handles (12-bit JPEG Extended) is refused with the reason,
    never sent as it is under an uncompressed syntax."""
    with pytest.raises(ConversionError, match=r"cannot decompress JPEG Extended"):
        convert(str(_testdata(name)), EXPLICIT_VR_LE)


# ------------------------------------------------------------------ the six seed classes

SOURCES = {
    "explicit": "explicit",
    "implicit": "implicit",
    "deflated": "deflated",
    "bigendian": "big endian",
    "rle": "RLE",
    "j2k": "JPEG 2000 lossless",
    "jpegls": "JPEG-LS lossless",
    "jpeg": "JPEG lossless SV1",
}
SEED_CASES = [
    (cls, source)
    for cls, uid in SIX_CLASSES.items()
    for source in SOURCES
    if uid in IMAGE_CLASSES or source in ("explicit", "implicit", "deflated", "bigendian")
]


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``seed_file(class, source)``: a generated instance of *class* in the *source* syntax;
    deflated, big endian, JPEG-LS and JPEG files are encoded by DCMTK from the explicit one."""
    root = tmp_path_factory.mktemp("seeds")
    made: dict[tuple[str, str], Path] = {}

    def build(cls: str, source: str) -> Path:
        if (cls, source) in made:
            return made[cls, source]
        base = root / cls / "explicit.dcm"
        if not base.exists():
            write(make_dataset(SIX_CLASSES[cls], size=32), base)
        path = root / cls / f"{source}.dcm"
        if source == "explicit":
            path = base
        elif source == "implicit":
            ds = pydicom.dcmread(base)
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            write(ds, path)
        elif source in ("rle", "j2k"):
            ds = pydicom.dcmread(base)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if source == "rle":
                    ds.compress(RLELossless, generate_instance_uid=False)
                else:
                    ds.compress(
                        JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False
                    )
            write(ds, path)
        elif source == "deflated":
            _tool("dcmconv", "+td", str(base), str(path))
        elif source == "bigendian":
            _tool("dcmconv", "+tb", str(base), str(path))
        elif source == "jpegls":
            _tool("dcmcjpls", "+el", str(base), str(path))
        else:
            _tool("dcmcjpeg", "+e1", str(base), str(path))
        made[cls, source] = path
        return path

    return build


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
@pytest.mark.parametrize(("cls", "source"), SEED_CASES, ids=str)
def test_seed_class_converts_value_for_value(
    tmp_path: Path, seed_file: Callable[[str, str], Path], cls: str, source: str, target: str
) -> None:
    """Each of the six seed classes (CT, MR, Grayscale Softcopy Presentation State, X-Ray
    Radiation Dose SR, RT Structure Set, PET), in each source syntax, re-encoded in explicit
    and implicit VR little endian decodes element-equal and pixel-equal to the original, and
    the pixels are the generator's (PS3.5 7.3, A.1, A.2, A.5, 8.2)."""
    original = seed_file(cls, source)
    produced = _decoded(convert(str(original), target), target)
    assert_same_instance(produced, original, None, tmp_path)
    if SIX_CLASSES[cls] in IMAGE_CLASSES:
        generated = pydicom.dcmread(seed_file(cls, "explicit")).pixel_array
        assert np.array_equal(produced.pixel_array, generated)


# ------------------------------------------------------------------ every binary VR, big endian


def _words(code: str, size: int) -> st.SearchStrategy[bytes]:
    """Packed little endian values of one binary VR."""
    elements = {
        "H": st.integers(0, 2**16 - 1),
        "I": st.integers(0, 2**32 - 1),
        "Q": st.integers(0, 2**64 - 1),
        "f": st.floats(width=32, allow_nan=False),
        "d": st.floats(allow_nan=False),
    }[code]
    return st.lists(elements, min_size=1, max_size=size).map(
        lambda values: struct.pack(f"<{len(values)}{code}", *values)
    )


@st.composite
def binary_datasets(draw: st.DrawFn) -> Dataset:
    """A secondary capture instance carrying every binary VR (and "US or SS", AT), at the top
    level and inside a sequence item, with 16-bit pixels."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PixelRepresentation = draw(st.sampled_from([0, 1]))
    signed = ds.PixelRepresentation == 1
    ds.add_new(
        0x00280106,
        "SS" if signed else "US",
        draw(st.integers(-(2**15), 2**15 - 1) if signed else st.integers(0, 2**16 - 1)),
    )
    ds.RedPaletteColorLookupTableData = draw(_words("H", 16))
    ds.VectorGridData = draw(_words("f", 8))
    ds.DoublePointCoordinatesData = draw(_words("d", 8))
    ds.LongPrimitivePointIndexList = draw(_words("I", 8))
    ds.SelectorOVValue = draw(_words("Q", 4))
    tags = st.integers(0, 2**32 - 1)
    ds.FrameIncrementPointer = draw(st.lists(tags, min_size=1, max_size=4))
    ds.TableOfYBreakPoints = draw(st.lists(st.floats(allow_nan=False), min_size=1, max_size=4))
    ds.TableOfParameterValues = draw(
        st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=4)
    )
    ds.SimpleFrameList = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4))
    ds.SelectorSSValue = draw(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=1, max_size=4))
    ds.SelectorSLValue = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=4))
    ds.SelectorSVValue = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4))
    ds.SelectorUVValue = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4))
    item = Dataset()
    item.DimensionIndexPointer = draw(tags)
    item.GreenPaletteColorLookupTableData = draw(_words("H", 8))
    item.VectorGridData = draw(_words("f", 4))
    ds.DimensionIndexSequence = Sequence([item])
    rows, columns = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = draw(st.binary(min_size=2 * rows * columns, max_size=2 * rows * columns))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@given(ds=binary_datasets(), target=st.sampled_from(list(TARGETS.values())))
@budget(30)
def test_big_endian_binary_values_survive(
    tmp_path_factory: pytest.TempPathFactory, ds: Dataset, target: str
) -> None:
    """Every binary VR pydicom keeps as stored bytes (OW, OF, OD, OL, OV), the decoded ones
    (AT, US or SS, FL, FD, UL, SS, SL, SV, UV), at the top level and in a sequence item, and
    OW Pixel Data, written big endian by DCMTK, arrive with the values of the little endian
    original (PS3.5 7.3)."""
    workdir = tmp_path_factory.mktemp("be")
    little = workdir / "little.dcm"
    ds.save_as(little, enforce_file_format=True)
    big = workdir / "big.dcm"
    _tool("dcmconv", "+tb", str(little), str(big))
    assert _syntax(big) == ExplicitVRBigEndian
    produced = _decoded(convert(str(big), target), target)
    original = pydicom.dcmread(little)
    assert _flatten(produced) == _flatten(original)
    assert np.array_equal(produced.pixel_array, original.pixel_array)


# ------------------------------------------------------------------ refusals


def _without_pixel_swap(real: Callable[[Dataset], None]) -> Callable[[Dataset], None]:
    def swap_all_but_pixels(ds: Dataset) -> None:
        stored = ds.PixelData
        real(ds)
        ds.PixelData = stored

    return swap_all_but_pixels


def test_dropped_pixel_swap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion that forgets to swap the big endian OW Pixel Data is caught by the check
    after encoding: ConversionError naming (7FE0,0010), nothing returned to send."""
    monkeypatch.setattr(
        conversion, "to_little_endian", _without_pixel_swap(conversion.to_little_endian)
    )
    with pytest.raises(ConversionError) as caught:
        convert(str(_testdata("MR_small_bigendian.dcm")), IMPLICIT_VR_LE)
    message = str(caught.value)
    assert "(7FE0,0010) Pixel Data" in message
    assert "Explicit VR Big Endian to Implicit VR Little Endian" in message
    assert "\n" not in message


def test_writer_swapping_words_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that swaps OW words while re-encoding a little endian file (explicit to
    implicit) is caught: the reason names the element and the first differing byte."""
    from pydicom.filewriter import writers
    from pydicom.valuerep import VR

    real = cast(Callable[..., None], writers[VR.OW][0])
    parameter = writers[VR.OW][1]

    def swapped(fp: Any, elem: Any, *args: Any) -> None:
        words = array.array("H", bytes(elem.value))
        words.byteswap()
        elem.value = words.tobytes()
        real(fp, elem, *args)

    monkeypatch.setitem(writers, VR.OW, (cast(Any, swapped), parameter))
    with pytest.raises(ConversionError, match=r"\(7FE0,0010\) Pixel Data: .* first difference"):
        convert(str(_testdata("MR_small.dcm")), IMPLICIT_VR_LE)


def test_changed_decompressed_pixel_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decompression whose pixels differ from what pydicom decodes from the original (one
    pixel changed) is refused with the index of the first differing pixel."""
    real = Dataset.decompress

    def off_by_one(self: Dataset, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        pixels = bytearray(self.PixelData)
        pixels[0] ^= 1
        self.PixelData = bytes(pixels)

    monkeypatch.setattr(Dataset, "decompress", off_by_one)
    with pytest.raises(ConversionError, match=r"decoded pixel values differ \(first at index"):
        convert(str(_testdata("MR_small_RLE.dcm")), EXPLICIT_VR_LE)


def test_changed_value_in_a_sequence_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed number inside a sequence item is refused; the reason gives the path to it."""
    real = conversion._encode

    def tampered(ds: Dataset, target: str) -> bytes:
        ds.DimensionIndexSequence[0].DimensionIndexPointer = 0x00200032
        return real(ds, target)

    path = _binary_file(tmp_path, big_endian=False)
    monkeypatch.setattr(conversion, "_encode", tampered)
    with pytest.raises(ConversionError) as caught:
        convert(str(path), EXPLICIT_VR_LE)
    assert "(0020,9222) Dimension Index Sequence item 1 > (0020,9165)" in str(caught.value)


def _binary_file(directory: Path, *, big_endian: bool, private_un: bool = False) -> Path:
    """A small instance with a Dimension Index Sequence (and a private UN value if asked),
    little endian or big endian (DCMTK)."""
    ds = _fixed_binary_dataset()
    if private_un:
        ds.add_new(0x00090010, "LO", "CTNODE TEST")
        ds.add_new(0x00091001, "UN", b"\x01\x00\x02\x00")
    directory.mkdir(parents=True, exist_ok=True)
    little = directory / f"little-{generate_uid()}.dcm"
    ds.save_as(little, enforce_file_format=True)
    if not big_endian:
        return little
    big = directory / f"big-{generate_uid()}.dcm"
    _tool("dcmconv", "+tb", str(little), str(big))
    return big


def _fixed_binary_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    item = Dataset()
    item.DimensionIndexPointer = 0x00209157
    ds.DimensionIndexSequence = Sequence([item])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_unknown_value_in_big_endian_is_refused(tmp_path: Path) -> None:
    """A non-empty UN value in a big endian file cannot be byte-swapped safely (its layout is
    unknown): refused, naming the element."""
    path = _binary_file(tmp_path, big_endian=True, private_un=True)
    with pytest.raises(ConversionError, match=r"\(0009,1001\) private element has VR UN"):
        convert(str(path), EXPLICIT_VR_LE)


def test_conversion_error_is_a_value_error_and_permanent() -> None:
    """ConversionError is a ValueError (the push turns it into a failed item) and a
    PermanentError of ctnode's tree (retrying cannot help)."""
    from ctnode.errors import PermanentError

    assert issubclass(ConversionError, ValueError)
    assert issubclass(ConversionError, PermanentError)


# ------------------------------------------------------------------ end to end with DCMTK


def _storescp(directory: Path, options: list[str]) -> ServerProcess:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return ServerProcess(
        ["storescp", "-aet", "STORESCP", "+uf", *options, "-od", str(directory), str(port)],
        port,
    )


def _push(node: CtnodeProcess, path: Path) -> dict[str, Any]:
    result = node.cli("push", "scp", str(path), "--wait", "--json", timeout=90)
    job: dict[str, Any] = json.loads(result.stdout)
    return job


E2E_FILES = [
    ("MR_small_bigendian.dcm", "MR_small_implicit.dcm"),
    ("image_dfl.dcm", None),
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("SC_rgb_jpeg_dcmtk.dcm", None),
]


@pytest.fixture
def received(tmp_path: Path) -> Callable[[], set[Path]]:
    """What storescp has written so far."""
    directory = tmp_path / "peer"
    return lambda: {p for p in directory.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "options", [["+xi"], []], ids=["storescp-implicit-only", "storescp-default"]
)
def test_push_delivers_converted_files_value_for_value(
    tmp_path: Path, received: Callable[[], set[Path]], options: list[str]
) -> None:
    """`ctnode push` of a big endian, a deflated and two compressed (RLE, JPEG baseline) files
    to DCMTK storescp accepting implicit VR little endian only (+xi) and with its default
    options: every job succeeds and the file storescp wrote decodes element-equal and
    pixel-equal to the original (file meta and transfer syntax aside; PS3.4 B.4.1)."""
    with (
        _storescp(tmp_path / "peer", options) as scp,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"scp": loopback_peer("STORESCP", scp.port)},
        ) as node,
    ):
        for name, twin in E2E_FILES:
            before = received()
            job = _push(node, _testdata(name))
            assert job["state"] == "succeeded", (name, job.get("last_error"))
            new = received() - before
            assert len(new) == 1, (name, new)
            (copy,) = new
            produced = pydicom.dcmread(copy)
            if options == ["+xi"]:
                assert produced.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
            assert_same_instance(
                produced,
                _testdata(name),
                _testdata(twin) if twin else None,
                tmp_path / "oracle" / name,
            )


@pytest.mark.slow
def test_push_refuses_what_it_cannot_convert(
    tmp_path: Path, received: Callable[[], set[Path]]
) -> None:
    """A big endian file with a private UN value pushed to a peer that accepts only implicit
    VR little endian: the item fails with the reason naming the element, the job fails, and
    storescp receives nothing (never a changed instance under a Success)."""
    path = _binary_file(tmp_path / "in", big_endian=True, private_un=True)
    with (
        _storescp(tmp_path / "peer", ["+xi"]) as scp,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"scp": loopback_peer("STORESCP", scp.port)},
        ) as node,
    ):
        job = _push(node, path)
    assert job["state"] == "failed", job
    assert job["items"]["failed"] == 1
    assert "(0009,1001) private element has VR UN" in job["last_error"]
    assert received() == set()


def test_nested_encapsulated_pixels_are_refused(tmp_path: Path) -> None:
    """A compressed file whose Icon Image Sequence holds encapsulated Pixel Data (which would be
    invalid under a native syntax) is refused, naming the nested element (PS3.5 A.4)."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(_testdata("MR_small_RLE.dcm"))
    icon = Dataset()
    icon.Rows = icon.Columns = 4
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = encapsulate([bytes(16)])
    icon["PixelData"].VR = "OB"
    icon["PixelData"].is_undefined_length = True
    ds.IconImageSequence = Sequence([icon])
    path = tmp_path / "icon.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ConversionError, match=r"\(0088,0200\) Icon Image Sequence item 1 > "):
        convert(str(path), EXPLICIT_VR_LE)
