"""HCCTwin view layouts and linked (synchronized) slice views.

Three custom layouts (Slicer layout XML, registered on a ``vtkMRMLLayoutNode``):

* :data:`HCCTWIN_LAYOUT_ID` - three axial views "pre-treatment | real follow-up | virtual follow-up";
* :data:`HCCTWIN_REGIMENS_LAYOUT_ID` - "regimen A | regimen B";
* :data:`HCCTWIN_PLOT_LAYOUT_ID` - the three slice views over a plot view (survival curves) and a table view (results
  by regimen).

The comparison views share one view group (:data:`COMPARE_VIEW_GROUP`, the regimen views
:data:`REGIMEN_VIEW_GROUP`): Slicer's slice link logic only propagates linked/hot-linked changes between slice
composite nodes of the same view group, and a group other than 0 keeps them apart from Red/Green/Yellow.
Different volumes per view are set explicitly on each view's slice composite node (:func:`assign_volumes`).

In Slicer, ``slicer.app.layoutManager().layoutLogic().GetLayoutNode()`` is the layout node; switch with
``layout_node.SetViewArrangement(HCCTWIN_LAYOUT_ID)``. Slice nodes exist once a layout showing them was displayed;
headless they are created by :meth:`HCCTwinLib.scene.headless.HeadlessSlicer.slice_view`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from xml.sax.saxutils import escape

import numpy as np

HCCTWIN_LAYOUT_ID = 1601
HCCTWIN_REGIMENS_LAYOUT_ID = 1602
HCCTWIN_PLOT_LAYOUT_ID = 1603

PRE_VIEW, REAL_VIEW, VIRTUAL_VIEW = "HCCTwinPre", "HCCTwinReal", "HCCTwinVirtual"
COMPARE_VIEWS = (PRE_VIEW, REAL_VIEW, VIRTUAL_VIEW)
REGIMEN_A_VIEW, REGIMEN_B_VIEW = "HCCTwinRegimenA", "HCCTwinRegimenB"
REGIMEN_VIEWS = (REGIMEN_A_VIEW, REGIMEN_B_VIEW)
PLOT_VIEW = "HCCTwinPlot"
TABLE_VIEW = "HCCTwinTable"
COMPARE_VIEW_GROUP = 1
REGIMEN_VIEW_GROUP = 2

#: view name -> (label shown in the view, colour of its bar)
VIEW_STYLE = {
    PRE_VIEW: ("Pre-treatment", "#6E9FCE"),
    REAL_VIEW: ("Real follow-up", "#6DAD4A"),
    VIRTUAL_VIEW: ("Virtual follow-up", "#C56BD1"),
    REGIMEN_A_VIEW: ("Regimen A", "#E08A3C"),
    REGIMEN_B_VIEW: ("Regimen B", "#3CB4B4"),
}


def _slice_view_xml(name: str, group: int, orientation: str = "Axial") -> str:
    label, color = VIEW_STYLE.get(name, (name, "#808080"))
    return (f'<item><view class="vtkMRMLSliceNode" singletontag="{escape(name)}">'
            f'<property name="orientation" action="default">{orientation}</property>'
            f'<property name="viewlabel" action="default">{escape(label)}</property>'
            f'<property name="viewcolor" action="default">{color}</property>'
            f'<property name="viewgroup" action="default">{group}</property>'
            "</view></item>")


def _row(names: Sequence[str], group: int) -> str:
    return '<layout type="horizontal" split="true">' + "".join(_slice_view_xml(n, group) for n in names) + "</layout>"


COMPARE_LAYOUT_XML = _row(COMPARE_VIEWS, COMPARE_VIEW_GROUP)
REGIMENS_LAYOUT_XML = _row(REGIMEN_VIEWS, REGIMEN_VIEW_GROUP)
PLOT_LAYOUT_XML = ('<layout type="vertical" split="true">'
                   f'<item splitSize="600">{_row(COMPARE_VIEWS, COMPARE_VIEW_GROUP)}</item>'
                   '<item splitSize="400"><layout type="horizontal" split="true">'
                   f'<item splitSize="550"><view class="vtkMRMLPlotViewNode" singletontag="{PLOT_VIEW}">'
                   '<property name="viewlabel" action="default">P</property></view></item>'
                   f'<item splitSize="450"><view class="vtkMRMLTableViewNode" singletontag="{TABLE_VIEW}">'
                   '<property name="viewlabel" action="default">T</property></view></item>'
                   "</layout></item>"
                   "</layout>")

#: layout id -> XML description
LAYOUTS = {
    HCCTWIN_LAYOUT_ID: COMPARE_LAYOUT_XML,
    HCCTWIN_REGIMENS_LAYOUT_ID: REGIMENS_LAYOUT_XML,
    HCCTWIN_PLOT_LAYOUT_ID: PLOT_LAYOUT_XML,
}


def register_layouts(layout_node) -> list[int]:
    """Add (or update) the HCCTwin layout descriptions on a ``vtkMRMLLayoutNode``; returns their ids."""
    for layout_id, xml in LAYOUTS.items():
        if layout_node.IsLayoutDescription(layout_id):
            layout_node.SetLayoutDescription(layout_id, xml)
        else:
            layout_node.AddLayoutDescription(layout_id, xml)
    return list(LAYOUTS)


def layout_node_of(scene):
    """The scene's singleton ``vtkMRMLLayoutNode`` (created headless, where no layout manager adds one)."""
    import slicer

    node = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    if node is None:
        node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        node = slicer.vtkMRMLLayoutNode()
        node.SetSingletonTag("vtkMRMLLayoutNode")
        node = scene.AddNode(node)
    return node


# ------------------------------------------------------------------------------------------------------ slice views
def slice_node(scene, view_name: str):
    """The ``vtkMRMLSliceNode`` of a view (by layout name); clear error if the view was never created."""
    node = scene.GetSingletonNode(view_name, "vtkMRMLSliceNode")
    if node is None:
        for candidate in _nodes(scene, "vtkMRMLSliceNode"):
            if candidate.GetLayoutName() == view_name:
                return candidate
        raise ValueError(f"no slice view {view_name!r} in the scene: switch to the HCCTwin layout first (Slicer) or "
                         "create the view with HeadlessSlicer.slice_view (headless)")
    return node


def slice_composite_node(scene, view_name: str):
    """The ``vtkMRMLSliceCompositeNode`` of a view (layers shown in it)."""
    for node in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        if node.GetLayoutName() == view_name:
            return node
    raise ValueError(f"no slice composite node for view {view_name!r}: switch to the HCCTwin layout first (Slicer) "
                     "or create the view with HeadlessSlicer.slice_view (headless)")


def _nodes(scene, class_name: str) -> list:
    coll = scene.GetNodesByClass(class_name)
    return [coll.GetItemAsObject(i) for i in range(coll.GetNumberOfItems())]


def crosshair_node(scene):
    """The scene's crosshair (Slicer and ``SlicerApp`` add one called "default"; created if missing)."""
    import slicer

    node = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if node is None:
        node = slicer.vtkMRMLCrosshairNode()
        node.SetCrosshairName("default")
        node = scene.AddNode(node)
    return node


def link_slice_views(scene, view_names: Iterable[str], *, hot_linked: bool = True, crosshair: bool = True,
                     view_group: int | None = None):
    """Link the views: linked + hot-linked control on each slice composite node, a shared crosshair.

    In Slicer the slice link logic then moves all linked views of the same view group together (views get
    ``view_group`` if given). The crosshair is shared by all views in Slicer (one crosshair node); here it is switched
    to the basic intersection mode with "offset jump" behaviour so that moving it in one view moves the others.
    Returns the crosshair node.
    """
    import slicer

    names = list(view_names)
    for name in names:
        snode = slice_node(scene, name)
        if view_group is not None:
            snode.SetViewGroup(int(view_group))
        comp = slice_composite_node(scene, name)
        comp.SetLinkedControl(1)
        comp.SetHotLinkedControl(1 if hot_linked else 0)
    node = crosshair_node(scene)
    if crosshair:
        node.SetCrosshairMode(slicer.vtkMRMLCrosshairNode.ShowBasic)
        node.SetCrosshairBehavior(slicer.vtkMRMLCrosshairNode.OffsetJumpSlice)
    return node


def sync_slice_views(scene, view_names: Iterable[str], ras_position: Sequence[float]) -> dict[str, float]:
    """Put every view's slice plane through ``ras_position`` (centred) and the crosshair there.

    Linking does this interactively in Slicer; headless (and for a programmatic jump) it is done explicitly with
    ``vtkMRMLSliceNode.JumpSliceByCentering``. Returns ``{view name: slice offset}``.
    """
    r, a, s = (float(v) for v in ras_position)
    offsets = {}
    for name in view_names:
        snode = slice_node(scene, name)
        snode.JumpSliceByCentering(r, a, s)
        offsets[name] = float(snode.GetSliceOffset())
    crosshair_node(scene).SetCrosshairRAS(r, a, s)
    return offsets


def fit_around(scene, view_name: str, volume_node, ras_position: Sequence[float], *, margin: float = 1.04,
               dimensions: Sequence[int] | None = None) -> tuple[float, float]:
    """Zoom the view so that, centred on ``ras_position`` (e.g. the largest lesion, after
    :func:`sync_slice_views`), the whole of ``volume_node`` fits in it: nothing of the body is cut off at the edges
    (a plain fit centres on the volume; a plain jump by centring pans the volume out of the view). Works for any
    orientation: the volume's RAS bounding box corners are projected on the view's in-plane axes. Returns the field
    of view (width, height) in mm that was set."""
    snode = slice_node(scene, view_name)
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    corners = np.array([[x, y, z] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]], dtype=float)
    m = snode.GetSliceToRAS()
    x_axis = np.array([m.GetElement(i, 0) for i in range(3)])
    y_axis = np.array([m.GetElement(i, 1) for i in range(3)])
    rel = corners - np.asarray(ras_position, dtype=float)
    half_x = float(np.abs(rel @ (x_axis / np.linalg.norm(x_axis))).max())
    half_y = float(np.abs(rel @ (y_axis / np.linalg.norm(y_axis))).max())
    dims = list(dimensions) if dimensions is not None else list(snode.GetDimensions())[:2]
    aspect = float(dims[0]) / float(dims[1]) if dims[1] else 1.0
    width = max(2 * half_x, 2 * half_y * aspect) * margin
    height = width / aspect
    fov = snode.GetFieldOfView()
    snode.SetFieldOfView(width, height, fov[2])
    return width, height


def slice_offsets(scene, view_names: Iterable[str]) -> dict[str, float]:
    """Current slice offset (mm along the view normal) per view."""
    return {name: float(slice_node(scene, name).GetSliceOffset()) for name in view_names}


def assign_volumes(scene, backgrounds: Mapping[str, str | None], *, foregrounds: Mapping[str, str | None] | None = None,
                   labels: Mapping[str, str | None] | None = None,
                   segmentations: Mapping[str, str | None] | None = None,
                   foreground_opacity: float = 0.5, label_opacity: float = 0.6) -> None:
    """Show volumes per view: ``{view name: volume node id}`` for the background (and optional foreground and label
    map layers; ``None`` clears a layer).

    ``segmentations`` ``{view name: segmentation node id or None}`` makes exactly that segmentation (or none) visible
    among the segmentations in each listed view, through the display nodes' view node IDs (Slicer's "show in views";
    a display node with no view IDs shows in all views, so it is first expanded to the explicit list of views).
    Views not listed keep what they show.
    """
    for name, volume_id in backgrounds.items():
        slice_composite_node(scene, name).SetBackgroundVolumeID(volume_id)
    for name, volume_id in (foregrounds or {}).items():
        comp = slice_composite_node(scene, name)
        comp.SetForegroundVolumeID(volume_id)
        comp.SetForegroundOpacity(foreground_opacity)
    for name, volume_id in (labels or {}).items():
        comp = slice_composite_node(scene, name)
        comp.SetLabelVolumeID(volume_id)
        comp.SetLabelOpacity(label_opacity)
    if segmentations:
        _show_segmentations(scene, segmentations)


def _show_segmentations(scene, segmentations: Mapping[str, str | None]) -> None:
    managed = {name: slice_node(scene, name).GetID() for name in segmentations}
    for seg_id in {s for s in segmentations.values() if s}:
        if scene.GetNodeByID(seg_id) is None:
            raise ValueError(f"no segmentation node {seg_id!r} in the scene")
    all_views = [n.GetID() for n in _nodes(scene, "vtkMRMLAbstractViewNode")]
    for seg in _nodes(scene, "vtkMRMLSegmentationNode"):
        wanted = {managed[name] for name, seg_id in segmentations.items() if seg_id == seg.GetID()}
        display = seg.GetDisplayNode()
        if display is None:
            if not wanted:
                continue
            seg.CreateDefaultDisplayNodes()
            display = seg.GetDisplayNode()
        current = [display.GetNthViewNodeID(i) for i in range(display.GetNumberOfViewNodeIDs())] or all_views
        keep = [v for v in current if v not in managed.values()] + sorted(wanted)
        if keep:
            display.SetViewNodeIDs(keep)
        else:  # shown in no view at all: an empty list would mean "all views"
            display.SetVisibility(False)
        if wanted:
            display.SetVisibility(True)
            display.SetVisibility2DFill(True)
            display.SetVisibility2DOutline(True)


def move_linked_slice(app_logic, scene, view_name: str, offset: float) -> dict[str, float]:
    """Move one view's slice as a user scrolling it would, so Slicer's slice link logic moves the linked views too.

    ``app_logic``: ``slicer.app.applicationLogic()`` in Slicer, ``HeadlessSlicer.app_logic`` headless. Linking
    propagates only inside a Start/EndSliceOffsetInteraction pair (that is what the GUI does); a plain
    ``vtkMRMLSliceNode.SetSliceOffset`` moves just that view. Returns the offsets of all views of ``view_name``'s
    view group.
    """
    snode = slice_node(scene, view_name)
    logic = app_logic.GetSliceLogic(snode)
    if logic is None:
        raise ValueError(f"view {view_name!r} has no slice logic (it is not shown in a layout)")
    logic.StartSliceOffsetInteraction()
    logic.SetSliceOffset(float(offset))
    logic.EndSliceOffsetInteraction()
    group = snode.GetViewGroup()
    names = [n.GetLayoutName() for n in _nodes(scene, "vtkMRMLSliceNode") if n.GetViewGroup() == group]
    return slice_offsets(scene, names)


# -------------------------------------------------------------------------------------------- plot and table views
def _view_node(scene, class_name: str, view_name: str, label: str, create: bool):
    import slicer

    node = scene.GetSingletonNode(view_name, class_name)
    if node is None:
        node = next((n for n in _nodes(scene, class_name) if n.GetLayoutName() == view_name), None)
    if node is None and create:
        node = getattr(slicer, class_name)()
        node.SetSingletonTag(view_name)
        node.SetLayoutName(view_name)
        node.SetLayoutLabel(label)
        node = scene.AddNode(node)
    return node


def plot_view_node(scene, view_name: str = PLOT_VIEW, *, create: bool = True):
    """The ``vtkMRMLPlotViewNode`` of the plot view ``view_name`` (layout :data:`HCCTWIN_PLOT_LAYOUT_ID`).

    In Slicer the layout manager creates it when the layout is shown; headless (or before the layout was shown) it is
    created here with the same singleton tag / layout name, which the layout logic then re-uses. ``create=False``
    returns None when it does not exist.
    """
    return _view_node(scene, "vtkMRMLPlotViewNode", view_name, "P", create)


def table_view_node(scene, view_name: str = TABLE_VIEW, *, create: bool = True):
    """The ``vtkMRMLTableViewNode`` of the table view ``view_name`` (as :func:`plot_view_node`)."""
    return _view_node(scene, "vtkMRMLTableViewNode", view_name, "T", create)


def show_chart(scene, chart_id: str | None, view_name: str = PLOT_VIEW, *, create: bool = True):
    """Show the plot chart ``chart_id`` in the plot view (None empties it); returns the plot view node or None."""
    node = plot_view_node(scene, view_name, create=create)
    if node is not None:
        node.SetPlotChartNodeID(chart_id)
    return node


def show_table(scene, table_id: str | None, view_name: str = TABLE_VIEW, *, create: bool = True):
    """Show the table node ``table_id`` in the table view (None empties it); returns the table view node or None."""
    node = table_view_node(scene, view_name, create=create)
    if node is not None:
        node.SetTableNodeID(table_id)
    return node
