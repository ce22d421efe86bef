"""Clean-up of a predicted label map (on any grid; sizes in mL / mm use the grid's spacing).

1. keep the largest connected component of liver + tumor (labels 1, 2, 3); tumor elsewhere is dropped;
2. fill holes (3D cavities) of that organ with liver;
3. tumor islands (labels 2|3 connected together) smaller than ``min_tumor_ml`` become liver, and so does an island
   whose mean tumour probability (viable + necrosis softmax, ``tumor_prob``) is below ``min_tumor_confidence``: the
   network's false-positive lesions are small and uncertain (mean ~0.6 where true lesions have ~0.9), so one
   threshold, tuned on a labelled cohort (:mod:`.tuning`, kept in the model card), removes most of them;
4. PVTT (4) is kept only where a component is at least ``min_pvtt_ml`` and lies within ``pvtt_max_distance_mm`` of
   the liver (the portal vein runs in and next to the liver; the model has no portal-vein label to test against).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR

MIN_TUMOR_ML = 0.1
MIN_PVTT_ML = 0.05
PVTT_MAX_DISTANCE_MM = 20.0
_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def _spacing_kji(spacing_xyz: Sequence[float]) -> np.ndarray:
    return np.asarray(spacing_xyz, dtype=float)[::-1]


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask`` without connected components of fewer than ``min_voxels`` voxels."""
    lab, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n == 0 or min_voxels <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def component_confidence(mask: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(component index map, mean of prob per component)`` of the 6-connected components of ``mask`` (entry
    ``i - 1`` of the means belongs to component ``i``)."""
    lab, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n == 0:
        return lab, np.zeros(0)
    if np.shape(prob) != mask.shape:
        raise ValueError(f"tumour probability {np.shape(prob)} and labels {mask.shape} are on different grids")
    return lab, np.asarray(ndimage.mean(np.asarray(prob, np.float64), lab, np.arange(1, n + 1)), float)


def confident_components(mask: np.ndarray, prob: np.ndarray, min_mean: float) -> np.ndarray:
    """``mask`` without the components whose mean ``prob`` is below ``min_mean``."""
    lab, means = component_confidence(mask, prob)
    keep = np.concatenate([[False], means >= min_mean])
    return keep[lab]


def postprocess(labels: np.ndarray, spacing_xyz: Sequence[float], *, min_tumor_ml: float = MIN_TUMOR_ML,
                min_pvtt_ml: float = MIN_PVTT_ML, pvtt_max_distance_mm: float = PVTT_MAX_DISTANCE_MM,
                fill_holes: bool = True, tumor_prob: np.ndarray | None = None,
                min_tumor_confidence: float = 0.0) -> np.ndarray:
    """Return a cleaned copy of ``labels`` (uint8, same shape); see the module docstring for the rules."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.uint8)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    organ = np.isin(labels, (LIVER, VIABLE_TUMOR, NECROSIS))
    if not organ.any():
        return out
    organ = largest_component(organ)
    if fill_holes:
        filled = ndimage.binary_fill_holes(organ)
        holes = filled & ~organ
        organ = filled
    else:
        holes = np.zeros_like(organ)
    out[organ] = LIVER
    tumor_pred = np.isin(labels, (VIABLE_TUMOR, NECROSIS)) & organ & ~holes
    min_vox = int(np.ceil(min_tumor_ml / voxel_ml)) if min_tumor_ml > 0 else 0
    tumor = remove_small_components(tumor_pred, min_vox)
    if tumor_prob is not None and min_tumor_confidence > 0 and tumor.any():
        tumor = confident_components(tumor, tumor_prob, min_tumor_confidence)
    out[tumor] = labels[tumor]
    pvtt = labels == PVTT
    if pvtt.any():
        pvtt = remove_small_components(pvtt, int(np.ceil(min_pvtt_ml / voxel_ml)) if min_pvtt_ml > 0 else 0)
        if pvtt.any() and pvtt_max_distance_mm is not None:
            near = _within_distance(organ, pvtt_max_distance_mm, spacing_xyz)
            lab, n = ndimage.label(pvtt, structure=_CONNECTIVITY)
            touching = np.unique(lab[near & pvtt])
            pvtt = np.isin(lab, touching[touching > 0])
        out[pvtt] = PVTT
    return out


def _within_distance(mask: np.ndarray, distance_mm: float, spacing_xyz: Sequence[float]) -> np.ndarray:
    """Voxels within ``distance_mm`` of ``mask`` (computed in the mask's bounding box + margin only)."""
    sp = _spacing_kji(spacing_xyz)
    margin = np.ceil(distance_mm / sp).astype(int) + 1
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist = ndimage.distance_transform_edt(~mask[box], sampling=sp)
    out = np.zeros(mask.shape, bool)
    out[box] = dist <= distance_mm
    return out
