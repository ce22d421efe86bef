"""Thin scans: how the installed segmentation reads a scan with fewer slices than its sliding window (issue 22).

    .venv/bin/python benchmarks/segmentation_thin_scans.py [--cohort HOLDOUT] [--n 12] [--slices 24,16,10]
                                                          [--out benchmarks/results]

The network reads windows of 32 slices at 3.5 mm (112 mm); a scan that covers less (a liver-only acquisition, a
thick-slice study, a scan cut through the liver) reaches it padded. Each hold-out patient's pre-treatment study (the
simulated hold-out, seed 900; or ``--cohort``) is cut to a slab of N slices through the middle of its liver and
segmented twice: with the crop padded by zeros (MONAI's default, the bottom of the HU window: air above and below)
and by repeating the edge slices ("replicate", :data:`HCCTwinLib.segmentation.inference.PADDING_MODE`). The whole
study is segmented too, where the padding should change nothing. Dice of the liver (labels 1-3) and of the tumour
(viable + necrosis) against the simulator's labels cut the same way; "false tumour" is the tumour volume drawn in
slabs whose truth has none. Synthetic data, not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, machine_line, write_results  # noqa: E402
from segmentation_evaluation import _holdout_cases  # noqa: E402

from HCCTwinLib.cases import Case, sub_geometry  # noqa: E402
from HCCTwinLib.segmentation import dice_per_label, get_segmenter  # noqa: E402
from HCCTwinLib.segmentation.inference import PADDING_MODE  # noqa: E402

MODES = ("constant", "replicate")


def slab(case: Case, labels: np.ndarray, n: int | None) -> tuple[Case, np.ndarray]:
    """The study cut to ``n`` slices centred on the middle of its liver (None: the whole study)."""
    if n is None:
        return case, labels
    ks = np.flatnonzero((labels > 0).any(axis=(1, 2)))
    mid = (int(ks.min()) + int(ks.max())) // 2
    lo = min(max(0, mid - n // 2), max(0, labels.shape[0] - n))
    region = (slice(lo, lo + n), slice(None), slice(None))
    cut = Case(patient_id=case.patient_id, phases={p: np.ascontiguousarray(v[region]) for p, v in case.phases.items()},
               geometry=sub_geometry(case.geometry, region), clinical=dict(case.clinical), modality=case.modality)
    return cut, labels[region]


def set_padding(seg, mode: str) -> None:
    for stage in {id(s): s for s in (seg, seg.envelope_stage, seg.pvtt_stage) if s is not None}.values():
        stage.padding_mode = mode


def run(cohort: str | None, n: int, seed: int, slices: list[int]) -> dict:
    seg = get_segmenter(None, device="cpu")
    rows = []
    for pid, case, labels in _holdout_cases(n, seed, cohort):
        voxel_ml = float(np.prod(case.geometry.spacing)) / 1000.0
        for size in [None, *slices]:
            sub, lab = slab(case, labels, size)
            truth_tumour = bool(np.isin(lab, (2, 3)).any())
            for mode in MODES:
                set_padding(seg, mode)
                t = time.perf_counter()
                pred = seg.segment(sub)
                d = dice_per_label(pred, lab)
                rows.append({"patient_id": pid, "slices": size or int(labels.shape[0]), "whole": size is None,
                             "padding": mode, "liver_dice": d.get("liver_total"),
                             "tumour_dice": d.get("tumor_total") if truth_tumour else None,
                             "false_tumour_ml": None if truth_tumour else float(np.isin(pred, (2, 3)).sum() * voxel_ml),
                             "seconds": round(time.perf_counter() - t, 2)})
        print(pid, json.dumps([{k: r[k] for k in ("slices", "padding", "liver_dice", "tumour_dice")}
                               for r in rows if r["patient_id"] == pid], default=str)[:400], flush=True)
    set_padding(seg, PADDING_MODE)
    summary = []
    for size in ["whole", *slices]:
        for mode in MODES:
            sel = [r for r in rows if r["padding"] == mode and (r["whole"] if size == "whole"
                                                                 else (not r["whole"] and r["slices"] == size))]

            def mean(key, sel=sel):
                vals = [r[key] for r in sel if r[key] is not None and np.isfinite(r[key])]
                return (float(np.mean(vals)), len(vals)) if vals else (None, 0)

            summary.append({"slices": size, "padding": mode, "liver_dice": mean("liver_dice"),
                            "tumour_dice": mean("tumour_dice"), "false_tumour_ml": mean("false_tumour_ml"),
                            "worst_liver_dice": min((r["liver_dice"] for r in sel if r["liver_dice"] is not None),
                                                    default=None)})
    return {"model_version": seg.card.get("version"), "cohort": cohort, "seed": seed, "n": n, "slices": slices,
            "shipped_padding": PADDING_MODE, "rows": rows, "summary": summary, "machine": machine_info()}


def markdown(res: dict) -> list[str]:
    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    lines = ["# Thin scans: the segmentation on slabs through the liver (issue 22)", "",
             "Synthetic data, not for clinical use.", "",
             f"{res['machine']['date']}, {machine_line(res['machine'])}. Model {res['model_version']}. Command: "
             f"`.venv/bin/python benchmarks/segmentation_thin_scans.py --n {res['n']} --slices "
             f"{','.join(str(s) for s in res['slices'])}`" + (f" on `{res['cohort']}`" if res["cohort"] else
                                                              f" (hold-out simulated here, seed {res['seed']})") + ".",
             "", "Each study cut to N slices (3.5 mm) through the middle of its liver; the network's window is 32 "
             "slices. *constant*: the crop padded with zeros (air), MONAI's default and what HCCTwin did before; "
             f"*replicate*: the edge slices repeated (shipped: `{res['shipped_padding']}`). Means over patients "
             "(tumour Dice over the slabs that contain tumour; false tumour over those that do not).", "",
             "| slab | padding | liver Dice | worst liver Dice | tumour Dice (n) | false tumour mL (n) |",
             "|---|---|---|---|---|---|"]
    for s in res["summary"]:
        name = "whole study" if s["slices"] == "whole" else f"{s['slices']} slices ({3.5 * s['slices']:.0f} mm)"
        (ld, _), (td, tn), (fm, fn) = s["liver_dice"], s["tumour_dice"], s["false_tumour_ml"]
        lines.append(f"| {name} | {s['padding']} | {f(ld)} | {f(s['worst_liver_dice'])} | {f(td)} ({tn}) | "
                     f"{f(fm, 1)} ({fn}) |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", help="a simulated cohort folder (its cases/<id>/pre); default: simulate the hold-out")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=900)
    ap.add_argument("--slices", default="24,16,10")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    res = run(args.cohort, args.n, args.seed, [int(s) for s in args.slices.split(",") if s.strip()])
    write_results(args.out, "segmentation_thin_scans", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
