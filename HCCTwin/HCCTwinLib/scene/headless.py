"""A Slicer scene without the Slicer application, for CI and batch use (tests, ``hcctwin report``).

Built on ``trame_slicer.core.SlicerApp`` (pip packages ``slicer-core``, ``trame-slicer``, ``slicer-layer-dm``): an
MRML scene, the application logic, the Volumes/Segmentations/... module logics and a view manager. This adds the
Sequences module logic (without it ``vtkMRMLSequenceBrowserNode`` is not registered) and offscreen slice views.

Inside 3D Slicer do not use this: pass ``slicer.mrmlScene`` and ``slicer.modules.<module>.logic()`` to the
functions of :mod:`HCCTwinLib.scene` instead. Offscreen rendering needs no display: VTK falls back to its EGL (or
OSMesa) render window by itself.

One application per process at a time is the tested use: Slicer's displayable-manager factories are process-wide
singletons that point at the most recently created application logic.
"""

from __future__ import annotations


class HeadlessSlicer:
    """Headless Slicer core: ``.scene``, ``.app_logic``, ``.segmentations_logic``, ``.sequences_logic``,
    ``.volumes_logic``, ``.view_manager`` and :meth:`slice_view` for offscreen slice views."""

    def __init__(self, share_directory: str | None = None, quiet: bool = True):
        import slicer
        from trame_slicer.core import SlicerApp

        if quiet:
            _quiet_vtk_warnings()

        self.app = SlicerApp(share_directory)
        self.scene = self.app.scene
        self.app_logic = self.app.app_logic
        self.segmentations_logic = self.app.segmentations_logic
        self.volumes_logic = self.app.volumes_logic
        self.view_manager = self.app.view_manager
        self.sequences_logic = self.app.register_module_logic(slicer.vtkSlicerSequencesLogic())
        self._factory = None

    def _ensure_factory(self):
        if self._factory is None:
            from trame_slicer.views import DirectViewFactory

            self._factory = DirectViewFactory(do_render_offscreen=True)
            self.view_manager.register_factory(self._factory)
        return self._factory

    def slice_view(self, name: str, *, orientation: str = "Axial", group: int = 1, label: str | None = None,
                   color: str | None = None):
        """Create (or return) the offscreen trame-slicer ``SliceView`` called ``name``.

        Its slice node has singleton tag/layout name ``name``, as the views that Slicer's layout manager creates from
        :mod:`HCCTwinLib.scene.layout`'s XML, so the layout functions work on both.
        """
        from trame_slicer.views import ViewLayoutDefinition, ViewProps, ViewType

        self._ensure_factory()
        if self.view_manager.is_view_created(name):
            return self.view_manager.get_view(name)
        definition = ViewLayoutDefinition(name, ViewType.SLICE_VIEW,
                                          ViewProps(label=label or name, orientation=orientation, color=color,
                                                    group=group))
        view = self.view_manager.create_view(definition)
        if view is None:
            raise RuntimeError(f"could not create the offscreen slice view {name!r}")
        return view

    def slice_views(self, names, **kwargs) -> list:
        return [self.slice_view(n, **kwargs) for n in names]

    def clear(self) -> None:
        """Remove all data nodes; the views stay (empty) and can be reused."""
        views = self._quiet_views()
        self.scene.Clear(False)
        for view in views:
            view.set_render_blocked(False)

    def _quiet_views(self) -> list:
        """Block rendering and detach all layers from the slice views.

        Slice views render directly on every change; rendering while the volumes they show are being removed makes
        VTK log spurious "No LookupTable" / "Component 1 is not in input" / "vtkImageBlend has 0 connections" errors.
        """
        views = list(self.view_manager.get_views()) if self._factory is not None else []
        for view in views:
            view.set_render_blocked(True)
        coll = self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        for i in range(coll.GetNumberOfItems()):
            comp = coll.GetItemAsObject(i)
            comp.SetBackgroundVolumeID(None)
            comp.SetForegroundVolumeID(None)
            comp.SetLabelVolumeID(None)
        # a slice layer whose volume is removed keeps its reslice filters connected to the old voxels, and the views
        # outlive close() (VTK observer cycles): disconnect them, or every closed app keeps the last shown volumes
        logics = self.app_logic.GetSliceLogics() if views else None
        for i in range(logics.GetNumberOfItems() if logics is not None else 0):
            logic = logics.GetItemAsObject(i)
            for layer in (logic.GetBackgroundLayer(), logic.GetForegroundLayer(), logic.GetLabelLayer()):
                for reslice in (layer.GetReslice(), layer.GetResliceUVW()) if layer is not None else ():
                    if reslice is not None:
                        reslice.RemoveAllInputConnections(0)
        # likewise a segmentation shown in a view stays referenced by its 2D pipeline: empty it (the nodes go anyway)
        segs = self.scene.GetNodesByClass("vtkMRMLSegmentationNode") if views else None
        for i in range(segs.GetNumberOfItems() if segs is not None else 0):
            segs.GetItemAsObject(i).GetSegmentation().RemoveAllSegments()
        return views

    def close(self) -> None:
        """Empty the scene and release the offscreen render windows (call once when done)."""
        views = self._quiet_views()
        self.scene.Clear(False)
        for view in views:
            view.finalize()


def create_headless_app(share_directory: str | None = None) -> HeadlessSlicer:
    """Same as ``HeadlessSlicer(share_directory)``."""
    return HeadlessSlicer(share_directory)


def _quiet_vtk_warnings() -> None:
    """Headless, VTK 9.6 warns on every offscreen view ("bad X server connection", "WindowResizeEvent will not be
    generated ..."): harmless for offscreen rendering, and they bury real messages. Errors are still printed."""
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()
    if hasattr(vtk, "vtkLogger"):
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)

