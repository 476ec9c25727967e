"""DICOM Part 10 files for tests: generated ones, and pydicom's bundled ones given fresh UIDs and a patient."""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_GRAYSCALE_WORD = "1.2.840.10008.5.1.4.1.1.7.3"

# Real images from pydicom's test data, each a different kind of file.
BUNDLED = {
    "ct": "CT_small.dcm",  # CT, explicit VR little endian
    "mr": "MR_small.dcm",  # MR, explicit VR little endian
    "j2k": "JPEG2000.dcm",  # JPEG 2000 compressed, 1024x256
    "rle_multiframe": "SC_rgb_rle_2frame.dcm",  # RLE compressed, 2 frames, RGB
    "ybr_multiframe": "examples_ybr_color.dcm",  # US, 30 frames, JPEG baseline YBR
    "jpeg_baseline": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, RGB
}


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class Instance:
    data: bytes
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    rows: int
    columns: int

    @property
    def without_preamble(self) -> bytes:
        return self.data[128:]


def _save(ds: Dataset, preamble: bytes | None) -> bytes:
    if preamble is not None:
        ds.preamble = preamble
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _instance(ds: Dataset, preamble: bytes | None) -> Instance:
    return Instance(_save(ds, preamble), str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", "")),
                    str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", "")), int(ds.Rows),
                    int(ds.Columns))


def bundled(kind: str, patient_id: str, *, study_uid: str | None = None, series_uid: str | None = None,
            preamble: bytes | None = None) -> Instance:
    """A bundled test file re-identified: new UIDs (or the given ones) and the given PatientID."""
    path = get_testdata_file(BUNDLED[kind], download=False)  # bundled with pydicom: never fetched
    assert isinstance(path, str), BUNDLED[kind]
    ds = pydicom.dcmread(path)
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.SOPInstanceUID = new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return _instance(ds, preamble if preamble is not None else os.urandom(128))


def image_dataset(patient_id: str, *, study_uid: str | None = None, series_uid: str | None = None, rows: int = 64,
                  columns: int = 48, frames: int = 1, accession: str = "ACC1", study_date: str = "20240105",
                  modality: str = "CT", description: str = "Generated study", patient_name: str = "Test^Patient",
                  sop_uid: str | None = None) -> Dataset:
    """The dataset of a synthetic 16-bit grayscale image (multi-frame when frames > 1), without its PixelData."""
    sop_class = MULTIFRAME_GRAYSCALE_WORD if frames > 1 else CT_IMAGE_STORAGE
    sop_uid = sop_uid or new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.StudyDescription = description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def gradient_row(columns: int) -> bytes:
    """One row of 16-bit little-endian pixels rising from 0 to 4095, so that the image renders visibly."""
    return b"".join(((x * 4095 // max(columns - 1, 1)) & 0xFFFF).to_bytes(2, "little") for x in range(columns))


def generated(patient_id: str, *, study_uid: str | None = None, series_uid: str | None = None, rows: int = 64,
              columns: int = 48, frames: int = 1, accession: str = "ACC1", study_date: str = "20240105",
              modality: str = "CT", description: str = "Generated study", preamble: bytes | None = None,
              patient_name: str = "Test^Patient", omit: tuple[str, ...] = (), sop_uid: str | None = None,
              image_comments: str | None = None) -> Instance:
    """A synthetic image file (see `image_dataset`) with a gradient as its pixels."""
    ds = image_dataset(patient_id, study_uid=study_uid, series_uid=series_uid, rows=rows, columns=columns,
                       frames=frames, accession=accession, study_date=study_date, modality=modality,
                       description=description, patient_name=patient_name, sop_uid=sop_uid)
    if image_comments is not None:
        ds.ImageComments = image_comments
    ds.PixelData = gradient_row(columns) * rows * frames
    for keyword in omit:
        delattr(ds, keyword)
    return _instance(ds, preamble if preamble is not None else os.urandom(128))


def write(instance: Instance, directory: Path, name: str) -> Path:
    path = directory / name
    path.write_bytes(instance.data)
    return path
