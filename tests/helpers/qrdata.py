"""Studies for query/retrieve tests: several patients, dates and series, as files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from ctnode.dicom.contexts import CT_IMAGE
from tests.helpers.dicomgen import Ids, make_dataset, write

#: Queue settings that make retries quick in tests.
FAST_QUEUE: dict[str, Any] = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 6,
    "retry": {
        "max_attempts": 20,
        "initial_delay": 0.5,
        "multiplier": 1,
        "max_delay": 1,
        "jitter": 0,
    },
}


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


def peer(ae: str, port: int, **extra: Any) -> dict[str, Any]:
    """A peer file for a Q/R peer on loopback that may store to ctnode (move results)."""
    return {
        "ae_title": ae,
        "host": "127.0.0.1",
        "port": port,
        "accept": ["echo", "store"],
        "timeouts": {"connect": 3, "acse": 5, "dimse": 10, "network": 10},
        **extra,
    }
