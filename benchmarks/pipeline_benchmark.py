"""Stage timings and peak memory of the whole pipeline, cold and warm, on inputs of growing size (issue 8).

    python benchmarks/pipeline_benchmark.py [--sizes 128x128x128,256x256x120,512x512x120,512x512x300]
        [--device auto|cpu|cuda] [--samples 4] [--out benchmarks/results]

Each size runs in its own fresh process (so "cold" includes imports and model loading and the peak RSS is that of
one case): the default simulated patient is resampled to the size (columns x rows x slices, field of view kept),
written as NIfTI, then: load -> clinical -> segmentation (the installed model; the simulator's labels when none is
installed) -> virtual follow-ups (installed generator; and the copy baseline, side by side, to show where time goes)
-> response reading + survival -> scene build (slicer-core) -> offscreen render -> report (HTML + PDF). Then the
same case again in the same process ("warm", models cached) and a change of the regimen selection (survival and
table only, no model re-run). Writes ``OUT/pipeline_benchmark.md`` and ``.json`` with the machine and date.
Targets (2 CPU cores): full pipeline on 512x512x120 <= 90 s cold, <= 30 s warm; regimen change <= 1 s; peak RSS
<= 4 GB at 512x512x300. On a GPU: <= 10 s cold after model load, GPU memory <= 6 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))

REGIMENS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki")
WEEKS = (8, 16, 24)
TARGETS = {"cold_s_512x512x120": 90.0, "warm_s_512x512x120": 30.0, "regimen_change_s": 1.0,
           "peak_rss_gb_512x512x300": 4.0}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: kB


def make_case(size_xyz: tuple[int, int, int]):
    """The default simulated patient resampled to ``size_xyz`` (i, j, k) with the same field of view."""
    import numpy as np
    from scipy import ndimage

    from HCCTwinLib.cases import Case, Geometry
    from HCCTwinLib.demo import default_case

    case, _ = default_case()
    g = case.geometry
    target = (size_xyz[2], size_xyz[1], size_xyz[0])  # k, j, i
    factors = [t / s for t, s in zip(target, g.shape)]
    phases = {n: ndimage.zoom(a.astype(np.float32), factors, order=1) for n, a in case.phases.items()}
    labels = ndimage.zoom(case.labels, factors, order=0)
    spacing = tuple(sp * s / t for sp, s, t in zip(g.spacing, g.shape[::-1], target[::-1]))
    geom = Geometry(shape=tuple(labels.shape), spacing=spacing, origin=g.origin, direction=g.direction)
    return Case(patient_id=case.patient_id, phases=phases, geometry=geom, labels=labels, clinical=case.clinical)


def run_one(size_text: str, device: str, samples: int) -> dict:
    """One size in this process: cold run, warm run, regimen change, copy-baseline path."""
    t_start = time.perf_counter()
    import numpy as np

    from HCCTwinLib.io import load_case, save_case
    from HCCTwinLib.pipeline import PipelineOptions, run_case
    from HCCTwinLib.segmentation import get_segmenter
    from HCCTwinLib.twin.baselines import copy_baseline
    from HCCTwinLib.weights import ModelFileError

    size = tuple(int(v) for v in size_text.split("x"))
    out: dict = {"size": size_text, "voxels": int(np.prod(size)), "device": device, "samples": samples,
                 "import_s": time.perf_counter() - t_start}
    src = make_case(size)
    try:
        get_segmenter(None, device=device)
        seg_mode = "model"
    except ModelFileError:
        seg_mode = "given"
    out["segmentation"] = "installed model" if seg_mode == "model" else "simulator labels (no model installed)"
    options = PipelineOptions(device=device, samples=samples, seed=0, segmentation=seg_mode)
    with tempfile.TemporaryDirectory() as tmp:
        save_case(src, Path(tmp) / "pre")
        for run in ("cold", "warm"):
            stages: dict[str, float] = {}
            t0 = time.perf_counter()
            case = load_case(Path(tmp) / "pre", patient_id=src.patient_id, clinical=src.clinical)
            if seg_mode == "model":
                case.labels = None
            stages["load"] = time.perf_counter() - t0
            result = run_case(case, REGIMENS, WEEKS, options=options)
            stages.update({k: v for k, v in result.timings.items()})
            stages.update(_scene_render_report(result, Path(tmp) / f"out_{run}"))
            stages["total"] = sum(stages.values())
            stages["peak_rss_gb"] = _rss_gb()
            out[run] = stages
            out["notes"] = result.notes
        # a change of the regimen selection: survival, table, curves and views only (what the module does)
        out["regimen_change_s"] = _regimen_change(result, options)
        # the copy-baseline path instead of the generator (same case, same steps otherwise)
        t0 = time.perf_counter()
        copy_baseline(result.case.phases, result.case.labels, result.case.geometry, REGIMENS, WEEKS)
        out["copy_baseline_generate_s"] = time.perf_counter() - t0
    out["peak_rss_gb"] = _rss_gb()
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1024 ** 3
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def _regimen_change(result, options) -> float:
    from HCCTwinLib.pipeline import update_survival
    from HCCTwinLib.scene import layout as L
    from HCCTwinLib.scene.build import show_result, update_selection
    from HCCTwinLib.scene.headless import HeadlessSlicer

    app = HeadlessSlicer()
    try:
        app.slice_views(L.COMPARE_VIEWS)
        ids = show_result(app.scene, result, segmentations_logic=app.segmentations_logic,
                          sequences_logic=app.sequences_logic, layout_node=L.layout_node_of(app.scene))
        t0 = time.perf_counter()
        chosen = ["tace_pd1_len", "pd1_tki"]
        update_survival(result, options, chosen)
        update_selection(app.scene, result, chosen, ids)
        return time.perf_counter() - t0
    finally:
        app.close()


def _scene_render_report(result, out_dir: Path) -> dict[str, float]:
    from HCCTwinLib.demo import render_result
    from HCCTwinLib.report import write_report

    stages = {}
    t0 = time.perf_counter()
    paths = render_result(result, out_dir, bundle=False)
    stages["scene_and_render"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_report(json.loads(json.dumps(result.summary())), out_dir, images={"layout": paths["layout_png"]})
    stages["report"] = time.perf_counter() - t0
    return stages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128x128x128,256x256x120,512x512x120,512x512x300")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        args.json.write_text(json.dumps(run_one(args.one, args.device, args.samples), default=str))
        return 0
    rows = []
    for size in args.sizes.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = Path(f.name)
        cmd = [sys.executable, __file__, "--one", size, "--json", str(path), "--device", args.device,
               "--samples", str(args.samples)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            rows.append({"size": size, "error": proc.stderr[-2000:]})
        else:
            row = json.loads(path.read_text())
            row["process_s"] = time.perf_counter() - t0
            rows.append(row)
        path.unlink(missing_ok=True)
        print(json.dumps(rows[-1], default=str)[:600], flush=True)
    res = {"machine": f"{platform.node()} {platform.platform()}, {os.cpu_count()} CPU cores",
           "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "targets": TARGETS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_benchmark.json").write_text(json.dumps(res, indent=2, default=str))
    (args.out / "pipeline_benchmark.md").write_text(render_markdown(res))
    print((args.out / "pipeline_benchmark.md").read_text())
    return 0


def _f(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def render_markdown(res: dict) -> str:
    stages = ("load", "clinical", "segmentation", "generate", "survival", "scene_and_render", "report", "total")
    lines = ["# Pipeline benchmark (issue 8)", "", "Demo weights, synthetic data, not for clinical use.", "",
             f"Machine: {res['machine']}; date {res['date']}. Each size in a fresh process; 3 regimens x 3 time "
             f"points; times in seconds.", ""]
    for run in ("cold", "warm"):
        lines += [f"## {run.capitalize()}", "", "| size | " + " | ".join(stages) + " | peak RSS GB |",
                  "|---" * (len(stages) + 2) + "|"]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['size']} | error: {r['error'][-200:]!r} |")
                continue
            s = r[run]
            lines.append(f"| {r['size']} | " + " | ".join(_f(s.get(k)) for k in stages)
                         + f" | {_f(s['peak_rss_gb'], 2)} |")
        lines.append("")
    lines += ["## Regimen change, copy-baseline path, memory", "",
              "| size | regimen change s | generate: model s (warm) | generate: copy baseline s | peak RSS GB | "
              "segmentation | GPU memory GB |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            continue
        lines.append(f"| {r['size']} | {_f(r['regimen_change_s'], 2)} | {_f(r['warm'].get('generate'))} | "
                     f"{_f(r['copy_baseline_generate_s'], 2)} | {_f(r['peak_rss_gb'], 2)} | {r['segmentation']} | "
                     f"{_f(r.get('gpu_peak_memory_gb'), 2)} |")
    by = {r["size"]: r for r in res["rows"] if "error" not in r}
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---|---|"]
    checks = [("cold full pipeline 512x512x120 <= 90 s", by.get("512x512x120", {}).get("cold", {}).get("total"), 90),
              ("warm full pipeline 512x512x120 <= 30 s", by.get("512x512x120", {}).get("warm", {}).get("total"), 30),
              ("regimen change <= 1 s", max((r["regimen_change_s"] for r in by.values()), default=None), 1.0),
              ("peak RSS 512x512x300 <= 4 GB", by.get("512x512x300", {}).get("peak_rss_gb"), 4.0)]
    for name, value, limit in checks:
        lines.append(f"| {name} | {_f(value, 2)} | {'n/a' if value is None else value <= limit} |")
    notes = sorted({n for r in by.values() for n in r.get("notes", [])})
    if notes:
        lines += ["", "Notes from the runs:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
