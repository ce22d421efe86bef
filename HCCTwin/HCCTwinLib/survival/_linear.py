"""Small penalised linear models in numpy/scipy (scikit-learn is not a dependency of HCCTwin).

- :class:`SoftmaxRegression`: multinomial logistic regression with an L2 penalty (the intercepts are not penalised),
  fitted with L-BFGS on standardised covariates. Used for the propensity of each regimen.
- :class:`LogisticRegression`: the binary special case with named coefficients on the original scale.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logsumexp


class _Standardizer:
    def fit(self, x: np.ndarray) -> _Standardizer:
        self.mean_ = np.nanmean(x, axis=0)
        sd = np.nanstd(x, axis=0)
        self.sd_ = np.where(sd > 1e-12, sd, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.sd_


class SoftmaxRegression:
    """Multinomial logistic regression, L2 penalty ``l2 * ||W||^2 / 2`` on the standardised slopes."""

    def __init__(self, l2: float = 1.0, max_iter: int = 500):
        self.l2, self.max_iter = float(l2), int(max_iter)

    def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> SoftmaxRegression:
        x = np.asarray(x, float)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        k, (n, p) = len(self.classes_), x.shape
        self._scaler = _Standardizer().fit(x)
        z = self._scaler.transform(x)
        onehot = (y[:, None] == self.classes_[None, :]).astype(float)
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
        wsum = w.sum()

        def loss(theta):
            b, W = theta[:k], theta[k:].reshape(p, k)
            eta = z @ W + b
            logp = eta - logsumexp(eta, axis=1, keepdims=True)
            nll = -(w[:, None] * onehot * logp).sum() / wsum + 0.5 * self.l2 * (W ** 2).sum() / wsum
            resid = w[:, None] * (np.exp(logp) - onehot) / wsum
            grad_w = z.T @ resid + self.l2 * W / wsum
            return nll, np.concatenate([resid.sum(0), grad_w.ravel()])

        res = minimize(loss, np.zeros(k + p * k), jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter})
        self.intercept_, self.coef_ = res.x[:k], res.x[k:].reshape(p, k)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        eta = self._scaler.transform(np.asarray(x, float)) @ self.coef_ + self.intercept_
        return np.exp(eta - logsumexp(eta, axis=1, keepdims=True))


class LogisticRegression:
    """Binary logistic regression with an L2 penalty on the standardised slopes (intercept unpenalised).

    After :meth:`fit`, ``coef_`` and ``intercept_`` are on the **original** feature scale, so
    ``logit p = intercept_ + x @ coef_``.
    """

    def __init__(self, l2: float = 1.0, max_iter: int = 500):
        self.l2, self.max_iter = float(l2), int(max_iter)

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        n, p = x.shape
        scaler = _Standardizer().fit(x)
        z = scaler.transform(x)

        def loss(theta):
            eta = theta[0] + z @ theta[1:]
            nll = (np.logaddexp(0.0, eta) - y * eta).sum() / n + 0.5 * self.l2 * (theta[1:] ** 2).sum() / n
            r = (expit(eta) - y) / n
            return nll, np.concatenate([[r.sum()], z.T @ r + self.l2 * theta[1:] / n])

        res = minimize(loss, np.zeros(p + 1), jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter})
        beta = res.x[1:] / scaler.sd_
        self.coef_ = beta
        self.intercept_ = float(res.x[0] - (scaler.mean_ * beta).sum())
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self.intercept_ + np.asarray(x, float) @ self.coef_

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of the positive class (1-D)."""
        return expit(self.decision_function(x))


def ridge_cox(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalty: np.ndarray | float,
              max_iter: int = 50, tol: float = 1e-8) -> np.ndarray:
    """Cox proportional-hazards coefficients (Breslow ties) maximising the partial log-likelihood minus
    ``sum(penalty_j * beta_j^2) / 2``; Newton-Raphson with step halving. ``penalty`` per column (a large value pins
    that coefficient at 0, a tiny one leaves it free). Small and dense: n in the thousands, a dozen columns; a few
    milliseconds, deterministic (no optimiser state)."""
    x = np.asarray(x, float)
    n, p = x.shape
    pen = np.broadcast_to(np.asarray(penalty, float), (p,))
    order = np.argsort(-np.asarray(time, float), kind="stable")
    xs, ts, es = x[order], np.asarray(time, float)[order], np.asarray(event, float)[order] > 0
    # index of the last row of each row's tie group (risk set = every row up to it, times >= t)
    last = np.searchsorted(-ts, -ts, side="right") - 1
    ev = np.flatnonzero(es)
    beta = np.zeros(p)

    def objective(b):
        eta = xs @ b
        m = eta.max()
        w = np.exp(eta - m)
        s0 = np.cumsum(w)[last[ev]]
        return float(np.sum(eta[ev] - m - np.log(s0)) - 0.5 * np.sum(pen * b * b))

    value = objective(beta)
    for _ in range(max_iter):
        eta = xs @ beta
        w = np.exp(eta - eta.max())
        s0 = np.cumsum(w)
        s1 = np.cumsum(w[:, None] * xs, axis=0)
        s2 = np.cumsum(w[:, None, None] * xs[:, :, None] * xs[:, None, :], axis=0)
        k = last[ev]
        mean = s1[k] / s0[k][:, None]
        grad = np.sum(xs[ev] - mean, axis=0) - pen * beta
        hess = -(np.sum(s2[k] / s0[k][:, None, None], axis=0) - mean.T @ mean) - np.diag(pen)
        step = np.linalg.solve(hess - 1e-9 * np.eye(p), -grad)
        t = 1.0
        while t > 1e-6:
            candidate = beta + t * step
            new = objective(candidate)
            if new >= value - 1e-12:
                break
            t /= 2
        beta, improvement = candidate, new - value
        value = new
        if abs(improvement) < tol:
            break
    return beta
