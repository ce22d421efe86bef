"""Image-fidelity metrics for virtual vs real follow-ups (the generative-model evaluation conventions).

Liver-masked 3D SSIM (Gaussian window, HU window [-100, 300]), PSNR over the same window, HU mean absolute error,
tumour Dice (viable + necrosis together), viable-volume relative error. Used by ``hcctwin evaluate``, ``hcctwin
study`` and ``benchmarks/generator_evaluation.py``; the copy baseline (the pre-treatment image taken as the
prediction) is measured with the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .labels import NECROSIS, VIABLE_TUMOR

SSIM_WINDOW_HU = (-100.0, 300.0)
MIN_VOLUME_ML = 1.0


def ssim3d(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, *, sigma_vox: float = 1.5,
           window: Sequence[float] | None = SSIM_WINDOW_HU, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean 3D SSIM (Wang et al. 2004, Gaussian window) over ``mask``; images clipped to ``window`` (HU) first."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if window is not None:
        a, b = np.clip(a, *window), np.clip(b, *window)
        data_range = float(window[1] - window[0])
    else:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min())) or 1.0
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def g(x):
        return ndimage.gaussian_filter(x, sigma_vox, mode="nearest", truncate=3.5)

    mu_a, mu_b = g(a), g(b)
    var_a = g(a * a) - mu_a ** 2
    var_b = g(b * b) - mu_b ** 2
    cov = g(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask, bool)
    return float(ssim_map[m].mean()) if m.any() else float("nan")


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, *,
         window: Sequence[float] = SSIM_WINDOW_HU) -> float:
    """Peak signal-to-noise ratio in dB over ``mask``, both images clipped to ``window``; peak = window width.
    Infinite for identical images."""
    m = np.ones(np.shape(a), bool) if mask is None else np.asarray(mask, bool)
    if not m.any():
        return float("nan")
    x = np.clip(np.asarray(a, np.float64)[m], *window)
    y = np.clip(np.asarray(b, np.float64)[m], *window)
    mse = float(np.mean((x - y) ** 2))
    peak = float(window[1] - window[0])
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak * peak / mse))


def hu_mae(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute HU difference over ``mask`` (no clipping)."""
    m = np.ones(np.shape(a), bool) if mask is None else np.asarray(mask, bool)
    return float(np.mean(np.abs(np.asarray(a, np.float64)[m] - np.asarray(b, np.float64)[m]))) if m.any() \
        else float("nan")


def label_dice(pred_labels: np.ndarray, true_labels: np.ndarray, values: Sequence[int]) -> float:
    """Dice of the voxels whose label is one of ``values``; 1.0 when both are empty."""
    p = np.isin(pred_labels, values)
    t = np.isin(true_labels, values)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(p, t).sum()) / denom


def tumour_dice(pred_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Dice of tumour = labels 2|3 (viable + necrosis); 1.0 when both are empty."""
    return label_dice(pred_labels, true_labels, (VIABLE_TUMOR, NECROSIS))


def viable_volume_ml(labels: np.ndarray, voxel_volume_ml: float) -> float:
    return float((np.asarray(labels) == VIABLE_TUMOR).sum()) * float(voxel_volume_ml)


def relative_error(pred: float, true: float, floor: float = MIN_VOLUME_ML) -> float:
    """``|pred - true| / max(true, floor)`` (the floor keeps complete responses finite)."""
    return abs(float(pred) - float(true)) / max(float(true), floor)
