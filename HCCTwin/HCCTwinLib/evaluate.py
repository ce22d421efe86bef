"""``hcctwin evaluate --cohort DIR --out OUT``: the installed models measured on a site's own cohort.

Nothing is refitted: the installed segmentation network, generator and survival engine are applied to the cohort in
the HCCTwin layout (``clinical.csv`` + ``cases/<id>/pre`` + ``cases/<id>/followup/wNN``) and compared with what the
cohort holds:

- survival: OS (and PFS) Harrell / Uno C under the received regimen, time-dependent AUC at 12 / 24 months, integrated
  Brier score vs the cohort's own Kaplan-Meier curve, calibration (ICI) at 12 / 24 months, the established scores on
  the same patients, the landmark models at 8 / 16 weeks on the patients event-free then (response read from the
  observed follow-up images), 2-year metastasis AUC (TACE, no extrahepatic spread at baseline);
- segmentation (when a model is installed and the cohort has label maps): Dice per label on up to ``max_cases``;
- generator (when installed and follow-ups exist): the virtual follow-up under the received regimen at each observed
  week vs the observed one: tumour Dice, viable-volume relative error, mRECIST agreement and weighted kappa.

Writes ``OUT/metrics.json``. Research use only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import DISCLAIMER, __version__
from .progress import ProgressCallback, SubProgress, report


def _c_pair(M, t, e, risk, tau):
    return {"harrell_c": M.harrell_c(t, e, risk), "uno_c": M.uno_c(t, e, risk, tau=tau)}


def evaluate_survival(engine, table: pd.DataFrame) -> dict[str, Any]:
    """Discrimination and calibration of a fitted engine on a feature table (no refit)."""
    from .survival import metrics as M
    from .survival.engine import metastasis_population
    from .survival.features import SCORE_BASELINES
    from .survival.models import MetastasisModel, landmark_dataset

    data = table.copy()
    for col, fill in engine.feature_fill_values.items():
        if col in data.columns:
            data[col] = pd.to_numeric(data[col], errors="coerce").fillna(fill)
    out: dict[str, Any] = {"notes": []}
    known = data["regimen"].astype(str).isin(engine.os.regimens_)
    if (~known).any():
        out["notes"].append(f"{int((~known).sum())} patient(s) received a regimen the engine does not know: left out.")
    data = data[known]
    out["n_patients"] = int(len(data))
    for endpoint, model in (("os", engine.os), ("pfs", engine.pfs)):
        tcol, ecol = f"{endpoint}_months", f"{endpoint}_event"
        if model is None or tcol not in data.columns:
            continue
        d = data.dropna(subset=[tcol, ecol])
        t, e = d[tcol].to_numpy(float), d[ecol].to_numpy(float)
        if e.sum() < 5:
            out["notes"].append(f"{endpoint}: fewer than 5 events, not measured.")
            continue
        tau = float(np.quantile(t, 0.9))
        risk = model.predict_risk(d)
        res: dict[str, Any] = {"n": int(len(d)), "events": int(e.sum()), "model": _c_pair(M, t, e, risk, tau),
                               "td_auc": {str(h): M.time_dependent_auc(t, e, risk, h) for h in (12, 24)}}
        grid = np.linspace(1, min(36.0, float(np.quantile(t, 0.95))), 24)
        res["ibs"] = {"model": M.integrated_brier(t, e, model.predict_survival(d, grid), grid),
                      "km_null": M.integrated_brier(t, e, M.km_null_survival(t, e, grid, len(t)), grid)}
        res["ici"] = {str(h): M.ici(t, e, 1 - model.predict_survival(d, [h])[:, 0], h)["ici"] for h in (12, 24)}
        res["baselines"] = {k: _c_pair(M, t, e, d[c].to_numpy(float), tau) for k, c in SCORE_BASELINES.items()
                            if c in d.columns}
        out[endpoint] = res
    if engine.landmark is not None and "os_months" in data.columns:
        out["landmark"] = {}
        for w in sorted(engine.landmark.models_):
            lm = landmark_dataset(data, "os_months", "os_event", w)
            cols = [c for c in engine.landmark.models_[w]["columns"] if c.endswith(f"_w{w:02d}")]
            lm = lm[lm[cols].notna().any(axis=1)] if cols else lm.iloc[:0]
            t, e = lm["os_months"].to_numpy(float), lm["os_event"].to_numpy(float)
            if len(lm) < 10 or e.sum() < 5:
                out["notes"].append(f"landmark {w} weeks: too few patients with a follow-up at {w} weeks.")
                continue
            out["landmark"][f"w{w:02d}"] = {
                "n_at_risk": int(len(lm)), "dynamic_harrell_c": M.harrell_c(t, e, engine.landmark.predict_risk(lm, w)),
                "baseline_harrell_c": M.harrell_c(t, e, engine.os.predict_risk(lm))}
    if engine.metastasis is not None and "metastasis_event" in data.columns:
        h = metastasis_population(data)
        y, keep = MetastasisModel.binary_target(h)
        h, y = h[keep], y[keep]
        if 0 < y.sum() < len(y):
            out["metastasis"] = {"n": int(len(h)), "events": int(y.sum()),
                                 "auc": M.binary_auc(y, engine.metastasis.predict_proba(h)),
                                 "baselines_auc": {k: M.binary_auc(y, h[c].to_numpy(float))
                                                   for k, c in SCORE_BASELINES.items() if c in h.columns}}
        else:
            out["notes"].append("metastasis: no TACE patient with a known 2-year status, not measured.")
    return out


def _case_dirs(cohort: Path, ids, max_cases: int | None):
    from .io import path_inside

    out = []
    for pid in ids:
        d = path_inside(cohort, "cases", str(pid))
        if (d / "pre").is_dir():
            out.append((str(pid), d))
        if max_cases is not None and len(out) >= max_cases:
            break
    return out


def evaluate_segmentation(cohort: Path, ids, max_cases: int | None, device: str, progress=None) -> dict[str, Any]:
    from .io import load_case
    from .segmentation import get_segmenter
    from .segmentation.metrics import dice_per_label

    segmenter = get_segmenter(None, device=device)
    rows = []
    cases = _case_dirs(cohort, ids, max_cases)
    for n, (pid, d) in enumerate(cases):
        case = load_case(d / "pre", patient_id=pid)
        if case.labels is None:
            continue
        truth = case.labels
        case.labels = None
        pred = segmenter.segment(case)
        rows.append({"patient_id": pid, **dice_per_label(pred, truth)})
        report(progress, (n + 1) / max(len(cases), 1), f"segmentation {n + 1}/{len(cases)}")
    keys = sorted({k for r in rows for k in r if k != "patient_id"})
    return {"n": len(rows), "mean_dice": {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in keys},
            "per_patient": rows}


def evaluate_generator(cohort: Path, clinical: pd.DataFrame, max_cases: int | None, options, progress=None
                       ) -> dict[str, Any]:
    from .io import find_image, load_case, read_image
    from .response import weighted_kappa
    from .survival.engine import trajectory_readings
    from .twin import get_generator

    generator = get_generator(None, device=options.device)
    regimen_of = dict(zip(clinical["patient_id"].astype(str), clinical.get("regimen", pd.Series(dtype=str))))
    rows, cats_true, cats_pred = [], [], []
    cases = _case_dirs(cohort, clinical["patient_id"], max_cases)
    for n, (pid, d) in enumerate(cases):
        regimen = str(regimen_of.get(pid, ""))
        fu_root = d / "followup"
        weeks = sorted(int(p.name[1:]) for p in fu_root.glob("w[0-9]*")) if fu_root.is_dir() else []
        if not weeks or regimen not in generator.card.get("regimens", []):
            continue
        case = load_case(d / "pre", patient_id=pid)
        if case.labels is None:
            continue
        virt = generator.generate(case, regimens=[regimen], weeks=weeks, samples=options.samples, seed=options.seed)
        observed = []
        for w in weeks:
            lab_path = find_image(fu_root / f"w{w:02d}", "labels")
            if lab_path is None:
                continue
            lab, _ = read_image(lab_path, labels=True)
            art = find_image(fu_root / f"w{w:02d}", "arterial")
            observed.append((w, lab, read_image(art)[0] if art is not None else None))
            v = virt[regimen][w]
            t_tumor, p_tumor = np.isin(lab, (2, 3)), np.isin(v.labels, (2, 3))
            inter = float((t_tumor & p_tumor).sum())
            denom = float(t_tumor.sum() + p_tumor.sum())
            tv, pv = float((lab == 2).sum()), float((v.labels == 2).sum())
            rows.append({"patient_id": pid, "regimen": regimen, "weeks": w,
                         "tumour_dice": 2 * inter / denom if denom else 1.0,
                         "viable_rel_error": abs(pv - tv) / max(tv, 1.0)})
        if observed:
            t_read = trajectory_readings(case.labels, case.geometry, observed, case.phases.get("arterial"))
            p_read = trajectory_readings(case.labels, case.geometry,
                                         [(w, virt[regimen][w].labels, virt[regimen][w].phases.get("arterial"))
                                          for w, _, _ in observed], case.phases.get("arterial"))
            for w, _, _ in observed:
                cats_true.append(t_read[w]["category_mrecist"])
                cats_pred.append(p_read[w]["category_mrecist"])
        report(progress, (n + 1) / max(len(cases), 1), f"virtual vs observed {n + 1}/{len(cases)}")
    agree = float(np.mean([a == b for a, b in zip(cats_true, cats_pred)])) if cats_true else None
    return {"n_followups": len(rows),
            "tumour_dice_mean": float(np.mean([r["tumour_dice"] for r in rows])) if rows else None,
            "viable_rel_error_median": float(np.median([r["viable_rel_error"] for r in rows])) if rows else None,
            "mrecist_agreement": agree,
            "mrecist_weighted_kappa": weighted_kappa(cats_true, cats_pred) if len(set(cats_true)) > 1 else None,
            "per_followup": rows}


def run_evaluate_command(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, *, max_cases: int | None = 20,
                         images: bool = True, options=None, progress: ProgressCallback | None = None
                         ) -> dict[str, Any]:
    """Measure every installed model on the cohort; write ``out_dir/metrics.json``; return the metrics."""
    from .io import read_clinical_table
    from .jsonutil import jsonable
    from .pipeline import PipelineOptions
    from .survival.engine import cohort_feature_table, get_survival_engine
    from .weights import ModelFileError

    options = options or PipelineOptions()
    cohort = Path(cohort_dir)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"hcctwin_version": __version__, "disclaimer": DISCLAIMER, "cohort": cohort.name,
                               "date": time.strftime("%Y-%m-%d %H:%M"), "notes": []}
    clinical, read_notes = read_clinical_table(cohort / "clinical.csv")
    metrics["notes"] += read_notes
    try:
        engine = get_survival_engine()
        table, notes = cohort_feature_table(cohort, images=images, progress=SubProgress(progress, 0.0, 0.4))
        metrics["notes"] += notes
        metrics["survival"] = evaluate_survival(engine, table)
        metrics["models"] = {"survival": engine.card.get("name")}
    except ModelFileError as exc:
        metrics["notes"].append(f"survival: {exc}")
    for name, fn, args in (
            ("segmentation", evaluate_segmentation, (cohort, clinical["patient_id"], max_cases, options.device,
                                                     SubProgress(progress, 0.4, 0.6))),
            ("generator", evaluate_generator, (cohort, clinical, max_cases, options,
                                               SubProgress(progress, 0.6, 1.0)))):
        if not images:
            continue
        try:
            metrics[name] = fn(*args)
        except ModelFileError as exc:
            metrics["notes"].append(f"{name}: {exc}")
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics, finite=True), indent=2))
    report(progress, 1.0, "Evaluation done")
    return metrics
