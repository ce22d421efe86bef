"""Run every benchmark with the settings its recorded results used (``make benchmarks``).

Usage::

    python benchmarks/run_all.py [--only NAME[,NAME]] [--data out/bench-data] [--out benchmarks/results] [--quick]
                                 [--list]

Simulates the cohorts the benchmarks read (into ``--data``, re-used when already there) and runs, in order:

==========================  ============================================================================================
simulator_calibration       trial medians / response rates of 500 simulated patients vs the reference (issue 3)
survival_evaluation         survival engine on a 2000-patient development / 800-patient hold-out image cohort (issue 6)
segmentation                shipped segmentation network on the 30-patient hold-out (seed 900) (issue 4)
generator                   shipped generator vs counterfactual truth on the same hold-out (issue 5)
generator_fit_choices       how the twin's kinetics are fitted: variants chosen on a tuning cohort (seed 950) (issue 23)
generator_render_choices    how the twin draws residual viable tumour: variants chosen on the same tuning cohort (23)
generator_viable_shift      how the twin changes surviving viable HU: median, per-lesion line, bands near necrosis (23)
generator_sampling_choices  how the twin draws its samples: their mRECIST readings vs the truth (23)
tace_viable_blur            the viable-HU change after TACE by distance from the lipiodol (23)
twin_records_cache          refitting the twin from its records cache vs reading 574 patients' images (issue 27)
twin_check                  the twin check on the hold-out: virtual vs unchanged scan against the observed one (23)
generator_ceiling           what pre-treatment information allows: a simulator oracle without the latent biology (5)
generator_speed             generator request time by memory layout and sampling steps (issues 5 / 8)
cpu_precision               bfloat16 vs float32 CPU inference: time and agreement (issues 4 / 5 / 8)
registration                target-registration error on simulated misalignments (issues 7 / 9)
followup_registration       a real follow-up in predict: registered inside the segmented liver vs without (issue 22)
pipeline                    stage timings and peak memory from 128^3 to 512x512x300, copy baseline (issue 8)
study_dicom                 simulate as DICOM -> hcctwin import -> hcctwin study (issue 9)
segmentation_phases         the same hold-out with one phase only, portal then arterial (issue 22)
segmentation_speed          warm time and peak memory on 512x512x120: two phases, portal only, arterial only (22)
domain_guard                the domain guard on perturbed hold-out scans: verdict vs liver Dice (issue 22)
segmentation_thin_scans     slabs of 24 / 16 / 10 slices through the liver: zero vs edge padding (issue 22)
phase_alignment             phases from separate breath-holds: segmentation without / with the alignment (issue 22)
real_scans                  segmentation + guard on the public real CTs of real_scans.json (issue 22; --real-data)
real_scan_twin              the anchored twin on a public real CT: time, memory, anatomy kept (issue 23; --real-data)
survival_small_cohorts      survival cv on small real / simulated cohorts vs the established scores (issue 27)
metastasis_competing_risk   competing-risk metastasis model beside the 2-year logistic one (issue 27)
parallel_speedup            Dask 2 workers vs serial, torchrun 2 processes vs 1 (issue 27)
bad_input                   bad input and faults through the command line (issue 24)
viewer_timing               the browser viewer in headless Chromium: first paint, clicks (issue 25; needs chromium)
==========================  ============================================================================================

Not run here: ``train_segmentation_synthetic.py`` (a training run of hours that produced a model, not a measurement;
its log is in ``results/segmentation_training/``).

``real_scans`` and ``real_scan_twin`` read public scans that cannot be downloaded at run time: fetch them as
``benchmarks/real_scans.json`` says and give their root folder as ``--real-data``; without it both are skipped.

``--quick`` runs each on a small input (minutes, for checking that they run; its numbers are not the recorded
ones and are written to ``--out`` which then should not be the results folder). Each benchmark writes its own
``.md`` / ``.json`` with the machine and the date. Hours on 2 CPU cores; minutes with a GPU for the image models.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
WEIGHTS = ROOT / "HCCTwin" / "HCCTwinLib" / "weights"


def _simulate(data: Path, name: str, n: int, seed: int, *, fast: bool, truth_images: bool = True) -> Path:
    folder = data / name
    if (folder / "clinical.csv").is_file():
        return folder
    cmd = [sys.executable, "-m", "HCCTwinLib.cli", "simulate", "--n", str(n), "--seed", str(seed), "--out",
           str(folder)] + (["--fast"] if fast else []) + ([] if truth_images else ["--no-truth-images"])
    subprocess.run(cmd, check=True, cwd=ROOT)
    return folder


def plan(data: Path, out: Path, quick: bool, real_data: Path | None = None) -> dict[str, list[str] | callable]:
    py = sys.executable
    q = quick

    def survival():
        dev = _simulate(data, "surv779img" if not q else "q_surv_dev", 2000 if not q else 200, 779, fast=True,
                        truth_images=False)
        hold = _simulate(data, "surv777img" if not q else "q_surv_hold", 800 if not q else 120, 777, fast=True,
                         truth_images=False)
        return [py, str(BENCH / "survival_evaluation.py"), "--cohort", str(dev), "--holdout-cohort", str(hold),
                "--out", str(out), "--cache", str(data / "featcache")] + (["--bootstrap", "5"] if q else [])

    def segmentation_phases():
        # two runs of one script: the portal-only and the arterial-only results are separate files
        for phase in ("portal", "arterial"):
            subprocess.run([py, str(BENCH / "segmentation_evaluation.py"), "--weights",
                            str(WEIGHTS / "hcctwin_seg.safetensors"), "--cohort", str(holdout()), "--n",
                            "30" if not q else "4", "--seed", "900", "--phases", phase, "--out", str(out)],
                           check=True, cwd=ROOT)
        return None

    def holdout():
        return _simulate(data, "holdout900" if not q else "q_holdout", 30 if not q else 4, 900, fast=q)

    def segmentation():
        return [py, str(BENCH / "segmentation_evaluation.py"), "--weights", str(WEIGHTS / "hcctwin_seg.safetensors"),
                "--cohort", str(holdout()), "--n", "30" if not q else "4", "--seed", "900", "--out", str(out)] + \
            (["--skip-speed"] if q else [])

    def train101():  # observed follow-ups for the exponential baseline (the generator_ceiling's training seed)
        return _simulate(data, "train101" if not q else "q_train101", 120 if not q else 6, 101, fast=q,
                         truth_images=False)

    def generator():
        return [py, str(BENCH / "generator_evaluation.py"), "--cohort", str(holdout()), "--weights",
                str(WEIGHTS / "hcctwin_twin.safetensors"), "--train-cohort", str(train101()), "--out", str(out)] + \
            (["--max-cases", "2", "--samples", "1", "--skip-timing"] if q else [])

    def generator_fit_choices():  # the shipped twin's training cohort, a tuning cohort with truth, the hold-out
        train = _simulate(data, "train1101_600" if not q else "q_train1101", 600 if not q else 12, 1101, fast=q,
                          truth_images=False)
        tune = _simulate(data, "tune950" if not q else "q_tune950", 60 if not q else 4, 950, fast=q)
        return [py, str(BENCH / "generator_fit_choices.py"), "--train", str(train), "--tune", str(tune),
                "--holdout", str(holdout()), "--workers", "2", "--cache", str(data / "fitcache"), "--out", str(out)]

    def generator_render_choices():
        tune = _simulate(data, "tune950" if not q else "q_tune950", 60 if not q else 4, 950, fast=q)
        return [py, str(BENCH / "generator_render_choices.py"), "--tune", str(tune), "--holdout", str(holdout()),
                "--out", str(out)]

    def generator_viable_shift():
        tune = _simulate(data, "tune950" if not q else "q_tune950", 60 if not q else 4, 950, fast=q)
        return [py, str(BENCH / "generator_viable_shift.py"), "--tune", str(tune), "--holdout", str(holdout()),
                "--earlier", str(BENCH / "data" / "twin_1.3.0" / "hcctwin_twin.safetensors"), "--out", str(out)]

    def generator_sampling_choices():
        tune = _simulate(data, "tune950" if not q else "q_tune950", 60 if not q else 4, 950, fast=q)
        return [py, str(BENCH / "generator_sampling_choices.py"), "--tune", str(tune), "--holdout", str(holdout()),
                "--out", str(out)]

    def tace_viable_blur():
        tune = _simulate(data, "tune950" if not q else "q_tune950", 60 if not q else 4, 950, fast=q)
        return [py, str(BENCH / "tace_viable_blur.py"), "--cohort", str(tune), "--out", str(out)]

    def twin_records_cache():  # the shipped twin's training cohort: the refit must reproduce the shipped arrays
        train = _simulate(data, "train1101_600" if not q else "q_train1101", 600 if not q else 12, 1101, fast=q,
                          truth_images=False)
        return [py, str(BENCH / "twin_records_cache.py"), "--cohort", str(train), "--workers", "2", "--out",
                str(out)] + (["--max-cases", "6"] if q else [])

    return {
        "simulator_calibration": lambda: [py, str(BENCH / "simulator_calibration.py"), "--n",
                                          "500" if not q else "100", "--seed", "2026", "--out",
                                          str(out / "simulator_calibration.md")],
        "survival_evaluation": survival,
        "segmentation": segmentation,
        "generator": generator,
        "generator_fit_choices": generator_fit_choices,
        "generator_render_choices": generator_render_choices,
        "generator_viable_shift": generator_viable_shift,
        "generator_sampling_choices": generator_sampling_choices,
        "tace_viable_blur": tace_viable_blur,
        "twin_records_cache": twin_records_cache,
        "twin_check": lambda: [py, str(BENCH / "twin_check.py"), "--out", str(out / "twin_check")] +
                              (["--n", "2", "--samples", "1"] if q else []),
        "generator_ceiling": lambda: [py, str(BENCH / "generator_ceiling.py"), "--out", str(out)] +
                                     (["--evaluation", str(out / "generator_evaluation.json")]
                                      if (out / "generator_evaluation.json").is_file() else []) +
                                     (["--n", "20", "--draws", "20", "--train-n", "20"] if q else []),
        "registration": lambda: [py, str(BENCH / "registration_evaluation.py"), "--out",
                                 str(out / "registration_evaluation")] +
                                (["--fast", "2", "--full", "0", "--ct512", "0"] if q else []),
        "followup_registration": lambda: [py, str(BENCH / "followup_registration_mask.py"), "--out",
                                          str(out / "followup_registration_mask")] +
                                         (["--fast", "1", "--full", "0", "--ct512", "0"] if q else []) +
                                         ([] if real_data is None else ["--real-data", str(real_data)]),
        "generator_speed": lambda: [py, str(BENCH / "generator_speed.py"), "--out", str(out)] +
                                   (["--steps", "1", "--repeats", "1"] if q else []),
        "cpu_precision": lambda: [py, str(BENCH / "cpu_precision.py"), "--out", str(out)] +
                                 (["--repeats", "1"] if q else []),
        "pipeline": lambda: [py, str(BENCH / "pipeline_benchmark.py"), "--out", str(out)] +
                            (["--sizes", "128x128x128", "--samples", "1"] if q else []),
        "study_dicom": lambda: [py, str(BENCH / "study_dicom.py"), "--work", str(data / "study-dicom"), "--out",
                                str(out)] + (["--n", "15", "--fast", "--max-cases", "1", "--samples", "1"] if q else
                                             ["--n", "120", "--seed", "4040", "--max-cases", "10"]),
        "segmentation_phases": segmentation_phases,
        "segmentation_speed": lambda: [py, str(BENCH / "segmentation_evaluation.py"), "--weights",
                                       str(WEIGHTS / "hcctwin_seg.safetensors"), "--speed-only", "--out", str(out)],
        "domain_guard": lambda: [py, str(BENCH / "domain_guard.py"), "--cohort", str(holdout()), "--n",
                                 "12" if not q else "2", "--out", str(out)],
        "segmentation_thin_scans": lambda: [py, str(BENCH / "segmentation_thin_scans.py"), "--cohort", str(holdout()),
                                            "--n", "12" if not q else "1", "--out", str(out)] +
                                           (["--slices", "10"] if q else []),
        "phase_alignment": lambda: [py, str(BENCH / "phase_alignment.py"), "--cohort", str(holdout()), "--n",
                                    "12" if not q else "1", "--out", str(out)] +
                                   ([] if real_data is None else ["--real-data", str(real_data)]),
        "real_scans": lambda: None if real_data is None else [
            py, str(BENCH / "real_scans.py"), "--data", str(real_data), "--out", str(out)] +
            ([] if q else ["--pictures", str(ROOT / "docs" / "images")]),
        "real_scan_twin": lambda: None if real_data is None else [
            py, str(BENCH / "real_scan_twin.py"), "--data-root", str(real_data), "--out", str(out)] +
            (["--figure", str(out / "real_twin.png")] if q else []),
        "survival_small_cohorts": lambda: [py, str(BENCH / "survival_small_cohorts.py"), "--out", str(out)] +
                                          (["--quick"] if q else []),
        "metastasis_competing_risk": lambda: [py, str(BENCH / "metastasis_competing_risk.py"), "--n",
                                              "3000" if not q else "400", "--out", str(out)],
        "parallel_speedup": lambda: [py, str(BENCH / "parallel_speedup.py"), "--cohort", str(train101()), "--n",
                                     "40" if not q else "6", "--out", str(out)] +
                                    (["--train-epochs", "1", "--train-cases", "4"] if q else []),
        "bad_input": lambda: [py, str(BENCH / "bad_input.py"), "--out", str(out)],
        "viewer_timing": lambda: None if shutil.which("chromium") is None else [
            py, str(BENCH / "viewer_timing.py"), "--out", str(out)] + (["--runs", "1"] if q else []),
    }

#: benchmark scripts that run_all does not run (see the module docstring)
NOT_RUN = ("train_segmentation_synthetic",)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    ap.add_argument("--data", type=Path, default=ROOT / "out" / "bench-data", help="simulated cohorts (re-used)")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--quick", action="store_true", help="small inputs: checks that every benchmark runs")
    ap.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    ap.add_argument("--real-data", type=Path, help="root folder of the public real scans (benchmarks/real_scans.json)"
                                                   "; real_scans and real_scan_twin are skipped without it")
    args = ap.parse_args(argv)
    steps = plan(args.data, args.out, args.quick, args.real_data)
    if args.list:
        print("\n".join(steps))
        return 0
    names = list(steps) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in steps]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(steps)}")
    if args.quick and args.out.resolve() == (BENCH / "results").resolve():
        ap.error("--quick numbers are not the recorded ones: give another --out")
    args.data.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, timings = [], {}
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            cmd = steps[name]()
            if cmd is None and name.startswith("real_") and args.real_data is None:
                print(f"== {name}: skipped (needs --real-data DIR, the public scans of benchmarks/real_scans.json)")
                continue
            if cmd is None and name == "viewer_timing":
                print(f"== {name}: skipped (needs chromium on the PATH)")
                continue
            if cmd is not None:
                subprocess.run(cmd, check=True, cwd=ROOT)
        except subprocess.CalledProcessError as exc:
            failed.append(f"{name} (exit {exc.returncode})")
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"== {name}: {timings[name]} s", flush=True)
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    if failed:
        print("non-zero exit: " + ", ".join(failed) + " (a benchmark also exits 1 when it ran but its targets are "
              "not met: see its .md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
