"""Liver crop for the generator: liver box -> fixed model grid, and paste-back with a smooth seam.

Orientation handling (explicit): the *index box* is a box of voxels of the input grid (``[k, j, i]``, whatever the
input's direction matrix is) around ``labels > 0`` padded by ``pad_mm`` and clipped to the volume. The *crop grid*
is a fixed-size grid (default 32 x 64 x 64, ``(k, j, i)``) with **identity direction** in LPS (axes i = L, j = P,
k = S, like the segmentation model grid) covering the LPS bounding box of that index box. So the network always sees
anatomy in one orientation: a flipped or permuted input is resampled, not fed as it is. In-plane spacing is the same
for x and y (the larger of the two extents / 64: isotropic in-plane, the shorter axis is centred with margin); z
spacing = z extent / 32.

Paste-back works on the input grid, inside the index box only (voxels outside it are never written, so they are
bit-identical to the input):

- images: the generated *residual* (follow-up minus pre, HU) is resampled linearly from the crop grid onto the index
  box and added to the full-resolution pre-treatment image, multiplied by a blend weight that ramps from 0 at the box
  border to 1 at ``seam_mm`` inside it (smoothstep); box sides that touch the volume edge have no seam. Full-resolution
  detail of the pre image is kept wherever nothing changes.
- labels: nearest neighbour, same box, no blending, *change-only*: a voxel takes the generated label where the
  generated crop labels differ from the pre labels seen on the crop grid (both mapped back with nearest neighbour),
  otherwise it keeps its full-resolution pre label. Unchanged anatomy therefore keeps its exact boundaries, and a
  generated crop equal to the pre crop gives back the input labels exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..cases import Geometry
from ..errors import InputError
from ..io import to_sitk

#: default crop grid (k, j, i): ~3.5 mm in-plane, ~6.5 mm between slices for a typical 23 x 20 x 21 cm padded liver box
DEFAULT_CROP_KJI = (32, 64, 64)
DEFAULT_PAD_MM = 15.0
DEFAULT_SEAM_MM = 10.0


@dataclass(frozen=True)
class CropBox:
    """Index box ``[lo, hi)`` (k, j, i) in the input grid and the crop grid (identity direction, LPS)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    source: Geometry
    crop: Geometry

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))

    @property
    def box_shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))

    @property
    def box_geometry(self) -> Geometry:
        """Geometry of the index box as a sub-grid of the input (same spacing and direction)."""
        src = self.source
        origin = src.ijk_to_lps() @ np.array([self.lo[2], self.lo[1], self.lo[0], 1.0])
        return Geometry(shape=self.box_shape, spacing=src.spacing, origin=tuple(origin[:3]), direction=src.direction)


def liver_index_box(labels: np.ndarray, geometry: Geometry, pad_mm: float = DEFAULT_PAD_MM
                    ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(lo, hi)`` voxel box (k, j, i, end exclusive) of ``labels > 0`` padded by ``pad_mm``, clipped to the volume."""
    labels = np.asarray(labels)
    if labels.shape != geometry.shape:
        raise InputError(f"labels have shape {labels.shape}, geometry says {geometry.shape}")
    nz = np.nonzero(labels.any(axis=(1, 2)))[0], np.nonzero(labels.any(axis=(0, 2)))[0], \
        np.nonzero(labels.any(axis=(0, 1)))[0]
    if any(len(a) == 0 for a in nz):
        raise InputError("the label map has no liver (no voxel > 0); segment the pre-treatment study first so the "
                         "generator knows where the liver is.")
    spacing_kji = geometry.spacing[::-1]
    lo, hi = [], []
    for axis, idx in enumerate(nz):
        pad = int(np.ceil(pad_mm / spacing_kji[axis]))
        lo.append(max(0, int(idx[0]) - pad))
        hi.append(min(geometry.shape[axis], int(idx[-1]) + 1 + pad))
    return tuple(lo), tuple(hi)


def crop_geometry(geometry: Geometry, lo: Sequence[int], hi: Sequence[int],
                  crop_shape: Sequence[int] = DEFAULT_CROP_KJI) -> Geometry:
    """Identity-direction grid of ``crop_shape`` (k, j, i) covering the LPS bounding box of the index box."""
    ks, js, is_ = (float(a) - 0.5 for a in lo)
    ke, je, ie = (float(b) - 0.5 for b in hi)
    corners = np.array([[i, j, k, 1.0] for i in (is_, ie) for j in (js, je) for k in (ks, ke)])
    pts = (geometry.ijk_to_lps() @ corners.T).T[:, :3]
    pmin, pmax = pts.min(axis=0), pts.max(axis=0)
    extent = pmax - pmin
    nk, nj, ni = (int(n) for n in crop_shape)
    inplane = max(extent[0] / ni, extent[1] / nj)
    spacing = np.array([inplane, inplane, max(extent[2] / nk, 1e-3)])
    centre = (pmin + pmax) / 2.0
    n_xyz = np.array([ni, nj, nk], dtype=float)
    origin = centre - (n_xyz - 1) / 2.0 * spacing
    return Geometry(shape=(nk, nj, ni), spacing=tuple(spacing), origin=tuple(origin))


def make_crop_box(labels: np.ndarray, geometry: Geometry, crop_shape: Sequence[int] = DEFAULT_CROP_KJI,
                  pad_mm: float = DEFAULT_PAD_MM) -> CropBox:
    lo, hi = liver_index_box(labels, geometry, pad_mm)
    return CropBox(lo=lo, hi=hi, source=geometry, crop=crop_geometry(geometry, lo, hi, crop_shape))


def _resample(image: sitk.Image, target: Geometry, *, labels: bool, default: float, extrapolate: bool) -> np.ndarray:
    reference = target.apply_to(sitk.Image(list(target.size_xyz), sitk.sitkUInt8))
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(image, reference, sitk.Transform(), interp, float(default), image.GetPixelID(),
                        bool(extrapolate))
    return sitk.GetArrayFromImage(out)


def to_crop(array: np.ndarray, box: CropBox, *, labels: bool = False) -> np.ndarray:
    """Resample an input-grid array onto the crop grid (linear; labels nearest neighbour, 0 outside the volume;
    images take the nearest edge value outside the volume)."""
    sub = np.ascontiguousarray(np.asarray(array)[box.slices])
    if labels:
        image = to_sitk(sub.astype(np.uint8), box.box_geometry)
        return _resample(image, box.crop, labels=True, default=0, extrapolate=False).astype(np.uint8)
    image = to_sitk(sub.astype(np.float32), box.box_geometry)
    return _resample(image, box.crop, labels=False, default=0.0, extrapolate=True).astype(np.float32)


def _axis_maps(box: CropBox) -> list[tuple[int, int, np.ndarray]] | None:
    """For an input direction that is a signed permutation (axis-aligned, possibly flipped/permuted): per crop numpy
    axis, ``(crop_axis, source_axis, coordinates)`` = the continuous crop index of each box voxel along it. None for
    oblique directions (then SimpleITK resamples)."""
    src = box.source
    m = src.direction_matrix @ np.diag(src.spacing)  # (i, j, k) -> LPS (x, y, z)
    crop = box.crop
    maps = []
    for xyz in range(3):
        row = m[xyz]
        nonzero = np.abs(row) > 1e-6 * np.abs(row).max()
        if nonzero.sum() != 1:
            return None
        ijk = int(np.argmax(nonzero))
        src_axis = 2 - ijk
        crop_axis = 2 - xyz
        idx = np.arange(box.lo[src_axis], box.hi[src_axis], dtype=np.float64)
        phys = src.origin[xyz] + row[ijk] * idx
        maps.append((crop_axis, src_axis, (phys - crop.origin[xyz]) / crop.spacing[xyz]))
    return maps


def _interp_axis(a: np.ndarray, axis: int, coords: np.ndarray, n: int, nearest: bool) -> np.ndarray:
    inside = (coords >= -0.5) & (coords <= n - 0.5)
    c = np.clip(coords, 0.0, n - 1.0)
    shape = [1] * a.ndim
    shape[axis] = len(c)
    mask = inside.reshape(shape)
    if nearest:
        out = np.take(a, np.clip(np.floor(c + 0.5).astype(np.intp), 0, n - 1), axis=axis)
        return np.where(mask, out, np.zeros((), a.dtype))
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (c - i0).astype(np.float32).reshape(shape)
    out = np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i1, axis=axis) * w
    return np.where(mask, out, np.float32(0.0)).astype(np.float32)


def from_crop(crop_array: np.ndarray, box: CropBox, *, labels: bool = False) -> np.ndarray:
    """Resample a crop-grid array onto the index box of the input grid (0 where the crop grid does not reach).

    Axis-aligned inputs (any flip/permutation) use a separable linear (labels: nearest) interpolation in numpy, about
    4x faster than a general resampler on a 300 x 300 x 90 box; oblique inputs use SimpleITK.
    """
    maps = _axis_maps(box)
    dtype = np.uint8 if labels else np.float32
    arr = np.asarray(crop_array, dtype=dtype)
    if maps is not None:
        out = arr
        for crop_axis, _src_axis, coords in sorted(maps, key=lambda m: len(m[2]) / arr.shape[m[0]]):  # cheapest first
            out = _interp_axis(out, crop_axis, coords, arr.shape[crop_axis], labels)
        perm = [0, 0, 0]
        for crop_axis, src_axis, _ in maps:
            perm[src_axis] = crop_axis
        return np.ascontiguousarray(out.transpose(perm), dtype=dtype)
    image = to_sitk(arr, box.crop)
    if labels:
        return _resample(image, box.box_geometry, labels=True, default=0, extrapolate=False).astype(np.uint8)
    return _resample(image, box.box_geometry, labels=False, default=0.0, extrapolate=False).astype(np.float32)


def blend_weight(box: CropBox, seam_mm: float = DEFAULT_SEAM_MM) -> np.ndarray:
    """float32 weight on the index box: 0 -> 1 (smoothstep) over ``seam_mm`` inside each box side that is not the
    volume edge; 1 in the interior."""
    spacing_kji = box.source.spacing[::-1]
    weight = np.ones(box.box_shape, np.float32)
    for axis in range(3):
        n = box.box_shape[axis]
        pos = np.arange(n, dtype=np.float64)
        dist = np.full(n, np.inf)
        if box.lo[axis] > 0:
            dist = np.minimum(dist, (pos + 0.5) * spacing_kji[axis])
        if box.hi[axis] < box.source.shape[axis]:
            dist = np.minimum(dist, (n - 0.5 - pos) * spacing_kji[axis])
        t = np.clip(dist / max(seam_mm, 1e-6), 0.0, 1.0)
        ramp = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n
        weight = np.minimum(weight, ramp.reshape(shape))
    return weight


def paste_image(pre: np.ndarray, box: CropBox, residual_crop: np.ndarray, *, seam_mm: float = DEFAULT_SEAM_MM,
                weight: np.ndarray | None = None) -> np.ndarray:
    """``pre`` + blended residual inside the index box; a new float32 array, outside voxels bit-identical."""
    out = np.array(pre, dtype=np.float32, copy=True)
    if not np.any(residual_crop):
        return out
    w = blend_weight(box, seam_mm) if weight is None else weight
    delta = from_crop(residual_crop, box) * w
    out[box.slices] += delta
    return out


def paste_labels(pre_labels: np.ndarray, box: CropBox, crop_labels: np.ndarray,
                 pre_crop_labels: np.ndarray | None = None) -> np.ndarray:
    """Change-only nearest-neighbour paste of crop labels into a copy of ``pre_labels`` (see the module docstring)."""
    out = np.array(pre_labels, dtype=np.uint8, copy=True)
    if pre_crop_labels is None:
        pre_crop_labels = to_crop(pre_labels, box, labels=True)
    if np.array_equal(crop_labels, pre_crop_labels):
        return out
    gen = from_crop(crop_labels, box, labels=True)
    ref = from_crop(pre_crop_labels, box, labels=True)
    changed = gen != ref
    region = out[box.slices]
    region[changed] = gen[changed]
    return out


__all__ = ["DEFAULT_CROP_KJI", "DEFAULT_PAD_MM", "DEFAULT_SEAM_MM", "CropBox", "blend_weight", "crop_geometry",
           "from_crop", "liver_index_box", "make_crop_box", "paste_image", "paste_labels", "to_crop"]
