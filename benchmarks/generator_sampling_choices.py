"""How the anchored twin draws its samples: the mRECIST readings of the sampled responses against the truth (issue 23).

    python benchmarks/generator_sampling_choices.py --tune TUNE [--holdout HOLDOUT]
        [--weights HCCTwin/HCCTwinLib/weights/hcctwin_twin.safetensors] [--out benchmarks/results]

Each virtual follow-up carries the RECIST / mRECIST category of each of its samples (draws of the patient's latent
response, rendered and read like the follow-up itself; ``sampled`` in result.json). Those shares should say how sure
the reading is: here they are scored against the true category of every (patient, regimen, week) of a cohort with
counterfactual truth, 4 samples, seed 0 (the product's defaults), for three ways of drawing the samples:

- **independent draws, shared response** (twin 1.2.0): ``z_s`` one N(0, 1) draw per sample
  (``default_rng(seed * 1000003 + s)``), every lesion of the patient moved by it;
- **stratified draws, shared response**: ``z_s`` from its own quartile of N(0, 1) (:func:`latent_draws`), every
  lesion moved by it (the model file without its ``shared_*`` arrays);
- **stratified draws, lesions apart** (shipped): as above, each lesion moved by ``sqrt(rho) z_s + sqrt(1 - rho)
  e_lesion`` with ``rho`` the share of the residual variance a patient's lesions have in common, fitted on the
  training cohort's observed follow-ups (``shared_viable`` / ``shared_total`` in the model).

Scores (``generator_evaluation.sampled_mrecist_scores``): multi-class Brier score of the samples' shares (lower is
better; the virtual follow-up's reading alone, all weight on one category, beside it), the mean share of the true
category, the agreement of the most frequent sampled category, and the mean share per category against its observed
frequency (calibration). The median rendering, and so every other figure of ``generator_evaluation.md``, does not
depend on the sampling. Chosen on ``TUNE`` (``hcctwin simulate --seed 950 --n 60``); ``HOLDOUT`` (seed 900) is shown
beside and was never used to choose. Synthetic data, not for clinical use.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402
from generator_evaluation import _load_truth, mrecist_categories, sampled_mrecist_scores  # noqa: E402
from generator_render_choices import compare, fmt, header_lines, tuning_parser  # noqa: E402

from HCCTwinLib.twin import anchored as A  # noqa: E402
from HCCTwinLib.twin.kinetic import KineticModel  # noqa: E402

WEEKS = (8, 16, 24)
SAMPLES = 4


def independent_draws(seed: int, samples: int) -> tuple[list[float], list[float]]:
    """Twin 1.2.0: one independent N(0, 1) draw (and one uniform) per sample."""
    draws = [np.random.default_rng(int(seed) * 1000003 + s) for s in range(samples)]
    return [float(g.standard_normal()) for g in draws], [float(g.random()) for g in draws]


def without_sharing(model: KineticModel) -> KineticModel:
    return KineticModel(model.regimens, model.weeks, {k: v for k, v in model.arrays.items()
                                                      if not k.startswith("shared_")},
                        model.feature_mean, model.feature_sd, model.counts, features=model.features)


def variants_of(gen) -> list[tuple]:
    """``[(name, generator, (draws, kinetic model))]``: the three ways of drawing the samples."""
    fitted, plain = gen.model, without_sharing(gen.model)
    return [("independent draws, shared response (twin 1.2.0)", gen, (independent_draws, plain)),
            ("stratified draws, shared response", gen, (A.latent_draws, plain)),
            ("stratified draws, lesions apart (shipped)", gen, (A.latent_draws, fitted))]


def evaluate(cohort: Path, variants, log=print) -> dict:
    """Per variant: the sampled mRECIST scores (``sampled_mrecist_scores``) on ``cohort``, truth read once."""
    from HCCTwinLib.io import cohort_clinical_rows, load_case
    from HCCTwinLib.twin.train import _inside, read_received_regimens

    gen = variants[0][1]
    fitted = gen.model
    clinical = cohort_clinical_rows(cohort)
    rows = {name: [] for name, _, _ in variants}
    shipped_draws = A.latent_draws
    t0 = time.perf_counter()
    try:
        for n, pid in enumerate(read_received_regimens(cohort)):
            troot = _inside(cohort, "truth", "cases", pid)
            if not troot.is_dir():
                continue
            regs = [r for r in sorted(p.name for p in troot.iterdir()) if r in gen.regimens]
            case = load_case(_inside(cohort, "cases", pid, "pre"), patient_id=pid)
            case.clinical = clinical.get(pid, {})
            true_cats = {}
            for r in regs:
                ws = [w for w in WEEKS if (troot / r / f"w{w:02d}").is_dir()]
                traj = []
                for w in ws:
                    t_phases, t_labels, _ = _load_truth(troot / r / f"w{w:02d}")
                    traj.append((w, t_labels, t_phases["arterial"]))
                if traj:
                    true_cats[r] = dict(zip(ws, mrecist_categories(case.labels, case.phases["arterial"], traj,
                                                                   case.geometry)))
            for name, _gen, (draws, model) in variants:
                A.latent_draws = draws
                gen.model = model
                out = gen.generate(case, regimens=regs, weeks=WEEKS, samples=SAMPLES, seed=0)
                for r, by_week in true_cats.items():
                    median = mrecist_categories(case.labels, case.phases["arterial"],
                                                [(w, out[r][w].labels, out[r][w].phases["arterial"])
                                                 for w in by_week], case.geometry)
                    for (w, truth), med in zip(by_week.items(), median):
                        sampled = out[r][w].sampled_response
                        rows[name].append({"patient_id": pid, "regimen": r, "weeks": w, "true_mrecist": truth,
                                           "generator_mrecist": med,
                                           "generator_mrecist_sampled": sampled["mrecist"] if sampled else None})
            log(f"[{n + 1}] {pid}: {len(regs)} regimens ({time.perf_counter() - t0:.0f} s)")
    finally:
        A.latent_draws = shipped_draws
        gen.model = fitted
    return {name: {**sampled_mrecist_scores(rows[name]), "patients": len({x["patient_id"] for x in rows[name]}),
                   "followups": len(rows[name]),
                   "mrecist_agreement": float(np.mean([x["true_mrecist"] == x["generator_mrecist"]
                                                       for x in rows[name]]))}
            for name, _, _ in variants}


def main(argv=None) -> int:
    from HCCTwinLib.twin.generator import load_generator

    args = tuning_parser(__doc__).parse_args(argv)
    gen = load_generator(args.weights)
    tune, hold, result = compare(args, gen, variants_of(gen), score=evaluate, samples=SAMPLES, seed=0)
    lines = header_lines("How the anchored twin draws its samples", result, args, tune,
                         rendered=f"{SAMPLES} samples, seed 0") + [
        "| samples drawn as | tune: Brier (samples) | tune: Brier (reading alone) | tune: share of the true "
        "category | tune: most frequent sampled category right | hold-out: Brier (samples) | hold-out: share "
        "of the true category |", "|---|---|---|---|---|---|---|"]
    for name, t in tune.items():
        h = hold.get(name) or {}
        lines.append(f"| {name} | {fmt(t.get('mrecist_sampled_brier'))} | {fmt(t.get('mrecist_median_brier'))} | "
                     f"{fmt(t.get('mrecist_sampled_true_share_mean'))} | "
                     f"{fmt(t.get('mrecist_sampled_modal_agreement'))} | {fmt(h.get('mrecist_sampled_brier'))} | "
                     f"{fmt(h.get('mrecist_sampled_true_share_mean'))} |")
    lines += ["", "Calibration on the tuning cohort: mean share of the samples per category / observed frequency:", ""]
    for name, t in tune.items():
        cal = t.get("mrecist_sampled_calibration_by_category") or {}
        lines.append(f"- {name}: " + ", ".join(f"{c} {v['mean_share']:.3f} / {v['observed']:.3f}"
                                               for c, v in cal.items()))
    lines += ["", "The virtual follow-up itself (the median response) is the same in every row, so its mRECIST "
                  "agreement and every image figure are unchanged; only the samples (and the per-voxel SD made from "
                  "them) differ."]
    write_results(args.out, "generator_sampling_choices", result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
