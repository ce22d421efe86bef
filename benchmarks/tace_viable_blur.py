"""What the anchored twin's "+32 HU after TACE" is made of: the viable-HU change of observed TACE follow-ups by
distance from the lipiodol-laden necrosis (issue 23; a limitation in the README).

    python benchmarks/tace_viable_blur.py --cohort TUNE [--regimen tace_pd1_len] [--out benchmarks/results]

For every patient of ``--cohort`` who received ``--regimen`` and each observed follow-up (``cases/<id>/followup/wNN``,
on the pre-treatment grid, as the simulator writes them), the mean arterial HU of the follow-up's viable tumour minus
the mean arterial HU of the pre-treatment viable tumour, overall and in bands of distance (mm) from the follow-up's
necrosis (label 3). The twin learns the overall change (records of ``kinetic.followup_record``); next to dense
lipiodol the scanner's blur brightens the residual tumour, which is not a change of the tumour.
Writes ``tace_viable_blur.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, machine_line, write_results  # noqa: E402

from HCCTwinLib.io import find_image, load_case, read_image  # noqa: E402
from HCCTwinLib.labels import NECROSIS, VIABLE_TUMOR  # noqa: E402
from HCCTwinLib.twin.train import read_received_regimens  # noqa: E402

BANDS = ((0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, float("inf")))


def measure(cohort: Path, regimen: str) -> list[dict]:
    rows = []
    for pid, received in read_received_regimens(cohort).items():
        if received != regimen:
            continue
        pre = load_case(cohort / "cases" / pid / "pre")
        v0 = pre.labels == VIABLE_TUMOR
        if v0.sum() < 50:
            continue
        pre_hu = float(pre.phases["arterial"][v0].mean())
        for fu in sorted((cohort / "cases" / pid / "followup").glob("w*")):
            art, geom = read_image(find_image(fu, "arterial"))
            lab, _ = read_image(find_image(fu, "labels"), labels=True)
            if geom.shape != pre.geometry.shape:
                continue  # not on the pre-treatment grid
            v = lab == VIABLE_TUMOR
            if v.sum() < 50:
                continue
            nec = lab == NECROSIS
            dist = ndimage.distance_transform_edt(~nec, sampling=geom.spacing[::-1]) if nec.any() else \
                np.full(lab.shape, np.inf)
            row = {"patient_id": pid, "week": fu.name, "pre_viable_hu": pre_hu,
                   "change_all": float(art[v].mean()) - pre_hu, "bands": {}}
            for lo, hi in BANDS:
                m = v & (dist > lo) & (dist <= hi)
                row["bands"][f"{lo:g}-{hi:g}"] = {"voxels": int(m.sum()), "change": (
                    float(art[m].mean()) - pre_hu) if m.sum() >= 20 else None}
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--regimen", default="tace_pd1_len")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = measure(args.cohort, args.regimen)
    if not rows:  # e.g. run_all --quick's four patients: nothing to measure, nothing written
        print(f"{args.cohort}: no follow-ups of {args.regimen} with viable tumour on the pre-treatment grid")
        return 0

    def med(values):
        vals = [x for x in values if x is not None]
        return (float(np.median(vals)), len(vals)) if vals else (None, 0)

    summary = {"all viable tumour": med([r["change_all"] for r in rows])}
    for lo, hi in BANDS:
        key = f"{lo:g}-{hi:g}"
        summary[f"{key} mm from necrosis"] = med([r["bands"][key]["change"] for r in rows])
    result = {"cohort": str(args.cohort), "regimen": args.regimen, "followups": len(rows), "summary": summary,
              "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine_info(),
              "disclaimer": "Synthetic data, not for clinical use."}
    lines = ["# Viable-HU change after TACE by distance from the lipiodol (issue 23)", "",
             f"{result['date_utc']} UTC, {machine_line(result['machine'])}. Command: "
             f"`python benchmarks/tace_viable_blur.py --cohort "
             f"{args.cohort.name} --regimen {args.regimen}`; {len(rows)} observed follow-ups (weeks 8/16/24) of the "
             "patients who received it. Change = mean arterial HU of the follow-up's viable tumour (in the band) minus "
             "the mean arterial HU of the pre-treatment viable tumour; bands with fewer than 20 voxels are left out. "
             "Synthetic data.", "",
             "| viable tumour of the follow-up | median change (HU) | follow-ups |", "|---|---|---|"]
    for name, (m, n) in summary.items():
        lines.append(f"| {name} | {'' if m is None else f'{m:+.1f}'} | {n} |")
    lines += ["", "The anchored twin learns the change over all viable tumour (its median per regimen and week, or a "
              "line in the lesion's HU) and paints it on every surviving viable voxel; the bands show how much of it "
              "is blur from the adjacent lipiodol. The simulator's own mRECIST reading counts that blur as enhancing "
              "tumour, which is why the twin keeps it (README, Limitations)."]
    write_results(args.out, "tace_viable_blur", result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
