"""A patient's and a cohort's features for the survival engine, the same functions at training and at prediction
time (one place): :func:`baseline_image_features` (segmentation + phases; with ``deep=True`` also the raw encoder
features of :mod:`.deep`), :func:`trajectory_readings` (RECIST / mRECIST reading of a follow-up trajectory with
:func:`HCCTwinLib.response.read_response`), :func:`patient_image_row` (one patient folder of a cohort, follow-ups
registered when they are on their own grid) and :func:`cohort_feature_table` (the table :func:`.engine.fit_engine`
fits on). Split out of :mod:`.engine` (issue 26).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cases import Case, ObservedScan, sub_geometry
from ..errors import InputError
from ..io import find_image, path_inside, read_clinical_table, read_image
from ..labels import foreground_box
from ..parallel import map_ordered
from ..progress import ProgressCallback, report
from ..registration import register_observed
from ..response import read_response
from .deep import deep_raw_features, get_encoder
from .engine import LANDMARK_WEEKS, RADIOMICS_KEYS
from .features import clinical_features, imaging_features, radiomics_features, response_features


def baseline_image_features(labels: np.ndarray, geometry, arterial: np.ndarray | None = None,
                            portal: np.ndarray | None = None, *, deep: bool = False, segmenter=None
                            ) -> dict[str, float]:
    """``img_*`` (segmentation), derived log volumes and ``rad_*`` (arterial radiomics inside the tumour); with
    ``deep`` also the raw ``deepraw_*`` segmentation-encoder features (:func:`.deep.deep_raw_features`, with
    ``segmenter`` or the installed model; none when no model is installed).

    Every feature depends only on the labelled voxels, so they are computed on the box around ``labels > 0`` (same
    numbers, a fraction of the time and memory on a whole-body-sized CT)."""
    deep_inputs = (labels, geometry, arterial, portal)
    for name, phase in (("arterial", arterial), ("portal", portal)):
        if phase is not None and np.shape(phase) != np.shape(labels):
            raise InputError(f"{name} phase has shape {np.shape(phase)}, labels {np.shape(labels)}; put the phases "
                             f"and the labels on one grid first.")
    box = _feature_box(labels)
    if box is not None:
        geometry = sub_geometry(geometry, box)
        labels = np.asarray(labels)[box]
        arterial = None if arterial is None else np.asarray(arterial)[box]
        portal = None if portal is None else np.asarray(portal)[box]
    base = imaging_features(labels, geometry, arterial, portal)
    out = {f"img_{k}": float(v) for k, v in base.items()}
    out["img_log_viable_volume_ml"] = float(np.log1p(base["viable_volume_ml"]))
    out["img_log_tumor_volume_ml"] = float(np.log1p(base["tumor_volume_ml"]))
    out["img_log_pvtt_volume_ml"] = float(np.log1p(base["pvtt_volume_ml"]))
    tumor = np.isin(labels, (2, 3))
    if arterial is not None and int(tumor.sum()) >= 2:
        rad = radiomics_features(arterial, tumor, geometry)
        out.update({f"rad_{k}": float(rad[k]) for k in RADIOMICS_KEYS})
    if deep:
        out.update(deep_raw_features(*deep_inputs, segmenter=segmenter)[0])
    return out


def _feature_box(labels: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Index box around the labelled voxels (one voxel of margin), or None when there is none or it is the whole
    grid (then nothing is gained by cropping)."""
    labels = np.asarray(labels)
    found = foreground_box(labels, (1, 1, 1)) if labels.ndim == 3 else None
    if found is None or (found[0] == (0, 0, 0) and found[1] == labels.shape):
        return None
    return tuple(slice(a, b) for a, b in zip(*found))


def trajectory_readings(baseline_labels: np.ndarray, geometry, followups: Sequence[tuple[int, np.ndarray, Any]],
                        baseline_arterial: np.ndarray | None = None) -> dict[int, dict[str, Any]]:
    """Readings ``{0: baseline, week: {...}}`` of one trajectory (one regimen) for :func:`response_features`:
    viable / tumour volumes from the labels and the mRECIST / RECIST 1.1 reading of
    :func:`HCCTwinLib.response.read_response` (targets, sums of viable diameters, category, new lesions)."""
    voxel_ml = geometry.voxel_volume_ml

    def volumes(lab):
        return {"viable_volume_ml": float((lab == 2).sum() * voxel_ml),
                "tumor_volume_ml": float(np.isin(lab, (2, 3)).sum() * voxel_ml)}

    reading = read_response(baseline_labels, [(w, lab, art) for w, lab, art in followups], geometry,
                            baseline_arterial=baseline_arterial)
    out: dict[int, dict[str, Any]] = {0: {**volumes(baseline_labels), "sum_viable_mm": reading.baseline_sum_viable_mm}}
    by_week = {int(round(w)): lab for w, lab, _ in followups}
    for tp in reading.timepoints:
        w = int(round(tp.weeks))
        out[w] = {**volumes(by_week[w]), "sum_viable_mm": tp.sum_viable_mm, "category_mrecist": tp.category_mrecist,
                  "category_recist": tp.category_recist, "new_lesion": float(bool(tp.new_lesions_mrecist))}
    return out


def _read_folder(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("labels", "arterial", "portal"):
        path = find_image(folder, name)
        if path is not None:
            out[name], out["geometry"] = read_image(path, labels=(name == "labels"))
    return out


def patient_image_row(case_dir: Path, weeks: Sequence[int] = LANDMARK_WEEKS, *, segmenter=None
                      ) -> dict[str, Any] | None:
    """Baseline image features + observed response features of one cohort case folder (None without labels);
    with ``segmenter`` also the raw deep features of the pre-treatment study."""
    pre = _read_folder(case_dir / "pre")
    if "labels" not in pre:
        return None
    g = pre["geometry"]
    row = baseline_image_features(pre["labels"], g, pre.get("arterial"), pre.get("portal"),
                                  deep=segmenter is not None, segmenter=segmenter)
    fus = []
    for w in weeks:
        fu = _read_folder(case_dir / "followup" / f"w{w:02d}")
        if "labels" not in fu:
            continue
        if not fu["geometry"].same_grid(g):
            # a real follow-up on its own grid: rigid + affine registration to the pre-treatment scan (sizes and
            # diameters do not depend on a deformable refinement, which costs ~20 s per scan)

            phases = {k: fu[k] for k in ("arterial", "portal") if k in fu}
            pre_phases = {k: pre[k] for k in ("arterial", "portal") if k in pre}
            if not phases or not pre_phases:
                continue
            case = Case(patient_id=case_dir.name, phases=pre_phases, geometry=g, labels=pre["labels"])
            reg = register_observed(case, ObservedScan(weeks=w, phases=phases, geometry=fu["geometry"],
                                                       labels=fu["labels"], deformable=False))
            fu = {"labels": reg.labels, "arterial": reg.phases.get("arterial")}
        fus.append((w, fu["labels"], fu.get("arterial")))
    if fus:
        row.update(response_features(trajectory_readings(pre["labels"], g, fus, pre.get("arterial")), weeks=weeks))
    return row


def _image_row_task(case_dir: str, patient_id: str, deep: bool) -> dict[str, Any] | None:
    """One patient's image row (a task of :func:`cohort_feature_table`, also on a Dask worker: the encoder is
    loaded there, once per worker process)."""
    segmenter = None
    if deep:
        segmenter, _ = get_encoder()
    folder = Path(case_dir)
    row = patient_image_row(folder, segmenter=segmenter) if folder.is_dir() else None
    if row is not None:
        row["patient_id"] = patient_id
    return row


def cohort_feature_table(cohort_dir: str | os.PathLike, *, images: bool = True, deep: bool | str = "auto",
                         progress: ProgressCallback | None = None, scheduler: str | None = "serial",
                         workers: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The training / evaluation table of a cohort folder: clinical features and scores, outcomes, and (with
    ``images``) image + observed response features read from ``cases/<id>/``; with ``deep`` ("auto": when a
    segmentation model is installed) also the raw segmentation-encoder features (``deepraw_*``, about 0.5 s per
    patient on one CPU core). ``scheduler`` / ``workers``: where the per-patient image rows are computed
    (:mod:`HCCTwinLib.parallel`; the table is the same). Returns ``(table, notes)``."""
    cohort = Path(cohort_dir)
    csv = cohort / "clinical.csv"
    if not csv.is_file():
        raise InputError(f"{csv} not found: a cohort folder needs clinical.csv (see the README's data layout).")

    clinical, notes = read_clinical_table(csv)
    feats, feat_notes = clinical_features(clinical)
    notes = list(notes) + list(feat_notes)
    table = feats.copy()
    for col in ("patient_id", "regimen", "os_months", "os_event", "pfs_months", "pfs_event", "metastasis_months",
                "metastasis_event"):
        if col in clinical.columns:
            table[col] = clinical[col].values
    table.attrs["fill_values"] = feats.attrs.get("fill_values", {})
    if not images:
        return table, notes
    segmenter = None
    if deep:
        segmenter, note = get_encoder()
        if segmenter is None:
            notes.append(note)
            if deep is True:
                raise InputError(f"{note} (deep features were asked for).")

    ids = [str(p) for p in clinical["patient_id"]]
    tasks = [(str(path_inside(cohort, "cases", pid)), pid, segmenter is not None) for pid in ids]
    rows = [r for r in map_ordered(_image_row_task, tasks, scheduler=scheduler, workers=workers, progress=progress,
                                   what="image features") if r is not None]
    if not rows:
        notes.append("no case folder with a pre-treatment label map: imaging features not used.")
        return table, notes
    if len(rows) < len(ids):
        notes.append(f"{len(ids) - len(rows)} of {len(ids)} patient(s) have no pre-treatment label map: their "
                     f"imaging features are imputed with the cohort median.")
    img = pd.DataFrame(rows)
    merged = table.merge(img, on="patient_id", how="left")
    merged.index = table.index
    merged.attrs = table.attrs
    return merged, notes


def cohort_deep_table(cohort_dir: str | os.PathLike, *, segmenter=None, progress: ProgressCallback | None = None
                      ) -> tuple[pd.DataFrame, list[str]]:
    """Raw deep (segmentation-encoder) features of every pre-treatment study of a cohort folder: ``patient_id`` +
    ``deepraw_*`` (:func:`HCCTwinLib.survival.deep.deep_raw_features`). Without an installed segmentation model the
    table has only ``patient_id`` and the notes say why. Returns ``(table, notes)``."""
    cohort = Path(cohort_dir)
    clinical, _ = read_clinical_table(cohort / "clinical.csv")
    ids = [str(p) for p in clinical["patient_id"]]
    notes: list[str] = []
    if segmenter is None:
        segmenter, note = get_encoder()
        if segmenter is None:
            return pd.DataFrame({"patient_id": ids}), [note]
    rows = []
    missing = 0
    for n, pid in enumerate(ids):
        case_dir = path_inside(cohort, "cases", pid)
        row = _deep_row(case_dir / "pre", segmenter) if case_dir.is_dir() else None
        if row is None:
            missing += 1
            row = {}
        row["patient_id"] = pid
        rows.append(row)
        report(progress, (n + 1) / len(ids), f"deep features {n + 1}/{len(ids)}")
    if missing:
        notes.append(f"deep features: {missing} of {len(ids)} patient(s) have no pre-treatment label map and both "
                     f"phases: imputed.")
    return pd.DataFrame(rows), notes


def _deep_row(pre_dir: Path, segmenter) -> dict[str, float] | None:
    pre = _read_folder(pre_dir)
    if "labels" not in pre:
        return None
    feats, _ = deep_raw_features(pre["labels"], pre["geometry"], pre.get("arterial"), pre.get("portal"),
                                 segmenter=segmenter)
    return feats or None
