"""Deep features from the segmentation encoder (HCCTwinLib.survival.deep): the raw pooled vector of a phantom study
with the shipped segmentation model (shape, determinism, tumour size matters), a clear note without a segmentation
model, and the PCA carried by the survival engine through its model file with identical predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_survival import make_cohort

from HCCTwinLib.cases import Geometry
from HCCTwinLib.errors import InputError
from HCCTwinLib.survival.cohort import baseline_image_features
from HCCTwinLib.survival.deep import (
    DeepFeatureReducer,
    deep_raw_features,
    encoder_id,
    get_encoder,
    raw_columns,
)
from HCCTwinLib.survival.engine import IMAGING_COVARIATES, METASTASIS_DEEP_FEATURES, _fit_deep, fit_engine
from HCCTwinLib.survival.features import clinical_features
from HCCTwinLib.survival.store import load_engine, save_engine

from conftest import make_phantom

GEOM = Geometry(shape=(24, 40, 48), spacing=(1.5, 1.5, 3.0), origin=(-30.0, -40.0, 10.0))


@pytest.fixture(scope="module")
def encoder():
    seg, note = get_encoder()
    # the shipped segmentation model is installed for every test session (conftest.py): not finding it is a failure
    assert seg is not None, note
    return seg


def _study(radius: float):
    """Phantom with a tumour sphere of ``radius`` voxels (HU and labels), arterial brighter than portal."""
    hu, labels = make_phantom(GEOM.shape, seed=1)
    k, j, i = np.indices(GEOM.shape)
    c = np.array(GEOM.shape) / 2
    liver = labels > 0
    tumor = (((k - c[0]) / 1.0) ** 2 + (j - c[1]) ** 2 + (i - 0.6 * c[2]) ** 2 <= radius ** 2) & liver
    labels = np.where(liver, 1, 0).astype(np.uint8)
    labels[tumor] = 2
    art = np.where(tumor, 160.0, hu).astype(np.float32)
    por = np.where(tumor, 70.0, hu - 10.0).astype(np.float32)
    return labels, art, por


def test_raw_features_shape_determinism_and_tumour_size(encoder):
    labels, art, por = _study(6)
    a, notes = deep_raw_features(labels, GEOM, art, por, segmenter=encoder)
    b, _ = deep_raw_features(labels, GEOM, art, por, segmenter=encoder)
    names = raw_columns(encoder_id(encoder)["channels"])
    assert list(a) == names["tumor"] + names["liver"] and not notes
    assert len(a) == 2 * sum(encoder_id(encoder)["channels"].values())
    assert all(np.isfinite(v) for v in a.values())
    assert a == b  # deterministic: same input, same numbers
    small_labels, small_art, small_por = _study(2)
    s, _ = deep_raw_features(small_labels, GEOM, small_art, small_por, segmenter=encoder)
    ta = np.array([a[n] for n in names["tumor"]])
    ts = np.array([s[n] for n in names["tumor"]])
    assert np.linalg.norm(ta - ts) > 0.05 * np.linalg.norm(ta)  # a large and a small tumour look different
    # through the engine's feature function: the same numbers next to img_* / rad_*
    feats = baseline_image_features(labels, GEOM, art, por, deep=True, segmenter=encoder)
    assert feats["img_viable_volume_ml"] > 0 and all(feats[n] == a[n] for n in names["tumor"])
    assert not any(k.startswith("deepraw_") for k in baseline_image_features(labels, GEOM, art, por))


def test_no_segmentation_model_gives_a_note_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HCCTWIN_WEIGHTS_DIR", str(tmp_path))  # an empty weights folder
    labels, art, por = _study(4)
    feats, notes = deep_raw_features(labels, GEOM, art, por)
    assert feats == {} and len(notes) == 1 and "no segmentation model is installed" in notes[0]
    row = baseline_image_features(labels, GEOM, art, por, deep=True)
    assert "img_viable_volume_ml" in row and not any(k.startswith("deepraw_") for k in row)


def test_no_liver_or_missing_phase_is_noted(encoder):
    labels, art, por = _study(4)
    feats, notes = deep_raw_features(np.zeros_like(labels), GEOM, art, por, segmenter=encoder)
    assert feats == {} and "no liver" in notes[0]
    feats, notes = deep_raw_features(labels, GEOM, art, None, segmenter=encoder)
    assert feats == {} and "portal" in notes[0]


def _table(encoder, n=200, seed=5):
    """Synthetic training table: clinical features + outcomes (test_survival.make_cohort), random imaging columns and
    raw deep features whose first tumour channel carries the metastasis signal."""
    df, _ = make_cohort(n, seed=seed)
    feats, _ = clinical_features(df)
    table = feats.join(df[["patient_id", "regimen", "os_months", "os_event", "pfs_months", "pfs_event",
                           "metastasis_months", "metastasis_event"]])
    rng = np.random.default_rng(seed)
    for col in IMAGING_COVARIATES:
        table[col] = rng.normal(size=n)
    names = raw_columns(encoder_id(encoder)["channels"])
    latent = rng.normal(size=(n, 4))
    raw = {}
    for region in ("tumor", "liver"):
        mix = rng.normal(size=(4, len(names[region])))
        values = latent @ mix + 0.1 * rng.normal(size=(n, len(names[region])))
        raw.update({c: values[:, j] for j, c in enumerate(names[region])})
    raw[names["tumor"][0]] = raw[names["tumor"][0]] + 2.0 * table["metastasis_event"].to_numpy()
    return pd.concat([table, pd.DataFrame(raw, index=table.index)], axis=1), names


@pytest.fixture(scope="module")
def deep_engine(encoder, tmp_path_factory):
    table, names = _table(encoder)
    engine, _ = fit_engine(table, n_bootstrap=2, seed=0)
    path, _ = save_engine(engine, tmp_path_factory.mktemp("deep") / "hcctwin_survival.safetensors")
    return engine, path, table, names


def test_pca_state_round_trip_through_the_engine_file(encoder, deep_engine):
    engine, path, table, names = deep_engine
    assert engine.uses_deep and engine.deep.encoder_["sha256"] == encoder.card["sha256"]
    cols = engine.deep.columns_
    assert cols == ["deep_tumor_1", "deep_tumor_2", "deep_tumor_3", "deep_liver_1", "deep_liver_2"]
    assert [c for c in engine.metastasis.features_ if c.startswith("deep_")] == list(METASTASIS_DEEP_FEATURES)
    z = engine.deep.transform(table)
    assert np.allclose(z.std(ddof=1), 1.0) and np.allclose(z.mean(), 0.0, atol=1e-9)  # whitened on training rows
    # refit on the same rows: the same components (deterministic signs)
    again = DeepFeatureReducer(engine.deep.n_components).fit(table, engine.deep.encoder_)
    assert np.allclose(again.transform(table), z)
    loaded = load_engine(path)
    assert loaded.uses_deep and loaded.deep.columns_ == cols
    assert np.allclose(loaded.deep.transform(table), z)
    row = table[(table["extrahepatic_spread"] == 0)].iloc[3]
    clinical = {k: row[k] for k in ("age_years", "ecog", "albumin_g_l", "bilirubin_umol_l", "inr", "afp_ng_ml",
                                    "n_tumors", "max_diameter_mm", "pvtt", "extrahepatic_spread")}
    image = {k: float(row[k]) for k in row.index if str(k).startswith(("img_", "deepraw_"))}
    a = engine.predict(clinical, image, ["tace_pd1_len", "pd1_tki"])
    b = loaded.predict(clinical, image, ["tace_pd1_len", "pd1_tki"])
    assert a["metastasis"]["risk"] == pytest.approx(b["metastasis"]["risk"], abs=1e-12)
    assert {k: v for k, v in a["metastasis"]["points"].items()} == pytest.approx(b["metastasis"]["points"])
    assert any(k.startswith("deep_") for k in a["metastasis"]["points"])
    assert np.allclose(a["endpoints"]["os"]["pd1_tki"]["survival"], b["endpoints"]["os"]["pd1_tki"]["survival"])
    # the deep columns change the risk: without the raw features the training medians are used, with a note
    c = loaded.predict(clinical, {k: v for k, v in image.items() if k.startswith("img_")}, ["tace_pd1_len"])
    assert c["metastasis"]["risk"] != pytest.approx(b["metastasis"]["risk"], abs=1e-9)
    assert any("deep (segmentation-encoder) features not computed" in n for n in c["notes"])
    # a table with only the raw columns (hcctwin evaluate / study): the models derive deep_* themselves
    tace = table[table["regimen"] == "tace_pd1_len"]
    assert np.allclose(loaded.metastasis.predict_proba(tace), engine.metastasis.predict_proba(tace))
    # no raw deep columns in the training table: not used, with a note; deep=False: not used; deep=True: an error
    notes = []
    assert _fit_deep(table.drop(columns=names["tumor"] + names["liver"]), None, notes) is None
    assert any("deep (segmentation-encoder) features not used" in n for n in notes)
    assert _fit_deep(table, False, []) is None
    with pytest.raises(InputError, match="not used"):
        _fit_deep(table.drop(columns=names["tumor"] + names["liver"]), True, [])


def test_pipeline_computes_the_deep_features_the_engine_needs(deep_engine):
    """pipeline.update_survival asks baseline_image_features for the raw encoder features when the engine uses them
    (and only then): the patient's metastasis points include the deep columns, without an 'imputed' note."""
    from HCCTwinLib.pipeline import PipelineOptions, run_case
    from HCCTwinLib.simulate.default import default_case

    _, path, _, _ = deep_engine
    case, _ = default_case(small=True)
    result = run_case(case, ["tace_pd1_len", "pd1_tki"], (8,), options=PipelineOptions(survival_model=str(path)))
    assert any(k.startswith("deepraw_tumor_") for k in result.image_features)
    notes = result.survival["notes"]
    assert not any("deep (segmentation-encoder) features not computed" in n for n in notes)
    if "risk" in result.survival.get("metastasis", {}):
        assert any(k.startswith("deep_") for k in result.survival["metastasis"]["points"])


def test_a_different_segmentation_model_is_named_in_the_notes(encoder, deep_engine):
    """The engine records the sha256 of the encoder its deep features came from; predicting with raw features of
    another segmentation model (same architecture, other weights) gives a note saying so, not silence."""
    import copy

    engine, _, table, _ = deep_engine
    assert engine.encoder_mismatch(encoder) is None
    other = copy.copy(encoder)
    other.card = dict(encoder.card, sha256="0" * 64)
    msg = engine.encoder_mismatch(other)
    assert msg and "000000000000" in msg and engine.deep.encoder_["sha256"][:12] in msg and "Re-train" in msg
    row = table[(table["extrahepatic_spread"] == 0)].iloc[3]
    clinical = {k: row[k] for k in ("age_years", "ecog", "albumin_g_l", "bilirubin_umol_l", "inr", "afp_ng_ml",
                                    "n_tumors", "max_diameter_mm", "pvtt", "extrahepatic_spread")}
    image = {k: float(row[k]) for k in row.index if str(k).startswith(("img_", "deepraw_"))}
    assert not any("survival engine was fitted on features of" in n for n in engine.predict(clinical, image)["notes"])
    stale = copy.copy(engine)
    stale.deep = copy.copy(engine.deep)
    stale.deep.encoder_ = dict(engine.deep.encoder_, sha256="f" * 64)
    notes = stale.predict(clinical, image)["notes"]
    assert any("survival engine was fitted on features of ffffffffffff" in n for n in notes)
