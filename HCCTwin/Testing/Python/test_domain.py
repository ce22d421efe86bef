"""Real scans (issue 22): the out-of-domain guard, single-phase input, appearance randomisation and phase dropout."""

from __future__ import annotations

import numpy as np
import pytest

from HCCTwinLib import domain
from HCCTwinLib.cases import Case, Geometry, fill_missing_phases
from HCCTwinLib.labels import LIVER, VIABLE_TUMOR
from HCCTwinLib.pipeline import TwinResult, withhold_recommendation
from HCCTwinLib.segmentation import augment
from HCCTwinLib.segmentation.inference import confidence_measures
from HCCTwinLib.segmentation.train import _PatchSampler, accepted_inputs

SPACING = (5.0, 5.0, 5.0)  # coarse grid: an adult-size abdomen in few voxels


def abdomen(seed: int = 0, shape=(40, 64, 64)):
    """CT-like abdomen in HU on an identity LPS grid: body with subcutaneous fat and muscle, a 1.5 L liver on the
    patient's right (LPS -x = small i), a tumour in it. Returns (phases, geometry, labels)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    cj, ci = shape[1] / 2, shape[2] / 2
    r = np.sqrt(((j - cj) / 28.0) ** 2 + ((i - ci) / 30.0) ** 2)
    body = r <= 1.0
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = -100.0  # fat
    hu[r <= 0.85] = 45.0  # muscle / organs
    liver = (((k - 20) / 14.0) ** 2 + ((j - cj) / 14.0) ** 2 + ((i - 20) / 14.0) ** 2) <= 1.0
    tumour = (((k - 20) / 3.0) ** 2 + ((j - cj) / 3.0) ** 2 + ((i - 18) / 3.0) ** 2) <= 1.0
    labels = np.zeros(shape, np.uint8)
    labels[liver] = LIVER
    labels[tumour & liver] = VIABLE_TUMOR
    portal = hu.copy()
    portal[liver] = 110.0
    portal[tumour & liver] = 70.0
    arterial = hu.copy()
    arterial[liver] = 70.0
    arterial[tumour & liver] = 130.0
    noise = lambda: rng.normal(0, 8, shape).astype(np.float32)  # noqa: E731
    phases = {"arterial": arterial + noise(), "portal": portal + noise()}
    geom = Geometry(shape=shape, spacing=SPACING, origin=(-160.0, -160.0, -100.0))
    return phases, geom, labels


CONFIDENT = {"mean_entropy": 0.03, "uncertain_fraction": 0.01}
CARD = {"input_phases": ["arterial", "portal"], "accepted_inputs": [["arterial", "portal"]]}


def test_guard_inside_for_a_plausible_ct_and_segmentation():
    phases, geom, labels = abdomen()
    v = domain.assess(phases, geom, labels, confidence=CONFIDENT, card=CARD)
    assert v.verdict == "inside", v.reasons
    assert 1000 < v.measures["liver_ml"] < 2500
    assert v.measures["left_fraction"] < 0.2
    assert -120 < v.measures["fat_hu"] < -80
    d = v.to_dict()
    assert d["verdict"] == "inside" and d["reasons"] == [] and "Inside" in d["headline"]


def test_guard_outside_when_the_liver_takes_the_stomach_and_spleen():
    phases, geom, labels = abdomen()
    spilled = labels.copy()
    k, j, i = np.indices(labels.shape)
    spilled[(np.abs(k - 20) < 12) & (np.abs(j - 32) < 14) & (i > 30) & (i < 60)] = LIVER  # patient's left
    v = domain.assess(phases, geom, spilled, confidence=CONFIDENT, card=CARD)
    assert v.verdict == "outside" and not v.reliable
    assert any(f.measure == "left_fraction" and f.severity == "outside" for f in v.findings)
    assert "unreliable" in v.headline()


def test_guard_outside_for_fat_in_the_liver_mask_and_for_implausible_volumes():
    phases, geom, labels = abdomen()
    fat_liver = labels.copy()
    fat_liver[(phases["portal"] < -50) & (np.indices(labels.shape)[2] < 34)] = LIVER
    v = domain.assess(phases, geom, fat_liver, confidence=CONFIDENT, card=CARD)
    assert any(f.measure == "liver_nontissue_fraction" and f.severity == "outside" for f in v.findings)
    tiny = np.zeros_like(labels)
    tiny[18:22, 30:34, 18:22] = LIVER  # 64 voxels = 8 mL, not cut by the scan range
    v = domain.assess(phases, geom, tiny, confidence=CONFIDENT, card=CARD)
    assert v.verdict == "outside" and any(f.measure == "liver_ml" for f in v.findings)
    v = domain.assess(phases, geom, np.zeros_like(labels), confidence=None, card=CARD)
    assert v.verdict == "outside" and "no liver" in " ".join(v.reasons)


def test_guard_outside_for_stored_values_and_mri_and_an_unsure_network():
    phases, geom, labels = abdomen()
    stored = {k: np.clip(v + 1024, -1024, 3071) for k, v in phases.items()}  # HU + 1024 read as HU
    v = domain.assess(stored, geom, labels, confidence=CONFIDENT, card=CARD)
    assert v.verdict == "outside" and any(f.measure == "fat_hu" for f in v.findings)
    v = domain.assess(phases, geom, labels, confidence=CONFIDENT, card=CARD, modality="MR")
    assert v.verdict == "outside"
    unsure = {"mean_entropy": 0.5, "uncertain_fraction": 0.4}
    v = domain.assess(phases, geom, labels, confidence=unsure, card=CARD)
    assert v.verdict == "outside" and any(f.measure == "mean_entropy" for f in v.findings)
    # labels drawn by a person: no network confidence is read
    v = domain.assess(phases, geom, labels, confidence=unsure, card=CARD, labels_source="given")
    assert v.verdict == "inside", v.reasons


def test_guard_caution_for_a_liver_cut_by_the_scan_range_and_thick_slices():
    phases, geom, labels = abdomen()
    cut = {k: v[:20] for k, v in phases.items()}
    g = Geometry(shape=(20, *labels.shape[1:]), spacing=(5.0, 5.0, 6.0), origin=geom.origin)
    v = domain.assess(cut, g, labels[:20], confidence=CONFIDENT, card=CARD)
    assert v.verdict == "caution", v.reasons
    measures = {f.measure for f in v.findings}
    assert {"edge_slice_ratio", "slice_mm"} <= measures and "liver_ml" not in measures


def test_guard_single_phase_depends_on_what_the_model_was_trained_on():
    phases, geom, labels = abdomen()
    portal = {"portal": phases["portal"]}
    v = domain.assess(portal, geom, labels, confidence=CONFIDENT, card=CARD)
    assert v.verdict == "outside" and "not trained on portal alone" in " ".join(v.reasons)
    # a model trained on one phase reads it, but the tumour from one phase is not reliable enough to recommend on
    trained = dict(CARD, accepted_inputs=accepted_inputs(["arterial", "portal"], 0.3))
    v = domain.assess(portal, geom, labels, confidence=CONFIDENT, card=trained)
    found = [f for f in v.findings if f.measure == "phases"]
    assert v.verdict == "outside" and len(found) == 1 and "not trained" not in found[0].message
    assert "the liver is read, but the tumour is not reliably" in found[0].message
    v = domain.assess({"delayed": phases["portal"]}, geom, labels, confidence=CONFIDENT, card=trained)
    assert v.verdict == "outside" and "delayed" in " ".join(v.reasons)


def test_guard_against_the_training_domain_reference():
    phases, geom, labels = abdomen()
    card = dict(CARD, domain={"cohort": "tune", "reference": {"mean_entropy": [0.02, 0.05],
                                                               "noise_hu": [20.0, 30.0]}})
    v = domain.assess(phases, geom, labels, confidence=CONFIDENT, card=card)
    noise = [f for f in v.findings if f.measure == "noise_hu"]
    assert noise and noise[0].severity == "caution"  # far outside, but noise alone is never "outside"
    v = domain.assess(phases, geom, labels, confidence={"mean_entropy": 0.2, "uncertain_fraction": 0.05},
                      card=card)
    ent = [f for f in v.findings if f.measure == "mean_entropy"]
    assert ent and ent[0].severity == "outside" and v.reference == "tune"
    v = domain.assess(phases, geom, labels, confidence={"mean_entropy": 0.06, "uncertain_fraction": 0.05},
                      card=card)
    assert [f.severity for f in v.findings if f.measure == "mean_entropy"] == ["caution"]
    v = domain.assess(phases, geom, labels, confidence={"mean_entropy": 0.001, "uncertain_fraction": 0.0}, card=card)
    assert not [f for f in v.findings if f.measure == "mean_entropy"]  # more certain than the reference is fine
    ref = domain.reference_from_measures([{"mean_entropy": x} for x in np.linspace(0.0, 1.0, 101)])
    assert ref["mean_entropy"] == pytest.approx([0.01, 0.99])


def test_confidence_measures_of_certain_and_uniform_logits():
    import torch

    mask = np.ones((3, 4, 4), bool)
    certain = torch.zeros((5, 3, 4, 4))
    certain[1] = 30.0
    c = confidence_measures(certain, mask)
    assert c["mean_entropy"] < 1e-6 and c["uncertain_fraction"] == 0.0
    u = confidence_measures(torch.zeros((5, 3, 4, 4)), mask)
    assert u["mean_entropy"] == pytest.approx(1.0, abs=1e-5) and u["uncertain_fraction"] == 1.0
    assert confidence_measures(certain, np.zeros_like(mask))["mean_entropy"] is None


def test_fill_missing_phases():
    a, p, d = (np.full((2, 2, 2), v, np.float32) for v in (1, 2, 3))
    out, filled = fill_missing_phases({"portal": p})
    assert filled == {"arterial": "portal"} and out["arterial"] is p
    out, filled = fill_missing_phases({"delayed": d})
    assert filled == {"arterial": "delayed", "portal": "delayed"}
    out, filled = fill_missing_phases({"arterial": a, "delayed": d})
    assert filled == {"portal": "delayed"} and out["arterial"] is a
    assert fill_missing_phases({"arterial": a, "portal": p})[1] == {}


def test_appearance_randomisation_and_phase_dropout():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((2, 8, 16, 16)).astype(np.float32)
    lbl = np.zeros((8, 16, 16), np.uint8)
    lbl[2:6, 4:12, 4:12] = LIVER
    out = augment.randomise_appearance(img, lbl, rng)
    assert out.shape == img.shape and out.dtype == np.float32 and not np.allclose(out, img)
    again = augment.randomise_appearance(img, lbl, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)  # reproducible for a seed
    y = augment.random_curve(np.linspace(0, 1, 50), np.random.default_rng(3))
    assert np.all(np.diff(y) >= 0) and y.min() >= 0 and y.max() <= 1  # monotone: tissue order kept
    d = augment.drop_phase(img, rng)
    assert np.array_equal(d[0], d[1]) and any(np.array_equal(d[0], img[c]) for c in range(2))


def test_patch_sampler_phase_dropout_copies_one_phase(tmp_path):
    img = np.random.default_rng(0).random((2, 16, 32, 32)).astype(np.float16)
    lbl = np.zeros((1, 16, 32, 32), np.uint8)
    lbl[0, 4:12, 8:24, 8:24] = LIVER
    np.save(tmp_path / "a.img.npy", img)
    np.save(tmp_path / "a.lbl.npy", lbl)
    items = [(tmp_path / "a.img.npy", tmp_path / "a.lbl.npy")]
    always = _PatchSampler(items, (8, 16, 16), 0, flip_prob=0.0, phase_dropout=1.0)
    x, _ = always.batch(4)
    assert all(np.array_equal(p[0], p[1]) for p in x)
    never = _PatchSampler(items, (8, 16, 16), 0, flip_prob=0.0, appearance_prob=1.0)
    x, _ = never.batch(4)
    assert not any(np.array_equal(p[0], p[1]) for p in x)
    with pytest.raises(ValueError, match="probabilities"):
        _PatchSampler(items, (8, 16, 16), 0, phase_dropout=1.5)
    assert accepted_inputs(["arterial", "portal"], 0.0) == [["arterial", "portal"]]
    assert accepted_inputs(["arterial", "portal"], 0.3) == [["arterial", "portal"], ["arterial"], ["portal"]]
    # every patch one phase: a single-phase model, which never saw two different phases together
    assert accepted_inputs(["arterial", "portal"], 1.0) == [["arterial"], ["portal"]]


def test_validation_of_a_single_phase_model_reads_each_phase_alone(tmp_path):
    """``validate(inputs=...)``: each volume once per entry (None: as it is; c: phase c on every channel)."""
    import torch

    from HCCTwinLib.segmentation.train import validate

    class FirstChannel(torch.nn.Module):  # liver where channel 0 is bright
        def forward(self, x):
            v = x[:, :1] - 0.5
            off = -torch.ones_like(v)
            return torch.cat([-v, v, off, off, off], dim=1) * 10

    image = np.zeros((2, 8, 16, 16), np.float32)
    image[0, 2:6, 4:12, 4:12] = 1.0  # the liver is bright in phase 0 only
    truth = np.zeros((1, 8, 16, 16), np.uint8)
    truth[0, 2:6, 4:12, 4:12] = 1
    np.save(tmp_path / "i.npy", image)
    np.save(tmp_path / "l.npy", truth)
    items = [(tmp_path / "i.npy", tmp_path / "l.npy")]
    kw = {"patch": (8, 16, 16), "device": "cpu", "spacing_mm": (2, 2, 3.5), "postprocess": False}
    assert validate(FirstChannel(), items, **kw)["liver_total"] == pytest.approx(1.0)
    assert validate(FirstChannel(), items, inputs=(0,), **kw)["liver_total"] == pytest.approx(1.0)
    assert validate(FirstChannel(), items, inputs=(1,), **kw)["liver_total"] == pytest.approx(0.0)
    assert validate(FirstChannel(), items, inputs=(0, 1), **kw)["liver_total"] == pytest.approx(0.5)


def test_outside_verdict_withholds_the_recommendation():
    phases, geom, labels = abdomen()
    case = Case("p", phases, geom, labels)
    result = TwinResult(case=case, regimens=["tace_pd1_tki"], weeks=[8])
    result.survival = {"recommendation": {"regimen": "tace_pd1_tki"}, "curves": {}}
    result.domain = domain.assess(phases, geom, labels, confidence=CONFIDENT, card=CARD)
    withhold_recommendation(result)
    assert result.survival["recommendation"]["regimen"] == "tace_pd1_tki"  # inside: kept
    result.domain = domain.assess(phases, geom, labels, confidence={"mean_entropy": 0.6}, card=CARD)
    withhold_recommendation(result)
    assert "recommendation" not in result.survival
    assert "unreliable" in result.survival["recommendation_withheld"]
    summary = result.summary()
    assert summary["domain"]["verdict"] == "outside" and summary["domain"]["reasons"]


def test_report_first_section_after_the_patient_is_the_guard():
    from HCCTwinLib.report.content import build_sections, recommendation_section

    phases, geom, labels = abdomen()
    v = domain.assess(phases, geom, labels, confidence={"mean_entropy": 0.6}, card=CARD)
    summary = {"domain": v.to_dict(), "survival": {"recommendation_withheld": "No recommendation: outside."}}
    sections = build_sections(summary)
    # on the first page (the tumor-board summary), right under the patient line; in the details, after the header
    assert sections[0].key == "summary"
    assert sections[0].blocks[1].kind == "warning" and "Scan check: OUTSIDE" in sections[0].blocks[1].text
    assert sections[0].blocks[2].kind == "warning" and "Recommendation withheld" in sections[0].blocks[2].text
    assert [s.key for s in sections[1:3]] == ["header", "domain"]
    assert sections[2].blocks[0].kind == "warning" and "OUTSIDE" in sections[2].blocks[0].text
    rec = recommendation_section(summary, {})
    assert rec.blocks[0].kind == "warning" and "No recommendation" in rec.blocks[0].text


def test_module_banner_text_and_colour():
    from HCCTwinLib.scene.build import domain_banner

    phases, geom, labels = abdomen()
    assert domain_banner(domain.assess(phases, geom, labels, confidence=CONFIDENT, card=CARD)) == ("", "")
    text, style = domain_banner(domain.assess(phases, geom, labels, confidence={"mean_entropy": 0.6}, card=CARD))
    assert "OUTSIDE" in text and "unreliable" in text and "#c62828" in style
    assert domain_banner(None) == ("", "")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from HCCTwinLib.segmentation import build_model, model_kwargs
    from HCCTwinLib.weights import save_model

    tiny = {"filters": [4, 8, 16], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}
    card = {"name": "tiny_seg", "version": "0.0.1", "architecture": "DynUNet",
            "architecture_kwargs": model_kwargs("DynUNet", **tiny), "input_phases": ["arterial", "portal"],
            "accepted_inputs": [["arterial", "portal"], ["arterial"], ["portal"]],
            "spacing_mm": [5.0, 5.0, 5.0], "patch_size_kji": [16, 32, 32]}
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny_seg.safetensors"
    save_model(build_model("DynUNet", **tiny), path, card)
    return path


def test_cli_segment_one_phase_prints_the_verdict_and_tune_domain_writes_the_card(tmp_path, tiny_model, capsys):
    import json

    from HCCTwinLib.cli import main
    from HCCTwinLib.io import write_image
    from HCCTwinLib.weights import load_card, sha256_file

    for n in range(5):
        phases, geom, labels = abdomen(seed=n)
        pre = tmp_path / "cohort" / "cases" / f"P{n}" / "pre"
        for name, arr in phases.items():
            write_image(arr, geom, pre / f"{name}.nii.gz")
        write_image(labels, geom, pre / "labels.nii.gz", labels=True)
    portal = tmp_path / "cohort" / "cases" / "P0" / "pre" / "portal.nii.gz"
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", "--portal", str(portal), "--weights", str(tiny_model), "--device", "cpu",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    shown = json.loads(captured.out[captured.out.index("{"):])
    assert out.is_file() and shown["domain"]["verdict"] in ("caution", "outside")
    assert any("single-phase" in r or "liver" in r for r in shown["domain"]["reasons"])
    before = sha256_file(tiny_model)
    assert main(["tune", "domain", "--cohort", str(tmp_path / "cohort"), "--weights", str(tiny_model),
                 "--device", "cpu"]) == 0
    section = load_card(tiny_model)["domain"]
    assert section["n_cases"] == 5 and section["cohort"] == "cohort"
    assert "fat_hu" in section["reference"] and section["reference"]["fat_hu"][0] <= section["reference"]["fat_hu"][1]
    assert sha256_file(tiny_model) == before  # the weights are untouched


def test_lipiodol_in_necrosis_after_tace_is_not_bone():
    """After a lipiodol regimen dense necrotic tumour is lipiodol (not a tumour mask spilling into bone); dense viable
    tumour, or dense necrosis on a scan without lipiodol, still counts as non-tissue."""
    from HCCTwinLib.labels import NECROSIS

    shape = (12, 40, 40)
    g = Geometry(shape, (2.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    labels = np.zeros(shape, np.uint8)
    labels[2:10, 8:32, 8:32] = LIVER
    labels[4:8, 14:22, 14:22] = NECROSIS
    labels[4:8, 22:26, 14:22] = VIABLE_TUMOR
    img = np.where(labels > 0, 90.0, -100.0).astype(np.float32)
    img[labels == NECROSIS] = 900.0  # lipiodol
    phases = {"arterial": img, "portal": img}
    plain = domain.segmentation_measures(phases, g, labels)["tumor_nontissue_fraction"]
    after = domain.segmentation_measures(phases, g, labels, lipiodol=True)["tumor_nontissue_fraction"]
    assert plain == pytest.approx(2 / 3) and after == 0.0
    img[labels == VIABLE_TUMOR] = 900.0
    assert domain.segmentation_measures(phases, g, labels, lipiodol=True)["tumor_nontissue_fraction"] == \
        pytest.approx(1 / 3)
