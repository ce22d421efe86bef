"""Cohort work on Dask (issue 27): the scheduler option, ordered results, and the same feature table and
segmentation metrics from a 2-worker local cluster as from the serial run."""

from __future__ import annotations

import operator

import numpy as np
import pandas as pd
import pytest

from HCCTwinLib.errors import InputError
from HCCTwinLib.parallel import client_for, map_ordered, parse_scheduler


def test_scheduler_values():
    assert parse_scheduler(None) == ("serial", None) and parse_scheduler("local") == ("local", None)
    assert parse_scheduler("distributed://node1:8786") == ("distributed", "tcp://node1:8786")
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("distributed", "tcp://10.0.0.5:8786")
    for bad in ("dask", "distributed://", "distributed://host", "distributed://host:port"):
        with pytest.raises(InputError, match="serial, local or distributed"):
            parse_scheduler(bad)


def test_serial_map_keeps_order_and_spreads_tuples():
    seen = []
    out = map_ordered(operator.mul, [(2, 3), (4, 5), (6, 7)], progress=lambda f, m: seen.append(m))
    assert out == [6, 20, 42] and seen[-1] == "patient 3/3"
    assert map_ordered(abs, []) == []


def test_cli_refuses_a_bad_scheduler_in_one_line(capsys, tmp_path):
    from HCCTwinLib import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"), "--scheduler", "yarn"])
    assert exc.value.code == 2 and "distributed://HOST:PORT" in capsys.readouterr().err


def test_unreachable_scheduler_is_one_line():
    with pytest.raises(InputError, match="no Dask scheduler answers"):
        with client_for("distributed://127.0.0.1:1"):
            pass


def test_a_running_scheduler_is_reached_at_its_address():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None, silence_logs=40) as cluster:
        host_port = cluster.scheduler_address.removeprefix("tcp://")
        with client_for(f"distributed://{host_port}") as client:
            assert map_ordered(operator.add, [(1, 2), (3, 4)], client=client) == [3, 7]


@pytest.fixture(scope="module")
def local_client():
    with client_for("local", workers=2) as client:
        yield client


def test_local_cluster_returns_results_in_input_order(local_client):
    assert len(local_client.scheduler_info()["workers"]) == 2
    items = [(i, i + 1) for i in range(12)]
    assert map_ordered(operator.mul, items, client=local_client) == [a * b for a, b in items]
    with pytest.raises(ZeroDivisionError):
        map_ordered(operator.truediv, [(1, 1), (1, 0)], client=local_client)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    from HCCTwinLib.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("dask") / "cohort"
    simulate_cohort(6, 4242, out, fast=True, write_truth_images=False)
    return out


def test_feature_table_on_two_workers_equals_the_serial_one(small_cohort, local_client, monkeypatch):
    from HCCTwinLib import parallel
    from HCCTwinLib.survival.cohort import cohort_feature_table

    serial, notes_serial = cohort_feature_table(small_cohort, deep=False)
    # the same call through --scheduler local (its cluster is the module's 2-worker one)
    opened = []

    class _Reuse:
        def __init__(self, spec, workers):
            opened.append((spec, workers))

        def __enter__(self):
            return local_client

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(parallel, "client_for", _Reuse)
    parallel_table, notes_parallel = cohort_feature_table(small_cohort, deep=False, scheduler="local", workers=2)
    assert opened == [("local", 2)]
    assert notes_parallel == notes_serial and list(parallel_table.columns) == list(serial.columns)
    pd.testing.assert_frame_equal(parallel_table, serial)
    assert np.isfinite(serial.filter(like="img_").to_numpy(float)).any()


def _reuse(local_client):
    """A stand-in for ``parallel.client_for`` that hands out the test's running 2-worker cluster."""
    class _Reuse:
        def __init__(self, spec, workers):
            pass

        def __enter__(self):
            return local_client

        def __exit__(self, *exc):
            return False

    return _Reuse


def test_segmentation_metrics_on_two_workers_equal_the_serial_ones(small_cohort, local_client, monkeypatch):
    from HCCTwinLib import parallel
    from HCCTwinLib.evaluate import evaluate_segmentation
    from HCCTwinLib.io import read_clinical_table

    ids = read_clinical_table(small_cohort / "clinical.csv")[0]["patient_id"]
    serial = evaluate_segmentation(small_cohort, ids, 2, "cpu")  # ~10 s a patient on 2 cores

    monkeypatch.setattr(parallel, "client_for", _reuse(local_client))
    dask_run = evaluate_segmentation(small_cohort, ids, 2, "cpu", scheduler="local", workers=2)
    assert dask_run["n"] == serial["n"] == 2
    assert [r["patient_id"] for r in dask_run["per_patient"]] == [r["patient_id"] for r in serial["per_patient"]]
    for key, value in serial["mean_dice"].items():  # bf16 or fp32 on both sides: the same arithmetic, same Dice
        assert dask_run["mean_dice"][key] == pytest.approx(value, abs=1e-6) if value is not None else \
            dask_run["mean_dice"][key] is None


def test_generator_fit_reads_follow_ups_on_two_workers_as_in_the_serial_run(small_cohort, local_client, monkeypatch,
                                                                            tmp_path):
    """``hcctwin train generator --scheduler local``: the observed follow-ups read on Dask give the same records, in
    the same order, and the same fitted kinetics as the serial run."""
    from HCCTwinLib import parallel
    from HCCTwinLib.twin.fit import cohort_records, train_kinetic

    serial, info = cohort_records(small_cohort)
    monkeypatch.setattr(parallel, "client_for", _reuse(local_client))
    dask_run, dask_info = cohort_records(small_cohort, scheduler="local", workers=2)
    assert info == dask_info and info["followups"] == len(serial) > 0
    assert [(r.regimen, r.weeks, r.lesions) for r in serial] == [(r.regimen, r.weeks, r.lesions) for r in dask_run]
    a = train_kinetic(small_cohort, tmp_path / "serial", log=None, min_patients=1, min_lesions=1)
    b = train_kinetic(small_cohort, tmp_path / "dask", log=None, min_patients=1, min_lesions=1, scheduler="local",
                      workers=2)
    from safetensors.numpy import load_file

    state_a = load_file(tmp_path / "serial" / "hcctwin_twin.safetensors")
    state_b = load_file(tmp_path / "dask" / "hcctwin_twin.safetensors")
    assert sorted(state_a) == sorted(state_b)
    for key, value in state_a.items():
        np.testing.assert_array_equal(value, state_b[key])
    assert a["per_cell"] == b["per_cell"]


# ------------------------------------------------------------------------------------------ predict over a cohort
def test_predict_over_a_cohort_on_two_workers_equals_the_serial_run(small_cohort, local_client, monkeypatch,
                                                                     tmp_path):
    import json

    from HCCTwinLib import batch, parallel
    from HCCTwinLib.batch import PREDICTIONS_CSV, predict_cohort
    from HCCTwinLib.pipeline import PipelineOptions

    options = PipelineOptions(device="cpu", samples=1, seed=3)
    kwargs = dict(regimens=["tace_pd1_len", "haic_pd1_len"], weeks=[8], options=options, max_cases=3)
    reads, real_read = [], batch.read_clinical_table  # clinical.csv is read once for the cohort, not per patient
    monkeypatch.setattr(batch, "read_clinical_table", lambda path, *a, **k: reads.append(path) or real_read(
        path, *a, **k))
    monkeypatch.setattr(batch, "read_clinical_row", lambda *a, **k: pytest.fail("clinical.csv read per patient"))
    serial = predict_cohort(small_cohort, tmp_path / "serial", **kwargs)
    assert len(reads) == 1
    monkeypatch.setattr(parallel, "client_for", _reuse(local_client))
    dask_run = predict_cohort(small_cohort, tmp_path / "dask", scheduler="local", workers=2, **kwargs)
    assert list(serial["patient_id"]) == list(dask_run["patient_id"]) and len(serial) == 3
    assert (serial["status"] == "ok").all(), serial["message"].tolist()
    pd.testing.assert_frame_equal(serial, dask_run)
    assert pd.read_csv(tmp_path / "dask" / PREDICTIONS_CSV)["patient_id"].astype(str).tolist() == \
        list(serial["patient_id"])
    for pid in serial["patient_id"]:  # each patient's folder is what `hcctwin predict` writes for one patient
        a = json.loads((tmp_path / "serial" / pid / "result.json").read_text())
        b = json.loads((tmp_path / "dask" / pid / "result.json").read_text())
        assert a["patient_id"] == pid and a["label_volumes_ml"] == b["label_volumes_ml"]
        assert a["survival"]["endpoints"] == b["survival"]["endpoints"]
        assert (tmp_path / "dask" / pid / "tace_pd1_len" / "w08" / "portal.nii.gz").is_file()
    row = serial.iloc[0]
    assert row["domain_verdict"] in ("inside", "caution", "outside")
    assert row["tumor_total_ml"] > 0 and row["recommended_regimen"] in ("tace_pd1_len", "haic_pd1_len")
    assert 0 < row["os_rmst24_months_haic_pd1_len"] <= 24  # restricted to 24 months
    assert "os_median_months_tace_pd1_len" in serial.columns  # empty where the median is not reached


def test_predict_over_a_cohort_records_a_refused_patient_and_goes_on(small_cohort, tmp_path, capsys):
    import shutil

    from HCCTwinLib import cli
    from HCCTwinLib.batch import cohort_patients

    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort)
    ids = cohort_patients(cohort, 2)
    portal = next((cohort / "cases" / ids[0] / "pre").glob("portal*"))
    portal.write_bytes(b"not an image")
    code = cli.main(["predict", "--cohort", str(cohort), "--max-cases", "2", "--regimens", "pd1_tki", "--weeks", "8",
                     "--samples", "1", "--device", "cpu", "--deidentify", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0 and '"failed": 1' in captured.out and "P0001:" in captured.err
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert table["study_code"].tolist() == ["P0001", "P0002"] and "patient_id" not in table.columns
    assert table["status"].tolist() == ["error", "ok"] and "portal" in table["message"][0]
    assert not (tmp_path / "out" / "P0001").exists() and (tmp_path / "out" / "P0002" / "result.json").is_file()
    key = pd.read_csv(tmp_path / "out" / "codes.csv")
    assert key["patient_id"].astype(str).tolist() == ids and key["study_code"].tolist() == ["P0001", "P0002"]
    text = (tmp_path / "out" / "predictions.csv").read_text() + (tmp_path / "out" / "P0002" / "result.json").read_text()
    assert not any(pid in text for pid in ids)


def test_predict_cohort_refuses_single_patient_options(small_cohort, tmp_path, capsys):
    from HCCTwinLib import cli

    code = cli.main(["predict", "--cohort", str(small_cohort), "--patient", "X", "--out", str(tmp_path / "o")])
    assert code == 2 and "leave out --patient" in capsys.readouterr().err
    code = cli.main(["predict", "--out", str(tmp_path / "o")])
    assert code == 2 and "--cohort" in capsys.readouterr().err
    code = cli.main(["predict", "--cohort", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "no clinical.csv" in capsys.readouterr().err
