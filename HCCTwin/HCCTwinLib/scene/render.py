"""Offscreen rendering of linked slice views to PNG (headless: reports, CI checks, tumor-board figures).

Uses trame-slicer's ``DirectViewFactory(do_render_offscreen=True)`` through
:class:`~HCCTwinLib.scene.headless.HeadlessSlicer`: real Slicer slice logics, displayable managers (volumes, label
maps, segmentations) and layer blending, so a PNG shows what the Slicer view shows. No display is needed: VTK falls
back to EGL (or OSMesa). Inside the Slicer application use ScreenCapture / the layout instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import COMPARE_VIEW_GROUP, assign_volumes, fit_around, link_slice_views, slice_offsets, sync_slice_views


@dataclass
class ViewSpec:
    """One panel: view name, background volume node id, optional foreground (e.g. the uncertainty overlay), label map
    / segmentation overlay and caption."""

    name: str
    background_id: str
    caption: str | None = None
    label_id: str | None = None
    segmentation_id: str | None = None
    orientation: str = "Axial"
    foreground_id: str | None = None
    foreground_opacity: float = 0.5


@dataclass
class RenderedView:
    name: str
    path: Path
    slice_offset: float
    image: np.ndarray  # (height, width, 3) uint8, top row first
    caption: str | None = None


def _capture(render_window) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    w2i = vtk.vtkWindowToImageFilter()
    w2i.SetInput(render_window)
    w2i.SetInputBufferTypeToRGB()
    w2i.ReadFrontBufferOff()
    w2i.Update()
    image = w2i.GetOutput()
    w, h, _ = image.GetDimensions()
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[:, :, :3]
    return np.ascontiguousarray(array[::-1])  # VTK rows are bottom-up


def _write_png(array: np.ndarray, path: Path) -> None:
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    h, w, c = array.shape
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    scalars = numpy_to_vtk(np.ascontiguousarray(array[::-1]).reshape(-1, c), deep=True,
                           array_type=vtk.VTK_UNSIGNED_CHAR)
    scalars.SetNumberOfComponents(c)
    image.GetPointData().SetScalars(scalars)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()


def volume_center_ras(node) -> tuple[float, float, float]:
    """Centre of a volume's RAS bounding box."""
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return tuple((bounds[2 * i] + bounds[2 * i + 1]) / 2.0 for i in range(3))


def render_views_png(app, view_specs: Sequence[ViewSpec], out: str | Path, size: tuple[int, int] = (384, 384), *,
                     ras_position: Sequence[float] | None = None, group: int = COMPARE_VIEW_GROUP,
                     show_crosshair: bool = False) -> dict[str, RenderedView]:
    """Render linked offscreen slice views to ``<out>/<view name>.png`` (``out`` is a folder).

    Each view shows exactly its spec's background volume and overlays (other segmentations are hidden in it). All
    views are linked (:func:`~HCCTwinLib.scene.layout.link_slice_views`), put through the same ``ras_position``
    (default: centre of the first view's background volume; e.g. the largest lesion) at their centre, and zoomed so
    that the whole background volume is in view (:func:`~HCCTwinLib.scene.layout.fit_around`: nothing cut off).
    Returns ``{view name: RenderedView}`` with the slice offset each view actually used.
    """
    if not view_specs:
        raise ValueError("render_views_png needs at least one ViewSpec")
    scene = app.scene
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [spec.name for spec in view_specs]
    views = {spec.name: app.slice_view(spec.name, orientation=spec.orientation, group=group) for spec in view_specs}
    assign_volumes(scene, {s.name: s.background_id for s in view_specs},
                   labels={s.name: s.label_id for s in view_specs},
                   segmentations={s.name: s.segmentation_id for s in view_specs})
    for spec in view_specs:
        assign_volumes(scene, {}, foregrounds={spec.name: spec.foreground_id},
                       foreground_opacity=spec.foreground_opacity)
    link_slice_views(scene, names, crosshair=show_crosshair)
    width, height = (int(v) for v in size)
    for view in views.values():
        view.render_window().SetSize(width, height)
        view.update_size(width, height)
        view.fit_view_to_content()
    if ras_position is None:
        first = scene.GetNodeByID(view_specs[0].background_id)
        if first is None:
            raise ValueError(f"no volume node {view_specs[0].background_id!r} in the scene")
        ras_position = volume_center_ras(first)
    sync_slice_views(scene, names, ras_position)
    for spec in view_specs:  # centred on ras_position and zoomed out just enough to show the whole volume
        node = scene.GetNodeByID(spec.background_id)
        if node is not None:
            fit_around(scene, spec.name, node, ras_position, dimensions=(width, height))
    offsets = slice_offsets(scene, names)
    result = {}
    for spec in view_specs:
        view = views[spec.name]
        view.render()
        image = _capture(view.render_window())
        path = out_dir / f"{spec.name}.png"
        _write_png(image, path)
        result[spec.name] = RenderedView(spec.name, path, offsets[spec.name], image, spec.caption)
    return result


def compose_panels(rendered: Sequence[RenderedView], out_path: str | Path, *, title: str | None = None,
                   footer: str | None = None, dpi: int = 100) -> Path:
    """Put rendered views side by side in one PNG with captions (and an optional title / footer line)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    if not rendered:
        raise ValueError("compose_panels needs at least one rendered view")
    h, w = rendered[0].image.shape[:2]
    n = len(rendered)
    fig = Figure(figsize=(n * w / dpi, (h + 60 + (30 if footer else 0)) / dpi), dpi=dpi, facecolor="black")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, view in zip(axes, rendered):
        ax.imshow(view.image)
        caption = view.caption or view.name
        ax.set_title(f"{caption}\noffset {view.slice_offset:.1f} mm", color="white", fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    if footer:
        fig.text(0.5, 0.01, footer, ha="center", va="bottom", color="#bbbbbb", fontsize=8)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.06 if footer else 0.01, top=0.82 if title else 0.88,
                        wspace=0.02)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, facecolor=fig.get_facecolor())
    return out_path
