"""Follow-up generator (twin/): crop + paste-back, identity at 0 weeks, seeds, std, training + resume, a tiny model
that learns shrink vs grow, model card checks, baselines and the evaluation metrics. Tiny grids, 1-2 sampling steps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from HCCTwinLib.cases import Geometry
from HCCTwinLib.errors import InputError
from HCCTwinLib.io import write_image
from HCCTwinLib.weights import ModelFileError

from conftest import load_benchmark

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from HCCTwinLib.twin import baselines, crop  # noqa: E402
from HCCTwinLib.twin import model as tm  # noqa: E402
from HCCTwinLib.twin.generator import Generator, clear_cache, get_generator, load_generator  # noqa: E402
from HCCTwinLib.twin.train import discover_pairs, train_generator  # noqa: E402

SHRINK, GROW = "tace_pd1_len", "pd1_tki"
TINY_CROP = (16, 24, 24)
TINY_ARCH = {"channels": [8, 16, 16], "attention_levels": [False, False, False], "num_res_blocks": 1,
             "norm_num_groups": 8}
SHAPE = (32, 48, 48)
SPACING = (1.5, 1.5, 3.0)
RATE = {SHRINK: -0.025, GROW: 0.02}  # radius change per week


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread (conftest ``one_torch_thread``)."""


def synth_case(seed: int = 0, radius: float = 6.0, shape=SHAPE):
    """Liver block + one tumour sphere (radius in in-plane voxels); returns arterial, portal, labels."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[4:28, 8:40, 6:42] = 1
    centre = (16 + rng.integers(-2, 3), 24 + rng.integers(-3, 4), 24 + rng.integers(-3, 4))
    r2 = ((k - centre[0]) * 2.0) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2
    labels[(r2 <= radius ** 2) & (labels == 1)] = 2
    art, por = _hu(labels, rng)
    return art, por, labels, (centre, r2)


def _hu(labels, rng):
    art = np.select([labels == 1, labels == 2, labels == 3], [80.0, 160.0, 450.0], -80.0).astype(np.float32)
    por = np.select([labels == 1, labels == 2, labels == 3], [110.0, 90.0, 430.0], -60.0).astype(np.float32)
    return art + rng.normal(0, 4, labels.shape).astype(np.float32), \
        por + rng.normal(0, 4, labels.shape).astype(np.float32)


def synth_followup(labels0, r2, radius, regimen, weeks, seed):
    """Shrinking regimen: viable core shrinks, the rest turns into bright lipiodol-laden necrosis; growing: grows."""
    rng = np.random.default_rng(seed)
    r = radius * math.exp(RATE[regimen] * weeks)
    labels = labels0.copy()
    liver = labels0 > 0
    if regimen == SHRINK:
        labels[labels0 == 2] = 3
        labels[(r2 <= r ** 2) & liver] = 2
    else:
        labels[(r2 <= r ** 2) & liver] = 2
    art, por = _hu(labels, rng)
    return art, por, labels


def write_cohort(root: Path, n: int, seed0: int = 0) -> Path:
    geom = Geometry(shape=SHAPE, spacing=SPACING, origin=(-30.0, -40.0, 10.0))
    rows = []
    for p in range(n):
        pid = f"P{seed0 + p:03d}"
        regimen = SHRINK if p % 2 == 0 else GROW
        radius = 5.0 + (p % 3)
        art, por, lab, (_c, r2) = synth_case(seed0 + p, radius)
        pre = root / "cases" / pid / "pre"
        write_image(art, geom, pre / "arterial.nii.gz")
        write_image(por, geom, pre / "portal.nii.gz")
        write_image(lab, geom, pre / "labels.nii.gz", labels=True)
        for w in (8, 16, 24):
            fa, fp, fl = synth_followup(lab, r2, radius, regimen, w, seed0 + 100 * p + w)
            folder = root / "cases" / pid / "followup" / f"w{w:02d}"
            write_image(fa, geom, folder / "arterial.nii.gz")
            write_image(fp, geom, folder / "portal.nii.gz")
            write_image(fl, geom, folder / "labels.nii.gz", labels=True)
        rows.append({"patient_id": pid, "age": 60, "regimen": regimen})
    with open(root / "clinical.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient_id", "age", "regimen"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("gen_cohort"), 6)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """A tiny generator trained for 200 steps on the shrink-vs-grow cohort."""
    out = tmp_path_factory.mktemp("gen_trained")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train_generator(cohort, out, epochs=4, steps_per_epoch=50, batch_size=2, lr=3e-3, seed=0,
                                  device="cpu", crop_shape=TINY_CROP, architecture_kwargs=TINY_ARCH,
                                  cond_dropout=0.0, ema_decay=None, sampling_steps=2, log=lambda *_: None)
    finally:
        torch.set_num_threads(n)
    return summary


def tiny_generator(seed=0, **kw):
    """Untrained tiny generator; its zero-initialised output layer (= "no change") is randomised so it does change."""
    gen = Generator.untrained([SHRINK, GROW], TINY_CROP, TINY_ARCH, seed=seed, steps=2, **kw)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in gen.model.out.parameters():
            p.normal_(0.0, 0.2)
    return gen


def _geom(direction=None):
    return Geometry(shape=SHAPE, spacing=SPACING, origin=(-30.0, -40.0, 10.0),
                    direction=direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))


# ----------------------------------------------------------------------------------------------------------------
def test_gate_is_exactly_zero_at_zero_weeks():
    assert tm.gate(0) == 0.0 and tm.gate(0.0) == 0.0
    assert 0 < tm.gate(8) < tm.gate(16) < tm.gate(24) < 1
    residual, _ = tm.decode(np.random.default_rng(0).normal(size=(2, 6, 4, 4, 4)) * 50, 0)
    assert not residual.any()


def test_zero_weeks_returns_input_bit_exact():
    art, por, lab, _ = synth_case(1)
    gen = tiny_generator()
    out = gen.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[SHRINK, GROW], weeks=[0, 8],
                       samples=2, seed=3)
    for r in (SHRINK, GROW):
        f0 = out[r][0]
        assert f0.kind == "virtual" and f0.regimen == r and f0.weeks == 0
        assert f0.phases["arterial"].tobytes() == art.tobytes()
        assert f0.phases["portal"].tobytes() == por.tobytes()
        assert np.array_equal(f0.labels, lab)
        assert not f0.std["arterial"].any() and not f0.std["portal"].any()
        assert not np.array_equal(out[r][8].phases["arterial"], art)  # the network did run at 8 weeks


def test_same_seed_same_output_different_seed_differs():
    art, por, lab, _ = synth_case(2)
    gen = tiny_generator()
    kw = dict(regimens=[SHRINK], weeks=[8, 24], samples=2, steps=2)
    a = gen.generate({"arterial": art, "portal": por}, lab, _geom(), seed=7, **kw)
    b = gen.generate({"arterial": art, "portal": por}, lab, _geom(), seed=7, **kw)
    c = gen.generate({"arterial": art, "portal": por}, lab, _geom(), seed=8, **kw)
    for w in (8, 24):
        assert np.array_equal(a[SHRINK][w].phases["arterial"], b[SHRINK][w].phases["arterial"])
        assert np.array_equal(a[SHRINK][w].std["portal"], b[SHRINK][w].std["portal"])
        assert np.array_equal(a[SHRINK][w].labels, b[SHRINK][w].labels)
        assert not np.array_equal(a[SHRINK][w].phases["arterial"], c[SHRINK][w].phases["arterial"])



def test_cpu_inference_channels_last_same_numbers_as_default_layout():
    """On the CPU the network runs in channels-last layout (faster oneDNN convolutions); the flow it integrates is
    the same as with the default layout up to float rounding."""
    import copy

    gen = tiny_generator()
    conv_weights = [p for p in gen.model.parameters() if p.dim() == 5 and p.shape[1] > 1]
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in conv_weights)
    assert any(not p.is_contiguous() for p in conv_weights)  # not the default layout
    plain = copy.deepcopy(gen.model).to(memory_format=torch.contiguous_format)
    torch.manual_seed(1)
    cond = torch.randn(3, tm.COND_CHANNELS, *TINY_CROP)
    noise = torch.randn(3, tm.OUT_CHANNELS, *TINY_CROP)
    regs = torch.tensor([0, 1, 2])
    with torch.inference_mode():
        a = tm.sample_rf(plain, cond, regs, noise, steps=2)
        b = tm.sample_rf(gen.model, cond, regs, noise, steps=2, memory_format=torch.channels_last_3d)
    assert b.is_contiguous() and a.abs().max() > 0.1
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_bf16_generation_close_to_fp32_and_deterministic():
    """bfloat16 inference on the CPU (the default where the CPU has it natively): close to float32 (differences are
    bfloat16 rounding, a small fraction of the generated change), the same seed still gives the same output, and
    interval 0 still returns the input exactly."""
    art, por, lab, _ = synth_case(2)
    gen = tiny_generator()
    kw = dict(regimens=[SHRINK, GROW], weeks=[0, 16], samples=2, steps=2, seed=5)
    gen.cpu_precision = "fp32"
    a = gen.generate({"arterial": art, "portal": por}, lab, _geom(), **kw)
    gen.cpu_precision = "bf16"
    b = gen.generate({"arterial": art, "portal": por}, lab, _geom(), **kw)
    c = gen.generate({"arterial": art, "portal": por}, lab, _geom(), **kw)
    assert gen.last_info["cpu_precision"] == "bf16"
    for r in (SHRINK, GROW):
        assert b[r][0].phases["arterial"].tobytes() == art.tobytes()
        change = np.abs(a[r][16].residual).max()
        assert change > 1.0
        assert np.abs(a[r][16].residual - b[r][16].residual).max() < 0.05 * change
        assert np.array_equal(b[r][16].phases["arterial"], c[r][16].phases["arterial"])


class _Stub(torch.nn.Module):
    """Predicts x0 = 0 except on ``noisy`` channels, where it passes x_t (= the sample's noise at t = T) through."""

    def __init__(self, noisy=()):
        super().__init__()
        self.noisy = list(noisy)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, timesteps=None, context=None, class_labels=None):
        x0 = torch.zeros_like(x[:, :tm.OUT_CHANNELS])
        x0[:, self.noisy] = x[:, self.noisy]
        return x0


def test_std_nonnegative_and_zero_where_samples_agree():
    art, por, lab, _ = synth_case(3)
    base = tiny_generator()
    agree = Generator(_Stub(), base.card)
    out = agree.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[GROW], weeks=[16], samples=3,
                         steps=1)[GROW][16]
    assert not out.std["arterial"].any() and not out.std["portal"].any()
    assert out.phases["arterial"].tobytes() == art.tobytes()  # zero residual everywhere -> input
    differ = Generator(_Stub([0, 1]), base.card)  # image channels = noise: samples disagree
    out = differ.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[GROW], weeks=[16], samples=3,
                          steps=1)[GROW][16]
    box = crop.make_crop_box(lab, _geom(), TINY_CROP)
    for p in ("arterial", "portal"):
        assert out.std[p].min() >= 0 and out.std[p][box.slices].mean() > 1.0
        outside = np.ones(SHAPE, bool)
        outside[box.slices] = False
        assert not out.std[p][outside].any()


@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, 1, 0, 0, 0, -1), (0, 1, 0, -1, 0, 0, 0, 0, 1)],
                         ids=["identity", "flipped", "permuted"])
def test_paste_back_outside_unchanged_and_orientation(direction):
    art, por, lab, (centre, r2) = synth_case(4, radius=7.0)
    lab = lab.copy()
    lab[:, :, :2] = 0
    lab[2:6, 2:8, 40:46] = 1  # liver box reaching into a corner: anisotropic, not centred
    geom = _geom(direction)
    box = crop.make_crop_box(lab, geom, TINY_CROP, pad_mm=6.0)
    assert box.crop.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert abs(box.crop.spacing[0] - box.crop.spacing[1]) < 1e-9  # isotropic in-plane
    lab_c = crop.to_crop(lab, box, labels=True)
    residual = np.where(lab_c == 2, 100.0, 0.0).astype(np.float32)  # +100 HU on the tumour as seen in the crop
    pasted = crop.paste_image(art, box, residual)
    outside = np.ones(SHAPE, bool)
    outside[box.slices] = False
    assert outside.any()
    assert pasted.shape == art.shape and pasted.dtype == np.float32
    assert pasted[outside].tobytes() == art[outside].tobytes()
    diff = pasted - art
    core = r2 <= 3.0 ** 2
    assert np.median(diff[core]) > 80  # the tumour got brighter where it is in the input grid (orientation kept)
    assert np.abs(diff[r2 >= 14.0 ** 2]).max() < 1e-3
    grown = lab_c.copy()
    grown[lab_c == 1] = 4  # change every liver voxel of the crop to PVTT
    new_lab = crop.paste_labels(lab, box, grown, lab_c)
    assert new_lab[outside].tobytes() == lab[outside].tobytes()
    assert np.array_equal(crop.paste_labels(lab, box, lab_c, lab_c), lab)
    assert (new_lab == 4).sum() > 0.8 * (lab == 1).sum()
    w = crop.blend_weight(box, 10.0)
    assert w.min() >= 0 and w.max() == 1.0


def test_generate_full_grid_with_flipped_direction_keeps_outside_and_geometry():
    art, por, lab, _ = synth_case(5)
    lab = lab.copy()
    lab[:, :, :] = np.where(lab > 0, lab, 0)
    geom = _geom((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    gen = tiny_generator(pad_mm=3.0)
    out = gen.generate({"arterial": art, "portal": por}, lab, geom, regimens=[GROW], weeks=[24], samples=2)
    f = out[GROW][24]
    box = crop.make_crop_box(lab, geom, TINY_CROP, 3.0)
    outside = np.ones(SHAPE, bool)
    outside[box.slices] = False
    assert outside.any()
    for p, arr in (("arterial", art), ("portal", por)):
        assert f.phases[p].shape == geom.shape
        assert f.phases[p][outside].tobytes() == arr[outside].tobytes()
    assert f.labels[outside].tobytes() == lab[outside].tobytes()
    assert gen.last_info["box_lo_kji"] == list(box.lo)


def test_bad_input_is_reported():
    art, por, lab, _ = synth_case(6)
    gen = tiny_generator()
    with pytest.raises(InputError, match="does not know regimen"):
        gen.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=["nope"], weeks=[8])
    with pytest.raises(InputError, match="no liver"):
        gen.generate({"arterial": art, "portal": por}, np.zeros_like(lab), _geom(), regimens=[GROW], weeks=[8])
    with pytest.raises(InputError, match="label map"):
        gen.generate({"arterial": art, "portal": por}, None, _geom(), regimens=[GROW], weeks=[8])


# ----------------------------------------------------------------------------------------------------------------
def test_train_two_epochs_and_resume(cohort, tmp_path):
    pairs = discover_pairs(cohort)
    assert len(pairs) == 18 and {p.regimen for p in pairs} == {SHRINK, GROW}
    kw = dict(steps_per_epoch=1, batch_size=2, device="cpu", crop_shape=TINY_CROP, architecture_kwargs=TINY_ARCH,
              ema_decay=0.99, log=lambda *_: None)
    s1 = train_generator(cohort, tmp_path, epochs=2, **kw)
    assert s1["epochs_completed"] == 2 and s1["steps"] == 2
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 6
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all(math.isfinite(e["train_loss"]) for e in log)
    s2 = train_generator(cohort, tmp_path, epochs=3, **kw)
    assert s2["epochs_completed"] == 3 and s2["steps"] == 3
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    card = json.loads(Path(s2["card_path"]).read_text())
    assert card["architecture"] == tm.ARCHITECTURE and card["metrics"] == {}
    assert card["training_data"]["regimens_seen"] == sorted([SHRINK, GROW])
    assert card["crop_kji"] == list(TINY_CROP) and len(card["sha256"]) == 64
    with pytest.raises(InputError, match="different settings"):
        train_generator(cohort, tmp_path, epochs=4, **dict(kw, batch_size=3))
    # a time budget stops after the epoch that passes it (here the first); bfloat16 autocast on the CPU trains too,
    # is recorded, and resuming with the same total continues
    s3 = train_generator(cohort, tmp_path, epochs=6, time_budget_s=0.0, cpu_precision="bf16", **kw)
    assert s3["epochs_completed"] == 4 and s3["steps"] == 4
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["precision"] == "bfloat16 autocast (CPU)" and math.isfinite(log[-1]["train_loss"])
    card = json.loads(Path(s3["card_path"]).read_text())
    assert card["training"]["epochs_completed"] == 4 and card["hyperparameters"]["precision"].startswith("bfloat16")
    assert train_generator(cohort, tmp_path, epochs=6, **kw)["epochs_completed"] == 6
    with pytest.raises(ValueError, match="cpu_precision"):
        train_generator(cohort, tmp_path, epochs=7, cpu_precision="fp16", **kw)


def test_model_card_sha256_verified_on_load(trained, tmp_path):
    path = Path(trained["model_path"])
    clear_cache()
    gen = get_generator(path, device="cpu")
    assert get_generator(path, device="cpu") is gen  # warm cache
    assert Path(trained["model_path"]).stat().st_size < 25e6
    bad = tmp_path / path.name
    bad.write_bytes(path.read_bytes()[:-8] + b"\x00" * 8)
    (tmp_path / path.with_suffix(".json").name).write_text(path.with_suffix(".json").read_text())
    with pytest.raises(ModelFileError, match="sha256"):
        load_generator(bad)


def test_trained_tiny_model_shrinks_and_grows(trained):
    gen = load_generator(trained["model_path"])
    art, por, lab, (_c, r2) = synth_case(seed=42, radius=6.0)
    out = gen.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[SHRINK, GROW], weeks=[0, 24],
                       samples=2, seed=0, steps=4)
    v0 = int((lab == 2).sum())
    v_shrink = int((out[SHRINK][24].labels == 2).sum())
    v_grow = int((out[GROW][24].labels == 2).sum())
    assert v_shrink < 0.7 * v0 and v_grow > 1.3 * v0, (v0, v_shrink, v_grow)
    assert (out[SHRINK][24].labels == 3).sum() > 0.2 * v0 and (out[GROW][24].labels == 3).sum() < 0.05 * v0
    # TACE: the former tumour rim turns into bright lipiodol (label 3, ~450 HU); under the TKI it stays tumour
    rim = (lab == 2) & (r2 >= 4.0 ** 2)
    d_shrink = np.mean(out[SHRINK][24].phases["arterial"][rim] - art[rim])
    d_grow = np.mean(out[GROW][24].phases["arterial"][rim] - art[rim])
    assert d_shrink > 80 and d_shrink > d_grow + 50, (d_shrink, d_grow)
    assert out[SHRINK][0].phases["arterial"].tobytes() == art.tobytes()


def test_regimen_prior_channel_values():
    assert tm.prior_value(None, 24) == 0.0 and tm.prior_value(-0.1, 0) == 0.0
    assert tm.prior_value(-0.1, 10) == pytest.approx(-1.0 / tm.PRIOR_SCALE)
    assert tm.prior_value(-1.0, 24) == pytest.approx(tm.PRIOR_LOG_RATIO_CLIP[0] / tm.PRIOR_SCALE)  # clipped
    _art, _por, lab, _ = synth_case(0)
    c = tm.condition(np.zeros(lab.shape), np.zeros(lab.shape), lab, 8.0, prior=-0.4)
    assert c.shape[0] == tm.COND_CHANNELS + 1 and np.all(c[-1] == np.float32(-0.4))
    assert tm.condition(np.zeros(lab.shape), np.zeros(lab.shape), lab, 8.0).shape[0] == tm.COND_CHANNELS
    assert tm.model_kwargs([SHRINK, GROW], regimen_prior=True)["in_channels"] == \
        tm.model_kwargs([SHRINK, GROW])["in_channels"] + 1


def test_regimen_prior_generator_and_zero_padded_start(tmp_path):
    """A model with the regimen-prior channel generates (interval 0 still exact) and its per-item channel is the
    card's rate x weeks; a model without the channel, zero-padded into one with it, gives the same output whatever
    the prior (training starts from the old model's behaviour); a card whose in_channels do not match is refused."""
    from HCCTwinLib.twin.train import init_from
    from HCCTwinLib.weights import save_model

    rates = {SHRINK: -0.15, GROW: 0.05}
    old = tiny_generator(seed=3)
    path = tmp_path / "old.safetensors"
    save_model(old.model, path, old.card)
    new = Generator.untrained([SHRINK, GROW], TINY_CROP, TINY_ARCH, seed=9, steps=2, prior_rates=rates)
    assert new.card["architecture_kwargs"]["in_channels"] == old.card["architecture_kwargs"]["in_channels"] + 1
    assert new.prior(SHRINK, 24) == pytest.approx(max(-0.15 * 24, -5.0) / tm.PRIOR_SCALE)
    assert new.prior("resection", 24) == 0.0  # no rate: no prior
    init_from(new.model, path)
    art, por, lab, _ = synth_case(seed=5)
    kw = dict(regimens=[SHRINK, GROW], weeks=[0, 16], samples=2, seed=1, steps=2)
    a = old.generate({"arterial": art, "portal": por}, lab, _geom(), **kw)
    b = new.generate({"arterial": art, "portal": por}, lab, _geom(), **kw)
    for r in (SHRINK, GROW):
        np.testing.assert_allclose(a[r][16].phases["arterial"], b[r][16].phases["arterial"], atol=1e-3)
        assert b[r][0].phases["arterial"].tobytes() == art.tobytes()
    # the channel does reach the network: with a non-zero weight on it, changing the rates changes the output
    with torch.no_grad():
        w = new.model.conv_in.conv.weight
        w[:, -1].normal_(0.0, 0.5)
    c1 = new.generate({"arterial": art, "portal": por}, lab, _geom(), **kw)[SHRINK][16].phases["arterial"]
    new.prior_rates = {SHRINK: 0.05, GROW: 0.05}
    c2 = new.generate({"arterial": art, "portal": por}, lab, _geom(), **kw)[SHRINK][16].phases["arterial"]
    assert np.abs(c1 - c2).max() > 1.0
    bad = dict(new.card)
    bad.pop("regimen_prior")
    with pytest.raises(ModelFileError, match="in_channels"):
        Generator(new.model, bad)
    with pytest.raises(ModelFileError, match="shape"):  # a model with more input channels does not fit a smaller one
        p2 = tmp_path / "new.safetensors"
        save_model(new.model, p2, new.card)
        init_from(old.model, p2)


def test_train_with_regimen_prior(cohort, tmp_path):
    """The rates are fitted on the observed pairs (the shrink regimen negative, the grow one positive), stored in the
    model card and the config (a resume must match), and the trained model loads and runs."""
    kw = dict(steps_per_epoch=2, batch_size=2, device="cpu", crop_shape=TINY_CROP, architecture_kwargs=TINY_ARCH,
              ema_decay=None, log=lambda *_: None)
    s = train_generator(cohort, tmp_path, epochs=1, regimen_prior=True, **kw)
    card = json.loads(Path(s["card_path"]).read_text())
    rates = card["regimen_prior"]["rates_per_week"]
    assert rates[SHRINK] < -0.01 and rates[GROW] > 0.01, rates
    assert card["hyperparameters"]["regimen_prior"] is True
    assert card["channels"]["condition"][-1] == "regimen_prior"
    gen = load_generator(s["model_path"])
    assert gen.prior_rates == pytest.approx(rates)
    art, por, lab, _ = synth_case(seed=8)
    out = gen.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[SHRINK], weeks=[8], samples=1,
                       steps=1)
    assert np.isfinite(out[SHRINK][8].phases["arterial"]).all()
    with pytest.raises(InputError, match="different settings"):  # resuming without the prior is another model
        train_generator(cohort, tmp_path, epochs=2, regimen_prior=False, **kw)
    # a new run started from this model's file
    s2 = train_generator(cohort, tmp_path / "b", epochs=1, regimen_prior=True, init_weights=s["model_path"], **kw)
    card2 = json.loads(Path(s2["card_path"]).read_text())
    assert card2["hyperparameters"]["init_weights"].startswith(Path(s["model_path"]).name)


# ----------------------------------------------------------------------------------------------------------------
def test_baselines():
    art, por, lab, _ = synth_case(7)
    geom = _geom()
    copy = baselines.copy_baseline({"arterial": art, "portal": por}, lab, geom, [SHRINK], [8])
    assert copy[SHRINK][8].phases["arterial"] is art and copy[SHRINK][8].labels is lab
    records = [(SHRINK, w, 10.0, 10.0 * math.exp(-0.05 * w)) for w in (8, 16, 24)] + \
              [(GROW, w, 5.0, 5.0 * math.exp(0.03 * w)) for w in (8, 16)]
    model = baselines.ExponentialBaseline.fit(records)
    assert model.rate(SHRINK) == pytest.approx(-0.05) and model.rate(GROW) == pytest.approx(0.03)
    pred = model.predict({"arterial": art, "portal": por}, lab, geom, [SHRINK, GROW], [16])
    v0 = (lab == 2).sum()
    assert (pred[SHRINK][16].labels == 2).sum() == pytest.approx(v0 * math.exp(-0.8), rel=0.05)
    assert (pred[GROW][16].labels == 2).sum() == pytest.approx(v0 * math.exp(0.48), rel=0.05)
    assert set(np.unique(pred[GROW][16].labels)) <= {0, 1, 2}


def test_exponential_baseline_fits_a_cohort(cohort):
    model = baselines.ExponentialBaseline.fit_cohort(cohort)
    assert model.rate(SHRINK) < -0.02 and model.rate(GROW) > 0.02


def _evaluation_module():
    return load_benchmark("generator_evaluation")


def test_evaluation_metrics():
    ev = _evaluation_module()
    rng = np.random.default_rng(0)
    a = rng.normal(100, 30, (12, 20, 20)).astype(np.float32)
    mask = np.ones(a.shape, bool)
    assert ev.ssim3d(a, a, mask) == pytest.approx(1.0)
    b = a + rng.normal(0, 30, a.shape).astype(np.float32)
    assert ev.ssim3d(a, b, mask) < 0.9
    assert ev.hu_mae(a, a + 5, mask) == pytest.approx(5.0)
    la = np.zeros((4, 4, 4), np.uint8)
    la[:2] = 2
    lb = la.copy()
    lb[1] = 3
    assert ev.tumour_dice(la, lb) == pytest.approx(1.0)  # labels 2|3 together
    assert ev.tumour_dice(la, np.zeros_like(la)) == 0.0
    assert ev.tumour_dice(np.zeros_like(la), np.zeros_like(la)) == 1.0
    assert ev.relative_error(11.0, 10.0) == pytest.approx(0.1)
    assert ev.ordering_agreement({"a": -5, "b": 3, "c": 1}, {"a": -9, "b": 2, "c": 1})
    assert not ev.ordering_agreement({"a": -5, "b": 3}, {"a": 3, "b": -5})
    err = np.array([0.0, 1.0, 2.0, 3.0])
    assert ev.error_std_correlation(err, err * 2 + 1) == pytest.approx(1.0)
    art, _por, lab, _ = synth_case(8, radius=8.0)
    geom = Geometry(shape=SHAPE, spacing=(1.5, 1.5, 1.5))
    small = lab.copy()
    small[(lab == 2) & (np.indices(SHAPE)[2] > 24)] = 1
    cats = ev.mrecist_categories(lab, art, [(8, lab, art), (16, small, art)], geom)
    assert cats[0] == "SD" and cats[1] in ("PR", "SD") and len(cats) == 2


def test_ordering_scores_hand_made():
    """Strict all-pairs, pairwise and best-regimen ordering from evaluation rows: the last follow-up per regimen
    counts, pairs tied in the truth are left out, a prediction without change orders nothing."""
    ev = _evaluation_module()

    def rows(pid, true, gen, weeks=(8, 24)):
        out = []
        for r in true:
            for w in weeks:  # only the last week's values matter: the 8-week rows say the opposite
                sign = 1 if w == weeks[-1] else -1
                out.append({"patient_id": pid, "regimen": r, "weeks": w, "pre_viable_ml": 50.0,
                            "true_viable_ml": 50.0 + sign * true[r], "generator_viable_ml": 50.0 + sign * gen[r],
                            "copy_viable_ml": 50.0})
        return out

    fu = (rows("A", {"a": -20, "b": -5, "c": 10}, {"a": -9, "b": -3, "c": 1})  # all 3 pairs right, best right
          + rows("B", {"a": -20, "b": -5, "c": 10}, {"a": -1, "b": -3, "c": 1})  # 2 of 3 pairs right, best wrong
          + rows("C", {"a": -5, "b": -5.2}, {"a": 3, "b": -3})  # tied in the truth: no pair, no unique best
          + rows("D", {"a": 7}, {"a": 7}))  # one regimen: not scored
    g = ev.ordering_scores(fu, "generator")
    assert g["n_patients"] == 3 and g["all_pairs"] == pytest.approx(2 / 3)  # C has no untied pair: right
    assert g["n_pairs"] == 6 and g["pairwise"] == pytest.approx(5 / 6)
    assert g["n_patients_unique_best"] == 2 and g["best_regimen"] == pytest.approx(0.5)
    c = ev.ordering_scores(fu, "copy")
    assert c["pairwise"] == 0.0 and c["best_regimen"] == 0.0 and c["all_pairs"] == pytest.approx(1 / 3)


def test_evaluation_script_runs_on_a_tiny_holdout(trained, tmp_path):
    """End to end on 3 hold-out patients with counterfactual truth for both regimens (no timing)."""
    ev = _evaluation_module()
    root = write_cohort(tmp_path / "holdout", 3, seed0=50)
    geom = Geometry(shape=SHAPE, spacing=SPACING, origin=(-30.0, -40.0, 10.0))
    for p in range(3):
        pid = f"P{50 + p:03d}"
        radius = 5.0 + (p % 3)
        _a, _p, lab, (_c, r2) = synth_case(50 + p, radius)
        for regimen in (SHRINK, GROW):
            for w in (8, 16, 24):
                fa, fp, fl = synth_followup(lab, r2, radius, regimen, w, 7 * p + w)
                folder = root / "truth" / "cases" / pid / regimen / f"w{w:02d}"
                write_image(fa, geom, folder / "arterial.nii.gz")
                write_image(fp, geom, folder / "portal.nii.gz")
                write_image(fl, geom, folder / "labels.nii.gz", labels=True)
    result = ev.evaluate(root, Path(trained["model_path"]), samples=2, steps=2, device="cpu", skip_timing=True,
                         log=lambda *_: None)
    assert result["n_patients"] == 3 and result["n_followups"] == 18
    s = result["summary"]
    assert s["copy"]["liver_hu_mae_mean"] > 0 and 0 < s["generator"]["liver_ssim_mean"] <= 1
    assert s["generator"]["n_patients_ordering"] == 3
    assert s["exponential"]["n_patients_ordering"] == 3 and s["copy"]["regimen_ordering_pairwise"] in (0.0, None)
    jpath, mpath = ev.write_report(result, tmp_path / "results")
    assert json.loads(jpath.read_text())["summary"] and "Targets" in mpath.read_text()


def test_weeks_beyond_the_training_follow_ups_are_noted_and_far_beyond_refused():
    """Issue 24 item 10: --weeks 1000 is refused with what to ask for; a week past the trained ones is noted."""
    art, por, lab, _ = synth_case(1)
    gen = tiny_generator()
    with pytest.raises(InputError, match="trained on follow-ups up to week 24"):
        gen.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[SHRINK], weeks=[8, 1000],
                     samples=1, steps=1)
    gen.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[SHRINK], weeks=[8, 36], samples=1,
                 steps=1)
    assert any("week(s) 36" in m and "extrapolated" in m for m in gen.last_info["messages"])
    gen.generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[SHRINK], weeks=[8, 24], samples=1,
                 steps=1)
    assert not gen.last_info["messages"]


def test_samples_are_bounded():
    from HCCTwinLib.twin.generator import MAX_SAMPLES

    art, por, lab, _ = synth_case(1)
    with pytest.raises(InputError, match=f"at most {MAX_SAMPLES}"):
        tiny_generator().generate({"arterial": art, "portal": por}, lab, _geom(), regimens=[SHRINK], weeks=[8],
                                  samples=MAX_SAMPLES + 1, steps=1)
