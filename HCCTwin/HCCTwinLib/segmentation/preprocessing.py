"""Intensity normalisation and the model grid.

The *model grid* is axis-aligned in LPS (identity direction) with the model's spacing and covers the input's voxel
centres; its numpy axes are (k, j, i) = (S, P, L). Every input, whatever its direction (flipped, permuted, oblique)
and spacing, is resampled onto it, so the network always sees the same orientation; the predicted labels go back onto
the input grid with nearest-neighbour interpolation (:func:`from_model_grid`). When the input grid already is a model
grid nothing is resampled; a flipped or permuted grid with the model spacing maps voxel centre onto voxel centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..cases import Geometry
from ..io import resample_to

#: HU window per phase mapped to [0, 1] (covers fat .. contrast-enhanced vessels; bone and air saturate)
DEFAULT_WINDOW_HU = (-200.0, 300.0)
#: value outside the field of view when resampling (air)
OUTSIDE_HU = -1000.0


def normalize_hu(stack: np.ndarray, window_hu: Sequence[float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Clip each phase of a ``(C, K, J, I)`` HU stack to ``window_hu`` and scale to [0, 1] (float32)."""
    lo, hi = float(window_hu[0]), float(window_hu[1])
    out = np.clip(np.asarray(stack, dtype=np.float32), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def model_grid(geometry: Geometry, spacing_mm: Sequence[float]) -> Geometry:
    """Identity-direction grid with ``spacing_mm`` (x, y, z) covering the voxel centres of ``geometry``."""
    nx, ny, nz = geometry.size_xyz
    corners = np.array([[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
    pts = (geometry.ijk_to_lps() @ corners.T).T[:, :3]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    spacing = np.asarray(spacing_mm, dtype=float)
    n_xyz = np.ceil((hi - lo) / spacing - 1e-3).astype(int) + 1
    n_xyz = np.maximum(n_xyz, 1)
    return Geometry(shape=(int(n_xyz[2]), int(n_xyz[1]), int(n_xyz[0])), spacing=tuple(spacing),
                    origin=tuple(lo))


def to_model_grid(stack_hu: np.ndarray, geometry: Geometry, spacing_mm: Sequence[float],
                  window_hu: Sequence[float] = DEFAULT_WINDOW_HU) -> tuple[np.ndarray, Geometry]:
    """``(C, K, J, I)`` HU stack on ``geometry`` -> normalised float32 stack on the model grid, and that grid."""
    target = model_grid(geometry, spacing_mm)
    channels = [resample_to(np.asarray(ch, dtype=np.float32), geometry, target, default_value=OUTSIDE_HU)
                for ch in stack_hu]
    return normalize_hu(np.stack(channels), window_hu), target


def labels_to_model_grid(labels: np.ndarray, geometry: Geometry, target: Geometry) -> np.ndarray:
    return np.asarray(resample_to(np.asarray(labels, dtype=np.uint8), geometry, target, labels=True), np.uint8)


def from_model_grid(labels: np.ndarray, model_geometry: Geometry, geometry: Geometry) -> np.ndarray:
    """Labels on the model grid -> labels on the input grid (nearest neighbour), uint8 with ``geometry.shape``."""
    out = resample_to(np.asarray(labels, dtype=np.uint8), model_geometry, geometry, labels=True)
    return np.ascontiguousarray(out, dtype=np.uint8)
