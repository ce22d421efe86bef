"""Scene bridge tests on a headless Slicer core (slicer-core + trame-slicer): nodes, segmentations, sequences,
tables, plots, layouts and linked slice views."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer  # slicer-core (pip); the scene tests need it and are not skipped without it

from HCCTwinLib.cases import Geometry
from HCCTwinLib.labels import LABEL_BY_VALUE, LIVER, NECROSIS, PVTT, VIABLE_TUMOR
from HCCTwinLib.scene import layout as L
from HCCTwinLib.scene import nodes as N

FLIPPED = Geometry(shape=(10, 12, 14), spacing=(0.7, 0.9, 2.5), origin=(12.5, -20.0, 31.0),
                   direction=(-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
PLAIN = Geometry(shape=(16, 20, 24), spacing=(0.8, 0.8, 2.0), origin=(-10.0, 5.0, -40.0))


@pytest.fixture(scope="module")
def app(headless_app):
    return headless_app


def _matrix(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _phantom_labels(geometry: Geometry, with_necrosis: bool = False) -> np.ndarray:
    k, j, i = np.indices(geometry.shape)
    ck, cj, ci = (s / 2 for s in geometry.shape)
    labels = np.zeros(geometry.shape, np.uint8)
    labels[((k - ck) / 4) ** 2 + ((j - cj) / 7) ** 2 + ((i - ci) / 8) ** 2 < 1] = LIVER
    labels[((k - ck) / 2) ** 2 + ((j - cj) / 3) ** 2 + ((i - ci - 2) / 3) ** 2 < 1] = VIABLE_TUMOR
    if with_necrosis:
        labels[int(ck), int(cj), int(ci) + 2] = NECROSIS
    labels[1, 1, 1] = PVTT  # a one-voxel segment must survive the round trip
    return labels


@pytest.mark.parametrize("geometry", [PLAIN, FLIPPED], ids=["plain", "flipped-anisotropic"])
def test_volume_geometry_and_round_trip(app, geometry):
    rng = np.random.default_rng(1)
    array = rng.normal(40, 30, size=geometry.shape).astype(np.float32)
    node = N.add_volume(app.scene, array, geometry, f"ct {geometry.shape}")
    np.testing.assert_allclose(_matrix(node), geometry.ijk_to_ras(), atol=1e-9)
    np.testing.assert_allclose(node.GetSpacing(), geometry.spacing, atol=1e-9)
    # LPS origin (12.5, -20, 31) is RAS (-12.5, 20, 31)
    np.testing.assert_allclose(node.GetOrigin(), np.array(geometry.origin) * [-1, -1, 1], atol=1e-9)
    back, back_geometry = N.array_and_geometry_from_volume(node)
    np.testing.assert_array_equal(back, array)
    assert back_geometry.shape == geometry.shape
    np.testing.assert_allclose(back_geometry.direction, geometry.direction, atol=1e-9)
    np.testing.assert_allclose(back_geometry.spacing, geometry.spacing, atol=1e-9)
    np.testing.assert_allclose(back_geometry.origin, geometry.origin, atol=1e-9)
    display = node.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (350.0, 50.0)
    assert not display.GetAutoWindowLevel()


def test_volume_reuse_updates_in_place_and_window_level(app):
    g = PLAIN
    first = N.add_volume(app.scene, np.zeros(g.shape, np.float32), g, "reused", window_level=(1500, 300))
    second = N.add_volume(app.scene, np.ones(g.shape, np.float32), g, "reused", window_level=(400, 40))
    assert first is second or first.GetID() == second.GetID()
    assert app.scene.GetNodesByClassByName("vtkMRMLScalarVolumeNode", "reused").GetNumberOfItems() == 1
    assert float(np.asarray(slicer.util.arrayFromVolume(second)).mean()) == 1.0
    assert (second.GetDisplayNode().GetWindow(), second.GetDisplayNode().GetLevel()) == (400.0, 40.0)
    third = N.add_volume(app.scene, np.zeros(g.shape, np.float32), g, "reused", reuse=False)
    assert third.GetID() != second.GetID()
    with pytest.raises(ValueError, match="geometry"):
        N.add_volume(app.scene, np.zeros((3, 4, 5)), g, "wrong")


def test_labelmap_volume(app):
    labels = _phantom_labels(FLIPPED)
    node = N.add_volume(app.scene, labels, FLIPPED, "labels", labelmap=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    color = node.GetDisplayNode().GetColorNode()
    assert color.GetName() == N.LABEL_COLOR_NODE_NAME
    assert color.GetColorName(VIABLE_TUMOR) == "viable_tumor"
    rgba = [0.0] * 4
    color.GetColor(PVTT, rgba)
    np.testing.assert_allclose(rgba[:3], LABEL_BY_VALUE[PVTT].color_rgb, atol=1 / 255)  # stored as 8-bit
    np.testing.assert_array_equal(N.array_and_geometry_from_volume(node)[0], labels)


@pytest.mark.parametrize("geometry,necrosis", [(PLAIN, True), (FLIPPED, False)], ids=["plain", "flipped"])
def test_segmentation_round_trip(app, geometry, necrosis):
    labels = _phantom_labels(geometry, with_necrosis=necrosis)
    present = sorted(int(v) for v in np.unique(labels) if v)
    n_before = app.scene.GetNumberOfNodes()
    reference = N.add_volume(app.scene, labels.astype(np.float32), geometry, f"ref {necrosis}")
    seg = N.add_segmentation(app.scene, app.segmentations_logic, labels, geometry, f"seg {necrosis}",
                             reference_volume=reference)
    segmentation = seg.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == [LABEL_BY_VALUE[v].key for v in present]
    for v in present:
        segment = segmentation.GetSegment(LABEL_BY_VALUE[v].key)
        assert segment.GetName() == LABEL_BY_VALUE[v].name
        np.testing.assert_allclose(segment.GetColor(), LABEL_BY_VALUE[v].color_rgb)
        assert segment.GetLabelValue() == v
    # temporary label map node (and its display node) removed
    assert app.scene.GetFirstNodeByName(f"seg {necrosis} (import)") is None
    back = N.labels_from_segmentation(app.scene, app.segmentations_logic, seg, geometry)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    assert app.scene.GetFirstNodeByName(f"seg {necrosis} (export)") is None
    # node count: + reference volume (node + display) + segmentation (node + display), nothing left over
    assert app.scene.GetNumberOfNodes() == n_before + 4


def test_segmentation_user_edit_comes_back(app):
    g = PLAIN
    labels = _phantom_labels(g)
    seg = N.add_segmentation(app.scene, app.segmentations_logic, labels, g, "edited")
    segmentation = seg.GetSegmentation()
    # a user removes the PVTT segment and renames viable tumor by its key: values must follow the names
    segmentation.RemoveSegment("pvtt")
    segmentation.GetSegment("viable_tumor").SetName("viable_tumor")
    expected = labels.copy()
    expected[expected == PVTT] = 0
    np.testing.assert_array_equal(N.labels_from_segmentation(app.scene, app.segmentations_logic, seg, g), expected)
    segmentation.AddEmptySegment("other", "Something else")
    with pytest.raises(ValueError, match="match no HCCTwin label"):
        N.labels_from_segmentation(app.scene, app.segmentations_logic, seg, g)
    relaxed = N.labels_from_segmentation(app.scene, app.segmentations_logic, seg, g, ignore_unknown=True)
    np.testing.assert_array_equal(relaxed, expected)
    with pytest.raises(ValueError, match="not HCCTwin labels"):
        N.add_segmentation(app.scene, app.segmentations_logic, labels + 10 * (labels > 0), g, "bad")


def test_sequence_browsing(app):
    g = FLIPPED
    rng = np.random.default_rng(3)
    arrays = [rng.normal(i * 100, 10, size=g.shape).astype(np.float32) for i in range(4)]
    weeks = [0, 8, 16, 24]
    seq, browser = N.add_sequence(app.scene, arrays, g, "virtual follow-up", weeks,
                                  sequences_logic=app.sequences_logic)
    assert seq.GetNumberOfDataNodes() == 4
    assert (seq.GetIndexName(), seq.GetIndexUnit()) == ("time", "week")
    assert [float(seq.GetNthIndexValue(n)) for n in range(4)] == weeks
    proxy = browser.GetProxyNode(seq)
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode")
    for n in (2, 0, 3, 1):
        browser.SetSelectedItemNumber(n)
        proxy = browser.GetProxyNode(seq)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(proxy), arrays[n])
        np.testing.assert_allclose(_matrix(proxy), g.ijk_to_ras(), atol=1e-9)
    assert proxy.GetDisplayNode().GetWindow() == 350.0
    with pytest.raises(ValueError, match="index values"):
        N.add_sequence(app.scene, arrays, g, "bad", [0, 8])


def test_table(app):
    columns = {"regimen": ["TACE+PD-1+lenvatinib", "PD-1+TKI"], "median_os_months": [31.5, 20.25],
               "n_samples": [8, 8]}
    node = N.add_table(app.scene, "survival summary", columns)
    assert node.GetNumberOfRows() == 2 and node.GetNumberOfColumns() == 3
    assert N.table_to_dict(node) == columns
    table = node.GetTable()
    assert table.GetColumnByName("n_samples").GetDataTypeAsString() == "int"
    assert table.GetColumnByName("median_os_months").GetDataTypeAsString() == "double"
    with pytest.raises(ValueError, match="different lengths"):
        N.add_table(app.scene, "bad", {"a": [1], "b": [1, 2]})


def test_plot_chart(app):
    t = [0.0, 6.0, 12.0, 18.0, 24.0]
    series = [
        dict(x=t, y=[1.0, 0.9, 0.75, 0.6, 0.5], name="OS regimen A", color=(0.8, 0.2, 0.2),
             lower=[1.0, 0.85, 0.68, 0.52, 0.41], upper=[1.0, 0.95, 0.82, 0.68, 0.59]),
        dict(x=t, y=[1.0, 0.8, 0.6, 0.45, 0.3], name="OS regimen B", color=(0.2, 0.2, 0.8)),
    ]
    chart = N.add_plot(app.scene, "overall survival", series, x_label="months", y_label="survival probability",
                       title="Overall survival", step=True)
    plots = N.plot_series_nodes(chart)
    assert [p.GetName() for p in plots] == ["OS regimen A", "OS regimen A lower", "OS regimen A upper",
                                            "OS regimen B"]
    assert (chart.GetTitle(), chart.GetXAxisTitle(), chart.GetYAxisTitle()) == (
        "Overall survival", "months", "survival probability")
    curve, lower = plots[0], plots[1]
    assert curve.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
    assert lower.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    np.testing.assert_allclose(curve.GetColor(), (0.8, 0.2, 0.2))
    assert min(lower.GetColor()) > min(curve.GetColor())  # band is lighter
    data = N.table_to_dict(curve.GetTableNode())
    # step curve: drop happens at the next time point (post-step, Kaplan-Meier style)
    assert data["x"][:4] == [0.0, 6.0, 6.0, 12.0]
    assert data["y"][:4] == [1.0, 1.0, 0.9, 0.9]
    assert len(data["x"]) == 2 * len(t) - 1 and set(data) == {"x", "y", "lower", "upper"}
    assert lower.GetYColumnName() == "lower" and lower.GetTableNode() is curve.GetTableNode()


def test_layout_descriptions(app):
    layout_node = L.layout_node_of(app.scene)
    ids = L.register_layouts(layout_node)
    assert ids == [L.HCCTWIN_LAYOUT_ID, L.HCCTWIN_REGIMENS_LAYOUT_ID, L.HCCTWIN_PLOT_LAYOUT_ID]
    assert L.register_layouts(layout_node) == ids  # idempotent (SetLayoutDescription the second time)
    for layout_id in ids:
        assert layout_node.IsLayoutDescription(layout_id)
    root = ET.fromstring(layout_node.GetLayoutDescription(L.HCCTWIN_LAYOUT_ID))
    views = root.findall(".//view")
    assert [v.get("singletontag") for v in views] == ["HCCTwinPre", "HCCTwinReal", "HCCTwinVirtual"]
    for v in views:
        props = {p.get("name"): p.text for p in v.findall("property")}
        assert v.get("class") == "vtkMRMLSliceNode"
        assert props["orientation"] == "Axial" and props["viewgroup"] == str(L.COMPARE_VIEW_GROUP)
    plot_root = ET.fromstring(layout_node.GetLayoutDescription(L.HCCTWIN_PLOT_LAYOUT_ID))
    assert [v.get("class") for v in plot_root.iter("view")] == ["vtkMRMLSliceNode"] * 3 + [
        "vtkMRMLPlotViewNode", "vtkMRMLTableViewNode"]
    assert [v.get("singletontag") for v in plot_root.iter("view")][3:] == [L.PLOT_VIEW, L.TABLE_VIEW]
    regimen_root = ET.fromstring(layout_node.GetLayoutDescription(L.HCCTWIN_REGIMENS_LAYOUT_ID))
    assert [v.get("singletontag") for v in regimen_root.iter("view")] == list(L.REGIMEN_VIEWS)
    layout_node.SetViewArrangement(L.HCCTWIN_LAYOUT_ID)
    assert layout_node.GetCurrentLayoutDescription() == L.COMPARE_LAYOUT_XML


def test_linked_views_and_sync(app):
    g = FLIPPED
    volumes = [N.add_volume(app.scene, np.full(g.shape, 10.0 * n, np.float32), g, f"linked {n}") for n in range(3)]
    labels = N.add_volume(app.scene, _phantom_labels(g), g, "linked labels", labelmap=True)
    app.slice_views(L.COMPARE_VIEWS, group=L.COMPARE_VIEW_GROUP)
    with pytest.raises(ValueError, match="no slice view"):
        L.slice_node(app.scene, "NotAView")
    L.assign_volumes(app.scene, dict(zip(L.COMPARE_VIEWS, (v.GetID() for v in volumes))),
                     labels={L.VIRTUAL_VIEW: labels.GetID()})
    crosshair = L.link_slice_views(app.scene, L.COMPARE_VIEWS)
    for name, volume in zip(L.COMPARE_VIEWS, volumes):
        comp = L.slice_composite_node(app.scene, name)
        assert comp.GetLinkedControl() == 1 and comp.GetHotLinkedControl() == 1
        assert comp.GetBackgroundVolumeID() == volume.GetID()
        assert L.slice_node(app.scene, name).GetViewGroup() == L.COMPARE_VIEW_GROUP
    assert L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).GetLabelVolumeID() == labels.GetID()
    assert crosshair.GetCrosshairMode() == slicer.vtkMRMLCrosshairNode.ShowBasic

    offsets = L.sync_slice_views(app.scene, L.COMPARE_VIEWS, (3.0, -4.0, 27.5))
    assert len(set(offsets.values())) == 1 and offsets[L.PRE_VIEW] == pytest.approx(27.5)
    assert crosshair.GetCrosshairRAS() == pytest.approx((3.0, -4.0, 27.5))
    # Slicer's own slice link logic works headless too: scrolling one linked view moves the others
    moved = L.move_linked_slice(app.app_logic, app.scene, L.REAL_VIEW, 12.0)
    assert all(moved[name] == pytest.approx(12.0) for name in L.COMPARE_VIEWS)
    # ... and views outside the group are not moved
    app.slice_view("Outsider", group=7)
    L.assign_volumes(app.scene, {"Outsider": volumes[0].GetID()})
    L.link_slice_views(app.scene, ["Outsider"])
    L.sync_slice_views(app.scene, ["Outsider"], (0.0, 0.0, 20.0))
    L.move_linked_slice(app.app_logic, app.scene, L.PRE_VIEW, 16.0)
    assert L.slice_offsets(app.scene, ["Outsider"])["Outsider"] == pytest.approx(20.0)
    assert list(L.slice_offsets(app.scene, L.COMPARE_VIEWS).values()) == pytest.approx([16.0] * 3)
