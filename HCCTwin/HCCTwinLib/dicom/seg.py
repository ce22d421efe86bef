"""HCCTwin label maps as DICOM SEG (highdicom) and any DICOM SEG back onto its CT grid (pydicom).

Writing (:func:`write_seg`): a BINARY segmentation with one segment per label present in the map, in label order;
segment labels are the names of :mod:`HCCTwinLib.labels` ("Liver parenchyma", "Viable tumor", "Necrotic /
non-enhancing tumor", "Portal-vein tumor thrombus") with SNOMED CT property codes (Organ/Liver,
Morphologically abnormal structure/Neoplasm, .../Necrosis, .../Thrombus in the portal vein). The SEG references the
CT series it was drawn on (one frame per source slice; empty frames left out).

Reading (:func:`read_seg`) places every frame by its ImagePositionPatient on a reference CT grid (the series the SEG
references, :func:`read_seg_for_series`), voxel-exact when the frames lie on that grid, else resampled (nearest
neighbour) with a note. BINARY, FRACTIONAL (threshold at half the maximum) and LABELMAP segmentations are read.
Segments are mapped to HCCTwin labels by name (:func:`map_segment_label`):

1. the caller's ``mapping`` ({segment label: HCCTwin label key, name or value; "ignore" or 0 to leave it out});
2. an HCCTwin label key or name (``liver``, ``viable_tumor``, ``Viable tumor``, ...);
3. keywords, first rule that matches (whole words, case-insensitive), see :data:`DEFAULT_SEGMENT_RULES`:
   thrombus / PVTT -> PVTT; necrosis / necrotic / non-enhancing / lipiodol -> necrosis; vessels (portal vein,
   hepatic vein, aorta, artery, vena cava, ...) -> ignored; tumor / tumour / viable / mass / lesion / HCC / neoplasm
   -> viable tumour; liver / hepatic / parenchyma -> liver. TCIA HCC-TACE-Seg's "Liver", "Mass", "Portal vein",
   "Abdominal aorta" thus give liver, viable tumour and two ignored vessels;
4. otherwise the segment's property type (CodeMeaning) through the same keywords; otherwise ignored, with a note.

Overlaps: a liver segment usually includes the tumour, so where liver overlaps another label the other label wins;
two segments mapped to different non-liver labels on the same voxel are an InputError (say which one is meant with
``mapping``). A SEG that is damaged or truncated, references no series at hand, lies on another frame of reference,
repeats a frame, or has frames off the referenced grid raises :class:`~HCCTwinLib.errors.InputError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .. import __version__
from ..cases import Geometry
from ..errors import InputError
from ..labels import LABEL_BY_VALUE, LABELS, LIVER, MAX_LABEL, NECROSIS, PVTT, VIABLE_TUMOR

SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.66.7": "LABELMAP SEG"}
#: Ordered keyword rules: (HCCTwin label value, or None = ignore, whole-word keywords). First match wins.
DEFAULT_SEGMENT_RULES: tuple[tuple[int | None, tuple[str, ...]], ...] = (
    (PVTT, ("pvtt", "thrombus", "thrombi", "thrombosis", "tumor thrombus", "tumour thrombus")),
    (NECROSIS, ("necrosis", "necrotic", "non enhancing", "nonenhancing", "unenhancing", "lipiodol", "dead")),
    (None, ("portal vein", "hepatic vein", "hepatic veins", "vein", "veins", "aorta", "artery", "arteries", "vessel",
            "vessels", "vena cava", "ivc", "vascular", "vasculature", "splenic vein")),
    (VIABLE_TUMOR, ("tumor", "tumour", "tumors", "tumours", "viable", "mass", "masses", "lesion", "lesions", "hcc",
                    "neoplasm", "carcinoma", "nodule", "nodules", "enhancing", "cancer")),
    (LIVER, ("liver", "hepatic", "parenchyma")),
)
_IGNORE_WORDS = {"ignore", "ignored", "none", "background", "skip", "-"}
#: How far (in voxels) a frame position may lie off the reference grid and still count as on it.
GRID_TOLERANCE_VOX = 0.05


def _words(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", str(text).lower()).split()) + " "


def label_value(target, where: str = "mapping") -> int:
    """An HCCTwin label given as value (0-4), key (``viable_tumor``), name (``Viable tumor``) or "ignore" (0)."""
    if target is None:
        return 0
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= int(target) <= MAX_LABEL:
            return int(target)
    else:
        text = _words(target).strip()
        if text in _IGNORE_WORDS:
            return 0
        for info in LABELS:
            if text in (_words(info.key).strip(), _words(info.name).strip()):
                return info.value
        if text.isdigit() and int(text) <= MAX_LABEL:
            return int(text)
    keys = ", ".join(f"{i.key} ({i.value})" for i in LABELS)
    raise InputError(f"{where}: {target!r} is not an HCCTwin label; use one of {keys}, or 'ignore'.")


def normalize_segment_map(mapping: Mapping | None) -> dict[str, int]:
    """``{segment label: target}`` -> ``{normalised segment label: label value}`` (InputError on a bad target)."""
    out = {}
    for name, target in (mapping or {}).items():
        out[_words(name).strip()] = label_value(target, f"segment mapping for {name!r}")
    return out


def map_segment_label(label: str, property_meaning: str | None = None, mapping: Mapping | None = None
                      ) -> tuple[int | None, str]:
    """The HCCTwin label value a SEG segment maps to (None = ignored) and how it was decided (for notes)."""
    norm = normalize_segment_map(mapping)
    key = _words(label).strip()
    if key in norm:
        value = norm[key]
        return (value or None), "given mapping"
    for info in LABELS:
        if key in (_words(info.key).strip(), _words(info.name).strip()):
            return info.value, "HCCTwin label name"
    for text, how in ((label, "name"), (property_meaning, "property type")):
        if not text:
            continue
        words = _words(text)
        for value, keywords in DEFAULT_SEGMENT_RULES:
            hit = next((kw for kw in keywords if f" {kw} " in words), None)
            if hit is not None:
                if value is None:
                    return None, f"{how} keyword {hit!r}: a vessel, not tumour thrombus (ignored)"
                return value, f"{how} keyword {hit!r}"
    return None, "not recognised (ignored; map it with a segment mapping if it is needed)"


# ---------------------------------------------------------------------------------------------------- writing
_CODES = None


def _segment_codes(value: int):
    global _CODES
    if _CODES is None:
        from pydicom.sr.codedict import codes

        abnormal = codes.SCT.MorphologicallyAbnormalStructure
        _CODES = {LIVER: (codes.SCT.Organ, codes.SCT.Liver, None),
                  VIABLE_TUMOR: (abnormal, codes.SCT.Neoplasm, codes.SCT.Liver),
                  NECROSIS: (abnormal, codes.SCT.Necrosis, codes.SCT.Liver),
                  PVTT: (abnormal, codes.SCT.Thrombus, codes.SCT.PortalVein)}
    return _CODES[value]


def write_seg(labels: np.ndarray, source_headers: Sequence[Dataset], path: str | os.PathLike, *,
              series_uid: str | None = None, sop_instance_uid: str | None = None, series_number: int = 100,
              series_description: str = "Segmentation", uid_entropy: Sequence | None = None,
              manufacturer: str = "HCCTwin", content_datetime=None) -> Path:
    """Write an HCCTwin label map (numpy ``[k, j, i]``, values 0..4) as a BINARY DICOM SEG file.

    ``source_headers`` are the CT slices the labels were drawn on, in slice order ``k`` (``DicomSeries.headers``
    from :func:`~.series.write_ct_series`, or datasets read with pydicom); the SEG copies their patient / study and
    references them. One segment per label present. ``path`` must not exist. With ``uid_entropy`` and
    ``content_datetime`` (a datetime for ContentDate/Time, otherwise now) the same call writes the same file.
    """
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    labels = np.asarray(labels)
    path = Path(path)
    if path.exists():
        raise InputError(f"{path}: file exists; nothing is overwritten.")
    if labels.ndim != 3 or labels.shape[0] != len(source_headers):
        raise ValueError(f"label map shape {labels.shape} does not match {len(source_headers)} source slices")
    rows, cols = int(source_headers[0].Rows), int(source_headers[0].Columns)
    if labels.shape[1:] != (rows, cols):
        raise ValueError(f"label map slices {labels.shape[1:]} do not match the source images ({rows}, {cols})")
    bad = np.setdiff1d(np.unique(labels), np.arange(MAX_LABEL + 1))
    if bad.size:
        raise InputError(f"label map has values {bad[:10].tolist()} outside 0..{MAX_LABEL}; remap the labels first.")
    present = [int(v) for v in np.unique(labels) if v != 0]
    if not present:
        raise InputError("the label map is empty (no liver, no tumour); there is nothing to write as a DICOM SEG.")
    lut = np.zeros(MAX_LABEL + 1, dtype=np.uint8)
    descriptions = []
    for number, value in enumerate(present, start=1):
        lut[value] = number
        category, prop, region = _segment_codes(value)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=LABEL_BY_VALUE[value].name, segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            anatomic_regions=[region] if region is not None else None,
            tracking_uid=generate_uid() if uid_entropy is None else generate_uid(
                entropy_srcs=[*map(str, uid_entropy), "segment", str(value)]),
            tracking_id=LABEL_BY_VALUE[value].key))
    if uid_entropy is not None:
        series_uid = series_uid or generate_uid(entropy_srcs=[*map(str, uid_entropy), "seg-series"])
        sop_instance_uid = sop_instance_uid or generate_uid(entropy_srcs=[*map(str, uid_entropy), "seg-sop"])
    seg = hd.seg.Segmentation(
        source_images=list(source_headers), pixel_array=lut[labels.astype(np.intp)],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=series_uid or hd.UID(), series_number=int(series_number),
        sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=1, manufacturer=manufacturer,
        manufacturer_model_name="HCCTwin", software_versions=f"HCCTwin {__version__}", device_serial_number="0",
        series_description=series_description, content_label="HCCTWIN", omit_empty_frames=True,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    if content_datetime is not None:
        day, clock = content_datetime.strftime("%Y%m%d"), content_datetime.strftime("%H%M%S")
        seg.ContentDate = seg.InstanceCreationDate = day
        seg.ContentTime = seg.InstanceCreationTime = clock
        for item in seg.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = day + clock
    if uid_entropy is not None:  # highdicom draws the dimension organisation UID at random
        dim_uid = generate_uid(entropy_srcs=[*map(str, uid_entropy), "dimension-organization"])
        for item in (*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = dim_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class SegLabels:
    """A SEG read onto a grid: the HCCTwin label map, the segments found and what each became, notes."""

    labels: np.ndarray
    geometry: Geometry
    segments: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resampled: bool = False


def load_seg_dataset(seg: str | os.PathLike | Dataset, *, pixels: bool = True) -> Dataset:
    """A SEG file read with pydicom (pixel data decoded when ``pixels``); InputError when it is not a readable SEG."""
    if isinstance(seg, Dataset):
        ds, where = seg, str(getattr(seg, "filename", "<SEG>"))
    else:
        where = str(seg)
        try:
            ds = pydicom.dcmread(seg, stop_before_pixels=not pixels)
        except Exception as exc:
            raise InputError(f"{where}: the DICOM SEG is unreadable, truncated or damaged ({type(exc).__name__}: "
                             f"{str(exc)[:150]}). Copy or export the segmentation again.") from exc
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in SEG_SOP_CLASSES and ds.get("Modality") != "SEG":
        raise InputError(f"{where}: not a DICOM SEG (Modality {ds.get('Modality')!r}, SOP class {sop!r}); give the "
                         f"segmentation object.")
    if "SegmentSequence" not in ds or not len(ds.SegmentSequence):
        raise InputError(f"{where}: the DICOM SEG lists no segments (SegmentSequence); export it again.")
    if pixels:
        try:
            _ = ds.pixel_array
        except Exception as exc:
            raise InputError(f"{where}: the DICOM SEG's pixel data are unreadable or truncated "
                             f"({type(exc).__name__}: {str(exc)[:150]}). Copy or export the segmentation "
                             f"again.") from exc
    return ds


def seg_referenced_series(ds: Dataset) -> list[str]:
    """Series Instance UIDs the SEG references (ReferencedSeriesSequence, also of other studies), in order."""
    out: list[str] = []
    items = list(ds.get("ReferencedSeriesSequence", []))
    for study in ds.get("StudiesContainingOtherReferencedInstancesSequence", []):
        items.extend(study.get("ReferencedSeriesSequence", []))
    for item in items:
        uid = str(item.get("SeriesInstanceUID", ""))
        if uid and uid not in out:
            out.append(uid)
    return out


def seg_source_instances(ds: Dataset) -> set[str]:
    """SOP Instance UIDs of the source images the SEG's frames were derived from."""
    found = set()
    for item in ds.get("ReferencedSeriesSequence", []):
        for inst in item.get("ReferencedInstanceSequence", []):
            found.add(str(inst.get("ReferencedSOPInstanceUID", "")))
    for fg in ds.get("PerFrameFunctionalGroupsSequence", []):
        for der in fg.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                found.add(str(src.get("ReferencedSOPInstanceUID", "")))
    found.discard("")
    return found


def _group(ds: Dataset, index: int, keyword: str):
    """Functional group item ``keyword`` of frame ``index`` (per-frame first, then shared), or None."""
    for seq_name, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(seq_name)
        if seq is not None and len(seq) > i:
            item = seq[i].get(keyword)
            if item is not None and len(item):
                return item[0]
    return None


def _frame_floats(ds, index, group, attr, n, where):
    from .series import finite_floats

    item = _group(ds, index, group)
    arr = finite_floats(None if item is None else item.get(attr), n)
    if arr is None:
        raise InputError(f"{where}: frame {index + 1} has no valid {attr} ({group}); the SEG cannot be placed on the "
                         f"CT. Export the segmentation again (with plane positions per frame).")
    return arr


def _frames(ds: Dataset, where: str):
    """Per frame: (frame index, segment number or None for a label-map SEG, position, orientation, spacing)."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    labelmap = str(ds.get("SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.66.7" or \
        str(ds.get("SegmentationType", "")).upper() == "LABELMAP"
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is None or len(per) != n_frames:
        raise InputError(f"{where}: the SEG has {n_frames} frames but {0 if per is None else len(per)} per-frame "
                         f"descriptions; the file is damaged or incomplete. Export the segmentation again.")
    frames = []
    for f in range(n_frames):
        number = None
        if not labelmap:
            item = _group(ds, f, "SegmentIdentificationSequence")
            if item is None or "ReferencedSegmentNumber" not in item:
                raise InputError(f"{where}: frame {f + 1} names no segment (SegmentIdentificationSequence); the SEG "
                                 f"is damaged. Export it again.")
            number = int(item.ReferencedSegmentNumber)
        frames.append((f, number, _frame_floats(ds, f, "PlanePositionSequence", "ImagePositionPatient", 3, where),
                       _frame_floats(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient", 6, where),
                       _frame_floats(ds, f, "PixelMeasuresSequence", "PixelSpacing", 2, where)))
    return frames, labelmap


def _paint(out: np.ndarray, region, mask: np.ndarray, value: int, names: dict, where: str) -> None:
    """Write ``value`` where ``mask`` into ``out[region]``: the liver never covers another label; two different
    non-liver labels on one voxel are an InputError."""
    current = out[region]
    clash = mask & (current != 0) & (current != value) & (current != LIVER)
    if value != LIVER and clash.any():
        other = int(np.bincount(current[clash]).argmax())
        raise InputError(f"{where}: segments overlap: {int(clash.sum())} voxel(s) belong both to {names[value]} and "
                         f"to {names[other]}; HCCTwin needs one label per voxel. Say which segment to keep with a "
                         f"segment mapping ('ignore' the other) or fix the segmentation.")
    write = mask & ((current == 0) | ((current == LIVER) & (value != LIVER)))
    current[write] = value
    out[region] = current


def read_seg(seg: str | os.PathLike | Dataset, reference: Geometry, *, mapping: Mapping | None = None,
             frame_of_reference_uid: str | None = None) -> SegLabels:
    """Read a DICOM SEG onto the ``reference`` grid (the CT series it references) as an HCCTwin uint8 label map.

    ``mapping`` overrides the segment-name rules (module docstring). ``frame_of_reference_uid`` (the CT's), when
    given, must match the SEG's. InputError for a damaged SEG, frames off the grid, repeated frames, overlaps of
    different tumour labels, or when no segment maps to an HCCTwin label.
    """
    ds = load_seg_dataset(seg)
    where = str(seg) if not isinstance(seg, Dataset) else str(getattr(seg, "filename", "<SEG>"))
    notes: list[str] = []
    seg_for = str(ds.get("FrameOfReferenceUID", "") or "")
    if frame_of_reference_uid and seg_for and seg_for != frame_of_reference_uid:
        raise InputError(f"{where}: the SEG lies in another frame of reference ({seg_for}) than the CT series "
                         f"({frame_of_reference_uid}); its positions cannot be placed on that CT. Check that the "
                         f"segmentation belongs to this study.")
    # segments -> HCCTwin labels
    segments, value_of = [], {}
    for item in ds.SegmentSequence:
        number = int(item.get("SegmentNumber", 0))
        name = str(item.get("SegmentLabel", "") or item.get("SegmentDescription", "") or f"segment {number}")
        prop = item.get("SegmentedPropertyTypeCodeSequence")
        meaning = str(prop[0].get("CodeMeaning", "")) if prop else ""
        value, how = map_segment_label(name, meaning, mapping)
        value_of[number] = value
        segments.append({"number": number, "label": name, "property_type": meaning,
                         "hcctwin_label": LABEL_BY_VALUE[value].key if value else None, "how": how, "voxels": 0})
        if value is None:
            notes.append(f"segment {number} {name!r}: {how}")
    if not any(value_of.values()):
        listing = ", ".join(repr(s["label"]) for s in segments)
        raise InputError(f"{where}: none of the SEG's segments ({listing}) maps to an HCCTwin label (liver, viable "
                         f"tumour, necrosis, PVTT); give a segment mapping, e.g. {{\"{segments[0]['label']}\": "
                         f"\"liver\"}}.")
    frames, labelmap = _frames(ds, where)
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    if seg_type == "FRACTIONAL":
        threshold = 0.5 * float(ds.get("MaximumFractionalValue", 255) or 255)
        notes.append(f"fractional segmentation thresholded at {threshold:g}")
    names = {v: LABEL_BY_VALUE[v].name.lower() for v in LABEL_BY_VALUE}

    def masks(f, number):
        frame = pixels[f]
        if labelmap:
            for num in (int(v) for v in np.unique(frame) if v):
                if value_of.get(num):
                    yield num, frame == num
        elif value_of.get(number):
            yield number, (frame >= threshold) if seg_type == "FRACTIONAL" else frame.astype(bool)

    ref_dir = reference.direction_matrix
    ref_iop = np.concatenate([ref_dir[:, 0], ref_dir[:, 1]])
    ref_ps = np.array([reference.spacing[1], reference.spacing[0]])
    to_ijk = np.linalg.inv(reference.ijk_to_lps()[:3, :3])
    origin = np.asarray(reference.origin)
    placed = []
    on_grid = True
    for f, number, pos, iop, ps in frames:
        ijk = to_ijk @ (pos - origin)
        if not (np.allclose(iop, ref_iop, atol=1e-3) and np.allclose(ps, ref_ps, rtol=1e-3)
                and np.all(np.abs(ijk - np.round(ijk)) < GRID_TOLERANCE_VOX)):
            on_grid = False
            break
        placed.append((f, number, tuple(int(v) for v in np.round(ijk))))
    out = np.zeros(reference.shape, dtype=np.uint8)
    counts: dict[int, int] = {}
    if on_grid:
        seen = set()
        nk, nj, ni = reference.shape
        rows, cols = pixels.shape[1:]
        for f, number, (i0, j0, k) in placed:
            key = (number, k, i0, j0)
            if key in seen:
                raise InputError(f"{where}: segment {number} has two frames at the same position (slice {k + 1} of "
                                 f"the CT); the SEG is malformed. Export it again.")
            seen.add(key)
            for num, mask in masks(f, number):
                if not mask.any():
                    continue
                jj, ii = np.nonzero(mask)
                jj, ii = jj + j0, ii + i0
                if not (0 <= k < nk) or jj.min() < 0 or ii.min() < 0 or jj.max() >= nj or ii.max() >= ni:
                    raise InputError(f"{where}: segment {num} has voxels outside the referenced CT series (frame "
                                     f"{f + 1} at slice {k + 1}, CT has {nk} slices of {nj} x {ni}); the SEG does "
                                     f"not match that series. Check that the segmentation belongs to it.")
                j_lo, i_lo = max(j0, 0), max(i0, 0)
                region = (k, slice(j_lo, min(j0 + rows, nj)), slice(i_lo, min(i0 + cols, ni)))
                sub = mask[j_lo - j0:j_lo - j0 + (region[1].stop - j_lo), i_lo - i0:i_lo - i0 + (region[2].stop - i_lo)]
                _paint(out, region, sub, value_of[num], names, where)
                counts[num] = counts.get(num, 0) + int(mask.sum())
        resampled = False
    else:
        out, counts = _read_off_grid(pixels, frames, masks, value_of, reference, names, where)
        resampled = True
        notes.append("the SEG's frames do not lie on the referenced CT grid; resampled onto it (nearest neighbour)")
    for s in segments:
        s["voxels"] = int(counts.get(s["number"], 0))
    if not out.any():
        raise InputError(f"{where}: the SEG holds no voxels of the mapped segments on the referenced CT; check that "
                         f"it belongs to this series.")
    return SegLabels(labels=out, geometry=reference, segments=segments, notes=notes, resampled=resampled)


def _read_off_grid(pixels, frames, masks, value_of, reference: Geometry, names, where):
    """Frames on a grid of their own (other spacing / orientation): stack each segment on the SEG's grid, then
    resample onto the reference (nearest neighbour)."""
    from ..io import resample_to

    _, _, pos0, iop0, ps0 = frames[0]
    for _, _, _, iop, ps in frames:
        if not (np.allclose(iop, iop0, atol=1e-3) and np.allclose(ps, ps0, rtol=1e-3)):
            raise InputError(f"{where}: the SEG's frames have different orientations or pixel spacings; HCCTwin "
                             f"cannot place them. Export the segmentation on the CT's grid.")
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([p for _, _, p, _, _ in frames])
    along = positions @ normal
    in_plane = positions - np.outer(along, normal)
    if np.abs(in_plane - in_plane[0]).max() > 0.05 * ps0.min():
        raise InputError(f"{where}: the SEG's frames are shifted against each other in-plane; HCCTwin cannot place "
                         f"them. Export the segmentation on the CT's grid.")
    distinct = np.unique(np.round(along, 3))
    gaps = np.diff(distinct)
    step = float(gaps.min()) if gaps.size else float(reference.spacing[2])
    steps = (distinct - distinct[0]) / step
    if gaps.size and np.abs(steps - np.round(steps)).max() > 0.1:
        raise InputError(f"{where}: the SEG's frame positions are not on a regular slice grid; export it again.")
    nk = int(round(steps[-1])) + 1
    rows, cols = pixels.shape[1:]
    start = in_plane[0] + distinct[0] * normal
    geom = Geometry(shape=(nk, rows, cols), spacing=(float(ps0[1]), float(ps0[0]), step), origin=tuple(start),
                    direction=np.column_stack([row_dir, col_dir, normal]).ravel())
    stacks: dict[int, np.ndarray] = {}
    seen = set()
    for f, number, pos, _, _ in frames:
        k = int(round((pos @ normal - distinct[0]) / step))
        if (number, k) in seen:
            raise InputError(f"{where}: segment {number} has two frames at the same position; the SEG is malformed.")
        seen.add((number, k))
        for num, mask in masks(f, number):
            stacks.setdefault(num, np.zeros(geom.shape, dtype=np.uint8))[k] |= mask.astype(np.uint8)
    out = np.zeros(reference.shape, dtype=np.uint8)
    counts = {}
    for num in sorted(stacks, key=lambda n: value_of[n] != LIVER):  # liver first, then the labels it may hold
        on_ref = resample_to(stacks[num], geom, reference, labels=True).astype(bool)
        counts[num] = int(on_ref.sum())
        _paint(out, (slice(None),) * 3, on_ref, value_of[num], names, where)
    return out, counts


def read_seg_for_series(seg_path: str | os.PathLike, series_files: Mapping[str, Sequence[str | os.PathLike]], *,
                        prefer: Sequence[str] = (), mapping: Mapping | None = None) -> tuple[SegLabels, str]:
    """Read a SEG onto the grid of the CT series it references; ``series_files`` maps Series Instance UIDs to the
    files of the series at hand. The first referenced series in ``prefer`` is used, else the first referenced one
    present. Returns ``(SegLabels, series UID used)``; InputError when the SEG references no series present."""
    from .series import slice_geometry

    ds = load_seg_dataset(seg_path)
    referenced = seg_referenced_series(ds)
    present = [uid for uid in referenced if uid in series_files]
    if not present:
        raise InputError(f"{seg_path}: the SEG references series {', '.join(referenced) or '(none listed)'}, none of "
                         f"which is in the DICOM folder; copy the referenced CT series next to it (the SEG's "
                         f"voxels are placed on that series' grid).")
    uid = next((u for u in prefer if u in present), present[0])
    headers = []
    for f in series_files[uid]:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as exc:
            raise InputError(f"{f}: unreadable DICOM file of the series the SEG references ({exc}).") from exc
    _, geometry = slice_geometry(headers, f"series {uid}")
    result = read_seg(ds, geometry, mapping=mapping,
                      frame_of_reference_uid=str(headers[0].get("FrameOfReferenceUID", "") or "") or None)
    return result, uid
