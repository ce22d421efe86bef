"""Segmentation quality and speed (issue 4), re-runnable by anyone:

    .venv/bin/python benchmarks/segmentation_evaluation.py \
        --weights HCCTwin/HCCTwinLib/weights/hcctwin_seg.safetensors --n 30 --seed 900 --out benchmarks/results

Quality: a fresh simulated hold-out cohort (seed never used in training; the shipped model was trained on seed 101),
the model run on each pre-treatment study; Dice per label (mean over patients; PVTT over the patients who have it),
lesion-wise sensitivity for lesions >= 10 mm and false-positive lesions per patient.
Speed: a simulated patient rendered on a 512 x 512 x 120 grid; cold (first call in a fresh process, after model load)
and warm (second call) wall time, and the process's peak RSS, each measured in its own subprocess.
Results go to ``<out>/segmentation_evaluation.{json,md}`` with machine and date.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import kept_notes, machine_info, machine_line, write_results  # noqa: E402

TARGETS = {"liver": 0.95, "viable_tumor": 0.85, "necrosis": 0.70, "pvtt": 0.60, "sensitivity_10mm": 0.90,
           "fp_per_patient": 0.2, "warm_cpu_s": 20.0, "peak_rss_gb": 4.0}


def _holdout_cases(n: int, seed: int, cohort: str | None):
    """``(patient_id, case, labels)`` for the first ``n`` hold-out patients: read from a simulated cohort folder
    (its ``cases/<id>/pre``) when given, else simulated here with ``seed``."""
    if cohort:
        from HCCTwinLib.io import load_case
        from HCCTwinLib.segmentation.train import cohort_patient_ids

        for pid in cohort_patient_ids(cohort)[:n]:
            case = load_case(Path(cohort) / "cases" / pid / "pre", patient_id=pid)
            labels, case.labels = case.labels, None
            yield pid, case, labels
    else:
        from HCCTwinLib.simulate import simulate_patient

        for i in range(n):
            p = simulate_patient(seed, i)
            yield p.patient_id, p.case, p.labels


def evaluate_quality(weights: str, n: int, seed: int, device: str, cohort: str | None = None,
                     phases: list[str] | None = None) -> dict:
    from HCCTwinLib.segmentation import (
        cohort_lesion_detection,
        detection_by_size,
        dice_per_label,
        get_segmenter,
        lesion_counts,
    )

    segmenter = get_segmenter(weights, device=device)
    per_patient, pairs, by_size = [], [], {}
    for pid, case, labels in _holdout_cases(n, seed, cohort):
        if phases:  # single-phase evaluation: the other phases are left out (the segmenter fills them in)
            case.phases = {p: case.phases[p] for p in phases}
        t = time.perf_counter()
        pred = segmenter.segment(case)
        seconds = time.perf_counter() - t
        d = dice_per_label(pred, labels)
        d["patient_id"] = pid
        d["has_pvtt"] = bool((labels == 4).any())
        d["seconds"] = round(seconds, 2)
        d["shape_kji"] = list(labels.shape)
        env = segmenter.last_info.get("envelope")
        if env:  # the envelope stage's agreement with the main model and what it removed
            d["envelope_agreement"] = env["agreement_dice"]
            d["envelope_removed_ml"] = env["removed_ml"]
        per_patient.append(d)
        pairs.append(lesion_counts(pred, labels, case.geometry, min_diameter_mm=10.0))
        for name, c in detection_by_size(pred, labels, case.geometry).items():
            total = by_size.setdefault(name, {"n_lesions": 0, "detected": 0})
            total["n_lesions"] += c["n_lesions"]
            total["detected"] += c["detected"]
        d.update(pairs[-1])
        print(f"{pid} ({seconds:.1f} s): " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()
                                               if isinstance(v, float) and np.isfinite(v)), flush=True)
    summary = {}
    for key in ("liver_total", "liver", "viable_tumor", "necrosis", "pvtt", "tumor_total"):
        rows = [r for r in per_patient if key != "pvtt" or r["has_pvtt"]]
        vals = [r.get(key) for r in rows]
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        summary[key] = {"mean": float(np.mean(vals)) if vals else None, "n": len(vals),
                        "median": float(np.median(vals)) if vals else None}
    sens, fp = cohort_lesion_detection(pairs)
    summary["sensitivity_10mm"] = float(sens)
    summary["fp_per_patient"] = float(fp)
    summary["sensitivity_by_size"] = {name: {**c, "sensitivity": c["detected"] / c["n_lesions"] if c["n_lesions"]
                                             else None} for name, c in by_size.items()}
    summary["seconds_per_patient"] = float(np.mean([r["seconds"] for r in per_patient]))
    agree = [r["envelope_agreement"] for r in per_patient if "envelope_agreement" in r]
    if agree:
        summary["envelope"] = {"agreement_min": float(np.min(agree)), "agreement_p5": float(np.percentile(agree, 5)),
                               "agreement_median": float(np.median(agree)),
                               "removed_ml_mean": float(np.mean([r["envelope_removed_ml"] for r in per_patient])),
                               "removed_ml_max": float(np.max([r["envelope_removed_ml"] for r in per_patient]))}
    return {"per_patient": per_patient, "summary": summary}


SPEED_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[4]))
from HCCTwinLib.segmentation import get_segmenter
from HCCTwinLib.simulate import simulate_patient
p = simulate_patient(int(sys.argv[5]), 0, shape=(120, 512, 512))
case = p.case  # (a new Case on each access)
case.labels = None
if len(sys.argv) > 6 and sys.argv[6]:  # a one-phase study: only these phases are given
    case.phases = {k: case.phases[k] for k in sys.argv[6].split(",")}
rss_input = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
t = time.perf_counter(); seg = get_segmenter(sys.argv[2], device=sys.argv[3]); load = time.perf_counter() - t
if torch.cuda.is_available() and sys.argv[3] != "cpu":
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter(); seg.segment(case); cold = time.perf_counter() - t
t = time.perf_counter(); seg.segment(case); warm = time.perf_counter() - t
out = {"shape_kji": list(p.arterial.shape), "spacing_mm": list(p.geometry.spacing), "load_s": load, "cold_s": cold,
       "warm_s": warm, "phases": sorted(case.phases), "read_by": seg.last_card.get("name"),
       "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
       "peak_rss_gb_after_simulating_input": rss_input,
       "device": str(seg.device)}
if seg.device.type == "cuda":
    out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
print("RESULT " + json.dumps(out))
"""


def evaluate_speed(weights: str, device: str, threads: int, seed: int, phases: str = "") -> dict:
    """Load, first and warm segmentation time and peak memory on a simulated 512x512x120 study, in a fresh process;
    ``phases`` ("portal", "arterial", ...) gives a one-phase study (read by the card's single-phase stage)."""
    proc = subprocess.run([sys.executable, "-c", SPEED_CHILD, str(ROOT / "HCCTwin"), weights, device, str(threads),
                           str(seed), phases], capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"speed run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(line[7:])


FROC_GRID = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
#: the hand-written part of the report (earlier runs, decisions) starts at this heading and is kept on a re-run
NOTES_HEADING = "## Earlier runs and notes"


def decision_rules(weights: str) -> dict:
    """The model card's tuned decision rules (``postprocessing``), without the tuning tables."""
    from HCCTwinLib.weights import load_card

    section = dict(load_card(weights).get("postprocessing") or {})
    tuning = dict(section.pop("tuning", {}) or {})
    return {**section, "tuned_on": {k: tuning.get(k) for k in ("cohort", "n_cases", "rule", "chosen", "untuned",
                                                               "date") if k in tuning}} if section else {}


def operating_curve(weights: str, n: int, device: str, cohort: str) -> list[dict]:
    """Lesion sensitivity / false positives / Dice on the hold-out at several lesion-confidence thresholds, with the
    card's class bias and PVTT stage (reported, not used to choose: the threshold is chosen on the tuning cohort)."""
    from HCCTwinLib.segmentation import get_segmenter
    from HCCTwinLib.segmentation.tuning import collect_logits, sweep_confidence

    segmenter = get_segmenter(weights, device=device)
    stage = segmenter.pvtt_stage
    items = collect_logits(segmenter, cohort, max_cases=n, pvtt_model=stage)
    return sweep_confidence(items, segmenter.class_bias, FROC_GRID,
                            pvtt_stage=None if stage is None else (segmenter.pvtt_min_probability,
                                                                   segmenter.pvtt_min_ml))


def write_report(result: dict, out: Path) -> None:
    notes = kept_notes(out / "segmentation_evaluation.md", NOTES_HEADING)
    s, sp = result["quality"]["summary"], result.get("speed", {})
    shape = "x".join(map(str, result["quality"]["per_patient"][0]["shape_kji"]))

    def row(name, value, target, higher=True):
        ok = value is not None and (value >= target if higher else value <= target)
        return f"| {name} | {value if value is None else round(value, 3)} | {'>=' if higher else '<='} {target} | " \
               f"{'met' if ok else 'NOT met'} |"

    lines = [f"# Segmentation evaluation ({result['machine']['date']})", "",
             f"Model: `{result['weights']}` (sha256 {result['sha256'][:16]}...). Hold-out: {result['n']} simulated "
             f"patients, seed {result['seed']}" + (f" (read from `{result['cohort']}`)" if result.get("cohort") else "")
             + f", training used seed 101. Machine: {machine_line(result['machine'])}.", "",
             "| metric | measured | target | |", "|---|---|---|---|",
             row("Dice liver, whole organ (labels 1-3; mean)", s["liver_total"]["mean"], TARGETS["liver"]),
             f"| Dice liver parenchyma only (label 1; mean) | {s['liver']['mean']:.3f} | | |",
             row("Dice viable tumor (mean)", s["viable_tumor"]["mean"], TARGETS["viable_tumor"]),
             row(f"Dice necrosis (mean, n={s['necrosis']['n']})", s["necrosis"]["mean"], TARGETS["necrosis"]),
             row(f"Dice PVTT (mean over {s['pvtt']['n']} patients with PVTT)", s["pvtt"]["mean"], TARGETS["pvtt"]),
             row("Lesion sensitivity, lesions >= 10 mm", s["sensitivity_10mm"], TARGETS["sensitivity_10mm"]),
             row("False-positive lesions per patient", s["fp_per_patient"], TARGETS["fp_per_patient"], False),
             f"| Hold-out inference, mean s per patient ({shape} voxels) | {s['seconds_per_patient']:.1f} | | |"]
    for label, run in sp.items():
        lines += [row(f"{label}: warm inference 512x512x120 (s)", run["warm_s"], TARGETS["warm_cpu_s"], False),
                  f"| {label}: cold inference (s, after {run['load_s']:.1f} s model load) | {run['cold_s']:.1f} | | |",
                  row(f"{label}: peak RSS of the process (GB)", run["peak_rss_gb"], TARGETS["peak_rss_gb"], False),
                  f"| {label}: peak RSS before segmenting (after simulating the input, GB) | "
                  f"{run.get('peak_rss_gb_after_simulating_input', float('nan')):.2f} | | |"]
    lines += ["", "Dice: mean over hold-out patients of the per-patient Dice on the native grid; necrosis over the "
              "patients where it is present in the truth or the prediction.", ""]
    env = s.get("envelope")
    if env:
        lines += [f"Envelope stage (issue 22; the card's `postprocessing.envelope_stage`): agreement of the two models "
                  f"on this hold-out min {env['agreement_min']:.3f}, 5th percentile {env['agreement_p5']:.3f}, median "
                  f"{env['agreement_median']:.3f}; labels removed per patient mean {env['removed_ml_mean']:.1f} mL, "
                  f"max {env['removed_ml_max']:.1f} mL.", ""]
    sizes = s.get("sensitivity_by_size")
    if sizes:
        lines += ["Lesion sensitivity by size (longest axis-aligned extent of the true lesion):", "",
                  "| size (mm) | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes),
                  "| detected / lesions | " + " | ".join(f"{c['detected']} / {c['n_lesions']}" for c in sizes.values())
                  + " |", ""]
    rules = result.get("decision_rules") or {}
    if rules:
        tuned = rules.get("tuned_on", {})
        lines += ["**Decision rules** (model card `postprocessing`, tuned with `hcctwin tune segmentation` on "
                  f"`{tuned.get('cohort')}`, {tuned.get('n_cases')} labelled cases that are neither training nor "
                  f"hold-out): logit bias per class {rules.get('class_bias')}, lesion-confidence threshold "
                  f"{rules.get('min_tumor_confidence')}"
                  + (f", PVTT stage `{rules['pvtt_stage'].get('model')}` at probability >= "
                     f"{rules['pvtt_stage'].get('min_probability')}, components >= "
                     f"{rules['pvtt_stage'].get('min_volume_ml')} mL" if rules.get("pvtt_stage") else "")
                  + f" (rule: {tuned.get('rule')}).", ""]
    else:
        lines += ["**Decision rules**: none in the model card (plain argmax, no lesion-confidence filter).", ""]
    curve = result.get("operating_curve")
    if curve:
        lines += ["Hold-out operating curve of the lesion-confidence threshold (same class bias; reported only, the "
                  "threshold in use was chosen on the tuning cohort):", "",
                  "| min. mean tumour probability | sensitivity >= 10 mm | FP lesions / patient | Dice viable | "
                  "Dice necrosis |", "|---|---|---|---|---|"]
        for r in curve:
            mark = " (in use)" if abs(r["min_tumor_confidence"] - float(rules.get("min_tumor_confidence", 0))) < 1e-9 \
                else ""
            lines.append(f"| {r['min_tumor_confidence']:.2f}{mark} | {r['sensitivity']:.3f} | "
                         f"{r['fp_per_patient']:.2f} | {r['viable_tumor']:.3f} | {r['necrosis']:.3f} |")
        lines.append("")
    lines += notes
    write_results(out, "segmentation_evaluation", result, lines)


def update_card(result: dict) -> None:
    from HCCTwinLib.weights import card_path

    path = card_path(Path(result["weights"]))
    card = json.loads(path.read_text())
    summary = result["quality"]["summary"]
    card.setdefault("metrics", {})["holdout"] = {
        "cohort": f"simulated hold-out, seed {result['seed']}, {result['n']} patients"
                  + (f" ({Path(result['cohort']).name})" if result.get("cohort") else ""),
        "dice_mean": {k: summary[k]["mean"] for k in ("liver_total", "liver", "viable_tumor", "necrosis", "pvtt",
                                                      "tumor_total")},
        "lesion_sensitivity_10mm": summary["sensitivity_10mm"], "fp_lesions_per_patient": summary["fp_per_patient"],
        "speed": result.get("speed", {}), "machine": result["machine"],
        "report": "benchmarks/results/segmentation_evaluation.md"}
    path.write_text(json.dumps(card, indent=2, default=float) + "\n")


SPEED_INPUTS = (("arterial + portal", ""), ("portal only", "portal"), ("arterial only", "arterial"))


def speed_report(args) -> dict:
    """``--speed-only``: the speed and memory targets on each input a card accepts (512x512x120, fresh process)."""
    import torch

    from HCCTwinLib.weights import sha256_file

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs = [{"input": name, "device": dev, **evaluate_speed(args.weights, dev, args.threads, args.seed, phases)}
            for dev in devices for name, phases in SPEED_INPUTS]
    result = {"weights": args.weights, "sha256": sha256_file(Path(args.weights)), "threads": args.threads,
              "targets": {"warm_s": TARGETS["warm_cpu_s"], "peak_rss_gb": TARGETS["peak_rss_gb"]}, "runs": runs,
              "machine": machine_info()}
    lines = [f"# Segmentation speed and memory on each accepted input ({result['machine']['date']})", "",
             f"Model `{Path(args.weights).name}` (sha256 {result['sha256'][:16]}...), a simulated 512x512x120 study "
             f"(seed {args.seed}), {args.threads} torch threads, each input in a fresh process; "
             f"{machine_line(result['machine'])}. Command: `python benchmarks/segmentation_evaluation.py --weights "
             f"{args.weights} --speed-only`. GPU: " + ("measured below." if "cuda" in devices else
                                                       "not measured (no GPU on this machine)."), "",
             "| input | read by | device | load s | first s | warm s | peak RSS GB | targets (warm <= "
             f"{TARGETS['warm_cpu_s']:g} s, <= {TARGETS['peak_rss_gb']:g} GB) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ok = r["warm_s"] <= TARGETS["warm_cpu_s"] and r["peak_rss_gb"] <= TARGETS["peak_rss_gb"]
        lines.append(f"| {r['input']} | {r['read_by']} | {r['device']} | {r['load_s']:.1f} | {r['cold_s']:.1f} | "
                     f"{r['warm_s']:.1f} | {r['peak_rss_gb']:.2f} | {'met' if ok else 'NOT met'} |")
    write_results(args.out, "segmentation_speed", result, lines)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument("--cohort", help="read the hold-out patients from this simulated cohort folder "
                                         "(e.g. /work/data/holdout900, made with --seed 900) instead of simulating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-curve", action="store_true", help="no lesion-confidence operating curve (it needs "
                                                                   "--cohort and one more network pass per case)")
    parser.add_argument("--update-card", action="store_true",
                        help="also write the hold-out summary and timings into the model card next to --weights "
                             "(metrics.holdout; the card's sha256 covers the weights file, which is not changed)")
    parser.add_argument("--phases", help="single-phase evaluation (issue 22): give only these phases, e.g. 'portal' "
                                          "(the others are filled in by the segmenter); writes quality only, to "
                                          "<out>/segmentation_phases_<phases>.json")
    parser.add_argument("--speed-only", action="store_true",
                        help="speed and memory only, for a two-phase study and for each phase alone (issue 22: "
                             "the targets hold on every input the card accepts); writes <out>/segmentation_speed.*")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.seed == 101:
        parser.error("seed 101 is the training cohort; evaluate on a fresh seed")
    import torch

    torch.set_num_threads(args.threads)
    from HCCTwinLib.weights import sha256_file

    if args.cohort:
        card = Path(args.cohort) / "cohort.json"
        if card.is_file() and json.loads(card.read_text()).get("seed") == 101:
            parser.error("that cohort is the training cohort (seed 101)")
    if args.speed_only:
        speed_report(args)
        return 0
    if args.phases:
        phases = [p.strip() for p in args.phases.split(",") if p.strip()]
        result = {"weights": args.weights, "sha256": sha256_file(Path(args.weights)), "n": args.n,
                  "seed": args.seed, "cohort": args.cohort, "machine": machine_info(), "phases": phases,
                  "quality": evaluate_quality(args.weights, args.n, args.seed, args.device, args.cohort, phases)}
        write_results(args.out, f"segmentation_phases_{'_'.join(phases)}", result)
        print(json.dumps(result["quality"]["summary"], indent=2, default=float))
        return 0
    result = {"weights": args.weights, "sha256": sha256_file(Path(args.weights)), "n": args.n, "seed": args.seed,
              "cohort": args.cohort, "machine": machine_info(), "targets": TARGETS,
              "decision_rules": decision_rules(args.weights),
              "quality": evaluate_quality(args.weights, args.n, args.seed, args.device, args.cohort)}
    if args.cohort and not args.skip_curve:
        result["operating_curve"] = operating_curve(args.weights, args.n, args.device, args.cohort)
    if not args.skip_speed:
        result["speed"] = {f"CPU, {args.threads} threads": evaluate_speed(args.weights, "cpu", args.threads,
                                                                           args.seed)}
        if torch.cuda.is_available():
            result["speed"]["GPU"] = evaluate_speed(args.weights, "cuda", args.threads, args.seed)
    result["peak_rss_gb_evaluation_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    write_report(result, Path(args.out))
    if args.update_card:
        update_card(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
