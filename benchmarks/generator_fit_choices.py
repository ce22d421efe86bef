"""How the anchored twin's kinetics are fitted: the choices compared on a tuning cohort (issue 23).

    python benchmarks/generator_fit_choices.py --train TRAIN --tune TUNE [--holdout HOLDOUT] [--workers 2]
        [--cache DIR] [--out benchmarks/results]

``TRAIN``: a cohort with observed follow-ups (``hcctwin simulate --no-truth-images``; the shipped model: seed 1101,
600 patients); ``TUNE``: a cohort with counterfactual truth (``hcctwin simulate --seed 950 --n 60``), where the
choices are made; ``HOLDOUT`` (seed 900, 30 patients): reported beside, never used to choose. Each variant of
:func:`HCCTwinLib.twin.kinetic.fit_kinetics` is fitted on the training records and scored on the *plan* of the
median response (``z = 0``: per-lesion volumes, no rendering, so the choice of fit is separated from the renderer):
viable-volume median relative error and regimen ordering, as in ``generator_evaluation.py``. Fitting the variants
takes seconds; reading the training cohort's follow-ups takes minutes (cached in ``--cache``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, machine_line, utc_now, write_results  # noqa: E402
from generator_evaluation import ordering_scores  # noqa: E402

from HCCTwinLib.imagemetrics import relative_error  # noqa: E402
from HCCTwinLib.labels import PVTT, VIABLE_TUMOR  # noqa: E402
from HCCTwinLib.regimens import REGIMEN_IDS  # noqa: E402
from HCCTwinLib.twin import kinetic as K  # noqa: E402

#: the variants: (name, fit_kinetics keyword arguments); the first is the model before issue 23's second round
VARIANTS = [
    ("first model: linear covariates, size weight 1, direct fit per week",
     {"features": K.LEGACY_FEATURES, "size_weight": 1.0, "sequential": False}),
    ("+ category covariates", {"features": K.FEATURES, "size_weight": 1.0, "sequential": False}),
    ("+ size weight 0.5", {"features": K.FEATURES, "size_weight": 0.5, "sequential": False}),
    ("+ later weeks through the earlier one (shipped)", {"features": K.FEATURES, "size_weight": 0.5,
                                                         "sequential": True}),
    ("linear covariates, size weight 0.5, sequential", {"features": K.LEGACY_FEATURES, "size_weight": 0.5,
                                                       "sequential": True}),
]


def truth_cohort(cohort: Path) -> dict:
    """Per patient: pre-treatment lesions (with covariates), PVTT and viable volume, and the true viable volume of
    every (regimen, week) in ``truth/``."""
    from HCCTwinLib.io import cohort_clinical_rows, find_image, load_case, read_image

    clinical = cohort_clinical_rows(cohort)
    out = {}
    for pid, row in clinical.items():
        troot = cohort / "truth" / "cases" / pid
        if not troot.is_dir():
            continue
        case = load_case(cohort / "cases" / pid / "pre", patient_id=pid)
        _comp, lesions = K.find_lesions(case.labels, case.geometry, case.phases, row)
        vox = case.geometry.voxel_volume_ml
        truth = {}
        for rdir in sorted(p for p in troot.iterdir() if p.is_dir()):
            for wdir in sorted(p for p in rdir.iterdir() if p.is_dir()):
                lab, _ = read_image(find_image(wdir, "labels"), labels=True)
                truth[(rdir.name, int(wdir.name[1:]))] = float((lab == VIABLE_TUMOR).sum()) * vox
        for les in lesions:  # what plan() reads; no arrays kept
            les.box = None
        out[pid] = {"lesions": lesions, "pvtt_ml": float((case.labels == PVTT).sum()) * vox,
                    "viable0": float((case.labels == VIABLE_TUMOR).sum()) * vox, "truth": truth}
    return out


def score(model: K.KineticModel, cohort: dict) -> dict:
    rows = []
    for pid, p in cohort.items():
        for (regimen, weeks), true_ml in p["truth"].items():
            if regimen not in model.regimens:
                continue
            plan = model.plan(p["lesions"], p["pvtt_ml"], regimen, weeks, 0.0, 0.5)
            pred = sum(v for _, v in plan.lesions.values()) + plan.new_lesion_ml
            rows.append({"patient_id": pid, "regimen": regimen, "weeks": weeks, "true_viable_ml": true_ml,
                         "pre_viable_ml": p["viable0"], "generator_viable_ml": pred,
                         "rel_error": relative_error(pred, true_ml)})
    order = ordering_scores(rows, "generator")
    return {"viable_volume_median_rel_error": float(np.median([r["rel_error"] for r in rows])),
            "ordering_all_pairs": order["all_pairs"], "ordering_pairwise": order["pairwise"],
            "best_regimen": order["best_regimen"], "followups": len(rows), "patients": len(cohort)}


def cached(path: Path | None, make):
    if path is not None and path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    value = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            pickle.dump(value, fh)
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--tune", type=Path, required=True)
    ap.add_argument("--holdout", type=Path)
    ap.add_argument("--workers", type=int, default=1, help="read the training follow-ups on a local Dask cluster")
    ap.add_argument("--cache", type=Path, help="folder for the read records (reused when present)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--compare", type=Path, action="append", default=[],
                    help="a fitted model file (.safetensors + card) scored beside the variants, e.g. a shipped one")
    args = ap.parse_args(argv)
    from HCCTwinLib.twin.fit import cohort_records

    t0 = time.perf_counter()
    cache = args.cache

    def key(p: Path, what: str) -> Path | None:
        return None if cache is None else cache / f"{what}_{p.resolve().name}.pkl"

    from_cache = key(args.train, "records") is not None and key(args.train, "records").is_file()
    records, info = cached(key(args.train, "records"), lambda: cohort_records(
        args.train, scheduler="local" if args.workers > 1 else "serial", workers=args.workers, log=print))
    t_read = time.perf_counter() - t0
    tune = cached(key(args.tune, "truth"), lambda: truth_cohort(args.tune))
    hold = cached(key(args.holdout, "truth"), lambda: truth_cohort(args.holdout)) if args.holdout else None
    results = []
    for name, kwargs in VARIANTS:
        model, _summary = K.fit_kinetics(records, list(REGIMEN_IDS), **kwargs)
        entry = {"variant": name, "kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
                 "tune": score(model, tune)}
        if hold is not None:
            entry["holdout"] = score(model, hold)
        results.append(entry)
        print(name, json.dumps({k: v for k, v in entry.items() if k in ("tune", "holdout")}))
    from HCCTwinLib.twin.generator import get_generator

    for path in args.compare:
        gen = get_generator(path)
        entry = {"variant": f"model file {path.name} ({gen.card.get('name')} {gen.card.get('version')}, fitted on "
                            f"{(gen.card.get('training_data') or {}).get('patients')} patients)",
                 "file": str(path), "tune": score(gen.model, tune)}
        if hold is not None:
            entry["holdout"] = score(gen.model, hold)
        results.append(entry)
        print(entry["variant"], json.dumps({k: v for k, v in entry.items() if k in ("tune", "holdout")}))
    result = {"train": str(args.train), "train_info": info, "tune": str(args.tune),
              "holdout": str(args.holdout) if args.holdout else None, "variants": results,
              "read_s": round(t_read, 1), "total_s": round(time.perf_counter() - t0, 1), "machine": machine_info(),
              "date": utc_now(), "disclaimer": "Synthetic data, not for clinical use."}
    lines = ["# How the anchored twin's kinetics are fitted (issue 23)", "",
             "Synthetic data, not for clinical use.", "",
             f"{result['date']}, {machine_line(result['machine'])}. Fitted on the observed follow-ups of "
             f"`{args.train}` "
             f"({info['patients']} patients, {info['followups']} follow-ups; "
             f"{'records from the cache' if from_cache else f'read in {t_read:.0f} s'}). Choices made on "
             f"the tuning cohort `{args.tune}` (counterfactual truth, every eligible regimen); the hold-out "
             f"`{args.holdout}` is shown beside and was never used to choose. Scores of the median plan (volumes, no "
             "rendering); the image-space figures of the shipped model are in `generator_evaluation.md`.", "",
             "| variant | tune: viable median rel. error | tune: all pairs right | tune: pairs right | "
             "hold-out: viable error | hold-out: all pairs right |", "|---|---|---|---|---|---|"]
    for entry in results:
        t, h = entry["tune"], entry.get("holdout") or {}

        def f(x):
            return "" if x is None else f"{x:.3f}"

        lines.append(f"| {entry['variant']} | {f(t['viable_volume_median_rel_error'])} | "
                     f"{f(t['ordering_all_pairs'])} | {f(t['ordering_pairwise'])} | "
                     f"{f(h.get('viable_volume_median_rel_error'))} | {f(h.get('ordering_all_pairs'))} |")
    t = results[0]["tune"]
    lines += ["", f"Tuning cohort: {t['patients']} patients, {t['followups']} follow-ups. Category covariates: "
              "diameter <= 3 cm, <= 5 cm, > 10 cm, solitary, four or more nodules, hypo/isovascular (arterial "
              f"enhancement < {K.HYPERVASCULAR_HU:.0f} HU). Size weight: lesions weigh (mL + 1) ** w. Sequential: "
              "week 16 fitted through week 8 and week 24 through week 16 on the patients observed at both "
              "(poor responders leave follow-up)."]
    write_results(args.out, "generator_fit_choices", result, lines, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
