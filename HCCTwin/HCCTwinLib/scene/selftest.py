"""Scene checks shared by the Slicer self-test (``HCCTwinTest``) and the pytest suite (headless, slicer-core).

``run_all`` builds a small case, runs the pipeline, puts the result into the given scene through
:func:`HCCTwinLib.scene.build.show_result` and checks nodes, geometry, segments, table values, sequences, layout and
view linking. It returns ``{check name: error message}`` for the checks that failed (empty when all pass), so both
runners report every failure, not just the first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..cases import Case
from ..labels import LABEL_BY_VALUE
from . import layout as L
from .build import SceneNodes, show_result
from .nodes import array_and_geometry_from_volume, labels_from_segmentation, table_to_dict
from .render import volume_center_ras


def small_case(seed: int = 0) -> tuple[Case, object]:
    """A small simulated patient (pre-treatment case) and its observed 8-week follow-up (``FollowUp``)."""
    from ..demo import default_case

    return default_case(seed=seed, small=True)


def _checks(scene, segmentations_logic, result, ids: SceneNodes, layout_node) -> dict[str, Callable[[], None]]:
    case = result.case

    def volumes():
        for phase, node_id in ids.pre.items():
            node = scene.GetNodeByID(node_id)
            assert node is not None, f"missing volume node for {phase}"
            array, geometry = array_and_geometry_from_volume(node)
            assert geometry.same_grid(case.geometry), f"{phase}: geometry changed in the scene"
            assert np.allclose(array, case.phases[phase]), f"{phase}: voxel values changed in the scene"

    def segmentation():
        seg = scene.GetNodeByID(ids.segmentation)
        assert seg is not None, "no segmentation node"
        present = sorted(int(v) for v in np.unique(case.labels) if v)
        segments = seg.GetSegmentation()
        names = sorted(segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments()))
        assert names == sorted(LABEL_BY_VALUE[v].name for v in present), f"segments {names}"
        back = labels_from_segmentation(scene, segmentations_logic, seg, case.geometry)
        assert np.array_equal(back, case.labels), "segmentation -> labels round trip differs"

    def table():
        rows = table_to_dict(scene.GetNodeByID(ids.table))
        values = dict(zip(rows["item"], rows["value"]))
        assert values.get("bclc") == str(result.scores["bclc"]), "BCLC missing or wrong in the table"
        assert abs(float(values["albi_score"]) - result.scores["albi_score"]) < 1e-6, "ALBI wrong in the table"
        for rid in result.regimens:
            assert f"eligibility {rid}" in values, f"no eligibility row for {rid}"

    def real_followup():
        assert result.real_followup is not None, "the self-test case has an observed follow-up"
        node = scene.GetNodeByID(ids.real_followup["portal"])
        array, geometry = array_and_geometry_from_volume(node)
        assert geometry.same_grid(case.geometry), "real follow-up not on the pre-treatment grid"

    def sequences():
        for regimen, seq_id in ids.virtual_sequences.items():
            seq = scene.GetNodeByID(seq_id)
            weeks = sorted(result.followups[regimen])
            assert seq.GetNumberOfDataNodes() == len(weeks), f"{regimen}: wrong number of time points"
            browser = scene.GetNodeByID(ids.virtual_browsers[regimen])
            for n, week in enumerate(weeks):
                browser.SetSelectedItemNumber(n)
                proxy = browser.GetProxyNode(seq)
                array, _ = array_and_geometry_from_volume(proxy)
                assert np.allclose(array, result.followups[regimen][week].phases["portal"]), f"{regimen} w{week}"

    def layout():
        if layout_node is None:
            return
        assert layout_node.IsLayoutDescription(L.HCCTWIN_LAYOUT_ID), "HCCTwin layout not registered"
        assert layout_node.GetViewArrangement() == L.HCCTWIN_LAYOUT_ID, "HCCTwin layout not selected"
        description = layout_node.GetLayoutDescription(L.HCCTWIN_LAYOUT_ID)
        for name in L.COMPARE_VIEWS:
            assert name in description, f"view {name} missing from the layout"

    def linked_views():
        assert ids.views_assigned, "comparison views were not assigned (views missing)"
        center = volume_center_ras(scene.GetNodeByID(ids.pre["portal"]))
        offsets = L.sync_slice_views(scene, L.COMPARE_VIEWS, center)
        assert len({round(v, 3) for v in offsets.values()}) == 1, f"linked views differ: {offsets}"
        for name in L.COMPARE_VIEWS:
            comp = L.slice_composite_node(scene, name)
            assert comp.GetLinkedControl() == 1, f"{name} not linked"
        assert L.slice_composite_node(scene, L.PRE_VIEW).GetBackgroundVolumeID() == ids.pre["portal"]
        assert L.slice_composite_node(scene, L.REAL_VIEW).GetBackgroundVolumeID() == ids.real_followup["portal"]

    return {"volumes": volumes, "segmentation": segmentation, "table": table, "real_followup": real_followup,
            "sequences": sequences, "layout": layout, "linked_views": linked_views}


def run_all(scene, segmentations_logic, *, layout_node=None, sequences_logic=None, case=None,
            real_followup=None) -> dict[str, str]:
    """Run the pipeline on a small simulated case into ``scene`` and check the result; returns the failures."""
    from ..pipeline import run_case

    if case is None:
        case, real_followup = small_case()
    result = run_case(case, real_followup=real_followup)
    ids = show_result(scene, result, segmentations_logic=segmentations_logic, sequences_logic=sequences_logic,
                      layout_node=layout_node)
    failures = {}
    for name, check in _checks(scene, segmentations_logic, result, ids, layout_node).items():
        try:
            check()
        except Exception as exc:  # collect every failure with its message
            failures[name] = f"{type(exc).__name__}: {exc}"
    return failures
