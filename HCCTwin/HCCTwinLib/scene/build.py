"""TwinResult -> MRML nodes: volumes, editable segmentation, follow-up sequences, survival curves, result tables,
uncertainty overlay and the linked layout.

The same functions serve the Slicer module (``slicer.mrmlScene`` + its logics) and headless use (HeadlessSlicer).
Every node name starts with ``HCCTwin <patient>`` and nodes are re-used by name, so a re-run or a new regimen
selection updates its own nodes instead of adding copies; a segmentation the user corrected is passed in
(``segmentation_node``) and never replaced.

Public API::

    show_result(scene, result, *, segmentations_logic, ...) -> SceneNodes      # everything, after a run
    update_selection(scene, result, regimens, ids=None, ...) -> SceneNodes     # curves, table, views; no model runs
    show_endpoint(scene, ids, "os" | "pfs") -> chart node id                    # which survival chart the plot shows
    set_uncertainty_visible(scene, ids, visible) -> bool                        # per-voxel SD overlay on/off
    find_scene_nodes(scene, result) -> SceneNodes                               # the ids again, from node names

Survival (``result.survival``) and response (``result.response``) are shown as computed by the engine; after a new
regimen selection call :func:`HCCTwinLib.pipeline.update_survival` first, then :func:`update_selection`.

Memory: CT volumes are stored as int16 HU (:func:`image_dtype`); each virtual follow-up is computed straight into
its sequence item (``FollowUp.fill_phase``), the sequence proxies share their item's voxels, and the uncertainty
sequences hold the SD on the grid it was computed on (``FollowUp.std_volume``: the generator's crop grid), so the
scene holds one int16 volume per shown time point and nothing else at full size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..formatting import fmt_ci, fmt_median, fmt_reading, num
from ..survival_result import Metastasis, SurvivalResult
from . import layout as L
from .nodes import (
    NODE_ATTRIBUTE,
    add_plot,
    add_segmentation,
    add_sequence,
    add_synchronized_sequence,
    add_table,
    add_volume,
    find_node,
    hex_to_rgb,
)

ENDPOINTS = {"os": "Overall survival", "pfs": "Progression-free survival"}
#: Colour table of the uncertainty overlay (exists in Slicer and in slicer-core scenes), with a fallback.
UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")
UNCERTAINTY_OPACITY = 0.5
#: Below this fraction of the overlay's top value the uncertainty overlay is transparent (does not darken the CT).
UNCERTAINTY_TRANSPARENT_BELOW = 0.1
#: Regimen whose model the metastasis risk comes from, when the survival output does not say.
METASTASIS_DEFAULT_REGIMEN = "tace_pd1_len"

# results-by-regimen table columns (mRECIST columns are "mRECIST wWW", one per time point)
COL_REGIMEN = "Regimen"
COL_REGIMEN_ID = "Regimen ID"
COL_MEDIAN_OS = "Median OS (95% CI), months"
COL_MEDIAN_PFS = "Median PFS (95% CI), months"
COL_OS12 = "1-year OS (95% CI)"
COL_OS24 = "2-year OS (95% CI)"
COL_RMST24 = "RMST-24 OS (95% CI), months"
COL_METASTASIS = "Metastasis risk (95% CI)"
COL_P_BEST = "Probability best"
COL_RECOMMENDATION = "Recommendation"


@dataclass
class SceneNodes:
    """IDs of the nodes :func:`show_result` made or used, and what the views show now."""

    pre: dict[str, str] = field(default_factory=dict)
    segmentation: str | None = None
    real_followup: dict[str, str] = field(default_factory=dict)
    virtual_sequences: dict[str, str] = field(default_factory=dict)
    virtual_browsers: dict[str, str] = field(default_factory=dict)
    virtual_proxies: dict[str, str] = field(default_factory=dict)
    uncertainty_sequences: dict[str, str] = field(default_factory=dict)
    uncertainty_proxies: dict[str, str] = field(default_factory=dict)
    table: str | None = None
    survival_table: str | None = None
    charts: dict[str, str] = field(default_factory=dict)
    regimens_shown: list[str] = field(default_factory=list)
    endpoint: str = "os"
    uncertainty_visible: bool = False
    display_phase: str = "portal"
    virtual_regimen: str | None = None
    views_assigned: bool = False


def image_dtype(case) -> np.dtype:
    """Voxel type of the image volumes put into the scene: int16 for CT (whole HU, within 0.5 HU of the engine's
    float32, half the memory), float32 otherwise (MR intensities keep their scale)."""
    return np.dtype(np.int16 if str(getattr(case, "modality", "CT")).upper() == "CT" else np.float32)


def _voxels(volume_node) -> np.ndarray | None:
    """The node's voxels as a numpy view (no copy), or None."""
    import slicer

    return slicer.util.arrayFromVolume(volume_node) if volume_node.GetImageData() is not None else None


def _prefix(result) -> str:
    return f"HCCTwin {result.case.patient_id}"


def node_names(result, display_phase: str = "portal") -> dict[str, str]:
    """Names of the per-case nodes (not per regimen): tables and survival charts."""
    prefix = _prefix(result)
    return {"table": f"{prefix} results", "survival_table": f"{prefix} survival by regimen",
            **{f"chart_{e}": f"{prefix} {e.upper()}" for e in ENDPOINTS}}


# ------------------------------------------------------------------------------------------------------ formatting
def _catalogue() -> Mapping:
    from ..regimens import load_catalogue

    try:
        return load_catalogue()
    except Exception:  # noqa: BLE001 - names and colours are cosmetic; a broken catalogue is reported elsewhere
        return {}


def regimen_label(regimen_id: str, catalogue: Mapping | None = None) -> str:
    """Short display name of a regimen (catalogue ``short_name``), or its id when the catalogue lacks it."""
    catalogue = _catalogue() if catalogue is None else catalogue
    entry = catalogue.get(regimen_id)
    return getattr(entry, "short_name", None) or regimen_id


def regimen_color(regimen_id: str, catalogue: Mapping | None = None) -> tuple[float, float, float] | None:
    """Catalogue colour of a regimen as RGB in 0..1, or None (then the plot picks a default colour)."""
    catalogue = _catalogue() if catalogue is None else catalogue
    entry = catalogue.get(regimen_id)
    try:
        return hex_to_rgb(entry.color) if entry is not None and getattr(entry, "color", None) else None
    except ValueError:
        return None


#: banner colours of the out-of-domain guard's verdicts (text, background, border)
DOMAIN_BANNER_STYLE = {"outside": ("#7f0000", "#ffebee", "#c62828"), "caution": ("#6d3a00", "#fff3e0", "#ef6c00")}


def domain_banner(verdict) -> tuple[str, str]:
    """``(rich text, Qt style sheet)`` of the module's banner for the guard's verdict
    (:class:`HCCTwinLib.domain.DomainVerdict` or its ``to_dict()``); ``("", "")`` when inside or unknown."""
    if verdict is None:
        return "", ""
    d = verdict if isinstance(verdict, Mapping) else verdict.to_dict()
    kind = str(d.get("verdict") or "")
    if kind not in DOMAIN_BANNER_STYLE:
        return "", ""
    import html

    fg, bg, border = DOMAIN_BANNER_STYLE[kind]
    reasons = "".join(f"<br>&bull; {html.escape(str(r))}" for r in d.get("reasons") or [])
    text = f"<b>&#9888; {html.escape(kind.upper())}</b>: {html.escape(str(d.get('headline') or ''))}{reasons}"
    style = f"QLabel {{ color: {fg}; background-color: {bg}; border: 1px solid {border}; padding: 6px; }}"
    return text, style


def results_table_columns(result) -> dict[str, list]:
    """Rows of the case table: clinical scores, eligibility warnings per regimen, volumes."""
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
    check = getattr(result, "twin_check", None)
    if check is not None:  # the real follow-up against the virtual one and the unchanged scan (twincheck)
        head = f"twin check w{check.week} ({check.regimen})"
        names.append(head)
        values.append(f"virtual follow-up {check.verdict}")
        for phase, mae in check.hu_mae_virtual.items():
            names.append(f"{head}: mean |HU diff| {phase}, virtual / unchanged")
            values.append(f"{mae:.0f} / {check.hu_mae_copy.get(phase, float('nan')):.0f}")
        if check.viable_ml.get("real") is not None:
            names.append(f"{head}: viable mL real / virtual / before")
            values.append(" / ".join(f"{check.viable_ml[k]:.1f}" for k in ("real", "virtual", "pre-treatment")))
    return {"item": names, "value": values}


def response_weeks(result, regimens: Sequence[str]) -> list[int]:
    """Time points (weeks) with a response reading for any of ``regimens`` (the run's weeks when none)."""
    weeks = set()
    for r in regimens:
        for key in (result.response.get(r) or {}):
            if isinstance(key, str) and key.startswith("w") and key[1:].isdigit():
                weeks.add(int(key[1:]))
    return sorted(weeks) or sorted(int(w) for w in result.weeks)


def survival_table_columns(result, regimens: Sequence[str] | None = None) -> dict[str, list]:
    """One row per regimen: median OS / PFS, 1- and 2-year OS, RMST-24 (with 95% CIs), mRECIST of the virtual
    follow-up per time point, metastasis risk, probability of being best and the recommendation.

    Values come from ``result.survival`` (and ``result.response``) as they are; "n/a" where the engine gave none.
    The metastasis model is fitted for TACE + PD-1 + lenvatinib only (``survival["metastasis"]["applies_to"]``):
    other regimens read "n/a (<regimen> model only)"; the TACE row adds the risk updated at the last landmark from
    the response of its follow-up (``survival["metastasis"]["landmark"]``) when there is one.
    """
    regimens = list(result.regimens if regimens is None else regimens)
    catalogue = _catalogue()
    survival = SurvivalResult.of(result.survival)
    os_curves, pfs_curves = survival.curves("os"), survival.curves("pfs")
    rec = survival.recommendation
    p_best = rec.probability_best if rec is not None else {}
    chosen = rec.chosen_among if rec is not None else None
    meta = survival.metastasis
    weeks = response_weeks(result, regimens)
    cols: dict[str, list] = {COL_REGIMEN: [], COL_REGIMEN_ID: [], COL_MEDIAN_OS: [], COL_MEDIAN_PFS: [], COL_OS12: [],
                             COL_OS24: [], COL_RMST24: []}
    for w in weeks:
        cols[f"mRECIST w{w:02d}"] = []
    metastasis_col = COL_METASTASIS
    if meta is not None and num(meta.horizon_months) is not None:
        metastasis_col = f"Metastasis risk {num(meta.horizon_months):g} mo (95% CI)"
    cols[metastasis_col] = []
    cols[COL_P_BEST] = []
    cols[COL_RECOMMENDATION] = []
    for r in regimens:
        cols[COL_REGIMEN].append(regimen_label(r, catalogue))
        cols[COL_REGIMEN_ID].append(r)
        o, p = os_curves.get(r), pfs_curves.get(r)
        cols[COL_MEDIAN_OS].append(fmt_median(o) if o is not None and o.survival else "n/a")
        cols[COL_MEDIAN_PFS].append(fmt_median(p) if p is not None and p.survival else "n/a")
        cols[COL_OS12].append(fmt_ci(o.s12, o.s12_ci, "pct") if o is not None else "n/a")
        cols[COL_OS24].append(fmt_ci(o.s24, o.s24_ci, "pct") if o is not None else "n/a")
        cols[COL_RMST24].append(fmt_ci(o.rmst24, o.rmst24_ci) if o is not None else "n/a")
        by_week = result.response.get(r) or {}
        for w in weeks:
            reading = by_week.get(f"w{w:02d}")
            cols[f"mRECIST w{w:02d}"].append(fmt_reading(reading))
        cols[metastasis_col].append(_metastasis_text(meta, r, catalogue))
        cols[COL_P_BEST].append(float(p_best[r]) if num(p_best.get(r)) is not None else float("nan"))
        if rec is not None and rec.regimen == r:
            cols[COL_RECOMMENDATION].append("recommended")
        elif chosen is not None and r not in chosen and r in os_curves:
            cols[COL_RECOMMENDATION].append("not eligible (see warnings)")
        else:
            cols[COL_RECOMMENDATION].append("")
    return cols


def _metastasis_text(meta: Metastasis | None, regimen: str, catalogue: Mapping) -> str:
    if meta is None:
        return "n/a"
    by_regimen = meta.by_regimen
    if by_regimen is not None and isinstance(by_regimen.get(regimen), Mapping):
        m = by_regimen[regimen]
        return fmt_ci(m.get("risk"), [m.get("lower"), m.get("upper")], "pct")
    applies = meta.applies_to or METASTASIS_DEFAULT_REGIMEN
    if regimen == applies:
        text = fmt_ci(meta.risk, [meta.lower, meta.upper], "pct")
        landmark = meta.landmark
        if landmark:  # the latest update from the (virtual or real) follow-up
            key = max(landmark)
            m = landmark[key]
            text += f"; {key} ({m.source or 'virtual'}): {fmt_ci(m.risk, [m.lower, m.upper], 'pct')}"
        return text
    return f"n/a ({regimen_label(applies, catalogue)} model only)"


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in (values or [])], dtype=float)


def survival_series(result, regimens: Sequence[str], endpoint: str = "os") -> list[dict]:
    """Plot series (see :func:`~HCCTwinLib.scene.nodes.add_plot`) of ``endpoint`` for the regimens that have a curve:
    the step curve and its 95% band, named by the regimen's short name and coloured by the catalogue."""
    catalogue = _catalogue()
    curves = SurvivalResult.of(result.survival).curves(endpoint)
    out = []
    for r in regimens:
        curve = curves.get(r)
        if curve is None or not curve.has_points:
            continue
        spec = {"x": _floats(curve.times), "y": _floats(curve.survival), "name": regimen_label(r, catalogue),
                "color": regimen_color(r, catalogue), "step": True, "regimen": r}
        for key in ("lower", "upper"):
            band = _floats(getattr(curve, key))
            if band.shape == spec["x"].shape and np.isfinite(band).any():
                spec[key] = band
        out.append(spec)
    return out


# ------------------------------------------------------------------------------------------------------ the scene
def show_result(scene, result, *, segmentations_logic, sequences_logic=None, layout_node=None,
                segmentation_node=None, display_phase: str = "portal", regimens: Sequence[str] | None = None,
                endpoint: str = "os", show_uncertainty: bool = False,
                layout_id: int = L.HCCTWIN_PLOT_LAYOUT_ID) -> SceneNodes:
    """Put ``result`` into ``scene``: pre-treatment volumes, the (editable) segmentation, the real follow-up, one
    browsable sequence of virtual follow-ups per regimen (with a synchronized uncertainty sequence when the
    follow-ups carry ``std``), the case table, the survival table and OS / PFS charts for ``regimens`` (default all
    of ``result.regimens``), then arrange ``layout_id`` (default "pre | real | virtual" over the plot) and assign the
    linked views when they exist. Re-running on the same patient re-uses the nodes by name.

    The nodes are made inside a scene batch-processing state (as Slicer does when it loads a scene), so views and
    logics update once at the end instead of after every node.
    """
    scene.StartState(scene.BatchProcessState)
    try:
        return _show_result(scene, result, segmentations_logic=segmentations_logic, sequences_logic=sequences_logic,
                            layout_node=layout_node, segmentation_node=segmentation_node,
                            display_phase=display_phase, regimens=regimens, endpoint=endpoint,
                            show_uncertainty=show_uncertainty, layout_id=layout_id)
    finally:
        scene.EndState(scene.BatchProcessState)


def _show_result(scene, result, *, segmentations_logic, sequences_logic, layout_node, segmentation_node,
                 display_phase, regimens, endpoint, show_uncertainty, layout_id) -> SceneNodes:
    case = result.case
    prefix = _prefix(result)
    names = node_names(result)
    ids = SceneNodes(display_phase=display_phase, endpoint=endpoint, uncertainty_visible=bool(show_uncertainty))
    dtype = image_dtype(case)
    for phase, array in case.phases.items():
        ids.pre[phase] = add_volume(scene, array, case.geometry, f"{prefix} pre {phase}", dtype=dtype).GetID()
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
            ids.real_followup[phase] = add_volume(scene, array, case.geometry, name, dtype=dtype).GetID()
    for regimen, by_week in result.followups.items():
        weeks = sorted(by_week)
        if not weeks:
            continue
        phase = display_phase if all(display_phase in by_week[w].phases for w in weeks) else next(
            iter(by_week[weeks[0]].phases))
        # each follow-up is computed straight into its sequence item (no full-size copy in between), starting from
        # the input volume just stored the same way
        pre_node = scene.GetNodeByID(ids.pre[phase]) if phase in ids.pre else None
        rounded = _voxels(pre_node) if pre_node is not None else None
        fills = [functools.partial(by_week[w].fill_phase, phase, rounded_input=rounded) for w in weeks]
        seq, browser = add_sequence(scene, fills, case.geometry, f"{prefix} virtual {regimen}", weeks,
                                    index_name="time", index_unit="week", sequences_logic=sequences_logic,
                                    reuse=True, dtype=dtype)
        ids.virtual_sequences[regimen] = seq.GetID()
        ids.virtual_browsers[regimen] = browser.GetID()
        std_phase = phase if all(phase in by_week[w].std for w in weeks) else next(
            (p for p in by_week[weeks[0]].std if all(p in by_week[w].std for w in weeks)), None)
        if std_phase is not None:
            # the SD at the resolution it was computed on (the generator's crop grid: small at any input size)
            stds, grids = zip(*(by_week[w].std_volume(std_phase, case.geometry) for w in weeks))
            top = float(max(np.percentile(s, 99.5) for s in stds)) or 1.0
            std_seq = add_synchronized_sequence(scene, browser, list(stds), list(grids),
                                                f"{prefix} uncertainty {regimen}", weeks,
                                                sequences_logic=sequences_logic, reuse=True,
                                                window_level=(top, top / 2), color_node_id=_uncertainty_color(scene))
            del stds
            ids.uncertainty_sequences[regimen] = std_seq.GetID()
        del rounded, fills
        _refresh_proxies(scene, ids, regimen)
        if regimen in ids.uncertainty_proxies:
            style_uncertainty_display(scene.GetNodeByID(ids.uncertainty_proxies[regimen]), top)
    ids.table = add_table(scene, names["table"], results_table_columns(result), reuse=True).GetID()
    if layout_node is not None:
        L.register_layouts(layout_node)
        layout_node.SetViewArrangement(int(layout_id))
    return update_selection(scene, result, result.regimens if regimens is None else regimens, ids)


def update_selection(scene, result, regimens: Sequence[str], ids: SceneNodes | None = None, *,
                     endpoint: str | None = None, show_uncertainty: bool | None = None,
                     display_phase: str | None = None) -> SceneNodes:
    """Show another regimen selection without running any model: the survival table rows, the OS/PFS curves and
    which virtual follow-up the views show follow ``regimens``. Nodes are re-used by name (curves and rows of
    regimens no longer chosen are removed; virtual sequences of all regimens stay in the scene, only the views
    change). Call :func:`HCCTwinLib.pipeline.update_survival` first so ``result.survival`` matches ``regimens``.
    ``ids`` defaults to :func:`find_scene_nodes`; returns the updated ids. The survival table is made once there is
    something to show in it (survival or a response reading); until then ``ids.survival_table`` is None.
    """
    ids = find_scene_nodes(scene, result, display_phase or "portal") if ids is None else ids
    if display_phase is not None:
        ids.display_phase = display_phase
    if endpoint is not None:
        ids.endpoint = endpoint
    if show_uncertainty is not None:
        ids.uncertainty_visible = bool(show_uncertainty)
    ids.regimens_shown = list(dict.fromkeys(regimens))
    names = node_names(result)
    has_content = bool(result.survival) or any(result.response.get(r) for r in ids.regimens_shown)
    if has_content or find_node(scene, names["survival_table"], "vtkMRMLTableNode") is not None:
        ids.survival_table = add_table(scene, names["survival_table"],
                                       survival_table_columns(result, ids.regimens_shown), reuse=True).GetID()
    for key, title in ENDPOINTS.items():
        chart = add_plot(scene, names[f"chart_{key}"], survival_series(result, ids.regimens_shown, key),
                         x_label="months since treatment start", y_label=f"{title.lower()} probability",
                         title=f"{title} by regimen (dashed: 95% CI)", step=True, reuse=True)
        chart.SetAttribute(NODE_ATTRIBUTE + ".endpoint", key)
        ids.charts[key] = chart.GetID()
    show_endpoint(scene, ids, ids.endpoint)
    L.show_table(scene, ids.survival_table or ids.table)
    ids.virtual_regimen = pick_virtual_regimen(result, ids)
    ids.views_assigned = assign_compare_views(scene, ids, ids.display_phase, ids.virtual_regimen)
    return ids


def pick_virtual_regimen(result, ids: SceneNodes) -> str | None:
    """The regimen the virtual view shows: the first chosen regimen (check-box order) with virtual follow-ups, or
    None when no chosen regimen has any. (The recommendation is marked in the table; the "regimen A | regimen B"
    layout shows the first two side by side.)"""
    return next((r for r in ids.regimens_shown if r in ids.virtual_proxies), None)


def show_endpoint(scene, ids: SceneNodes, endpoint: str) -> str | None:
    """Show the OS (``"os"``) or PFS (``"pfs"``) chart in the HCCTwin plot view; returns the chart node id."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint {endpoint!r}: expected one of {', '.join(ENDPOINTS)}")
    ids.endpoint = endpoint
    chart_id = ids.charts.get(endpoint)
    if chart_id is not None:
        L.show_chart(scene, chart_id)
    return chart_id


def set_uncertainty_visible(scene, ids: SceneNodes, visible: bool) -> bool:
    """Show (or hide) the per-voxel standard deviation of the virtual follow-up as a foreground overlay on the
    virtual (and regimen) views. Returns whether an overlay is now shown (False when the run has no uncertainty)."""
    ids.uncertainty_visible = bool(visible)
    ids.views_assigned = assign_compare_views(scene, ids, ids.display_phase, ids.virtual_regimen)
    return bool(visible) and ids.virtual_regimen in ids.uncertainty_proxies


def assign_compare_views(scene, ids: SceneNodes, display_phase: str = "portal", regimen: str | None = None) -> bool:
    """Show pre / real / virtual in the three linked views, if those views exist (after the layout was shown), and
    the first two chosen regimens in the "regimen A | regimen B" views when those exist. The uncertainty overlay is
    the foreground layer of the virtual views when ``ids.uncertainty_visible`` (none otherwise)."""
    try:
        for name in L.COMPARE_VIEWS:
            L.slice_node(scene, name)
    except (KeyError, LookupError, ValueError, RuntimeError):
        return False
    pre = ids.pre.get(display_phase) or next(iter(ids.pre.values()), None)
    real = ids.real_followup.get(display_phase) or next(iter(ids.real_followup.values()), None)
    if regimen is None:
        regimen = next((r for r in ids.regimens_shown if r in ids.virtual_proxies), None)
    virtual = ids.virtual_proxies.get(regimen) if regimen else None

    def overlay(r):
        return ids.uncertainty_proxies.get(r) if (r and ids.uncertainty_visible) else None

    L.assign_volumes(scene, {L.PRE_VIEW: pre, L.REAL_VIEW: real, L.VIRTUAL_VIEW: virtual},
                     foregrounds={L.PRE_VIEW: None, L.REAL_VIEW: None, L.VIRTUAL_VIEW: overlay(regimen)},
                     segmentations={L.PRE_VIEW: ids.segmentation, L.REAL_VIEW: None, L.VIRTUAL_VIEW: None},
                     foreground_opacity=UNCERTAINTY_OPACITY)
    L.link_slice_views(scene, L.COMPARE_VIEWS)
    pair = [r for r in ids.regimens_shown if r in ids.virtual_proxies][:2]
    try:
        for name in L.REGIMEN_VIEWS:
            L.slice_composite_node(scene, name)
    except ValueError:
        return True
    regimen_views = dict(zip(L.REGIMEN_VIEWS, pair + [None] * (2 - len(pair))))
    L.assign_volumes(scene, {v: ids.virtual_proxies.get(r) if r else None for v, r in regimen_views.items()},
                     foregrounds={v: overlay(r) for v, r in regimen_views.items()},
                     foreground_opacity=UNCERTAINTY_OPACITY)
    L.link_slice_views(scene, L.REGIMEN_VIEWS)
    return True


def style_uncertainty_display(volume_node, top: float) -> None:
    """Display of an uncertainty (per-voxel SD) volume as an overlay: heat colours over 0..``top``, transparent below
    :data:`UNCERTAINTY_TRANSPARENT_BELOW` x ``top`` so certain regions show the CT unchanged."""
    scene = volume_node.GetScene()
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    color = _uncertainty_color(scene) if scene is not None else None
    if color is not None:
        display.SetAndObserveColorNodeID(color)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(float(top), float(top) / 2)
    display.AutoThresholdOff()
    display.SetThreshold(float(top) * UNCERTAINTY_TRANSPARENT_BELOW, 1e30)
    display.ApplyThresholdOn()


def _uncertainty_color(scene) -> str | None:
    return next((c for c in UNCERTAINTY_COLOR_NODE_IDS if scene.GetNodeByID(c) is not None), None)


def _refresh_proxies(scene, ids: SceneNodes, regimen: str) -> None:
    browser = scene.GetNodeByID(ids.virtual_browsers[regimen])
    seq = scene.GetNodeByID(ids.virtual_sequences[regimen])
    proxy = browser.GetProxyNode(seq) if browser is not None and seq is not None else None
    if proxy is not None:
        ids.virtual_proxies[regimen] = proxy.GetID()
    std_id = ids.uncertainty_sequences.get(regimen)
    std_proxy = browser.GetProxyNode(scene.GetNodeByID(std_id)) if std_id and browser is not None else None
    if std_proxy is not None:
        ids.uncertainty_proxies[regimen] = std_proxy.GetID()
        std_proxy.SetAttribute(NODE_ATTRIBUTE, "uncertainty")


def find_scene_nodes(scene, result, display_phase: str = "portal") -> SceneNodes:
    """The :class:`SceneNodes` of a scene that :func:`show_result` filled for ``result``, found by node names
    (e.g. after the module was reloaded). Views are not changed."""
    prefix = _prefix(result)
    names = node_names(result)
    ids = SceneNodes(display_phase=display_phase)

    def node_id(name, class_name):
        node = find_node(scene, name, class_name)
        return node.GetID() if node is not None else None

    for phase in result.case.phases:
        if (i := node_id(f"{prefix} pre {phase}", "vtkMRMLScalarVolumeNode")) is not None:
            ids.pre[phase] = i
    ids.segmentation = node_id(f"{prefix} segmentation", "vtkMRMLSegmentationNode")
    if result.real_followup is not None:
        fu = result.real_followup
        for phase in fu.phases:
            if (i := node_id(f"{prefix} real follow-up w{fu.weeks:02d} {phase}", "vtkMRMLScalarVolumeNode")):
                ids.real_followup[phase] = i
    for regimen in result.followups:
        seq_id = node_id(f"{prefix} virtual {regimen}", "vtkMRMLSequenceNode")
        browser_id = node_id(f"{prefix} virtual {regimen} browser", "vtkMRMLSequenceBrowserNode")
        if seq_id is None or browser_id is None:
            continue
        ids.virtual_sequences[regimen], ids.virtual_browsers[regimen] = seq_id, browser_id
        if (std_id := node_id(f"{prefix} uncertainty {regimen}", "vtkMRMLSequenceNode")) is not None:
            ids.uncertainty_sequences[regimen] = std_id
        _refresh_proxies(scene, ids, regimen)
    ids.table = node_id(names["table"], "vtkMRMLTableNode")
    ids.survival_table = node_id(names["survival_table"], "vtkMRMLTableNode")
    for key in ENDPOINTS:
        if (i := node_id(names[f"chart_{key}"], "vtkMRMLPlotChartNode")) is not None:
            ids.charts[key] = i
    view = L.plot_view_node(scene, create=False)
    shown = view.GetPlotChartNodeID() if view is not None else None
    ids.endpoint = next((k for k, v in ids.charts.items() if v == shown), "os")
    try:
        comp = L.slice_composite_node(scene, L.VIRTUAL_VIEW)
        ids.uncertainty_visible = comp.GetForegroundVolumeID() in set(ids.uncertainty_proxies.values())
        background = comp.GetBackgroundVolumeID()
        ids.virtual_regimen = next((r for r, p in ids.virtual_proxies.items() if p == background), None)
    except ValueError:
        pass
    return ids
