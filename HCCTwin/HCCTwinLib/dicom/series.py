"""A CT volume as a DICOM CT series (one file per slice) and back, with pydicom.

Geometry mapping (LPS, as DICOM): the direction matrix's first column is the row direction (ImageOrientationPatient
first triplet, along which the column index ``i`` grows), the second the column direction (second triplet, ``j``),
the third the slice direction; ImagePositionPatient of slice ``k`` is ``origin + k * spacing_z * direction[:, 2]``;
PixelSpacing is ``(spacing_j, spacing_i)`` (row spacing first, as DICOM orders it). Voxels are stored as int16 with
RescaleSlope 1 and RescaleIntercept -1024 (stored = HU + 1024, as scanners do), so whole HU round-trip exactly and
fractional HU within 0.5 HU. A left-handed grid (slice direction opposite to row x column) is written as it is;
readers, this one included, return it with the slices in the right-handed order (same physical image).

:func:`read_ct_series` reads the files of one series in any order, sorts the slices along the slice normal and
refuses what would give a distorted volume: mixed orientations or matrix sizes, missing or duplicate slices, uneven
gaps, gantry tilt, damaged files. Only PatientID is read, never the patient's name.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..cases import Geometry
from ..errors import InputError
from ..io import check_shear, check_slice_spacing

#: Stored value = round(HU) - RESCALE_INTERCEPT.
RESCALE_INTERCEPT = -1024.0
#: Orientation cosines must agree to this tolerance across slices.
ORIENTATION_TOL = 1e-4
MANUFACTURER = "HCCTwin"


@dataclass
class DicomSeries:
    """What :func:`write_ct_series` wrote: the files (slice order ``k``), the UIDs, and the slice headers
    (pixel data left out) that a DICOM SEG needs as its source images."""

    folder: Path
    files: list[Path]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    headers: list[Dataset] = field(repr=False, default_factory=list)


def _uid(entropy: Sequence | None) -> str:
    return generate_uid(entropy_srcs=[str(e) for e in entropy]) if entropy is not None else generate_uid()


def _ds(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    for digits in (10, 9, 8, 7, 6):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6g}"  # pragma: no cover - only for absurd values


def _date(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.strftime("%Y%m%d")
    text = str(value).replace("-", "")
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"study_date {value!r}: expected a date or YYYYMMDD")
    return text


def write_ct_series(hu: np.ndarray, geometry: Geometry, folder: str | os.PathLike, *, patient_id: str,
                    patient_name: str = "", study_uid: str | None = None, series_uid: str | None = None,
                    frame_of_reference_uid: str | None = None, study_date=None, study_time: str = "090000",
                    study_description: str = "", study_id: str = "1", accession_number: str = "",
                    series_description: str = "", series_number: int = 1, file_pattern: str = "1-{n:03d}.dcm",
                    uid_entropy: Sequence | None = None, manufacturer: str = MANUFACTURER) -> DicomSeries:
    """Write ``hu`` (numpy ``[k, j, i]``, Hounsfield units) on ``geometry`` as a CT series into ``folder``.

    One file per slice (``file_pattern`` with ``n`` = InstanceNumber from 1); the folder is created and must not
    hold files of the same names (nothing is overwritten). UIDs not given are generated; with ``uid_entropy`` (e.g.
    ``(seed, patient, study, series)``) they are derived from it, so the same call writes the same UIDs.
    ``patient_id`` / ``patient_name`` are written as given (the caller decides what identifies the patient).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or tuple(hu.shape) != geometry.shape:
        raise ValueError(f"image shape {hu.shape} does not match the geometry {geometry.shape}")
    if not np.all(np.isfinite(hu)):
        raise InputError("the CT volume holds NaN or infinite values; fill them before writing DICOM.")
    stored = np.rint(hu.astype(np.float64)) - RESCALE_INTERCEPT
    if stored.min() < -32768 or stored.max() > 32767:
        raise InputError(f"HU range {hu.min():g}..{hu.max():g} does not fit a 16-bit CT series; clip the image to "
                         f"the CT range (-1024..3071 HU) first.")
    stored = stored.astype("<i2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = tuple(uid_entropy) if uid_entropy is not None else None
    study_uid = study_uid or _uid(None if base is None else (*base, "study"))
    series_uid = series_uid or _uid(None if base is None else (*base, "series"))
    frame_of_reference_uid = frame_of_reference_uid or _uid(None if base is None else (*base, "for"))
    direction = geometry.direction_matrix
    row_dir, col_dir, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    sx, sy, sz = geometry.spacing
    origin = np.asarray(geometry.origin, dtype=float)
    normal = np.cross(row_dir, col_dir)
    nk, nj, ni = geometry.shape
    date = _date(study_date)
    files, headers = [], []
    for k in range(nk):
        n = k + 1
        path = folder / file_pattern.format(n=n)
        if path.exists():
            raise InputError(f"{path}: file exists; write the series into a new folder (nothing is overwritten).")
        position = origin + k * sz * slice_dir
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(None if base is None else (*base, "sop", n))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.Modality = "CT"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = date
        ds.StudyTime = study_time
        ds.SeriesDate = date
        ds.ContentDate = date
        ds.StudyDescription = study_description
        ds.StudyID = study_id
        ds.AccessionNumber = accession_number
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = n
        ds.AcquisitionNumber = 1
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = "HCCTwin"
        ds.SoftwareVersions = f"HCCTwin {__version__}"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.BodyPartExamined = "ABDOMEN"
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "FFS"
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = nj, ni
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "50", "400"
        headers.append(ds.copy())
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return DicomSeries(folder=folder, files=files, study_uid=study_uid, series_uid=series_uid,
                       frame_of_reference_uid=frame_of_reference_uid, headers=headers)


# ---------------------------------------------------------------------------------------------------- reading
def finite_floats(value, n: int) -> np.ndarray | None:
    """A multi-valued DICOM element as ``n`` finite floats, or None when it is missing or malformed."""
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n and np.all(np.isfinite(arr)) else None


def _floats(ds: Dataset, keyword: str, n: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    arr = finite_floats(value, n)
    if arr is None:
        raise InputError(f"{where}: {keyword} is missing or malformed ({value!r}); the slice cannot be placed in "
                         f"space. Export the series again from the PACS or scanner.")
    return arr


def _damaged(path, exc: Exception) -> InputError:
    return InputError(f"{path}: the DICOM file is unreadable, truncated or damaged ({type(exc).__name__}: "
                      f"{str(exc)[:150]}). Copy or export the series again.")


def _read_slice(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise _damaged(path, exc) from exc


def slice_geometry(datasets: Sequence[Dataset], where: str) -> tuple[list[int], Geometry]:
    """Order (indices into ``datasets``) of the slices along the normal and the series' grid; InputError naming the
    problem for mixed orientations / sizes, duplicate positions, missing slices (uneven gaps) and gantry tilt."""
    if len(datasets) < 2:
        raise InputError(f"{where}: the series has {len(datasets)} slice(s); HCCTwin needs a 3D volume (at least 2 "
                         f"slices). Give the complete series.")
    first = datasets[0]
    iop = _floats(first, "ImageOrientationPatient", 6, where)
    spacing = _floats(first, "PixelSpacing", 2, where)
    rows, cols = int(first.Rows), int(first.Columns)
    positions = []
    for ds in datasets:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, where), iop, atol=ORIENTATION_TOL):
            raise InputError(f"{where}: the slices have different orientations (ImageOrientationPatient); the "
                             f"folder mixes series or reformats. Keep one series per folder.")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or not np.allclose(
                _floats(ds, "PixelSpacing", 2, where), spacing, rtol=1e-4):
            raise InputError(f"{where}: the slices have different matrix sizes or pixel spacings; the folder mixes "
                             f"series. Keep one series per folder.")
        positions.append(_floats(ds, "ImagePositionPatient", 3, where))
    row_dir, col_dir = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or abs(
            row_dir @ col_dir) > 1e-3:
        raise InputError(f"{where}: ImageOrientationPatient {iop.tolist()} is not two orthonormal directions; the "
                         f"header is damaged. Export the series again.")
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    positions = np.asarray(positions)
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    step = check_slice_spacing(along[order], where)
    check_shear(positions[order], normal, float(spacing.min()), where)
    geometry = Geometry(shape=(len(order), rows, cols), spacing=(float(spacing[1]), float(spacing[0]), step),
                        origin=tuple(positions[order[0]]),
                        direction=np.column_stack([row_dir, col_dir, normal]).ravel())
    return order, geometry


def read_ct_series(files: Sequence[str | os.PathLike] | str | os.PathLike, *, validate: bool = True
                   ) -> tuple[np.ndarray, Geometry]:
    """Read one CT series (a list of its files, or a folder holding only it) as ``(HU float32 [k, j, i], Geometry)``.

    Slices are sorted along the slice normal; RescaleSlope/Intercept are applied. With ``validate`` the volume goes
    through :func:`HCCTwinLib.io.validate_image` (spacing range, empty image, ...). InputError names the problem.
    """
    if isinstance(files, (str, os.PathLike)):
        folder = Path(files)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder of DICOM files.")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.upper() != "DICOMDIR")
        where = str(folder)
    else:
        files = [Path(f) for f in files]
        where = str(Path(files[0]).parent) if files else "<series>"
    if not files:
        raise InputError(f"{where}: no DICOM files found.")
    datasets = [_read_slice(Path(f)) for f in files]
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise InputError(f"{where}: the files belong to {len(uids)} different series; give the files of one series.")
    order, geometry = slice_geometry(datasets, where)
    volume = np.empty(geometry.shape, dtype=np.float32)
    for k, idx in enumerate(order):
        ds = datasets[idx]
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # a slice cut short: its header reads, its pixel data do not
            raise _damaged(files[idx], exc) from exc
        datasets[idx] = None  # free the slice's raw and decoded data as the volume fills
        if pixels.ndim != 2:
            raise InputError(f"{files[idx]}: holds {pixels.ndim}-D pixel data (multi-frame or colour); HCCTwin reads "
                             f"single-frame greyscale CT slices. Export the series as classic CT images.")
        volume[k] = pixels.astype(np.float32) * slope + intercept
    if validate:
        from ..io import to_sitk, validate_image

        volume, geometry = validate_image(to_sitk(volume, geometry), where)
    return volume, geometry
