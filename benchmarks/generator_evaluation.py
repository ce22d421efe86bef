"""Evaluate the follow-up generator against the simulator's counterfactual truth on a hold-out cohort.

Usage::

    python benchmarks/generator_evaluation.py --cohort HOLDOUT --weights MODEL.safetensors --out benchmarks/results \
        [--train-cohort TRAIN] [--samples 4] [--seed 0] [--steps N] [--max-cases N] [--update-card]

For every patient of ``HOLDOUT/clinical.csv`` and every regimen that has truth in ``HOLDOUT/truth/cases/<id>/``
(the eligible ones) and every week (8/16/24), the generator's mean follow-up is compared with the true one and with
two baselines (copy: pre-treatment image unchanged; exponential: per-regimen viable-volume rate fitted on the
training cohort's *observed* follow-ups, ``--train-cohort``, else on the hold-out cohort's observed follow-ups, which
favours the baseline). Metrics (issue 5 targets in brackets):

- viable-tumour (label 2) volume: median relative error, ``|pred - true| / max(true, 1 ml)`` [<= 15 %];
- tumour Dice, labels 2|3 together [>= 0.80];
- mRECIST category per time point (``response.read_response`` on labels + arterial, one trajectory per regimen)
  agreement and linear weighted kappa [>= 80 %];
- liver-masked 3D SSIM (Gaussian window sigma 1.5 voxels, HU window [-100, 300]) and HU MAE, arterial + portal, vs
  the copy and exponential baselines [better than both];
- regimen ordering by viable-tumour change at the last week: fraction of patients (with >= 2 regimens) whose
  predicted ordering agrees pairwise with the truth (pairs tied in the truth, |diff| < 0.5 ml, ignored) [>= 80 %];
- Pearson correlation between voxel absolute error of the mean and the predicted std (liver voxels) [> 0];
- timing of the demo-size request (3 regimens x 3 weeks x 4 samples on a 512 x 512 x 120 case; ``--demo-case`` or a
  synthetic phantom of that size) [<= 60 s on 2 CPU cores], with machine information.

Writes ``OUT/generator_evaluation.json`` and ``OUT/generator_evaluation.md``. Demo weights, synthetic data, not for
clinical use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

try:
    import HCCTwinLib  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HCCTwin"))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_results  # noqa: E402

from HCCTwinLib.cases import Geometry
from HCCTwinLib.imagemetrics import (  # noqa: F401  (re-exported: the metric pieces live in the library)
    MIN_VOLUME_ML,
    SSIM_WINDOW_HU,
    hu_mae,
    relative_error,
    ssim3d,
    tumour_dice,
)
from HCCTwinLib.imagemetrics import viable_volume_ml as _viable_volume_ml

#: issue 23's targets (the ceiling of generator_ceiling.md: viable error 0.42, mRECIST 0.70, all-pairs ordering 0.679
#: for the oracle on these 30 patients, so "within 0.05 of the oracle" is >= 0.629)
TARGETS = {"viable_volume_median_rel_error": ("<=", 0.47), "tumour_dice_mean": (">=", 0.80),
           "mrecist_agreement": (">=", 0.65), "regimen_ordering_agreement": (">=", 0.629),
           "outside_margin_hu_mean": ("<=", 2.0), "demo_request_seconds": ("<=", 5.0)}


# ---------------------------------------------------------------------------------------------------------------
# metric pieces (ssim3d, hu_mae, tumour_dice, ... from HCCTwinLib.imagemetrics; unit-tested in test_twin.py)

def viable_volume_ml(labels: np.ndarray, geometry: Geometry) -> float:
    return _viable_volume_ml(labels, geometry.voxel_volume_ml)


def outside_margin_hu(case, followup, margin_mm: float = 10.0) -> float | None:
    """Mean |virtual - input| HU (arterial + portal) over voxels farther than ``margin_mm`` from the tumour and PVTT
    of the input and of the virtual follow-up (issue 23: the anatomy there must stay the input's)."""
    from scipy import ndimage

    disease = np.isin(case.labels, (2, 3, 4)) | np.isin(followup.labels, (2, 3, 4))
    if not disease.any():
        return None
    far = ndimage.distance_transform_edt(~disease, sampling=case.geometry.spacing[::-1]) > margin_mm
    return float(np.mean([np.abs(np.asarray(followup.phases[p], np.float64)[far] - case.phases[p][far]).mean()
                          for p in ("arterial", "portal")]))


def ordering_agreement(pred_change: Mapping[str, float], true_change: Mapping[str, float], tie_tol: float = 0.5
                       ) -> bool:
    """True when every pair of regimens not tied in the truth is ordered the same way by the prediction."""
    keys = [k for k in true_change if k in pred_change]
    for n, a in enumerate(keys):
        for b in keys[n + 1:]:
            dt = true_change[a] - true_change[b]
            if abs(dt) < tie_tol:
                continue
            if np.sign(pred_change[a] - pred_change[b]) != np.sign(dt):
                return False
    return True


def ordering_scores(per_followup: Sequence[Mapping], method: str, tie_tol: float = 0.5) -> dict:
    """Regimen ordering of ``method`` against the truth, from the evaluation's follow-up rows.

    Per patient with >= 2 regimens, the change of the viable volume from baseline to each regimen's last evaluated
    follow-up (predicted ``<method>_viable_ml`` vs ``true_viable_ml``). ``all_pairs``: fraction of patients whose
    every pair of regimens not tied in the truth (|difference| >= ``tie_tol`` mL) is ordered right (the issue's
    strict figure; :func:`ordering_agreement`); ``pairwise``: fraction of all such pairs ordered right (a tie in the
    prediction counts as wrong); ``best_regimen``: fraction of patients whose regimen with the smallest true change
    is also the predicted one (a tie for the predicted best counts as wrong).
    """
    last: dict[str, dict[str, Mapping]] = {}
    for row in per_followup:
        cur = last.setdefault(row["patient_id"], {}).get(row["regimen"])
        if cur is None or row["weeks"] >= cur["weeks"]:
            last[row["patient_id"]][row["regimen"]] = row
    strict, pairs, best = [], [], []
    for rows in last.values():
        if len(rows) < 2:
            continue
        pred = {r: x[f"{method}_viable_ml"] - x["pre_viable_ml"] for r, x in rows.items()}
        true = {r: x["true_viable_ml"] - x["pre_viable_ml"] for r, x in rows.items()}
        strict.append(ordering_agreement(pred, true, tie_tol))
        keys = sorted(rows)
        for n, a in enumerate(keys):
            for b in keys[n + 1:]:
                dt = true[a] - true[b]
                if abs(dt) >= tie_tol:
                    pairs.append(bool(np.sign(pred[a] - pred[b]) == np.sign(dt)))
        true_best, pred_best = min(true.values()), min(pred.values())
        if sum(abs(v - true_best) < tie_tol for v in true.values()) == 1:  # a unique best regimen in the truth
            unique = sum(abs(v - pred_best) < 1e-6 for v in pred.values()) == 1  # a tie in the prediction is wrong
            best.append(unique and min(pred, key=pred.get) == min(true, key=true.get))
    return {"all_pairs": float(np.mean(strict)) if strict else None, "n_patients": len(strict),
            "pairwise": float(np.mean(pairs)) if pairs else None, "n_pairs": len(pairs),
            "best_regimen": float(np.mean(best)) if best else None, "n_patients_unique_best": len(best)}


def summarise_ordering(result: dict) -> None:
    """Ordering scores of every method into ``result["summary"]`` (also used to re-score a recorded run)."""
    for m in ("generator", "copy", "exponential"):
        sc = ordering_scores(result["per_followup"], m)
        summary = result["summary"][m]
        summary["regimen_ordering_agreement"] = sc["all_pairs"]
        summary["n_patients_ordering"] = sc["n_patients"]
        summary["regimen_ordering_pairwise"] = sc["pairwise"]
        summary["n_regimen_pairs"] = sc["n_pairs"]
        summary["best_regimen_agreement"] = sc["best_regimen"]
        summary["n_patients_unique_best"] = sc["n_patients_unique_best"]


def error_std_correlation(abs_error: np.ndarray, std: np.ndarray) -> float:
    """Pearson correlation of voxel absolute error and predicted std (NaN when either is constant)."""
    e, s = np.asarray(abs_error, np.float64).ravel(), np.asarray(std, np.float64).ravel()
    if e.size < 2 or e.std() == 0 or s.std() == 0:
        return float("nan")
    return float(np.corrcoef(e, s)[0, 1])


def mrecist_categories(base_labels, base_arterial, followups, geometry: Geometry) -> list[str]:
    """mRECIST category per follow-up ``[(weeks, labels, arterial)]`` of one trajectory."""
    from HCCTwinLib.response import read_response

    reading = read_response(base_labels, followups, geometry, base_arterial, criteria=("mrecist",))
    return reading.categories("mrecist")


def mrecist_scores(predicted: Sequence[str], true: Sequence[str]) -> dict:
    """mRECIST agreement, linear weighted kappa and the confusion ``{true: {read: n}}`` of categories read on virtual
    follow-ups against the true ones (None without any)."""
    from HCCTwinLib.response import weighted_kappa

    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(true, predicted):
        confusion.setdefault(t, {}).setdefault(p, 0)
        confusion[t][p] += 1
    return {"mrecist_agreement": float(np.mean([a == b for a, b in zip(predicted, true)])) if true else None,
            "mrecist_weighted_kappa": weighted_kappa(predicted, true) if true else None,
            "mrecist_confusion_true_to_predicted": confusion}


def sampled_mrecist_scores(rows: Sequence[Mapping]) -> dict:
    """How well the categories of the sampled responses (``generator_mrecist_sampled``: one per sample) say how sure
    a virtual reading is, against the true category (``true_mrecist``): the multi-class Brier score of their shares
    beside that of the virtual follow-up's own reading (``generator_mrecist``, all its weight on one category),
    the mean share of the true category, the agreement of the most frequent sampled category (ties: the virtual
    follow-up's own reading when tied, else the best), and the calibration per category and per share."""
    from HCCTwinLib.response import CATEGORIES

    rows = [x for x in rows if x.get("generator_mrecist_sampled") and x.get("true_mrecist")]
    if not rows:
        return {}
    brier, brier_one, p_true, modal = [], [], [], []
    by_share: dict[float, list[int]] = {}
    per_cat = {c: [0.0, 0] for c in CATEGORIES}
    for x in rows:
        sampled, truth = x["generator_mrecist_sampled"], x["true_mrecist"]
        shares = {c: sampled.count(c) / len(sampled) for c in CATEGORIES}
        brier.append(sum((shares[c] - (c == truth)) ** 2 for c in CATEGORIES))
        brier_one.append(sum(((c == x["generator_mrecist"]) - (c == truth)) ** 2 for c in CATEGORIES))
        p_true.append(shares.get(truth, 0.0))
        top = max(shares.values())
        tied = [c for c in CATEGORIES if shares[c] == top]
        modal.append((x["generator_mrecist"] if x["generator_mrecist"] in tied else tied[0]) == truth)
        for c in CATEGORIES:
            per_cat[c][0] += shares[c]
            per_cat[c][1] += c == truth
            by_share.setdefault(round(shares[c], 3), []).append(int(c == truth))
    return {"mrecist_sampled_followups": len(rows), "mrecist_sampled_brier": float(np.mean(brier)),
            "mrecist_median_brier": float(np.mean(brier_one)),
            "mrecist_sampled_true_share_mean": float(np.mean(p_true)),
            "mrecist_sampled_modal_agreement": float(np.mean(modal)),
            "mrecist_sampled_calibration_by_category": {c: {"mean_share": v[0] / len(rows),
                                                            "observed": v[1] / len(rows)}
                                                        for c, v in per_cat.items()},
            "mrecist_sampled_calibration_by_share": {str(k): {"n": len(v), "observed": float(np.mean(v))}
                                                     for k, v in sorted(by_share.items())}}


def patient_bootstrap_ci(rows: Sequence[Mapping], stat, n_boot: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile interval of ``stat(rows)`` over bootstrap resamples of the patients (a patient's follow-ups
    are not independent: they share the patient's image and latent response)."""
    rows = [x for x in rows if x.get("true_mrecist")]
    by_patient: dict[str, list] = {}
    for x in rows:
        by_patient.setdefault(x["patient_id"], []).append(x)
    ids = sorted(by_patient)
    if len(ids) < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = [stat([x for i in rng.integers(0, len(ids), len(ids)) for x in by_patient[ids[i]]])
            for _ in range(n_boot)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


# ---------------------------------------------------------------------------------------------------------------
def demo_phantom(shape=(120, 512, 512), spacing=(0.75, 0.75, 2.5)):
    """A 512 x 512 x 120 CT-sized phantom (liver block + two tumours) for timing only."""
    g = Geometry(shape=shape, spacing=spacing, origin=(-192.0, -192.0, 0.0))
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    labels = np.zeros(shape, np.uint8)
    labels[20:100, 120:380, 60:330] = 1
    labels[((k - 60) * 2.5) ** 2 + ((j - 250) * .75) ** 2 + ((i - 200) * .75) ** 2 < 30 ** 2] = 2
    labels[((k - 45) * 2.5) ** 2 + ((j - 180) * .75) ** 2 + ((i - 120) * .75) ** 2 < 15 ** 2] = 2
    art = np.select([labels == 1, labels == 2], [90.0, 150.0], -60.0).astype(np.float32)
    por = np.select([labels == 1, labels == 2], [120.0, 95.0], -40.0).astype(np.float32)
    return {"arterial": art, "portal": por}, labels, g


def time_demo(gen, demo_case: str | None, regimens, weeks, samples, seed, steps) -> dict:
    if demo_case:
        from HCCTwinLib.io import load_case

        case = load_case(demo_case)
        phases, labels, geometry = case.phases, case.labels, case.geometry
        source = str(demo_case)
    else:
        phases, labels, geometry = demo_phantom()
        source = "synthetic 512x512x120 phantom"
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        gen.generate(phases, labels, geometry, regimens=regimens, weeks=weeks, samples=samples, seed=seed,
                     steps=steps)
        times.append(time.perf_counter() - t0)
    return {"case": source, "shape_kji": list(geometry.shape), "regimens": list(regimens), "weeks": list(weeks),
            "samples": samples, "steps": gen.last_info.get("steps"), "first_s": round(times[0], 2),
            "warm_s": round(times[1], 2), "network_s": gen.last_info.get("network_s"),
            "device": str(gen.device), "machine": machine_info()}


def _load_truth(folder: Path):
    from HCCTwinLib.io import find_image, read_image

    out = {}
    for p in ("arterial", "portal"):
        out[p] = read_image(find_image(folder, p))[0]
    labels, geom = read_image(find_image(folder, "labels"), labels=True)
    return out, labels, geom


def evaluate(cohort: Path, weights: Path, *, train_cohort: Path | None = None, samples: int = 4, seed: int = 0,
             steps: int | None = None, weeks: Sequence[int] = (8, 16, 24), max_cases: int | None = None,
             device: str = "auto", demo_case: str | None = None, skip_timing: bool = False, log=print) -> dict:
    from HCCTwinLib.io import cohort_clinical_rows, load_case
    from HCCTwinLib.twin.baselines import ExponentialBaseline, copy_baseline
    from HCCTwinLib.twin.generator import get_generator
    from HCCTwinLib.twin.train import _inside, read_received_regimens

    cohort = Path(cohort).resolve()
    gen = get_generator(weights, device=device)
    fit_on = Path(train_cohort) if train_cohort else cohort
    exp_model = ExponentialBaseline.fit_cohort(fit_on)
    log(f"exponential baseline rates (1/week, fit on {fit_on.name}): {exp_model.rates}")
    patients = list(read_received_regimens(cohort))[: max_cases or None]
    clinical = cohort_clinical_rows(cohort)
    methods = ("generator", "copy", "exponential")
    per_fu: list[dict] = []
    cats = {"pred": [], "true": [], "copy": [], "exponential": []}
    err_all, std_all = [], []
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    for n, pid in enumerate(patients):
        truth_root = _inside(cohort, "truth", "cases", pid)
        if not truth_root.is_dir():
            continue
        regs = [r for r in sorted(p.name for p in truth_root.iterdir()) if r in gen.regimens]
        if not regs:
            continue
        case = load_case(_inside(cohort, "cases", pid, "pre"), patient_id=pid)
        case.clinical = clinical.get(pid, {})  # pre-treatment covariates (a model that uses them reads them)
        preds = {"generator": gen.generate(case, regimens=regs, weeks=weeks, samples=samples, seed=seed,
                                           steps=steps),
                 "copy": copy_baseline(case.phases, case.labels, case.geometry, regs, weeks),
                 "exponential": exp_model.predict(case.phases, case.labels, case.geometry, regs, weeks)}
        v0 = viable_volume_ml(case.labels, case.geometry)
        for r in regs:
            traj = {m: [] for m in ("true", *methods)}
            for w in weeks:
                folder = truth_root / r / f"w{w:02d}"
                if not folder.is_dir():
                    continue
                t_phases, t_labels, _g = _load_truth(folder)
                liver = (t_labels > 0) | (case.labels > 0)
                row = {"patient_id": pid, "regimen": r, "weeks": w, "true_viable_ml": viable_volume_ml(
                    t_labels, case.geometry), "pre_viable_ml": v0}
                for m in methods:
                    f = preds[m][r][w]
                    vv = viable_volume_ml(f.labels, case.geometry)
                    row[f"{m}_viable_ml"] = vv
                    row[f"{m}_viable_rel_error"] = relative_error(vv, row["true_viable_ml"])
                    row[f"{m}_dice"] = tumour_dice(f.labels, t_labels)
                    row[f"{m}_ssim"] = float(np.mean([ssim3d(f.phases[p], t_phases[p], liver)
                                                      for p in ("arterial", "portal")]))
                    row[f"{m}_mae"] = float(np.mean([hu_mae(f.phases[p], t_phases[p], liver)
                                                     for p in ("arterial", "portal")]))
                    traj[m].append((w, f.labels, f.phases["arterial"]))
                    row[f"{m}_outside_margin_hu"] = outside_margin_hu(case, f)
                traj["true"].append((w, t_labels, t_phases["arterial"]))
                f = preds["generator"][r][w]
                idx = np.flatnonzero(liver)
                idx = rng.choice(idx, size=min(20000, idx.size), replace=False)
                for p in ("arterial", "portal"):
                    err_all.append(np.abs(f.phases[p].ravel()[idx] - t_phases[p].ravel()[idx]))
                    std_all.append(f.std[p].ravel()[idx])
                per_fu.append(row)
            if traj["true"]:
                true_c = mrecist_categories(case.labels, case.phases["arterial"], traj["true"], case.geometry)
                cats["true"].extend(true_c)
                pred_c = mrecist_categories(case.labels, case.phases["arterial"], traj["generator"], case.geometry)
                cats["pred"].extend(pred_c)
                # the rows of this trajectory are the last ones, in week order
                for row, t_cat, p_cat in zip(per_fu[-len(true_c):], true_c, pred_c):
                    sampled = preds["generator"][r][row["weeks"]].sampled_response
                    row.update(true_mrecist=t_cat, generator_mrecist=p_cat,
                               generator_mrecist_sampled=list(sampled["mrecist"]) if sampled else None)
                cats["copy"].extend(mrecist_categories(case.labels, case.phases["arterial"], traj["copy"],
                                                       case.geometry))
                cats["exponential"].extend(mrecist_categories(case.labels, case.phases["arterial"],
                                                              traj["exponential"], case.geometry))
        log(f"[{n + 1}/{len(patients)}] {pid}: {len(regs)} regimens ({time.perf_counter() - t_start:.0f} s)")
    if not per_fu:
        raise SystemExit(f"{cohort}: no truth follow-ups found under truth/cases/<id>/<regimen>/wNN/")

    def agg(key, fn=np.median):
        vals = [x[key] for x in per_fu if x[key] is not None and math.isfinite(x[key])]
        return float(fn(vals)) if vals else None

    summary = {m: {"viable_volume_median_rel_error": agg(f"{m}_viable_rel_error"),
                   "tumour_dice_mean": agg(f"{m}_dice", np.mean), "liver_ssim_mean": agg(f"{m}_ssim", np.mean),
                   "liver_hu_mae_mean": agg(f"{m}_mae", np.mean)} for m in methods}
    for m, key in (("generator", "pred"), ("copy", "copy"), ("exponential", "exponential")):
        summary[m].update(mrecist_scores(cats[key], cats["true"]))
    summary["generator"].update(sampled_mrecist_scores(per_fu))
    summary["generator"]["mrecist_agreement_ci95"] = patient_bootstrap_ci(
        per_fu, lambda rows: float(np.mean([x["true_mrecist"] == x["generator_mrecist"] for x in rows])))
    summary["generator"]["error_std_pearson"] = error_std_correlation(np.concatenate(err_all),
                                                                      np.concatenate(std_all))
    result = {"cohort": str(cohort), "weights": str(weights), "model_card": {k: gen.card.get(k) for k in (
        "name", "version", "sha256", "crop_kji", "architecture_kwargs")}, "samples": samples, "seed": seed,
        "steps": gen.last_info.get("steps"), "weeks": list(weeks), "n_patients": len({x["patient_id"] for x in per_fu}),
        "n_followups": len(per_fu), "exponential_rates_per_week": exp_model.rates,
        "exponential_fit_on": str(fit_on), "summary": summary, "per_followup": per_fu,
        "disclaimer": "Demo weights, synthetic data, not for clinical use."}
    summarise_ordering(result)
    for m in methods:
        summary[m]["outside_margin_hu_mean"] = agg(f"{m}_outside_margin_hu", np.mean)
        summary[m]["outside_margin_hu_max"] = agg(f"{m}_outside_margin_hu", np.max)
        summary[m]["tumour_dice_by_week"] = {int(w): float(np.mean([x[f"{m}_dice"] for x in per_fu if x["weeks"] == w]))
                                             for w in weeks if any(x["weeks"] == w for x in per_fu)}
    if not skip_timing:
        demo_regs = [r for r in ("tace_pd1_len", "haic_pd1_len", "pd1_tki") if r in gen.regimens][:3]
        result["timing"] = time_demo(gen, demo_case, demo_regs, (8, 16, 24), 4, seed, steps)
    result["targets"] = check_targets(result)
    return result


def check_targets(result: dict) -> dict:
    g = result["summary"]["generator"]
    values = dict(g)
    if "timing" in result:
        values["demo_request_seconds"] = result["timing"]["warm_s"]
    out = {}
    for key, (op, thr) in TARGETS.items():
        v = values.get(key)
        out[key] = {"value": v, "target": f"{op} {thr}",
                    "met": None if v is None else (v <= thr if op == "<=" else v >= thr)}
    by_week = result["summary"]["generator"].get("tumour_dice_by_week")
    if by_week:
        copy = result["summary"]["copy"]["tumour_dice_by_week"]
        out["tumour_dice_above_copy_every_week"] = {
            "value": {str(w): round(float(v) - float(copy[w]), 4) for w, v in by_week.items()},
            "met": all(float(v) > float(copy[w]) for w, v in by_week.items())}
    for metric, better in (("liver_ssim_mean", max), ("liver_hu_mae_mean", min)):
        vals = {m: result["summary"][m][metric] for m in ("generator", "copy", "exponential")}
        ok = None if any(v is None for v in vals.values()) else better(vals, key=vals.get) == "generator"
        out[f"{metric}_beats_baselines"] = {"value": vals, "met": ok}
    return out


def write_report(result: dict, out_dir: Path, *, echo: bool = True) -> tuple[Path, Path]:
    def fmt(v):
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    s = result["summary"]
    steps = "" if result.get("steps") is None else f", {result['steps']} sampling steps"  # the network generator's
    lines = ["# Generator evaluation", "", "Demo weights, synthetic data, not for clinical use.", "",
             f"Cohort `{result['cohort']}`: {result['n_patients']} patients, {result['n_followups']} follow-ups "
             f"(regimen x week); {result['samples']} samples, seed {result['seed']}{steps}. "
             f"Exponential baseline fit on `{result['exponential_fit_on']}`.", "",
             "| metric | generator | copy | exponential |", "|---|---|---|---|"]
    for key in ("viable_volume_median_rel_error", "tumour_dice_mean", "mrecist_agreement", "mrecist_weighted_kappa",
                "liver_ssim_mean", "liver_hu_mae_mean"):
        lines.append(f"| {key} | " + " | ".join(fmt(s[m].get(key)) for m in ("generator", "copy", "exponential"))
                     + " |")
    if "tumour_dice_by_week" in s["generator"]:
        lines += ["", "Tumour Dice per follow-up week and the mean |HU difference| from the input outside a 10 mm "
                      "margin around tumour and PVTT (input and virtual):", "",
                  "| | generator | copy | exponential |", "|---|---|---|---|"]
        for w in s["generator"]["tumour_dice_by_week"]:
            lines.append(f"| tumour Dice, week {w} | " + " | ".join(
                fmt(s[m]["tumour_dice_by_week"].get(w, s[m]["tumour_dice_by_week"].get(str(w))))
                for m in ("generator", "copy", "exponential")) + " |")
        for key in ("outside_margin_hu_mean", "outside_margin_hu_max"):
            lines.append(f"| {key} | " + " | ".join(fmt(s[m].get(key)) for m in ("generator", "copy", "exponential"))
                         + " |")
    g = s["generator"]
    if g.get("mrecist_agreement_ci95"):
        lo, hi = g["mrecist_agreement_ci95"]
        lines += ["", f"mRECIST agreement of the virtual follow-ups {fmt(g['mrecist_agreement'])}, 95% interval "
                      f"{lo:.3f}-{hi:.3f} (bootstrap over the {result['n_patients']} patients: their follow-ups share "
                      "the patient's image and latent response)."]
    if g.get("mrecist_sampled_brier") is not None:
        cal = g["mrecist_sampled_calibration_by_category"]
        lines += ["", f"**How sure a virtual mRECIST reading is** (each follow-up's {result['samples']} sampled "
                      f"responses read like the follow-up itself, `sampled` in result.json; "
                      f"{g['mrecist_sampled_followups']} follow-ups): multi-class Brier score of the samples' shares "
                      f"{fmt(g['mrecist_sampled_brier'])} vs {fmt(g['mrecist_median_brier'])} for the virtual "
                      f"follow-up's reading alone (0 = always sure and right, lower is better); mean share of the "
                      f"true category {fmt(g['mrecist_sampled_true_share_mean'])}; most frequent sampled category "
                      f"right in {fmt(g['mrecist_sampled_modal_agreement'])} (the virtual follow-up's own reading: "
                      f"{fmt(g['mrecist_agreement'])}).", "",
                  "| category | mean share of the samples | observed frequency |", "|---|---|---|"]
        lines += [f"| {c} | {v['mean_share']:.3f} | {v['observed']:.3f} |" for c, v in cal.items()]
        lines += ["", "| share of the samples | (follow-up, category) pairs | that category was the true one |",
                  "|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['observed']:.3f} |"
                  for k, v in g["mrecist_sampled_calibration_by_share"].items()]
    lines += ["", "Regimen ordering by the change of the viable volume at the last follow-up (pairs tied in the truth, "
                  "< 0.5 mL apart, left out; the copy baseline predicts no change, so it never orders a pair; the "
                  "exponential baseline orders every patient's regimens the same way, by the fitted rates):", "",
              "| ordering | generator | copy | exponential |", "|---|---|---|---|"]
    for key, what in (("regimen_ordering_agreement", "all pairs right, fraction of patients (issue 5's figure)"),
                      ("regimen_ordering_pairwise", "pairs ordered right, fraction of pairs"),
                      ("best_regimen_agreement", "regimen with the largest true shrinkage predicted, fraction of "
                                                 "patients with a unique one")):
        lines.append(f"| {what} | " + " | ".join(fmt(s[m].get(key)) for m in ("generator", "copy", "exponential"))
                     + " |")
    lines += ["", f"Patients with >= 2 regimens: {g['n_patients_ordering']}; pairs not tied in the truth: "
                  f"{g.get('n_regimen_pairs', 'n/a')}; patients with a unique best regimen: "
                  f"{g.get('n_patients_unique_best', 'n/a')}.", "",
              f"- Voxel |error| vs predicted std, Pearson r: {fmt(g['error_std_pearson'])}"]
    if "timing" in result:
        t = result["timing"]
        lines += [f"- Demo request ({len(t['regimens'])} regimens x {len(t['weeks'])} weeks x {t['samples']} samples, "
                  f"{t['case']}, {t['shape_kji']}): first {t['first_s']} s, warm {t['warm_s']} s (network "
                  f"{t['network_s']} s) on {t['device']}; {t['machine']['cpu']}, {t['machine']['torch_threads']} "
                  f"threads, load {t['machine'].get('load_average_1_5_15')}"]
    lines += ["", "## Targets (issue 23)", "", "| target | value | met |", "|---|---|---|"]
    for key, v in result["targets"].items():
        lines.append(f"| {key} {v.get('target', '')} | {fmt(v['value']) if not isinstance(v['value'], dict) else ''.join(f'{k}: {fmt(x)} ' for k, x in v['value'].items())} | {v['met']} |")  # noqa: E501
    write_results(out_dir, "generator_evaluation", result, lines, echo=echo)
    return out_dir / "generator_evaluation.json", out_dir / "generator_evaluation.md"


def update_card(weights: Path, result: dict) -> None:
    """Write the measured numbers into the model card's ``metrics`` (the weights file and its sha256 are unchanged)."""
    from HCCTwinLib.weights import card_path, load_card, verify

    card = load_card(weights)
    verify(weights, card)
    card["metrics"] = {"generator_evaluation": {"cohort": Path(result["cohort"]).name,
                                                "n_patients": result["n_patients"], **result["summary"]["generator"],
                                                "baselines": {m: result["summary"][m] for m in ("copy", "exponential")},
                                                "timing": result.get("timing", {}).get("warm_s")}}
    path = card_path(weights)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=Path, help="hold-out cohort with truth/ (>= 30 patients)")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--rescore", type=Path, default=None,
                    help="re-score a recorded generator_evaluation.json (ordering scores, targets) without running "
                         "the generator; writes to --out")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--train-cohort", type=Path, default=None, help="fit the exponential baseline here")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--demo-case", default=None, help="pre/ folder of the demo case for the timing")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--update-card", action="store_true", help="write the metrics into the model card")
    args = ap.parse_args(argv)
    if args.rescore:
        result = json.loads(args.rescore.read_text())
        summarise_ordering(result)
        result["targets"] = check_targets(result)
        jpath, mpath = write_report(result, args.out, echo=False)
        print(f"re-scored {args.rescore}: written {jpath} and {mpath}")
        return 0
    if not (args.cohort and args.weights):
        ap.error("--cohort and --weights are required (unless --rescore)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = evaluate(args.cohort, args.weights, train_cohort=args.train_cohort, samples=args.samples,
                      seed=args.seed, steps=args.steps, max_cases=args.max_cases, device=args.device,
                      demo_case=args.demo_case, skip_timing=args.skip_timing)
    jpath, mpath = write_report(result, args.out)
    if args.update_card:
        update_card(args.weights, result)
    print(f"written {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
