"""Segmentation for real scans (issue 22): images synthesised from simulated tissue maps, the envelope stage that
keeps the main model's labels near the liver of an appearance-robust model, its tuning and the guard's use of the
two models' agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from HCCTwinLib import domain
from HCCTwinLib.cases import Geometry
from HCCTwinLib.segmentation import synth
from HCCTwinLib.segmentation.inference import Segmenter, clear_cache, envelope_mask, get_segmenter
from HCCTwinLib.segmentation.model import build_model, model_kwargs
from HCCTwinLib.weights import ModelFileError, card_path, load_card, save_model

TINY = {"filters": [4, 8, 16], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}
SPACING = (1.5, 1.5, 3.0)
WINDOW = (-200.0, 300.0)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread (conftest ``one_torch_thread``)."""


def _card(**extra):
    card = {"name": "tiny_seg", "version": "0.0.1", "architecture": "DynUNet",
            "architecture_kwargs": model_kwargs("DynUNet", **TINY), "input_phases": ["arterial", "portal"],
            "spacing_mm": list(SPACING), "patch_size_kji": [16, 32, 32]}
    card.update(extra)
    return card


# ------------------------------------------------------------------------------------------------ synthesis
@pytest.fixture(scope="module")
def synthetic_volume():
    return synth.synth_volume(101, 0, SPACING)


def test_synthetic_class_map_carries_the_tissues_and_the_lesions(synthetic_volume):
    from HCCTwinLib.simulate.anatomy import LIVER_TISSUES, T

    cls, lbl = synthetic_volume
    assert cls.shape == lbl.shape and cls.dtype == np.uint8 and cls.max() < synth.N_CLASSES
    # the simulator's 1.5 x 1.5 x 3 mm model grid: ~40 cm field of view in plane, 22 cm along z
    assert 240 <= cls.shape[1] <= 300 and 70 <= cls.shape[0] <= 80
    present = set(np.unique(cls).tolist())
    assert {T.LIVER, T.SPLEEN, T.GAS, T.GIWALL, T.KCORTEX, T.CORTICAL, T.MUSCLE, T.FAT, T.AORTA} <= present
    # the label map is the class map's reading: liver tissues -> 1, lesion codes -> 2/3/4
    assert np.array_equal(lbl == 2, cls == synth.VIABLE) and np.array_equal(lbl == 3, cls == synth.NECROSIS)
    assert np.all(np.isin(cls[lbl == 1], LIVER_TISSUES))
    assert (lbl == 2).sum() > 0


def test_synthesised_images_vary_and_are_reproducible(synthetic_volume):
    cls, lbl = synthetic_volume
    k = int(np.flatnonzero((lbl == 1).any(axis=(1, 2)))[0]) + 8
    patch = cls[k:k + 16, 60:124, 60:124]
    a = synth.synthesize(patch, np.random.default_rng(5), WINDOW)
    b = synth.synthesize(patch, np.random.default_rng(5), WINDOW)
    assert a.shape == (2, 16, 64, 64) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    # another draw gives another appearance (liver contrast to its surroundings changes)
    liver = lbl[k:k + 16, 60:124, 60:124] == 1
    means = [synth.synthesize(patch, np.random.default_rng(s), WINDOW)[1][liver].mean() for s in range(8)]
    assert np.ptp(means) > 0.1
    # with phase dropout 1 the two channels are one synthetic phase
    single = synth.synthesize(patch, np.random.default_rng(1), WINDOW, phase_dropout=1.0)
    assert np.array_equal(single[0], single[1])
    two = synth.synthesize(patch, np.random.default_rng(1), WINDOW, phase_dropout=0.0)
    assert not np.array_equal(two[0], two[1])


def test_synthetic_cache_is_reused(tmp_path, monkeypatch):
    calls = []
    real = synth.synth_volume

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(synth, "synth_volume", counting)
    first = synth.prepare_synthetic(tmp_path, 2, 11, SPACING)
    again = synth.prepare_synthetic(tmp_path, 2, 11, SPACING)
    assert first == again and len(calls) == 2
    assert np.load(first[0][0]).shape[0] == 1 and np.load(first[0][1]).shape == np.load(first[0][0]).shape
    # patient 0 is drawn at a follow-up (every third), patient 1 before treatment
    assert json.loads(first[0][0].with_name(first[0][0].name.replace(".cls.npy", ".json")).read_text())["week"] == 8


def test_patch_sampler_mixes_synthetic_patches(tmp_path, synthetic_volume):
    from HCCTwinLib.segmentation.train import _PatchSampler

    cls, lbl = synthetic_volume
    np.save(tmp_path / "s.cls.npy", cls[None])
    np.save(tmp_path / "s.lbl.npy", lbl[None])
    labels = np.zeros((12, 40, 40), np.uint8)
    labels[3:9, 10:30, 10:30] = 1
    np.save(tmp_path / "a.img.npy", np.full((2, *labels.shape), 0.25, np.float16))
    np.save(tmp_path / "a.lbl.npy", labels[None])
    real = [(tmp_path / "a.img.npy", tmp_path / "a.lbl.npy")]
    synthetic = [(tmp_path / "s.cls.npy", tmp_path / "s.lbl.npy")]
    only = _PatchSampler([], (16, 32, 32), seed=0, synthetic_items=synthetic, synthetic_prob=1.0, flip_prob=0.0)
    x, y = only.batch(3)
    assert x.shape == (3, 2, 16, 32, 32) and y.shape == (3, 1, 16, 32, 32)
    assert x.std() > 0.05 and set(np.unique(y)) <= {0, 1, 2, 3, 4}
    mixed = _PatchSampler(real, (16, 32, 32), seed=0, synthetic_items=synthetic, synthetic_prob=0.5, flip_prob=0.0)
    xs = np.concatenate([mixed.batch(2)[0] for _ in range(10)])
    flat = np.array([np.allclose(p, p.flat[0], atol=0.2) for p in xs])  # the constant real volume (+ jitter)
    assert 0 < flat.sum() < len(xs)
    with pytest.raises(ValueError, match="no training volumes"):
        _PatchSampler([], (16, 32, 32), seed=0)


def test_train_command_passes_the_synthetic_settings(monkeypatch, tmp_path):
    from HCCTwinLib import cli

    seen = {}
    monkeypatch.setattr("HCCTwinLib.segmentation.train_segmentation",
                        lambda cohort, out, **kw: seen.update(kw) or {"model_path": "x"})
    assert cli.main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--synthetic", "20", "--synthetic-prob", "0.7", "--phase-dropout", "0.3"]) == 0
    assert seen["synthetic"] == 20 and seen["synthetic_prob"] == 0.7 and seen["phase_dropout"] == 0.3
    assert cli.main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--synthetic", "20", "--synthetic-prob", "1.5"]) == 2
    seen.clear()
    assert cli.main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--synthetic", "20", "--synthetic-templates", str(tmp_path), "--flip-prob", "0"]) == 0
    assert seen["synthetic_templates"] == str(tmp_path) and seen["flip_prob"] == 0.0
    for bad in (["--synthetic-templates", str(tmp_path)], ["--synthetic", "5", "--synthetic-templates",
                                                            str(tmp_path / "absent")], ["--flip-prob", "2"]):
        assert cli.main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"), *bad]) == 2


# ------------------------------------------------------------------------------------------------ envelope stage
class _BrightNet(torch.nn.Module):
    """Label 1 where the arterial phase is above ``level`` (normalised), else background."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level

    def forward(self, x):
        v = x[:, :1] - self.level
        off = -torch.ones_like(v)
        return torch.cat([-v, v, off, off, off], dim=1) * 10


def _liver_and_spill():
    """A bright 'liver' block (normalised ~0.8) touching a dimmer 'stomach' block (~0.6): the main model
    (threshold 0.5) takes both as one organ, the envelope model (threshold 0.7) the liver only."""
    geom = Geometry(shape=(16, 48, 48), spacing=SPACING, origin=(0.0, 0.0, 0.0))
    art = np.full(geom.shape, -150.0, np.float32)
    art[3:13, 6:22, 6:22] = 200.0
    art[3:13, 6:22, 22:44] = 100.0
    return {"arterial": art, "portal": art.copy()}, geom


def test_envelope_stage_removes_what_lies_away_from_the_liver():
    phases, geom = _liver_and_spill()
    plain = Segmenter(_BrightNet(0.5), _card(), "cpu").segment(phases, geom)
    assert (plain[:, :, 30:44] > 0).all(axis=2)[3:13, 6:22].all()
    env = Segmenter(_BrightNet(0.7), _card(name="tiny_env"), "cpu")
    gated = Segmenter(_BrightNet(0.5), _card(postprocessing={"envelope_stage": {"margin_mm": 6.0,
                                                                                "takeover_below": 0.0}}), "cpu",
                      envelope_stage=env)
    out = gated.segment(phases, geom)
    # kept: the liver and the first 6 mm (4 voxels of 1.5 mm) of the spill; removed: the rest
    assert np.array_equal(out[:, :, :26], plain[:, :, :26]) and not (out[:, :, 27:] > 0).any()
    info = gated.last_info["envelope"]
    assert info["margin_mm"] == 6.0 and info["removed_ml"] > 0 and info["agreement_dice"] < 0.9
    assert any("Envelope stage" in m and "removed" in m for m in gated.last_info["messages"])
    assert "envelope stage model tiny_env 0.0.1 (labels kept within 6 mm of its liver; its liver below " \
           "agreement 0)" in gated.describe() and "liver_from" not in info
    assert gated.describe().startswith("model tiny_seg 0.0.1 + ") and "envelope" not in env.describe()
    assert gated.last_info["confidence"]["envelope_agreement"] == pytest.approx(info["agreement_dice"], abs=1e-4)
    # where both agree nothing changes and the agreement is 1
    same = Segmenter(_BrightNet(0.5), _card(), "cpu", envelope_stage=Segmenter(_BrightNet(0.5), _card(), "cpu"))
    assert np.array_equal(same.segment(phases, geom), plain)
    assert same.last_info["envelope"]["agreement_dice"] == 1.0 and same.last_info["envelope"]["removed_ml"] == 0
    with pytest.raises(ModelFileError, match="spacing"):
        Segmenter(_BrightNet(0.5), _card(), "cpu", envelope_stage=Segmenter(_BrightNet(0.7),
                                                                            _card(spacing_mm=[2, 2, 2]), "cpu"))


class _TwoPhaseNet(torch.nn.Module):
    """Organ (label 1) where the arterial channel is above ``organ``, viable tumour (label 2) where, inside it, the
    portal channel is above ``tumour``; ``air``: the organ where the arterial channel is below 0.05 instead;
    ``pvtt_band``: PVTT (label 4) inside the organ where the portal channel lies in ``(lo, hi)``."""

    def __init__(self, organ: float, tumour: float, air: bool = False, pvtt_band: tuple[float, float] | None = None):
        super().__init__()
        self.organ, self.tumour, self.air, self.pvtt_band = organ, tumour, air, pvtt_band

    def forward(self, x):
        art, por = x[:, :1], x[:, 1:2]
        organ = (0.05 - art) if self.air else (art - self.organ)
        off = -torch.ones_like(art)
        tumour = torch.where((por > self.tumour) & (organ > 0), organ + 1.0, off)
        pvtt = off
        if self.pvtt_band is not None:
            lo, hi = self.pvtt_band
            pvtt = torch.where((por > lo) & (por < hi) & (organ > 0), organ + 2.0, off)
        return torch.cat([-organ, organ, tumour, off, pvtt], dim=1) * 10


def _liver_lesions_and_spill():
    """Liver (arterial 200 HU, normalised 0.8) with a true lesion (portal 300 HU: both networks call it tumour) and
    a doubtful one (portal 100 HU: only the main network does), touching a 'stomach' (arterial 100 HU) that the main
    network takes for liver too."""
    geom = Geometry(shape=(16, 48, 48), spacing=SPACING, origin=(0.0, 0.0, 0.0))
    art = np.full(geom.shape, -150.0, np.float32)
    por = np.full(geom.shape, -150.0, np.float32)
    art[3:13, 6:22, 6:22] = 200.0
    art[3:13, 6:22, 22:44] = 100.0
    por[5:11, 9:15, 9:15] = 300.0   # true lesion
    por[5:11, 9:15, 16:21] = 100.0  # doubtful lesion
    por[5:11, 16:20, 9:13] = 200.0  # thrombus for both networks (normalised 0.8)
    por[5:11, 16:20, 15:19] = 160.0  # thrombus for the main network only (0.72)
    return {"arterial": art, "portal": por}, geom


def test_envelope_takes_over_the_liver_when_the_networks_disagree():
    """Below the takeover agreement (default: the guard's caution threshold) the liver is the envelope's largest
    component and tumour stays only where both networks draw it (issue 22: on a real healthy-liver CT the main
    network drew the spleen and stomach as liver and 120 mL of tumour)."""
    from HCCTwinLib.segmentation.inference import ENVELOPE_AGREEMENT

    phases, geom = _liver_lesions_and_spill()
    main_net = _TwoPhaseNet(0.5, 0.5, pvtt_band=(0.7, 0.9))
    main_only = Segmenter(main_net, _card(), "cpu").segment(phases, geom)
    assert (main_only[3:13, 6:22, 22:44] > 0).all() and (main_only[5:11, 9:15, 16:21] == 2).all()
    assert (main_only[5:11, 16:20, 9:13] == 4).all() and (main_only[5:11, 16:20, 15:19] == 4).all()
    seg = Segmenter(main_net, _card(), "cpu", envelope_stage=Segmenter(
        _TwoPhaseNet(0.7, 0.7, pvtt_band=(0.75, 0.85)), _card(name="tiny_env"), "cpu"))
    assert seg.envelope_takeover_below == ENVELOPE_AGREEMENT[1]
    out = seg.segment(phases, geom)
    liver = np.zeros(geom.shape, bool)
    liver[3:13, 6:22, 6:22] = True
    assert np.array_equal(out > 0, liver)  # the envelope's liver, no spill at all
    assert (out[5:11, 9:15, 9:15] == 2).all()  # both call it tumour
    assert (out[5:11, 9:15, 16:21] == 1).all()  # only the main network does: liver
    assert (out[5:11, 16:20, 9:13] == 4).all()  # both draw thrombus: PVTT
    assert (out[5:11, 16:20, 15:19] == 1).all()  # the main network alone (the envelope says tumour): liver
    info = seg.last_info["envelope"]
    assert info["liver_from"] == "envelope stage" and info["agreement_dice"] < 0.9
    assert info["tumor_ml_kept"] < info["tumor_ml_main"]
    assert 0 < info["pvtt_ml_kept"] < info["pvtt_ml_main"]
    assert any("disagree" in m and "both networks" in m and "PVTT" in m for m in seg.last_info["messages"])
    assert seg.describe().split(", ")[0].endswith("[liver from the envelope stage on this scan]")
    # an envelope that draws its 'liver' in air (below the window in every phase) gets no liver from it
    airy = Segmenter(_TwoPhaseNet(0.5, 0.5), _card(), "cpu",
                     envelope_stage=Segmenter(_TwoPhaseNet(0.0, 2.0, air=True), _card(name="tiny_env"), "cpu"))
    phases["arterial"][phases["arterial"] < 0] = -400.0
    phases["portal"][phases["portal"] < 0] = -400.0
    assert not (airy.segment(phases, geom) > 0).any()
    assert airy.last_info["envelope"]["liver_from"] == "envelope stage"


def test_liver_box_is_the_union_of_both_networks_boxes():
    """Stage 1 with an envelope stage: a main network whose largest coarse 'liver' is another organ cannot crop away
    the liver the envelope finds elsewhere (model grid = input grid here; box margin 20 mm = 13.3 voxels)."""
    geom = Geometry(shape=(24, 120, 120), spacing=SPACING, origin=(0.0, 0.0, 0.0))
    art = np.full(geom.shape, -150.0, np.float32)
    art[2:22, 5:60, 5:60] = 100.0    # 'spleen': organ for the main network only (0.6 > 0.5), its largest one
    art[8:20, 70:110, 85:115] = 200.0  # 'liver': both networks' organ
    phases = {"arterial": art, "portal": art.copy()}
    main = Segmenter(_TwoPhaseNet(0.5, 2.0), _card(), "cpu")
    main.segment(phases, geom, coarse_to_fine=True)
    assert main.last_info["box"][2][1] < 85  # alone, its box holds the 'spleen' and crops the liver away
    both = Segmenter(_TwoPhaseNet(0.5, 2.0), _card(), "cpu",
                     envelope_stage=Segmenter(_TwoPhaseNet(0.7, 2.0), _card(name="tiny_env"), "cpu"))
    out = both.segment(phases, geom, coarse_to_fine=True)
    (_, _), (j0, j1), (i0, i1) = both.last_info["box"]
    assert i0 <= 5 and i1 >= 115 and j0 <= 5 and j1 >= 110
    assert (out[8:20, 70:110, 85:115] > 0).all()


def test_envelope_mask_grows_the_largest_component_by_the_margin():
    env = np.zeros((10, 40, 40), bool)
    env[4:6, 10:20, 10:20] = True
    env[4:6, 35:37, 35:37] = True  # a small second piece: not the liver
    keep = envelope_mask(env, (1.0, 1.0, 3.0), 5.0)
    assert keep[5, 15, 24] and not keep[5, 15, 26] and not keep[5, 36, 36]
    assert keep[3, 15, 15] and not keep[2, 15, 15]  # 3 mm slices: one slice away is inside 5 mm, two are not
    assert not envelope_mask(np.zeros_like(env), (1, 1, 1), 5.0).any()


def _tiny_model_files(tmp_path):
    """A tiny main model and a tiny envelope model saved next to each other: ``(main, env, main's card)``."""
    folder = tmp_path / "models"
    folder.mkdir()
    main, env = folder / "tiny_seg.safetensors", folder / "tiny_env.safetensors"
    torch.manual_seed(0)
    save_model(build_model("DynUNet", **TINY), main, _card())
    save_model(build_model("DynUNet", **TINY), env, _card(name="tiny_env"))
    return main, env, load_card(main)


def test_envelope_stage_named_in_the_card_is_loaded_and_pinned(tmp_path):
    main, env, card = _tiny_model_files(tmp_path)

    def write_card(stage):
        card_path(main).write_text(json.dumps({**card, "postprocessing": {"envelope_stage": stage}}))
        clear_cache()

    write_card({"model": env.name, "sha256": load_card(env)["sha256"], "margin_mm": 10.0})
    seg = get_segmenter(main, device="cpu")
    assert seg.envelope_stage is not None and seg.envelope_stage.path == env and seg.envelope_margin_mm == 10.0
    write_card({"model": env.name, "sha256": "0" * 64, "margin_mm": 10.0})
    with pytest.raises(ModelFileError, match="tuned with"):
        get_segmenter(main, device="cpu")
    write_card({"model": main.name, "margin_mm": 10.0})
    with pytest.raises(ModelFileError, match="itself"):
        get_segmenter(main, device="cpu")
    clear_cache()


def test_tune_envelope_after_the_envelope_file_was_replaced(tmp_path, capsys):
    """A new envelope file (another sha256 than the card pinned) makes the main model refuse to load, with the
    command that re-tunes it; that command loads the main model without its envelope and writes the new pin."""
    from HCCTwinLib import cli

    _tuning_cohort(tmp_path / "cohort")
    main, env, card = _tiny_model_files(tmp_path)
    card_path(main).write_text(json.dumps({**card, "postprocessing": {"envelope_stage": {
        "model": env.name, "sha256": "0" * 64, "margin_mm": 10.0}}}))
    clear_cache()
    with pytest.raises(ModelFileError, match="hcctwin tune envelope --cohort TUNING_COHORT --envelope-model "
                                             "tiny_env.safetensors"):
        get_segmenter(main, device="cpu")
    assert Segmenter.from_file(main, "cpu", with_envelope=False).envelope_stage is None
    code = cli.main(["tune", "envelope", "--cohort", str(tmp_path / "cohort"), "--weights", str(main),
                     "--envelope-model", str(env), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    stage = load_card(main)["postprocessing"].get("envelope_stage")
    assert stage is not None and stage["sha256"] == load_card(env)["sha256"], out  # pinned to the new file
    clear_cache()
    assert get_segmenter(main, device="cpu").envelope_stage is not None
    clear_cache()


def _tuning_cohort(root, n=3):
    from HCCTwinLib.io import write_image

    phases, geom = _liver_and_spill()
    truth = np.zeros(geom.shape, np.uint8)
    truth[phases["arterial"] > 150] = 1
    rows = ["patient_id"]
    for i in range(n):
        pre = root / "cases" / f"P{i:03d}" / "pre"
        pre.mkdir(parents=True)
        for name, arr in (("arterial", phases["arterial"]), ("portal", phases["portal"]), ("labels", truth)):
            write_image(arr, geom, pre / f"{name}.nii.gz", labels=name == "labels")
        rows.append(f"P{i:03d}")
    (root / "clinical.csv").write_text("\n".join(rows) + "\n")


def test_tune_envelope_chooses_a_margin_or_rejects(tmp_path):
    from HCCTwinLib.segmentation.tuning import apply_envelope_to_card, apply_to_card, tune_envelope

    _tuning_cohort(tmp_path / "cohort")
    main = Segmenter(_BrightNet(0.5), _card(), "cpu")
    env = Segmenter(_BrightNet(0.7), _card(name="tiny_env"), "cpu")
    env.path = tmp_path / "tiny_env.safetensors"
    section = tune_envelope(main, env, tmp_path / "cohort")
    # the main model's 'stomach' is a false positive in this cohort: gating it gains Dice at every margin
    assert section["margin_mm"] == 3.0 and section["model"] == "tiny_env.safetensors"
    t = section["tuning"]
    assert t["n_cases"] == 3 and t["margins"][0]["foreground"] > t["without_envelope"]["foreground"]
    assert t["agreement"]["median"] < 0.9
    # an envelope that misses the true liver costs Dice at every margin: rejected
    blind = Segmenter(_BrightNet(2.0), _card(name="blind"), "cpu")
    blind.path = tmp_path / "blind.safetensors"
    assert "rejected" in tune_envelope(main, blind, tmp_path / "cohort")
    # written into the card, and kept when the other decision rules are re-tuned
    weights = tmp_path / "m.safetensors"
    save_model(build_model("DynUNet", **TINY), weights, _card())
    apply_envelope_to_card(weights, section)
    apply_to_card(weights, {"class_bias": [0, 0, 0, 0, 0], "min_tumor_confidence": 0.5, "tuning": {}})
    post = load_card(weights)["postprocessing"]
    assert post["envelope_stage"]["margin_mm"] == 3.0 and post["min_tumor_confidence"] == 0.5


def test_guard_reads_the_two_models_agreement():
    phases, geom = _liver_and_spill()
    labels = np.zeros(geom.shape, np.uint8)
    labels[3:13, 6:22, 6:22] = 1
    base = domain.segmentation_measures(phases, geom, labels, {"envelope_agreement": 0.95})
    assert base["envelope_agreement"] == 0.95
    for value, severity in ((0.95, None), (0.85, domain.CAUTION), (0.6, domain.OUTSIDE)):
        v = domain.assess(phases, geom, labels, confidence={"envelope_agreement": value})
        found = [f for f in v.findings if f.measure == "envelope_agreement"]
        assert (found[0].severity if found else None) == severity


def test_template_volume_keeps_the_real_shapes_and_clusters_the_rest(tmp_path):
    from HCCTwinLib.io import write_image
    from HCCTwinLib.simulate.anatomy import T

    geom = Geometry(shape=(8, 40, 40), spacing=(2.0, 2.0, 7.5), origin=(0.0, 0.0, 0.0))
    labels = np.zeros(geom.shape, np.uint8)
    labels[2:6, 8:24, 6:20] = 1  # liver
    labels[3:5, 26:32, 8:14] = 2  # right kidney
    labels[2:6, 10:20, 28:34] = 4  # spleen
    image = np.zeros(geom.shape, np.float32)
    image[:, 4:36, 4:36] = np.linspace(100.0, 600.0, 32)[None, None, :]  # a body with an intensity gradient
    folder = tmp_path / "templates"
    write_image(labels, geom, folder / "label_7.nii.gz", labels=True)
    write_image(image, geom, folder / "image_7.nii.gz")
    cls, lbl = synth.template_volume(folder / "image_7.nii.gz", folder / "label_7.nii.gz", SPACING)
    assert cls.shape == lbl.shape and 18 <= cls.shape[0] <= 22  # 7.5 mm slices -> 3 mm
    assert np.array_equal(lbl == 1, cls == T.LIVER)
    liver_ml = lbl.sum() * float(np.prod(SPACING)) / 1000
    assert liver_ml == pytest.approx((labels == 1).sum() * 30.0 / 1000, rel=0.25)  # 2 x 2 x 7.5 mm voxels
    present = set(np.unique(cls).tolist())
    assert {T.LIVER, T.KCORTEX, T.SPLEEN} <= present and len(present & set(synth.CLUSTER_CODES)) >= 4
    assert cls[0, 0, 0] == T.AIR  # outside the body
    paths = synth.prepare_templates(folder, tmp_path / "cache", SPACING)
    assert len(paths) == 1 and np.array_equal(np.load(paths[0][1])[0], lbl)
    with pytest.raises(ValueError, match="no label_"):
        synth.prepare_templates(tmp_path / "cache", tmp_path / "c2", SPACING)


# ------------------------------------------------------------------------------------------- single-phase stage
def _single_card(**extra):
    return _card(**{"name": "tiny_1p", "accepted_inputs": [["arterial"], ["portal"]], **extra})


def test_single_phase_study_is_read_by_the_single_phase_stage():
    """A one-phase study goes to the single-phase stage (its labels, its card for the guard, named in provenance);
    a two-phase study, or a phase the stage does not accept, stays with the main model."""
    phases, geom = _liver_and_spill()
    main_net, stage_net = _BrightNet(0.5), _BrightNet(0.7)  # the stage draws the liver only, the main model the spill
    stage = Segmenter(stage_net, _single_card(), "cpu")
    seg = Segmenter(main_net, _card(), "cpu", single_phase_stage=stage)
    plain = Segmenter(main_net, _card(), "cpu")
    both = seg.segment(phases, geom)
    assert np.array_equal(both, plain.segment(phases, geom)) and "single_phase_stage" not in seg.last_info
    assert seg.last_card is seg.card and "+ single-phase stage model tiny_1p 0.0.1 (one-phase studies)" in \
        seg.describe()
    portal_only = seg.segment({"portal": phases["portal"]}, geom)
    assert np.array_equal(portal_only, stage.segment({"portal": phases["portal"]}, geom))
    assert not np.array_equal(portal_only, both) and not (portal_only[:, :, 30:] > 0).any()
    assert seg.last_info["single_phase_stage"] == {"model": None, "version": "0.0.1", "input": "portal"}
    assert seg.last_card is stage.card
    assert seg.describe().startswith("model tiny_seg 0.0.1: portal-only study read by its single-phase stage "
                                     "model tiny_1p 0.0.1")
    # a Case goes the same way; a delayed phase standing in for the portal one counts as portal
    from HCCTwinLib.cases import Case

    seg.segment(Case("P", {"delayed": phases["portal"]}, geom))
    assert seg.last_info["single_phase_stage"]["input"] == "portal"
    # a stage accepting the portal phase only leaves an arterial-only study to the main model
    seg.attach_single_phase_stage(Segmenter(stage_net, _card(name="tiny_1p", accepted_inputs=[["portal"]]), "cpu"))
    assert np.array_equal(seg.segment({"arterial": phases["arterial"]}, geom),
                          plain.segment({"arterial": phases["arterial"]}, geom))
    assert "single_phase_stage" not in seg.last_info and seg.last_card is seg.card
    # a stage must read one phase, be another model of the same grid, and have no stage of its own
    for bad, match in ((Segmenter(stage_net, _card(name="two"), "cpu"), "accepts no single-phase"),
                       (Segmenter(stage_net, _single_card(spacing_mm=[2, 2, 2]), "cpu"), "spacing"),
                       (plain, "another model")):
        with pytest.raises(ModelFileError, match=match):
            plain.attach_single_phase_stage(bad)
    with pytest.raises(ModelFileError, match="of its own"):
        plain.attach_single_phase_stage(Segmenter(stage_net, _single_card(), "cpu", single_phase_stage=stage))


def test_guard_checks_a_single_phase_study_against_the_model_that_read_it():
    """Without a stage, the main model (trained on two phases) reading one phase is outside its domain; with a
    single-phase stage the guard checks the study against the stage's card: read, but no recommendation from it."""
    from HCCTwinLib.cases import Case
    from HCCTwinLib.pipeline import PipelineOptions, _guard

    phases, geom = _liver_and_spill()
    case = Case("P", {"portal": phases["portal"]}, geom)
    for seg, reason in ((Segmenter(_BrightNet(0.7), _card(), "cpu"), "not trained on portal alone"),
                        (Segmenter(_BrightNet(0.5), _card(), "cpu",
                                   single_phase_stage=Segmenter(_BrightNet(0.7), _single_card(), "cpu")),
                         "the liver is read, but the tumour is not reliably")):
        labels = seg.segment(case)
        verdict = _guard(Case("P", case.phases, geom, labels=labels), seg, PipelineOptions())
        found = [f for f in verdict.findings if f.measure == "phases"]
        assert found and found[0].severity == domain.OUTSIDE and reason in found[0].message, verdict.reasons


def test_single_phase_stage_named_in_the_card_is_loaded_and_pinned(tmp_path):
    main, _env, card = _tiny_model_files(tmp_path)
    one = main.parent / "tiny_1p.safetensors"
    save_model(build_model("DynUNet", **TINY), one, _single_card())

    def write_card(stage):
        card_path(main).write_text(json.dumps({**card, "postprocessing": {"single_phase_stage": stage}}))
        clear_cache()

    write_card({"model": one.name, "sha256": load_card(one)["sha256"]})
    seg = get_segmenter(main, device="cpu")
    assert seg.single_phase_stage is not None and seg.single_phase_stage.path == one
    assert Segmenter.from_file(main, "cpu", with_single_phase=False).single_phase_stage is None
    write_card({"model": one.name, "sha256": "0" * 64})
    with pytest.raises(ModelFileError, match="hcctwin tune single-phase --cohort TUNING_COHORT "
                                             "--single-phase-model tiny_1p.safetensors"):
        get_segmenter(main, device="cpu")
    write_card({"model": main.name})
    with pytest.raises(ModelFileError, match="itself"):
        get_segmenter(main, device="cpu")
    clear_cache()


def test_tuning_reads_each_phase_alone_for_a_single_phase_model(tmp_path):
    from HCCTwinLib.segmentation.tuning import _tuning_cases, tuning_inputs

    _tuning_cohort(tmp_path / "cohort", n=2)
    assert tuning_inputs(_card()) is None
    assert tuning_inputs(_card(accepted_inputs=[["arterial", "portal"], ["portal"]])) is None
    assert tuning_inputs(_single_card()) == [["arterial"], ["portal"]]
    got = [(pid, sorted(case.phases)) for pid, case, _ in _tuning_cases(tmp_path / "cohort", 1,
                                                                         tuning_inputs(_single_card()))]
    assert got == [("P000:arterial", ["arterial"]), ("P000:portal", ["portal"])]
    assert [pid for pid, _, _ in _tuning_cases(tmp_path / "cohort", None)] == ["P000", "P001"]


def test_tune_single_phase_keeps_a_better_stage_and_rejects_a_worse_one(tmp_path, capsys):
    from HCCTwinLib import cli
    from HCCTwinLib.segmentation.tuning import apply_single_phase_to_card, apply_to_card, tune_single_phase

    _tuning_cohort(tmp_path / "cohort")
    main = Segmenter(_BrightNet(0.5), _card(), "cpu")  # draws the 'stomach' as liver: foreground Dice < 1
    good = Segmenter(_BrightNet(0.7), _single_card(), "cpu")
    good.path = tmp_path / "tiny_1p.safetensors"
    section = tune_single_phase(main, good, tmp_path / "cohort")
    t = section["tuning"]
    assert section["model"] == "tiny_1p.safetensors" and t["n_cases"] == 3
    assert t["by_input"]["portal"]["n_studies"] == 3 and t["by_input"]["all"]["n_studies"] == 6
    assert t["by_input"]["all"]["stage"]["foreground"] == pytest.approx(1.0)
    assert t["by_input"]["all"]["main"]["foreground"] < 0.9
    blind = Segmenter(_BrightNet(2.0), _single_card(name="blind"), "cpu")
    blind.path = tmp_path / "blind.safetensors"
    assert "rejected" in tune_single_phase(main, blind, tmp_path / "cohort")
    # the main model's own stage is set aside while measuring and put back after
    main.attach_single_phase_stage(blind)
    tune_single_phase(main, good, tmp_path / "cohort")
    assert main.single_phase_stage is blind
    # written into the card, kept when the other rules are re-tuned, removed with None
    weights = tmp_path / "m.safetensors"
    save_model(build_model("DynUNet", **TINY), weights, _card())
    apply_single_phase_to_card(weights, section)
    apply_to_card(weights, {"class_bias": [0, 0, 0, 0, 0], "min_tumor_confidence": 0.5, "tuning": {}})
    assert load_card(weights)["postprocessing"]["single_phase_stage"]["model"] == "tiny_1p.safetensors"
    apply_single_phase_to_card(weights, None)
    assert "single_phase_stage" not in load_card(weights)["postprocessing"]
    # the command: a stage outside the main model's folder, or one reading two phases, is refused
    main_file, _env, _ = _tiny_model_files(tmp_path)
    other = tmp_path / "elsewhere" / "tiny_1p.safetensors"
    save_model(build_model("DynUNet", **TINY), other, _single_card())
    args = ["tune", "single-phase", "--cohort", str(tmp_path / "cohort"), "--weights", str(main_file),
            "--device", "cpu"]
    assert cli.main([*args, "--single-phase-model", str(other)]) == 2
    assert cli.main([*args, "--single-phase-model", str(main_file.parent / "tiny_env.safetensors")]) == 2
    one = main_file.parent / "tiny_1p.safetensors"
    save_model(build_model("DynUNet", **TINY), one, _single_card())
    capsys.readouterr()
    assert cli.main([*args, "--single-phase-model", str(one)]) == 0
    summary = json.loads(capsys.readouterr().out)
    pinned = (load_card(main_file).get("postprocessing") or {}).get("single_phase_stage")
    if "rejected" in summary["single_phase_stage"]:
        assert pinned is None and summary["card"].startswith("no single-phase stage")
    else:
        assert pinned["sha256"] == load_card(one)["sha256"] and summary["card"].endswith(".json")
    clear_cache()
