"""The twin check (:mod:`HCCTwinLib.twincheck`): a real follow-up against the virtual follow-up of the received
regimen at the same week and against the unchanged pre-treatment scan."""

from __future__ import annotations

import numpy as np

from HCCTwinLib.cases import Case, FollowUp, Geometry
from HCCTwinLib.labels import NECROSIS, VIABLE_TUMOR
from HCCTwinLib.twincheck import compare_with_real, twin_check_reason

from conftest import make_phantom


def _study():
    hu, labels = make_phantom((24, 48, 48), seed=5)
    g = Geometry(hu.shape, (1.5, 1.5, 3.0), (0.0, 0.0, 0.0))
    case = Case("TC1", {"arterial": (hu + 30).astype(np.float32), "portal": hu.astype(np.float32)}, g, labels=labels)
    # the real response: half of the viable tumour turns necrotic (40 HU lower in both phases)
    rng = np.random.default_rng(0)
    after = labels.copy()
    after[(labels == VIABLE_TUMOR) & (rng.random(labels.shape) < 0.5)] = NECROSIS
    drop = np.where((after == NECROSIS) & (labels == VIABLE_TUMOR), -40.0, 0.0).astype(np.float32)
    real = FollowUp(8, {p: a + drop for p, a in case.phases.items()}, labels=after, kind="observed",
                    regimen="tace_pd1_len")
    return case, real, after, drop


def test_a_twin_that_predicts_the_response_is_closer_than_the_copy():
    case, real, after, drop = _study()
    good = FollowUp(8, {p: a + drop for p, a in case.phases.items()}, labels=after, regimen="tace_pd1_len")
    check = compare_with_real(case, good, real, {"tace_pd1_len": {"w08": {"mrecist": "PR"}},
                                                 "observed": {"w08": {"mrecist": "PR"}}})
    assert check.closer is True
    assert all(v == 0.0 for v in check.hu_mae_virtual.values()) and all(v > 1 for v in check.hu_mae_copy.values())
    assert check.viable_ml["virtual"] == check.viable_ml["real"] < check.viable_ml["pre-treatment"]
    assert check.viable_dice_virtual == 1.0 and check.viable_dice_copy < 1.0
    assert check.mrecist_real == "PR" and "closer to the real scan" in check.headline()
    d = check.to_dict()
    assert d["closer"] is True and d["week"] == 8 and d["region_ml"] > 0


def test_a_twin_that_copies_the_scan_is_neither_and_one_that_overshoots_is_not_closer():
    case, real, after, drop = _study()
    copy = FollowUp(8, dict(case.phases), labels=case.labels, regimen="tace_pd1_len")
    assert compare_with_real(case, copy, real).closer is None  # the same as the copy baseline: a tie
    # everything necrotic and 120 HU lower: farther from the real scan than no change at all
    gone = np.where(case.labels == VIABLE_TUMOR, NECROSIS, case.labels).astype(np.uint8)
    over = np.where(case.labels == VIABLE_TUMOR, -120.0, 0.0).astype(np.float32)
    bad = FollowUp(8, {p: a + over for p, a in case.phases.items()}, labels=gone, regimen="tace_pd1_len")
    check = compare_with_real(case, bad, real)
    assert check.closer is False and "not closer" in check.headline()
    # the real follow-up without labels: the image alone decides, volumes are not compared
    unlabelled = FollowUp(8, real.phases, labels=None, kind="observed", regimen="tace_pd1_len")
    check = compare_with_real(case, bad, unlabelled)
    assert check.closer is False and check.viable_ml["real"] is None and check.viable_dice_virtual is None


def test_why_no_twin_check():
    case, real, *_ = _study()
    followups = {"tace_pd1_len": {8: None}}
    assert twin_check_reason(real, ["tace_pd1_len"], followups) is None
    assert "regimen was not given" in twin_check_reason(FollowUp(8, real.phases), ["tace_pd1_len"], followups)
    assert "not among the regimens" in twin_check_reason(real, ["pd1_tki"], followups)
    assert "no virtual follow-up" in twin_check_reason(FollowUp(5, real.phases, regimen="tace_pd1_len"),
                                                       ["tace_pd1_len"], followups)


def test_run_case_adds_the_real_week_and_checks_the_twin(tmp_path):
    """A real follow-up at a week the run did not ask for: the virtual follow-ups are made at that week too, the
    twin check is in result.json and in the report (page 1 and its own section)."""
    import json

    from HCCTwinLib.pipeline import PipelineOptions, run_case
    from HCCTwinLib.report.content import build_sections

    case, real, *_ = _study()
    real.weeks = 5
    result = run_case(case, ["tace_pd1_len", "pd1_tki"], [8, 16], real_followup=real,
                      options=PipelineOptions(samples=1))
    assert result.weeks == [5, 8, 16] and any("also at week 5" in n for n in result.notes)
    assert 5 in result.followups["tace_pd1_len"]
    summary = json.loads(result.write_json(tmp_path / "r.json").read_text())
    check = summary["twin_check"]
    assert check["week"] == 5 and check["regimen"] == "tace_pd1_len" and check["headline"].startswith("Twin check")
    assert "TACE" in check["headline"]  # the regimen's name from the catalogue
    sections = {s.key: s for s in build_sections(summary)}
    assert "twin_check" in sections
    first = " ".join(b.text for b in sections["summary"].blocks if b.text)
    assert check["headline"] in first
    # the Slicer module's case table carries it too
    from HCCTwinLib.scene.build import results_table_columns

    table = results_table_columns(result)
    rows = dict(zip(table["item"], table["value"]))
    assert rows["twin check w5 (tace_pd1_len)"].startswith(("virtual", "neither"))
    assert "/" in rows["twin check w5 (tace_pd1_len): mean |HU diff| arterial, virtual / unchanged"]
    # without the regimen the patient received there is nothing to compare with: said, not guessed
    real.regimen = None
    result = run_case(case, ["tace_pd1_len"], [5], real_followup=real, options=PipelineOptions(samples=1))
    assert result.twin_check is None and any("regimen was not given" in n for n in result.notes)


def test_a_real_followup_without_labels_is_segmented_by_the_same_model(monkeypatch):
    """Pre-treatment labels drawn by the model and a two-phase follow-up without labels: the same model segments the
    follow-up (its response is read, the twin check gets volumes); labels the guard calls outside are not used, and a
    one-phase follow-up is not segmented (both said in the notes)."""
    import HCCTwinLib.pipeline as pipeline
    from HCCTwinLib.domain import OUTSIDE, DomainVerdict, Finding
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    case, real, *_ = _study()
    unlabelled = FollowUp(8, dict(real.phases), labels=None, kind="observed", regimen="tace_pd1_len")
    opts = PipelineOptions(samples=1, segmentation="model", generator_weights="none", allow_missing_models=True)
    monkeypatch.setattr(pipeline, "_guard", lambda *a, **k: DomainVerdict())
    result = run_case(case, ["tace_pd1_len"], [8], real_followup=unlabelled, options=opts)
    assert result.real_followup.labels is not None and unlabelled.labels is None  # the caller's object unchanged
    assert "segmented by the pre-treatment model" in result.provenance["real_followup_labels"]
    assert "w08" in result.response["observed"] and result.timings["followup_segmentation"] > 0

    def outside(*_a, **_k):
        v = DomainVerdict()
        v.add(Finding("mean_entropy", OUTSIDE, "the network is unsure.", 0.4))
        return v

    monkeypatch.setattr(pipeline, "_guard", outside)
    result = run_case(case, ["tace_pd1_len"], [8], real_followup=unlabelled, options=opts)
    assert result.real_followup.labels is None and "observed" not in result.response
    assert any("its response is not read" in n for n in result.notes)
    one_phase = FollowUp(8, {"portal": real.phases["portal"]}, labels=None, kind="observed", regimen="tace_pd1_len")
    result = run_case(case, ["tace_pd1_len"], [8], real_followup=one_phase, options=opts)
    assert result.real_followup.labels is None and any("lacks the arterial phase" in n for n in result.notes)
    # labels given for the pre-treatment scan: the follow-up is not segmented by a model that did not read it
    given = run_case(case, ["tace_pd1_len"], [8], real_followup=unlabelled,
                     options=PipelineOptions(samples=1, generator_weights="none", allow_missing_models=True))
    assert given.real_followup.labels is None and "real_followup_labels" not in given.provenance
