"""Cross-validated C-index of the per-regimen Cox model and of each established score on a site's own table:
what ``hcctwin survival cv --clinical CSV --endpoint os|pfs --folds 5 --seed 0 --out OUT`` writes to
``OUT/metrics.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import DISCLAIMER, __version__
from ..errors import InputError
from ..jsonutil import jsonable
from ..progress import ProgressCallback, SubProgress, report
from .features import DEFAULT_COVARIATES, SCORE_BASELINES, clinical_features
from .metrics import harrell_c, uno_c
from .models import PerRegimenSurvival

__all__ = ["cross_validate", "run_cv_command", "ENDPOINTS"]

ENDPOINTS = ("os", "pfs")


def _folds(n: int, k: int, events: np.ndarray, seed: int) -> list[np.ndarray]:
    """k folds stratified by event status (events and censored rows dealt round-robin after a seeded shuffle)."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    pos = 0
    for group in (np.flatnonzero(events), np.flatnonzero(~events)):
        for i in rng.permutation(group):
            out[pos % k].append(int(i))
            pos += 1
    return [np.array(sorted(f)) for f in out]


def _summ(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if np.isfinite(v)])
    return (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0) if len(arr) else (float("nan"),) * 2


def cross_validate(df: pd.DataFrame, endpoint: str = "os", folds: int = 5, seed: int = 0,
                   covariates: Sequence[str] = DEFAULT_COVARIATES, penalizers: Sequence[float] = (0.05, 0.2, 0.5),
                   tau: float | None = None, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """K-fold cross-validated Harrell and Uno C-index (higher = better) of:

    - ``cox_per_regimen``: :class:`PerRegimenSurvival` (regimen x covariate interactions, propensity weights; the
      risk score is the linear predictor under the received regimen; no bootstrap inside CV). Without a
      ``regimen`` column, the same Cox model without regimen terms (noted).
    - each established score alone (``HAP``, ``mHAP-II``, ``six-and-twelve``, ``ALBI grade``, ``BCLC``), which
      needs no fitting and is scored on the same test folds.

    Folds are stratified by event status. Uno's C uses the training folds' censoring distribution and is truncated
    at ``tau`` (default: the 90th percentile of follow-up, where the censoring weights are still stable).
    Imputation (median/mode over the whole table, outcomes not used) and ignored columns are reported in
    ``notes``. Returns a JSON-ready dict with mean, sd, per-fold values and the pooled out-of-fold C.
    """
    endpoint = endpoint.lower()
    if endpoint not in ENDPOINTS:
        raise InputError(f"endpoint = {endpoint!r}: expected one of {', '.join(ENDPOINTS)}.")
    tcol, ecol = f"{endpoint}_months", f"{endpoint}_event"
    missing = [c for c in (tcol, ecol) if c not in df.columns]
    if missing:
        raise InputError(f"the table lacks the outcome column(s) {', '.join(missing)} for endpoint {endpoint}.")
    if folds < 2:
        raise InputError(f"folds = {folds}: need at least 2.")
    feats, notes = clinical_features(df)
    t = pd.to_numeric(df[tcol], errors="coerce").to_numpy(float)
    e = pd.to_numeric(df[ecol], errors="coerce").to_numpy(float)
    ok = np.isfinite(t) & np.isfinite(e) & (t >= 0)
    if (~ok).any():
        notes.append(f"dropped {int((~ok).sum())} row(s) with missing or negative {tcol}/{ecol}.")
    data = feats.loc[ok].copy()
    data["_T"], data["_E"] = t[ok], (e[ok] > 0).astype(float)
    has_regimen = "regimen" in df.columns and df.loc[ok, "regimen"].notna().all()
    if has_regimen:
        data["_R"] = df.loc[ok, "regimen"].astype(str).values
    else:
        data["_R"] = "all"
        notes.append("no complete regimen column: the Cox model is fitted without regimen terms.")
    n, n_events = len(data), int(data["_E"].sum())
    if n_events < 2 * folds:
        raise InputError(f"only {n_events} events for endpoint {endpoint}: too few for {folds}-fold "
                         f"cross-validation (need at least {2 * folds}).")
    tau = float(np.quantile(data["_T"], 0.9)) if tau is None else float(tau)
    split = _folds(n, folds, data["_E"].to_numpy(bool), seed)
    names = ["cox_per_regimen", *SCORE_BASELINES]
    per_fold: dict[str, dict[str, list[float]]] = {m: {"harrell_c": [], "uno_c": []} for m in names}
    oof = {m: np.full(n, np.nan) for m in names}
    started = time.perf_counter()
    for k, test in enumerate(split):
        train = np.setdiff1d(np.arange(n), test)
        tr, te = data.iloc[train], data.iloc[test]
        model = PerRegimenSurvival(penalizers=penalizers, n_bootstrap=0, cv_folds=3, seed=seed,
                                   propensity=has_regimen)
        model.fit(tr, "_T", "_E", "_R", list(covariates),
                  progress=SubProgress(progress, k / folds, (k + 1) / folds) if progress else None)
        for c in model.dropped_covariates_:
            note = f"covariate {c} is constant (in at least one training fold) and was left out of the Cox model."
            if note not in notes:
                notes.append(note)
        te = te[te["_R"].isin(model.regimens_)]
        risks = {"cox_per_regimen": model.predict_risk(te)}
        risks.update({name: te[col].to_numpy(float) for name, col in SCORE_BASELINES.items()})
        idx = np.flatnonzero(data.index.isin(te.index))
        for m, r in risks.items():
            oof[m][idx] = r
            per_fold[m]["harrell_c"].append(harrell_c(te["_T"], te["_E"], r))
            per_fold[m]["uno_c"].append(uno_c(te["_T"], te["_E"], r, tau=tau, train_time=tr["_T"],
                                              train_event=tr["_E"]))
        report(progress, (k + 1) / folds, f"fold {k + 1}/{folds} done")
    models: dict[str, Any] = {}
    for m in names:
        hm, hs = _summ(per_fold[m]["harrell_c"])
        um, us = _summ(per_fold[m]["uno_c"])
        fin = np.isfinite(oof[m])
        models[m] = {"harrell_c": hm, "harrell_c_sd": hs, "uno_c": um, "uno_c_sd": us,
                     "harrell_c_per_fold": per_fold[m]["harrell_c"], "uno_c_per_fold": per_fold[m]["uno_c"],
                     "harrell_c_pooled_oof": harrell_c(data["_T"][fin], data["_E"][fin], oof[m][fin]),
                     "kind": "model" if m == "cox_per_regimen" else "established score",
                     "score_column": SCORE_BASELINES.get(m)}
    best_baseline = max(SCORE_BASELINES, key=lambda m: models[m]["harrell_c"])
    return {
        "hcctwin_version": __version__, "disclaimer": DISCLAIMER, "endpoint": endpoint, "folds": folds,
        "seed": seed, "n": n, "n_events": n_events, "uno_tau_months": tau, "covariates": list(covariates),
        "models": models, "best_baseline": best_baseline,
        "model_minus_best_baseline_harrell_c": models["cox_per_regimen"]["harrell_c"]
        - models[best_baseline]["harrell_c"],
        "imputed": feats.attrs.get("imputed", {}), "ignored_columns": feats.attrs.get("ignored_columns", []),
        "notes": notes, "wall_time_s": time.perf_counter() - started,
    }


def run_cv_command(clinical_csv, endpoint: str = "os", folds: int = 5, seed: int = 0, out_dir=".",
                   progress: ProgressCallback | None = None, echo=print) -> dict[str, Any]:
    """``hcctwin survival cv``: read the table, cross-validate, echo the imputed / ignored columns, and write
    ``out_dir/metrics.json`` (NaN written as null). The input file is only read. Returns the metrics dict."""
    path = Path(clinical_csv)
    if not path.is_file():
        raise InputError(f"clinical table {path} not found: give the path of the cohort's clinical.csv.")
    from ..io import read_clinical_table

    df, read_notes = read_clinical_table(path)
    metrics = cross_validate(df, endpoint=endpoint, folds=folds, seed=seed, progress=progress)
    metrics["notes"] = list(read_notes) + list(metrics.get("notes", []))
    metrics["clinical_csv"] = str(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics, finite=True), indent=2))
    if echo is not None:
        for note in metrics["notes"]:
            echo(f"note: {note}")
        for m, v in metrics["models"].items():
            echo(f"{m:>16}: Harrell C {v['harrell_c']:.3f} +/- {v['harrell_c_sd']:.3f}, "
                 f"Uno C {v['uno_c']:.3f} +/- {v['uno_c_sd']:.3f}")
        echo(f"wrote {out / 'metrics.json'}")
    return metrics
