"""The baseline-anchored twin (issue 23): kinetics fitted on observed follow-ups, rendering on the patient's own image
(identity, volumes as planned, nothing outside the margin or the liver moves), the generator interface (patches,
seeds, samples, weeks 0, unknown regimens), the model file and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from HCCTwinLib.cases import Geometry, store_rounded
from HCCTwinLib.errors import InputError
from HCCTwinLib.labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR
from HCCTwinLib.twin import kinetic as K
from HCCTwinLib.twin import render as R

torch = pytest.importorskip("torch")

from test_twin import GROW, SHRINK, SPACING, synth_case, write_cohort  # noqa: E402

from HCCTwinLib.twin.anchored import AnchoredGenerator, PatchFollowUp  # noqa: E402
from HCCTwinLib.twin.fit import train_kinetic  # noqa: E402
from HCCTwinLib.twin.generator import clear_cache, get_generator  # noqa: E402

GEOM = Geometry(shape=(32, 48, 48), spacing=SPACING, origin=(-30.0, -40.0, 10.0))
ZERO_LOOK = K.Appearance(necrosis_hu={"arterial": 20.0, "portal": 25.0}, viable_shift_hu={"arterial": 0.0,
                         "portal": 0.0}, released_pvtt_hu={"arterial": 150.0, "portal": 160.0},
                         new_lesion_contrast_hu={"arterial": 40.0, "portal": -20.0})


def _context(labels, art, por, scale=1.0):
    comp, lesions = K.find_lesions(labels, GEOM, {"arterial": art, "portal": por})
    ctx = R.make_context({"arterial": art, "portal": por}, labels, GEOM, comp, lesions,
                         {les.index: scale for les in lesions})
    return ctx, lesions


def _full(ctx, patch, base):
    out = np.array(base, copy=True)
    out[ctx.region] = patch
    return out


def test_unchanged_plan_renders_the_input_exactly():
    art, por, lab, _ = synth_case(0)
    lab[16, 24, 20:23] = NECROSIS  # a necrotic spot inside the tumour: stays where it is
    ctx, lesions = _context(lab, art, por, 1.5)
    plan = K.Plan({les.index: (les.total_ml, les.viable_ml) for les in lesions}, 0.0)
    phases, labels = R.render(ctx, plan, ZERO_LOOK)
    assert np.array_equal(_full(ctx, labels, lab), lab)
    for p, arr in (("arterial", art), ("portal", por)):
        assert np.array_equal(_full(ctx, phases[p], arr), arr)


@pytest.mark.parametrize("factor", [0.4, 1.6])
def test_lesion_resized_to_the_planned_volume_and_nothing_moves_outside(factor):
    art, por, lab, _ = synth_case(1, radius=7.0)
    ctx, lesions = _context(lab, art, por, max(1.0, factor ** (1 / 3)))
    (les,) = lesions
    plan = K.Plan({les.index: (les.total_ml * factor, les.viable_ml * factor)}, 0.0)
    phases, labels = R.render(ctx, plan, ZERO_LOOK)
    new_lab = _full(ctx, labels, lab)
    tumour_ml = np.isin(new_lab, (VIABLE_TUMOR, NECROSIS)).sum() * GEOM.voxel_volume_ml
    assert tumour_ml == pytest.approx(les.total_ml * factor, rel=0.15)
    # beyond the lesion's reach (largest radius of pre and virtual outline + 10 mm) every voxel is the input's
    sp = np.array(SPACING[::-1])
    d = np.sqrt((((np.indices(lab.shape).T - les.centroid_kji) * sp) ** 2).sum(axis=-1)).T
    far = d > R.lesion_reach_mm(les, factor ** (1 / 3)) + 1e-6
    for p, arr in (("arterial", art), ("portal", por)):
        assert np.array_equal(_full(ctx, phases[p], arr)[far], arr[far])
    assert np.array_equal(new_lab[far], lab[far])
    # outside the liver nothing changes, tumour never leaves the liver
    outside = lab == 0
    assert np.array_equal(new_lab[outside], lab[outside])
    assert np.array_equal(_full(ctx, phases["arterial"], art)[outside], art[outside])


def test_treatment_necrosis_and_viable_volume_follow_the_plan():
    art, por, lab, _ = synth_case(2, radius=7.0)
    ctx, (les,) = _context(lab, art, por)
    plan = K.Plan({les.index: (les.total_ml, les.viable_ml * 0.3)}, 0.0)
    phases, labels = R.render(ctx, plan, ZERO_LOOK)
    vox = GEOM.voxel_volume_ml
    assert (labels == VIABLE_TUMOR).sum() * vox == pytest.approx(les.viable_ml * 0.3, abs=vox)
    nec = labels == NECROSIS
    assert nec.sum() > 0 and np.allclose(phases["arterial"][nec].mean(), 20.0, atol=10.0)
    # residual viable tumour is a crescent on one side (treatment necrosis > 10 %), not a ring around the necrosis
    pts = np.argwhere(labels == VIABLE_TUMOR) * np.array(SPACING[::-1])
    centre = (np.array(les.centroid_kji) - [s.start for s in ctx.region]) * np.array(SPACING[::-1])
    assert np.linalg.norm(pts.mean(axis=0) - centre) > 2.0


def test_pvtt_shrinks_never_grows_and_new_lesion_is_drawn_in_the_liver():
    art, por, lab, _ = synth_case(3)
    lab[20:24, 30:33, 10:30] = PVTT
    rng = np.random.default_rng(0)
    site = R.choose_new_site(lab, GEOM, rng)
    assert site is not None and lab[tuple(np.round(site).astype(int))] == LIVER
    comp, lesions = K.find_lesions(lab, GEOM, {"arterial": art, "portal": por})
    ctx = R.make_context({"arterial": art, "portal": por}, lab, GEOM, comp, lesions,
                         {les.index: 1.0 for les in lesions}, new_site=site, new_radius_mm=6.0)
    pv0 = (lab == PVTT).sum() * GEOM.voxel_volume_ml
    same = {les.index: (les.total_ml, les.viable_ml) for les in lesions}
    _, labels = R.render(ctx, K.Plan(same, pv0 * 0.5, new_lesion_ml=0.9), ZERO_LOOK)
    assert (labels == PVTT).sum() * GEOM.voxel_volume_ml == pytest.approx(pv0 * 0.5, rel=0.1)
    _, grown = R.render(ctx, K.Plan(same, pv0 * 3.0), ZERO_LOOK)
    assert (grown == PVTT).sum() == (lab == PVTT).sum()
    new_comp, n = K.tumour_components(_full(ctx, labels, lab), GEOM)
    assert n == 2  # the original lesion and the new one


def test_ridge_recovers_a_known_relation_and_kinetics_predict_from_covariates():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = -1.0 + 0.5 * X[:, 0] - 0.2 * X[:, 2] + rng.normal(0, 0.1, 200)
    beta, sd, _lam = K.ridge_loo(X, y)
    assert beta == pytest.approx([-1.0, 0.5, 0.0, -0.2], abs=0.05) and sd == pytest.approx(0.1, abs=0.03)
    records = []
    for _n in range(40):
        size = math.exp(rng.uniform(0, 4))
        for w in (8, 16):
            ratio = math.exp(-0.05 * w * (1.0 if size > 10 else 0.2))  # large lesions respond more
            les = {f: float("nan") for f in K.FEATURES}
            les.update(log_total_ml=math.log(size + K.SMOOTH_ML), necrotic_share=0.0, pre_total_ml=size,
                       pre_viable_ml=size, post_total_ml=size, post_viable_ml=size * ratio)
            records.append(K.FollowUpRecord(SHRINK, w, [les], 0.0, 0.0, [], {"arterial": [], "portal": []},
                                            {"arterial": [], "portal": []}, {"arterial": float("nan"),
                                                                             "portal": float("nan")},
                                            {"arterial": [], "portal": []}))
    model, summary = K.fit_kinetics(records, [SHRINK, GROW])
    assert model.fitted(SHRINK) and not model.fitted(GROW) and summary[SHRINK]["w08"]["patients"] == 40

    def lesion(size):
        return K.PreLesion(1, size, 0.0, np.zeros(3), 5.0, (), {"log_total_ml": math.log(size + K.SMOOTH_ML),
                                                               "necrotic_share": 0.0})

    big = model.plan([lesion(40.0)], 0.0, SHRINK, 16).lesions[1][1] / 40.0
    small = model.plan([lesion(2.0)], 0.0, SHRINK, 16).lesions[1][1] / 2.0
    assert big < small < 1.0 and big == pytest.approx(math.exp(-0.8), rel=0.2)
    # week 12 between the observed weeks, week 0 is the input, a regimen without data is unchanged
    mid = model.plan([lesion(40.0)], 0.0, SHRINK, 12).lesions[1][1] / 40.0
    assert big < mid < model.plan([lesion(40.0)], 0.0, SHRINK, 8).lesions[1][1] / 40.0
    assert model.plan([lesion(40.0)], 0.0, SHRINK, 0).lesions[1] == (40.0, 40.0)
    assert model.plan([lesion(40.0)], 0.0, GROW, 16).lesions[1] == (40.0, 40.0)
    # a worse latent response (z > 0) keeps more viable tumour
    assert model.plan([lesion(40.0)], 0.0, SHRINK, 16, z=1.0).lesions[1][1] > big * 40.0


def test_joint_fit_shares_slopes_across_regimens_and_is_chosen_by_leave_one_out():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(160, 2))
    groups = np.repeat([0, 1], 80)
    y = np.where(groups == 0, -1.0, 0.5) + 0.4 * X[:, 0] + rng.normal(0, 0.1, 160)
    coef, loo, _lam, _kappa = K.joint_ridge(X, groups, y, 2, np.ones(160))
    assert coef[:, 0] == pytest.approx([-1.0, 0.5], abs=0.05) and coef[:, 1] == pytest.approx([0.4, 0.4], abs=0.05)
    assert np.sqrt(np.mean(loo ** 2)) == pytest.approx(0.1, abs=0.03)

    def record(regimen, size, ratio):
        les = {f: float("nan") for f in K.FEATURES}
        les.update(log_total_ml=math.log(size + K.SMOOTH_ML), necrotic_share=0.0, pre_total_ml=size,
                   pre_viable_ml=size, post_total_ml=size, post_viable_ml=size * ratio)
        return K.FollowUpRecord(regimen, 8, [les], 0.0, 0.0, [], {"arterial": [], "portal": []},
                                {"arterial": [], "portal": []}, {"arterial": float("nan"), "portal": float("nan")},
                                {"arterial": [], "portal": []})

    # the same size effect under both regimens, different levels: the joint fit wins on leave-one-out
    records = [record(reg, s, math.exp(base - 0.3 * math.log(s) + rng.normal(0, 0.05)))
               for reg, base in ((SHRINK, -0.5), (GROW, 0.4)) for s in np.exp(rng.uniform(0, 4, 30))]
    _model, summary = K.fit_kinetics(records, [SHRINK, GROW])
    assert summary[SHRINK]["w08"]["fit_viable"]["joint"] and summary[GROW]["w08"]["fit_viable"]["joint"]
    _model, summary = K.fit_kinetics(records, [SHRINK, GROW], joint=False)
    assert not summary[SHRINK]["w08"]["fit_viable"]["joint"]


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = write_cohort(tmp_path_factory.mktemp("kin_cohort"), 6)
    out = tmp_path_factory.mktemp("kin_model")
    summary = train_kinetic(root, out, regimens=[SHRINK, GROW], log=None, min_patients=2, min_lesions=2)
    return summary


def test_fitted_generator_shrinks_and_grows_on_the_patients_own_image(fitted):
    clear_cache()
    gen = get_generator(fitted["weights"])
    assert isinstance(gen, AnchoredGenerator)
    card = json.loads(open(fitted["card"]).read())
    assert card["architecture"] == "anchored-kinetic" and card["training_data"]["followups"] == 18
    art, por, lab, _ = synth_case(11, radius=6.0)
    out = gen.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=[SHRINK, GROW], weeks=[0, 8, 24],
                       samples=3, seed=4)
    v0 = (lab == VIABLE_TUMOR).sum()
    shrink = [(out[SHRINK][w].labels == VIABLE_TUMOR).sum() for w in (8, 24)]
    grow = [(out[GROW][w].labels == VIABLE_TUMOR).sum() for w in (8, 24)]
    assert shrink[1] < shrink[0] < v0 < grow[0] < grow[1]
    # the shrinking regimen turns viable tumour into necrosis (what the cohort showed), bright like its lipiodol
    f = out[SHRINK][24]
    assert (f.labels == NECROSIS).sum() > 0 and f.phases["arterial"][f.labels == NECROSIS].mean() > 300
    for r in (SHRINK, GROW):
        assert np.array_equal(out[r][0].labels, lab) and np.array_equal(out[r][0].phases["arterial"], art)
        f = out[r][24]
        assert isinstance(f, PatchFollowUp) and f.labels.shape == lab.shape
        outside = np.ones(lab.shape, bool)
        outside[f.region] = False
        assert np.array_equal(f.phases["portal"][outside], por[outside])
        assert (f.std["arterial"] >= 0).all() and f.std["arterial"].max() > 0
        # the cheaper accessors agree with the full arrays
        reg = (slice(5, 20), slice(10, 30), slice(0, 48))
        assert np.array_equal(f.phase_region("arterial", reg), f.phases["arterial"][reg])
        assert np.array_equal(f.labels_region(reg), f.labels[reg])
        assert np.array_equal(f.label_counts(), np.bincount(f.labels.ravel(), minlength=5))
        buf = np.zeros(lab.shape, np.int16)
        ref = np.zeros(lab.shape, np.int16)
        store_rounded(ref, f.phases["arterial"])
        assert np.array_equal(f.fill_phase("arterial", buf), ref)
        std, g = f.std_volume("arterial", GEOM)
        assert std.shape == g.shape
    again = gen.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=[SHRINK], weeks=[24], samples=3,
                         seed=4)
    assert np.array_equal(again[SHRINK][24].phases["arterial"], out[SHRINK][24].phases["arterial"])
    other = gen.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=[SHRINK], weeks=[24], samples=3,
                         seed=5)
    assert not np.array_equal(other[SHRINK][24].std["arterial"], out[SHRINK][24].std["arterial"])
    assert np.array_equal(other[SHRINK][24].labels, out[SHRINK][24].labels)  # the median does not depend on seed


def test_generator_refuses_bad_requests_and_notes_regimens_without_data(fitted, tmp_path):
    gen = get_generator(fitted["weights"])
    art, por, lab, _ = synth_case(12)
    with pytest.raises(InputError, match="does not know regimen"):
        gen.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=["nope"], weeks=[8])
    with pytest.raises(InputError, match="no liver"):
        gen.generate({"arterial": art, "portal": por}, np.zeros_like(lab), GEOM, regimens=[GROW], weeks=[8])
    with pytest.raises(InputError, match="extrapolation"):
        gen.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=[GROW], weeks=[100])
    with pytest.raises(InputError, match="at most"):
        gen.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=[GROW], weeks=[8], samples=1000)
    out = gen.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=[GROW], weeks=[30])
    assert any("beyond" in m for m in gen.last_info["messages"])
    assert (out[GROW][30].labels == VIABLE_TUMOR).sum() > (lab == VIABLE_TUMOR).sum()
    # a model fitted on one regimen only: the other is shown unchanged, and said so
    one = train_kinetic(fitted_cohort_one_regimen(tmp_path), tmp_path / "m", regimens=[SHRINK, GROW], log=None,
                        min_patients=2, min_lesions=2)
    g1 = get_generator(one["weights"])
    res = g1.generate({"arterial": art, "portal": por}, lab, GEOM, regimens=[SHRINK, GROW], weeks=[8])
    assert np.array_equal(res[SHRINK][8].labels, lab)
    assert any("no observed follow-ups of " + SHRINK in m for m in g1.last_info["messages"])


def fitted_cohort_one_regimen(tmp_path):
    import csv

    root = write_cohort(tmp_path / "c1", 4)
    rows = list(csv.DictReader(open(root / "clinical.csv")))
    keep = [r for r in rows if r["regimen"] == GROW]
    with open(root / "clinical.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return root


def test_cli_train_generator_fits_the_anchored_twin(tmp_path):
    from HCCTwinLib.cli import main

    root = write_cohort(tmp_path / "cohort", 4)
    assert main(["train", "generator", "--cohort", str(root), "--out", str(tmp_path / "model")]) == 0
    card = json.loads((tmp_path / "model" / "hcctwin_twin.json").read_text())
    assert card["architecture"] == "anchored-kinetic" and card["regimens"]
    assert main(["train", "generator", "--cohort", str(root), "--out", str(tmp_path / "m2"), "--lr", "0.1"]) == 2


@pytest.mark.parametrize("factor", [0.3, 1.8])
def test_an_elongated_lesion_moves_only_the_liver_near_its_own_outline(factor):
    """A long thin lesion (a 40 x 6 x 6 mm bar): liver beyond 10 mm of the pre-treatment and the virtual outline
    keeps its HU exactly, although it lies well inside the lesion's largest centroid distance + 10 mm."""
    from scipy import ndimage

    shape = (32, 48, 48)
    rng = np.random.default_rng(3)
    lab = np.zeros(shape, np.uint8)
    lab[2:30, 4:44, 4:44] = LIVER
    lab[15:17, 22:26, 10:37] = VIABLE_TUMOR
    art = np.where(lab == LIVER, 80.0, np.where(lab == VIABLE_TUMOR, 160.0, -80.0)).astype(np.float32)
    art += rng.normal(0, 6, shape).astype(np.float32)
    por = art + 20.0
    ctx, (les,) = _context(lab, art, por, max(1.0, factor ** (1 / 3)))
    phases, labels = R.render(ctx, K.Plan({les.index: (les.total_ml * factor, les.viable_ml * factor)}, 0.0),
                              ZERO_LOOK)
    new_lab = _full(ctx, labels, lab)
    new_art = _full(ctx, phases["arterial"], art)
    sp = SPACING[::-1]
    # the margin is measured on the voxel grid: one slice (3 mm) of slack
    near = ndimage.distance_transform_edt(~np.isin(lab, (2, 3)), sampling=sp) <= R.MARGIN_MM + max(sp)
    near |= ndimage.distance_transform_edt(~np.isin(new_lab, (2, 3)), sampling=sp) <= R.MARGIN_MM + max(sp)
    far_liver = (lab == LIVER) & ~near
    assert far_liver.sum() > 1000
    assert np.array_equal(new_art[far_liver], art[far_liver])
    # while the old rule (a sphere of the largest centroid distance + 10 mm) would have moved much of it
    d = np.sqrt((((np.indices(shape).T - les.centroid_kji) * np.array(sp)) ** 2).sum(axis=-1)).T
    assert (far_liver & (d < R.lesion_reach_mm(les, max(1.0, factor ** (1 / 3))))).sum() > 0.2 * far_liver.sum()


def test_a_lesion_planned_to_vanish_leaves_no_tumour():
    """Resection or complete response: total 0 mL -> no tumour voxel of that lesion is left (the parenchyma around it
    closes in; what the outline table cannot map becomes liver)."""
    art, por, lab, _ = synth_case(4, radius=7.0)
    lab[14:18, 22:26, 30:33] = VIABLE_TUMOR  # a lobe: the lesion is not a sphere
    ctx, lesions = _context(lab, art, por)
    plan = K.Plan({les.index: (0.0, 0.0) for les in lesions}, 0.0)
    _phases, labels = R.render(ctx, plan, ZERO_LOOK)
    assert not np.isin(labels, (VIABLE_TUMOR, NECROSIS)).any()
    assert np.array_equal(labels > 0, lab[ctx.region] > 0)  # the liver keeps its extent


def test_growth_beyond_the_liver_is_capped_not_an_error():
    art, por, lab, _ = synth_case(5, radius=7.0)
    ctx, (les,) = _context(lab, art, por, 1.2)
    _phases, labels = R.render(ctx, K.Plan({les.index: (les.total_ml * 500, les.viable_ml * 500)}, 0.0), ZERO_LOOK)
    full = _full(ctx, labels, lab)
    assert np.isin(full, (VIABLE_TUMOR, NECROSIS)).sum() > np.isin(lab, (VIABLE_TUMOR, NECROSIS)).sum()
    assert np.array_equal(full > 0, lab > 0)
