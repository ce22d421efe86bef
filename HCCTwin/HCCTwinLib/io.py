"""Image I/O with SimpleITK: NIfTI, NRRD, MetaImage and DICOM series folders, with validation.

Every reader returns ``(array, Geometry)`` with the array in numpy ``[k, j, i]`` order and the geometry in LPS (see
:mod:`HCCTwinLib.cases`). Every problem with an input raises :class:`~HCCTwinLib.errors.InputError` whose message
names the file, the problem and what to do. Nothing here ever modifies or deletes an input file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

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
            series_uid = max(counts, key=counts.get)
        else:
            series_uid = uids[0]
    elif series_uid not in uids:
        raise InputError(f"{folder}: series {series_uid} not found; the folder has {', '.join(uids)}.")
    return list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))


def read_image(path: str | os.PathLike, *, labels: bool = False, series_uid: str | None = None,
               max_voxels_allowed: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read and validate one 3D image. ``labels=True`` reads an integer label map (values 0..4)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file or folder not found.")
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
        raise InputError(f"{path}: image has {ndim} dimensions; HCCTwin needs a 3D volume.")


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (filling the missing voxels); check the data length ourselves."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                header = fh.read(352)
                n_bytes = len(header) + sum(len(chunk) for chunk in iter(lambda: fh.read(1 << 22), b""))
        else:
            with open(path, "rb") as fh:
                header = fh.read(352)
            n_bytes = path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: the compressed file is unreadable or truncated ({exc}). Copy or export it "
                         f"again.") from exc
    if len(header) < 348:
        raise InputError(f"{path}: file is truncated (no complete NIfTI header). Copy or export it again.")
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    dims = struct.unpack(endian + "8h", header[40:56])
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
    n_voxels = int(np.prod([max(d, 1) for d in dims[1:1 + max(dims[0], 1)]]))
    expected = vox_offset + n_voxels * bitpix // 8
    if n_bytes < expected:
        raise InputError(f"{path}: file is truncated ({n_bytes:,} of {expected:,} bytes): the image is unreadable. "
                         f"Copy or export it again.")


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
        raise InputError(f"{path}: image is empty (size {size}).")
    if max(size) > 1 and sorted(size)[0] == 1 and sorted(size)[1] == 1:
        raise InputError(f"{path}: image is a line of voxels (size {size}), not a 3D volume.")
    if size[2] == 1:
        raise InputError(f"{path}: image has a single slice (size {size}); HCCTwin needs a 3D volume.")
    spacing = image.GetSpacing()
    if not all(np.isfinite(spacing)) or min(spacing) < MIN_SPACING_MM or max(spacing) > MAX_SPACING_MM:
        raise InputError(f"{path}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is outside the plausible "
                         f"range {MIN_SPACING_MM}-{MAX_SPACING_MM} mm; the header is probably wrong (e.g. spacing in "
                         f"cm or m). Fix the spacing in the header.")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-3):
        raise InputError(f"{path}: direction matrix is not orthonormal ({direction.round(3).tolist()}); the header "
                         f"is damaged. Re-export the image.")
    array = sitk.GetArrayFromImage(image)
    if labels:
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.isfinite(array)) or not np.allclose(array, np.round(array)):
                raise InputError(f"{path}: label map has non-integer values; expected integers 0..{MAX_LABEL}.")
        array = array.astype(np.int16)
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
        raise InputError(f"{path}: image is empty: every voxel has the value {float(array.min()):g}.")
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
    writer.SetFileName(str(path))
    writer.SetUseCompression(str(path).endswith((".gz", ".nrrd", ".mha")))
    writer.SetCompressionLevel(compression_level)
    writer.Execute(to_sitk(data, geometry))
    return path


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
        raise InputError(f"{patient_id}: no pre-treatment phase given; need at least the arterial or portal phase.")
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
        phases[name] = np.asarray(arr, dtype=np.float32)
    label_array = None
    if labels is not None:
        arr, geom = labels
        if not geom.same_grid(ref_geom):
            if overlap_fraction(geom, ref_geom) < MIN_PHASE_OVERLAP:
                raise InputError(f"{patient_id}: the label map does not overlap the {reference!r} phase.")
            arr = resample_to(arr, geom, ref_geom, labels=True)
        label_array = np.asarray(arr, dtype=np.uint8)
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
        patient_id = (Path(pre).parent.name if pre is not None else Path(next(iter(paths.values()))).stem)
    images = {name: read_image(p) for name, p in paths.items()}
    labels = read_image(labels_path, labels=True) if labels_path is not None else None
    source = {name: str(p) for name, p in paths.items()}
    if labels_path is not None:
        source["labels"] = str(labels_path)
    return assemble_case(patient_id, images, labels, clinical, source)


def save_case(case: Case, folder: str | os.PathLike) -> dict[str, Path]:
    """Write a case's phases and labels as NIfTI into ``folder`` (the cohort layout's ``pre/``)."""
    folder = Path(folder)
    written = {name: write_image(arr, case.geometry, folder / f"{name}.nii.gz") for name, arr in case.phases.items()}
    if case.labels is not None:
        written["labels"] = write_image(case.labels, case.geometry, folder / "labels.nii.gz", labels=True)
    return written


def path_inside(root: Path, *parts: str) -> Path:
    """``root/parts`` resolved; InputError when a part is empty, a path, '.'/'..', or the result leaves ``root``.

    Every path built from a cohort table (patient ids, regimens, time points) goes through this, so a CSV cannot
    make HCCTwin read or write outside the cohort folder (also not through a symbolic link).
    """
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part or os.path.isabs(part):
            raise InputError(f"{root}: {part!r} is not a valid case name (no path separators, '..' or absolute "
                             f"paths); fix clinical.csv.")
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise InputError(f"{root}: {'/'.join(parts)!r} points outside the cohort folder ({path}); refusing to read "
                         f"it. Cohort data must lie inside the cohort folder (no symbolic links out of it).")
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

