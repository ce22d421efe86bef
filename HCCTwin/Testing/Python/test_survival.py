"""Tests of the survival / decision engine (HCCTwinLib.survival) on synthetic Weibull data with known regimen x
covariate effects, confounded assignment and censoring. Small bootstrap counts keep them fast."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from HCCTwinLib.cases import Geometry
from HCCTwinLib.errors import InputError
from HCCTwinLib.survival import (
    SCORE_BASELINES,
    LandmarkModel,
    MetastasisModel,
    PerRegimenSurvival,
    brier,
    clinical_features,
    cross_validate,
    harrell_c,
    ici,
    imaging_features,
    integrated_brier,
    radiomics_features,
    response_features,
    rmst_step,
    run_cv_command,
    time_dependent_auc,
    uno_c,
)
from HCCTwinLib.survival import metrics as M
from HCCTwinLib.survival.features import WEEKS_PER_MONTH
from HCCTwinLib.survival.models import _CoxFit

from conftest import load_benchmark

REGS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki")
K, SCALE = 1.3, 26.0
COVS = ["max_diameter_cm", "pvtt", "extrahepatic_spread", "ecog", "log_afp"]


def true_lp(df: pd.DataFrame, regimen: str) -> np.ndarray:
    """Known truth: TACE best without PVTT, HAIC best with PVTT, PD-1+TKI in between / worse."""
    z = (df["max_diameter_mm"] - 60) / 30
    afp = np.log10(1 + df["afp_ng_ml"]) - 2
    pv = df["pvtt"]
    eff = {"tace_pd1_len": 1.2 * pv, "haic_pd1_len": 0.5 - 0.5 * pv, "pd1_tki": 0.6 + 0.2 * pv}[regimen]
    return (0.5 * z + 0.6 * df["extrahepatic_spread"] + 0.3 * df["ecog"] + 0.3 * afp + eff).to_numpy(float)


def true_survival(lp, times):
    return np.exp(-np.outer(np.exp(lp), (np.asarray(times) / SCALE) ** K))


def true_rmst(lp, tau=24.0):
    t = np.linspace(0, tau, 2001)
    return np.trapezoid(true_survival(lp, t), t, axis=1)


def make_cohort(n=300, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "patient_id": [f"P{i:04d}" for i in range(n)],
        "age_years": rng.normal(60, 10, n).round().clip(25, 90),
        "sex": rng.choice(["M", "F"], n, p=[0.8, 0.2]),
        "ecog": rng.choice([0, 1], n, p=[0.7, 0.3]),
        "albumin_g_l": rng.normal(38, 5, n).clip(22, 55).round(1),
        "bilirubin_umol_l": np.exp(rng.normal(np.log(15), 0.4, n)).clip(5, 80).round(1),
        "inr": rng.normal(1.1, 0.1, n).clip(0.8, 1.9).round(2),
        "ascites": rng.choice(["none", "mild"], n, p=[0.9, 0.1]),
        "encephalopathy": "none",
        "afp_ng_ml": np.exp(rng.normal(np.log(100), 2.0, n)).clip(1, 1e5).round(1),
        "etiology": rng.choice(["HBV", "HCV", "alcohol", "other"], n),
        "n_tumors": rng.integers(1, 6, n),
        "max_diameter_mm": rng.uniform(15, 140, n).round(),
        "pvtt": rng.binomial(1, 0.3, n),
        "extrahepatic_spread": rng.binomial(1, 0.1, n),
        "resectable": rng.binomial(1, 0.2, n),
    })
    # confounded assignment: HAIC more likely with PVTT, PD-1+TKI with spread / ECOG 1
    eta = np.column_stack([np.zeros(n), -0.5 + 1.5 * df["pvtt"],
                           -0.8 + 1.5 * df["extrahepatic_spread"] + 0.8 * df["ecog"]])
    p = np.exp(eta) / np.exp(eta).sum(1, keepdims=True)
    df["regimen"] = [REGS[rng.choice(3, p=pi)] for pi in p]
    lps = {r: true_lp(df, r) for r in REGS}
    lp = np.array([lps[r][i] for i, r in enumerate(df["regimen"])])
    t_os = SCALE * (-np.log(rng.uniform(size=n)) / np.exp(lp)) ** (1 / K)
    cens = rng.uniform(12, 48, n)
    df["os_months"] = np.minimum(t_os, cens).round(3)
    df["os_event"] = (t_os <= cens).astype(int)
    t_pfs = t_os * rng.uniform(0.3, 0.8, n)
    df["pfs_months"] = np.minimum(t_pfs, cens).round(3)
    df["pfs_event"] = (t_pfs <= cens).astype(int)
    met_lp = (-2.5 + 1.5 * (df["max_diameter_mm"] - 60) / 30 + 0.6 * (df["n_tumors"] - 2)
              + 0.6 * (np.log10(1 + df["afp_ng_ml"]) - 2))
    met = rng.uniform(size=n) < 1 / (1 + np.exp(-met_lp))
    t_met = np.where(met, rng.uniform(1, 23, n), 60.0)
    df["metastasis_months"] = np.minimum(np.minimum(t_met, cens), t_os).round(3)
    df["metastasis_event"] = (met & (t_met <= np.minimum(cens, t_os))).astype(int)
    df["best_response_mrecist"] = rng.choice(["CR", "PR", "SD", "PD"], n)
    # a response feature at 8 weeks that carries prognostic information beyond baseline
    df["rel_change_viable_volume_w08"] = -0.3 + 0.4 * (lp - lp.mean()) + rng.normal(0, 0.1, n)
    truth = pd.DataFrame({r: true_rmst(lps[r]) for r in REGS}, index=df.index)
    truth["true_lp"] = lp
    return df, truth


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(360, seed=3)


@pytest.fixture(scope="module")
def data(cohort):
    df, _ = cohort
    feats, _ = clinical_features(df)
    return feats.join(df[["patient_id", "regimen", "os_months", "os_event", "pfs_months", "pfs_event",
                          "metastasis_months", "metastasis_event", "rel_change_viable_volume_w08"]])


@pytest.fixture(scope="module")
def model(data):
    return PerRegimenSurvival(penalizers=(0.02, 0.2), cv_folds=2, n_bootstrap=10, seed=0).fit(
        data, "os_months", "os_event", "regimen", COVS)


# ---------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------

T4, E4, R4 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 1]), np.array([4.0, 3.0, 1.0, 2.0])


def test_harrell_matches_lifelines_sign_and_hand_example():
    from lifelines.utils import concordance_index

    assert harrell_c(T4, E4, R4) == pytest.approx(0.75)  # pairs (0,1),(0,2),(0,3) concordant, (2,3) not
    rng = np.random.default_rng(0)
    t, e, r = rng.exponential(10, 80), rng.binomial(1, 0.7, 80), rng.normal(size=80)
    assert harrell_c(t, e, r) == pytest.approx(concordance_index(t, -r, e))
    assert harrell_c(t, e, -r) == pytest.approx(1 - harrell_c(t, e, r))


def test_uno_c_hand_example_and_equals_harrell_without_censoring():
    # G drops to 2/3 at t=2: case T=3 weighs 1/(2/3)^2 = 2.25 -> (3*1 + 0) / (3*1 + 1*2.25)
    assert uno_c(T4, E4, R4) == pytest.approx(3 / 5.25)
    rng = np.random.default_rng(1)
    t, r = rng.permutation(np.arange(1.0, 61.0)), rng.normal(size=60)
    e = np.ones(60, int)
    assert uno_c(t, e, r) == pytest.approx(harrell_c(t, e, r))


def test_time_dependent_auc_and_brier_hand_examples():
    assert time_dependent_auc(T4, E4, R4, 2.5) == pytest.approx(1.0)
    assert time_dependent_auc(T4, E4, R4, 3.5) == pytest.approx(1 / 2.5)  # cases w 1 and 1.5, one concordant
    s = np.array([0.2, 0.5, 0.7, 0.9])
    assert brier(T4, E4, s, 2.5) == pytest.approx((0.04 + 0 + 0.09 * 1.5 + 0.01 * 1.5) / 4)


def test_ibs_of_true_model_beats_km_null_and_ici(cohort):
    df, truth = cohort
    t, e, lp = df["os_months"].to_numpy(), df["os_event"].to_numpy(), truth["true_lp"].to_numpy()
    grid = np.linspace(1, 30, 30)
    ibs_true = integrated_brier(t, e, true_survival(lp, grid), grid)
    ibs_null = integrated_brier(t, e, M.km_null_survival(t, e, grid, len(t)), grid)
    assert ibs_true < ibs_null
    risk12 = 1 - true_survival(lp, [12.0])[:, 0]
    good = ici(t, e, risk12, 12.0)["ici"]
    bad = ici(t, e, np.clip(risk12 * 0.4, 0, 1), 12.0)["ici"]
    assert good < 0.06 and bad > good + 0.05


def test_decision_curve_and_risk_groups(cohort):
    df, truth = cohort
    t, e, lp = df["os_months"].to_numpy(), df["os_event"].to_numpy(), truth["true_lp"].to_numpy()
    y = np.array([1, 1, 0, 0])
    dc = M.decision_curve(y, np.array([0.9, 0.6, 0.4, 0.1]), [0.5])
    assert dc["net_benefit_model"][0] == pytest.approx(0.5)  # TP 2/4, FP 0
    assert dc["net_benefit_all"][0] == pytest.approx(0.5 - 0.5)
    dcs = M.decision_curve_survival(t, e, 1 - true_survival(lp, [12.0])[:, 0], 12.0, [0.2, 0.4])
    assert dcs["net_benefit_model"][0] >= dcs["net_benefit_all"][0] - 1e-9
    groups = M.km_by_risk_group(t, e, lp)
    assert len(groups["groups"]) == 3 and groups["logrank_p"] < 0.01
    s24 = [g["survival"][-1] for g in groups["groups"]]
    assert s24[0] > s24[-1]  # low-risk group survives longer


def test_rmst_of_exponential_matches_formula():
    lam, tau = 0.05, 24.0
    jt = np.linspace(0.005, 40, 8000)
    fit = _CoxFit(beta=np.zeros(1), offset=0.0, jump_times=jt, cumhaz=lam * jt)
    expected = (1 - np.exp(-lam * tau)) / lam
    assert fit.rmst(np.zeros((1, 1)), tau)[0] == pytest.approx(expected, rel=2e-3)
    assert rmst_step(jt, np.exp(-lam * jt), tau) == pytest.approx(expected, rel=2e-3)
    assert rmst_step([1.0, 2.0], [0.5, 0.0], 3.0) == pytest.approx(1.0 + 0.5)


# ---------------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------------

def test_clinical_features_imputation_report_and_unknown_columns(cohort):
    df = cohort[0].head(40).drop(columns=["rel_change_viable_volume_w08"])
    df.loc[df.index[:3], "afp_ng_ml"] = np.nan
    df.loc[df.index[5], "albumin_g_l"] = None
    df.loc[df.index[6], "ascites"] = "unknown-word"
    df["scanner_vendor"] = "X"
    df["split"], df["reader1_mrecist"], df["reader2_mrecist_w16"] = "test", "PR", "SD"  # study bookkeeping: known
    feats, notes = clinical_features(df)
    assert feats.attrs["imputed"]["afp_ng_ml"] == 3 and feats.attrs["imputed"]["albumin_g_l"] == 1
    assert feats.attrs["imputed"]["ascites"] == 1
    assert any("afp_ng_ml" in n and "median" in n for n in notes)
    assert any("scanner_vendor" in n and "ignored" in n for n in notes)
    assert feats.attrs["ignored_columns"] == ["scanner_vendor"]
    assert "scanner_vendor" not in feats.columns and not feats.isna().any().any()
    for col in SCORE_BASELINES.values():
        assert col in feats.columns
    # a known row: HAP points by hand
    r = df.iloc[10]
    hap = int(r.albumin_g_l < 36) + int(r.bilirubin_umol_l > 17) + int(r.afp_ng_ml > 400) + int(r.max_diameter_mm > 70)
    assert feats.iloc[10]["hap_points"] == hap
    assert feats.iloc[10]["log_afp"] == pytest.approx(np.log10(1 + r.afp_ng_ml))


def _sphere(shape, center, radius):
    k, j, i = np.indices(shape)
    return ((k - center[0]) ** 2 + (j - center[1]) ** 2 + (i - center[2]) ** 2) <= radius ** 2


def test_imaging_features_volumes_count_diameter_pvtt():
    shape = (30, 40, 40)
    g = Geometry(shape, spacing=(1.0, 1.0, 2.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    labels = np.zeros(shape, np.uint8)
    labels[2:28, 2:38, 2:38] = 1
    a = _sphere(shape, (10, 12, 12), 4)
    labels[a] = 2
    labels[_sphere(shape, (10, 12, 12), 2)] = 3
    labels[_sphere(shape, (20, 28, 28), 3)] = 2
    labels[24:26, 5:7, 30:33] = 4
    art = np.where(labels == 2, 150.0, 75.0)
    f = imaging_features(labels, g, arterial=art)
    assert f["tumor_count"] == 2
    assert f["viable_volume_ml"] + f["necrotic_volume_ml"] == pytest.approx(f["tumor_volume_ml"])
    assert f["necrotic_volume_ml"] == pytest.approx((labels == 3).sum() * 2 / 1000)
    assert f["pvtt_present"] == 1 and f["pvtt_volume_ml"] == pytest.approx(12 * 2 / 1000)
    # sphere radius 4 voxels: 9 voxels across in-plane (1 mm), 9 slices x 2 mm = 18 mm along k
    assert 17.0 <= f["largest_diameter_mm"] <= 19.5
    assert f["arterial_enhancement_ratio"] == pytest.approx(2.0)
    assert 0 < f["tumor_liver_ratio"] < 1


def test_radiomics_features_sphere_vs_ellipsoid_and_constant_texture():
    shape = (24, 24, 40)
    g = Geometry(shape)
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, shape)
    sph = _sphere(shape, (12, 12, 20), 6)
    k, j, i = np.indices(shape)
    ell = ((k - 12) / 4) ** 2 + ((j - 12) / 4) ** 2 + ((i - 20) / 14) ** 2 <= 1
    fs, fe = radiomics_features(img, sph, g), radiomics_features(img, ell, g)
    x = img[sph]
    assert fs["fo_mean"] == pytest.approx(x.mean()) and fs["fo_sd"] == pytest.approx(x.std())
    assert fs["fo_median"] == pytest.approx(np.median(x)) and abs(fs["fo_kurtosis"] - 3) < 0.6
    assert 0.5 < fs["shape_sphericity"] <= 1 and fe["shape_sphericity"] < fs["shape_sphericity"]
    assert fs["shape_elongation"] > 0.9 and fe["shape_elongation"] < 0.5
    assert fs["shape_volume_ml"] == pytest.approx(sph.sum() / 1000)
    cube = np.zeros(shape, bool)
    cube[5:8, 5:8, 5:8] = True
    assert radiomics_features(img, cube, g)["shape_surface_mm2"] == pytest.approx(54.0)
    const = radiomics_features(np.full(shape, 50.0), sph, g)
    assert const["glcm_contrast"] == 0 and const["glcm_energy"] == pytest.approx(1.0)
    assert const["glcm_homogeneity"] == pytest.approx(1.0)
    assert 0 <= fs["glcm_homogeneity"] <= 1 and -1 <= fs["glcm_correlation"] <= 1 and fs["glcm_contrast"] > 0


def test_response_features():
    readings = {0: {"viable_volume_ml": 100.0, "sum_viable_mm": 80.0},
                "w08": {"viable_volume_ml": 50.0, "sum_viable_mm": 52.0, "category_mrecist": "PR"},
                "w16": {"viable_volume_ml": 130.0, "sum_viable_mm": 100.0, "category_mrecist": "PD"}}
    f = response_features(readings)
    assert f["rel_change_viable_volume_w08"] == pytest.approx(-0.5)
    assert f["rel_change_sum_viable_w08"] == pytest.approx(-0.35)
    assert f["mrecist_w08"] == 1 and f["responder_w08"] == 1 and f["progression"] == 1
    f8 = response_features(readings, up_to_week=8)
    assert np.isnan(f8["mrecist_w16"]) and f8["progression"] == 0 and f8["best_mrecist"] == 1


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------

def test_per_regimen_model_recovers_effect_directions(model, data):
    base = data[COVS].median().to_dict()
    pv0 = pd.DataFrame([{**base, "pvtt": 0}])
    pv1 = pd.DataFrame([{**base, "pvtt": 1}])
    big = pd.DataFrame([{**base, "pvtt": 0, "max_diameter_cm": base["max_diameter_cm"] + 3}])
    pvtt_loghr = {r: float(model.predict_risk(pv1, r)[0] - model.predict_risk(pv0, r)[0]) for r in REGS}
    # truth: log-HR of PVTT +1.2 under TACE, +0.2 under PD-1+TKI, -0.5 under HAIC (shrunk by the penalty)
    assert pvtt_loghr["tace_pd1_len"] > pvtt_loghr["pd1_tki"] > pvtt_loghr["haic_pd1_len"]
    assert pvtt_loghr["tace_pd1_len"] > 0.3
    for r in REGS:  # larger tumours are worse under every regimen
        assert model.predict_risk(big, r)[0] > model.predict_risk(pv0, r)[0]
    # without PVTT, PD-1+TKI is worse than TACE (truth log-HR +0.6)
    assert model.predict_risk(pv0, "pd1_tki")[0] > model.predict_risk(pv0, "tace_pd1_len")[0]
    coef = model.coefficients()
    assert len(coef) == len(COVS) + 2 + 2 * len(COVS) and (coef["se_robust"] > 0).all()
    assert model.penalizer_ in (0.02, 0.2) and len(model.boot_) == 10
    assert np.all(model.weights_ > 0)


def test_curves_monotone_bands_ordered_and_summaries(model, data):
    row = data.iloc[0]
    curves = model.predict_curves(row, times=np.linspace(0, 36, 73))
    assert set(curves) == set(REGS)
    for c in curves.values():
        s, lo, hi = (np.asarray(c[k]) for k in ("survival", "lower", "upper"))
        assert s[0] == pytest.approx(1.0) and np.all(np.diff(s) <= 1e-12)
        assert np.all(lo <= s + 1e-12) and np.all(s <= hi + 1e-12)
        assert c["rmst24_ci"][0] <= c["rmst24"] <= c["rmst24_ci"][1] and 0 < c["rmst24"] <= 24
        assert c["s24"] <= c["s12"]
        assert c["median"] is None or 0 < c["median"] <= 36
        json.dumps(c)  # JSON-ready
    d = model.rmst_difference(row, "tace_pd1_len", "haic_pd1_len")
    assert d["lower"] <= d["estimate"] <= d["upper"]
    assert d["estimate"] == pytest.approx(curves["tace_pd1_len"]["rmst24"] - curves["haic_pd1_len"]["rmst24"])


def test_recommendation_picks_truly_better_regimen_in_clear_cut_cases(model, data):
    base = data[COVS].median()
    no_pvtt = {**base.to_dict(), "pvtt": 0, "extrahepatic_spread": 0, "ecog": 0}
    with_pvtt = {**no_pvtt, "pvtt": 1}
    rec0 = model.recommend(no_pvtt)
    rec1 = model.recommend(with_pvtt)
    assert sum(rec0.values()) == pytest.approx(1.0)
    assert max(rec0, key=rec0.get) == "tace_pd1_len" and rec0["tace_pd1_len"] >= 0.7
    assert max(rec1, key=rec1.get) == "haic_pd1_len" and rec1["haic_pd1_len"] >= 0.7
    two = model.recommend(with_pvtt, ["tace_pd1_len", "pd1_tki"])
    assert set(two) == {"tace_pd1_len", "pd1_tki"}


def test_c_index_of_model_close_to_oracle(model, data, cohort):
    _, truth = cohort
    risk = model.predict_risk(data)
    c_model = harrell_c(data["os_months"], data["os_event"], risk)
    c_oracle = harrell_c(data["os_months"], data["os_event"], truth["true_lp"])
    assert c_model > c_oracle - 0.05 and c_model > 0.6


def test_landmark_model_uses_only_patients_at_risk(data):
    lm = LandmarkModel(landmarks_weeks=(8, 16), n_bootstrap=3).fit(
        data, "os_months", "os_event", COVS, {8: ["rel_change_viable_volume_w08"],
                                                16: ["rel_change_viable_volume_w08"]}, regimen_col="regimen")
    for w in (8, 16):
        m = lm.models_[w]
        at_risk = data.index[data["os_months"] > w / WEEKS_PER_MONTH]
        assert m["n_at_risk"] == len(at_risk) < len(data)
        assert set(m["index"]) == set(at_risk)
    early = data[data["os_months"] <= 8 / WEEKS_PER_MONTH]
    assert len(early) > 0 and not set(early.index) & set(lm.models_[8]["index"])
    assert lm.models_[8]["n_at_risk"] > lm.models_[16]["n_at_risk"]
    pred = lm.predict(data.iloc[5], 8, times=[0, 6, 12], source="observed")
    assert pred["source"] == "observed" and pred["survival"][0] == pytest.approx(1.0)
    assert pred["survival"][2] <= pred["survival"][1]
    assert np.all(np.asarray(pred["lower"]) <= np.asarray(pred["survival"]) + 1e-12)
    assert lm.models_[8]["fit"].beta[COVS.index("pvtt") + 0] != 0
    with pytest.raises(ValueError):
        lm.predict(data.iloc[5], 8, source="imagined")


def test_metastasis_model_points_monotone_and_risk_interval(data):
    feats = ["max_diameter_cm", "n_tumors", "log_afp", "pvtt"]
    mm = MetastasisModel(n_bootstrap=20).fit(data, feats)
    y, keep = MetastasisModel.binary_target(data)
    assert mm.n_used_ == keep.sum() and mm.n_excluded_ == (~keep).sum() > 0
    # excluded = censored before 24 months without metastasis
    excl = data[~keep]
    assert ((excl["metastasis_months"] < 24) & (excl["metastasis_event"] == 0)).all()
    table = mm.points_table(5)
    size = table[table["feature"] == "max_diameter_cm"]
    assert mm.model_.coef_[0] > 0 and np.all(np.diff(size["points"]) > 0)
    assert table["points"].min() == pytest.approx(0.0, abs=1e-9) and table["points"].max() == pytest.approx(100.0)
    pred = mm.predict(data.iloc[0])
    assert pred["lower"] <= pred["risk"] <= pred["upper"]
    assert mm.risk_from_points(pred["points"]["total"]) == pytest.approx(pred["risk"])
    p = mm.predict_proba(data[keep])
    assert M.binary_auc(y[keep], p) > 0.7


# ---------------------------------------------------------------------------------------------------------------
# cross-validation command and the evaluation script's pieces
# ---------------------------------------------------------------------------------------------------------------

def test_cross_validate_returns_every_baseline(cohort, tmp_path):
    df = cohort[0].head(240).drop(columns=["rel_change_viable_volume_w08"])
    df["site_comment"] = "x"
    df.loc[df.index[:4], "inr"] = np.nan
    path = tmp_path / "clinical.csv"
    df.to_csv(path, index=False)
    before = path.read_bytes()
    out = run_cv_command(path, "os", folds=3, seed=0, out_dir=tmp_path / "out", echo=None, select_engine=False)
    assert path.read_bytes() == before
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"cox_per_regimen", "HAP", "mHAP-II", "six-and-twelve", "ALBI grade", "BCLC",
                                      "mean of scores", "anchored", "selected"}
    assert metrics["models"]["mean of scores"]["kind"] == "mean of the established scores"
    for m in metrics["models"].values():
        assert len(m["harrell_c_per_fold"]) == 3 and 0 <= m["harrell_c"] <= 1
        lo, hi = m["harrell_c_pooled_oof_ci95"]
        assert lo <= m["harrell_c_pooled_oof"] <= hi
    assert len(metrics["models"]["selected"]["chosen_per_fold"]) == 3
    assert metrics["imputed"]["inr"] == 4 and metrics["ignored_columns"] == ["site_comment"]
    assert metrics["models"]["cox_per_regimen"]["harrell_c"] > metrics["models"]["ALBI grade"]["harrell_c"]
    assert out["best_baseline"] in SCORE_BASELINES
    res = cross_validate(df, endpoint="pfs", folds=2, seed=1, penalizers=(0.1,), select_engine=False, n_bootstrap=0)
    assert res["endpoint"] == "pfs" and res["n"] == 240
    with pytest.raises(ValueError):
        cross_validate(df, endpoint="dfs")


def _load_benchmark():
    return load_benchmark("survival_evaluation")


def test_evaluation_script_on_synthetic_cohort(tmp_path):
    bench = _load_benchmark()
    df, truth = make_cohort(420, seed=11)
    cohort = tmp_path / "cohort"
    (cohort / "truth").mkdir(parents=True)
    df.drop(columns=["rel_change_viable_volume_w08"]).to_csv(cohort / "clinical.csv", index=False)
    cf = truth[list(REGS)].assign(patient_id=df["patient_id"]).melt(
        id_vars="patient_id", var_name="regimen", value_name="rmst24_months")
    cf.to_csv(cohort / "truth" / "counterfactuals.csv", index=False)
    clinical, cf_read = bench.load_cohort(cohort)
    name, oracle = bench.find_oracle(cohort, clinical, cf_read)
    assert "rmst24" in name and oracle.notna().all()
    dev, hold = bench.split_dev_holdout(len(clinical), 0.5, 0)
    table = bench.feature_table(cohort, images=False, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "features_cohort_noimg.csv").is_file()
    res = bench.evaluate(table, cf_read, oracle, dev, hold, n_bootstrap=5, oracle_name=name)
    o = res["os"]
    assert o["model"]["harrell_c"] > 0.6 and "oracle" in o and set(o["baselines"]) == set(SCORE_BASELINES)
    assert o["ibs"]["below_null"]
    assert res["effect"]["pehe_months"] < 6 and res["effect"]["recommendation"]["n_clear_difference_gt_2_months"] > 0
    assert res["effect"]["recommendation"]["accuracy_point_rmst"] > 0.6
    assert "landmark" not in res and any("landmark" in n for n in res["notes"])  # no follow-up images here
    assert 0.0 <= res["metastasis"]["auc"] <= 1.0 and res["metastasis"]["n_holdout"] > 10  # TACE, no spread
    assert any("300" in n for n in res["notes"])  # 210 hold-out patients < 300 is reported
    mpath, jpath = bench.write_report(res, tmp_path / "results")
    assert "Harrell C model" in mpath.read_text() and json.loads(jpath.read_text())["n_holdout"] == len(hold)
    # with a true risk column the oracle uses it
    clinical["true_lp"] = truth["true_lp"].values
    name2, oracle2 = bench.find_oracle(cohort, clinical, cf_read)
    assert name2 == "clinical.csv:true_lp" and np.allclose(oracle2.values, truth["true_lp"].values)


def _metastasis_table(n=900, seed=11):
    """TACE-like patients whose 2-year metastasis risk depends on the baseline size and, more, on the response."""
    rng = np.random.default_rng(seed)
    size = rng.lognormal(np.log(5.0), 0.4, n)  # cm
    resp8 = np.clip(rng.normal(-0.2, 0.35, n), -1, 2)
    resp16 = np.clip(resp8 + rng.normal(-0.1, 0.25, n), -1, 2)
    lp = -1.0 + 0.5 * np.log(size / 5) + 2.5 * resp16 + 1.0 * resp8
    t_met = rng.exponential(24.0 / np.log(2) * np.exp(-lp))
    t_cens = rng.uniform(6, 48, n)
    t = np.minimum(t_met, t_cens)
    return pd.DataFrame({"max_diameter_cm": size, "rel_change_viable_volume_w08": resp8,
                         "rel_change_sum_viable_w08": resp8 * 0.7 + rng.normal(0, 0.05, n),
                         "rel_change_viable_volume_w16": resp16,
                         "rel_change_sum_viable_w16": resp16 * 0.7 + rng.normal(0, 0.05, n),
                         "metastasis_months": t, "metastasis_event": (t_met <= t_cens).astype(int)})


def test_landmark_metastasis_updates_the_risk_with_the_response():
    from HCCTwinLib.survival.models import LandmarkMetastasis

    df = _metastasis_table()
    lmm = LandmarkMetastasis((8, 16), l2=1.0, n_bootstrap=10).fit(df, ["max_diameter_cm"])
    assert set(lmm.models_) == {8, 16}
    assert lmm.models_[8].features_ == ["max_diameter_cm", "rel_change_viable_volume_w08", "rel_change_sum_viable_w08"]
    assert lmm.models_[16].features_[-2:] == ["rel_change_viable_volume_w16", "rel_change_sum_viable_w16"]
    # only patients metastasis-free (and followed) beyond the landmark
    at16 = lmm.population(df, 16)
    assert (at16["metastasis_months"] > 16 / WEEKS_PER_MONTH).all() and len(at16) < len(df)
    y16, keep16 = MetastasisModel.binary_target(at16)
    assert lmm.models_[16].n_used_ == keep16.sum()
    # the response carries most of the signal: the landmark model beats the baseline one on the same patients
    base = MetastasisModel(n_bootstrap=0).fit(df, ["max_diameter_cm"])
    fresh = _metastasis_table(seed=12)
    hold = lmm.population(fresh, 16)
    y, keep = MetastasisModel.binary_target(hold)
    auc_lm = M.binary_auc(y[keep], lmm.models_[16].predict_proba(hold[keep]))
    auc_base = M.binary_auc(y[keep], base.predict_proba(hold[keep]))
    assert auc_lm > auc_base + 0.1
    # better response at 16 weeks, lower updated risk
    row = fresh.iloc[0].copy()
    good, bad = row.copy(), row.copy()
    good[["rel_change_viable_volume_w16", "rel_change_sum_viable_w16"]] = [-0.8, -0.6]
    bad[["rel_change_viable_volume_w16", "rel_change_sum_viable_w16"]] = [0.5, 0.4]
    p_good, p_bad = lmm.predict(good, 16), lmm.predict(bad, 16)
    assert p_good["risk"] < p_bad["risk"] and p_good["landmark_weeks"] == 16
    assert p_good["lower"] <= p_good["risk"] <= p_good["upper"]
    # model-file round trip (arrays + JSON, no pickle)
    arrays, meta = lmm.to_state(prefix="mlm/")
    json.dumps(meta)
    back = LandmarkMetastasis.from_state(arrays, meta, prefix="mlm/")
    assert back.predict(bad, 16)["risk"] == pytest.approx(p_bad["risk"])
    # a grid of penalties: each landmark's is chosen by cross-validated AUC and kept in the model file
    cv = LandmarkMetastasis((16,), l2=(0.1, 100.0), n_bootstrap=0, cv_repeats=1).fit(df, ["max_diameter_cm"])
    chosen = cv.cv_[16]
    assert chosen["l2"] in (0.1, 100.0) and chosen["auc"] == max(chosen["auc_by_l2"].values()) > 0.6
    assert LandmarkMetastasis.from_state(*cv.to_state()).cv_[16]["l2"] == chosen["l2"]
    with pytest.raises(InputError, match="no metastasis landmark model at 24"):
        lmm.predict(bad, 24)
    with pytest.raises(InputError, match="rel_change_viable_volume_w08"):
        LandmarkMetastasis((8,)).fit(df.drop(columns=["rel_change_viable_volume_w08"]), ["max_diameter_cm"])


def test_binary_calibration_slope_and_ici():
    """Probabilities drawn from the truth are calibrated (slope ~1, small ICI); the same ranking made three times
    as extreme has slope ~1/3 and a larger ICI; the Brier score is the mean squared error."""
    rng = np.random.default_rng(4)
    lp = rng.normal(-0.5, 1.0, 4000)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(len(p)) < p).astype(int)
    good = M.binary_calibration(y, p)
    assert good["calibration_slope"] == pytest.approx(1.0, abs=0.1) and good["ici"] < 0.03
    assert good["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert good["mean_predicted"] == pytest.approx(good["observed_rate"], abs=0.03)
    extreme = M.binary_calibration(y, 1 / (1 + np.exp(-3 * lp)))
    assert extreme["calibration_slope"] == pytest.approx(1 / 3, abs=0.06) and extreme["ici"] > 2 * good["ici"]
    assert len(good["groups"]["predicted"]) == 5 and good["groups"]["predicted"] == sorted(good["groups"]["predicted"])


def _competing_cohort(n=600, seed=0):
    """Exponential cause-specific hazards: metastasis 0.02/month x exp(0.8 x), death 0.015/month; uniform censoring."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_met = rng.exponential(1.0 / (0.02 * np.exp(0.8 * x)))
    t_dth = rng.exponential(1.0 / 0.015, size=n)
    t_cen = rng.uniform(6.0, 60.0, size=n)
    t = np.minimum.reduce([t_met, t_dth, t_cen])
    met = (t_met <= t_dth) & (t_met <= t_cen)
    dead_first = (t_dth < t_met) & (t_dth <= t_cen)
    return pd.DataFrame({"x": x, "metastasis_months": t, "metastasis_event": met.astype(int),
                         "os_months": np.where(dead_first, t_dth, t + 5.0), "os_event": dead_first.astype(int)})


def test_aalen_johansen_matches_the_constant_hazard_formula():
    from HCCTwinLib.survival.models import aalen_johansen_cif

    rng = np.random.default_rng(1)
    t1, t2 = rng.exponential(1 / 0.02, 20000), rng.exponential(1 / 0.015, 20000)
    cause = np.where(t1 < t2, 1, 2)
    expected = 0.02 / 0.035 * (1 - np.exp(-0.035 * 24))
    assert aalen_johansen_cif(np.minimum(t1, t2), cause, 24.0) == pytest.approx(expected, abs=0.01)
    # censoring does not bias it (unlike 1 - KM of metastasis with deaths censored, which overestimates)
    cen = rng.uniform(0, 60, 20000)
    t = np.minimum.reduce([t1, t2, cen])
    c = np.where(cen < np.minimum(t1, t2), 0, cause)
    assert aalen_johansen_cif(t, c, 24.0) == pytest.approx(expected, abs=0.015)


def test_competing_risk_metastasis_model():
    from HCCTwinLib.survival.models import CompetingRiskMetastasis, aalen_johansen_cif

    df = _competing_cohort()
    model = CompetingRiskMetastasis().fit(df, ["x"])
    t, cause = model.events(df)
    assert model.n_met_ == int((cause == 1).sum()) and model.n_death_ == int((cause == 2).sum()) > 50
    assert model.met_.beta[0] > 0.4 and abs(model.death_.beta[0]) < 0.2  # standardised x: 0.8 * sd(x) ~ 0.8
    cif = model.cumulative_incidence(df)
    assert cif.shape == (len(df),) and np.all((cif >= 0) & (cif <= 1))
    assert np.corrcoef(cif, df["x"])[0, 1] > 0.9  # higher x, higher incidence
    # calibration in the large: the mean predicted 2-year incidence is the observed (Aalen-Johansen) one
    assert cif.mean() == pytest.approx(aalen_johansen_cif(t, cause, 24.0), abs=0.03)
    curve = model.cumulative_incidence(df.head(5), [6, 12, 24, 36])
    assert curve.shape == (5, 4) and np.all(np.diff(curve, axis=1) >= -1e-12)
    with pytest.raises(InputError, match="lacks column"):
        CompetingRiskMetastasis().fit(df.drop(columns="metastasis_event"), ["x"])


def test_share_of_the_achievable_gain():
    assert M.achievable_share(0.637, 0.569, 0.745) == pytest.approx(0.068 / 0.176)
    assert M.achievable_share(0.745, 0.569, 0.745) == pytest.approx(1.0)
    assert M.achievable_share(0.55, 0.569, 0.745) < 0  # worse than the score
    assert M.achievable_share(0.6, 0.6, 0.59) is None  # the oracle does not beat the score: nothing to gain


def test_competing_risk_model_round_trips_through_its_state():
    from HCCTwinLib.survival.models import CompetingRiskMetastasis

    df = _competing_cohort(300, seed=4)
    model = CompetingRiskMetastasis().fit(df, ["x"])
    arrays, meta = model.to_state("m/")
    again = CompetingRiskMetastasis.from_state(arrays, json.loads(json.dumps(meta)), "m/")
    np.testing.assert_allclose(again.cumulative_incidence(df), model.cumulative_incidence(df))
    pred = again.predict({"x": 1.5})
    assert 0 < pred["cumulative_incidence"] < 1 and pred["horizon_months"] == 24.0
    assert pred["curve"]["months"][0] == 0 and pred["curve"]["cumulative_incidence"][0] == 0
    assert pred["cumulative_incidence"] > again.predict({"x": -1.5})["cumulative_incidence"]
    assert again.predict({"x": float("nan")})["cumulative_incidence"] == pytest.approx(
        again.predict({"x": float(model.fills_["x"])})["cumulative_incidence"])  # missing value: the median
