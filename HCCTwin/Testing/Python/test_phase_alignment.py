"""Phases of one study acquired in separate breath-holds (issue 22): :func:`registration.align_phases` moves each
phase onto the arterial one by a translation before segmentation, and leaves phases that are aligned already bit for
bit as they are."""

import numpy as np
import pytest

from HCCTwinLib.cases import Case, FollowUp, Geometry
from HCCTwinLib.registration import align_phases

from conftest import make_phantom

SPACING = (2.0, 2.0, 2.5)


def _study(shift_slices: int = 0):
    hu, labels = make_phantom((40, 80, 80), seed=3)
    geom = Geometry(hu.shape, SPACING, (0.0, 0.0, 0.0))
    arterial = hu + 30.0
    portal = np.roll(hu, shift_slices, axis=0)  # the anatomy sits shift_slices * 2.5 mm further along z
    return {"arterial": arterial.astype(np.float32), "portal": portal.astype(np.float32)}, labels, geom


def test_a_breath_hold_shift_is_found_and_undone():
    phases, labels, geom = _study(2)
    aligned, done = align_phases(phases, geom)
    (a,) = done
    assert a.phase == "portal" and a.reference == "arterial" and a.applied and a.reason == ""
    assert a.translation_mm[2] == pytest.approx(5.0, abs=0.5) and abs(a.translation_mm[0]) < 0.5
    assert a.mi_after < a.mi_before and "shifted by" in a.note() and a.to_dict()["applied"] is True
    truth = _study(0)[0]["portal"]
    inner = (slice(4, -4), slice(None), slice(None))
    before = np.abs(phases["portal"][inner] - truth[inner]).mean()
    after = np.abs(aligned["portal"][inner] - truth[inner]).mean()
    assert after < 0.3 * before
    assert aligned["arterial"] is phases["arterial"]  # the reference is never moved


def test_aligned_phases_are_left_as_they_are():
    phases, _, geom = _study(0)
    aligned, done = align_phases(phases, geom)
    assert not done[0].applied and done[0].reason.startswith("aligned already") and done[0].shift_mm < 1.0
    assert aligned["portal"] is phases["portal"] and aligned is not phases
    assert align_phases({"portal": phases["portal"]}, geom) == ({"portal": phases["portal"]}, [])
    mri = {"t1": np.full(geom.shape, 300.0, np.float32), "t2": np.full(geom.shape, 200.0, np.float32)}
    assert align_phases(mri, geom)[1] == []  # not CT: nothing to do here


def test_a_shift_beyond_a_breath_hold_is_not_applied(monkeypatch):
    import HCCTwinLib.registration as registration

    monkeypatch.setattr(registration, "PHASE_MAX_SHIFT_MM", 2.0)
    phases, _, geom = _study(2)
    aligned, (a,) = align_phases(phases, geom)
    assert not a.applied and "not a breath-hold difference" in a.reason and aligned["portal"] is phases["portal"]
    assert "was not moved" in a.note()


def test_run_case_aligns_the_phases_first_and_keeps_the_callers_case():
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    phases, labels, geom = _study(2)
    case = Case(patient_id="P1", phases=dict(phases), geometry=geom, labels=labels)
    options = PipelineOptions(segmentation="given", generator_weights="none-installed-here")
    result = run_case(case, ["tace_pd1_len"], [8], options=options)
    (a,) = result.phase_alignment
    assert a["applied"] and a["translation_mm"][2] == pytest.approx(5.0, abs=0.5)
    assert any(n.startswith("Phase alignment: the portal phase was shifted") for n in result.notes)
    assert result.case.phases["portal"] is not phases["portal"] and case.phases["portal"] is phases["portal"]
    assert result.summary()["phase_alignment"] == result.phase_alignment
    off = run_case(case, ["tace_pd1_len"], [8], options=PipelineOptions(segmentation="given", align_phases=False,
                                                                         generator_weights="none-installed-here"))
    assert off.phase_alignment == [] and off.case.phases["portal"] is phases["portal"]


def test_the_cli_can_leave_the_phases_as_read():
    from HCCTwinLib.cli import build_parser

    for command in (["segment", "--out", "x.nii.gz"], ["predict", "--out", "o"]):
        assert build_parser().parse_args(command + ["--no-phase-alignment"]).no_phase_alignment is True
        assert build_parser().parse_args(command).no_phase_alignment is False


def test_the_slicer_logic_passes_the_checkbox_to_the_pipeline():
    from HCCTwinLib.scene.logic import TwinLogic

    assert TwinLogic.options().align_phases is True
    off = TwinLogic.options(samples=2, seed=3, device="cpu", alignPhases=False)
    assert off.align_phases is False and (off.samples, off.seed, off.device) == (2, 3, "cpu")


def test_a_phase_left_unaligned_is_a_caution_of_the_guard(monkeypatch):
    import HCCTwinLib.registration as registration
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    monkeypatch.setattr(registration, "PHASE_MAX_SHIFT_MM", 2.0)  # the 5 mm shift is then refused
    phases, labels, geom = _study(2)
    case = Case(patient_id="P1", phases=dict(phases), geometry=geom, labels=labels)
    result = run_case(case, ["tace_pd1_len"], [8], options=PipelineOptions(segmentation="given",
                                                                             generator_weights="none-installed"))
    assert not result.phase_alignment[0]["applied"]
    assert result.domain.verdict in ("caution", "outside")
    assert any(r.startswith("caution: the portal phase may not be aligned") for r in result.domain.reasons)
    aligned = run_case(Case(patient_id="P2", phases=_study(0)[0], geometry=geom, labels=labels), ["tace_pd1_len"],
                       [8], options=PipelineOptions(segmentation="given", generator_weights="none-installed"))
    assert not any("may not be aligned" in r for r in aligned.domain.reasons)


def _liver_only(shift_z_mm: float = 7.5):
    """The phantom's portal phase with the liver region alone moved along z (a smooth field: the body stays)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from HCCTwinLib.registration import sitk_image

    phases, labels, geom = _study(0)
    dist = ndimage.distance_transform_edt(labels == 0, sampling=np.array(SPACING[::-1]))
    w = np.clip(1.0 - (dist - 6.0) / 12.0, 0.0, 1.0)
    disp = np.stack([0.0 * w, 0.0 * w, -shift_z_mm * w], axis=-1).astype(np.float64)
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.CopyInformation(sitk_image(np.zeros(geom.shape, np.float32), geom))
    img = sitk_image(phases["portal"], geom)
    moved = sitk.Resample(img, img, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                          True)
    return {"arterial": phases["arterial"], "portal": sitk.GetArrayFromImage(moved)}, labels, geom


def _body_held(phases, geom):
    """A first pass that the body held in place (on a real CT the spine and body wall outweigh the liver; this
    phantom's body is a featureless cylinder along z, so its own first pass would find the liver's shift)."""
    from HCCTwinLib.registration import PhaseAlignment

    return dict(phases), [PhaseAlignment("portal", "arterial", (0.0, 0.0, 0.2), -1.0, -1.0, False,
                                         "aligned already: estimated shift 0.2 mm < 1 mm")]


def test_the_liver_pass_finds_the_liver_s_own_shift():
    from HCCTwinLib.registration import refine_phase_alignment

    as_read, labels, geom = _liver_only()
    first, records = _body_held(as_read, geom)
    second, refined = refine_phase_alignment(as_read, first, geom, labels > 0, records)
    (a,) = refined
    assert a.stage == "liver" and a.applied and a.translation_mm[2] == pytest.approx(7.5, abs=1.0)
    assert second["portal"] is not as_read["portal"] and second["arterial"] is as_read["arterial"]
    assert "inside the liver" in a.note() and a.to_dict()["stage"] == "liver"
    # phases already aligned inside the liver: the first pass stands, arrays untouched
    aligned, _, _ = _study(0)
    first, records = align_phases(aligned, geom)
    second, refined = refine_phase_alignment(aligned, first, geom, labels > 0, records)
    assert refined == records and second["portal"] is aligned["portal"]


def test_run_case_runs_the_liver_pass_after_the_labels_exist(monkeypatch):
    import HCCTwinLib.pipeline as pipeline
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    monkeypatch.setattr(pipeline, "align_phases", _body_held)
    as_read, labels, geom = _liver_only()
    case = Case(patient_id="P3", phases=dict(as_read), geometry=geom, labels=labels)
    result = run_case(case, ["tace_pd1_len"], [8], options=PipelineOptions(segmentation="given",
                                                                             generator_weights="none-installed"))
    (a,) = result.phase_alignment
    assert a["stage"] == "liver" and a["applied"] and a["translation_mm"][2] == pytest.approx(7.5, abs=1.0)
    assert any("found inside the liver" in n for n in result.notes)
    assert result.phases_as_read["portal"] is as_read["portal"] and case.phases["portal"] is as_read["portal"]


def _followup_scan(phases, geom, shift_mm=(2.7, -1.8, 3.0)):
    """The study's portal phase seen again with the table moved (its own grid): a real follow-up to register."""
    from HCCTwinLib.cases import ObservedScan

    moved = Geometry(shape=geom.shape, spacing=geom.spacing, origin=tuple(np.add(geom.origin, shift_mm)),
                     direction=geom.direction)
    return ObservedScan(weeks=8, phases={"portal": phases["portal"].copy()}, geometry=moved, regimen="tace_pd1_len",
                        deformable=False)


def test_a_real_followup_is_registered_after_the_liver_pass_inside_the_liver(monkeypatch):
    """The follow-up goes onto the phases the labels were drawn on (both passes done, the liver pass not skipped)
    and its registration gets the labels (the liver mask of its affine and deformable stages)."""
    import HCCTwinLib.pipeline as pipeline
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    monkeypatch.setattr(pipeline, "align_phases", _body_held)
    seen = []
    real_register = pipeline.register_observed
    monkeypatch.setattr(pipeline, "register_observed",
                        lambda fixed, scan, *a, **k: seen.append(fixed) or real_register(fixed, scan, *a, **k))
    as_read, labels, geom = _liver_only()
    case = Case(patient_id="P4", phases=dict(as_read), geometry=geom, labels=labels)
    result = run_case(case, ["tace_pd1_len"], [8], real_followup=_followup_scan(as_read, geom),
                      options=PipelineOptions(segmentation="given", generator_weights="none-installed"))
    (a,) = result.phase_alignment
    assert a["stage"] == "liver" and a["applied"]
    assert not any("skipped" in n for n in result.notes)
    (fixed,) = seen
    assert fixed.phases["portal"] is result.case.phases["portal"] and fixed.labels is result.case.labels
    fu = result.real_followup
    assert "inside the liver of the pre-treatment labels" in result.provenance["real_followup"]
    assert fu.phases["portal"].shape == geom.shape
    # the follow-up (the portal phase as read, its liver 7.5 mm off) lines up with the realigned portal phase inside
    # the liver, which its scan coordinates alone do not
    from HCCTwinLib.io import resample_to

    scan = _followup_scan(as_read, geom)
    target, liver = result.case.phases["portal"], labels > 0
    err = np.abs(fu.phases["portal"] - target)[liver].mean()
    naive = np.abs(resample_to(scan.phases["portal"], scan.geometry, geom) - target)[liver].mean()
    assert err < 0.1 * naive, (err, naive)


def test_a_liver_mask_the_guard_calls_wrong_does_not_drive_the_registration(monkeypatch):
    import HCCTwinLib.pipeline as pipeline
    from HCCTwinLib.domain import OUTSIDE, DomainVerdict, Finding
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    def guard(*_a, **_k):
        v = DomainVerdict()
        v.add(Finding("liver_ml", OUTSIDE, "liver + tumour 5200 mL: not a possible adult liver.", 5200.0))
        return v

    monkeypatch.setattr(pipeline, "_guard", guard)
    seen = []
    monkeypatch.setattr(pipeline, "register_observed",
                        lambda fixed, scan, *a, **k: seen.append(fixed) or FollowUp(
                            weeks=8, phases={"portal": fixed.phases["portal"]}, labels=None, kind="observed"))
    phases, labels, geom = _study(0)
    case = Case(patient_id="P5", phases=phases, geometry=geom, labels=labels)
    result = run_case(case, ["tace_pd1_len"], [8], real_followup=_followup_scan(phases, geom),
                      options=PipelineOptions(segmentation="given", generator_weights="none-installed"))
    (fixed,) = seen
    assert fixed.labels is None and result.case.labels is labels
    assert any("registered on the whole body" in n for n in result.notes)
    # uncertainty alone (the networks disagree) leaves the liver mask in use
    v = DomainVerdict()
    v.add(Finding("envelope_agreement", OUTSIDE, "the two networks disagree.", 0.6))
    assert not v.reliable and v.liver_mask_usable and not guard().liver_mask_usable
