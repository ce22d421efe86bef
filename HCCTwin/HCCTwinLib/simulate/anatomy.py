"""Synthetic upper-abdominal anatomy for contrast-enhanced multiphase CT.

:func:`sample_anatomy` draws one patient's anatomy as numbers in millimetres (grid-independent): body outline with
subcutaneous fat, abdominal-wall muscle and ribs, spine with discs and posterior elements, paraspinal and psoas
muscles, diaphragm domes with lung bases and the heart above them, liver (right and left lobe, varied shape, size,
position and surface nodularity), gallbladder, spleen, kidneys (cortex, medulla, sinus), pancreas, stomach, bowel
loops and colon, aorta with celiac/hepatic/splenic/renal arteries and SMA, IVC, portal vein with splenic vein, SMV
and a branching intrahepatic tree (right, left, sectoral and segmental branches), hepatic veins, renal veins.

:func:`build_static` paints it on a :class:`~HCCTwinLib.simulate.shapes.Grid` as a tissue map and three HU maps:
unenhanced ``U`` and the arterial / portal-venous *enhancement* ``Ea`` / ``Ep`` (HU above unenhanced). A scan at a
visit is ``U + f_a * Ea`` (arterial) and ``U + f_p * Ep`` (portal), ``f`` being that visit's bolus timing factor.

Frame: LPS millimetres, +x patient left, +y posterior, +z superior (the liver is at negative x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import labels as L
from .shapes import Grid, Waves, capsule_distance, ellipsoid_rho2, local_coords, rot_x, rot_y, rot_z


class T:
    """Tissue codes of the static tissue map."""

    AIR, FAT, VFAT, MUSCLE, CORTICAL, MARROW, DISC, CSF = 0, 1, 2, 3, 4, 5, 6, 7
    LUNG, LUNG_VESSEL, BLOOD, MYOCARDIUM, AORTA, ARTERY, IVC, PORTAL = 8, 9, 10, 11, 12, 13, 14, 15
    PORTAL_IH, HEPVEIN, HEPVEIN_IH, RENALVEIN, LIVER, GALLBLADDER, SPLEEN, KCORTEX = 16, 17, 18, 19, 20, 21, 22, 23
    KMEDULLA, KSINUS, PANCREAS, GIWALL, GIFLUID, GAS, STOOL, DIAPHRAGM = 24, 25, 26, 27, 28, 29, 30, 31
    ASCITES = 32
    N = 33


TISSUE_NAMES = {v: k.lower() for k, v in vars(T).items() if k.isupper() and k != "N"}
#: Tissues labelled as liver (1): parenchyma and the intrahepatic portal / hepatic vein branches.
LIVER_TISSUES = (T.LIVER, T.PORTAL_IH, T.HEPVEIN_IH)
#: Tissues a growing tumour may replace (liver and what lies loosely around it); others (bone, kidney, great vessels,
#: spleen, bowel, heart) stop it.
TUMOR_REPLACEABLE = (T.LIVER, T.PORTAL_IH, T.HEPVEIN_IH, T.VFAT, T.GALLBLADDER, T.HEPVEIN, T.PORTAL, T.ARTERY,
                     T.GIFLUID, T.GIWALL, T.DIAPHRAGM, T.ASCITES)

# Unenhanced HU, arterial and portal enhancement (HU above unenhanced) of a typical patient; sample_anatomy varies them.
BASE_HU = {
    T.AIR: (-1000, 0, 0), T.FAT: (-105, 0, 0), T.VFAT: (-95, 0, 0), T.MUSCLE: (50, 6, 12),
    T.CORTICAL: (760, 0, 0), T.MARROW: (215, 6, 14), T.DISC: (85, 0, 6), T.CSF: (10, 0, 0),
    T.LUNG: (-860, 0, 0), T.LUNG_VESSEL: (40, 150, 110), T.BLOOD: (42, 260, 120), T.MYOCARDIUM: (45, 60, 70),
    T.AORTA: (42, 270, 125), T.ARTERY: (42, 240, 115), T.IVC: (42, 45, 105), T.PORTAL: (42, 70, 150),
    T.PORTAL_IH: (42, 60, 145), T.HEPVEIN: (42, 10, 115), T.HEPVEIN_IH: (42, 8, 110), T.RENALVEIN: (42, 140, 130),
    T.LIVER: (58, 18, 55), T.GALLBLADDER: (8, 0, 0), T.SPLEEN: (47, 75, 75), T.KCORTEX: (35, 170, 130),
    T.KMEDULLA: (35, 35, 115), T.KSINUS: (-80, 0, 0), T.PANCREAS: (42, 75, 55), T.GIWALL: (40, 55, 70),
    T.GIFLUID: (15, 0, 0), T.GAS: (-985, 0, 0), T.STOOL: (-150, 0, 0), T.DIAPHRAGM: (50, 8, 14),
    T.ASCITES: (8, 0, 2),
}


@dataclass
class Vessel:
    """A tapered tube from p0 (radius r0) to p1 (radius r1); ``order`` 0 trunk, 1 first-order branch, ..."""

    name: str
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    tissue: int
    order: int = 0
    parent: int = -1


@dataclass
class Anatomy:
    """One patient's anatomy in millimetres (anatomical LPS frame)."""

    # body outline: super-ellipse half-widths; anterior and posterior half-depths
    ax: float
    ay_ant: float
    ay_post: float
    fat_mm: float
    muscle_mm: float
    y_spine: float
    # liver: translation, rotation about z, scale; lobe ellipsoids in liver-local frame
    liver_t: np.ndarray
    liver_rot: float
    liver_scale: float
    right_lobe: tuple
    left_lobe: tuple
    liver_waves: Waves
    liver_wave_amp: float
    nodular_waves: Waves
    nodular_amp: float
    # diaphragm domes (x, y, z_apex) and curvature radius
    dome_right: tuple
    dome_left: tuple
    dome_radius: float
    organs: dict = field(default_factory=dict)
    vessels: list = field(default_factory=list)
    portal_tree: list = field(default_factory=list)  # indices into vessels (intrahepatic portal branches + trunk)
    bowel: list = field(default_factory=list)
    hu: dict = field(default_factory=dict)
    texture: dict = field(default_factory=dict)
    z_center: float = 10.0
    xy_center: tuple = (0.0, 0.0)
    cirrhosis: float = 0.5
    ascites_mm: float = 0.0  # perihepatic / perisplenic fluid rim
    grid_seed: int = 0

    # ---------------------------------------------------------------------------------------------------------------
    # analytic shape functions (work on broadcast arrays or on flat point arrays)
    # ---------------------------------------------------------------------------------------------------------------
    def body_rho(self, X, Y, Z, shrink_mm: float = 0.0):
        """Super-ellipse value of the body outline (shrunk by ``shrink_mm``) at (x, y, z); <= 1 inside."""
        zs = 1.0 + 0.035 * np.clip((self.z_center - Z) / 100.0, -1.5, 1.5)
        ax = (self.ax - shrink_mm) * zs
        ay = np.where(Y < 0, self.ay_ant - 1.15 * shrink_mm, self.ay_post - 0.8 * shrink_mm) * zs
        return np.abs(X / ax) ** 2.3 + np.abs(Y / ay) ** 2.3

    def cavity_rho(self, X, Y, Z):
        return self.body_rho(X, Y, Z, self.fat_mm + self.muscle_mm)

    def z_diaphragm(self, X, Y):
        """Height of the diaphragm surface (mm) over (x, y)."""
        out = None
        for xd, yd, zd in (self.dome_right, self.dome_left):
            wy = np.where(Y < yd, np.float32(0.3), np.float32(0.9))
            h = zd - ((X - xd) ** 2 + wy * (Y - yd) ** 2) / (2 * self.dome_radius)
            out = h if out is None else np.maximum(out, h)
        return out

    def liver_local(self, X, Y, Z):
        u, v, w = local_coords(Z, Y, X, self.liver_t, rot_z(self.liver_rot))
        s = np.float32(self.liver_scale)
        return u / s, v / s, w / s

    def liver_f(self, X, Y, Z, with_clip: bool = True):
        """Implicit liver function (<= 1 inside): union of the lobes, perturbed, clipped by cavity and diaphragm."""
        u, v, w = self.liver_local(X, Y, Z)
        (cr, ar), (cl, al) = self.right_lobe, self.left_lobe
        zr = (w - cr[2]) / ar[2]
        taper_r = 1.0 - 0.38 * np.clip(-zr, 0.0, 1.0)
        f_r = ((u - cr[0]) / (ar[0] * taper_r)) ** 2 + ((v - cr[1]) / (ar[1] * taper_r)) ** 2 + zr ** 2
        xl = np.clip((u - cl[0]) / al[0], 0.0, 1.0)
        taper_l = 1.0 - 0.5 * xl
        f_l = (((u - cl[0]) / al[0]) ** 2 + ((v - cl[1]) / (al[1] * taper_l)) ** 2
               + ((w - cl[2]) / (al[2] * taper_l)) ** 2)
        f = np.minimum(f_r, f_l)
        # shape perturbation (lobulation, cirrhotic surface nodularity); it can only matter near the surface
        if np.ndim(f) and f.size > 4096:
            u, v, w = (np.broadcast_to(c, f.shape) for c in (u, v, w))
            band = (f > 0.5) & (f < 2.4)
            ub, vb, wb = u[band], v[band], w[band]
            f = f.copy()
            f[band] *= 1.0 + self.liver_wave_amp * self.liver_waves(ub, vb, wb) + \
                self.nodular_amp * self.nodular_waves(ub, vb, wb)
        else:
            f = f * (1.0 + self.liver_wave_amp * self.liver_waves(u, v, w)
                     + self.nodular_amp * self.nodular_waves(u, v, w))
        if with_clip:
            f = np.where(self.cavity_rho(X, Y, Z) > 0.93, np.float32(9.0), f)
            f = np.where(Z > self.z_diaphragm(X, Y) - 5.0, np.float32(9.0), f)
        return f

    def lobe_of(self, point) -> str:
        """'right' or 'left' lobe of the liver for a point (mm)."""
        X, Y, Z = (np.asarray([c], np.float32) for c in point)
        u, v, w = self.liver_local(X, Y, Z)
        (cr, ar), (cl, al) = self.right_lobe, self.left_lobe
        f_r = ((u - cr[0]) / ar[0]) ** 2 + ((v - cr[1]) / ar[1]) ** 2 + ((w - cr[2]) / ar[2]) ** 2
        f_l = ((u - cl[0]) / al[0]) ** 2 + ((v - cl[1]) / al[1]) ** 2 + ((w - cl[2]) / al[2]) ** 2
        # the umbilical fissure (left of the gallbladder fossa / middle hepatic vein line) divides the lobes
        return "left" if (f_l[0] < f_r[0] and u[0] > -15) else "right"

    def keep_out(self, pts: np.ndarray) -> np.ndarray:
        """Distance-like clearance (mm) of points from structures a tumour centre must avoid (IVC, spine, kidneys,
        gallbladder); negative = inside one of them."""
        pts = np.atleast_2d(pts)
        clear = np.full(len(pts), 1e9)
        for name in ("kidney_r", "kidney_l", "gallbladder", "spleen"):
            o = self.organs.get(name)
            if o is None:
                continue
            X, Y, Z = pts[:, 0], pts[:, 1], pts[:, 2]
            rho = np.sqrt(ellipsoid_rho2(Z, Y, X, o["center"], o["semi"], o.get("rot")))
            clear = np.minimum(clear, (rho - 1.0) * float(np.min(o["semi"])))
        for name in ("ivc", "spine"):
            o = self.organs[name]
            d = np.hypot(pts[:, 0] - o["center"][0], pts[:, 1] - o["center"][1]) - o["radius"]
            clear = np.minimum(clear, d)
        return clear

    def liver_box_mm(self, margin_mm: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (lo, hi) in mm that holds the liver (both lobes, perturbed, rotated)."""
        (cr, ar), (cl, al) = self.right_lobe, self.left_lobe
        lo = np.minimum(cr - 1.4 * ar, cl - 1.4 * al)
        hi = np.maximum(cr + 1.4 * ar, cl + 1.4 * al)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        world = self.liver_t + (rot_z(self.liver_rot) @ (self.liver_scale * corners.T)).T
        return world.min(axis=0) - margin_mm, world.max(axis=0) + margin_mm

    def liver_volume_ml(self, step_mm: float = 4.0) -> float:
        lo, hi = self.liver_box_mm(0.0)
        xs = np.arange(lo[0], hi[0], step_mm, dtype=np.float32)
        ys = np.arange(lo[1], hi[1], step_mm, dtype=np.float32)
        zs = np.arange(lo[2], hi[2], step_mm, dtype=np.float32)
        f = self.liver_f(xs[None, None, :], ys[None, :, None], zs[:, None, None])
        return float(np.count_nonzero(f <= 1.0)) * step_mm ** 3 / 1000.0

    def sample_liver_points(self, rng: np.random.Generator, n: int, max_f: float = 0.8) -> np.ndarray:
        """Uniform random points inside the liver (f <= max_f), grid-independent."""
        lo, hi = self.liver_box_mm(0.0)
        out = []
        count = 0
        for _ in range(100):
            p = rng.uniform(lo, hi, size=(8192, 3)).astype(np.float32)
            f = self.liver_f(p[:, 0], p[:, 1], p[:, 2])
            keep = p[f <= max_f]
            out.append(keep)
            count += len(keep)
            if count >= n:
                break
        return np.concatenate(out)[:n].astype(float)


# -------------------------------------------------------------------------------------------------------------------
# sampling
# -------------------------------------------------------------------------------------------------------------------

def _jit(rng, scale, n=3):
    return rng.normal(0.0, scale, size=n)


def sample_anatomy(rng: np.random.Generator, *, sex: str = "M", age: float = 58.0, cirrhosis: float = 0.6,
                   steatosis: float = 0.0, splenomegaly: float = 1.0, extra_liver_ml: float = 0.0,
                   ascites: int = 0) -> Anatomy:
    """Draw one anatomy. ``cirrhosis`` 0..1 (surface nodularity, texture), ``steatosis`` 0..1 (darker liver),
    ``splenomegaly`` scale of the spleen, ``extra_liver_ml`` tumour volume the liver grows to hold (hepatomegaly),
    ``ascites`` 0 / 1 / 2 (none, a thin perihepatic rim, a thick one)."""
    male = sex == "M"
    size = rng.normal(1.0, 0.06) * (1.0 if male else 0.93)
    obesity = rng.normal(0.0, 1.0)
    fat = float(np.clip((16 if male else 22) + 7 * obesity, 6, 45))
    muscle = float(np.clip(rng.normal(11 if male else 9, 2) - 0.05 * (age - 55), 6, 16))
    ax = float(np.clip(158 * size + 0.9 * fat, 135, 200))
    ay_ant = float(np.clip(118 * size + 0.6 * fat + 6 * obesity, 95, 160))
    ay_post = float(np.clip(108 * size + 0.3 * fat, 92, 140))
    y_spine = ay_post - 0.85 * fat - 58 * size

    liver_scale = float(np.clip(rng.normal(1.0, 0.07) * size, 0.82, 1.2))
    base = Anatomy(ax=ax, ay_ant=ay_ant, ay_post=ay_post, fat_mm=fat, muscle_mm=muscle, y_spine=y_spine,
                   liver_t=np.zeros(3), liver_rot=0.0, liver_scale=liver_scale,
                   right_lobe=(np.array([-58.0, 6.0, 0.0]), np.array([66.0, 76.0, 75.0])),
                   left_lobe=(np.array([20.0, -44.0, 20.0]), np.array([68.0, 28.0, 38.0])),
                   liver_waves=Waves.sample(rng, 5, (110, 220)), liver_wave_amp=float(rng.uniform(0.04, 0.11)),
                   nodular_waves=Waves.sample(rng, 10, (14, 30)), nodular_amp=float(0.035 * cirrhosis),
                   dome_right=(0.0, 0.0, 0.0), dome_left=(0.0, 0.0, 0.0), dome_radius=float(rng.uniform(95, 140)),
                   cirrhosis=float(cirrhosis))
    # left lobe variants: small (cirrhotic atrophy) to large (Riedel-like right / big left)
    lobe_var = rng.uniform(0.75, 1.25)
    base.left_lobe = (base.left_lobe[0] + np.array([10 * (lobe_var - 1), 0, 0]) + _jit(rng, 4),
                      base.left_lobe[1] * np.array([lobe_var, rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)]))
    base.right_lobe = (base.right_lobe[0] + _jit(rng, 4),
                       base.right_lobe[1] * rng.uniform(0.9, 1.1, size=3))
    base.liver_t = np.array([rng.normal(-4, 6), rng.normal(-2, 5), rng.normal(12, 8)])
    base.liver_rot = float(rng.normal(0.0, 0.09))
    # grow the liver so that it holds the tumour volume (hepatomegaly)
    v0 = base.liver_volume_ml(step_mm=6.0)
    target = v0 + 0.85 * extra_liver_ml
    base.liver_scale = float(liver_scale * np.clip((target / max(v0, 1.0)) ** (1 / 3), 1.0, 1.4))

    # diaphragm: the liver top reaches the right dome
    s = base.liver_scale
    top_r = base.liver_t[2] + s * (base.right_lobe[0][2] + 0.72 * base.right_lobe[1][2])
    base.dome_right = (base.liver_t[0] + s * base.right_lobe[0][0] * 0.8, 10.0, float(top_r))
    base.dome_left = (float(rng.normal(65, 6)), 15.0, float(top_r - rng.uniform(5, 20)))
    base.z_center = float(base.liver_t[2] + s * 18 + rng.normal(0, 10))
    base.xy_center = (float(rng.normal(0, 6)), float(rng.normal(6, 6)))

    organs = base.organs
    ys = y_spine
    organs["spine"] = {"center": np.array([0.0, ys, 0.0]), "radius": 21.0 * size, "ry": 17.0 * size,
                       "disc_period": float(rng.uniform(31, 36)) * size, "disc_phase": float(rng.uniform(0, 40)),
                       "marrow_hu": float(np.clip(260 - 1.8 * (age - 40) + rng.normal(0, 20), 110, 300))}
    organs["ivc"] = {"center": np.array([-24.0 * size + rng.normal(0, 3), ys - 30 * size, 0.0]),
                     "radius": float(rng.uniform(9, 13)), "ry": float(rng.uniform(7, 11))}
    organs["aorta"] = {"center": np.array([16.0 * size + rng.normal(0, 3), ys - 27 * size, 0.0]),
                       "radius": float(np.clip(rng.normal(10.5 + 0.05 * (age - 50), 1.0), 8, 15))}
    spl = float(np.clip(splenomegaly * rng.normal(1.0, 0.08), 0.8, 1.9))
    organs["spleen"] = {"center": np.array([98 * size, 42 * size + rng.normal(0, 5), top_r - 55 + rng.normal(0, 6)]),
                        "semi": np.array([24, 58, 52]) * spl * size, "rot": rot_z(-0.65 + rng.normal(0, 0.12))}
    for side, sgn, dz in (("kidney_r", -1, -62), ("kidney_l", 1, -46)):
        organs[side] = {"center": np.array([sgn * 72 * size, ys - 2, top_r - 95 + dz + rng.normal(0, 6)]),
                        "semi": np.array([27, 23, 54]) * size * rng.uniform(0.92, 1.08),
                        "rot": rot_z(sgn * (0.55 + rng.normal(0, 0.1))) @ rot_y(sgn * 0.22)}
    if rng.random() < 0.88:
        lt = base.liver_t
        gb_c = lt + s * np.array([-38.0, -38.0, -52.0]) + _jit(rng, 5)
        organs["gallbladder"] = {"center": gb_c, "semi": np.array([17, 17, 36]) * rng.uniform(0.7, 1.2),
                                 "rot": rot_x(0.5) @ rot_z(0.4)}
    organs["stomach"] = {"center": np.array([62 * size, -25 * size, top_r - 50]) + _jit(rng, 6),
                         "semi": np.array([42, 34, 52]) * rng.uniform(0.75, 1.15), "rot": rot_z(0.5) @ rot_y(0.2),
                         "air": float(rng.uniform(0.0, 0.45))}
    organs["heart"] = {"center": np.array([18.0, -38.0, top_r + 48]) + _jit(rng, 5),
                       "semi": np.array([68, 58, 58]) * size}

    # pancreas (capsule chain head -> tail)
    zc = top_r - 110
    pan = [np.array([-28, -6, zc - 8]), np.array([0, -16, zc]), np.array([42, -2, zc + 12]),
           np.array([82, 24, zc + 26])]
    pan = [p * np.array([size, size, 1]) + _jit(rng, 3) for p in pan]
    organs["pancreas"] = {"points": pan, "radii": [14, 10, 10, 8]}

    vessels: list[Vessel] = []
    z_lo = base.z_center - 200
    ao, ivc = organs["aorta"]["center"], organs["ivc"]["center"]
    vessels.append(Vessel("aorta", np.array([ao[0], ao[1], z_lo]), np.array([ao[0], ao[1] - 6, top_r + 20]),
                          organs["aorta"]["radius"], organs["aorta"]["radius"] * 1.1, T.AORTA))
    vessels.append(Vessel("ivc", np.array([ivc[0], ivc[1], z_lo]), np.array([ivc[0] + 4, ivc[1] - 8, top_r + 25]),
                          organs["ivc"]["radius"], organs["ivc"]["radius"] * 1.25, T.IVC))
    # portal venous system, in body coordinates
    conf = pan[1] + np.array([2, 12, -2])
    porta = base.liver_t + s * np.array([-28.0, 2.0, -14.0]) + _jit(rng, 3)
    hilum_spl = organs["spleen"]["center"] + np.array([-18, -10, -12])
    vessels.append(Vessel("splenic_vein", conf, hilum_spl, 4.8, 4.2, T.PORTAL))
    vessels.append(Vessel("smv", conf, conf + np.array([6, -8, -150]), 5.5, 5.0, T.PORTAL))
    pv_main = len(vessels)
    vessels.append(Vessel("portal_main", conf, porta, 7.0, 6.5, T.PORTAL, order=0))
    base.portal_tree = [pv_main]
    _portal_tree(base, rng, vessels, pv_main, porta)
    # hepatic veins into the IVC below the right atrium
    hv_root = np.array([ivc[0] + 4, ivc[1] - 6, top_r - 12])
    for name, tip, r in (("rhv", [-112, 18, -45], 5.5), ("mhv", [-38, -62, -40], 5.0), ("lhv", [42, -50, 12], 4.5)):
        tip = base.liver_t + s * np.array(tip, float) + _jit(rng, 6)
        mid = hv_root + 0.45 * (tip - hv_root) + _jit(rng, 5)
        i0 = len(vessels)
        vessels.append(Vessel(name, hv_root, mid, r, r * 0.8, T.HEPVEIN, order=1))
        vessels.append(Vessel(name + "_d", mid, tip, r * 0.8, 2.0, T.HEPVEIN, order=2, parent=i0))
        for _ in range(2):
            side_tip = mid + 0.6 * (tip - mid) + _jit(rng, 22)
            vessels.append(Vessel(name + "_b", mid + 0.3 * (tip - mid), side_tip, 2.6, 1.6, T.HEPVEIN, order=3,
                                  parent=i0 + 1))
    # arteries: celiac trunk -> common hepatic / splenic; SMA; renal arteries and veins
    cel0 = np.array([ao[0], ao[1] - organs["aorta"]["radius"], zc + 22])
    cel1 = cel0 + np.array([-2, -22, 2])
    vessels.append(Vessel("celiac", cel0, cel1, 3.8, 3.4, T.ARTERY))
    vessels.append(Vessel("hepatic_artery", cel1, porta + np.array([6, -10, -4]), 3.0, 2.4, T.ARTERY))
    mid_spl = 0.5 * (cel1 + hilum_spl) + np.array([0, -8, 10]) + _jit(rng, 5)
    vessels.append(Vessel("splenic_artery", cel1, mid_spl, 3.0, 2.8, T.ARTERY))
    vessels.append(Vessel("splenic_artery2", mid_spl, hilum_spl + np.array([0, -4, 6]), 2.8, 2.5, T.ARTERY))
    sma0 = np.array([ao[0], ao[1] - organs["aorta"]["radius"], zc + 8])
    vessels.append(Vessel("sma", sma0, sma0 + np.array([-4, -35, -150]), 3.8, 3.0, T.ARTERY))
    for side in ("kidney_r", "kidney_l"):
        kc = organs[side]["center"]
        hil = kc + np.array([-np.sign(kc[0]) * 24, -8, 6])
        vessels.append(Vessel("renal_artery", np.array([ao[0], ao[1], hil[2] + 8]), hil, 3.0, 2.6, T.ARTERY))
        vessels.append(Vessel("renal_vein", hil + np.array([0, -5, -6]), np.array([ivc[0], ivc[1], hil[2]]),
                              4.5, 5.5, T.RENALVEIN))
    base.vessels = vessels

    # bowel: small-bowel loops (fluid) and colon (gas/stool) as chains of tubes below the liver
    bowel = []
    colon_pts = [np.array([-105, 10, top_r - 170]), np.array([-100, -30, top_r - 120]),
                 np.array([-55, -70, top_r - 115]), np.array([20, -80, top_r - 105]),
                 np.array([85, -40, top_r - 95]), np.array([100, 20, top_r - 110]), np.array([95, 25, top_r - 190])]
    colon_pts = [p * np.array([size, size, 1]) + _jit(rng, 6) for p in colon_pts]
    bowel.append({"points": colon_pts, "radius": float(rng.uniform(17, 24)), "kind": "colon",
                  "gas": float(rng.uniform(0.3, 0.8))})
    for _ in range(int(rng.integers(5, 10))):
        p = np.array([rng.uniform(-70, 70), rng.uniform(-80, 0), rng.uniform(top_r - 230, top_r - 130)]) * \
            np.array([size, size, 1])
        pts = [p]
        for _ in range(int(rng.integers(3, 6))):
            p = p + rng.normal(0, 1, 3) * np.array([28, 18, 22])
            pts.append(p)
        bowel.append({"points": pts, "radius": float(rng.uniform(9, 15)), "kind": "small",
                      "gas": float(rng.uniform(0.0, 0.3))})
    base.bowel = bowel

    # HU of this patient: enhancement scales with cardiac output / contrast dose; unenhanced liver darker with fat
    hu = {t: list(v) for t, v in BASE_HU.items()}
    enh = rng.normal(1.0, 0.08)
    aortic = rng.uniform(0.75, 1.25)
    for t in hu:
        hu[t][1] *= enh
        hu[t][2] *= enh
    for t in (T.AORTA, T.ARTERY, T.BLOOD, T.LUNG_VESSEL):
        hu[t][1] *= aortic
    hu[T.LIVER][0] = float(np.clip(rng.normal(60, 4) - 35 * steatosis, 20, 72))
    hu[T.LIVER][1] = float(rng.uniform(12, 26) * enh)
    hu[T.LIVER][2] = float(rng.uniform(56, 76) * enh * (1 - 0.1 * cirrhosis))
    hu[T.PORTAL][1] = hu[T.PORTAL_IH][1] = float(rng.uniform(25, 110) * enh)
    hu[T.MARROW][0] = organs["spine"]["marrow_hu"]
    hu[T.PANCREAS][0] = float(np.clip(rng.normal(42, 5) - 0.25 * max(age - 50, 0), 15, 50))
    base.hu = {t: tuple(float(x) for x in v) for t, v in hu.items()}
    base.texture = {
        "liver": Waves.sample(rng, 8, (6, 22)), "liver_amp": float(3.0 + 4.0 * cirrhosis),
        "spleen": Waves.sample(rng, 6, (8, 18), anisotropy=(1, 1, 0.3)), "spleen_amp": float(rng.uniform(15, 40)),
        "fat": Waves.sample(rng, 5, (8, 30)), "lung": Waves.sample(rng, 8, (6, 14)),
        "stool": Waves.sample(rng, 6, (4, 10)), "marrow": Waves.sample(rng, 5, (4, 9)),
    }
    base.grid_seed = int(rng.integers(0, 2**31 - 1))
    base.ascites_mm = {0: 0.0, 1: 6.0, 2: 16.0}.get(int(ascites), 0.0)
    return base


def _portal_tree(a: Anatomy, rng: np.random.Generator, vessels: list, parent: int, porta: np.ndarray) -> None:
    """Intrahepatic portal branches: right (anterior/posterior sectors, 4 segments) and left (umbilical, 3 segments),
    with small twigs; coordinates follow the liver's placement and size."""
    s = a.liver_scale
    t = a.liver_t
    R = rot_z(a.liver_rot)

    def at(p):  # liver-local (mm, unscaled) -> body
        return t + R @ (s * np.asarray(p, float)) + _jit(rng, 3.5 * s)

    def add(name, p0, p1, r0, r1, order, par):
        vessels.append(Vessel(name, np.asarray(p0, float), np.asarray(p1, float), r0, r1, T.PORTAL_IH, order, par))
        idx = len(vessels) - 1
        a.portal_tree.append(idx)
        return idx

    rpv_end = at([-68, 8, -6])
    rpv = add("rpv", porta, rpv_end, 5.8, 5.2, 1, parent)
    ra_end, rp_end = at([-82, -28, 14]), at([-100, 36, -18])
    ra = add("right_anterior", rpv_end, ra_end, 4.4, 3.8, 2, rpv)
    rp = add("right_posterior", rpv_end, rp_end, 4.4, 3.8, 2, rpv)
    segs = [("s5", ra, ra_end, [-70, -55, -34]), ("s8", ra, ra_end, [-78, -18, 52]),
            ("s6", rp, rp_end, [-110, 30, -55]), ("s7", rp, rp_end, [-108, 48, 30])]
    lpv_end = at([-8, -12, -2])
    lpv = add("lpv", porta, lpv_end, 4.8, 4.4, 1, parent)
    umb_end = at([14, -42, 8])
    umb = add("umbilical", lpv_end, umb_end, 4.2, 3.8, 2, lpv)
    segs += [("s2", umb, umb_end, [58, -32, 34]), ("s3", umb, umb_end, [50, -68, 6]),
             ("s4", umb, umb_end, [-14, -64, -6])]
    for name, par, p0, tip in segs:
        tip_b = at(tip)
        seg = add(name, p0, tip_b, 3.2, 2.2, 3, par)
        for _ in range(2):
            frac = rng.uniform(0.35, 0.8)
            start = p0 + frac * (tip_b - p0)
            twig = start + rng.normal(0, 1, 3) * 16 * s
            add(name + "_twig", start, twig, 2.0, 1.3, 4, seg)


# -------------------------------------------------------------------------------------------------------------------
# painting
# -------------------------------------------------------------------------------------------------------------------

@dataclass
class StaticScene:
    """The anatomy painted on one grid (noise-free, not blurred)."""

    grid: Grid
    tissue: np.ndarray  # uint8 T codes
    U: np.ndarray  # float32 unenhanced HU
    Ea: np.ndarray  # float32 arterial enhancement
    Ep: np.ndarray  # float32 portal enhancement
    liver_f: np.ndarray  # float32 implicit liver value (<= 1 inside)
    body: np.ndarray  # bool body mask

    @property
    def labels(self) -> np.ndarray:
        out = np.zeros(self.tissue.shape, np.uint8)
        out[np.isin(self.tissue, LIVER_TISSUES)] = L.LIVER
        return out


def _paint_vessel(tissue, grid: Grid, v: Vessel, allowed=None, liver_f=None, ih_code=None):
    rmax = max(v.r0, v.r1) + 1.0
    lo = np.minimum(v.p0, v.p1) - rmax
    hi = np.maximum(v.p0, v.p1) + rmax
    bb = grid.bbox(lo, hi)
    if bb is None:
        return
    Z, Y, X = grid.coords(bb)
    d, t = capsule_distance(Z, Y, X, v.p0, v.p1)
    r = np.float32(v.r0) + t * np.float32(v.r1 - v.r0)
    # a vessel thinner than a voxel still shows by partial volume: keep at least the centre voxel line
    r = np.maximum(r, np.float32(0.5 * min(grid.spacing[:2])))
    inside = d <= r
    sub = tissue[bb]
    if allowed is not None:
        inside &= np.isin(sub, allowed)
    code = np.full(inside.shape, v.tissue, np.uint8)
    if ih_code is not None and liver_f is not None:
        code = np.where(liver_f[bb] <= 1.0, np.uint8(ih_code), code)
    sub[inside] = code[inside]


def build_static(a: Anatomy, grid: Grid) -> StaticScene:
    """Paint the anatomy on a grid: tissue map and U / Ea / Ep HU maps."""
    shape = grid.shape
    tissue = np.zeros(shape, np.uint8)
    full = grid.full()
    Z, Y, X = grid.coords(full)

    body_rho = a.body_rho(X, Y, Z)
    body = body_rho <= 1.0
    cavity = a.cavity_rho(X, Y, Z) <= 1.0
    muscle_ring = (a.body_rho(X, Y, Z, a.fat_mm) <= 1.0) & ~cavity
    tissue[body] = T.FAT
    tissue[cavity] = T.VFAT
    zdia = a.z_diaphragm(X, Y)  # (1, ny, nx)

    # bowel below the liver (lowest priority inside the cavity)
    for loop in a.bowel:
        _paint_bowel(tissue, grid, a, loop)
    # stomach, pancreas
    st = a.organs["stomach"]
    _paint_hollow(tissue, grid, st, wall_mm=4.0, air_frac=st["air"])
    pan = a.organs["pancreas"]
    for p0, p1, r0, r1 in zip(pan["points"][:-1], pan["points"][1:], pan["radii"][:-1], pan["radii"][1:]):
        _paint_vessel(tissue, grid, Vessel("pancreas", p0, p1, r0, r1, T.PANCREAS),
                      allowed=(T.VFAT, T.GIWALL, T.GIFLUID, T.GAS, T.STOOL))

    # liver
    lbb = grid.bbox(*a.liver_box_mm(15.0))
    liver_f = np.full(shape, 9.0, np.float32)
    if lbb is not None:
        Zl, Yl, Xl = grid.coords(lbb)
        liver_f[lbb] = a.liver_f(Xl, Yl, Zl)
        sub = tissue[lbb]
        sub[(liver_f[lbb] <= 1.0) & cavity[lbb]] = T.LIVER
    if a.ascites_mm > 0 and lbb is not None:
        # ascites: a fluid rim around the liver in the peritoneal fat (the f-band ~ 2 t / R near the surface)
        sub = tissue[lbb]
        f_raw = a.liver_f(Xl, Yl, Zl, with_clip=False)
        band = (f_raw > 1.0) & (f_raw <= 1.0 + 2.0 * a.ascites_mm / (75.0 * a.liver_scale))
        sub[band & (sub == T.VFAT) & cavity[lbb]] = T.ASCITES
    gb = a.organs.get("gallbladder")
    if gb is not None:
        _paint_ellipsoid(tissue, grid, gb["center"], gb["semi"], gb["rot"], T.GALLBLADDER)
    sp = a.organs["spleen"]
    _paint_ellipsoid(tissue, grid, sp["center"], sp["semi"], sp["rot"], T.SPLEEN,
                     allowed=(T.VFAT, T.GIWALL, T.GIFLUID, T.GAS, T.STOOL, T.PANCREAS))
    for side in ("kidney_r", "kidney_l"):
        _paint_kidney(tissue, grid, a.organs[side])
    # vessels
    for v in a.vessels:
        ih = T.PORTAL_IH if v.tissue in (T.PORTAL, T.PORTAL_IH) else (T.HEPVEIN_IH if v.tissue == T.HEPVEIN else None)
        code = v.tissue
        vv = v if code != T.PORTAL_IH else Vessel(v.name, v.p0, v.p1, v.r0, v.r1, T.PORTAL, v.order, v.parent)
        if v.tissue in (T.PORTAL_IH, T.HEPVEIN):
            # intrahepatic branches stay inside the liver (they are drawn where the liver is)
            _paint_vessel(tissue, grid, vv, allowed=(T.LIVER, T.PORTAL_IH, T.HEPVEIN_IH, T.VFAT), liver_f=liver_f,
                          ih_code=ih)
        else:
            _paint_vessel(tissue, grid, vv, liver_f=liver_f, ih_code=ih)
    # thorax above the diaphragm: lungs, heart, diaphragm muscle
    thorax = cavity & (Z > zdia)
    tissue[thorax] = T.LUNG
    dia = cavity & (Z > zdia - 5.0) & (Z <= zdia)
    tissue[dia & np.isin(tissue, (T.VFAT, T.LIVER, T.SPLEEN, T.GIWALL, T.GIFLUID, T.GAS, T.PORTAL_IH, T.HEPVEIN_IH,
                                  T.STOOL))] = T.DIAPHRAGM
    h = a.organs["heart"]
    hbb = grid.bbox(h["center"] - h["semi"], h["center"] + h["semi"])
    if hbb is not None:
        Zh, Yh, Xh = grid.coords(hbb)
        rho = ellipsoid_rho2(Zh, Yh, Xh, h["center"], h["semi"])
        above = thorax[hbb]
        sub = tissue[hbb]
        sub[(rho <= 1.0) & above] = T.MYOCARDIUM
        sub[(rho <= 0.62) & above] = T.BLOOD
    # lung vessels: thin bright structures where a smooth field peaks
    lung = tissue == T.LUNG
    if lung.any():
        kz = np.nonzero(lung.any(axis=(1, 2)))[0]
        lbbz = (slice(kz[0], kz[-1] + 1), full[1], full[2])
        Zq, Yq, Xq = grid.coords(lbbz)
        f = a.texture["lung"](Xq, Yq, Zq)
        sub = tissue[lbbz]
        sub[(sub == T.LUNG) & (f > 1.9)] = T.LUNG_VESSEL
    # great vessels again above the diaphragm (they pass through)
    for v in a.vessels:
        if v.name in ("aorta", "ivc"):
            _paint_vessel(tissue, grid, v)
    # spine, posterior elements, paraspinal and psoas muscles
    _paint_spine(tissue, grid, a)
    # body wall last: muscle ring with ribs; subcutaneous fat outside it
    tissue[muscle_ring] = T.MUSCLE
    tissue[body & ~cavity & ~muscle_ring & (tissue != T.MUSCLE)] = T.FAT
    _paint_ribs(tissue, grid, a, body, cavity, zdia)
    _paint_spine(tissue, grid, a, posterior_only=True)
    tissue[~body] = T.AIR

    # HU maps
    lut = np.zeros((T.N, 3), np.float32)
    for t, v in a.hu.items():
        lut[t] = v
    U = lut[tissue, 0]
    Ea = lut[tissue, 1]
    Ep = lut[tissue, 2]
    _add_textures(a, grid, tissue, U, Ea, Ep)
    return StaticScene(grid=grid, tissue=tissue, U=U, Ea=Ea, Ep=Ep, liver_f=liver_f, body=body)


def _paint_ellipsoid(tissue, grid, center, semi, rot, code, allowed=None, shell=None):
    r = float(np.max(semi)) + 1.0
    bb = grid.bbox_around(center, r)
    if bb is None:
        return None
    Z, Y, X = grid.coords(bb)
    rho = ellipsoid_rho2(Z, Y, X, center, semi, rot)
    inside = rho <= 1.0
    sub = tissue[bb]
    if allowed is not None:
        inside &= np.isin(sub, allowed)
    sub[inside] = code
    return bb, rho


def _paint_hollow(tissue, grid, organ, wall_mm, air_frac):
    out = _paint_ellipsoid(tissue, grid, organ["center"], organ["semi"], organ["rot"], T.GIWALL,
                           allowed=(T.VFAT, T.GIWALL, T.GIFLUID, T.GAS, T.STOOL))
    if out is None:
        return
    bb, rho = out
    inner = float(1.0 - wall_mm / float(np.min(organ["semi"]))) ** 2
    sub = tissue[bb]
    lumen = (rho <= inner) & (sub == T.GIWALL)
    sub[lumen] = T.GIFLUID
    if air_frac > 0:
        Z, Y, X = grid.coords(bb)
        y_level = organ["center"][1] - organ["semi"][1] * (1.0 - 2.0 * air_frac)
        gas = lumen & np.broadcast_to(Y < y_level, lumen.shape)
        sub[gas] = T.GAS


def _paint_bowel(tissue, grid, a: Anatomy, loop):
    pts, r = loop["points"], loop["radius"]
    allowed = (T.VFAT, T.GIWALL, T.GIFLUID, T.GAS, T.STOOL)
    for p0, p1 in zip(pts[:-1], pts[1:]):
        _paint_vessel(tissue, grid, Vessel("bowel", p0, p1, r, r, T.GIWALL), allowed=allowed)
    for p0, p1 in zip(pts[:-1], pts[1:]):
        lumen = Vessel("lumen", p0, p1, r - 3.0, r - 3.0, T.STOOL if loop["kind"] == "colon" else T.GIFLUID)
        _paint_vessel(tissue, grid, lumen, allowed=(T.GIWALL,))
    if loop["gas"] > 0:
        # gas rises anteriorly (patient supine: towards -y)
        for p0, p1 in zip(pts[:-1], pts[1:]):
            shift = np.array([0.0, -(r - 3.0) * (1 - loop["gas"]), 0.0])
            g = Vessel("gas", p0 + shift, p1 + shift, (r - 3.0) * loop["gas"], (r - 3.0) * loop["gas"], T.GAS)
            _paint_vessel(tissue, grid, g, allowed=(T.GIFLUID, T.STOOL))


def _paint_kidney(tissue, grid, k):
    out = _paint_ellipsoid(tissue, grid, k["center"], k["semi"], k["rot"], T.KCORTEX,
                           allowed=(T.VFAT, T.LIVER, T.SPLEEN, T.GIWALL, T.GIFLUID, T.GAS, T.STOOL, T.PANCREAS))
    if out is None:
        return
    bb, rho = out
    sub = tissue[bb]
    kid = sub == T.KCORTEX
    inner = (1.0 - 6.5 / float(np.min(k["semi"]))) ** 2
    sub[kid & (rho <= inner)] = T.KMEDULLA
    Z, Y, X = grid.coords(bb)
    # renal sinus towards the hilum (antero-medial)
    c = np.asarray(k["center"], float)
    hil = c + np.array([-np.sign(c[0]) * 0.45 * k["semi"][0], -0.2 * k["semi"][1], 0.0])
    rs = ellipsoid_rho2(Z, Y, X, hil, np.array([0.45, 0.45, 0.55]) * k["semi"], k["rot"])
    sub[kid & (rs <= 1.0) | ((sub == T.KMEDULLA) & (rs <= 1.0))] = T.KSINUS
    # medulla pyramids: leave cortex columns between them
    u, v, w = local_coords(Z, Y, X, c, k["rot"])
    cols = np.cos(w * np.float32(2 * np.pi / 22.0)) > 0.55
    sub[(sub == T.KMEDULLA) & cols & (rho > 0.25)] = T.KCORTEX


def _paint_spine(tissue, grid, a: Anatomy, posterior_only: bool = False):
    sp = a.organs["spine"]
    cx, cy = sp["center"][0], sp["center"][1]
    rx, ry = sp["radius"], sp["ry"]
    bb = grid.bbox((cx - 80, cy - ry - 5, -1e4), (cx + 80, cy + 95, 1e4))
    if bb is None:
        return
    Z, Y, X = grid.coords(bb)
    sub = tissue[bb]
    shp = sub.shape
    if not posterior_only:
        # psoas muscles grow towards the pelvis
        zl = a.z_center - 20
        for sgn in (-1, 1):
            r_ps = np.clip(6 + 0.22 * (zl - Z), 0, 28)
            ps = ((X - sgn * (rx + 14 + 0.3 * r_ps)) ** 2 + (Y - cy + 4) ** 2) <= r_ps ** 2
            sub[np.broadcast_to(ps, shp) & np.isin(sub, (T.VFAT, T.GIWALL, T.GIFLUID, T.GAS, T.STOOL))] = T.MUSCLE
        body_ell = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
        disc = np.mod(Z - sp["disc_phase"], sp["disc_period"]) < 7.0
        vb = np.broadcast_to(body_ell <= 1.0, shp)
        cortex = np.broadcast_to(body_ell > (1 - 2.2 / rx) ** 2, shp)
        discb = np.broadcast_to(disc, shp)
        sub[vb] = T.MARROW
        sub[vb & cortex & ~discb] = T.CORTICAL
        sub[vb & discb] = T.DISC
        return
    # posterior elements and paraspinal muscles (painted over the body wall)
    canal_c = cy + ry + 10
    canal = (X - cx) ** 2 + (Y - canal_c) ** 2
    level = np.mod(Z - sp["disc_phase"] - 0.5 * sp["disc_period"], sp["disc_period"]) < 0.45 * sp["disc_period"]
    ring = (canal <= 14.0 ** 2) & (Y > cy + ry - 2)
    spinous = (np.abs(X - cx) <= 4.0) & (Y > canal_c) & (Y < canal_c + 30) & level
    transverse = (np.abs(Y - (canal_c - 1)) <= 3) & (np.abs(X - cx) < 27) & level
    for sgn in (-1, 1):
        para = ((X - cx - sgn * 31) / 26) ** 2 + ((Y - canal_c - 16) / 22) ** 2 <= 1
        sub[np.broadcast_to(para, shp) & np.isin(sub, (T.FAT, T.MUSCLE, T.VFAT, T.LUNG, T.LUNG_VESSEL, T.DIAPHRAGM,
                                                      T.LIVER, T.PORTAL_IH, T.HEPVEIN_IH, T.GIWALL, T.GIFLUID, T.GAS,
                                                      T.STOOL))] = T.MUSCLE
    bone = np.broadcast_to(ring | spinous | transverse, shp)
    sub[bone & ~np.isin(sub, (T.AORTA, T.IVC, T.KCORTEX, T.KMEDULLA, T.KSINUS))] = T.CORTICAL
    sub[np.broadcast_to(canal <= 8.5 ** 2, shp)] = T.CSF


def _paint_ribs(tissue, grid, a: Anatomy, body, cavity, zdia):
    """Ribs: oblique bony bars in the muscle ring, spaced ~25 mm, present down to the costal margin."""
    Z, Y, X = grid.coords(grid.full())
    theta = np.arctan2(Y, X)  # angle around the body
    r_in = a.cavity_rho(X, Y, Z)
    r_mid = a.body_rho(X, Y, Z, a.fat_mm + 0.35 * a.muscle_mm)
    band = (r_in > 1.0) & (r_mid <= 1.0)
    # costal margin: ribs reach lower laterally and posteriorly than anteriorly
    z_costal = (a.dome_right[2] - 60 - 60 * np.abs(np.cos(theta)) - 40 * np.clip(np.sin(theta), 0, 1)
                + 50 * np.clip(-np.sin(theta), 0, 1))
    phase = np.mod(Z + 49.66 * theta - 11.0, 26.0)
    rib = band & (phase < 9.0) & (Z > z_costal)
    # not over the spine (posterior midline)
    rib &= ~((np.abs(X) < 45) & (Y > 0))
    tissue[rib & body] = T.CORTICAL
    inner_rib = rib & body & (phase > 2.0) & (phase < 7.0) & (r_mid <= 0.985)
    tissue[inner_rib] = T.MARROW


def _add_textures(a: Anatomy, grid: Grid, tissue, U, Ea, Ep):
    tex = a.texture
    for code, key, amp_u, amp_a in ((T.LIVER, "liver", a.texture["liver_amp"], 0.0),
                                    (T.SPLEEN, "spleen", 2.0, a.texture["spleen_amp"]),
                                    (T.FAT, "fat", 6.0, 0.0), (T.VFAT, "fat", 8.0, 0.0),
                                    (T.STOOL, "stool", 160.0, 0.0), (T.MARROW, "marrow", 18.0, 0.0),
                                    (T.LUNG, "fat", 25.0, 0.0)):
        mask = tissue == code
        if not mask.any():
            continue
        nz = [np.nonzero(mask.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1))]
        bb = tuple(slice(n[0], n[-1] + 1) for n in nz)
        Z, Y, X = grid.coords(bb)
        f = tex[key](X, Y, Z)
        m = mask[bb]
        if amp_u:
            U[bb][m] += np.float32(amp_u) * f[m] if f.shape == m.shape else np.float32(amp_u) * np.broadcast_to(f,
                                                                                                              m.shape)[m]
        if amp_a:
            Ea[bb][m] += np.float32(amp_a) * np.broadcast_to(f, m.shape)[m]
