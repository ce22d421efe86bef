"""Clinical scores, value validation and regimen eligibility warnings (HCCTwinLib.clinical)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from HCCTwinLib import clinical
from HCCTwinLib.clinical import (
    ChildPugh,
    albi_grade,
    albi_score,
    bclc_stage,
    child_pugh,
    compute_scores,
    hap_score,
    mhap2_score,
    six_and_twelve,
    tumor_burden_score,
    up_to_seven,
    validate_clinical,
)
from HCCTwinLib.errors import ClinicalValueError, InputError
from HCCTwinLib.regimens import eligibility_warnings


def patient(**overrides):
    """A BCLC-B, Child-Pugh A5, ECOG 0 patient with resectable disease; overrides change single values."""
    values = dict(age_years=61, sex="M", ecog=0, albumin_g_l=42.0, bilirubin_umol_l=12.0, inr=1.05, ascites="none",
                  encephalopathy="none", afp_ng_ml=35.0, etiology="HBV", n_tumors=4, max_diameter_mm=45.0, pvtt=0,
                  extrahepatic_spread=0, resectable=1)
    values.update(overrides)
    return values


# ---------------------------------------------------------------------------------------------------- ALBI
@pytest.mark.parametrize("bili, alb, expected, grade", [
    (17, 40, 0.66 * math.log10(17) - 0.085 * 40, 2),  # -2.588: just above the -2.60 cut
    (10, 45, -3.165, 1),
    (60, 28, 0.66 * math.log10(60) - 0.085 * 28, 3),  # -1.206
])
def test_albi_worked_examples(bili, alb, expected, grade):
    score = albi_score(bili, alb)
    assert score == pytest.approx(expected, abs=1e-9)
    assert albi_grade(score) == grade


def test_albi_first_example_value():
    assert albi_score(17, 40) == pytest.approx(-2.588, abs=5e-4)


@pytest.mark.parametrize("score, grade", [
    (-2.61, 1), (-2.60, 1), (-2.5999, 2), (-1.40, 2), (-1.39, 2), (-1.3899, 3), (0.0, 3), (-4.0, 1),
])
def test_albi_grade_boundaries(score, grade):
    assert albi_grade(score) == grade


# ---------------------------------------------------------------------------------------------------- Child-Pugh
@pytest.mark.parametrize("bili, alb, inr, ascites, enceph, points, cls", [
    (17, 40, 1.1, "none", "none", 5, "A"),                # A5
    (20, 33, 1.2, "none", "none", 6, "A"),                # albumin 28-35 -> 2
    (40, 32, 1.2, "none", "none", 7, "B"),                # B7: bilirubin 2-3 mg/dL, albumin 28-35
    (40, 32, 1.9, "mild", "none", 9, "B"),
    (60, 25, 2.0, "moderate", "grade1-2", 13, "C"),       # C13
    (60, 25, 2.5, 2, 2, 15, "C"),                         # maximum, integer categories
    (20, 40, 1.1, 1, "grade3-4", 8, "B"),
])
def test_child_pugh_worked_examples(bili, alb, inr, ascites, enceph, points, cls):
    cp = child_pugh(bili, alb, inr, ascites, enceph)
    assert cp == ChildPugh(points, cls)
    assert cp.label == f"{cls}{points}"


# Middle bands include both ends: bilirubin 34.2-51.3 umol/L (2-3 mg/dL), albumin 28-35 g/L, INR 1.7-2.3 score 2.
@pytest.mark.parametrize("bili, bili_points", [
    (34.1, 1), (34.2, 2), (2 * 17.1, 2), (51.3, 2), (3 * 17.1, 2), (51.4, 3),
])
def test_child_pugh_bilirubin_boundaries(bili, bili_points):
    assert child_pugh(bili, 40, 1.0, 0, 0).points == 4 + bili_points


@pytest.mark.parametrize("alb, alb_points", [(35.1, 1), (35, 2), (28, 2), (27.9, 3)])
def test_child_pugh_albumin_boundaries(alb, alb_points):
    assert child_pugh(10, alb, 1.0, 0, 0).points == 4 + alb_points


@pytest.mark.parametrize("inr, inr_points", [(1.69, 1), (1.7, 2), (2.3, 2), (2.31, 3)])
def test_child_pugh_inr_boundaries(inr, inr_points):
    assert child_pugh(10, 40, inr, 0, 0).points == 4 + inr_points


def test_child_pugh_is_frozen():
    cp = child_pugh(17, 40, 1.1, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cp.points = 9


@pytest.mark.parametrize("points, cls", [(5, "A"), (6, "A"), (7, "B"), (9, "B"), (10, "C"), (15, "C")])
def test_child_pugh_class_from_points(points, cls):
    assert clinical.child_pugh_class(points) == cls


@pytest.mark.parametrize("points", [4, 16, 7.5])
def test_child_pugh_class_rejects_bad_points(points):
    with pytest.raises(ClinicalValueError, match="child_pugh_points"):
        clinical.child_pugh_class(points)


# ---------------------------------------------------------------------------------------------------- BCLC 2022
@pytest.mark.parametrize("kw, stage", [
    (dict(n_tumors=1, max_diameter_mm=18, ecog=0, child_pugh_class="A"), "0"),
    (dict(n_tumors=1, max_diameter_mm=20, ecog=0, child_pugh_class="A"), "0"),      # 2 cm exactly is still 0
    (dict(n_tumors=1, max_diameter_mm=21, ecog=0, child_pugh_class="A"), "A"),
    (dict(n_tumors=1, max_diameter_mm=95, ecog=0, child_pugh_class="A"), "A"),      # single, any size
    (dict(n_tumors=1, max_diameter_mm=15, ecog=0, child_pugh_class="B"), "A"),      # 0 needs Child-Pugh A
    (dict(n_tumors=2, max_diameter_mm=25, ecog=0, child_pugh_class="A"), "A"),
    (dict(n_tumors=3, max_diameter_mm=30, ecog=0, child_pugh_class="A"), "A"),      # 3 cm exactly is still A
    (dict(n_tumors=3, max_diameter_mm=31, ecog=0, child_pugh_class="A"), "B"),
    (dict(n_tumors=4, max_diameter_mm=20, ecog=0, child_pugh_class="A"), "B"),
    (dict(n_tumors=2, max_diameter_mm=60, ecog=0, child_pugh_class="B"), "B"),
    (dict(n_tumors=1, max_diameter_mm=30, ecog=0, child_pugh_class="A", pvtt=True), "C"),
    (dict(n_tumors=2, max_diameter_mm=30, ecog=0, child_pugh_class="A", extrahepatic_spread=1), "C"),
    (dict(n_tumors=1, max_diameter_mm=15, ecog=1, child_pugh_class="A"), "C"),
    (dict(n_tumors=5, max_diameter_mm=80, ecog=2, child_pugh_class="B"), "C"),
    (dict(n_tumors=0, max_diameter_mm=0, ecog=0, child_pugh_class="A", pvtt=1), "C"),  # infiltrative with PVTT
    (dict(n_tumors=1, max_diameter_mm=15, ecog=0, child_pugh_class="C"), "D"),
    (dict(n_tumors=1, max_diameter_mm=15, ecog=3, child_pugh_class="A"), "D"),
    (dict(n_tumors=3, max_diameter_mm=90, ecog=4, child_pugh_class="A", pvtt=True), "D"),
])
def test_bclc_stage(kw, stage):
    assert bclc_stage(**kw) == stage


def test_bclc_needs_a_tumour_for_early_stages():
    with pytest.raises(ClinicalValueError, match="n_tumors"):
        bclc_stage(n_tumors=0, max_diameter_mm=0, ecog=0, child_pugh_class="A")


# ---------------------------------------------------------------------------------------------------- HAP / mHAP-II
@pytest.mark.parametrize("alb, bili, afp, d_mm, points, cls", [
    (40, 12, 10, 50, 0, "A"),
    (36, 17, 400, 70, 0, "A"),     # cut-offs are strict
    (35.9, 17, 400, 70, 1, "B"),
    (40, 17.1, 10, 50, 1, "B"),
    (40, 12, 401, 71, 2, "C"),
    (35, 20, 500, 50, 3, "D"),
    (35, 20, 500, 80, 4, "D"),
])
def test_hap_score(alb, bili, afp, d_mm, points, cls):
    assert hap_score(alb, bili, afp, d_mm) == (points, cls)


@pytest.mark.parametrize("alb, bili, afp, d_mm, n, points, cls", [
    (40, 12, 10, 50, 1, 0, "A"),
    (40, 12, 10, 50, 2, 1, "B"),
    (35, 12, 10, 50, 3, 2, "C"),
    (35, 20, 10, 50, 2, 3, "D"),
    (35, 20, 500, 80, 5, 5, "D"),
])
def test_mhap2_score(alb, bili, afp, d_mm, n, points, cls):
    assert mhap2_score(alb, bili, afp, d_mm, n) == (points, cls)


# ---------------------------------------------------------------------------------------------------- tumour burden
@pytest.mark.parametrize("d_mm, n, total, stratum", [
    (15, 1, 2.5, "<=6"), (40, 2, 6.0, "<=6"), (30, 3, 6.0, "<=6"), (41, 2, 6.1, "6-12"), (33, 3, 6.3, "6-12"),
    (100, 2, 12.0, "6-12"), (101, 2, 12.1, ">12"), (150, 8, 23.0, ">12"),
])
def test_six_and_twelve(d_mm, n, total, stratum):
    value, got = six_and_twelve(d_mm, n)
    assert value == pytest.approx(total)
    assert got == stratum


@pytest.mark.parametrize("d_mm, n, value, within", [
    (50, 2, 7.0, True), (51, 2, 7.1, False), (60, 1, 7.0, True), (70, 1, 8.0, False), (20, 5, 7.0, True),
    (30, 5, 8.0, False),
])
def test_up_to_seven(d_mm, n, value, within):
    got_value, got_within = up_to_seven(d_mm, n)
    assert got_value == pytest.approx(value)
    assert got_within is within


@pytest.mark.parametrize("d_mm, n, tbs, group", [
    (30, 4, 5.0, "intermediate"),
    (32, 1, math.hypot(3.2, 1), "low"),          # 3.353 < 3.36
    (33, 1, math.hypot(3.3, 1), "intermediate"),  # 3.448
    (120, 6, math.hypot(12, 6), "intermediate"),  # 13.42
    (130, 6, math.hypot(13, 6), "high"),          # 14.32
])
def test_tumor_burden_score(d_mm, n, tbs, group):
    value, got = tumor_burden_score(d_mm, n)
    assert value == pytest.approx(tbs)
    assert got == group


# ---------------------------------------------------------------------------------------------------- unit mistakes
def test_bilirubin_in_mg_dl_is_rejected():
    with pytest.raises(ClinicalValueError, match="mg/dL") as info:
        albi_score(1.2, 40)
    assert "17.1" in str(info.value)
    with pytest.raises(ClinicalValueError, match="bilirubin_umol_l.*mg/dL"):
        validate_clinical(patient(bilirubin_umol_l=1.2))


def test_albumin_in_g_dl_is_rejected():
    with pytest.raises(ClinicalValueError, match="g/dL") as info:
        albi_score(17, 3.5)
    assert "multiply" in str(info.value).lower() and "10" in str(info.value)
    with pytest.raises(ClinicalValueError, match="albumin_g_l.*g/dL"):
        validate_clinical(patient(albumin_g_l=3.5))


@pytest.mark.parametrize("field, value, words", [
    ("max_diameter_mm", 0.5, "cm"),
    ("max_diameter_mm", 350, "0-300"),
    ("max_diameter_mm", 0, "n_tumors"),
    ("afp_ng_ml", -1, "negative"),
    ("inr", 12, "0.5-10"),
    ("inr", 0.3, "0.5-10"),
    ("ecog", 5, "0-4"),
    ("ecog", 1.5, "whole number"),
    ("ecog", True, "yes/no"),
    ("n_tumors", -1, ">= 0"),
    ("n_tumors", 2.5, "whole number"),
    ("ascites", 3, "0/1/2"),
    ("ascites", "lots", "not recognised"),
    ("encephalopathy", "grade 5", "not recognised"),
    ("pvtt", 2, "0 (no) or 1 (yes)"),
    ("bilirubin_umol_l", "high", "not a number"),
    ("bilirubin_umol_l", 2000, "implausible"),
    ("albumin_g_l", 95, "implausible"),
    ("child_pugh_points", 3, "5-15"),
    ("bclc", "E", "BCLC stage"),
    ("sex", "unknown", "M or F"),
])
def test_bad_values_name_the_field(field, value, words):
    with pytest.raises(ClinicalValueError) as info:
        validate_clinical(patient(**{field: value}))
    message = str(info.value)
    assert field in message
    assert words in message


def test_tumour_count_without_size_is_rejected():
    with pytest.raises(ClinicalValueError, match="n_tumors = 0"):
        validate_clinical(patient(n_tumors=0, max_diameter_mm=30))


def test_clinical_value_error_is_an_input_error():
    with pytest.raises(InputError):
        albi_score(1.2, 40)


# ---------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("field", clinical.REQUIRED_FIELDS + clinical.CHILD_PUGH_INPUT_FIELDS)
@pytest.mark.parametrize("missing", ["drop", None, float("nan"), "  "])
def test_missing_required_field(field, missing):
    values = patient()
    if missing == "drop":
        del values[field]
    else:
        values[field] = missing
    with pytest.raises(ClinicalValueError, match=f"{field} is missing"):
        validate_clinical(values)


def test_child_pugh_inputs_optional_when_points_given():
    values = patient(child_pugh_points=6, inr=None)
    del values["ascites"]
    out = validate_clinical(values)
    assert out["child_pugh_points"] == 6 and out["inr"] is None
    scores = compute_scores(values)
    assert (scores["child_pugh_points"], scores["child_pugh_class"]) == (6, "A")
    assert any("taken from child_pugh_points" in note for note in scores["notes"])


def test_validate_normalizes_a_copy():
    raw = patient(ecog=1.0, n_tumors="2", ascites="Mild", encephalopathy="Grade 1-2", pvtt="yes",
                  extrahepatic_spread=0.0, resectable="no", sex="female", bclc="BCLC-B", child_pugh_points=7.0,
                  bilirubin_umol_l="20", patient_id="P001", age_years=None)
    before = dict(raw)
    out = validate_clinical(raw)
    assert raw == before  # input untouched
    assert out["ecog"] == 1 and type(out["ecog"]) is int
    assert out["n_tumors"] == 2 and type(out["n_tumors"]) is int
    assert out["ascites"] == 1 and out["encephalopathy"] == 1
    assert out["pvtt"] is True and out["extrahepatic_spread"] is False and out["resectable"] is False
    assert out["sex"] == "F" and out["bclc"] == "B"
    assert out["child_pugh_points"] == 7 and type(out["child_pugh_points"]) is int
    assert out["bilirubin_umol_l"] == 20.0
    assert out["patient_id"] == "P001"  # non-clinical keys pass through
    assert out["age_years"] is None


@pytest.mark.parametrize("word, code", [("none", 0), ("mild", 1), ("moderate", 2), ("severe", 2), (0, 0), (2, 2)])
def test_ascites_codes(word, code):
    assert validate_clinical(patient(ascites=word))["ascites"] == code


@pytest.mark.parametrize("word, code", [("none", 0), ("grade1-2", 1), ("grade3-4", 2), ("III-IV", 2), (1, 1)])
def test_encephalopathy_codes(word, code):
    assert validate_clinical(patient(encephalopathy=word))["encephalopathy"] == code


def test_validate_rejects_non_mapping():
    with pytest.raises(ClinicalValueError, match="mapping"):
        validate_clinical([("ecog", 0)])


# ---------------------------------------------------------------------------------------------------- compute_scores
def test_compute_scores_full_record():
    scores = compute_scores(patient())
    expected_keys = set(clinical.SCORE_FIELDS) | {"notes"}
    assert set(scores) == expected_keys
    assert scores["albi_score"] == pytest.approx(0.66 * math.log10(12) - 0.085 * 42)
    assert scores["albi_grade"] == 1
    assert (scores["child_pugh_points"], scores["child_pugh_class"], scores["child_pugh_label"]) == (5, "A", "A5")
    assert scores["bclc"] == "B"
    assert (scores["hap_points"], scores["hap_class"]) == (0, "A")
    assert (scores["mhap2_points"], scores["mhap2_class"]) == (1, "B")
    assert scores["six_twelve_cm"] == pytest.approx(8.5) and scores["six_twelve_stratum"] == "6-12"
    assert scores["up_to_seven_value"] == pytest.approx(8.5) and scores["within_up_to_seven"] is False
    assert scores["tbs"] == pytest.approx(math.hypot(4.5, 4)) and scores["tbs_group"] == "intermediate"
    assert scores["notes"] == []


def test_compute_scores_notes_child_pugh_disagreement():
    far = compute_scores(patient(child_pugh_points=8))  # labs give A5
    assert far["child_pugh_points"] == 5
    assert any("child_pugh_points given as 8" in note for note in far["notes"])
    near = compute_scores(patient(child_pugh_points=6))  # within 1 point: no note
    assert near["child_pugh_points"] == 5 and near["notes"] == []


def test_compute_scores_notes_bclc_disagreement():
    scores = compute_scores(patient(bclc="C"))
    assert scores["bclc"] == "B"
    assert any("bclc given as C" in note for note in scores["notes"])
    assert compute_scores(patient(bclc="B"))["notes"] == []


def test_compute_scores_without_tumour_uses_given_bclc():
    scores = compute_scores(patient(n_tumors=0, max_diameter_mm=0, bclc="A"))
    assert scores["bclc"] == "A"
    assert any("BCLC not computed" in note for note in scores["notes"])


# ---------------------------------------------------------------------------------------------------- eligibility
# Child-Pugh B8 from labs: bilirubin 40 (2), albumin 32 (2), INR 1.2 (1), no ascites (1), no encephalopathy (1) = 7;
# + mild ascites = 8.
CP_B8 = dict(bilirubin_umol_l=40, albumin_g_l=32, inr=1.2, ascites="mild")


def test_child_pugh_8_warns_for_tace_not_for_pd1_tki():
    values = patient(**CP_B8)
    assert compute_scores(values)["child_pugh_label"] == "B8"
    tace = eligibility_warnings("tace_pd1_len", values)
    assert len(tace) == 1
    assert "Child-Pugh 8 (B8)" in tace[0] and "limit of 7" in tace[0] and "tace_pd1_len" in tace[0]
    assert "TACE/HAIC triple-therapy cohorts" in tace[0]
    assert eligibility_warnings("pd1_tki", values) == []
    assert any("Child-Pugh 8" in w for w in eligibility_warnings("haic_pd1_len", values))


def test_eligible_patient_has_no_warnings():
    values = patient()
    for regimen_id in ("tace_pd1_len", "haic_pd1_len", "pd1_tki", "neoadj_haic_pd1_len_resection", "resection"):
        assert eligibility_warnings(regimen_id, values) == [], regimen_id


@pytest.mark.parametrize("overrides, expected", [
    (dict(pvtt=1), "BCLC C"),
    (dict(extrahepatic_spread=1), "BCLC C"),
    (dict(resectable=0), "not resectable"),
    (dict(n_tumors=1, max_diameter_mm=40), "BCLC A"),
])
def test_neoadjuvant_warnings(overrides, expected):
    warnings = eligibility_warnings("neoadj_haic_pd1_len_resection", patient(**overrides))
    assert any(expected in w and "neoadj_haic_pd1_len_resection" in w for w in warnings), warnings


def test_resection_warnings():
    assert any("not resectable" in w for w in eligibility_warnings("resection", patient(resectable=0)))
    child_b = eligibility_warnings("resection", patient(**CP_B8))
    assert any("Child-Pugh class B (B8)" in w for w in child_b), child_b
    missing = eligibility_warnings("resection", patient(resectable=None))
    assert any("not recorded" in w for w in missing), missing


def test_study_criterion_not_repeated():
    # Child-Pugh C10: the regimen limit (7) warns; the study limit (9) is not repeated for the same field.
    values = patient(bilirubin_umol_l=60, albumin_g_l=25, inr=1.2, ascites="mild", encephalopathy="none")
    assert compute_scores(values)["child_pugh_points"] == 10
    warnings = eligibility_warnings("tace_pd1_len", values)
    assert sum("Child-Pugh" in w for w in warnings) == 1
    assert any("exceeds the trial limit of 9 for pd1_tki" in w for w in eligibility_warnings("pd1_tki", values))


@pytest.mark.parametrize("ecog, tace_warns, tki_warns", [(0, False, False), (1, False, False), (2, True, False),
                                                        (3, True, True)])
def test_ecog_limits(ecog, tace_warns, tki_warns):
    values = patient(ecog=ecog)
    assert any("ECOG" in w for w in eligibility_warnings("tace_pd1_len", values)) is tace_warns
    assert any("ECOG" in w for w in eligibility_warnings("pd1_tki", values)) is tki_warns


def test_eligibility_unknown_regimen_lists_ids():
    with pytest.raises(InputError, match="tace_pd1_len") as info:
        eligibility_warnings("tace_only", patient())
    assert "tace_only" in str(info.value)


def test_eligibility_rejects_bad_values():
    with pytest.raises(ClinicalValueError, match="mg/dL"):
        eligibility_warnings("pd1_tki", patient(bilirubin_umol_l=1.2))
