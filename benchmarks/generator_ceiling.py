"""How well can *any* model predict the follow-ups from pre-treatment information, on this simulator? (issue 5)

Usage::

    python benchmarks/generator_ceiling.py [--seed 900] [--n 300] [--draws 200] [--train-seed 101 --train-n 120]
        [--evaluation benchmarks/results/generator_evaluation.json] [--out benchmarks/results]

The simulator draws each patient's tumour biology (growth per lesion, TACE / HAIC / lenvatinib sensitivity,
immune response, per-lesion heterogeneity: ``simulate.patient.draw_biology``) independently of everything an image
or a clinical table shows. A *pre-treatment oracle* knows the simulator exactly and every pre-treatment fact of the
patient (lesions, PVTT, liver function, the aggressiveness phenotype, which no real model sees) but not that draw:
it redraws the biology ``--draws`` times from its prior, runs the simulator's own treatment model for every regimen
and predicts

- the viable-tumour volume at 8 / 16 / 24 weeks, scored by the relative error ``|pred - true| / max(true, 1 ml)``
  of ``generator_evaluation.py``, with two point predictions from the draws: ``oracle`` = their weighted median
  with weights ``1 / max(v, 1 ml)`` (minimises the *expected* relative error of each follow-up) and
  ``oracle_median`` = their median (the issue's figure is the *median* error over follow-ups, which neither
  minimises exactly; both are reported);
- the mRECIST category per time point: the most frequent category of the draws (the simulator's own reading,
  ``outcomes.assess``; draws that die before the scan are left out);
- the regimen ordering by viable-volume change at the last follow-up, by either point prediction (draw ``k`` is
  the same patient under every regimen, as in the truth), scored with ``generator_evaluation.ordering_scores``.

Everything is measured in the simulator's volume space (the trajectories, mL) against the true trajectories of the
same patients, so no image, segmentation or generator error enters: its figures bound from above what a model that
sees only pre-treatment data can reach, and so whether issue 5's targets are reachable at all. The exponential
baseline (per-regimen rate fitted on a training cohort's observed follow-ups, ``--train-seed``) and the copy
baseline are scored the same way, and, with ``--evaluation``, the generator's recorded image-space rows are
re-scored on the follow-ups they share for comparison (the image-space truth and the trajectory truth are compared
too). Writes ``OUT/generator_ceiling.json`` (per-follow-up rows only with ``--rows``) and ``.md``. Synthetic
data, not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

try:
    import HCCTwinLib  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HCCTwin"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, utc_now, write_results  # noqa: E402
from generator_evaluation import TARGETS, ordering_scores  # noqa: E402

from HCCTwinLib.imagemetrics import relative_error  # noqa: E402
from HCCTwinLib.simulate.cohort import FOLLOWUP_WEEKS, _response_at, observed_weeks  # noqa: E402
from HCCTwinLib.simulate.outcomes import outcome  # noqa: E402
from HCCTwinLib.simulate.patient import draw_biology, rng_for, sample_patient  # noqa: E402
from HCCTwinLib.simulate.treatment import MONTHS_PER_WEEK, program_for, run_program  # noqa: E402
from HCCTwinLib.twin.baselines import ExponentialBaseline  # noqa: E402

CATEGORIES = ("CR", "PR", "SD", "PD")


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the cumulative weight reaches half the total."""
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    cum = np.cumsum(w)
    return float(v[int(np.searchsorted(cum, 0.5 * cum[-1]))])


def relative_error_optimal(draws: np.ndarray, floor_ml: float = 1.0) -> float:
    """Point prediction minimising the expected ``|pred - v| / max(v, floor)`` over the draws ``v``."""
    draws = np.asarray(draws, float)
    return weighted_median(draws, 1.0 / np.maximum(draws, floor_ml))


def mode_category(cats) -> str | None:
    cats = [c for c in cats if c in CATEGORIES]
    if not cats:
        return None
    counts = Counter(cats)
    return max(CATEGORIES, key=lambda c: (counts.get(c, 0), -CATEGORIES.index(c)))


def _course(model, regimen: str, bio):
    traj = run_program(regimen, program_for(regimen), bio, model.lesions, model.pvtt, model.hazard_clinical,
                       resection_ids=model.resection_ids)
    out = outcome(traj, bio, model.hazard_clinical, model.lesions, model.pvtt,
                  bool(model.clinical["extrahepatic_spread"]))
    return traj, out


def _burden(traj, weeks: int) -> float:
    return float(traj.burden()[traj.index(weeks * MONTHS_PER_WEEK)])


def patient_rows(model, n_draws: int, weeks=FOLLOWUP_WEEKS) -> list[dict]:
    """One row per (regimen, week) the truth has (the patient alive at the scan under that regimen)."""
    aggr, n_les = model.latent["aggressiveness"], len(model.lesions)
    draws = [draw_biology(rng_for(model.seed, model.index, "ceiling", k), aggr, n_les)[0] for k in range(n_draws)]
    rows = []
    for r in model.eligible:
        traj, out = model.trajectories[r], model.outcomes[r]
        wanted = [w for w in weeks if w * MONTHS_PER_WEEK < out.os_months]
        if not wanted:
            continue
        sims = [_course(model, r, b) for b in draws]
        v0 = _burden(traj, 0)
        for w in wanted:
            vd = np.array([_burden(t, w) for t, _ in sims])
            rows.append({"patient_id": model.patient_id, "regimen": r, "weeks": int(w), "pre_viable_ml": v0,
                         "true_viable_ml": _burden(traj, w), "true_mrecist": _response_at(out, w),
                         "oracle_viable_ml": relative_error_optimal(vd),
                         "oracle_median_viable_ml": float(np.median(vd)),
                         "oracle_p10_ml": float(np.quantile(vd, 0.1)), "oracle_p90_ml": float(np.quantile(vd, 0.9)),
                         "oracle_mrecist": mode_category(_response_at(o, w) for _, o in sims),
                         "copy_viable_ml": v0})
    return rows


def fit_exponential(train_seed: int, train_n: int) -> ExponentialBaseline:
    """Per-regimen rates from the received regimen's observed follow-ups of a training cohort (trajectory space)."""
    records = []
    for i in range(train_n):
        m = sample_patient(train_seed, i)
        traj = m.trajectories[m.regimen]
        for w in observed_weeks(m):
            records.append((m.regimen, w, _burden(traj, 0), _burden(traj, w)))
    return ExponentialBaseline.fit(records)


METHODS = ("oracle", "oracle_median", "exponential", "copy")


def score(rows: list[dict], methods=METHODS) -> dict:
    out = {}
    for m in methods:
        err = [relative_error(x[f"{m}_viable_ml"], x["true_viable_ml"]) for x in rows]
        res = {"viable_volume_median_rel_error": float(np.median(err)),
               "viable_rel_error_iqr": [float(np.quantile(err, 0.25)), float(np.quantile(err, 0.75))],
               "viable_rel_error_le_15pct": float(np.mean(np.asarray(err) <= 0.15))}
        res["ordering"] = ordering_scores(rows, m)
        out[m] = res
    cat_pairs = [(x["oracle_mrecist"], x["true_mrecist"]) for x in rows
                 if x["true_mrecist"] in CATEGORIES and x["oracle_mrecist"] is not None]
    out["oracle"]["mrecist_agreement"] = float(np.mean([p == t for p, t in cat_pairs])) if cat_pairs else None
    out["oracle"]["mrecist_n"] = len(cat_pairs)
    inside = [x["oracle_p10_ml"] <= x["true_viable_ml"] <= x["oracle_p90_ml"] for x in rows]
    out["oracle"]["p10_p90_coverage"] = float(np.mean(inside))
    return out


def compare_generator(rows: list[dict], evaluation: dict) -> dict:
    """The generator's recorded image-space errors and ordering on the follow-ups shared with ``rows``, and how the
    image-space truth relates to the trajectory truth there."""
    ev = {(x["patient_id"], x["regimen"], x["weeks"]): x for x in evaluation["per_followup"]}
    shared = [(x, ev[k]) for x in rows if (k := (x["patient_id"], x["regimen"], x["weeks"])) in ev]
    if not shared:
        return {}
    img_true = np.array([e["true_viable_ml"] for _, e in shared])
    trj_true = np.array([x["true_viable_ml"] for x, _ in shared])
    res = {"n_followups": len(shared),
           "image_vs_trajectory_truth": {"pearson_r": float(np.corrcoef(img_true, trj_true)[0, 1]),
                                         "median_rel_difference": float(np.median(
                                             [relative_error(a, b) for a, b in zip(img_true, trj_true)]))}}
    for m in ("generator", "exponential", "copy"):
        if f"{m}_viable_rel_error" in shared[0][1]:
            res[f"{m}_image_space"] = {
                "viable_volume_median_rel_error": float(np.median([e[f"{m}_viable_rel_error"] for _, e in shared])),
                "ordering": ordering_scores([e for _, e in shared], m)}
    return res


def run(seed: int, n: int, n_draws: int, train_seed: int, train_n: int, evaluation: dict | None, log=print) -> dict:
    t0 = time.perf_counter()
    exp_model = fit_exponential(train_seed, train_n)
    log(f"exponential rates (1/week, trajectories of seed {train_seed}, n {train_n}): {exp_model.rates}")
    rows = []
    for i in range(n):
        m = sample_patient(seed, i)
        for x in patient_rows(m, n_draws):
            x["exponential_viable_ml"] = x["pre_viable_ml"] * math.exp(exp_model.rate(x["regimen"]) * x["weeks"])
            rows.append(x)
        if (i + 1) % 25 == 0 or i + 1 == n:
            log(f"[{i + 1}/{n}] {len(rows)} follow-ups ({time.perf_counter() - t0:.0f} s)")
    result = {"date": utc_now(), "machine": machine_info(),
              "seed": seed, "n_patients": n, "draws": n_draws, "train_seed": train_seed, "train_n": train_n,
              "exponential_rates_per_week": exp_model.rates, "n_followups": len(rows),
              "targets": {k: TARGETS[k] for k in ("viable_volume_median_rel_error", "mrecist_agreement",
                                                   "regimen_ordering_agreement")},
              "all": score(rows), "seconds": round(time.perf_counter() - t0, 1)}
    if evaluation is not None:
        pids = {x["patient_id"] for x in evaluation["per_followup"]}
        sub = [x for x in rows if x["patient_id"] in pids]
        if sub:
            result["evaluation_patients"] = {"n_patients": len(pids), "n_followups": len(sub), **score(sub),
                                             "recorded_evaluation": compare_generator(sub, evaluation)}
    result["rows"] = rows
    return result


HEADER = "| measure (issue 5 target) | oracle (weighted median) | oracle (median) | exponential | copy |"


def _f(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}"


def write_report(result: dict, out: Path) -> tuple[Path, Path]:
    a = result["all"]
    lines = ["# Generator ceiling: what pre-treatment information allows on this simulator (issue 5)", "",
             "Synthetic data, not for clinical use.", "",
             f"{result['date']}, {machine_line(result['machine'])}, {result['seconds']} s. Cohort seed "
             f"{result['seed']}, {result['n_patients']} patients, {result['n_followups']} follow-ups (every eligible "
             f"regimen, 8/16/24 weeks while alive); {result['draws']} biology draws per patient; exponential rates "
             f"fitted on the observed follow-ups of seed {result['train_seed']} ({result['train_n']} patients).", "",
             "The *pre-treatment oracle* knows the simulator and every pre-treatment fact of the patient, but not the "
             "latent tumour biology (growth, treatment sensitivities, immune response), which no image shows. All "
             "volumes are the simulator's (trajectory space, mL): no image or model error enters.", "",
             HEADER, "|---|---|---|---|---|"]

    def table(s):
        rows = [("viable volume, median relative error (<= 0.15)", "viable_volume_median_rel_error"),
                ("follow-ups with relative error <= 0.15", "viable_rel_error_le_15pct")]
        out_l = [f"| {name} | " + " | ".join(_f(s[m][k]) for m in METHODS) + " |"
                 for name, k in rows]
        for name, k in (("ordering: all pairs right, patients (>= 0.80)", "all_pairs"),
                        ("ordering: pairs right", "pairwise"), ("best regimen predicted", "best_regimen")):
            out_l.append(f"| {name} | " + " | ".join(_f(s[m]["ordering"][k]) for m in METHODS) + " |")
        out_l.append(f"| mRECIST agreement (>= 0.80), most frequent category | "
                     f"{_f(s['oracle']['mrecist_agreement'])} | | | |")
        return out_l

    lines += table(a)
    cover = _f(a["oracle"]["p10_p90_coverage"])
    lines += ["", f"Oracle 10-90 % interval of the draws covers the true volume in {cover} "
              f"of follow-ups (0.80 expected if calibrated). Ordering patients: {a['oracle']['ordering']['n_patients']}"
              f", pairs: {a['oracle']['ordering']['n_pairs']}; mRECIST follow-ups: {a['oracle']['mrecist_n']}."]
    ev = result.get("evaluation_patients")
    if ev:
        lines += ["", f"## The {ev['n_patients']} patients of the recorded generator evaluation "
                  f"({ev['n_followups']} follow-ups)", ""]
        lines += [HEADER, "|---|---|---|---|---|"]
        lines += table(ev)
        rec = ev.get("recorded_evaluation") or {}
        if rec:
            iv = rec["image_vs_trajectory_truth"]
            lines += ["", f"Recorded image-space evaluation on {rec['n_followups']} of these follow-ups (image truth "
                      f"vs trajectory truth: Pearson r {iv['pearson_r']:.3f}, median relative difference "
                      f"{iv['median_rel_difference']:.3f}):", "",
                      "| image space | viable median rel. error | ordering all pairs | pairs | best regimen |",
                      "|---|---|---|---|---|"]
            for m in ("generator", "exponential", "copy"):
                s = rec.get(f"{m}_image_space")
                if s:
                    o = s["ordering"]
                    lines.append(f"| {m} | {_f(s['viable_volume_median_rel_error'])} | {_f(o['all_pairs'])} | "
                                 f"{_f(o['pairwise'])} | {_f(o['best_regimen'])} |")
    write_results(out, "generator_ceiling", result, lines)
    return out / "generator_ceiling.json", out / "generator_ceiling.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=900, help="hold-out seed (the evaluation's is 900)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--train-seed", type=int, default=101)
    ap.add_argument("--train-n", type=int, default=120)
    ap.add_argument("--evaluation", type=Path, default=None, help="a recorded generator_evaluation.json")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--rows", action="store_true", help="keep the per-follow-up rows in the JSON (about 1 MB)")
    args = ap.parse_args(argv)
    evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
    result = run(args.seed, args.n, args.draws, args.train_seed, args.train_n, evaluation)
    if not args.rows:
        result.pop("rows")
    jpath, mpath = write_report(result, args.out)
    print(f"written {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
