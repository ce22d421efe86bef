"""Pipeline -> TwinResult -> scene (headless slicer-core): the same checks the Slicer self-test runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from HCCTwinLib.cases import Case, FollowUp, Geometry
from HCCTwinLib.pipeline import PipelineOptions, run_case
from HCCTwinLib.scene import layout as L
from HCCTwinLib.scene import selftest
from HCCTwinLib.scene.build import show_result
from HCCTwinLib.scene.nodes import array_and_geometry_from_volume

from conftest import make_phantom

CLINICAL = {"age_years": 61, "sex": "M", "ecog": 1, "albumin_g_l": 36.0, "bilirubin_umol_l": 21.0, "inr": 1.2,
            "ascites": "none", "encephalopathy": "none", "afp_ng_ml": 650.0, "n_tumors": 2, "max_diameter_mm": 74.0,
            "pvtt": 1, "extrahepatic_spread": 0, "resectable": 0}


def phantom_case(flip=False):
    hu, labels = make_phantom((20, 40, 44))
    direction = (-1, 0, 0, 0, -1, 0, 0, 0, 1) if flip else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    geom = Geometry(shape=hu.shape, spacing=(0.9, 0.9, 3.0), origin=(10.0, -20.0, 30.0), direction=direction)
    case = Case("PH01", {"arterial": hu + 20, "portal": hu}, geom, labels=labels, clinical=dict(CLINICAL))
    shrunk = labels.copy()
    shrunk[(labels == 2) & (np.random.default_rng(0).random(labels.shape) < 0.5)] = 3
    follow = FollowUp(weeks=8, phases={"arterial": hu + 10, "portal": hu - 5}, labels=shrunk, kind="observed",
                      regimen="tace_pd1_len")
    return case, follow


@pytest.fixture(scope="module")
def app(headless_app):
    headless_app.slice_views(L.COMPARE_VIEWS)
    return headless_app


def test_run_case_result_is_complete_data(tmp_path):
    case, follow = phantom_case()
    result = run_case(case, real_followup=follow)
    assert result.scores["bclc"] == "C"  # PVTT -> BCLC C
    assert result.scores["child_pugh_class"] == "A"
    assert set(result.eligibility) == {"tace_pd1_len", "haic_pd1_len", "pd1_tki"}
    assert result.label_volumes_ml["viable_tumor"] > 0
    summary = json.loads(result.write_json(tmp_path / "r.json").read_text())
    assert summary["patient_id"] == "PH01" and "not for clinical use" in summary["disclaimer"]
    assert summary["real_followup"]["label_volumes_ml"]["necrosis"] > 0
    # honest about what does not exist: every step either produced its part or left a note saying why not
    assert summary["virtual_followups"] or any(n.startswith("Generator:") for n in summary["notes"])
    assert summary["survival"] or any(n.startswith("Survival:") for n in summary["notes"])
    assert summary["response"]["observed"]["w08"]["mrecist"] in {"CR", "PR", "SD", "PD", "NE"}
    assert "sampled" not in summary["response"]["observed"]["w08"]  # a real scan has no sampled responses
    # each virtual reading comes with the categories of its sampled responses (shares of the samples, summing to 1)
    virtual = {(r, w): v for r, by_week in summary["response"].items() if r != "observed" for w, v in by_week.items()}
    assert virtual and all(v["sampled"]["samples"] == 4 for v in virtual.values())
    assert all(abs(sum(v["sampled"][c].values()) - 1.0) < 0.01 for v in virtual.values() for c in ("mrecist", "recist"))


def test_run_case_rejects_unknown_regimen_and_off_grid_followup():
    case, follow = phantom_case()
    with pytest.raises(ValueError, match="unknown regimen"):
        run_case(case, regimens=["chemo_x"])
    follow.phases["portal"] = follow.phases["portal"][:-1]
    with pytest.raises(ValueError, match="register it"):
        run_case(case, real_followup=follow)


@pytest.mark.parametrize("flip", [False, True])
def test_selftest_checks_pass_headless(app, flip):
    app.clear()
    case, follow = phantom_case(flip)
    layout_node = L.layout_node_of(app.scene)
    failures = selftest.run_all(app.scene, app.segmentations_logic, layout_node=layout_node,
                                sequences_logic=app.sequences_logic, case=case, real_followup=follow)
    assert failures == {}


def test_selftest_detects_a_broken_scene(app, monkeypatch):
    """The checks can fail: corrupt the geometry that show_result writes and the volume check must report it."""
    import HCCTwinLib.scene.build as build

    original = build.add_volume

    def shifted(scene, array, geometry, name, **kw):
        g = Geometry(geometry.shape, geometry.spacing, tuple(o + 5 for o in geometry.origin), geometry.direction)
        return original(scene, array, g, name, **kw)

    monkeypatch.setattr(build, "add_volume", shifted)
    app.clear()
    case, follow = phantom_case()
    failures = selftest.run_all(app.scene, app.segmentations_logic, case=case, real_followup=follow)
    assert "volumes" in failures and "geometry changed" in failures["volumes"]


def test_virtual_followups_become_browsable_sequences(app):
    app.clear()
    case, follow = phantom_case()
    result = run_case(case, real_followup=follow)
    result.followups = {}  # two hand-made trajectories instead of the generator's
    for k, regimen in enumerate(["tace_pd1_len", "haic_pd1_len"]):
        result.followups[regimen] = {w: FollowUp(w, {"portal": case.phases["portal"] - (k + 1) * w}, regimen=regimen)
                                     for w in (8, 16, 24)}
    ids = show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                      sequences_logic=app.sequences_logic)
    assert set(ids.virtual_sequences) == {"tace_pd1_len", "haic_pd1_len"}
    browser = app.scene.GetNodeByID(ids.virtual_browsers["haic_pd1_len"])
    seq = app.scene.GetNodeByID(ids.virtual_sequences["haic_pd1_len"])
    browser.SetSelectedItemNumber(2)
    array, geom = array_and_geometry_from_volume(browser.GetProxyNode(seq))
    np.testing.assert_allclose(array, case.phases["portal"] - 2 * 24, rtol=0, atol=0.5 + 1e-3)  # int16 HU
    assert array.dtype == np.int16 and geom.same_grid(case.geometry)
    assert L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).GetBackgroundVolumeID() == ids.virtual_proxies[
        "tace_pd1_len"]


def test_rerun_reuses_nodes_and_keeps_user_segmentation(app):
    app.clear()
    case, follow = phantom_case()
    result = run_case(case, real_followup=follow)
    first = show_result(app.scene, result, segmentations_logic=app.segmentations_logic)
    n_nodes = app.scene.GetNumberOfNodes()
    user_seg = app.scene.GetNodeByID(first.segmentation)
    user_seg.SetName("corrected by the radiologist")
    second = show_result(app.scene, result, segmentations_logic=app.segmentations_logic, segmentation_node=user_seg)
    assert second.pre == first.pre and second.segmentation == first.segmentation
    assert app.scene.GetNumberOfNodes() <= n_nodes + 1  # only a new results table version, no duplicate volumes


@pytest.mark.parametrize("stop_at", ["Segmentation", "Virtual follow-ups", "Response reading and survival"])
def test_cancel_mid_run_leaves_the_scene_as_it_was(app, stop_at):
    """The module runs the pipeline on a worker thread and touches the scene only after it finished: a cancel at any
    step raises CancelledError and leaves every node of the previous result as it was, with nothing half-made."""
    from HCCTwinLib.errors import CancelledError

    app.clear()
    case, follow = phantom_case()
    first = run_case(case, real_followup=follow)
    show_result(app.scene, first, segmentations_logic=app.segmentations_logic, sequences_logic=app.sequences_logic)

    def snapshot():
        nodes = [app.scene.GetNthNode(i) for i in range(app.scene.GetNumberOfNodes())]
        return sorted((n.GetID(), n.GetName(), n.GetMTime()) for n in nodes)

    before = snapshot()
    seen = []

    def progress(fraction, message):
        seen.append(message)
        return not message.startswith(stop_at)

    case2, follow2 = phantom_case()
    with pytest.raises(CancelledError, match="Cancelled by the user"):
        run_case(case2, real_followup=follow2, progress=progress)
    assert any(m.startswith(stop_at) for m in seen)
    assert snapshot() == before


def test_real_followup_on_its_own_grid_is_registered_first():
    """A real follow-up acquired with the patient shifted: run_case registers it (rigid + affine) onto the
    pre-treatment grid before it is shown or read; the result lines up with the pre-treatment anatomy."""
    from HCCTwinLib.cases import ObservedScan

    case, follow = phantom_case()
    g = case.geometry
    shift = np.array([2.7, -1.8, 3.0])  # mm: the same anatomy seen with the table moved
    moved = Geometry(shape=g.shape, spacing=g.spacing, origin=tuple(np.array(g.origin) + shift), direction=g.direction)
    scan = ObservedScan(weeks=8, phases={"portal": case.phases["portal"].copy()}, geometry=moved,
                        regimen="tace_pd1_len", deformable=False)
    result = run_case(case, ["tace_pd1_len"], [8], real_followup=scan)
    fu = result.real_followup
    assert fu.phases["portal"].shape == g.shape and fu.kind == "observed" and fu.weeks == 8
    # (this phantom's liver is far below an adult's: the guard calls the mask wrong, the whole body drives it, and the
    # centring alone finds the table shift, so rigid and affine are reverted: the provenance says so)
    assert result.provenance["real_followup"].startswith("registered to the pre-treatment scan (")
    assert "reverted" in result.provenance["real_followup"] or "rigid" in result.provenance["real_followup"]
    assert result.timings["registration"] > 0
    liver = case.labels > 0
    err_registered = np.abs(fu.phases["portal"] - case.phases["portal"])[liver].mean()
    # without registration the follow-up would be displaced by the shift
    from HCCTwinLib.io import resample_to

    naive = resample_to(case.phases["portal"], moved, g)
    err_naive = np.abs(naive - case.phases["portal"])[liver].mean()
    assert err_registered < 0.5 * err_naive, (err_registered, err_naive)


def test_run_case_single_phase_and_the_domain_guard(tmp_path):
    """A portal-only study runs end to end (the generator's arterial input is the portal phase, said in a note),
    and the guard's verdict is in result.json: this phantom's 'liver' is a few mL, so the verdict is outside and no
    recommendation is given from it."""
    case, _ = phantom_case()
    case.phases = {"portal": case.phases["portal"]}
    result = run_case(case, options=PipelineOptions(samples=1))
    summary = json.loads(result.write_json(tmp_path / "r.json").read_text())
    assert summary["phases"] == ["portal"]
    assert summary["domain"]["verdict"] == "outside"
    assert any("liver" in r for r in summary["domain"]["reasons"])
    assert any(n.startswith("Domain guard: Outside") for n in summary["notes"])
    assert "recommendation" not in summary["survival"]
    if summary["survival"]:
        assert "unreliable" in summary["survival"]["recommendation_withheld"]
    if summary["virtual_followups"]:
        assert any("portal used as arterial" in n for n in summary["notes"])


def test_run_case_leaves_the_callers_case_as_it_was():
    """The labels the segmentation model draws go to result.case; the Case the caller passed keeps no labels
    (issue 26: run_case used to write them into it)."""
    case, _ = phantom_case()
    case.labels = None
    result = run_case(case, ["tace_pd1_len"], [8], options=PipelineOptions(samples=1, segmentation="model"))
    assert case.labels is None
    assert result.case is not case and result.case.patient_id == case.patient_id
    assert result.case.phases["portal"] is case.phases["portal"]  # no copy of the images
    if "segmentation" in result.provenance:  # a model is installed (the shipped one)
        assert result.case.labels is not None and result.case.labels.shape == case.geometry.shape
