"""`hcctwin study`: splits, training on the development split, virtual-vs-real fidelity next to the copy baseline,
readers' mRECIST, survival discrimination / calibration per split, and the HTML report."""

import json
import shutil

import pandas as pd
import pytest

from HCCTwinLib.errors import InputError
from HCCTwinLib.study import assign_splits, run_study

from conftest import SHIPPED_WEIGHTS_DIR


def test_splits_from_the_column_or_a_stable_hash():
    ids = [f"P{i:03d}" for i in range(300)]
    split, notes = assign_splits(pd.DataFrame({"patient_id": ids}), ["development", "validation", "test"], seed=1)
    counts = split.value_counts()
    assert (counts["development"], counts["validation"], counts["test"]) == (180, 60, 60)
    small, _ = assign_splits(pd.DataFrame({"patient_id": ids[:15]}), ["development", "validation", "test"])
    assert list(small.value_counts()[["development", "validation", "test"]]) == [9, 3, 3]
    again, _ = assign_splits(pd.DataFrame({"patient_id": ids[::-1]}), ["development", "validation", "test"], seed=1)
    assert dict(zip(ids[::-1], again)) == dict(zip(ids, split))  # by ID, not by row order
    assert any("hash of the patient ID" in n for n in notes)
    table = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "split": ["Development", "test", "external", None]})
    split, notes = assign_splits(table, ["development", "test"])
    assert list(split) == ["development", "test", None, None]
    assert any("external" in n for n in notes)
    with pytest.raises(InputError, match="name each split once"):
        assign_splits(table, ["test", "test"])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A simulated cohort written as a site brings one (DICOM CT series + DICOM SEG, a site-style clinical table with
    three readers' mRECIST, a column mapping), imported with ``hcctwin import``: the real code path."""
    from HCCTwinLib.cli import main as cli_main

    base = tmp_path_factory.mktemp("study")
    sim, out = base / "sim", base / "cohort"
    assert cli_main(["simulate", "--n", "15", "--seed", "8080", "--out", str(sim), "--fast", "--format",
                     "dicom"]) == 0
    assert cli_main(["import", "--dicom", str(sim / "dicom"), "--out", str(out), "--clinical",
                     str(sim / "clinical_site.csv"), "--mapping", str(sim / "mapping.json")]) == 0
    return out


@pytest.fixture()
def with_generator(monkeypatch):
    """Every shipped model installed, generator included (see conftest.py)."""
    monkeypatch.setenv("HCCTWIN_WEIGHTS_DIR", str(SHIPPED_WEIGHTS_DIR))
    return SHIPPED_WEIGHTS_DIR


def test_study_end_to_end_measures_every_split_next_to_the_baselines(cohort, with_generator, tmp_path):
    from HCCTwinLib.cli import main as cli_main

    out = tmp_path / "study"
    assert cli_main(["study", "--cohort", str(cohort), "--out", str(out), "--splits", "development,validation,test",
                     "--max-cases", "1", "--samples", "1", "--train", "never"]) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["splits"] == ["development", "validation", "test"]
    assert sum(study["split_sizes"].values()) == 15 and min(study["split_sizes"].values()) >= 1
    assert study["models"]["survival"]["source"].startswith("installed")
    splits = pd.read_csv(out / "splits.csv", dtype=str)
    assert set(splits["split"]) == {"development", "validation", "test"}
    # no patient ID in the study's outputs unless asked (the code -> ID key stays in splits.csv)
    text = (out / "study.json").read_text() + (out / "study.html").read_text()
    assert not [pid for pid in splits["patient_id"] if pid in text]
    assert any(code in text for code in splits["study_code"])
    measured = readers = 0
    for name in study["splits"]:
        res = study["results"][name]
        assert res["n_patients"] == study["split_sizes"][name]
        assert "os" in res["survival"] or res["survival"]["notes"]
        im = res.get("images")
        if im and im["n_patients"]:
            measured += 1
            for key in ("model", "copy_baseline"):
                m = im[key]
                assert 0 < m["ssim_arterial_mean"] <= 1 and m["hu_mae_portal_mean"] >= 0
                assert 0 <= m["tumour_dice_mean"] <= 1 and m["psnr_arterial_mean"] > 0
            assert im["copy_baseline"]["n_followups"] == im["model"]["n_followups"] >= 1
            if im.get("readers"):
                readers += 1
                r = im["readers"]
                assert r["columns"] == ["reader1_mrecist", "reader2_mrecist", "reader3_mrecist"]
                assert r["copy_baseline_vs_readers"]["n_reads"] == 3 * r["n_patients"]
    assert measured >= 2 and readers >= 1  # splits with a patient with an observed follow-up read by the readers
    page = (out / "study.html").read_text()
    assert "copy baseline" in page and "Harrell C" in page and "HAP" in page
    assert page.count("<h2>Split:") == 3


def test_study_trains_the_survival_engine_on_the_development_split(tmp_path):
    from HCCTwinLib.simulate import simulate_cohort

    cohort = tmp_path / "clinical_only"
    simulate_cohort(120, 9191, cohort, fast=True, write_images=False, write_truth_images=False)
    study = run_study(cohort, tmp_path / "out", splits=["development", "test"], train="always", images=False,
                      n_bootstrap=3)
    assert study["models"]["survival"]["source"].startswith("trained on the development split")
    assert (tmp_path / "out" / "models" / "hcctwin_survival.safetensors").is_file()
    dev, test = study["results"]["development"], study["results"]["test"]
    assert any("apparent" in n for n in dev["notes"]) and not test["notes"]
    assert 0.5 < dev["survival"]["os"]["model"]["harrell_c"] <= 1
    curves = test["survival_curves"]
    assert len(curves["km_by_risk"]["groups"]) == 3 and len(curves["calibration"]["predicted"]) == 5
    # cut-points come from the development split, so the test split's groups need not be equal in size
    assert curves["km_by_risk"]["cutpoints"] == dev["survival_curves"]["km_by_risk"]["cutpoints"]
    with pytest.raises(InputError, match="--train"):
        run_study(cohort, tmp_path / "o2", train="sometimes", images=False)
    shutil.rmtree(tmp_path / "out")
