"""How much the records cache of ``hcctwin train generator --records-cache DIR`` saves when the anchored twin is
refitted on a large cohort (issue 27: cohort work past one machine), and whether the refit reproduces the shipped
model:

    .venv/bin/python benchmarks/twin_records_cache.py --cohort /work/data/train1101_600 [--workers 2]

(``train1101_600`` = ``hcctwin simulate --n 600 --seed 1101 --no-truth-images``, the cohort the shipped
``hcctwin_twin`` was fitted on.) Two fits with the shipped settings, each reading the follow-ups on a local Dask
cluster of ``--workers`` workers: (1) an empty cache (read the images, write the records), (2) the filled cache (no
image read). The fitted arrays are compared with each other and with the shipped
``HCCTwinLib/weights/hcctwin_twin.safetensors``. Results: ``benchmarks/results/twin_records_cache.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, write_results  # noqa: E402


def _arrays(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _same_arrays(a: dict, b: dict) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-cases", type=int, help="first N patients only (a quicker check; no comparison with the "
                                                  "shipped model then)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    from HCCTwinLib.twin.fit import train_kinetic

    shipped = ROOT / "HCCTwin" / "HCCTwinLib" / "weights" / "hcctwin_twin.safetensors"
    work = Path(tempfile.mkdtemp(prefix="hcctwin_cache_bench_"))
    cache = work / "records"
    runs = []
    try:
        for label, use_cache in (("empty cache (read the images, write the records)", cache),
                                 ("filled cache (no image read)", cache)):
            out = work / f"fit{len(runs)}"
            t0 = time.perf_counter()
            res = train_kinetic(args.cohort, out, max_cases=args.max_cases, scheduler="local", workers=args.workers,
                                cache=use_cache, log=None)
            seconds = time.perf_counter() - t0
            weights = Path(res["weights"])
            runs.append({"run": label, "seconds": round(seconds, 1), "patients": res["training_data"]["patients"],
                         "followups": res["training_data"]["followups"],
                         "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "weights": weights})
            print(f"{label}: {seconds:.1f} s, {runs[-1]['followups']} follow-ups", flush=True)
        first = _arrays(runs[0]["weights"])
        same_runs = all(_same_arrays(first, _arrays(r["weights"])) for r in runs[1:])
        same_shipped = None if args.max_cases else _same_arrays(first, _arrays(shipped))
        cache_files = sorted(cache.glob("*.json"))
        cache_mb = sum(p.stat().st_size for p in cache_files) / 1e6
    finally:
        for r in runs:
            r.pop("weights", None)
        shutil.rmtree(work, ignore_errors=True)

    res = {"cohort": str(args.cohort), "workers": args.workers, "max_cases": args.max_cases, "runs": runs,
           "fitted_arrays_equal_across_runs": same_runs, "fitted_arrays_equal_to_shipped": same_shipped,
           "cache_files": len(cache_files), "cache_mb": round(cache_mb, 2),
           "machine": machine_info()}
    speed = runs[0]["seconds"] / max(runs[1]["seconds"], 1e-9)
    md = ["# Refitting the anchored twin from its records cache (issue 27)", "",
          f"{res['machine']['date']}, {machine_line(res['machine'])}, local Dask cluster of {args.workers} workers. "
          f"Command: `.venv/bin/python benchmarks/twin_records_cache.py --cohort {Path(args.cohort).name}"
          + (f" --max-cases {args.max_cases}" if args.max_cases else "") + "`.", "",
          "| run | seconds | patients | follow-ups | model SHA-256 |", "|---|---|---|---|---|"]
    md += [f"| {r['run']} | {r['seconds']:.1f} | {r['patients']} | {r['followups']} | `{r['sha256'][:16]}...` |"
           for r in runs]
    md += ["", f"A refit from the filled cache is {speed:.0f}x faster than reading the images; the cache holds "
               f"{len(cache_files)} patient files ({cache_mb:.1f} MB). Fitted arrays identical in both runs: "
               f"**{'yes' if same_runs else 'NO'}**."]
    if same_shipped is not None:
        md.append(f"Fitted arrays identical to the shipped `hcctwin_twin.safetensors`: "
                  f"**{'yes' if same_shipped else 'NO'}** (the file's SHA-256 also covers its card's creation time).")
    write_results(args.out, "twin_records_cache", res, md)
    return 0 if same_runs else 1


if __name__ == "__main__":
    sys.exit(main())
