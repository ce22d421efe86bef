"""Survival and risk models: per-regimen survival (S-learner Cox with propensity weights), landmark (dynamic) risk,
and 2-year distant metastasis after TACE with a nomogram points table.

All models take the numeric feature table of :func:`HCCTwinLib.survival.features.clinical_features` (plus any
imaging / radiomics / deep / response feature columns the caller adds), times in **months**.

Uncertainty: 95% bands and intervals are **percentile bootstrap over patients** (the whole fit is repeated,
propensity model included; resampling is stratified by regimen so every arm is present in every replicate).
Research use only: demo models trained on synthetic data, not for clinical use.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import ProgressCallback, report
from ._linear import LogisticRegression, SoftmaxRegression
from .features import WEEKS_PER_MONTH

__all__ = ["PerRegimenSurvival", "LandmarkModel", "LandmarkMetastasis", "MetastasisModel", "CompetingRiskMetastasis",
           "aalen_johansen_cif", "landmark_dataset",
           "stabilized_weights", "rmst_step", "DEFAULT_TIMES"]

#: Default prediction grid: 0-36 months in quarter-month steps.
DEFAULT_TIMES = np.linspace(0.0, 36.0, 145)


# ----------------------------------------------------------------------------------------------------------------
# Cox building block
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class _CoxFit:
    """A fitted Cox model as plain arrays: ``H(t | x) = H0(t) * exp(x @ beta - offset)`` (lifelines' baseline)."""

    beta: np.ndarray
    offset: float
    jump_times: np.ndarray
    cumhaz: np.ndarray

    def lp(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, float) @ self.beta - self.offset

    def h0(self, times) -> np.ndarray:
        idx = np.searchsorted(self.jump_times, np.asarray(times, float), side="right")
        return np.concatenate([[0.0], self.cumhaz])[idx]

    def survival(self, x: np.ndarray, times) -> np.ndarray:
        """(n, len(times)) survival probabilities."""
        return np.exp(-np.outer(np.exp(self.lp(x)), self.h0(times)))

    def rmst(self, x: np.ndarray, tau: float) -> np.ndarray:
        """Exact restricted mean survival time to ``tau`` of the step survival curve (n,)."""
        jt = self.jump_times[(self.jump_times > 0) & (self.jump_times < tau)]
        grid = np.concatenate([[0.0], jt])
        widths = np.diff(np.concatenate([grid, [tau]]))
        return self.survival(x, grid) @ widths


def _cox_arrays(fit: _CoxFit, prefix: str, arrays: dict[str, np.ndarray]) -> None:
    arrays[f"{prefix}.beta"] = np.asarray(fit.beta, float)
    arrays[f"{prefix}.offset"] = np.array([fit.offset], float)
    arrays[f"{prefix}.jump_times"] = np.asarray(fit.jump_times, float)
    arrays[f"{prefix}.cumhaz"] = np.asarray(fit.cumhaz, float)


def _cox_from(arrays: Mapping[str, np.ndarray], prefix: str) -> _CoxFit:
    try:
        return _CoxFit(np.asarray(arrays[f"{prefix}.beta"], float), float(np.asarray(arrays[f"{prefix}.offset"])[0]),
                       np.asarray(arrays[f"{prefix}.jump_times"], float), np.asarray(arrays[f"{prefix}.cumhaz"], float))
    except KeyError as exc:
        raise InputError(f"survival model file lacks the array {exc.args[0]!r}: incomplete or foreign file.") from None


def rmst_step(times, survival, tau: float) -> float:
    """RMST to ``tau`` of a right-continuous step curve given at ``times`` (S = 1 before the first time)."""
    t = np.asarray(times, float)
    s = np.asarray(survival, float)
    keep = t < tau
    grid = np.concatenate([[0.0], t[keep & (t > 0)]])
    vals = np.concatenate([[1.0], s])[np.searchsorted(t, grid, side="right")]
    return float(vals @ np.diff(np.concatenate([grid, [tau]])))


def _fit_cox(x: np.ndarray, names: Sequence[str], duration, event, weights=None, penalizer: float = 0.1,
             robust: bool = False):
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    cols = [f"x{i:04d}" for i in range(x.shape[1])]
    data = pd.DataFrame(x, columns=cols)
    data["_T"] = np.asarray(duration, float)
    data["_E"] = np.asarray(event, float)
    kw = {}
    if weights is not None:
        data["_W"] = np.asarray(weights, float)
        kw["weights_col"] = "_W"
    pen = float(penalizer)
    for _attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cph = CoxPHFitter(penalizer=pen).fit(data, "_T", "_E", robust=robust, **kw)
            break
        except ConvergenceError:
            pen = max(pen * 10, 0.01)
    else:  # pragma: no cover - only with degenerate data
        raise InputError("the Cox model did not converge even with a strong penalty: check for constant or "
                         "duplicated covariates and for too few events.")
    beta = cph.params_.reindex(cols).values.astype(float)  # lifelines may reorder columns
    x0 = x[:1]
    offset = float(x0[0] @ beta - cph.predict_log_partial_hazard(pd.DataFrame(x0, columns=cols)).values[0])
    bch = cph.baseline_cumulative_hazard_.iloc[:, 0]
    fit = _CoxFit(beta, offset, bch.index.values.astype(float), bch.values.astype(float))
    cph._hcctwin_names = list(names)
    return fit, cph


def stabilized_weights(z: np.ndarray, treatment: np.ndarray, l2: float = 1.0, trim=(0.01, 0.99)
                       ) -> tuple[np.ndarray, SoftmaxRegression | None]:
    """Stabilised inverse-propensity weights ``P(A = a_i) / P(A = a_i | x_i)`` from a multinomial logistic regression
    (L2) of the treatment on the covariates, trimmed to the ``trim`` quantiles. Returns (weights, model)."""
    treatment = np.asarray(treatment)
    classes, counts = np.unique(treatment, return_counts=True)
    if len(classes) < 2:
        return np.ones(len(treatment)), None
    model = SoftmaxRegression(l2=l2).fit(z, treatment)
    prob = model.predict_proba(z)
    col = np.searchsorted(model.classes_, treatment)
    e = np.clip(prob[np.arange(len(treatment)), col], 1e-6, None)
    marginal = (counts / counts.sum())[np.searchsorted(classes, treatment)]
    w = marginal / e
    lo, hi = np.quantile(w, trim)
    return np.clip(w, lo, hi), model


def _stratified_bootstrap(rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
    idx = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        idx.append(rng.choice(members, len(members), replace=True))
    return np.concatenate(idx)


def _derived(model, frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` with the columns the engine derives (``deep_*`` from the raw encoder features, through the hook
    ``model.derive_`` the engine sets) when some of ``columns`` are missing."""
    derive = getattr(model, "derive_", None)
    if derive is not None and any(c not in frame.columns for c in columns):
        return derive(frame)
    return frame


def _row_frame(row: Any, columns: Sequence[str], model=None) -> pd.DataFrame:
    if isinstance(row, pd.DataFrame):
        frame = row
    elif isinstance(row, pd.Series):
        frame = row.to_frame().T
    elif isinstance(row, Mapping):
        frame = pd.DataFrame([dict(row)])
    else:
        raise InputError(f"a patient row must be a dict, Series or DataFrame, got {type(row).__name__}.")
    frame = _derived(model, frame, columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"patient row lacks the model covariate(s) {', '.join(missing)}: compute them with "
                         f"clinical_features() (and the imaging/response feature functions) first.")
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any():
        bad = [c for c in columns if values[c].isna().any()]
        raise InputError(f"patient row has missing or non-numeric value(s) for {', '.join(bad)}: impute them "
                         f"(clinical_features() does) before predicting.")
    return values.astype(float)


def _median_time(times: np.ndarray, surv: np.ndarray) -> float | None:
    below = np.flatnonzero(surv <= 0.5)
    return float(times[below[0]]) if len(below) else None


def _pct(a: np.ndarray, axis=0) -> tuple[np.ndarray, np.ndarray]:
    return np.percentile(a, 2.5, axis=axis), np.percentile(a, 97.5, axis=axis)


# ----------------------------------------------------------------------------------------------------------------
# Per-regimen survival
# ----------------------------------------------------------------------------------------------------------------

class PerRegimenSurvival:
    """One Cox model with regimen one-hot + regimen x covariate interactions (an S-learner), weighted by stabilised
    inverse-propensity weights, ``robust=True`` (sandwich variance for the reported coefficients).

    - Covariates are standardised (training mean/sd) so one penalty fits all; the reference regimen is the most
      frequent one.
    - The lifelines penalty (L2) is chosen by ``cv_folds``-fold cross-validation of the held-out partial
      log-likelihood over ``penalizers``.
    - ``n_bootstrap`` replicates (stratified by regimen, propensity re-estimated, penalty fixed) give the 95%
      percentile bands and intervals and the probability that each regimen is best. With ``n_bootstrap=0`` the bands
      are NaN and :meth:`recommend` puts probability 1 on the point-estimate best.
    - Survival beyond the last observed event time is carried flat (Breslow baseline); say so when showing 36 months
      on a cohort with shorter follow-up.
    """

    def __init__(self, penalizers: Sequence[float] = (0.01, 0.05, 0.2, 0.5), n_bootstrap: int = 50,
                 cv_folds: int = 3, propensity: bool = True, propensity_l2: float = 1.0,
                 interaction_covariates: Sequence[str] | None = None, tau: float = 24.0, seed: int = 0):
        self.penalizers = tuple(float(p) for p in penalizers)
        self.n_bootstrap = int(n_bootstrap)
        self.cv_folds = int(cv_folds)
        self.propensity = bool(propensity)
        self.propensity_l2 = float(propensity_l2)
        self.interaction_covariates = None if interaction_covariates is None else list(interaction_covariates)
        self.tau = float(tau)
        self.seed = int(seed)

    # -- design ----------------------------------------------------------------------------------------------
    def _z(self, frame: pd.DataFrame) -> np.ndarray:
        return (frame[self.covariates_].to_numpy(float) - self.mean_) / self.sd_

    def _design(self, z: np.ndarray, regimens: np.ndarray) -> np.ndarray:
        inter = z[:, self._inter_idx]
        blocks = [z]
        dummies = [(regimens == r).astype(float) for r in self.regimens_[1:]]
        blocks += [d[:, None] for d in dummies]
        blocks += [d[:, None] * inter for d in dummies]
        return np.hstack(blocks)

    def _names(self) -> list[str]:
        inter = [self.covariates_[i] for i in self._inter_idx]
        return (list(self.covariates_) + [f"regimen[{r}]" for r in self.regimens_[1:]]
                + [f"regimen[{r}]:{c}" for r in self.regimens_[1:] for c in inter])

    def _fit_once(self, z, reg, t, e, penalizer, robust=False):
        w = stabilized_weights(z, reg, self.propensity_l2)[0] if self.propensity else None
        return _fit_cox(self._design(z, reg), self._names(), t, e, w, penalizer, robust)

    # -- fit -------------------------------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, duration_col: str, event_col: str, regimen_col: str,
            covariates: Sequence[str], progress: ProgressCallback | None = None) -> PerRegimenSurvival:
        """Fit on ``df`` (one row per patient; numeric covariates without missing values)."""
        cols = [duration_col, event_col, regimen_col, *covariates]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(f"the table lacks column(s) {', '.join(missing)} needed by the survival model.")
        data = df[cols].dropna()
        if len(data) < len(df):
            warnings.warn(f"{len(df) - len(data)} row(s) with missing values dropped from the survival fit.",
                          stacklevel=2)
        if int(data[event_col].sum()) < 5:
            n_all = int(pd.to_numeric(df[event_col], errors="coerce").fillna(0).sum())
            if len(data) == 0:
                why = (f"no patient has every value the model needs ({len(df)} row(s), all with a missing value in "
                       f"{', '.join(c for c in cols if df[c].isna().any())})")
            elif n_all > int(data[event_col].sum()):
                why = (f"{int(data[event_col].sum())} event(s) in {event_col} among the {len(data)} of {len(df)} "
                       f"patients with every value the model needs ({n_all} in the whole table)")
            else:
                why = f"{int(data[event_col].sum())} event(s) in {event_col} among {len(data)} patients"
            raise InputError(f"{why}: at least 5 are needed to fit a survival model. Check the outcome columns "
                             f"({duration_col}, {event_col}) and the clinical values of the table.")
        # a covariate that does not vary (e.g. every patient INR 1.1) carries no information and makes the Cox
        # information matrix singular: drop it and say so
        values = data[list(covariates)].to_numpy(float)
        constant = [c for c, sd in zip(covariates, values.std(0)) if not sd > 1e-12]
        self.dropped_covariates_ = constant
        if constant:
            warnings.warn(f"constant covariate(s) dropped from the survival model: {', '.join(constant)}.",
                          stacklevel=2)
        self.covariates_ = [c for c in covariates if c not in constant]
        if not self.covariates_:
            raise InputError("every covariate is constant in this table: nothing to fit a survival model on.")
        inter = self.interaction_covariates if self.interaction_covariates is not None else self.covariates_
        inter = [c for c in inter if c not in constant]
        unknown = [c for c in inter if c not in self.covariates_]
        if unknown:
            raise InputError(f"interaction covariate(s) {', '.join(unknown)} are not among the covariates.")
        self._inter_idx = [self.covariates_.index(c) for c in inter]
        counts = data[regimen_col].astype(str).value_counts()
        self.regimens_ = list(counts.index)  # most frequent first = reference
        self.regimen_counts_ = {str(k): int(v) for k, v in counts.items()}
        x = data[self.covariates_].to_numpy(float)
        self.mean_ = x.mean(0)
        sd = x.std(0)
        self.sd_ = np.where(sd > 1e-12, sd, 1.0)
        z = (x - self.mean_) / self.sd_
        reg = data[regimen_col].astype(str).to_numpy()
        t = data[duration_col].to_numpy(float)
        e = data[event_col].to_numpy(float)
        self.duration_col_, self.event_col_, self.regimen_col_ = duration_col, event_col, regimen_col
        rng = np.random.default_rng(self.seed)

        # penalty by cross-validated partial log-likelihood
        self.cv_scores_ = {}
        if len(self.penalizers) > 1 and self.cv_folds >= 2:
            folds = np.array_split(rng.permutation(len(t)), self.cv_folds)
            for pi, pen in enumerate(self.penalizers):
                scores = []
                for k in range(self.cv_folds):
                    test = folds[k]
                    train = np.concatenate([folds[j] for j in range(self.cv_folds) if j != k])
                    if e[test].sum() < 2:
                        continue
                    try:
                        _, cph = self._fit_once(z[train], reg[train], t[train], e[train], pen)
                    except InputError:  # e.g. a rare regimen absent from this training fold
                        continue
                    cols_x = [f"x{i:04d}" for i in range(len(cph.params_))]
                    test_df = pd.DataFrame(self._design(z[test], reg[test]), columns=cols_x)
                    test_df["_T"], test_df["_E"] = t[test], e[test]
                    if getattr(cph, "weights_col", None):
                        test_df[cph.weights_col] = 1.0
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            scores.append(float(cph.score(test_df, scoring_method="log_likelihood")))
                    except Exception:  # noqa: BLE001 - a fold that cannot be scored is skipped
                        continue
                self.cv_scores_[pen] = float(np.mean(scores)) if scores else float("-inf")
                report(progress, 0.3 * (pi + 1) / len(self.penalizers), f"choosing the penalty ({pen:g})")
            self.penalizer_ = max(self.cv_scores_, key=self.cv_scores_.get)
        else:
            self.penalizer_ = self.penalizers[0]

        self.weights_ = (stabilized_weights(z, reg, self.propensity_l2)[0] if self.propensity
                         else np.ones(len(t)))
        self.fit_, self.cph_ = self._fit_once(z, reg, t, e, self.penalizer_, robust=True)
        self.n_, self.n_events_ = len(t), int(e.sum())
        self.boot_: list[_CoxFit] = []
        for b in range(self.n_bootstrap):
            idx = _stratified_bootstrap(rng, reg)
            fit_b, _ = self._fit_once(z[idx], reg[idx], t[idx], e[idx], self.penalizer_)
            self.boot_.append(fit_b)
            report(progress, 0.35 + 0.65 * (b + 1) / self.n_bootstrap, f"bootstrap {b + 1}/{self.n_bootstrap}")
        report(progress, 1.0, "survival model fitted")
        return self

    # -- persistence (plain arrays + JSON metadata; never pickled) -------------------------------------------
    def to_state(self, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` of the fitted model: numeric arrays for a safetensors file and JSON metadata."""
        arrays: dict[str, np.ndarray] = {f"{prefix}mean": np.asarray(self.mean_, float),
                                         f"{prefix}sd": np.asarray(self.sd_, float)}
        _cox_arrays(self.fit_, f"{prefix}fit", arrays)
        for b, fit_b in enumerate(self.boot_):
            _cox_arrays(fit_b, f"{prefix}boot{b:03d}", arrays)
        meta = {"kind": "PerRegimenSurvival", "covariates": list(self.covariates_),
                "interaction_covariates": [self.covariates_[i] for i in self._inter_idx],
                "regimens": list(self.regimens_), "regimen_counts": self.regimen_counts_,
                "duration_col": self.duration_col_, "event_col": self.event_col_, "regimen_col": self.regimen_col_,
                "penalizer": float(self.penalizer_), "tau": self.tau, "n": int(self.n_),
                "n_events": int(self.n_events_),
                "n_bootstrap": len(self.boot_), "propensity": self.propensity,
                "dropped_covariates": list(self.dropped_covariates_)}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prefix: str = ""
                   ) -> PerRegimenSurvival:
        """Rebuild a fitted model from :meth:`to_state` output (predictions only: no lifelines object)."""
        self = cls(n_bootstrap=int(meta["n_bootstrap"]), propensity=bool(meta.get("propensity", True)),
                   tau=float(meta.get("tau", 24.0)))
        self.covariates_ = list(meta["covariates"])
        self._inter_idx = [self.covariates_.index(c) for c in meta["interaction_covariates"]]
        self.regimens_ = list(meta["regimens"])
        self.regimen_counts_ = dict(meta.get("regimen_counts", {}))
        self.duration_col_, self.event_col_ = meta["duration_col"], meta["event_col"]
        self.regimen_col_ = meta["regimen_col"]
        self.penalizer_ = float(meta["penalizer"])
        self.n_, self.n_events_ = int(meta["n"]), int(meta["n_events"])
        self.dropped_covariates_ = list(meta.get("dropped_covariates", []))
        self.mean_ = np.asarray(arrays[f"{prefix}mean"], float)
        self.sd_ = np.asarray(arrays[f"{prefix}sd"], float)
        if len(self.mean_) != len(self.covariates_):
            raise InputError("survival model file: covariate names and arrays disagree.")
        self.fit_ = _cox_from(arrays, f"{prefix}fit")
        self.boot_ = [_cox_from(arrays, f"{prefix}boot{b:03d}") for b in range(int(meta["n_bootstrap"]))]
        self.cph_ = None
        return self

    # -- summaries -------------------------------------------------------------------------------------------
    def coefficients(self) -> pd.DataFrame:
        """Coefficients on the standardised scale with robust (sandwich) standard errors (NaN standard errors
        for a model read back from a file)."""
        if self.cph_ is None:
            return pd.DataFrame({"coef": self.fit_.beta, "se_robust": np.nan, "p": np.nan}, index=self._names())
        s = self.cph_.summary.reindex([f"x{i:04d}" for i in range(len(self._names()))])
        return pd.DataFrame({"coef": s["coef"].values, "se_robust": s["se(coef)"].values, "p": s["p"].values},
                            index=self._names())

    def _check_regimens(self, regimens):
        regimens = list(self.regimens_ if regimens is None else regimens)
        unknown = [r for r in regimens if r not in self.regimens_]
        if unknown:
            raise InputError(f"regimen(s) {', '.join(unknown)} were not in the training data "
                             f"({', '.join(self.regimens_)}): the model cannot predict them.")
        return regimens

    def _x_for(self, frame: pd.DataFrame, regimen: str | np.ndarray) -> np.ndarray:
        z = self._z(frame)
        reg = np.full(len(z), regimen) if isinstance(regimen, str) else np.asarray(regimen).astype(str)
        return self._design(z, reg)

    # -- predictions -----------------------------------------------------------------------------------------
    def predict_curves(self, row, regimens: Sequence[str] | None = None, times=None,
                       tau: float | None = None) -> dict[str, dict[str, Any]]:
        """Per-regimen survival for one patient: ``{regimen: {"times", "survival", "lower", "upper", "median",
        "median_ci", "s12", "s12_ci", "s24", "s24_ci", "rmst24", "rmst24_ci"}}`` (lists/floats, JSON-ready).

        Bands: pointwise 95% percentile bootstrap, widened if needed to contain the point estimate (so lower <= S
        <= upper always). ``rmst24`` integrates the step curve exactly to ``tau`` (default 24) months.
        """
        regimens = self._check_regimens(regimens)
        times = np.asarray(DEFAULT_TIMES if times is None else times, float)
        tau = self.tau if tau is None else float(tau)
        frame = _row_frame(row, self.covariates_, self).iloc[:1]
        out = {}
        for r in regimens:
            x = self._x_for(frame, r)
            s = self.fit_.survival(x, times)[0]
            s12, s24 = self.fit_.survival(x, [12.0, 24.0])[0]
            rm = float(self.fit_.rmst(x, tau)[0])
            entry = {"times": times.tolist(), "survival": s.tolist(), "median": _median_time(times, s),
                     "s12": float(s12), "s24": float(s24), "rmst24": rm}
            if self.boot_:
                sb = np.vstack([f.survival(x, times)[0] for f in self.boot_])
                lo, hi = _pct(sb)
                lo, hi = np.minimum(lo, s), np.maximum(hi, s)
                s1224 = np.vstack([f.survival(x, [12.0, 24.0])[0] for f in self.boot_])
                rmb = np.array([f.rmst(x, tau)[0] for f in self.boot_])
                meds = [_median_time(times, row_s) for row_s in sb]
                meds_num = np.array([m if m is not None else np.inf for m in meds])
                med_lo, med_hi = np.percentile(meds_num, [2.5, 97.5])
                entry.update({
                    "lower": lo.tolist(), "upper": hi.tolist(),
                    "s12_ci": [float(min(np.percentile(s1224[:, 0], 2.5), s12)),
                               float(max(np.percentile(s1224[:, 0], 97.5), s12))],
                    "s24_ci": [float(min(np.percentile(s1224[:, 1], 2.5), s24)),
                               float(max(np.percentile(s1224[:, 1], 97.5), s24))],
                    "rmst24_ci": [float(min(np.percentile(rmb, 2.5), rm)), float(max(np.percentile(rmb, 97.5), rm))],
                    "median_ci": [float(med_lo) if np.isfinite(med_lo) else None,
                                  float(med_hi) if np.isfinite(med_hi) else None],
                })
            else:
                nan = [float("nan")] * len(times)
                entry.update({"lower": nan, "upper": list(nan), "s12_ci": [float("nan")] * 2,
                              "s24_ci": [float("nan")] * 2, "rmst24_ci": [float("nan")] * 2,
                              "median_ci": [None, None]})
            entry["interval_method"] = f"percentile bootstrap over patients (B={len(self.boot_)})"
            out[r] = entry
        return out

    def rmst_matrix(self, df: pd.DataFrame, regimens: Sequence[str] | None = None, tau: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """RMST to ``tau`` for every patient x regimen: (point (n, R), bootstrap (B, n, R))."""
        regimens = self._check_regimens(regimens)
        tau = self.tau if tau is None else float(tau)
        frame = _row_frame(df, self.covariates_, self)
        xs = [self._x_for(frame, r) for r in regimens]
        point = np.column_stack([self.fit_.rmst(x, tau) for x in xs])
        boot = np.stack([np.column_stack([f.rmst(x, tau) for x in xs]) for f in self.boot_]) if self.boot_ else \
            np.zeros((0, len(frame), len(regimens)))
        return point, boot

    def rmst_difference(self, row, a: str, b: str, tau: float | None = None) -> dict[str, Any]:
        """RMST(``a``) - RMST(``b``) to ``tau`` months for one patient with a 95% bootstrap interval and the share of
        replicates in which ``a`` is better. Also the neoadjuvant question:
        ``rmst_difference(row, "neoadj_haic_pd1_len_resection", "resection")``."""
        point, boot = self.rmst_matrix(_row_frame(row, self.covariates_, self).iloc[:1], [a, b], tau)
        est = float(point[0, 0] - point[0, 1])
        out = {"regimen_a": a, "regimen_b": b, "tau_months": self.tau if tau is None else float(tau),
               "estimate": est, "lower": float("nan"), "upper": float("nan"), "prob_a_better": float(est > 0)}
        if len(boot):
            d = boot[:, 0, 0] - boot[:, 0, 1]
            out.update({"lower": float(min(np.percentile(d, 2.5), est)),
                        "upper": float(max(np.percentile(d, 97.5), est)), "prob_a_better": float((d > 0).mean())})
        return out

    def recommend(self, row, regimens: Sequence[str] | None = None, tau: float | None = None) -> dict[str, float]:
        """Probability that each regimen is best = share of bootstrap replicates in which it has the highest
        RMST-``tau`` (ties shared). Pass only the regimens the patient is eligible for."""
        regimens = self._check_regimens(regimens)
        point, boot = self.rmst_matrix(_row_frame(row, self.covariates_, self).iloc[:1], regimens, tau)
        mats = boot[:, 0, :] if len(boot) else point
        best = mats == mats.max(axis=1, keepdims=True)
        share = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)
        return {r: float(p) for r, p in zip(regimens, share)}

    def predict_risk(self, df: pd.DataFrame, regimen: str | None = None) -> np.ndarray:
        """Linear predictor (higher = worse) under ``regimen``, or under each patient's received regimen
        (the training ``regimen_col``) when ``regimen`` is None."""
        frame = _row_frame(df, self.covariates_, self)
        if regimen is None:
            if self.regimen_col_ not in df.columns:
                raise InputError(f"the table lacks {self.regimen_col_}: give regimen= to predict under one regimen.")
            reg = df[self.regimen_col_].astype(str).to_numpy()
            self._check_regimens(list(np.unique(reg)))
        else:
            reg = self._check_regimens([regimen])[0]
        return self.fit_.lp(self._x_for(frame, reg))

    def predict_survival(self, df: pd.DataFrame, times, regimen: str | None = None) -> np.ndarray:
        """(n, len(times)) survival under ``regimen`` or the received regimen."""
        lp = self.predict_risk(df, regimen)
        return np.exp(-np.outer(np.exp(lp), self.fit_.h0(times)))


# ----------------------------------------------------------------------------------------------------------------
# Landmark (dynamic) model
# ----------------------------------------------------------------------------------------------------------------

def landmark_dataset(df: pd.DataFrame, duration_col: str, event_col: str, landmark_week: float) -> pd.DataFrame:
    """Patients alive and event-free at the landmark (duration > landmark), with the time reset to the landmark
    (``duration_col`` becomes time since the landmark, in months)."""
    lm = float(landmark_week) / WEEKS_PER_MONTH
    at_risk = df[df[duration_col].astype(float) > lm].copy()
    at_risk[duration_col] = at_risk[duration_col].astype(float) - lm
    return at_risk


class LandmarkModel:
    """Dynamic risk: one Cox model per landmark (default 8 and 16 weeks) on the patients still event-free at the
    landmark, time reset to the landmark, covariates = baseline + response features at that landmark (+ regimen
    main effects when ``regimen_col`` is given). Predicts survival conditional on being event-free at the landmark.

    Response features come from the real follow-up when one exists and from the virtual (generated) one otherwise;
    the caller says which (``source``), and the prediction records it. Missing response values among the at-risk
    patients are imputed with the median (reported in ``notes_``).
    """

    def __init__(self, landmarks_weeks: Sequence[int] = (8, 16), penalizer: float = 0.1, n_bootstrap: int = 0,
                 seed: int = 0):
        self.landmarks_weeks = tuple(int(w) for w in landmarks_weeks)
        self.penalizer = float(penalizer)
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)

    def fit(self, df: pd.DataFrame, duration_col: str, event_col: str, baseline_covariates: Sequence[str],
            response_covariates: Mapping[int, Sequence[str]] | Sequence[str], regimen_col: str | None = None
            ) -> LandmarkModel:
        self.models_: dict[int, dict[str, Any]] = {}
        self.notes_: list[str] = []
        rng = np.random.default_rng(self.seed)
        self.duration_col_, self.event_col_, self.regimen_col_ = duration_col, event_col, regimen_col
        for w in self.landmarks_weeks:
            resp = list(response_covariates[w] if isinstance(response_covariates, Mapping) else response_covariates)
            cols = list(baseline_covariates) + resp
            missing = [c for c in cols + [duration_col, event_col] if c not in df.columns]
            if missing:
                raise InputError(f"landmark {w} weeks: the table lacks column(s) {', '.join(missing)}.")
            lm = landmark_dataset(df, duration_col, event_col, w)
            if int(lm[event_col].sum()) < 5:
                raise InputError(f"landmark {w} weeks: only {int(lm[event_col].sum())} events after the landmark.")
            x = lm[cols].apply(pd.to_numeric, errors="coerce")
            fills = x.median()
            for c in cols:
                k = int(x[c].isna().sum())
                if k:
                    self.notes_.append(f"landmark {w} weeks: imputed {c} in {k} of {len(x)} at-risk patient(s) "
                                       f"with the median {fills[c]:g}.")
            x = x.fillna(fills).fillna(0.0).to_numpy(float)
            regimens = []
            if regimen_col is not None:
                regimens = list(lm[regimen_col].astype(str).value_counts().index)
            mean, sd = x.mean(0), x.std(0)
            sd = np.where(sd > 1e-12, sd, 1.0)
            model = {"columns": cols, "mean": mean, "sd": sd, "fills": fills, "regimens": regimens,
                     "n_at_risk": len(lm), "n_events": int(lm[event_col].sum()), "index": lm.index.copy(),
                     "landmark_months": w / WEEKS_PER_MONTH}
            design = self._design(model, (x - mean) / sd, lm)
            t, e = lm[duration_col].to_numpy(float), lm[event_col].to_numpy(float)
            names = cols + [f"regimen[{r}]" for r in regimens[1:]]
            model["fit"], model["cph"] = _fit_cox(design, names, t, e, None, self.penalizer)
            model["boot"] = []
            groups = lm[regimen_col].astype(str).to_numpy() if regimen_col else np.zeros(len(lm))
            for _ in range(self.n_bootstrap):
                idx = _stratified_bootstrap(rng, groups)
                model["boot"].append(_fit_cox(design[idx], names, t[idx], e[idx], None, self.penalizer)[0])
            self.models_[w] = model
        return self

    def _design(self, model, z: np.ndarray, frame: pd.DataFrame | None, regimen: str | None = None) -> np.ndarray:
        regs = model["regimens"]
        if not regs:
            return z
        if regimen is not None:
            reg = np.full(len(z), regimen)
        else:
            reg = frame[self.regimen_col_].astype(str).to_numpy()
        return np.hstack([z] + [(reg == r).astype(float)[:, None] for r in regs[1:]])

    def to_state(self, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        models = {}
        for w, m in self.models_.items():
            p = f"{prefix}w{w:02d}."
            arrays[p + "mean"], arrays[p + "sd"] = np.asarray(m["mean"], float), np.asarray(m["sd"], float)
            _cox_arrays(m["fit"], p + "fit", arrays)
            for b, fb in enumerate(m["boot"]):
                _cox_arrays(fb, f"{p}boot{b:03d}", arrays)
            models[str(w)] = {"columns": list(m["columns"]), "fills": {c: float(m["fills"][c]) for c in m["columns"]},
                              "regimens": list(m["regimens"]), "n_at_risk": int(m["n_at_risk"]),
                              "n_events": int(m["n_events"]), "landmark_months": float(m["landmark_months"]),
                              "n_bootstrap": len(m["boot"])}
        meta = {"kind": "LandmarkModel", "landmarks_weeks": list(self.landmarks_weeks), "penalizer": self.penalizer,
                "duration_col": self.duration_col_, "event_col": self.event_col_, "regimen_col": self.regimen_col_,
                "models": models, "notes": list(self.notes_)}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prefix: str = "") -> LandmarkModel:
        self = cls(landmarks_weeks=meta["landmarks_weeks"], penalizer=float(meta["penalizer"]))
        self.duration_col_, self.event_col_, self.regimen_col_ = (meta["duration_col"], meta["event_col"],
                                                                  meta["regimen_col"])
        self.notes_ = list(meta.get("notes", []))
        self.models_ = {}
        for w_text, m in meta["models"].items():
            w = int(w_text)
            p = f"{prefix}w{w:02d}."
            fills = pd.Series({c: float(v) for c, v in m["fills"].items()}, dtype=float)
            self.models_[w] = {"columns": list(m["columns"]), "fills": fills, "regimens": list(m["regimens"]),
                               "n_at_risk": m["n_at_risk"], "n_events": m["n_events"],
                               "landmark_months": m["landmark_months"],
                               "mean": np.asarray(arrays[p + "mean"], float), "sd": np.asarray(arrays[p + "sd"], float),
                               "fit": _cox_from(arrays, p + "fit"),
                               "boot": [_cox_from(arrays, f"{p}boot{b:03d}") for b in range(int(m["n_bootstrap"]))]}
        return self

    def _model(self, landmark_week: int) -> dict[str, Any]:
        if landmark_week not in self.models_:
            raise InputError(f"no landmark model at {landmark_week} weeks (fitted: {sorted(self.models_)}).")
        return self.models_[landmark_week]

    def _x(self, model, frame: pd.DataFrame, regimen: str | None) -> np.ndarray:
        frame = _derived(self, frame, model["columns"])
        x = frame.reindex(columns=model["columns"]).apply(pd.to_numeric, errors="coerce")
        x = x.fillna(model["fills"]).fillna(0.0).to_numpy(float)
        if model["regimens"] and regimen is None and (self.regimen_col_ not in frame.columns):
            raise InputError("this landmark model uses the regimen: give regimen= or a regimen column.")
        return self._design(model, (x - model["mean"]) / model["sd"], frame, regimen)

    def predict_risk(self, df: pd.DataFrame, landmark_week: int, regimen: str | None = None) -> np.ndarray:
        """Linear predictor (higher = worse) of the landmark model."""
        model = self._model(landmark_week)
        return model["fit"].lp(self._x(model, df, regimen))

    def predict(self, row, landmark_week: int, times=None, source: str = "virtual", regimen: str | None = None
                ) -> dict[str, Any]:
        """Survival conditional on being event-free at the landmark, for ``times`` months **after** the landmark
        (default 0-36). ``source`` = "observed" (real follow-up) or "virtual" (generated follow-up) is recorded."""
        if source not in ("observed", "virtual"):
            raise InputError(f"source = {source!r}: expected 'observed' (real follow-up) or 'virtual'.")
        model = self._model(landmark_week)
        frame = row if isinstance(row, pd.DataFrame) else (row.to_frame().T if isinstance(row, pd.Series)
                                                            else pd.DataFrame([dict(row)]))
        frame = frame.iloc[:1]
        times = np.asarray(DEFAULT_TIMES if times is None else times, float)
        x = self._x(model, frame, regimen)
        s = model["fit"].survival(x, times)[0]
        out = {"landmark_week": landmark_week, "landmark_months": model["landmark_months"], "source": source,
               "times_after_landmark": times.tolist(), "survival": s.tolist(), "median": _median_time(times, s),
               "lower": [float("nan")] * len(times), "upper": [float("nan")] * len(times)}
        if model["boot"]:
            sb = np.vstack([f.survival(x, times)[0] for f in model["boot"]])
            lo, hi = _pct(sb)
            out["lower"], out["upper"] = np.minimum(lo, s).tolist(), np.maximum(hi, s).tolist()
        return out


# ----------------------------------------------------------------------------------------------------------------
# Distant metastasis after TACE
# ----------------------------------------------------------------------------------------------------------------

class MetastasisModel:
    """2-year distant metastasis risk (logistic regression with L2) and a nomogram-style points table.

    Target (:meth:`binary_target`): 1 = metastasis within ``horizon_months`` (24); 0 = followed metastasis-free
    beyond the horizon; patients censored (or dead without metastasis, a competing event treated as censoring)
    before the horizon are **excluded**, because their 2-year status is unknown. This is the usual complete-case
    definition of a fixed-horizon binary endpoint; it over-represents early events when censoring is heavy. The
    caller restricts the table to the TACE patients (the model's intended population).
    """

    def __init__(self, l2: float = 1.0, horizon_months: float = 24.0, n_bootstrap: int = 200, seed: int = 0):
        self.l2, self.horizon_months = float(l2), float(horizon_months)
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)

    @staticmethod
    def binary_target(df: pd.DataFrame, time_col: str = "metastasis_months", event_col: str = "metastasis_event",
                      horizon_months: float = 24.0) -> tuple[np.ndarray, np.ndarray]:
        """(y, keep): y = event within the horizon; keep = status known at the horizon."""
        t = pd.to_numeric(df[time_col], errors="coerce").to_numpy(float)
        e = pd.to_numeric(df[event_col], errors="coerce").to_numpy(float) > 0
        y = e & (t <= horizon_months)
        keep = np.isfinite(t) & (y | (t >= horizon_months))
        return y.astype(int), keep

    def fit(self, df: pd.DataFrame, features: Sequence[str], time_col: str = "metastasis_months",
            event_col: str = "metastasis_event") -> MetastasisModel:
        missing = [c for c in [*features, time_col, event_col] if c not in df.columns]
        if missing:
            raise InputError(f"the table lacks column(s) {', '.join(missing)} needed by the metastasis model.")
        y, keep = self.binary_target(df, time_col, event_col, self.horizon_months)
        x = df.loc[keep, list(features)].apply(pd.to_numeric, errors="coerce")
        self.fills_ = x.median()
        x = x.fillna(self.fills_).to_numpy(float)
        y = y[keep]
        if y.sum() < 3 or (len(y) - y.sum()) < 3:
            raise InputError(f"metastasis model: {int(y.sum())} events and {int(len(y) - y.sum())} non-events at "
                             f"{self.horizon_months:g} months; need at least 3 of each.")
        self.features_ = list(features)
        self.n_used_, self.n_excluded_, self.n_events_ = int(keep.sum()), int((~keep).sum()), int(y.sum())
        self.model_ = LogisticRegression(self.l2).fit(x, y)
        self.range_ = (x.min(0), x.max(0))
        rng = np.random.default_rng(self.seed)
        self.boot_ = []
        for _ in range(self.n_bootstrap):
            idx = _stratified_bootstrap(rng, y)
            self.boot_.append(LogisticRegression(self.l2).fit(x[idx], y[idx]))
        return self

    def to_state(self, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"{prefix}coef": np.asarray(self.model_.coef_, float),
                  f"{prefix}intercept": np.array([self.model_.intercept_], float),
                  f"{prefix}range_lo": np.asarray(self.range_[0], float),
                  f"{prefix}range_hi": np.asarray(self.range_[1], float)}
        if self.boot_:
            arrays[f"{prefix}boot_coef"] = np.vstack([m.coef_ for m in self.boot_])
            arrays[f"{prefix}boot_intercept"] = np.array([m.intercept_ for m in self.boot_], float)
        meta = {"kind": "MetastasisModel", "features": list(self.features_), "l2": self.l2,
                "horizon_months": self.horizon_months, "fills": {c: float(self.fills_[c]) for c in self.features_},
                "n_used": self.n_used_, "n_excluded": self.n_excluded_, "n_events": self.n_events_}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prefix: str = ""
                   ) -> MetastasisModel:
        self = cls(l2=float(meta["l2"]), horizon_months=float(meta["horizon_months"]), n_bootstrap=0)
        self.features_ = list(meta["features"])
        self.fills_ = pd.Series(meta["fills"], dtype=float)
        self.n_used_, self.n_excluded_, self.n_events_ = meta["n_used"], meta["n_excluded"], meta["n_events"]

        def logistic(coef, intercept):
            m = LogisticRegression(self.l2)
            m.coef_, m.intercept_ = np.asarray(coef, float), float(intercept)
            return m

        self.model_ = logistic(arrays[f"{prefix}coef"], np.asarray(arrays[f"{prefix}intercept"])[0])
        self.range_ = (np.asarray(arrays[f"{prefix}range_lo"], float), np.asarray(arrays[f"{prefix}range_hi"], float))
        self.boot_ = []
        if f"{prefix}boot_coef" in arrays:
            self.boot_ = [logistic(c, i) for c, i in zip(arrays[f"{prefix}boot_coef"],
                                                         arrays[f"{prefix}boot_intercept"])]
        self.n_bootstrap = len(self.boot_)
        return self

    def _x(self, df) -> np.ndarray:
        frame = df if isinstance(df, pd.DataFrame) else (df.to_frame().T if isinstance(df, pd.Series)
                                                         else pd.DataFrame([dict(df)]))
        frame = _derived(self, frame, self.features_)
        missing = [c for c in self.features_ if c not in frame.columns]
        if missing:
            raise InputError(f"metastasis model needs column(s) {', '.join(missing)}.")
        return frame[self.features_].apply(pd.to_numeric, errors="coerce").fillna(self.fills_).to_numpy(float)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """2-year metastasis probability per row."""
        return self.model_.predict_proba(self._x(df))

    # nomogram ------------------------------------------------------------------------------------------------
    def _scale(self):
        beta = self.model_.coef_
        lo, hi = self.range_
        spans = np.abs(beta) * (hi - lo)
        max_span = float(spans.max()) if spans.max() > 0 else 1.0
        ref = np.where(beta >= 0, lo, hi)  # the value that scores 0 points
        return beta, ref, max_span

    def points(self, row) -> dict[str, float]:
        """Points per feature (0-100 scale: the feature with the widest effect range spans 0-100) and ``total``."""
        beta, ref, max_span = self._scale()
        x = self._x(row)[0]
        pts = 100.0 * beta * (x - ref) / max_span
        out = {f: float(p) for f, p in zip(self.features_, pts)}
        out["total"] = float(pts.sum())
        return out

    def risk_from_points(self, total_points) -> np.ndarray:
        """2-year risk for a total number of points (the nomogram's bottom axis)."""
        beta, ref, max_span = self._scale()
        lp = self.model_.intercept_ + float(beta @ ref) + np.asarray(total_points, float) * max_span / 100.0
        return 1.0 / (1.0 + np.exp(-lp))

    def points_table(self, n_values: int = 5) -> pd.DataFrame:
        """Nomogram table: for each feature, ``n_values`` evenly spaced values over the training range (0/1 for
        binary features) and their points; rows ``feature, value, points, coef``."""
        beta, ref, max_span = self._scale()
        lo, hi = self.range_
        rows = []
        for j, f in enumerate(self.features_):
            binary = lo[j] == 0 and hi[j] == 1 and n_values >= 2
            values = np.array([0.0, 1.0]) if binary else np.linspace(lo[j], hi[j], n_values)
            for v in values:
                rows.append({"feature": f, "value": float(v), "points": float(100 * beta[j] * (v - ref[j]) / max_span),
                             "coef": float(beta[j])})
        return pd.DataFrame(rows)

    def predict(self, row) -> dict[str, Any]:
        """2-year risk with a 95% bootstrap interval, and the nomogram points."""
        x = self._x(row)[:1]
        risk = float(self.model_.predict_proba(x)[0])
        out = {"horizon_months": self.horizon_months, "risk": risk, "lower": float("nan"), "upper": float("nan"),
               "points": self.points(row), "interval_method": f"percentile bootstrap (B={len(self.boot_)})"}
        if self.boot_:
            rb = np.array([m.predict_proba(x)[0] for m in self.boot_])
            out["lower"] = float(min(np.percentile(rb, 2.5), risk))
            out["upper"] = float(max(np.percentile(rb, 97.5), risk))
        return out


class LandmarkMetastasis:
    """2-year distant-metastasis risk updated at landmark weeks with the response seen so far (dynamic risk).

    One :class:`MetastasisModel` per landmark week ``w``, fitted on the patients still metastasis-free (and followed)
    at the landmark (``metastasis_months`` > w weeks) with the baseline features plus the relative changes of the
    viable volume and of the mRECIST sum of viable diameters at every landmark week <= ``w``
    (:func:`~HCCTwinLib.survival.features.response_features`). The target is the same as the baseline model's
    (metastasis within ``horizon_months`` of baseline), so the baseline and updated risks read on one scale. The
    response comes from the real follow-up when there is one, otherwise from the virtual one. With several ``l2``
    values the penalty of each landmark is chosen by repeated stratified cross-validation (AUC) on the training rows.
    """

    def __init__(self, landmarks_weeks: Sequence[int] = (8, 16), l2: float | Sequence[float] = (0.3, 1.0, 3.0, 10.0),
                 horizon_months: float = 24.0, n_bootstrap: int = 200, seed: int = 0, cv_folds: int = 5,
                 cv_repeats: int = 3):
        self.landmarks_weeks = tuple(int(w) for w in landmarks_weeks)
        self.l2_grid = tuple(float(v) for v in (l2 if isinstance(l2, Sequence) else [l2]))
        self.horizon_months = float(horizon_months)
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)
        self.cv_folds, self.cv_repeats = int(cv_folds), int(cv_repeats)
        self.models_: dict[int, MetastasisModel] = {}
        self.cv_: dict[int, dict[str, Any]] = {}
        self.notes_: list[str] = []
        self.derive_ = None

    @staticmethod
    def response_columns(week: int, weeks: Sequence[int]) -> list[str]:
        return [f"{name}_w{v:02d}" for v in weeks if v <= week
                for name in ("rel_change_viable_volume", "rel_change_sum_viable")]

    def population(self, df: pd.DataFrame, week: int, time_col: str = "metastasis_months") -> pd.DataFrame:
        """Rows metastasis-free and followed beyond the landmark (the caller restricts to the TACE population)."""
        return df[pd.to_numeric(df[time_col], errors="coerce") > float(week) / WEEKS_PER_MONTH]

    def labelled(self, df: pd.DataFrame, week: int, time_col: str = "metastasis_months",
                 event_col: str = "metastasis_event") -> tuple[pd.DataFrame, np.ndarray]:
        """``(rows, y)``: the :meth:`population` at ``week`` with a known status at the horizon, and that status
        (what the landmark model at ``week`` is scored on)."""
        rows = self.population(df, week, time_col)
        y, keep = MetastasisModel.binary_target(rows, time_col, event_col, self.horizon_months)
        return rows[keep], y[keep]

    def fit(self, df: pd.DataFrame, base_features: Sequence[str], time_col: str = "metastasis_months",
            event_col: str = "metastasis_event") -> LandmarkMetastasis:
        self.models_, self.notes_ = {}, []
        for w in self.landmarks_weeks:
            cols = self.response_columns(w, self.landmarks_weeks)
            missing = [c for c in cols if c not in df.columns or not df[c].notna().any()]
            if missing:
                self.notes_.append(f"metastasis landmark {w} w not fitted: no {', '.join(missing)} in the table.")
                continue
            at_risk = self.population(df, w, time_col)
            features = [*base_features, *cols]
            try:
                l2 = self._choose_l2(at_risk, features, time_col, event_col, w)
                model = MetastasisModel(l2, self.horizon_months, self.n_bootstrap, self.seed + w)
                self.models_[w] = model.fit(at_risk, features, time_col, event_col)
            except InputError as exc:
                self.notes_.append(f"metastasis landmark {w} w not fitted: {exc}")
        if not self.models_:
            raise InputError("no metastasis landmark model could be fitted: " + " ".join(self.notes_))
        return self

    def _choose_l2(self, df: pd.DataFrame, features, time_col, event_col, week: int) -> float:
        """The penalty with the best mean cross-validated AUC (the first of ``l2_grid`` when there is one value or
        too few events for the folds)."""
        from .metrics import binary_auc

        y, keep = MetastasisModel.binary_target(df, time_col, event_col, self.horizon_months)
        rows, y = df[keep].reset_index(drop=True), y[keep]
        if len(self.l2_grid) == 1 or min(y.sum(), len(y) - y.sum()) < 2 * self.cv_folds:
            self.cv_[week] = {"l2": self.l2_grid[0], "auc": None}
            return self.l2_grid[0]
        rng = np.random.default_rng(self.seed + week)
        scores = {l2: [] for l2 in self.l2_grid}
        for _ in range(self.cv_repeats):
            folds = np.empty(len(y), int)
            for cls in (0, 1):  # stratified: events spread over the folds
                idx = np.flatnonzero(y == cls)
                folds[idx] = rng.permutation(len(idx)) % self.cv_folds
            for f in range(self.cv_folds):
                train, test = rows[folds != f], rows[folds == f]
                for l2 in self.l2_grid:
                    m = MetastasisModel(l2, self.horizon_months, 0).fit(train, features, time_col, event_col)
                    scores[l2].append(binary_auc(y[folds == f], m.predict_proba(test)))
        means = {l2: float(np.nanmean(v)) for l2, v in scores.items()}
        best = max(means, key=lambda k: (means[k], k))  # ties: the stronger penalty
        self.cv_[week] = {"l2": best, "auc": means[best], "auc_by_l2": {str(k): v for k, v in means.items()},
                          "folds": self.cv_folds, "repeats": self.cv_repeats}
        return best

    @property
    def derive_(self):
        return self._derive

    @derive_.setter
    def derive_(self, fn):
        self._derive = fn
        for model in getattr(self, "models_", {}).values():
            model.derive_ = fn

    def predict(self, row, week: int) -> dict[str, Any]:
        """Updated 2-year risk (with interval and points) at landmark ``week``; ``row`` carries the response
        columns of :meth:`response_columns`."""
        if week not in self.models_:
            raise InputError(f"no metastasis landmark model at {week} weeks (fitted: {sorted(self.models_)}).")
        out = self.models_[week].predict(row)
        out["landmark_weeks"] = int(week)
        return out

    def to_state(self, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        metas = {}
        for w, model in self.models_.items():
            a, meta = model.to_state(prefix=f"{prefix}w{w:02d}/")
            arrays.update(a)
            metas[str(w)] = meta
        return arrays, {"kind": "LandmarkMetastasis", "landmarks_weeks": list(self.landmarks_weeks),
                        "l2_grid": list(self.l2_grid), "horizon_months": self.horizon_months, "models": metas,
                        "cross_validation": {str(w): v for w, v in self.cv_.items()}}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prefix: str = ""
                   ) -> LandmarkMetastasis:
        self = cls(meta["landmarks_weeks"], meta["l2_grid"], float(meta["horizon_months"]), n_bootstrap=0)
        self.models_ = {int(w): MetastasisModel.from_state(arrays, m, prefix=f"{prefix}w{int(w):02d}/")
                        for w, m in meta["models"].items()}
        self.cv_ = {int(w): dict(v) for w, v in meta.get("cross_validation", {}).items()}
        return self


class CompetingRiskMetastasis:
    """Distant metastasis as a time-to-event outcome with death as a competing risk (issue 27): two cause-specific
    Cox models (metastasis; death without metastasis, each censoring the other) on the same covariates, combined
    into the cumulative incidence of metastasis ``F(t | x) = sum_{s <= t} S(s- | x) dH_met(s | x)`` with ``S`` the
    probability of neither event (Putter, Fiocco & Geskus, Stat Med 2007). Unlike the 2-year logistic model
    (:class:`MetastasisModel`), nobody is dropped: a patient censored at 14 months and one who died at 9 months
    without metastasis both inform the fit.

    Event coding from the cohort layout: metastasis = ``metastasis_event`` 1 at ``metastasis_months``; death without
    metastasis = ``os_event`` 1, ``metastasis_event`` 0 and death no later than the metastasis follow-up ended;
    otherwise censored at ``metastasis_months``.
    """

    def __init__(self, penalizer: float = 0.1, horizon_months: float = 24.0):
        self.penalizer, self.horizon_months = float(penalizer), float(horizon_months)

    @staticmethod
    def events(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(time, cause)``: cause 1 metastasis, 2 death without metastasis, 0 censored."""
        t = pd.to_numeric(df["metastasis_months"], errors="coerce").to_numpy(float)
        met = pd.to_numeric(df["metastasis_event"], errors="coerce").to_numpy(float) > 0
        cause = np.where(met, 1, 0)
        if "os_event" in df.columns and "os_months" in df.columns:
            dead = pd.to_numeric(df["os_event"], errors="coerce").to_numpy(float) > 0
            t_os = pd.to_numeric(df["os_months"], errors="coerce").to_numpy(float)
            cause = np.where(~met & dead & (t_os <= t + 1e-6), 2, cause)
        return t, cause

    def fit(self, df: pd.DataFrame, features: Sequence[str]) -> CompetingRiskMetastasis:
        need = [*features, "metastasis_months", "metastasis_event"]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise InputError(f"the table lacks column(s) {', '.join(missing)} needed by the metastasis model.")
        t, cause = self.events(df)
        keep = np.isfinite(t)
        x = df.loc[keep, list(features)].apply(pd.to_numeric, errors="coerce")
        self.fills_ = x.median()
        x = x.fillna(self.fills_).to_numpy(float)
        self.mean_, self.sd_ = x.mean(0), x.std(0) + 1e-9
        z = (x - self.mean_) / self.sd_
        t, cause = t[keep], cause[keep]
        for c, what in ((1, "metastases"), (2, "deaths without metastasis")):
            if (cause == c).sum() < 3:
                raise InputError(f"competing-risk metastasis model: {int((cause == c).sum())} {what}; need >= 3.")
        self.features_ = list(features)
        self.met_, _ = _fit_cox(z, self.features_, t, cause == 1, penalizer=self.penalizer)
        self.death_, _ = _fit_cox(z, self.features_, t, cause == 2, penalizer=self.penalizer)
        self.n_, self.n_met_, self.n_death_ = int(len(t)), int((cause == 1).sum()), int((cause == 2).sum())
        return self

    def _z(self, df) -> np.ndarray:
        frame = df if isinstance(df, pd.DataFrame) else (df.to_frame().T if isinstance(df, pd.Series)
                                                         else pd.DataFrame([dict(df)]))
        frame = _derived(self, frame, self.features_)
        missing = [c for c in self.features_ if c not in frame.columns]
        if missing:
            raise InputError(f"competing-risk metastasis model needs column(s) {', '.join(missing)}.")
        x = frame[self.features_].apply(pd.to_numeric, errors="coerce").fillna(self.fills_).to_numpy(float)
        return (x - self.mean_) / self.sd_

    def cumulative_incidence(self, df: pd.DataFrame, times=None) -> np.ndarray:
        """``(n, len(times))`` cumulative incidence of metastasis (default: at the horizon, shape ``(n,)``)."""
        scalar = times is None
        times = np.atleast_1d(np.asarray([self.horizon_months] if scalar else times, float))
        z = self._z(df)
        grid = np.union1d(self.met_.jump_times, self.death_.jump_times)
        grid = grid[(grid > 0) & (grid <= times.max())]
        h_met = np.exp(self.met_.lp(z))[:, None] * self.met_.h0(grid)[None, :]
        h_dth = np.exp(self.death_.lp(z))[:, None] * self.death_.h0(grid)[None, :]
        d_met = np.diff(np.concatenate([np.zeros((len(z), 1)), h_met], axis=1), axis=1)
        s_prev = np.exp(-np.concatenate([np.zeros((len(z), 1)), (h_met + h_dth)[:, :-1]], axis=1))
        cif = np.cumsum(s_prev * d_met, axis=1)
        idx = np.searchsorted(grid, times, side="right")
        out = np.concatenate([np.zeros((len(z), 1)), cif], axis=1)[:, idx]
        return out[:, 0] if scalar else out

    def predict(self, row) -> dict[str, Any]:
        """The patient's cumulative incidence of distant metastasis by the horizon (death competing) and its curve
        to 36 months."""
        months = np.arange(0.0, 36.01, 3.0)
        curve = self.cumulative_incidence(row, months)[0]
        return {"horizon_months": self.horizon_months,
                "cumulative_incidence": float(self.cumulative_incidence(row, [self.horizon_months])[0, 0]),
                "curve": {"months": months.tolist(), "cumulative_incidence": curve.tolist()},
                "method": "cause-specific Cox models (metastasis; death without metastasis), cumulative incidence "
                          "with death as a competing risk",
                "n_fit": self.n_, "n_metastases": self.n_met_, "n_deaths_without_metastasis": self.n_death_}

    def to_state(self, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"{prefix}mean": np.asarray(self.mean_, float), f"{prefix}sd": np.asarray(self.sd_, float)}
        for cause, fit in (("met", self.met_), ("death", self.death_)):
            arrays.update({f"{prefix}{cause}_beta": np.asarray(fit.beta, float),
                           f"{prefix}{cause}_offset": np.array([fit.offset], float),
                           f"{prefix}{cause}_times": np.asarray(fit.jump_times, float),
                           f"{prefix}{cause}_cumhaz": np.asarray(fit.cumhaz, float)})
        meta = {"kind": "CompetingRiskMetastasis", "features": list(self.features_), "penalizer": self.penalizer,
                "horizon_months": self.horizon_months,
                "fills": {c: float(self.fills_[c]) for c in self.features_},
                "n": self.n_, "n_met": self.n_met_, "n_death": self.n_death_}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prefix: str = ""
                   ) -> CompetingRiskMetastasis:
        self = cls(float(meta["penalizer"]), float(meta["horizon_months"]))
        self.features_ = list(meta["features"])
        self.fills_ = pd.Series(meta["fills"], dtype=float)
        self.mean_, self.sd_ = np.asarray(arrays[f"{prefix}mean"]), np.asarray(arrays[f"{prefix}sd"])
        fits = {}
        for cause in ("met", "death"):
            fits[cause] = _CoxFit(np.asarray(arrays[f"{prefix}{cause}_beta"], float),
                                  float(np.asarray(arrays[f"{prefix}{cause}_offset"])[0]),
                                  np.asarray(arrays[f"{prefix}{cause}_times"], float),
                                  np.asarray(arrays[f"{prefix}{cause}_cumhaz"], float))
        self.met_, self.death_ = fits["met"], fits["death"]
        self.n_, self.n_met_, self.n_death_ = int(meta["n"]), int(meta["n_met"]), int(meta["n_death"])
        return self


def aalen_johansen_cif(time, cause, horizon: float, event: int = 1) -> float:
    """The nonparametric cumulative incidence of ``event`` by ``horizon`` (Aalen-Johansen), from ``(time, cause)``
    with cause 0 = censored: a cohort's observed metastasis rate with the competing death accounted for."""
    time = np.asarray(time, float)
    cause = np.asarray(cause, int)
    s, cif = 1.0, 0.0
    for u in np.unique(time[(cause > 0) & (time <= horizon)]):
        at_risk = np.count_nonzero(time >= u)
        if at_risk == 0:
            break
        d_all = np.count_nonzero((time == u) & (cause > 0))
        d_k = np.count_nonzero((time == u) & (cause == event))
        cif += s * d_k / at_risk
        s *= 1.0 - d_all / at_risk
    return float(cif)
