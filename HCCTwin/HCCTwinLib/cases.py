"""The ``Case``: pre-treatment phases + masks + clinical values + geometry, as plain numpy data.

Array convention (used everywhere in the engine): numpy arrays are indexed ``[k, j, i]`` (slice, row, column),
exactly as ``SimpleITK.GetArrayFromImage`` returns them. Physical coordinates follow ITK/DICOM **LPS**;
:class:`Geometry` converts to Slicer's **RAS** (``ijk_to_ras``) for the scene bridge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .labels import MAX_LABEL

CT_PHASES = ("arterial", "portal", "delayed")
MRI_SEQUENCES = ("t1_arterial", "t1_portal", "t1_pre", "t2", "dwi")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the phases the models read; a study may have one of them (or a delayed phase) alone
MODEL_PHASES = ("arterial", "portal")
#: what stands in for a missing model phase, in order of preference (the delayed / equilibrium phase reads closest
#: to the portal venous one; any CT phase is better than none)
PHASE_SUBSTITUTES = {"portal": ("delayed", "arterial"), "arterial": ("portal", "delayed")}


def fill_missing_phases(phases, wanted=MODEL_PHASES) -> tuple[dict, dict[str, str]]:
    """``(phases with every wanted phase present, {filled phase: the phase copied into it})``.

    A single-phase study is fed to the models by copying the phase it has into the missing channel (the models
    trained with phase dropout saw exactly that; :mod:`HCCTwinLib.segmentation.augment`). The caller's arrays are
    not copied. A study with none of the wanted phases and no substitute is returned unchanged.
    """
    out = dict(phases)
    filled: dict[str, str] = {}
    for name in wanted:
        if name in out:
            continue
        source = next((s for s in PHASE_SUBSTITUTES.get(name, ()) if s in phases), None)
        if source is not None:
            out[name] = phases[source]
            filled[name] = source
    return out, filled


def model_input(phases, wanted=MODEL_PHASES) -> list[str]:
    """The combination of model phases a study provides (sorted; a delayed phase standing in for the portal venous
    one counts as portal): what a model card's ``accepted_inputs`` is checked against."""
    _, filled = fill_missing_phases(phases, wanted)
    used = {p for p in wanted if p not in filled}
    if filled.get("portal") == "delayed":
        used.add("portal")
    return sorted(used)


def accepted_inputs_of(card, wanted=MODEL_PHASES) -> list[list[str]]:
    """A model card's ``accepted_inputs`` (each sorted), or its input phases together when it lists none."""
    return [sorted(a) for a in (card.get("accepted_inputs") or [list(card.get("input_phases") or wanted)])]


@dataclass(frozen=True)
class Geometry:
    """Voxel grid: ``shape`` is numpy order (k, j, i); spacing/origin in (x, y, z) mm, LPS; direction row-major 3x3."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(s) for s in np.asarray(self.direction).ravel()))

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS millimetres (what Slicer's volume nodes use)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    def physical_extent_lps(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (min, max) in LPS of the voxel centres' grid corners."""
        nx, ny, nz = self.size_xyz
        corners = np.array([[i, j, k, 1.0] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5)
                            for k in (-0.5, nz - 0.5)])
        pts = (self.ijk_to_lps() @ corners.T).T[:, :3]
        return pts.min(axis=0), pts.max(axis=0)

    @classmethod
    def from_sitk(cls, image) -> Geometry:
        size = image.GetSize()
        return cls(shape=(size[2], size[1], size[0]), spacing=image.GetSpacing(), origin=image.GetOrigin(),
                   direction=image.GetDirection())

    def apply_to(self, image):
        """Set spacing/origin/direction of a SimpleITK image (whose size must match) and return it."""
        if tuple(image.GetSize()) != self.size_xyz:
            raise ValueError(f"image size {image.GetSize()} does not match geometry {self.size_xyz}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_grid(self, other: Geometry, tol: float = 1e-4) -> bool:
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, atol=tol)
                and np.allclose(self.origin, other.origin, atol=tol * 10)
                and np.allclose(self.direction, other.direction, atol=tol))


@dataclass
class Case:
    """One patient's pre-treatment study on a single grid.

    ``phases`` maps a phase name ("arterial", "portal", or MRI sequence names) to a float32 array in HU (CT) or
    scanner units (MRI); all phases and ``labels`` share ``geometry``. ``labels`` uses :mod:`HCCTwinLib.labels`.
    """

    patient_id: str
    phases: dict[str, np.ndarray]
    geometry: Geometry
    labels: np.ndarray | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    modality: str = "CT"
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.phases:
            raise ValueError("a Case needs at least one phase")
        for name, arr in self.phases.items():
            if tuple(arr.shape) != self.geometry.shape:
                raise ValueError(f"phase {name!r} has shape {arr.shape}, geometry says {self.geometry.shape}")
        if self.labels is not None and tuple(self.labels.shape) != self.geometry.shape:
            raise ValueError(f"labels have shape {self.labels.shape}, geometry says {self.geometry.shape}")

    @property
    def phase_names(self) -> list[str]:
        return list(self.phases)

    @property
    def reference_phase(self) -> str:
        """The phase the grid came from: portal venous for CT when present, otherwise the first one."""
        return "portal" if "portal" in self.phases else next(iter(self.phases))

    def stacked(self, names: tuple[str, ...] | None = None) -> np.ndarray:
        """Phases as a (C, K, J, I) float32 array in the given order (default: arterial, portal)."""
        names = names or tuple(n for n in MODEL_PHASES if n in self.phases) or tuple(self.phases)
        return np.stack([self.phases[n] for n in names]).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Follow-up scans: observed (registered) or virtual (generated), on the pre-treatment grid
# ---------------------------------------------------------------------------------------------------------------
class FollowUp:
    """One follow-up time point on the pre-treatment grid: observed (real, registered) or virtual (generated).

    ``phases`` maps phase name to HU array; ``std`` (virtual only) the per-voxel standard deviation over samples;
    ``labels`` the uint8 label map. All three read as full-grid numpy arrays ``[k, j, i]``.

    Virtual follow-ups from the generator are stored compactly (the generated liver crop; see
    :class:`HCCTwinLib.twin.crop.CropFollowUp`): there ``phases[name]``, ``std[name]`` and ``labels`` are computed
    on each access (a new array every time, nothing kept), so hold on to the array while you use it and let it go
    afterwards. The accessors below give cheaper views for the scene, the report and the response reading; on a
    plain FollowUp (arrays given) they work on those arrays.
    """

    #: virtual only, when the generator read them: the response category of each sampled response's trajectory at
    #: this week, per criterion (``{"mrecist": ["PR", "SD", ...], "recist": [...]}``, one entry per sample)
    sampled_response: dict[str, list[str]] | None = None

    def __init__(self, weeks: int, phases: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
                 std: Mapping[str, np.ndarray] | None = None, kind: str = "virtual", regimen: str | None = None):
        self.weeks = weeks
        self.phases = phases
        self.labels = labels
        self.std = {} if std is None else std
        self.kind = kind  # "virtual" or "observed"
        self.regimen = regimen

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(weeks={self.weeks!r}, phases={list(self.phases)}, kind={self.kind!r}, "
                f"regimen={self.regimen!r}, std={list(self.std)}, labels={'yes' if self.has_labels else 'no'})")

    @property
    def has_labels(self) -> bool:
        """Whether the follow-up has a label map (without computing it)."""
        return self.labels is not None

    @property
    def region(self) -> tuple[slice, slice, slice] | None:
        """Index box ``[k, j, i]`` outside which images and labels equal the pre-treatment input (None: anywhere)."""
        return None

    def phase_region(self, phase: str, region: tuple[slice, ...] | None) -> np.ndarray:
        """``phases[phase][region]`` (float32; the whole grid for None) without computing the whole grid first."""
        arr = np.asarray(self.phases[phase], dtype=np.float32)
        return arr if region is None else arr[region]

    def labels_region(self, region: tuple[slice, ...] | None) -> np.ndarray | None:
        """``labels[region]`` (the whole grid for None) without computing the whole grid first."""
        labels = self.labels
        return labels if labels is None or region is None else labels[region]

    def label_counts(self) -> np.ndarray | None:
        """Voxel count per label value (``np.bincount`` of ``labels``), or None without labels."""
        labels = self.labels
        return None if labels is None else np.bincount(np.asarray(labels).ravel(), minlength=MAX_LABEL + 1)

    def fill_phase(self, phase: str, out: np.ndarray, *, rounded_input: np.ndarray | None = None) -> np.ndarray:
        """Write ``phases[phase]`` into ``out`` (same shape; an integer ``out`` gets the values rounded and clipped
        to its range) in slabs, without a full-size temporary. Used to fill scene volumes in place.
        ``rounded_input``: the pre-treatment phase already stored as ``out`` stores it (e.g. the scene's input
        volume); a follow-up that knows where it equals the input copies it from there."""
        store_rounded(out, self.phases[phase])
        return out

    def std_volume(self, phase: str, geometry) -> tuple[np.ndarray, Any]:
        """``(SD array, its Geometry)`` at the resolution the SD was computed on: ``(std[phase], geometry)`` for
        plain arrays; the generator's crop grid for compact virtual follow-ups (much smaller, same information; the
        scene shows it as an overlay, which Slicer resamples)."""
        return np.asarray(self.std[phase], dtype=np.float32), geometry


#: slab thickness (slices) of :func:`store_rounded`
_SLAB = 8


def store_rounded(out: np.ndarray, src: np.ndarray, k0: int = 0) -> None:
    """``out[...] = src[k0 : k0 + len(out)]`` slab by slab; an integer ``out`` gets ``rint`` and its range clipped
    (HU -> int16 changes a value by at most 0.5)."""
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        for a in range(0, out.shape[0], _SLAB):
            b = min(out.shape[0], a + _SLAB)
            slab = np.rint(np.asarray(src[k0 + a:k0 + b], dtype=np.float32))
            np.clip(slab, info.min, info.max, out=slab)
            out[a:b] = slab
    else:
        out[...] = src[k0:k0 + out.shape[0]]


@dataclass
class ObservedScan:
    """A real follow-up scan on its own grid (as acquired): :func:`run_case` registers it to the pre-treatment scan
    (rigid + affine, then deformable inside the liver unless ``deformable`` is False) before anything uses it."""

    weeks: int
    phases: dict[str, np.ndarray]
    geometry: Any
    labels: np.ndarray | None = None
    regimen: str | None = None
    deformable: bool = True


def sub_geometry(geometry, region: tuple[slice, ...]):
    """Geometry of the index box ``region`` (k, j, i slices with steps of 1) of ``geometry``: same spacing and
    direction, origin moved to the box's first voxel."""
    lo = [s.indices(n)[0] for s, n in zip(region, geometry.shape)]
    hi = [s.indices(n)[1] for s, n in zip(region, geometry.shape)]
    origin = geometry.ijk_to_lps() @ np.array([lo[2], lo[1], lo[0], 1.0])
    return Geometry(shape=tuple(b - a for a, b in zip(lo, hi)), spacing=geometry.spacing, origin=tuple(origin[:3]),
                    direction=geometry.direction)
