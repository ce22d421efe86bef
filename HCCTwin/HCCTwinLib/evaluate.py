"""``hcctwin evaluate --cohort DIR --out OUT``: the installed models measured on a site's own cohort.

Nothing is refitted: the installed segmentation network, generator and survival engine are applied to the cohort in
the HCCTwin layout (``clinical.csv`` + ``cases/<id>/pre`` + ``cases/<id>/followup/wNN``) and compared with what the
cohort holds:

- survival: OS (and PFS) Harrell / Uno C under the received regimen, time-dependent AUC at 12 / 24 months, integrated
  Brier score vs the cohort's own Kaplan-Meier curve, calibration (ICI) at 12 / 24 months, the established scores on
  the same patients, the landmark models at 8 / 16 weeks on the patients event-free then (response read from the
  observed follow-up images), 2-year metastasis AUC (TACE, no extrahepatic spread at baseline) and, when the engine
  has them, the metastasis landmark models' AUC on the patients metastasis-free at 8 / 16 weeks;
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
from . import imagemetrics as im
from .cases import ObservedScan
from .io import find_image, load_case, path_inside, read_clinical_table, read_image
from .jsonutil import jsonable
from .parallel import map_ordered
from .pipeline import PipelineOptions
from .progress import ProgressCallback, SubProgress, report
from .registration import register_observed
from .response import weighted_kappa
from .segmentation import get_segmenter
from .segmentation.metrics import dice_per_label
from .sitemap import reader_columns
from .survival import metrics as M
from .survival.cohort import cohort_feature_table, trajectory_readings
from .survival.engine import metastasis_population
from .survival.features import SCORE_BASELINES
from .survival.models import MetastasisModel, landmark_dataset
from .survival.store import get_survival_engine
from .twin import get_generator
from .weights import ModelFileError


def _c_pair(M, t, e, risk, tau):
    return {"harrell_c": M.harrell_c(t, e, risk), "uno_c": M.uno_c(t, e, risk, tau=tau)}


def fill_features(engine, table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` with the engine's features imputed by its training fill values (as when it was fitted)."""
    data = table.copy()
    for col, fill in engine.feature_fill_values.items():
        if col in data.columns:
            data[col] = pd.to_numeric(data[col], errors="coerce").fillna(fill)
    return data


def evaluate_survival(engine, table: pd.DataFrame) -> dict[str, Any]:
    """Discrimination and calibration of a fitted engine on a feature table (no refit)."""

    data = fill_features(engine, table)
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
    lmm = getattr(engine, "metastasis_landmark", None)
    if lmm is not None and "metastasis_event" in data.columns and "metastasis" in out:
        out["metastasis"]["landmark"] = {}
        for w, model in sorted(lmm.models_.items()):
            hw, y = lmm.labelled(metastasis_population(data), w)
            cols = [c for c in model.features_ if c.endswith(f"_w{w:02d}")]
            seen = hw[cols].notna().any(axis=1).to_numpy() if cols else np.zeros(len(hw), bool)
            hw, y = hw[seen], y[seen]
            if not 0 < y.sum() < len(y):
                out["notes"].append(f"metastasis landmark {w} weeks: no events or no non-events, not measured.")
                continue
            out["metastasis"]["landmark"][f"w{w:02d}"] = {
                "n": int(len(hw)), "events": int(y.sum()), "auc": M.binary_auc(y, model.predict_proba(hw)),
                "baseline_model_auc": M.binary_auc(y, engine.metastasis.predict_proba(hw))}
    return out


def _case_dirs(cohort: Path, ids, max_cases: int | None):

    out = []
    for pid in ids:
        d = path_inside(cohort, "cases", str(pid))
        if (d / "pre").is_dir():
            out.append((str(pid), d))
        if max_cases is not None and len(out) >= max_cases:
            break
    return out


def _segmentation_task(pre_dir: str, patient_id: str, device: str) -> dict[str, Any] | None:
    """Dice of the installed segmentation on one labelled pre-treatment study (a task of
    :func:`evaluate_segmentation`, also on a Dask worker: the model is loaded there once per worker process)."""

    case = load_case(Path(pre_dir), patient_id=patient_id)
    if case.labels is None:
        return None
    truth = case.labels
    case.labels = None
    pred = get_segmenter(None, device=device).segment(case)
    return {"patient_id": patient_id, **dice_per_label(pred, truth)}


def evaluate_segmentation(cohort: Path, ids, max_cases: int | None, device: str, progress=None, *,
                          scheduler: str | None = "serial", workers: int | None = None) -> dict[str, Any]:

    get_segmenter(None, device=device)  # a missing or damaged model stops here, before any worker starts
    cases = _case_dirs(cohort, ids, max_cases)
    rows = [r for r in map_ordered(_segmentation_task, [(str(d / "pre"), pid, device) for pid, d in cases],
                                   scheduler=scheduler, workers=workers, progress=progress, what="segmentation")
            if r is not None]
    keys = sorted({k for r in rows for k in r if k != "patient_id"})
    mean_dice = {}
    for k in keys:  # a label absent from every case (Dice undefined) is None, not the mean of nothing
        vals = np.asarray([r.get(k, np.nan) for r in rows], float)
        mean_dice[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
    return {"n": len(rows), "mean_dice": mean_dice, "per_patient": rows}


FIDELITY_PHASES = ("arterial", "portal")


def _observed_followups(case_dir: Path, case, pid: str):
    """The cohort's observed follow-ups of one patient on the pre-treatment grid: ``[(weeks, labels, phases)]``.
    A follow-up on another grid is registered first (rigid, affine, deformable inside the liver)."""

    fu_root = case_dir / "followup"
    out = []
    for folder in sorted(fu_root.glob("w[0-9]*")) if fu_root.is_dir() else []:
        try:
            w = int(folder.name[1:])
        except ValueError:
            continue
        lab_path = find_image(folder, "labels")
        if lab_path is None:
            continue
        labels, geometry = read_image(lab_path, labels=True)
        phases = {}
        for name in FIDELITY_PHASES:
            p = find_image(folder, name)
            if p is not None:
                phases[name] = read_image(p)[0]
        follow = register_observed(case, ObservedScan(weeks=w, phases=phases, geometry=geometry, labels=labels))
        out.append((w, follow.labels, follow.phases))
    return out


def _fidelity_row(pred_labels, pred_phases, true_labels, true_phases, voxel_ml: float) -> dict[str, float]:

    liver = true_labels > 0
    row = {"tumour_dice": im.tumour_dice(pred_labels, true_labels),
           "viable_rel_error": im.relative_error(im.viable_volume_ml(pred_labels, voxel_ml),
                                                 im.viable_volume_ml(true_labels, voxel_ml))}
    for name in FIDELITY_PHASES:
        if name in pred_phases and name in true_phases and pred_phases[name] is not None:
            a, b = pred_phases[name], true_phases[name]
            row[f"ssim_{name}"] = im.ssim3d(a, b, liver)
            row[f"psnr_{name}"] = im.psnr(a, b, liver)
            row[f"hu_mae_{name}"] = im.hu_mae(a, b, liver)
    return row


def _summarise_rows(rows: list[dict], cats_true: list[str], cats_pred: list[str]) -> dict[str, Any]:

    out: dict[str, Any] = {"n_followups": len(rows)}
    keys = sorted({k for r in rows for k in r if k.startswith(("ssim_", "psnr_", "hu_mae_"))})
    for k in ["tumour_dice"] + keys:
        vals = [r[k] for r in rows if k in r and np.isfinite(r[k])]
        out[f"{k}_mean"] = float(np.mean(vals)) if vals else None
    vals = [r["viable_rel_error"] for r in rows]
    out["viable_rel_error_median"] = float(np.median(vals)) if vals else None
    out["mrecist_agreement"] = float(np.mean([a == b for a, b in zip(cats_true, cats_pred)])) if cats_true else None
    out["mrecist_weighted_kappa"] = (weighted_kappa(cats_true, cats_pred)
                                     if cats_true and len(set(cats_true) | set(cats_pred)) > 1 else None)
    return out


def _reader_agreement(reads: list[tuple[str, list[str]]]) -> dict[str, Any] | None:
    """Agreement and linear weighted kappa of one rater (model or automatic reading) against each reader."""

    pairs = [(c, r) for c, readers in reads for r in readers if c and r]
    if not pairs:
        return None
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"n_reads": len(pairs), "agreement": float(np.mean([x == y for x, y in pairs])),
            "weighted_kappa": weighted_kappa(a, b) if len(set(a) | set(b)) > 1 else None}


def evaluate_generator(cohort: Path, clinical: pd.DataFrame, max_cases: int | None, options, progress=None
                       ) -> dict[str, Any]:
    """Virtual vs real follow-ups: for each patient with observed follow-ups, the installed generator's follow-up
    under the received regimen at each observed week against the observed one (registered to the pre-treatment
    scan when it is on another grid), next to the copy baseline (the pre-treatment scan unchanged): liver-masked
    SSIM / PSNR / HU MAE per phase, tumour Dice, viable-volume relative error, mRECIST agreement and weighted kappa
    (the observed images read by the same automatic mRECIST reading). When the table has readers' mRECIST of the
    first follow-up (``reader<k>_mrecist``), the model's, the copy baseline's and the automatic reading of the real
    images are compared with each reader, and the readers with each other."""

    generator = get_generator(None, device=options.device)
    regimen_of = dict(zip(clinical["patient_id"].astype(str), clinical.get("regimen", pd.Series(dtype=str))))
    readers_first = reader_columns(clinical).get("first", [])
    reader_of = {str(pid): [str(row[c]) for c in readers_first if isinstance(row[c], str) and row[c] in
                            ("CR", "PR", "SD", "PD")]
                 for pid, (_, row) in zip(clinical["patient_id"], clinical.iterrows())} if readers_first else {}
    rows = {"model": [], "copy_baseline": []}
    cats = {"observed": [], "model": [], "copy_baseline": []}
    reads = {"model": [], "copy_baseline": [], "observed": []}
    inter_reader: list[tuple[str, str]] = []
    skipped: dict[str, int] = {}
    per_followup = []
    cases = _case_dirs(cohort, clinical["patient_id"], None)
    used = 0
    for pid, d in cases:
        if max_cases is not None and used >= max_cases:
            break
        regimen = str(regimen_of.get(pid, ""))
        if not (d / "followup").is_dir():
            skipped["no observed follow-up"] = skipped.get("no observed follow-up", 0) + 1
            continue
        if regimen not in generator.card.get("regimens", []):
            skipped["regimen not known to the generator"] = skipped.get("regimen not known to the generator", 0) + 1
            continue
        case = load_case(d / "pre", patient_id=pid)
        if case.labels is None:
            skipped["no pre-treatment labels"] = skipped.get("no pre-treatment labels", 0) + 1
            continue
        observed = _observed_followups(d, case, pid)
        if not observed:
            skipped["no labelled follow-up"] = skipped.get("no labelled follow-up", 0) + 1
            continue
        used += 1
        weeks = [w for w, _, _ in observed]
        virt = generator.generate(case, regimens=[regimen], weeks=weeks, samples=options.samples, seed=options.seed)
        voxel_ml = case.geometry.voxel_volume_ml
        for w, lab, phases in observed:
            v = virt[regimen][w]
            m = _fidelity_row(v.labels, v.phases, lab, phases, voxel_ml)
            c = _fidelity_row(case.labels, case.phases, lab, phases, voxel_ml)
            rows["model"].append(m)
            rows["copy_baseline"].append(c)
            per_followup.append({"patient_id": pid, "regimen": regimen, "weeks": w,
                                 **{f"model_{k}": val for k, val in m.items()},
                                 **{f"copy_{k}": val for k, val in c.items()}})
        art = case.phases.get("arterial")
        t_read = trajectory_readings(case.labels, case.geometry, [(w, lab, ph.get("arterial"))
                                                                  for w, lab, ph in observed], art)
        p_read = trajectory_readings(case.labels, case.geometry,
                                     [(w, virt[regimen][w].labels, virt[regimen][w].phases.get("arterial"))
                                      for w in weeks], art)
        for n, w in enumerate(weeks):
            cats["observed"].append(t_read[w]["category_mrecist"])
            cats["model"].append(p_read[w]["category_mrecist"])
            cats["copy_baseline"].append("SD")  # the baseline against itself: no change
            per_followup[len(per_followup) - len(weeks) + n].update(
                {"mrecist_observed": t_read[w]["category_mrecist"], "mrecist_model": p_read[w]["category_mrecist"]})
        readers = reader_of.get(pid, [])
        if readers:
            first = weeks[0]
            reads["model"].append((p_read[first]["category_mrecist"], readers))
            reads["observed"].append((t_read[first]["category_mrecist"], readers))
            reads["copy_baseline"].append(("SD", readers))
            inter_reader += [(a, b) for i, a in enumerate(readers) for b in readers[i + 1:]]
        report(progress, min(1.0, used / max(min(len(cases), max_cases or len(cases)), 1)),
               f"virtual vs observed {used}")
    out: dict[str, Any] = {"n_patients": used, "generator": generator.card.get("name"),
                           "skipped": skipped, "per_followup": per_followup}
    for key in ("model", "copy_baseline"):
        out[key] = _summarise_rows(rows[key], cats["observed"], cats[key])
    # kept at the top level for scripts written against the first version of this report
    out["n_followups"] = out["model"]["n_followups"]
    for k in ("tumour_dice_mean", "viable_rel_error_median", "mrecist_agreement", "mrecist_weighted_kappa"):
        out[k] = out["model"][k]
    if reads["model"]:
        a, b = [p[0] for p in inter_reader], [p[1] for p in inter_reader]
        out["readers"] = {
            "columns": readers_first, "n_patients": len(reads["model"]),
            **{f"{k}_vs_readers": _reader_agreement(v) for k, v in reads.items()},
            "inter_reader": ({"n_pairs": len(a), "agreement": float(np.mean([x == y for x, y in inter_reader])),
                              "weighted_kappa": weighted_kappa(a, b) if len(set(a) | set(b)) > 1 else None}
                             if inter_reader else None)}
    return out


def run_evaluate_command(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, *, max_cases: int | None = 20,
                         images: bool = True, options=None, progress: ProgressCallback | None = None,
                         scheduler: str | None = "serial", workers: int | None = None) -> dict[str, Any]:
    """Measure every installed model on the cohort; write ``out_dir/metrics.json``; return the metrics.
    ``scheduler`` / ``workers``: where the per-patient feature rows and segmentations run
    (:mod:`HCCTwinLib.parallel`; the metrics are the same as serially)."""

    options = options or PipelineOptions()
    cohort = Path(cohort_dir)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"hcctwin_version": __version__, "disclaimer": DISCLAIMER, "cohort": cohort.name,
                               "date": time.strftime("%Y-%m-%d %H:%M"), "notes": []}
    clinical, read_notes = read_clinical_table(cohort / "clinical.csv")
    metrics["notes"] += read_notes
    try:
        engine = get_survival_engine()
        table, notes = cohort_feature_table(cohort, images=images, progress=SubProgress(progress, 0.0, 0.4),
                                            scheduler=scheduler, workers=workers)
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
            metrics[name] = (fn(*args, scheduler=scheduler, workers=workers) if name == "segmentation"
                             else fn(*args))
        except ModelFileError as exc:
            metrics["notes"].append(f"{name}: {exc}")
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics, finite=True), indent=2))
    report(progress, 1.0, "Evaluation done")
    return metrics
