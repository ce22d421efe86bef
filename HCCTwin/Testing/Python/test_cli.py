"""The command line: help, clear errors with exit status 2, and the commands that need no trained model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from HCCTwinLib.cli import main


def test_inspect_prints_geometry_and_volumes(pre_folder, capsys):
    assert main(["inspect", "--pre", str(pre_folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["patient_id"] == "P7" and info["shape_kji"] == [16, 32, 32]
    assert info["spacing_mm"] == [1.0, 1.0, 2.5]
    assert info["label_volumes_ml"]["liver"] > 0


def test_bad_input_exits_2_with_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "portal.nii.gz"
    bad.write_bytes(b"garbage")
    assert main(["inspect", "--portal", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "portal.nii.gz" in err and "Traceback" not in err


def test_scores_from_values_and_unit_mistake(capsys):
    args = ["scores", "--set", "bilirubin_umol_l=20", "albumin_g_l=38", "inr=1.1", "ascites=none",
            "encephalopathy=none", "ecog=0", "afp_ng_ml=500", "n_tumors=2", "max_diameter_mm=72", "pvtt=0",
            "extrahepatic_spread=0"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scores"]["child_pugh_class"] == "A" and out["scores"]["bclc"] == "B"
    assert set(out["eligibility_warnings"]) >= {"tace_pd1_len", "haic_pd1_len", "pd1_tki"}
    assert main([*args[:1], "--set", "bilirubin_umol_l=1.2", *args[3:]]) == 2
    assert "mg/dL" in capsys.readouterr().err


def test_segment_without_a_model_says_what_to_do(pre_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HCCTWIN_WEIGHTS_DIR", str(tmp_path / "no_models"))
    code = main(["segment", "--pre", str(pre_folder), "--out", str(tmp_path / "l.nii.gz"),
                 "--weights", str(tmp_path / "no_models" / "x.safetensors")])
    assert code == 2
    assert "no segmentation model" in capsys.readouterr().err


def test_survival_cv_writes_metrics(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({
        "patient_id": [f"P{i:03d}" for i in range(n)], "age_years": rng.integers(40, 80, n), "sex": "M",
        "ecog": rng.integers(0, 2, n), "albumin_g_l": rng.normal(38, 4, n), "bilirubin_umol_l": rng.uniform(8, 40, n),
        "inr": 1.1, "ascites": "none", "encephalopathy": "none", "afp_ng_ml": np.exp(rng.normal(4, 2, n)),
        "n_tumors": rng.integers(1, 5, n), "max_diameter_mm": rng.uniform(20, 120, n), "pvtt": rng.integers(0, 2, n),
        "extrahepatic_spread": 0, "regimen": rng.choice(["tace_pd1_len", "haic_pd1_len", "pd1_tki"], n),
        "site_specific_column": "x"})
    risk = 0.02 * df["max_diameter_mm"] + 0.8 * df["pvtt"]
    df["os_months"] = rng.exponential(20 * np.exp(-risk + risk.mean()))
    df["os_event"] = (rng.random(n) < 0.8).astype(int)
    csv = tmp_path / "clinical.csv"
    df.to_csv(csv, index=False)
    assert main(["survival", "cv", "--clinical", str(csv), "--endpoint", "os", "--folds", "3", "--seed", "0",
                 "--no-engine", "--out", str(tmp_path / "cv")]) == 0
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    text = json.dumps(metrics)
    for score in ("hap", "six", "albi", "bclc"):
        assert score in text.lower()
    assert "site_specific_column" in text  # the unknown column is reported as ignored


def test_simulate_then_train_generator_from_the_cli(tmp_path):
    cohort = tmp_path / "cohort"
    assert main(["simulate", "--n", "2", "--seed", "11", "--out", str(cohort), "--fast", "--no-truth-images"]) == 0
    table = pd.read_csv(cohort / "clinical.csv")
    assert len(table) == 2 and (cohort / "cases" / table.patient_id[0] / "pre" / "portal.nii.gz").is_file()
    assert main(["simulate", "--n", "2", "--seed", "11", "--out", str(cohort)]) == 2  # never overwrites
    out = tmp_path / "gen"
    assert main(["train", "generator", "--architecture", "flow", "--cohort", str(cohort), "--out", str(out),
                 "--epochs", "1", "--batch-size", "2"]) == 0
    from HCCTwinLib.weights import load_state

    state, card = load_state(out / "hcctwin_twin.safetensors")
    assert card["training"]["epochs_completed"] == 1 and state
    # continue one more epoch in bfloat16 autocast within a time budget (the flags reach the trainer)
    assert main(["train", "generator", "--architecture", "flow", "--cohort", str(cohort), "--out", str(out),
                 "--epochs", "2", "--batch-size", "2", "--cpu-bf16", "--time-budget", "600"]) == 0
    state, card = load_state(out / "hcctwin_twin.safetensors")
    assert card["training"]["epochs_completed"] == 2 and card["hyperparameters"]["precision"].startswith("bfloat16")


def test_outputs_that_would_overwrite_an_input_are_refused_before_computing(pre_folder, tmp_path, capsys,
                                                                           monkeypatch):
    """Issue 24 item 1: `segment --out` on an input phase or the label map, `predict --labels X` with X where predict
    writes, are refused with one line and exit 2; the input is unchanged (checked before any model is loaded)."""
    from HCCTwinLib import segmentation

    monkeypatch.setattr(segmentation, "get_segmenter",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded before the check")))
    for target in ("portal.nii.gz", "labels.nii.gz"):
        before = (pre_folder / target).read_bytes()
        assert main(["segment", "--pre", str(pre_folder), "--out", str(pre_folder / target)]) == 2
        err = capsys.readouterr().err
        assert "would overwrite the input" in err and "Traceback" not in err
        assert (pre_folder / target).read_bytes() == before
    out = tmp_path / "out"
    labels = out / "tace_pd1_len" / "w08" / "labels.nii.gz"
    labels.parent.mkdir(parents=True)
    labels.write_bytes((pre_folder / "labels.nii.gz").read_bytes())
    before = labels.read_bytes()
    assert main(["predict", "--pre", str(pre_folder), "--labels", str(labels), "--regimens", "tace_pd1_len",
                 "--weeks", "8", "--out", str(out)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and labels.read_bytes() == before


@pytest.mark.parametrize("value", [65538, 256 + 2, -254, 2.0 + 65536])
def test_label_values_do_not_wrap(tmp_path, value):
    """Issue 24 item 3: a label value that a 8- or 16-bit cast would wrap into 0..4 is refused, not read as 2."""
    import SimpleITK as sitk

    from HCCTwinLib.errors import InputError
    from HCCTwinLib.io import read_image

    arr = np.zeros((4, 6, 6), np.float64 if isinstance(value, float) else np.int32)
    arr[1:3, 2:4, 2:4] = value
    path = tmp_path / "labels.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(InputError, match="outside 0..4"):
        read_image(path, labels=True)


def test_event_columns_must_be_0_or_1(tmp_path):
    """Issue 24 item 9: R-style events (1 = censored, 2 = dead) or text are refused, not counted as events."""
    from HCCTwinLib.errors import InputError
    from HCCTwinLib.io import read_clinical_table

    path = tmp_path / "clinical.csv"
    path.write_text("patient_id,os_months,os_event\nA,10,1\nB,12,2\nC,3,1\n")
    with pytest.raises(InputError, match="R's coding"):
        read_clinical_table(path)
    path.write_text("patient_id,os_months,pfs_event\nA,10,yes\nB,12,0\n")
    with pytest.raises(InputError, match="'pfs_event' has value"):
        read_clinical_table(path)
    path.write_text("patient_id,os_months,os_event\nA,10,1\nB,12,0\nC,3,NA\n")
    table, _ = read_clinical_table(path)
    assert table["os_event"].sum() == 1


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--n", "1", "--seed", "-1", "--out", "OUT"], "between 0 and 4294967295"),
    (["predict", "--pre", "PRE", "--seed", "1e20", "--out", "OUT"], "whole number"),
    (["predict", "--pre", "PRE", "--samples", "10000", "--out", "OUT"], "between 1 and 64"),
    (["predict", "--pre", "PRE", "--samples", "0", "--out", "OUT"], "between 1 and 64"),
])
def test_seed_and_samples_are_bounded_with_one_line(argv, message, tmp_path, capsys):
    """Issue 24 items 12-13: `simulate --seed -1` was a traceback, `--samples 10000` allocated all noise up front."""
    argv = [str(tmp_path / a) if a in ("OUT", "PRE") else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "OUT").exists()


def test_predict_takes_a_real_followup_as_two_phase_files(pre_folder, tmp_path):
    """`predict --followup-arterial A --followup-portal P` (files or DICOM folders, as the pre-treatment phases): the
    follow-up, acquired with the table moved, is registered onto the pre-treatment grid and written under real/."""
    from HCCTwinLib.cases import Geometry
    from HCCTwinLib.io import read_image, write_image

    portal, g = read_image(pre_folder / "portal.nii.gz")
    moved = Geometry(g.shape, g.spacing, (2.0, -3.0, 2.5))  # the same anatomy, the table 4 mm away
    fu = tmp_path / "fu"
    write_image(read_image(pre_folder / "arterial.nii.gz")[0], moved, fu / "a.nii.gz")
    write_image(portal, moved, fu / "p.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "--pre", str(pre_folder), "--regimens", "tace_pd1_len", "--weeks", "8", "--samples", "1",
                 "--followup-arterial", str(fu / "a.nii.gz"), "--followup-portal", str(fu / "p.nii.gz"),
                 "--followup-weeks", "6", "--followup-regimen", "tace_pd1_len", "--generator-weights",
                 str(tmp_path / "none.safetensors"), "--allow-missing-models", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["provenance"]["real_followup"].startswith("registered to the pre-treatment scan")
    registered, rg = read_image(out / "real" / "w06" / "portal.nii.gz")
    assert rg.same_grid(g)
    liver = read_image(pre_folder / "labels.nii.gz", labels=True)[0] > 0
    assert np.abs(registered - portal)[liver].mean() < 0.5 * np.abs(np.roll(portal, 2, axis=2) - portal)[liver].mean()
