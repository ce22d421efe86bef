"""Survival on small cohorts (issue 27 item 1): the score-anchored Cox model, model selection inside
`hcctwin survival cv` (scores, anchored models and the engine compared on inner folds, one-standard-error rule),
bootstrap intervals and calibration slopes, a site's own score columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from HCCTwinLib.errors import InputError
from HCCTwinLib.survival._linear import ridge_cox
from HCCTwinLib.survival.cv import (
    AnchoredCox,
    calibration_slope,
    cross_validate,
    paired_c_difference_se,
    score_table,
)
from HCCTwinLib.survival.metrics import harrell_c


def _table(n=160, seed=0, diameter_effect=0.03, clip_effect=0.5):
    """A clinical table whose outcome depends on a site score `clip` and (optionally strongly) on tumour size."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "patient_id": [f"P{i:03d}" for i in range(n)], "age_years": rng.integers(40, 80, n), "sex": "M",
        "ecog": rng.integers(0, 2, n), "afp_ng_ml": np.exp(rng.normal(4, 2, n)), "n_tumors": rng.integers(1, 4, n),
        "max_diameter_mm": rng.uniform(10, 150, n), "pvtt": rng.integers(0, 2, n), "extrahepatic_spread": 0,
        "clip": rng.integers(0, 5, n), "regimen": "tace"})
    lp = clip_effect * df["clip"] + diameter_effect * df["max_diameter_mm"]
    t = rng.exponential(20 * np.exp(-(lp - lp.mean())))
    c = rng.uniform(5, 60, n)
    df["os_months"], df["os_event"] = np.minimum(t, c), (t <= c).astype(int)
    return df


def test_ridge_cox_matches_lifelines_and_a_large_penalty_pins_a_coefficient():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    t = rng.exponential(np.exp(-(0.9 * x[:, 0] - 0.4 * x[:, 1])))
    e = (rng.random(300) < 0.8).astype(float)
    beta = ridge_cox(x, t, e, 1e-9)
    ref = CoxPHFitter().fit(pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "T": t, "E": e}), "T", "E").params_.values
    assert beta == pytest.approx(ref, abs=2e-3)  # no ties: Breslow = Efron
    assert abs(ridge_cox(x, t, e, np.array([1e-9, 1e7]))[1]) < 1e-4


def test_anchored_cox_nests_its_score_and_departs_where_the_data_say():
    df = _table(diameter_effect=0.0)
    df["_T"], df["_E"], df["_R"] = df["os_months"], df["os_event"].astype(float), "all"
    df["score"] = df["clip"].astype(float)
    pinned = AnchoredCox("score", ["max_diameter_mm", "age_years"], 1e7).fit(df).predict_risk(df)
    # the same ranking up to ties (the pinned covariates, ~1e-6, only break ties of the integer score)
    assert harrell_c(df["_T"], df["_E"], pinned) == pytest.approx(harrell_c(df["_T"], df["_E"], df["score"]), abs=0.005)
    strong = _table(diameter_effect=0.04)
    strong["_T"], strong["_E"], strong["_R"] = strong["os_months"], strong["os_event"].astype(float), "all"
    strong["score"] = strong["clip"].astype(float)
    free = AnchoredCox("score", ["max_diameter_mm"], 2.0).fit(strong)
    assert free.beta_[1] > 0.3  # the size effect the score misses is picked up
    assert harrell_c(strong["_T"], strong["_E"], free.predict_risk(strong)) > harrell_c(
        strong["_T"], strong["_E"], strong["score"]) + 0.05
    lp = free.predict_risk(strong)
    assert 0.7 < calibration_slope(strong["_T"], strong["_E"], lp) < 1.3  # in-sample: about 1


def test_selection_keeps_the_score_when_nothing_beats_it_and_takes_the_richer_model_when_it_clearly_does():
    weak = cross_validate(_table(diameter_effect=0.0, seed=3), extra_scores=["clip"], select_engine=False,
                          n_bootstrap=20)
    assert weak["best_baseline"] == "clip"
    assert sum(c == "score:clip" for c in weak["models"]["selected"]["chosen_per_fold"]) >= 4
    assert "HAP left out" in " ".join(weak["notes"])  # no albumin / bilirubin: HAP is not HAP
    strong = cross_validate(_table(diameter_effect=0.04, seed=4, n=300), extra_scores=["clip"], select_engine=True,
                            n_bootstrap=20)
    chosen = strong["models"]["selected"]["chosen_per_fold"]
    assert sum(not c.startswith("score:") for c in chosen) >= 4, chosen
    assert strong["models"]["selected"]["harrell_c"] > strong["models"][strong["best_baseline"]]["harrell_c"] + 0.03
    assert 0.5 < strong["models"]["anchored"]["calibration_slope_oof"] < 1.5
    lo, hi = strong["models"]["selected"]["harrell_c_pooled_oof_ci95"]
    assert lo < hi


def test_site_score_columns_must_be_numbers_for_every_patient():
    df = _table()
    with pytest.raises(InputError, match="not in the table"):
        cross_validate(df, extra_scores=["okuda"], select_engine=False, n_bootstrap=0)
    df["clip"] = df["clip"].astype(object)
    df.loc[3, "clip"] = "II"
    with pytest.raises(InputError, match="not numbers"):
        cross_validate(df, extra_scores=["clip"], select_engine=False, n_bootstrap=0)


def test_scores_the_data_cannot_tell_apart_are_averaged():
    """Three site scores, each a noisy reading of the same prognosis: their equal-weight mean (standardised, no
    fitting) is a candidate, reported beside them (not as an established score), and chosen when the inner folds
    cannot separate the scores; it ranks patients better than any one of them."""
    df = _table(n=200, seed=5, diameter_effect=0.0, clip_effect=0.0)
    rng = np.random.default_rng(5)
    truth = rng.normal(size=len(df))
    t = rng.exponential(20 * np.exp(-truth))
    c = rng.uniform(5, 60, len(df))
    df["os_months"], df["os_event"] = np.minimum(t, c), (t <= c).astype(int)
    for name in ("s1", "s2", "s3"):
        df[name] = np.round(truth + rng.normal(scale=1.2, size=len(df)), 1)
    res = cross_validate(df, extra_scores=["s1", "s2", "s3"], select_engine=False, n_bootstrap=0)
    models = res["models"]
    mean = models["mean of scores"]
    assert mean["kind"] == "mean of the established scores" and res["best_baseline"] in ("s1", "s2", "s3")
    assert mean["harrell_c"] > max(models[s]["harrell_c"] for s in ("s1", "s2", "s3"))
    chosen = models["selected"]["chosen_per_fold"]
    assert sum(c == "score:mean of scores" for c in chosen) >= 4, chosen


def test_paired_c_difference_se_is_small_for_two_readings_of_one_ranking_and_zero_for_the_same_one():
    """The standard error that decides whether a richer candidate replaces a simpler one is that of their paired
    difference: two correlated rankings differ by far less than either C varies over resamples, and a ranking
    compared with itself not at all."""
    rng = np.random.default_rng(0)
    n = 120
    truth = rng.normal(size=n)
    t = rng.exponential(20 * np.exp(-truth))
    c = rng.uniform(5, 60, n)
    time_, event = np.minimum(t, c), (t <= c).astype(float)
    a = truth + rng.normal(scale=0.5, size=n)
    close = a + rng.normal(scale=0.1, size=n)
    unrelated = rng.normal(size=n)
    assert paired_c_difference_se(time_, event, [a], [a]) == 0.0
    se_close = paired_c_difference_se(time_, event, [a], [close])
    se_far = paired_c_difference_se(time_, event, [a], [unrelated])
    assert 0 < se_close < 0.5 * se_far
    assert 0.03 < se_far < 0.15  # about sqrt(2) x the SE of one C on 120 patients
    # several repeats are averaged: two copies of a ranking behave like one
    assert paired_c_difference_se(time_, event, [a, a], [close], seed=1) == pytest.approx(
        paired_c_difference_se(time_, event, [a], [close], seed=1))


def test_score_table_holds_the_scores_cross_validation_compares_and_no_outcome_shapes_them():
    df = _table(n=120, seed=6)
    df["okuda"] = np.clip(df["clip"] // 2 + 1, 1, 3)
    df.loc[[3, 7], "os_months"] = np.nan  # no outcome: not in the table
    table = score_table(df, extra_scores=["clip", "okuda"])
    assert len(table) == 118 and list(table.columns[:2]) == ["time", "event"]
    assert {"clip", "okuda", "six-and-twelve", "mean of scores"} <= set(table.columns)
    assert "HAP" not in table.columns  # no albumin / bilirubin: not that score
    assert table["clip"].tolist() == df["clip"].drop(index=[3, 7]).astype(float).tolist()
    singles = [c for c in table.columns[2:] if c != "mean of scores"]
    z = (table[singles] - table[singles].mean()) / table[singles].std()
    assert np.allclose(table["mean of scores"], z.mean(axis=1))
    shuffled = df.copy()  # other outcomes for the same patients (the same two without one)
    keep = ~df["os_months"].isna()
    shuffled.loc[keep, "os_months"] = df.loc[keep, "os_months"].sample(frac=1.0, random_state=0).to_numpy()
    shuffled["os_event"] = 1 - df["os_event"]
    assert np.allclose(score_table(shuffled, extra_scores=["clip", "okuda"])[singles + ["mean of scores"]],
                       table[singles + ["mean of scores"]])
    with pytest.raises(InputError, match="endpoint"):
        score_table(df, endpoint="ttp")
