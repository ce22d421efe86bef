"""Speed-up of cohort work on a 2-worker Dask LocalCluster vs the serial run on this machine (issue 27), and a check
that both give the same results:

    .venv/bin/python benchmarks/parallel_speedup.py --cohort /work/data/train101 [--n 40] [--workers 2]

Two steps of the batch commands: the survival feature table (image + response features of every patient, read from
the cohort's label maps; no deep features) and the segmentation evaluation (the installed model on each labelled
pre-treatment study). The serial run uses torch's default threads (all cores); each Dask worker one thread.

Then segmentation training under torchrun (``--train-epochs``, 0 to skip): the same short run (the shipped
architecture and patch size, ``--train-cases`` patients, bfloat16 autocast where the CPU has it) started with
``--nproc_per_node 1`` (one process, torch on every core) and with ``--nproc_per_node N`` (N processes, one thread
each, DDP over gloo, the epoch's iterations shared out); the wall time of the command and the per-epoch times of the
training log are compared.
Results: benchmarks/results/parallel_speedup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, write_results  # noqa: E402


def subset(cohort: Path, n: int, out: Path) -> Path:
    """The first ``n`` patients of a cohort (clinical.csv rows + copies of their case folders)."""
    import pandas as pd

    table = pd.read_csv(cohort / "clinical.csv").head(n)
    (out / "cases").mkdir(parents=True)
    table.to_csv(out / "clinical.csv", index=False)
    for pid in table["patient_id"]:
        shutil.copytree(cohort / "cases" / str(pid), out / "cases" / str(pid))  # a cohort refuses links out of it
    return out


def torchrun_training(cohort: Path, out: Path, procs: int, *, epochs: int, cases: int, threads: int) -> dict:
    """One short segmentation training under ``torchrun --nproc_per_node procs``: wall time, per-epoch times and
    losses from rank 0's log."""
    import torch

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m",
           "HCCTwinLib.cli", "train", "segmentation", "--cohort", str(cohort), "--out", str(out), "--epochs",
           str(epochs), "--max-cases", str(cases), "--device", "cpu", "--seed", "0"]
    bf16 = bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if bf16:
        cmd.append("--cpu-bf16")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // procs)),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "HCCTwin"), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"torchrun with {procs} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    card = json.loads((out / "hcctwin_seg.json").read_text())
    return {"processes": procs, "threads_per_process": max(1, threads // procs), "wall_s": wall,
            "epoch_s": [e["seconds"] for e in log], "train_loss": [e["train_loss"] for e in log],
            "iterations_per_process": [e["iterations"] for e in log], "bf16": bf16,
            "iterations_per_epoch": card["hyperparameters"]["iterations_per_epoch"],
            "distributed": card["hyperparameters"].get("distributed")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--n", type=int, default=40, help="patients (feature table); a third of them for segmentation")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train-epochs", type=int, default=2, help="segmentation training under torchrun (0: skip)")
    ap.add_argument("--train-cases", type=int, default=8, help="patients of the torchrun training run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    import numpy as np
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
           "workers": args.workers, "machine": machine_info(torch_threads_serial=torch.get_num_threads())}
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
    if args.train_epochs > 0:
        threads = os.cpu_count() or 1
        runs = [torchrun_training(cohort, tmp / f"train{p}", p, epochs=args.train_epochs, cases=args.train_cases,
                                  threads=threads) for p in (1, args.workers)]
        res["torchrun_training"] = runs
        res["torchrun_wall_speedup"] = runs[0]["wall_s"] / runs[1]["wall_s"]
        res["torchrun_epoch_speedup"] = float(np.mean(runs[0]["epoch_s"]) / np.mean(runs[1]["epoch_s"]))
    shutil.rmtree(tmp, ignore_errors=True)
    md = ["# Cohort work on Dask: 2 workers vs serial (issue 27)", "",
          f"{res['machine']['date']}, {machine_line(res['machine'])}. "
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
    if "torchrun_training" in res:
        one, many = res["torchrun_training"]
        md += ["", f"## Segmentation training under torchrun: {many['processes']} processes vs 1", "",
               f"The shipped architecture and patch size, {args.train_cases} patients, {args.train_epochs} epochs of "
               f"{one['iterations_per_epoch']} iterations (shared out between the processes), "
               f"{'bfloat16 autocast' if one['bf16'] else 'float32'}, validation on rank 0; "
               f"`torchrun --standalone --nproc_per_node P -m HCCTwinLib.cli train segmentation ...`.", "",
               "| processes x threads | wall time of the command (s) | seconds per epoch | iterations per process "
               "and epoch | train loss per epoch |", "|---|---|---|---|---|"]
        for run in (one, many):
            md.append(f"| {run['processes']} x {run['threads_per_process']} | {run['wall_s']:.1f} | "
                      f"{', '.join(f'{x:.1f}' for x in run['epoch_s'])} | "
                      f"{', '.join(map(str, run['iterations_per_process']))} | "
                      f"{', '.join(f'{x:.3f}' for x in run['train_loss'])} |")
        md += ["", f"Speed-up of {many['processes']} processes: {res['torchrun_wall_speedup']:.2f}x on the command's "
               f"wall time, {res['torchrun_epoch_speedup']:.2f}x per epoch. The losses differ: each process draws its "
               f"own batches, so the two runs are not the same training (the test checks that the processes train "
               f"one model)."]
    write_results(args.out, "parallel_speedup", res, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
