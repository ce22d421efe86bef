"""The Slicer module's Logic (HCCTwin.py) run headless: the GUI-only imports (qt, slicer.i18n,
slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule) are stubbed, ``slicer.mrmlScene`` / ``slicer.modules`` /
``slicer.app`` point at a HeadlessSlicer. This exercises the glue the Widget calls (show result, regimen selection
without a model run, endpoint switch, uncertainty overlay, report, scene bundle) with the real scene code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import slicer
from test_scene_results import THREE, make_result

from HCCTwinLib.scene import layout as L
from HCCTwinLib.scene import selftest
from HCCTwinLib.scene.nodes import NODE_ATTRIBUTE, plot_series_nodes, table_to_dict

MODULE_FILE = Path(__file__).resolve().parents[2] / "HCCTwin.py"


def _stub_modules() -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    class _Validator:
        def __init__(self, *args):
            self.args = args

    pnw.Choice, pnw.WithinRange = type("Choice", (_Validator,), {}), type("WithinRange", (_Validator,), {})
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.parameterPack = dataclasses.dataclass  # a pack is a dataclass with parameter-node storage
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(slm, name, type(name, (_Base,), {}))
    return {"qt": qt, "slicer.i18n": i18n, "slicer.parameterNodeWrapper": pnw, "slicer.ScriptedLoadableModule": slm}


@pytest.fixture(scope="module")
def app(headless_app):
    headless_app.slice_views(L.COMPARE_VIEWS, group=L.COMPARE_VIEW_GROUP)
    return headless_app


@pytest.fixture
def module(app, monkeypatch, tmp_path):
    for name, stub in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(slicer, "mrmlScene", app.scene, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: app.segmentations_logic),
        sequences=types.SimpleNamespace(logic=lambda: app.sequences_logic)), raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(layoutManager=lambda: None,
                                                             defaultScenePath=str(tmp_path)), raising=False)
    spec = importlib.util.spec_from_file_location("HCCTwinModuleUnderTest", MODULE_FILE)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # as an import would (dataclasses look it up)
    spec.loader.exec_module(mod)
    app.clear()
    return mod


@pytest.fixture
def fake_update_survival(monkeypatch):
    """update_survival without an installed engine: the synthetic curves restricted to the selection (and a record
    that it, not the models, was called)."""
    import HCCTwinLib.pipeline as pipeline

    calls = []

    def update(result, options=None, regimens=None):
        calls.append(list(regimens))
        result.survival = selftest.subset_survival(result._full_survival, regimens)

    def no_model(*args, **kwargs):
        raise AssertionError("a selection change must not run a model")

    monkeypatch.setattr(pipeline, "update_survival", update)
    monkeypatch.setattr(pipeline, "run_case", no_model)
    return calls


def _curve_names(scene, chart_id):
    chart = scene.GetNodeByID(chart_id)
    return [s.GetName() for s in plot_series_nodes(chart) if s.GetAttribute(NODE_ATTRIBUTE) == "plot-curve"]


def test_logic_shows_result_and_updates_selection_without_models(app, module, fake_update_survival):
    logic = module.HCCTwinLogic()
    result = make_result()
    result._full_survival = result.survival
    ids = logic.showResult(result, options=None, endpoint="os")
    assert logic.shownRegimens() == THREE and logic.shownEndpoint() == "os" and not logic.uncertaintyShown()
    assert len(_curve_names(app.scene, ids.charts["os"])) == 3
    n_nodes = app.scene.GetNumberOfNodes()

    missing = logic.updateSelection(["tace_pd1_len", "pd1_tki"])
    assert fake_update_survival == [["tace_pd1_len", "pd1_tki"]] and missing == []
    assert logic.shownRegimens() == ["tace_pd1_len", "pd1_tki"]
    assert _curve_names(app.scene, ids.charts["os"]) == ["TACE+PD-1+LEN", _curve_names_of(result, "pd1_tki")]
    assert table_to_dict(app.scene.GetNodeByID(logic.ids.survival_table))["Regimen ID"] == ["tace_pd1_len", "pd1_tki"]
    assert app.scene.GetNumberOfNodes() == n_nodes - 8  # one regimen's curve + band series and table, two charts
    selftest.check_no_duplicates(app.scene)
    selftest.check_views_valid(app.scene, logic.ids)

    # a regimen that was not in the run: survival and table follow, the Widget is told it has no volumes
    # (its eligibility is pipeline.update_survival's: tested in test_survival_engine, one rule for module and CLI)
    assert logic.updateSelection(["tace_pd1_len", "neoadj_haic_pd1_len_resection"]) == [
        "neoadj_haic_pd1_len_resection"]
    assert fake_update_survival[-1] == ["tace_pd1_len", "neoadj_haic_pd1_len_resection"]

    logic.showEndpoint("pfs")
    assert L.plot_view_node(app.scene, create=False).GetPlotChartNodeID() == ids.charts["pfs"]
    assert logic.shownEndpoint() == "pfs"
    assert logic.showUncertainty(True) and logic.uncertaintyShown()
    assert L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).GetForegroundVolumeID() is not None
    assert not logic.showUncertainty(False)
    assert L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).GetForegroundVolumeID() is None


def _curve_names_of(result, regimen):
    from HCCTwinLib.scene.build import regimen_label

    return regimen_label(regimen)


def test_logic_rerun_reuses_the_corrected_segmentation(app, module):
    logic = module.HCCTwinLogic()
    result = make_result()
    first = logic.showResult(result)
    seg = app.scene.GetNodeByID(first.segmentation)
    seg.SetName("corrected")
    n_nodes = app.scene.GetNumberOfNodes()
    second = logic.showResult(make_result())
    assert second.segmentation == first.segmentation
    assert app.scene.GetNodeByID(second.segmentation).GetName() == "corrected"
    assert app.scene.GetNumberOfNodes() == n_nodes
    # the segmentation the user picked for the run is the one shown
    picked = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "picked by the user")
    third = logic.showResult(make_result(), segmentationNode=picked)
    assert third.segmentation == picked.GetID()
    logic.forgetResult()
    with pytest.raises(RuntimeError, match="Apply"):
        logic.updateSelection(THREE)


def test_logic_report_and_bundle(app, module, tmp_path):
    logic = module.HCCTwinLogic()
    result = make_result(patient="Doe^Jane-4711")
    logic.showResult(result)
    # no Slicer GUI here: the layout cannot be captured, the report is still written (survival plot + tables)
    assert logic.captureLayout(tmp_path / "layout.png") is None
    plain = logic.writeReport(tmp_path / "plain", deidentify=False)
    assert Path(plain["html"]).is_file() and Path(plain["pdf"]).is_file() and Path(plain["survival_png"]).is_file()
    assert "Doe^Jane-4711" in Path(plain["html"]).read_text(encoding="utf-8")
    assert (tmp_path / "plain" / "result.json").is_file()
    anonymous = logic.writeReport(tmp_path / "anon", deidentify=True)
    html = Path(anonymous["html"]).read_text(encoding="utf-8")
    assert "Doe^Jane-4711" not in html and not (tmp_path / "anon" / "result.json").exists()
    bundle = logic.saveSceneBundle(tmp_path / "bundle" / "scene.mrb")
    assert bundle.is_file() and bundle.stat().st_size > 1000
    default = logic.defaultOutputDirectory()
    assert default.parent == tmp_path and default.name.startswith("HCCTwin-")


def test_twin_logic_uses_the_scene_it_is_given(app, monkeypatch, tmp_path, fake_update_survival):
    """HCCTwinLib.scene.logic.TwinLogic (the Logic's code, issue 26) never reaches for slicer globals: with
    slicer.mrmlScene and slicer.modules gone it shows a result, changes the selection and writes a report with the
    layout picture its injected capture function made."""
    import numpy as np
    from PIL import Image

    from HCCTwinLib.scene.logic import TwinLogic

    for name in ("mrmlScene", "modules", "app"):
        monkeypatch.delattr(slicer, name, raising=False)
    app.clear()
    captured = []

    def capture(path):
        captured.append(path)
        Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(path)
        return path

    logic = TwinLogic(app.scene, segmentations_logic=app.segmentations_logic, sequences_logic=app.sequences_logic,
                      capture_layout=capture)
    result = make_result(patient="Doe^John-0815")
    result._full_survival = result.survival
    ids = logic.showResult(result, endpoint="pfs")
    assert app.scene.GetNodeByID(ids.segmentation) is not None and logic.shownEndpoint() == "pfs"
    assert logic.updateSelection(["pd1_tki"]) == [] and logic.shownRegimens() == ["pd1_tki"]
    assert fake_update_survival == [["pd1_tki"]]
    report = logic.writeReport(tmp_path / "report")
    assert captured == [tmp_path / "report" / "layout.png"] and Path(report["html"]).is_file()
    anonymous = logic.writeReport(tmp_path / "anon", deidentify=True)  # no layout picture: it can show names
    assert len(captured) == 1 and "Doe^John-0815" not in Path(anonymous["html"]).read_text(encoding="utf-8")
    text = TwinLogic.scoresText({"albumin_g_l": 40, "bilirubin_umol_l": 15}, ["tace_pd1_len"])
    assert "ALBI" in text or "color:#c0392b" in text


def test_a_real_followup_of_two_phases_from_volume_nodes(app, module):
    """The follow-up study from the module's two follow-up selectors: both phases on the portal phase's grid (the
    arterial resampled onto it), the received regimen kept; one phase alone, or none, as before."""
    import numpy as np

    from HCCTwinLib.cases import Geometry
    from HCCTwinLib.errors import InputError
    from HCCTwinLib.scene.nodes import add_volume

    logic = module.HCCTwinLogic()
    portal_geom = Geometry(shape=(20, 128, 128), spacing=(2.5, 2.5, 3.0), origin=(-160.0, -160.0, 0.0))
    arterial_geom = Geometry(shape=(24, 132, 132), spacing=(2.5, 2.5, 3.0), origin=(-165.0, -165.0, -6.0))
    i = np.indices(portal_geom.shape)[2]
    portal = np.where(i < 8, -1000.0, 60.0 + 0.5 * i).astype(np.float32)  # air on the right, tissue
    ia = np.indices(arterial_geom.shape)[2] - 2  # the portal's column index at the same LPS position
    arterial = np.where(ia < 8, -1000.0, 100.0 + 0.5 * ia).astype(np.float32)  # +40 HU
    pnode = add_volume(app.scene, portal, portal_geom, "fu portal")
    anode = add_volume(app.scene, arterial, arterial_geom, "fu arterial")
    both = logic.followupFromNode(pnode, 8, None, regimen="tace_pd1_len", arterialNode=anode)
    assert set(both.phases) == {"portal", "arterial"} and both.regimen == "tace_pd1_len" and both.weeks == 8
    assert both.geometry.same_grid(portal_geom) and both.phases["arterial"].shape == portal.shape
    inner = (slice(2, -2), slice(2, -2), slice(12, -2))
    assert np.allclose(both.phases["arterial"][inner] - both.phases["portal"][inner], 40.0, atol=0.5)
    only = logic.followupFromNode(pnode, 5, None)
    assert set(only.phases) == {"portal"} and only.regimen is None and np.array_equal(only.phases["portal"], portal)
    assert set(logic.followupFromNode(None, 5, None, arterialNode=anode).phases) == {"arterial"}
    assert logic.followupFromNode(None, 5, None) is None
    far = add_volume(app.scene, arterial, Geometry(shape=arterial_geom.shape, spacing=arterial_geom.spacing,
                                                   origin=(900.0, 900.0, 900.0)), "another study")
    with pytest.raises(InputError, match="do not overlap"):
        logic.followupFromNode(pnode, 8, None, arterialNode=far)
