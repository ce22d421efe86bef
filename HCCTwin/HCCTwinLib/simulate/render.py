"""Draw a simulated patient's CT at any visit under any regimen, on a chosen voxel grid.

The static anatomy is painted and blurred once per patient; a visit adds the tumour state of that time (lesions,
PVTT, resection) as a change confined to a box around the liver, blurred on its own, then the visit's bolus timing
and noise. Visit randomness (timing, noise) is keyed by the week only, never by the regimen, so the w00 follow-up of
every regimen is the baseline scan and follow-ups of two regimens at one week differ by the treatment alone.
Follow-ups are drawn on the baseline grid (as after registration).
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from .. import labels as L
from .anatomy import LIVER_TISSUES, TUMOR_REPLACEABLE, build_static
from .imaging import blur, blur_delta, correlated_noise, finalize
from .lesions import Canvas, draw_lesion, draw_pvtt, draw_resection
from .outcomes import lesion_state
from .patient import PatientModel, rng_for
from .shapes import Grid
from .treatment import MONTHS_PER_WEEK, TIME, Trajectory

DEFAULT_SHAPE = (64, 192, 192)  # (k, j, i)
DEFAULT_SPACING_Z = 3.5
FAST_SHAPE = (32, 96, 96)
PHASES = ("arterial", "portal")


def make_grid(model: PatientModel, shape=None, fast: bool = False) -> Grid:
    """The patient's scan grid: 192 x 192 x 64 voxels by default, in-plane spacing 1.8-2.2 mm chosen so the body
    fits the field of view, 3.5 mm slices; ``shape`` (k, j, i) or ``fast`` keep the same field of view."""
    a = model.anatomy
    s_xy = float(np.clip((2.0 * a.ax + 24.0) / DEFAULT_SHAPE[2], 1.8, 2.2))
    base = np.array([DEFAULT_SPACING_Z, s_xy, s_xy])  # k, j, i
    target = tuple(int(s) for s in (shape or (FAST_SHAPE if fast else DEFAULT_SHAPE)))
    if len(target) != 3 or min(target) < 8:
        raise ValueError(f"shape must be three sizes (k, j, i) of at least 8 voxels, got {shape!r}")
    spacing_kji = base * np.array(DEFAULT_SHAPE) / np.array(target)
    rng = rng_for(model.seed, model.index, "table")
    table = (0.0, 0.0, -float(rng.uniform(150.0, 450.0)))
    return Grid.make(target, (spacing_kji[2], spacing_kji[1], spacing_kji[0]),
                     (a.xy_center[0], a.xy_center[1], a.z_center), table)


class PatientRenderer:
    """Renders one patient's scans on one grid; keeps the blurred static maps and the visit noise cached."""

    def __init__(self, model: PatientModel, shape=None, fast: bool = False):
        self.model = model
        self.grid = make_grid(model, shape, fast)
        st = build_static(model.anatomy, self.grid)
        self.static = st
        self.base_labels = st.labels
        self.tumor_ok = np.isin(st.tissue, TUMOR_REPLACEABLE) & (st.liver_f <= 1.3)
        sc = model.scanner
        self.sigma = sc.blur_sigma_vox(self.grid.spacing)
        self.bU = blur(st.U, self.sigma)
        self.bEa = blur(st.Ea, self.sigma)
        self.bEp = blur(st.Ep, self.sigma)
        # noise lives in the body (air outside it stays -1000 HU: keeps the files small, as after air masking)
        body = ndimage.binary_dilation(st.body, structure=np.ones((1, 5, 5), bool))
        self.noise_mask = body.astype(np.float32)
        self._noise: dict = {}
        self._field: dict = {}

    # -------------------------------------------------------------------------------------------------------------
    def visit_factors(self, week: int) -> tuple[float, float]:
        """Bolus-timing factors (arterial, portal) of a visit; a property of the visit, not of the regimen."""
        rng = rng_for(self.model.seed, self.model.index, "visit", int(week))
        return float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.2)), float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))

    def noise(self, week: int, phase: str) -> np.ndarray:
        """The visit's noise: the patient's stationary noise field of that phase, circularly shifted by a
        visit-specific offset (a new realisation for every visit at the cost of a copy), inside the body."""
        key = (int(week), phase)
        if key not in self._noise:
            if len(self._noise) >= 8:
                self._noise.pop(next(iter(self._noise)))
            if phase not in self._field:
                rng = rng_for(self.model.seed, self.model.index, "noise", zlib.crc32(phase.encode()))
                sc = self.model.scanner
                self._field[phase] = correlated_noise(rng, self.grid.shape, sc.noise_sigma_vox(self.grid.spacing),
                                                      sc.noise_sd)
            rng = rng_for(self.model.seed, self.model.index, "noise-shift", int(week), zlib.crc32(phase.encode()))
            shift = tuple(int(rng.integers(0, s)) for s in self.grid.shape)
            self._noise[key] = np.roll(self._field[phase], shift, axis=(0, 1, 2)) * self.noise_mask
        return self._noise[key]

    # -------------------------------------------------------------------------------------------------------------
    def render(self, traj: Trajectory, week: int) -> dict[str, np.ndarray]:
        """Images (arterial, portal: float32 HU; labels: uint8) of a trajectory at a visit week."""
        it = int(np.clip(np.rint(week * MONTHS_PER_WEEK / (TIME[1] - TIME[0])), 0, len(TIME) - 1))
        t = float(TIME[it])
        m = self.model
        st = self.static
        cv = Canvas(grid=self.grid, U=st.U.copy(), Ea=st.Ea.copy(), Ep=st.Ep.copy(), labels=self.base_labels.copy(),
                    tumor_ok=self.tumor_ok)
        if traj.resection_time is not None and t >= traj.resection_time:
            ids = {i for i in range(len(m.lesions)) if traj.resected[i]}
            draw_resection(cv, m.lesions, ids, t - traj.resection_time, st.tissue, LIVER_TISSUES)
        states = [lesion_state(traj, i, it) for i in range(len(m.lesions))]
        for i in sorted(range(len(states)), key=lambda i: -states[i].total_ml):
            draw_lesion(cv, m.lesions[i], states[i])
        if m.pvtt is not None and not (traj.pvtt_resected and t >= (traj.resection_time or np.inf)):
            draw_pvtt(cv, m.pvtt, float(traj.P[it]))
        fa, fp = self.visit_factors(week)
        off = np.float32(m.scanner.hu_offset)
        art = self.bU + np.float32(fa) * self.bEa + off
        por = self.bU + np.float32(fp) * self.bEp + off
        if cv.bbox is not None:
            bb = cv.bbox
            dU = cv.U[bb] - st.U[bb]
            for img, f, E, cE in ((art, fa, st.Ea, cv.Ea), (por, fp, st.Ep, cv.Ep)):
                delta = dU + np.float32(f) * (cE[bb] - E[bb])
                if np.any(delta):
                    pb, d = blur_delta(delta, bb, self.sigma, self.grid.shape)
                    img[pb] += d
        art += self.noise(week, "arterial")
        por += self.noise(week, "portal")
        return {"arterial": finalize(art), "portal": finalize(por), "labels": cv.labels}


def label_volumes_ml(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    counts = np.bincount(labels.ravel(), minlength=L.MAX_LABEL + 1)
    return {info.key: float(counts[info.value] * voxel_ml) for info in L.LABELS}
