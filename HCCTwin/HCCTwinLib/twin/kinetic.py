"""How much changes: per-lesion response kinetics predicted from pre-treatment covariates (the anchored twin, part 1).

The baseline-anchored twin (:mod:`.anchored`) splits a virtual follow-up into *how much changes* (this module) and
*what it looks like* (:mod:`.render`). Here each pre-treatment lesion (a connected component of tumour, labels 2|3)
gets, per regimen and follow-up week,

- its **total** volume ``T_t`` (viable + necrotic; what a lesion's outline shows) and
- its **viable** volume ``V_t`` (enhancing tumour; the rest of ``T_t`` is necrosis, lipiodol-laden after TACE),

as ``log((V_t + a) / (V_0 + a)) = x . beta_v[r, w] + sigma_v[r, w] z`` (same for ``T`` with ``beta_t``,
``sigma_t``; ``a`` = 0.5 mL), where ``x`` are standardised pre-treatment covariates of the lesion and the patient
(:data:`FEATURES`: lesion size, necrotic share, arterial enhancement and portal wash-out against the surrounding
liver, total tumour burden, number of lesions, PVTT, AFP and ALBI when the clinical values are given, training
medians otherwise; and, since response is not linear in them, the categories TACE trials use: diameter <= 3 cm,
<= 5 cm, > 10 cm, a solitary nodule, four or more nodules, a hypo- or isovascular lesion) and ``z ~ N(0, 1)`` is
the patient's **latent response**: the part no pre-treatment information shows. ``z = 0`` gives the median
follow-up; the uncertainty samples are draws of ``z`` (one per sample, shared by every lesion, week and regimen of
the patient: common random numbers, coherent trajectories), never pixel noise.
The portal-vein tumour thrombus has a patient-level ratio per (regimen, week) and new intrahepatic lesions a
probability per (regimen, week); the appearance the renderer needs (HU of new necrosis and of released thrombus, the
contrast of new lesions against the liver) are medians per (regimen, week). The change of a surviving lesion's viable
HU depends on how much it enhanced (devascularisation takes away enhancement, and a hypovascular lesion has little to
lose): per (regimen, week, phase) it is a straight line in the lesion's pre-treatment viable HU, kept only where its
leave-one-out error is below that of the median change (:func:`fit_viable_shift`), and clipped to the 5-95 % range of
the observed changes. That change is measured on the tissue beyond 4 mm of the new necrosis: next to it the scanner's
blur mixes the necrosis (dense lipiodol after TACE) into the viable tumour, which gets an HU offset per band of
distance instead (:data:`ADJACENT_BANDS_MM`, median per (regimen, week, phase)).

**Fit** (:func:`fit_kinetics`): on a cohort's *observed* follow-ups only (``cases/<id>/pre`` and
``cases/<id>/followup/wNN`` of the regimen each patient received; never the simulator's counterfactual truth). Every
follow-up tumour voxel is assigned to the nearest pre-treatment lesion (within :data:`MATCH_MM`; the others form new
lesions), so volumes are robust to a few mm of misregistration. One ridge regression per (regimen, observed week)
and target; the ridge penalty of each is chosen by exact leave-one-out error. Later weeks are then refitted
*through* the earlier one on the patients observed at both (:func:`_sequential_weeks`): patients who progress or die
leave follow-up, so a week-24 fit on those still observed would promise everyone the survivors' response. Regimens
without observed follow-ups have no kinetics (the twin shows them unchanged and says so). Weeks between the observed
ones are interpolated linearly in ``log`` ratio (``0`` at week 0); weeks beyond the last one are extrapolated at its
rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..cases import Geometry
from ..labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR, foreground_box

PHASES = ("arterial", "portal")
#: smoothing of the volume ratios (mL): a vanished lesion is log((0 + a) / (V0 + a)), not -inf
SMOOTH_ML = 0.5
#: lesions smaller than this (mL) are noise, not lesions
MIN_LESION_ML = 0.1
#: follow-up tumour within this distance (mm) of a pre-treatment lesion belongs to it; farther away it is new
MATCH_MM = 15.0
#: new lesions smaller than this (mL) are not counted
MIN_NEW_ML = 0.5
#: liver shell (mm) around a lesion for its enhancement and wash-out
SHELL_MM = 10.0
#: fewest (lesion, follow-up) pairs of a (regimen, week, phase) for a viable-HU change that depends on the lesion's HU
MIN_SHIFT_PAIRS = 20
#: surviving viable tumour next to new necrosis looks different from the rest of it (after TACE the scanner's blur
#: spreads the dense lipiodol into it): bands of distance (mm) from the new necrosis, each with its own HU offset from
#: the viable tumour beyond them (whose change is the tissue's: ``viable_shift_hu``); chosen from the simulator's
#: observed TACE follow-ups (``benchmarks/results/tace_viable_blur.md``: +72 HU within 2 mm, +20 at 2-4 mm, -3 beyond)
ADJACENT_BANDS_MM = (2.0, 4.0)
#: fewest voxels of a band (and of the viable tumour beyond the bands) for a lesion's measurement
MIN_BAND_VOXELS = 20
#: fewest lesions of a (regimen, week, phase) for a band's own offset (fewer: no offset)
MIN_BAND_LESIONS = 10
#: fewest patients with two or more lesions of a (regimen, week) for its own share of the residual variance that a
#: patient's lesions have in common (fewer: the week's pooled share)
MIN_SHARING_PATIENTS = 10
#: covariates of the first models (cards without ``architecture_kwargs.features`` use these)
LEGACY_FEATURES = ("log_total_ml", "necrotic_share", "arterial_enhancement_hu", "portal_washout_hu", "log_burden_ml",
                   "n_lesions", "pvtt", "log_afp", "albi_score")
#: the response of a lesion to embolisation and chemotherapy is not linear in its size, number or vascularity: the
#: categories radiologists and TACE trials use (diameter <= 3 cm, <= 5 cm, > 10 cm; a solitary nodule; four or more
#: nodules; a hypo- or isovascular lesion) enter as indicators beside the continuous covariates
CATEGORY_FEATURES = ("diameter_le_30mm", "diameter_le_50mm", "diameter_gt_100mm", "solitary", "four_or_more",
                     "hypovascular")
FEATURES = LEGACY_FEATURES + CATEGORY_FEATURES
#: a lesion whose arterial-phase HU is less than this above the surrounding liver is hypo- or isovascular
HYPERVASCULAR_HU = 10.0
#: the clinical columns behind the last two features
CLINICAL_FEATURES = {"log_afp": "afp_ng_ml", "albi_score": "albi_score"}
#: lesions weigh (pre-treatment total mL + 1) ** SIZE_WEIGHT in the fit: a patient's tumour volume and mRECIST
#: are carried by the large lesions, and small ones have noisy ratios (0.5 rather than 1: chosen on the tuning cohort,
#: seed 950, never on the hold-out; ``benchmarks/results/generator_fit_choices.md``)
SIZE_WEIGHT = 0.5
#: penalty multipliers of the per-regimen deviations from the shared covariate slopes (inf: shared slopes only)
INTERACTION_GRID = (1.0, 10.0, 100.0, math.inf)
#: ridge penalties tried (leave-one-out picks one per fit; the viable-volume fits of the first model sat at the old
#: largest value, 100, so the grid goes on to 1000)
RIDGE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PreLesion:
    """One pre-treatment lesion: component ``index`` (1..n) of the tumour map, volumes in mL, centroid in voxel
    coordinates ``(k, j, i)`` and covariates."""

    index: int
    viable_ml: float
    necrosis_ml: float
    centroid_kji: np.ndarray
    rmax_mm: float
    box: tuple[slice, slice, slice]
    features: dict[str, float] = field(default_factory=dict)
    hu: dict[str, float] = field(default_factory=dict)  # mean viable HU per phase (NaN without viable tumour)
    liver_hu: dict[str, float] = field(default_factory=dict)  # mean HU of the liver shell per phase

    @property
    def total_ml(self) -> float:
        return self.viable_ml + self.necrosis_ml


def sphere_radius_mm(volume_ml: float) -> float:
    """Radius (mm) of a sphere of ``volume_ml``: a lesion's equivalent size."""
    return (3.0 * max(float(volume_ml), 0.0) * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


def _spacing_kji(geometry: Geometry) -> np.ndarray:
    return np.asarray(geometry.spacing[::-1], dtype=float)


def tumour_components(labels: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, int]:
    """26-connected components of tumour (labels 2|3) of at least :data:`MIN_LESION_ML`, numbered 1..n by size."""
    tumour = (labels == VIABLE_TUMOR) | (labels == NECROSIS)
    box = foreground_box(tumour)
    if box is None:
        return np.zeros(labels.shape, np.int32), 0
    sl = tuple(slice(a, b) for a, b in zip(*box))
    comp_box, n = ndimage.label(tumour[sl], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp_box.ravel())[1:] * geometry.voxel_volume_ml
    keep = [int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= MIN_LESION_ML]
    remap = np.zeros(n + 1, np.int32)
    remap[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    comp = np.zeros(labels.shape, np.int32)
    comp[sl] = remap[comp_box]
    return comp, len(keep)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def find_lesions(labels: np.ndarray, geometry: Geometry, phases: Mapping[str, np.ndarray] | None = None,
                 clinical: Mapping[str, Any] | None = None) -> tuple[np.ndarray, list[PreLesion]]:
    """The component map and the lesions of a pre-treatment label map, with their covariates (:data:`FEATURES`;
    image features NaN without ``phases``, clinical ones NaN when not given: the model imputes them)."""
    labels = np.asarray(labels)
    comp, n = tumour_components(labels, geometry)
    sp = _spacing_kji(geometry)
    vox = geometry.voxel_volume_ml
    lesions: list[PreLesion] = []
    if n == 0:
        return comp, lesions
    boxes = ndimage.find_objects(comp)
    pad = [int(math.ceil(SHELL_MM / s)) + 1 for s in sp]
    pvtt = float((labels == PVTT).sum()) * vox
    for idx, sl in enumerate(boxes, start=1):
        grown = tuple(slice(max(0, s.start - p), min(n_, s.stop + p)) for s, p, n_ in zip(sl, pad, labels.shape))
        mask = comp[grown] == idx
        lab = labels[grown]
        viable = mask & (lab == VIABLE_TUMOR)
        pts = np.argwhere(mask)
        offset = np.array([s.start for s in grown], float)
        centroid = pts.mean(axis=0) + offset
        rmax = float(np.sqrt((((pts + offset - centroid) * sp) ** 2).sum(axis=1)).max()) + 0.5 * float(sp.max())
        les = PreLesion(index=idx, viable_ml=float(viable.sum()) * vox, necrosis_ml=float((mask & ~viable).sum()) * vox,
                        centroid_kji=centroid, rmax_mm=rmax, box=sl)
        if phases is not None:
            dist = ndimage.distance_transform_edt(~mask, sampling=sp)
            shell = (dist > 0) & (dist <= SHELL_MM) & (lab == LIVER)
            for p in PHASES:
                arr = np.asarray(phases[p])[grown]
                les.hu[p] = _mean(arr[viable])
                les.liver_hu[p] = _mean(arr[shell])
        lesions.append(les)
    burden = sum(les.total_ml for les in lesions)
    for les in lesions:
        f = les.features
        f["log_total_ml"] = math.log(les.total_ml + SMOOTH_ML)
        f["necrotic_share"] = les.necrosis_ml / max(les.total_ml, 1e-9)
        f["arterial_enhancement_hu"] = les.hu.get("arterial", float("nan")) - les.liver_hu.get("arterial", float("nan"))
        f["portal_washout_hu"] = les.liver_hu.get("portal", float("nan")) - les.hu.get("portal", float("nan"))
        f["log_burden_ml"] = math.log(burden + SMOOTH_ML)
        f["n_lesions"] = math.log1p(len(lesions))
        f["pvtt"] = 1.0 if pvtt >= MIN_NEW_ML else 0.0
        for name, column in CLINICAL_FEATURES.items():
            f[name] = _clinical_value(clinical, column, log=name.startswith("log_"))
        diameter = 2.0 * sphere_radius_mm(les.total_ml)
        f["diameter_le_30mm"] = float(diameter <= 30.0)
        f["diameter_le_50mm"] = float(diameter <= 50.0)
        f["diameter_gt_100mm"] = float(diameter > 100.0)
        f["solitary"] = float(len(lesions) == 1)
        f["four_or_more"] = float(len(lesions) >= 4)
        enh = f["arterial_enhancement_hu"]
        f["hypovascular"] = float(enh < HYPERVASCULAR_HU) if math.isfinite(enh) else float("nan")
    return comp, lesions


def _clinical_value(clinical: Mapping[str, Any] | None, column: str, *, log: bool) -> float:
    if not clinical or clinical.get(column) is None:
        return float("nan")
    try:
        v = float(clinical[column])
    except (TypeError, ValueError):
        return float("nan")
    if not math.isfinite(v) or (log and v < 0):
        return float("nan")
    return math.log1p(v) if log else v


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What one virtual follow-up shows, in volumes: per lesion index ``(total_ml, viable_ml)``, the PVTT volume,
    and whether a new lesion appears (its volume in mL)."""

    lesions: dict[int, tuple[float, float]]
    pvtt_ml: float
    new_lesion_ml: float = 0.0

    def unchanged(self, lesions: Sequence[PreLesion], pvtt_ml: float) -> bool:
        return (self.new_lesion_ml == 0 and abs(self.pvtt_ml - pvtt_ml) < 1e-9 and all(
            abs(self.lesions[les.index][0] - les.total_ml) < 1e-9 and abs(self.lesions[les.index][1] - les.viable_ml)
            < 1e-9 for les in lesions))


@dataclass
class Appearance:
    """HU the renderer paints for one (regimen, week): new necrosis, released PVTT, the shift of viable tumour, the
    contrast of a new lesion against the liver (per phase)."""

    necrosis_hu: dict[str, float]
    viable_shift_hu: dict[str, float]
    released_pvtt_hu: dict[str, float]
    new_lesion_contrast_hu: dict[str, float]
    #: per phase ``(reference HU, change at the reference, slope, lowest, highest)``: a surviving lesion of
    #: pre-treatment viable HU ``h`` changes by ``clip(change + slope * (h - reference), lowest, highest)``; a phase
    #: without an entry, or a lesion without viable HU, changes by the median ``viable_shift_hu``
    viable_shift_fit: dict[str, tuple[float, float, float, float, float]] = field(default_factory=dict)
    #: per phase, the HU offset of surviving viable tumour in each band of :data:`ADJACENT_BANDS_MM` from the new
    #: necrosis (a phase without an entry: none)
    viable_adjacent_hu: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def adjacent_offset(self, phase: str, distance_mm: np.ndarray) -> np.ndarray | None:
        """HU offset of surviving viable voxels at ``distance_mm`` from the new necrosis (None: no offset)."""
        offsets = self.viable_adjacent_hu.get(phase)
        if not offsets or not any(offsets):
            return None
        out = np.zeros(np.shape(distance_mm), np.float32)
        lo = 0.0
        for hi, value in zip(ADJACENT_BANDS_MM, offsets):
            out[(distance_mm > lo) & (distance_mm <= hi)] = value
            lo = hi
        return out

    def viable_shift(self, phase: str, pre_hu: float) -> float:
        """HU change of the surviving viable tumour of a lesion whose pre-treatment mean viable HU is ``pre_hu``."""
        fit = self.viable_shift_fit.get(phase)
        if fit is None or not math.isfinite(pre_hu) or not all(math.isfinite(v) for v in fit):
            return self.viable_shift_hu.get(phase, 0.0)
        ref, at_ref, slope, lo, hi = fit
        return float(min(max(at_ref + slope * (pre_hu - ref), lo), hi))


class KineticModel:
    """Fitted per-lesion kinetics (see the module docstring). Arrays are indexed ``[regimen, week]``."""

    def __init__(self, regimens: Sequence[str], weeks: Sequence[int], arrays: Mapping[str, np.ndarray],
                 feature_mean: Sequence[float], feature_sd: Sequence[float], counts: Mapping[str, Any] | None = None,
                 features: Sequence[str] = FEATURES):
        self.features = tuple(str(f) for f in features)
        self.regimens = [str(r) for r in regimens]
        self.weeks = [int(w) for w in weeks]
        self.arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        self.feature_mean = np.asarray(feature_mean, float)
        self.feature_sd = np.asarray(feature_sd, float)
        self.counts = dict(counts or {})
        nr, nw = len(self.regimens), len(self.weeks)
        if len(self.feature_mean) != len(self.features) or len(self.feature_sd) != len(self.features):
            raise ValueError(f"kinetic model: {len(self.feature_mean)} feature means for {len(self.features)} features")
        for key in ARRAY_KEYS:
            if key not in self.arrays:
                raise ValueError(f"kinetic model: missing array {key!r}")
        for key in self.arrays:
            if self.arrays[key].shape[:2] != (nr, nw):
                raise ValueError(f"kinetic model: {key} has shape {self.arrays[key].shape}, expected ({nr}, {nw}, ...)")

    # -- which regimens and weeks ---------------------------------------------------------------------------------
    def fitted(self, regimen: str) -> bool:
        """Whether the training cohort had observed follow-ups of ``regimen``."""
        if regimen not in self.regimens:
            return False
        return bool(np.any(self.arrays["fitted"][self.regimens.index(regimen)] > 0))

    def _week_weights(self, regimen: str, week: float) -> list[tuple[int, float]]:
        """``[(week index, weight)]`` whose weighted sum of per-week log ratios gives ``week``'s (0 at week 0)."""
        r = self.regimens.index(regimen)
        ok = [n for n, _ in enumerate(self.weeks) if self.arrays["fitted"][r, n] > 0]
        if not ok or week <= 0:
            return []
        ws = [self.weeks[n] for n in ok]
        if week >= ws[-1]:
            return [(ok[-1], week / ws[-1])]
        prev_w, prev_n = 0.0, None
        for n, w in zip(ok, ws):
            if week <= w:
                t = (week - prev_w) / (w - prev_w)
                out = [(n, t)]
                if prev_n is not None:
                    out.append((prev_n, 1.0 - t))
                return out
            prev_w, prev_n = float(w), n
        return [(ok[-1], week / ws[-1])]

    def _interp(self, key: str, regimen: str, week: float, x: np.ndarray | None = None) -> float:
        total = 0.0
        r = self.regimens.index(regimen)
        for n, wt in self._week_weights(regimen, week):
            a = self.arrays[key][r, n]
            total += wt * (float(a[0] + a[1:] @ x) if x is not None else float(a))
        return total

    def _interp_mean(self, key: str, regimen: str, week: float) -> np.ndarray:
        """Appearance values at ``week``: nearest observed week (they are medians, not ratios)."""
        r = self.regimens.index(regimen)
        ok = [n for n, _ in enumerate(self.weeks) if self.arrays["fitted"][r, n] > 0]
        if not ok:
            return np.full(self.arrays[key].shape[2:], np.nan)
        n = min(ok, key=lambda m: abs(self.weeks[m] - week))
        return self.arrays[key][r, n]

    # -- prediction --------------------------------------------------------------------------------------------------
    def design(self, features: Mapping[str, float]) -> np.ndarray:
        x = np.array([float(features.get(f, float("nan"))) for f in self.features])
        x = np.where(np.isfinite(x), x, self.feature_mean)
        return (x - self.feature_mean) / self.feature_sd

    def shared(self, target: str, regimen: str, week: float) -> float:
        """Share of the residual variance of ``target`` ("viable" / "total") that a patient's lesions have in common
        (1 for a model fitted before it was measured: every lesion follows the patient's latent response)."""
        key = f"shared_{target}"
        if key not in self.arrays:
            return 1.0
        return float(np.clip(self._interp_mean(key, regimen, week), 0.0, 1.0))

    def plan(self, lesions: Sequence[PreLesion], pvtt_ml: float, regimen: str, week: float, z: float = 0.0,
             u_new: float = 1.0, lesion_z: Mapping[int, float] | None = None) -> Plan:
        """Volumes of one virtual follow-up for latent response ``z`` (0 = median) and new-lesion draw ``u_new``
        (a new lesion appears when ``u_new < p``; the median follow-up uses 0.5). ``lesion_z``: each lesion's own
        deviation (N(0, 1) per lesion index; none = 0): a lesion's residual is ``sd * (sqrt(rho) z + sqrt(1 - rho)
        lesion_z)`` with ``rho`` the share its patient's lesions have in common (:meth:`shared`)."""
        if not self.fitted(regimen) or week <= 0:
            return Plan({les.index: (les.total_ml, les.viable_ml) for les in lesions}, pvtt_ml)
        out = {}
        rho = {t: self.shared(t, regimen, week) for t in ("viable", "total")}
        mix = {t: (math.sqrt(r), math.sqrt(1.0 - r)) for t, r in rho.items()}
        for les in lesions:
            x = self.design(les.features)
            e = float((lesion_z or {}).get(les.index, 0.0))
            zv = mix["viable"][0] * z + mix["viable"][1] * e
            zt = mix["total"][0] * z + mix["total"][1] * e
            yv = self._interp("beta_viable", regimen, week, x) + zv * self._interp("sd_viable", regimen, week)
            yt = self._interp("beta_total", regimen, week, x) + zt * self._interp("sd_total", regimen, week)
            v = max(0.0, (les.viable_ml + SMOOTH_ML) * math.exp(yv) - SMOOTH_ML)
            t = max(v, (les.total_ml + SMOOTH_ML) * math.exp(yt) - SMOOTH_ML)
            out[les.index] = (t, v)
        pv = 0.0
        if pvtt_ml > 0:
            yp = self._interp("pvtt_log_ratio", regimen, week) + z * self._interp("pvtt_sd", regimen, week)
            pv = max(0.0, (pvtt_ml + SMOOTH_ML) * math.exp(yp) - SMOOTH_ML)
        p_new = self.new_lesion_probability(regimen, week)
        new_ml = float(self._interp_mean("new_lesion_ml", regimen, week)) if u_new < p_new else 0.0
        return Plan(out, pv, new_ml if math.isfinite(new_ml) else 0.0)

    def new_lesion_probability(self, regimen: str, week: float) -> float:
        if not self.fitted(regimen) or week <= 0:
            return 0.0
        return float(np.clip(self._interp("new_lesion_p", regimen, week), 0.0, 1.0))

    def appearance(self, regimen: str, week: float) -> Appearance:
        def per_phase(key, default):
            vals = self._interp_mean(key, regimen, week)
            return {p: float(v) if math.isfinite(v) else default for p, v in zip(PHASES, vals)}

        shift_fit = {}
        if "viable_shift_fit" in self.arrays:
            for p, row in zip(PHASES, self._interp_mean("viable_shift_fit", regimen, week)):
                if np.all(np.isfinite(row)) and row[2] != 0.0:
                    shift_fit[p] = tuple(float(v) for v in row)
        adjacent = {}
        if "viable_adjacent_hu" in self.arrays:
            for p, row in zip(PHASES, self._interp_mean("viable_adjacent_hu", regimen, week)):
                if np.all(np.isfinite(row)) and np.any(row != 0.0):
                    adjacent[p] = tuple(float(v) for v in row)
        return Appearance(necrosis_hu=per_phase("necrosis_hu", 25.0), viable_shift_hu=per_phase("viable_shift_hu", 0.0),
                          released_pvtt_hu=per_phase("released_pvtt_hu", float("nan")),
                          new_lesion_contrast_hu=per_phase("new_lesion_contrast_hu", 0.0), viable_shift_fit=shift_fit,
                          viable_adjacent_hu=adjacent)

    # -- persistence ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v, np.float32) for k, v in self.arrays.items()}
        out["feature_mean"] = self.feature_mean.astype(np.float32)
        out["feature_sd"] = self.feature_sd.astype(np.float32)
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], regimens: Sequence[str], weeks: Sequence[int],
                   counts: Mapping[str, Any] | None = None, features: Sequence[str] | None = None) -> KineticModel:
        unknown = [f for f in (features or ()) if f not in FEATURES]
        if unknown:
            raise ValueError(f"covariates {', '.join(map(str, unknown))} are not computed by this version")
        arr = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float64) for k, v in state.items()}
        return cls(regimens, weeks, {k: arr[k] for k in ARRAY_KEYS + OPTIONAL_ARRAY_KEYS if k in arr},
                   arr["feature_mean"], arr["feature_sd"], counts, features=features or LEGACY_FEATURES)


#: arrays of a kinetic model: [regimen, week] (+ [coefficient] or [phase])
ARRAY_KEYS = ("fitted", "beta_viable", "beta_total", "sd_viable", "sd_total", "pvtt_log_ratio", "pvtt_sd",
              "new_lesion_p", "new_lesion_ml", "necrosis_hu", "viable_shift_hu", "released_pvtt_hu",
              "new_lesion_contrast_hu")
#: arrays a model fitted by an earlier version lacks: ``viable_shift_fit`` [regimen, week, phase, (reference HU, change
#: there, slope, lowest, highest)] (without it every lesion's viable HU changes by the median)
#: ``shared_viable`` / ``shared_total`` [regimen, week]: the share of the residual variance a patient's lesions have in
#: common (without them every lesion follows the patient's latent response alone, as the first models did)
#: ``viable_adjacent_hu`` [regimen, week, phase, band]: the HU offset of surviving viable tumour in each band of
#: :data:`ADJACENT_BANDS_MM` from the new necrosis (without it every surviving voxel of a lesion changes alike)
OPTIONAL_ARRAY_KEYS = ("viable_shift_fit", "shared_viable", "shared_total", "viable_adjacent_hu")


# ---------------------------------------------------------------------------------------------------------------
# training records from observed follow-ups

@dataclass
class FollowUpRecord:
    """What one observed follow-up shows, per pre-treatment lesion and for the patient."""

    regimen: str
    weeks: int
    lesions: list[dict[str, Any]]  # features + pre/post volumes
    pvtt_pre_ml: float
    pvtt_post_ml: float
    new_lesions_ml: list[float]
    necrosis_hu: dict[str, list[float]]  # mean HU of the follow-up necrosis of each lesion with new necrosis
    viable_shift_hu: dict[str, list[float]]  # follow-up minus pre mean viable HU per lesion
    released_pvtt_hu: dict[str, float]
    new_lesion_contrast_hu: dict[str, list[float]]
    patient_id: str = ""  # links a patient's follow-ups (the sequential fit of later weeks); "" when unknown
    #: the pre-treatment mean viable HU of the lesion of each entry of ``viable_shift_hu`` (same order)
    viable_pre_hu: dict[str, list[float]] = field(default_factory=dict)
    #: per phase and band of :data:`ADJACENT_BANDS_MM`: mean HU of a lesion's viable tumour in that band from its new
    #: necrosis minus that of its viable tumour beyond the bands (one value per lesion with enough voxels in both)
    viable_adjacent_hu: dict[str, list[list[float]]] = field(default_factory=dict)


def followup_record(pre_phases: Mapping[str, np.ndarray], pre_labels: np.ndarray, post_phases: Mapping[str, np.ndarray],
                    post_labels: np.ndarray, geometry: Geometry, regimen: str, weeks: int,
                    clinical: Mapping[str, Any] | None = None,
                    pre_lesions: tuple[np.ndarray, list[PreLesion]] | None = None,
                    patient_id: str = "") -> FollowUpRecord:
    """Match an observed follow-up (on the pre-treatment grid) to the pre-treatment lesions."""
    comp, lesions = pre_lesions if pre_lesions is not None else find_lesions(pre_labels, geometry, pre_phases,
                                                                              clinical)
    vox = geometry.voxel_volume_ml
    sp = _spacing_kji(geometry)
    post_labels = np.asarray(post_labels)
    post_tumour = np.isin(post_labels, (VIABLE_TUMOR, NECROSIS))
    if lesions:
        dist, (ik, ij, ii) = ndimage.distance_transform_edt(comp == 0, sampling=sp, return_indices=True)
        owner = np.where(dist <= MATCH_MM, comp[ik, ij, ii], 0)
        del ik, ij, ii
    else:
        owner = np.zeros(post_labels.shape, np.int32)
    rec_lesions = []
    nec_hu = {p: [] for p in PHASES}
    shift = {p: [] for p in PHASES}
    shift_pre = {p: [] for p in PHASES}
    adjacent = {p: [[] for _ in ADJACENT_BANDS_MM] for p in PHASES}
    pre_nec_all = np.asarray(pre_labels) == NECROSIS
    for les in lesions:
        mine = post_tumour & (owner == les.index)
        viable = mine & (post_labels == VIABLE_TUMOR)
        nec = mine & (post_labels == NECROSIS)
        rec_lesions.append({**les.features, "pre_total_ml": les.total_ml, "pre_viable_ml": les.viable_ml,
                            "post_total_ml": float(mine.sum()) * vox, "post_viable_ml": float(viable.sum()) * vox})
        new_nec = float(nec.sum()) * vox - les.necrosis_ml
        for p in PHASES:
            if new_nec >= 0.5 and nec.any():
                nec_hu[p].append(float(np.asarray(post_phases[p])[nec].mean()))
        if viable.sum() * vox < 0.5:
            continue
        bands, far = _adjacent_bands(viable, nec & ~pre_nec_all, sp)
        if int(far.sum()) < MIN_BAND_VOXELS:
            continue  # all of what survives lies next to the new necrosis: no tissue change to measure
        for p in PHASES:
            post = np.asarray(post_phases[p])
            far_hu = float(post[far].mean())
            if math.isfinite(les.hu.get(p, float("nan"))):
                shift[p].append(far_hu - les.hu[p])
                shift_pre[p].append(float(les.hu[p]))
            for b, band in enumerate(bands):
                if int(band.sum()) >= MIN_BAND_VOXELS:
                    adjacent[p][b].append(float(post[band].mean()) - far_hu)
    new_mask = post_tumour & (owner == 0)
    new_ml, contrast = [], {p: [] for p in PHASES}
    if new_mask.any():
        nc, nn = ndimage.label(new_mask, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(nc.ravel())[1:] * vox
        liver = post_labels == LIVER
        liver_mean = {p: _mean(np.asarray(post_phases[p])[liver]) for p in PHASES}
        for i, s in enumerate(sizes, start=1):
            if s >= MIN_NEW_ML:
                new_ml.append(float(s))
                m = (nc == i) & (post_labels == VIABLE_TUMOR)
                if m.any():
                    for p in PHASES:
                        contrast[p].append(float(np.asarray(post_phases[p])[m].mean()) - liver_mean[p])
    pre_pvtt = np.asarray(pre_labels) == PVTT
    released = pre_pvtt & (post_labels != PVTT)
    rel_hu = {p: (_mean(np.asarray(post_phases[p])[released]) if released.sum() >= 5 else float("nan"))
              for p in PHASES}
    return FollowUpRecord(regimen=regimen, weeks=int(weeks), lesions=rec_lesions,
                          pvtt_pre_ml=float(pre_pvtt.sum()) * vox,
                          pvtt_post_ml=float((post_labels == PVTT).sum()) * vox,
                          new_lesions_ml=new_ml, necrosis_hu=nec_hu, viable_shift_hu=shift, released_pvtt_hu=rel_hu,
                          new_lesion_contrast_hu=contrast, patient_id=str(patient_id), viable_pre_hu=shift_pre,
                          viable_adjacent_hu=adjacent)


def distance_near(source: np.ndarray, near: np.ndarray, sp: np.ndarray,
                  reach_mm: float = ADJACENT_BANDS_MM[-1]) -> np.ndarray:
    """Distance (mm) of each voxel of ``near`` from the nearest voxel of ``source`` (boolean arrays of one shape),
    computed on the box around ``near`` widened by ``reach_mm`` (a farther source is farther than the reach);
    ``inf`` outside ``near`` and where no source lies in that box."""
    out = np.full(near.shape, np.inf, np.float32)
    box = foreground_box(near)
    if box is None:
        return out
    pad = [int(math.ceil(reach_mm / s)) + 1 for s in sp]
    sl = tuple(slice(max(0, a - q), min(n, b + q)) for a, b, q, n in zip(*box, pad, near.shape))
    src = source[sl]
    if src.any():
        out[sl] = np.where(near[sl], ndimage.distance_transform_edt(~src, sampling=sp), np.inf)
    return out


def _adjacent_bands(viable: np.ndarray, new_necrosis: np.ndarray, sp: np.ndarray
                    ) -> tuple[list[np.ndarray], np.ndarray]:
    """The viable voxels in each distance band of :data:`ADJACENT_BANDS_MM` from ``new_necrosis`` and those beyond
    the last band (all of ``viable`` when there is no new necrosis within its reach)."""
    dist = distance_near(new_necrosis, viable, sp)
    edges = (0.0,) + ADJACENT_BANDS_MM
    bands = [viable & (dist > lo) & (dist <= hi) for lo, hi in zip(edges, edges[1:])]
    return bands, viable & (dist > ADJACENT_BANDS_MM[-1])


# ---------------------------------------------------------------------------------------------------------------
def ridge_loo(X: np.ndarray, y: np.ndarray, grid: Sequence[float] = RIDGE_GRID, weights: np.ndarray | None = None,
              free_last: int = 0) -> tuple[np.ndarray, float, float]:
    """Weighted ridge regression with an unpenalised intercept (``X`` standardised, no intercept column; the last
    ``free_last`` columns unpenalised too); the penalty with the smallest exact (weighted) leave-one-out squared
    error. Returns ``(coefficients [intercept, ...], residual SD (weighted LOO), penalty)``."""
    n, d = X.shape
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    w = w / w.mean()
    A = np.hstack([np.ones((n, 1)), X])
    Aw = A * w[:, None]
    best = None
    for lam in grid:
        P = np.eye(d + 1) * lam
        P[0, 0] = 0.0
        for c in range(d + 1 - free_last, d + 1):
            P[c, c] = 1e-9  # unpenalised (a constant column stays solvable)
        M = np.linalg.solve(A.T @ Aw + P, Aw.T)
        beta = M @ y
        h = np.einsum("ij,ji->i", A, M)
        loo = (y - A @ beta) / np.clip(1.0 - h, 1e-6, None)
        err = float(np.sum(w * loo ** 2) / np.sum(w))
        if best is None or err < best[0]:
            best = (err, beta, lam)
    err, beta, lam = best
    return beta, math.sqrt(err), float(lam)


def joint_ridge(X: np.ndarray, groups: np.ndarray, y: np.ndarray, n_groups: int, weights: np.ndarray,
                grid: Sequence[float] = RIDGE_GRID, interaction: Sequence[float] = INTERACTION_GRID
                ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One weighted ridge over all regimens of a week: an unpenalised intercept per regimen, covariate slopes shared
    by every regimen (penalty ``lam``) plus per-regimen deviations from them (penalty ``lam * kappa``; kappa = inf:
    shared slopes only), both chosen by exact weighted leave-one-out error. Returns ``(coefficients per group
    [n_groups, 1 + d], leave-one-out residuals, lam, kappa)``."""
    n, d = X.shape
    w = np.asarray(weights, float)
    w = w / w.mean()
    G = np.zeros((n, n_groups))
    G[np.arange(n), groups] = 1.0
    best = None
    for kappa in interaction:
        inter = [] if not math.isfinite(kappa) else [X * G[:, [g]] for g in range(n_groups)]
        A = np.hstack([G, X, *inter])
        Aw = A * w[:, None]
        for lam in grid:
            pen = np.concatenate([np.zeros(n_groups), np.full(d, lam), np.full(len(inter) * d, lam * kappa)])
            M = np.linalg.solve(A.T @ Aw + np.diag(pen) + 1e-9 * np.eye(A.shape[1]), Aw.T)
            beta = M @ y
            h = np.einsum("ij,ji->i", A, M)
            loo = (y - A @ beta) / np.clip(1.0 - h, 1e-6, None)
            err = float(np.sum(w * loo ** 2) / np.sum(w))
            if best is None or err < best[0]:
                best = (err, beta, loo, lam, kappa)
    _err, beta, loo, lam, kappa = best
    coef = np.zeros((n_groups, 1 + d))
    for g in range(n_groups):
        coef[g, 0] = beta[g]
        coef[g, 1:] = beta[n_groups:n_groups + d]
        if math.isfinite(kappa):
            coef[g, 1:] += beta[n_groups + d * (1 + g):n_groups + d * (2 + g)]
    return coef, loo, float(lam), float(kappa)


def _median(values: Sequence[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


def fit_viable_shift(pre_hu: Sequence[float], shift_hu: Sequence[float], *, min_pairs: int = MIN_SHIFT_PAIRS
                     ) -> tuple[float, tuple[float, float, float, float, float] | None]:
    """The change of surviving viable HU of one (regimen, week, phase) from its (pre-treatment viable HU, change)
    pairs: ``(median change, line)``, the line ``(mean pre HU, mean change, slope, 5 %, 95 % of the changes)`` of least
    squares in the pre HU where it has a lower exact leave-one-out squared error than the leave-one-out median (with at
    least ``min_pairs`` pairs), else None."""
    x = np.asarray(pre_hu, float)
    y = np.asarray(shift_hu, float)
    med = _median(list(y))  # every change, also those whose pre HU is not known
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(y)
    if n < max(min_pairs, 3) or float(np.ptp(x)) <= 0.0:
        return med, None
    srt = np.sort(y)
    # the median of the others: drop one value of the sorted list
    loo_med = np.empty(n)
    order = np.argsort(y, kind="stable")
    for rank, i in enumerate(order):
        loo_med[i] = float(np.median(np.delete(srt, rank)))
    err_med = float(np.mean((y - loo_med) ** 2))
    xm = float(x.mean())
    xc = x - xm
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean())) / sxx
    base = float(y.mean())
    resid = y - (base + slope * xc)
    lev = 1.0 / n + xc ** 2 / sxx
    err_lin = float(np.mean((resid / (1.0 - lev)) ** 2))
    if err_lin >= err_med:
        return med, None
    lo, hi = (float(v) for v in np.percentile(y, [5.0, 95.0]))
    return med, (xm, base, slope, lo, hi)


def _aligned(pre_hu: Sequence[float] | None, shifts: Sequence[float]) -> list[float]:
    """The pre-treatment HU of each change (NaN for records of an earlier version, which did not keep them)."""
    if pre_hu is None or len(pre_hu) != len(shifts):
        return [float("nan")] * len(shifts)
    return [float(v) for v in pre_hu]


def _lesion_log_ratio(lesion: Mapping[str, Any], target: str) -> float:
    return math.log((lesion[f"post_{target}_ml"] + SMOOTH_ML) / (lesion[f"pre_{target}_ml"] + SMOOTH_ML))


def _sequential_weeks(records: Sequence[FollowUpRecord], regimens: Sequence[str], weeks: Sequence[int],
                      arrays: dict[str, np.ndarray], summary: dict[str, Any], design, lesion_weights, *,
                      min_lesions: int, min_patients: int) -> None:
    """Later weeks fitted through the earlier one (in place): patients leave follow-up for reasons their earlier
    response shows (progression, death), so the lesions still observed at week ``w`` are the better responders, and
    a fit on them alone promises everyone their response. Per regimen and consecutive observed weeks ``(w', w)``,
    on the lesions of patients observed at both, ``y_w = b0 + x . b + c y_w'`` (ridge on ``b``, penalty by
    leave-one-out; the carry ``c`` is not shrunk, shrinking it towards 0 would bring the survivors' bias back);
    then ``E[y_w | x] = b0 + c a0 + x . (b + c a)`` with ``a`` the week-``w'`` coefficients (themselves sequential),
    and the residual SD ``sqrt(s^2 + c^2 s_w'^2)``: valid when leaving depends on what week ``w'`` showed (missing at
    random given the earlier follow-up). Cells with fewer than ``min_lesions`` lesion pairs or ``min_patients``
    patients keep their direct fit; records without a patient id are not linked."""
    by_key = {(rec.patient_id, rec.regimen, rec.weeks): rec for rec in records if rec.patient_id}
    for r_i, reg in enumerate(regimens):
        fitted = [n for n in range(len(weeks)) if arrays["fitted"][r_i, n] > 0]
        for prev_n, n in zip(fitted, fitted[1:]):
            w_prev, w = weeks[prev_n], weeks[n]
            pairs = []
            for rec in records:
                before = by_key.get((rec.patient_id, reg, w_prev)) if rec.patient_id else None
                if rec.regimen != reg or rec.weeks != w or before is None:
                    continue
                if len(before.lesions) != len(rec.lesions) or any(
                        abs(a["pre_total_ml"] - b["pre_total_ml"]) > 1e-6 for a, b in zip(before.lesions, rec.lesions)):
                    continue  # not the same pre-treatment lesions: not linkable
                pairs.append((before, rec))
            now = [le for _, rec in pairs for le in rec.lesions]
            if len(now) < min_lesions or len(pairs) < min_patients:
                continue
            then = [le for before, _ in pairs for le in before.lesions]
            X, lw = design(now), lesion_weights(now)
            cell = summary[reg].setdefault(f"w{w:02d}", {})
            for target in ("viable", "total"):
                y_prev = np.array([_lesion_log_ratio(le, target) for le in then])
                y = np.array([_lesion_log_ratio(le, target) for le in now])
                beta, sd_loo, _lam = ridge_loo(np.hstack([X, y_prev[:, None]]), y, weights=lw, free_last=1)
                carry = float(beta[-1])
                a = arrays[f"beta_{target}"][r_i, prev_n]
                arrays[f"beta_{target}"][r_i, n] = np.concatenate([[beta[0] + carry * a[0]],
                                                                   beta[1:-1] + carry * a[1:]])
                sd = math.sqrt(sd_loo ** 2 + (carry * arrays[f"sd_{target}"][r_i, prev_n]) ** 2)
                arrays[f"sd_{target}"][r_i, n] = sd
                cell[f"sd_{target}"] = round(sd, 3)
                cell[f"sequential_{target}"] = {"from_week": int(w_prev), "carry": round(carry, 3),
                                                "patients": len(pairs), "lesions": len(now)}


def residual_share(residuals: Sequence[float], groups: Sequence[Any], *, min_groups: int = MIN_SHARING_PATIENTS
                   ) -> tuple[float | None, int]:
    """Share of the variance of ``residuals`` that the members of a group (a patient's lesions) have in common:
    ``1 - s_within^2 / s_total^2`` (one-way analysis of variance; ``s_within`` over the groups of two or more, clipped
    to [0, 1]); ``(None, n)`` with fewer than ``min_groups`` such groups (``n``: how many there were)."""
    r = np.asarray(residuals, float)
    g = np.asarray(groups)
    by: dict[Any, list[float]] = {}
    for value, key in zip(r, g):
        by.setdefault(key, []).append(float(value))
    multi = [np.asarray(v) for v in by.values() if len(v) >= 2]
    if len(multi) < min_groups or r.size < 3:
        return None, len(multi)
    within = sum(float(((v - v.mean()) ** 2).sum()) for v in multi) / sum(len(v) - 1 for v in multi)
    total = float(r.var(ddof=1))
    if total <= 0:
        return None, len(multi)
    return float(np.clip(1.0 - within / total, 0.0, 1.0)), len(multi)


def _residual_sharing(records: Sequence[FollowUpRecord], regimens: Sequence[str], weeks: Sequence[int],
                      arrays: dict[str, np.ndarray], summary: dict[str, Any], design) -> None:
    """``shared_viable`` / ``shared_total`` per (regimen, week), in place: how much of a lesion's deviation from its
    predicted change its patient's other lesions share (:func:`residual_share` of the fitted model's residuals on the
    training follow-ups, patients by ``patient_id``). A cell with too few patients of two or more lesions takes the
    pooled share of its week, else 1 (every lesion follows the patient's latent response)."""
    pooled: dict[tuple[int, str], float] = {}
    cells: dict[tuple[int, int, str], tuple[float | None, int]] = {}
    for n, w in enumerate(weeks):
        res_all: dict[str, list[float]] = {"viable": [], "total": []}
        grp_all: list[str] = []
        for r_i, reg in enumerate(regimens):
            if arrays["fitted"][r_i, n] <= 0:
                continue
            recs = [rec for rec in records if rec.regimen == reg and rec.weeks == w and rec.patient_id]
            les = [le for rec in recs for le in rec.lesions]
            grp = [rec.patient_id for rec in recs for _ in rec.lesions]
            if not les:
                continue
            A = np.hstack([np.ones((len(les), 1)), design(les)])
            for target in ("viable", "total"):
                y = np.array([_lesion_log_ratio(le, target) for le in les])
                res = y - A @ arrays[f"beta_{target}"][r_i, n]
                cells[(r_i, n, target)] = residual_share(res, grp)
                res_all[target] += list(res - res.mean())  # each regimen's own offset out of the pooled share
            grp_all += [f"{reg}/{g}" for g in grp]
        for target in ("viable", "total"):
            share, _m = residual_share(res_all[target], grp_all) if grp_all else (None, 0)
            pooled[(n, target)] = 1.0 if share is None else share
    for target in ("viable", "total"):
        arrays[f"shared_{target}"] = np.ones((len(regimens), len(weeks)))
    for (r_i, n, target), (share, m) in cells.items():
        value = pooled[(n, target)] if share is None else share
        arrays[f"shared_{target}"][r_i, n] = value
        cell = summary.setdefault(regimens[r_i], {}).setdefault(f"w{weeks[n]:02d}", {})
        cell[f"shared_{target}"] = {"share": round(value, 3), "patients_with_two_or_more_lesions": m,
                                    "from": "this cell" if share is not None else "the week's pooled share"}


def fit_kinetics(records: Sequence[FollowUpRecord], regimens: Sequence[str], *, min_lesions: int = 15,
                 min_patients: int = 8, size_weight: float = SIZE_WEIGHT, joint: bool = True,
                 features: Sequence[str] = FEATURES, sequential: bool = True) -> tuple[KineticModel, dict[str, Any]]:
    """Fit the kinetic model on observed follow-up records; returns the model and a summary for the model card
    (per regimen and week: patients, lesions, penalty, LOO residual SD; regimen-week cells with fewer than
    ``min_lesions`` lesions or ``min_patients`` patients borrow the pooled fit of that week, its intercepts shifted
    towards the cell's mean residual in proportion to the cell's size)."""
    regimens = [str(r) for r in regimens]
    weeks = sorted({r.weeks for r in records})
    if not weeks:
        raise ValueError("no observed follow-ups to fit the kinetics on")
    features = tuple(features)
    all_x = np.array([[les[f] for f in features] for rec in records for les in rec.lesions], float)
    if all_x.size == 0:
        raise ValueError("no pre-treatment lesions in the training cohort")
    with warnings.catch_warnings():  # a covariate missing for every lesion (e.g. no AFP column): imputed as 0
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmedian(all_x, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    filled = np.where(np.isfinite(all_x), all_x, mean)
    sd = filled.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)

    def design(lesions):
        x = np.array([[les[f] for f in features] for les in lesions], float).reshape(-1, len(features))
        x = np.where(np.isfinite(x), x, mean)
        return (x - mean) / sd

    nr, nw, d = len(regimens), len(weeks), len(features) + 1
    arrays = {"fitted": np.zeros((nr, nw)), "beta_viable": np.zeros((nr, nw, d)), "beta_total": np.zeros((nr, nw, d)),
              "sd_viable": np.zeros((nr, nw)), "sd_total": np.zeros((nr, nw)), "pvtt_log_ratio": np.zeros((nr, nw)),
              "pvtt_sd": np.zeros((nr, nw)), "new_lesion_p": np.zeros((nr, nw)),
              "new_lesion_ml": np.full((nr, nw), np.nan)}
    for key in ("necrosis_hu", "viable_shift_hu", "released_pvtt_hu", "new_lesion_contrast_hu"):
        arrays[key] = np.full((nr, nw, len(PHASES)), np.nan)
    arrays["viable_shift_fit"] = np.full((nr, nw, len(PHASES), 5), np.nan)
    arrays["viable_adjacent_hu"] = np.zeros((nr, nw, len(PHASES), len(ADJACENT_BANDS_MM)))
    summary: dict[str, Any] = {}

    def lesion_weights(lesions):
        return np.array([(les["pre_total_ml"] + 1.0) ** size_weight for les in lesions])

    def targets(lesions):
        return tuple(np.array([_lesion_log_ratio(les, target) for les in lesions]) for target in ("viable", "total"))

    joint_fit = {}
    if joint:
        for w in weeks:
            rows = [(regimens.index(rec.regimen), le) for rec in records if rec.weeks == w and rec.regimen in regimens
                    for le in rec.lesions]
            if not rows:
                continue
            groups = np.array([g for g, _ in rows])
            les = [le for _, le in rows]
            X, lw = design(les), lesion_weights(les)
            yv, yt = targets(les)
            cv, loo_v, lam_v, kap_v = joint_ridge(X, groups, yv, len(regimens), lw)
            ct, loo_t, lam_t, kap_t = joint_ridge(X, groups, yt, len(regimens), lw)

            def rms(loo, mask, lw=lw):
                return float(np.sqrt(np.average(loo[mask] ** 2, weights=lw[mask])))

            joint_fit[w] = {"coef": (cv, ct), "all": (rms(loo_v, groups >= 0), rms(loo_t, groups >= 0)),
                            "groups": groups, "loo": (loo_v, loo_t), "rms": rms,
                            "penalty": {"viable": [lam_v, kap_v], "total": [lam_t, kap_t]}}
    # the regimen-by-regimen ridge where every regimen of the week has enough data; per week and target, the joint
    # fit is kept only where its leave-one-out error is lower (model selection on the training cohort only)
    separate: dict[int, dict[int, tuple]] = {}
    use_joint: dict[tuple[int, str], bool] = {}
    for w in weeks:
        cells, complete = {}, True
        for r_i, reg in enumerate(regimens):
            recs = [rec for rec in records if rec.regimen == reg and rec.weeks == w]
            les = [le for rec in recs for le in rec.lesions]
            if les and len(les) >= min_lesions and len(recs) >= min_patients:
                X, lw = design(les), lesion_weights(les)
                yv, yt = targets(les)
                cells[r_i] = (ridge_loo(X, yv, weights=lw), ridge_loo(X, yt, weights=lw), float(lw.sum()))
            elif les:
                complete = False
        separate[w] = cells
        for t_i, target in enumerate(("viable", "total")):
            if not (joint and w in joint_fit):
                use_joint[w, target] = False
            elif not (complete and cells):
                use_joint[w, target] = True
            else:
                sep_err = sum(c[t_i][1] ** 2 * c[2] for c in cells.values()) / sum(c[2] for c in cells.values())
                use_joint[w, target] = joint_fit[w]["all"][t_i] ** 2 <= sep_err
    pooled = {}
    for w in weeks:
        les = [le for rec in records if rec.weeks == w for le in rec.lesions]
        if les:
            X = design(les)
            yv, yt = targets(les)
            lw = lesion_weights(les)
            pooled[w] = (ridge_loo(X, yv, weights=lw), ridge_loo(X, yt, weights=lw))
    for r_i, reg in enumerate(regimens):
        summary[reg] = {}
        for n, w in enumerate(weeks):
            recs = [rec for rec in records if rec.regimen == reg and rec.weeks == w]
            les = [le for rec in recs for le in rec.lesions]
            if not recs:
                continue
            arrays["fitted"][r_i, n] = 1.0
            cell = {"patients": len(recs), "lesions": len(les)}
            if use_joint[w, "viable"] or use_joint[w, "total"] or r_i in separate[w]:
                fits = []
                for t_i, target in enumerate(("viable", "total")):
                    if use_joint[w, target]:
                        jf = joint_fit[w]
                        mine = jf["groups"] == r_i
                        small = len(recs) < min_patients or mine.sum() < min_lesions
                        lam, kappa = jf["penalty"][target]
                        fits.append((jf["coef"][t_i][r_i],
                                     jf["all"][t_i] if small else jf["rms"](jf["loo"][t_i], mine)))
                        cell[f"fit_{target}"] = {"joint": True, "penalty": lam,
                                                 "interaction_penalty_factor": kappa if math.isfinite(kappa)
                                                 else "shared slopes only"}
                    else:
                        beta, sd_loo, lam = separate[w][r_i][t_i]
                        fits.append((beta, sd_loo))
                        cell[f"fit_{target}"] = {"joint": False, "penalty": lam}
                (bv, sv), (bt, st) = fits
            elif w in pooled:
                (bv, sv, _), (bt, st, _) = pooled[w]
                if les:  # shift the pooled intercepts to this regimen's mean residual, shrunk by the count
                    X = design(les)
                    yv, yt = targets(les)
                    k = len(les) / (len(les) + min_lesions)
                    lw = lesion_weights(les)
                    bv = bv.copy()
                    bt = bt.copy()
                    bv[0] += k * float(np.average(yv - (bv[0] + X @ bv[1:]), weights=lw))
                    bt[0] += k * float(np.average(yt - (bt[0] + X @ bt[1:]), weights=lw))
                cell["pooled"] = True
            else:
                arrays["fitted"][r_i, n] = 0.0
                continue
            arrays["beta_viable"][r_i, n], arrays["sd_viable"][r_i, n] = bv, sv
            arrays["beta_total"][r_i, n], arrays["sd_total"][r_i, n] = bt, st
            cell.update(sd_viable=round(sv, 3), sd_total=round(st, 3))
            pv = [math.log((rec.pvtt_post_ml + SMOOTH_ML) / (rec.pvtt_pre_ml + SMOOTH_ML)) for rec in recs
                  if rec.pvtt_pre_ml >= MIN_NEW_ML]
            if pv:
                k = len(pv) / (len(pv) + 3.0)  # shrunk towards no change
                arrays["pvtt_log_ratio"][r_i, n] = k * float(np.mean(pv))
                arrays["pvtt_sd"][r_i, n] = float(np.std(pv)) if len(pv) > 1 else 0.5
            n_new = sum(1 for rec in recs if rec.new_lesions_ml)
            arrays["new_lesion_p"][r_i, n] = (n_new + 0.5) / (len(recs) + 1.0)  # Jeffreys-like
            sizes = [s for rec in recs for s in rec.new_lesions_ml] or [s for rec in records if rec.weeks == w
                                                                          for s in rec.new_lesions_ml]
            if sizes:
                arrays["new_lesion_ml"][r_i, n] = float(np.median(sizes))
            for key in ("necrosis_hu", "new_lesion_contrast_hu"):
                for p_i, p in enumerate(PHASES):
                    arrays[key][r_i, n, p_i] = _median([v for rec in recs for v in getattr(rec, key)[p]])
            for p_i, p in enumerate(PHASES):
                pairs = [(h, d) for rec in recs
                         for h, d in zip(_aligned(rec.viable_pre_hu.get(p), rec.viable_shift_hu[p]),
                                         rec.viable_shift_hu[p])]
                med, line = fit_viable_shift([h for h, _ in pairs], [d for _, d in pairs])
                arrays["viable_shift_hu"][r_i, n, p_i] = med
                if line is not None:
                    arrays["viable_shift_fit"][r_i, n, p_i] = line
                    cell.setdefault("viable_shift_slope", {})[p] = round(line[2], 3)
            for p_i, p in enumerate(PHASES):
                per_band = [rec.viable_adjacent_hu[p] for rec in recs if rec.viable_adjacent_hu.get(p)]
                for b, lists in enumerate(zip(*per_band)):  # records of an earlier format have no bands
                    offsets = [v for values in lists for v in values]
                    if len(offsets) >= MIN_BAND_LESIONS:
                        arrays["viable_adjacent_hu"][r_i, n, p_i, b] = _median(offsets)
                if np.any(arrays["viable_adjacent_hu"][r_i, n, p_i] != 0.0):
                    cell.setdefault("viable_adjacent_hu", {})[p] = [
                        round(float(v), 1) for v in arrays["viable_adjacent_hu"][r_i, n, p_i]]
            for p_i, p in enumerate(PHASES):
                arrays["released_pvtt_hu"][r_i, n, p_i] = _median([rec.released_pvtt_hu[p] for rec in recs])
            cell["new_lesion_probability"] = round(float(arrays["new_lesion_p"][r_i, n]), 3)
            summary[reg][f"w{w:02d}"] = cell
    if sequential:
        _sequential_weeks(records, regimens, weeks, arrays, summary, design, lesion_weights, min_lesions=min_lesions,
                          min_patients=min_patients)
    _residual_sharing(records, regimens, weeks, arrays, summary, design)
    counts = {"followups": len(records), "lesion_followups": int(all_x.shape[0]),
              "followups_per_regimen": {reg: sum(1 for rec in records if rec.regimen == reg) for reg in regimens}}
    model = KineticModel(regimens, weeks, arrays, mean, sd, counts, features=features)
    return model, summary


__all__ = ["ADJACENT_BANDS_MM", "ARRAY_KEYS", "CATEGORY_FEATURES", "FEATURES", "LEGACY_FEATURES", "OPTIONAL_ARRAY_KEYS",
           "Appearance", "FollowUpRecord", "KineticModel", "Plan", "PreLesion", "distance_near", "find_lesions",
           "fit_kinetics", "fit_viable_shift", "followup_record", "residual_share", "ridge_loo", "sphere_radius_mm",
           "tumour_components"]
