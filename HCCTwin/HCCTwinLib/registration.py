"""Registration of a real follow-up scan to the pre-treatment scan (SimpleITK): rigid, affine, then deformable inside
the liver, so that real and virtual follow-ups can be compared voxel by voxel on the pre-treatment grid; and
:func:`align_phases`, the translation of a study's phases onto its arterial phase when they were acquired in
separate breath-holds (run before segmentation).

Conventions
-----------
- Arrays are numpy ``[k, j, i]``; physical points are LPS millimetres (see :mod:`HCCTwinLib.cases`).
- Every transform follows the ITK convention: it maps a point of the **fixed** (pre-treatment) physical space to the
  **moving** (follow-up) physical space, which is what resampling the follow-up onto the fixed grid needs. Written to
  a file (``transform.h5``) it loads in 3D Slicer as the follow-up's "resampling" transform.
- :func:`register_followup` drives the registration with the portal venous phase (the phase the grids come from) and
  applies the same transform to every phase; labels are resampled with nearest neighbour.
- Stages: rigid (``Euler3DTransform`` centred on the liver, body mask, Mattes MI) -> affine (``AffineTransform``,
  liver dilated by 20 mm, Mattes MI) -> optional deformable: a cubic B-spline (control points about 50 mm apart over
  the liver's bounding box) optimised (L-BFGS-B) on the liver dilated by 10 mm, with normalised correlation when both
  scans are CT (Mattes MI otherwise), then turned into a dense displacement field that fades to zero within 10 mm
  outside that region, so the anatomy away from the liver keeps the affine alignment. Metric samples are drawn at
  random positions with a fixed seed. The optimisation runs on a working copy of about 3 mm voxels (block-averaged,
  so a 512 x 512 x 120 CT becomes 128 x 128 x 120) with a 3-level (rigid) / 2-level pyramid; the outputs are
  resampled once, at full resolution (linear; labels nearest neighbour).
- A stage that makes the (fixed-seed) similarity worse is reverted, and so is a B-spline that folds (Jacobian
  determinant <= 0.05 in the liver); ``notes`` say so.
- Determinism: same inputs, seed and number of threads give identical transforms. ITK sums the metric over threads,
  so another thread count changes the result slightly (by about 0.01 mm on the test phantom); pass ``threads`` (or
  set ``HCCTWIN_NUM_THREADS``) to pin it. The global ITK thread setting is left alone.

:func:`HCCTwinLib.simulate.misalignment.simulate_misalignment` (test and benchmark data, not a production step)
moves a case by a known transform and returns landmark pairs, so the target-registration error of any recovered
transform can be measured; :func:`tre_summary` summarises it.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .cases import Case, FollowUp, Geometry, ObservedScan
from .errors import CancelledError, InputError
from .labels import MAX_LABEL
from .progress import ProgressCallback, report

#: Voxel size (mm) the optimisation works at; finer images are block-averaged down to about this.
WORKING_SPACING_MM = 3.0
#: Soft-tissue window (HU) applied to CT images for the similarity metric (air, bone and contrast clipped).
HU_WINDOW = (-250.0, 350.0)
#: Voxels above this (HU) belong to the body (for CT: everything but air).
BODY_THRESHOLD_HU = -500.0
#: B-spline control-point spacing (mm) of the final level (the first level uses twice this).
BSPLINE_SPACING_MM = 50.0
#: Dilation (mm) of the liver mask for the affine and the deformable stage.
AFFINE_MARGIN_MM, DEFORMABLE_MARGIN_MM = 20.0, 10.0
#: Tumours (pre-treatment labels >= 2) dilated by this much are left out of the deformable stage's metric.
TUMOUR_MARGIN_MM = 10.0
#: Mattes mutual information histogram bins and number of metric samples aimed at per pyramid level.
MI_BINS, SAMPLES_PER_LEVEL = 32, 30000
#: At least this fraction of the fixed liver (or body) must map inside the moving image.
MIN_COVERAGE = 0.3
#: Smallest Jacobian determinant accepted for the deformable stage inside the liver.
MIN_JACOBIAN = 0.05
#: Iterations (L-BFGS-B) and metric samples per pyramid level of the deformable stage. Its metric is the normalised
#: correlation when both images are CT (same modality; fast with many B-spline parameters), else Mattes MI with 16
#: bins (Mattes keeps a bins^2 x parameters derivative table, slow for thousands of control points).
BSPLINE_ITERATIONS, BSPLINE_SAMPLES = 30, 5000
DEFAULT_SEED = 20260
STAGES = ("rigid", "affine", "deformable")


# ----------------------------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class RegistrationResult:
    """The moving phases/labels resampled onto the fixed grid, the transforms and the quality figures.

    ``transform`` maps fixed LPS points to moving LPS points (composite: rigid, then affine, then B-spline when the
    deformable stage ran); ``stage_transforms`` holds each stage's own transform (identity when reverted/skipped).
    ``metrics``: per stage the optimised metric's final value (``metric``, ``final_metric``; Mattes MI for rigid and
    affine, normalised correlation for a CT deformable stage; lower is better), iterations (metric evaluations), stop
    condition, and ``mi_eval``: the final Mattes MI, evaluated with the same fixed-seed samples in the liver region
    after every stage (``metrics["mi_eval"]`` lists it for identity, initial and each stage; lower is better);
    ``overlap`` (when both label maps are given): liver and tumour Dice at ``identity`` (physical identity),
    ``initial`` (after the centring) and after each stage, on the working grid, plus ``final`` at full resolution.
    """

    phases: dict[str, np.ndarray]
    labels: np.ndarray | None
    geometry: Geometry
    transform: sitk.Transform
    stage_transforms: dict[str, sitk.Transform]
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    initial_transform: sitk.Transform | None = None

    def transform_after(self, stage: str) -> sitk.Transform:
        """The composite transform up to and including ``stage`` ("initial", "rigid", "affine", "deformable")."""
        if stage == "initial":
            return sitk.CompositeTransform([sitk.Transform(self.initial_transform)])
        names = [s for s in STAGES if s in self.stage_transforms]
        if stage not in names:
            raise ValueError(f"unknown stage {stage!r}; one of initial, {', '.join(names)}")
        return sitk.CompositeTransform([self.stage_transforms[s] for s in names[:names.index(stage) + 1]])

    def followup(self, weeks: int, regimen: str | None = None):
        """A :class:`~HCCTwinLib.cases.FollowUp` (kind "observed") holding the registered images."""
        return FollowUp(weeks=int(weeks), phases=dict(self.phases), labels=self.labels, kind="observed",
                        regimen=regimen)

    @property
    def kept_stages(self) -> list[str]:
        """The stages that ran and were kept (a stage that made the similarity worse or folded is reverted)."""
        return [s for s in STAGES if s in self.stage_transforms and not self.metrics.get(s, {}).get("reverted")]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable metrics, timings and notes (no arrays)."""
        metrics = dict(self.metrics)
        return {"geometry": {"shape_kji": list(self.geometry.shape), "spacing_mm": list(self.geometry.spacing)},
                "stages": [s for s in STAGES if s in self.stage_transforms], "kept_stages": self.kept_stages,
                "metrics": metrics,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
                "wall_time_s": round(self.wall_time_s, 3), "notes": list(self.notes)}


# ----------------------------------------------------------------------------------------------------------------
# input checks and image helpers
# ----------------------------------------------------------------------------------------------------------------

def sitk_image(array: np.ndarray, geometry: Geometry, dtype=np.float32) -> sitk.Image:
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=dtype)))


def check_phases(what: str, phases, geometry: Geometry) -> dict[str, np.ndarray]:
    if not isinstance(geometry, Geometry):
        raise InputError(f"{what}: no geometry given (spacing/origin/direction); pass a Geometry with the phases.")
    if not isinstance(phases, dict) or not phases:
        raise InputError(f"{what}: no image phase given; give at least the portal venous phase.")
    if min(geometry.shape) < 4:
        raise InputError(f"{what}: the image grid {geometry.shape} (k, j, i) is too thin to register (at least 4 "
                         f"voxels per axis); give the whole 3D volume.")
    out = {}
    for name, arr in phases.items():
        arr = np.asarray(arr)
        if tuple(arr.shape) != geometry.shape:
            raise InputError(f"{what}: phase {name!r} has shape {arr.shape}, the geometry says {geometry.shape}; "
                             f"give the phases on their own grid.")
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
            raise InputError(f"{what}: phase {name!r} has NaN, infinite or non-numeric voxels; fill or crop them.")
        if float(arr.max()) == float(arr.min()):
            raise InputError(f"{what}: phase {name!r} is empty (every voxel is {float(arr.min()):g}); check that "
                             f"the right series was loaded.")
        out[name] = arr
    return out


def check_labels(what: str, labels, geometry: Geometry) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if tuple(labels.shape) != geometry.shape:
        raise InputError(f"{what}: the label map has shape {labels.shape}, the images {geometry.shape}; resample it "
                         f"onto the image grid first.")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL or not np.all(labels == np.round(labels))):
        raise InputError(f"{what}: the label map has values outside 0..{MAX_LABEL}; remap the labels first.")
    if not labels.any():
        raise InputError(f"{what}: the label map is empty (no liver, no tumour); give the segmentation of this scan "
                         f"or leave it out.")
    return labels


def _unpack_fixed(fixed) -> tuple[dict, Geometry, np.ndarray | None]:
    if isinstance(fixed, Case):
        return fixed.phases, fixed.geometry, fixed.labels
    if isinstance(fixed, (tuple, list)) and len(fixed) in (2, 3):
        return fixed[0], fixed[1], (fixed[2] if len(fixed) == 3 else None)
    raise InputError("fixed: give the pre-treatment Case, or (phases dict, Geometry[, labels]).")


def _drive_phases(fixed: dict, moving: dict) -> tuple[str, str]:
    if "portal" in fixed and "portal" in moving:
        return "portal", "portal"
    common = [n for n in fixed if n in moving]
    if common:
        return common[0], common[0]
    f = "portal" if "portal" in fixed else next(iter(fixed))
    m = "portal" if "portal" in moving else next(iter(moving))
    return f, m  # different phases/modalities: mutual information copes


def is_ct(array: np.ndarray) -> bool:
    return float(np.min(array)) < -500.0


def _shrink_factors(spacing, target: float) -> list[int]:
    return [max(1, int(np.floor(target / s + 0.5))) for s in spacing]


def _working(array: np.ndarray, geometry: Geometry, target: float) -> tuple[sitk.Image, sitk.Image | None]:
    """(windowed working image, body mask or None) at about ``target`` mm voxels (block average)."""
    img = sitk_image(array, geometry)
    factors = _shrink_factors(geometry.spacing, target)
    if max(factors) > 1:
        img = sitk.BinShrink(img, factors)
    body = None
    if is_ct(array):
        body = sitk.BinaryThreshold(img, BODY_THRESHOLD_HU, 1e9, 1, 0)
        img = sitk.Clamp(img, sitk.sitkFloat32, HU_WINDOW[0], HU_WINDOW[1])
    return img, body


def _mask_on(reference: sitk.Image, mask: np.ndarray, geometry: Geometry) -> sitk.Image:
    src = sitk_image((np.asarray(mask) > 0).astype(np.uint8), geometry, np.uint8)
    return sitk.Resample(src, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _dilate(mask: sitk.Image, mm: float) -> sitk.Image:
    radius = [max(1, int(round(mm / s))) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(mask, radius, sitk.sitkBall)


def _count(mask: sitk.Image | None) -> int:
    return int(sitk.GetArrayViewFromImage(mask).sum()) if mask is not None else 0


def _centroid(mask: sitk.Image) -> tuple[float, float, float]:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return stats.GetCentroid(1)


def _mask_points(mask: sitk.Image, n: int = 2000) -> np.ndarray:
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]  # (i, j, k)
    if len(idx) > n:
        idx = idx[np.linspace(0, len(idx) - 1, n).astype(int)]
    g = Geometry.from_sitk(mask)
    return (g.ijk_to_lps() @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]


def _coverage(transform: sitk.Transform, points: np.ndarray, moving: sitk.Image) -> float:
    """Fraction of fixed points whose image under ``transform`` lies inside the moving image."""
    size = np.asarray(moving.GetSize())
    inside = 0
    for p in points:
        c = np.asarray(moving.TransformPhysicalPointToContinuousIndex(transform.TransformPoint(tuple(p))))
        inside += bool(np.all(c >= -0.5) and np.all(c <= size - 0.5))
    return inside / max(len(points), 1)


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return round(2.0 * float(np.logical_and(a, b).sum()) / total, 4) if total else None


# ----------------------------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------------------------

class _Stage:
    """One ImageRegistrationMethod run with the shared settings (metric, sampling, pyramid, progress, cancel)."""

    def __init__(self, fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image | None, seed: int, threads: int | None,
                 progress, start: float, end: float, label: str):
        self.fixed, self.moving, self.mask, self.seed, self.threads = fixed, moving, mask, seed, threads
        self.progress, self.start, self.end, self.label = progress, start, end, label
        self.cancelled: CancelledError | None = None

    def method(self, shrink: list[int], sigmas: list[float], metric: str = "mattes", samples: int = SAMPLES_PER_LEVEL
               ) -> sitk.ImageRegistrationMethod:
        reg = sitk.ImageRegistrationMethod()
        if self.threads:
            reg.SetNumberOfThreads(int(self.threads))
        if metric == "correlation":
            reg.SetMetricAsCorrelation()
        elif metric == "meansquares":
            reg.SetMetricAsMeanSquares()
        else:
            reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(metric[6:] or MI_BINS))
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        n_total = float(np.prod(self.fixed.GetSize()))
        frac = _count(self.mask) / n_total if self.mask is not None else 1.0
        pct = [float(min(1.0, samples / max(frac * n_total / s ** 3, 1.0))) for s in shrink]
        reg.SetMetricSamplingPercentagePerLevel(pct, self.seed)
        if self.mask is not None:
            reg.SetMetricFixedMask(self.mask)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetShrinkFactorsPerLevel(shrink)
        reg.SetSmoothingSigmasPerLevel(sigmas)
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        self.iterations = 0
        self.levels = len(shrink)
        self.metric = metric

        def on_iteration():
            self.iterations += 1
            if self.cancelled is not None:
                return
            level = reg.GetCurrentLevel()
            frac_done = (level + min(reg.GetOptimizerIteration() / 100.0, 0.95)) / self.levels
            try:
                report(self.progress, self.start + (self.end - self.start) * frac_done,
                       f"Registration: {self.label} (level {level + 1}/{self.levels})")
            except CancelledError as exc:
                self.cancelled = exc
                reg.StopRegistration()

        reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
        return reg

    def run(self, reg: sitk.ImageRegistrationMethod) -> tuple[sitk.Transform, dict]:
        try:
            out = reg.Execute(self.fixed, self.moving)
        except RuntimeError as exc:
            text = str(exc)
            if "outside" in text.lower() or "samples" in text.lower():
                raise InputError(f"Registration ({self.label}): the follow-up and the pre-treatment scan do not "
                                 f"overlap enough (too few metric samples inside both images). Check that the "
                                 f"follow-up covers the liver and belongs to this patient.") from exc
            raise
        if self.cancelled is not None:
            raise self.cancelled
        info = {"metric": self.metric, "final_metric": round(float(reg.GetMetricValue()), 5),
                "iterations": int(self.iterations),
                "stop": reg.GetOptimizerStopConditionDescription()[:200]}
        return out, info


def _evaluate_mi(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, mask: sitk.Image | None,
                 seed: int, threads: int | None) -> float:
    reg = sitk.ImageRegistrationMethod()
    if threads:
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=MI_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    n_total = float(np.prod(fixed.GetSize()))
    frac = _count(mask) / n_total if mask is not None else 1.0
    reg.SetMetricSamplingPercentage(float(min(1.0, 4 * SAMPLES_PER_LEVEL / max(frac * n_total, 1.0))), seed)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    # the transform goes in as the moving-initial transform (ITK refuses a dense field as the optimised transform
    # unless the virtual domain is the field's grid)
    reg.SetMovingInitialTransform(transform)
    reg.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
    try:
        return round(float(reg.MetricEvaluate(fixed, moving)), 5)
    except RuntimeError:  # no sample of the fixed mask maps into the moving image: the metric is undefined there
        return float("nan")


def _threads(threads: int | None) -> int | None:
    if threads is None and os.environ.get("HCCTWIN_NUM_THREADS"):
        threads = int(os.environ["HCCTWIN_NUM_THREADS"])
    return threads


def _itk_failure_as_input_error(func):
    """ITK stops a registration with a RuntimeError when the images do not overlap enough (e.g. a follow-up of
    another patient, or with a wrong origin): one InputError line instead of ITK's trace."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RuntimeError as exc:
            detail = " ".join(ln.strip() for ln in str(exc).splitlines() if "overlap" in ln.lower())[:200]
            raise InputError(f"registration failed: the follow-up and the pre-treatment scan do not overlap enough "
                             f"to be aligned ({detail or str(exc).strip().splitlines()[-1][:200]}). Check that both "
                             f"are this patient's abdominal scans with correct origins.") from None
    return wrapper


@_itk_failure_as_input_error
@dataclass
class _Run:
    """What the steps of :func:`register_followup` share: the working-grid images and masks, settings, and what the
    steps record (metrics, notes, timings, label overlap per stage)."""

    fixed_w: sitk.Image
    moving_w: sitk.Image
    f_body: sitk.Image | None
    m_body: sitk.Image | None
    rigid_mask: sitk.Image | None
    affine_mask: sitk.Image | None
    deform_mask: sitk.Image | None
    region: sitk.Image
    centre: tuple
    seed: int
    threads: int
    progress: ProgressCallback | None
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    overlap: dict = field(default_factory=dict)
    overlap_at: Any = None
    points: Any = None

    def mi(self, tx: sitk.Transform) -> float:
        """Mattes MI of the moved follow-up in the affine (liver) mask: how every stage is judged."""
        return _evaluate_mi(self.fixed_w, self.moving_w, tx, self.affine_mask, self.seed, self.threads)


def register_followup(fixed, moving_phases: dict[str, np.ndarray], moving_geometry: Geometry,
                      moving_labels: np.ndarray | None = None, *, deformable: bool = True,
                      liver_mask: np.ndarray | None = None, seed: int = DEFAULT_SEED, threads: int | None = None,
                      working_spacing_mm: float = WORKING_SPACING_MM, progress: ProgressCallback | None = None
                      ) -> RegistrationResult:
    """Register a follow-up scan (``moving_*``) to the pre-treatment scan ``fixed`` and resample it onto its grid.

    ``fixed`` is the pre-treatment :class:`~HCCTwinLib.cases.Case` or ``(phases, geometry[, labels])``. The liver
    mask (fixed grid) defaults to the fixed labels > 0; without any, the deformable stage is skipped (noted).
    Raises :class:`~HCCTwinLib.errors.InputError` for empty or inconsistent inputs, an empty mask, or images that do
    not overlap; :class:`~HCCTwinLib.errors.CancelledError` when ``progress`` cancels. Inputs are not modified.

    Steps (each its own function): check the inputs, prepare the working grid and masks, the initial alignment,
    rigid, affine, deformable, resample at full resolution.
    """
    t_start = time.perf_counter()
    threads = _threads(threads)
    f_phases, f_geom, f_labels = _unpack_fixed(fixed)
    f_phases = check_phases("pre-treatment scan", f_phases, f_geom)
    f_labels = check_labels("pre-treatment scan", f_labels, f_geom)
    m_phases = check_phases("follow-up scan", moving_phases, moving_geometry)
    m_labels = check_labels("follow-up scan", moving_labels, moving_geometry)
    liver_mask = _liver_mask(liver_mask, f_labels, f_geom)
    f_name, m_name = _drive_phases(f_phases, m_phases)
    report(progress, 0.0, f"Registration: preparing ({f_name} -> {m_name} phase)")
    run = _prepare(f_phases[f_name], f_geom, f_labels, m_phases[m_name], moving_geometry, liver_mask,
                   working_spacing_mm, seed, threads, progress)
    initial, mi_eval = _initial_alignment(run, f_labels, f_geom, m_labels, moving_geometry, f_name, m_name)
    rigid = _rigid_stage(run, initial, mi_eval["initial"])
    affine = _affine_stage(run, rigid)
    stage_tx: dict[str, sitk.Transform] = {"rigid": rigid, "affine": affine}
    final = sitk.CompositeTransform([rigid, affine])
    if deformable and run.deform_mask is None:
        run.notes.append("deformable stage skipped: no liver mask (give the pre-treatment labels or a liver mask)")
    elif deformable:
        final, stage_tx["deformable"] = _deformable_stage(run, rigid, affine, final,
                                                          is_ct(f_phases[f_name]) and is_ct(m_phases[m_name]))
    run.metrics["mi_eval"] = {**mi_eval, **{s: run.metrics[s]["mi_eval"] for s in STAGES if s in run.metrics}}
    out_phases, out_labels = _resample_followup(run, final, f_geom, f_labels, m_phases, m_labels, moving_geometry)
    report(progress, 1.0, "Registration: done")
    return RegistrationResult(phases=out_phases, labels=out_labels, geometry=f_geom, transform=final,
                              stage_transforms=stage_tx, metrics=run.metrics, timings=run.timings,
                              wall_time_s=time.perf_counter() - t_start, notes=run.notes,
                              initial_transform=sitk.Euler3DTransform(initial))


def _liver_mask(liver_mask, f_labels, f_geom: Geometry) -> np.ndarray | None:
    """The liver mask on the pre-treatment grid: the one given (checked) or the labels > 0 (or None)."""
    if liver_mask is not None:
        liver_mask = np.asarray(liver_mask)
        if tuple(liver_mask.shape) != f_geom.shape:
            raise InputError(f"liver mask: shape {liver_mask.shape} differs from the pre-treatment grid "
                             f"{f_geom.shape}; give it on the pre-treatment grid.")
        if not liver_mask.any():
            raise InputError("liver mask: the mask is empty; give the liver segmentation of the pre-treatment scan "
                             "(or leave it out to use the labels).")
        return liver_mask
    return f_labels > 0 if f_labels is not None else None


def _prepare(f_image, f_geom, f_labels, m_image, m_geom, liver_mask, working_spacing_mm, seed, threads,
             progress) -> _Run:
    """Working-grid images, body masks and the masks of each stage (rigid: body; affine: liver + margin;
    deformable: liver + margin without the tumours, which change between the scans)."""
    t0 = time.perf_counter()
    fixed_w, f_body = _working(f_image, f_geom, working_spacing_mm)
    moving_w, m_body = _working(m_image, m_geom, working_spacing_mm)
    liver_w = _mask_on(fixed_w, liver_mask, f_geom) if liver_mask is not None else None
    if liver_w is not None and _count(liver_w) == 0:
        liver_w = _mask_on(fixed_w, sitk.GetArrayFromImage(_dilate(sitk_image(liver_mask.astype(np.uint8), f_geom,
                                                                                np.uint8), 1.0)), f_geom)
    if f_body is not None and _count(f_body) < 0.01 * np.prod(fixed_w.GetSize()):
        f_body = None
    rigid_mask = f_body
    affine_mask = _dilate(liver_w, AFFINE_MARGIN_MM) if liver_w is not None and _count(liver_w) else f_body
    deform_mask = _dilate(liver_w, DEFORMABLE_MARGIN_MM) if liver_w is not None and _count(liver_w) else None
    if deform_mask is not None and f_labels is not None and (f_labels >= 2).any():
        # tumours change between the scans (that change is what is compared): keep them, and a margin around them,
        # out of the deformable metric so the deformation cannot explain the response away
        tumour_w = _dilate(_mask_on(fixed_w, f_labels >= 2, f_geom), TUMOUR_MARGIN_MM)
        kept = sitk.And(deform_mask, sitk.Not(tumour_w))
        if _count(kept) >= 0.3 * _count(deform_mask):
            deform_mask = kept
    if liver_w is not None and _count(liver_w):
        region = liver_w
    elif f_body is not None:
        region = f_body
    else:
        region = sitk.Cast(fixed_w * 0 + 1, sitk.sitkUInt8)
    run = _Run(fixed_w=fixed_w, moving_w=moving_w, f_body=f_body, m_body=m_body, rigid_mask=rigid_mask,
               affine_mask=affine_mask, deform_mask=deform_mask, region=region, centre=_centroid(region), seed=seed,
               threads=threads, progress=progress)
    run.timings["prepare"] = time.perf_counter() - t0
    return run


def _initial_alignment(run: _Run, f_labels, f_geom, m_labels, m_geom, f_name, m_name
                       ) -> tuple[sitk.Euler3DTransform, dict[str, float]]:
    """Physical identity or body centres of mass, whichever matches better (and covers the liver); the label
    overlap measurer when both scans have labels. Returns the initial transform and the MI at identity / initial."""
    t0 = time.perf_counter()
    fixed_w, moving_w = run.fixed_w, run.moving_w
    run.points = _mask_points(run.region)
    candidates = {"identity": (0.0, 0.0, 0.0)}
    if run.f_body is not None and run.m_body is not None and _count(run.m_body):
        candidates["centre_of_mass"] = tuple(np.subtract(_centroid(run.m_body), _centroid(run.f_body)))
    else:
        candidates["centre_of_grid"] = tuple(np.subtract(_grid_centre(moving_w), _grid_centre(fixed_w)))
    scored = {}
    for name, shift in candidates.items():
        tx = sitk.Euler3DTransform()
        tx.SetCenter(run.centre)
        tx.SetTranslation(shift)
        cov = _coverage(tx, run.points, moving_w)
        if cov >= MIN_COVERAGE:
            scored[name] = (_evaluate_mi(fixed_w, moving_w, tx, run.rigid_mask, run.seed, run.threads), cov, tx)
    if not scored:
        raise InputError("Registration: the follow-up does not cover the pre-treatment liver (less than "
                         f"{100 * MIN_COVERAGE:.0f}% of it falls inside the follow-up image, with the scans' own "
                         "coordinates or centred on each other). Check that the follow-up shows the liver and "
                         "belongs to this patient.")
    init_name = min(scored, key=lambda k: (np.nan_to_num(scored[k][0], nan=0.0), k))
    initial = scored[init_name][2]
    run.metrics.update({"drive_phases": [f_name, m_name], "initialisation": init_name,
                        "working_grid": {"fixed_size_xyz": list(fixed_w.GetSize()),
                                         "spacing_mm": [round(s, 3) for s in fixed_w.GetSpacing()]}})
    mi_eval = {"identity": run.mi(sitk.Transform(3, sitk.sitkIdentity)), "initial": run.mi(initial)}
    if f_labels is not None and m_labels is not None:
        f_lab_w = sitk.GetArrayFromImage(sitk.Resample(sitk_image(f_labels, f_geom, np.uint8), fixed_w,
                                                        sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        m_labels_w = sitk_image(m_labels, m_geom, np.uint8)

        def overlap_at(tx: sitk.Transform) -> dict:
            moved = sitk.GetArrayFromImage(sitk.Resample(m_labels_w, fixed_w, tx, sitk.sitkNearestNeighbor, 0,
                                                         sitk.sitkUInt8))
            return {"liver_dice": _dice(f_lab_w > 0, moved > 0),
                    "tumour_dice": _dice(f_lab_w >= 2, moved >= 2)}

        run.overlap_at = overlap_at
        run.overlap["identity"] = overlap_at(sitk.Transform(3, sitk.sitkIdentity))
        run.overlap["initial"] = overlap_at(initial)
    run.timings["initialise"] = time.perf_counter() - t0
    return initial, mi_eval


def _rigid_stage(run: _Run, initial: sitk.Euler3DTransform, mi_initial: float) -> sitk.Euler3DTransform:
    """Rigid on the body mask; reverted to the initial alignment when it does not improve the liver MI."""
    t0 = time.perf_counter()
    stage = _Stage(run.fixed_w, run.moving_w, run.rigid_mask, run.seed, run.threads, run.progress, 0.05, 0.35,
                   "rigid")
    reg = stage.method([4, 2, 1], [2.0, 1.0, 0.0])
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=150,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(sitk.Euler3DTransform(initial), inPlace=False)
    rigid_out, info = stage.run(reg)
    rigid = _last_of(rigid_out, sitk.Euler3DTransform)
    info["mi_eval"] = run.mi(rigid)
    if info["mi_eval"] > mi_initial + 1e-4:
        run.notes.append("rigid stage reverted: it did not improve the similarity")
        rigid = sitk.Euler3DTransform(initial)
        info["mi_eval"], info["reverted"] = mi_initial, True
    run.metrics["rigid"] = info
    if run.overlap_at is not None:
        run.overlap["rigid"] = run.overlap_at(rigid)
    run.timings["rigid"] = time.perf_counter() - t0
    return rigid


def _affine_stage(run: _Run, rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    """Affine on the liver region after the rigid; reverted (identity affine) when it does not improve the MI."""
    t0 = time.perf_counter()
    stage = _Stage(run.fixed_w, run.moving_w, run.affine_mask, run.seed, run.threads, run.progress, 0.35, 0.55,
                   "affine")
    reg = stage.method([2, 1], [1.0, 0.0])
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=100,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    affine0 = sitk.AffineTransform(3)
    affine0.SetCenter(run.centre)
    reg.SetMovingInitialTransform(rigid)
    reg.SetInitialTransform(affine0, inPlace=False)
    affine_out, info = stage.run(reg)
    affine = _last_of(affine_out, sitk.AffineTransform)
    info["mi_eval"] = run.mi(sitk.CompositeTransform([rigid, affine]))
    if info["mi_eval"] > run.metrics["rigid"]["mi_eval"] + 1e-4:
        run.notes.append("affine stage reverted: it did not improve the similarity in the liver region")
        affine = affine0
        info["mi_eval"], info["reverted"] = run.metrics["rigid"]["mi_eval"], True
    run.metrics["affine"] = info
    if run.overlap_at is not None:
        run.overlap["affine"] = run.overlap_at(sitk.CompositeTransform([rigid, affine]))
    run.timings["affine"] = time.perf_counter() - t0
    return affine


def _deformable_stage(run: _Run, rigid, affine, linear, both_ct: bool) -> tuple[sitk.Transform, sitk.Transform]:
    """B-spline on the liver region, then a dense field faded to zero outside it; reverted when it does not improve
    the liver MI or folds. Returns ``(final transform, the deformable stage's transform)``."""
    t0 = time.perf_counter()
    fixed_w, moving_w, deform_mask = run.fixed_w, run.moving_w, run.deform_mask
    metric = "correlation" if both_ct else f"mattes{MI_BINS // 2}"
    stage = _Stage(fixed_w, moving_w, deform_mask, run.seed, run.threads, run.progress, 0.55, 0.85, "deformable")
    reg = stage.method([2, 1], [1.0, 0.0], metric, BSPLINE_SAMPLES)
    domain = _bbox_image(fixed_w, deform_mask, DEFORMABLE_MARGIN_MM)
    extent = np.asarray(domain.GetSize()) * np.asarray(domain.GetSpacing())
    mesh = [max(1, int(round(e / BSPLINE_SPACING_MM))) for e in extent]
    bspline0 = sitk.BSplineTransformInitializer(domain, mesh, 3)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=BSPLINE_ITERATIONS,
                             maximumNumberOfCorrections=5,
                             maximumNumberOfFunctionEvaluations=2 * BSPLINE_ITERATIONS,
                             costFunctionConvergenceFactor=1e7)
    reg.SetMovingInitialTransform(linear)
    reg.SetInitialTransform(bspline0, inPlace=False)
    bspline_out, info = stage.run(reg)
    info["control_points"] = int(bspline0.GetNumberOfParameters() // 3)
    bspline = _last_of(bspline_out, sitk.BSplineTransform)
    # dense field on the working grid, faded to zero within DEFORMABLE_MARGIN_MM outside the liver region
    field_img = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, fixed_w.GetSize(),
                                                  fixed_w.GetOrigin(), fixed_w.GetSpacing(),
                                                  fixed_w.GetDirection())
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(deform_mask, insideIsPositive=False,
                                                                    squaredDistance=False,
                                                                    useImageSpacing=True))
    weight = np.clip(1.0 - distance / DEFORMABLE_MARGIN_MM, 0.0, 1.0)
    disp = sitk.GetArrayFromImage(field_img) * weight[..., None]
    field_img = sitk.GetImageFromArray(disp, isVector=True)
    field_img.CopyInformation(fixed_w)
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_img))
    info["jacobian_min"] = round(float(jac.min()), 4)
    info["max_displacement_mm"] = round(float(np.linalg.norm(disp, axis=-1).max()), 3)
    field_tx = sitk.DisplacementFieldTransform(field_img)
    candidate = sitk.CompositeTransform([rigid, affine, field_tx])
    info["mi_eval"] = run.mi(candidate)
    if info["mi_eval"] > run.metrics["affine"]["mi_eval"] + 2e-3:
        run.notes.append("deformable stage reverted: it did not improve the similarity in the liver")
        info["reverted"] = True
    elif info["jacobian_min"] <= MIN_JACOBIAN:
        run.notes.append(f"deformable stage reverted: the deformation folds (Jacobian {info['jacobian_min']:.2f})")
        info["reverted"] = True
    if info.get("reverted"):
        stage_tx = sitk.Transform(3, sitk.sitkIdentity)
        info["mi_eval"] = run.metrics["affine"]["mi_eval"]
        final = linear
    else:
        stage_tx, final = field_tx, candidate
    run.metrics["deformable"] = info
    if run.overlap_at is not None:
        run.overlap["deformable"] = run.overlap_at(final)
    run.timings["deformable"] = time.perf_counter() - t0
    return final, stage_tx


def _resample_followup(run: _Run, final, f_geom, f_labels, m_phases, m_labels, m_geom):
    """Every phase (linear) and the labels (nearest) of the follow-up on the full pre-treatment grid; refused when
    the aligned follow-up covers too little of the liver."""
    t0 = time.perf_counter()
    report(run.progress, 0.9, "Registration: resampling the follow-up onto the pre-treatment grid")
    reference = f_geom.apply_to(sitk.Image(list(f_geom.size_xyz), sitk.sitkUInt8))
    out_phases = {}
    for name, arr in m_phases.items():
        img = sitk_image(arr, m_geom)
        default = -1000.0 if is_ct(arr) else float(np.min(arr))
        out_phases[name] = sitk.GetArrayFromImage(sitk.Resample(img, reference, final, sitk.sitkLinear,
                                                                default, sitk.sitkFloat32))
    out_labels = None
    if m_labels is not None:
        out_labels = sitk.GetArrayFromImage(sitk.Resample(sitk_image(m_labels, m_geom, np.uint8), reference,
                                                          final, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        if f_labels is not None:
            run.overlap["final"] = {"liver_dice": _dice(f_labels > 0, out_labels > 0),
                                    "tumour_dice": _dice(f_labels >= 2, out_labels >= 2)}
    if run.overlap:
        run.metrics["overlap"] = run.overlap
    coverage = _coverage(final, run.points, run.moving_w)
    run.metrics["coverage"] = round(coverage, 4)
    if coverage < MIN_COVERAGE:
        raise InputError(f"Registration: after alignment only {100 * coverage:.0f}% of the pre-treatment liver lies "
                         f"inside the follow-up image; the scans do not overlap enough. Check that the follow-up "
                         f"covers the liver.")
    run.timings["resample"] = time.perf_counter() - t0
    return out_phases, out_labels


def _bbox_image(image: sitk.Image, mask: sitk.Image, margin_mm: float) -> sitk.Image:
    """The part of ``image`` covering the bounding box of ``mask`` plus ``margin_mm`` (the B-spline's domain)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]
    pad = np.ceil(margin_mm / np.asarray(image.GetSpacing())).astype(int)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, np.asarray(image.GetSize()))
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def _grid_centre(image: sitk.Image) -> tuple[float, float, float]:
    return image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()])


def _last_of(transform: sitk.Transform, kind):
    """The optimised transform out of what ``Execute`` returns (a composite when a moving initial was set)."""
    if transform.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(transform)
        transform = comp.GetNthTransform(comp.GetNumberOfTransforms() - 1)
    return kind(transform)


# ----------------------------------------------------------------------------------------------------------------
# target-registration error
# ----------------------------------------------------------------------------------------------------------------

def tre_summary(distances_mm: np.ndarray) -> dict[str, float]:
    """Mean, median, 95th percentile and maximum of target-registration errors (mm)."""
    d = np.asarray(distances_mm, dtype=float)
    return {"mean": round(float(d.mean()), 3), "median": round(float(np.median(d)), 3),
            "p95": round(float(np.percentile(d, 95)), 3), "max": round(float(d.max()), 3), "n": int(d.size)}


# ----------------------------------------------------------------------------------------------------------------
# command (hcctwin register)
# ----------------------------------------------------------------------------------------------------------------

def run_register_command(fixed_dir, moving_dir, out_dir, deformable: bool = True,
                         progress: ProgressCallback | None = None) -> dict:
    """``hcctwin register``: register the follow-up in ``moving_dir`` to the pre-treatment scan in ``fixed_dir``.

    Both folders hold ``arterial`` / ``portal`` (and optionally ``labels``) as NIfTI/NRRD files or DICOM series
    folders (the cohort layout's ``pre/`` and ``followup/wNN/``). Writes into ``out_dir``: every registered phase and
    the labels (``<phase>.nii.gz``, ``labels.nii.gz``) on the pre-treatment grid, ``transform.h5`` (fixed -> moving,
    ITK convention; loads in 3D Slicer) and ``registration.json`` (metrics, timings). The input folders are only read;
    ``out_dir`` must be neither of them. Returns the summary that ``registration.json`` holds.
    """
    from .io import load_case, write_image

    fixed_dir, moving_dir, out_dir = Path(fixed_dir), Path(moving_dir), Path(out_dir)
    for d in (fixed_dir, moving_dir):
        if out_dir.resolve() == d.resolve():
            raise InputError(f"{out_dir}: the output folder is an input folder; its images would be overwritten. "
                             f"Give another --out folder.")
    fixed = load_case(fixed_dir, patient_id=fixed_dir.resolve().parent.name or "fixed")
    moving = load_case(moving_dir, patient_id="followup")
    result = register_followup(fixed, moving.phases, moving.geometry, moving.labels, deformable=deformable,
                               progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {name: str(write_image(arr, result.geometry, out_dir / f"{name}.nii.gz"))
               for name, arr in result.phases.items()}
    if result.labels is not None:
        written["labels"] = str(write_image(result.labels, result.geometry, out_dir / "labels.nii.gz", labels=True))
    sitk.WriteTransform(result.transform, str(out_dir / "transform.h5"))
    written["transform"] = str(out_dir / "transform.h5")
    summary = {"fixed": str(fixed_dir), "moving": str(moving_dir), "deformable": bool(deformable),
               **result.summary(), "files": written}
    from .jsonutil import jsonable

    (out_dir / "registration.json").write_text(json.dumps(jsonable(summary), indent=2))
    return summary


def register_observed(case: Case, scan: ObservedScan, result=None,
                      progress: ProgressCallback | None = None) -> FollowUp:
    """The real follow-up registered to the pre-treatment scan and resampled onto its grid (SimpleITK: rigid,
    affine, then B-spline inside the liver). When the scan is already on the same grid it is used as is.
    ``result`` (a :class:`~HCCTwinLib.pipeline.TwinResult`, optional) gets the provenance, notes and timing."""
    t0 = time.perf_counter()
    g = case.geometry
    same = (tuple(scan.geometry.shape) == tuple(g.shape) and np.allclose(scan.geometry.spacing, g.spacing)
            and np.allclose(scan.geometry.origin, g.origin) and np.allclose(scan.geometry.direction, g.direction))
    if same:
        follow = FollowUp(weeks=int(scan.weeks), phases=dict(scan.phases), labels=scan.labels, kind="observed",
                          regimen=scan.regimen)
        if result is not None:
            result.provenance["real_followup"] = "on the pre-treatment grid already (not registered)"
        return follow
    report(progress, 0.0, "Registering the real follow-up to the pre-treatment scan")
    reg = register_followup(case, scan.phases, scan.geometry, scan.labels, deformable=scan.deformable,
                            progress=progress)
    follow = reg.followup(scan.weeks, scan.regimen)
    if result is not None:
        summary = reg.summary()
        reverted = [s for s in summary["stages"] if s not in summary["kept_stages"]]
        result.provenance["real_followup"] = (
            f"registered to the pre-treatment scan ({' + '.join(summary['kept_stages']) or 'initial alignment only'}"
            + (f"; {', '.join(reverted)} reverted" if reverted else "")
            + (", inside the liver of the pre-treatment labels)" if case.labels is not None else ", on the whole "
               "body: no pre-treatment liver mask)"))
        result.notes.extend(f"Registration: {n}" for n in reg.notes)
        result.timings["registration"] = time.perf_counter() - t0
    return follow


# ----------------------------------------------------------------------------------------------------------------
# phases of one study
# ----------------------------------------------------------------------------------------------------------------

#: a phase is moved onto the reference phase when the estimated shift is at least this (mm): below it the phases are
#: aligned already (simulated studies, one acquisition) and are left bit for bit as they are
PHASE_MIN_SHIFT_MM = 1.0
#: a larger estimated shift is not applied (another study or a failed optimisation, not a breath-hold difference)
PHASE_MAX_SHIFT_MM = 30.0
#: working voxel size (mm) of the phase alignment
PHASE_WORKING_SPACING_MM = 4.0
#: how the reason of a phase that needed no shift begins
ALIGNED_ALREADY = "aligned already"


@dataclass
class PhaseAlignment:
    """How one phase was (or was not) moved onto the reference phase: ``translation_mm`` (x, y, z in LPS, the ITK
    convention: reference point + translation = the same anatomy in the phase as acquired), the Mattes MI before
    and after (lower is better) and whether the shift was applied, with the reason when not."""

    phase: str
    reference: str
    translation_mm: tuple[float, float, float]
    mi_before: float
    mi_after: float
    applied: bool
    reason: str = ""
    #: "image": the whole image's translation (first pass); "liver": found inside the segmented liver (second pass)
    stage: str = "image"

    @property
    def shift_mm(self) -> float:
        return float(np.linalg.norm(self.translation_mm))

    @property
    def aligned_already(self) -> bool:
        """Not moved because the phases sat together already (nothing to tell the user)."""
        return not self.applied and self.reason.startswith(ALIGNED_ALREADY)

    @property
    def refused(self) -> bool:
        """Not moved although the phases may sit apart (shift beyond a breath-hold, no gain, a failed registration)."""
        return not self.applied and not self.aligned_already

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "reference": self.reference,
                "translation_mm": [round(float(t), 2) for t in self.translation_mm],
                "shift_mm": round(self.shift_mm, 2), "mi_before": round(self.mi_before, 4),
                "mi_after": round(self.mi_after, 4), "applied": self.applied, "reason": self.reason,
                "stage": self.stage}

    def note(self) -> str:
        t = ", ".join(f"{v:+.1f}" for v in self.translation_mm)
        if self.applied:
            why = ("found inside the liver, which moves against the spine between breath-holds"
                   if self.stage == "liver" else "separate breath-holds or patient motion between the phases")
            return (f"Phase alignment: the {self.phase} phase was shifted by {self.shift_mm:.1f} mm (x, y, z {t} mm) "
                    f"onto the {self.reference} phase ({why}).")
        return f"Phase alignment: the {self.phase} phase was not moved ({self.reason})."


def align_phases(phases: dict[str, np.ndarray], geometry: Geometry, *, reference: str | None = None,
                 seed: int = DEFAULT_SEED, threads: int | None = None
                 ) -> tuple[dict[str, np.ndarray], list[PhaseAlignment]]:
    """The phases of one CT study with every phase moved onto ``reference`` (default: arterial when present, else
    the first) by a translation, when they were acquired in separate breath-holds.

    Multiphase CT is acquired in one breath-hold per phase; the liver, and often the whole patient, then sits a few
    millimetres apart between the phases (5 mm cranio-caudally on a public study here), while the segmentation reads
    the phases voxel by voxel as the channels of one image and the twin renders the same lesions on each. Each other
    phase is registered to the reference with a translation (Mattes MI on the soft-tissue window, about 4 mm voxels,
    2-level pyramid, fixed-seed samples) and resampled (linear, nearest-edge extrapolation) when the shift is
    between :data:`PHASE_MIN_SHIFT_MM` and :data:`PHASE_MAX_SHIFT_MM` and the MI improved; otherwise the phase is
    returned as it was (the same array). Returns ``(phases, alignments)``; no alignment for a single phase or a
    non-CT study (MRI sequences differ in contrast beyond what this check is for)."""
    names = list(phases)
    if len(names) < 2 or not all(is_ct(np.asarray(phases[n])) for n in names):
        return dict(phases), []
    ref = reference or ("arterial" if "arterial" in phases else names[0])
    if ref not in phases:
        raise InputError(f"reference phase {ref!r} is not one of the study's phases ({', '.join(names)})")
    threads = _threads(threads)
    fixed = _working(np.asarray(phases[ref]), geometry, PHASE_WORKING_SPACING_MM)[0]
    out = dict(phases)
    done: list[PhaseAlignment] = []
    for name in names:
        if name == ref:
            continue
        moving_full = np.asarray(phases[name])
        moving = _working(moving_full, geometry, PHASE_WORKING_SPACING_MM)[0]
        reg = _translation_method(seed, threads, SAMPLES_PER_LEVEL / max(1, fixed.GetNumberOfPixels()))
        reg.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
        try:
            mi_before = float(reg.MetricEvaluate(fixed, moving))
            transform = reg.Execute(fixed, moving)
        except RuntimeError as exc:  # ITK: too little overlap; the phase stays as acquired, the note says why
            last = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "ITK error"
            done.append(PhaseAlignment(name, ref, (0.0, 0.0, 0.0), float("nan"), float("nan"), False,
                                       f"the registration failed ({last})"))
            continue
        mi_after = float(reg.GetMetricValue())
        translation = tuple(float(v) for v in transform.GetParameters())
        shift = float(np.linalg.norm(translation))
        reason = ""
        if shift < PHASE_MIN_SHIFT_MM:
            reason = f"{ALIGNED_ALREADY}: estimated shift {shift:.1f} mm < {PHASE_MIN_SHIFT_MM:g} mm"
        elif shift > PHASE_MAX_SHIFT_MM:
            reason = (f"estimated shift {shift:.0f} mm > {PHASE_MAX_SHIFT_MM:g} mm: not a breath-hold difference; "
                      f"check that both series belong to the same study")
        elif not mi_after < mi_before:
            reason = "the shift found did not improve the similarity"
        applied = not reason
        if applied:
            img = sitk_image(moving_full, geometry)
            shifted = sitk.Resample(img, img, sitk.TranslationTransform(3, translation), sitk.sitkLinear, 0.0,
                                    sitk.sitkFloat32, True)
            out[name] = sitk.GetArrayFromImage(shifted).astype(np.float32, copy=False)
        done.append(PhaseAlignment(name, ref, translation, mi_before, mi_after, applied, reason))
    return out, done


#: the liver mask of the second pass is grown by this much (mm): the liver's edges and what slides with it
LIVER_PASS_MARGIN_MM = 15.0


def _translation_method(seed: int, threads: int | None, fraction: float) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(MI_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(min(1.0, fraction), seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=4.0, minStep=0.05, numberOfIterations=100,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    if threads:
        reg.SetNumberOfThreads(int(threads))
    return reg


def refine_phase_alignment(as_read: dict[str, np.ndarray], current: dict[str, np.ndarray], geometry: Geometry,
                           liver: np.ndarray, alignments: list[PhaseAlignment], *, seed: int = DEFAULT_SEED,
                           threads: int | None = None) -> tuple[dict[str, np.ndarray], list[PhaseAlignment]]:
    """The second pass of :func:`align_phases`: each phase registered again to the reference inside ``liver`` (a
    mask on ``geometry``, grown by :data:`LIVER_PASS_MARGIN_MM`), starting from the first pass's translation. Between
    breath-holds the liver moves with the diaphragm while the spine stays, so the whole image's translation is a
    compromise. A phase whose liver translation differs from the first pass's by at least
    :data:`PHASE_MIN_SHIFT_MM` (within :data:`PHASE_MAX_SHIFT_MM`, the similarity inside the liver improved) is
    resampled from ``as_read`` with it; the others keep ``current``'s array and their first-pass record. Returns
    ``(phases, alignments)``."""
    liver = np.asarray(liver, bool)
    if not alignments or not liver.any():
        return dict(current), list(alignments)
    threads = _threads(threads)
    ref = alignments[0].reference
    fixed = _working(np.asarray(as_read[ref]), geometry, PHASE_WORKING_SPACING_MM)[0]
    mask = sitk.Resample(sitk_image(liver.astype(np.uint8), geometry, np.uint8), fixed, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    radius = [max(1, int(round(LIVER_PASS_MARGIN_MM / s))) for s in fixed.GetSpacing()]
    mask = sitk.BinaryDilate(mask, radius)
    n_mask = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    out = dict(current)
    done: list[PhaseAlignment] = []
    for a in alignments:
        moving = _working(np.asarray(as_read[a.phase]), geometry, PHASE_WORKING_SPACING_MM)[0]
        start = a.translation_mm if a.applied else (0.0, 0.0, 0.0)
        reg = _translation_method(seed, threads, SAMPLES_PER_LEVEL / max(1, n_mask))
        reg.SetMetricFixedMask(mask)
        reg.SetInitialTransform(sitk.TranslationTransform(3, tuple(start)), inPlace=False)
        try:
            mi_start = float(reg.MetricEvaluate(fixed, moving))
            transform = reg.Execute(fixed, moving)
        except RuntimeError:  # too few samples in the mask, no overlap: the first pass stands
            done.append(a)
            continue
        mi_end = float(reg.GetMetricValue())
        translation = tuple(float(v) for v in transform.GetParameters())
        change = float(np.linalg.norm(np.subtract(translation, start)))
        if (change < PHASE_MIN_SHIFT_MM or float(np.linalg.norm(translation)) > PHASE_MAX_SHIFT_MM
                or not mi_end < mi_start):
            done.append(a)
            continue
        img = sitk_image(np.asarray(as_read[a.phase]), geometry)
        shifted = sitk.Resample(img, img, sitk.TranslationTransform(3, translation), sitk.sitkLinear, 0.0,
                                sitk.sitkFloat32, True)
        out[a.phase] = sitk.GetArrayFromImage(shifted).astype(np.float32, copy=False)
        done.append(PhaseAlignment(a.phase, ref, translation, mi_start, mi_end, True, "", stage="liver"))
    return out, done


__all__ = ["PhaseAlignment", "RegistrationResult", "align_phases", "refine_phase_alignment", "register_observed",
           "register_followup", "tre_summary", "run_register_command", "check_phases", "check_labels", "sitk_image",
           "is_ct"]
