"""Scene bundle (.mrb): a scene made by show_result is saved and opens again with the same nodes and voxel data."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from HCCTwinLib.cases import Case, FollowUp, Geometry
from HCCTwinLib.pipeline import TwinResult
from HCCTwinLib.scene.build import show_result
from HCCTwinLib.scene.bundle import BundleError, load_scene_bundle, save_scene_bundle
from HCCTwinLib.scene.nodes import array_and_geometry_from_volume

from conftest import make_phantom

REGIMENS = ["tace_pd1_len", "pd1_tki"]
WEEKS = [8, 16, 24]


def _nodes(scene, class_name):
    coll = scene.GetNodesByClass(class_name)
    return {coll.GetItemAsObject(i).GetName(): coll.GetItemAsObject(i) for i in range(coll.GetNumberOfItems())}


def _segments(seg_node):
    seg = seg_node.GetSegmentation()
    return sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments()))


@pytest.fixture(scope="module")
def app(headless_app):
    return headless_app


@pytest.fixture
def shown(app):
    app.clear()
    hu, labels = make_phantom((16, 32, 36))
    geom = Geometry(shape=hu.shape, spacing=(0.9, 0.9, 3.0), origin=(10.0, -20.0, 30.0),
                    direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    case = Case("PH-BUNDLE-7", {"arterial": hu + 20, "portal": hu}, geom, labels=labels)
    result = TwinResult(case=case, regimens=list(REGIMENS), weeks=list(WEEKS))
    for k, regimen in enumerate(REGIMENS):
        result.followups[regimen] = {w: FollowUp(w, {"portal": hu - (k + 1) * w}, regimen=regimen) for w in WEEKS}
    ids = show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                      sequences_logic=app.sequences_logic)
    return app, case, ids


def test_bundle_round_trip_keeps_nodes_and_voxels(shown, tmp_path):
    app, case, ids = shown
    scene = app.scene
    volumes = {n: v for n, v in _nodes(scene, "vtkMRMLScalarVolumeNode").items()}
    seg_name = scene.GetNodeByID(ids.segmentation).GetName()
    segments = _segments(scene.GetNodeByID(ids.segmentation))
    sequences = _nodes(scene, "vtkMRMLSequenceNode")
    n_nodes = scene.GetNumberOfNodes()

    path = save_scene_bundle(scene, tmp_path / "out" / "scene.mrb")
    assert path.is_file() and path.suffix == ".mrb"
    names = zipfile.ZipFile(path).namelist()
    assert "scene/scene.mrml" in names  # the layout 3D Slicer's ReadFromMRB expects
    assert any(n.endswith(".seg.nrrd") for n in names) and sum(n.endswith(".seq.nrrd") for n in names) == 2
    # saving must not remove or rename anything in the user's scene (it may add storage nodes, as Slicer does)
    assert scene.GetNumberOfNodes() >= n_nodes
    assert scene.GetNodeByID(ids.pre["portal"]).GetName() == f"HCCTwin {case.patient_id} pre portal"

    loaded = load_scene_bundle(path)
    assert loaded is not scene
    back_volumes = _nodes(loaded, "vtkMRMLScalarVolumeNode")
    assert set(back_volumes) == set(volumes)
    for phase in ("arterial", "portal"):
        name = f"HCCTwin {case.patient_id} pre {phase}"
        array, geom = array_and_geometry_from_volume(back_volumes[name])
        np.testing.assert_allclose(array, case.phases[phase], rtol=0, atol=0.5 + 1e-3)  # CT in the scene: int16 HU
        assert geom.same_grid(case.geometry)

    back_segs = _nodes(loaded, "vtkMRMLSegmentationNode")
    assert list(back_segs) == [seg_name]
    assert _segments(back_segs[seg_name]) == segments and "Liver parenchyma" in segments

    back_sequences = _nodes(loaded, "vtkMRMLSequenceNode")
    assert set(back_sequences) == set(sequences) and len(back_sequences) == len(REGIMENS)
    for k, regimen in enumerate(REGIMENS):
        seq = back_sequences[f"HCCTwin {case.patient_id} virtual {regimen}"]
        assert [seq.GetNthIndexValue(i) for i in range(seq.GetNumberOfDataNodes())] == [str(w) for w in WEEKS]
        last, _ = array_and_geometry_from_volume(seq.GetNthDataNode(2))
        np.testing.assert_allclose(last, case.phases["portal"] - (k + 1) * WEEKS[2], rtol=0, atol=0.5 + 1e-3)
    browsers = _nodes(loaded, "vtkMRMLSequenceBrowserNode")
    assert len(browsers) == len(REGIMENS)
    assert {b.GetMasterSequenceNode().GetName() for b in browsers.values()} == set(sequences)
    assert len(_nodes(loaded, "vtkMRMLTableNode")) == 1


def test_slicer_own_reader_opens_the_bundle(shown, tmp_path):
    """vtkMRMLScene.ReadFromMRB is what 3D Slicer runs on File > Open; it must accept the zip we write."""
    app, case, _ = shown
    path = save_scene_bundle(app.scene, tmp_path / "demo.mrb")
    app.clear()
    assert app.scene.ReadFromMRB(str(path))
    volumes = _nodes(app.scene, "vtkMRMLScalarVolumeNode")
    array, _ = array_and_geometry_from_volume(volumes[f"HCCTwin {case.patient_id} pre portal"])
    np.testing.assert_allclose(array, case.phases["portal"], rtol=0, atol=0.5 + 1e-3)
    assert len(_nodes(app.scene, "vtkMRMLSequenceNode")) == len(REGIMENS)


def test_bundle_errors_are_clear(app, tmp_path):
    with pytest.raises(ValueError, match="must end with .mrb"):
        save_scene_bundle(app.scene, tmp_path / "scene.zip")
    bad = tmp_path / "bad.mrb"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a Slicer scene bundle"):
        load_scene_bundle(bad)
    empty = tmp_path / "empty.mrb"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x/readme.txt", "no scene")
    with pytest.raises(BundleError, match="no .mrml"):
        load_scene_bundle(empty)
    with pytest.raises(FileNotFoundError):
        load_scene_bundle(tmp_path / "missing.mrb")
