"""Studies for query/retrieve tests: several patients, dates and series, as files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from ctnode.dicom.contexts import CT_IMAGE
from tests.helpers.dicomgen import Ids, make_dataset, write
from tests.helpers.peerfiles import FAST_QUEUE, peer

__all__ = ["FAST_QUEUE", "Study", "make_study", "peer"]


@dataclass
class Study:
    """A generated study: its UIDs and files."""

    uid: str
    patient_id: str
    patient_name: str
    study_date: str
    series: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def files_of(self, series: str) -> list[Path]:
        """The files of one series."""
        return [
            p
            for p in self.files
            if str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) == series
        ]


def make_study(
    directory: Path,
    *,
    patient_id: str,
    patient_name: str,
    study_date: str,
    series_sizes: tuple[int, ...] = (2,),
    sop_class: str = CT_IMAGE,
) -> Study:
    """Files for one study with ``len(series_sizes)`` series of the given sizes (16x16 pixels)."""
    study = Study(generate_uid(), patient_id, patient_name, study_date)
    for number, count in enumerate(series_sizes, 1):
        ids = Ids(study.uid, generate_uid())
        study.series.append(ids.series)
        for i in range(1, count + 1):
            ds = make_dataset(
                sop_class,
                ids,
                size=16,
                number=i,
                patient_id=patient_id,
                patient_name=patient_name,
                study_date=study_date,
            )
            ds.SeriesNumber = number
            study.files.append(write(ds, directory / study.uid / f"{number:02d}_{i:03d}.dcm"))
    return study
