"""TwinResult -> MRML nodes: volumes, editable segmentation, follow-up sequences, result table, linked layout.

The same function serves the Slicer module (``slicer.mrmlScene`` + its logics) and headless use (HeadlessSlicer).
Node names start with ``HCCTwin <patient>`` so a re-run updates its own nodes; a segmentation the user corrected is
passed in (``segmentation_node``) and never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import layout as L
from .nodes import add_segmentation, add_sequence, add_table, add_volume


@dataclass
class SceneNodes:
    """IDs of the nodes :func:`show_result` made or used."""

    pre: dict[str, str] = field(default_factory=dict)
    segmentation: str | None = None
    real_followup: dict[str, str] = field(default_factory=dict)
    virtual_sequences: dict[str, str] = field(default_factory=dict)
    virtual_browsers: dict[str, str] = field(default_factory=dict)
    virtual_proxies: dict[str, str] = field(default_factory=dict)
    table: str | None = None
    views_assigned: bool = False


def _prefix(result) -> str:
    return f"HCCTwin {result.case.patient_id}"


def results_table_columns(result) -> dict[str, list]:
    """Rows of the results table: clinical scores, eligibility warnings per regimen, volumes."""
    names, values = [], []
    for key, value in result.scores.items():
        if key != "notes":
            names.append(key)
            values.append(str(value))
    for rid in result.regimens:
        warnings = result.eligibility.get(rid, [])
        names.append(f"eligibility {rid}")
        values.append("; ".join(warnings) if warnings else "no warning")
    for key, ml in result.label_volumes_ml.items():
        names.append(f"volume {key} (mL)")
        values.append(f"{ml:.1f}")
    return {"item": names, "value": values}


def show_result(scene, result, *, segmentations_logic, sequences_logic=None, layout_node=None,
                segmentation_node=None, display_phase: str = "portal") -> SceneNodes:
    """Put ``result`` into ``scene`` and arrange the "pre | real | virtual" layout when its views exist."""
    case = result.case
    prefix = _prefix(result)
    ids = SceneNodes()
    for phase, array in case.phases.items():
        ids.pre[phase] = add_volume(scene, array, case.geometry, f"{prefix} pre {phase}").GetID()
    reference = scene.GetNodeByID(ids.pre.get(display_phase) or next(iter(ids.pre.values())))
    if segmentation_node is not None:
        ids.segmentation = segmentation_node.GetID()
    elif case.labels is not None:
        seg = add_segmentation(scene, segmentations_logic, case.labels, case.geometry, f"{prefix} segmentation",
                               reference_volume=reference, reuse=True)
        ids.segmentation = seg.GetID()
    if result.real_followup is not None:
        fu = result.real_followup
        for phase, array in fu.phases.items():
            name = f"{prefix} real follow-up w{fu.weeks:02d} {phase}"
            ids.real_followup[phase] = add_volume(scene, array, case.geometry, name).GetID()
    for regimen, by_week in result.followups.items():
        weeks = sorted(by_week)
        if not weeks:
            continue
        arrays = [by_week[w].phases[display_phase] for w in weeks]
        seq, browser = add_sequence(scene, arrays, case.geometry, f"{prefix} virtual {regimen}", weeks,
                                    index_name="time", index_unit="week", sequences_logic=sequences_logic)
        ids.virtual_sequences[regimen] = seq.GetID()
        ids.virtual_browsers[regimen] = browser.GetID()
        proxy = browser.GetProxyNode(seq)
        if proxy is not None:
            ids.virtual_proxies[regimen] = proxy.GetID()
    ids.table = add_table(scene, f"{prefix} results", results_table_columns(result)).GetID()
    if layout_node is not None:
        L.register_layouts(layout_node)
        layout_node.SetViewArrangement(L.HCCTWIN_LAYOUT_ID)
    ids.views_assigned = assign_compare_views(scene, ids, display_phase)
    return ids


def assign_compare_views(scene, ids: SceneNodes, display_phase: str = "portal", regimen: str | None = None) -> bool:
    """Show pre / real / virtual in the three linked views, if those views exist (after the layout was shown)."""
    try:
        for name in L.COMPARE_VIEWS:
            L.slice_node(scene, name)
    except (KeyError, LookupError, ValueError, RuntimeError):
        return False
    pre = ids.pre.get(display_phase) or next(iter(ids.pre.values()))
    real = ids.real_followup.get(display_phase)
    virtual = ids.virtual_proxies.get(regimen) if regimen else next(iter(ids.virtual_proxies.values()), None)
    L.assign_volumes(scene, {L.PRE_VIEW: pre, L.REAL_VIEW: real, L.VIRTUAL_VIEW: virtual},
                     segmentations={L.PRE_VIEW: ids.segmentation, L.REAL_VIEW: None, L.VIRTUAL_VIEW: None})
    L.link_slice_views(scene, L.COMPARE_VIEWS)
    return True
