"""Stage timings and peak memory of the whole pipeline, cold and warm, on inputs of growing size (issue 8).

    python benchmarks/pipeline_benchmark.py [--sizes 128x128x128,256x256x120,512x512x120,512x512x300]
        [--device auto|cpu|cuda] [--samples 4] [--out benchmarks/results] [--no-copy-path]

Per size, the default simulated patient is resampled to the size (columns x rows x slices, field of view kept) and
written as NIfTI by one process; a fresh second process (so "cold" includes imports and model loading, and its peak
RSS is that of the pipeline, not of making the input) then runs the case twice ("case 1" cold, "case 2" warm: models
cached), each time: load -> clinical -> segmentation (the installed model; the simulator's labels when none is
installed) -> virtual follow-ups (installed generator) -> response reading + survival -> scene build (slicer-core)
-> offscreen render -> report (HTML + PDF) -> a change of the regimen selection (survival, table, curves and views
only, no model re-run; timed). After each case everything is dropped and the RSS measured: case 2 minus case 1 is
the memory a case leaves behind. Then the same pipeline once more with the copy baseline in place of the generator
(side by side: where the time goes). Peak RSS is measured per run (``VmHWM``, reset between runs) and per stage (a
sampling thread); the machine's load average is sampled too, since the benchmark machine may be shared.

Writes ``OUT/pipeline_benchmark.md`` and ``.json`` with the machine, date and load; when
``OUT/pipeline_benchmark_baseline.json`` exists (the results before the memory work) the key numbers are shown
next to it, and ``OUT/pipeline_benchmark_notes.md`` (written by hand: conditions, paired runs) is appended.
Targets (2 CPU cores): full pipeline on 512x512x120 <= 90 s cold, <= 30 s warm; regimen change <= 1 s;
peak RSS <= 4 GB at 512x512x300. On a GPU: <= 10 s cold after model load, GPU memory <= 6 GB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, write_results  # noqa: E402

REGIMENS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki")
WEEKS = (8, 16, 24)
TARGETS = {"cold_s_512x512x120": 90.0, "warm_s_512x512x120": 30.0, "regimen_change_s": 1.0,
           "peak_rss_gb_512x512x300": 4.0}
STAGES = ("load", "phase_alignment", "clinical", "segmentation", "generate", "survival", "scene_and_render", "report")
GB = 1024.0 ** 3


# ------------------------------------------------------------------------------------------------------ memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_gb() -> float:
    return _status_kb("VmRSS") * 1024 / GB


def hwm_gb() -> float:
    """Peak RSS since the last :func:`reset_peak` (Linux ``VmHWM``)."""
    return _status_kb("VmHWM") * 1024 / GB


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole process
        pass


def release_memory() -> float:
    """Collect garbage and hand freed heap back to the system (glibc keeps it otherwise); returns the RSS in GB."""
    from HCCTwinLib.device import release_freed_memory

    gc.collect()
    release_freed_memory()
    return rss_gb()


class Sampler:
    """Background thread: peak RSS per named stage (every 20 ms) and the highest 1-minute load average."""

    def __init__(self):
        self.stage = "idle"
        self.peaks: dict[str, float] = {}
        self.max_load = os.getloadavg()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        n = 0
        while not self._stop.wait(0.02):
            r = rss_gb()
            if r > self.peaks.get(self.stage, 0.0):
                self.peaks[self.stage] = r
            n += 1
            if n % 50 == 0:
                self.max_load = max(self.max_load, os.getloadavg()[0])

    def set(self, stage: str) -> None:
        r = rss_gb()
        self.stage = stage
        self.peaks[stage] = max(self.peaks.get(stage, 0.0), r)

    def take(self) -> dict[str, float]:
        peaks, self.peaks = self.peaks, {}
        return {k: round(v, 3) for k, v in peaks.items()}

    def stop(self):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------------- input
def make_case(size_xyz: tuple[int, int, int]):
    """The default simulated patient resampled to ``size_xyz`` (i, j, k) with the same field of view."""
    import numpy as np
    from scipy import ndimage

    from HCCTwinLib.cases import Case, Geometry
    from HCCTwinLib.simulate.default import default_case

    case, _ = default_case()
    g = case.geometry
    target = (size_xyz[2], size_xyz[1], size_xyz[0])  # k, j, i
    factors = [t / s for t, s in zip(target, g.shape)]
    phases = {n: ndimage.zoom(a.astype(np.float32), factors, order=1) for n, a in case.phases.items()}
    labels = ndimage.zoom(case.labels, factors, order=0)
    spacing = tuple(sp * s / t for sp, s, t in zip(g.spacing, g.shape[::-1], target[::-1]))
    geom = Geometry(shape=tuple(labels.shape), spacing=spacing, origin=g.origin, direction=g.direction)
    return Case(patient_id=case.patient_id, phases=phases, geometry=geom, labels=labels, clinical=case.clinical)


def write_input(size_text: str, folder: Path) -> None:
    from HCCTwinLib.io import save_case

    case = make_case(tuple(int(v) for v in size_text.split("x")))
    save_case(case, folder / "pre")
    (folder / "case.json").write_text(json.dumps({"patient_id": case.patient_id, "clinical": case.clinical}))


# ------------------------------------------------------------------------------------------------------ one size
class _CopyBaselineGenerator:
    """Stands in for the generator: the copy baseline (pre-treatment study at every time point, no spread)."""

    card = {"name": "copy-baseline", "version": ""}
    message = ""
    last_info: dict = {}

    def generate(self, case, *, regimens, weeks, **_):
        from HCCTwinLib.twin.baselines import copy_baseline

        out = copy_baseline(case.phases, case.labels, case.geometry, regimens, weeks)
        for by_week in out.values():
            for fu in by_week.values():
                fu.std = {}  # a deterministic prediction has no spread: no uncertainty overlay
        return out

    def describe(self, **_) -> str:
        return "copy baseline (the pre-treatment study at every time point; benchmark stand-in)"


def run_one(size_text: str, folder: Path, device: str, samples: int, copy_path: bool = True) -> dict:
    """One size in this process: case 1 (cold), case 2 (warm), RSS after each, then the copy-baseline path."""
    t_start = time.perf_counter()
    sampler = Sampler()
    sampler.set("imports")
    import numpy as np

    from HCCTwinLib.pipeline import PipelineOptions
    from HCCTwinLib.segmentation import get_segmenter
    from HCCTwinLib.weights import ModelFileError

    size = tuple(int(v) for v in size_text.split("x"))
    meta = json.loads((folder / "case.json").read_text())
    out: dict = {"size": size_text, "voxels": int(np.prod(size)), "device": device, "samples": samples,
                 "load_start": list(os.getloadavg())}
    try:
        get_segmenter(None, device=device)
        seg_mode = "model"
    except ModelFileError:
        seg_mode = "given"
    out["import_s"] = time.perf_counter() - t_start
    out["segmentation"] = "installed model" if seg_mode == "model" else "simulator labels (no model installed)"
    options = PipelineOptions(device=device, samples=samples, seed=0, segmentation=seg_mode)
    out["rss_after_imports_gb"] = release_memory()
    for run in ("cold", "warm"):
        reset_peak()
        out[run] = _full_run(folder, meta, options, seg_mode, sampler, folder / f"out_{run}")
        out[run]["peak_rss_gb"] = hwm_gb()
        out[run]["rss_after_gb"] = release_memory()
    out["case1_rss_after_gb"] = out["cold"]["rss_after_gb"]
    out["case2_rss_after_gb"] = out["warm"]["rss_after_gb"]
    out["leak_gb"] = out["case2_rss_after_gb"] - out["case1_rss_after_gb"]
    out["regimen_change_s"] = out["warm"].pop("regimen_change_s")
    out["cold"].pop("regimen_change_s")
    if copy_path:
        import HCCTwinLib.twin as twin

        original = twin.get_generator
        twin.get_generator = lambda *a, **k: _CopyBaselineGenerator()
        try:
            reset_peak()
            out["copy"] = _full_run(folder, meta, options, seg_mode, sampler, folder / "out_copy")
            out["copy"]["peak_rss_gb"] = hwm_gb()
            out["copy"].pop("regimen_change_s")
        finally:
            twin.get_generator = original
        release_memory()
    # the process peak: the highest of the per-run peaks (VmHWM is reset before each run) and of what came before
    out["peak_rss_gb"] = max([out[run]["peak_rss_gb"] for run in ("cold", "warm", "copy") if run in out]
                             + [out["rss_after_imports_gb"], hwm_gb()])
    out["load_end"] = list(os.getloadavg())
    out["max_load_1min"] = sampler.max_load
    sampler.stop()
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated() / GB
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def _full_run(folder: Path, meta: dict, options, seg_mode: str, sampler: Sampler, out_dir: Path) -> dict:
    """load -> run_case -> scene + render -> report -> regimen change, timed per stage; nothing is kept."""
    from HCCTwinLib.io import load_case
    from HCCTwinLib.pipeline import run_case

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    sampler.set("load")
    case = load_case(folder / "pre", patient_id=meta["patient_id"], clinical=meta["clinical"])
    if seg_mode == "model":
        case.labels = None
    stages["load"] = time.perf_counter() - t0

    step = {"Segmentation": "segmentation", "Virtual follow-ups": "generate", "Generating": "generate",
            "Response": "survival", "Clinical": "clinical"}

    def progress(_fraction, message):
        for prefix, stage in step.items():
            if str(message).startswith(prefix) and sampler.stage != stage:
                sampler.set(stage)

    result = run_case(case, REGIMENS, WEEKS, options=options, progress=progress)
    stages.update(result.timings)
    sampler.set("scene_and_render")
    stages.update(_scene_render_report(result, out_dir, sampler))
    stages["total"] = sum(stages[k] for k in STAGES if k in stages)
    sampler.set("regimen_change")
    stages["regimen_change_s"] = _regimen_change(result, options)
    stages["notes"] = list(result.notes)
    sampler.set("idle")
    stages["stage_peak_rss_gb"] = sampler.take()
    del result, case
    return stages


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


def _scene_render_report(result, out_dir: Path, sampler: Sampler) -> dict[str, float]:
    from HCCTwinLib.demo import render_result
    from HCCTwinLib.report import write_report

    stages = {}
    t0 = time.perf_counter()
    paths = render_result(result, out_dir, bundle=False)
    stages["scene_and_render"] = time.perf_counter() - t0
    sampler.set("report")
    t0 = time.perf_counter()
    write_report(json.loads(json.dumps(result.summary())), out_dir, images={"layout": paths["layout_png"]})
    stages["report"] = time.perf_counter() - t0
    return stages


# ------------------------------------------------------------------------------------------------------ driver
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128x128x128,256x256x120,512x512x120,512x512x300")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-copy-path", action="store_true", help="skip the run with the copy baseline")
    ap.add_argument("--machine-note", default="", help="added to the machine line (e.g. 'shared with 2 workers')")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make:
        write_input(args.make, args.dir)
        return 0
    if args.one:
        row = run_one(args.one, args.dir, args.device, args.samples, copy_path=not args.no_copy_path)
        args.json.write_text(json.dumps(row, default=str))
        return 0
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M")
    uptime_start = _uptime()
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            base = [sys.executable, __file__, "--dir", str(folder)]
            proc = subprocess.run(base + ["--make", size], capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"size": size, "error": "making the input failed: " + proc.stderr[-2000:]})
                continue
            path = folder / "row.json"
            cmd = base + ["--one", size, "--json", str(path), "--device", args.device, "--samples", str(args.samples)]
            if args.no_copy_path:
                cmd.append("--no-copy-path")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not path.is_file():
                why = f"exit status {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else "")
                rows.append({"size": size, "error": f"{why}: {proc.stderr[-2000:]}"})
            else:
                row = json.loads(path.read_text())
                row["process_s"] = time.perf_counter() - t0
                rows.append(row)
        print(json.dumps(rows[-1], default=str)[:800], flush=True)
    info = machine_info()
    res = {"machine": machine_line(info) + f", Python {info['python']}"
                      + (f"; {args.machine_note}" if args.machine_note else ""), "machine_info": info,
           "date": started, "finished": time.strftime("%Y-%m-%d %H:%M"), "uptime_start": uptime_start,
           "uptime_end": _uptime(), "rows": rows, "targets": TARGETS}
    baseline_path = args.out / "pipeline_benchmark_baseline.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.is_file() else None
    notes_path = args.out / "pipeline_benchmark_notes.md"
    notes = notes_path.read_text() if notes_path.is_file() else None
    write_results(args.out, "pipeline_benchmark", res, render_markdown(res, baseline, notes), default=str)
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


# ------------------------------------------------------------------------------------------------------ report
def _f(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def _run_value(row: dict, run: str, key: str):
    """``row[run][key]`` in this format, or the equivalent in the earlier one (baseline file)."""
    r = row.get(run) or {}
    if key == "peak_rss_gb" and run == "warm" and "cold" in row and "rss_after_gb" not in r:
        return r.get(key)  # the earlier format recorded the process peak so far
    return r.get(key)


def render_markdown(res: dict, baseline: dict | None = None, notes: str | None = None) -> list[str]:
    """The results page, as lines; ``notes`` (``OUT/pipeline_benchmark_notes.md``: conditions, paired runs, what the
    numbers mean) is appended as written."""
    cols = (*STAGES, "total")
    ok = [r for r in res["rows"] if "error" not in r]
    samples = ", ".join(sorted({str(r.get("samples")) for r in ok})) or "?"
    lines = ["# Pipeline benchmark (issue 8)", "", "Demo weights, synthetic data, not for clinical use.", "",
             f"Machine: {res['machine']}.", "",
             f"Run {res['date']} to {res.get('finished', '?')}. Load at start: `{res.get('uptime_start', '?')}`; "
             f"at end: `{res.get('uptime_end', '?')}`.", "",
             "Each size in a fresh process (the input is made by another one); 3 regimens x 3 time points, "
             f"{samples} samples; times in seconds, memory in GB (1 GB = 2^30 bytes). Case 1 = cold (imports, "
             "model loading), case 2 = the same input again, warm.", ""]
    for run, title in (("cold", "Case 1: cold"), ("warm", "Case 2: warm"),
                       ("copy", "Copy-baseline path (generator replaced by the copy baseline; warm)")):
        if not any(run in r for r in ok):
            continue
        lines += [f"## {title}", "", "| size | " + " | ".join(cols) + " | peak RSS |",
                  "|---" * (len(cols) + 2) + "|"]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['size']} | error: {r['error'][-300:]!r} |")
                continue
            if run not in r:
                continue
            s = r[run]
            lines.append(f"| {r['size']} | " + " | ".join(_f(s.get(k)) for k in cols)
                         + f" | {_f(s['peak_rss_gb'], 2)} |")
        lines.append("")
    lines += ["## Memory and regimen change", "",
              "Peak RSS per stage (warm run), RSS after each case once everything is dropped (case 2 - case 1 = "
              "what a case leaves behind), regimen change (survival + table + curves + views, no model re-run).", "",
              "| size | load | segmentation | generate | survival | scene + render | report | process peak | "
              "RSS after case 1 | RSS after case 2 | leak | regimen change s | segmentation | max load (1 min) |",
              "|---" * 14 + "|"]
    for r in ok:
        p = r["warm"].get("stage_peak_rss_gb", {})
        lines.append(f"| {r['size']} | " + " | ".join(_f(p.get(k), 2) for k in (
            "load", "segmentation", "generate", "survival", "scene_and_render", "report"))
            + f" | {_f(r['peak_rss_gb'], 2)} | {_f(r['case1_rss_after_gb'], 2)} | {_f(r['case2_rss_after_gb'], 2)}"
            f" | {r['leak_gb']:+.3f} | {_f(r['regimen_change_s'], 2)} | {r['segmentation']} | "
            f"{_f(r.get('max_load_1min'), 1)} |")
    if any(r.get("gpu") for r in ok):
        lines += ["", "GPU: " + ", ".join(f"{r['size']}: {r.get('gpu')} peak {_f(r.get('gpu_peak_memory_gb'), 2)} GB"
                                          for r in ok)]
    if baseline:
        old = {r["size"]: r for r in baseline.get("rows", [])}
        lines += ["", f"## Before / after (before: `pipeline_benchmark_baseline.json`, {baseline.get('date')}, "
                      "same machine type; the segmentation network was not installed then)", "",
                  "| size | cold total s | warm total s | warm generate s | warm scene + render s | peak RSS GB |",
                  "|---|---|---|---|---|---|"]
        for r in ok:
            o = old.get(r["size"], {})

            def pair(run, key, nd=1, o=o, r=r):
                before = (o.get(run) or {}).get(key) if "error" not in o else None
                return f"{_f(before, nd) if o else 'n/a'} -> {_f((r.get(run) or {}).get(key), nd)}"

            old_peak = o.get("peak_rss_gb") if o and "error" not in o else None
            peak = (f"{_f(old_peak, 2) if old_peak is not None else 'killed (out of memory)' if o else 'n/a'} -> "
                    f"{_f(r['peak_rss_gb'], 2)}")
            lines.append(f"| {r['size']} | {pair('cold', 'total')} | {pair('warm', 'total')} | "
                         f"{pair('warm', 'generate')} | {pair('warm', 'scene_and_render')} | {peak} |")
    by = {r["size"]: r for r in ok}
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---|---|"]
    checks = [("cold full pipeline 512x512x120 <= 90 s", (by.get("512x512x120", {}).get("cold") or {}).get("total"),
               90),
              ("warm full pipeline 512x512x120 <= 30 s", (by.get("512x512x120", {}).get("warm") or {}).get("total"),
               30),
              ("regimen change <= 1 s (worst size)", max((r["regimen_change_s"] for r in ok), default=None), 1.0),
              ("peak RSS 512x512x300 <= 4 GB", by.get("512x512x300", {}).get("peak_rss_gb"), 4.0)]
    for name, value, limit in checks:
        lines.append(f"| {name} | {_f(value, 2)} | {'n/a' if value is None else 'yes' if value <= limit else 'no'} |")
    run_notes = sorted({n for r in ok for run in ("cold", "warm") for n in (r.get(run) or {}).get("notes", [])})
    if run_notes:
        lines += ["", "Notes from the runs:"] + [f"- {n}" for n in run_notes]
    if notes:
        lines += ["", notes.rstrip()]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
