"""MRML scene bridge: engine results (numpy + :class:`~HCCTwinLib.cases.Geometry`) -> Slicer nodes, layouts, views.

The only package of HCCTwinLib that imports ``slicer`` (lazily, inside functions or its own modules), so
``import HCCTwinLib.scene`` works without Slicer. All functions take the scene and the module logics as arguments:

* in 3D Slicer: ``scene=slicer.mrmlScene``, ``segmentations_logic=slicer.modules.segmentations.logic()``,
  ``sequences_logic=slicer.modules.sequences.logic()``, ``app_logic=slicer.app.applicationLogic()``;
* headless (CI, batch): :class:`~HCCTwinLib.scene.headless.HeadlessSlicer` (slicer-core + trame-slicer) provides the
  same objects, plus offscreen slice views for :mod:`HCCTwinLib.scene.render`.

Modules: ``nodes`` (volumes, segmentations, sequences, tables, plots), ``layout`` (layouts, linked views),
``render`` (offscreen PNGs), ``headless``.
"""
