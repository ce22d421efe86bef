"""Image I/O with SimpleITK: NIfTI, NRRD, MetaImage and DICOM series folders, with validation.

Every reader returns ``(array, Geometry)`` with the array in numpy ``[k, j, i]`` order and the geometry in LPS (see
:mod:`HCCTwinLib.cases`). Every problem with an input raises :class:`~HCCTwinLib.errors.InputError` whose message
names the file, the problem and what to do. Nothing here ever modifies or deletes an input file.

Beyond what ITK checks: truncated NIfTI and NaN/Inf in float NIfTI (ITK would fill or zero them), DICOM series with a
damaged or missing slice or two series of similar size in one folder, CT phases that are not in Hounsfield units,
empty label maps. :func:`read_clinical_table` reads a cohort's ``clinical.csv`` with the same kind of errors.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import secrets
import shutil
import struct
import tempfile
import zlib
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .cases import CT_PHASES, MRI_SEQUENCES, Case, Geometry
from .errors import InputError
from .labels import MAX_LABEL

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Plausible voxel spacing for CT/MRI of the abdomen, in mm.
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 15.0
#: Default memory budget for one volume: 512 x 512 x 1000 voxels (about 1 GB as float32). Override with the
#: environment variable HCCTWIN_MAX_VOXELS or the ``max_voxels`` argument.
DEFAULT_MAX_VOXELS = 512 * 512 * 1000
#: Phases must share at least this fraction of the smaller one's physical extent.
MIN_PHASE_OVERLAP = 0.5
#: ... and each must span at least this fraction of the other's extent along every axis: a phase of 3 of 32 slices is
#: a partial export, not a study (an arterial phase limited to the liver beside a portal phase of abdomen and pelvis
#: spans about 35 %).
MIN_PHASE_COVERAGE = 0.25
#: The in-plane field of view of an abdominal CT is at least this wide (a smaller one: spacing in cm, or not a CT of
#: the abdomen).
MIN_CT_FOV_MM = 100.0
#: CT values in HU fit int16 (extended-scale CT included); anything beyond is not HU.
CT_VALUE_RANGE = (-32768.0, 32767.0)
#: DICOM in-plane shear (gantry tilt) tolerated: this fraction of a pixel per slice.
MAX_SHEAR_PER_SLICE = 0.05
#: A folder whose second-largest DICOM series has at least this fraction of the largest one's files is ambiguous.
MIXED_SERIES_FRACTION = 0.5
#: DICOM slice gaps may deviate this much (relative) from the median gap.
MAX_SLICE_GAP_DEVIATION = 0.2
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def max_voxels() -> int:
    return int(os.environ.get("HCCTWIN_MAX_VOXELS", DEFAULT_MAX_VOXELS))


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` as a file with a known suffix, or as a DICOM series folder; None if absent."""
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    candidate = folder / stem
    return candidate if candidate.is_dir() else None


def _dicom_series_files(folder: Path, series_uid: str | None) -> list[str]:
    reader = sitk.ImageSeriesReader()
    try:
        uids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:  # pragma: no cover - GDCM errors are rare
        raise InputError(f"{folder}: could not scan the folder for DICOM series ({exc}).") from exc
    if not uids:
        raise InputError(f"{folder}: no DICOM series found. Point to a folder of DICOM files of one series, "
                         f"or to a NIfTI/NRRD file ({', '.join(IMAGE_SUFFIXES)}).")
    if series_uid is None:
        if len(uids) > 1:
            counts = {uid: len(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
            ranked = sorted(counts, key=counts.get, reverse=True)
            if counts[ranked[1]] >= MIXED_SERIES_FRACTION * counts[ranked[0]]:
                listing = ", ".join(f"{uid} ({counts[uid]} files)" for uid in ranked)
                raise InputError(f"{folder}: the folder mixes {len(uids)} DICOM series of similar size ({listing}); "
                                 f"HCCTwin cannot tell which one is meant. Put each series (phase) in its own folder, "
                                 f"or pass the series UID.")
            series_uid = ranked[0]
        else:
            series_uid = uids[0]
    elif series_uid not in uids:
        raise InputError(f"{folder}: series {series_uid} not found; the folder has {', '.join(uids)}. Pass one of "
                         f"these series UIDs.")
    files = list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    others = [f for uid in uids if uid != series_uid for f in reader.GetGDCMSeriesFileNames(str(folder), uid)]
    _check_dicom_members(folder, files, series_uid, others)
    return files


def check_slice_spacing(along_sorted: np.ndarray, where) -> float:
    """The slice step (mm) of a DICOM series from its slice positions along the slice normal, sorted ascending.
    InputError for slices at the same position (two acquisitions or copies in one series) and for a gap that
    deviates from the median step by more than :data:`MAX_SLICE_GAP_DEVIATION` (missing slices): either would
    give a distorted volume. Shared by the SimpleITK reader here and the pydicom reader of :mod:`HCCTwinLib.dicom`."""
    gaps = np.diff(np.asarray(along_sorted, dtype=float))
    step = float(np.median(gaps))
    if step <= 1e-3 or np.any(gaps <= 1e-3):
        raise InputError(f"{where}: several slices of the series lie at the same position: the series mixes two "
                         f"acquisitions (or holds copies of slices). Keep one acquisition per series.")
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > MAX_SLICE_GAP_DEVIATION * step:
        missing = gaps[worst] / step - 1
        hint = f"about {missing:.0f} slice(s) are missing" if missing > 0.5 else "the slices are unevenly spaced"
        raise InputError(f"{where}: slice positions are not evenly spaced: a gap of {gaps[worst]:.2f} mm after "
                         f"slice {worst + 1} of {len(gaps) + 1} where the spacing is {step:.2f} mm ({hint}). The "
                         f"volume would be distorted; copy or export the complete series again.")
    return step


def check_shear(positions_sorted: np.ndarray, normal: np.ndarray, pixel_spacing_mm: float, where) -> None:
    """InputError when a DICOM series' slices are sheared (gantry tilt): the first-to-last slice shift has an in-plane
    component beyond :data:`MAX_SHEAR_PER_SLICE` of a pixel per slice. A reader that stacks such slices on an
    orthogonal grid drops the shear. Shared by the SimpleITK reader here and the pydicom reader of
    :mod:`HCCTwinLib.dicom`."""
    positions_sorted = np.asarray(positions_sorted, dtype=float)
    shift = positions_sorted[-1] - positions_sorted[0]
    in_plane = shift - (shift @ normal) * normal
    n_steps = max(len(positions_sorted) - 1, 1)
    if np.linalg.norm(in_plane) > MAX_SHEAR_PER_SLICE * max(pixel_spacing_mm, 1e-6) * n_steps:
        raise InputError(f"{where}: the slices are sheared (gantry tilt of about "
                         f"{np.degrees(np.arctan2(np.linalg.norm(in_plane), abs(shift @ normal))):.1f} degrees); "
                         f"HCCTwin needs an orthogonal grid. Resample the series (e.g. Slicer's gantry tilt "
                         f"correction on DICOM load) and export it as NIfTI.")


def _check_pixel_spacing(info: sitk.ImageFileReader, folder: Path, name: str) -> None:
    """ITK reads a missing or zero DICOM PixelSpacing (0028,0030) as 1 mm: refuse it instead."""
    key = "0028|0030"
    raw = info.GetMetaData(key).strip() if info.HasMetaDataKey(key) else ""
    try:
        values = [float(v) for v in raw.split("\\") if v.strip()]
    except ValueError:
        values = []
    if len(values) != 2 or not all(np.isfinite(values)) or min(values) <= 0:
        shown = f"PixelSpacing {raw!r}" if raw else "no PixelSpacing"
        raise InputError(f"{folder}: {name} has {shown} (0028,0030): the pixel size is unknown (a reader would assume "
                         f"1 mm). Export the series again with its pixel spacing.")


def _looks_like_dicom(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".ima")


def _check_dicom_members(folder: Path, files: list[str], series_uid: str, others=()) -> None:
    """GDCM silently leaves out files it cannot parse (e.g. a slice cut short), and ITK then stacks the remaining
    slices with an averaged spacing. Refuse both: a damaged file of this series (a DICOM file in no series that
    still holds this series' UID), and uneven slice positions."""
    listed = {os.path.realpath(f) for f in (*files, *others)}
    uid = re.compile(re.escape(series_uid.encode()) + rb"(?![0-9.])")
    damaged = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or os.path.realpath(entry) in listed or not _looks_like_dicom(entry):
            continue
        try:
            if uid.search(entry.read_bytes()):
                damaged.append(entry.name)
        except OSError:
            damaged.append(entry.name)
    if damaged:
        raise InputError(f"{folder}: {len(damaged)} file(s) of the series could not be read (truncated or damaged): "
                         f"{', '.join(damaged[:5])}. The volume would have a gap; copy or export the series again.")
    positions = []
    info = sitk.ImageFileReader()
    for f in files:
        info.SetFileName(f)
        try:
            info.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{folder}: {Path(f).name} is unreadable ({str(exc).strip().splitlines()[-1][:150]}); "
                             f"copy or export the series again.") from exc
        positions.append(info.GetOrigin())
        if len(positions) == 1:
            _check_pixel_spacing(info, folder, Path(f).name)
            normal = np.asarray(info.GetDirection()).reshape(3, 3)[:, 2]
            pixel = float(min(info.GetSpacing()[:2]))
    if len(files) < 3:
        return
    positions = np.asarray(positions, dtype=float)
    order = np.argsort(positions @ normal, kind="stable")
    check_slice_spacing((positions @ normal)[order], folder)
    check_shear(positions[order], normal, pixel, folder)


def dicom_patient_id(folder: str | os.PathLike) -> str | None:
    """The DICOM PatientID (0010,0020) of the first file of the series in ``folder``, or None.

    Only the ID is read (used as the default case name); the patient's name is never read into HCCTwin.
    """
    try:
        files = _dicom_series_files(Path(folder), None)
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.ReadImageInformation()
        value = info.GetMetaData("0010|0020").strip() if info.HasMetaDataKey("0010|0020") else ""
    except (InputError, RuntimeError):
        return None
    return value if value and _SAFE_ID.fullmatch(value) else None


def read_image(path: str | os.PathLike, *, labels: bool = False, series_uid: str | None = None,
               max_voxels_allowed: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read and validate one 3D image. ``labels=True`` reads an integer label map (values 0..4)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file or folder not found; check the path (and that the drive is mounted).")
    limit = max_voxels_allowed or max_voxels()
    try:
        if path.is_dir():
            files = _dicom_series_files(path, series_uid)
            info = sitk.ImageFileReader()
            info.SetFileName(files[0])
            info.ReadImageInformation()
            n_voxels = int(np.prod(info.GetSize()[:2])) * len(files)
            _check_budget(path, n_voxels, limit)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = reader.GetSize()
            _check_dimension(path, len(size), reader.GetNumberOfComponents(), size)
            _check_budget(path, int(np.prod(size)), limit)
            _check_nifti_complete(path)
            image = reader.Execute()
    except InputError:
        raise
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = next((ln for ln in reversed(lines) if "error" in ln.lower() or "description" in ln.lower()),
                      lines[-1] if lines else "")
        raise InputError(f"{path}: could not read the image; the file is unreadable, truncated or not a "
                         f"supported format ({detail.strip()[:200]}). Re-export it as NIfTI/NRRD or a complete "
                         f"DICOM series.") from exc
    return validate_image(image, path, labels=labels)


def _check_dimension(path: Path, ndim: int, components: int, size) -> None:
    if ndim == 4 or (ndim == 3 and components > 1):
        raise InputError(f"{path}: image is 4D or multi-component (size {tuple(size)}, {components} components per "
                         f"voxel); HCCTwin needs one 3D volume per phase. Split the phases into separate files.")
    if ndim == 2:
        raise InputError(f"{path}: image is 2D (size {tuple(size)}); HCCTwin needs a 3D volume. For DICOM, give the "
                         f"folder of the whole series, not one slice.")
    if ndim != 3:
        raise InputError(f"{path}: image has {ndim} dimensions; HCCTwin needs a 3D volume. Export one 3D volume per "
                         f"phase.")


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (filling the missing voxels) and turns NaN/Inf voxels of a float
    NIfTI into 0 (a plausible HU value): check the data length and, for float data, the values ourselves."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    n_bad = 0
    try:
        with opener(path, "rb") as fh:
            header = fh.read(352)
            if len(header) < 348:
                raise InputError(f"{path}: file is truncated (no complete NIfTI header). Copy or export it again.")
            endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
            dims = struct.unpack(endian + "8h", header[40:56])
            if not 1 <= dims[0] <= 7 or min(dims[1:1 + dims[0]]) < 1:
                raise InputError(f"{path}: the NIfTI header's dimensions {list(dims[:1 + max(0, min(dims[0], 7))])} "
                                 f"are invalid (zero or negative sizes); the header is damaged. Export the image "
                                 f"again.")
            geometry = struct.unpack(endian + "8f", header[76:108]) + struct.unpack(endian + "18f", header[256:328])
            if not all(math.isfinite(v) for v in geometry):
                raise InputError(f"{path}: the NIfTI header holds NaN or infinite spacing, rotation or offsets "
                                 f"(pixdim / qform / sform); the image position is unknown (a reader would place it "
                                 f"at 0). Fix the header or export the image again.")
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            vox_offset_f = struct.unpack(endian + "f", header[108:112])[0]
            if not math.isfinite(vox_offset_f) or vox_offset_f < 0:
                raise InputError(f"{path}: the NIfTI header's data offset (vox_offset {vox_offset_f}) is invalid; the "
                                 f"header is damaged. Export the image again.")
            vox_offset = int(vox_offset_f)
            float_type = {16: "f4", 64: "f8"}.get(datatype)
            n_bytes = len(header)
            skip = max(vox_offset - len(header), 0)
            while skip > 0:
                chunk = fh.read(min(skip, 1 << 22))
                if not chunk:
                    break
                skip -= len(chunk)
                n_bytes += len(chunk)
            carry = b""
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                n_bytes += len(chunk)
                if float_type is None:
                    continue
                buf = carry + chunk
                usable = len(buf) - len(buf) % int(float_type[1])
                values = np.frombuffer(buf[:usable], dtype=endian + float_type)
                n_bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                carry = buf[usable:]
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise InputError(f"{path}: the file is unreadable or truncated ({exc}). Copy or export it "
                         f"again.") from exc
    n_voxels = int(np.prod([max(d, 1) for d in dims[1:1 + min(max(dims[0], 1), 7)]]))
    expected = vox_offset + n_voxels * max(bitpix, 0) // 8
    if n_bytes < expected:
        raise InputError(f"{path}: file is truncated ({n_bytes:,} of {expected:,} bytes): the image is unreadable. "
                         f"Copy or export it again.")
    if n_bad:
        raise InputError(f"{path}: image contains {n_bad:,} NaN or infinite voxels; fill or crop them before use.")


def _check_budget(path: Path, n_voxels: int, limit: int) -> None:
    if n_voxels > limit:
        raise InputError(f"{path}: volume has {n_voxels:,} voxels, above the memory budget of {limit:,} voxels "
                         f"(about {limit * 4 / 2**30:.1f} GiB as float32). Crop to the abdomen or resample to a "
                         f"coarser grid, or raise HCCTWIN_MAX_VOXELS if this machine has the memory.")


def validate_image(image: sitk.Image, path: str | os.PathLike = "<image>", *, labels: bool = False
                   ) -> tuple[np.ndarray, Geometry]:
    """Check a SimpleITK image and return ``(array, geometry)``; raises InputError naming the problem."""
    path = Path(path)
    size = image.GetSize()
    _check_dimension(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), size)
    if min(size) < 1 or int(np.prod(size)) == 0:
        raise InputError(f"{path}: image is empty (size {size}); export the image again.")
    if max(size) > 1 and sorted(size)[0] == 1 and sorted(size)[1] == 1:
        raise InputError(f"{path}: image is a line of voxels (size {size}), not a 3D volume; export the whole 3D "
                         f"volume.")
    if min(size) == 1:
        raise InputError(f"{path}: image has a single slice (size {size}); HCCTwin needs a 3D volume. For DICOM, give "
                         f"the folder of the whole series; otherwise export the whole volume.")
    spacing = image.GetSpacing()
    if not all(np.isfinite(spacing)) or min(spacing) < MIN_SPACING_MM or max(spacing) > MAX_SPACING_MM:
        raise InputError(f"{path}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is outside the plausible "
                         f"range {MIN_SPACING_MM}-{MAX_SPACING_MM} mm; the header is probably wrong (e.g. spacing in "
                         f"cm or m). Fix the spacing in the header.")
    if not all(np.isfinite(image.GetOrigin())):
        raise InputError(f"{path}: the image origin {tuple(image.GetOrigin())} is not a finite position (NaN or "
                         f"infinite offsets in the header); the header is damaged. Fix the origin or export the "
                         f"image again.")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction @ direction.T, np.eye(3), atol=1e-3):
        raise InputError(f"{path}: direction matrix is not orthonormal ({direction.round(3).tolist()}); the header "
                         f"is damaged. Re-export the image.")
    array = sitk.GetArrayFromImage(image)
    if labels:
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.isfinite(array)) or not np.allclose(array, np.round(array)):
                raise InputError(f"{path}: label map has non-integer values; expected integers "
                                 f"0..{MAX_LABEL}. Export the segmentation as a label map (integer type).")
        # check the values as stored (a cast first would wrap 65538 to 2), then narrow
        bad = np.setdiff1d(np.unique(array), np.arange(MAX_LABEL + 1))
        if bad.size:
            raise InputError(f"{path}: label map has values {bad[:10].tolist()} outside 0..{MAX_LABEL} (0 background, "
                             f"1 liver, 2 viable tumor, 3 necrosis, 4 PVTT). Remap the labels first.")
        return array.astype(np.uint8), Geometry.from_sitk(image)
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        n_bad = int((~finite).sum())
        raise InputError(f"{path}: image contains {n_bad:,} NaN or infinite voxels; fill or crop them before use.")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{path}: image is empty: every voxel has the value {float(array.min()):g}. Check that the "
                         f"right series was exported (a blank or failed export).")
    return array, Geometry.from_sitk(image)


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """numpy [k, j, i] array + geometry -> SimpleITK image."""
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, *, labels: bool = False,
                compression_level: int = 1) -> Path:
    """Write an image (float HU stored as int16 when lossless enough, labels as uint8); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels:
        data = np.asarray(array).astype(np.uint8)
    elif np.issubdtype(np.asarray(array).dtype, np.integer):
        data = np.asarray(array)
    else:
        rounded = np.rint(array)
        fits = rounded.min() >= -32768 and rounded.max() <= 32767 and np.allclose(rounded, array, atol=0.5)
        data = rounded.astype(np.int16) if fits else np.asarray(array, dtype=np.float32)
    writer = sitk.ImageFileWriter()
    writer.SetUseCompression(str(path).endswith((".gz", ".nrrd", ".mha")))
    writer.SetCompressionLevel(compression_level)
    image = to_sitk(data, geometry)
    with atomic_path(path) as tmp:  # a reader never sees a half-written volume
        writer.SetFileName(str(tmp))
        writer.Execute(image)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary name beside ``path`` (same extension) to write to; on success it replaces ``path`` in one
    step (``os.replace``), on failure or interruption it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".partial-{os.getpid()}-{secrets.token_hex(3)}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file so that a reader sees the old or the new content, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def check_writable(out: str | os.PathLike, *, folder: bool) -> Path:
    """Fail now, before any computation, when ``out`` (a folder with ``folder=True``, else a file) cannot be written:
    its nearest existing folder must be a writable folder (checked by writing and removing a test file). Nothing is
    created. Raises InputError with one line."""
    out = Path(out)
    if folder and out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder; give a folder for the outputs.")
    if not folder and out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name (e.g. {out / 'labels.nii.gz'}).")
    existing = out if folder else out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--out {out}: {existing} is a file, so the output cannot be written below it; choose "
                         f"another place.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".hcctwin-write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write in {existing} ({exc.strerror or exc}); choose a folder you can "
                         f"write to.") from None
    return out


@contextmanager
def staged_output(out: str | os.PathLike):
    """A run's outputs are complete or absent: yield a fresh staging folder beside ``out`` (created now, so an
    unusable ``out`` fails before any computation); when the block succeeds its files move into ``out``, the
    ``result.json`` / ``report.html`` of a previous run removed first and put back last, so that an interrupted run
    never leaves files of two runs side by side; when it fails or is interrupted the staging folder is removed and
    ``out`` is left as it was."""
    out = Path(out)
    check_writable(out, folder=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
        publish_staged(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


#: files that mark a complete output folder: removed first and written last when a run's files are published
COMPLETION_MARKERS = ("result.json", "report.html")


def publish_staged(stage: Path, out: Path) -> None:
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    last = [p for p in files if p.relative_to(stage).as_posix() in COMPLETION_MARKERS]
    for name in COMPLETION_MARKERS:
        if (stage / name).exists() and (out / name).is_file():
            (out / name).unlink()
    for src in [p for p in files if p not in last] + last:
        dst = out / src.relative_to(stage)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def relocate_paths(paths: Mapping[str, Any], stage: Path, out: Path) -> dict[str, Any]:
    """The output paths a writer returned for the staging folder, as they are after :func:`staged_output`."""
    def move(value):
        try:
            rel = Path(value).relative_to(stage)
        except (TypeError, ValueError):
            return value
        return out / rel if isinstance(value, Path) else str(out / rel)

    return {k: move(v) for k, v in paths.items()}


def resample_to(array: np.ndarray, source: Geometry, target: Geometry, *, labels: bool = False,
                default_value: float | None = None) -> np.ndarray:
    """Resample ``array`` from the ``source`` grid onto the ``target`` grid (physical space, identity transform)."""
    if source.same_grid(target):
        return array
    image = to_sitk(array, source)
    reference = target.apply_to(sitk.Image(list(target.size_xyz), sitk.sitkUInt8))
    if default_value is None:
        default_value = 0.0 if labels else float(np.min(array))
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, default_value, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def check_ct_range(what: str, array: np.ndarray) -> None:
    """InputError when a CT phase is evidently not in Hounsfield units.

    Abdominal CT in HU always holds air (about -1000 HU) or at least fat (about -100 HU): an image without a single
    negative value is raw scanner values stored without the DICOM rescale (0..4095, HU = value - 1024), an MR
    image, or an intensity-normalised export. An image spanning less than 100 units is normalised (z-scores, 0..1).
    """
    lo, hi = float(np.min(array)), float(np.max(array))
    if lo < CT_VALUE_RANGE[0] or hi > CT_VALUE_RANGE[1]:
        raise InputError(f"{what}: values {lo:g}..{hi:g} lie outside the range of CT in Hounsfield units "
                         f"({CT_VALUE_RANGE[0]:g}..{CT_VALUE_RANGE[1]:g}); the image is damaged or scaled. Export the "
                         f"CT in HU.")
    if lo >= 0 and hi > 1500:
        raise InputError(f"{what}: values {lo:g}..{hi:g} with nothing below 0 look like raw unsigned CT stored "
                         f"without the DICOM rescale (0..4095), not Hounsfield units (air is -1000 HU). Apply "
                         f"RescaleSlope/RescaleIntercept (usually HU = value - 1024) and export again.")
    if lo >= 0:
        raise InputError(f"{what}: values {lo:g}..{hi:g} have nothing below 0, so this is not a CT in Hounsfield "
                         f"units (air -1000 HU, fat about -100 HU); it looks like an MR image or an intensity-"
                         f"normalised export. Load MRI under an MRI sequence name ({', '.join(MRI_SEQUENCES)}), or "
                         f"export the CT in HU.")
    sample = array[::2, ::4, ::4]
    body = sample[sample > -1100.0]  # padding (-1024 .. -3024, -32768) left out
    # raw values: air near +24, fat near 924, soft tissue near 1064, nothing at -1000 (a CT in HU, even a crop of
    # soft tissue, has its 90th percentile far below 700 unless it is mostly bone)
    if body.size >= 100 and float(np.mean(body < -200.0)) < 0.001 and float(np.quantile(body, 0.9)) > 700.0:
        raise InputError(f"{what}: apart from padding ({lo:g}) the values start at {float(body.min()):g}, and a "
                         f"tenth of them lie above {float(np.quantile(body, 0.9)):g}: no air at -1000 and soft tissue "
                         f"near 1050. "
                         f"This looks like raw "
                         f"CT stored without the DICOM rescale (HU = value - 1024), not Hounsfield units. Apply "
                         f"RescaleSlope/RescaleIntercept and export again.")
    if hi - lo < 100:
        raise InputError(f"{what}: values span only {lo:g}..{hi:g}, too narrow for a CT in Hounsfield units "
                         f"(air -1000 HU to contrast-enhanced vessels +200 HU); the image looks intensity-normalised. "
                         f"Export the original CT in HU.")


def check_ct_field_of_view(what: str, geometry: Geometry) -> None:
    """InputError when a CT's in-plane field of view is under :data:`MIN_CT_FOV_MM` with a scanner's matrix (at least
    128 x 128) or voxels under 0.3 mm: a 512 x 512 CT with the spacing written in cm (0.15 for 1.5 mm) spans 77 mm,
    and its liver would measure a few mL."""
    nx, ny, _nz = geometry.size_xyz
    sx, sy, _sz = geometry.spacing
    fov = (nx * sx, ny * sy)
    # a small crop of 1 mm voxels (a phantom, a test volume) is left alone; a scanner's matrix or sub-0.3 mm
    # voxels over a field that small are a unit error
    if min(fov) < MIN_CT_FOV_MM and (min(nx, ny) >= 128 or min(sx, sy) < 0.3):
        raise InputError(f"{what}: the in-plane field of view is {fov[0]:.0f} x {fov[1]:.0f} mm ({nx} x {ny} voxels "
                         f"of {sx:g} x {sy:g} mm), too small for a CT of the abdomen (at least {MIN_CT_FOV_MM:.0f} "
                         f"mm). "
                         f"The spacing is probably in cm (multiply by 10) or the image is a crop; fix the header's "
                         f"spacing or give the whole scan.")


def check_phase_coverage(what: str, geometry: Geometry, reference: Geometry, reference_name: str) -> None:
    """InputError when one phase spans less than :data:`MIN_PHASE_COVERAGE` of the other's extent along an axis
    (e.g. 3 of 32 slices): resampled onto the other's grid it would be mostly fill, and the segmentation would see
    the missing slices as empty."""
    a_lo, a_hi = geometry.physical_extent_lps()
    b_lo, b_hi = reference.physical_extent_lps()
    a_len = np.maximum(a_hi - a_lo, 1e-6)
    b_len = np.maximum(b_hi - b_lo, 1e-6)
    inter = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None)
    cover = np.minimum(inter / a_len, inter / b_len)
    axis = int(np.argmin(cover))
    if cover[axis] < MIN_PHASE_COVERAGE:
        short = "it spans" if a_len[axis] < b_len[axis] else f"{reference_name!r} spans"
        raise InputError(f"{what} and {reference_name!r} cover different parts of the body: along the "
                         f"{'LPS'[axis]} axis {short} only {100 * cover[axis]:.0f}% of the other's extent "
                         f"({a_len[axis]:.0f} vs {b_len[axis]:.0f} mm). One of them is a partial export; give the "
                         f"complete series of each phase.")


def overlap_fraction(a: Geometry, b: Geometry) -> float:
    """Fraction of the smaller image's physical bounding box (LPS) that the two images share."""
    a_lo, a_hi = a.physical_extent_lps()
    b_lo, b_hi = b.physical_extent_lps()
    inter = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None)
    smaller = min(np.prod(a_hi - a_lo), np.prod(b_hi - b_lo))
    return float(np.prod(inter) / smaller) if smaller > 0 else 0.0


def assemble_case(patient_id: str, images: Mapping[str, tuple[np.ndarray, Geometry]],
                  labels: tuple[np.ndarray, Geometry] | None = None, clinical: Mapping | None = None,
                  source: Mapping[str, str] | None = None) -> Case:
    """Bring phases (and labels) onto the reference phase's grid and build a :class:`Case`.

    The reference grid is the portal venous phase for CT (else the first phase). Phases that do not overlap the
    reference physically raise InputError.
    """
    if not images:
        raise InputError(f"{patient_id}: no pre-treatment phase given; give at least the arterial or portal phase.")
    names = list(images)
    reference = "portal" if "portal" in images else names[0]
    ref_geom = images[reference][1]
    phases = {}
    for name in names:
        arr, geom = images[name]
        if not geom.same_grid(ref_geom):
            frac = overlap_fraction(geom, ref_geom)
            if frac < MIN_PHASE_OVERLAP:
                raise InputError(f"{patient_id}: phases {name!r} and {reference!r} do not overlap (shared extent "
                                 f"{100 * frac:.0f}% < {100 * MIN_PHASE_OVERLAP:.0f}%). They are probably from "
                                 f"different studies or have a wrong origin; check the series.")
            arr = resample_to(arr, geom, ref_geom)
        if name != reference:
            check_phase_coverage(f"{patient_id}: phase {name!r}", geom, ref_geom, reference)
        phases[name] = np.asarray(arr, dtype=np.float32)
        if name in CT_PHASES:
            check_ct_range(f"{patient_id}: phase {name!r}", phases[name])
            check_ct_field_of_view(f"{patient_id}: phase {name!r}", geom)
    label_array = None
    if labels is not None:
        arr, geom = labels
        if not geom.same_grid(ref_geom):
            if overlap_fraction(geom, ref_geom) < MIN_PHASE_OVERLAP:
                raise InputError(f"{patient_id}: the label map does not overlap the {reference!r} phase; check that it "
                                 f"belongs to this study (or leave it out so the segmentation runs).")
            arr = resample_to(arr, geom, ref_geom, labels=True)
        label_array = np.asarray(arr, dtype=np.uint8)
        if not label_array.any():
            raise InputError(f"{patient_id}: the label map is empty (no liver, label 1, and no tumour): the liver was "
                             f"not found in it. Check that the label map belongs to this study, or leave it out so "
                             f"the segmentation runs.")
    modality = "MR" if any(n in MRI_SEQUENCES for n in names) else "CT"
    return Case(patient_id=patient_id, phases=phases, geometry=ref_geom, labels=label_array,
                clinical=dict(clinical or {}), modality=modality, source=dict(source or {}))


def load_case(pre: str | os.PathLike | None = None, *, patient_id: str | None = None,
              paths: Mapping[str, str | os.PathLike] | None = None, labels_path: str | os.PathLike | None = None,
              clinical: Mapping | None = None) -> Case:
    """Load a pre-treatment study.

    Either ``pre`` is a folder holding ``arterial``/``portal`` (and optionally ``labels``) as NIfTI/NRRD files or
    DICOM series sub-folders (the HCCTwin cohort layout ``cases/<id>/pre/``), or ``paths`` maps phase names to
    files/folders explicitly (e.g. ``{"arterial": a.nii.gz, "portal": p.nrrd}``).
    """
    paths = dict(paths or {})
    if pre is not None:
        pre = Path(pre)
        if not pre.is_dir():
            raise InputError(f"{pre}: not a folder. Give the folder that holds arterial/portal images (or use "
                             f"--arterial/--portal).")
        for name in (*CT_PHASES, *MRI_SEQUENCES):
            found = find_image(pre, name)
            if found is not None and name not in paths:
                paths[name] = found
        if labels_path is None:
            labels_path = find_image(pre, "labels")
        if not paths:
            raise InputError(f"{pre}: no phase images found; expected files named arterial / portal with one of "
                             f"{', '.join(IMAGE_SUFFIXES)} or DICOM series folders of those names.")
    if patient_id is None:
        if pre is not None:
            patient_id = Path(pre).parent.name
        else:  # a DICOM series carries the patient ID; a file's name is the last resort
            dicom_ids = (dicom_patient_id(p) for p in paths.values() if Path(p).is_dir())
            patient_id = next((i for i in dicom_ids if i), None) or _stem(Path(next(iter(paths.values()))))
    seen: dict[str, str] = {}
    for name, p in paths.items():
        key = os.path.realpath(p)
        if key in seen:
            raise InputError(f"{p}: given as both the {seen[key]!r} and the {name!r} phase. Give each phase once: a "
                             f"single-phase study is read as it is (e.g. only --portal).")
        seen[key] = name
    if labels_path is not None and os.path.realpath(labels_path) in seen:
        raise InputError(f"{labels_path}: given as both a phase and the label map; the label map is a separate file "
                         f"(integer labels 0-4).")
    images = {name: read_image(p) for name, p in paths.items()}
    labels = read_image(labels_path, labels=True) if labels_path is not None else None
    source = {name: str(p) for name, p in paths.items()}
    if labels_path is not None:
        source["labels"] = str(labels_path)
    return assemble_case(patient_id, images, labels, clinical, source)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def save_case(case: Case, folder: str | os.PathLike) -> dict[str, Path]:
    """Write a case's phases and labels as NIfTI into ``folder`` (the cohort layout's ``pre/``)."""
    folder = Path(folder)
    written = {name: write_image(arr, case.geometry, folder / f"{name}.nii.gz") for name, arr in case.phases.items()}
    if case.labels is not None:
        written["labels"] = write_image(case.labels, case.geometry, folder / "labels.nii.gz", labels=True)
    return written


#: a cell starting with one of these is run as a formula by spreadsheet programs (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell for a CSV that people open in a spreadsheet: one starting like a formula (``=HYPERLINK(...)``,
    ``+1``, ``@SUM``) is prefixed with ``'`` so that it shows as text and is never evaluated; other values as
    they are."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def refuse_overwriting_inputs(outputs, inputs) -> None:
    """InputError, before any computation, when an output path is one of the input files or lies inside an input
    folder (a DICOM series folder): a command never replaces the data it reads (issue 24)."""
    ins = []
    for p in inputs:
        if p:
            try:
                ins.append(Path(p).expanduser().resolve())
            except (OSError, RuntimeError):
                continue
    for o in outputs:
        if not o:
            continue
        out = Path(o).expanduser().resolve()
        for inp in ins:
            same = out == inp
            if not same and out.exists() and inp.exists():
                try:
                    same = os.path.samefile(out, inp)
                except OSError:
                    same = False
            if same or (inp.is_dir() and inp in out.parents):
                raise InputError(f"the output {o} would overwrite the input {inp}; choose another output path "
                                 f"(--out). Nothing was written.")


def path_inside(root: Path, *parts: str) -> Path:
    """``root/parts`` resolved; InputError when a part is empty, a path, '.'/'..', or the result leaves ``root``.

    Every path built from a cohort table (patient ids, regimens, time points) goes through this, so a CSV cannot
    make HCCTwin read or write outside the cohort folder (also not through a symbolic link).
    """
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part or os.path.isabs(part):
            raise InputError(f"{root}: {part!r} is not a valid case name (no path separators, '..' or absolute "
                             f"paths); fix clinical.csv.")
    root = Path(root).expanduser().resolve()  # a relative or symlinked root must not make every case "outside"
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise InputError(f"{root}: {'/'.join(parts)!r} points outside the cohort folder ({path}); refusing to read "
                         f"it. Cohort data must lie inside the cohort folder (no symbolic links out of "
                         f"it): copy or move the data into the cohort folder.")
    return path


def read_training_state(state_path: Path, config: Mapping) -> dict:
    """A trainer's ``train_state.json``; InputError when it is unreadable or was written with other settings
    (resuming must never mix two configurations)."""
    import json

    try:
        state = json.loads(Path(state_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{state_path}: unreadable training state ({exc}); re-run with resume=False.") from exc
    old = state.get("config", {})
    differing = [k for k in config if json.dumps(old.get(k)) != json.dumps(config[k])]
    if differing:
        raise InputError(f"{Path(state_path).parent}: the checkpoint there was trained with different settings "
                         f"({', '.join(differing)}); use another output folder or resume=False to start over.")
    return state



# ----------------------------------------------------------------------------------------------------------------
# Clinical tables (clinical.csv of the cohort layout)
# ----------------------------------------------------------------------------------------------------------------
_DELIMITERS = (",", ";", "\t", "|")
#: Cells read as missing ("none" is not one of them: it is a valid ascites / encephalopathy category).
_MISSING_CELLS = {"", "na", "n/a", "nan", "null", "-", "?"}


def _decode_table(path: Path, data: bytes, notes: list[str]) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif data.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    else:
        encoding = "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        notes.append(f"{path.name} is not UTF-8; read it as Windows-1252/Latin-1. Save it as UTF-8 to be sure "
                     f"that names and units are read correctly.")
    if "\x00" in text:
        raise InputError(f"{path}: the file holds binary data (NUL bytes), not a text table. Export the table as CSV "
                         f"(UTF-8, comma-separated) with a header row.")
    return text


def _cell_value(text: str):
    """A CSV cell: None when empty/missing, a number when it reads as one, else the stripped string (a decimal
    comma such as "12,5" stays text, so the clinical checks name it instead of guessing)."""
    cell = text.strip().strip('"').strip()
    if cell.lower() in _MISSING_CELLS:
        return None
    try:
        number = float(cell)
    except ValueError:
        return cell
    if not np.isfinite(number):
        return cell
    return int(number) if number.is_integer() and "." not in cell and "e" not in cell.lower() else number


def read_clinical_table(path: str | os.PathLike, *, required: tuple[str, ...] = ("patient_id",)):
    """Read a cohort ``clinical.csv`` robustly; returns ``(DataFrame, notes)``.

    Accepts UTF-8 (with or without BOM), UTF-16 with BOM and (with a note) Windows-1252; comma, semicolon, tab or
    pipe as delimiter (a non-comma one gets a note); quoted numbers; blank lines. Cells that read as numbers become
    numbers, missing markers (empty, NA, n/a, NaN, null, -, ?) become None, ``patient_id`` stays text. Raises
    :class:`~HCCTwinLib.errors.InputError` naming the file, line or column and what to do for: a missing or empty
    file, binary content, no header, a duplicate or empty column name, a row with more cells than the header, a
    missing required column, an empty or duplicate patient id. The file is only read.
    """
    import csv

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: clinical table not found; give the path of the cohort's clinical.csv.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: clinical table unreadable ({exc}); check its permissions.") from exc
    notes: list[str] = []
    text = _decode_table(path, data, notes)
    lines = [ln for ln in text.splitlines() if ln.strip(" \t,;|")]
    if not lines:
        raise InputError(f"{path}: the clinical table is empty; export it again with a header row (patient_id, ...) "
                         f"and one row per patient.")
    header_line = lines[0]
    delimiter = max(_DELIMITERS, key=lambda d: (header_line.count(d), d == ","))
    if header_line.count(delimiter) == 0:
        delimiter = ","
    if delimiter != ",":
        notes.append(f"{path.name}: columns are separated by {delimiter!r}, not commas; read accordingly.")
    try:
        rows = list(csv.reader(lines, delimiter=delimiter, skipinitialspace=True, strict=True))
    except csv.Error as exc:
        raise InputError(f"{path}: not a well-formed CSV table ({exc}); check the quotes and export it again as "
                         f"CSV.") from exc
    header = [str(h).strip().strip('"').strip() for h in rows[0]]
    while header and header[-1] == "":  # trailing delimiter
        header.pop()
    for i, name in enumerate(header):
        if not name:
            raise InputError(f"{path}: column {i + 1} of the header has no name; every column needs a name "
                             f"(e.g. patient_id, bilirubin_umol_l): name it or delete the column.")
    lowered = [h.lower() for h in header]
    dupes = sorted({h for h in header if lowered.count(h.lower()) > 1})
    if dupes:
        raise InputError(f"{path}: column(s) {', '.join(map(repr, dupes))} appear more than once in the header; keep "
                         f"one column per value.")
    for want in required:
        if want not in header:
            near = [h for h in header if h.lower().replace(" ", "_") == want]
            if near:
                header[header.index(near[0])] = want
                notes.append(f"{path.name}: column {near[0]!r} read as {want!r}.")
                continue
            raise InputError(f"{path}: no {want!r} column (columns: {', '.join(header[:12]) or 'none'}); the header "
                             f"row needs {', '.join(required)}: add or rename the column (see the cohort layout in "
                             f"the README).")
    records = []
    for n, row in enumerate(rows[1:], start=2):
        while len(row) > len(header) and row[-1].strip() == "":
            row = row[:-1]
        if len(row) > len(header):
            raise InputError(f"{path}: row {n} has {len(row)} cells but the header has {len(header)} columns; a "
                             f"value probably contains the delimiter {delimiter!r} without quotes. Quote it or "
                             f"remove it.")
        row = list(row) + [""] * (len(header) - len(row))
        records.append({h: (cell.strip().strip('"').strip() or None) if h == "patient_id" else _cell_value(cell)
                        for h, cell in zip(header, row)})
    if "patient_id" in header:
        ids = [r["patient_id"] for r in records]
        empty = [n + 2 for n, i in enumerate(ids) if not i]
        if empty:
            raise InputError(f"{path}: row(s) {', '.join(map(str, empty[:5]))} have no patient_id; give every row "
                             f"a unique patient_id or delete the row.")
        seen: set[str] = set()
        dup = sorted({i for i in ids if i in seen or seen.add(i)})
        if dup:
            raise InputError(f"{path}: patient_id(s) {', '.join(map(repr, dup[:5]))} occur more than once; each "
                             f"patient needs exactly one row: merge or delete the duplicates.")
    table = pd.DataFrame.from_records(records, columns=header)
    for col in header:
        if col == "patient_id":
            continue
        values = [v for v in table[col] if v is not None]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            table[col] = pd.to_numeric(table[col])
        if col.lower().endswith("_event") and values:
            check_event_column(path, col, values)
    return table, notes


def check_event_column(path, column: str, values) -> None:
    """An event column (``os_event``, ``pfs_event``, ``metastasis_event``) must hold 1 (event) / 0 (censored):
    R's survival coding (1 censored, 2 event) or text would otherwise be counted wrongly, silently (issue 24)."""
    numbers = (int, float, np.integer, np.floating)
    bad = sorted({str(v) for v in values
                  if not (isinstance(v, numbers) and not isinstance(v, bool) and (np.isnan(v) or float(v) in (0, 1)))})
    if bad:
        hint = (" It looks like R's coding (1 = censored, 2 = event): recode 2 -> 1 and 1 -> 0."
                if set(bad) <= {"2", "2.0"} else "")
        raise InputError(f"{path}: column {column!r} has value(s) {', '.join(bad[:5])}; an event column holds 1 "
                         f"(event) or 0 (censored).{hint}")


def read_clinical_row(path: str | os.PathLike, patient_id: str) -> tuple[dict, list[str]]:
    """One patient's row of a clinical table as ``(values, notes)`` (missing cells left out); see
    :func:`read_clinical_table`. InputError when the patient is not in the table."""
    table, notes = read_clinical_table(path)
    return clinical_row_values(table, patient_id, path), notes


def cohort_clinical_rows(cohort_dir: str | os.PathLike, *, required: tuple[str, ...] = ("patient_id",)
                         ) -> dict[str, dict]:
    """Every row of ``COHORT/clinical.csv`` as ``{patient_id: values}`` in file order (missing cells left out, numbers
    as numbers; :func:`read_clinical_table`'s checks and messages); ``{}`` when the cohort has no clinical.csv.
    The one reader of a cohort's table for the stages that want rows, not a DataFrame (twin fitting, evaluation)."""
    path = Path(cohort_dir) / "clinical.csv"
    if not path.is_file():
        return {}
    table, _notes = read_clinical_table(path, required=required)
    rows = (_present_values(record.items()) for record in table.to_dict("records"))
    return {str(values["patient_id"]): values for values in rows}


def _present_values(items) -> dict:
    """``{column: value}`` of a table row without its missing cells (None, NaN), numpy numbers as Python ones."""
    values = {}
    for key, value in items:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            continue
        values[key] = value.item() if hasattr(value, "item") else value
    return values


def clinical_row_values(table, patient_id: str, path: str | os.PathLike = "clinical.csv") -> dict:
    """One patient's values from a table read by :func:`read_clinical_table` (missing cells left out); for a cohort,
    read the table once and call this per patient. InputError when the patient is not in the table."""
    pid = str(patient_id).strip()
    rows = table[table["patient_id"] == pid]
    if rows.empty:
        raise InputError(f"{path}: patient {pid!r} not found ({len(table)} rows); check the patient_id.")
    return _present_values(rows.iloc[0].items())
