"""Cross-validated C-index of the per-regimen Cox model and of each established score on a site's own table:
what ``hcctwin survival cv --clinical CSV --endpoint os|pfs --folds 5 --seed 0 --out OUT`` writes to
``OUT/metrics.json``.
"""

from __future__ import annotations

import json
import time
import warnings
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
from .metrics import concordance_matrix, harrell_c, uno_c
from .models import PerRegimenSurvival

__all__ = ["cross_validate", "run_cv_command", "score_table", "stratified_folds", "ENDPOINTS"]

ENDPOINTS = ("os", "pfs")


def stratified_folds(n: int, k: int, events: np.ndarray, seed: int) -> list[np.ndarray]:
    """k folds stratified by event status (events and censored rows dealt round-robin after a seeded shuffle)."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    pos = 0
    for group in (np.flatnonzero(events), np.flatnonzero(~events)):
        for i in rng.permutation(group):
            out[pos % k].append(int(i))
            pos += 1
    return [np.array(sorted(f)) for f in out]


#: ridge penalties (on standardised covariates) of the score-anchored Cox model tried by the inner CV; the largest
#: leaves the score alone, so the model nests the score it is anchored on
ANCHOR_PENALTIES = (2.0, 8.0, 32.0, 128.0, 512.0)
#: bootstrap resamples for the 95% intervals of each C
N_BOOTSTRAP = 200
#: the clinical inputs of each computed score: a score whose inputs were imputed for more than
#: :data:`MAX_IMPUTED_SHARE` of the patients is not that score (e.g. HAP without albumin and bilirubin) and is left out
SCORE_INPUTS = {"HAP": ("albumin_g_l", "bilirubin_umol_l", "afp_ng_ml", "max_diameter_mm"),
                "mHAP-II": ("albumin_g_l", "bilirubin_umol_l", "afp_ng_ml", "max_diameter_mm", "n_tumors"),
                "six-and-twelve": ("max_diameter_mm", "n_tumors"), "ALBI grade": ("albumin_g_l", "bilirubin_umol_l"),
                "BCLC": ("n_tumors", "max_diameter_mm", "ecog", "pvtt", "extrahepatic_spread")}
MAX_IMPUTED_SHARE = 0.2
#: a richer candidate is chosen over a simpler one only when its inner C is higher by more than this many standard
#: errors: the winner among some thirty candidates on inner folds of a hundred patients is optimistic (one standard
#: error still let noise through on the real 105-patient TACE cohort, benchmarks/results/survival_small_cohorts.md);
#: one score is chosen over the mean of the scores only when it beats it by this many standard errors of their
#: paired difference (before, CLIP alone was picked on noise in 6 of the 25 outer folds of that cohort and ranked
#: the test fold worse than the mean in 5 of them, tied in the sixth)
SE_MULTIPLIER = 2.0
#: bootstrap resamples of the paired C difference in :func:`_select`
N_SELECT_BOOTSTRAP = 200


#: the equal-weight mean of the established scores (each standardised over the table; outcomes not used): on a
#: hundred patients picking the best of several scores on inner folds mostly picks noise, while their mean uses all
#: of them without fitting anything (with it, the selected model's gap to the best score chosen after the fact on
#: the real 105-patient TACE cohort went from -0.037 to -0.020, and to -0.006 once one score had to beat it by two
#: standard errors of their paired difference; benchmarks/results/survival_small_cohorts.md)
SCORE_MEAN = "mean of scores"


def _complexity(name: str) -> int:
    """Candidate classes from simplest to richest, for the one-standard-error rule of :func:`_select`: the mean of
    the established scores (nothing chosen, nothing fitted); one established score (chosen among several); a score
    with the other covariates strongly shrunk; moderately shrunk; the full engine."""
    kind, _, rest = name.partition(":")
    if kind == "score":
        return 0 if rest == SCORE_MEAN else 1
    if kind == "anchored":
        return 2 if float(rest.rpartition(":")[2]) >= 128 else 3
    return 4


def paired_c_difference_se(time_, event, risks_a: Sequence[np.ndarray], risks_b: Sequence[np.ndarray],
                           n: int = N_SELECT_BOOTSTRAP, seed: int = 0) -> float:
    """Bootstrap standard error (``n`` resamples of the patients, the same resample for both) of
    ``mean(C(a)) - mean(C(b))``, Harrell's C of each risk vector in ``risks_a`` / ``risks_b`` (several vectors: the
    repeats of an inner cross-validation, averaged). Pairs (i, j) are comparable when i has the event before j's
    time; ties in risk count one half. Two scores of the same patients are usually correlated, so this is smaller
    than either C's own standard error, and it is the one that says whether one beats the other."""
    t, e = np.asarray(time_, float), np.asarray(event, float) > 0
    comparable = (e[:, None] & (t[:, None] < t[None, :])).astype(float)

    def parts(risks):
        return [comparable * concordance_matrix(r, r) for r in risks]

    num_a, num_b = parts([np.asarray(r, float) for r in risks_a]), parts([np.asarray(r, float) for r in risks_b])
    w = np.random.default_rng(seed).multinomial(len(t), np.full(len(t), 1.0 / len(t)), size=n).astype(float)
    den = np.einsum("bi,ij,bj->b", w, comparable, w)
    ok = den > 0

    def c(nums):
        return np.mean([np.einsum("bi,ij,bj->b", w, m, w)[ok] / den[ok] for m in nums], axis=0)

    diff = c(num_a) - c(num_b)
    return float(diff.std(ddof=1)) if len(diff) > 1 else float("inf")


class AnchoredCox:
    """Cox model anchored on an established score: linear predictor ``b0 * score + x . beta`` on standardised
    columns, ``b0`` free and ``beta`` (the other covariates, regimen indicators) shrunk towards 0 by a ridge
    penalty; a large penalty gives back the score's own ranking, so with the penalty chosen on inner folds the model
    departs from the score only where the data support it."""

    #: penalty on the scores' own coefficients when several are combined (one score alone: free)
    SCORE_PENALTY = 1.0

    def __init__(self, score_columns: str | Sequence[str], covariates: Sequence[str], penalty: float):
        self.score_columns = [score_columns] if isinstance(score_columns, str) else list(score_columns)
        self.covariates, self.penalty = list(covariates), float(penalty)

    def _design(self, df: pd.DataFrame) -> np.ndarray:
        cols = [df[c].to_numpy(float) for c in self.score_columns] + [df[c].to_numpy(float) for c in self.covariates]
        if self.regimens_ is not None:
            cols += [(df["_R"].to_numpy() == r).astype(float) for r in self.regimens_[1:]]
        return np.column_stack(cols)

    def fit(self, df: pd.DataFrame) -> AnchoredCox:
        from ._linear import ridge_cox

        regimens = sorted(df["_R"].astype(str).unique())
        self.regimens_ = regimens if len(regimens) > 1 else None
        x = self._design(df)
        self.mean_ = x.mean(axis=0)
        sd = x.std(axis=0)
        self.sd_ = np.where(sd > 1e-12, sd, 1.0)
        penalty = np.full(x.shape[1], self.penalty)
        n_scores = len(self.score_columns)
        penalty[:n_scores] = 1e-6 if n_scores == 1 else self.SCORE_PENALTY
        self.beta_ = ridge_cox((x - self.mean_) / self.sd_, df["_T"].to_numpy(float), df["_E"].to_numpy(float),
                               penalty)
        return self

    def predict_risk(self, df: pd.DataFrame) -> np.ndarray:
        return ((self._design(df) - self.mean_) / self.sd_) @ self.beta_


def _candidate_risk(name: str, tr: pd.DataFrame, te: pd.DataFrame, covariates: Sequence[str], penalizers,
                    has_regimen: bool, seed: int, scores: dict[str, str] | None = None) -> np.ndarray:
    """Risk (higher = worse) on ``te`` of a candidate fitted on ``tr``: ``score:NAME`` (no fitting),
    ``anchored:NAME[+NAME...]:PENALTY`` (:class:`AnchoredCox`), ``cox_per_regimen`` (:class:`PerRegimenSurvival`).
    ``scores``: score name -> column (default :data:`SCORE_BASELINES`)."""
    scores = SCORE_BASELINES if scores is None else scores
    kind, _, rest = name.partition(":")
    if kind == "score":
        return te[scores[rest]].to_numpy(float)
    if kind == "anchored":
        score, _, penalty = rest.rpartition(":")
        columns = [scores[n] for n in score.split("+")]
        return AnchoredCox(columns, covariates, float(penalty)).fit(tr).predict_risk(te)
    model = PerRegimenSurvival(penalizers=penalizers, n_bootstrap=0, cv_folds=3, seed=seed, propensity=has_regimen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(tr, "_T", "_E", "_R", list(covariates))
    return model.predict_risk(te)


def _select(tr: pd.DataFrame, candidates: Sequence[str], covariates, penalizers, has_regimen: bool, seed: int,
            folds: int, score_columns: dict[str, str] | None = None, repeats: int = 2,
            se_multiplier: float = SE_MULTIPLIER) -> tuple[str, dict[str, float]]:
    """Model selection on the outer training fold ``tr`` with the one-standard-error rule.

    An established score needs no fitting: its C on the whole of ``tr`` is already an out-of-sample estimate (and
    the least noisy one). A fitted candidate is scored by its pooled out-of-fold C over ``repeats`` x ``folds``
    inner folds (risks standardised within each inner fold). Among the candidates within ``se_multiplier``
    standard errors (the spread of the best one's inner-fold C over the square root of their number) of the best,
    the simplest class (:func:`_complexity`) wins, and within it the best C: a richer model must beat the
    established scores by more than the noise of its own estimate; on a hundred patients it rarely does, as it
    should. When that class is the established scores, one score is taken over the mean of all of them only when
    its C on ``tr`` is higher by more than ``se_multiplier`` standard errors of their *paired* difference
    (:func:`paired_c_difference_se`): picking one of several scores is itself a fit."""
    scores = SCORE_BASELINES if score_columns is None else score_columns
    t, e = tr["_T"].to_numpy(float), tr["_E"].to_numpy(float)
    fitted = [c for c in candidates if not c.startswith("score:")]
    oof = {c: np.full((repeats, len(tr)), np.nan) for c in fitted}
    per_fold: dict[str, list[float]] = {c: [] for c in candidates}
    for rep in range(repeats):
        for test in stratified_folds(len(tr), folds, e.astype(bool), seed + 7919 * (rep + 1)):
            fit, held = tr.iloc[np.setdiff1d(np.arange(len(tr)), test)], tr.iloc[test]
            for c in candidates:
                try:
                    if c.startswith("score:"):
                        risk = held[scores[c.partition(":")[2]]].to_numpy(float)
                    else:
                        risk = _candidate_risk(c, fit, held, covariates, penalizers, has_regimen, seed, scores)
                        oof[c][rep, test] = (risk - risk.mean()) / (risk.std() or 1.0)
                    per_fold[c].append(harrell_c(held["_T"], held["_E"], risk))
                except (InputError, np.linalg.LinAlgError, ValueError):
                    per_fold[c].append(float("nan"))
    mean: dict[str, float] = {}
    for c in candidates:
        if c.startswith("score:"):
            mean[c] = harrell_c(t, e, tr[scores[c.partition(":")[2]]].to_numpy(float))
        else:
            values = [harrell_c(t, e, oof[c][r]) for r in range(repeats) if np.isfinite(oof[c][r]).all()]
            mean[c] = float(np.mean(values)) if values else float("-inf")
    top = max(candidates, key=lambda c: mean[c])
    values = np.array([v for v in per_fold[top] if np.isfinite(v)])
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    near = [c for c in candidates if mean[c] >= mean[top] - se_multiplier * se]
    simplest = min(_complexity(c) for c in near)
    average = f"score:{SCORE_MEAN}"
    if simplest <= 1 and average in candidates:  # the scores: their mean unless one of them clearly beats it
        single = [c for c in candidates if _complexity(c) == 1]
        best = max(single, key=lambda c: (mean[c], -candidates.index(c))) if single else average
        gain = mean[best] - mean[average]
        if best != average and gain > 0 and gain > se_multiplier * paired_c_difference_se(
                t, e, [tr[scores[best.partition(":")[2]]].to_numpy(float)], [tr[scores[SCORE_MEAN]].to_numpy(float)],
                seed=seed):
            return best, mean
        return average, mean
    best = max((c for c in near if _complexity(c) == simplest), key=lambda c: (mean[c], -candidates.index(c)))
    return best, mean


def bootstrap_c(time_, event, risk, n: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of Harrell's C over ``n`` resamples of the patients."""
    rng = np.random.default_rng(seed)
    t, e, r = (np.asarray(a, float) for a in (time_, event, risk))
    values = []
    for _ in range(n):
        i = rng.integers(0, len(t), len(t))
        if e[i].sum() >= 2:
            values.append(harrell_c(t[i], e[i], r[i]))
    return (float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))) if values else (float("nan"),) * 2


def calibration_slope(time_, event, linear_predictor) -> float:
    """Slope of a Cox model of the outcome on a model's out-of-fold linear predictor (1 = calibrated spread,
    below 1 = over-fitted, too extreme predictions)."""
    from ._linear import ridge_cox

    lp = np.asarray(linear_predictor, float)
    return float(ridge_cox(lp[:, None], np.asarray(time_, float), np.asarray(event, float), 1e-9)[0])


def _summ(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if np.isfinite(v)])
    return (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0) if len(arr) else (float("nan"),) * 2


def _prepare(df: pd.DataFrame, tcol: str, ecol: str, extra_scores: Sequence[str] = ()
             ) -> tuple[pd.DataFrame, dict[str, str], list[str], list[str], list[str]]:
    """The rows with an outcome, as model inputs (``_T``, ``_E``, ``_R`` and the clinical features) with one
    column per established score; returns ``(data, score name -> column, scores usable, derived scores (their
    mean), notes)``. ``data.attrs``: ``imputed`` (per input column) and ``has_regimen``."""
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
    # the established scores: those computed from the table's values (not when their inputs are mostly imputed),
    # and score columns the site's table brings (``extra_scores``: CLIP, Okuda, ... as numbers, higher = worse)
    imputed = feats.attrs.get("imputed", {})
    scores: dict[str, str] = {}
    for name, col in SCORE_BASELINES.items():
        worst = max((imputed.get(c, 0) for c in SCORE_INPUTS.get(name, ())), default=0)
        if worst > MAX_IMPUTED_SHARE * len(feats):
            notes.append(f"{name} left out: its inputs are missing for {worst} of {len(feats)} patients.")
        else:
            scores[name] = col
    for col in extra_scores:
        if col not in df.columns:
            raise InputError(f"score column {col!r} is not in the table; give a column of the table (numbers, "
                             f"higher = worse prognosis).")
        values = pd.to_numeric(df.loc[ok, col], errors="coerce")
        if values.isna().any():
            raise InputError(f"score column {col!r}: {int(values.isna().sum())} value(s) are missing or not numbers; "
                             f"give the score as numbers (e.g. Okuda stage I/II/III as 1/2/3) for every patient.")
        data[f"_score_{col}"] = values.to_numpy(float)
        scores[col] = f"_score_{col}"
    score_names = [n for n in scores if data[scores[n]].notna().all() and data[scores[n]].nunique() > 1]
    if not score_names:
        raise InputError("no established score can be computed from this table (albumin, bilirubin, AFP, tumour "
                         "size and number are needed) and none was given: name the table's score columns "
                         "(hcctwin survival cv --score-columns clip_score,...).")
    derived = []
    if len(score_names) > 1:  # their equal-weight mean (standardised over the table; outcomes not used)
        z = [(data[scores[n]] - data[scores[n]].mean()) / (data[scores[n]].std() or 1.0) for n in score_names]
        data["_score_mean"] = np.mean(np.vstack([v.to_numpy(float) for v in z]), axis=0)
        scores[SCORE_MEAN] = "_score_mean"
        derived = [SCORE_MEAN]
    data.attrs["imputed"], data.attrs["has_regimen"] = feats.attrs.get("imputed", {}), has_regimen
    data.attrs["ignored_columns"] = feats.attrs.get("ignored_columns", [])
    return data, scores, score_names, derived, notes


def score_table(df: pd.DataFrame, endpoint: str = "os", extra_scores: Sequence[str] = ()) -> pd.DataFrame:
    """The established scores of every patient with an outcome, as :func:`cross_validate` compares them:
    columns ``time``, ``event`` and one per score (higher = worse; the computed ones left out where their
    inputs are mostly imputed, then ``extra_scores`` columns of the table, then the mean of the scores,
    standardised, where there are several). Outcomes are not used to build any of them."""
    endpoint = endpoint.lower()
    if endpoint not in ENDPOINTS:
        raise InputError(f"endpoint = {endpoint!r}: expected one of {', '.join(ENDPOINTS)}.")
    data, scores, score_names, derived, _ = _prepare(df, f"{endpoint}_months", f"{endpoint}_event", extra_scores)
    out = pd.DataFrame({"time": data["_T"].to_numpy(float), "event": data["_E"].to_numpy(float)}, index=data.index)
    for name in (*score_names, *derived):
        out[name] = data[scores[name]].to_numpy(float)
    return out


def cross_validate(df: pd.DataFrame, endpoint: str = "os", folds: int = 5, seed: int = 0,
                   covariates: Sequence[str] = DEFAULT_COVARIATES, penalizers: Sequence[float] = (0.05, 0.2, 0.5),
                   tau: float | None = None, progress: ProgressCallback | None = None, inner_folds: int = 4,
                   select_engine: bool = True, n_bootstrap: int = N_BOOTSTRAP,
                   extra_scores: Sequence[str] = ()) -> dict[str, Any]:
    """K-fold cross-validated Harrell and Uno C-index (higher = better) of:

    - ``cox_per_regimen``: :class:`PerRegimenSurvival` (regimen x covariate interactions, propensity weights; the
      risk score is the linear predictor under the received regimen; no bootstrap inside CV). Without a
      ``regimen`` column, the same Cox model without regimen terms (noted).
    - each established score alone (``HAP``, ``mHAP-II``, ``six-and-twelve``, ``ALBI grade``, ``BCLC``), which
      needs no fitting and is scored on the same test folds.

    - ``anchored``: the best-scoring :class:`AnchoredCox` on the outer training folds (score and penalty chosen on
      inner folds), the established score extended by the other covariates with shrinkage towards the score;
    - ``selected``: model selection inside the cross-validation: on each outer training fold, every established
      score, every score-anchored Cox model (score x penalty in :data:`ANCHOR_PENALTIES`) and (``select_engine``)
      the per-regimen Cox model are compared by their mean Harrell C over ``inner_folds`` inner folds; the winner
      is refitted on the outer training fold and scored on the outer test fold. Its outer-fold C is the honest
      estimate of "the best of scores and models" on this table.

    Folds are stratified by event status. Uno's C uses the training folds' censoring distribution and is truncated
    at ``tau`` (default: the 90th percentile of follow-up, where the censoring weights are still stable).
    Imputation (median/mode over the whole table, outcomes not used) and ignored columns are reported in
    ``notes``. Returns a JSON-ready dict with mean, sd, per-fold values, the pooled out-of-fold C with a bootstrap
    95% interval (``n_bootstrap`` resamples of the patients), the calibration slope of the fitted models'
    out-of-fold linear predictors, and the selected model per fold.
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
    data, scores, score_names, derived, notes = _prepare(df, tcol, ecol, extra_scores)
    has_regimen = bool(data.attrs["has_regimen"])
    n, n_events = len(data), int(data["_E"].sum())
    if n_events < 2 * folds:
        raise InputError(f"only {n_events} events for endpoint {endpoint}: too few for {folds}-fold "
                         f"cross-validation (need at least {2 * folds}).")
    tau = float(np.quantile(data["_T"], 0.9)) if tau is None else float(tau)
    split = stratified_folds(n, folds, data["_E"].to_numpy(bool), seed)
    candidates = [f"score:{n}" for n in [*score_names, *derived]]
    candidates += [f"anchored:{n}:{lam:g}" for n in score_names for lam in ANCHOR_PENALTIES]
    if len(score_names) > 1:  # every score in one model (each with its own weight), the other covariates shrunk
        candidates += [f"anchored:{'+'.join(score_names)}:{lam:g}" for lam in (*ANCHOR_PENALTIES, 1e6)]
    if select_engine:
        candidates.append("cox_per_regimen")
    names = ["cox_per_regimen", *score_names, *derived, "anchored", "selected"]
    chosen: list[str] = []
    chosen_anchor: list[str] = []
    per_fold: dict[str, dict[str, list[float]]] = {m: {"harrell_c": [], "uno_c": []} for m in names}
    oof = {m: np.full(n, np.nan) for m in names}
    raw = {m: np.full(n, np.nan) for m in names}
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
        risks.update({name: te[scores[name]].to_numpy(float) for name in (*score_names, *derived)})
        anchors = [c for c in candidates if c.startswith("anchored:")]
        if anchors:
            best_anchor, _ = _select(tr, anchors, covariates, penalizers, has_regimen, seed + k, inner_folds, scores)
            chosen_anchor.append(best_anchor)
            risks["anchored"] = _candidate_risk(best_anchor, tr, te, covariates, penalizers, has_regimen, seed,
                                                scores)
        else:
            risks["anchored"] = np.full(len(te), np.nan)
        best, _inner = _select(tr, candidates, covariates, penalizers, has_regimen, seed + k, inner_folds, scores)
        chosen.append(best)
        risks["selected"] = (risks["cox_per_regimen"] if best == "cox_per_regimen"
                             else _candidate_risk(best, tr, te, covariates, penalizers, has_regimen, seed, scores))
        idx = np.flatnonzero(data.index.isin(te.index))
        for m, r in risks.items():
            # the fitted scale of a model selected per fold differs between folds: pooled, each fold's risks are
            # standardised first (the calibration slope uses the raw linear predictors)
            raw[m][idx] = r
            oof[m][idx] = (r - np.nanmean(r)) / (np.nanstd(r) or 1.0) if m in ("selected", "anchored") else r
            per_fold[m]["harrell_c"].append(harrell_c(te["_T"], te["_E"], r))
            per_fold[m]["uno_c"].append(uno_c(te["_T"], te["_E"], r, tau=tau, train_time=tr["_T"],
                                              train_event=tr["_E"]))
        report(progress, (k + 1) / folds, f"fold {k + 1}/{folds} done")
    models: dict[str, Any] = {}
    for m in names:
        hm, hs = _summ(per_fold[m]["harrell_c"])
        um, us = _summ(per_fold[m]["uno_c"])
        fin = np.isfinite(oof[m])
        pooled = harrell_c(data["_T"][fin], data["_E"][fin], oof[m][fin]) if fin.sum() > 1 else float("nan")
        models[m] = {"harrell_c": hm, "harrell_c_sd": hs, "uno_c": um, "uno_c_sd": us,
                     "harrell_c_per_fold": per_fold[m]["harrell_c"], "uno_c_per_fold": per_fold[m]["uno_c"],
                     "harrell_c_pooled_oof": pooled,
                     "harrell_c_pooled_oof_ci95": list(bootstrap_c(data["_T"][fin], data["_E"][fin], oof[m][fin],
                                                                  n_bootstrap, seed))
                     if fin.sum() > 1 and n_bootstrap else [float("nan")] * 2,
                     "kind": ("mean of the established scores" if m in derived else "established score"
                              if m in scores else "model selected on inner folds"
                              if m in ("selected", "anchored") else "model"),
                     "score_column": SCORE_BASELINES.get(m) or (m if m in scores else None)}
    for m in ("cox_per_regimen", "anchored"):  # fitted linear predictors: how well their spread is calibrated
        fin = np.isfinite(raw[m])
        if fin.sum() > 10:
            models[m]["calibration_slope_oof"] = calibration_slope(data["_T"][fin], data["_E"][fin], raw[m][fin])
    models["selected"]["chosen_per_fold"] = chosen
    models["anchored"]["chosen_per_fold"] = chosen_anchor
    if all(c.startswith("anchored:") or c == "cox_per_regimen" for c in chosen) and chosen:
        fin = np.isfinite(raw["selected"])
        models["selected"]["calibration_slope_oof"] = calibration_slope(data["_T"][fin], data["_E"][fin],
                                                                        raw["selected"][fin])
    best_baseline = max(score_names, key=lambda m: models[m]["harrell_c"])
    return {
        "hcctwin_version": __version__, "disclaimer": DISCLAIMER, "endpoint": endpoint, "folds": folds,
        "seed": seed, "n": n, "n_events": n_events, "uno_tau_months": tau, "covariates": list(covariates),
        "models": models, "best_baseline": best_baseline,
        "model_minus_best_baseline_harrell_c": models["cox_per_regimen"]["harrell_c"]
        - models[best_baseline]["harrell_c"],
        "selected_minus_best_baseline_harrell_c": models["selected"]["harrell_c"]
        - models[best_baseline]["harrell_c"],
        "selected_minus_best_baseline_harrell_c_pooled_oof": models["selected"]["harrell_c_pooled_oof"]
        - models[best_baseline]["harrell_c_pooled_oof"],
        "candidates": candidates, "inner_folds": inner_folds,
        "imputed": data.attrs.get("imputed", {}), "ignored_columns": data.attrs.get("ignored_columns", []),
        "notes": notes, "wall_time_s": time.perf_counter() - started,
    }


def run_cv_command(clinical_csv, endpoint: str = "os", folds: int = 5, seed: int = 0, out_dir=".",
                   progress: ProgressCallback | None = None, echo=print, extra_scores: Sequence[str] = (),
                   select_engine: bool = True) -> dict[str, Any]:
    """``hcctwin survival cv``: read the table, cross-validate, echo the imputed / ignored columns, and write
    ``out_dir/metrics.json`` (NaN written as null). The input file is only read. Returns the metrics dict."""
    path = Path(clinical_csv)
    if not path.is_file():
        raise InputError(f"clinical table {path} not found: give the path of the cohort's clinical.csv.")
    from ..io import read_clinical_table

    df, read_notes = read_clinical_table(path)
    metrics = cross_validate(df, endpoint=endpoint, folds=folds, seed=seed, progress=progress,
                             extra_scores=extra_scores, select_engine=select_engine)
    metrics["notes"] = list(read_notes) + list(metrics.get("notes", []))
    metrics["clinical_csv"] = str(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics, finite=True), indent=2))
    if echo is not None:
        for note in metrics["notes"]:
            echo(f"note: {note}")
        for m, v in metrics["models"].items():
            lo, hi = v.get("harrell_c_pooled_oof_ci95") or (float("nan"), float("nan"))
            echo(f"{m:>16}: Harrell C {v['harrell_c']:.3f} +/- {v['harrell_c_sd']:.3f} (pooled "
                 f"{v['harrell_c_pooled_oof']:.3f}, 95% CI {lo:.3f}-{hi:.3f}), Uno C {v['uno_c']:.3f} +/- "
                 f"{v['uno_c_sd']:.3f}"
                 + (f", calibration slope {v['calibration_slope_oof']:.2f}" if "calibration_slope_oof" in v else ""))
        echo(f"selected per fold: {', '.join(metrics['models']['selected']['chosen_per_fold'])}")
        echo(f"wrote {out / 'metrics.json'}")
    return metrics
