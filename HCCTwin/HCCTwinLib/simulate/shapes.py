"""Geometry helpers of the simulator: an anatomical voxel grid and implicit shapes evaluated on bounding boxes.

All shapes live in the patient's *anatomical frame* in millimetres (LPS axes: +x patient left, +y posterior,
+z superior). A :class:`Grid` holds the voxel centres of one scan in that frame; every shape is evaluated only on the
voxels of its bounding box, so painting dozens of organs on a 192 x 192 x 64 grid stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cases import Geometry

BBox = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel centres of a scan in the anatomical frame; ``geometry`` is the LPS grid that gets written."""

    geometry: Geometry
    x: np.ndarray  # (nx,) mm, increasing with i
    y: np.ndarray  # (ny,) mm, increasing with j
    z: np.ndarray  # (nz,) mm, increasing with k

    @classmethod
    def make(cls, shape_kji: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
             center_xyz: tuple[float, float, float], table_offset_xyz: tuple[float, float, float] = (0, 0, 0)
             ) -> Grid:
        nz, ny, nx = (int(s) for s in shape_kji)
        sx, sy, sz = (float(s) for s in spacing_xyz)
        cx, cy, cz = center_xyz
        x = (cx + (np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32)
        y = (cy + (np.arange(ny) - (ny - 1) / 2) * sy).astype(np.float32)
        z = (cz + (np.arange(nz) - (nz - 1) / 2) * sz).astype(np.float32)
        origin = (float(x[0]) + table_offset_xyz[0], float(y[0]) + table_offset_xyz[1],
                  float(z[0]) + table_offset_xyz[2])
        return cls(Geometry(shape=(nz, ny, nx), spacing=(sx, sy, sz), origin=origin), x, y, z)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    def bbox(self, lo, hi) -> BBox | None:
        """Index slices (k, j, i) of the voxels whose centres lie in [lo, hi] (mm, xyz); None when empty."""
        out = []
        for coords, a, b in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            i0 = int(np.searchsorted(coords, a, side="left"))
            i1 = int(np.searchsorted(coords, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def bbox_around(self, center, radius) -> BBox | None:
        c = np.asarray(center, float)
        r = np.broadcast_to(np.asarray(radius, float), (3,))
        return self.bbox(c - r, c + r)

    def coords(self, bb: BBox):
        """Broadcastable (Z, Y, X) coordinate arrays of a bounding box: shapes (nz,1,1), (1,ny,1), (1,1,nx)."""
        ks, js, is_ = bb
        return (self.z[ks][:, None, None], self.y[js][None, :, None], self.x[is_][None, None, :])

    def full(self) -> BBox:
        return (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))


def union_bbox(a: BBox | None, b: BBox | None) -> BBox | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def pad_bbox(bb: BBox, pad: tuple[int, int, int], shape) -> BBox:
    return tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(bb, pad, shape))


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def local_coords(Z, Y, X, center, rotation: np.ndarray | None = None):
    """Coordinates of the box points in a shape's own frame: ``R^T (p - c)``; returns (u, v, w) arrays."""
    dx, dy, dz = X - np.float32(center[0]), Y - np.float32(center[1]), Z - np.float32(center[2])
    if rotation is None:
        return dx, dy, dz
    r = np.asarray(rotation, dtype=np.float32)
    u = r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz
    v = r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz
    w = r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz
    return u, v, w


def ellipsoid_rho2(Z, Y, X, center, semi_axes, rotation=None) -> np.ndarray:
    """Normalised squared radius (<= 1 inside) of an ellipsoid, on broadcast box coordinates."""
    u, v, w = local_coords(Z, Y, X, center, rotation)
    a, b, c = (np.float32(s) for s in semi_axes)
    return (u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2


def superellipse_rho(Y, X, center_xy, semi_xy, power: float) -> np.ndarray:
    """Axial super-ellipse |x/a|^p + |y/b|^p (<= 1 inside), 2D over (ny, nx)."""
    return (np.abs((X - center_xy[0]) / semi_xy[0]) ** power + np.abs((Y - center_xy[1]) / semi_xy[1]) ** power)


def capsule_distance(Z, Y, X, p0, p1):
    """Distance of box points to the segment p0-p1 and the segment parameter t in [0, 1] of the closest point."""
    p0 = np.asarray(p0, np.float32)
    d = np.asarray(p1, np.float32) - p0
    dd = float(d @ d) or 1e-6
    dx, dy, dz = X - p0[0], Y - p0[1], Z - p0[2]
    t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / np.float32(dd), 0.0, 1.0)
    ex, ey, ez = dx - t * d[0], dy - t * d[1], dz - t * d[2]
    return np.sqrt(ex * ex + ey * ey + ez * ez), t


@dataclass(frozen=True)
class Waves:
    """A smooth random field as a sum of plane waves: grid-independent, so a texture looks the same at any
    resolution and at every follow-up. ``k`` (n, 3) rad/mm, ``phase`` (n,), ``amp`` (n,)."""

    k: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], anisotropy=(1, 1, 1)):
        direction = rng.normal(size=(n, 3)) * np.asarray(anisotropy, float)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength_mm, size=n)
        amp = rng.uniform(0.5, 1.0, size=n)
        amp /= np.sqrt(np.sum(amp ** 2) / 2)  # unit standard deviation of the sum
        return cls(k=(2 * np.pi / lam)[:, None] * direction, phase=rng.uniform(0, 2 * np.pi, size=n), amp=amp)

    def __call__(self, X, Y, Z, center=(0.0, 0.0, 0.0), scale: float = 1.0) -> np.ndarray:
        """Field at box points (relative to ``center``, coordinates divided by ``scale``); unit SD, zero mean."""
        dx = (X - np.float32(center[0])) / np.float32(scale)
        dy = (Y - np.float32(center[1])) / np.float32(scale)
        dz = (Z - np.float32(center[2])) / np.float32(scale)
        out = None
        for (kx, ky, kz), ph, a in zip(self.k.astype(np.float32), self.phase, self.amp):
            term = np.float32(a) * np.cos(kx * dx + ky * dy + kz * dz + np.float32(ph))
            out = term if out is None else out + term
        return out

    def at_points(self, pts: np.ndarray, center=(0.0, 0.0, 0.0), scale: float = 1.0) -> np.ndarray:
        p = (np.asarray(pts, float) - np.asarray(center, float)) / scale
        return np.cos(p @ self.k.T + self.phase) @ self.amp
