"""The typed survival result (:mod:`HCCTwinLib.survival_result`): the engine writes it, every reader parses it.

Round trips on real outputs of the shipped survival engine (plain, with landmark readings, the neoadjuvant question,
metastasis not applicable), an older ``result.json`` that lacks optional keys, and malformed survival parts (a clear
error for a survival value that is not an object; the report and the scene table say "n/a" for a damaged part)."""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest

from HCCTwinLib.errors import InputError
from HCCTwinLib.formatting import fmt_median
from HCCTwinLib.survival_result import (
    Curve,
    LandmarkCurve,
    LandmarkRegimen,
    Metastasis,
    MetastasisUpdate,
    Recommendation,
    RmstDifference,
    SurvivalResult,
)

REGS = ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]
#: the demo's default patient (simulate.default_case, seed 0, index 2): HCC with PVTT, not resectable
CLINICAL = {"age_years": 57, "sex": "F", "ecog": 1, "albumin_g_l": 40.3, "bilirubin_umol_l": 21.9, "inr": 1.0,
            "ascites": 0, "encephalopathy": 0, "afp_ng_ml": 4205.0, "etiology": "HBV", "n_tumors": 1,
            "max_diameter_mm": 53.6, "pvtt": 1, "extrahepatic_spread": 0, "child_pugh_points": 5, "resectable": 0,
            "bclc": "C"}
BASE = {"viable_volume_ml": 40.0, "tumor_volume_ml": 50.0, "sum_viable_mm": 60.0}
READINGS = {0: BASE,
            8: {"viable_volume_ml": 2.0, "tumor_volume_ml": 30.0, "sum_viable_mm": 10.0, "category_mrecist": "PR"},
            16: {"viable_volume_ml": 1.0, "tumor_volume_ml": 20.0, "sum_viable_mm": 5.0, "category_mrecist": "CR"}}


@pytest.fixture(scope="module")
def outputs():
    """``engine.predict`` of the shipped engine for four kinds of patients (what result.json["survival"] holds)."""
    from HCCTwinLib.survival.store import get_survival_engine

    engine = get_survival_engine()
    return {
        "plain": engine.predict(CLINICAL, None, REGS),
        "landmark": engine.predict(CLINICAL, None, REGS, eligible=["pd1_tki", "tace_pd1_len"],
                                   readings={"tace_pd1_len": READINGS, "haic_pd1_len": READINGS},
                                   readings_source={"tace_pd1_len": "observed"}),
        "neoadjuvant": engine.predict(dict(CLINICAL, resectable=1), None, None),
        "spread": engine.predict(dict(CLINICAL, extrahepatic_spread=1), None, ["tace_pd1_len", "unknown_regimen"]),
    }


def test_engine_output_round_trips_byte_for_byte(outputs):
    assert {"neoadjuvant", "landmark"} <= set(outputs["neoadjuvant"]) | set(outputs["landmark"])
    for name, out in outputs.items():
        back = SurvivalResult.from_dict(out).to_dict()
        assert back == out, name
        # same key order too: result.json is the same file
        assert json.dumps(back, indent=2) == json.dumps(out, indent=2), name
        assert json.dumps(out, allow_nan=False)  # strict JSON (NaN -> null)


def test_result_json_keeps_its_key_order(outputs):
    """The keys and their order in result.json as the engine wrote them before the types (a golden list: the
    round trip above cannot see a field moved in both the writer and the reader)."""
    curve = ["times", "survival", "median", "s12", "s24", "rmst24", "lower", "upper", "s12_ci", "s24_ci",
             "rmst24_ci", "median_ci", "interval_method"]
    diff = ["regimen_a", "regimen_b", "tau_months", "estimate", "lower", "upper", "prob_a_better"]
    out = outputs["landmark"]
    assert list(out) == ["model", "endpoints", "rmst24_differences", "recommendation", "metastasis", "landmark",
                         "notes"]
    assert list(outputs["neoadjuvant"]) == ["model", "endpoints", "rmst24_differences", "recommendation",
                                            "neoadjuvant", "metastasis", "notes"]
    assert all(list(c) == curve for by_regimen in out["endpoints"].values() for c in by_regimen.values())
    assert all(list(d) == diff for d in out["rmst24_differences"])
    assert list(outputs["neoadjuvant"]["neoadjuvant"]) == [*diff, "question"]
    assert list(out["recommendation"]) == ["regimen", "probability_best", "endpoint", "tau_months",
                                           "eligible_only", "chosen_among"]
    assert list(out["metastasis"]) == ["horizon_months", "risk", "lower", "upper", "points", "interval_method",
                                       "applies_to", "population", "landmark", "competing_risk"]
    assert list(out["metastasis"]["competing_risk"]) == ["horizon_months", "cumulative_incidence", "curve", "method",
                                                         "n_fit", "n_metastases", "n_deaths_without_metastasis"]
    assert list(outputs["spread"]["metastasis"]) == ["not_applicable", "applies_to"]
    assert list(out["landmark"]["tace_pd1_len"]) == ["timepoints", "response_features"]


def test_the_types_read_what_the_engine_wrote(outputs):
    out = outputs["landmark"]
    res = SurvivalResult.from_dict(out)
    assert res.model == out["model"] and res.notes == tuple(out["notes"])
    assert set(res.endpoints) == set(out["endpoints"]) == {"os", "pfs"}
    for endpoint, by_regimen in out["endpoints"].items():
        assert list(res.curves(endpoint)) == list(by_regimen) == REGS
        for regimen, raw in by_regimen.items():
            curve = res.curve(endpoint, regimen)
            assert isinstance(curve, Curve) and curve.regimen == regimen
            assert list(curve.times) == raw["times"] and list(curve.survival) == raw["survival"]
            assert list(curve.lower) == raw["lower"] and list(curve.upper) == raw["upper"]
            assert curve.median == raw["median"] and list(curve.median_ci) == raw["median_ci"]
            assert (curve.s12, curve.s24, curve.rmst24) == (raw["s12"], raw["s24"], raw["rmst24"])
            assert list(curve.rmst24_ci) == raw["rmst24_ci"] and curve.interval_method == raw["interval_method"]
            assert all(lo <= s <= hi for lo, s, hi in zip(curve.lower, curve.survival, curve.upper))
            assert curve.median_reached == (raw["median"] is not None)
            assert fmt_median(curve) == fmt_median(raw)
    rec = res.recommendation
    assert isinstance(rec, Recommendation)
    assert rec.to_dict() == out["recommendation"]
    assert rec.eligible_only is True and set(rec.chosen_among) == {"pd1_tki", "tace_pd1_len"}
    assert rec.regimen in rec.chosen_among and sum(rec.probability_best.values()) == pytest.approx(1.0)
    assert res.probability_best(rec.regimen) == out["recommendation"]["probability_best"][rec.regimen]
    assert res.probability_best("haic_pd1_len") is None  # not eligible: did not compete
    assert len(res.rmst24_differences) == 3 and all(isinstance(d, RmstDifference) for d in res.rmst24_differences)
    d = res.rmst24_differences[0]
    rm = {r: res.curve("os", r).rmst24 for r in REGS}
    assert d.estimate == pytest.approx(rm[d.regimen_a] - rm[d.regimen_b]) and d.question is None
    assert d.lower <= d.estimate <= d.upper and 0 <= d.prob_a_better <= 1
    met = res.metastasis
    assert isinstance(met, Metastasis) and met.has_risk and met.not_applicable is None
    assert met.applies_to == "tace_pd1_len" and 0 <= met.lower <= met.risk <= met.upper <= 1
    assert set(met.landmark) == {"w08", "w16"} and isinstance(met.landmark["w08"], MetastasisUpdate)
    up = met.landmark["w08"]
    assert up.source == "observed" and up.landmark_weeks == 8 and 0 <= up.lower <= up.risk <= up.upper <= 1
    assert up.to_dict() == out["metastasis"]["landmark"]["w08"]
    assert set(res.landmark) == {"tace_pd1_len", "haic_pd1_len"}
    entry = res.landmark["tace_pd1_len"]
    assert isinstance(entry, LandmarkRegimen) and entry.weeks() == list(out["landmark"]["tace_pd1_len"]["timepoints"])
    tp = entry.timepoints[entry.weeks()[0]]
    assert isinstance(tp, LandmarkCurve) and tp.landmark_week == int(entry.weeks()[0][1:])
    assert len(tp.times_after_landmark) == len(tp.survival) == len(tp.lower) == len(tp.upper) > 1
    assert tp.mrecist == out["landmark"]["tace_pd1_len"]["timepoints"][entry.weeks()[0]]["mrecist"]
    assert entry.response_features == out["landmark"]["tace_pd1_len"]["response_features"]
    assert res.recommendation_withheld is None and res.neoadjuvant is None


def test_neoadjuvant_and_metastasis_not_applicable(outputs):
    neo = SurvivalResult.from_dict(outputs["neoadjuvant"]).neoadjuvant
    assert neo.regimen_a == "neoadj_haic_pd1_len_resection" and neo.regimen_b == "resection"
    assert neo.question and "neoadjuvant" in neo.question
    assert neo.to_dict() == outputs["neoadjuvant"]["neoadjuvant"]
    spread = SurvivalResult.from_dict(outputs["spread"])
    met = spread.metastasis
    assert met.not_applicable and not met.has_risk and met.risk is None
    assert met.to_dict() == {"not_applicable": met.not_applicable, "applies_to": "tace_pd1_len"}  # no null risk
    assert any("unknown_regimen" in n for n in spread.notes) and list(spread.curves("os")) == ["tace_pd1_len"]


def test_withheld_recommendation_is_written_last_and_read_back(outputs):
    from HCCTwinLib.pipeline import withhold_recommendation

    survival = copy.deepcopy(outputs["plain"])
    result = SimpleNamespace(survival=survival, notes=[], domain=SimpleNamespace(
        reliable=False, findings=[SimpleNamespace(severity="outside", message="not a CT")]))
    withhold_recommendation(result)
    assert "recommendation" not in result.survival
    assert list(result.survival)[-1] == "recommendation_withheld" and "not a CT" in result.survival[
        "recommendation_withheld"]
    assert [k for k in result.survival if k != "recommendation_withheld"] == [k for k in outputs["plain"]
                                                                             if k != "recommendation"]
    assert result.notes == ["Survival: recommendation withheld (domain guard: outside)."]
    res = SurvivalResult.from_dict(result.survival)
    assert res.recommendation is None and "not a CT" in res.recommendation_withheld
    assert res.to_dict() == result.survival


def _older(out: dict) -> dict:
    """``out`` as an older result.json wrote it: no notes, no interval method or median CI, no eligible_only /
    chosen_among, no metastasis points, an unknown key."""
    old = copy.deepcopy(out)
    del old["notes"]
    for curves in old["endpoints"].values():
        for curve in curves.values():
            del curve["interval_method"], curve["median_ci"]
    del old["recommendation"]["eligible_only"], old["recommendation"]["chosen_among"]
    del old["metastasis"]["points"], old["metastasis"]["interval_method"]
    old["endpoints"]["os"]["pd1_tki"]["site_extra"] = [1, 2]
    old["schema_note"] = "written by an older HCCTwin"
    return old


def test_an_older_result_without_optional_keys_reads_and_round_trips(outputs):
    old = _older(outputs["plain"])
    res = SurvivalResult.from_dict(old)
    assert res.notes == () and "notes" in res.absent
    curve = res.curve("os", "pd1_tki")
    assert curve.interval_method is None and curve.median_ci is None and "median_ci" in curve.absent
    assert curve.extra == {"site_extra": [1, 2]}
    assert res.recommendation.eligible_only is None and res.recommendation.chosen_among is None
    assert res.metastasis.points is None and res.metastasis.has_risk
    assert res.extra == {"schema_note": "written by an older HCCTwin"}
    assert res.to_dict() == old  # absent keys stay absent, unknown keys are kept
    assert fmt_median(curve) == fmt_median(old["endpoints"]["os"]["pd1_tki"])
    # a value set later on an absent field is written (dataclasses.replace)
    again = dataclasses.replace(res.recommendation, chosen_among=("pd1_tki",)).to_dict()
    assert again["chosen_among"] == ["pd1_tki"]
    assert SurvivalResult.from_dict({}).empty and SurvivalResult.from_dict(None).to_dict() == {}


def test_readers_on_an_older_result(outputs):
    """Report and scene table read an older result as before: no "not eligible" mark without chosen_among, no
    interval line without interval methods, no nomogram table without points."""
    from HCCTwinLib.report.content import build_sections
    from HCCTwinLib.scene.build import COL_MEDIAN_OS, COL_RECOMMENDATION, survival_table_columns

    old = _older(outputs["landmark"])
    summary = {"regimens": REGS, "survival": old, "notes": []}
    sections = {s.key: s for s in build_sections(summary, date="today")}
    texts = [b.text for b in sections["survival"].blocks]
    assert not any(t.startswith("Intervals:") for t in texts)
    assert not any(b.kind == "table" and b.header[0] == "Nomogram feature" for b in sections["metastasis"].blocks)
    rec_text = sections["recommendation"].blocks[0].text
    assert "(all regimens)" in rec_text  # eligible_only missing reads as False, as before
    table = survival_table_columns(SimpleNamespace(regimens=REGS, weeks=[8], survival=old, response={}))
    assert "not eligible (see warnings)" not in table[COL_RECOMMENDATION]
    assert table[COL_MEDIAN_OS] == [fmt_median(old["endpoints"]["os"][r]) for r in REGS]
    # the same result with chosen_among marks the regimen that did not compete
    new = survival_table_columns(SimpleNamespace(regimens=REGS, weeks=[8], survival=outputs["landmark"],
                                                 response={}))
    assert new[COL_RECOMMENDATION][REGS.index("haic_pd1_len")] == "not eligible (see warnings)"


def test_a_survival_value_that_is_not_an_object_is_a_clear_error():
    for bad in ([1, 2], "survival", 3.0):
        with pytest.raises(InputError, match="not an object"):
            SurvivalResult.from_dict(bad)
    with pytest.raises(InputError, match="survival curve pd1_tki"):
        Curve.from_dict([0.5], "pd1_tki")
    # a whole result.json whose survival part is damaged reads as no survival (what the report always did)
    assert SurvivalResult.from_summary({"survival": [1, 2]}).empty
    assert SurvivalResult.from_summary({}).empty


def test_damaged_parts_degrade_to_not_available(outputs, tmp_path):
    from HCCTwinLib.batch import _row
    from HCCTwinLib.report.content import build_sections
    from HCCTwinLib.report.plots import plot_survival
    from HCCTwinLib.scene.build import COL_MEDIAN_OS, COL_P_BEST, survival_series, survival_table_columns

    damaged = {"model": "m", "endpoints": {"os": {"pd1_tki": "not a curve", "tace_pd1_len":
                                                  outputs["plain"]["endpoints"]["os"]["tace_pd1_len"]},
                                           "pfs": [1, 2]},
               "recommendation": "pd1_tki", "rmst24_differences": {"a": 1}, "metastasis": 0.3, "landmark": [],
               "notes": "one note"}
    res = SurvivalResult.from_dict(damaged)
    assert list(res.curves("os")) == ["tace_pd1_len"] and res.curves("pfs") == {}
    assert res.recommendation is None and res.rmst24_differences == () and res.metastasis is None
    assert res.landmark is None and res.notes == ()
    # a landmark part whose entries are damaged: those entries are left out, the rest is read
    good = outputs["landmark"]["landmark"]["tace_pd1_len"]
    part = SurvivalResult.from_dict({"landmark": {"a": [1], "tace_pd1_len": {
        "timepoints": {**good["timepoints"], "w99": "x"}, "response_features": good["response_features"]}}})
    assert list(part.landmark) == ["tace_pd1_len"] and "w99" not in part.landmark["tace_pd1_len"].timepoints
    meta = Metastasis.from_dict({"risk": 0.2, "landmark": {"w08": 0.3}})
    assert meta.landmark == {}
    summary = {"regimens": ["tace_pd1_len", "pd1_tki"], "survival": damaged, "notes": []}
    sections = {s.key: s for s in build_sections(summary, date="today")}
    assert sections["benefit"].blocks[0].kind == "na" and sections["metastasis"].blocks[0].kind == "na"
    assert sections["recommendation"].blocks[0].kind == "na"
    survival_rows = next(b for b in sections["survival"].blocks if b.kind == "table").rows
    assert survival_rows[1][1] == "n/a" and survival_rows[0][1] != "n/a"  # pd1_tki: no curve; tace: its median
    assert plot_survival(summary, tmp_path / "os.png").stat().st_size > 1000
    scene_result = SimpleNamespace(regimens=["tace_pd1_len", "pd1_tki"], weeks=[8], survival=damaged, response={})
    table = survival_table_columns(scene_result)
    assert table[COL_MEDIAN_OS][1] == "n/a" and table[COL_P_BEST][0] != table[COL_P_BEST][0]  # NaN
    assert [s["regimen"] for s in survival_series(scene_result, ["tace_pd1_len", "pd1_tki"])] == ["tace_pd1_len"]
    row = _row({"survival": damaged})
    assert row["recommended_regimen"] == "" and row["probability_best"] is None
    assert set(k for k in row if k.startswith("os_median")) == {"os_median_months_tace_pd1_len"}


def test_batch_row_reads_the_typed_result(outputs):
    from HCCTwinLib.batch import _row

    out = outputs["landmark"]
    row = _row({"survival": out, "label_volumes_ml": {"liver": 1500.0}, "domain": {"verdict": "inside"}})
    rec = out["recommendation"]
    assert row["recommended_regimen"] == rec["regimen"]
    assert row["probability_best"] == rec["probability_best"][rec["regimen"]]
    assert row["recommendation_withheld"] is False
    for r in REGS:
        assert row[f"os_median_months_{r}"] == out["endpoints"]["os"][r]["median"]
        assert row[f"os_rmst24_months_{r}"] == out["endpoints"]["os"][r]["rmst24"]
