"""Generate realistic DICOM objects for tests and benchmarks (pydicom, no external data)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from ctnode.dicom.contexts import (
    CT_IMAGE,
    GRAYSCALE_SOFTCOPY_PS,
    MR_IMAGE,
    PET_IMAGE,
    RT_STRUCTURE_SET,
    XRAY_RADIATION_DOSE_SR,
)

SIX_CLASSES = {
    "CT": CT_IMAGE,
    "MR": MR_IMAGE,
    "PR": GRAYSCALE_SOFTCOPY_PS,
    "SR": XRAY_RADIATION_DOSE_SR,
    "RTSTRUCT": RT_STRUCTURE_SET,
    "PT": PET_IMAGE,
}
MODALITY_OF = {v: k for k, v in SIX_CLASSES.items()}
IMAGE_CLASSES = {CT_IMAGE, MR_IMAGE, PET_IMAGE}


@dataclass(frozen=True)
class Ids:
    """UIDs of a study/series."""

    study: str
    series: str
    frame_of_reference: str = "1.2.3.4"


def new_ids() -> Ids:
    """Fresh study and series UIDs."""
    return Ids(generate_uid(), generate_uid(), generate_uid())


def make_dataset(
    sop_class: str = CT_IMAGE,
    ids: Ids | None = None,
    sop_instance: str | None = None,
    *,
    size: int = 64,
    number: int = 1,
    patient_id: str = "PAT001",
    patient_name: str = "Doe^Jane",
    study_date: str = "20260115",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A valid instance of *sop_class* (with pixel data for image classes)."""
    ids = ids or new_ids()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance or generate_uid()
    ds.StudyInstanceUID = ids.study
    ds.SeriesInstanceUID = ids.series
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + patient_id[-3:]
    ds.StudyID = "1"
    ds.StudyDescription = "Test study"
    ds.SeriesDescription = "Test series"
    ds.Modality = MODALITY_OF.get(sop_class, "OT")
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "ctnode-tests"
    if sop_class in IMAGE_CLASSES:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = ids.frame_of_reference
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.ImagePositionPatient = [0, 0, number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1
        if sop_class == CT_IMAGE:
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.KVP = 120
        rng = np.random.default_rng(number)
        pixels = rng.integers(0, 4000, size=(size, size), dtype=np.uint16)
        ds.PixelData = pixels.tobytes()
    elif sop_class == GRAYSCALE_SOFTCOPY_PS:
        ds.ContentLabel = "PRESENTATION"
        ds.PresentationCreationDate = study_date
        ds.PresentationCreationTime = "101600"
        ref = Dataset()
        ref.SeriesInstanceUID = ids.series
        img = Dataset()
        img.ReferencedSOPClassUID = CT_IMAGE
        img.ReferencedSOPInstanceUID = generate_uid()
        ref.ReferencedImageSequence = Sequence([img])
        ds.ReferencedSeriesSequence = Sequence([ref])
    elif sop_class == XRAY_RADIATION_DOSE_SR:
        ds.ValueType = "CONTAINER"
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
        concept = Dataset()
        concept.CodeValue = "113701"
        concept.CodingSchemeDesignator = "DCM"
        concept.CodeMeaning = "X-Ray Radiation Dose Report"
        ds.ConceptNameCodeSequence = Sequence([concept])
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "NUM"
        name = Dataset()
        name.CodeValue = "113813"
        name.CodingSchemeDesignator = "DCM"
        name.CodeMeaning = "CT Dose Length Product Total"
        item.ConceptNameCodeSequence = Sequence([name])
        measured = Dataset()
        measured.NumericValue = "512.3"
        item.MeasuredValueSequence = Sequence([measured])
        ds.ContentSequence = Sequence([item])
    elif sop_class == RT_STRUCTURE_SET:
        ds.StructureSetLabel = "RTSTRUCT"
        ds.StructureSetDate = study_date
        roi = Dataset()
        roi.ROINumber = 1
        roi.ROIName = "BODY"
        roi.ReferencedFrameOfReferenceUID = ids.frame_of_reference
        ds.StructureSetROISequence = Sequence([roi])
        contour = Dataset()
        contour.ReferencedROINumber = 1
        c = Dataset()
        c.ContourGeometricType = "CLOSED_PLANAR"
        c.NumberOfContourPoints = 3
        c.ContourData = [0, 0, 0, 10, 0, 0, 10, 10, 0]
        contour.ContourSequence = Sequence([c])
        ds.ROIContourSequence = Sequence([contour])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if transfer_syntax == ImplicitVRLittleEndian:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif transfer_syntax in (RLELossless, JPEG2000Lossless):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # keep the SOP Instance UID (pydicom would make a new one, leaving the file meta
            # naming the old one)
            if transfer_syntax == RLELossless:
                ds.compress(RLELossless, generate_instance_uid=False)
            else:
                ds.compress(
                    JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False
                )
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write *ds* as a Part 10 file (creating parent directories)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return path


def write_series(
    directory: Path,
    count: int,
    *,
    sop_class: str = CT_IMAGE,
    size: int = 64,
    ids: Ids | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """*count* instances of one series as files ``directory/IMG0001.dcm``..."""
    ids = ids or new_ids()
    template = make_dataset(sop_class, ids, size=size, transfer_syntax=transfer_syntax)
    out = []
    for i in range(1, count + 1):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = i
        out.append(write(template, directory / f"IMG{i:04d}.dcm"))
    return out


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part 10 file (after the file meta group)."""
    from ctnode.dicom.filemeta import read_meta_length

    data = path.read_bytes()
    return data[read_meta_length(data[:4096]) :]


def iter_files(directory: Path) -> Iterator[Path]:
    """Every ``*.dcm`` below *directory*."""
    yield from sorted(directory.rglob("*.dcm"))


def encode_dataset(ds: Dataset, explicit: bool = True) -> bytes:
    """The data set encoded in (explicit or implicit VR) little endian, without file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = not explicit
    write_dataset(fp, ds)
    return fp.getvalue()
