"""Survival and risk-model metrics, implemented with numpy (+ lifelines for Harrell's C, Kaplan-Meier, log-rank).

Conventions: ``risk`` is a score where **higher means worse** (earlier event). ``surv`` is a predicted survival
probability. Censoring weights (IPCW) use the Kaplan-Meier estimate G of the censoring distribution, fitted on the
training data when ``train_time``/``train_event`` are given (as scikit-survival does), otherwise on the evaluation
data; G is evaluated just before the event time (G(T_i-)) for cases and at t for survivors, floored at ``g_min``.

References: Harrell FE et al., JAMA 1982; Uno H et al., Stat Med 2011;30:1105-1117 (IPCW C-statistic);
Uno H et al., JASA 2007 and Hung & Chiang, Can J Stat 2010 (cumulative/dynamic AUC with IPCW); Graf E et al.,
Stat Med 1999;18:2529-2545 (Brier score with IPCW); Austin PC et al., Stat Med 2020;39:2714-2742 (ICI; here with
jackknife Kaplan-Meier pseudo-observations smoothed by LOWESS); Vickers AJ & Elkin EB, Med Decis Making 2006 and
Vickers AJ et al., BMC Med Inform Decis Mak 2008 (decision curves, survival version with Kaplan-Meier).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["harrell_c", "uno_c", "time_dependent_auc", "brier", "integrated_brier", "km_null_survival", "ici",
           "decision_curve", "decision_curve_survival", "km_by_risk_group", "binary_auc", "km_curve",
           "censoring_survival"]


def _arrays(time, event, *others):
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    out = [time, event] + [np.asarray(o, float) for o in others]
    n = len(time)
    for o in out:
        if len(o) != n:
            raise ValueError(f"all inputs need the same length ({n}), got {len(o)}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Kaplan-Meier helpers
# ----------------------------------------------------------------------------------------------------------------

def km_curve(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate as (distinct event times, S just after each). Pure numpy, ties handled as usual."""
    time, event = _arrays(time, event)
    ev_times = np.unique(time[event])
    if len(ev_times) == 0:
        return ev_times, np.ones(0)
    at_risk = len(time) - np.searchsorted(np.sort(time), ev_times, side="left")
    d = np.bincount(np.searchsorted(ev_times, time[event]), minlength=len(ev_times))
    return ev_times, np.cumprod(1.0 - d / at_risk)


def _step_eval(jump_times, values, t, left: bool = False) -> np.ndarray:
    """Evaluate a right-continuous step function (1 before the first jump) at t, or its left limit."""
    idx = np.searchsorted(jump_times, np.asarray(t, float), side="left" if left else "right")
    padded = np.concatenate([[1.0], values])
    return padded[idx]


def censoring_survival(time, event):
    """Callable ``G(t, left=False)``: Kaplan-Meier of the censoring distribution (censoring treated as the event).

    Fitted with lifelines' KaplanMeierFitter (the reference implementation), evaluated as a step function.
    """
    from lifelines import KaplanMeierFitter

    time, event = _arrays(time, event)
    kmf = KaplanMeierFitter().fit(time, ~event)
    sf = kmf.survival_function_.iloc[:, 0]
    jumps = sf.index.values.astype(float)
    vals = sf.values.astype(float)
    keep = jumps > 0
    jumps, vals = jumps[keep], vals[keep]

    def g(t, left: bool = False):
        return _step_eval(jumps, vals, t, left=left)

    return g


def _ipcw(time, event, train_time, train_event):
    if train_time is None:
        return censoring_survival(time, event)
    return censoring_survival(train_time, train_event)


# ----------------------------------------------------------------------------------------------------------------
# Discrimination
# ----------------------------------------------------------------------------------------------------------------

def harrell_c(time, event, risk) -> float:
    """Harrell's C-index via :func:`lifelines.utils.concordance_index` (which expects a survival-like score, so the
    negated risk is passed: the lifelines sign pitfall)."""
    from lifelines.utils import concordance_index

    time, event, risk = _arrays(time, event, risk)
    return float(concordance_index(time, -risk, event))


def concordance_matrix(r_i, r_j):
    """1 where ``r_i`` ranks above ``r_j`` (pairwise, rows i, columns j), 0.5 for ties, else 0."""
    return (r_i[:, None] > r_j[None, :]) + 0.5 * (r_i[:, None] == r_j[None, :])


def uno_c(time, event, risk, tau: float | None = None, train_time=None, train_event=None,
          g_min: float = 1e-3) -> float:
    """Uno's IPCW C-statistic truncated at ``tau`` (default: the largest time).

    ``sum_ij D_i G(T_i-)^-2 1(T_i < T_j, T_i < tau) [1(r_i > r_j) + 0.5 * 1(r_i = r_j)] /
    sum_ij D_i G(T_i-)^-2 1(T_i < T_j, T_i < tau)``. Without censoring (G = 1) this equals Harrell's C when event
    times are distinct.
    """
    time, event, risk = _arrays(time, event, risk)
    tau = float(np.max(time)) + 1.0 if tau is None else float(tau)
    g = _ipcw(time, event, train_time, train_event)
    cases = np.flatnonzero(event & (time < tau))
    if len(cases) == 0:
        return float("nan")
    w = 1.0 / np.maximum(g(time[cases], left=True), g_min) ** 2
    num = den = 0.0
    for start in range(0, len(cases), 512):
        c = cases[start:start + 512]
        comparable = time[c][:, None] < time[None, :]
        conc = concordance_matrix(risk[c], risk)
        num += float((w[start:start + 512, None] * comparable * conc).sum())
        den += float((w[start:start + 512, None] * comparable).sum())
    return num / den if den > 0 else float("nan")


def time_dependent_auc(time, event, risk, t, train_time=None, train_event=None, g_min: float = 1e-3):
    """Cumulative/dynamic AUC at time(s) ``t`` with IPCW (Uno 2007; Hung & Chiang 2010).

    Cases: event by t (T_i <= t, D_i = 1), weighted by 1/G(T_i-); controls: T_j > t. Returns a float for a scalar
    ``t`` and an array otherwise.
    """
    time, event, risk = _arrays(time, event, risk)
    g = _ipcw(time, event, train_time, train_event)
    ts = np.atleast_1d(np.asarray(t, float))
    out = []
    for tt in ts:
        cases = event & (time <= tt)
        controls = time > tt
        if not cases.any() or not controls.any():
            out.append(float("nan"))
            continue
        w = 1.0 / np.maximum(g(time[cases], left=True), g_min)
        conc = concordance_matrix(risk[cases], risk[controls])
        out.append(float((w[:, None] * conc).sum() / (w.sum() * controls.sum())))
    return out[0] if np.ndim(t) == 0 else np.asarray(out)


def achievable_share(model: float, best_score: float, oracle: float) -> float | None:
    """The model's share of the gain over the best established score that the data allow (issue 27):
    ``(C_model - C_best_score) / (C_oracle - C_best_score)``; 1 = as good as the oracle, 0 = no better than the
    score, negative = worse. None when the oracle does not beat the score (nothing to gain)."""
    gain = float(oracle) - float(best_score)
    if not np.isfinite(gain) or gain <= 1e-9:
        return None
    return (float(model) - float(best_score)) / gain


def binary_auc(y, score) -> float:
    """AUC of a binary outcome (Mann-Whitney, ties count 1/2)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, float)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(concordance_matrix(pos, neg).mean())


# ----------------------------------------------------------------------------------------------------------------
# Prediction error
# ----------------------------------------------------------------------------------------------------------------

def brier(time, event, surv_at_t, t, train_time=None, train_event=None, g_min: float = 1e-3) -> float:
    """IPCW Brier score at ``t`` (Graf 1999): mean of ``S_i(t)^2 / G(T_i-)`` over events by t and
    ``(1 - S_i(t))^2 / G(t)`` over patients still at risk after t (censored before t contribute 0)."""
    time, event, s = _arrays(time, event, surv_at_t)
    g = _ipcw(time, event, train_time, train_event)
    died = event & (time <= t)
    alive = time > t
    term = np.zeros_like(s)
    term[died] = s[died] ** 2 / np.maximum(g(time[died], left=True), g_min)
    term[alive] = (1.0 - s[alive]) ** 2 / max(float(g(t)), g_min)
    return float(term.mean())


def integrated_brier(time, event, surv, times, train_time=None, train_event=None, g_min: float = 1e-3) -> float:
    """Integrated Brier score over ``times`` (trapezoid rule, divided by ``times[-1] - times[0]``).

    ``surv`` is an array (n_patients, len(times)) of predicted survival probabilities.
    """
    surv = np.asarray(surv, float)
    times = np.asarray(times, float)
    if surv.shape != (len(np.asarray(time)), len(times)):
        raise ValueError(f"surv must have shape (n, len(times)) = ({len(time)}, {len(times)}), got {surv.shape}")
    if train_time is None:
        train_time, train_event = time, event
    scores = np.array([brier(time, event, surv[:, j], tt, train_time, train_event, g_min)
                       for j, tt in enumerate(times)])
    if len(times) == 1:
        return float(scores[0])
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


def km_null_survival(train_time, train_event, times, n: int) -> np.ndarray:
    """The Kaplan-Meier 'null model' prediction: the same KM curve (fitted on the training data) for all n."""
    jt, sv = km_curve(train_time, train_event)
    return np.tile(_step_eval(jt, sv, np.asarray(times, float)), (n, 1))


# ----------------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------------

def _km_at(time, event, t) -> float:
    jt, sv = km_curve(time, event)
    return float(_step_eval(jt, sv, t))


def pseudo_observations(time, event, t) -> np.ndarray:
    """Jackknife pseudo-observations of the event indicator F(t) = 1 - S_KM(t): ``n F(t) - (n - 1) F_{-i}(t)``."""
    time, event = _arrays(time, event)
    n = len(time)
    full = 1.0 - _km_at(time, event, t)
    mask = np.ones(n, bool)
    out = np.empty(n)
    for i in range(n):
        mask[i] = False
        out[i] = n * full - (n - 1) * (1.0 - _km_at(time[mask], event[mask], t))
        mask[i] = True
    return out


def lowess(x, y, frac: float = 0.75, grid: np.ndarray | None = None) -> np.ndarray:
    """Local-linear smoother with tricube weights over the ``frac`` nearest neighbours (no robustness iterations:
    pseudo-observations are legitimately outside [0, 1] and must not be down-weighted). Evaluated at ``grid``
    (default: at x)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    grid = x if grid is None else np.asarray(grid, float)
    n = len(x)
    k = max(int(np.ceil(frac * n)), min(n, 3))
    out = np.empty(len(grid))
    for g_idx, x0 in enumerate(grid):
        d = np.abs(x - x0)
        h = np.partition(d, k - 1)[k - 1]
        h = h if h > 0 else (d.max() if d.max() > 0 else 1.0)
        w = np.clip(1 - (d / (h * 1.0000001)) ** 3, 0, None) ** 3
        sw = w.sum()
        xm = (w * x).sum() / sw
        ym = (w * y).sum() / sw
        var = (w * (x - xm) ** 2).sum()
        slope = (w * (x - xm) * (y - ym)).sum() / var if var > 1e-14 else 0.0
        out[g_idx] = ym + slope * (x0 - xm)
    return out


def calibration_by_group(time, event, risk_at_t, t, n_groups: int = 5) -> dict[str, Any]:
    """Grouped calibration at ``t``: mean predicted event probability vs the Kaplan-Meier observed one in
    ``n_groups`` quantile groups of predicted risk (the points of a calibration plot)."""
    time, event, p = _arrays(time, event, risk_at_t)
    groups = [g for g in np.array_split(np.argsort(p, kind="stable"), n_groups) if len(g)]
    return {"horizon_months": float(t), "predicted": [float(p[g].mean()) for g in groups],
            "observed": [1.0 - _km_at(time[g], event[g], t) for g in groups], "n_per_group": [len(g) for g in groups]}


def binary_calibration(y, p, n_groups: int = 5, frac: float = 0.75) -> dict[str, Any]:
    """Calibration of predicted probabilities ``p`` of a binary outcome ``y``: Brier score, mean predicted vs
    observed rate, calibration slope (logistic regression of ``y`` on ``logit p``; 1 = ideal, < 1 = predictions too
    extreme), ICI (mean |LOWESS-smoothed observed - predicted|) and grouped points for a plot."""
    from ._linear import LogisticRegression

    y = np.asarray(y, float)
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p))
    slope = float("nan")
    if 0 < y.sum() < len(y) and np.ptp(logit) > 0:
        slope = float(LogisticRegression(l2=0.0).fit(logit[:, None], y).coef_[0])
    smooth = np.clip(lowess(p, y, frac=frac), 0.0, 1.0)
    groups = [g for g in np.array_split(np.argsort(p, kind="stable"), n_groups) if len(g)]
    return {"brier": float(np.mean((p - y) ** 2)), "mean_predicted": float(p.mean()), "observed_rate": float(y.mean()),
            "calibration_slope": slope, "ici": float(np.mean(np.abs(smooth - p))),
            "groups": {"predicted": [float(p[g].mean()) for g in groups],
                       "observed": [float(y[g].mean()) for g in groups], "n": [len(g) for g in groups]}}


def ici(time, event, risk_at_t, t, frac: float = 0.75) -> dict[str, float]:
    """Integrated calibration index at ``t`` for predicted event probabilities ``risk_at_t`` = 1 - S(t).

    Observed risk = LOWESS of the jackknife Kaplan-Meier pseudo-observations on the predicted risk (a pseudo-value
    approach to Austin 2020's smoothed calibration curve). Returns ``{"ici", "e50", "e90", "emax"}`` (mean, median,
    90th percentile and maximum of |observed - predicted|).
    """
    time, event, p = _arrays(time, event, risk_at_t)
    pseudo = pseudo_observations(time, event, t)
    if len(p) > 400:  # evaluate on a grid and interpolate: O(n * 200) instead of O(n^2)
        grid = np.quantile(p, np.linspace(0, 1, 200))
        grid = np.unique(grid)
        smooth = np.interp(p, grid, lowess(p, pseudo, frac, grid)) if len(grid) > 1 else np.full_like(p, pseudo.mean())
    else:
        smooth = lowess(p, pseudo, frac)
    err = np.abs(np.clip(smooth, 0, 1) - p)
    return {"ici": float(err.mean()), "e50": float(np.median(err)), "e90": float(np.quantile(err, 0.9)),
            "emax": float(err.max())}


# ----------------------------------------------------------------------------------------------------------------
# Decision curves and risk groups
# ----------------------------------------------------------------------------------------------------------------

def _thresholds(thresholds):
    return np.asarray(np.arange(0.01, 1.0, 0.01) if thresholds is None else thresholds, float)


def decision_curve(y, risk, thresholds=None) -> dict[str, list[float]]:
    """Net benefit of a binary-outcome model over thresholds: ``TP/n - FP/n * pt / (1 - pt)``, with the
    treat-all and treat-none (0) strategies."""
    y = np.asarray(y).astype(bool)
    r = np.asarray(risk, float)
    th = _thresholds(thresholds)
    n, prev = len(y), y.mean()
    model, treat_all = [], []
    for pt in th:
        pos = r >= pt
        odds = pt / (1 - pt)
        model.append(float((pos & y).sum() / n - (pos & ~y).sum() / n * odds))
        treat_all.append(float(prev - (1 - prev) * odds))
    return {"thresholds": th.tolist(), "net_benefit_model": model, "net_benefit_all": treat_all,
            "net_benefit_none": [0.0] * len(th)}


def decision_curve_survival(time, event, risk_at_t, t, thresholds=None) -> dict[str, list[float]]:
    """Net benefit at horizon ``t`` for censored data (Vickers 2008): among patients with predicted risk >= pt,
    the event probability by t is the Kaplan-Meier estimate in that group."""
    time, event, r = _arrays(time, event, risk_at_t)
    th = _thresholds(thresholds)
    n = len(time)
    f_all = 1.0 - _km_at(time, event, t)
    model, treat_all = [], []
    for pt in th:
        odds = pt / (1 - pt)
        pos = r >= pt
        p_pos = pos.mean()
        if p_pos == 0:
            model.append(0.0)
        else:
            f_pos = 1.0 - _km_at(time[pos], event[pos], t)
            model.append(float(f_pos * p_pos - (1 - f_pos) * p_pos * odds))
        treat_all.append(float(f_all - (1 - f_all) * odds))
    del n
    return {"thresholds": th.tolist(), "net_benefit_model": model, "net_benefit_all": treat_all,
            "net_benefit_none": [0.0] * len(th)}


def km_by_risk_group(time, event, risk, n_groups: int = 3, cutpoints=None, times=None) -> dict[str, Any]:
    """Kaplan-Meier curves per risk group (tertiles of ``risk`` by default, or given ``cutpoints``) and the
    multivariate log-rank test (lifelines). Groups are ordered from lowest to highest risk."""
    from lifelines.statistics import multivariate_logrank_test

    time, event, risk = _arrays(time, event, risk)
    if cutpoints is None:
        cutpoints = np.quantile(risk, np.linspace(0, 1, n_groups + 1)[1:-1])
    cutpoints = np.asarray(cutpoints, float)
    group = np.searchsorted(cutpoints, risk, side="right")
    times = np.linspace(0, float(time.max()), 50) if times is None else np.asarray(times, float)
    groups = []
    for gi in range(len(cutpoints) + 1):
        m = group == gi
        if not m.any():
            continue
        jt, sv = km_curve(time[m], event[m])
        s = _step_eval(jt, sv, times)
        below = np.flatnonzero(sv <= 0.5)
        groups.append({"group": gi, "n": int(m.sum()), "events": int(event[m].sum()), "times": times.tolist(),
                       "survival": s.tolist(), "median": float(jt[below[0]]) if len(below) else None})
    p = float("nan")
    if len(groups) > 1:
        p = float(multivariate_logrank_test(time, group, event).p_value)
    return {"cutpoints": cutpoints.tolist(), "groups": groups, "logrank_p": p}
