"""HCC lesions and portal-vein tumour thrombus (PVTT): their geometry in millimetres and how a lesion state is drawn.

A :class:`Lesion` is a lobulated ellipsoid with its own enhancement pattern (arterial hyperenhancement and
portal-venous washout, or a hypovascular variant), capsule, mosaic texture and spontaneous necrotic core. Its size
at any time comes from the growth/kill model (:mod:`.treatment`) as a :class:`LesionState` (viable, necrotic and
lipiodol-laden volume); geometry rules (below) turn volumes into voxels, and the same rules give the measured
diameters used for mRECIST, so that images and ground-truth response agree:

- *shell* (untreated, or less than 10 % treatment necrosis): viable tumour around a central necrotic core; the
  viable diameter is the outer (axial) diameter.
- *nodule* (after treatment): the residual viable tumour is one eccentric nodule inside the treated lesion; the rest
  is necrotic (and, after TACE, lipiodol-laden). The viable diameter is the nodule's axial diameter.

Label values: viable tumour 2 (including its capsule), necrosis / lipiodol 3, PVTT 4 (see :mod:`HCCTwinLib.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import labels as L
from .anatomy import Anatomy
from .shapes import Grid, Waves, capsule_distance, local_coords, rot_z

NODULE_THRESHOLD = 0.10  # treatment-necrosis fraction from which the viable tumour is drawn as a residual nodule
VISIBLE_MM = 5.0  # lesions smaller than this (equivalent diameter) are not drawn
MEASURABLE_MM = 10.0  # mRECIST: measurable lesion / new lesion size


def r_eq_mm(volume_ml) -> np.ndarray:
    """Equivalent-sphere radius (mm) of a volume (mL)."""
    return np.cbrt(np.maximum(np.asarray(volume_ml, float), 0.0) * 1000.0 * 3.0 / (4.0 * np.pi))


def volume_ml(radius_mm) -> np.ndarray:
    return 4.0 / 3.0 * np.pi * np.asarray(radius_mm, float) ** 3 / 1000.0


@dataclass
class Lesion:
    index: int
    center: np.ndarray
    angle: float
    axes: np.ndarray  # axis factors (product 1); axial longest diameter = 2 * r_eq * max(axes[:2])
    volume0_ml: float  # total volume at baseline (viable + necrotic)
    necrosis0: float  # spontaneous necrotic fraction at baseline
    occult: bool  # below detection at baseline (a future "new lesion")
    lobe: str
    hypervascular: bool
    u_hu: float
    ea_hu: float
    ep_hu: float
    tex_amp: float
    capsule_mm: float  # 0 = no capsule
    capsule_ep: float
    lipiodol_hu: float
    ecc_dir: np.ndarray
    tex: Waves
    lob: Waves
    lob_amp: float

    @property
    def axial_factor(self) -> float:
        return float(max(self.axes[0], self.axes[1]))

    def diameter_mm(self, volume: float) -> float:
        """Longest axial diameter of a volume of this lesion's shape."""
        return float(2.0 * r_eq_mm(volume) * self.axial_factor)


@dataclass
class LesionState:
    """A lesion at one time under one regimen (volumes in mL)."""

    viable_ml: float
    necrosis_ml: float  # all necrosis (spontaneous + treatment, incl. lipiodol-laden)
    treated_ml: float  # necrosis caused by treatment (incl. lipiodol-laden)
    lipiodol_ml: float  # lipiodol-laden part of the treated necrosis
    lipiodol_level: float = 1.0  # fraction of the initial lipiodol density left (wash-out)
    devasc: float = 0.0  # loss of enhancement of viable tumour (TKI effect), 0..1
    resected: bool = False

    @property
    def total_ml(self) -> float:
        return self.viable_ml + self.necrosis_ml

    @property
    def mode(self) -> str:
        tot = self.total_ml
        return "nodule" if tot > 0 and self.treated_ml >= NODULE_THRESHOLD * tot else "shell"


def nodule_stretch(viable_ml, total_ml):
    """Residual viable tumour in a treated lesion is crescent-like along the lesion wall: its in-plane axes are
    stretched by ``s = (total / viable) ** (1/6)`` (at most 1.6) and its radial axis compressed by ``1 / s**2``
    (same volume). A partly necrotic lesion therefore measures larger than a sphere of its viable volume would."""
    ratio = np.asarray(total_ml, float) / np.maximum(np.asarray(viable_ml, float), 1e-9)
    return np.clip(ratio, 1.0, None) ** (1.0 / 6.0) if np.ndim(ratio) else min(max(ratio, 1.0) ** (1 / 6), 1.6)


def viable_diameter_mm(lesion: Lesion, st: LesionState) -> float:
    """mRECIST longest viable diameter (mm) as drawn: 0 when no viable tumour of at least VISIBLE_MM is left."""
    if st.resected or lesion.diameter_mm(st.viable_ml) < VISIBLE_MM:
        return 0.0
    if st.mode == "shell":
        return lesion.diameter_mm(st.total_ml)
    return lesion.diameter_mm(st.viable_ml) * float(nodule_stretch(st.viable_ml, st.total_ml))


@dataclass
class PVTT:
    """Thrombus along a portal path from a segmental branch (distal) towards the trunk (proximal)."""

    grade: int  # Vp1..Vp4
    segments: list  # [(p_distal, p_proximal, r_distal, r_proximal)]
    seg_start: np.ndarray  # arc length at each segment's distal end (mm)
    seg_len: np.ndarray
    length0_mm: float
    volume0_ml: float
    expand: float = 1.15  # expansile thrombus: radius factor over the lumen

    @property
    def path_length(self) -> float:
        return float(self.seg_start[-1] + self.seg_len[-1])

    def volume_for_length(self, length_mm: float) -> float:
        vol = 0.0
        for (_p0, _p1, r0, r1), s0, ln in zip(self.segments, self.seg_start, self.seg_len):
            if length_mm <= s0:
                break
            frac = min(1.0, (length_mm - s0) / max(ln, 1e-6))
            r_end = r0 + frac * (r1 - r0)
            vol += np.pi * ((r0 + r_end) / 2 * self.expand) ** 2 * frac * ln
        return vol / 1000.0

    def length_for_volume(self, volume: float) -> float:
        """Thrombus length (mm) that holds ``volume`` mL, filling from the distal end."""
        if volume <= 0:
            return 0.0
        lo, hi = 0.0, self.path_length
        if self.volume_for_length(hi) <= volume:
            return hi
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if self.volume_for_length(mid) < volume:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)


# -------------------------------------------------------------------------------------------------------------------
# sampling
# -------------------------------------------------------------------------------------------------------------------

def _lesion_look(rng: np.random.Generator, anat: Anatomy, hyper: bool, diameter: float) -> dict:
    from .anatomy import T
    lu, la, lp = anat.hu[T.LIVER]
    u = lu - rng.uniform(4, 16)
    if hyper:
        ea = la + rng.uniform(52, 95)
        washout = rng.uniform(12, 38)
        cap_p = 0.35 + 0.35 * min(diameter / 40.0, 1.0)
        lip = rng.uniform(650, 1400)
    else:
        ea = rng.uniform(4, 16)
        washout = rng.uniform(28, 48)
        cap_p = 0.15
        lip = rng.uniform(420, 750)
    ep = lu + lp - washout - u
    capsule = rng.uniform(1.4, 2.6) if (rng.random() < cap_p and diameter >= 12) else 0.0
    return dict(u_hu=float(u), ea_hu=float(ea), ep_hu=float(ep), tex_amp=float(rng.uniform(5, 12)),
                capsule_mm=float(capsule), capsule_ep=float(lu + lp + rng.uniform(12, 28) - 45.0),
                lipiodol_hu=float(lip))


def _new_lesion(rng, anat: Anatomy, index: int, center, diameter: float, hyper: bool, occult: bool) -> Lesion:
    axes = np.exp(rng.normal(0, 0.12, 3))
    axes /= np.cbrt(np.prod(axes))
    axial = max(axes[0], axes[1])
    r_eq = diameter / (2.0 * axial)
    nec = 0.0
    if diameter >= 30 and not occult:
        nec = float(np.clip(rng.normal(0.22 * (diameter - 30) / 70 + (0.08 if not hyper else 0.0), 0.07), 0, 0.45))
    ecc = rng.normal(size=3)
    ecc[2] *= 0.5
    ecc /= np.linalg.norm(ecc)
    return Lesion(index=index, center=np.asarray(center, float), angle=float(rng.uniform(0, np.pi)), axes=axes,
                  volume0_ml=float(volume_ml(r_eq)), necrosis0=nec, occult=occult, lobe=anat.lobe_of(center),
                  hypervascular=hyper, ecc_dir=ecc, tex=Waves.sample(rng, 6, (6, 18)),
                  lob=Waves.sample(rng, 4, (1.4, 2.8)), lob_amp=float(rng.uniform(0.03, 0.11)),
                  **_lesion_look(rng, anat, hyper, diameter))


def place_lesions(rng: np.random.Generator, anat: Anatomy, diameters_mm, hyper_flags, n_occult: int,
                  occult_diameters_mm, satellite_frac: float = 0.5) -> list[Lesion]:
    """Place visible lesions (largest first) and occult micro-lesions in the liver, grid-independently."""
    lesions: list[Lesion] = []
    cands = anat.sample_liver_points(rng, 6000, max_f=0.92)
    f_c = anat.liver_f(cands[:, 0].astype(np.float32), cands[:, 1].astype(np.float32), cands[:, 2].astype(np.float32))
    clear = anat.keep_out(cands)
    lobes = None

    def ok(p_idx, r, near=None, near_r=None):
        p = cands[p_idx]
        if clear[p_idx] < 0.45 * r + 4:
            return False
        if f_c[p_idx] > max(0.35, 0.92 - 0.5 * r / 60.0):
            return False
        for les in lesions:
            rl = float(r_eq_mm(les.volume0_ml)) * les.axial_factor
            if np.linalg.norm(p - les.center) < 0.8 * (r + rl) + 4:
                return False
        if near is not None:
            d = np.linalg.norm(p - near)
            if d > near_r:
                return False
        return True

    for idx, (d, hyper) in enumerate(zip(diameters_mm, hyper_flags)):
        r = d / 2.0
        near, near_r = None, None
        if idx > 0 and rng.random() < satellite_frac:
            dom = lesions[0]
            near = dom.center
            near_r = float(r_eq_mm(dom.volume0_ml)) * dom.axial_factor + r + rng.uniform(10, 45)
        order = rng.permutation(len(cands))
        chosen = None
        for relax in (1.0, 0.7, 0.5, 0.3):
            for p_idx in order[:2500]:
                if ok(p_idx, r * relax, near, near_r):
                    chosen = p_idx
                    break
            if chosen is not None:
                break
            near = None
        if chosen is None:
            chosen = int(np.argmin(f_c))
        lesions.append(_new_lesion(rng, anat, len(lesions), cands[chosen], d, bool(hyper), occult=False))
    for d in list(occult_diameters_mm)[:n_occult]:
        order = rng.permutation(len(cands))
        chosen = next((p for p in order[:3000] if ok(p, d / 2.0 + 4.0)), None)
        if chosen is None:
            continue
        lesions.append(_new_lesion(rng, anat, len(lesions), cands[chosen], float(d), bool(rng.random() < 0.85),
                                   occult=True))
    del lobes
    return lesions


def make_pvtt(rng: np.random.Generator, anat: Anatomy, lesion: Lesion, grade: int) -> PVTT:
    """PVTT from the segmental portal branch nearest ``lesion`` towards the trunk: Vp1 segmental (3rd order) branch,
    Vp2 sectoral (2nd order), Vp3 first-order (right/left portal vein), Vp4 into the main trunk."""
    vessels = anat.vessels
    seg_ids = [i for i in anat.portal_tree if vessels[i].order == 3]

    def dist(i):
        v = vessels[i]
        p = np.asarray(lesion.center, float)
        d = v.p1 - v.p0
        t = np.clip(np.dot(p - v.p0, d) / max(np.dot(d, d), 1e-6), 0, 1)
        return np.linalg.norm(p - (v.p0 + t * d))

    start = min(seg_ids, key=dist)
    path = [start]
    while vessels[path[-1]].parent >= 0:
        path.append(vessels[path[-1]].parent)
    # distal end of the segmental branch: the point closest to the tumour
    v0 = vessels[start]
    d = v0.p1 - v0.p0
    t_near = float(np.clip(np.dot(lesion.center - v0.p0, d) / max(np.dot(d, d), 1e-6), 0.3, 1.0))
    segments = []
    for k, i in enumerate(path):
        v = vessels[i]
        if k == 0:
            p_dist = v.p0 + t_near * d
            r_dist = v.r0 + t_near * (v.r1 - v.r0)
            segments.append((p_dist, v.p0.copy(), r_dist, v.r0))
        else:
            segments.append((v.p1.copy(), v.p0.copy(), v.r1, v.r0))
    seg_len = np.array([np.linalg.norm(p1 - p0) for p0, p1, _, _ in segments])
    seg_start = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]])
    # baseline length by grade: how far up the tree the thrombus reaches
    orders = [vessels[i].order for i in path]
    reach = {1: 3, 2: 2, 3: 1, 4: 0}[grade]
    k_end = max(k for k, o in enumerate(orders) if o >= reach)
    frac = rng.uniform(0.35, 0.9) if grade == 4 else rng.uniform(0.5, 1.0)
    length0 = float(seg_start[k_end] + frac * seg_len[k_end])
    pv = PVTT(grade=grade, segments=segments, seg_start=seg_start, seg_len=seg_len, length0_mm=length0,
              volume0_ml=0.0)
    pv.volume0_ml = pv.volume_for_length(length0)
    return pv


# -------------------------------------------------------------------------------------------------------------------
# drawing
# -------------------------------------------------------------------------------------------------------------------

@dataclass
class Canvas:
    """Copies of the static maps that a visit's overlays are drawn into; ``bbox`` grows with every change."""

    grid: Grid
    U: np.ndarray
    Ea: np.ndarray
    Ep: np.ndarray
    labels: np.ndarray
    tumor_ok: np.ndarray  # bool: voxels a tumour may occupy
    bbox: tuple | None = None
    resected: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def touch(self, bb):
        from .shapes import union_bbox
        self.bbox = union_bbox(self.bbox, bb)


def _lesion_frame(grid: Grid, lesion: Lesion, radius: float, center=None):
    c = lesion.center if center is None else center
    ext = radius * float(np.max(lesion.axes)) * (1.0 + 2.5 * lesion.lob_amp) + 1.5
    bb = grid.bbox_around(c, ext)
    if bb is None:
        return None, None
    Z, Y, X = grid.coords(bb)
    u, v, w = local_coords(Z, Y, X, lesion.center, rot_z(lesion.angle))
    return bb, (u / np.float32(lesion.axes[0]), v / np.float32(lesion.axes[1]), w / np.float32(lesion.axes[2]),
                (Z, Y, X))


def draw_lesion(cv: Canvas, lesion: Lesion, st: LesionState) -> None:
    """Draw one lesion state into the canvas (tumour replaces liver and loose tissue only)."""
    if st.resected:
        return
    R = float(r_eq_mm(st.total_ml))
    if 2 * R * lesion.axial_factor < VISIBLE_MM:
        return
    bb, fr = _lesion_frame(cv.grid, lesion, R)
    if bb is None:
        return
    qu, qv, qw, (Z, Y, X) = fr
    rr = np.sqrt(qu * qu + qv * qv + qw * qw)
    lob = lesion.lob(qu, qv, qw, scale=max(R, 1.0))
    rr_eff = rr * (1.0 + np.float32(lesion.lob_amp) * lob)
    inside = (rr_eff <= R) & cv.tumor_ok[bb]
    if cv.resected is not None:
        inside &= ~cv.resected[bb]
    if not inside.any():
        return
    mode = st.mode
    if mode == "shell":
        rc = float(r_eq_mm(st.necrosis_ml))
        core = rr * (1.0 + 0.12 * lob) <= rc if rc > 0.5 else np.zeros_like(inside)
        viable = inside & ~core
    else:
        rv = float(r_eq_mm(st.viable_ml))
        if 2 * rv * lesion.axial_factor < VISIBLE_MM:
            viable = np.zeros_like(inside)
        else:
            s = float(nodule_stretch(st.viable_ml, st.total_ml))
            e = lesion.ecc_dir
            off = (R - rv / s ** 2) * 0.9 * e  # in the lesion's normalised frame, against the wall
            dqu, dqv, dqw = qu - np.float32(off[0]), qv - np.float32(off[1]), qw - np.float32(off[2])
            radial = dqu * np.float32(e[0]) + dqv * np.float32(e[1]) + dqw * np.float32(e[2])
            perp2 = np.maximum(dqu * dqu + dqv * dqv + dqw * dqw - radial * radial, 0.0)
            rrv = np.sqrt((radial * np.float32(s * s)) ** 2 + perp2 / np.float32(s * s))
            rrv = rrv * (1.0 + np.float32(lesion.lob_amp) * lob)
            viable = inside & (rrv <= rv)
    necrosis = inside & ~viable
    tex = lesion.tex(X, Y, Z, center=lesion.center)
    U, Ea, Ep, lab = cv.U[bb], cv.Ea[bb], cv.Ep[bb], cv.labels[bb]
    # viable tumour
    dv = np.float32(1.0 - st.devasc)
    U[viable] = (lesion.u_hu + lesion.tex_amp * 0.5 * tex)[viable] if tex.shape == viable.shape else \
        np.broadcast_to(lesion.u_hu + lesion.tex_amp * 0.5 * tex, viable.shape)[viable]
    tex_b = np.broadcast_to(tex, viable.shape)
    Ea[viable] = (lesion.ea_hu * dv) * (1.0 + 0.12 * tex_b[viable]) + 0.5 * lesion.tex_amp * tex_b[viable]
    Ep[viable] = lesion.ep_hu * (1.0 - 0.3 * st.devasc) + 0.3 * lesion.tex_amp * tex_b[viable]
    lab[viable] = L.VIABLE_TUMOR
    # capsule: rim of viable tumour at the lesion border, enhancing in the portal phase
    if lesion.capsule_mm > 0 and viable.any():
        rim = viable & (rr_eff >= R - lesion.capsule_mm)
        U[rim] = 45.0
        Ea[rim] = 12.0
        Ep[rim] = lesion.capsule_ep
    # necrosis, lipiodol-laden where TACE treated
    if necrosis.any():
        U[necrosis] = 22.0 + 5.0 * tex_b[necrosis]
        Ea[necrosis] = 1.5
        Ep[necrosis] = 3.0
        if st.lipiodol_ml > 0 and st.necrosis_ml > 0:
            phi = min(1.0, st.lipiodol_ml / st.necrosis_ml)
            lip_hu = lesion.lipiodol_hu * st.lipiodol_level
            dens = np.clip(0.55 + 0.6 * phi + 0.22 * tex_b[necrosis], 0.0, 1.0)
            lipo_val = 22.0 + (lip_hu - 22.0) * dens
            # the spontaneous core takes up little lipiodol
            if st.necrosis_ml > st.treated_ml:
                core_r = float(r_eq_mm(st.necrosis_ml - st.treated_ml))
                in_core = (rr[necrosis] if rr.shape == necrosis.shape else np.broadcast_to(rr, necrosis.shape)[
                    necrosis]) <= core_r
                lipo_val = np.where(in_core, 22.0 + 0.3 * (lipo_val - 22.0), lipo_val)
            U[necrosis] = lipo_val
            Ea[necrosis] = 0.0
            Ep[necrosis] = 0.0
        lab[necrosis] = L.NECROSIS
    cv.touch(bb)


def draw_pvtt(cv: Canvas, pv: PVTT, volume: float) -> None:
    """Fill the portal path with thrombus from the distal end over the length that holds ``volume`` mL."""
    length = pv.length_for_volume(volume)
    if length <= 0.5:
        return
    for (p0, p1, r0, r1), s0, ln in zip(pv.segments, pv.seg_start, pv.seg_len):
        if length <= s0:
            break
        frac = min(1.0, (length - s0) / max(ln, 1e-6))
        q1 = p0 + frac * (p1 - p0)
        rq1 = r0 + frac * (r1 - r0)
        rmax = max(r0, rq1) * pv.expand + 1.0
        bb = cv.grid.bbox(np.minimum(p0, q1) - rmax, np.maximum(p0, q1) + rmax)
        if bb is None:
            continue
        Z, Y, X = cv.grid.coords(bb)
        d, t = capsule_distance(Z, Y, X, p0, q1)
        r = (np.float32(r0) + t * np.float32(rq1 - r0)) * np.float32(pv.expand)
        r = np.maximum(r, np.float32(0.5 * min(cv.grid.spacing[:2])))
        inside = (d <= r) & (cv.tumor_ok[bb] | (cv.labels[bb] == L.LIVER))
        if cv.resected is not None:
            inside &= ~cv.resected[bb]
        if not inside.any():
            continue
        cv.U[bb][inside] = 40.0
        cv.Ea[bb][inside] = 55.0
        cv.Ep[bb][inside] = 45.0
        cv.labels[bb][inside] = L.PVTT
        cv.touch(bb)


def draw_resection(cv: Canvas, lesions: list[Lesion], resected_ids, months_since: float, tissue: np.ndarray,
                   liver_tissues, margin_mm: float = 12.0) -> None:
    """Remove the liver around resected lesions (sphere + margin): post-operative fluid, later fat."""
    mask_total = None
    for les in lesions:
        if les.index not in resected_ids or les.occult:
            continue
        R = float(r_eq_mm(les.volume0_ml)) * float(np.max(les.axes)) + margin_mm
        bb = cv.grid.bbox_around(les.center, R)
        if bb is None:
            continue
        Z, Y, X = cv.grid.coords(bb)
        d2 = (X - les.center[0]) ** 2 + (Y - les.center[1]) ** 2 + (Z - les.center[2]) ** 2
        region = (d2 <= R * R) & (np.isin(tissue[bb], liver_tissues) | cv.tumor_ok[bb] & (cv.labels[bb] > 0))
        if mask_total is None:
            mask_total = np.zeros(cv.labels.shape, bool)
        mask_total[bb] |= region
        cv.touch(bb)
    if mask_total is None:
        return
    fluid = float(np.clip(15.0 - 30.0 * (months_since - 2.0), -70.0, 15.0))
    cv.U[mask_total] = fluid
    cv.Ea[mask_total] = 0.0
    cv.Ep[mask_total] = 3.0
    cv.labels[mask_total] = L.BACKGROUND
    cv.resected = mask_total
