"""Digital-twin cohort simulator: cohort layout, label values, lesion HU contrasts, treatment effects on images,
determinism by seed, common random numbers (w00 follow-up = baseline; regimens differ only where the tumour is),
and the outcome tables."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from HCCTwinLib import labels as L
from HCCTwinLib.errors import InputError
from HCCTwinLib.io import load_case, read_image
from HCCTwinLib.regimens import eligibility_warnings
from HCCTwinLib.simulate import CLINICAL_COLUMNS, COUNTERFACTUAL_COLUMNS, simulate_cohort, simulate_patient
from HCCTwinLib.simulate.lesions import LesionState, nodule_stretch, r_eq_mm, viable_diameter_mm
from HCCTwinLib.simulate.patient import sample_patient
from HCCTwinLib.simulate.treatment import TIME

SEED = 11
N = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "cohort"
    messages = []
    table = simulate_cohort(N, SEED, out, fast=True, workers=1, progress=lambda f, m: messages.append((f, m)))
    return out, table, messages


def _first(pred, seed=SEED, limit=60):
    for i in range(limit):
        m = sample_patient(seed, i)
        if pred(m):
            return i
    pytest.fail(f"no patient of the wanted kind among the first {limit} of seed {seed}: the simulator no longer "
                "draws the case this test needs")


# ---------------------------------------------------------------------------------------------------------------
# layout and tables
# ---------------------------------------------------------------------------------------------------------------

def test_cohort_layout(cohort):
    out, table, messages = cohort
    clinical = pd.read_csv(out / "clinical.csv")
    assert list(clinical.columns[:len(CLINICAL_COLUMNS)]) == list(CLINICAL_COLUMNS)
    assert len(clinical) == N and clinical.patient_id.is_unique
    assert list(table.patient_id) == list(clinical.patient_id)
    cf = pd.read_csv(out / "truth" / "counterfactuals.csv")
    assert list(cf.columns) == list(COUNTERFACTUAL_COLUMNS)
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == SEED and meta["n"] == N and "not" in meta["disclaimer"].lower()
    for row in clinical.itertuples():
        case = out / "cases" / row.patient_id
        for name in ("arterial", "portal", "labels"):
            assert (case / "pre" / f"{name}.nii.gz").is_file()
        observed = [w for w in str(row.followups).split(";") if w and w != "nan"]
        assert sorted(p.name for p in (case / "followup").iterdir()) == sorted(observed) if observed else True
        for w in observed:
            assert {p.name for p in (case / "followup" / w).iterdir()} == {"arterial.nii.gz", "portal.nii.gz",
                                                                          "labels.nii.gz"}
        regimens = set(cf[cf.patient_id == row.patient_id].regimen)
        assert row.regimen in regimens
        assert {p.name for p in (out / "truth" / "cases" / row.patient_id).iterdir()} == regimens
        for r in regimens:
            for w in ("w08", "w16", "w24"):
                assert (out / "truth" / "cases" / row.patient_id / r / w / "portal.nii.gz").is_file()
        # the received regimen's truth follow-up is the observed one
        for w in observed:
            a = read_image(case / "followup" / w / "portal.nii.gz")[0]
            b = read_image(out / "truth" / "cases" / row.patient_id / row.regimen / w / "portal.nii.gz")[0]
            np.testing.assert_array_equal(a, b)
    # the pre folder loads as a Case with the reader a site uses
    c = load_case(out / "cases" / clinical.patient_id[0] / "pre")
    assert c.phase_names == ["arterial", "portal"] and c.labels is not None
    assert messages[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in messages)


def test_tables_are_consistent(cohort):
    from HCCTwinLib import clinical as clin

    out, _, _ = cohort
    clinical = pd.read_csv(out / "clinical.csv")
    cf = pd.read_csv(out / "truth" / "counterfactuals.csv")
    assert set(clinical.best_response_mrecist) <= {"CR", "PR", "SD", "PD", "NE"}
    assert set(clinical.os_event) <= {0, 1} and set(clinical.pfs_event) <= {0, 1}
    assert (clinical.pfs_months <= clinical.os_months + 1e-6).all()
    assert (clinical.metastasis_months <= clinical.os_months + 1e-6).all()
    assert ((cf.rmst24_months > 0) & (cf.rmst24_months <= 24)).all()
    assert (cf.pfs_months <= cf.os_months + 1e-6).all()
    assert cf.groupby("patient_id").received.sum().eq(1).all()
    # true 2-year metastasis probability: 1 when present at baseline, otherwise in (0, 1) and, summed over the
    # patients, close to the share observed within 2 years (censoring aside)
    risk = cf.merge(clinical[["patient_id", "extrahepatic_spread"]], on="patient_id")
    assert (risk[risk.extrahepatic_spread == 1].metastasis_risk24 == 1).all()
    free = risk[risk.extrahepatic_spread == 0]
    assert ((free.metastasis_risk24 > 0) & (free.metastasis_risk24 < 1)).all()
    latent = pd.read_csv(out / "truth" / "patients.csv")
    assert latent.death_lp_baseline.notna().all() and latent.metastasis_lp_baseline.notna().all()
    for row in clinical.to_dict("records"):
        values = {k: row[k] for k in CLINICAL_COLUMNS[1:18]}
        scores = clin.compute_scores(values)
        assert scores["bclc"] == row["bclc"] and scores["child_pugh_points"] == row["child_pugh_points"]
        for r in cf[cf.patient_id == row["patient_id"]].regimen:
            assert eligibility_warnings(r, values) == []


def test_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        simulate_cohort(1, 0, tmp_path, fast=True, workers=1)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_tables_only_mode_matches_patients():
    table = simulate_cohort(6, SEED, None, workers=1)
    assert len(table) == 6
    p = sample_patient(SEED, 4)
    row = table.iloc[4]
    assert row.patient_id == p.patient_id and row.regimen == p.regimen
    assert row.max_diameter_mm == p.clinical["max_diameter_mm"]


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------

def test_label_values_and_grid(cohort):
    out, table, _ = cohort
    for pid in table.patient_id:
        lab, geom = read_image(out / "cases" / pid / "pre" / "labels.nii.gz", labels=True)
        art, g2 = read_image(out / "cases" / pid / "pre" / "arterial.nii.gz")
        assert geom.same_grid(g2) and geom.shape == (32, 96, 96)
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 4}
        assert {L.LIVER, L.VIABLE_TUMOR} <= set(np.unique(lab))
        assert -1024 <= art.min() and art.max() <= 3071 and np.all(art == np.round(art))
        liver_ml = (lab == L.LIVER).sum() * geom.voxel_volume_ml
        assert 700 < liver_ml < 3500
        spacing = np.array(geom.spacing)
        assert np.all((spacing[:2] >= 3.5) & (spacing[:2] <= 4.5)) and spacing[2] == pytest.approx(7.0)


def test_default_grid_is_ct_like():
    p = simulate_patient(SEED, 0)
    g = p.geometry
    assert g.shape == (64, 192, 192)
    assert 1.8 <= g.spacing[0] <= 2.2 and g.spacing[2] == pytest.approx(3.5)
    assert p.arterial.dtype == np.float32 and p.labels.dtype == np.uint8
    # air, fat, soft tissue and bone are all there with CT values
    a = p.portal
    assert (a <= -950).mean() > 0.2 and ((a > -150) & (a < -60)).mean() > 0.02 and (a > 400).sum() > 200
    case = p.case
    assert case.phase_names == ["arterial", "portal"] and case.geometry == g


def _eroded(mask):
    return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))


def test_lesion_hu_contrasts_and_treatment_effects():
    idx = _first(lambda m: m.lesions[0].hypervascular and m.clinical["max_diameter_mm"] >= 35
                 and "tace_pd1_len" in m.eligible and "haic_pd1_len" in m.eligible)
    p = simulate_patient(SEED, idx)
    lab = p.labels
    liver, viable = _eroded(lab == L.LIVER), _eroded(lab == L.VIABLE_TUMOR)
    assert viable.sum() > 20
    # arterial hyperenhancement and portal-venous washout of viable HCC
    assert p.arterial[viable].mean() > p.arterial[liver].mean() + 20
    assert p.portal[viable].mean() < p.portal[liver].mean() - 5
    assert 40 < p.arterial[liver].mean() < 110 and 80 < p.portal[liver].mean() < 150
    tace = p.render_followups("tace_pd1_len", [8])[8]
    haic = p.render_followups("haic_pd1_len", [8])[8]
    nec_t = _eroded(tace["labels"] == L.NECROSIS)
    assert nec_t.sum() > 10
    # lipiodol-laden necrosis after TACE is dense (> 300 HU) in both phases; HAIC leaves no lipiodol
    assert np.median(tace["portal"][nec_t]) > 300 and np.median(tace["arterial"][nec_t]) > 300
    tumour_h = _eroded(np.isin(haic["labels"], (L.VIABLE_TUMOR, L.NECROSIS)))
    assert (haic["portal"][tumour_h] > 300).mean() < 0.01
    nec_h = _eroded(haic["labels"] == L.NECROSIS)
    if nec_h.sum() > 10:
        assert haic["portal"][nec_h].mean() < 50  # non-enhancing
    # both treatments reduce the viable tumour
    assert (tace["labels"] == L.VIABLE_TUMOR).sum() < (lab == L.VIABLE_TUMOR).sum()
    assert (haic["labels"] == L.VIABLE_TUMOR).sum() < (lab == L.VIABLE_TUMOR).sum()


def test_pvtt_is_a_filling_defect():
    idx = _first(lambda m: m.latent["vp_grade"] >= 3)
    p = simulate_patient(SEED, idx)
    pv = p.labels == L.PVTT
    assert pv.sum() > 5
    liver = _eroded(p.labels == L.LIVER)
    assert p.portal[pv].mean() < p.portal[liver].mean()


def test_hypovascular_variant_is_not_hyperenhancing():
    idx = _first(lambda m: not m.lesions[0].hypervascular and m.clinical["max_diameter_mm"] >= 35)
    p = simulate_patient(SEED, idx, fast=True)
    les = p.model.lesions[0]
    from HCCTwinLib.simulate.anatomy import T

    lu, la, lp = p.model.anatomy.hu[T.LIVER]
    assert les.u_hu + les.ea_hu < lu + la  # arterial: hypo- or iso-attenuating
    assert les.u_hu + les.ep_hu < lu + lp - 20  # portal: hypo-attenuating


def test_week0_followup_equals_baseline_for_every_regimen():
    p = simulate_patient(SEED, 1, fast=True)
    for r in p.eligible:
        w0 = p.render_followups(r, [0])[0]
        np.testing.assert_array_equal(w0["arterial"], p.arterial)
        np.testing.assert_array_equal(w0["portal"], p.portal)
        np.testing.assert_array_equal(w0["labels"], p.labels)


def test_regimens_share_random_numbers():
    """Two regimens' follow-ups at one week differ only where the tumour (or resection) is."""
    idx = _first(lambda m: {"tace_pd1_len", "pd1_tki"} <= set(m.eligible))
    p = simulate_patient(SEED, idx, fast=True)
    a = p.render_followups("tace_pd1_len", [16])[16]
    b = p.render_followups("pd1_tki", [16])[16]
    diff = a["portal"] != b["portal"]
    assert diff.any()
    tumour = np.isin(a["labels"], (2, 3, 4)) | np.isin(b["labels"], (2, 3, 4)) | np.isin(p.labels, (2, 3, 4))
    near = ndimage.binary_dilation(tumour, iterations=3)
    assert not (diff & ~near).any()
    # ...and the true outcomes of the two regimens come from the same patient draws
    assert p.model.bio.e_death > 0 and p.outcome("tace_pd1_len").os_months != p.outcome("pd1_tki").os_months


def test_determinism_by_seed(tmp_path):
    a = simulate_patient(5, 2, fast=True)
    b = simulate_patient(5, 2, fast=True)
    np.testing.assert_array_equal(a.arterial, b.arterial)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.clinical == b.clinical and a.outcomes == b.outcomes
    fa = a.render_followups(a.regimen, [8])[8]
    fb = b.render_followups(b.regimen, [8])[8]
    np.testing.assert_array_equal(fa["portal"], fb["portal"])
    c = simulate_patient(6, 2, fast=True)
    assert not np.array_equal(a.portal, c.portal)
    # the cohort writer gives the same files (patient i of a cohort = simulate_patient(seed, i))
    t1 = simulate_cohort(2, 5, tmp_path / "x", fast=True, workers=1, write_truth_images=False)
    t2 = simulate_cohort(2, 5, tmp_path / "y", fast=True, workers=1, write_truth_images=False)
    pd.testing.assert_frame_equal(t1, t2)
    assert (tmp_path / "x" / "clinical.csv").read_bytes() == (tmp_path / "y" / "clinical.csv").read_bytes()
    pid = t1.patient_id[1]
    arr = read_image(tmp_path / "x" / "cases" / pid / "pre" / "portal.nii.gz")[0]
    np.testing.assert_array_equal(arr, simulate_patient(5, 1, fast=True).portal)


@pytest.mark.slow
def test_parallel_workers_give_the_same_cohort(tmp_path):
    t1 = simulate_cohort(2, 9, None, workers=1)
    t2 = simulate_cohort(2, 9, tmp_path / "p", workers=2, write_images=False, write_truth_images=False)
    pd.testing.assert_frame_equal(t1, t2)
    assert os.path.exists(tmp_path / "p" / "truth" / "counterfactuals.csv")


# ---------------------------------------------------------------------------------------------------------------
# model pieces
# ---------------------------------------------------------------------------------------------------------------

def test_measured_diameter_follows_the_drawing_rules():
    m = sample_patient(SEED, 0)
    les = m.lesions[0]
    v0 = les.volume0_ml
    untreated = LesionState(viable_ml=v0 * 0.8, necrosis_ml=v0 * 0.2, treated_ml=0.0, lipiodol_ml=0.0)
    assert untreated.mode == "shell"
    assert viable_diameter_mm(les, untreated) == pytest.approx(2 * r_eq_mm(v0) * les.axial_factor)
    treated = LesionState(viable_ml=v0 * 0.1, necrosis_ml=v0 * 0.9, treated_ml=v0 * 0.7, lipiodol_ml=v0 * 0.7)
    assert treated.mode == "nodule"
    d = viable_diameter_mm(les, treated)
    assert d == pytest.approx(2 * r_eq_mm(v0 * 0.1) * les.axial_factor * nodule_stretch(0.1, 1.0))
    assert d < viable_diameter_mm(les, untreated)
    gone = LesionState(viable_ml=1e-5, necrosis_ml=v0, treated_ml=v0, lipiodol_ml=0.0)
    assert viable_diameter_mm(les, gone) == 0.0


def test_growth_without_treatment_and_kill_with_treatment():
    from HCCTwinLib.simulate.patient import baseline_trajectory

    m = sample_patient(SEED, 3)
    untreated = baseline_trajectory(m)
    b = untreated.burden()
    assert b[-1] > b[0] and np.all(np.diff(b) >= -1e-9)
    for r, traj in m.trajectories.items():
        i6 = int(round(6 / (TIME[1] - TIME[0])))
        assert traj.burden()[i6] < b[i6], r  # every regimen does better than nothing at 6 months


def test_outcomes_have_literature_shape():
    """A quick population check (the full calibration is benchmarks/simulator_calibration.py)."""
    rows = []
    for i in range(60):
        m = sample_patient(3, i)
        for r, o in m.outcomes.items():
            rows.append({"r": r, "os": o.os_months, "best": o.best_response, "rmst": o.rmst24,
                         "pvtt": m.clinical["pvtt"]})
    d = pd.DataFrame(rows)
    med = d.groupby("r").os.median()
    assert med["haic_pd1_len"] > med["pd1_tki"] and med["tace_pd1_len"] > med["pd1_tki"]
    orr = d.groupby("r").best.apply(lambda s: s.isin(["CR", "PR"]).mean())
    assert orr["pd1_tki"] < orr["tace_pd1_len"] and orr["pd1_tki"] < orr["haic_pd1_len"]
    pv = d[d.pvtt == 1].groupby("r").rmst.mean()
    assert pv["haic_pd1_len"] > pv["tace_pd1_len"]


def test_metastasis_risk24_is_the_cumulative_incidence_of_the_hazards():
    """metastasis_risk(h0, hm) = P(metastasis before death and before 24 months), checked against a closed form
    (constant hazards) and against sampling the two times."""
    from HCCTwinLib.simulate.outcomes import TIME, metastasis_risk

    hm, h0 = np.full(TIME.shape, 0.02), np.full(TIME.shape, 0.05)
    exact = 0.02 / 0.07 * (1 - np.exp(-0.07 * 24))
    assert metastasis_risk(h0, hm, 24.0) == pytest.approx(exact, rel=0.02)
    assert metastasis_risk(h0, None) == 1.0
    assert metastasis_risk(h0 * 0, hm, 24.0) == pytest.approx(1 - np.exp(-0.02 * 24), rel=0.02)
    rng = np.random.default_rng(0)
    t_m, t_d = rng.exponential(1 / 0.02, 200_000), rng.exponential(1 / 0.05, 200_000)
    assert metastasis_risk(h0, hm, 24.0) == pytest.approx(np.mean((t_m < t_d) & (t_m <= 24)), abs=0.005)


def test_draw_biology_is_the_simulators_draw():
    """``draw_biology`` on the patient's own stream gives back exactly the biology ``sample_patient`` drew (the
    ceiling benchmark redraws this part, and only this part, of a patient)."""
    from HCCTwinLib.simulate.patient import draw_biology, rng_for

    m = sample_patient(11, 3)
    bio, td = draw_biology(rng_for(11, 3, "biology"), m.latent["aggressiveness"], len(m.lesions))
    assert td == m.latent["doubling_time_months"]
    for name, value in vars(m.bio).items():
        np.testing.assert_array_equal(getattr(bio, name), value, err_msg=name)
    other, _ = draw_biology(rng_for(11, 3, "ceiling", 0), m.latent["aggressiveness"], len(m.lesions))
    assert other.tace_kappa != m.bio.tace_kappa and other.growth.shape == m.bio.growth.shape
