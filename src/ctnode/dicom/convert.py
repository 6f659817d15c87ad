"""Transfer syntax conversion on send: decode, re-encode little endian, verify, or refuse.

``convert(path, target)`` returns the data set of a Part 10 file encoded in *target* (Explicit
or Implicit VR Little Endian) and guarantees that every value survived:

1. The file is decoded (deflated data sets are inflated, encapsulated pixel data is decompressed
   with the ``codecs`` extra; the SOP Instance UID is kept). Encapsulated pixel data inside a
   sequence item (an icon image) is not decompressed by pydicom: the file is refused.
2. A big endian data set has every value whose bytes pydicom keeps as stored swapped to little
   endian: OW by 16-bit words, OF/OL by 32-bit, OD/OV by 64-bit, in sequences too. OW Pixel Data
   is swapped by its pixel cell (16-bit words up to 16 Bits Allocated, else 32 or 64). Values
   pydicom decodes (US, SS, UL, SL, FL, FD, SV, UV, AT, "US or SS") are re-encoded by the writer.
   A non-empty UN value cannot be swapped safely (its layout is unknown): the file is refused.
3. The result is written (retired group lengths are dropped, PS3.5 7.2).
4. The bytes produced are decoded again and compared with the original file decoded on its own:
   every element, recursively into sequence items, by decoded value (binary OB/OW/OF/... values
   as little endian bytes, numbers as numbers, text as text; an implicit VR result is read with
   the original VR); and the pixel data as the pixel values pydicom decodes (equal arrays). For
   compressed originals, Pixel Data and the attributes describing its encoding (Photometric
   Interpretation, Planar Configuration, Extended Offset Table) are checked through the decoded
   pixel values only: a lossy original must decode to exactly what pydicom decodes from it.

Anything that does not survive raises :class:`ConversionError` with a one-line reason that names
the element; the caller fails that item and sends nothing.

pydicom is imported inside the functions: the CLI must not pay for it at start-up.
"""

from __future__ import annotations

import array
import io
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ctnode.dicom.contexts import IMPLICIT_VR_LE, UNCOMPRESSED_SYNTAXES
from ctnode.errors import PermanentError

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

__all__ = ["ConversionError", "convert", "verify"]

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
PIXEL_TAGS = (FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA, PIXEL_DATA)
EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)
#: Attributes a decompression may rewrite; checked through the decoded pixel values instead.
PIXEL_ENCODING_TAGS = frozenset(
    {PIXEL_DATA, 0x00280004, 0x00280006, *EXTENDED_OFFSET_TABLE}  # Photometric, Planar
)
#: Byte width of the values of the binary VRs that pydicom keeps in the file's byte order.
WORD_SIZE: Mapping[str, int] = MappingProxyType({"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8})


class ConversionError(PermanentError, ValueError):
    """The file cannot be re-encoded in the transfer syntax the peer accepted without changing a
    value; it was not sent. Offer the peer the file's own transfer syntax, or convert the file
    with a tool you have verified."""


def convert(path: str, target: str) -> bytes:
    """The data set of the Part 10 file *path* encoded in *target*, verified value by value.

    *target* is Explicit or Implicit VR Little Endian. Raises ConversionError (a ValueError)
    with a reason naming the element when the file cannot be decoded, decompressed, swapped,
    encoded, or when any value or pixel differs after the round trip; OSError when the file
    cannot be read.
    """
    if target not in UNCOMPRESSED_SYNTAXES:
        raise ConversionError(f"cannot convert to {target}: only {UNCOMPRESSED_SYNTAXES} are made")
    with open(path, "rb") as fh:
        data = fh.read()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        working = _parse(data)
        source = _syntax_of(working)
        if source.is_compressed:
            _refuse_nested_encapsulated(working, "")
            if PIXEL_DATA in working:
                _decompress(working)
        elif not source.is_little_endian:
            to_little_endian(working)
        encoded = _encode(working, target)
        verify(_parse(data), encoded, target)
    return encoded


# ------------------------------------------------------------------ decoding and encoding


def _parse(data: bytes) -> Dataset:
    """The Part 10 file in *data*, every element still raw (decoded on access)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, KeyError, NotImplementedError) as exc:
        raise ConversionError(f"cannot decode the file: {_one_line(exc)}") from exc


def _syntax_of(ds: Dataset) -> Any:
    """The file's transfer syntax as a pydicom UID; refuses syntaxes pydicom does not know."""
    from pydicom.uid import UID

    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not syntax.is_transfer_syntax:
        raise ConversionError(f"unknown transfer syntax {syntax or '(none)'} in the file meta")
    return syntax


def _decompress(ds: Dataset) -> None:
    """Decode the encapsulated Pixel Data in place (same SOP Instance UID)."""
    name = ds.file_meta.TransferSyntaxUID.name
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # every decoder plugin raises its own types
        raise ConversionError(
            f"cannot decompress {name}: {_one_line(exc)} (the ctnode[codecs] extra provides "
            "pylibjpeg and GDCM; some variants are decoded by neither)"
        ) from exc
    for tag in EXTENDED_OFFSET_TABLE:  # describes fragments that no longer exist
        if tag in ds:
            del ds[tag]


def _refuse_nested_encapsulated(ds: Dataset, where: str) -> None:
    """Encapsulated Pixel Data inside a sequence item (an icon image) is not decompressed by
    pydicom and would be invalid in a native syntax: refuse the file."""
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for number, item in enumerate(elem.value, 1):
            inside = f"{where}{_label(elem.tag)} item {number} > "
            pixels = item.get(PIXEL_DATA)
            if pixels is not None and pixels.is_undefined_length:
                raise ConversionError(
                    f"{inside}{_label(PIXEL_DATA)} is encapsulated: nested compressed pixel "
                    "data cannot be decompressed here"
                )
            _refuse_nested_encapsulated(item, inside)


def to_little_endian(ds: Dataset) -> None:
    """Swap, in place and recursively, every value a big endian data set keeps as stored bytes.

    Values pydicom decodes to numbers are left to the writer. Raises ConversionError for a value
    whose byte order cannot be known (non-empty UN, an ambiguous VR left unresolved) or whose
    length is not a multiple of its word size.
    """
    for elem in ds:  # iterating converts raw elements (and resolves "US or SS" big endian)
        if elem.VR == "SQ":
            for item in elem.value:
                to_little_endian(item)
        elif elem.VR in WORD_SIZE and elem.value:
            elem.value = _byteswapped(elem.value, word_size(ds, elem), _label(elem.tag))
        elif elem.VR == "UN" and elem.value:
            raise ConversionError(
                f"{_label(elem.tag)} has VR UN in a big endian data set: the layout of its "
                "value is unknown, so it cannot be byte-swapped safely"
            )
        elif " or " in elem.VR and elem.value:
            raise ConversionError(
                f"{_label(elem.tag)} has the ambiguous VR {elem.VR!r} in a big endian data set "
                "and nothing in the data set resolves it"
            )


def word_size(ds: Dataset, elem: DataElement) -> int:
    """Bytes per value of a binary *elem* of *ds*: its VR's word, or for OW Pixel Data the
    pixel cell (16-bit words up to 16 Bits Allocated, 32 or 64 bits above)."""
    if elem.tag == PIXEL_DATA and elem.VR == "OW":
        bits = int(ds.get("BitsAllocated", 16) or 16)
        return 2 if bits <= 16 else max(2, bits // 8)
    return WORD_SIZE[elem.VR]


def _byteswapped(value: bytes, width: int, label: str) -> bytes:
    """*value* with every *width*-byte word reversed."""
    if len(value) % width:
        raise ConversionError(
            f"{label} is {len(value)} bytes long, not a multiple of its {width}-byte values"
        )
    code = next(c for c in "HILQ" if array.array(c).itemsize == width)
    words = array.array(code, value)
    words.byteswap()
    return words.tobytes()


def _encode(ds: Dataset, target: str) -> bytes:
    """*ds* written in *target* (without file meta)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = target == IMPLICIT_VR_LE
    try:
        write_dataset(fp, ds)
    except (ValueError, TypeError, NotImplementedError, OverflowError, KeyError) as exc:
        raise ConversionError(f"cannot encode the data set: {_one_line(exc)}") from exc
    return bytes(fp.getvalue())


# ------------------------------------------------------------------ verification


def verify(original: Dataset, encoded: bytes, target: str) -> None:
    """Raise ConversionError unless *encoded* (a data set in *target*) holds every value of
    *original* (a freshly read file): element by element, then the decoded pixel values."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    source = _syntax_of(original)
    implicit = target == IMPLICIT_VR_LE
    try:
        produced = read_dataset(io.BytesIO(encoded), implicit, True)
    except Exception as exc:  # a reader failure of any kind means the bytes are not usable
        raise ConversionError(f"the converted data set does not decode: {_one_line(exc)}") from exc
    produced.file_meta = FileMetaDataset()
    produced.file_meta.TransferSyntaxUID = UID(target)
    exempt = PIXEL_ENCODING_TAGS if source.is_compressed else frozenset()
    problem = _first_difference(original, produced, source.is_little_endian, implicit, exempt, "")
    if problem is None and any(tag in original for tag in PIXEL_TAGS):
        problem = _pixel_difference(original, produced, source)
    if problem is not None:
        raise ConversionError(
            f"converting {source.name} to {_name(target)} would change {problem}; not sent"
        )


def _first_difference(
    original: Dataset,
    produced: Dataset,
    little_endian: bool,
    implicit: bool,
    exempt: Iterable[int],
    where: str,
) -> str | None:
    """The first element (in tag order, depth first) whose value differs, described."""
    skip = set(exempt)
    for tag in sorted(set(original.keys()) | set(produced.keys())):
        if tag in skip or tag.element == 0:  # group lengths are not written (PS3.5 7.2)
            continue
        label = where + _label(tag)
        if tag not in produced:
            return f"{label}: missing after conversion"
        if tag not in original:
            return f"{label}: added by the conversion"
        before = original[tag]
        after = _read_as(produced, tag, before.VR) if implicit else produced[tag]
        if before.VR == "SQ" or after.VR == "SQ":
            problem = _sequence_difference(before, after, little_endian, implicit, label)
        elif not implicit and after.VR != before.VR:
            problem = f"{label}: VR {before.VR} became {after.VR}"
        else:
            problem = _value_difference(original, before, produced, after, little_endian, label)
        if problem is not None:
            return problem
    return None


def _sequence_difference(
    before: DataElement, after: DataElement, little_endian: bool, implicit: bool, label: str
) -> str | None:
    if before.VR != "SQ" or after.VR != "SQ":
        return f"{label}: VR {before.VR} became {after.VR}"
    if len(before.value) != len(after.value):
        return f"{label}: {len(before.value)} item(s) became {len(after.value)}"
    for number, (item, copy) in enumerate(zip(before.value, after.value, strict=True), 1):
        where = f"{label} item {number} > "
        problem = _first_difference(item, copy, little_endian, implicit, (), where)
        if problem is not None:
            return problem
    return None


def _read_as(ds: Dataset, tag: BaseTag, vr: str) -> DataElement:
    """Element *tag* of an implicit VR data set decoded with the VR the original had."""
    from pydicom.dataelem import RawDataElement

    item = ds.get_item(tag)
    if vr in ("SQ", "UN"):
        return ds[tag]
    if isinstance(item, RawDataElement):
        ds[tag] = item._replace(VR=vr)
    elif item is not None and item.VR == "UN":  # decoded while reading (empty values)
        value = bytes(item.value or b"")
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, True, True)
    return ds[tag]


def _value_difference(
    original: Dataset,
    before: DataElement,
    produced: Dataset,
    after: DataElement,
    little_endian: bool,
    label: str,
) -> str | None:
    old = _canonical(original, before, little_endian, label)
    new = _canonical(produced, after, True, label)
    if old == new:
        return None
    if isinstance(old, bytes) and isinstance(new, bytes):
        pairs = enumerate(zip(old, new, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(old), len(new)))
        return f"{label}: {len(old)} bytes became {len(new)}, first difference at byte {at}"
    return f"{label}: {_show(old)} became {_show(new)}"


def _canonical(ds: Dataset, elem: DataElement, little_endian: bool, label: str) -> object:
    """The value of *elem* in a form independent of the encoding: binary words as little endian
    bytes, numbers as numbers (NaN comparable), text as text, multi-values as lists."""
    value = elem.value
    if isinstance(value, bytes | bytearray):
        if elem.VR in WORD_SIZE and not little_endian and value:
            return _byteswapped(bytes(value), word_size(ds, elem), label)
        return bytes(value)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return _scalar(value)
    return [_scalar(v) for v in value]


def _scalar(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if value is None or isinstance(value, int | float | bytes):
        return value
    return str(value)


def _pixel_difference(original: Dataset, produced: Dataset, source: Any) -> str | None:
    """Compare the pixel values pydicom decodes from both; None when equal.

    Little endian uncompressed originals were already compared byte for byte, so when numpy or
    a pixel handler is missing for them the decode check is skipped; for the others (swapped or
    decompressed pixels) it is required.
    """
    required = source.is_compressed or not source.is_little_endian
    label = _label(next(tag for tag in PIXEL_TAGS if tag in original))
    try:
        import numpy as np

        before = original.pixel_array
    except Exception as exc:  # no numpy, or no handler for this pixel format
        if not required:
            return None
        return f"{label}: the original pixels cannot be decoded to check them ({_one_line(exc)})"
    try:
        after = produced.pixel_array
    except Exception as exc:  # any decoder failure means the pixels are not usable
        return f"{label}: the converted pixels do not decode ({_one_line(exc)})"
    if before.shape != after.shape:
        return f"{label}: pixel array shape {before.shape} became {after.shape}"
    floats = before.dtype.kind == "f"
    if np.array_equal(before, after, equal_nan=floats):
        return None
    unequal = before != after
    if floats:
        unequal &= ~(np.isnan(before) & np.isnan(after))
    index = tuple(int(i) for i in np.argwhere(unequal)[0])
    return (
        f"{label}: decoded pixel values differ (first at index {index}: "
        f"{before[index]} became {after[index]})"
    )


# ------------------------------------------------------------------ wording


def _label(tag: int) -> str:
    """``(7FE0,0010) Pixel Data`` (or ``private`` / ``unknown`` for tags not in the dictionary)."""
    from pydicom.datadict import dictionary_description
    from pydicom.tag import Tag

    tag = Tag(tag)
    try:
        name = dictionary_description(tag)
    except KeyError:
        name = "private element" if tag.is_private else "unknown element"
    return f"({tag.group:04X},{tag.element:04X}) {name}"


def _name(syntax: str) -> str:
    from pydicom.uid import UID

    return str(UID(syntax).name)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (pydicom's multi-line messages collapsed)."""
    text = str(exc).split("Traceback (most recent call last)", 1)[0]
    text = re.sub(r"\s+", " ", text).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
