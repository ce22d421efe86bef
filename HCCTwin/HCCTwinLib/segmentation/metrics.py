"""Segmentation quality: Dice per label and lesion-level detection (for training logs and the evaluation script)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..cases import Geometry
from ..labels import LABELS, TUMOR_LABELS

_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def dice(pred_mask: np.ndarray, truth_mask: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (undefined, left out of means)."""
    p, t = np.asarray(pred_mask, bool), np.asarray(truth_mask, bool)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def dice_per_label(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice for each label (keys ``liver``, ``viable_tumor``, ``necrosis``, ``pvtt``) plus ``tumor_total``
    (labels 2|3 together) and ``liver_total`` (labels 1|2|3, the whole organ). NaN where both are empty."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} are on different grids")
    out = {info.key: dice(pred == info.value, truth == info.value) for info in LABELS}
    out["tumor_total"] = dice(np.isin(pred, TUMOR_LABELS), np.isin(truth, TUMOR_LABELS))
    organ = (1, *TUMOR_LABELS)
    out["liver_total"] = dice(np.isin(pred, organ), np.isin(truth, organ))
    return out


def mean_dice(scores: dict[str, float], keys: Sequence[str] = ("liver", "viable_tumor", "necrosis", "pvtt")) -> float:
    vals = [scores[k] for k in keys if k in scores and np.isfinite(scores[k])]
    return float(np.mean(vals)) if vals else float("nan")


def _spacing_xyz(geometry) -> np.ndarray:
    return np.asarray(geometry.spacing if isinstance(geometry, Geometry) else geometry, dtype=float)


def _component_extents(mask: np.ndarray, spacing_kji: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
    """``(component index map, {index: longest axis-aligned extent in mm})`` of the 6-connected components."""
    lab, _ = ndimage.label(mask, structure=_CONNECTIVITY)
    extents = {index: max((s.stop - s.start) * sp for s, sp in zip(sl, spacing_kji))
               for index, sl in enumerate(ndimage.find_objects(lab), start=1) if sl is not None}
    return lab, extents


def _lesions(mask: np.ndarray, spacing_kji: np.ndarray, min_diameter_mm: float):
    """Connected components with their longest axis-aligned extent (mm) >= ``min_diameter_mm``."""
    lab, extents = _component_extents(mask, spacing_kji)
    return lab, [index for index, extent in extents.items() if extent >= min_diameter_mm]


def lesion_counts(pred: np.ndarray, truth: np.ndarray, geometry, min_diameter_mm: float = 10.0) -> dict[str, int]:
    """Lesion-level counts for one patient: ``n_lesions``, ``detected``, ``false_positives``.

    A lesion is a connected component (6-connectivity) of tumor labels 2|3 whose longest axis-aligned extent is at
    least ``min_diameter_mm`` (``geometry`` is a :class:`Geometry` or an (x, y, z) spacing). A true lesion is detected
    when any predicted tumor voxel overlaps it; a predicted component of that size overlapping no true tumor voxel
    is a false positive.
    """
    pred_t, truth_t = np.isin(pred, TUMOR_LABELS), np.isin(truth, TUMOR_LABELS)
    if pred_t.shape != truth_t.shape:
        raise ValueError(f"prediction {pred_t.shape} and truth {truth_t.shape} are on different grids")
    sp = _spacing_xyz(geometry)[::-1]
    t_lab, t_keep = _lesions(truth_t, sp, min_diameter_mm)
    detected = int(sum(bool(pred_t[t_lab == i].any()) for i in t_keep))
    p_lab, p_keep = _lesions(pred_t, sp, min_diameter_mm)
    fps = int(sum(not bool(truth_t[p_lab == i].any()) for i in p_keep))
    return {"n_lesions": len(t_keep), "detected": detected, "false_positives": fps}


#: lower edges (mm) of the lesion-size bins of :func:`detection_by_size` (longest axis-aligned extent)
SIZE_BINS_MM = (10.0, 15.0, 20.0, 30.0)


def detection_by_size(pred: np.ndarray, truth: np.ndarray, geometry, bins_mm: Sequence[float] = SIZE_BINS_MM
                      ) -> dict[str, dict[str, int]]:
    """True lesions and detected ones per size bin for one patient: ``{"10-15": {"n_lesions", "detected"}, ...,
    "30+": ...}`` (bins by the longest axis-aligned extent, the same lesions and overlap rule as
    :func:`lesion_counts`; lesions below the first edge are left out). Sum over patients for a cohort."""
    edges = [float(b) for b in bins_mm]
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])] + [f"{edges[-1]:g}+"]
    out = {name: {"n_lesions": 0, "detected": 0} for name in names}
    pred_t, truth_t = np.isin(pred, TUMOR_LABELS), np.isin(truth, TUMOR_LABELS)
    if pred_t.shape != truth_t.shape:
        raise ValueError(f"prediction {pred_t.shape} and truth {truth_t.shape} are on different grids")
    lab, extents = _component_extents(truth_t, _spacing_xyz(geometry)[::-1])
    for index, extent in extents.items():
        if extent < edges[0]:
            continue
        name = names[int(np.searchsorted(edges, extent, side="right")) - 1]
        out[name]["n_lesions"] += 1
        out[name]["detected"] += int(bool(pred_t[lab == index].any()))
    return out


def lesion_detection(pred: np.ndarray, truth: np.ndarray, geometry, min_diameter_mm: float = 10.0
                     ) -> tuple[float, float]:
    """``(sensitivity, false positives per patient)`` for one patient (see :func:`lesion_counts`).

    Sensitivity is NaN when the patient has no true lesion of that size. For a cohort, sum
    :func:`lesion_counts` over patients, or call :func:`cohort_lesion_detection`.
    """
    c = lesion_counts(pred, truth, geometry, min_diameter_mm)
    sens = c["detected"] / c["n_lesions"] if c["n_lesions"] else float("nan")
    return sens, float(c["false_positives"])


def cohort_lesion_detection(counts: Sequence[dict[str, int]]) -> tuple[float, float]:
    """Pooled ``(sensitivity, false positives per patient)`` from per-patient :func:`lesion_counts`."""
    n = sum(c["n_lesions"] for c in counts)
    sens = sum(c["detected"] for c in counts) / n if n else float("nan")
    fp = sum(c["false_positives"] for c in counts) / len(counts) if counts else float("nan")
    return sens, fp
