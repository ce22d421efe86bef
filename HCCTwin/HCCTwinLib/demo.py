"""``hcctwin demo`` / ``make demo``: the main job end to end on the embedded default case.

The default case is a simulated patient (fixed seed, see :mod:`HCCTwinLib.simulate`): nothing is downloaded. The demo
writes the case in the cohort layout, loads it back through the same I/O a site's data goes through, runs the
pipeline, builds the Slicer scene headless (slicer-core) and renders the linked "pre-treatment | real follow-up |
virtual follow-up" views offscreen.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import DISCLAIMER
from .cases import FollowUp
from .io import load_case, read_image, save_case, write_image
from .labels import lesion_focus
from .pipeline import DEFAULT_REGIMENS, DEFAULT_WEEKS, PipelineOptions, run_case, save_result
from .progress import ProgressCallback, SubProgress, report
from .report import write_report
from .segmentation.inference import default_weights_path as segmentation_weights
from .simulate.default import DEFAULT_SEED, default_case


def run_demo(out: str | Path, seed: int = DEFAULT_SEED, *, small: bool = False, render: bool = True,
             progress: ProgressCallback | None = None) -> dict:
    """Run the demo into ``out``; returns a summary dict (also written as ``out/demo_summary.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t0 = time.perf_counter()
    report(progress, 0.0, "Simulating the default patient")
    sim_case, follow = default_case(seed, small)
    case_dir = out / "case"
    save_case(sim_case, case_dir / "pre")
    fu_dir = case_dir / "followup" / f"w{follow.weeks:02d}"
    for name, arr in follow.phases.items():
        write_image(arr, sim_case.geometry, fu_dir / f"{name}.nii.gz")
    write_image(follow.labels, sim_case.geometry, fu_dir / "labels.nii.gz", labels=True)
    (case_dir / "clinical.json").write_text(json.dumps(sim_case.clinical, indent=2, default=str))
    timings["simulate"] = time.perf_counter() - t0

    # load back exactly as a site's case is loaded
    t0 = time.perf_counter()
    report(progress, 0.15, "Loading the case")
    case = load_case(case_dir / "pre", patient_id=sim_case.patient_id, clinical=sim_case.clinical)
    real = FollowUp(weeks=follow.weeks, kind="observed", regimen=follow.regimen,
                    phases={n: read_image(fu_dir / f"{n}.nii.gz")[0] for n in ("arterial", "portal")},
                    labels=read_image(fu_dir / "labels.nii.gz", labels=True)[0])
    timings["load"] = time.perf_counter() - t0

    # the demo segments with the installed network when there is one (the simulator's labels are the truth, kept
    # for comparison); without one it uses the simulator's labels and says so

    seg_mode = "model" if segmentation_weights().is_file() else "given"
    result = run_case(case, DEFAULT_REGIMENS, DEFAULT_WEEKS, real_followup=real,
                      options=PipelineOptions(segmentation=seg_mode), progress=SubProgress(progress, 0.2, 0.7))
    if seg_mode == "given":
        result.notes.append("Segmentation: no segmentation network installed; the demo uses the simulator's label "
                            "map of the default case.")
    result.timings.update(timings)
    outputs = {"case": str(case_dir), "result_json": str(out / "result.json")}

    if render:
        t0 = time.perf_counter()
        report(progress, 0.75, "Building the scene and rendering the linked views")
        outputs.update(render_result(result, out))
        result.timings["scene_and_render"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report(progress, 0.9, "Writing the result folder")
    # the same folder layout as `hcctwin predict` (volumes, inputs on the grid, key image, result.json): what
    # `hcctwin view` and `hcctwin report` read
    outputs.update(save_result(result, out))
    result.timings["save"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report(progress, 0.92, "Tumor-board report")

    images = {"Pre-treatment | real follow-up | virtual follow-up (linked views)": outputs["layout_png"]} \
        if "layout_png" in outputs else None
    paths = write_report(json.loads((out / "result.json").read_text()), out, images=images)
    outputs.update({f"report_{k}": str(v) for k, v in paths.items()})
    result.timings["report"] = time.perf_counter() - t0
    result.write_json(out / "result.json")
    report(progress, 1.0, "Demo done")
    summary = {"patient_id": case.patient_id, "received_regimen": real.regimen, "outputs": outputs,
               "timings_s": {k: round(v, 2) for k, v in result.timings.items()}, "disclaimer": DISCLAIMER}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def render_result(result, out: Path, *, bundle: bool = True) -> dict[str, str]:
    """Headless scene of ``result`` + offscreen PNGs of the linked views (``out/views/*.png``, ``out/layout.png``)
    and, with ``bundle``, the scene as a Slicer bundle ``out/scene.mrb`` (opens in 3D Slicer)."""
    from .scene import layout as L
    from .scene.build import show_result
    from .scene.headless import HeadlessSlicer
    from .scene.render import ViewSpec, compose_panels, render_views_png

    app = HeadlessSlicer()
    try:
        app.slice_views(L.COMPARE_VIEWS)
        ids = show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                          sequences_logic=app.sequences_logic, layout_node=L.layout_node_of(app.scene))
        specs = [ViewSpec(L.PRE_VIEW, ids.pre["portal"], "Pre-treatment (portal venous)",
                          segmentation_id=ids.segmentation)]
        if ids.real_followup:
            fu = result.real_followup
            specs.append(ViewSpec(L.REAL_VIEW, ids.real_followup["portal"],
                                  f"Real follow-up w{fu.weeks:02d} ({fu.regimen})"))
        if ids.virtual_proxies:
            # compare like with like: the virtual follow-up under the regimen the patient received, at the week of
            # the real follow-up, when both exist
            fu = result.real_followup
            regimen = fu.regimen if fu is not None and fu.regimen in ids.virtual_proxies else \
                next(iter(ids.virtual_proxies))
            weeks = sorted(result.followups.get(regimen, {}))
            week = fu.weeks if fu is not None and fu.weeks in weeks else (weeks[0] if weeks else None)
            if week is not None and regimen in ids.virtual_browsers:
                app.scene.GetNodeByID(ids.virtual_browsers[regimen]).SetSelectedItemNumber(weeks.index(week))
            L.slice_composite_node(app.scene, L.VIRTUAL_VIEW).SetBackgroundVolumeID(ids.virtual_proxies[regimen])
            label = f"Virtual follow-up{f' w{week:02d}' if week is not None else ''} ({regimen})"
            specs.append(ViewSpec(L.VIRTUAL_VIEW, ids.virtual_proxies[regimen], label))
        # the slice through the largest tumour cross-section, so the panels show the disease
        ras = _tumour_center_ras(result)
        rendered = render_views_png(app, specs, out / "views", ras_position=ras)
        layout_png = compose_panels([rendered[s.name] for s in specs], out / "layout.png",
                                    title=f"HCCTwin - {result.case.patient_id}", footer=DISCLAIMER)
        paths = {"layout_png": str(layout_png), "views": str(out / "views")}
        if bundle:
            from .scene.bundle import save_scene_bundle

            paths["scene_mrb"] = str(save_scene_bundle(app.scene, out / "scene.mrb"))
        return paths
    finally:
        app.close()


def _tumour_center_ras(result):
    import numpy as np

    focus = None if result.case.labels is None else lesion_focus(result.case.labels)
    if focus is None:
        return None
    k, j, i = focus
    ras = result.case.geometry.ijk_to_ras() @ np.array([i, j, k, 1.0])
    return tuple(float(v) for v in ras[:3])
