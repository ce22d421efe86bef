"""The survival engine end to end on a small simulated cohort with images: feature table from label maps and
follow-ups, fit, model file round trip (sha256, no pickle), per-patient prediction, pipeline + CLI wiring."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from HCCTwinLib.cli import main as cli_main
from HCCTwinLib.survival.cohort import baseline_image_features, cohort_feature_table, trajectory_readings
from HCCTwinLib.survival.engine import IMAGING_COVARIATES, fit_engine
from HCCTwinLib.survival.store import get_survival_engine, load_engine, save_engine
from HCCTwinLib.weights import ModelFileError

REGS = ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from HCCTwinLib.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("engine") / "cohort"
    simulate_cohort(80, 5151, out, fast=True, write_truth_images=False)
    return out


@pytest.fixture(scope="module")
def table(cohort):
    table, notes = cohort_feature_table(cohort, deep=False)  # deep features: test_survival_deep.py
    return table


@pytest.fixture(scope="module")
def engine_file(table, tmp_path_factory):
    engine, notes = fit_engine(table, n_bootstrap=4, seed=0)
    path = tmp_path_factory.mktemp("model") / "hcctwin_survival.safetensors"
    save_engine(engine, path, training_data={"cohort": "test"})
    return engine, path


def test_feature_table_has_imaging_and_observed_response(table):
    for col in IMAGING_COVARIATES + ("rad_fo_sd", "mrecist_w08", "rel_change_viable_volume_w08"):
        assert col in table.columns, col
        assert table[col].notna().mean() > 0.8, col
    assert (table["img_viable_volume_ml"] >= 0).all()
    # mRECIST ordinals 0..3 (CR..PD)
    assert set(table["mrecist_w08"].dropna().unique()) <= {0.0, 1.0, 2.0, 3.0}


def test_trajectory_readings_follow_the_labels(cohort):
    from HCCTwinLib.io import load_case

    case = load_case(cohort / "cases" / sorted(p.name for p in (cohort / "cases").iterdir())[0] / "pre")
    # a follow-up with every viable voxel turned into necrosis: mRECIST complete response, viable volume 0
    fu = case.labels.copy()
    fu[fu == 2] = 3
    readings = trajectory_readings(case.labels, case.geometry, [(8, fu, None)], case.phases["arterial"])
    assert readings[0]["viable_volume_ml"] > 0
    assert readings[8]["viable_volume_ml"] == 0 and readings[8]["category_mrecist"] == "CR"
    # the same labels: stable disease
    same = trajectory_readings(case.labels, case.geometry, [(8, case.labels, case.phases["arterial"])],
                               case.phases["arterial"])
    assert same[8]["category_mrecist"] == "SD"
    feats = baseline_image_features(case.labels, case.geometry, case.phases["arterial"], case.phases["portal"])
    assert feats["img_log_viable_volume_ml"] == pytest.approx(np.log1p(feats["img_viable_volume_ml"]))


def test_model_file_round_trip_gives_identical_predictions(engine_file, table):
    engine, path = engine_file
    loaded = load_engine(path)
    row = table.iloc[3].to_dict()
    a = engine.predict(row, None, REGS)
    b = loaded.predict(row, None, REGS)
    for r in REGS:
        assert np.allclose(a["endpoints"]["os"][r]["survival"], b["endpoints"]["os"][r]["survival"])
        assert np.allclose(a["endpoints"]["pfs"][r]["lower"], b["endpoints"]["pfs"][r]["lower"])
    assert a["recommendation"] == b["recommendation"]
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["architecture"].startswith("survival-engine") and len(card["sha256"]) == 64
    assert "os" in card["architecture_kwargs"]["parts"]


def test_tampered_or_missing_engine_is_refused(engine_file, tmp_path):
    _, path = engine_file
    bad = tmp_path / path.name
    shutil.copy(path, bad)
    shutil.copy(path.with_suffix(".json"), bad.with_suffix(".json"))
    data = bytearray(bad.read_bytes())
    data[-9] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        load_engine(bad)
    with pytest.raises(ModelFileError):
        get_survival_engine(tmp_path / "nothing.safetensors")


def test_prediction_schema_bands_and_recommendation(engine_file, table):
    engine, _ = engine_file
    row = table.iloc[0].to_dict()
    img = {k: row[k] for k in row if str(k).startswith(("img_", "rad_"))}
    out = engine.predict(row, img, REGS, eligible=["tace_pd1_len", "pd1_tki"])
    assert set(out["endpoints"]) == {"os", "pfs"}
    for r in REGS:
        c = out["endpoints"]["os"][r]
        s, lo, hi = (np.array(c[k], float) for k in ("survival", "lower", "upper"))
        assert np.all(np.diff(s) <= 1e-12) and np.all(lo <= s + 1e-12) and np.all(s <= hi + 1e-12)
        assert 0 < c["rmst24"] <= 24 and c["rmst24_ci"][0] <= c["rmst24"] <= c["rmst24_ci"][1]
    rec = out["recommendation"]
    assert set(rec["probability_best"]) == {"tace_pd1_len", "pd1_tki"}  # only the eligible ones compete
    assert sum(rec["probability_best"].values()) == pytest.approx(1.0)
    assert len(out["rmst24_differences"]) == 3
    d = out["rmst24_differences"][0]
    rm = {r: out["endpoints"]["os"][r]["rmst24"] for r in REGS}
    assert d["estimate"] == pytest.approx(rm[d["regimen_a"]] - rm[d["regimen_b"]])
    if "metastasis" in out:
        m = out["metastasis"]
        assert 0 <= m["lower"] <= m["risk"] <= m["upper"] <= 1
    # no imaging features: imputed with the training medians and said so
    bare = engine.predict({k: row[k] for k in ("age_years", "ecog", "afp_ng_ml")}, None, REGS)
    assert any("img_" in n for n in bare["notes"])


def test_landmark_uses_virtual_or_observed_response(engine_file, table):
    engine, _ = engine_file
    assert engine.landmark is not None and set(engine.landmark.models_) == {8, 16}
    row = table.iloc[1].to_dict()
    base = {"viable_volume_ml": 40.0, "tumor_volume_ml": 50.0, "sum_viable_mm": 60.0}
    good = {0: base, 8: {"viable_volume_ml": 2.0, "tumor_volume_ml": 30.0, "sum_viable_mm": 10.0,
                         "category_mrecist": "PR"}}
    bad = {0: base, 8: {"viable_volume_ml": 90.0, "tumor_volume_ml": 100.0, "sum_viable_mm": 90.0,
                        "category_mrecist": "PD"}}
    out = engine.predict(row, None, ["tace_pd1_len", "haic_pd1_len"],
                         readings={"tace_pd1_len": good, "haic_pd1_len": bad},
                         readings_source={"tace_pd1_len": "observed"})
    lm = out["landmark"]
    assert lm["tace_pd1_len"]["timepoints"]["w08"]["source"] == "observed"
    assert lm["haic_pd1_len"]["timepoints"]["w08"]["source"] == "virtual"
    s_good = np.array(lm["tace_pd1_len"]["timepoints"]["w08"]["survival"])
    s_bad = np.array(lm["haic_pd1_len"]["timepoints"]["w08"]["survival"])
    assert s_good[-1] > s_bad[-1]  # response predicts longer survival after the landmark


def test_pipeline_survival_and_cheap_regimen_change(engine_file, monkeypatch):
    from HCCTwinLib.pipeline import PipelineOptions, run_case, update_survival
    from HCCTwinLib.simulate.default import default_case

    _, path = engine_file
    case, fu = default_case(small=True)
    options = PipelineOptions(survival_model=str(path))
    result = run_case(case, REGS, (8, 16), real_followup=fu, options=options)
    assert set(result.survival["endpoints"]["os"]) == set(REGS)
    assert result.survival["recommendation"]["regimen"] in REGS
    assert result.response["observed"]["w08"]["mrecist"] in {"CR", "PR", "SD", "PD", "NE"}
    assert "survival" in result.provenance and "survival" in result.timings
    summary = json.loads(json.dumps(result.summary()))
    assert summary["survival"]["endpoints"]["os"]["pd1_tki"]["median"] is None or \
        summary["survival"]["endpoints"]["os"]["pd1_tki"]["median"] > 0

    # a change of the selection recomputes survival only: nothing reads images or runs a network
    import HCCTwinLib.survival.cohort as E

    monkeypatch.setattr(E, "baseline_image_features", lambda *a, **k: pytest.fail("features recomputed"))
    update_survival(result, options, ["tace_pd1_len", "pd1_tki"])
    assert set(result.survival["endpoints"]["os"]) == {"tace_pd1_len", "pd1_tki"}
    assert set(result.survival["recommendation"]["chosen_among"]) <= {"tace_pd1_len", "pd1_tki"}
    # a regimen ticked after the run gets its eligibility warnings computed too
    result.eligibility.pop("pd1_tki")
    update_survival(result, options, ["pd1_tki", "haic_pd1_len"])
    assert "pd1_tki" in result.eligibility and set(result.survival["endpoints"]["os"]) == {"pd1_tki", "haic_pd1_len"}


def test_no_engine_is_a_note_not_an_error(tmp_path):
    from HCCTwinLib.pipeline import PipelineOptions, run_case
    from HCCTwinLib.simulate.default import default_case

    case, _ = default_case(small=True)
    result = run_case(case, REGS, (8,), options=PipelineOptions(survival_model=str(tmp_path / "none.safetensors")))
    assert result.survival == {} and any(n.startswith("Survival:") for n in result.notes)


def test_cli_train_survival_and_predict(cohort, tmp_path):
    model_dir = tmp_path / "model"
    assert cli_main(["train", "survival", "--cohort", str(cohort), "--out", str(model_dir), "--bootstrap", "2",
                    "--no-images"]) == 0
    engine_path = model_dir / "hcctwin_survival.safetensors"
    assert engine_path.is_file() and engine_path.with_suffix(".json").is_file()
    pid = pd.read_csv(cohort / "clinical.csv")["patient_id"].iloc[0]
    out = tmp_path / "pred"
    rc = cli_main(["predict", "--pre", str(cohort / "cases" / pid / "pre"), "--clinical", str(cohort / "clinical.csv"),
                   "--patient", pid, "--regimens", "tace_pd1_len,pd1_tki", "--weeks", "8",
                   "--survival-model", str(engine_path), "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["patient_id"] == pid and set(result["survival"]["endpoints"]["os"]) == {"tace_pd1_len", "pd1_tki"}
    assert result["label_volumes_ml"]["liver"] > 0  # the cohort's labels were used


def test_cli_evaluate_measures_the_installed_engine_without_refitting(cohort, engine_file, tmp_path, monkeypatch):
    """`hcctwin evaluate` applies the installed engine to a cohort: C-index etc. in metrics.json, and a note (not a
    failure) for every model that is not installed."""
    _, path = engine_file
    weights = tmp_path / "weights"
    weights.mkdir()
    for f in (path, path.with_suffix(".json")):
        (weights / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HCCTWIN_WEIGHTS_DIR", str(weights))
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--cohort", str(cohort), "--out", str(out), "--max-cases", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    os_m = metrics["survival"]["os"]
    assert 0.5 < os_m["model"]["harrell_c"] <= 1.0 and set(os_m["baselines"]) >= {"HAP", "BCLC"}
    assert os_m["ibs"]["model"] < os_m["ibs"]["km_null"] + 0.05
    assert "w08" in metrics["survival"]["landmark"]
    assert any(n.startswith("segmentation:") for n in metrics["notes"])
    assert any(n.startswith("generator:") for n in metrics["notes"])


def test_follow_up_on_its_own_grid_is_registered_before_it_is_read(tmp_path):
    """A real follow-up arrives on its own grid (other origin and field of view): the feature table registers it to
    the pre-treatment scan (rigid + affine) and reads the same response as from the follow-up on the pre grid; it is
    neither dropped nor read voxel-by-voxel on the wrong grid."""
    import dataclasses

    from HCCTwinLib.io import resample_to, write_image
    from HCCTwinLib.simulate.cohort import simulate_patient
    from HCCTwinLib.survival.cohort import patient_image_row

    p = simulate_patient(5, 1, fast=True)
    case, fu = p.case, p.followup_case(p.model.regimen, 8)
    g = case.geometry
    moved = dataclasses.replace(g, shape=(g.shape[0] - 4, g.shape[1] - 6, g.shape[2] - 6),
                                origin=(g.origin[0] + 6.0, g.origin[1] - 4.0, g.origin[2] + 2.0 * g.spacing[2]))
    for name, shifted in (("same", False), ("moved", True)):
        root = tmp_path / name
        for key, arr in (("arterial", case.phases["arterial"]), ("portal", case.phases["portal"]),
                         ("labels", case.labels)):
            write_image(arr, g, root / "pre" / f"{key}.nii.gz", labels=key == "labels")
        for key, arr in (("arterial", fu.phases["arterial"]), ("portal", fu.phases["portal"]), ("labels", fu.labels)):
            if shifted:
                arr = resample_to(arr, g, moved, labels=key == "labels",
                                  **({} if key == "labels" else {"default_value": -1000.0}))
            write_image(arr, moved if shifted else g, root / "followup" / "w08" / f"{key}.nii.gz",
                        labels=key == "labels")
    same, moved_row = patient_image_row(tmp_path / "same"), patient_image_row(tmp_path / "moved")
    w08 = sorted(k for k in same if k.endswith("_w08"))
    assert w08 and all(k in moved_row for k in w08)
    for k in w08:
        assert moved_row[k] == pytest.approx(same[k], rel=0.15, abs=0.05), k


def test_metastasis_risk_updated_at_the_landmarks_from_the_tace_trajectory(engine_file, table, tmp_path):
    """The engine's metastasis landmark part: read from the TACE trajectory's response (observed or virtual), saved
    and loaded with the engine file, absent from the output when there is no TACE reading."""
    import dataclasses

    from HCCTwinLib.survival.models import LandmarkMetastasis, MetastasisModel

    engine, _ = engine_file  # too few TACE patients for its own metastasis models: synthetic ones are attached
    rng = np.random.default_rng(0)
    n = 600  # a synthetic training table where the response at 8 / 16 weeks drives the 2-year risk
    resp8 = rng.normal(-0.2, 0.4, n)
    resp16 = resp8 + rng.normal(-0.1, 0.2, n)
    size = rng.lognormal(np.log(5), 0.3, n)
    t_met = rng.exponential(35.0 * np.exp(-(0.5 * np.log(size / 5) + 2.0 * resp16 + resp8)))
    t_cens = rng.uniform(6, 48, n)
    synth = pd.DataFrame({"max_diameter_cm": size, "rel_change_viable_volume_w08": resp8,
                          "rel_change_sum_viable_w08": 0.7 * resp8, "rel_change_viable_volume_w16": resp16,
                          "rel_change_sum_viable_w16": 0.7 * resp16, "metastasis_months": np.minimum(t_met, t_cens),
                          "metastasis_event": (t_met <= t_cens).astype(int)})
    lmm = LandmarkMetastasis((8, 16), n_bootstrap=5).fit(synth, ["max_diameter_cm"])
    eng = dataclasses.replace(engine, metastasis=MetastasisModel(n_bootstrap=5).fit(synth, ["max_diameter_cm"]),
                              metastasis_landmark=lmm)
    path = tmp_path / "with_landmark.safetensors"
    save_engine(eng, path, training_data={"cohort": "test"})
    loaded = load_engine(path)
    assert set(loaded.metastasis_landmark.models_) == {8, 16}
    row = table.iloc[2].to_dict()
    row["extrahepatic_spread"] = 0
    base = {"viable_volume_ml": 40.0, "tumor_volume_ml": 50.0, "sum_viable_mm": 60.0}

    def reading(v, d, cat):
        return {"viable_volume_ml": v, "tumor_volume_ml": v + 10, "sum_viable_mm": d, "category_mrecist": cat}

    good = {0: base, 8: reading(20.0, 40.0, "PR"), 16: reading(4.0, 15.0, "PR")}
    bad = {0: base, 8: reading(60.0, 70.0, "SD"), 16: reading(90.0, 95.0, "PD")}
    outs = {}
    for name, traj in (("good", good), ("bad", bad)):
        outs[name] = loaded.predict(row, None, ["tace_pd1_len", "pd1_tki"], readings={"tace_pd1_len": traj},
                                    readings_source={"tace_pd1_len": "observed"})["metastasis"]
    lm_good, lm_bad = outs["good"]["landmark"], outs["bad"]["landmark"]
    assert set(lm_good) == {"w08", "w16"} and lm_good["w16"]["source"] == "observed"
    assert lm_good["w16"]["risk"] < lm_bad["w16"]["risk"]
    assert lm_good["w08"]["lower"] <= lm_good["w08"]["risk"] <= lm_good["w08"]["upper"]
    assert outs["good"]["risk"] == pytest.approx(outs["bad"]["risk"])  # the baseline risk does not move
    # a virtual trajectory is said to be one; no TACE reading, no update
    virt = loaded.predict(row, None, ["tace_pd1_len"], readings={"tace_pd1_len": good})["metastasis"]
    assert virt["landmark"]["w08"]["source"] == "virtual"
    other = loaded.predict(row, None, ["pd1_tki"], readings={"pd1_tki": good})["metastasis"]
    assert "landmark" not in other
    # hcctwin evaluate measures them on the patients metastasis-free at each landmark
    from HCCTwinLib.evaluate import evaluate_survival

    cohort_table = synth.assign(regimen="tace_pd1_len", extrahepatic_spread=0)
    met = evaluate_survival(loaded, cohort_table)["metastasis"]
    for key, week in (("w08", 8), ("w16", 16)):
        lm = met["landmark"][key]
        assert lm["n"] == int(MetastasisModel.binary_target(lmm.population(cohort_table, week))[1].sum())
        assert lm["auc"] > lm["baseline_model_auc"] + 0.05


def test_baseline_image_features_on_the_label_box_equal_the_whole_grid(cohort):
    """Features are computed on the box around the labels: the same numbers as on the whole grid (a padded copy,
    and the unpadded functions), and phases on another grid are refused."""
    from HCCTwinLib.cases import Geometry
    from HCCTwinLib.errors import InputError
    from HCCTwinLib.io import load_case
    from HCCTwinLib.labels import foreground_box
    from HCCTwinLib.survival.cohort import _feature_box
    from HCCTwinLib.survival.features import imaging_features, radiomics_features

    case = load_case(cohort / "cases" / sorted(p.name for p in (cohort / "cases").iterdir())[1] / "pre")
    g = case.geometry
    pad = ((3, 5), (7, 2), (4, 9))
    big = Geometry(shape=tuple(n + a + b for n, (a, b) in zip(g.shape, pad)), spacing=g.spacing,
                   origin=tuple(g.ijk_to_lps() @ np.array([-pad[2][0], -pad[1][0], -pad[0][0], 1.0]))[:3],
                   direction=g.direction)
    lab = np.pad(case.labels, pad)
    art, por = (np.pad(case.phases[p], pad, constant_values=-1000.0) for p in ("arterial", "portal"))
    box = _feature_box(lab)
    assert box is not None and all(b.stop - b.start < n for b, n in zip(box, lab.shape))
    feats = baseline_image_features(lab, big, art, por)
    whole = imaging_features(lab, big, art, por)  # on the whole padded grid, no box
    for k, v in whole.items():
        assert feats[f"img_{k}"] == pytest.approx(v, rel=1e-9, nan_ok=True), k
    rad = radiomics_features(art, np.isin(lab, (2, 3)), big)
    assert feats["rad_glcm_contrast"] == pytest.approx(rad["glcm_contrast"], rel=1e-9)
    assert feats["rad_shape_sphericity"] == pytest.approx(rad["shape_sphericity"], rel=1e-9)
    same = baseline_image_features(case.labels, g, case.phases["arterial"], case.phases["portal"])
    assert same == pytest.approx(feats, rel=1e-9, nan_ok=True)
    with pytest.raises(InputError, match="arterial phase has shape"):
        baseline_image_features(lab, big, art[:-1], por)
    assert _feature_box(np.zeros((4, 4, 4), np.uint8)) is None and foreground_box(np.zeros((4, 4, 4))) is None
    lo, hi = foreground_box(lab, (2, 0, 1))  # the box itself has one voxel of margin
    assert lo == (box[0].start - 1, box[1].start + 1, box[2].start)
    assert hi == (box[0].stop + 1, box[1].stop - 1, box[2].stop)


def test_competing_risk_metastasis_is_saved_with_the_engine_and_predicted(engine_file, table, tmp_path):
    """Issue 27: the cumulative incidence of metastasis with death competing sits beside the 2-year logistic risk
    in the engine's output, and survives the engine file."""
    import dataclasses

    from HCCTwinLib.survival.models import CompetingRiskMetastasis, MetastasisModel

    engine, _ = engine_file
    rng = np.random.default_rng(5)
    n = 500
    size = rng.lognormal(np.log(5), 0.3, n)
    t_met = rng.exponential(30.0 * np.exp(-0.8 * np.log(size / 5)))
    t_dth = rng.exponential(40.0, n)
    t_cen = rng.uniform(6, 48, n)
    t = np.minimum.reduce([t_met, t_dth, t_cen])
    synth = pd.DataFrame({"max_diameter_cm": size, "metastasis_months": t,
                          "metastasis_event": ((t_met <= t_dth) & (t_met <= t_cen)).astype(int),
                          "os_months": np.where(t_dth <= np.minimum(t_met, t_cen), t_dth, t + 3),
                          "os_event": (t_dth <= np.minimum(t_met, t_cen)).astype(int)})
    eng = dataclasses.replace(engine, metastasis=MetastasisModel(n_bootstrap=5).fit(synth, ["max_diameter_cm"]),
                              metastasis_competing=CompetingRiskMetastasis().fit(synth, ["max_diameter_cm"]))
    path = tmp_path / "competing.safetensors"
    save_engine(eng, path, training_data={"cohort": "test"})
    loaded = load_engine(path)
    assert loaded.metastasis_competing is not None and loaded.metastasis_competing.n_met_ > 20
    row = table.iloc[3].to_dict()
    row["extrahepatic_spread"] = 0
    small, large = dict(row, max_diameter_mm=20.0), dict(row, max_diameter_mm=120.0)
    met_small = loaded.predict(small, None, ["tace_pd1_len"])["metastasis"]
    met_large = loaded.predict(large, None, ["tace_pd1_len"])["metastasis"]
    assert "risk" in met_small and "competing_risk" in met_small
    assert met_small["competing_risk"]["cumulative_incidence"] < met_large["competing_risk"]["cumulative_incidence"]
    assert met_small["competing_risk"]["method"].startswith("cause-specific Cox")
