"""Out-of-domain guard benchmark (issue 22), re-runnable by anyone:

    .venv/bin/python benchmarks/domain_guard.py --cohort HOLDOUT --n 12 --out benchmarks/results

Does the guard say "outside" when the segmentation fails? Real scans with manual masks are not in the project, so
the known failure modes of real scans are made on simulated hold-out patients (seed never used for training or for
the guard's reference): noise, thick slices, a wrong HU rescale, no contrast, an MRI-like image, a scan cut through
the liver, single-phase input and a random monotone intensity curve (other scanner / contrast timing). For each
patient and perturbation the installed segmentation runs, the liver Dice (liver + tumour against the simulator's
truth, on the perturbed grid) is measured and the guard's verdict recorded.

Measured: the share of runs with liver Dice < 0.8 that the guard calls "outside" (target 100%: issue 22 says the
guard says outside for any scan where liver Dice < 0.8) and the share of runs with Dice >= 0.9 that it does not
call "outside" (the false-alarm side). Results: ``<out>/domain_guard.{json,md}``.
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
from _common import kept_notes, machine_info, machine_line, write_results  # noqa: E402


def _perturbations():
    """name -> f(phases, geometry, labels, rng) -> (phases, geometry, labels)."""
    from scipy import ndimage

    from HCCTwinLib.cases import Geometry
    from HCCTwinLib.segmentation.augment import random_curve

    def same(ph, g, lab, rng):
        return ph, g, lab

    def noise(ph, g, lab, rng):
        return {k: v + rng.normal(0, 45.0, v.shape).astype(np.float32) for k, v in ph.items()}, g, lab

    def thick(ph, g, lab, rng):  # 7 mm slices: average groups of slices
        f = max(1, int(round(7.0 / g.spacing[2])))
        k = lab.shape[0] // f * f

        def down(a, labels=False):
            a = a[:k].reshape(k // f, f, *a.shape[1:])
            return a[:, f // 2] if labels else a.mean(axis=1)

        g2 = Geometry(shape=(k // f, *lab.shape[1:]), spacing=(g.spacing[0], g.spacing[1], g.spacing[2] * f),
                      origin=g.origin, direction=g.direction)
        return {n: down(v).astype(np.float32) for n, v in ph.items()}, g2, down(lab, True)

    def stored_values(ph, g, lab, rng):  # raw stored values (HU + 1024) read as HU, clipped as a viewer would
        return {k: np.clip(v + 1024.0, -1024, 3071) for k, v in ph.items()}, g, lab

    def no_contrast(ph, g, lab, rng):  # unenhanced look: pull every voxel above 40 HU towards 50 HU
        return {k: np.where(v > 40, 50 + 0.3 * (v - 50), v).astype(np.float32) for k, v in ph.items()}, g, lab

    def mri_like(ph, g, lab, rng):  # inverted soft-tissue contrast in arbitrary units
        return {k: (np.clip(1000 - 4 * (v + 100), 0, 4000)).astype(np.float32) for k, v in ph.items()}, g, lab

    def cut_liver(ph, g, lab, rng):  # scan range ends in the middle of the liver
        zs = np.flatnonzero(lab.any(axis=(1, 2)))
        mid = int(zs[len(zs) // 2])
        g2 = Geometry(shape=(mid, *lab.shape[1:]), spacing=g.spacing, origin=g.origin, direction=g.direction)
        return {k: v[:mid] for k, v in ph.items()}, g2, lab[:mid]

    def portal_only(ph, g, lab, rng):
        return {"portal": ph["portal"]}, g, lab

    def arterial_only(ph, g, lab, rng):
        return {"arterial": ph["arterial"]}, g, lab

    def other_scanner(ph, g, lab, rng):  # random monotone curve on the -200..300 HU window, plus blur
        out = {}
        for k, v in ph.items():
            x = (np.clip(v, -200, 300) + 200) / 500.0
            y = random_curve(x, rng, jitter=0.15) * 500.0 - 200.0
            y = np.where((v < -200) | (v > 300), v, y)
            out[k] = ndimage.gaussian_filter(y.astype(np.float32), (0.5, 1.0, 1.0))
        return out, g, lab

    return {"none": same, "noise_45hu": noise, "thick_7mm": thick, "stored_values": stored_values,
            "no_contrast": no_contrast, "mri_like": mri_like, "cut_liver": cut_liver, "portal_only": portal_only,
            "arterial_only": arterial_only, "other_scanner": other_scanner}


def run(cohort: str, n: int, weights: str | None, seed: int = 0) -> dict:
    from HCCTwinLib import domain
    from HCCTwinLib.io import load_case
    from HCCTwinLib.segmentation import dice_per_label, get_segmenter
    from HCCTwinLib.segmentation.train import cohort_patient_ids

    seg = get_segmenter(weights, "cpu")
    rows = []
    perts = _perturbations()
    for pid in cohort_patient_ids(cohort)[:n]:
        case = load_case(Path(cohort) / "cases" / pid / "pre", patient_id=pid)
        for name, f in perts.items():
            rng = np.random.default_rng([seed, int(pid.split("-")[-1]), len(name)])
            phases, geom, truth = f(dict(case.phases), case.geometry, case.labels, rng)
            t = time.perf_counter()
            pred = seg.segment(phases, geom)
            verdict = domain.assess(phases, geom, pred, confidence=seg.last_info.get("confidence"), card=seg.last_card)
            d = dice_per_label(pred, truth)
            row = {"patient_id": pid, "perturbation": name, "liver_dice": d.get("liver_total"),
                   "tumor_dice": d.get("tumor_total"), "verdict": verdict.verdict,
                   "reasons": verdict.reasons, "seconds": round(time.perf_counter() - t, 2)}
            rows.append(row)
            shown = row["liver_dice"] if row["liver_dice"] is not None else float("nan")
            print(f"{pid} {name:14s} liver Dice {shown:.3f}  {verdict.verdict:8s} "
                  f"{'; '.join(verdict.reasons)[:150]}", flush=True)
    return {"rows": rows, "summary": summarise(rows), "weights": str(weights or "installed"),
            "model_version": seg.card.get("version"),
            "machine": machine_info()}


def summarise(rows) -> dict:
    def dice(r):
        return 0.0 if r["liver_dice"] is None or not np.isfinite(r["liver_dice"]) else float(r["liver_dice"])

    bad = [r for r in rows if dice(r) < 0.8]
    good = [r for r in rows if dice(r) >= 0.9]
    mid = [r for r in rows if 0.8 <= dice(r) < 0.9]
    by_pert = {}
    for r in rows:
        p = by_pert.setdefault(r["perturbation"], {"n": 0, "dice": [], "outside": 0, "caution": 0, "inside": 0})
        p["n"] += 1
        p["dice"].append(dice(r))
        p[r["verdict"]] += 1
    for p in by_pert.values():
        p["median_liver_dice"] = float(np.median(p.pop("dice")))
    return {"n_runs": len(rows),
            "dice_below_0.8": {"n": len(bad), "called_outside": sum(r["verdict"] == "outside" for r in bad)},
            "dice_0.8_to_0.9": {"n": len(mid), "called_outside": sum(r["verdict"] == "outside" for r in mid)},
            "dice_at_least_0.9": {"n": len(good), "called_outside": sum(r["verdict"] == "outside" for r in good),
                                  "called_inside": sum(r["verdict"] == "inside" for r in good)},
            "by_perturbation": by_pert}


#: the hand-written reading of each run (dated) starts at this heading and is kept when the script re-runs
NOTES_HEADING = "## Readings"


def markdown(res: dict) -> list[str]:
    s = res["summary"]
    b, g, m = s["dice_below_0.8"], s["dice_at_least_0.9"], s["dice_0.8_to_0.9"]
    lines = ["# Out-of-domain guard on perturbed simulated hold-out scans", "",
             f"Model {res['model_version']} ({res['weights']}), {res['machine']['date']}, "
             f"{machine_line(res['machine'])}.",
             "Command: `.venv/bin/python benchmarks/domain_guard.py --cohort HOLDOUT --n N` (see the script's "
             "docstring for the perturbations).", "",
             f"- runs with liver Dice < 0.8: {b['n']}, called **outside** {b['called_outside']} "
             f"({100 * b['called_outside'] / max(b['n'], 1):.0f}%; target 100%)",
             f"- runs with liver Dice 0.8-0.9: {m['n']}, called outside {m['called_outside']}",
             f"- runs with liver Dice >= 0.9: {g['n']}, called outside {g['called_outside']} (false alarms), inside "
             f"{g['called_inside']}", "",
             "| perturbation | runs | median liver Dice | inside | caution | outside |", "|---|---|---|---|---|---|"]
    for name, p in s["by_perturbation"].items():
        lines.append(f"| {name} | {p['n']} | {p['median_liver_dice']:.3f} | {p['inside']} | {p['caution']} | "
                     f"{p['outside']} |")
    missed = [r for r in res["rows"] if (r["liver_dice"] or 0) < 0.8 and r["verdict"] != "outside"]
    if missed:
        lines += ["", "Runs with liver Dice < 0.8 not called outside:", ""]
        lines += [f"- {r['patient_id']} {r['perturbation']}: Dice {r['liver_dice']:.3f}, {r['verdict']} "
                  f"({'; '.join(r['reasons'])})" for r in missed]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", required=True, help="simulated hold-out cohort (hcctwin simulate --seed 900)")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--weights", help="segmentation model file (default: installed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    res = run(args.cohort, args.n, args.weights)
    notes = kept_notes(Path(args.out) / "domain_guard.md", NOTES_HEADING)
    write_results(args.out, "domain_guard", res, markdown(res) + notes, echo=False)
    print(json.dumps(res["summary"], indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
