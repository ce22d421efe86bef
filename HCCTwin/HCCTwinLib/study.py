"""``hcctwin study --cohort DIR --splits development,validation,test --out OUT``: the validation study on a cohort.

The study this project serves develops models on a retrospective cohort and validates them on further cohorts by
comparing virtual follow-up images with the real ones. On a cohort in the HCCTwin layout (``clinical.csv`` +
``cases/<id>/pre`` + ``cases/<id>/followup/wNN``; a DICOM cohort is brought into it by ``hcctwin import``):

1. **Splits**: the ``split`` column of ``clinical.csv`` when there is one (rows of other splits are left out, with a
   note), else a deterministic split by a hash of the patient ID (60/20/20 for three splits; ``OUT/splits.csv``).
2. **Models**: the survival engine is trained on the first split (``--train auto``: when every regimen of it has
   enough patients, else the installed engine is used, with the reason; ``always`` / ``never``) and saved in
   ``OUT/models/``; segmentation and generator are the installed ones (``hcctwin train segmentation|generator`` on
   the development cases first to use the site's own; training them needs a GPU).
3. **Per split**: virtual-vs-real image fidelity (liver-masked SSIM / PSNR / HU MAE per phase, tumour Dice,
   viable-volume error, mRECIST agreement and weighted kappa, against the readers' mRECIST when the table has it),
   each next to the copy baseline; segmentation Dice; survival discrimination and calibration of the baseline and the
   dynamic (landmark) models (Harrell / Uno C, time-dependent AUC, IBS vs Kaplan-Meier, ICI, calibration plot,
   Kaplan-Meier by predicted risk group with cut-points from the first split, decision curves), next to the
   established scores (HAP, mHAP-II, six-and-twelve, ALBI, BCLC).
4. ``OUT/study.json`` and ``OUT/study.html`` (self-contained, plots embedded).

Results on the training split are apparent (optimistic) performance and are labelled so. Research use only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import DISCLAIMER, __version__
from .errors import InputError
from .evaluate import evaluate_generator, evaluate_segmentation, evaluate_survival, fill_features
from .io import read_clinical_table, spreadsheet_safe
from .jsonutil import jsonable
from .pipeline import PipelineOptions
from .progress import ProgressCallback, SubProgress, report
from .survival import metrics as M
from .survival.cohort import cohort_feature_table
from .survival.engine import ENGINE_NAME, MIN_PATIENTS_PER_REGIMEN, fit_engine
from .survival.store import get_survival_engine, save_engine
from .weights import ModelFileError

DEFAULT_SPLITS = ("development", "validation", "test")
#: Share of patients per split when the table has no ``split`` column (first split = development).
SPLIT_FRACTIONS = {1: (1.0,), 2: (0.7, 0.3), 3: (0.6, 0.2, 0.2)}
CALIBRATION_MONTHS = 12.0
TRAIN_CHOICES = ("auto", "always", "never")


# ----------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------

def _hash_fraction(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_splits(clinical: pd.DataFrame, splits: Sequence[str], seed: int = 0) -> tuple[pd.Series, list[str]]:
    """The split of every patient (``None`` = not in the study) and notes. Uses the ``split`` column when present
    (case-insensitive), else patients ordered by a hash of their ID are cut into :data:`SPLIT_FRACTIONS` (more than
    three splits: equal shares): the same IDs always give the same splits, whatever the row order."""
    splits = [s.strip().lower() for s in splits if s.strip()]
    if not splits:
        raise InputError("no split named: give --splits, e.g. development,validation,test.")
    if len(set(splits)) != len(splits):
        raise InputError(f"split names repeat in {','.join(splits)}; name each split once.")
    ids = clinical["patient_id"].astype(str)
    notes: list[str] = []
    if "split" in clinical.columns:
        values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().lower()
                  for v in clinical["split"]]
        other = sorted({v for v in values if v is not None and v not in splits})
        if other:
            k = sum(v in other for v in values)
            notes.append(f"{k} patient(s) of split(s) {', '.join(other)} (not asked for) left out of the study.")
        out = pd.Series([v if v in splits else None for v in values], index=clinical.index, name="split")
        notes.append("splits from the 'split' column of the clinical table.")
    else:
        fractions = SPLIT_FRACTIONS.get(len(splits), tuple([1.0 / len(splits)] * len(splits)))
        # patients ordered by a hash of their ID (stable, unrelated to row order or outcome), then cut at the
        # cumulative fractions: every split gets its share exactly (rounded), even in a small cohort
        order = sorted(range(len(ids)), key=lambda n: _hash_fraction(ids.iloc[n], seed))
        edges = np.rint(np.cumsum(fractions) * len(ids)).astype(int)
        names = [None] * len(ids)
        for rank, n in enumerate(order):
            names[n] = splits[min(int(np.searchsorted(edges, rank, side="right")), len(splits) - 1)]
        out = pd.Series(names, index=clinical.index, name="split")
        notes.append(f"no 'split' column: patients assigned by a hash of the patient ID (seed {seed}), "
                     f"{'/'.join(f'{round(100 * f)}' for f in fractions)} % to {', '.join(splits)}.")
    empty = [s for s in splits if not (out == s).any()]
    if empty:
        notes.append(f"split(s) {', '.join(empty)} have no patients: not measured.")
    return out, notes


# ----------------------------------------------------------------------------------------------------------------
# Survival curves for the report
# ----------------------------------------------------------------------------------------------------------------

def survival_curves(engine, table: pd.DataFrame, cutpoints=None) -> dict[str, Any]:
    """OS calibration (12 months), Kaplan-Meier by predicted risk group and the decision curve at 12 months."""
    d = table.dropna(subset=["os_months", "os_event"])
    d = d[d["regimen"].astype(str).isin(engine.os.regimens_)]
    if len(d) < 10 or d["os_event"].sum() < 5:
        return {}
    t, e = d["os_months"].to_numpy(float), d["os_event"].to_numpy(float)
    risk = engine.os.predict_risk(d)
    risk_12 = 1.0 - engine.os.predict_survival(d, [CALIBRATION_MONTHS])[:, 0]
    out = {"calibration": M.calibration_by_group(t, e, risk_12, CALIBRATION_MONTHS),
           "km_by_risk": M.km_by_risk_group(t, e, risk, cutpoints=cutpoints,
                                            times=np.linspace(0, min(48.0, float(t.max())), 49)),
           "decision_curve": M.decision_curve_survival(t, e, risk_12, CALIBRATION_MONTHS,
                                                       thresholds=np.arange(0.05, 0.96, 0.05))}
    return out


def _risk_tertiles(engine, table: pd.DataFrame):
    d = table.dropna(subset=["os_months"])
    d = d[d["regimen"].astype(str).isin(engine.os.regimens_)]
    return np.quantile(engine.os.predict_risk(d), [1 / 3, 2 / 3]).tolist() if len(d) >= 6 else None


# ----------------------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------------------

def _survival_engine(train: str, dev: pd.DataFrame, out: Path, *, n_bootstrap: int, seed: int, cohort_name: str,
                     split_name: str, notes: list[str], progress) -> tuple[Any, dict[str, Any]]:
    counts = dev["regimen"].astype(str).value_counts() if "regimen" in dev.columns else pd.Series(dtype=int)
    enough = [r for r, k in counts.items() if k >= MIN_PATIENTS_PER_REGIMEN]
    want = train == "always" or (train == "auto" and enough and dev["os_event"].sum() >= 10)
    if want:
        if not enough:
            raise InputError(f"--train always: no regimen of the {split_name} split has {MIN_PATIENTS_PER_REGIMEN} "
                             f"patients ({dict(counts)}); add patients or use the installed engine (--train never).")
        engine, fit_notes = fit_engine(dev, n_bootstrap=n_bootstrap, seed=seed, progress=progress)
        notes += [f"survival training: {n}" for n in fit_notes]
        (out / "models").mkdir(parents=True, exist_ok=True)
        path, _ = save_engine(engine, out / "models" / f"{ENGINE_NAME}.safetensors",
                              training_data={"cohort": cohort_name, "split": split_name, "n_patients": int(len(dev))})
        return engine, {"survival": {"source": f"trained on the {split_name} split ({len(dev)} patients)",
                                     "path": str(path.relative_to(out))}}
    if train == "auto":
        notes.append(f"survival engine not trained: the {split_name} split has "
                     f"{'no regimen with' if not enough else 'fewer than 10 deaths among'} "
                     f"{MIN_PATIENTS_PER_REGIMEN} patients or more; the installed engine is used.")
    try:
        engine = get_survival_engine()
    except ModelFileError as exc:
        raise InputError(f"no survival engine: none is installed ({exc}) and none was trained; train one on the "
                         f"{split_name} split (--train always) with enough patients per regimen.") from exc
    card = getattr(engine, "card", {}) or {}
    return engine, {"survival": {"source": f"installed: {card.get('name', 'hcctwin_survival')}",
                                 "training_data": card.get("training_data")}}


def _pseudonymise(obj: Any, codes: dict[str, str]) -> Any:
    """Every ``patient_id`` value in nested results replaced by a study code (``S0001``, ...; the key is in
    ``splits.csv`` only)."""
    if isinstance(obj, dict):
        return {k: (codes.setdefault(str(v), f"S{len(codes) + 1:04d}") if k == "patient_id" else
                    _pseudonymise(v, codes)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_pseudonymise(v, codes) for v in obj]
    return obj


def run_study(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, *, splits: Sequence[str] = DEFAULT_SPLITS,
              train: str = "auto", images: bool = True, max_cases: int | None = 20, n_bootstrap: int = 50,
              seed: int = 0, with_ids: bool = False, options=None, progress: ProgressCallback | None = None,
              scheduler: str | None = "serial", workers: int | None = None) -> dict[str, Any]:
    """Run the validation study (see the module docstring); writes ``OUT/study.json``, ``OUT/study.html``,
    ``OUT/splits.csv`` and the trained models; returns the results.

    Per-patient rows in ``study.json`` carry study codes (S0001, ...), not patient IDs, unless ``with_ids``; the
    code -> patient ID key is ``OUT/splits.csv`` (keep it at the site)."""
    if train not in TRAIN_CHOICES:
        raise InputError(f"--train {train!r}: use one of {', '.join(TRAIN_CHOICES)}.")
    options = options or PipelineOptions()
    cohort = Path(cohort_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    clinical, notes = read_clinical_table(cohort / "clinical.csv")
    split_of, split_notes = assign_splits(clinical, splits, seed)
    notes += split_notes
    split_names = [s.strip().lower() for s in splits if s.strip()]
    clinical = clinical.assign(split=split_of)
    t_table = time.perf_counter()
    table, table_notes = cohort_feature_table(cohort, images=images, progress=SubProgress(progress, 0.0, 0.3),
                                              scheduler=scheduler, workers=workers)
    notes += table_notes
    feature_seconds = round(time.perf_counter() - t_table, 1)
    table = table.assign(split=table["patient_id"].astype(str).map(dict(zip(clinical["patient_id"].astype(str),
                                                                            split_of))))
    dev_name = split_names[0]
    dev = table[table["split"] == dev_name]
    engine, models = _survival_engine(train, dev, out, n_bootstrap=n_bootstrap, seed=seed, cohort_name=cohort.name,
                                      split_name=dev_name, notes=notes, progress=SubProgress(progress, 0.3, 0.45))
    trained_on_dev = models["survival"]["source"].startswith("trained")
    cutpoints = _risk_tertiles(engine, fill_features(engine, dev))
    results: dict[str, Any] = {}
    span = 0.55 / max(len(split_names), 1)
    for n, name in enumerate(split_names):
        lo = 0.45 + n * span
        part = table[table["split"] == name]
        cl = clinical[clinical["split"] == name]
        res: dict[str, Any] = {"n_patients": int(len(part)), "notes": []}
        if name == dev_name and trained_on_dev:
            res["notes"].append("the survival engine was trained on this split: apparent (optimistic) performance.")
        t_split = time.perf_counter()
        if len(part):
            res["survival"] = evaluate_survival(engine, part)
            res["survival_curves"] = survival_curves(engine, fill_features(engine, part), cutpoints)
            report(progress, lo + 0.2 * span, f"{name}: survival measured")
        if images and len(cl):
            for key, fn, args, w in (
                    ("segmentation", evaluate_segmentation, (cohort, cl["patient_id"], max_cases, options.device),
                     (0.2, 0.4)),
                    ("images", evaluate_generator, (cohort, cl, max_cases, options), (0.4, 1.0))):
                t_part = time.perf_counter()
                try:
                    res[key] = fn(*args, progress=SubProgress(progress, lo + w[0] * span, lo + w[1] * span))
                    res[key]["seconds"] = round(time.perf_counter() - t_part, 1)
                except ModelFileError as exc:
                    res["notes"].append(f"{key}: no installed model ({exc}).")
        res["seconds"] = round(time.perf_counter() - t_split, 1)
        results[name] = res
    study = {"hcctwin_version": __version__, "disclaimer": DISCLAIMER, "cohort": cohort.name,
             "date": time.strftime("%Y-%m-%d %H:%M"), "splits": split_names,
             "split_sizes": {s: int((split_of == s).sum()) for s in split_names}, "models": models,
             "settings": {"train": train, "images": images, "max_cases": max_cases, "n_bootstrap": n_bootstrap,
                          "seed": seed, "samples": options.samples, "device": options.device},
             "results": results, "notes": notes, "seconds": round(time.perf_counter() - t0, 1),
             "feature_table_seconds": feature_seconds}
    codes: dict[str, str] = {}
    for pid in clinical["patient_id"].astype(str):
        codes.setdefault(pid, f"S{len(codes) + 1:04d}")
    if not with_ids:
        study["results"] = _pseudonymise(study["results"], codes)

    clinical.assign(study_code=[codes[str(p)] for p in clinical["patient_id"]],
                    patient_id=[spreadsheet_safe(str(p)) for p in clinical["patient_id"]])[
        ["patient_id", "study_code", "split"]].to_csv(out / "splits.csv", index=False)
    study = jsonable(study, finite=True)
    (out / "study.json").write_text(json.dumps(study, indent=2))
    write_study_html(study, out / "study.html")
    report(progress, 1.0, "Study done")
    return study


# ----------------------------------------------------------------------------------------------------------------
# HTML report
# ----------------------------------------------------------------------------------------------------------------

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(curves: dict[str, Any], title: str) -> str | None:
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0))
    km = curves["km_by_risk"]
    names = {0: "low", 1: "intermediate", 2: "high"}
    for g in km["groups"]:
        axes[0].step(g["times"], g["survival"], where="post",
                     label=f"{names.get(g['group'], g['group'])} risk (n={g['n']})")
    axes[0].set(title=f"OS by predicted risk (log-rank p={km['logrank_p']:.3g})" if km.get("logrank_p") is not None
                else "OS by predicted risk", xlabel="months", ylabel="overall survival", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    cal = curves["calibration"]
    axes[1].plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="ideal")
    axes[1].plot(cal["predicted"], cal["observed"], "o-", label="model (quintiles)")
    axes[1].set(title=f"Calibration at {cal['horizon_months']:g} months", xlabel="predicted death probability",
                ylabel="observed (Kaplan-Meier)", xlim=(0, 1), ylim=(0, 1))
    axes[1].legend(fontsize=8)
    dc = curves["decision_curve"]
    axes[2].plot(dc["thresholds"], dc["net_benefit_model"], label="model")
    axes[2].plot(dc["thresholds"], dc["net_benefit_all"], label="treat all", ls="--")
    axes[2].plot(dc["thresholds"], dc["net_benefit_none"], label="treat none", color="0.5")
    lo = min(min(dc["net_benefit_model"]), 0.0) - 0.05
    axes[2].set(title="Decision curve, death by 12 months", xlabel="threshold probability", ylabel="net benefit",
                ylim=(max(lo, -0.3), max(max(dc["net_benefit_all"]), max(dc["net_benefit_model"]), 0.05) + 0.05))
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return html.escape(str(value))


def _row(cells: Sequence[Any], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c if isinstance(c, str) and c.startswith('<') else _f(c)}</{tag}>"
                            for c in cells) + "</tr>"


def _survival_table(s: dict[str, Any]) -> str:
    rows = [_row(["endpoint", "model / score", "Harrell C", "Uno C", "td-AUC 12 mo", "td-AUC 24 mo", "IBS",
                  "ICI 12 mo"], header=True)]
    for ep in ("os", "pfs"):
        if ep not in s:
            continue
        r = s[ep]
        rows.append(_row([ep.upper(), "HCCTwin baseline model", r["model"]["harrell_c"], r["model"]["uno_c"],
                          r["td_auc"].get("12"), r["td_auc"].get("24"), r["ibs"]["model"], r["ici"].get("12")]))
        rows.append(_row([ep.upper(), "Kaplan-Meier (no covariates)", None, None, None, None, r["ibs"]["km_null"],
                          None]))
        for name, c in r.get("baselines", {}).items():
            rows.append(_row([ep.upper(), name, c["harrell_c"], c["uno_c"], None, None, None, None]))
    for w, lm in (s.get("landmark") or {}).items():
        rows.append(_row([f"OS from {w}", "dynamic (landmark) model", lm["dynamic_harrell_c"], None, None, None,
                          None, None]))
        rows.append(_row([f"OS from {w}", f"baseline model, same {lm['n_at_risk']} patients",
                          lm["baseline_harrell_c"], None, None, None, None, None]))
    if "metastasis" in s:
        m = s["metastasis"]
        rows.append(_row(["2-year metastasis (TACE)", f"model, AUC ({m['n']} pts, {m['events']} events)", m["auc"],
                          None, None, None, None, None]))
        for name, auc in m.get("baselines_auc", {}).items():
            rows.append(_row(["2-year metastasis (TACE)", f"{name}, AUC", auc, None, None, None, None, None]))
        for w, lm in (m.get("landmark") or {}).items():
            rows.append(_row([f"2-year metastasis, updated at {w}", f"landmark model, AUC ({lm['n']} pts, "
                              f"{lm['events']} events)", lm["auc"], None, None, None, None, None]))
            rows.append(_row([f"2-year metastasis, updated at {w}", "baseline model, same patients, AUC",
                              lm["baseline_model_auc"], None, None, None, None, None]))
    return "<table>" + "".join(rows) + "</table>"


def _images_table(im: dict[str, Any]) -> str:
    keys = [("tumour_dice_mean", "tumour Dice"), ("viable_rel_error_median", "viable volume rel. error (median)"),
            ("mrecist_agreement", "mRECIST agreement"), ("mrecist_weighted_kappa", "mRECIST weighted kappa")]
    for ph in ("arterial", "portal"):
        keys += [(f"ssim_{ph}_mean", f"SSIM {ph} (liver)"), (f"psnr_{ph}_mean", f"PSNR {ph} dB (liver)"),
                 (f"hu_mae_{ph}_mean", f"HU MAE {ph} (liver)")]
    rows = [_row(["metric", "HCCTwin generator", "copy baseline"], header=True)]
    for k, label in keys:
        if k in im.get("model", {}):
            rows.append(_row([label, im["model"].get(k), im["copy_baseline"].get(k)]))
    text = (f"<p>{im.get('n_patients', 0)} patient(s), {im['model'].get('n_followups', 0)} observed follow-up(s) "
            f"compared with the virtual follow-up under the received regimen; generator "
            f"{_f(im.get('generator'))}.</p>" + "<table>" + "".join(rows) + "</table>")
    rd = im.get("readers")
    if rd:
        rows = [_row(["rater", "reads", "agreement with readers", "weighted kappa"], header=True)]
        for key, label in (("model_vs_readers", "generator (virtual follow-up)"),
                           ("observed_vs_readers", "automatic reading of the real follow-up"),
                           ("copy_baseline_vs_readers", "copy baseline (always SD)")):
            r = rd.get(key)
            if r:
                rows.append(_row([label, r["n_reads"], r["agreement"], r["weighted_kappa"]]))
        if rd.get("inter_reader"):
            r = rd["inter_reader"]
            rows.append(_row(["readers with each other", r["n_pairs"], r["agreement"], r["weighted_kappa"]]))
        text += (f"<h4>Against the readers' mRECIST of the first follow-up ({', '.join(rd['columns'])})</h4>"
                 "<table>" + "".join(rows) + "</table>")
    if im.get("skipped"):
        text += "<p>Not compared: " + ", ".join(f"{html.escape(k)} ({v})" for k, v in im["skipped"].items()) + ".</p>"
    return text


def write_study_html(study: dict[str, Any], path: str | os.PathLike) -> Path:
    """The study as one self-contained HTML page (tables + embedded plots)."""
    parts = [f"<h1>HCCTwin validation study: {html.escape(str(study['cohort']))}</h1>",
             f"<p class='disclaimer'>{html.escape(study['disclaimer'])}</p>",
             f"<p>HCCTwin {html.escape(study['hcctwin_version'])}, {html.escape(study['date'])}, "
             f"{study['seconds']} s. Splits: "
             + ", ".join(f"{html.escape(s)} ({study['split_sizes'][s]})" for s in study["splits"]) + ".</p>",
             "<h2>Models</h2><ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(str(v.get('source')))}</li>"
                                             for k, v in study["models"].items()) + "</ul>"]
    for name in study["splits"]:
        res = study["results"].get(name, {})
        parts.append(f"<h2>Split: {html.escape(name)} ({res.get('n_patients', 0)} patients)</h2>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in res.get("notes", [])]
        if res.get("images"):
            parts.append("<h3>Virtual vs real follow-up images</h3>" + _images_table(res["images"]))
        if res.get("segmentation"):
            seg = res["segmentation"]
            parts.append(f"<h3>Segmentation ({seg['n']} cases)</h3><table>"
                         + _row(["label", "Dice"], header=True)
                         + "".join(_row([k, v]) for k, v in seg["mean_dice"].items()) + "</table>")
        if res.get("survival"):
            parts.append("<h3>Survival: discrimination and calibration</h3>" + _survival_table(res["survival"]))
            parts += [f"<p class='note'>{html.escape(n)}</p>" for n in res["survival"].get("notes", [])]
        img = _plots(res.get("survival_curves") or {}, f"{name}: overall survival")
        if img:
            parts.append(f"<img alt='survival plots, {html.escape(name)}' src='{img}'>")
    if study.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in study["notes"]) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,"
             "th:first-child,td:nth-child(2){text-align:left}.disclaimer{color:#a00}.note{color:#555}"
             "img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HCCTwin study</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
