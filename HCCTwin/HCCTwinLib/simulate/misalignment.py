"""A case moved by a known transform, for measuring registration (tests and ``benchmarks/registration_evaluation.py``).

:func:`simulate_misalignment` moves a case by a known rigid + affine + smooth local deformation onto a new grid and
returns landmark pairs (lesion centroids and points inside the liver), so the target-registration error (TRE, mm) of
any recovered transform can be measured (``Misalignment.tre``). Test data, not a step of the product: it lives with
the simulator, not in ``registration``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..cases import Case, Geometry
from ..registration import check_labels, check_phases, is_ct, sitk_image


@dataclass
class Misalignment:
    """A case moved by a known transform onto a new grid, with landmark pairs for the TRE.

    ``transform`` maps a point of the moved (moving) image to the original (fixed) image's physical space: it is what
    produced the moved images by resampling. ``landmarks_fixed`` (N x 3, LPS mm) are lesion centroids and points
    inside the liver of the original; ``landmarks_moving`` their exact positions in the moved image.
    """

    phases: dict[str, np.ndarray]
    labels: np.ndarray | None
    geometry: Geometry
    transform: sitk.Transform
    landmarks_fixed: np.ndarray
    landmarks_moving: np.ndarray
    landmark_kinds: list[str]
    parameters: dict[str, Any]

    def tre(self, transform: sitk.Transform | None = None) -> np.ndarray:
        """Target-registration error (mm) per landmark of a fixed->moving ``transform`` (None: physical identity)."""
        if transform is None:
            mapped = self.landmarks_fixed
        else:
            mapped = np.array([transform.TransformPoint(tuple(map(float, p))) for p in self.landmarks_fixed])
        return np.linalg.norm(mapped - self.landmarks_moving, axis=1)


def _rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def simulate_misalignment(source, geometry: Geometry | None = None, seed: int = 0, *,
                          labels: np.ndarray | None = None, landmark_labels: np.ndarray | None = None,
                          max_rotation_deg: float = 8.0, max_translation_mm: float = 15.0,
                          deformation_mm: float = 6.0, max_scale: float = 0.04, n_liver_points: int = 20,
                          spacing_jitter: float = 0.05) -> Misalignment:
    """Move a case (a :class:`Case`, or a phases dict with ``geometry`` and optional ``labels``) by a known transform.

    Drawn with ``seed``: a rotation about the liver centre (random axis, angle 0.5-1 x ``max_rotation_deg``), a
    translation (0.5-1 x ``max_translation_mm``), per-axis scaling (1 +- ``max_scale``) and a smooth local deformation
    (three Gaussian bumps of 25-40 mm width centred in the liver, peak 0.6-1 x ``deformation_mm``); the result lies on
    a new grid (spacing jittered by +-``spacing_jitter``, origin shifted by a fraction of a voxel). Landmarks: the
    centroid of every tumour component of ``landmark_labels`` (default the labels) and ``n_liver_points`` random liver
    voxels. The inputs are not modified.
    """
    if isinstance(source, Case):
        phases, geometry, labels = source.phases, source.geometry, source.labels if labels is None else labels
    else:
        phases = source
    phases = check_phases("simulate_misalignment", phases, geometry)
    labels = check_labels("simulate_misalignment", labels, geometry)
    lm_labels = labels if landmark_labels is None else check_labels("landmarks", landmark_labels, geometry)
    rng = np.random.default_rng(seed)
    m = geometry.ijk_to_lps()

    def to_lps(ijk: np.ndarray) -> np.ndarray:
        return (m @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]

    if lm_labels is not None and (lm_labels > 0).any():
        liver_ijk = np.argwhere(lm_labels > 0)[:, ::-1].astype(float)
    else:  # central third of the volume
        shape = np.asarray(geometry.size_xyz)
        liver_ijk = np.argwhere(np.ones(tuple(np.maximum(shape[::-1] // 3, 1)), bool))[:, ::-1] + shape // 3
    centre = to_lps(liver_ijk.mean(axis=0, keepdims=True))[0]

    angle = np.deg2rad(max_rotation_deg) * rng.uniform(0.5, 1.0)
    rot = _rotation_matrix(rng.normal(size=3), angle)
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * max_translation_mm * rng.uniform(0.5, 1.0)
    scale = 1.0 + rng.uniform(-max_scale, max_scale, size=3)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(centre))
    rigid.SetMatrix(tuple(rot.ravel()))
    rigid.SetTranslation(tuple(shift))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(centre))
    affine.SetMatrix(tuple(np.diag(scale).ravel()))
    linear = sitk.CompositeTransform([rigid, affine])  # y -> rigid(affine(y))
    lin_m = rot @ np.diag(scale)
    lin_b = np.asarray(linear.TransformPoint((0.0, 0.0, 0.0)))
    lin_inv = np.linalg.inv(lin_m)

    # new grid for the moved image
    spacing = np.asarray(geometry.spacing) * (1 + rng.uniform(-spacing_jitter, spacing_jitter, size=3))
    size_xyz = np.maximum(np.round(np.asarray(geometry.size_xyz) * np.asarray(geometry.spacing) / spacing), 4)
    origin = np.asarray(geometry.origin) + geometry.direction_matrix @ (rng.uniform(-0.5, 0.5, size=3) * spacing)
    new_geom = Geometry(shape=tuple(int(s) for s in size_xyz[::-1]), spacing=tuple(spacing), origin=tuple(origin),
                        direction=geometry.direction)

    bumps = []
    transforms: list[sitk.Transform] = [rigid, affine]
    if deformation_mm > 0:
        picks = liver_ijk[rng.choice(len(liver_ijk), size=3, replace=len(liver_ijk) < 3)]
        centres_moving = (lin_inv @ (to_lps(picks) - lin_b).T).T
        for c in centres_moving:
            v = rng.normal(size=3)
            v = v / np.linalg.norm(v) * deformation_mm * rng.uniform(0.6, 1.0)
            bumps.append((c, v, rng.uniform(25.0, 40.0)))
        step = np.full(3, 6.0)
        lo, hi = new_geom.physical_extent_lps()
        lo, hi = lo - 20.0, hi + 20.0
        n = np.ceil((hi - lo) / step).astype(int) + 1
        grid = np.stack(np.meshgrid(*[lo[a] + step[a] * np.arange(n[a]) for a in range(3)], indexing="ij"), -1)
        disp = np.zeros_like(grid)
        for c, v, sigma in bumps:
            w = np.exp(-np.sum((grid - c) ** 2, axis=-1) / (2 * sigma ** 2))
            disp += w[..., None] * v
        field_img = sitk.GetImageFromArray(np.ascontiguousarray(disp.transpose(2, 1, 0, 3)), isVector=True)
        field_img.SetOrigin(tuple(lo))
        field_img.SetSpacing(tuple(step))
        transforms.append(sitk.DisplacementFieldTransform(sitk.Cast(field_img, sitk.sitkVectorFloat64)))
    truth = sitk.CompositeTransform(transforms)  # y -> rigid(affine(y + d(y)))

    reference = new_geom.apply_to(sitk.Image(list(new_geom.size_xyz), sitk.sitkUInt8))
    moved = {}
    for name, arr in phases.items():
        default = -1000.0 if is_ct(arr) else float(np.min(arr))
        moved[name] = sitk.GetArrayFromImage(sitk.Resample(sitk_image(arr, geometry), reference, truth, sitk.sitkLinear,
                                                           default, sitk.sitkFloat32))
    moved_labels = None
    if labels is not None:
        moved_labels = sitk.GetArrayFromImage(sitk.Resample(sitk_image(labels, geometry, np.uint8), reference, truth,
                                                            sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    # landmarks: tumour centroids + random liver points, and their exact positions in the moved image
    kinds, pts = [], []
    if lm_labels is not None and (lm_labels >= 2).any():
        cc = sitk.ConnectedComponent(sitk_image((lm_labels >= 2).astype(np.uint8), geometry, np.uint8))
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(cc)
        for lab in stats.GetLabels():
            if stats.GetNumberOfPixels(lab) >= 3:
                pts.append(stats.GetCentroid(lab))
                kinds.append("lesion")
    picks = liver_ijk[rng.choice(len(liver_ijk), size=min(n_liver_points, len(liver_ijk)), replace=False)]
    picks = picks + rng.uniform(-0.5, 0.5, size=picks.shape)
    pts.extend(map(tuple, to_lps(picks)))
    kinds.extend(["liver"] * len(picks))
    fixed_pts = np.asarray(pts, dtype=float)
    moving_pts = (lin_inv @ (fixed_pts - lin_b).T).T
    for _ in range(50):
        mapped = np.array([truth.TransformPoint(tuple(p)) for p in moving_pts])
        resid = fixed_pts - mapped
        moving_pts = moving_pts + (lin_inv @ resid.T).T
        if np.abs(resid).max() < 1e-4:
            break
    params = {"seed": int(seed), "rotation_deg": round(float(np.rad2deg(angle)), 3),
              "translation_mm": [round(float(x), 3) for x in shift], "scale": [round(float(x), 4) for x in scale],
              "deformation_peaks_mm": [round(float(np.linalg.norm(v)), 3) for _, v, _ in bumps],
              "deformation_sigmas_mm": [round(float(s), 2) for _, _, s in bumps],
              "inversion_residual_mm": float(np.abs(resid).max())}
    return Misalignment(phases=moved, labels=moved_labels, geometry=new_geom, transform=truth,
                        landmarks_fixed=fixed_pts, landmarks_moving=moving_pts, landmark_kinds=kinds,
                        parameters=params)


