"""The baseline-anchored twin: per-lesion kinetics (:mod:`.kinetic`) rendered on the patient's own image
(:mod:`.render`), with the generator's interface (``generate`` -> ``{regimen: {weeks: FollowUp}}``).

Per request: the lesions of the pre-treatment labels and their covariates (clinical values from ``Case.clinical``
when given), one latent response ``z_s`` per sample (stratified over the quantiles of N(0, 1) from ``seed``:
:func:`latent_draws`; shared by every regimen, week and lesion: regimens compared on equal footing, coherent
trajectories), each lesion's own deviation (:func:`lesion_draws`; weighed against ``z_s`` by the share of the
residual variance a patient's lesions have in common, fitted) and one new-lesion draw ``u_s``; the site of a new
lesion is chosen once per request. For each (regimen, week):

- ``phases`` / ``labels``: the rendering of the **median** response (``z = 0``; a new lesion when its probability is
  >= 0.5), a plausible image whose labels and HU agree;
- ``std``: the per-voxel SD over the renderings of the samples (where the outline, the necrosis or a new lesion may
  differ between plausible responses).

The (regimen, week) renderings run on threads (:func:`HCCTwinLib.device.cpu_threads`; the images do not depend on
the thread count). A :class:`PatchFollowUp` keeps only the voxels its rendering changed (and their box, within the
region that can change: about the lesions + 10 mm, the thrombus, the new site), pasted into the input on access:
every other voxel is the input's, bit for bit. Weeks == 0 and regimens
without kinetics (no observed follow-ups in the training cohort) return the input unchanged, the latter with a note.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtri

from .. import device as devices
from ..cases import Case, FollowUp, Geometry, store_rounded
from ..errors import InputError
from ..labels import MAX_LABEL, PVTT
from ..progress import ProgressCallback, report
from ..response import CRITERIA, ImageLesions, analyse_image, read_analysed
from ..weights.cache import model_label
from .crop import _LazyVolumes
from .generator import check_request
from .kinetic import PHASES, KineticModel, find_lesions, sphere_radius_mm
from .render import choose_new_site, make_context, render

ARCHITECTURE = "anchored-kinetic"


def region_geometry(geometry: Geometry, region: tuple[slice, slice, slice]) -> Geometry:
    lo = [s.start for s in region]
    origin = geometry.ijk_to_lps() @ np.array([lo[2], lo[1], lo[0], 1.0])
    return Geometry(shape=tuple(s.stop - s.start for s in region), spacing=geometry.spacing,
                    origin=tuple(origin[:3]), direction=geometry.direction)


def _overlap(want: tuple[slice, ...], have: tuple[slice, ...], shape) -> tuple[tuple, tuple] | None:
    """``(slices in want-array coordinates, slices in have-array coordinates)`` of the two boxes' overlap."""
    a_out, b_out = [], []
    for s, h, n in zip(want, have, shape):
        a, b, step = s.indices(n)
        if step != 1:
            raise ValueError("regions must be boxes with step 1")
        c0, c1 = max(a, h.start), min(b, h.stop)
        if c0 >= c1:
            return None
        a_out.append(slice(c0 - a, c1 - a))
        b_out.append(slice(c0 - h.start, c1 - h.start))
    return tuple(a_out), tuple(b_out)


class PatchFollowUp(FollowUp):
    """A virtual follow-up that differs from the input only inside ``patch_region``: there, only the voxels whose
    HU, label or SD differ from the input's are stored (flat indices into the box; HU float32, SD float16, labels
    uint8; often a fifth of the box), the input's arrays (referenced, not copied) everywhere else. The box arrays
    (``patch_phases``, ``patch_labels``, ``patch_std``) and the full-grid volumes are rebuilt on access."""

    def __init__(self, weeks: int, pre: Mapping[str, np.ndarray], pre_labels: np.ndarray, geometry: Geometry, *,
                 patch_region: tuple[slice, slice, slice] | None = None,
                 patch_phases: Mapping[str, np.ndarray] | None = None, patch_labels: np.ndarray | None = None,
                 patch_std: Mapping[str, np.ndarray] | None = None, regimen: str | None = None):
        self.weeks = weeks
        self.kind = "virtual"
        self.regimen = regimen
        self.pre = pre
        self.pre_labels = pre_labels
        self.geometry = geometry
        self.patch_region = patch_region
        self.phase_names = tuple(pre)
        self._index = np.zeros(0, np.int64)
        self._values: dict[str, np.ndarray] = {}
        self._std_values: dict[str, np.ndarray] = {}
        self._label_values: np.ndarray | None = None
        if patch_region is not None:
            self._store(dict(patch_phases or {}), patch_labels, dict(patch_std or {}))
        self.phases = _LazyVolumes(self.phase_names, self._phase)
        self.std = _LazyVolumes(self.phase_names, self._std)
        self.patch_phases = _LazyVolumes(tuple(self._values), self._box_phase)
        self.patch_std = _LazyVolumes(tuple(self._std_values), self._box_std)
        self._counts: np.ndarray | None = None

    def _store(self, phases: dict[str, np.ndarray], labels: np.ndarray | None, std: dict[str, np.ndarray]) -> None:
        """Keep the voxels of the box where anything differs from the input (or has an SD)."""
        box = self.patch_region
        differs = np.zeros([b.stop - b.start for b in box], bool)
        if labels is not None:
            differs |= labels != np.asarray(self.pre_labels)[box]
        for name, arr in phases.items():
            differs |= arr != np.asarray(self.pre[name])[box]
        for arr in std.values():
            differs |= arr > 0
        self._index = np.flatnonzero(differs)
        self._index = self._index.astype(np.int32 if differs.size < 2 ** 31 else np.int64)
        self._values = {n: np.asarray(a, np.float32).ravel()[self._index] for n, a in phases.items()}
        self._std_values = {n: np.asarray(a).ravel()[self._index].astype(np.float16)  # an SD for display
                            for n, a in std.items()}
        self._label_values = None if labels is None else np.asarray(labels, np.uint8).ravel()[self._index]

    def _box_phase(self, phase: str) -> np.ndarray:
        out = np.array(np.asarray(self.pre[phase])[self.patch_region], dtype=np.float32, copy=True)
        out.ravel()[self._index] = self._values[phase]
        return out

    def _box_std(self, phase: str) -> np.ndarray:
        out = np.zeros([b.stop - b.start for b in self.patch_region], np.float32)
        out.ravel()[self._index] = self._std_values[phase]
        return out

    @property
    def patch_labels(self) -> np.ndarray | None:
        if self._label_values is None:
            return None
        out = np.array(np.asarray(self.pre_labels)[self.patch_region], dtype=np.uint8, copy=True)
        out.ravel()[self._index] = self._label_values
        return out

    @property
    def region(self) -> tuple[slice, slice, slice] | None:
        return self.patch_region if self.patch_region is not None else tuple(slice(0, 0) for _ in range(3))

    @property
    def has_labels(self) -> bool:
        return True

    def nbytes(self) -> int:
        arrays = [self._index, *self._values.values(), *self._std_values.values(), self._label_values]
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def labels(self) -> np.ndarray:
        out = np.array(self.pre_labels, dtype=np.uint8, copy=True)
        if self._label_values is not None:
            out[self.patch_region] = self.patch_labels
        return out

    def _phase(self, phase: str) -> np.ndarray:
        out = np.array(self.pre[phase], dtype=np.float32, copy=True)
        if phase in self._values:
            out[self.patch_region] = self._box_phase(phase)
        return out

    def _std(self, phase: str) -> np.ndarray:
        out = np.zeros(np.shape(self.pre_labels), np.float32)
        if phase in self._std_values:
            out[self.patch_region] = self._box_std(phase)
        return out

    def phase_region(self, phase: str, region: tuple[slice, ...] | None) -> np.ndarray:
        if region is None:
            return self._phase(phase)
        out = np.array(np.asarray(self.pre[phase])[region], dtype=np.float32, copy=True)
        if phase in self._values:
            hit = _overlap(region, self.patch_region, np.shape(self.pre_labels))
            if hit is not None:
                out[hit[0]] = self._box_phase(phase)[hit[1]]
        return out

    def labels_region(self, region: tuple[slice, ...] | None) -> np.ndarray:
        if region is None:
            return self.labels
        out = np.array(np.asarray(self.pre_labels)[region], dtype=np.uint8, copy=True)
        if self._label_values is not None:
            hit = _overlap(region, self.patch_region, np.shape(self.pre_labels))
            if hit is not None:
                out[hit[0]] = self.patch_labels[hit[1]]
        return out

    def label_counts(self) -> np.ndarray:
        if self._counts is None:
            n = MAX_LABEL + 1
            counts = np.bincount(np.asarray(self.pre_labels).ravel(), minlength=n)
            if self._label_values is not None:
                before = np.asarray(self.pre_labels)[self.patch_region].ravel()[self._index]
                counts = counts - np.bincount(before, minlength=n) + np.bincount(self._label_values, minlength=n)
            self._counts = counts
        return self._counts

    def fill_phase(self, phase: str, out: np.ndarray, *, rounded_input: np.ndarray | None = None) -> np.ndarray:
        if rounded_input is not None and rounded_input.shape == out.shape and rounded_input.dtype == out.dtype:
            np.copyto(out, rounded_input)
        else:
            store_rounded(out, np.asarray(self.pre[phase]))
        if phase in self._values:
            store_rounded(out[self.patch_region], self._box_phase(phase))
        return out

    def std_volume(self, phase: str, geometry=None) -> tuple[np.ndarray, Any]:
        geometry = geometry or self.geometry
        if phase not in self._std_values:
            return np.zeros((1, 1, 1), np.float32), region_geometry(geometry, (slice(0, 1),) * 3)
        return self._box_std(phase), region_geometry(geometry, self.patch_region)


def latent_draws(seed: int, samples: int) -> tuple[list[float], list[float]]:
    """The samples' latent responses ``z_s`` and new-lesion draws ``u_s``, stratified: sample ``s`` draws ``z_s``
    from its own ``1/samples`` quantile slab of N(0, 1) (``z_s = Phi^-1((s + v_s) / samples)``, ``v_s`` uniform) and
    ``u_s`` from the slab ``pi(s)`` of U(0, 1) for a random permutation ``pi`` (so ``u`` does not follow ``z``).
    Still random draws of the response (each ``z_s`` is N(0, 1) when ``s`` is picked at random), but four of them
    span the distribution instead of, by chance, sitting in one tail for every patient of a run."""
    rng = np.random.default_rng(int(seed) * 1000003)
    v, w, perm = rng.random(samples), rng.random(samples), rng.permutation(samples)
    eps = 1e-9
    zs = [float(ndtri(min(max((s + v[s]) / samples, eps), 1.0 - eps))) for s in range(samples)]
    us = [float((perm[s] + w[s]) / samples) for s in range(samples)]
    return zs, us


def lesion_draws(seed: int, samples: int, indices: Sequence[int]) -> list[dict[int, float]]:
    """Each sample's own deviation of every lesion (N(0, 1) per lesion index, from ``seed``; the same for every
    regimen and week of the request): the part of a lesion's response its patient's other lesions do not share
    (:meth:`.kinetic.KineticModel.plan`)."""
    per_lesion = {int(i): np.random.default_rng([int(seed), 1, int(i)]).standard_normal(samples) for i in indices}
    return [{i: float(v[s]) for i, v in per_lesion.items()} for s in range(samples)]


def _render_item(ctx, plans: Mapping, look, regimen: str, weeks: int, samples: int, read_geometry=None) -> tuple:
    """One (regimen, week): the median response's rendering and the per-voxel SD over the samples' renderings, cut
    to the box of its changes (:func:`_crop_to_changes`), and, with ``read_geometry`` (the region's), the lesions of
    each sample's rendering for its response reading (:func:`HCCTwinLib.response.analyse_image`)."""
    med_phases, med_labels = render(ctx, plans[(regimen, weeks, None)], look)
    acc = {p: np.zeros(ctx.labels.shape, np.float32) for p in PHASES}
    acc2 = {p: np.zeros(ctx.labels.shape, np.float32) for p in PHASES}
    readings = []
    for s in range(samples):
        sp_, sl_ = render(ctx, plans[(regimen, weeks, s)], look)
        if read_geometry is not None:
            readings.append(analyse_image(sl_, read_geometry, sp_["arterial"]))
        for p in PHASES:
            d = np.subtract(sp_[p], med_phases[p], out=sp_[p])
            acc[p] += d
            acc2[p] += d * d
    std = {p: np.sqrt(np.maximum(acc2[p] / samples - (acc[p] / samples) ** 2, 0.0)).astype(np.float32)
           for p in PHASES}
    return (*_crop_to_changes(ctx, med_phases, med_labels, std), readings)


def sampled_categories(baseline: ImageLesions, by_week: Mapping[int, Sequence[ImageLesions]], samples: int
                       ) -> dict[int, dict[str, list[str]]]:
    """``{week: {criterion: [category of sample 0, 1, ...]}}``: each sample's trajectory (its renderings in week
    order, the nadir running along it) read against the input's lesions by the same rules as every reading."""
    out: dict[int, dict[str, list[str]]] = {w: {c: [] for c in CRITERIA} for w in by_week}
    for s in range(samples):
        reading = read_analysed(baseline, [(w, by_week[w][s]) for w in sorted(by_week)])
        for tp in reading.timepoints:
            for c in CRITERIA:
                out[int(tp.weeks)][c].append(tp.category(c))
    return out


def _crop_to_changes(ctx, phases: dict[str, np.ndarray], labels: np.ndarray, std: dict[str, np.ndarray]):
    """The rendering cut to the box of the voxels that differ from the input or have an SD (the region holds every
    change of every follow-up of the request; one follow-up's changes are often a third of it, e.g. two lesions far
    apart): ``(region, phases, labels, std)`` with ``region`` in full-grid coordinates, None when nothing changed."""
    changed = labels != ctx.labels
    for p in PHASES:
        changed |= phases[p] != ctx.phases[p]
        changed |= std[p] > 0
    if not changed.any():
        return None, {}, None, {}
    lo = [int(np.flatnonzero(changed.any(axis=tuple(a for a in range(3) if a != d)))[0]) for d in range(3)]
    hi = [int(np.flatnonzero(changed.any(axis=tuple(a for a in range(3) if a != d)))[-1]) + 1 for d in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    region = tuple(slice(r.start + a, r.start + b) for r, a, b in zip(ctx.region, lo, hi))
    return (region, {p: np.ascontiguousarray(phases[p][box]) for p in PHASES}, np.ascontiguousarray(labels[box]),
            {p: np.ascontiguousarray(std[p][box]) for p in PHASES})


class AnchoredGenerator:
    """A loaded kinetic model with the generator interface (see the module docstring)."""

    def __init__(self, model: KineticModel, card: Mapping[str, Any], *, path: Path | None = None, message: str = ""):
        self.model = model
        self.card = dict(card)
        self.path = path
        self.message = message
        self.device = "cpu"
        self.cpu_precision = "fp32"
        self.regimens = list(self.card.get("regimens") or model.regimens)
        self.last_info: dict[str, Any] = {}
        self._lock = threading.Lock()

    def describe(self, *, samples: int | None = None, seed: int | None = None) -> str:
        """One line for provenance (``result.json`` ``provenance.generator``): the model, the sampling asked for and
        where the last run ran."""
        text = model_label(self.card)
        if samples is not None:
            text += f", {samples} samples"
        if seed is not None:
            text += f", seed {seed}"
        return f"{text}, {devices.compute_label(self.last_info, self.device)}"

    @staticmethod
    def _read_samples(ctx, read_geometry, sample_lesions, rendered, samples: int) -> None:
        """Set ``sampled_response`` of the rendered follow-ups (one trajectory per regimen and sample)."""
        baseline = analyse_image(ctx.labels, read_geometry, ctx.phases["arterial"])
        for r in dict.fromkeys(r for r, _ in sample_lesions):
            by_week = {w: v for (r2, w), v in sample_lesions.items() if r2 == r}
            for w, cats in sampled_categories(baseline, by_week, samples).items():
                rendered[(r, w)].sampled_response = cats

    @property
    def trained_weeks(self) -> tuple[int, ...]:
        weeks = (self.card.get("training_data") or {}).get("weeks") or self.model.weeks
        return tuple(int(w) for w in weeks)

    def generate(self, case_or_phases: Case | Mapping[str, np.ndarray], labels: np.ndarray | None = None,
                 geometry: Geometry | None = None, *, regimens: Sequence[str] | None = None,
                 weeks: Sequence[int] = (8, 16, 24), samples: int = 4, seed: int = 0, steps: int | None = None,
                 progress: ProgressCallback | None = None, clinical: Mapping[str, Any] | None = None,
                 read_samples: bool = True) -> dict[str, dict[int, FollowUp]]:
        """``{regimen: {weeks: FollowUp}}`` rendered on the input (``steps`` is accepted for the interface and
        ignored: nothing is sampled step by step). With ``read_samples`` (default) each rendered follow-up's
        :attr:`~HCCTwinLib.cases.FollowUp.sampled_response` holds the RECIST 1.1 / mRECIST category of every
        sample's trajectory at its week, read on the region that can change: how sure the twin is of the reading."""
        t0 = time.perf_counter()
        if isinstance(case_or_phases, Case) and clinical is None:
            clinical = case_or_phases.clinical
        phases, labels, geometry, regimens, weeks, samples = check_request(
            case_or_phases, labels, geometry, regimens, weeks, samples, known_regimens=self.regimens,
            trained_weeks=self.trained_weeks)
        if not (labels > 0).any():
            raise InputError("the label map has no liver (no voxel > 0); segment the pre-treatment study first so "
                             "the generator knows where the liver is.")
        trained = max(self.trained_weeks)
        messages: list[str] = []
        beyond = [w for w in weeks if w > trained]
        if beyond:
            messages.append(f"week(s) {', '.join(map(str, beyond))} lie beyond the follow-ups the generator was "
                            f"fitted on (up to week {trained}): extrapolated, less reliable.")
        no_kinetics = [r for r in regimens if not self.model.fitted(r)]
        if no_kinetics:
            messages.append(f"no observed follow-ups of {', '.join(no_kinetics)} in the generator's training "
                            f"cohort: their virtual follow-ups show the pre-treatment scan unchanged.")

        report(progress, 0.0, "Lesions and their covariates")
        comp, lesions = find_lesions(labels, geometry, phases, clinical)
        pvtt_ml = float((labels == PVTT).sum()) * geometry.voxel_volume_ml
        zs, us = latent_draws(seed, samples)
        es = lesion_draws(seed, samples, [les.index for les in lesions])
        items = [(r, w) for r in regimens for w in weeks if w > 0]
        plans = {}
        for r, w in items:
            plans[(r, w, None)] = self.model.plan(lesions, pvtt_ml, r, w, 0.0, 0.5)
            for s in range(samples):
                plans[(r, w, s)] = self.model.plan(lesions, pvtt_ml, r, w, zs[s], us[s], es[s])
        max_scale = {les.index: max([1.0] + [(p.lesions[les.index][0] / les.total_ml) ** (1 / 3)
                                             for p in plans.values()]) for les in lesions}
        new_ml = max([p.new_lesion_ml for p in plans.values()], default=0.0)
        site = choose_new_site(labels, geometry, np.random.default_rng(int(seed))) if new_ml > 0 else None
        if new_ml > 0 and site is None:
            messages.append("a new lesion was predicted but the liver has no site far enough from the known "
                            "tumour; none is drawn.")
        radius = sphere_radius_mm(new_ml) if new_ml > 0 else 0.0
        ctx = make_context(phases, labels, geometry, comp, lesions, max_scale, new_site=site, new_radius_mm=radius)
        if ctx is None and items and lesions:
            raise InputError("nothing to render: no lesion region")  # cannot happen with lesions; defensive
        pre = {p: phases[p] for p in PHASES}
        work = [(r, w) for r in regimens for w in weeks if w > 0 and ctx is not None and self.model.fitted(r)]
        threads = min(devices.cpu_threads(), len(work))

        read_geometry = region_geometry(geometry, ctx.region) if ctx is not None and read_samples else None

        def one(item):
            r, w = item
            return _render_item(ctx, plans, self.model.appearance(r, w), r, w, samples, read_geometry)

        rendered = {}
        sample_lesions: dict[tuple[str, int], list[ImageLesions]] = {}
        # the (regimen, week) renderings are independent: on threads (scipy's interpolation and numpy's copies run
        # without the GIL), each deterministic, so the images do not depend on the thread count; progress is
        # reported (and a cancel raised) on the caller's thread, and a cancel drops the renderings not yet started.
        # Each rendering is kept as the voxels it changed as soon as it arrives (its box arrays are then freed).
        pool = ThreadPoolExecutor(threads, thread_name_prefix="hcctwin-render") if threads > 1 else None
        try:
            results = pool.map(one, work) if pool is not None else map(one, work)
            for done, ((r, w), (region, med_phases, med_labels, std, readings)) in enumerate(zip(work, results),
                                                                                              start=1):
                rendered[(r, w)] = PatchFollowUp(w, pre, labels, geometry, patch_region=region,
                                                 patch_phases=med_phases, patch_labels=med_labels, patch_std=std,
                                                 regimen=r)
                if readings:
                    sample_lesions[(r, w)] = readings
                del med_phases, med_labels, std
                report(progress, 0.1 + 0.85 * done / max(1, len(items)), f"Rendered {r}, week {w}")
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            devices.release_freed_memory()  # the render threads' freed arrays, else kept by the process
        if sample_lesions:
            self._read_samples(ctx, read_geometry, sample_lesions, rendered, samples)
        out: dict[str, dict[int, FollowUp]] = {
            r: {w: rendered[(r, w)] if (r, w) in rendered else PatchFollowUp(w, pre, labels, geometry, regimen=r)
                for w in weeks}
            for r in regimens}
        self.last_info = {"n_items": len(items), "samples": samples, "lesions": len(lesions),
                          "region_kji": None if ctx is None else [[s.start, s.stop] for s in ctx.region],
                          "latent_response_z": [round(z, 4) for z in zs],
                          "new_lesion_probability": {r: {w: round(self.model.new_lesion_probability(r, w), 3)
                                                         for w in weeks} for r in regimens},
                          "network_s": 0.0, "total_s": round(time.perf_counter() - t0, 3), "device": "cpu",
                          "cpu_precision": "fp32", "messages": messages, "regimens_not_in_training_data": no_kinetics}
        report(progress, 1.0, "Virtual follow-ups done")
        return out


__all__ = ["ARCHITECTURE", "AnchoredGenerator", "PatchFollowUp", "latent_draws", "lesion_draws", "region_geometry",
           "sampled_categories"]
