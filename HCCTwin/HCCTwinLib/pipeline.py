"""The main job on one case: ``run_case(case, regimens, weeks) -> TwinResult`` (pure data, no scene).

Steps grow with the project; each one reports progress through :mod:`HCCTwinLib.progress` and records its wall time
in ``TwinResult.timings``. A step whose model is not available yet is listed in ``TwinResult.notes`` with the reason,
never silently faked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import DISCLAIMER, __version__, clinical
from . import regimens as regimen_catalogue
from .cases import Case, FollowUp, ObservedScan, fill_missing_phases, sub_geometry
from .domain import CAUTION, Finding, assess
from .errors import InputError
from .io import path_inside, write_image, write_text_atomic
from .jsonutil import jsonable
from .labels import LABELS, MAX_LABEL, TUMOR_LABELS
from .progress import ProgressCallback, SubProgress, report
from .regimens import eligibility_warnings
from .registration import align_phases, refine_phase_alignment, register_observed
from .report.figures import write_key_image
from .survival_result import SurvivalResult
from .twincheck import compare_with_real, twin_check_reason
from .weights import ModelFileError, load_card, resolve_model_path

DEFAULT_WEEKS = (8, 16, 24)
DEFAULT_REGIMENS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki")


@dataclass
class TwinResult:
    """Everything the scene, the report and the CLI need for one case."""

    case: Case
    regimens: list[str]
    weeks: list[int]
    scores: dict[str, Any] = field(default_factory=dict)
    eligibility: dict[str, list[str]] = field(default_factory=dict)
    label_volumes_ml: dict[str, float] = field(default_factory=dict)
    followups: dict[str, dict[int, FollowUp]] = field(default_factory=dict)
    real_followup: FollowUp | None = None
    survival: dict[str, Any] = field(default_factory=dict)
    response: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_features: dict[str, float] = field(default_factory=dict)
    readings: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)
    #: the out-of-domain guard's verdict (:class:`HCCTwinLib.domain.DomainVerdict`); None before it ran
    domain: Any = None
    #: how each phase was moved onto the reference phase (:func:`registration.align_phases`, then
    #: :func:`registration.refine_phase_alignment` inside the segmented liver): ``PhaseAlignment`` records
    alignments: list[Any] = field(default_factory=list)
    #: the real follow-up against the virtual one of the received regimen at its week, and against the unchanged
    #: pre-treatment scan (:class:`HCCTwinLib.twincheck.TwinCheck`); None without a real follow-up
    twin_check: Any = None
    #: the phases as read, before any alignment (the second pass resamples from them, never twice)
    phases_as_read: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def phase_alignment(self) -> list[dict[str, Any]]:
        """The alignment records as written into ``result.json``."""
        return [a.to_dict() for a in self.alignments]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (``result.json``)."""
        g = self.case.geometry
        return {
            "hcctwin_version": __version__,
            "disclaimer": DISCLAIMER,
            "patient_id": self.case.patient_id,
            "modality": self.case.modality,
            "phases": self.case.phase_names,
            "geometry": {"shape_kji": list(g.shape), "spacing_mm": list(g.spacing), "origin_lps_mm": list(g.origin),
                         "direction": list(g.direction)},
            "phase_alignment": self.phase_alignment,
            "regimens": self.regimens,
            "weeks": self.weeks,
            "clinical": jsonable(self.case.clinical),
            "scores": jsonable(self.scores),
            "eligibility_warnings": self.eligibility,
            "label_volumes_ml": self.label_volumes_ml,
            "real_followup": ({"weeks": self.real_followup.weeks, "regimen": self.real_followup.regimen,
                               "label_volumes_ml": label_volumes_ml(self.real_followup.labels,
                                                                    self.case.geometry.voxel_volume_ml)
                               if self.real_followup.labels is not None else None}
                              if self.real_followup else None),
            "survival": jsonable(self.survival),
            "response": jsonable(self.response),
            "virtual_followups": {r: {f"w{w:02d}": label_volumes_from_counts(fu.label_counts(),
                                                                              self.case.geometry.voxel_volume_ml)
                                      for w, fu in by_week.items() if fu.has_labels}
                                  for r, by_week in self.followups.items()},
            "domain": self.domain.to_dict() if self.domain is not None else None,
            "twin_check": self.twin_check.to_dict() if self.twin_check is not None else None,
            "provenance": self.provenance,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "notes": self.notes,
        }

    def write_json(self, path: str | Path, summary: dict[str, Any] | None = None) -> Path:
        """Write ``summary`` (default :meth:`summary`) as strict JSON (NaN -> null)."""
        return write_text_atomic(path, json.dumps(jsonable(self.summary() if summary is None else summary,
                                                           finite=True), indent=2))


def label_volumes_ml(labels: np.ndarray, voxel_volume_ml: float) -> dict[str, float]:
    return label_volumes_from_counts(np.bincount(np.asarray(labels).ravel(), minlength=MAX_LABEL + 1),
                                     voxel_volume_ml)


def largest_lesion_ml(labels: np.ndarray, voxel_volume_ml: float) -> float:
    """Volume (mL) of the largest 26-connected tumour component (viable + necrosis) of a label map; 0 without one."""
    from scipy import ndimage

    tumor = np.isin(labels, TUMOR_LABELS)
    if not tumor.any():
        return 0.0
    box = ndimage.find_objects(tumor.astype(np.uint8))[0]
    comp, n = ndimage.label(tumor[box], structure=np.ones((3, 3, 3), bool))
    return float(np.bincount(comp.ravel())[1:].max()) * voxel_volume_ml if n else 0.0


def label_volumes_from_counts(counts: np.ndarray, voxel_volume_ml: float) -> dict[str, float]:
    """:func:`label_volumes_ml` from voxel counts per label value (``FollowUp.label_counts()``)."""
    counts = np.pad(np.asarray(counts), (0, max(0, max(info.value for info in LABELS) + 1 - len(counts))))
    out = {info.key: round(float(counts[info.value]) * voxel_volume_ml, 2) for info in LABELS}
    out["tumor_total"] = round(sum(float(counts[v]) for v in TUMOR_LABELS) * voxel_volume_ml, 2)
    return out


@dataclass
class PipelineOptions:
    """How :func:`run_case` runs. ``segmentation``: "auto" uses the case's labels when given (e.g. corrected by the
    radiologist) and the model otherwise; "model" always runs the model; "given" never runs it."""

    device: str = "auto"
    samples: int = 4
    seed: int = 0
    segmentation: str = "auto"
    segmentation_weights: str | None = None
    generator_weights: str | None = None
    survival_model: str | None = None
    steps: int | None = None
    #: a model that is not installed or refused (damaged, wrong kind) skips its step with a note (the Slicer module,
    #: a library caller); False stops the run with the reason instead (``hcctwin predict`` unless
    #: ``--allow-missing-models``)
    allow_missing_models: bool = True
    #: move each phase onto the reference phase (a translation) before segmentation when they were acquired in
    #: separate breath-holds (:func:`registration.align_phases`); phases already aligned are left as they are
    align_phases: bool = True


def _installed(get_model, weights, device, what: str, notes: list[str], allow_missing: bool = True):
    """The cached model, or None with a note saying why (no model file installed / refused); with
    ``allow_missing=False`` the reason is raised instead."""
    try:
        return get_model(weights, device=device)
    except ModelFileError as exc:
        if not allow_missing:
            raise ModelFileError(f"{what} model: {exc} (to run the other steps without it, allow missing models: "
                                 f"hcctwin predict --allow-missing-models)") from None
        notes.append(f"{what}: {exc}")
        return None


def _add_messages(result: TwinResult, step: str, model) -> None:
    """The model's messages from this run (e.g. "The GPU ran out of memory; continuing on the CPU") into the notes,
    once (the device message is noted when the model is picked)."""
    for message in (getattr(model, "last_info", None) or {}).get("messages") or []:
        if message and message != getattr(model, "message", None) and f"{step}: {message}" not in result.notes:
            result.notes.append(f"{step}: {message}")


def _guard(case: Case, segmenter, options: PipelineOptions, lipiodol: bool = False):
    """The out-of-domain guard (:mod:`.domain`) on the case's phases and labels: with the segmentation model's card
    (its accepted inputs and training-domain reference; its single-phase stage's for a study that stage read) and
    its confidence when it drew the labels."""
    card = getattr(segmenter, "last_card", None) or getattr(segmenter, "card", None)
    if card is None:  # labels given: the installed model's card still says what the models were trained on
        from .segmentation import default_weights_path

        try:
            path = (resolve_model_path(options.segmentation_weights) if options.segmentation_weights
                    else default_weights_path())
            card = load_card(path) if path.is_file() else None
        except Exception:  # noqa: BLE001 - no readable model card: plausibility rules only
            card = None
    confidence = (getattr(segmenter, "last_info", None) or {}).get("confidence") if segmenter is not None else None
    return assess(case.phases, case.geometry, case.labels, confidence=confidence, card=card,
                  modality=case.modality, labels_source="model" if segmenter is not None else "given",
                  lipiodol=lipiodol)


def withhold_recommendation(result: TwinResult) -> None:
    """An ``outside`` verdict of the guard never feeds a recommendation: it is removed from ``result.survival``
    with the reason (``recommendation_withheld``), which the scene, the report and the CLI show."""
    domain = result.domain
    if domain is None or domain.reliable or not result.survival:
        return
    survival = SurvivalResult.from_dict(result.survival)
    rec = survival.recommendation
    result.survival = replace(survival, recommendation=None, recommendation_withheld=(
        "No recommendation: the scan is outside the models' domain, so the imaging results it would rest on are "
        "unreliable (" + "; ".join(f.message for f in domain.findings if f.severity == "outside") + ")")).to_dict()
    if rec is not None and rec.to_dict():
        result.notes.append("Survival: recommendation withheld (domain guard: outside).")


def run_case(case: Case, regimens=DEFAULT_REGIMENS, weeks=DEFAULT_WEEKS, *, real_followup: FollowUp | None = None,
             options: PipelineOptions | None = None, progress: ProgressCallback | None = None) -> TwinResult:
    """Run every step whose model is available on one case and return the result as data.

    ``real_followup`` is an observed follow-up already on the case's grid (or an :class:`ObservedScan`, registered
    after the segmentation, inside the segmented liver); it is carried into the result for display and comparison.
    Steps whose model is not installed are listed in ``result.notes`` (never faked). The caller's ``case`` is not
    changed: the labels a model draws are in ``result.case`` (with its phases moved onto the reference phase when
    they were acquired in separate breath-holds). Steps: phase alignment, clinical scores, segmentation +
    out-of-domain guard (+ the phase alignment's pass inside the liver), the real follow-up's registration, virtual
    follow-ups, response reading and survival.
    """
    options = options or PipelineOptions()
    catalogue = regimen_catalogue.load_catalogue()
    unknown = [r for r in regimens if r not in catalogue]
    if unknown:
        raise ValueError(f"unknown regimen(s) {unknown}; known: {', '.join(catalogue)}")
    if options.segmentation not in {"auto", "model", "given"}:
        raise ValueError(f"segmentation={options.segmentation!r}: expected auto, model or given")
    case = replace(case)  # the result's own Case (same arrays): the caller's keeps its labels as they were
    result = TwinResult(case=case, regimens=list(regimens), weeks=[int(w) for w in weeks])
    if real_followup is not None and not isinstance(real_followup, ObservedScan):  # checked before any work
        _check_on_grid(real_followup, case)
    if real_followup is not None and int(real_followup.weeks) not in result.weeks:  # to compare the twin with it
        result.weeks = sorted([*result.weeks, int(real_followup.weeks)])
        result.notes.append(f"Virtual follow-ups also at week {int(real_followup.weeks)}, the real follow-up's time "
                            f"point, to compare them with it.")
    if options.align_phases:
        _phase_alignment_step(result, progress)
    _clinical_step(result, progress)
    liver_found, segmenter = _segmentation_step(result, options, progress)
    result.real_followup = _real_followup_step(result, real_followup, segmenter, options, progress)
    _generation_step(result, options, liver_found, progress)
    t0 = time.perf_counter()
    report(progress, 0.9, "Response reading and survival")
    read_responses(result)
    _twin_check_step(result)
    update_survival(result, options)
    result.timings["survival"] = time.perf_counter() - t0
    report(progress, 1.0, "Done")
    return result


def _check_on_grid(follow: FollowUp, case: Case) -> None:
    for name, arr in follow.phases.items():
        if arr.shape != case.geometry.shape:
            raise ValueError(f"real follow-up phase {name!r} has shape {arr.shape}; register it onto the "
                             f"pre-treatment grid {case.geometry.shape} first")


def _real_followup_step(result: TwinResult, real_followup, segmenter, options: PipelineOptions, progress
                        ) -> FollowUp | None:
    """The real follow-up on the pre-treatment grid. An :class:`ObservedScan` is registered after the segmentation,
    onto the phases the labels were drawn on (both phase-alignment passes done), with its affine and deformable
    stages inside the segmented liver: the liver moves against the body between visits, and without a liver mask
    the deformable stage does not run. When the guard says the liver mask itself is wrong
    (:attr:`~HCCTwinLib.domain.DomainVerdict.liver_mask_usable`) the whole body drives it, rigid and affine only.
    A follow-up without labels is then segmented by the model that drew the pre-treatment labels
    (:func:`_segment_followup`)."""
    if not isinstance(real_followup, ObservedScan):
        return _segment_followup(result, real_followup, segmenter, options)
    case = result.case
    fixed = case
    if case.labels is not None and result.domain is not None and not result.domain.liver_mask_usable:
        fixed = replace(case, labels=None)
        result.notes.append("Registration: the real follow-up was registered on the whole body (rigid + affine), not "
                            "inside the segmented liver, because the domain guard says the liver mask is wrong.")
    follow = register_observed(fixed, real_followup, result, progress=SubProgress(progress, 0.35, 0.4))
    _check_on_grid(follow, case)
    return _segment_followup(result, follow, segmenter, options)


def _segment_followup(result: TwinResult, follow: FollowUp | None, segmenter, options: PipelineOptions
                      ) -> FollowUp | None:
    """A real follow-up without labels, segmented by the model that drew the pre-treatment labels (the same reader
    for both scans: its response, the twin check's volumes and the landmark survival then read it), when it has every
    phase the pre-treatment study has (one phase alone collapses the tumour labels). Labels the guard calls outside
    the models' domain are not used (noted): the follow-up is then shown, not read."""
    case = result.case
    if follow is None or follow.labels is not None or segmenter is None:
        return follow
    if not set(case.phases) <= set(follow.phases):
        result.notes.append("Real follow-up: not segmented, it lacks the " + ", ".join(
            sorted(set(case.phases) - set(follow.phases))) + " phase of the pre-treatment study (the segmentation "
            "reads both); give its labels to read its response.")
        return follow
    t0 = time.perf_counter()
    scan = Case(patient_id=case.patient_id, phases={p: follow.phases[p] for p in case.phases},
                geometry=case.geometry, modality=case.modality)
    labels = segmenter.segment(scan)
    catalogue = regimen_catalogue.load_catalogue()
    lipiodol = bool(follow.regimen in catalogue and catalogue[follow.regimen].lipiodol)  # dense necrosis is lipiodol
    verdict = _guard(replace(scan, labels=labels), segmenter, options, lipiodol=lipiodol)
    result.timings["followup_segmentation"] = time.perf_counter() - t0
    if not verdict.reliable:
        result.notes.append("Real follow-up: the model's segmentation of it is outside the models' domain ("
                            + "; ".join(f.message for f in verdict.findings if f.severity == "outside")
                            + "); its response is not read.")
        return follow
    result.provenance["real_followup_labels"] = f"segmented by the pre-treatment model (guard: {verdict.verdict})"
    result.notes.append("Real follow-up: segmented by the same model as the pre-treatment scan (no labels given).")
    return FollowUp(weeks=follow.weeks, phases=follow.phases, labels=labels, kind=follow.kind, regimen=follow.regimen)


def _twin_check_step(result: TwinResult) -> None:
    """The real follow-up against the virtual follow-up of the regimen the patient received at the same week and
    against the unchanged pre-treatment scan (:mod:`HCCTwinLib.twincheck`)."""
    real = result.real_followup
    if real is None or not result.followups:
        return
    why = twin_check_reason(real, result.regimens, result.followups)
    if why:
        result.notes.append(why)
        return
    result.twin_check = compare_with_real(result.case, result.followups[real.regimen][int(real.weeks)], real,
                                          result.response)
    if result.twin_check is not None:
        result.twin_check.regimen_name = regimen_catalogue.load_catalogue()[real.regimen].name


def _clinical_step(result: TwinResult, progress) -> None:
    """Scores and eligibility warnings of each regimen from the case's clinical values."""
    t0 = time.perf_counter()
    report(progress, 0.02, "Clinical scores and eligibility")
    case = result.case
    if case.clinical:
        result.scores = clinical.compute_scores(case.clinical)
        result.eligibility = {r: eligibility_warnings(r, case.clinical) for r in result.regimens}
    else:
        result.notes.append("No clinical values given: scores, eligibility and survival need them.")
    result.timings["clinical"] = time.perf_counter() - t0


def _phase_alignment_step(result: TwinResult, progress) -> None:
    """The study's phases moved onto the reference phase when their breath-holds differ (the result's own Case gets
    the moved arrays; the caller's keeps its own)."""
    case = result.case
    if len(case.phases) < 2:
        return
    t0 = time.perf_counter()
    report(progress, 0.0, "Phase alignment")
    result.phases_as_read = dict(case.phases)
    case.phases, done = align_phases(case.phases, case.geometry)
    result.alignments = done
    result.notes.extend(a.note() for a in done if not a.aligned_already)
    result.timings["phase_alignment"] = time.perf_counter() - t0


def liver_alignment_pass(case: Case, as_read: dict[str, np.ndarray], alignments: list, labels: np.ndarray,
                         segmenter=None, progress: ProgressCallback | None = None
                         ) -> tuple[dict, np.ndarray, list, bool]:
    """The phase alignment's second pass (:func:`registration.refine_phase_alignment`) inside the liver of
    ``labels``; when a phase moved, ``segmenter`` (if given) segments the realigned phases again. Returns
    ``(phases, labels, alignments, moved)``."""
    phases, refined = refine_phase_alignment(as_read, case.phases, case.geometry, np.asarray(labels) > 0, alignments)
    moved = any(a.applied and a.stage == "liver" for a in refined)
    if moved and segmenter is not None:
        labels = segmenter.segment(replace(case, phases=phases), progress=progress)
    return phases, labels, refined, moved


def align_and_segment(case: Case, segmenter, *, align: bool = True, progress: ProgressCallback | None = None
                      ) -> tuple[Case, np.ndarray, list]:
    """What :func:`run_case` does around its segmentation, for a caller without a real follow-up (``hcctwin
    segment``, the real-scan benchmarks): the phases moved onto the reference phase (:func:`align_phases`), the
    segmentation, the liver pass (:func:`liver_alignment_pass`). Returns ``(case with the phases the labels were
    drawn on, labels, alignment records)``; ``align=False``: the segmentation of the phases as read."""
    if not align:
        return case, segmenter.segment(case, progress=progress), []
    as_read = dict(case.phases)
    phases, alignments = align_phases(as_read, case.geometry)
    case = replace(case, phases=phases)
    labels = segmenter.segment(case, progress=progress)
    if alignments and np.any(labels > 0):
        phases, labels, alignments, _ = liver_alignment_pass(case, as_read, alignments, labels, segmenter, progress)
        case = replace(case, phases=phases)
    return case, labels, alignments


def _liver_alignment_step(result: TwinResult, segmenter, progress) -> None:
    """The liver moves against the spine between breath-holds: the phases registered again inside the segmented
    liver and, when one moved, segmented again (:func:`liver_alignment_pass`). (A real follow-up is registered
    afterwards, onto the phases this pass leaves.)"""
    t0 = time.perf_counter()
    case = result.case
    case.phases, labels, result.alignments, moved = liver_alignment_pass(
        case, result.phases_as_read, result.alignments, case.labels, segmenter, SubProgress(progress, 0.3, 0.35))
    if moved:
        case.labels = labels
        result.notes.extend(a.note() for a in result.alignments if a.applied and a.stage == "liver")
        if segmenter is not None:
            _add_messages(result, "Segmentation", segmenter)
    result.timings["phase_alignment"] = result.timings.get("phase_alignment", 0.0) + time.perf_counter() - t0


def _segmentation_step(result: TwinResult, options: PipelineOptions, progress) -> tuple[bool, Any]:
    """Labels from the model (or the ones given), their volumes, the diameter check and the out-of-domain guard.
    Returns whether the labels hold any liver or tumour, and the segmenter that drew them (None: labels given)."""
    t0 = time.perf_counter()
    report(progress, 0.05, "Segmentation")
    case = result.case
    use_model = options.segmentation == "model" or (options.segmentation == "auto" and case.labels is None)
    segmenter = None
    if use_model:
        from .segmentation import get_segmenter

        segmenter = _installed(get_segmenter, options.segmentation_weights, options.device, "Segmentation",
                               result.notes, options.allow_missing_models)
        if segmenter is not None:
            if segmenter.message:
                result.notes.append(segmenter.message)
            case.labels = segmenter.segment(case, progress=SubProgress(progress, 0.05, 0.3))
            _add_messages(result, "Segmentation", segmenter)
            result.provenance["segmentation"] = segmenter.describe()
    elif case.labels is not None:
        result.provenance["segmentation"] = "given (user or file)"
    if result.alignments and case.labels is not None and np.any(case.labels > 0):
        _liver_alignment_step(result, segmenter if use_model else None, progress)
    if case.labels is not None:
        result.label_volumes_ml = label_volumes_ml(case.labels, case.geometry.voxel_volume_ml)
        if case.clinical.get("max_diameter_mm") not in (None, ""):
            note = clinical.diameter_consistency_note(case.clinical["max_diameter_mm"],
                                                      largest_lesion_ml(case.labels, case.geometry.voxel_volume_ml))
            if note:
                result.notes.append(note)
    result.domain = _guard(case, segmenter if use_model else None, options)
    for a in result.alignments:  # phases that may sit apart: the segmentation read them as one image
        if a.refused:
            result.domain.add(Finding("phase_alignment", CAUTION, f"the {a.phase} phase may not be aligned with "
                                      f"the {a.reference} one ({a.reason}).", a.shift_mm, "aligned phases"))
    if result.domain.verdict != "inside":
        result.notes.append(f"Domain guard: {result.domain.headline()} " + "; ".join(result.domain.reasons))
    liver_found = case.labels is not None and bool(np.any(case.labels > 0))
    if case.labels is not None and not liver_found:
        result.notes.append("Segmentation: liver not found (the label map has no liver or tumour voxel). Check that "
                            "the volumes are abdominal CT in the arterial and portal venous phases, or draw the liver "
                            "with the Segment Editor and run again; virtual follow-ups and imaging features are "
                            "skipped.")
    result.timings["segmentation"] = time.perf_counter() - t0
    return liver_found, segmenter if use_model else None


def _generation_step(result: TwinResult, options: PipelineOptions, liver_found: bool, progress) -> None:
    """The virtual follow-ups of every regimen and week (a single-phase study: the missing phase filled, noted)."""
    t0 = time.perf_counter()
    report(progress, 0.4, "Virtual follow-ups")
    case = result.case
    if case.labels is None:
        result.notes.append("Virtual follow-ups need a segmentation: none given and no model ran.")
    elif liver_found:  # (no liver: said by the segmentation step)
        from .twin import get_generator

        generator = _installed(get_generator, options.generator_weights, options.device, "Generator", result.notes,
                               options.allow_missing_models)
        if generator is not None:
            model_phases, filled = fill_missing_phases(case.phases)
            if filled:
                result.notes.append("Generator: single-phase study, " + ", ".join(
                    f"{src} used as {dst}" for dst, src in filled.items()) + " (the generator was trained on two "
                    "phases; the virtual follow-ups of the missing phase are copies, not predictions).")
            gen_case = case if not filled else replace(case, phases=model_phases)
            result.followups = generator.generate(gen_case, regimens=list(result.regimens), weeks=result.weeks,
                                                  samples=options.samples, seed=options.seed, steps=options.steps,
                                                  progress=SubProgress(progress, 0.4, 0.9))
            _add_messages(result, "Generator", generator)
            result.provenance["generator"] = generator.describe(samples=options.samples, seed=options.seed)
    result.timings["generate"] = time.perf_counter() - t0


def read_responses(result: TwinResult) -> None:
    """RECIST 1.1 / mRECIST of every virtual trajectory (and the real follow-up) against the baseline labels, into
    ``result.readings`` (for the landmark models) and ``result.response`` (for the table and the report)."""
    from .survival.cohort import trajectory_readings

    case = result.case
    if case.labels is None:
        return
    full = (case.labels, case.geometry, case.phases.get("arterial"))
    trajectories: dict[str, list[FollowUp]] = {
        r: [fu for _, fu in sorted(by_week.items()) if fu.has_labels] for r, by_week in result.followups.items()}
    real = result.real_followup
    if real is not None and real.labels is not None:
        trajectories["observed"] = [real]
    for key, followups in trajectories.items():
        if not followups:
            continue
        # one trajectory at a time; a virtual one is read on the box it differs from the input in (when the input
        # has no label outside it, nothing outside can count): the same reading at a fraction of memory and time
        base, items = _trajectory(case, followups, full)
        try:
            readings = trajectory_readings(base[0], base[1], items, base[2])
        except Exception as exc:  # noqa: BLE001 - a reading that fails is reported, the rest goes on
            result.notes.append(f"response reading of {key} failed: {exc}")
            continue
        finally:
            del items
        result.readings[key] = readings
        result.response[key] = {f"w{w:02d}": {"mrecist": r.get("category_mrecist"),
                                              "recist": r.get("category_recist"),
                                              "viable_volume_ml": round(r["viable_volume_ml"], 2),
                                              "sum_viable_mm": round(float(r["sum_viable_mm"]), 1)}
                                for w, r in sorted(readings.items()) if w > 0}
        for fu in followups:
            entry = result.response[key].get(f"w{int(fu.weeks):02d}")
            sampled = getattr(fu, "sampled_response", None)
            if entry is not None and sampled:
                entry["sampled"] = sampled_shares(sampled)
    if real is not None and "observed" in result.response and real.regimen:
        result.response["observed"]["regimen"] = real.regimen


def sampled_shares(sampled: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``{"samples": n, "mrecist": {category: share}, "recist": {...}}`` of a follow-up's sampled responses
    (categories best first, only those read)."""
    from .response import CATEGORIES  # here: the response reading loads scipy, which the Slicer module loads later

    out: dict[str, Any] = {"samples": max((len(v) for v in sampled.values()), default=0)}
    for crit, cats in sampled.items():
        if cats:
            out[crit] = {c: round(cats.count(c) / len(cats), 3) for c in CATEGORIES if c in cats}
    return out


def _trajectory(case: Case, followups: list[FollowUp], full):
    """``((baseline labels, geometry, baseline arterial), [(weeks, labels, arterial)])`` of one virtual trajectory,
    on the follow-ups' common :attr:`FollowUp.region` when they share one and the input has no label outside it."""
    region = followups[0].region if followups else None
    if region is None or any(fu.region != region for fu in followups[1:]) or \
            np.count_nonzero(case.labels) != np.count_nonzero(case.labels[region]):
        region, base = None, full
    else:
        arterial = full[2]
        base = (case.labels[region], sub_geometry(case.geometry, region),
                None if arterial is None else arterial[region])
    items = [(fu.weeks, fu.labels_region(region),
              fu.phase_region("arterial", region) if "arterial" in fu.phases else None) for fu in followups]
    return base, items


def update_survival(result: TwinResult, options: PipelineOptions | None = None,
                    regimens: list[str] | None = None) -> None:
    """(Re)compute ``result.survival`` for ``regimens`` (default ``result.regimens``) from what the run already
    produced (scores, image features, response readings): no segmentation or generation is repeated, so a change of
    the regimen selection in the module is cheap."""
    from .survival.cohort import baseline_image_features
    from .survival.store import get_survival_engine

    options = options or PipelineOptions()
    regimens = list(result.regimens if regimens is None else regimens)
    result.notes[:] = [n for n in result.notes if not n.startswith("Survival:")]
    if not result.case.clinical:
        result.survival = {}
        result.notes.append("Survival: no clinical values given, no survival prediction.")
        return
    engine = _installed(get_survival_engine, options.survival_model, "cpu", "Survival", result.notes,
                        options.allow_missing_models)
    if engine is None:
        result.survival = {}
        return
    case = result.case
    if case.labels is not None and not result.image_features:
        result.image_features = baseline_image_features(case.labels, case.geometry, case.phases.get("arterial"),
                                                        case.phases.get("portal"), deep=engine.uses_deep)
    readings, source = {}, {}
    for r in regimens:
        if r in result.readings:
            readings[r], source[r] = dict(result.readings[r]), "virtual"
    real = result.real_followup
    if real is not None and real.regimen in regimens and "observed" in result.readings:
        # the real follow-up replaces the virtual one at its time point ("real when it exists")
        merged = dict(readings.get(real.regimen, {0: result.readings["observed"][0]}))
        merged.update({w: v for w, v in result.readings["observed"].items() if w > 0})
        readings[real.regimen], source[real.regimen] = merged, "observed"

    for r in regimens:  # a regimen ticked after the run: its eligibility warnings too
        if r not in result.eligibility:
            try:
                result.eligibility[r] = eligibility_warnings(r, case.clinical)
            except InputError as exc:
                result.eligibility[r] = [str(exc)]
    eligible = [r for r in regimens if not result.eligibility.get(r)]
    try:
        result.survival = engine.predict(case.clinical, result.image_features or None, regimens,
                                         eligible=eligible or None, readings=readings or None, readings_source=source)
    except InputError as exc:
        result.survival = {}
        result.notes.append(f"Survival: {exc}")
        return
    result.provenance["survival"] = engine.describe()
    withhold_recommendation(result)


def save_result(result: TwinResult, out_dir: str | Path, *, write_images: bool = True,
                summary: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``out_dir/result.json`` (``summary``, default ``result.summary()``) and, per regimen and time point,
    the virtual follow-up volumes ``out_dir/<regimen>/wWW/{arterial,portal,labels,arterial_std,portal_std}.nii.gz``
    on the pre-treatment grid, the inputs on that grid (``pre/{phases,labels}.nii.gz``, the registered real
    follow-up ``real/wWW/...``) and ``key_image.png`` (pre | real | virtual at the largest lesion; the report's
    first page)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    if write_images:
        # the inputs the follow-ups are compared with, on the same grid: a result folder is self-contained (the
        # browser viewer and a later report need nothing else)
        case = result.case
        for name, arr in case.phases.items():
            write_image(arr, case.geometry, out / "pre" / f"{name}.nii.gz")
        if case.labels is not None:
            write_image(case.labels, case.geometry, out / "pre" / "labels.nii.gz", labels=True)
        paths["pre"] = str(out / "pre")
        real = result.real_followup
        if real is not None:
            folder = out / "real" / f"w{int(real.weeks):02d}"
            for name, arr in real.phases.items():
                write_image(arr, case.geometry, folder / f"{name}.nii.gz")
            if real.labels is not None:
                write_image(real.labels, case.geometry, folder / "labels.nii.gz", labels=True)
            paths["real"] = str(folder)
        for regimen, by_week in result.followups.items():
            for w, fu in sorted(by_week.items()):
                folder = path_inside(out, regimen, f"w{int(w):02d}")
                for name, arr in fu.phases.items():
                    write_image(arr, result.case.geometry, folder / f"{name}.nii.gz")
                for name, arr in fu.std.items():
                    write_image(arr, result.case.geometry, folder / f"{name}_std.nii.gz")
                if fu.labels is not None:
                    write_image(fu.labels, result.case.geometry, folder / "labels.nii.gz", labels=True)
                paths[f"{regimen}/w{int(w):02d}"] = str(folder)
    if write_images:
        key = write_key_image(result, out)
        if key is not None:
            paths["key_image"] = str(key)
    paths["result_json"] = str(result.write_json(out / "result.json", summary))
    return paths
