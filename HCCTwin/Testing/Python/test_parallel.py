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


def test_segmentation_metrics_on_two_workers_equal_the_serial_ones(small_cohort, local_client, monkeypatch):
    from HCCTwinLib import parallel
    from HCCTwinLib.evaluate import evaluate_segmentation
    from HCCTwinLib.io import read_clinical_table

    ids = read_clinical_table(small_cohort / "clinical.csv")[0]["patient_id"]
    serial = evaluate_segmentation(small_cohort, ids, 3, "cpu")

    class _Reuse:
        def __init__(self, spec, workers):
            pass

        def __enter__(self):
            return local_client

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(parallel, "client_for", _Reuse)
    dask_run = evaluate_segmentation(small_cohort, ids, 3, "cpu", scheduler="local", workers=2)
    assert dask_run["n"] == serial["n"] == 3
    assert [r["patient_id"] for r in dask_run["per_patient"]] == [r["patient_id"] for r in serial["per_patient"]]
    for key, value in serial["mean_dice"].items():  # bf16 or fp32 on both sides: the same arithmetic, same Dice
        assert dask_run["mean_dice"][key] == pytest.approx(value, abs=1e-6) if value is not None else \
            dask_run["mean_dice"][key] is None
