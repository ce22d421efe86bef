"""Tumour response reading: RECIST 1.1 and mRECIST from label maps (+ optional arterial phase).

Sources: Eisenhauer EA et al., "New response evaluation criteria in solid tumours: revised RECIST guideline
(version 1.1)", Eur J Cancer 2009;45:228-247. Lencioni R, Llovet JM, "Modified RECIST (mRECIST) assessment for
hepatocellular carcinoma", Semin Liver Dis 2010;30:52-60.

Inputs are numpy label maps indexed ``[k, j, i]`` with :mod:`HCCTwinLib.labels` values (0 background, 1 liver,
2 viable tumour, 3 necrotic / non-enhancing / lipiodol-laden tumour, 4 PVTT) on a :class:`~HCCTwinLib.cases.Geometry`
(spacing (x, y, z) mm, LPS, direction matrix). Follow-ups must already be on the baseline grid (registered /
resampled): lesions are matched across time points by voxel overlap and by LPS centroid distance.

Rules, made explicit where the criteria leave room (all thresholds live in :class:`ResponseConfig`):

* **Lesions** = 26-connected components of tumour (labels 2 and 3). Components whose longest diameter is below
  ``noise_floor_mm`` (default 3 mm) are treated as segmentation noise and ignored everywhere. PVTT (label 4) is a
  non-measurable, non-target lesion: only its volume is tracked.
* **Viable tumour** (mRECIST) = label 2. With an arterial phase, a label-2 voxel is viable only if its arterial value
  is ``>= liver_reference + enhancement_margin_hu`` (default 20 HU), where ``liver_reference`` is the mean arterial
  value of liver parenchyma (label 1) in a box-shaped shell of ``shell_mm`` (default 10 mm, Chebyshev distance in mm)
  around the lesion; with fewer than ``min_shell_voxels`` such voxels the mean of all liver is used, and with no liver
  at all label 2 is trusted. Label 3 is never viable (lipiodol is hyperdense but not enhancing tumour). NaN = not
  enhancing. Viable diameters below ``noise_floor_mm`` count as 0.
* **Longest diameter** = maximum over axial slices (array index k) of the maximum Feret diameter of the lesion's
  cross-section, in physical mm (spacing and direction matrix applied; exact, from the convex hull). Voxels are
  measured as areas: the cross-section's boundary points are the midpoints of the pixel edges (one pixel = its own
  size), so a digitised disc of diameter D measures within one pixel of D. Ties -> lowest k. The short axis is the
  width of the same cross-section perpendicular to the longest diameter. For mRECIST, the longest *viable* diameter
  is the largest Feret diameter of any 8-connected viable piece of a cross-section (so separate viable nodules are not
  measured across the necrosis between them; a viable ring is still measured across - a known simplification).
* **Measurable**: RECIST longest diameter >= 10 mm; mRECIST longest viable diameter >= 10 mm (enhancing).
* **Targets** at baseline: measurable lesions, largest first (ties: more voxels, then lower id), at most
  ``max_targets_per_organ`` (2) per organ and ``max_targets_total`` (5). All lesions here are in the liver, so for
  liver-only disease this means **2 targets** (RECIST 1.1 followed literally); the rest are non-targets. RECIST and
  mRECIST select their own targets (mRECIST ranks by viable diameter).
* **Matching**: each follow-up component is assigned to one baseline lesion: the one it overlaps most (ties: lower
  id); without overlap, the nearest baseline lesion whose centroid lies within ``max(10 mm, 0.5 x its baseline
  longest diameter)``. A target's follow-up diameter is the sum over its assigned components (a split lesion is the
  sum of its fragments; merged lesions count once, for the lesion overlapped most). A vanished target measures 0.
* **New lesion** = an unassigned follow-up component with longest diameter >= ``new_lesion_min_mm`` (10 mm);
  mRECIST: longest *viable* diameter >= 10 mm (typical arterial enhancement). Smaller unassigned components are
  equivocal: not PD, but they prevent CR.
* **Target response**: CR all target diameters 0 (mRECIST: no viable tumour in any target); PD sum >= nadir x 1.2 and
  an absolute increase >= 5 mm (RECIST; mRECIST has no absolute rule by default), with nadir = smallest sum so far
  including baseline; PR sum <= baseline x 0.7; SD otherwise. PD is checked before PR. Comparisons have a 1e-9
  relative tolerance so -30.0 % exactly is PR.
* **Non-target response**: PD if PVTT appears (or reappears) or grows by >= ``pvtt_growth_fraction`` (0.73, i.e.
  +20 % in diameter for a sphere) and >= ``pvtt_min_growth_ml`` over its nadir volume, or if the non-target tumour
  volume (mRECIST: viable volume) grows by >= ``nontarget_growth_fraction`` and >= ``nontarget_min_growth_ml`` over
  its nadir; CR if no non-target disease is left (no PVTT, no residual non-target or equivocal tumour - mRECIST: none
  of it viable); otherwise non-CR/non-PD.
* **Overall** (RECIST 1.1 table 4): new lesion or target/non-target PD -> PD; target CR + non-target CR -> CR; target
  CR + non-target non-CR/non-PD -> PR; PR -> PR; SD -> SD. Without measurable disease at baseline, the non-target
  rules alone decide, and non-CR/non-PD maps to **SD** so every time point gets one of CR/PR/SD/PD (see
  ``ResponseReading.measurable_disease`` to filter such readings). No disease at baseline and none later is CR.
* **Best overall response** = best category over the time points, **without confirmation** (neither the 4-week
  confirmation of CR/PR nor a minimum SD duration is required). Objective response = best overall CR or PR.

Deterministic: no randomness, stable orderings, ties broken by index. Performance: only the tumour bounding box is
labelled and Feret diameters are computed on hull points of the few slices whose upper bound (from exact widths in
16 directions) can beat the best so far, so a 512x512x120 label map reads in about 0.2 s.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .cases import Geometry
from .errors import InputError
from .jsonutil import jsonable
from .labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR

__all__ = [
    "CATEGORIES", "CRITERIA", "ResponseConfig", "Lesion", "TimePointReading", "ResponseReading",
    "extract_lesions", "select_targets", "read_response", "analyse_image", "ImageLesions", "read_analysed",
    "target_response", "overall_response",
    "category_ordinal", "weighted_kappa", "feret_diameter_2d",
]

#: Response categories, best first (their index is :func:`category_ordinal`).
CATEGORIES = ("CR", "PR", "SD", "PD")
CRITERIA = ("recist", "mrecist")
_EPS = 1e-9
_STRUCT_3D = np.ones((3, 3, 3), dtype=bool)          # 26-connectivity
_STRUCT_2D = np.zeros((3, 3, 3), dtype=bool)         # 8-connectivity within an axial slice only
_STRUCT_2D[1] = True


@dataclass(frozen=True)
class ResponseConfig:
    """Every threshold of the reading (defaults follow RECIST 1.1 / mRECIST; see the module docstring)."""

    measurable_min_mm: float = 10.0
    new_lesion_min_mm: float = 10.0
    noise_floor_mm: float = 3.0
    max_targets_total: int = 5
    max_targets_per_organ: int = 2
    pr_change: float = -0.30
    pd_change: float = 0.20
    pd_min_increase_mm_recist: float = 5.0
    pd_min_increase_mm_mrecist: float = 0.0
    match_min_distance_mm: float = 10.0
    match_diameter_fraction: float = 0.5
    enhancement_margin_hu: float = 20.0
    shell_mm: float = 10.0
    min_shell_voxels: int = 20
    pvtt_min_volume_ml: float = 0.05
    pvtt_growth_fraction: float = 0.73
    pvtt_min_growth_ml: float = 0.5
    nontarget_growth_fraction: float = 0.73
    nontarget_min_growth_ml: float = 1.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"ResponseConfig.{name} must be a finite number, got {value!r}")
        if self.max_targets_total < 1 or self.max_targets_per_organ < 1:
            raise InputError("ResponseConfig: max_targets_total and max_targets_per_organ must be >= 1")
        if not -1.0 < self.pr_change < 0.0 or self.pd_change <= 0.0:
            raise InputError("ResponseConfig: pr_change must be in (-1, 0) and pd_change > 0 (fractions, not %)")


@dataclass
class Lesion:
    """One tumour component. Diameters in mm, volumes in ml, ``centroid_lps`` in mm, slice indices are array k."""

    id: int
    component: int
    voxel_count: int
    volume_ml: float
    centroid_lps: tuple[float, float, float]
    longest_diameter_mm: float
    short_axis_mm: float
    slice_index: int
    viable_longest_diameter_mm: float
    viable_slice_index: int | None
    viable_voxel_count: int
    viable_volume_ml: float
    measurable: bool
    measurable_mrecist: bool
    is_target: bool = False
    is_target_mrecist: bool = False
    organ: str = "liver"
    liver_reference_hu: float | None = None
    matched_baseline_id: int | None = None
    bbox: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)   # k0, k1, j0, j1, i0, i1 (end exclusive)
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)  # bool, cropped to bbox

    def diameter(self, criterion: str) -> float:
        return self.longest_diameter_mm if _criterion(criterion) == "recist" else self.viable_longest_diameter_mm

    def to_dict(self) -> dict[str, Any]:
        return {f: jsonable(getattr(self, f)) for f in self.__dataclass_fields__ if f != "mask"}


@dataclass
class TimePointReading:
    """Reading of one follow-up. ``category_*`` is None for a criterion that was not requested."""

    weeks: float
    sum_diameters_mm: float
    sum_viable_mm: float
    category_recist: str | None
    category_mrecist: str | None
    new_lesions: list[Lesion]
    lesions: list[Lesion]
    new_lesions_mrecist: list[Lesion] = field(default_factory=list)
    target_diameters_mm: dict[int, float] = field(default_factory=dict)
    target_viable_diameters_mm: dict[int, float] = field(default_factory=dict)
    nadir_sum_mm: float | None = None
    nadir_sum_viable_mm: float | None = None
    change_from_baseline_pct: dict[str, float | None] = field(default_factory=dict)
    change_from_nadir_pct: dict[str, float | None] = field(default_factory=dict)
    target_response: dict[str, str] = field(default_factory=dict)
    nontarget_response: dict[str, str] = field(default_factory=dict)
    pvtt_volume_ml: float = 0.0
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def category(self, criterion: str) -> str | None:
        return self.category_recist if _criterion(criterion) == "recist" else self.category_mrecist

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in self.__dataclass_fields__:
            value = getattr(self, f)
            out[f] = [x.to_dict() for x in value] if f in ("new_lesions", "lesions", "new_lesions_mrecist") \
                else jsonable(value)
        return out


@dataclass
class ResponseReading:
    """Baseline + per-time-point readings for the requested criteria."""

    criteria: tuple[str, ...]
    baseline_lesions: list[Lesion]
    baseline_sum_mm: float
    baseline_sum_viable_mm: float
    baseline_pvtt_volume_ml: float
    timepoints: list[TimePointReading]
    target_ids: dict[str, list[int]]
    measurable_disease: dict[str, bool]
    best_overall: dict[str, str | None]
    objective_response: dict[str, bool | None]
    config: ResponseConfig = field(default_factory=ResponseConfig)

    def categories(self, criterion: str = "mrecist") -> list[str]:
        crit = _criterion(criterion)
        if crit not in self.criteria:
            raise InputError(f"criterion {crit!r} was not read; read_response(criteria=...) had {self.criteria}")
        return [tp.category(crit) for tp in self.timepoints]

    @property
    def weeks(self) -> list[float]:
        return [tp.weeks for tp in self.timepoints]

    def to_dict(self) -> dict[str, Any]:
        return {
            "criteria": list(self.criteria),
            "baseline_lesions": [x.to_dict() for x in self.baseline_lesions],
            "baseline_sum_mm": self.baseline_sum_mm,
            "baseline_sum_viable_mm": self.baseline_sum_viable_mm,
            "baseline_pvtt_volume_ml": self.baseline_pvtt_volume_ml,
            "timepoints": [tp.to_dict() for tp in self.timepoints],
            "target_ids": jsonable(self.target_ids),
            "measurable_disease": dict(self.measurable_disease),
            "best_overall": dict(self.best_overall),
            "objective_response": dict(self.objective_response),
            "config": asdict(self.config),
        }


# --------------------------------------------------------------------------------------------------------------------
# helpers

def _criterion(name: str) -> str:
    crit = str(name).strip().lower()
    if crit not in CRITERIA:
        raise InputError(f"unknown response criterion {name!r}; use one of {CRITERIA}")
    return crit


def _check_labels(labels, geometry: Geometry, what: str) -> np.ndarray:
    if not isinstance(geometry, Geometry):
        raise InputError(f"geometry must be a HCCTwinLib.cases.Geometry, got {type(geometry).__name__}")
    arr = np.asarray(labels)
    if arr.ndim != 3 or tuple(arr.shape) != geometry.shape:
        raise InputError(f"{what} have shape {arr.shape}, geometry says {geometry.shape}; resample the follow-up "
                         "onto the baseline grid first")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{what} must be an integer label map (0-4), got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr)):
            raise InputError(f"{what} contain non-integer values; pass the label map, not a probability map")
        arr = arr.astype(np.int16)
    if arr.size and (arr.min() < 0 or arr.max() > PVTT):
        raise InputError(f"{what} contain values outside 0..{PVTT} (min {arr.min()}, max {arr.max()}); "
                         "use HCCTwinLib.labels values")
    return arr


def _check_arterial(arterial, geometry: Geometry, what: str) -> np.ndarray | None:
    if arterial is None:
        return None
    arr = np.asarray(arterial)
    if tuple(arr.shape) != geometry.shape:
        raise InputError(f"{what} has shape {arr.shape}, geometry says {geometry.shape}; resample it onto the "
                         "label grid")
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise InputError(f"{what} must be a numeric image (HU), got dtype {arr.dtype}")
    return arr


def _inplane_matrix(geometry: Geometry) -> np.ndarray:
    """3x2 matrix mapping in-slice index offsets (di, dj) to LPS millimetres."""
    return (geometry.direction_matrix @ np.diag(geometry.spacing))[:, :2]


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain on (n, 2) points (integer coordinates here, so the arithmetic is exact)."""
    pts = np.unique(points, axis=0)
    if len(pts) <= 2:
        return pts
    plist = pts.tolist()

    def chain(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(plist), chain(reversed(plist))
    return np.asarray(lower[:-1] + upper[:-1], dtype=float)


_DIAMOND = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])


def _slice_feret_points(mask2d: np.ndarray) -> np.ndarray:
    """Points (in (i, j) index units) whose convex hull is that of the pixels' edge midpoints of a mask ``[j, i]``.

    Only each row's leftmost/rightmost pixel centre can be a vertex of the centres' hull, and the hull of the
    edge midpoints is that hull's Minkowski sum with the diamond of a pixel's edge midpoints, whose vertices are
    among (hull vertices + diamond vertices). Max pairwise distance and projected widths of these points are exact.
    """
    rows = np.flatnonzero(mask2d.any(axis=1))
    sub = mask2d[rows]
    left = sub.argmax(axis=1)
    right = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    centres_ji = np.concatenate([np.stack([rows, left], 1), np.stack([rows, right], 1)]).astype(float)
    hull_ij = _convex_hull(centres_ji)[:, ::-1]
    return (hull_ij[:, None, :] + _DIAMOND[None, :, :]).reshape(-1, 2)


def feret_diameter_2d(mask2d: np.ndarray, inplane: np.ndarray) -> tuple[float, float]:
    """(longest, perpendicular width) in mm of a 2D mask ``[j, i]``; ``inplane`` from the geometry (3x2)."""
    mask2d = np.asarray(mask2d, dtype=bool)
    if not mask2d.any():
        return 0.0, 0.0
    pts = _slice_feret_points(mask2d)
    phys = pts @ np.asarray(inplane, dtype=float).T                       # (h, 3) LPS offsets
    d2 = ((phys[:, None, :] - phys[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(d2)), d2.shape)
    longest = float(math.sqrt(d2[a, b]))
    if longest == 0.0:
        return 0.0, 0.0
    u = (phys[b] - phys[a]) / longest
    normal = np.cross(inplane[:, 0], inplane[:, 1])
    v = np.cross(normal / np.linalg.norm(normal), u)
    proj = phys @ v
    return longest, float(proj.max() - proj.min())


def _box_bound(wi: np.ndarray, wj: np.ndarray, inplane: np.ndarray) -> np.ndarray:
    """Upper bound of the Feret diameter: the longer diagonal of the (pixel-edge) bounding box, in mm."""
    d1 = np.linalg.norm(np.outer(wi, inplane[:, 0]) + np.outer(wj, inplane[:, 1]), axis=1)
    d2 = np.linalg.norm(np.outer(wi, inplane[:, 0]) - np.outer(wj, inplane[:, 1]), axis=1)
    return np.maximum(d1, d2)


_N_DIRECTIONS = 16
_WIDTH_TO_FERET = 1.0 / math.cos(math.pi / (2 * _N_DIRECTIONS))


def _direction_coeffs(inplane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For 16 in-plane physical directions u (0..180 deg): u.col_i, u.col_j and the pixel's edge-midpoint width."""
    c0, c1 = inplane[:, 0], inplane[:, 1]
    e1 = c0 / np.linalg.norm(c0)
    normal = np.cross(c0, c1)
    e2 = np.cross(normal / np.linalg.norm(normal), e1)
    theta = np.arange(_N_DIRECTIONS) * math.pi / _N_DIRECTIONS
    u = np.outer(np.cos(theta), e1) + np.outer(np.sin(theta), e2)
    a, b = u @ c0, u @ c1
    return a, b, np.maximum(np.abs(a), np.abs(b))


def _feret_bounds(mask: np.ndarray, coeffs) -> tuple[np.ndarray, np.ndarray]:
    """Per non-empty slice of a 3D mask: (k, upper bound of its Feret diameter in mm).

    The widths w(u) in 16 directions are exact (row extremes + pixel diamond); any direction lies within
    pi/32 of a sampled one, and the width (support function) is sublinear, so Feret <= max w / cos(pi/32).
    """
    rows = mask.any(axis=2)
    ks = np.flatnonzero(rows.any(axis=1))
    m, rows = mask[ks], rows[ks]
    left = m.argmax(axis=2).astype(float)
    right = (m.shape[2] - 1 - m[:, :, ::-1].argmax(axis=2)).astype(float)
    j = np.arange(m.shape[1], dtype=float)
    a, b, pixel = (x[:, None, None] for x in coeffs)
    pl, pr = a * left + b * j, a * right + b * j                        # (directions, slices, rows)
    hi = np.where(rows, np.maximum(pl, pr), -np.inf).max(axis=2)
    lo = np.where(rows, np.minimum(pl, pr), np.inf).min(axis=2)
    widths = hi - lo + pixel[:, :, 0]
    return ks, widths.max(axis=0) * _WIDTH_TO_FERET * (1 + 1e-9)


def _best_feret(candidates, inplane, coeffs) -> tuple[float, float, int | None]:
    """Max Feret diameter over candidates ``(bound_mm, k, get_mask2d, refined)``; ties -> lowest k.

    Candidates are visited from the largest bound; a coarse (not ``refined``) bound is first tightened with
    :func:`_feret_bounds`, and the search stops when no bound can beat the best diameter. Returns (d, short, k).
    """
    heap = [(-b, int(k), n, bool(r), g) for n, (b, k, g, r) in enumerate(candidates)]
    heapq.heapify(heap)
    best, short, best_k = 0.0, 0.0, None
    while heap:
        neg_bound, k, n, refined, get_mask = heapq.heappop(heap)
        if best_k is not None and -neg_bound < best - _EPS:
            break
        if not refined:
            bound = float(_feret_bounds(get_mask()[None], coeffs)[1][0])
            heapq.heappush(heap, (-bound, k, n, True, get_mask))
            continue
        d, s = feret_diameter_2d(get_mask(), inplane)
        if best_k is None or d > best + _EPS or (abs(d - best) <= _EPS and k < best_k):
            best, short, best_k = d, s, k
    return best, short, best_k


def _longest_diameter(mask: np.ndarray, inplane: np.ndarray, coeffs) -> tuple[float, float, int | None]:
    """Longest axial diameter of a 3D bool mask ``[k, j, i]`` (crop): (diameter mm, short axis mm, local k)."""
    ks, bounds = _feret_bounds(mask, coeffs)
    if ks.size == 0:
        return 0.0, 0.0, None
    cands = [(float(b), int(k), (lambda k=k: mask[k]), True) for b, k in zip(bounds, ks)]
    return _best_feret(cands, inplane, coeffs)


def _viable_diameter(viable: np.ndarray, inplane: np.ndarray, coeffs) -> tuple[float, int | None]:
    """Longest diameter of any 8-connected viable piece of any axial cross-section: (mm, local k)."""
    if not viable.any():
        return 0.0, None
    lab, _ = ndimage.label(viable, structure=_STRUCT_2D)
    cands = []
    for idx, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        wi = np.array([sl[2].stop - sl[2].start], dtype=float)
        wj = np.array([sl[1].stop - sl[1].start], dtype=float)
        bound = float(_box_bound(wi, wj, inplane)[0])
        cands.append((bound, sl[0].start, (lambda idx=idx, sl=sl: lab[sl][0] == idx), False))
    d, _, k = _best_feret(cands, inplane, coeffs)
    return d, k


# --------------------------------------------------------------------------------------------------------------------
# lesion extraction

def _analyse(labels: np.ndarray, geometry: Geometry, arterial: np.ndarray | None,
             cfg: ResponseConfig) -> tuple[list[Lesion], float]:
    """Lesions (sorted, ids from 1) and PVTT volume in ml (0 below ``pvtt_min_volume_ml``)."""
    vox_ml = geometry.voxel_volume_ml
    pvtt_ml = float(np.count_nonzero(labels == PVTT)) * vox_ml
    if pvtt_ml < cfg.pvtt_min_volume_ml:
        pvtt_ml = 0.0
    tumor = (labels == VIABLE_TUMOR) | (labels == NECROSIS)
    any_k, any_j, any_i = tumor.any(axis=(1, 2)), tumor.any(axis=(0, 2)), tumor.any(axis=(0, 1))
    if not any_k.any():
        return [], pvtt_ml
    box = tuple(slice(int(np.flatnonzero(a)[0]), int(np.flatnonzero(a)[-1]) + 1) for a in (any_k, any_j, any_i))
    comp, _ = ndimage.label(tumor[box], structure=_STRUCT_3D)
    offset = np.array([s.start for s in box])
    inplane = _inplane_matrix(geometry)
    coeffs = _direction_coeffs(inplane)
    ijk_to_lps = geometry.ijk_to_lps()
    spacing_kji = np.array(geometry.spacing[::-1])
    shell_vox = np.ceil(cfg.shell_mm / spacing_kji).astype(int)
    global_liver: list = []            # lazily computed fallback reference

    lesions = []
    for idx, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None:
            continue
        mask = comp[sl] == idx
        d, short, k_local = _longest_diameter(mask, inplane, coeffs)
        if d < cfg.noise_floor_mm:
            continue
        lo = offset + np.array([s.start for s in sl])
        hi = offset + np.array([s.stop for s in sl])
        gsl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        viable = mask & (labels[gsl] == VIABLE_TUMOR)
        ref = None
        if arterial is not None and viable.any():
            ref = _liver_reference(labels, arterial, mask, lo, hi, shell_vox, cfg, global_liver)
            if ref is not None:
                with np.errstate(invalid="ignore"):
                    viable &= arterial[gsl] >= ref + cfg.enhancement_margin_hu
        vd, vk = _viable_diameter(viable, inplane, coeffs)
        n_viable = int(np.count_nonzero(viable))
        if vd < cfg.noise_floor_mm:
            vd, vk, n_viable = 0.0, None, 0
        kk, jj, ii = np.nonzero(mask)
        c_ijk = np.array([ii.mean() + lo[2], jj.mean() + lo[1], kk.mean() + lo[0], 1.0])
        centroid = tuple(float(x) for x in (ijk_to_lps @ c_ijk)[:3])
        lesions.append(Lesion(
            id=0, component=idx, voxel_count=int(kk.size), volume_ml=float(kk.size * vox_ml), centroid_lps=centroid,
            longest_diameter_mm=d, short_axis_mm=short, slice_index=int(k_local + lo[0]),
            viable_longest_diameter_mm=vd, viable_slice_index=None if vk is None else int(vk + lo[0]),
            viable_voxel_count=n_viable, viable_volume_ml=float(n_viable * vox_ml),
            measurable=d >= cfg.measurable_min_mm - _EPS, measurable_mrecist=vd >= cfg.measurable_min_mm - _EPS,
            liver_reference_hu=ref, bbox=tuple(int(x) for pair in zip(lo, hi) for x in pair), mask=mask,
        ))
    lesions.sort(key=lambda les: (-les.longest_diameter_mm, -les.voxel_count, les.component))
    for n, les in enumerate(lesions, start=1):
        les.id = n
    return lesions, pvtt_ml


def _liver_reference(labels, arterial, mask, lo, hi, shell_vox, cfg, global_liver) -> float | None:
    """Mean arterial value of liver (label 1) within ``shell_mm`` (box / Chebyshev) of the lesion."""
    shape = np.array(labels.shape)
    elo, ehi = np.maximum(lo - shell_vox, 0), np.minimum(hi + shell_vox, shape)
    esl = tuple(slice(int(a), int(b)) for a, b in zip(elo, ehi))
    grown = np.zeros(tuple(ehi - elo), dtype=np.uint8)
    grown[tuple(slice(int(a), int(b)) for a, b in zip(lo - elo, hi - elo))] = mask
    for axis in range(3):
        grown = ndimage.maximum_filter1d(grown, size=2 * int(shell_vox[axis]) + 1, axis=axis, mode="constant")
    shell = grown.astype(bool) & (labels[esl] == LIVER)
    values = arterial[esl][shell].astype(float)
    values = values[np.isfinite(values)]
    if values.size >= cfg.min_shell_voxels:
        return float(values.mean())
    if not global_liver:
        allv = arterial[labels == LIVER].astype(float)
        allv = allv[np.isfinite(allv)]
        global_liver.append(float(allv.mean()) if allv.size else None)
    return global_liver[0]


def select_targets(lesions: Sequence[Lesion], criterion: str = "recist",
                   config: ResponseConfig | None = None) -> list[Lesion]:
    """Mark and return the baseline targets: measurable, largest first, <= 2 per organ and <= 5 in all."""
    cfg = config or ResponseConfig()
    crit = _criterion(criterion)
    flag = "is_target" if crit == "recist" else "is_target_mrecist"
    measurable = "measurable" if crit == "recist" else "measurable_mrecist"
    ranked = sorted((les for les in lesions if getattr(les, measurable)),
                    key=lambda les: (-les.diameter(crit), -les.voxel_count, les.id))
    per_organ: dict[str, int] = {}
    targets = []
    for les in lesions:
        setattr(les, flag, False)
    for les in ranked:
        if len(targets) >= cfg.max_targets_total:
            break
        if per_organ.get(les.organ, 0) >= cfg.max_targets_per_organ:
            continue
        per_organ[les.organ] = per_organ.get(les.organ, 0) + 1
        setattr(les, flag, True)
        targets.append(les)
    return targets


def extract_lesions(labels, geometry: Geometry, arterial=None, *, min_diameter_mm: float | None = None,
                    config: ResponseConfig | None = None) -> list[Lesion]:
    """Tumour lesions of one label map (ids by decreasing longest diameter), RECIST/mRECIST measurability set.

    ``min_diameter_mm`` overrides ``config.measurable_min_mm`` (default 10 mm). Targets are not selected here; see
    :func:`select_targets`. PVTT is not a lesion here (see :func:`read_response`).
    """
    cfg = config or ResponseConfig()
    if min_diameter_mm is not None:
        cfg = ResponseConfig(**{**asdict(cfg), "measurable_min_mm": float(min_diameter_mm)})
    arr = _check_labels(labels, geometry, "labels")
    return _analyse(arr, geometry, _check_arterial(arterial, geometry, "arterial"), cfg)[0]


# --------------------------------------------------------------------------------------------------------------------
# categories

def target_response(sum_mm: float, baseline_mm: float, nadir_mm: float, *, criterion: str = "recist",
                    config: ResponseConfig | None = None) -> str:
    """Target-lesion category from sums of diameters: CR / PD / PR / SD (PD checked before PR)."""
    cfg = config or ResponseConfig()
    crit = _criterion(criterion)
    min_inc = cfg.pd_min_increase_mm_recist if crit == "recist" else cfg.pd_min_increase_mm_mrecist
    if sum_mm <= _EPS:
        return "CR"
    inc = sum_mm - nadir_mm
    tol = _EPS * max(1.0, nadir_mm)
    if inc > tol and inc >= cfg.pd_change * nadir_mm - tol and inc >= min_inc - tol:
        return "PD"
    if baseline_mm > 0 and sum_mm - baseline_mm <= cfg.pr_change * baseline_mm + _EPS * baseline_mm:
        return "PR"
    return "SD"


def overall_response(target: str | None, nontarget: str, new_lesion: bool) -> str:
    """RECIST 1.1 table 4. ``target`` None = no targets; ``nontarget`` one of CR, non-CR/non-PD, PD."""
    if new_lesion or target == "PD" or nontarget == "PD":
        return "PD"
    if target in (None, "CR"):
        return "CR" if nontarget == "CR" else ("PR" if target == "CR" else "SD")
    return target


def category_ordinal(category: str) -> int:
    """CR=0 < PR=1 < SD=2 < PD=3 (for weighted kappa and 'best' response)."""
    if isinstance(category, (int, np.integer)) and not isinstance(category, bool) and 0 <= category < 4:
        return int(category)
    cat = str(category).strip().upper()
    if cat not in CATEGORIES:
        raise InputError(f"unknown response category {category!r}; use one of {CATEGORIES}")
    return CATEGORIES.index(cat)


def weighted_kappa(a: Sequence, b: Sequence, weights: str = "linear") -> float:
    """Cohen's weighted kappa between two raters' categories (CR/PR/SD/PD or ordinals 0-3) on the fixed 4-level scale.

    kappa = 1 - sum(w * O) / sum(w * E), w_ij = |i-j|/3 (linear) or ((i-j)/3)^2 (quadratic), O the observed and E the
    chance-expected (product of marginals) proportions. Cohen J, Psychol Bull 1968;70:213-220. When both raters use
    one and the same category throughout, kappa is 0/0; we return 1.0 (perfect agreement) by convention.
    """
    if len(a) != len(b):
        raise InputError(f"weighted_kappa needs paired ratings; got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise InputError("weighted_kappa needs at least one pair of ratings")
    if weights not in ("linear", "quadratic"):
        raise InputError(f"weights must be 'linear' or 'quadratic', got {weights!r}")
    k = len(CATEGORIES)
    ia = np.array([category_ordinal(x) for x in a])
    ib = np.array([category_ordinal(x) for x in b])
    observed = np.zeros((k, k))
    np.add.at(observed, (ia, ib), 1.0)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    diff = np.abs(np.subtract.outer(np.arange(k), np.arange(k))) / (k - 1)
    w = diff if weights == "linear" else diff ** 2
    num, den = float((w * observed).sum()), float((w * expected).sum())
    if den <= 0.0:
        return 1.0
    return 1.0 - num / den


# --------------------------------------------------------------------------------------------------------------------
# reading across time points

def _overlap(a: Lesion, b: Lesion) -> int:
    lo = [max(a.bbox[2 * d], b.bbox[2 * d]) for d in range(3)]
    hi = [min(a.bbox[2 * d + 1], b.bbox[2 * d + 1]) for d in range(3)]
    if any(h <= l for l, h in zip(lo, hi)):
        return 0
    sa = tuple(slice(l - a.bbox[2 * d], h - a.bbox[2 * d]) for d, (l, h) in enumerate(zip(lo, hi)))
    sb = tuple(slice(l - b.bbox[2 * d], h - b.bbox[2 * d]) for d, (l, h) in enumerate(zip(lo, hi)))
    return int(np.count_nonzero(a.mask[sa] & b.mask[sb]))


def _assign(baseline: list[Lesion], followup: list[Lesion], cfg: ResponseConfig) -> None:
    """Set ``matched_baseline_id`` of each follow-up lesion (most overlap, else nearest centroid within reach)."""
    for f in followup:
        overlaps = [(_overlap(b, f), -b.id) for b in baseline]
        best = max(overlaps, default=(0, 0))
        if best[0] > 0:
            f.matched_baseline_id = -best[1]
            continue
        near = []
        for b in baseline:
            dist = float(np.linalg.norm(np.subtract(f.centroid_lps, b.centroid_lps)))
            if dist <= max(cfg.match_min_distance_mm, cfg.match_diameter_fraction * b.longest_diameter_mm) + _EPS:
                near.append((dist, b.id))
        f.matched_baseline_id = min(near)[1] if near else None


def _pct(value: float, ref: float) -> float | None:
    return None if ref <= 0 else 100.0 * (value - ref) / ref


def read_response(baseline_labels, followups: Sequence, geometry: Geometry, baseline_arterial=None,
                  criteria: Sequence[str] = CRITERIA, config: ResponseConfig | None = None) -> ResponseReading:
    """Read RECIST 1.1 / mRECIST response of one trajectory: baseline + follow-ups ``[(weeks, labels, arterial)]``.

    All arrays share ``geometry`` (follow-ups registered to the baseline grid); ``arterial`` may be None (then
    label 2 is viable). Follow-ups are read in order of ``weeks``; read one trajectory (one regimen, one sample)
    per call, since the nadir runs along it. See the module docstring for every rule.
    """
    cfg = config or ResponseConfig()
    crits = _criteria(criteria)
    baseline = ImageLesions(*_analyse(_check_labels(baseline_labels, geometry, "baseline labels"), geometry,
                                      _check_arterial(baseline_arterial, geometry, "baseline arterial"), cfg))
    analysed = []
    for weeks, lab, art in _ordered_followups(followups, "(weeks, labels, arterial_or_None)", 3):
        arr = _check_labels(lab, geometry, f"follow-up labels (week {weeks:g})")
        art = _check_arterial(art, geometry, f"arterial (week {weeks:g})")
        analysed.append((weeks, ImageLesions(*_analyse(arr, geometry, art, cfg))))
    return read_analysed(baseline, analysed, criteria=crits, config=cfg)


@dataclass
class ImageLesions:
    """What the reading needs of one image: its lesions (:func:`extract_lesions`) and its PVTT volume (mL)."""

    lesions: list[Lesion]
    pvtt_ml: float


def analyse_image(labels, geometry: Geometry, arterial=None, *, config: ResponseConfig | None = None
                  ) -> ImageLesions:
    """Lesions and PVTT of one label map (+ arterial phase), for :func:`read_analysed`: read each image once when
    many trajectories share it (e.g. the baseline of every sampled response of a virtual follow-up)."""
    cfg = config or ResponseConfig()
    arr = _check_labels(labels, geometry, "labels")
    lesions, pvtt_ml = _analyse(arr, geometry, _check_arterial(arterial, geometry, "arterial"), cfg)
    return ImageLesions(lesions, pvtt_ml)


def _criteria(criteria: Sequence[str]) -> tuple[str, ...]:
    crits = tuple(dict.fromkeys(_criterion(c) for c in criteria))
    if not crits:
        raise InputError("criteria is empty; use ('recist', 'mrecist') or one of them")
    return crits


def _ordered_followups(followups: Sequence, form: str, size: int) -> list[tuple]:
    """``[(weeks, *rest)]`` sorted by weeks (input order on ties is an error: one trajectory per call)."""
    items = []
    for n, item in enumerate(followups):
        try:
            weeks, *rest = item
        except (TypeError, ValueError):
            raise InputError(f"follow-up #{n} must be a {form} tuple") from None
        if len(rest) != size - 1:
            raise InputError(f"follow-up #{n} must be a {form} tuple")
        weeks = float(weeks)
        if not math.isfinite(weeks) or weeks < 0:
            raise InputError(f"follow-up #{n} has weeks={weeks}; use weeks since baseline (>= 0)")
        items.append((weeks, n, *rest))
    items.sort(key=lambda x: (x[0], x[1]))
    for a, b in zip(items, items[1:]):
        if a[0] == b[0]:
            raise InputError(f"two follow-ups at week {a[0]:g}; read each sample/regimen trajectory separately")
    return [(it[0], *it[2:]) for it in items]


def read_analysed(baseline: ImageLesions, followups: Sequence[tuple[float, ImageLesions]],
                  criteria: Sequence[str] = CRITERIA, config: ResponseConfig | None = None) -> ResponseReading:
    """:func:`read_response` on images already analysed (:func:`analyse_image`, same grid and configuration):
    ``followups`` = ``[(weeks, ImageLesions)]``. The baseline may be shared by many calls; a follow-up's lesions
    are matched to it in place, so give each call its own follow-up analyses."""
    cfg = config or ResponseConfig()
    crits = _criteria(criteria)
    base_lesions, base_pvtt = baseline.lesions, baseline.pvtt_ml
    items = _ordered_followups(followups, "(weeks, ImageLesions)", 2)

    targets = {c: select_targets(base_lesions, c, cfg) for c in CRITERIA}
    target_ids = {c: [t.id for t in targets[c]] for c in crits}
    base_sum = {c: float(sum(t.diameter(c) for t in targets[c])) for c in CRITERIA}
    base_nt = {
        "recist": sum(les.volume_ml for les in base_lesions if not les.is_target),
        "mrecist": sum(les.viable_volume_ml for les in base_lesions if not les.is_target_mrecist),
    }
    nadir = dict(base_sum)
    nadir_nt = dict(base_nt)
    nadir_pvtt = base_pvtt

    timepoints = []
    for weeks, analysed in items:
        fu_lesions, pvtt_ml = analysed.lesions, analysed.pvtt_ml
        _assign(base_lesions, fu_lesions, cfg)
        base_by_id = {b.id: b for b in base_lesions}
        for f in fu_lesions:
            b = base_by_id.get(f.matched_baseline_id)
            f.is_target = bool(b is not None and b.is_target)
            f.is_target_mrecist = bool(b is not None and b.is_target_mrecist)

        pvtt_reasons = []
        if pvtt_ml > 0 and nadir_pvtt <= 0:
            pvtt_reasons.append("new PVTT" if base_pvtt <= 0 else "PVTT reappeared")
        elif nadir_pvtt > 0 and pvtt_ml - nadir_pvtt >= max(cfg.pvtt_growth_fraction * nadir_pvtt,
                                                            cfg.pvtt_min_growth_ml) - _EPS:
            pvtt_reasons.append(f"PVTT grew {pvtt_ml - nadir_pvtt:.2f} ml over its nadir")

        cats: dict[str, str | None] = {"recist": None, "mrecist": None}
        tdiam: dict[str, dict[int, float]] = {}
        sums: dict[str, float] = {}
        new: dict[str, list[Lesion]] = {}
        tp_target, tp_nt, reasons, ch_base, ch_nadir = {}, {}, {}, {}, {}
        for c in CRITERIA:
            tflag = "is_target" if c == "recist" else "is_target_mrecist"
            tdiam[c] = {t.id: float(sum(f.diameter(c) for f in fu_lesions if f.matched_baseline_id == t.id))
                        for t in targets[c]}
            sums[c] = float(sum(tdiam[c].values()))
            new[c] = [f for f in fu_lesions if f.matched_baseline_id is None
                      and f.diameter(c) >= cfg.new_lesion_min_mm - _EPS]
            if c not in crits:
                continue
            why = list(pvtt_reasons)
            if new[c]:
                why.append(f"{len(new[c])} new lesion(s) >= {cfg.new_lesion_min_mm:g} mm")
            t_cat = target_response(sums[c], base_sum[c], nadir[c], criterion=c, config=cfg) if targets[c] else None
            if t_cat == "PD":
                why.append(f"target sum {sums[c]:.1f} mm vs nadir {nadir[c]:.1f} mm")
            # non-target tumour: baseline non-targets (matched) and equivocal unmatched residue
            nt_vol = sum((f.volume_ml if c == "recist" else f.viable_volume_ml) for f in fu_lesions
                         if f.matched_baseline_id is not None and not getattr(f, tflag))
            residual = [f for f in fu_lesions if not getattr(f, tflag) and f.diameter(c) > 0]
            nt_grew = nt_vol - nadir_nt[c] >= max(cfg.nontarget_growth_fraction * nadir_nt[c],
                                                  cfg.nontarget_min_growth_ml) - _EPS
            if nt_grew:
                why.append(f"non-target tumour grew {nt_vol - nadir_nt[c]:.2f} ml over its nadir")
            if pvtt_reasons or nt_grew:
                nt_cat = "PD"
            elif not residual and pvtt_ml <= 0:
                nt_cat = "CR"
            else:
                nt_cat = "non-CR/non-PD"
            cats[c] = overall_response(t_cat, nt_cat, bool(new[c]))
            tp_target[c] = t_cat if t_cat is not None else "none"
            tp_nt[c] = nt_cat
            reasons[c] = why
            ch_base[c] = _pct(sums[c], base_sum[c]) if targets[c] else None
            ch_nadir[c] = _pct(sums[c], nadir[c]) if targets[c] else None
            nadir_nt[c] = min(nadir_nt[c], nt_vol)

        timepoints.append(TimePointReading(
            weeks=weeks, sum_diameters_mm=sums["recist"], sum_viable_mm=sums["mrecist"],
            category_recist=cats["recist"], category_mrecist=cats["mrecist"],
            new_lesions=new["recist"], lesions=fu_lesions, new_lesions_mrecist=new["mrecist"],
            target_diameters_mm=tdiam["recist"], target_viable_diameters_mm=tdiam["mrecist"],
            nadir_sum_mm=nadir["recist"], nadir_sum_viable_mm=nadir["mrecist"],
            change_from_baseline_pct=ch_base, change_from_nadir_pct=ch_nadir,
            target_response=tp_target, nontarget_response=tp_nt, pvtt_volume_ml=pvtt_ml, reasons=reasons,
        ))
        for c in CRITERIA:
            nadir[c] = min(nadir[c], sums[c])
        nadir_pvtt = min(nadir_pvtt, pvtt_ml)

    best: dict[str, str | None] = {}
    objective: dict[str, bool | None] = {}
    for c in crits:
        cats_c = [tp.category(c) for tp in timepoints]
        best[c] = min(cats_c, key=category_ordinal) if cats_c else None
        objective[c] = None if best[c] is None else best[c] in ("CR", "PR")
    return ResponseReading(
        criteria=crits, baseline_lesions=base_lesions, baseline_sum_mm=base_sum["recist"],
        baseline_sum_viable_mm=base_sum["mrecist"], baseline_pvtt_volume_ml=base_pvtt, timepoints=timepoints,
        target_ids=target_ids, measurable_disease={c: bool(targets[c]) for c in crits}, best_overall=best,
        objective_response=objective, config=cfg,
    )
