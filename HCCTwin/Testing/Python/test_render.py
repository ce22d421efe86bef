"""Offscreen rendering of linked slice views (slicer-core + trame-slicer, EGL without a display)."""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from HCCTwinLib.cases import Geometry
from HCCTwinLib.labels import LIVER, VIABLE_TUMOR
from HCCTwinLib.scene import layout as L
from HCCTwinLib.scene import nodes as N
from HCCTwinLib.scene import render as R

GEOMETRY = Geometry(shape=(24, 48, 48), spacing=(0.8, 0.8, 2.0), origin=(-19.0, 10.0, -20.0))
SIZE = (160, 160)


@pytest.fixture(scope="module")
def app(headless_app):
    return headless_app


def _sphere(geometry: Geometry, radius_mm: float, center_ijk=None, value=180.0, background=-80.0) -> np.ndarray:
    k, j, i = np.indices(geometry.shape, dtype=float)
    ck, cj, ci = center_ijk or [(s - 1) / 2 for s in geometry.shape]
    sx, sy, sz = geometry.spacing
    r2 = ((i - ci) * sx) ** 2 + ((j - cj) * sy) ** 2 + ((k - ck) * sz) ** 2
    return np.where(r2 < radius_mm**2, value, background).astype(np.float32)


def _read_png(path) -> np.ndarray:
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1]


def _bright(image: np.ndarray) -> np.ndarray:
    return image[..., :3].mean(axis=-1) > 150


@pytest.fixture(scope="module")
def phantom(app):
    pre = _sphere(GEOMETRY, 14.0)
    real = _sphere(GEOMETRY, 9.0)
    virtual = _sphere(GEOMETRY, 7.0, center_ijk=(11.5, 23.5, 33.5))  # shifted towards +i = patient left
    arrays = {"pre": pre, "real": real, "virt": virtual}
    nodes = [N.add_volume(app.scene, a, GEOMETRY, name) for name, a in arrays.items()]
    labels = np.where(pre > 0, LIVER, 0).astype(np.uint8)
    labels[real > 0] = VIABLE_TUMOR
    seg = N.add_segmentation(app.scene, app.segmentations_logic, labels, GEOMETRY, "pre seg", reference_volume=nodes[0])
    return nodes, seg


def test_render_three_linked_views(app, phantom, tmp_path):
    (pre, real, virtual), seg = phantom
    specs = [R.ViewSpec(L.PRE_VIEW, pre.GetID(), "Pre-treatment"),
             R.ViewSpec(L.REAL_VIEW, real.GetID(), "Real follow-up"),
             R.ViewSpec(L.VIRTUAL_VIEW, virtual.GetID(), "Virtual follow-up")]
    out = R.render_views_png(app, specs, tmp_path / "views", size=SIZE)
    assert list(out) == list(L.COMPARE_VIEWS)
    # linked: all views at the same slice position, the centre of the volume (z = -20 + 11.5 * 2)
    offsets = [view.slice_offset for view in out.values()]
    assert offsets == pytest.approx([3.0] * 3)
    assert L.slice_offsets(app.scene, L.COMPARE_VIEWS) == {v.name: v.slice_offset for v in out.values()}
    images = {}
    for name, view in out.items():
        assert view.path.is_file() and view.path.stat().st_size > 500
        image = _read_png(view.path)
        assert image.shape[:2] == (SIZE[1], SIZE[0])
        np.testing.assert_array_equal(image[..., :3], view.image)  # the PNG is what was captured
        assert image.std() > 20, f"{name} looks blank"
        images[name] = image
    bright = {name: _bright(image).sum() for name, image in images.items()}
    # pre 14 mm > real 9 mm > virtual 7 mm sphere radius: different volumes give different images
    assert bright[L.PRE_VIEW] > bright[L.REAL_VIEW] > bright[L.VIRTUAL_VIEW] > 50
    assert np.abs(images[L.PRE_VIEW].astype(int) - images[L.REAL_VIEW].astype(int)).mean() > 5
    # radiological convention: the virtual sphere was moved to the patient's left = screen right
    cols = np.nonzero(_bright(images[L.VIRTUAL_VIEW]))[1]
    assert cols.mean() > SIZE[0] / 2 + 5
    composite = R.compose_panels(list(out.values()), tmp_path / "compare.png", title="HCCTwin demo",
                                 footer="demo weights, synthetic data, not for clinical use")
    panel = _read_png(composite)
    assert panel.shape[1] >= 3 * SIZE[0] - 2 and panel[..., :3].std() > 20


def test_render_at_position_and_overlay(app, phantom, tmp_path):
    (pre, real, virtual), seg = phantom
    specs = [R.ViewSpec(L.PRE_VIEW, pre.GetID(), segmentation_id=seg.GetID()),
             R.ViewSpec(L.REAL_VIEW, pre.GetID())]
    centre = R.volume_center_ras(pre)
    out = R.render_views_png(app, specs, tmp_path, size=SIZE, ras_position=(centre[0], centre[1], centre[2] + 10))
    assert [v.slice_offset for v in out.values()] == pytest.approx([13.0, 13.0])
    with_seg, without = out[L.PRE_VIEW].image.astype(int), out[L.REAL_VIEW].image.astype(int)
    # same volume, same slice: only the segmentation overlay differs, and it adds colour
    colour = lambda im: (np.abs(im[..., 0] - im[..., 1]) + np.abs(im[..., 1] - im[..., 2])).mean()  # noqa: E731
    assert colour(without) < 1 and colour(with_seg) > 3
    # 10 mm above the centre the 14 mm sphere has a smaller cross-section than at the centre
    centre_out = R.render_views_png(app, [R.ViewSpec(L.REAL_VIEW, pre.GetID())], tmp_path / "centre", size=SIZE)
    assert _bright(centre_out[L.REAL_VIEW].image).sum() > _bright(without).sum() + 50


def test_flipped_geometry_renders_the_same_anatomy(app, tmp_path):
    """Same physical phantom stored with i flipped (direction x = -1): the rendered slice must be identical."""
    array = _sphere(GEOMETRY, 8.0, center_ijk=(11.5, 20.0, 30.0))
    nx = GEOMETRY.shape[2]
    flipped_geometry = Geometry(GEOMETRY.shape, GEOMETRY.spacing,
                                origin=(GEOMETRY.origin[0] + (nx - 1) * GEOMETRY.spacing[0], *GEOMETRY.origin[1:]),
                                direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    plain = N.add_volume(app.scene, array, GEOMETRY, "plain phantom")
    flipped = N.add_volume(app.scene, array[:, :, ::-1], flipped_geometry, "flipped phantom")
    out = R.render_views_png(app, [R.ViewSpec(L.PRE_VIEW, plain.GetID()), R.ViewSpec(L.VIRTUAL_VIEW, flipped.GetID())],
                             tmp_path, size=SIZE)
    a, b = out[L.PRE_VIEW].image, out[L.VIRTUAL_VIEW].image
    assert _bright(a).sum() > 50
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


def test_uncertainty_overlay_renders_in_colour_only_where_asked(app, tmp_path):
    """The virtual follow-up with its per-voxel SD as foreground (the HCCTwin uncertainty overlay) renders in colour;
    the same view without it stays grey."""
    from HCCTwinLib.scene.build import style_uncertainty_display

    base = N.add_volume(app.scene, _sphere(GEOMETRY, 12.0), GEOMETRY, "virtual w08")
    std = np.zeros(GEOMETRY.shape, np.float32)
    std[:, :, : GEOMETRY.shape[2] // 2] = 15.0  # uncertain on the patient's right half only (mid-window: red)
    overlay = N.add_volume(app.scene, std, GEOMETRY, "uncertainty w08")
    style_uncertainty_display(overlay, 40.0)
    out = R.render_views_png(app, [R.ViewSpec(L.PRE_VIEW, base.GetID()),
                                   R.ViewSpec(L.VIRTUAL_VIEW, base.GetID(), foreground_id=overlay.GetID())],
                             tmp_path, size=SIZE)
    colour = lambda im: np.abs(im[..., 0] - im[..., 2])  # noqa: E731
    plain, shown = out[L.PRE_VIEW].image.astype(int), out[L.VIRTUAL_VIEW].image.astype(int)
    assert colour(plain).mean() < 1
    # radiological convention: the patient's right is on the screen's left, where the overlay is
    left, right = colour(shown)[:, : SIZE[0] // 2].mean(), colour(shown)[:, SIZE[0] // 2:].mean()
    assert left > 10 and left > 3 * right
    # where the SD is ~0 the overlay is transparent: the CT looks as without the overlay
    assert np.abs(shown[:, SIZE[0] // 2 + 2:] - plain[:, SIZE[0] // 2 + 2:]).mean() < 1
    assert L.slice_composite_node(app.scene, L.PRE_VIEW).GetForegroundVolumeID() is None



def test_views_centred_on_a_lesion_show_the_whole_volume(app, tmp_path):
    """Issue 25: centred on an off-centre lesion, the view is zoomed out just enough that nothing of the volume is
    cut off (a plain jump by centring panned part of the body out of the view)."""
    body = np.full(GEOMETRY.shape, 200.0, np.float32)  # the whole volume is bright: its edges must all be in view
    node = N.add_volume(app.scene, body, GEOMETRY, "body")
    lesion_ijk = (11.5, 10.0, 40.0)  # near a corner in-plane
    lesion_ras = GEOMETRY.ijk_to_ras() @ np.array([lesion_ijk[2], lesion_ijk[1], lesion_ijk[0], 1.0])
    out = R.render_views_png(app, [R.ViewSpec(L.PRE_VIEW, node.GetID())], tmp_path, size=SIZE,
                             ras_position=tuple(lesion_ras[:3]))
    bright = _bright(out[L.PRE_VIEW].image)
    rows, cols = np.nonzero(bright)
    # all four edges of the volume are inside the picture (a dark border on every side) ...
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < SIZE[1] - 1 and cols.max() < SIZE[0] - 1
    # ... and the view's centre is the lesion, not the volume's centre
    snode = L.slice_node(app.scene, L.PRE_VIEW)
    m = snode.GetSliceToRAS()
    assert [m.GetElement(i, 3) for i in range(2)] == pytest.approx(list(lesion_ras[:2]), abs=0.5)
