"""What the twin check says on the simulated hold-out (issue 23): how often the virtual follow-up of the regimen a
patient received is closer to the observed follow-up than the unchanged pre-treatment scan.

For each hold-out patient (``simulate_patient(seed 900, i)``, full size) the observed 8-week follow-up under the
received regimen (the simulator's image, already on the pre-treatment grid) is given to ``run_case`` as a real
follow-up, in two ways: ``given`` (the simulator's pre-treatment and follow-up labels: the generator is measured, not
the segmentation) and ``model`` (no labels: the product path, where the model segments both scans), and the
result's ``twin_check`` is recorded: the verdict (closer / not closer / neither), mean |HU difference| within 10 mm
of the tumours for the virtual and the unchanged scan, viable volume (real, virtual, before) and mRECIST agreement.
The population view of the same question is ``generator_evaluation.md`` (tumour Dice and viable-volume error against
the copy baseline); this one is what a tumor board sees patient by patient.

    python benchmarks/twin_check.py [--n 30] [--seed 900] [--samples 4]

Writes ``benchmarks/results/twin_check.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, write_results  # noqa: E402

from HCCTwinLib import __version__  # noqa: E402
from HCCTwinLib.cases import FollowUp  # noqa: E402
from HCCTwinLib.jsonutil import jsonable  # noqa: E402
from HCCTwinLib.pipeline import PipelineOptions, run_case  # noqa: E402
from HCCTwinLib.simulate import simulate_patient  # noqa: E402

REGIMENS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki")
WEEK = 8


def run_one(seed: int, index: int, samples: int, mode: str) -> dict | None:
    from dataclasses import replace

    patient = simulate_patient(seed, index)
    if patient.regimen not in REGIMENS:
        return None
    observed = patient.render_followups(patient.regimen, [WEEK])[WEEK]
    given = mode == "given"
    real = FollowUp(WEEK, {p: observed[p] for p in ("arterial", "portal")},
                    labels=observed["labels"] if given else None, kind="observed", regimen=patient.regimen)
    t0 = time.perf_counter()
    result = run_case(patient.case if given else replace(patient.case, labels=None), list(REGIMENS), [WEEK],
                      real_followup=real, options=PipelineOptions(samples=samples,
                                                                  segmentation="given" if given else "model"))
    check = result.twin_check
    row = {"patient_id": patient.patient_id, "regimen": patient.regimen, "mode": mode,
           "seconds": round(time.perf_counter() - t0, 1)}
    if check is None:
        row["twin_check"] = None
        row["notes"] = [n for n in result.notes if n.startswith("Twin check")]
        return row
    row["twin_check"] = check.to_dict()
    return row


def summarise(rows: list[dict]) -> dict:
    return {mode: _summarise([r for r in rows if r["mode"] == mode]) for mode in dict.fromkeys(r["mode"] for r in rows)}


def _summarise(rows: list[dict]) -> dict:
    checks = [r["twin_check"] for r in rows if r["twin_check"]]
    out = {"patients": len(rows), "checked": len(checks)}
    for kind, sel in [("all", checks)] + [(reg, [c for c in checks if c["regimen"] == reg]) for reg in REGIMENS]:
        if not sel:
            continue
        verdicts = [c["closer"] for c in sel]
        mae_v = [np.mean(list(c["hu_mae_virtual"].values())) for c in sel]
        mae_c = [np.mean(list(c["hu_mae_copy"].values())) for c in sel]
        vols = [c["viable_ml"] for c in sel if c["viable_ml"].get("real") is not None]
        vol_v = [abs(v["virtual"] - v["real"]) for v in vols] or [float("nan")]
        vol_c = [abs(v["pre-treatment"] - v["real"]) for v in vols] or [float("nan")]
        agree = [c["mrecist_virtual"] == c["mrecist_real"] for c in sel if c["mrecist_real"]]
        out[kind] = {"n": len(sel), "closer": verdicts.count(True), "not_closer": verdicts.count(False),
                     "neither": verdicts.count(None),
                     "hu_mae_virtual_median": round(float(np.median(mae_v)), 1),
                     "hu_mae_copy_median": round(float(np.median(mae_c)), 1),
                     "image_closer": int(np.sum(np.array(mae_v) < np.array(mae_c))),
                     "viable_abs_error_ml_median_virtual": round(float(np.median(vol_v)), 1),
                     "viable_abs_error_ml_median_copy": round(float(np.median(vol_c)), 1),
                     "volume_closer": int(np.sum(np.array(vol_v) < np.array(vol_c))),
                     "mrecist_agreement": round(float(np.mean(agree)), 3) if agree else None}
    return out


def markdown(payload: dict) -> list[str]:
    lines = ["# The twin check on the simulated hold-out", "",
             f"{payload['date_utc']} UTC, HCCTwin {payload['hcctwin_version']}, {machine_line(payload['machine'])}. "
             f"Command: "
             f"`python benchmarks/twin_check.py --n {payload['n']} --seed {payload['seed']} --samples "
             f"{payload['samples']}`. Each hold-out patient's observed week-{WEEK} follow-up under the regimen it "
             "received is given to `run_case` as the real follow-up; the twin check compares it with the virtual "
             "follow-up of that regimen and with the unchanged pre-treatment scan within 10 mm of the tumours "
             "(`HCCTwinLib.twincheck`). *given*: the simulator's labels of both scans (the generator alone); *model*: "
             "no labels, the shipped segmentation draws both (the product path). Synthetic data.", ""]
    for mode, s in payload["summary"].items():
        lines += [f"## {mode}: {s['checked']} of {s['patients']} patients checked", "",
                  "| regimen | n | closer | not closer | neither | mean \\|HU diff\\| median: virtual / unchanged | "
                  "image closer | viable error (mL) median: virtual / unchanged | volume closer | mRECIST agreement |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for kind in ("all", *REGIMENS):
            if kind not in s:
                continue
            r = s[kind]
            lines.append(f"| {kind} | {r['n']} | {r['closer']} | {r['not_closer']} | {r['neither']} | "
                         f"{r['hu_mae_virtual_median']} / {r['hu_mae_copy_median']} | {r['image_closer']} | "
                         f"{r['viable_abs_error_ml_median_virtual']} / {r['viable_abs_error_ml_median_copy']} | "
                         f"{r['volume_closer']} | {r['mrecist_agreement']} |")
        lines.append("")
    lines += ["", "*closer* / *not closer*: image and viable volume agree that the virtual follow-up is nearer to the "
              "observed one than the unchanged scan (or farther); *neither*: they disagree or tie (within 1 HU, "
              "within 1 mL or 10 %). The unchanged scan's mRECIST is SD by construction."]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=900)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "twin_check"))
    ap.add_argument("--modes", default="given,model", help="given (simulator labels), model (segmented)")
    args = ap.parse_args(argv)
    rows = []
    for i, mode in [(i, m) for m in args.modes.split(",") for i in range(args.n)]:
        row = run_one(args.seed, i, args.samples, mode)
        if row is None:
            continue
        rows.append(row)
        c = row["twin_check"]
        print(mode, row["patient_id"], row["regimen"], None if c is None else (c["closer"], c["hu_mae_virtual"],
                                                                          c["hu_mae_copy"], c["viable_ml"]),
              row["seconds"], flush=True)
    payload = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
               "hcctwin_version": __version__, "machine": machine_info(), "n": args.n, "seed": args.seed,
               "samples": args.samples, "modes": args.modes, "summary": summarise(rows), "patients": rows}
    out = Path(args.out)
    write_results(out.parent, out.stem, jsonable(payload), markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
