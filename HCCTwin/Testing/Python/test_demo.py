"""The demo end to end (small grid) and the Slicer self-test on its default simulated case, headless."""

from __future__ import annotations

import json

import numpy as np
import pytest

from HCCTwinLib.demo import run_demo


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, small=True)


def test_demo_writes_case_result_and_pictures(demo_out):
    out, summary = demo_out
    for rel in ("case/pre/arterial.nii.gz", "case/pre/portal.nii.gz", "case/pre/labels.nii.gz",
                "case/followup/w08/portal.nii.gz", "result.json", "layout.png", "views/HCCTwinPre.png",
                "views/HCCTwinReal.png", "demo_summary.json", "report.html", "report.pdf", "survival.png",
                "scene.mrb"):
        assert (out / rel).is_file(), rel
    result = json.loads((out / "result.json").read_text())
    assert result["patient_id"] == summary["patient_id"]
    assert result["scores"]["bclc"] in {"0", "A", "B", "C", "D"}
    assert result["label_volumes_ml"]["viable_tumor"] > 0
    assert result["real_followup"]["weeks"] == 8
    assert "not for clinical use" in result["disclaimer"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert summary["patient_id"] in html and "data:image/png;base64," in html
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")


def test_demo_scene_bundle_loads_back(demo_out):
    from HCCTwinLib.scene.bundle import load_scene_bundle

    out, summary = demo_out
    scene = load_scene_bundle(out / "scene.mrb")
    names = [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())]
    assert any(n and n.endswith("pre portal") for n in names)
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


def test_demo_pictures_are_not_blank(demo_out):
    from vtk import vtkPNGReader
    from vtk.util.numpy_support import vtk_to_numpy

    out, _ = demo_out
    reader = vtkPNGReader()
    reader.SetFileName(str(out / "views" / "HCCTwinPre.png"))
    reader.Update()
    pixels = vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars()).astype(float)
    assert pixels.std() > 20  # anatomy, not a flat image
    assert (pixels[:, 0] > pixels[:, 1] + 40).mean() > 0.005  # the red tumour / liver overlay is drawn


def test_demo_is_deterministic(tmp_path, demo_out):
    from HCCTwinLib.io import read_image

    out, _ = demo_out
    run_demo(tmp_path, small=True, render=False)
    a, _ = read_image(out / "case/pre/arterial.nii.gz")
    b, _ = read_image(tmp_path / "case/pre/arterial.nii.gz")
    assert np.array_equal(a, b)


def test_slicer_selftest_on_the_default_simulated_case():
    from HCCTwinLib.scene import layout as L
    from HCCTwinLib.scene import selftest
    from HCCTwinLib.scene.headless import HeadlessSlicer

    app = HeadlessSlicer()
    try:
        app.slice_views(L.COMPARE_VIEWS)
        failures = selftest.run_all(app.scene, app.segmentations_logic, layout_node=L.layout_node_of(app.scene),
                                    sequences_logic=app.sequences_logic)
    finally:
        app.close()
    assert failures == {}
