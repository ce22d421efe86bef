"""The pre-treatment-oracle ceiling benchmark (benchmarks/generator_ceiling.py): its point predictions and a tiny
end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def ceiling():
    return load_benchmark("generator_ceiling")


def test_point_predictions(ceiling):
    assert ceiling.weighted_median(np.array([3.0, 1.0, 2.0]), np.ones(3)) == 2.0
    assert ceiling.weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 10.0])) == 3.0
    draws = np.array([0.5, 1.0, 4.0, 8.0, 40.0])
    best = ceiling.relative_error_optimal(draws)

    def expected(pred):
        return float(np.mean(np.abs(pred - draws) / np.maximum(draws, 1.0)))

    # it minimises the expected relative error over a fine grid of candidates
    grid = np.linspace(0.0, 50.0, 5001)
    assert expected(best) <= min(expected(g) for g in grid) + 1e-9
    assert ceiling.mode_category(["PR", "SD", "PR", "NE", "NE", "NE"]) == "PR"
    assert ceiling.mode_category(["PD", "SD"]) == "SD"  # a tie goes to the better response
    assert ceiling.mode_category(["NE"]) is None


def test_tiny_run_scores_every_method(ceiling, tmp_path):
    result = ceiling.run(seed=900, n=3, n_draws=8, train_seed=101, train_n=6, evaluation=None, log=lambda *_: None)
    assert result["n_followups"] == len(result["rows"]) > 0
    for m in ceiling.METHODS:
        s = result["all"][m]
        assert s["viable_volume_median_rel_error"] >= 0
    row = result["rows"][0]
    assert row["oracle_p10_ml"] <= row["oracle_median_viable_ml"] <= row["oracle_p90_ml"]
    assert row["copy_viable_ml"] == row["pre_viable_ml"]
    # the copy baseline is exact only where the truth did not change; the oracle must beat it on this cohort
    assert result["all"]["oracle_median"]["viable_volume_median_rel_error"] < \
        result["all"]["copy"]["viable_volume_median_rel_error"]
    jpath, mpath = ceiling.write_report(result, tmp_path)
    assert json.loads(jpath.read_text())["n_patients"] == 3
    assert "pre-treatment oracle" in mpath.read_text()
