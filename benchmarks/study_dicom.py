"""The validation study end to end on a simulated cohort written as DICOM, the way a site runs it on its own data.

Usage::

    python benchmarks/study_dicom.py [--n 150] [--seed 4040] [--max-cases 10] [--work out/study-dicom] \
        [--out benchmarks/results] [--fast]

1. ``hcctwin simulate --format dicom``: CT series (arterial, portal) + DICOM SEG per study, TCIA-like tree, a
   site-style clinical table (weeks, mg/dL, censored flags, three readers' mRECIST) and its column mapping;
2. ``hcctwin import``: DICOM -> HCCTwin cohort layout (NIfTI), clinical table through the mapping;
3. ``hcctwin study --splits development,validation,test``: survival engine trained on the development split when it
   is large enough, installed segmentation network and generator; per split image fidelity vs the copy baseline,
   readers, survival discrimination / calibration vs the established scores.

Writes ``OUT/study_dicom.{json,md,html}`` with the stage timings and the machine. Synthetic data, demo weights: the
numbers measure the tool on its simulator, not clinical performance.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import HCCTwinLib  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(ROOT / "HCCTwin"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, write_results  # noqa: E402

from HCCTwinLib.cli import main as hcctwin  # noqa: E402


def _du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20, 1)


def _f(v, d=3):
    return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))


def markdown(study: dict, stages: dict, info: dict, args) -> list[str]:
    lines = ["# Validation study on a simulated DICOM cohort (`benchmarks/study_dicom.py`)", "",
             f"Date {study['date']}; machine: {machine_line(info)}, torch {info.get('torch')}; load average at start "
             f"{info.get('load_average_1_5_15')}.", "",
             f"Cohort: {args.n} simulated patients (seed {args.seed}, {'fast 96x96x32' if args.fast else '192x192x64'}"
             f" grid), written as DICOM ({stages.get('dicom_mb')} MB), imported with `hcctwin import`; "
             f"`hcctwin study --max-cases {args.max_cases}` (image models on up to that many patients per split).", "",
             "Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in stages.items() if k.endswith("_s")) + ".", "",
             "Models: " + "; ".join(f"{k}: {v.get('source')}" for k, v in study["models"].items()) + ".", "",
             "## Virtual vs real follow-up (received regimen, observed weeks)", "",
             "Each cell: HCCTwin generator / copy baseline (the pre-treatment scan unchanged).", "",
             "| split | patients / follow-ups | tumour Dice | viable rel. error median | mRECIST agreement "
             "| weighted kappa | SSIM arterial | PSNR arterial dB | HU MAE arterial |", "|" + "---|" * 9]
    for name in study["splits"]:
        im = study["results"][name].get("images")
        if not im or not im.get("n_patients"):
            continue
        m, c = im["model"], im["copy_baseline"]
        lines.append(f"| {name} | {im['n_patients']} / {m['n_followups']} | {_f(m['tumour_dice_mean'])} / "
                     f"{_f(c['tumour_dice_mean'])} | {_f(m['viable_rel_error_median'])} / "
                     f"{_f(c['viable_rel_error_median'])} | {_f(m['mrecist_agreement'])} / "
                     f"{_f(c['mrecist_agreement'])} | {_f(m['mrecist_weighted_kappa'])} / "
                     f"{_f(c['mrecist_weighted_kappa'])} | {_f(m.get('ssim_arterial_mean'))} / "
                     f"{_f(c.get('ssim_arterial_mean'))} | {_f(m.get('psnr_arterial_mean'), 1)} / "
                     f"{_f(c.get('psnr_arterial_mean'), 1)} | {_f(m.get('hu_mae_arterial_mean'), 1)} / "
                     f"{_f(c.get('hu_mae_arterial_mean'), 1)} |")
    lines += ["", "## Against the readers' mRECIST of the first follow-up", "",
              "| split | generator vs readers (agreement / kappa) | automatic reading of the real images vs readers | "
              "copy baseline vs readers | readers with each other |", "|" + "---|" * 5]
    for name in study["splits"]:
        rd = (study["results"][name].get("images") or {}).get("readers")
        if not rd:
            continue

        def ak(r):
            return "-" if not r else f"{_f(r['agreement'])} / {_f(r['weighted_kappa'])}"
        lines.append(f"| {name} | {ak(rd.get('model_vs_readers'))} | {ak(rd.get('observed_vs_readers'))} | "
                     f"{ak(rd.get('copy_baseline_vs_readers'))} | {ak(rd.get('inter_reader'))} |")
    lines += ["", "## Survival (OS under the received regimen)", "",
              "| split | n / deaths | Harrell C | Uno C | td-AUC 12 mo | IBS (KM) | ICI 12 mo | best established "
              "score C | landmark 8 w dynamic / baseline C |", "|" + "---|" * 9]
    for name in study["splits"]:
        s = study["results"][name].get("survival") or {}
        o = s.get("os")
        if not o:
            continue
        best = max(o.get("baselines", {}).items(), key=lambda kv: kv[1]["harrell_c"], default=None)
        lm = (s.get("landmark") or {}).get("w08")
        lines.append(f"| {name} | {o['n']} / {o['events']} | {_f(o['model']['harrell_c'])} | "
                     f"{_f(o['model']['uno_c'])} | {_f(o['td_auc'].get('12'))} | {_f(o['ibs']['model'])} "
                     f"({_f(o['ibs']['km_null'])}) | {_f(o['ici'].get('12'))} | "
                     f"{best[0] + ' ' + _f(best[1]['harrell_c']) if best else '-'} | "
                     f"{_f(lm['dynamic_harrell_c']) + ' / ' + _f(lm['baseline_harrell_c']) if lm else '-'} |")
    lines += ["", "Results on the development split are apparent (the survival engine was fitted there) when the "
              "models line says so. Full tables and plots: `study_dicom.html` / `study_dicom.json`."]
    if study.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in study["notes"]]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=4040)
    ap.add_argument("--max-cases", type=int, default=10)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--fast", action="store_true", help="small 96x96x32 volumes")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "study-dicom")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    info = machine_info()
    if args.work.exists():
        shutil.rmtree(args.work)
    sim, cohort, study_dir = args.work / "site", args.work / "cohort", args.work / "study"
    stages: dict = {}
    t = time.perf_counter()
    simulate = ["simulate", "--n", str(args.n), "--seed", str(args.seed), "--out", str(sim), "--format", "dicom"]
    assert hcctwin(simulate + (["--fast"] if args.fast else [])) == 0
    stages["simulate_dicom_s"] = round(time.perf_counter() - t, 1)
    stages["dicom_mb"] = _du_mb(sim / "dicom")
    t = time.perf_counter()
    assert hcctwin(["import", "--dicom", str(sim / "dicom"), "--out", str(cohort), "--clinical",
                    str(sim / "clinical_site.csv"), "--mapping", str(sim / "mapping.json")]) == 0
    stages["import_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    assert hcctwin(["study", "--cohort", str(cohort), "--out", str(study_dir), "--max-cases", str(args.max_cases),
                    "--samples", str(args.samples)]) == 0
    stages["study_s"] = round(time.perf_counter() - t, 1)
    study = json.loads((study_dir / "study.json").read_text())
    record = {"benchmark": "study_dicom", "machine": info, "stages": stages,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "study": study}
    write_results(args.out, "study_dicom", record, markdown(study, stages, info, args))
    shutil.copyfile(study_dir / "study.html", args.out / "study_dicom.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
