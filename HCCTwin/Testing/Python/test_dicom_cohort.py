"""End to end: ``hcctwin simulate --format dicom`` -> ``hcctwin import`` gives the NIfTI simulation of the same seed
(labels exact, HU within 1), the site clinical table read back, and broken patients skipped with their reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest

from HCCTwinLib import io
from HCCTwinLib.cli import main
from HCCTwinLib.simulate import simulate_cohort
from HCCTwinLib.simulate.dicom_export import MRECIST_ORDER, reader_reads, simulate_dicom_cohort
from HCCTwinLib.sitemap import load_mapping

SEED, N = 11, 3


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    base = tmp_path_factory.mktemp("dicom_cohort")
    sim, nii, imp = base / "sim", base / "nii", base / "imported"
    assert main(["simulate", "--n", str(N), "--seed", str(SEED), "--out", str(sim), "--fast", "--format",
                 "dicom"]) == 0
    simulate_cohort(N, SEED, nii, fast=True, workers=1, write_truth_images=False)
    assert main(["import", "--dicom", str(sim / "dicom"), "--out", str(imp), "--clinical",
                 str(sim / "clinical_site.csv"), "--mapping", str(sim / "mapping.json")]) == 0
    return {"sim": sim, "nii": nii, "imported": imp, "table": pd.read_csv(nii / "clinical.csv", keep_default_na=False)}


def test_simulated_dicom_tree_layout(cohorts):
    sim, table = cohorts["sim"], cohorts["table"]
    assert sorted(p.name for p in sim.iterdir()) == ["clinical_site.csv", "cohort.json", "dicom", "mapping.json",
                                                     "truth"]
    assert json.loads((sim / "cohort.json").read_text())["format"] == "dicom"
    for name in ("counterfactuals.csv", "patients.csv"):  # the truth tables as the NIfTI format writes them
        assert (sim / "truth" / name).read_bytes() == (cohorts["nii"] / "truth" / name).read_bytes()
    assert sorted(p.name for p in (sim / "dicom").iterdir()) == sorted(table["patient_id"])
    for row in table.itertuples():
        weeks = [int(w[1:]) for w in row.followups.split(";") if w]
        studies = sorted((sim / "dicom" / row.patient_id).iterdir())
        assert len(studies) == 1 + len(weeks)
        dates = []
        for study in studies:
            series = sorted(p.name.split("-")[1] for p in study.iterdir())
            assert series == ["ARTERIAL", "PORTAL VENOUS", "Segmentation"], study
            ds = pydicom.dcmread(next(study.glob("3.000000-*/1-001.dcm")))
            assert ds.PatientID == row.patient_id and str(ds.PatientName).startswith("SIMULATED^")
            assert ds.Modality == "CT" and ds.SeriesDescription == "PORTAL VENOUS"
            seg = pydicom.dcmread(next(study.glob("300.000000-*/1-1.dcm")))
            assert seg.Modality == "SEG" and seg.StudyInstanceUID == ds.StudyInstanceUID
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
            dates.append(dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date())
        dates.sort()
        assert [round((d - dates[0]).days / 7) for d in dates[1:]] == weeks
    mapping = load_mapping(sim / "mapping.json")
    site = pd.read_csv(sim / "clinical_site.csv")
    assert list(site.columns) == [r.column for r in mapping.rules.values()]
    assert {"1_mRECIST", "2_mRECIST", "3_mRECIST"} <= set(site.columns)


def test_import_gives_the_nifti_simulation(cohorts):
    imp, nii, table = cohorts["imported"], cohorts["nii"], cohorts["table"]
    log = json.loads((imp / "import_log.json").read_text())
    assert log["summary"]["patients_imported"] == N and not log["skipped"]
    assert log["clinical"]["patients_without_images"] == [] and log["clinical"]["patients_without_clinical_row"] == []
    text = json.dumps(log)
    assert "SIMULATED^" not in text and "PATIENT0" not in text  # IDs only, never names
    for row in table.itertuples():
        weeks = [w for w in row.followups.split(";") if w]
        folder = imp / "cases" / row.patient_id
        found = sorted(p.name for p in (folder / "followup").iterdir()) if (folder / "followup").exists() else []
        assert found == weeks
        for sub in ["pre", *(f"followup/{w}" for w in weeks)]:
            got = io.load_case(folder / sub)
            want = io.load_case(nii / "cases" / row.patient_id / sub)
            assert got.geometry.same_grid(want.geometry, tol=1e-5), sub
            np.testing.assert_array_equal(got.labels, want.labels)
            for phase in ("arterial", "portal"):
                assert np.abs(got.phases[phase] - want.phases[phase]).max() <= 1.0, (row.patient_id, sub, phase)
    # clinical.csv: HCCTwin columns read back from the site table, readers' reads kept
    got, _ = io.read_clinical_table(imp / "clinical.csv")
    truth, _ = io.read_clinical_table(cohorts["sim"] / "truth" / "clinical.csv")
    assert list(got["patient_id"]) == list(truth["patient_id"])
    for col in got.columns:
        if col == "patient_id":
            continue
        for a, b in zip(got[col], truth[col]):
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                assert a == pytest.approx(b, rel=1e-3, abs=1e-2), col
            else:
                assert a == b, col
    assert {"reader1_mrecist", "reader2_mrecist", "reader3_mrecist", "followups", "os_months"} <= set(got.columns)


def test_reader_reads_flip_to_adjacent_categories():
    n = 3000
    rng = np.random.default_rng(0)
    truth_values = rng.choice(MRECIST_ORDER, n)
    clinical = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "followups": "w08;w16"})
    clinical.loc[0, "followups"] = ""  # no follow-up: no read
    cf = pd.DataFrame({"patient_id": clinical["patient_id"], "received": 1, "response_w08": truth_values})
    cf.loc[1, "response_w08"] = "NE"
    cf = pd.concat([cf, cf.assign(received=0, response_w08="CR")])  # other regimens' rows are not read
    reads = reader_reads(clinical, cf, seed=5)
    pd.testing.assert_frame_equal(reads, reader_reads(clinical, cf, seed=5))  # deterministic
    assert not reads.equals(reader_reads(clinical, cf, seed=6))
    assert reads.loc[[0, 1], ["reader1_mrecist", "reader2_mrecist", "reader3_mrecist"]].isna().all().all()
    for r in (1, 2, 3):
        read = reads[f"reader{r}_mrecist"].iloc[2:]
        steps = np.array([MRECIST_ORDER.index(a) - MRECIST_ORDER.index(b) for a, b in zip(read, truth_values[2:])])
        assert set(np.unique(np.abs(steps))) <= {0, 1}  # only adjacent categories
        assert 0.12 < np.mean(steps != 0) < 0.18
    disagree = (reads["reader1_mrecist"] != reads["reader2_mrecist"]).iloc[2:].mean()
    assert 0.2 < disagree < 0.32  # readers flip independently


def test_same_seed_same_files(tmp_path):
    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "cohort.json"}  # (holds the run time)

    simulate_dicom_cohort(1, 3, tmp_path / "a", fast=True, workers=1)
    simulate_dicom_cohort(1, 3, tmp_path / "b", fast=True, workers=1)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and any(k.endswith("1-1.dcm") for k in a)
    assert main(["simulate", "--n", "1", "--seed", "3", "--out", str(tmp_path / "a"), "--fast", "--format",
                 "dicom"]) == 2  # never into a folder that holds files


def _by_date(patient_dir):
    """Study folders in StudyDate order (TCIA's MM-DD-YYYY folder names do not sort by date)."""
    return sorted(patient_dir.iterdir(), key=lambda d: pydicom.dcmread(next(d.rglob("*.dcm")),
                                                                        stop_before_pixels=True).StudyDate)


def test_import_skips_broken_patients_with_reason(cohorts, tmp_path, capsys):
    table = cohorts["table"]
    root = tmp_path / "dicom"
    shutil.copytree(cohorts["sim"] / "dicom", root)
    p0, p1 = table["patient_id"][0], table["patient_id"][1]
    # patient 0: one slice of the pre-treatment arterial series cut short (header intact, pixels missing)
    pre = _by_date(root / p0)[0]
    victim = sorted(next(pre.glob("2.000000-*")).iterdir())[10]
    victim.write_bytes(victim.read_bytes()[:-3000])
    # patient 1: a slice of the second follow-up's portal series lost
    fu2 = _by_date(root / p1)[2]
    sorted(next(fu2.glob("3.000000-*")).iterdir())[12].unlink()
    out = tmp_path / "imported"
    rc = main(["import", "--dicom", str(root), "--out", str(out), "--clinical",
               str(cohorts["sim"] / "clinical_site.csv"), "--mapping", str(cohorts["sim"] / "mapping.json")])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"skipped {p0}" in err
    log = json.loads((out / "import_log.json").read_text())
    by_pid = {p["patient_id"]: p for p in log["patients"]}
    assert by_pid[p0]["status"] == "skipped" and victim.name in by_pid[p0]["reason"]
    assert "truncated" in by_pid[p0]["reason"] and "pre-treatment" in by_pid[p0]["reason"]
    assert not (out / "cases" / p0).exists()
    weeks = table["followups"][1].split(";")
    assert by_pid[p1]["status"] == "imported" and by_pid[p1]["followups"] == [w for w in weeks if w != weeks[1]]
    skipped = [s for s in log["skipped"] if s["patient_id"] == p1]
    assert len(skipped) == 1 and "missing" in skipped[0]["reason"]
    assert log["clinical"]["patients_without_images"] == [p0]
    clinical, _ = io.read_clinical_table(out / "clinical.csv")
    assert clinical.set_index("patient_id").loc[p0, "followups"] is None  # kept (survival data), no images
    # user errors: one clear line, status 2
    assert main(["import", "--dicom", str(root), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["import", "--dicom", str(root), "--out", str(tmp_path / "x"), "--mapping", "m.json"]) == 2
    assert "--clinical" in capsys.readouterr().err
