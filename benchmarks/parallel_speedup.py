"""Speed-up of cohort work on a 2-worker Dask LocalCluster vs the serial run on this machine (issue 27), and a check
that both give the same results:

    .venv/bin/python benchmarks/parallel_speedup.py --cohort /work/data/train101 [--n 40] [--workers 2]

Two steps of the batch commands: the survival feature table (image + response features of every patient, read from
the cohort's label maps; no deep features) and the segmentation evaluation (the installed model on each labelled
pre-treatment study). The serial run uses torch's default threads (all cores); each Dask worker one thread.
Results: benchmarks/results/parallel_speedup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))


def subset(cohort: Path, n: int, out: Path) -> Path:
    """The first ``n`` patients of a cohort (clinical.csv rows + copies of their case folders)."""
    import pandas as pd

    table = pd.read_csv(cohort / "clinical.csv").head(n)
    (out / "cases").mkdir(parents=True)
    table.to_csv(out / "clinical.csv", index=False)
    for pid in table["patient_id"]:
        shutil.copytree(cohort / "cases" / str(pid), out / "cases" / str(pid))  # a cohort refuses links out of it
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--n", type=int, default=40, help="patients (feature table); a third of them for segmentation")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    import pandas as pd
    import torch

    from HCCTwinLib.evaluate import evaluate_segmentation
    from HCCTwinLib.parallel import client_for
    from HCCTwinLib.survival.cohort import cohort_feature_table

    tmp = Path(tempfile.mkdtemp())
    cohort = subset(Path(args.cohort), args.n, tmp / "cohort")
    ids = pd.read_csv(cohort / "clinical.csv")["patient_id"]
    n_seg = max(2, args.n // 3)
    res = {"cohort": Path(args.cohort).name, "n_feature_table": args.n, "n_segmentation": n_seg,
           "workers": args.workers, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                                "torch_threads_serial": torch.get_num_threads(),
                                                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}}
    t = time.perf_counter()
    serial_table, _ = cohort_feature_table(cohort, deep=False)
    res["feature_table_serial_s"] = time.perf_counter() - t
    t = time.perf_counter()
    serial_seg = evaluate_segmentation(cohort, ids, n_seg, "cpu")
    res["segmentation_serial_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with client_for("local", workers=args.workers) as client:
        res["cluster_start_s"] = time.perf_counter() - t
        import HCCTwinLib.parallel as parallel

        original = parallel.client_for

        class _Reuse:  # the commands open their own cluster; here both steps share one (its start timed apart)
            def __init__(self, *a, **k):
                pass

            def __enter__(self):
                return client

            def __exit__(self, *exc):
                return False

        parallel.client_for = _Reuse
        try:
            t = time.perf_counter()
            dask_table, _ = cohort_feature_table(cohort, deep=False, scheduler="local", workers=args.workers)
            res["feature_table_dask_s"] = time.perf_counter() - t
            t = time.perf_counter()
            dask_seg = evaluate_segmentation(cohort, ids, n_seg, "cpu", scheduler="local", workers=args.workers)
            res["segmentation_dask_s"] = time.perf_counter() - t
        finally:
            parallel.client_for = original
    res["feature_table_identical"] = bool(dask_table.equals(serial_table))
    diffs = [abs((dask_seg["mean_dice"][k] or 0) - (v or 0)) for k, v in serial_seg["mean_dice"].items()]
    res["segmentation_max_abs_dice_difference"] = float(max(diffs) if diffs else 0.0)
    for step in ("feature_table", "segmentation"):
        res[f"{step}_speedup"] = res[f"{step}_serial_s"] / res[f"{step}_dask_s"]
    shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    (out / "parallel_speedup.json").write_text(json.dumps(res, indent=2))
    md = ["# Cohort work on Dask: 2 workers vs serial (issue 27)", "",
          f"{res['machine']['date']}, {res['machine']['platform']}, {res['machine']['cpu_count']} CPU cores, no GPU. "
          f"Command: `.venv/bin/python benchmarks/parallel_speedup.py --cohort {res['cohort']} --n {args.n}`.", "",
          f"| step | patients | serial (s) | Dask, {args.workers} workers (s) | speed-up | same result |",
          "|---|---|---|---|---|---|",
          f"| survival feature table (images, no deep features) | {args.n} | {res['feature_table_serial_s']:.1f} | "
          f"{res['feature_table_dask_s']:.1f} | {res['feature_table_speedup']:.2f}x | "
          f"{'identical table' if res['feature_table_identical'] else 'DIFFERS'} |",
          f"| segmentation evaluation (installed model) | {n_seg} | {res['segmentation_serial_s']:.1f} | "
          f"{res['segmentation_dask_s']:.1f} | {res['segmentation_speedup']:.2f}x | max Dice difference "
          f"{res['segmentation_max_abs_dice_difference']:.1e} |", "",
          f"Starting the local cluster took {res['cluster_start_s']:.1f} s (not in the step times; each command pays "
          f"it once). Serial: torch on {res['machine']['torch_threads_serial']} threads; Dask: one thread per worker."]
    (out / "parallel_speedup.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
