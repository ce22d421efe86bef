"""What it looks like: a virtual follow-up rendered on the patient's own pre-treatment image (anchored twin, part 2).

Given the volumes of a :class:`~.kinetic.Plan` (per lesion total and viable mL, PVTT mL, a new lesion or not) and the
HU of an :class:`~.kinetic.Appearance`, :func:`render` changes the pre-treatment image only where the plan says so:

1. **Size** (per lesion, largest first): the lesion's outline moves along its normals to the level set of its
   signed distance map that holds the planned total volume ``T_t`` (a shrinking lesion recedes evenly from its
   border, a growing one grows evenly into the liver); its interior is stretched along the normals onto the new
   outline (texture kept) and the liver parenchyma in a ``MARGIN_MM`` band outside follows (stretched where the lesion
   shrinks, pushed where it grows), then the identity: liver farther than 10 mm from the pre-treatment and the
   virtual outline never moves, whatever the lesion's shape. Only voxels of the liver (pre label > 0) move; a liver
   voxel whose source lies outside the liver stays as it is (a vacated tumour voxel there becomes liver at the
   liver's mean HU); nothing outside the liver moves and tumour never grows out of it. Backward mapping, linear
   interpolation for HU, nearest for labels.
2. **Viable vs necrotic** inside the moved lesion: the pre-treatment necrosis stays necrotic first; new necrosis
   takes the deepest viable tumour (a necrotic core) or, once treatment necrosis exceeds 10 % of the lesion,
   everything but one compact residual viable nodule against the wall on the lesion's viable rim/feeding side (how
   residual enhancing tumour looks after TACE/HAIC; its longest diameter, which mRECIST measures, is that of a ball
   of the viable volume and shrinks with it, unlike a cap cut through the whole lesion). Viable voxels that die take the
   (regimen, week) median necrosis HU (lipiodol after TACE) with half of their texture; surviving viable tumour is
   shifted by the viable-HU change the model gives for the lesion's own pre-treatment viable HU
   (:meth:`~.kinetic.Appearance.viable_shift`: devascularisation under lenvatinib takes more from a hypervascular
   lesion than from a hypovascular one); regrowth takes the lesion's viable HU plus that change. Surviving viable
   tumour within 2 mm and 2-4 mm of the tumour that dies in this rendering takes a further offset per band
   (:meth:`~.kinetic.Appearance.adjacent_offset`: after TACE the scanner's blur spreads the dense lipiodol into it,
   after HAIC the darker necrosis), so the blur stays next to the necrosis instead of brightening the whole residue.
3. **PVTT**: a shrinking thrombus gives up its outermost voxels (released lumen: the median HU of released thrombus,
   the nearest non-thrombus label); it is never grown (where it would extend is not known from one scan).
4. **New lesion**: a sphere of the plan's volume at a liver site chosen once per request (>= 20 mm from tumour and
   thrombus, >= 10 mm inside the liver), the patient's own parenchyma plus the median lesion-liver contrast.

Everything happens on a *region* (an index box that holds every change of every follow-up of the request), on
copies; the pre-treatment arrays are never written. A plan equal to the pre-treatment volumes with zero HU shift
gives back the input exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

from ..cases import Geometry
from ..labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR
from .kinetic import PHASES, Appearance, Plan, PreLesion, distance_near, sphere_radius_mm

#: parenchyma beyond this distance (mm) from the pre-treatment and the virtual outline never moves
MARGIN_MM = 10.0
#: treatment-necrosis share of a lesion from which residual viable tumour is drawn as a nodule against the wall
NODULE_SHARE = 0.10
#: share of a dying voxel's texture (its HU minus the lesion's mean viable HU) kept in the necrosis
NECROSIS_TEXTURE = 0.5
NEW_SITE_TUMOUR_MM = 20.0
NEW_SITE_CAPSULE_MM = 10.0


@dataclass
class RenderContext:
    """Everything :func:`render` reads, cut to the request's region (copies of the pre-treatment arrays)."""

    region: tuple[slice, slice, slice]
    geometry: Geometry
    phases: dict[str, np.ndarray]
    labels: np.ndarray
    comp: np.ndarray
    depth: np.ndarray  # mm from the outside of the tumour (0 outside)
    lesions: list[PreLesion]  # centroids in region coordinates
    liver_hu: dict[str, float]
    directions: dict[int, np.ndarray] = field(default_factory=dict)  # unit vector (k, j, i) in mm: viable side
    new_site: np.ndarray | None = None  # region coordinates (k, j, i)
    #: per lesion: :func:`_distance_cache` (signed distance and normals of the liver voxels of its box): the part of
    #: a warp that does not depend on the planned volume
    reach_cache: dict[int, tuple] = field(default_factory=dict)

    @cached_property
    def has_pvtt(self) -> bool:
        """Whether the input has thrombus in the region (computed once)."""
        return bool((self.labels == PVTT).any())

    @property
    def spacing_kji(self) -> np.ndarray:
        return np.asarray(self.geometry.spacing[::-1], float)


def lesion_reach_mm(lesion: PreLesion, scale: float) -> float:
    """Distance (mm) from the lesion centroid beyond which a rendering of size factor ``scale`` changes nothing."""
    return max(lesion.rmax_mm, scale * lesion.rmax_mm) + MARGIN_MM


def lesion_box(lesion: PreLesion, scale: float, spacing_kji: np.ndarray, shape, offset=(0, 0, 0)
               ) -> tuple[slice, ...]:
    """The lesion's bounding box (``lesion.box``, full-grid voxels, shifted by ``-offset``) padded by what a
    rendering of size factor ``scale`` can change around it: its growth (at most ``(scale - 1) R``) + the margin."""
    pad_mm = max(0.0, scale - 1.0) * lesion.rmax_mm + MARGIN_MM
    pad = np.ceil(pad_mm / np.asarray(spacing_kji, float)).astype(int) + 2
    return tuple(slice(max(0, int(b.start - o - p)), min(int(n), int(b.stop - o + p)))
                 for b, o, p, n in zip(lesion.box, offset, pad, shape))


def _box_around(centre_kji: np.ndarray, radius_mm: float, spacing_kji: np.ndarray, shape) -> tuple[slice, ...]:
    half = np.ceil(radius_mm / spacing_kji).astype(int) + 1
    c = np.round(centre_kji).astype(int)
    return tuple(slice(max(0, int(a - h)), min(int(n), int(a + h + 1))) for a, h, n in zip(c, half, shape))


def _union(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, slice, slice] | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(3))


def choose_new_site(labels: np.ndarray, geometry: Geometry, rng: np.random.Generator) -> np.ndarray | None:
    """A liver voxel (k, j, i) >= 20 mm from tumour and PVTT and >= 10 mm inside the liver, or None."""
    sp = np.asarray(geometry.spacing[::-1], float)
    step = np.maximum(1, np.round(3.0 / sp)).astype(int)  # ~3 mm grid: cheap distance maps
    sub = np.asarray(labels)[::step[0], ::step[1], ::step[2]]
    sps = sp * step
    liver = sub == LIVER
    if not liver.any():
        return None
    ok = ndimage.distance_transform_edt(sub > 0, sampling=sps) >= NEW_SITE_CAPSULE_MM
    disease = np.isin(sub, (VIABLE_TUMOR, NECROSIS, PVTT))
    if disease.any():
        ok &= ndimage.distance_transform_edt(~disease, sampling=sps) >= NEW_SITE_TUMOUR_MM
    cand = np.argwhere(ok & liver)
    if cand.size == 0:
        return None
    return cand[int(rng.integers(len(cand)))].astype(float) * step


def make_context(phases: Mapping[str, np.ndarray], labels: np.ndarray, geometry: Geometry, comp: np.ndarray,
                 lesions: Sequence[PreLesion], max_scale: Mapping[int, float], *, new_site: np.ndarray | None = None,
                 new_radius_mm: float = 0.0) -> RenderContext | None:
    """Cut the region that holds every change (lesions at their largest scale + margin, the PVTT, the new-lesion
    site); None when nothing can change."""
    labels = np.asarray(labels)
    sp = np.asarray(geometry.spacing[::-1], float)
    boxes = [lesion_box(les, max(1.0, max_scale.get(les.index, 1.0)), sp, labels.shape) for les in lesions]
    pv = np.argwhere(labels == PVTT)
    if pv.size:
        boxes.append(tuple(slice(int(a), int(b) + 1) for a, b in zip(pv.min(axis=0), pv.max(axis=0))))
    if new_site is not None and new_radius_mm > 0:
        boxes.append(_box_around(new_site, new_radius_mm + 2.0 * float(sp.max()), sp, labels.shape))
    region = _union(boxes)
    if region is None:
        return None
    lo = np.array([s.start for s in region], float)
    lab = np.array(labels[region], dtype=np.uint8, copy=True)
    comp_r = np.array(comp[region], dtype=np.int32, copy=True)
    tumour = comp_r > 0
    depth = ndimage.distance_transform_edt(tumour, sampling=sp).astype(np.float32) if tumour.any() else \
        np.zeros(lab.shape, np.float32)
    liver_all = labels == LIVER
    liver_hu = {p: float(np.asarray(phases[p])[liver_all].mean()) if liver_all.any() else 0.0 for p in PHASES}
    local = []
    liver_centre = np.argwhere(labels[::2, ::2, ::2] > 0).mean(axis=0) * 2.0 if (labels > 0).any() else None
    directions = {}
    reach_cache_entries = []
    for les in lesions:
        c = les.centroid_kji - lo
        local.append(PreLesion(index=les.index, viable_ml=les.viable_ml, necrosis_ml=les.necrosis_ml,
                               centroid_kji=c, rmax_mm=les.rmax_mm, box=les.box, features=les.features, hu=les.hu,
                               liver_hu=les.liver_hu))
        directions[les.index] = _viable_side(comp_r, lab, les.index, c, sp, les.rmax_mm,
                                             None if liver_centre is None else liver_centre - lo)
    for les in local:
        box = lesion_box(les, max(1.0, max_scale.get(les.index, 1.0)), sp, lab.shape, offset=lo)
        reach_cache_entries.append((les.index, _distance_cache(comp_r, lab, box, les.index, sp)))
    ctx = RenderContext(region=region, geometry=geometry,
                        phases={p: np.array(np.asarray(phases[p])[region], dtype=np.float32, copy=True)
                                for p in PHASES},
                        labels=lab, comp=comp_r, depth=depth, lesions=local, liver_hu=liver_hu, directions=directions,
                        new_site=None if new_site is None else np.asarray(new_site, float) - lo,
                        reach_cache=dict(reach_cache_entries))
    return ctx


def _viable_side(comp, labels, index, centre, sp, rmax, liver_centre) -> np.ndarray:
    """Unit vector (mm, k j i) towards the lesion's viable rim if it is already eccentric, else towards the liver
    centre (the hilum side, where the feeding artery comes from)."""
    pts = np.argwhere((comp == index) & (labels == VIABLE_TUMOR))
    if pts.size and (comp == index).sum() > len(pts):
        off = (pts.mean(axis=0) - centre) * sp
        if np.linalg.norm(off) > 0.15 * rmax:
            return off / np.linalg.norm(off)
    if liver_centre is not None:
        off = (np.asarray(liver_centre) - centre) * sp
        if np.linalg.norm(off) > 1e-6:
            return off / np.linalg.norm(off)
    return np.array([0.0, 1.0, 0.0])


# ---------------------------------------------------------------------------------------------------------------
def _distance_cache(comp: np.ndarray, labels: np.ndarray, box: tuple[slice, ...], index: int, sp: np.ndarray
                    ) -> tuple:
    """What every warp of one lesion shares: the liver voxels of its box (flat region indices and voxel coordinates),
    their signed distance (mm, negative inside) to the lesion's outline and its outward unit normal there, all ordered
    by signed distance (a warp's voxels, those nearer than its outer limit, are then a prefix), and the lesion's
    depth (mm)."""
    # computed on the box padded by 2 voxels, so the normals at its border are central differences: the same
    # whatever box a request needs (a request's regimens and weeks set the box; the image must not depend on them)
    mask = np.pad(comp[box] == index, 2)
    inside = ndimage.distance_transform_edt(mask, sampling=sp)
    outside = ndimage.distance_transform_edt(~mask, sampling=sp)
    sd = np.where(mask, -inside + 0.5 * float(sp.min()), outside)
    grad = [g[2:-2, 2:-2, 2:-2] for g in np.gradient(sd, *sp)]
    sd, mask, inside = sd[2:-2, 2:-2, 2:-2], mask[2:-2, 2:-2, 2:-2], inside[2:-2, 2:-2, 2:-2]
    norm = np.sqrt(sum(g ** 2 for g in grad))
    liver = labels[box] > 0
    flat = np.flatnonzero(liver)
    kji = np.unravel_index(flat, mask.shape)
    in_region = np.ravel_multi_index(tuple(a + b.start for a, b in zip(kji, box)), labels.shape)
    normal = np.stack([np.where(norm > 1e-6, g / np.maximum(norm, 1e-6), 0.0).ravel()[flat] for g in grad])
    coords = np.stack([(a + b.start).astype(np.float64) for a, b in zip(kji, box)])
    sd_flat = sd.ravel()[flat]
    order = np.argsort(sd_flat, kind="stable")
    return (in_region[order], np.ascontiguousarray(coords[:, order]), sd_flat[order],
            np.ascontiguousarray(normal[:, order]), float(inside.max()))


def _source_distance(t: np.ndarray, outline: float, depth: float) -> np.ndarray:
    """Signed distance (to the pre-treatment outline) of the source of a target at signed distance ``t`` when the
    new outline lies at ``outline``: the new lesion's interior [-depth, outline] stretched onto the old one
    [-depth, 0], the margin [outline, hi] onto [0, hi] with ``hi = max(outline, 0) + MARGIN_MM``, the identity
    beyond (monotone)."""
    hi = max(outline, 0.0) + MARGIN_MM
    out = t.copy()
    inner = t <= outline
    if outline > -depth:
        out[inner] = -depth + (t[inner] + depth) * depth / (outline + depth)
    band = (t > outline) & (t < hi)
    out[band] = (t[band] - outline) * hi / (hi - outline)
    return out


def _nearest_index(shape, coords: np.ndarray) -> np.ndarray:
    """Flat index of the nearest voxel of an array of ``shape`` at voxel coordinates ``coords`` (3, n), clamped."""
    # round half up (np.rint rounds half to even, which would depend on where the region starts)
    idx = [np.clip(np.floor(c + 0.5).astype(np.intp), 0, n - 1) for c, n in zip(coords, shape)]
    return np.ravel_multi_index(idx, shape)


def _warp_lesion(ctx: RenderContext, cur: dict, les: PreLesion, total_ml: float) -> None:
    """Move the lesion's outline to the planned volume along its normals (see the module docstring); arrays of
    ``cur`` are contiguous region arrays, written through flat indices."""
    flat, coords0, sd, normal, depth = ctx.reach_cache[les.index]
    n_target = int(round(total_ml / ctx.geometry.voxel_volume_ml))
    # the level set holding the planned voxels (growth is capped by the liver in the lesion's box)
    outline = float(sd[min(n_target, len(sd)) - 1]) if n_target > 0 else -depth - 1.0
    hi = max(outline, 0.0) + MARGIN_MM
    n = int(np.searchsorted(sd, hi, side="left"))  # the voxels with sd < hi (sd ascending)
    if n == 0:
        return
    flat, t, normal = flat[:n], sd[:n], normal[:, :n]
    shift_mm = _source_distance(t, outline, depth) - t
    coords = coords0[:, :n] + normal * (shift_mm / ctx.spacing_kji[:, None])
    nearest = _nearest_index(cur["labels"].shape, coords)  # one lookup for the three arrays of the region
    src_lab = cur["labels"].ravel()[nearest]
    src_comp = cur["comp"].ravel()[nearest]
    src_depth = cur["depth"].ravel()[nearest]
    # a source outside the liver: a liver voxel stays as it is, a vacated tumour voxel becomes mean liver
    outside = src_lab == 0
    here = cur["labels"].ravel()[flat]
    stay = outside & (here == LIVER)
    fill = outside & ~stay
    for p in PHASES:
        vals = ndimage.map_coordinates(cur[p], coords, order=1, mode="nearest")
        vals[stay] = cur[p].ravel()[flat][stay]
        vals[fill] = ctx.liver_hu[p]
        cur[p].ravel()[flat] = vals
    src_lab[outside] = LIVER
    src_comp[outside] = 0
    src_depth[outside] = 0.0
    cur["labels"].ravel()[flat] = src_lab
    cur["comp"].ravel()[flat] = src_comp
    cur["depth"].ravel()[flat] = src_depth


def _layout_lesion(ctx: RenderContext, cur: dict, les: PreLesion, total_ml: float, viable_ml: float,
                   look: Appearance) -> None:
    sp = ctx.spacing_kji
    vox = ctx.geometry.voxel_volume_ml
    box = lesion_box(les, max(1.0, (total_ml / max(les.total_ml, 1e-9)) ** (1 / 3)), sp, ctx.labels.shape,
                     offset=[s.start for s in ctx.region])
    sub_comp = cur["comp"][box]
    mine = sub_comp == les.index
    n_tot = int(mine.sum())
    excess = n_tot - int(round(total_ml / vox))
    if excess > 0 and (abs(total_ml - les.total_ml) > 1e-9 or excess == n_tot):
        # the outline table is coarser than the lesion: voxels carried along beyond the planned volume (shallowest
        # first) become liver at the liver's mean HU, so a vanishing lesion vanishes
        depth = cur["depth"][box][mine]
        drop_idx = np.argsort(depth, kind="stable")[:excess]
        where = tuple(a[drop_idx] for a in np.nonzero(mine))
        for p in PHASES:
            cur[p][box][where] = ctx.liver_hu[p]
        cur["labels"][box][where] = LIVER
        sub_comp[where] = 0
        cur["depth"][box][where] = 0.0
        mine = sub_comp == les.index
        n_tot = int(mine.sum())
    if n_tot == 0:
        return
    lab = cur["labels"][box]
    was_lab = lab[mine]
    was_nec = was_lab == NECROSIS
    n_viable = int(min(n_tot, round(viable_ml / vox)))
    n_nec = n_tot - n_viable
    new_nec = n_nec - int(was_nec.sum())
    pts = np.argwhere(mine).astype(float) + np.array([s.start for s in box], float)
    if new_nec > NODULE_SHARE * n_tot:
        score = _nodule_score(pts, les, ctx.directions.get(les.index, np.array([0.0, 1.0, 0.0])), sp,
                              n_viable * vox)
    else:
        score = cur["depth"][box][mine].astype(float)
    score = score + np.where(was_nec, 1e6, 0.0)
    order = np.argsort(-score, kind="stable")
    nec = np.zeros(n_tot, bool)
    nec[order[:n_nec]] = True
    new_lab = np.where(nec, NECROSIS, VIABLE_TUMOR).astype(np.uint8)
    dies = nec & ~was_nec
    regrows = ~nec & was_nec
    stays = ~nec & ~was_nec
    near = _near_new_necrosis(mine, dies, ~nec, sp) if look.viable_adjacent_hu and dies.any() else None
    for p in PHASES:
        sub = cur[p][box]
        vals = sub[mine]
        ref = les.hu.get(p, float("nan"))
        if not math.isfinite(ref):
            ref = float(vals[~was_nec].mean()) if (~was_nec).any() else float(vals.mean())
        shift = look.viable_shift(p, ref)
        out = vals.copy()
        out[stays] = vals[stays] + shift
        out[dies] = look.necrosis_hu[p] + NECROSIS_TEXTURE * (vals[dies] - ref)
        out[regrows] = ref + shift
        offset = look.adjacent_offset(p, near) if near is not None else None
        if offset is not None:
            out[~nec] += offset[~nec]
        sub[mine] = out
    lab[mine] = new_lab


def _near_new_necrosis(mine: np.ndarray, dies: np.ndarray, survives: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance (mm) of each voxel of the lesion (``mine``, a box mask; ``dies`` / ``survives`` per voxel of it, in
    its order) from the tumour that dies in this rendering, for the surviving voxels within the reach of the
    adjacency bands (:func:`~.kinetic.distance_near`); ``inf`` for the others."""
    source = np.zeros(mine.shape, bool)
    source[mine] = dies
    near = np.zeros(mine.shape, bool)
    near[mine] = survives
    return distance_near(source, near, sp)[mine]


def _nodule_score(pts: np.ndarray, les: PreLesion, direction: np.ndarray, sp: np.ndarray, viable_ml: float
                  ) -> np.ndarray:
    """Necrosis order (highest first) that leaves the residual viable tumour as one compact nodule against the lesion
    wall on the viable side: the lesion voxels nearest (mm) to an anchor one nodule radius inside the wall stay viable.
    A ball has the shortest longest diameter (what mRECIST measures) of any shape of its volume; a nodule flattened
    along the wall (as the simulator draws it) read true partial responses as stable disease more often on the tuning
    cohort (``benchmarks/results/generator_fit_choices.md``)."""
    off = (pts - les.centroid_kji) * sp
    proj = off @ direction
    wall = float(proj.max()) if proj.size else 0.0
    anchor = direction * max(wall - sphere_radius_mm(viable_ml), 0.0)
    return np.sqrt(((off - anchor) ** 2).sum(axis=1))


def _pvtt(ctx: RenderContext, cur: dict, pvtt_ml: float, look: Appearance) -> None:
    lab = cur["labels"]
    pts = np.nonzero(lab == PVTT)
    n0 = len(pts[0])
    keep = int(round(pvtt_ml / ctx.geometry.voxel_volume_ml))
    if n0 == 0 or keep >= n0:
        return
    sp = ctx.spacing_kji
    # on the thrombus's box padded by one voxel: the nearest non-thrombus voxel of a thrombus voxel is never farther
    # out (clamping any farther one onto the padding ring brings it nearer), and the region may be the whole scan
    box = tuple(slice(max(0, int(a.min()) - 1), min(int(n), int(a.max()) + 2)) for a, n in zip(pts, lab.shape))
    sub = lab[box]
    thr = sub == PVTT
    depth, (ik, ij, ii) = ndimage.distance_transform_edt(thr, sampling=sp, return_indices=True)
    where = np.flatnonzero(thr)
    order = np.argsort(-depth.ravel()[where], kind="stable")
    released = np.zeros(sub.size, bool)
    released[where[order[keep:]]] = True
    released = released.reshape(sub.shape)
    near = (ik[released], ij[released], ii[released])
    for p in PHASES:
        hu = look.released_pvtt_hu.get(p, float("nan"))
        view = cur[p][box]
        view[released] = hu if math.isfinite(hu) else view[near]
    sub[released] = sub[near]


def _new_lesion(ctx: RenderContext, cur: dict, volume_ml: float, look: Appearance) -> None:
    if ctx.new_site is None or volume_ml <= 0:
        return
    sp = ctx.spacing_kji
    radius = sphere_radius_mm(volume_ml)
    box = _box_around(ctx.new_site, radius, sp, ctx.labels.shape)
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in box], indexing="ij"))
    r = np.sqrt((((idx - ctx.new_site[:, None, None, None]) * sp[:, None, None, None]) ** 2).sum(axis=0))
    m = (r <= radius) & (cur["labels"][box] == LIVER)
    for p in PHASES:
        cur[p][box][m] += look.new_lesion_contrast_hu.get(p, 0.0)
    cur["labels"][box][m] = VIABLE_TUMOR


def render(ctx: RenderContext, plan: Plan, look: Appearance) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({phase: HU}, labels)`` of one virtual follow-up on ``ctx.region`` (new arrays)."""
    cur = {p: ctx.phases[p].copy() for p in PHASES}
    cur.update(labels=ctx.labels.copy(), comp=ctx.comp.copy(), depth=ctx.depth.copy())
    for les in sorted(ctx.lesions, key=lambda le: -le.total_ml):
        total, viable = plan.lesions.get(les.index, (les.total_ml, les.viable_ml))
        if abs(total - les.total_ml) > 1e-9:
            _warp_lesion(ctx, cur, les, total)
        _layout_lesion(ctx, cur, les, total, viable, look)
    if ctx.has_pvtt:  # a rendering moves existing labels only: no thrombus before, none after
        _pvtt(ctx, cur, plan.pvtt_ml, look)
    _new_lesion(ctx, cur, plan.new_lesion_ml, look)
    return {p: cur[p] for p in PHASES}, cur["labels"]


__all__ = ["MARGIN_MM", "RenderContext", "choose_new_site", "lesion_reach_mm", "make_context", "render"]
