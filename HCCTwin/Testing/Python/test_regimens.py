"""Regimen catalogue: packaged data, custom catalogues, validation errors, criteria (HCCTwinLib.regimens)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest

from HCCTwinLib import regimens
from HCCTwinLib.errors import InputError
from HCCTwinLib.regimens import (
    REGIMEN_IDS,
    Criterion,
    Regimen,
    eligibility_warnings,
    get_regimen,
    load_catalogue,
)

EXPECTED_IDS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki", "neoadj_haic_pd1_len_resection", "resection")


def raw_catalogue() -> dict:
    return json.loads(regimens.DEFAULT_CATALOGUE_PATH.read_text(encoding="utf-8"))


def write(tmp_path, data, name="site.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def patient(**overrides):
    values = dict(ecog=0, albumin_g_l=42.0, bilirubin_umol_l=12.0, inr=1.05, ascites=0, encephalopathy=0,
                  afp_ng_ml=35.0, n_tumors=4, max_diameter_mm=45.0, pvtt=0, extrahepatic_spread=0, resectable=1)
    values.update(overrides)
    return values


# ---------------------------------------------------------------------------------------------------- packaged data
def test_ids_in_catalogue_order():
    assert REGIMEN_IDS == EXPECTED_IDS
    assert tuple(load_catalogue()) == EXPECTED_IDS


def test_packaged_catalogue_contents():
    cat = load_catalogue()
    colors = [r.color for r in cat.values()]
    assert len(set(colors)) == len(colors)
    for regimen in cat.values():
        assert isinstance(regimen, Regimen)
        assert regimen.assessment_interval_weeks == 8
        assert re.fullmatch(r"#[0-9a-f]{6}", regimen.color)
        assert regimen.components and regimen.references and regimen.name and regimen.short_name
        # every regimen carries the study-wide criteria (Child-Pugh A/B, ECOG <= 2)
        study = {(c.field, c.op, c.value) for c in regimen.eligibility if c.scope == "study"}
        assert study == {("child_pugh_points", "<=", 9), ("ecog", "<=", 2)}
    flags = {rid: (r.intra_arterial, r.lipiodol) for rid, r in cat.items()}
    assert flags == {"tace_pd1_len": (True, True), "haic_pd1_len": (True, False), "pd1_tki": (False, False),
                     "neoadj_haic_pd1_len_resection": (True, False), "resection": (False, False)}


def test_component_doses_follow_the_trials():
    haic = get_regimen("haic_pd1_len")
    folfox = haic.components[0]
    for text in ("oxaliplatin", "85 mg/m2", "130 mg/m2", "leucovorin 400 mg/m2", "400 mg/m2 bolus",
                 "2400 mg/m2 over 46 h"):
        assert text in folfox.dose
    assert folfox.schedule == "every 3 weeks"
    for rid in ("tace_pd1_len", "haic_pd1_len", "neoadj_haic_pd1_len_resection"):
        agents = {c.drug_class: c for c in get_regimen(rid).components}
        assert "200 mg" in agents["PD-1 inhibitor"].dose and "3 weeks" in agents["PD-1 inhibitor"].schedule
        lenva = agents["tyrosine kinase inhibitor"].dose
        assert "8 mg" in lenva and "12 mg" in lenva and "60 kg" in lenva
    tace = get_regimen("tace_pd1_len").components[0]
    assert "lipiodol" in tace.agent.lower() and "on demand" in tace.schedule
    neo = get_regimen("neoadj_haic_pd1_len_resection")
    assert neo.components[-1].agent == "Hepatectomy" and "2-4" in neo.components[0].schedule
    assert "tislelizumab" in neo.components[1].agent.lower()
    assert [c.agent for c in get_regimen("resection").components] == ["Hepatectomy"]


def test_regimen_objects_are_frozen():
    regimen = get_regimen("pd1_tki")
    with pytest.raises(dataclasses.FrozenInstanceError):
        regimen.color = "#000000"
    with pytest.raises(dataclasses.FrozenInstanceError):
        regimen.eligibility[0].value = 12


def test_load_catalogue_returns_a_copy():
    cat = load_catalogue()
    del cat["resection"]
    assert "resection" in load_catalogue()
    assert get_regimen("resection").id == "resection"


def test_get_regimen_unknown_id_lists_valid_ids():
    with pytest.raises(InputError) as info:
        get_regimen("sorafenib")
    message = str(info.value)
    assert "sorafenib" in message
    assert all(rid in message for rid in EXPECTED_IDS)


# ---------------------------------------------------------------------------------------------------- criteria
@pytest.mark.parametrize("op, limit, actual, ok", [
    ("<=", 7, 7, True), ("<=", 7, 8, False), ("<", 7, 6, True), ("<", 7, 7, False),
    (">=", 18, 18, True), (">=", 18, 17, False), (">", 0, 1, True), (">", 0, 0, False),
    ("==", 1, True, True), ("==", 1, False, False), ("!=", "D", "C", True), ("!=", "D", "D", False),
    ("in", ("A", "B"), "B", True), ("in", ("B",), "C", False), ("not in", ("D",), "C", True),
    ("not in", ("C", "D"), "D", False),
])
def test_criterion_ops(op, limit, actual, ok):
    crit = Criterion(field="x", op=op, value=limit, source="test")
    assert crit.passes({"x": actual}) is ok
    message = crit.check({"x": actual}, "r1")
    assert (message is None) is ok
    if not ok:
        assert "r1" in message and "(test)" in message


def test_criterion_message_names_criterion_and_value():
    crit = Criterion(field="child_pugh_points", op="<=", value=7, source="TACE/HAIC triple-therapy cohorts")
    message = crit.check({"child_pugh_points": 9, "child_pugh_class": "B"}, "tace_pd1_len")
    assert message == ("Child-Pugh 9 (B9) exceeds the trial limit of 7 for tace_pd1_len "
                       "(TACE/HAIC triple-therapy cohorts)")


@pytest.mark.parametrize("values", [{}, {"ecog": None}, {"ecog": float("nan")}])
def test_criterion_unrecorded_field(values):
    message = Criterion(field="ecog", op="<=", value=1, source="s").check(values, "r")
    assert message is not None and "not recorded" in message


# ---------------------------------------------------------------------------------------------------- custom catalogue
def test_custom_catalogue_with_extra_regimen(tmp_path):
    data = raw_catalogue()
    data["regimens"].append({
        "id": "site_tare", "name": "Site TARE (Y-90)", "short_name": "TARE",
        "components": [{"agent": "Yttrium-90 glass microspheres", "class": "radioembolization",
                        "dose": "per dosimetry", "schedule": "once"}],
        "assessment_interval_weeks": 12, "intra_arterial": True, "lipiodol": False,
        "eligibility": [{"field": "albi_grade", "op": "<=", "value": 2, "source": "site protocol"},
                        {"field": "bclc", "op": "in", "value": ["A", "B", "C"], "source": "site protocol"}],
        "references": ["site protocol 2026"], "color": "#17BECF",
    })
    cat = load_catalogue(write(tmp_path, data))
    assert tuple(cat) == EXPECTED_IDS + ("site_tare",)
    tare = cat["site_tare"]
    assert tare.assessment_interval_weeks == 12 and tare.color == "#17becf"
    assert tare.eligibility[1].value == ("A", "B", "C")
    assert get_regimen("site_tare", cat) is tare
    assert eligibility_warnings("site_tare", patient(), catalogue=cat) == []
    # ALBI grade 3 (bilirubin 60, albumin 28 -> -1.21) warns through the site criterion
    warnings = eligibility_warnings("site_tare", patient(bilirubin_umol_l=60, albumin_g_l=28), catalogue=cat)
    assert any("ALBI grade 3" in w and "site_tare" in w for w in warnings), warnings
    # the packaged catalogue is unchanged
    with pytest.raises(InputError):
        get_regimen("site_tare")


def test_custom_catalogue_without_study_criteria(tmp_path):
    data = raw_catalogue()
    del data["study_eligibility"]
    cat = load_catalogue(write(tmp_path, data))
    assert all(c.scope == "trial" for r in cat.values() for c in r.eligibility)


def _mutate(data, how):
    first = data["regimens"][0]
    if how == "missing_key":
        del first["color"]
    elif how == "duplicate_id":
        data["regimens"][1]["id"] = first["id"]
    elif how == "unknown_op":
        first["eligibility"][0]["op"] = "=<"
    elif how == "unknown_field":
        first["eligibility"][0]["field"] = "child_pugh_point"
    elif how == "criterion_missing_key":
        del first["eligibility"][0]["source"]
    elif how == "component_missing_key":
        del first["components"][0]["class"]
    elif how == "bad_color":
        first["color"] = "blue"
    elif how == "reused_color":
        data["regimens"][1]["color"] = first["color"]
    elif how == "in_needs_list":
        data["regimens"][3]["eligibility"][0]["value"] = "B"
    elif how == "order_needs_number":
        first["eligibility"][0]["value"] = "seven"
    elif how == "bad_weeks":
        first["assessment_interval_weeks"] = 0
    elif how == "bad_bool":
        first["lipiodol"] = "yes"
    elif how == "no_regimens":
        data["regimens"] = []
    elif how == "bad_id":
        first["id"] = "TACE PD-1"
    return data


@pytest.mark.parametrize("how, words", [
    ("missing_key", "missing key(s) color"),
    ("duplicate_id", "duplicate regimen id 'tace_pd1_len'"),
    ("unknown_op", "unknown op '=<'"),
    ("unknown_field", "unknown field 'child_pugh_point'"),
    ("criterion_missing_key", "criterion is missing key(s) source"),
    ("component_missing_key", "component is missing key(s) class"),
    ("bad_color", "hex colour"),
    ("reused_color", "reuses colour"),
    ("in_needs_list", "needs a non-empty list"),
    ("order_needs_number", "needs a number"),
    ("bad_weeks", "positive integer"),
    ("bad_bool", "true or false"),
    ("no_regimens", "non-empty list"),
    ("bad_id", "lower-case"),
])
def test_bad_catalogue_errors(tmp_path, how, words):
    path = write(tmp_path, _mutate(copy.deepcopy(raw_catalogue()), how))
    with pytest.raises(InputError) as info:
        load_catalogue(path)
    message = str(info.value)
    assert words in message
    assert str(path) in message


def test_invalid_json_reports_line(tmp_path):
    path = write(tmp_path, '{"regimens": [\n  {"id": "x",}\n]}')
    with pytest.raises(InputError, match="invalid JSON at line 2"):
        load_catalogue(path)


def test_top_level_must_be_object(tmp_path):
    with pytest.raises(InputError, match='"regimens" list'):
        load_catalogue(write(tmp_path, [{"id": "x"}]))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot be read"):
        load_catalogue(tmp_path / "nope.json")
