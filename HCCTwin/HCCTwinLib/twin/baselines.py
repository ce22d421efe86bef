"""Reference predictors the generator must beat (used by ``benchmarks/generator_evaluation.py``).

- :func:`copy_baseline`: the pre-treatment image and labels as the prediction at every time point.
- :class:`ExponentialBaseline`: per regimen one rate ``r`` (1/week) fitted on a training cohort's observed
  viable-tumour volumes, ``V(t) = V0 exp(r t)`` (least squares of ``log(Vt / V0)`` on ``t`` through the origin).
  The predicted labels erode or dilate the viable tumour (label 2) to the target volume along a signed distance map
  (mm, spacing-aware; growth stays inside the liver); voxels that leave the tumour become liver and take the mean
  liver HU of each phase, voxels that join it take the mean viable-tumour HU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..cases import FollowUp, Geometry
from ..labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR

PHASES = ("arterial", "portal")


def copy_baseline(phases: Mapping[str, np.ndarray], labels: np.ndarray, geometry: Geometry,
                  regimens: Sequence[str], weeks: Sequence[int]) -> dict[str, dict[int, FollowUp]]:
    """The pre-treatment study as the prediction for every regimen and week (std zero)."""
    return {r: {int(w): FollowUp(weeks=int(w), phases={p: phases[p] for p in PHASES}, labels=labels,
                                 std={p: np.zeros(geometry.shape, np.float32) for p in PHASES}, kind="virtual",
                                 regimen=r) for w in weeks} for r in regimens}


def _signed_distance_mm(mask: np.ndarray, spacing_kji) -> np.ndarray:
    """Negative inside ``mask`` (distance to the outside), positive outside (distance to the mask)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_kji)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_kji)
    return np.where(mask, -inside + 0.5 * min(spacing_kji), outside)


def resize_tumour(labels: np.ndarray, geometry: Geometry, target_voxels: int) -> np.ndarray:
    """Labels with viable tumour eroded/dilated (signed distance threshold) to about ``target_voxels`` voxels."""
    labels = np.asarray(labels)
    viable = labels == VIABLE_TUMOR
    n0 = int(viable.sum())
    target_voxels = int(max(0, target_voxels))
    if n0 == 0 or target_voxels == n0:
        return labels.copy()
    spacing_kji = geometry.spacing[::-1]
    sd = _signed_distance_mm(viable, spacing_kji)
    allowed = viable | (labels == LIVER) if target_voxels > n0 else viable
    where = np.flatnonzero(allowed)
    new = np.zeros(labels.size, bool)
    if target_voxels >= where.size:
        new[where] = True
    elif target_voxels > 0:
        order = np.argsort(sd.ravel()[where], kind="stable")  # exactly target_voxels, ties by index
        new[where[order[:target_voxels]]] = True
    new = new.reshape(labels.shape)
    out = labels.copy()
    out[viable & ~new] = LIVER
    out[new & ~viable] = VIABLE_TUMOR
    return out


class ExponentialBaseline:
    """Per-regimen exponential viable-volume model ``V(t) = V0 exp(r t)``."""

    def __init__(self, rates_per_week: Mapping[str, float]):
        self.rates = {str(k): float(v) for k, v in rates_per_week.items()}

    @classmethod
    def fit(cls, records: Iterable[tuple[str, float, float, float]], min_volume_ml: float = 0.05
            ) -> ExponentialBaseline:
        """``records`` = (regimen, weeks, V0, Vt) of observed follow-ups; rate = sum(t log(Vt/V0)) / sum(t^2)."""
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        for regimen, weeks, v0, vt in records:
            if weeks <= 0 or v0 < min_volume_ml:
                continue
            y = math.log(max(vt, min_volume_ml) / v0)
            num[regimen] = num.get(regimen, 0.0) + weeks * y
            den[regimen] = den.get(regimen, 0.0) + weeks * weeks
        return cls({r: num[r] / den[r] for r in num if den[r] > 0})

    @classmethod
    def fit_cohort(cls, cohort_dir: str | os.PathLike, max_cases: int | None = None) -> ExponentialBaseline:
        """Fit on a cohort's observed follow-ups (``clinical.csv`` regimen column, ``followup/wNN/labels``)."""
        from .train import discover_pairs

        records = []
        for pair in discover_pairs(cohort_dir, max_cases=max_cases):
            pre, g = _read_labels(pair.pre_folder)
            fu, _ = _read_labels(pair.followup_folder)
            vox = g.voxel_volume_ml
            records.append((pair.regimen, pair.weeks, float((pre == VIABLE_TUMOR).sum()) * vox,
                            float((fu == VIABLE_TUMOR).sum()) * vox))
        return cls.fit(records)

    def rate(self, regimen: str) -> float:
        return self.rates.get(regimen, 0.0)

    def predict(self, phases: Mapping[str, np.ndarray], labels: np.ndarray, geometry: Geometry,
                regimens: Sequence[str], weeks: Sequence[int]) -> dict[str, dict[int, FollowUp]]:
        labels = np.asarray(labels)
        viable = labels == VIABLE_TUMOR
        liver = labels == LIVER
        fill = {p: (float(np.mean(phases[p][liver])) if liver.any() else 0.0,
                    float(np.mean(phases[p][viable])) if viable.any() else 0.0) for p in PHASES}
        n0 = int(viable.sum())
        out: dict[str, dict[int, FollowUp]] = {}
        for r in regimens:
            out[r] = {}
            for w in weeks:
                target = int(round(n0 * math.exp(self.rate(r) * float(w))))
                new_labels = resize_tumour(labels, geometry, target)
                lost = viable & (new_labels == LIVER)
                gained = (new_labels == VIABLE_TUMOR) & ~viable
                new_phases = {}
                for p in PHASES:
                    arr = np.array(phases[p], dtype=np.float32, copy=True)
                    arr[lost] = fill[p][0]
                    arr[gained] = fill[p][1]
                    new_phases[p] = arr
                out[r][int(w)] = FollowUp(weeks=int(w), phases=new_phases, labels=new_labels,
                                          std={p: np.zeros(geometry.shape, np.float32) for p in PHASES},
                                          kind="virtual", regimen=r)
        return out


def _read_labels(folder) -> tuple[np.ndarray, Geometry]:
    from ..io import find_image, read_image

    return read_image(find_image(Path(folder), "labels"), labels=True)


def tumour_volumes_ml(labels: np.ndarray, geometry: Geometry) -> dict[str, float]:
    vox = geometry.voxel_volume_ml
    return {"viable": float((labels == VIABLE_TUMOR).sum()) * vox,
            "tumour": float(np.isin(labels, (VIABLE_TUMOR, NECROSIS)).sum()) * vox,
            "pvtt": float((labels == PVTT).sum()) * vox}


__all__ = ["ExponentialBaseline", "copy_baseline", "resize_tumour", "tumour_volumes_ml"]
