"""Phases acquired in separate breath-holds (issue 22): the segmentation with and without the phase alignment that
``hcctwin predict`` / ``segment`` and the Slicer module run first (:func:`HCCTwinLib.registration.align_phases`).

    .venv/bin/python benchmarks/phase_alignment.py --cohort HOLDOUT [--n 12] [--real-data DATA_ROOT]

Simulated hold-out patients (seed 900; never used for training or tuning): the portal phase is moved by a known
translation (linear resampling; the arterial phase is the reference), as a second breath-hold does, and the installed
segmentation runs on the two phases as they are and after the alignment; liver and tumour Dice against the
simulator's truth, and the error of the estimated shift. Without a shift the alignment must change nothing (the
phases are left bit for bit). Then the liver region alone is moved (the liver sliding against the spine): the
whole-image translation's limit, against the liver region's own shift applied (an oracle). With ``--real-data``
(the public scans of ``benchmarks/real_scans.json``), each two-phase real study's estimated shift and the
segmentation's tumour and liver volumes, the share of the tumour mask with air / fat / bone HU and the guard's
verdict, without and with the alignment (no reference mask for these).
Results: ``<out>/phase_alignment.{json,md}``.
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

#: portal-phase shifts (x, y, z in mm, LPS): none, a typical breath-hold difference, a large one, and one in-plane too
SHIFTS = ((0.0, 0.0, 0.0), (0.0, 0.0, 5.0), (0.0, 0.0, 10.0), (3.0, -3.0, 8.0))
#: shift of the liver region only (the spine and the body wall stay): what the whole-image translation cannot undo
LIVER_SHIFT = (0.0, 0.0, 8.0)


def shifted(array: np.ndarray, geometry, shift_mm) -> np.ndarray:
    """``array`` with its anatomy moved by ``shift_mm`` (the image content at p goes to p + shift)."""
    import SimpleITK as sitk

    from HCCTwinLib.registration import sitk_image

    img = sitk_image(array, geometry)
    moved = sitk.Resample(img, img, sitk.TranslationTransform(3, tuple(-float(v) for v in shift_mm)),
                          sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
    return sitk.GetArrayFromImage(moved)


def liver_region_shifted(array: np.ndarray, labels: np.ndarray, geometry, shift_mm) -> np.ndarray:
    """``array`` with the liver and everything within 10 mm of it moved by ``shift_mm``, the motion fading to none
    40 mm from the liver (a smooth displacement field: the liver slides against the spine, no seam)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from HCCTwinLib.registration import sitk_image

    spacing_kji = np.array(geometry.spacing[::-1])
    dist = ndimage.distance_transform_edt(labels == 0, sampling=spacing_kji)
    w = ndimage.gaussian_filter(np.clip(1.0 - (dist - 10.0) / 30.0, 0.0, 1.0), 2.0)
    disp = np.stack([-float(v) * w for v in shift_mm], axis=-1).astype(np.float64)  # output p reads p + d(p)
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.CopyInformation(sitk_image(np.zeros(labels.shape, np.float32), geometry))
    img = sitk_image(array, geometry)
    moved = sitk.Resample(img, img, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                          True)
    return sitk.GetArrayFromImage(moved)


def product_path(case, phases: dict, seg) -> tuple[dict, np.ndarray, list, list]:
    """What ``hcctwin predict`` does: the whole-image alignment, segmentation, the liver pass (and segmentation again
    when a phase moved). Returns ``(phases, labels, first-pass records, final records)``."""
    from dataclasses import replace

    from HCCTwinLib.pipeline import liver_alignment_pass
    from HCCTwinLib.registration import align_phases

    aligned, first = align_phases(phases, case.geometry)
    labels = seg.segment(aligned, case.geometry)
    final = first
    if first and labels.any():
        aligned, labels, final, _ = liver_alignment_pass(replace(case, phases=aligned), phases, first, labels, seg)
    return aligned, labels, first, final


def liver_only(cohort: Path, n: int, seg) -> list[dict]:
    """The liver region of the portal phase moved by :data:`LIVER_SHIFT`: tumour and liver Dice as read, after the
    whole-image alignment alone, after both passes (the shipped path) and after the liver region's own translation
    applied to the whole phase (an oracle: the shift is known here)."""
    from HCCTwinLib.io import load_case
    from HCCTwinLib.registration import align_phases
    from HCCTwinLib.segmentation import dice_per_label
    from HCCTwinLib.segmentation.train import cohort_patient_ids

    rows = []
    for pid in cohort_patient_ids(cohort)[:n]:
        case = load_case(cohort / "cases" / pid / "pre", patient_id=pid)
        portal = liver_region_shifted(case.phases["portal"], case.labels, case.geometry, LIVER_SHIFT)
        phases = {"arterial": case.phases["arterial"], "portal": portal}
        aligned, (a,) = align_phases(phases, case.geometry)
        oracle = {"arterial": case.phases["arterial"], "portal": shifted(portal, case.geometry,
                                                                          [-v for v in LIVER_SHIFT])}
        _, labels2, _, (b,) = product_path(case, phases, seg)
        row = {"patient_id": pid, "liver_shift_mm": list(LIVER_SHIFT),
               "estimated_mm": [round(v, 2) for v in a.translation_mm], "applied": a.applied,
               "two_pass_mm": [round(v, 2) for v in b.translation_mm], "two_pass_stage": b.stage}
        for tag, ph in (("as_read", phases), ("aligned", aligned if a.applied else None), ("liver_oracle", oracle)):
            d = dice_per_label(seg.segment(ph, case.geometry), case.labels) if ph is not None else \
                {"liver_total": row["as_read_liver_dice"], "tumor_total": row["as_read_tumor_dice"]}
            row[f"{tag}_liver_dice"], row[f"{tag}_tumor_dice"] = d.get("liver_total"), d.get("tumor_total")
        d = dice_per_label(labels2, case.labels)
        row["two_pass_liver_dice"], row["two_pass_tumor_dice"] = d.get("liver_total"), d.get("tumor_total")
        rows.append(row)
        print(f"{pid} liver region shifted {LIVER_SHIFT}: whole-image estimate {row['estimated_mm']}, two passes "
              f"{row['two_pass_mm']}; tumour {row['as_read_tumor_dice']:.3f} -> {row['aligned_tumor_dice']:.3f} -> "
              f"{row['two_pass_tumor_dice']:.3f} (liver-region oracle {row['liver_oracle_tumor_dice']:.3f})",
              flush=True)
    return rows


def simulated(cohort: Path, n: int, seg) -> list[dict]:
    from HCCTwinLib.io import load_case
    from HCCTwinLib.registration import align_phases
    from HCCTwinLib.segmentation import dice_per_label
    from HCCTwinLib.segmentation.train import cohort_patient_ids

    rows = []
    for pid in cohort_patient_ids(cohort)[:n]:
        case = load_case(cohort / "cases" / pid / "pre", patient_id=pid)
        for shift in SHIFTS:
            phases = dict(case.phases)
            if any(shift):
                phases["portal"] = shifted(case.phases["portal"], case.geometry, shift)
            t = time.perf_counter()
            align_phases(phases, case.geometry)
            align_s = time.perf_counter() - t
            aligned, labels, _, (a,) = product_path(case, phases, seg)
            row = {"patient_id": pid, "shift_mm": list(shift), "estimated_mm": [round(v, 2) for v in a.translation_mm],
                   "applied": a.applied, "stage": a.stage, "align_seconds": round(align_s, 2),
                   "estimate_error_mm": round(float(np.linalg.norm(np.subtract(a.translation_mm, shift))), 2)}
            for tag, lab in (("as_read", seg.segment(phases, case.geometry)), ("aligned", labels)):
                d = dice_per_label(lab, case.labels)
                row[f"{tag}_liver_dice"], row[f"{tag}_tumor_dice"] = d.get("liver_total"), d.get("tumor_total")
            if not any(shift):
                row["unchanged_when_aligned"] = all(aligned[k] is phases[k] for k in phases)
            rows.append(row)
            print(f"{pid} shift {shift}: estimated {row['estimated_mm']} (error {row['estimate_error_mm']} mm); "
                  f"liver {row['as_read_liver_dice']:.3f} -> {row['aligned_liver_dice']:.3f}, tumour "
                  f"{row['as_read_tumor_dice']:.3f} -> {row['aligned_tumor_dice']:.3f}", flush=True)
    return rows


def real(data: Path, seg) -> list[dict]:
    from HCCTwinLib import domain
    from HCCTwinLib.io import load_case

    manifest = json.loads((ROOT / "benchmarks" / "real_scans.json").read_text())
    rows = []
    for spec in manifest["cases"]:
        if len(spec["phases"]) < 2:
            continue
        paths = {p: data / rel for p, rel in spec["phases"].items()}
        if not all(p.exists() for p in paths.values()):
            rows.append({"case": spec["id"], "status": "data missing"})
            continue
        case = load_case(paths=paths, patient_id=spec["id"])
        row = {"case": spec["id"], "status": "ran"}
        for tag in ("as_read", "aligned"):
            if tag == "as_read":
                ph, labels = case.phases, seg.segment(case.phases, case.geometry)
            else:
                ph, labels, (first,), (a,) = product_path(case, case.phases, seg)
                row.update({"estimated_mm": [round(v, 2) for v in a.translation_mm], "applied": a.applied,
                            "stage": a.stage, "first_pass_mm": [round(v, 2) for v in first.translation_mm]})
            v = domain.assess(ph, case.geometry, labels, confidence=seg.last_info.get("confidence"), card=seg.last_card)
            m = v.measures
            row[tag] = {"liver_ml": round(m.get("liver_ml") or 0.0, 1), "tumor_ml": round(m.get("tumor_ml") or 0.0, 1),
                        "tumor_nontissue_fraction": m.get("tumor_nontissue_fraction"), "verdict": v.verdict,
                        "agreement": (seg.last_info.get("envelope") or {}).get("agreement_dice")}
        rows.append(row)
        print(f"{spec['id']}: estimated {row['estimated_mm']} mm; {row['as_read']} -> {row['aligned']}", flush=True)
    return rows


def _mean(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def markdown(res: dict) -> list[str]:
    sim = res["simulated"]
    lines = ["# Phases from separate breath-holds: segmentation without and with the phase alignment (issue 22)", "",
             f"{res['machine']['date']}, {machine_line(res['machine'])}, model {res['model_version']}. Command: "
             f"`.venv/bin/python benchmarks/phase_alignment.py --cohort {res['cohort']} --n {res['n']}"
             f"{' --real-data DATA_ROOT' if res['real'] else ''}`. The portal phase of each simulated hold-out "
             f"patient is moved by the shift (x, y, z mm); the arterial phase is the reference.", "",
             "| portal shift (mm) | runs | estimate error, mean / max (mm) | alignment applied | liver Dice as read -> "
             "aligned | tumour Dice as read -> aligned | seconds (alignment) |", "|---|---|---|---|---|---|---|"]
    for shift in SHIFTS:
        rs = [r for r in sim if r["shift_mm"] == list(shift)]
        if not rs:
            continue
        err = [r["estimate_error_mm"] for r in rs]
        lines.append(f"| {', '.join(f'{v:g}' for v in shift)} | {len(rs)} | {np.mean(err):.2f} / {max(err):.2f} | "
                     f"{sum(r['applied'] for r in rs)} of {len(rs)} | {_mean(rs, 'as_read_liver_dice'):.3f} -> "
                     f"{_mean(rs, 'aligned_liver_dice'):.3f} | {_mean(rs, 'as_read_tumor_dice'):.3f} -> "
                     f"{_mean(rs, 'aligned_tumor_dice'):.3f} | {_mean(rs, 'align_seconds'):.2f} |")
    unchanged = [r["unchanged_when_aligned"] for r in sim if "unchanged_when_aligned" in r]
    lines += ["", f"Without a shift the phases came back unchanged (the same arrays) in {sum(unchanged)} of "
              f"{len(unchanged)} patients."]
    lo = res.get("liver_only") or []
    if lo:
        est = [r["estimated_mm"][2] for r in lo]
        lines += ["", "**The liver moving against the spine.** The liver region alone of the portal phase "
                  f"moved by {', '.join(f'{v:g}' for v in LIVER_SHIFT)} mm (fading to none 40 mm from the liver); the "
                  f"whole-image translation finds {np.mean(est):.1f} mm in z on average ({min(est):.1f}-"
                  f"{max(est):.1f}):", "",
                  "| runs | tumour Dice as read | whole-image alignment alone | **both passes (shipped)** | the liver "
                  "region's own shift (oracle) | liver Dice as read / first pass / both / oracle |",
                  "|---|---|---|---|---|---|",
                  f"| {len(lo)} | {_mean(lo, 'as_read_tumor_dice'):.3f} | {_mean(lo, 'aligned_tumor_dice'):.3f} | "
                  f"**{_mean(lo, 'two_pass_tumor_dice'):.3f}** | {_mean(lo, 'liver_oracle_tumor_dice'):.3f} | "
                  f"{_mean(lo, 'as_read_liver_dice'):.3f} / {_mean(lo, 'aligned_liver_dice'):.3f} / "
                  f"{_mean(lo, 'two_pass_liver_dice'):.3f} / {_mean(lo, 'liver_oracle_liver_dice'):.3f} |", "",
                  f"The second pass (registration inside the segmented liver grown by 15 mm, then segmentation again) "
                  f"found {np.mean([r['two_pass_mm'][2] for r in lo]):.1f} mm in z on average "
                  f"({sum(r['two_pass_stage'] == 'liver' for r in lo)} of {len(lo)} runs moved by it)."]
    if res["real"]:
        lines += ["", "Real two-phase studies (`benchmarks/real_scans.json`; no reference mask: volumes, the share of "
                  "the tumour mask with air / fat / bone HU, the two networks' liver agreement and the guard):", "",
                  "| study | estimated portal shift (x, y, z mm) | liver mL | tumour mL | tumour with air/fat/bone HU "
                  "| networks' agreement | guard |", "|---|---|---|---|---|---|---|"]
        for r in res["real"]:
            if r.get("status") != "ran":
                lines.append(f"| {r['case']} | data missing | | | | | |")
                continue
            a, b = r["as_read"], r["aligned"]

            def pair(key, fmt, a=a, b=b):
                return f"{format(a[key] or 0, fmt)} -> {format(b[key] or 0, fmt)}"
            stage = " (liver pass)" if r.get("stage") == "liver" else ""
            lines.append(f"| {r['case']} | {', '.join(f'{v:+.1f}' for v in r['estimated_mm'])}{stage} | "
                         f"{pair('liver_ml', '.0f')} | {pair('tumor_ml', '.0f')} | "
                         f"{pair('tumor_nontissue_fraction', '.2f')} | {pair('agreement', '.2f')} | "
                         f"{a['verdict']} -> {b['verdict']} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", required=True, type=Path, help="simulated hold-out (hcctwin simulate --seed 900)")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--real-data", type=Path, help="root folder of the public scans (benchmarks/real_scans.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    import torch

    from HCCTwinLib.segmentation import get_segmenter

    torch.set_num_threads(args.threads)
    seg = get_segmenter(None, "cpu")
    res = {"cohort": args.cohort.name, "n": args.n, "model_version": seg.card.get("version"),
           "shifts_mm": [list(s) for s in SHIFTS], "simulated": simulated(args.cohort, args.n, seg),
           "liver_only": liver_only(args.cohort, args.n, seg),
           "real": real(args.real_data, seg) if args.real_data else [],
           "machine": machine_info()}
    write_results(args.out, "phase_alignment", res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
