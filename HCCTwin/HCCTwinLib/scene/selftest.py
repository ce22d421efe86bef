"""Scene checks shared by the Slicer self-test (``HCCTwinTest``) and the pytest suite (headless, slicer-core).

``run_all`` builds a small case, runs the pipeline, puts the result into the given scene through
:func:`HCCTwinLib.scene.build.show_result` and checks nodes, geometry, segments, table values, sequences, layout,
view linking, the survival curves per regimen (with their bands), the results-by-regimen table, the uncertainty
overlay and a change of the regimen selection (:func:`~HCCTwinLib.scene.build.update_selection`). It returns
``{check name: error message}`` for the checks that failed (empty when all pass), so both runners report every
failure, not just the first.

Where the generator or survival model is not installed (CI has no weights), the run's missing parts are filled with
synthetic values (:func:`add_synthetic_outputs`, noted in ``result.notes``) so that the scene code is still checked;
the checks compare the scene with whatever ``result`` holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..cases import Case
from ..formatting import fmt_ci, fmt_median, fmt_reading
from ..labels import LABEL_BY_VALUE
from ..survival_result import Curve, Metastasis, Recommendation, SurvivalResult
from . import build as B
from . import layout as L
from .build import SceneNodes, show_result, update_selection
from .nodes import (
    NODE_ATTRIBUTE,
    array_and_geometry_from_volume,
    labels_from_segmentation,
    plot_series_nodes,
    table_to_dict,
)
from .render import volume_center_ras


def small_case(seed: int = 0) -> tuple[Case, object]:
    """A small simulated patient (pre-treatment case) and its observed 8-week follow-up (``FollowUp``)."""
    from ..simulate.default import default_case

    return default_case(seed=seed, small=True)


def _checks(scene, segmentations_logic, result, ids: SceneNodes, layout_node) -> dict[str, Callable[[], None]]:
    case = result.case

    def volumes():
        for phase, node_id in ids.pre.items():
            node = scene.GetNodeByID(node_id)
            assert node is not None, f"missing volume node for {phase}"
            array, geometry = array_and_geometry_from_volume(node)
            assert geometry.same_grid(case.geometry), f"{phase}: geometry changed in the scene"
            # the scene stores CT as int16: whole HU (within 0.5 HU)
            assert np.allclose(array, case.phases[phase], rtol=0, atol=0.5 + 1e-3), \
                f"{phase}: voxel values changed in the scene"

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
                assert np.allclose(array, result.followups[regimen][week].phases["portal"], rtol=0,
                                   atol=0.5 + 1e-3), f"{regimen} w{week}"

    def layout():
        if layout_node is None:
            return
        for layout_id in L.LAYOUTS:
            assert layout_node.IsLayoutDescription(layout_id), f"HCCTwin layout {layout_id} not registered"
        assert layout_node.GetViewArrangement() == L.HCCTWIN_PLOT_LAYOUT_ID, "HCCTwin views + plot layout not shown"
        description = layout_node.GetLayoutDescription(L.HCCTWIN_PLOT_LAYOUT_ID)
        for name in (*L.COMPARE_VIEWS, L.PLOT_VIEW, L.TABLE_VIEW):
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

    checks = {"volumes": volumes, "segmentation": segmentation, "table": table, "real_followup": real_followup,
              "sequences": sequences, "layout": layout, "linked_views": linked_views}
    checks.update(result_checks(scene, result, ids))
    return checks


def result_checks(scene, result, ids: SceneNodes, recompute: Callable[[list[str]], None] | None = None
                  ) -> dict[str, Callable[[], None]]:
    """Checks of the survival charts, the results-by-regimen table, the uncertainty overlay and (last, it changes
    the selection and restores it) a regimen selection update. ``recompute(regimens)`` updates ``result.survival``
    for a selection (default: :func:`HCCTwinLib.pipeline.update_survival` when the survival engine gave the curves,
    else :func:`subset_survival`)."""
    shown = list(ids.regimens_shown)

    def survival_plot():
        check_survival_charts(scene, result, ids)

    def survival_table():
        check_survival_table(scene, result, ids)

    def uncertainty():
        check_uncertainty(scene, result, ids)

    def selection_update():
        if len(shown) < 2:
            return
        subset = shown[:2] if len(shown) > 2 else shown[:1]
        redo = recompute or default_recompute(result)
        for regimens in (subset, shown):  # narrow the selection, then restore it
            redo(regimens)
            update_selection(scene, result, regimens, ids)
            assert ids.regimens_shown == regimens, f"shown {ids.regimens_shown}, asked {regimens}"
            check_survival_charts(scene, result, ids)
            check_survival_table(scene, result, ids)
            check_no_duplicates(scene)
            check_views_valid(scene, ids)

    return {"survival_plot": survival_plot, "survival_table": survival_table, "uncertainty": uncertainty,
            "selection_update": selection_update}


# ----------------------------------------------------------------------------------------------- reusable checks
def _curve_series(chart) -> list:
    return [s for s in plot_series_nodes(chart) if s.GetAttribute(NODE_ATTRIBUTE) == "plot-curve"]


def check_survival_charts(scene, result, ids: SceneNodes) -> None:
    """One solid step curve per chosen regimen with a curve, in the catalogue colour, with its 95% band series, and
    the data equal to ``result.survival``; the plot view shows the chart of ``ids.endpoint``."""
    survival = SurvivalResult.of(result.survival)
    for endpoint in B.ENDPOINTS:
        chart = scene.GetNodeByID(ids.charts.get(endpoint) or "")
        assert chart is not None, f"no {endpoint} chart"
        curves = survival.curves(endpoint)
        expected = [r for r in ids.regimens_shown if r in curves]
        names = [s.GetName() for s in _curve_series(chart)]
        assert names == [B.regimen_label(r) for r in expected], f"{endpoint}: curves {names}, regimens {expected}"
        all_names = [s.GetName() for s in plot_series_nodes(chart)]
        assert len(all_names) == len(set(all_names)), f"{endpoint}: duplicate series {all_names}"
        for r, series in zip(expected, _curve_series(chart)):
            curve = curves[r]
            data = table_to_dict(series.GetTableNode())
            steps_y = data["y"][::2]  # post-step polyline: every other point is a curve value
            assert np.allclose(steps_y, np.asarray(curve.survival, float), equal_nan=True), f"{endpoint} {r} y"
            assert np.allclose(data["x"][::2], np.asarray(curve.times, float)), f"{endpoint} {r} x"
            color = B.regimen_color(r)
            if color is not None:
                assert np.allclose(series.GetColor(), color, atol=1e-6), f"{endpoint} {r}: not the catalogue colour"
            if any(v is not None for v in curve.lower):
                bands = [s for s in plot_series_nodes(chart) if s.GetName() in (f"{series.GetName()} lower",
                                                                                f"{series.GetName()} upper")]
                assert len(bands) == 2, f"{endpoint} {r}: no 95% band"
                assert all(b.GetTableNode() is series.GetTableNode() for b in bands)
                assert all(lo <= y + 1e-9 <= hi + 2e-9 for lo, y, hi in zip(data["lower"], data["y"], data["upper"])
                           if np.isfinite([lo, y, hi]).all()), f"{endpoint} {r}: band does not contain the curve"
    view = L.plot_view_node(scene, create=False)
    assert view is not None and view.GetPlotChartNodeID() == ids.charts[ids.endpoint], "plot view shows no chart"
    table_view = L.table_view_node(scene, create=False)
    assert table_view is not None and table_view.GetTableNodeID() == (ids.survival_table or ids.table), (
        "table view does not show the results table")


def check_survival_table(scene, result, ids: SceneNodes) -> None:
    """One row per chosen regimen, values equal to ``result.survival`` / ``result.response``, recommendation
    marked, metastasis risk only for the regimen its model is for."""
    table = table_to_dict(scene.GetNodeByID(ids.survival_table))
    assert table[B.COL_REGIMEN_ID] == ids.regimens_shown, f"rows {table[B.COL_REGIMEN_ID]}"
    survival = SurvivalResult.of(result.survival)
    os_curves = survival.curves("os")
    recommended = survival.recommendation.regimen if survival.recommendation is not None else None
    for n, r in enumerate(ids.regimens_shown):
        curve = os_curves.get(r)
        if curve is not None:
            assert table[B.COL_MEDIAN_OS][n] == fmt_median(curve), f"{r}: median OS"
            assert table[B.COL_OS12][n] == fmt_ci(curve.s12, curve.s12_ci, "pct"), f"{r}: 1-year OS"
            assert table[B.COL_OS24][n] == fmt_ci(curve.s24, curve.s24_ci, "pct"), f"{r}: 2-year OS"
            assert table[B.COL_RMST24][n] == fmt_ci(curve.rmst24, curve.rmst24_ci), f"{r}: RMST"
        p = survival.probability_best(r)
        got = table[B.COL_P_BEST][n]
        assert (p is None and np.isnan(got)) or abs(got - float(p)) < 1e-12, f"{r}: probability best {got} vs {p}"
        assert (table[B.COL_RECOMMENDATION][n] == "recommended") == (recommended == r), f"{r}: recommendation"
        for key, reading in (result.response.get(r) or {}).items():
            if isinstance(reading, dict) and f"mRECIST {key}" in table:
                cell = table[f"mRECIST {key}"][n]
                assert cell == fmt_reading(reading), f"{r} {key}: mRECIST"
                assert cell.split(" ")[0] == (reading.get("mrecist") or "n/a"), f"{r} {key}: mRECIST category"
    meta = survival.metastasis
    if meta is not None and meta.has_risk and meta.by_regimen is None:
        column = next(c for c in table if c.startswith("Metastasis risk"))
        applies = meta.applies_to or B.METASTASIS_DEFAULT_REGIMEN
        for n, r in enumerate(ids.regimens_shown):
            text = table[column][n]
            assert (r == applies) == (not text.startswith("n/a")), f"{r}: metastasis risk {text!r}"


def check_uncertainty(scene, result, ids: SceneNodes) -> None:
    """Uncertainty sequences exist where the follow-ups carry ``std``, browse with the follow-ups, and the overlay is
    off unless asked for; switching it on puts the SD of the shown regimen in the virtual view's foreground."""
    for regimen, by_week in result.followups.items():
        weeks = sorted(by_week)
        if not all(by_week[w].std for w in weeks):
            continue
        assert regimen in ids.uncertainty_proxies, f"{regimen}: no uncertainty overlay"
        seq = scene.GetNodeByID(ids.virtual_sequences[regimen])
        browser = scene.GetNodeByID(ids.virtual_browsers[regimen])
        std_seq = scene.GetNodeByID(ids.uncertainty_sequences[regimen])
        assert browser.IsSynchronizedSequenceNode(std_seq), f"{regimen}: uncertainty not browsed with follow-ups"
        phase = ids.display_phase if ids.display_phase in by_week[weeks[0]].std else next(iter(by_week[weeks[0]].std))
        n = len(weeks) - 1
        browser.SetSelectedItemNumber(n)
        array, _ = array_and_geometry_from_volume(browser.GetProxyNode(std_seq))
        assert np.allclose(array, by_week[weeks[n]].std_volume(phase, result.case.geometry)[0]), \
            f"{regimen}: uncertainty w{weeks[n]}"
        assert seq.GetNumberOfDataNodes() == std_seq.GetNumberOfDataNodes()
        browser.SetSelectedItemNumber(0)
    if not ids.views_assigned:
        return
    comp = L.slice_composite_node(scene, L.VIRTUAL_VIEW)
    if not ids.uncertainty_visible:
        assert comp.GetForegroundVolumeID() is None, "uncertainty overlay must be off by default"
    if ids.virtual_regimen in ids.uncertainty_proxies:
        was = ids.uncertainty_visible
        assert B.set_uncertainty_visible(scene, ids, True)
        assert comp.GetForegroundVolumeID() == ids.uncertainty_proxies[ids.virtual_regimen], "overlay not shown"
        assert comp.GetBackgroundVolumeID() == ids.virtual_proxies[ids.virtual_regimen]
        B.set_uncertainty_visible(scene, ids, was)
        assert (comp.GetForegroundVolumeID() is None) == (not was)


def check_no_duplicates(scene) -> None:
    """No two HCCTwin nodes of one class share a name (plot series: within one chart), and no plot series or plot
    table is left without its chart (orphans of a regimen no longer chosen)."""
    seen, duplicates, charts, series_in_charts, tables_in_series = set(), [], [], set(), set()
    coll = scene.GetNodes()
    nodes = [coll.GetItemAsObject(i) for i in range(coll.GetNumberOfItems())]
    for node in nodes:
        role = node.GetAttribute(NODE_ATTRIBUTE)
        if role is None:
            continue
        if role == "plot-chart":
            charts.append(node)
        if role in ("plot-curve", "plot-band"):
            continue
        key = (node.GetClassName(), node.GetName())
        if key in seen:
            duplicates.append(key)
        seen.add(key)
    assert not duplicates, f"duplicate nodes {duplicates}"
    for chart in charts:
        for series in plot_series_nodes(chart):
            series_in_charts.add(series.GetID())
            if series.GetTableNode() is not None:
                tables_in_series.add(series.GetTableNode().GetID())
    for node in nodes:
        role = node.GetAttribute(NODE_ATTRIBUTE)
        if role in ("plot-curve", "plot-band"):
            assert node.GetID() in series_in_charts, f"orphaned plot series {node.GetName()!r}"
        if role == "plot-table":
            assert node.GetID() in tables_in_series, f"orphaned plot table {node.GetName()!r}"


def check_views_valid(scene, ids: SceneNodes) -> None:
    """Every view shows a volume that is in the scene and has voxels; the virtual view shows a chosen regimen (empty
    only when no chosen regimen has virtual follow-ups)."""
    if not ids.views_assigned:
        return
    for name in L.COMPARE_VIEWS:
        volume_id = L.slice_composite_node(scene, name).GetBackgroundVolumeID()
        if volume_id is None:
            assert name == L.REAL_VIEW or (name == L.VIRTUAL_VIEW and ids.virtual_regimen is None), f"{name} is empty"
            continue
        node = scene.GetNodeByID(volume_id)
        assert node is not None and node.GetImageData() is not None, f"{name} shows a missing volume {volume_id}"
    if ids.virtual_regimen is not None:
        assert ids.virtual_regimen in ids.regimens_shown, f"virtual view shows {ids.virtual_regimen}, not chosen"
        background = L.slice_composite_node(scene, L.VIRTUAL_VIEW).GetBackgroundVolumeID()
        assert background == ids.virtual_proxies[ids.virtual_regimen]


# ---------------------------------------------------------------------------------------- synthetic model outputs
def default_recompute(result) -> Callable[[list[str]], None]:
    """How the self-test recomputes survival for a selection: the survival engine when it produced ``result.survival``
    (``result.provenance["survival"]``), otherwise :func:`subset_survival` of the synthetic values."""
    full = dict(result.survival or {})
    from_engine = "survival" in result.provenance  # set by pipeline.update_survival when the engine ran

    def recompute(regimens: list[str]) -> None:
        if not from_engine or not full:
            result.survival = subset_survival(full, regimens)
        else:
            from ..pipeline import update_survival

            update_survival(result, None, regimens)

    return recompute


def synthetic_survival(regimens, *, seed: int = 0, times=None, pfs: bool = True, metastasis: bool = True) -> dict:
    """A ``result.survival`` dict in the engine's schema with known, regimen-specific values (exponential curves,
    bands, medians, 1-/2-year survival, RMST-24 with CIs, probability best, recommendation, metastasis risk).
    Test data only: no model is involved."""
    rng = np.random.default_rng(seed)
    times = np.arange(0.0, 61.0, 1.0) if times is None else np.asarray(times, float)
    endpoints: dict[str, dict[str, Curve]] = {"os": {}, "pfs": {}} if pfs else {"os": {}}
    scales = {r: 14.0 + 9.0 * n + float(rng.uniform(0, 3)) for n, r in enumerate(regimens)}
    for endpoint in endpoints:
        for r in regimens:
            lam = scales[r] * (1.0 if endpoint == "os" else 0.55)
            s = np.exp(-times / lam)

            def at(t, lam=lam):
                return float(np.exp(-t / lam))

            rmst = lam * (1 - np.exp(-24.0 / lam))
            endpoints[endpoint][r] = Curve(
                regimen=r, times=tuple(times.tolist()), survival=tuple(s.tolist()),
                lower=tuple((s ** 1.25).tolist()), upper=tuple((s ** 0.8).tolist()), median=lam * np.log(2),
                median_ci=(0.8 * lam * np.log(2), 1.25 * lam * np.log(2)), s12=at(12),
                s12_ci=(at(12) ** 1.25, at(12) ** 0.8), s24=at(24), s24_ci=(at(24) ** 1.25, at(24) ** 0.8),
                rmst24=float(rmst), rmst24_ci=(float(0.9 * rmst), float(min(24.0, 1.1 * rmst))),
                absent=frozenset({"interval_method"}))
    best = max(regimens, key=lambda r: endpoints["os"][r].rmst24)
    weights = np.array([endpoints["os"][r].rmst24 ** 4 for r in regimens])
    prob = {r: float(w) for r, w in zip(regimens, weights / weights.sum())}
    out = SurvivalResult(
        model="synthetic (self-test)", endpoints=endpoints,
        recommendation=Recommendation(regimen=best, probability_best=prob, endpoint="os", tau_months=24.0,
                                      chosen_among=tuple(regimens), absent=frozenset({"eligible_only"})),
        metastasis=Metastasis(risk=0.23, lower=0.14, upper=0.34, horizon_months=24.0,
                              applies_to=B.METASTASIS_DEFAULT_REGIMEN) if metastasis else None)
    return out.to_dict()


def subset_survival(survival: dict, regimens) -> dict:
    """``survival`` restricted to ``regimens`` (recommendation among them, probabilities renormalised): what a new
    selection gives when no survival engine is installed (self-test / tests only)."""
    surv = SurvivalResult.of(survival)
    if surv.empty:
        return {}
    regimens = list(regimens)
    endpoints = {e: {r: c for r, c in curves.items() if r in regimens} for e, curves in surv.endpoints.items()}
    rec = surv.recommendation or Recommendation(absent=frozenset({"regimen", "endpoint", "tau_months",
                                                                  "eligible_only"}))
    prob = {r: p for r, p in rec.probability_best.items() if r in regimens}
    total = sum(prob.values())
    prob = {r: p / total for r, p in prob.items()} if total > 0 else prob
    chosen = tuple(r for r in (regimens if rec.chosen_among is None else rec.chosen_among) if r in regimens)
    os_curves = endpoints.get("os") or {}
    best = rec.regimen
    if chosen:
        best = max(chosen, key=lambda r: (prob.get(r, 0.0), (os_curves[r].rmst24 if r in os_curves else None) or 0.0))
    rec = replace(rec, regimen=best, probability_best=prob, chosen_among=chosen)
    diffs = tuple(d for d in surv.rmst24_differences if d.regimen_a in regimens and d.regimen_b in regimens)
    return replace(surv, endpoints=endpoints, recommendation=rec, rmst24_differences=diffs).to_dict()


def add_synthetic_outputs(result, *, seed: int = 0, std: bool = True) -> list[str]:
    """Fill what the models did not produce (no weights installed) with synthetic test values: virtual follow-ups
    (with per-voxel SD) for every regimen and week, their response readings, and survival. Says so in
    ``result.notes`` ("Self-test: ...") and returns what was filled."""
    from ..cases import FollowUp

    filled = []
    case = result.case
    rng = np.random.default_rng(seed)
    if not result.followups:
        for n, regimen in enumerate(result.regimens):
            result.followups[regimen] = {
                int(w): FollowUp(int(w), {p: (a - (n + 1) * 2.0 * w).astype(np.float32)
                                          for p, a in case.phases.items()},
                                 labels=case.labels,
                                 std={p: (rng.random(case.geometry.shape) * (5 + w + n)).astype(np.float32)
                                      for p in case.phases} if std else {},
                                 regimen=regimen)
                for w in result.weeks}
        filled.append("virtual follow-ups")
    categories = ["PR", "SD", "PD", "CR"]
    for n, regimen in enumerate(result.followups):
        if regimen not in result.response:
            result.response[regimen] = {f"w{int(w):02d}": {"mrecist": categories[(n + k) % 4],
                                                           "recist": categories[(n + k + 1) % 4],
                                                           "viable_volume_ml": 10.0 - k, "sum_viable_mm": 30.0 - k}
                                        for k, w in enumerate(sorted(result.followups[regimen]))}
            filled.append(f"response {regimen}")
    if not result.survival:
        result.survival = synthetic_survival(result.regimens, seed=seed)
        filled.append("survival")
    if filled:
        result.notes.append(f"Self-test: synthetic {', '.join(filled)} (models not installed); test data only.")
    return filled


def run_all(scene, segmentations_logic, *, layout_node=None, sequences_logic=None, case=None,
            real_followup=None) -> dict[str, str]:
    """Run the pipeline on a small simulated case into ``scene`` and check the result; returns the failures."""
    from ..pipeline import run_case

    if case is None:
        case, real_followup = small_case()
    result = run_case(case, real_followup=real_followup)
    add_synthetic_outputs(result)
    ids = show_result(scene, result, segmentations_logic=segmentations_logic, sequences_logic=sequences_logic,
                      layout_node=layout_node)
    failures = {}
    for name, check in _checks(scene, segmentations_logic, result, ids, layout_node).items():
        try:
            check()
        except Exception as exc:  # collect every failure with its message
            failures[name] = f"{type(exc).__name__}: {exc}"
    return failures
