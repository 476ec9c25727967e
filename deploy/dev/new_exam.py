"""Write a DICOM file the local PACS does not hold yet, for trying an upload: `new_exam.py PATH`.

It is pydicom's bundled CT_small.dcm with new study, series and instance UIDs (under 2.25, from a random UUID), so
each run gives an exam that `POST /exams` stores instead of reporting as a duplicate.
"""

from __future__ import annotations

import sys
import uuid

import pydicom
from pydicom.data import get_testdata_file


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def main(path: str) -> None:
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str)
    dataset = pydicom.dcmread(source)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = new_uid(), new_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = new_uid()
    dataset.StudyDescription = "Uploaded through the gateway"
    dataset.save_as(path, enforce_file_format=True)
    print(path)


if __name__ == "__main__":
    main(sys.argv[1])
