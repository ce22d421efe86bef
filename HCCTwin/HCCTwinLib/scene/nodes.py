"""numpy/Geometry <-> MRML nodes: volumes, segmentations, sequences, tables and plots.

Every function takes the scene (``vtkMRMLScene``) and, where needed, a module logic as arguments, and never touches
``slicer.mrmlScene`` / ``slicer.app`` / ``slicer.modules``. The same code therefore runs

* inside 3D Slicer: ``add_segmentation(slicer.mrmlScene, slicer.modules.segmentations.logic(), ...)``;
* headless (CI, batch): ``app = HeadlessSlicer(); add_segmentation(app.scene, app.segmentations_logic, ...)``.

Coordinates: engine arrays are ``[k, j, i]`` with an LPS :class:`~HCCTwinLib.cases.Geometry`; MRML volume nodes are
RAS. ``Geometry.ijk_to_ras()`` is written to the node's IJKToRAS matrix as is (direction, spacing and origin), and
:func:`array_and_geometry_from_volume` converts back (RAS -> LPS).

Only ``slicer.util.updateVolumeFromArray`` / ``arrayFromVolume`` are used from ``slicer.util``: they take the node as
an argument and work headless; ``addVolumeFromArray`` and ``updateSegmentBinaryLabelmapFromArray`` do not (they need
``slicer.mrmlScene`` / ``slicer.modules``).

Memory: a volume is written straight into the node's VTK buffer (allocated with the asked ``dtype``, filled through
the ``arrayFromVolume`` view, slab by slab), so no full-size temporary is made; the voxels may also come from a
function ``fill(out)`` instead of an array (a virtual follow-up computed into the buffer). Sequence items are made
inside the sequence (not deep-copied from a temporary node) and browser proxies share their item's voxels instead of
holding a copy (``SetDeepCopyVirtualNodes(False)``; editing a proxy therefore edits the item it shows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..cases import LPS_TO_RAS, Geometry
from ..labels import LABEL_BY_VALUE, LABELS

#: Default CT window (width, level) for abdominal soft tissue / liver.
ABDOMEN_WINDOW_LEVEL = (350.0, 50.0)
#: Name of the colour table node that holds the HCCTwin label colours (created on demand).
LABEL_COLOR_NODE_NAME = "HCCTwinLabels"
#: Attribute set on every node this module creates, so a caller can find (and clean up) HCCTwin's nodes.
NODE_ATTRIBUTE = "HCCTwin.role"


# ----------------------------------------------------------------------------------------------------------- helpers
def _slicer():
    import slicer  # lazy: importing this module must not require Slicer

    return slicer


def _vtk_matrix(array4x4: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array4x4[r, c]))
    return m


def _numpy_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def find_node(scene, name: str, class_name: str):
    """First node called ``name`` that is a ``class_name`` (or subclass), or None."""
    nodes = scene.GetNodesByClassByName(class_name, name)
    node = nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
    return node


def _new_or_reused(scene, class_name: str, name: str, reuse: bool):
    node = find_node(scene, name, class_name) if reuse else None
    # a node of a derived class with the same name (e.g. a label map when a scalar volume is asked) is not reused
    if node is not None and node.GetClassName() != class_name:
        node = None
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    return node


def _check_geometry(array: np.ndarray, geometry: Geometry, what: str) -> None:
    if array.ndim != 3 or tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"{what} has shape {array.shape} but the geometry says {geometry.shape} ([k, j, i] order); "
                         "pass the Geometry of the grid the array was computed on")


def set_volume_geometry(node, geometry: Geometry) -> None:
    """Write ``geometry.ijk_to_ras()`` into the volume node (sets spacing, origin and IJK directions together)."""
    node.SetIJKToRASMatrix(_vtk_matrix(geometry.ijk_to_ras()))


def geometry_from_volume(node) -> Geometry:
    """The LPS :class:`Geometry` of a volume node (inverse of :func:`set_volume_geometry`)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_lps = LPS_TO_RAS @ _numpy_matrix(m)  # diag(-1, -1, 1) is its own inverse
    cols = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    direction = cols / spacing
    dims = node.GetImageData().GetDimensions() if node.GetImageData() is not None else (0, 0, 0)
    return Geometry(shape=(dims[2], dims[1], dims[0]), spacing=tuple(spacing), origin=tuple(ijk_to_lps[:3, 3]),
                    direction=tuple(direction.ravel()))


# ----------------------------------------------------------------------------------------------------------- volumes
#: Voxels of a volume: a ``[k, j, i]`` array, or a function that writes them into the array it is given.
VolumeData = np.ndarray | Callable[[np.ndarray], object]
_SLAB = 8


def _storage_dtype(array, dtype, labelmap: bool) -> np.dtype:
    if labelmap:
        return np.dtype(np.uint8)
    if dtype is not None:
        return np.dtype(dtype)
    if callable(array):
        raise ValueError("a volume given as a fill function needs its dtype")
    dt = np.asarray(array).dtype
    if dt in (np.int64, np.uint64, np.float16, np.bool_):
        return np.dtype(np.float32)  # VTK_LONG_LONG is rejected by updateVolumeFromArray; float16 has no VTK type
    return dt


def _write_voxels(node, data: VolumeData, shape, dtype: np.dtype) -> None:
    """Allocate ``node``'s image data as ``dtype`` with ``shape`` (k, j, i) and write ``data`` into it in place
    (integer storage of float data: rounded, clipped to the type's range)."""
    import vtk
    import vtk.util.numpy_support

    slicer = _slicer()
    image = node.GetImageData()
    if image is None:
        image = vtk.vtkImageData()
        node.SetAndObserveImageData(image)
    image.SetDimensions(int(shape[2]), int(shape[1]), int(shape[0]))
    image.AllocateScalars(vtk.util.numpy_support.get_vtk_array_type(dtype), 1)
    target = slicer.util.arrayFromVolume(node)
    if callable(data):
        data(target)
    else:
        src = np.asarray(data)
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(src.dtype, np.integer):
            from ..cases import store_rounded

            store_rounded(target, src)
        else:
            for k0 in range(0, target.shape[0], _SLAB):
                target[k0:k0 + _SLAB] = src[k0:k0 + _SLAB]
    slicer.util.arrayFromVolumeModified(node)
    node.StorableModified()
    node.InvokeEvent(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, node)


def label_color_node(scene):
    """A ``vtkMRMLColorTableNode`` with the HCCTwin label names/colours (:data:`HCCTwinLib.labels.LABELS`).

    Created once per scene and reused; used for label map display and for segment names on import.
    """
    slicer = _slicer()
    node = find_node(scene, LABEL_COLOR_NODE_NAME, "vtkMRMLColorTableNode")
    if node is not None:
        return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(LABEL_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(max(LABEL_BY_VALUE) + 1)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for info in LABELS:
        node.SetColor(info.value, info.key, *info.color_rgb, 1.0)
    node.SetAttribute(NODE_ATTRIBUTE, "label-colors")
    scene.AddNode(node)
    return node


def add_volume(scene, array: VolumeData, geometry: Geometry, name: str, *, labelmap: bool = False,
               window_level: tuple[float, float] | None = None, reuse: bool = True, dtype=None):
    """Add (or, with ``reuse``, update the same-named) volume node holding ``array`` on ``geometry``.

    ``array`` is ``[k, j, i]`` (or a function writing the voxels into the array it gets; then give ``dtype``); the
    node's IJKToRAS is exactly ``geometry.ijk_to_ras()``. ``dtype`` is the voxel type stored in the node (default:
    the array's; int16 for CT halves the memory of float32 and rounds to whole HU). Scalar volumes get a display
    node with ``window_level`` = (width, level) (default abdominal CT W 350 / L 50); label maps
    (``labelmap=True``, stored as uint8) get the HCCTwin label colour table. Returns
    ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.
    """
    if not callable(array):
        array = np.asarray(array)
        _check_geometry(array, geometry, f"volume {name!r}")
        if labelmap and (array.min(initial=0) < 0 or array.max(initial=0) > 255):
            raise ValueError(f"label map {name!r} has values outside 0..255; pass integer label values")
    store = _storage_dtype(array, dtype, labelmap)
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = _new_or_reused(scene, class_name, name, reuse)
    set_volume_geometry(node, geometry)
    node.SetAttribute(NODE_ATTRIBUTE, "labelmap" if labelmap else "volume")
    # display first: its window/level is set, so no automatic window/level histogram is computed over the voxels
    _ensure_volume_display(scene, node, labelmap=labelmap, window_level=window_level)
    _write_voxels(node, array, geometry.shape, store)
    return node


def _ensure_volume_display(scene, node, *, labelmap: bool, window_level: tuple[float, float] | None,
                           color_node_id: str | None = None):
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return
    if labelmap:
        display.SetAndObserveColorNodeID(label_color_node(scene).GetID())
    else:
        width, level = window_level or ABDOMEN_WINDOW_LEVEL
        if color_node_id and scene.GetNodeByID(color_node_id) is not None:
            display.SetAndObserveColorNodeID(color_node_id)
        elif display.GetColorNodeID() is None:
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        display.AutoWindowLevelOff()
        display.SetWindowLevel(float(width), float(level))


def array_and_geometry_from_volume(node) -> tuple[np.ndarray, Geometry]:
    """Copy of a volume node's voxels (``[k, j, i]``) and its LPS :class:`Geometry` (inverse of :func:`add_volume`)."""
    slicer = _slicer()
    if node is None or node.GetImageData() is None:
        raise ValueError("volume node has no image data; load or compute the volume first")
    return np.array(slicer.util.arrayFromVolume(node), copy=True), geometry_from_volume(node)


# ------------------------------------------------------------------------------------------------------ segmentation
def add_segmentation(scene, segmentations_logic, labels: np.ndarray, geometry: Geometry, name: str,
                     reference_volume=None, *, reuse: bool = False):
    """Segmentation node with one segment per label value present in ``labels`` (see :mod:`HCCTwinLib.labels`).

    Segment IDs are the label keys (``"liver"``, ``"viable_tumor"``, ...), names and colours come from ``LABELS`` and
    each segment's label value (its voxel value in the shared labelmap layer) is the HCCTwin label value. Import goes
    through a temporary label map node and ``ImportLabelmapToSegmentationNode``; the temporary node is removed.
    ``reference_volume`` (a volume node) sets the segmentation's reference geometry (default: the label grid).
    ``reuse=True`` replaces the segments of an existing same-named segmentation node instead of adding a new node
    (off by default so that a user-corrected segmentation is never overwritten by accident).
    """
    import vtk

    labels = np.asarray(labels)
    _check_geometry(labels, geometry, f"label map for {name!r}")
    present = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in present if v not in LABEL_BY_VALUE]
    if unknown:
        raise ValueError(f"label values {unknown} are not HCCTwin labels {sorted(LABEL_BY_VALUE)}; "
                         "map them with HCCTwinLib.labels first")
    seg_node = _new_or_reused(scene, "vtkMRMLSegmentationNode", name, reuse)
    seg_node.GetSegmentation().RemoveAllSegments()
    seg_node.SetAttribute(NODE_ATTRIBUTE, "segmentation")
    if seg_node.GetDisplayNode() is None:
        seg_node.CreateDefaultDisplayNodes()
    tmp = add_volume(scene, labels, geometry, f"{name} (import)", labelmap=True, reuse=False)
    try:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume or tmp)
        # With updatedSegmentIDs, label value v is imported into the segment with the v-th ID, so segments keep the
        # HCCTwin value as their label value in the shared labelmap layer. IDs for absent values get empty segments,
        # removed below. (Never change a segment's label value afterwards: it is the voxel value in the layer.)
        ids = vtk.vtkStringArray()
        for v in range(1, max(present, default=0) + 1):
            ids.InsertNextValue(LABEL_BY_VALUE[v].key if v in LABEL_BY_VALUE else f"unused_{v}")
        if present and not segmentations_logic.ImportLabelmapToSegmentationNode(tmp, seg_node, ids):
            raise RuntimeError(f"importing the label map into segmentation {name!r} failed")
    finally:
        _remove_volume(scene, tmp)
    segmentation = seg_node.GetSegmentation()
    for seg_id in list(segmentation.GetSegmentIDs()):
        value = next((info.value for info in LABELS if info.key == seg_id), None)
        if value not in present:
            segmentation.RemoveSegment(seg_id)
    for v in present:
        info = LABEL_BY_VALUE[v]
        segment = segmentation.GetSegment(info.key)
        segment.SetName(info.name)
        segment.SetColor(*info.color_rgb)
    return seg_node


def _remove_volume(scene, node) -> None:
    display = node.GetDisplayNode()
    storage = node.GetStorageNode()
    scene.RemoveNode(node)
    for extra in (display, storage):
        if extra is not None and extra.GetScene() is scene:
            scene.RemoveNode(extra)


def segment_label_value(segment_id: str, segment) -> int | None:
    """HCCTwin label value of a segment: by ID or name matching a label key or display name (case-insensitive)."""
    candidates = {segment_id.lower(), segment.GetName().lower()}
    for info in LABELS:
        if info.key in candidates or info.name.lower() in candidates:
            return info.value
    return None


def labels_from_segmentation(scene, segmentations_logic, seg_node, geometry: Geometry, *,
                             ignore_unknown: bool = False) -> np.ndarray:
    """uint8 label map ``[k, j, i]`` on ``geometry`` from a (possibly user-edited) segmentation node.

    Segments map back to label values by ID or name (label key or display name, see :func:`segment_label_value`).
    Where segments overlap, the later label in :data:`LABELS` order wins (tumor over liver, PVTT last).
    A segment that matches no label is an error unless ``ignore_unknown``.
    """
    by_value: dict[int, str] = {}
    unknown = []
    segmentation = seg_node.GetSegmentation()
    for seg_id in segmentation.GetSegmentIDs():
        value = segment_label_value(seg_id, segmentation.GetSegment(seg_id))
        if value is None:
            unknown.append(f"{seg_id} ({segmentation.GetSegment(seg_id).GetName()})")
        else:
            by_value[value] = seg_id
    if unknown and not ignore_unknown:
        keys = ", ".join(info.key for info in LABELS)
        raise ValueError(f"segments {unknown} match no HCCTwin label; rename them to one of {keys} "
                         "(or pass ignore_unknown=True)")
    ordered = [v for v in (info.value for info in LABELS) if v in by_value]
    ref = add_volume(scene, np.zeros(geometry.shape, np.uint8), geometry, f"{seg_node.GetName()} (export)",
                     labelmap=True, reuse=False)
    try:
        if ordered:
            ok = segmentations_logic.ExportSegmentsToLabelmapNode(seg_node, [by_value[v] for v in ordered], ref, ref)
            if not ok:
                raise RuntimeError(f"exporting segmentation {seg_node.GetName()!r} to a label map failed")
        exported, exported_geometry = array_and_geometry_from_volume(ref)
    finally:
        _remove_volume(scene, ref)
    if not exported_geometry.same_grid(geometry, tol=1e-3):
        raise RuntimeError("exported label map is not on the reference grid")
    # the export numbers segments 1..n in the order given
    lut = np.zeros(max(int(exported.max(initial=0)), len(ordered)) + 1, dtype=np.uint8)
    for i, v in enumerate(ordered, start=1):
        lut[i] = v
    return lut[exported.astype(np.int64)]


# --------------------------------------------------------------------------------------------------------- sequences
def add_sequence(scene, arrays: Sequence[VolumeData], geometry: Geometry | Sequence[Geometry], name: str,
                 index_values: Sequence[float], index_name: str = "time", index_unit: str = "week",
                 sequences_logic=None, *, window_level: tuple[float, float] | None = None, labelmap: bool = False,
                 reuse: bool = False, color_node_id: str | None = None, dtype=None):
    """A ``vtkMRMLSequenceNode`` of volumes (e.g. virtual follow-ups at 0, 8, 16 weeks) and a browser node.

    Returns ``(sequence_node, browser_node)``; ``browser_node.SetSelectedItemNumber(n)`` shows ``arrays[n]`` in the
    browser's proxy volume (``browser_node.GetProxyNode(sequence_node)``), which shares the item's voxels. Browser
    nodes need the Sequences module logic: in Slicer it is always there; headless register it (``HeadlessSlicer``
    does). With ``sequences_logic`` given, the proxy node is created at once (otherwise the logic does it when it
    sees the browser). ``reuse=True`` refills the same-named sequence and browser (``"<name> browser"``) instead of
    adding new nodes, so a re-run updates its own sequences. Items may be fill functions (see :func:`add_volume`;
    then give ``dtype``; default float32) and ``geometry`` one per item.
    """
    seq, pending = _fill_sequence(scene, arrays, geometry, name, index_values, index_name, index_unit,
                                  labelmap=labelmap, reuse=reuse, dtype=dtype, defer=True)
    browser = find_node(scene, f"{name} browser", "vtkMRMLSequenceBrowserNode") if reuse else None
    if browser is None:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAttribute(NODE_ATTRIBUTE, "sequence-browser")
    set_primary = (getattr(browser, "SetAndObservePrimarySequenceNodeID", None)
                   or browser.SetAndObserveMasterSequenceNodeID)  # renamed in newer Slicer
    browser.SetDeepCopyVirtualNodes(False)
    set_primary(seq.GetID())
    browser.SetDeepCopyVirtualNodes(False)  # proxies share the item's voxels (setting the primary resets it)
    # the proxy and its display are made while the items have no voxels yet, so no automatic window/level
    # histogram is computed over a full volume (about 0.5 s per 30 M voxels); then the voxels are written
    _update_proxy(scene, browser, seq, name, sequences_logic, labelmap=labelmap, window_level=window_level,
                  color_node_id=color_node_id)
    _write_pending(pending)
    if sequences_logic is not None:
        sequences_logic.UpdateProxyNodesFromSequences(browser)
    return seq, browser


def add_synchronized_sequence(scene, browser, arrays: Sequence[VolumeData], geometry: Geometry | Sequence[Geometry],
                              name: str, index_values: Sequence[float], index_name: str = "time",
                              index_unit: str = "week", sequences_logic=None, *,
                              window_level: tuple[float, float] | None = None, reuse: bool = False,
                              color_node_id: str | None = None, dtype=None):
    """A second sequence (e.g. the per-voxel uncertainty) played by an existing browser in step with its primary
    sequence: browsing the time points moves both proxies. Returns the sequence node; its proxy is
    ``browser.GetProxyNode(sequence)``. ``index_values`` must match the primary sequence's. Its items may lie on
    another grid than the primary's (``geometry``: one, or one per item): the views resample them."""
    seq, pending = _fill_sequence(scene, arrays, geometry, name, index_values, index_name, index_unit,
                                  labelmap=False, reuse=reuse, dtype=dtype, defer=True)
    if not browser.IsSynchronizedSequenceNodeID(seq.GetID()):
        browser.AddSynchronizedSequenceNode(seq)
    browser.SetDeepCopyVirtualNodes(False)
    _update_proxy(scene, browser, seq, name, sequences_logic, labelmap=False, window_level=window_level,
                  color_node_id=color_node_id)
    _write_pending(pending)
    if sequences_logic is not None:
        sequences_logic.UpdateProxyNodesFromSequences(browser)
    return seq


def _write_pending(pending) -> None:
    for stored, data, shape, store in pending:
        _write_voxels(stored, data, shape, store)


def _fill_sequence(scene, arrays, geometry, name, index_values, index_name, index_unit, *, labelmap, reuse,
                   dtype=None, defer: bool = False):
    """The sequence node with one item per array; with ``defer`` the items are made without voxels and
    ``(sequence, [(item, data, shape, dtype)])`` is returned for :func:`_write_pending`."""
    slicer = _slicer()
    if len(arrays) != len(index_values):
        raise ValueError(f"{len(arrays)} arrays but {len(index_values)} index values; give one index value per array")
    if not len(arrays):
        raise ValueError(f"sequence {name!r} needs at least one array")
    geometries = [geometry] * len(arrays) if isinstance(geometry, Geometry) else list(geometry)
    if len(geometries) != len(arrays):
        raise ValueError(f"sequence {name!r}: {len(geometries)} geometries for {len(arrays)} items")
    for array, geom, value in zip(arrays, geometries, index_values):
        if not callable(array):
            _check_geometry(np.asarray(array), geom, f"sequence {name!r} item {value}")
    store = np.dtype(np.uint8) if labelmap else np.dtype(dtype or np.float32)
    seq = find_node(scene, name, "vtkMRMLSequenceNode") if reuse else None
    if seq is None:
        seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    else:
        seq.RemoveAllDataNodes()
    seq.SetIndexName(index_name)
    seq.SetIndexUnit(index_unit)
    seq.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
    seq.SetAttribute(NODE_ATTRIBUTE, "sequence")
    item_class = slicer.vtkMRMLLabelMapVolumeNode if labelmap else slicer.vtkMRMLScalarVolumeNode
    pending = []
    for array, geom, value in zip(arrays, geometries, index_values):
        item = item_class()  # without voxels: SetDataNodeAtValue copies it into the sequence, then we fill that copy
        item.SetName(f"{name} {index_name}={value:g}{index_unit}")
        set_volume_geometry(item, geom)
        stored = seq.SetDataNodeAtValue(item, f"{float(value):g}")
        pending.append((stored, array, geom.shape, store))
    if defer:
        return seq, pending
    _write_pending(pending)
    return seq


def _update_proxy(scene, browser, seq, name, sequences_logic, *, labelmap, window_level, color_node_id):
    if sequences_logic is not None:
        sequences_logic.UpdateProxyNodesFromSequences(browser)
    browser.SetSelectedItemNumber(0)
    if sequences_logic is not None:  # refresh the proxies when the selected item number did not change (re-use)
        sequences_logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(seq)
    if proxy is not None:
        proxy.SetName(name)
        _ensure_volume_display(scene, proxy, labelmap=labelmap, window_level=window_level,
                               color_node_id=color_node_id)


# ------------------------------------------------------------------------------------------------------------ tables
def _vtk_column(name: str, values: list):
    import vtk

    vals = list(values)
    if all(isinstance(v, (bool, int, np.integer, np.bool_)) for v in vals) and vals:
        arr = vtk.vtkIntArray()
        conv = int
    elif all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in vals) and vals:
        arr = vtk.vtkDoubleArray()
        conv = float
    else:
        arr = vtk.vtkStringArray()
        conv = str
    arr.SetName(name)
    arr.SetNumberOfValues(len(vals))
    for i, v in enumerate(vals):
        arr.SetValue(i, conv(v))
    return arr


def add_table(scene, name: str, columns: Mapping[str, Sequence], *, reuse: bool = False):
    """``vtkMRMLTableNode`` with one column per key: ints -> int column, numbers -> double, anything else -> string.

    ``reuse=True`` replaces the columns of an existing same-named table node instead of adding a new node.
    """
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"table {name!r} columns have different lengths {lengths}; give every column the same length")
    node = find_node(scene, name, "vtkMRMLTableNode") if reuse else None
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    else:
        node.RemoveAllColumns()
    node.SetAttribute(NODE_ATTRIBUTE, "table")
    table = node.GetTable()
    for col, values in columns.items():
        table.AddColumn(_vtk_column(str(col), list(values)))
    node.Modified()
    return node


def table_to_dict(node) -> dict[str, list]:
    """Contents of a table node as ``{column name: [python values]}`` (int, float or str)."""
    import vtk

    table = node.GetTable()
    out: dict[str, list] = {}
    for c in range(table.GetNumberOfColumns()):
        col = table.GetColumn(c)
        n = col.GetNumberOfValues() if isinstance(col, vtk.vtkStringArray) else col.GetNumberOfTuples()
        if isinstance(col, vtk.vtkStringArray):
            vals = [col.GetValue(i) for i in range(n)]
        elif col.GetDataType() in (vtk.VTK_FLOAT, vtk.VTK_DOUBLE):
            vals = [float(col.GetValue(i)) for i in range(n)]
        else:
            vals = [int(col.GetValue(i)) for i in range(n)]
        out[table.GetColumnName(c)] = vals
    return out


# ------------------------------------------------------------------------------------------------------------- plots
def _step_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Post-step (Kaplan-Meier style) polyline: y[i] holds on [x[i], x[i+1]) and drops at x[i+1].

    vtkMRMLPlotSeriesNode has no step curve style, so the steps are drawn as a line through duplicated points; this
    renders identically in Slicer's plot view and in any exported table.
    """
    if len(x) < 2:
        return x, y
    xs = np.repeat(x, 2)[1:]
    ys = np.repeat(y, 2)[:-1]
    return xs, ys


def _lighter(color: Sequence[float], amount: float = 0.45) -> tuple[float, float, float]:
    c = np.asarray(color, dtype=float)[:3]
    return tuple(float(v) for v in c + (1.0 - c) * amount)


def hex_to_rgb(color: str) -> tuple[float, float, float]:
    """``"#1f77b4"`` -> ``(0.12, 0.47, 0.71)`` (the regimen catalogue's colour format)."""
    text = str(color).lstrip("#")
    if len(text) != 6:
        raise ValueError(f"colour {color!r} is not #rrggbb")
    return tuple(int(text[n:n + 2], 16) / 255.0 for n in (0, 2, 4))


def _add_series(scene, chart, table_node, name: str, x_col: str, y_col: str, color, *, band: bool, series=None):
    slicer = _slicer()
    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x_col)
    series.SetYColumnName(y_col)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    if band:
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
        series.SetColor(*_lighter(color))
        series.SetLineWidth(1)
    else:
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetColor(*[float(c) for c in color[:3]])
        series.SetLineWidth(3)
    series.SetAttribute(NODE_ATTRIBUTE, "plot-band" if band else "plot-curve")
    if not chart.HasPlotSeriesNodeID(series.GetID()):
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return series


def add_plot(scene, name: str, series: Sequence[Mapping], x_label: str = "time (months)",
             y_label: str = "probability", title: str | None = None, *, step: bool = False, reuse: bool = False):
    """``vtkMRMLPlotChartNode`` with one solid ``vtkMRMLPlotSeriesNode`` per curve (+ dashed, lighter band series).

    Each entry of ``series`` is ``dict(x, y, name, color=(r, g, b), lower=None, upper=None, step=<step>)``; ``lower``
    and ``upper`` (e.g. a 95% confidence band) add the series ``"<name> lower"`` / ``"<name> upper"``. With ``step``
    (survival curves) every curve and band is drawn as a post-step line. Each curve is backed by one table node
    (``"<chart name> <curve name> table"``, columns ``x``, ``y`` and optionally ``lower``, ``upper``), so the data can
    be exported from Slicer.

    ``reuse=True`` updates the same-named chart in place: series and tables are re-used by name, and the chart's
    series (and their tables) that are no longer asked for are removed from the scene, so nothing is duplicated or
    left orphaned when the curves shown change (e.g. another regimen selection).
    """
    chart = find_node(scene, name, "vtkMRMLPlotChartNode") if reuse else None
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetAttribute(NODE_ATTRIBUTE, "plot-chart")
    chart.SetTitle(title or name)
    chart.SetXAxisTitle(x_label)
    chart.SetYAxisTitle(y_label)
    chart.SetLegendVisibility(True)
    old_series = {node.GetName(): node for node in plot_series_nodes(chart)} if reuse else {}
    old_tables = {node.GetTableNode().GetID(): node.GetTableNode() for node in old_series.values()
                  if node.GetTableNode() is not None}
    default_colors = [(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
                      (0.58, 0.40, 0.74)]
    kept_series, kept_tables = [], set()
    for n, spec in enumerate(series):
        label = str(spec.get("name", f"series {n + 1}"))
        x = np.asarray(spec["x"], dtype=float)
        y = np.asarray(spec["y"], dtype=float)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"plot series {label!r}: x and y must be 1-D of equal length, got {x.shape}, {y.shape}")
        bands = {k: np.asarray(spec[k], dtype=float) for k in ("lower", "upper") if spec.get(k) is not None}
        for k, v in bands.items():
            if v.shape != x.shape:
                raise ValueError(f"plot series {label!r}: {k} has shape {v.shape}, x has {x.shape}")
        color = spec.get("color") or default_colors[n % len(default_colors)]
        is_step = spec.get("step", step)
        columns = {"x": x, "y": y, **bands}
        if is_step:
            columns = {k: _step_xy(x, v)[1] for k, v in columns.items()}
            columns["x"] = _step_xy(x, x)[0]
        table = add_table(scene, f"{name} {label} table", {k: [float(t) for t in v] for k, v in columns.items()},
                          reuse=reuse)
        table.SetAttribute(NODE_ATTRIBUTE, "plot-table")
        kept_tables.add(table.GetID())
        kept_series.append(_add_series(scene, chart, table, label, "x", "y", color, band=False,
                                       series=old_series.get(label)))
        for k in bands:
            kept_series.append(_add_series(scene, chart, table, f"{label} {k}", "x", k, color, band=True,
                                           series=old_series.get(f"{label} {k}")))
    if reuse:
        kept_ids = {node.GetID() for node in kept_series}
        for node in old_series.values():
            if node.GetID() not in kept_ids:
                chart.RemovePlotSeriesNodeID(node.GetID())
                scene.RemoveNode(node)
        for table_id, table in old_tables.items():
            if table_id not in kept_tables and table.GetScene() is scene:
                _remove_with_extras(scene, table)
        # keep the chart's series in the order asked for (legend order = regimen order)
        if [chart.GetNthPlotSeriesNodeID(i) for i in range(chart.GetNumberOfPlotSeriesNodes())] != [
                node.GetID() for node in kept_series]:
            chart.RemoveAllPlotSeriesNodeIDs()
            for node in kept_series:
                chart.AddAndObservePlotSeriesNodeID(node.GetID())
    return chart


def _remove_with_extras(scene, node) -> None:
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    scene.RemoveNode(node)
    if storage is not None and storage.GetScene() is scene:
        scene.RemoveNode(storage)


def plot_series_nodes(chart) -> list:
    """The plot series nodes of a chart, in order."""
    scene = chart.GetScene()
    return [scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(i)) for i in range(chart.GetNumberOfPlotSeriesNodes())]
