"""Synthetic CT series written with pydicom (CT Image Storage, one file per slice).

Used by the DICOM SEG/RTSTRUCT/PACS tests and by ``benchmarks/bench_dicom_out.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


BLOBS = ((-0.4, 0.0, 0.0, 0.25, 200), (0.35, 0.1, 0.1, 0.2, -80), (0.0, -0.35, -0.2, 0.15, 300))


def ct_phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """An int16 HU volume ``(z, y, x)``: a body ellipse with three bright/dark blobs
    (centre x, y, z in -1..1, radius, HU in :data:`BLOBS`), built slice by slice."""
    nz, ny, nx = shape
    y, x = np.ogrid[-1 : 1 : ny * 1j, -1 : 1 : nx * 1j]
    rng = np.random.default_rng(seed)
    vol = np.empty(shape, np.int16)
    for k, z in enumerate(np.linspace(-1, 1, nz)):
        sl = np.full((ny, nx), -1000, np.int16)
        sl[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40
        for cx, cy, cz, r, hu in BLOBS:
            sl[(x - cx) ** 2 + (y - cy) ** 2 + ((z - cz) * 0.8) ** 2 < r**2] = hu
        vol[k] = sl + rng.integers(-5, 6, (ny, nx), dtype=np.int16)
    return vol


def write_ct_series(
    folder: Path,
    array: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.0),
    origin: tuple[float, float, float] = (-100.0, -120.0, 50.0),
    series_uid: str = "1.2.826.0.1.3680043.8.498.11.1",
    study_uid: str = "1.2.826.0.1.3680043.8.498.11.2",
    frame_uid: str = "1.2.826.0.1.3680043.8.498.11.3",
    patient_id: str = "SAMMED001",
    positions_z: list[float] | None = None,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
) -> list[Path]:
    """Write ``array`` (``(z, y, x)`` int16 HU) as an axial CT series; return the files.

    ``positions_z`` overrides the slice positions (for uneven or missing slices).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = array.shape
    zs = positions_z or [origin[2] + k * spacing[2] for k in range(nz)]
    files = []
    for k, z in enumerate(zs):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_SOP_CLASS
        ds.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{k + 1}"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CT_SOP_CLASS, f"{series_uid}.{k + 1}"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", "ACC11"
        ds.Modality, ds.Manufacturer, ds.ReferringPhysicianName = "CT", "synthetic", ""
        ds.StudyDescription, ds.SeriesDescription = "phantom study", "phantom CT"
        ds.PatientName, ds.PatientID = "Phantom^Test", patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.ImagePositionPatient = [f"{origin[0]:g}", f"{origin[1]:g}", f"{z:g}"]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.KVP, ds.PatientPosition, ds.Laterality = "120", "HFS", ""
        ds.AcquisitionNumber = 1
        ds.PixelData = np.ascontiguousarray(array[min(k, nz - 1)], np.int16).tobytes()
        path = folder / f"ct_{k:04d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files
