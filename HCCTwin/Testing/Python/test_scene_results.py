"""Results in the scene (headless slicer-core): survival curves per regimen with bands, the results-by-regimen
table, the uncertainty overlay and a regimen selection change that re-uses nodes and runs no model.

The TwinResult is built by hand (fake follow-ups + a survival dict in the engine's schema), so these tests need no
model files.
"""

from __future__ import annotations

import numpy as np
import pytest

from HCCTwinLib.cases import Case, FollowUp, Geometry
from HCCTwinLib.labels import LIVER, VIABLE_TUMOR
from HCCTwinLib.pipeline import TwinResult
from HCCTwinLib.regimens import load_catalogue
from HCCTwinLib.scene import build as B
from HCCTwinLib.scene import layout as L
from HCCTwinLib.scene import selftest
from HCCTwinLib.scene.nodes import NODE_ATTRIBUTE, hex_to_rgb, plot_series_nodes, table_to_dict

GEOMETRY = Geometry(shape=(10, 18, 20), spacing=(1.5, 1.5, 3.0), origin=(-15.0, 10.0, -12.0),
                    direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
THREE = ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]
CLINICAL = {"age_years": 58, "sex": "F", "ecog": 0, "albumin_g_l": 39.0, "bilirubin_umol_l": 14.0, "inr": 1.05,
            "ascites": "none", "encephalopathy": "none", "afp_ng_ml": 120.0, "n_tumors": 2, "max_diameter_mm": 61.0,
            "pvtt": 0, "extrahepatic_spread": 0, "resectable": 1}
WEEKS = [8, 16, 24]


def make_result(regimens=THREE, *, std=True, patient="RES01", survival=True) -> TwinResult:
    """A TwinResult as the pipeline returns it, with fake follow-ups and a known survival dict."""
    k, j, i = np.indices(GEOMETRY.shape)
    portal = (40 + 3 * i - 2 * j + k).astype(np.float32)
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[2:8, 3:15, 3:17] = LIVER
    labels[4:6, 7:11, 8:12] = VIABLE_TUMOR
    case = Case(patient, {"arterial": portal + 30, "portal": portal}, GEOMETRY, labels=labels,
                clinical=dict(CLINICAL))
    result = TwinResult(case=case, regimens=list(regimens), weeks=list(WEEKS),
                        scores={"bclc": "B", "albi_score": -2.61}, eligibility={r: [] for r in regimens},
                        label_volumes_ml={"liver": 100.0})
    rng = np.random.default_rng(4)
    for n, r in enumerate(regimens):
        result.followups[r] = {
            w: FollowUp(w, {"portal": portal - 10 * (n + 1) - w, "arterial": portal + 20 - w}, labels=labels,
                        std={"portal": rng.random(GEOMETRY.shape).astype(np.float32) * (n + 1) * w,
                             "arterial": np.ones(GEOMETRY.shape, np.float32)} if std else {}, regimen=r)
            for w in WEEKS}
        result.response[r] = {f"w{w:02d}": {"mrecist": ["PR", "SD", "PD"][(n + m) % 3], "recist": "SD",
                                            "viable_volume_ml": 5.0, "sum_viable_mm": 20.0}
                              for m, w in enumerate(WEEKS)}
    if survival:
        result.survival = selftest.synthetic_survival(list(regimens), seed=1)
        os_last = result.survival["endpoints"]["os"][regimens[-1]]
        os_last["median"], os_last["median_ci"] = None, [30.5, None]  # not reached, open upper bound
    return result


@pytest.fixture(scope="module")
def app(headless_app):
    headless_app.slice_views(L.COMPARE_VIEWS, group=L.COMPARE_VIEW_GROUP)
    headless_app.slice_views(L.REGIMEN_VIEWS, group=L.REGIMEN_VIEW_GROUP)
    return headless_app


def _show(app, result, **kw):
    app.clear()
    return B.show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                         sequences_logic=app.sequences_logic, layout_node=L.layout_node_of(app.scene), **kw)


def _curves(chart):
    return [s for s in plot_series_nodes(chart) if s.GetAttribute(NODE_ATTRIBUTE) == "plot-curve"]


def _hcctwin_nodes(scene) -> list:
    coll = scene.GetNodes()
    return [n for n in (coll.GetItemAsObject(i) for i in range(coll.GetNumberOfItems()))
            if n.GetAttribute(NODE_ATTRIBUTE) is not None]


def test_plot_series_per_regimen_with_band_and_endpoint_switch(app):
    result = make_result()
    ids = _show(app, result)
    catalogue = load_catalogue()
    for endpoint in ("os", "pfs"):
        chart = app.scene.GetNodeByID(ids.charts[endpoint])
        curves = _curves(chart)
        assert [c.GetName() for c in curves] == [catalogue[r].short_name for r in THREE]
        names = [s.GetName() for s in plot_series_nodes(chart)]
        assert names == [f"{catalogue[r].short_name}{suffix}" for r in THREE for suffix in ("", " lower", " upper")]
        for r, curve in zip(THREE, curves):
            np.testing.assert_allclose(curve.GetColor(), hex_to_rgb(catalogue[r].color))
            data = table_to_dict(curve.GetTableNode())
            truth = result.survival["endpoints"][endpoint][r]
            # post-step polyline: (t0, s0), (t1, s0), (t1, s1), ...
            np.testing.assert_allclose(data["x"][::2], truth["times"])
            np.testing.assert_allclose(data["y"][::2], truth["survival"])
            np.testing.assert_allclose(data["y"][1::2], truth["survival"][:-1])
            np.testing.assert_allclose(data["lower"][::2], truth["lower"])
            np.testing.assert_allclose(data["upper"][::2], truth["upper"])
    # the plot view shows OS; switching to PFS and back changes only what it shows
    view = L.plot_view_node(app.scene, create=False)
    assert view.GetPlotChartNodeID() == ids.charts["os"]
    n_nodes = app.scene.GetNumberOfNodes()
    assert B.show_endpoint(app.scene, ids, "pfs") == ids.charts["pfs"]
    assert view.GetPlotChartNodeID() == ids.charts["pfs"] and ids.endpoint == "pfs"
    assert app.scene.GetNumberOfNodes() == n_nodes
    with pytest.raises(ValueError, match="endpoint"):
        B.show_endpoint(app.scene, ids, "dfs")
    assert B.find_scene_nodes(app.scene, result).endpoint == "pfs"
    assert app.scene.GetNodeByID(ids.charts["pfs"]).GetTitle().startswith("Progression-free survival")


def test_results_table_rows_equal_survival_numbers(app):
    result = make_result()
    ids = _show(app, result)
    table = table_to_dict(app.scene.GetNodeByID(ids.survival_table))
    assert table[B.COL_REGIMEN_ID] == THREE
    assert table[B.COL_REGIMEN] == ["TACE+PD-1+LEN", "HAIC+PD-1+LEN", load_catalogue()["pd1_tki"].short_name]
    os_c, pfs_c = result.survival["endpoints"]["os"], result.survival["endpoints"]["pfs"]
    rec = result.survival["recommendation"]
    for n, r in enumerate(THREE):
        o, p = os_c[r], pfs_c[r]
        if o["median"] is None:
            assert table[B.COL_MEDIAN_OS][n] == "NR (30.5–NR)"
        else:
            assert table[B.COL_MEDIAN_OS][n] == (f"{o['median']:.1f} ({o['median_ci'][0]:.1f}–"
                                                 f"{o['median_ci'][1]:.1f})")
        assert table[B.COL_MEDIAN_PFS][n] == f"{p['median']:.1f} ({p['median_ci'][0]:.1f}–{p['median_ci'][1]:.1f})"
        assert table[B.COL_OS12][n] == (f"{100 * o['s12']:.0f}% ({100 * o['s12_ci'][0]:.0f}–"
                                        f"{100 * o['s12_ci'][1]:.0f}%)")
        assert table[B.COL_OS24][n] == (f"{100 * o['s24']:.0f}% ({100 * o['s24_ci'][0]:.0f}–"
                                        f"{100 * o['s24_ci'][1]:.0f}%)")
        assert table[B.COL_RMST24][n] == (f"{o['rmst24']:.1f} ({o['rmst24_ci'][0]:.1f}–"
                                          f"{o['rmst24_ci'][1]:.1f})")
        assert table[B.COL_P_BEST][n] == rec["probability_best"][r]
        for w in WEEKS:
            assert table[f"mRECIST w{w:02d}"][n] == result.response[r][f"w{w:02d}"]["mrecist"]
    assert table[B.COL_RECOMMENDATION] == ["recommended" if r == rec["regimen"] else "" for r in THREE]
    assert rec["regimen"] == "pd1_tki"  # the synthetic curves make the last regimen best
    # metastasis: the model is for TACE + PD-1 + lenvatinib only, and the table says so for the others
    column = "Metastasis risk 24 mo (95% CI)"
    assert table[column] == ["23% (14–34%)", "n/a (TACE+PD-1+LEN model only)", "n/a (TACE+PD-1+LEN model only)"]
    # with the risk updated from the TACE follow-up, the row adds the latest landmark and where its response came from
    result.survival["metastasis"]["landmark"] = {
        "w08": {"risk": 0.3, "lower": 0.2, "upper": 0.4, "source": "virtual"},
        "w16": {"risk": 0.11, "lower": 0.05, "upper": 0.19, "source": "virtual"}}
    cols = B.survival_table_columns(result)
    assert cols[column][0] == "23% (14–34%); w16 (virtual): 11% (5–19%)"
    # the table view of the layout shows it; the case table is still there
    assert L.table_view_node(app.scene, create=False).GetTableNodeID() == ids.survival_table
    assert "bclc" in table_to_dict(app.scene.GetNodeByID(ids.table))["item"]


def test_no_survival_model_gives_rows_without_numbers_and_empty_charts(app):
    result = make_result(survival=False)
    ids = _show(app, result)
    table = table_to_dict(app.scene.GetNodeByID(ids.survival_table))
    assert table[B.COL_REGIMEN_ID] == THREE
    assert set(table[B.COL_MEDIAN_OS]) == {"n/a"} and all(np.isnan(table[B.COL_P_BEST]))
    assert table["mRECIST w16"] == [result.response[r]["w16"]["mrecist"] for r in THREE]
    assert all(app.scene.GetNodeByID(c).GetNumberOfPlotSeriesNodes() == 0 for c in ids.charts.values())
    assert ids.views_assigned and ids.virtual_regimen == "tace_pd1_len"


def test_selection_update_three_then_two_reuses_nodes_and_runs_no_model(app, monkeypatch):
    import HCCTwinLib.pipeline as pipeline
    import HCCTwinLib.twin as twin

    result = make_result()
    full = result.survival
    ids = _show(app, result)
    n_three = app.scene.GetNumberOfNodes()
    names_three = sorted((n.GetClassName(), n.GetName()) for n in _hcctwin_nodes(app.scene))
    assert ids.virtual_regimen == "tace_pd1_len"  # the first chosen regimen is in the virtual view

    def no_model(*args, **kwargs):
        raise AssertionError("a selection change must not run a model")

    monkeypatch.setattr(pipeline, "run_case", no_model)
    monkeypatch.setattr(twin, "get_generator", no_model, raising=False)
    two = ["haic_pd1_len", "tace_pd1_len"]
    result.survival = selftest.subset_survival(full, two)  # what update_survival gives for two regimens
    same = B.update_selection(app.scene, result, two, ids)
    assert same is ids and ids.regimens_shown == two
    for endpoint in ("os", "pfs"):
        chart = app.scene.GetNodeByID(ids.charts[endpoint])
        assert [c.GetName() for c in _curves(chart)] == ["HAIC+PD-1+LEN", "TACE+PD-1+LEN"]
        assert chart.GetNumberOfPlotSeriesNodes() == 6  # 2 curves + their bands
    table = table_to_dict(app.scene.GetNodeByID(ids.survival_table))
    assert table[B.COL_REGIMEN_ID] == two
    assert table[B.COL_RECOMMENDATION].count("recommended") == 1
    # 2 charts x (3 series + 1 table) of the dropped regimen are gone; nothing else changed
    assert app.scene.GetNumberOfNodes() == n_three - 2 * 4
    selftest.check_no_duplicates(app.scene)
    selftest.check_views_valid(app.scene, ids)
    selftest.check_survival_charts(app.scene, result, ids)
    selftest.check_survival_table(app.scene, result, ids)
    # the virtual view now shows the first chosen regimen, the regimen views the pair
    assert ids.virtual_regimen == "haic_pd1_len"
    virtual = L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).GetBackgroundVolumeID()
    assert virtual == ids.virtual_proxies[ids.virtual_regimen]
    assert [L.slice_composite_node(app.scene, v).GetBackgroundVolumeID() for v in L.REGIMEN_VIEWS] == [
        ids.virtual_proxies[r] for r in two]
    # the dropped regimen's virtual follow-ups stay in the scene (re-selecting shows them again)
    assert app.scene.GetNodeByID(ids.virtual_sequences["pd1_tki"]) is not None
    # back to three, with ids found again by name: same nodes as the first time, no duplicates
    result.survival = full
    again = B.update_selection(app.scene, result, THREE)
    assert again.charts == ids.charts and again.survival_table == ids.survival_table
    assert again.virtual_proxies == ids.virtual_proxies
    assert app.scene.GetNumberOfNodes() == n_three
    assert sorted((n.GetClassName(), n.GetName()) for n in _hcctwin_nodes(app.scene)) == names_three
    assert len(_curves(app.scene.GetNodeByID(ids.charts["os"]))) == 3


def test_selection_of_a_regimen_without_followups_keeps_valid_views(app):
    result = make_result()
    ids = _show(app, result)
    result.survival = selftest.synthetic_survival(["resection"], seed=2)
    B.update_selection(app.scene, result, ["resection"], ids)
    assert ids.virtual_regimen is None
    assert L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).GetBackgroundVolumeID() is None
    assert len(_curves(app.scene.GetNodeByID(ids.charts["os"]))) == 1
    selftest.check_views_valid(app.scene, ids)


def test_uncertainty_overlay_present_browsable_and_off_by_default(app):
    result = make_result()
    ids = _show(app, result)
    assert set(ids.uncertainty_proxies) == set(THREE)
    comp = L.slice_composite_node(app.scene, L.VIRTUAL_VIEW)
    assert comp.GetForegroundVolumeID() is None and not ids.uncertainty_visible
    selftest.check_uncertainty(app.scene, result, ids)
    regimen = ids.virtual_regimen
    assert B.set_uncertainty_visible(app.scene, ids, True)
    std_proxy = app.scene.GetNodeByID(ids.uncertainty_proxies[regimen])
    assert comp.GetForegroundVolumeID() == std_proxy.GetID()
    assert comp.GetForegroundOpacity() == pytest.approx(B.UNCERTAINTY_OPACITY)
    assert std_proxy.GetDisplayNode().GetColorNodeID() in B.UNCERTAINTY_COLOR_NODE_IDS
    assert std_proxy.GetDisplayNode().GetApplyThreshold()  # near-zero SD is transparent, not a dark veil
    # browsing the follow-up time moves the overlay with it (one browser, synchronized sequences)
    browser = app.scene.GetNodeByID(ids.virtual_browsers[regimen])
    from HCCTwinLib.scene.nodes import array_and_geometry_from_volume

    for n, w in enumerate(WEEKS):
        browser.SetSelectedItemNumber(n)
        np.testing.assert_allclose(array_and_geometry_from_volume(std_proxy)[0],
                                   result.followups[regimen][w].std["portal"])
        np.testing.assert_allclose(array_and_geometry_from_volume(app.scene.GetNodeByID(
            ids.virtual_proxies[regimen]))[0], result.followups[regimen][w].phases["portal"])
    # regimen views get the overlay of their own regimen; a selection change keeps the overlay on
    B.update_selection(app.scene, result, ["haic_pd1_len", "tace_pd1_len"], ids)
    assert comp.GetForegroundVolumeID() == ids.uncertainty_proxies[ids.virtual_regimen]
    assert L.slice_composite_node(app.scene, L.REGIMEN_A_VIEW).GetForegroundVolumeID() == ids.uncertainty_proxies[
        "haic_pd1_len"]
    assert not B.set_uncertainty_visible(app.scene, ids, False)
    assert comp.GetForegroundVolumeID() is None
    # asked for at once
    ids = _show(app, result, show_uncertainty=True)
    assert comp.GetForegroundVolumeID() == ids.uncertainty_proxies[ids.virtual_regimen]


def test_no_std_means_no_overlay(app):
    result = make_result(std=False)
    ids = _show(app, result)
    assert ids.uncertainty_proxies == {} and ids.uncertainty_sequences == {}
    assert not B.set_uncertainty_visible(app.scene, ids, True)
    assert L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).GetForegroundVolumeID() is None


def test_rerun_reuses_all_nodes_and_the_edited_segmentation(app):
    result = make_result()
    first = _show(app, result)
    n_nodes = app.scene.GetNumberOfNodes()
    seg = app.scene.GetNodeByID(first.segmentation)
    seg.SetName("corrected by the radiologist")
    second = B.show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                           sequences_logic=app.sequences_logic, layout_node=L.layout_node_of(app.scene),
                           segmentation_node=seg)
    assert app.scene.GetNumberOfNodes() == n_nodes
    assert second.segmentation == first.segmentation and second.charts == first.charts
    assert second.virtual_sequences == first.virtual_sequences
    assert second.uncertainty_sequences == first.uncertainty_sequences
    assert second.survival_table == first.survival_table and second.table == first.table
    selftest.check_no_duplicates(app.scene)
    layout_node = L.layout_node_of(app.scene)
    assert layout_node.GetViewArrangement() == L.HCCTWIN_PLOT_LAYOUT_ID


def test_result_checks_pass_and_can_fail(app):
    result = make_result()
    ids = _show(app, result)
    failures = {}
    for name, check in selftest.result_checks(app.scene, result, ids).items():
        try:
            check()
        except AssertionError as exc:
            failures[name] = str(exc)
    assert failures == {}
    # a wrong value in the table is caught
    table = app.scene.GetNodeByID(ids.survival_table).GetTable()
    table.GetColumnByName(B.COL_RMST24).SetValue(0, "99.9 (1.0-2.0)")
    with pytest.raises(AssertionError, match="RMST"):
        selftest.check_survival_table(app.scene, result, ids)
    # a curve left behind by a regimen no longer chosen is caught
    ids.regimens_shown = ids.regimens_shown[:2]
    with pytest.raises(AssertionError, match="curves"):
        selftest.check_survival_charts(app.scene, result, ids)
