"""The shipped demo models end to end: ``make demo``'s job on the small default case with every installed model
(generator included), and ``hcctwin predict`` with them, from the package folder itself (see conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from HCCTwinLib.weights import list_models, verify

from conftest import SHIPPED_WEIGHTS_DIR

pytestmark = pytest.mark.slow


def test_every_shipped_model_file_matches_its_card_and_size_limit():
    cards = list_models(SHIPPED_WEIGHTS_DIR)
    names = {c["name"] for c in cards}
    assert {"hcctwin_twin", "hcctwin_survival"} <= names
    for card in cards:
        path = SHIPPED_WEIGHTS_DIR / card["file"]
        assert path.stat().st_size < 25 * 1024 ** 2, path
        assert verify(path)["sha256"] == card["sha256"]
        assert card.get("metrics"), f"{card['name']}: the model card must carry its measured metrics"


def test_shipped_survival_engine_and_segmentation_model_agree(monkeypatch):
    """A survival engine with deep features was fitted on one segmentation encoder's features: the shipped
    segmentation model must be that encoder (a retrained segmentation model needs the engine re-trained)."""
    from HCCTwinLib.segmentation import clear_cache
    from HCCTwinLib.survival.store import load_engine

    monkeypatch.setenv("HCCTWIN_WEIGHTS_DIR", str(SHIPPED_WEIGHTS_DIR))
    clear_cache()
    engine = load_engine(SHIPPED_WEIGHTS_DIR / "hcctwin_survival.safetensors")
    assert engine.encoder_mismatch() is None
    clear_cache()


def test_demo_with_every_shipped_model(tmp_path, monkeypatch):
    from HCCTwinLib.demo import run_demo

    monkeypatch.setenv("HCCTWIN_WEIGHTS_DIR", str(SHIPPED_WEIGHTS_DIR))
    run_demo(tmp_path, small=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["virtual_followups"]) == {"tace_pd1_len", "haic_pd1_len", "pd1_tki"}
    assert all(set(v) == {"w08", "w16", "w24"} for v in result["virtual_followups"].values())
    assert "generator" in result["provenance"] and "survival" in result["provenance"]
    from HCCTwinLib.device import cpu_precision, cuda_usable

    where = "on cuda:0, mixed precision" if cuda_usable() else \
        f"on the CPU, {'bfloat16' if cpu_precision() == 'bf16' else 'float32'}"
    # the anchored twin computes in float32 numpy wherever it runs; the segmentation's outputs depend on the device
    assert result["provenance"]["generator"].endswith("on the CPU, float32")
    assert result["provenance"]["segmentation"].endswith(where)
    # the shipped segmentation model is its own PVTT stage and finds the demo patient's thrombus (10.99 mL in the
    # simulator's labels on the full-size case; the small demo case has one too)
    assert "PVTT from its own PVTT probability" in result["provenance"]["segmentation"]
    assert result["label_volumes_ml"]["pvtt"] > 1.0
    os_curves = result["survival"]["endpoints"]["os"]
    assert set(os_curves) == {"tace_pd1_len", "haic_pd1_len", "pd1_tki"}
    assert result["survival"]["recommendation"]["regimen"] in os_curves
    # the shipped engine carries the competing-risk metastasis model beside the 2-year logistic one (issue 27)
    competing = result["survival"]["metastasis"]["competing_risk"]
    assert 0.0 < competing["cumulative_incidence"] < 1.0 and competing["n_fit"] > 100
    # virtual follow-ups feed the landmark model and the response table
    assert result["response"]["tace_pd1_len"]["w08"]["mrecist"] in {"CR", "PR", "SD", "PD", "NE"}
    # the layout picture has the three linked panels: pre | real | virtual
    from PIL import Image

    views = sorted(p.name for p in (tmp_path / "views").glob("*.png"))
    assert len(views) >= 3, views
    px = np.asarray(Image.open(tmp_path / "layout.png").convert("L"), float)
    thirds = np.array_split(px, 3, axis=1)
    assert all(t.std() > 10 for t in thirds)  # no blank panel
