"""The baseline-anchored twin (issue 23): kinetics fitted on observed follow-ups, rendering on the patient's own image
(identity, volumes as planned, nothing outside the margin or the liver moves), the generator interface (patches,
seeds, samples, weeks 0, unknown regimens), the model file and the CLI."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from scipy import ndimage

from HCCTwinLib.cases import Geometry, store_rounded
from HCCTwinLib.errors import InputError
from HCCTwinLib.labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR
from HCCTwinLib.twin import kinetic as K
from HCCTwinLib.twin import render as R

torch = pytest.importorskip("torch")

from test_twin import GROW, SHRINK, SPACING, synth_case, write_cohort  # noqa: E402

from HCCTwinLib.twin.anchored import AnchoredGenerator, PatchFollowUp, latent_draws, lesion_draws  # noqa: E402
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


def _longest_mm(mask):
    pts = np.argwhere(mask) * np.array(SPACING[::-1])
    if len(pts) < 2:
        return 0.0
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1))
    return float(d.max())


@pytest.mark.parametrize("share, at_most", [(0.1, 0.75), (0.3, 0.9)])
def test_residual_viable_tumour_is_a_nodule_whose_diameter_shrinks_with_its_volume(share, at_most):
    """mRECIST measures the longest viable diameter: a residual nodule against the wall, not a cap through the whole
    lesion (a cap holding 10 % of a sphere still spans 0.8 of its diameter, one holding 30 % almost all of it)."""
    art, por, lab, _ = synth_case(4, radius=9.0)
    ctx, (les,) = _context(lab, art, por)
    _, labels = R.render(ctx, K.Plan({les.index: (les.total_ml, les.viable_ml * share)}, 0.0), ZERO_LOOK)
    viable = labels == VIABLE_TUMOR
    d_lesion = _longest_mm(np.isin(labels, (VIABLE_TUMOR, NECROSIS)))
    d_viable = _longest_mm(viable)
    d_sphere = 2 * (3 * les.viable_ml * share * 1000 / (4 * math.pi)) ** (1 / 3)
    # compact: the diameter of a ball of its volume (0.98 of it here; the nodule flattened along the wall that the
    # simulator draws reads 1.35 of it), never spanning the lesion
    assert d_sphere * 0.9 < d_viable < min(d_sphere * 1.15, at_most * d_lesion)
    # it touches the lesion wall: some viable voxel borders the liver
    grown = ndimage.binary_dilation(viable)
    assert (grown & (labels == LIVER)).any()


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


def test_released_thrombus_is_computed_on_its_own_box_as_on_the_whole_region():
    """_pvtt measures depth on the thrombus's box (the region may be the whole scan): the same voxels are released
    and filled as with the distance map of the whole region, for a thrombus of any shape, also at the region edge."""
    from scipy import ndimage as ndi

    art, por, lab, _ = synth_case(3)
    lab[20:24, 30:33, 10:30] = PVTT
    lab[24:27, 31:38, 10:13] = PVTT  # a branch: an L-shaped thrombus
    lab[0:3, 0:4, 40:48] = PVTT  # and a piece on the scan's edge
    comp, lesions = K.find_lesions(lab, GEOM, {"arterial": art, "portal": por})
    ctx = R.make_context({"arterial": art, "portal": por}, lab, GEOM, comp, lesions,
                         {les.index: 1.0 for les in lesions})
    look = K.Appearance(necrosis_hu=ZERO_LOOK.necrosis_hu, viable_shift_hu=ZERO_LOOK.viable_shift_hu,
                        released_pvtt_hu={"arterial": float("nan"), "portal": 160.0},
                        new_lesion_contrast_hu=ZERO_LOOK.new_lesion_contrast_hu)
    for keep_share in (0.7, 0.3, 0.0):
        cur = {p: ctx.phases[p].copy() for p in K.PHASES}
        cur.update(labels=ctx.labels.copy())
        ref = {p: ctx.phases[p].copy() for p in K.PHASES}
        ref_lab = ctx.labels.copy()
        n0 = int((ref_lab == PVTT).sum())
        keep_ml = n0 * keep_share * GEOM.voxel_volume_ml
        R._pvtt(ctx, cur, keep_ml, look)
        # the reference: the distance map of the whole region
        thr = ref_lab == PVTT
        depth, (ik, ij, ii) = ndi.distance_transform_edt(thr, sampling=ctx.spacing_kji, return_indices=True)
        where = np.flatnonzero(thr)
        order = np.argsort(-depth.ravel()[where], kind="stable")
        released = np.zeros(thr.size, bool)
        released[where[order[int(round(keep_ml / GEOM.voxel_volume_ml)):]]] = True
        released = released.reshape(thr.shape)
        near = (ik[released], ij[released], ii[released])
        ref["arterial"][released] = ref["arterial"][near]
        ref["portal"][released] = 160.0
        ref_lab[released] = ref_lab[near]
        assert released.sum() > 0
        assert np.array_equal(cur["labels"], ref_lab)
        for p in K.PHASES:
            assert np.array_equal(cur[p], ref[p])


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


@pytest.mark.parametrize("shared", [0.9, 0.1])
def test_the_share_of_a_response_a_patients_lesions_have_in_common_is_fitted_and_sampled(shared):
    """Lesions of one patient respond alike as far as the patient's latent response goes, and apart by their own:
    the fit measures the shared share of the residual variance (one-way ANOVA over the patients' lesions) and a
    sample moves each lesion by ``sqrt(share) z + sqrt(1 - share) e_lesion``; a model without the share (older
    file) moves every lesion by the patient's ``z`` alone."""
    rng = np.random.default_rng(2)
    records = []
    for n in range(80):
        z = rng.normal()
        lesions = []
        for _ in range(3):
            size = math.exp(rng.uniform(1, 3))
            y = -1.0 + 0.5 * (math.sqrt(shared) * z + math.sqrt(1 - shared) * rng.normal())
            les = {f: float("nan") for f in K.FEATURES}
            les.update(log_total_ml=math.log(size + K.SMOOTH_ML), necrotic_share=0.0, pre_total_ml=size,
                       pre_viable_ml=size, post_total_ml=size, post_viable_ml=(size + K.SMOOTH_ML) * math.exp(y)
                       - K.SMOOTH_ML)
            lesions.append(les)
        records.append(K.FollowUpRecord(SHRINK, 8, lesions, 0.0, 0.0, [], {"arterial": [], "portal": []},
                                        {"arterial": [], "portal": []}, {"arterial": float("nan"),
                                                                         "portal": float("nan")},
                                        {"arterial": [], "portal": []}, patient_id=f"P{n}"))
    model, summary = K.fit_kinetics(records, [SHRINK])
    assert model.shared("viable", SHRINK, 8) == pytest.approx(shared, abs=0.15)
    assert summary[SHRINK]["w08"]["shared_viable"]["patients_with_two_or_more_lesions"] == 80
    les = [K.PreLesion(i, 10.0, 0.0, np.zeros(3), 5.0, (), {"log_total_ml": math.log(10.5), "necrotic_share": 0.0})
           for i in (1, 2)]

    def viable(z, e):
        return [v for _t, v in model.plan(les, 0.0, SHRINK, 8, z=z, lesion_z=e).lesions.values()]

    median = viable(0.0, None)
    assert viable(0.0, {1: 0.0, 2: 0.0}) == median  # the median response has no lesion deviation
    apart = viable(0.0, {1: -1.0, 2: 1.0})
    assert apart[0] < median[0] and apart[1] > median[1]  # each lesion by its own deviation
    together = viable(1.0, {1: 0.0, 2: 0.0})
    assert (apart[1] / median[1] > together[1] / median[1]) == (shared < 0.5)
    # a model file without the shares: every lesion follows z alone, the lesion deviations do nothing
    older = K.KineticModel(model.regimens, model.weeks, {k: v for k, v in model.arrays.items()
                                                         if not k.startswith("shared_")},
                           model.feature_mean, model.feature_sd, features=model.features)
    assert older.shared("viable", SHRINK, 8) == 1.0
    assert [v for _t, v in older.plan(les, 0.0, SHRINK, 8, z=0.0, lesion_z={1: -1.0, 2: 1.0}).lesions.values()] == \
        median
    assert K.residual_share([0.1, -0.1, 0.2], ["a", "a", "b"]) == (None, 1)  # too few patients with 2+ lesions


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


def test_category_covariates_of_the_lesions():
    """Diameter categories, solitary / four or more nodules and hypovascularity come from the label map and HU."""
    labels = np.zeros(GEOM.shape, np.uint8)
    labels[2:30, 4:44, 4:44] = 1
    k, j, i = np.indices(GEOM.shape)
    spheres = [((16, 15, 15), 11.0), ((16, 36, 36), 3.0)]  # voxels in-plane; the k spacing is 2x
    for (ck, cj, ci), r in spheres:
        labels[(((k - ck) * 2.0) ** 2 + (j - cj) ** 2 + (i - ci) ** 2 <= r ** 2)] = VIABLE_TUMOR
    art = np.where(labels == VIABLE_TUMOR, 150.0, 80.0).astype(np.float32)
    art[(labels == VIABLE_TUMOR) & (j > 24)] = 85.0  # the small lesion barely enhances: hypo/isovascular
    por = np.where(labels == VIABLE_TUMOR, 90.0, 110.0).astype(np.float32)
    _comp, lesions = K.find_lesions(labels, GEOM, {"arterial": art, "portal": por})
    assert len(lesions) == 2
    big, small = sorted(lesions, key=lambda les: -les.total_ml)
    d_big = 2 * (3 * big.total_ml * 1000 / (4 * math.pi)) ** (1 / 3)
    d_small = 2 * (3 * small.total_ml * 1000 / (4 * math.pi)) ** (1 / 3)
    for les, d in ((big, d_big), (small, d_small)):
        assert les.features["diameter_le_30mm"] == float(d <= 30)
        assert les.features["diameter_le_50mm"] == float(d <= 50)
        assert les.features["diameter_gt_100mm"] == 0.0
        assert les.features["solitary"] == 0.0 and les.features["four_or_more"] == 0.0
    assert d_small <= 30 < d_big
    assert big.features["hypovascular"] == 0.0 and small.features["hypovascular"] == 1.0
    # without phases the vascularity is unknown (NaN: the model imputes the training median)
    _comp, lesions = K.find_lesions(labels, GEOM)
    assert all(math.isnan(les.features["hypovascular"]) for les in lesions)
    assert set(K.FEATURES) <= set(lesions[0].features)


def test_a_size_threshold_is_learned_through_the_category_covariates():
    """A response that jumps at 3 cm (as TACE's does): the fit with the categories recovers both levels, the fit on
    the continuous covariates alone cannot."""
    rng = np.random.default_rng(3)
    records = []
    for _n in range(120):
        d = rng.uniform(15, 60)
        size = 4 / 3 * math.pi * (d / 2) ** 3 / 1000
        ratio = math.exp((-2.5 if d <= 30 else -0.3) + rng.normal(0, 0.1))
        les = {f: 0.0 for f in K.FEATURES}
        les.update(log_total_ml=math.log(size + K.SMOOTH_ML), diameter_le_30mm=float(d <= 30),
                   diameter_le_50mm=float(d <= 50), pre_total_ml=size, pre_viable_ml=size, post_total_ml=size,
                   post_viable_ml=size * ratio)
        records.append(K.FollowUpRecord(SHRINK, 8, [les], 0.0, 0.0, [], {"arterial": [], "portal": []},
                                        {"arterial": [], "portal": []}, {"arterial": float("nan"),
                                                                         "portal": float("nan")},
                                        {"arterial": [], "portal": []}))

    def lesion(d):
        size = 4 / 3 * math.pi * (d / 2) ** 3 / 1000
        return K.PreLesion(1, size, 0.0, np.zeros(3), 5.0, (), {
            **{f: 0.0 for f in K.FEATURES}, "log_total_ml": math.log(size + K.SMOOTH_ML),
            "diameter_le_30mm": float(d <= 30), "diameter_le_50mm": float(d <= 50)})

    def log_ratio(model, d):
        les = lesion(d)
        return math.log((model.plan([les], 0.0, SHRINK, 8).lesions[1][1] + K.SMOOTH_ML) / (les.viable_ml
                                                                                           + K.SMOOTH_ML))

    with_cats, _ = K.fit_kinetics(records, [SHRINK])
    legacy, _ = K.fit_kinetics(records, [SHRINK], features=K.LEGACY_FEATURES)
    assert with_cats.features == K.FEATURES and legacy.features == K.LEGACY_FEATURES
    # a 28 mm lesion responds like the small ones, a 32 mm lesion like the large ones
    assert log_ratio(with_cats, 28) < log_ratio(with_cats, 32) - 1.5
    assert log_ratio(legacy, 32) - log_ratio(legacy, 28) < 0.5
    # a model fitted on the legacy covariates keeps loading and predicting (the shipped card lists its features)
    state = legacy.state()
    again = K.KineticModel.from_state(state, [SHRINK], legacy.weeks)
    assert again.features == K.LEGACY_FEATURES and log_ratio(again, 28) == pytest.approx(log_ratio(legacy, 28))
    with pytest.raises(ValueError, match="not computed"):
        K.KineticModel.from_state(state, [SHRINK], legacy.weeks, features=(*K.LEGACY_FEATURES, "tumour_mood"))
    with pytest.raises(ValueError, match="feature means"):
        K.KineticModel.from_state(state, [SHRINK], legacy.weeks, features=K.FEATURES)


def test_later_weeks_are_fitted_through_the_earlier_one_when_poor_responders_leave():
    """Patients whose week-8 response is poor leave follow-up before week 16 (progression, death): a week-16 fit on
    those still observed promises everyone the survivors' response; the sequential fit through week 8 does not."""
    rng = np.random.default_rng(5)
    size = 20.0

    def lesion(y):
        post = (size + K.SMOOTH_ML) * math.exp(y) - K.SMOOTH_ML
        les = {f: 0.0 for f in K.FEATURES}
        les.update(log_total_ml=math.log(size + K.SMOOTH_ML), pre_total_ml=size, pre_viable_ml=size,
                   post_total_ml=size, post_viable_ml=max(post, 0.0))
        return les

    def record(w, y, pid):
        return K.FollowUpRecord(SHRINK, w, [lesion(y)], 0.0, 0.0, [], {"arterial": [], "portal": []},
                                {"arterial": [], "portal": []}, {"arterial": float("nan"), "portal": float("nan")},
                                {"arterial": [], "portal": []}, patient_id=pid)

    records, true16 = [], []
    for n in range(400):
        z = rng.normal()
        y8 = -1.0 + 0.8 * z + rng.normal(0, 0.1)
        y16 = 1.5 * y8 + rng.normal(0, 0.1)  # week 16 continues week 8's course
        true16.append(max(y16, math.log(K.SMOOTH_ML / (size + K.SMOOTH_ML))))  # a vanished lesion: the floor
        records.append(record(8, y8, f"P{n}"))
        if y8 < -0.8:  # the poorer half of the responders is not seen again
            records.append(record(16, y16, f"P{n}"))
    truth = float(np.mean(true16))

    def predicted16(model):
        les = K.PreLesion(1, 20.0, 0.0, np.zeros(3), 5.0, (), {f: 0.0 for f in K.FEATURES} |
                          {"log_total_ml": math.log(20.0 + K.SMOOTH_ML)})
        return math.log((model.plan([les], 0.0, SHRINK, 16).lesions[1][1] + K.SMOOTH_ML) / (20.0 + K.SMOOTH_ML))

    sequential, summary = K.fit_kinetics(records, [SHRINK])
    direct, _ = K.fit_kinetics(records, [SHRINK], sequential=False)
    assert summary[SHRINK]["w16"]["sequential_viable"]["from_week"] == 8
    assert summary[SHRINK]["w16"]["sequential_viable"]["carry"] > 1.2  # not shrunk towards "no carry"
    assert abs(predicted16(sequential) - truth) < 0.1 < abs(predicted16(direct) - truth)
    # without patient ids nothing can be linked: the direct fit
    for rec in records:
        rec.patient_id = ""
    unlinked, summary = K.fit_kinetics(records, [SHRINK])
    assert "sequential_viable" not in summary[SHRINK]["w16"]
    assert predicted16(unlinked) == pytest.approx(predicted16(direct))


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = write_cohort(tmp_path_factory.mktemp("kin_cohort"), 6)
    out = tmp_path_factory.mktemp("kin_model")
    summary = train_kinetic(root, out, regimens=[SHRINK, GROW], log=None, min_patients=2, min_lesions=2)
    return summary


def test_patch_follow_up_keeps_only_the_changed_voxels_and_gives_back_the_same_volumes():
    """A follow-up built from a dense box (what the renderer cuts) gives back exactly that box pasted into the input
    (HU and labels bit for bit, SD to float16 precision), while storing only the voxels that differ."""
    rng = np.random.default_rng(3)
    art, por, lab, _ = synth_case(2, radius=6.0)
    pre = {"arterial": art, "portal": por}
    box = (slice(6, 26), slice(10, 40), slice(8, 44))
    changed = np.zeros(lab.shape, bool)
    changed[12:18, 20:28, 20:30] = True  # a small part of the box changes
    new_art, new_por, new_lab = art.copy(), por.copy(), lab.copy()
    new_art[changed] += rng.normal(0, 40, changed.sum()).astype(np.float32)
    new_por[changed] -= 15.5
    new_lab[changed] = NECROSIS
    sd = np.zeros(lab.shape, np.float32)
    sd[10:20, 18:30, 18:32] = rng.uniform(0.5, 300.0, (10, 12, 14)).astype(np.float32)
    f = PatchFollowUp(24, pre, lab, GEOM, patch_region=box, patch_phases={"arterial": new_art[box],
                      "portal": new_por[box]}, patch_labels=new_lab[box], patch_std={"arterial": sd[box],
                      "portal": sd[box]}, regimen=SHRINK)
    assert np.array_equal(f.phases["arterial"], new_art) and np.array_equal(f.phases["portal"], new_por)
    assert np.array_equal(f.labels, new_lab) and np.array_equal(f.patch_labels, new_lab[box])
    assert np.array_equal(f.patch_phases["portal"], new_por[box])
    assert np.allclose(f.std["portal"], sd, rtol=1e-3) and f.std["portal"].dtype == np.float32
    std, g = f.std_volume("arterial", GEOM)
    assert np.allclose(std, sd[box], rtol=1e-3) and g.shape == std.shape
    reg = (slice(0, 15), slice(15, 45), slice(0, 30))  # partly outside the box
    assert np.array_equal(f.phase_region("arterial", reg), new_art[reg])
    assert np.array_equal(f.labels_region(reg), new_lab[reg])
    assert np.array_equal(f.label_counts(), np.bincount(new_lab.ravel(), minlength=5))
    ref, buf = np.zeros(lab.shape, np.int16), np.zeros(lab.shape, np.int16)
    store_rounded(ref, new_por)
    assert np.array_equal(f.fill_phase("portal", buf), ref)
    dense = sum(a.nbytes for a in (new_art[box], new_por[box], new_lab[box], sd[box], sd[box]))
    assert f.nbytes() < 0.25 * dense  # 1680 of 21600 box voxels differ (the SD's block)
    unchanged = PatchFollowUp(8, pre, lab, GEOM, regimen=SHRINK)
    assert np.array_equal(unchanged.phases["arterial"], art) and np.array_equal(unchanged.labels, lab)
    assert not unchanged.std["portal"].any() and unchanged.nbytes() == 0


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


def test_latent_draws_are_stratified_over_the_quantiles_and_follow_the_seed():
    from scipy.special import ndtr

    zs, us = latent_draws(7, 4)
    assert [int(4 * ndtr(z)) for z in zs] == [0, 1, 2, 3]  # one draw in each quartile of N(0, 1)
    assert sorted(int(4 * u) for u in us) == [0, 1, 2, 3] and all(0.0 <= u < 1.0 for u in us)
    assert latent_draws(7, 4) == (zs, us) and latent_draws(8, 4) != (zs, us)
    many = np.array([z for seed in range(200) for z in latent_draws(seed, 4)[0]])
    assert abs(many.mean()) < 0.05 and abs(many.std() - 1.0) < 0.05  # draws of N(0, 1)
    one = [latent_draws(seed, 1)[0][0] for seed in range(400)]
    assert abs(np.mean(one)) < 0.15 and abs(np.std(one) - 1.0) < 0.12


def test_each_sampled_response_is_read_as_its_own_trajectory_like_any_follow_up(fitted, monkeypatch):
    """A follow-up's ``sampled_response`` holds, per sample, the category read on that sample's own rendering (its
    trajectory over the weeks, read on the region that can change) = the reading of the full-grid images of that
    response read by ``read_response``; without ``read_samples`` nothing is read."""
    from HCCTwinLib.pipeline import sampled_shares
    from HCCTwinLib.response import CATEGORIES, read_response

    clear_cache()
    gen = get_generator(fitted["weights"])
    art, por, lab, _ = synth_case(11, radius=6.0)
    phases, weeks, seed, n = {"arterial": art, "portal": por}, [8, 24], 4, 3
    out = gen.generate(phases, lab, GEOM, regimens=[SHRINK, GROW], weeks=weeks, samples=n, seed=seed)
    for r in (SHRINK, GROW):
        for w in weeks:
            sampled = out[r][w].sampled_response
            assert set(sampled) == {"recist", "mrecist"} and all(len(v) == n for v in sampled.values())
            assert set(sampled["mrecist"]) <= set(CATEGORIES)
    assert {"CR", "PR"} & set(out[SHRINK][24].sampled_response["mrecist"])  # the cohort's responders
    assert set(out[GROW][24].sampled_response["mrecist"]) == {"PD"}
    orig = gen.model.plan
    zs, us = latent_draws(seed, n)
    es = lesion_draws(seed, n, range(1, 50))
    for s, (z, u) in enumerate(zip(zs, us)):  # render sample s as the median response on the full grid, read it
        monkeypatch.setattr(gen.model, "plan", lambda les, pv, r, w, *_a, z=z, u=u, e=es[s]: orig(les, pv, r, w, z,
                                                                                                   u, e))
        alone = gen.generate(phases, lab, GEOM, regimens=[SHRINK, GROW], weeks=weeks, samples=1, seed=seed,
                             read_samples=False)
        for r in (SHRINK, GROW):
            assert all(alone[r][w].sampled_response is None for w in weeks)
            reading = read_response(lab, [(w, alone[r][w].labels, alone[r][w].phases["arterial"]) for w in weeks],
                                    GEOM, art)
            for c in ("mrecist", "recist"):
                assert reading.categories(c) == [out[r][w].sampled_response[c][s] for w in weeks], (r, s, c)
    monkeypatch.undo()
    shares = sampled_shares({"mrecist": ["PR", "SD", "PR", "CR"], "recist": ["SD"] * 4})
    assert shares == {"samples": 4, "mrecist": {"CR": 0.25, "PR": 0.5, "SD": 0.25}, "recist": {"SD": 1.0}}


def test_renderings_on_threads_equal_the_serial_ones_and_a_cancel_stops_them(fitted, monkeypatch):
    from HCCTwinLib.errors import CancelledError

    gen = get_generator(fitted["weights"])
    art, por, lab, _ = synth_case(13, radius=6.0)
    request = dict(regimens=[SHRINK, GROW], weeks=[8, 16, 24], samples=3, seed=2)
    from HCCTwinLib.twin import anchored

    render_threads: set[int] = set()

    def render(*args, **kwargs):
        render_threads.add(threading.get_ident())
        return R.render(*args, **kwargs)

    monkeypatch.setattr(anchored, "render", render)
    runs = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("HCCTWIN_NUM_THREADS", threads)
        seen: list[tuple[int, str]] = []

        def progress(fraction, message, seen=seen):
            seen.append((threading.get_ident(), message))

        runs[threads] = gen.generate({"arterial": art, "portal": por}, lab, GEOM, progress=progress, **request)
        # progress in request order, on the caller's thread, one step per rendered (regimen, week)
        assert [m for _, m in seen if m.startswith("Rendered")] == [
            f"Rendered {r}, week {w}" for r in (SHRINK, GROW) for w in (8, 16, 24)]
        assert {t for t, _ in seen} == {threading.get_ident()}
        assert (len(render_threads) > 1) == (threads != "1")
        render_threads.clear()
    for r in (SHRINK, GROW):
        for w in (8, 16, 24):
            a, b = runs["1"][r][w], runs["3"][r][w]
            assert np.array_equal(a.labels, b.labels)
            for p in ("arterial", "portal"):
                assert np.array_equal(a.phases[p], b.phases[p]) and np.array_equal(a.std[p], b.std[p])

    def cancel(fraction, message):
        if message.startswith("Rendered"):
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        gen.generate({"arterial": art, "portal": por}, lab, GEOM, progress=cancel, **request)


def test_a_follow_up_keeps_only_the_box_of_its_own_changes():
    """The request's region holds every change of every follow-up; each follow-up keeps only the box of the voxels
    it changes (HU, label or SD), in full-grid coordinates, and nothing when it changes nothing."""
    from HCCTwinLib.twin.anchored import _crop_to_changes

    art, por, lab, _ = synth_case(4, radius=9.0)
    ctx, _ = _context(lab, art, por)
    phases = {p: ctx.phases[p].copy() for p in K.PHASES}
    labels = ctx.labels.copy()
    std = {p: np.zeros_like(ctx.phases[p]) for p in K.PHASES}
    assert _crop_to_changes(ctx, phases, labels, std) == (None, {}, None, {})
    phases["portal"][2, 3, 4] += 5.0
    labels[4, 1, 6] = NECROSIS if labels[4, 1, 6] != NECROSIS else VIABLE_TUMOR
    std["arterial"][3, 5, 2] = 1.0
    region, p2, l2, s2 = _crop_to_changes(ctx, phases, labels, std)
    lo = [r.start for r in ctx.region]
    assert region == (slice(lo[0] + 2, lo[0] + 5), slice(lo[1] + 1, lo[1] + 6), slice(lo[2] + 2, lo[2] + 7))
    assert l2.shape == p2["portal"].shape == s2["arterial"].shape == (3, 5, 5)
    assert p2["portal"][0, 2, 2] == ctx.phases["portal"][2, 3, 4] + 5.0 and s2["arterial"][1, 4, 0] == 1.0


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
    assert main(["train", "survival", "--cohort", str(root), "--out", str(tmp_path / "m3"), "--records-cache",
                 str(tmp_path / "rc")]) == 2


def test_records_cache_gives_the_records_read_from_the_images_and_follows_changed_files(tmp_path, monkeypatch):
    """`hcctwin train generator --records-cache DIR`: a second fit reads no image and fits the same model; a changed
    follow-up or clinical value is read again."""
    import csv

    from HCCTwinLib.twin import fit as F

    root = write_cohort(tmp_path / "cohort", 4)
    fresh, info = F.cohort_records(root)
    cache = tmp_path / "records"
    first, info1 = F.cohort_records(root, cache=cache)
    assert info1["read_from_cache"] == 0 and len(list(cache.glob("*.json"))) == info["patients"]
    calls = []
    real = F.patient_records

    def counting(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(F, "patient_records", counting)
    again, info2 = F.cohort_records(root, cache=cache)
    assert calls == [] and info2["read_from_cache"] == info["patients"]
    # every number and list as read from the images (compared as JSON: a missing AFP is NaN, never equal to itself)
    assert F._records_to_json(again) == F._records_to_json(fresh) == F._records_to_json(first)
    assert len(again) == len(fresh) and all(type(a) is type(b) for a, b in zip(again, fresh))
    m_fresh, _ = K.fit_kinetics(fresh, [SHRINK, GROW], min_patients=2, min_lesions=2)
    m_cached, _ = K.fit_kinetics(again, [SHRINK, GROW], min_patients=2, min_lesions=2)
    assert all(np.array_equal(m_fresh.state()[k], m_cached.state()[k], equal_nan=True) for k in m_fresh.state())
    # a changed clinical value: that patient alone is read again
    rows = list(csv.DictReader(open(root / "clinical.csv")))
    rows[0]["age"] = str(int(rows[0]["age"]) + 1)
    with open(root / "clinical.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    F.cohort_records(root, cache=cache)
    assert calls == [rows[0]["patient_id"]]
    # a damaged cache file is read from the images again, not an error
    for f in cache.glob("*.json"):
        f.write_text("{not json")
    calls.clear()
    F.cohort_records(root, cache=cache)
    assert len(calls) == info["patients"]


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


def test_viable_hu_change_is_a_line_in_the_lesions_own_hu_only_where_it_beats_the_median():
    rng = np.random.default_rng(3)
    pre = rng.uniform(40.0, 200.0, 300)
    # devascularisation: a lesion loses 40 % of its enhancement above 40 HU
    change = -0.4 * (pre - 40.0) + rng.normal(0.0, 3.0, pre.size)
    med, line = K.fit_viable_shift(pre, change)
    assert line is not None and med == pytest.approx(float(np.median(change)))
    ref, at_ref, slope, lo, hi = line
    assert slope == pytest.approx(-0.4, abs=0.03) and ref == pytest.approx(pre.mean())
    assert at_ref == pytest.approx(-0.4 * (ref - 40.0), abs=1.0)
    assert lo < hi and lo == pytest.approx(np.percentile(change, 5))
    # the same change whatever the HU (heavy-tailed noise): the median stays
    flat = rng.laplace(-10.0, 5.0, pre.size)
    med, line = K.fit_viable_shift(pre, flat)
    assert line is None and med == pytest.approx(float(np.median(flat)))
    # changes without their pre HU (records of an earlier version): the median of them all, no line
    med, line = K.fit_viable_shift([float("nan")] * 30, change[:30])
    assert line is None and med == pytest.approx(float(np.median(change[:30])))
    # too few pairs, or no spread of HU: the median
    assert K.fit_viable_shift(pre[:10], change[:10])[1] is None
    assert K.fit_viable_shift(np.full(50, 90.0), change[:50])[1] is None
    # the appearance applies the line to a lesion's own HU, clipped to the observed range; without HU, the base
    look = K.Appearance(necrosis_hu={}, viable_shift_hu={"arterial": -25.0}, released_pvtt_hu={},
                        new_lesion_contrast_hu={}, viable_shift_fit={"arterial": (100.0, -20.0, -0.5, -60.0, 0.0)})
    assert look.viable_shift("arterial", 100.0) == -20.0
    assert look.viable_shift("arterial", 60.0) == 0.0  # -20 + 20, clipped to 0 at the top
    assert look.viable_shift("arterial", 140.0) == -40.0
    assert look.viable_shift("arterial", 400.0) == -60.0
    assert look.viable_shift("arterial", float("nan")) == -25.0  # the median
    assert look.viable_shift("portal", 100.0) == 0.0


def test_a_hypovascular_lesion_keeps_its_hu_where_a_hypervascular_one_loses_enhancement():
    """Records keep each lesion's pre-treatment HU beside its change; the fitted model renders the change of a
    lesion's own HU (seed 2026 patient 5 of the hold-out: a 52 HU lesion shifted by the population's -13 HU read CR)."""
    art, por, lab, _ = synth_case(4, radius=7.0)
    comp, lesions = K.find_lesions(lab, GEOM, {"arterial": art, "portal": por})
    post_art = np.where(lab == VIABLE_TUMOR, art - 30.0, art).astype(np.float32)
    rec = K.followup_record({"arterial": art, "portal": por}, lab, {"arterial": post_art, "portal": por}, lab, GEOM,
                            SHRINK, 8)
    assert rec.viable_pre_hu["arterial"] == pytest.approx([lesions[0].hu["arterial"]])
    assert rec.viable_shift_hu["arterial"] == pytest.approx([-30.0], abs=0.5)
    # a cohort in which enhancement is lost in proportion to it
    rng = np.random.default_rng(5)
    records = []
    for n in range(60):
        hu = float(rng.uniform(50.0, 220.0))
        les = {f: 0.0 for f in K.FEATURES}
        les.update(pre_total_ml=10.0, pre_viable_ml=10.0, post_total_ml=10.0, post_viable_ml=8.0)
        d = -0.3 * (hu - 50.0) + float(rng.normal(0.0, 2.0))
        records.append(K.FollowUpRecord(SHRINK, 8, [les], 0.0, 0.0, [], {"arterial": [], "portal": []},
                                        {"arterial": [d], "portal": [0.0]}, {"arterial": float("nan"),
                                                                             "portal": float("nan")},
                                        {"arterial": [], "portal": []}, patient_id=f"P{n}",
                                        viable_pre_hu={"arterial": [hu], "portal": [100.0]}))
    model, summary = K.fit_kinetics(records, [SHRINK, GROW])
    assert summary[SHRINK]["w08"]["viable_shift_slope"]["arterial"] == pytest.approx(-0.3, abs=0.03)
    look = model.appearance(SHRINK, 8)
    assert "portal" not in look.viable_shift_fit  # no spread of HU: the median change
    assert look.viable_shift("arterial", 55.0) > -5.0 and look.viable_shift("arterial", 200.0) < -40.0
    # the model file keeps the line; a model of an earlier version (without it) shifts every lesion by the median
    state = model.state()
    again = K.KineticModel.from_state(state, model.regimens, model.weeks, features=model.features)
    assert again.appearance(SHRINK, 8).viable_shift("arterial", 55.0) == pytest.approx(
        look.viable_shift("arterial", 55.0), abs=1e-3)
    old = K.KineticModel.from_state({k: v for k, v in state.items() if k != "viable_shift_fit"}, model.regimens,
                                    model.weeks, features=model.features)
    assert old.appearance(SHRINK, 8).viable_shift_fit == {}
    # rendered: the hypovascular lesion keeps its HU, the hypervascular one loses enhancement
    for level, lo, hi in ((60.0, -5.0, 0.5), (200.0, -50.0, -40.0)):
        a2 = np.where(lab == VIABLE_TUMOR, level, art).astype(np.float32)
        ctx, (les,) = _context(lab, a2, por)
        plan = K.Plan({les.index: (les.total_ml, les.viable_ml)}, 0.0)
        phases, labels = R.render(ctx, plan, look)
        v = labels == VIABLE_TUMOR
        assert lo <= float(phases["arterial"][v].mean()) - level <= hi


def _shell_followup(lab, r2, core_radius):
    """The lesion's outer shell turned into new necrosis, its core still viable; the distance (mm) of every voxel from
    that necrosis."""
    post = lab.copy()
    post[(lab == VIABLE_TUMOR) & (r2 > core_radius ** 2)] = NECROSIS
    dist = ndimage.distance_transform_edt(post != NECROSIS, sampling=SPACING[::-1])
    return post, dist


def test_viable_tumour_next_to_new_necrosis_is_measured_apart_from_the_rest():
    """After TACE the scanner's blur spreads the dense lipiodol into the residual tumour next to it: the records keep
    the tissue's own change (beyond 4 mm of the new necrosis) apart from the offset of each band next to it."""
    art, por, lab, (_c, r2) = synth_case(6, radius=8.0)
    post, dist = _shell_followup(lab, r2, 5.5)
    viable = post == VIABLE_TUMOR
    offset = np.select([dist <= 2.0, dist <= 4.0], [60.0, 20.0], -5.0)
    post_art = np.where(viable, art + offset, np.where(post == NECROSIS, 400.0, art)).astype(np.float32)
    (les,) = K.find_lesions(lab, GEOM, {"arterial": art, "portal": por})[1]
    rec = K.followup_record({"arterial": art, "portal": por}, lab, {"arterial": post_art, "portal": por}, post, GEOM,
                            SHRINK, 8)
    far = viable & (dist > 4.0)
    assert far.sum() >= K.MIN_BAND_VOXELS
    # the tissue change: the far part of the residual tumour against the whole pre-treatment viable tumour
    assert rec.viable_shift_hu["arterial"] == pytest.approx([float(art[far].mean()) - 5.0 - les.hu["arterial"]],
                                                            abs=0.1)
    band_a = [v[0] for v in rec.viable_adjacent_hu["arterial"]]
    assert band_a[0] == pytest.approx(65.0 + float(art[viable & (dist <= 2)].mean() - art[far].mean()), abs=0.1)
    assert band_a[1] == pytest.approx(25.0 + float(art[viable & (dist > 2) & (dist <= 4)].mean() - art[far].mean()),
                                      abs=0.1)
    assert rec.viable_adjacent_hu["portal"][0][0] == pytest.approx(0.0, abs=3.0)  # no blur in the portal phase here
    # no new necrosis: the whole viable tumour is the tissue, no band
    rec0 = K.followup_record({"arterial": art, "portal": por}, lab, {"arterial": art - 10.0, "portal": por}, lab, GEOM,
                             SHRINK, 8)
    assert rec0.viable_shift_hu["arterial"] == pytest.approx([-10.0], abs=0.01)
    assert rec0.viable_adjacent_hu["arterial"] == [[], []]


def test_the_band_offsets_are_fitted_and_rendered_next_to_the_new_necrosis_only():
    rng = np.random.default_rng(8)
    records = []
    for n in range(30):
        les = {f: 0.0 for f in K.FEATURES}
        les.update(pre_total_ml=10.0, pre_viable_ml=10.0, post_total_ml=10.0, post_viable_ml=3.0)
        records.append(K.FollowUpRecord(
            SHRINK, 8, [les], 0.0, 0.0, [], {"arterial": [], "portal": []}, {"arterial": [-3.0], "portal": [0.0]},
            {"arterial": float("nan"), "portal": float("nan")}, {"arterial": [], "portal": []}, patient_id=f"P{n}",
            viable_pre_hu={"arterial": [160.0], "portal": [90.0]},
            viable_adjacent_hu={"arterial": [[float(70.0 + rng.normal(0, 2))], [float(20.0 + rng.normal(0, 2))]],
                                "portal": [[], []]}))
    model, summary = K.fit_kinetics(records, [SHRINK, GROW])
    look = model.appearance(SHRINK, 8)
    assert look.viable_adjacent_hu["arterial"] == pytest.approx((70.0, 20.0), abs=1.5)
    assert "portal" not in look.viable_adjacent_hu  # too few lesions: no offset
    assert summary[SHRINK]["w08"]["viable_adjacent_hu"]["arterial"][0] == pytest.approx(70.0, abs=1.5)
    assert look.adjacent_offset("arterial", np.array([0.5, 2.0, 3.0, 4.5, np.inf])).tolist() == pytest.approx(
        [look.viable_adjacent_hu["arterial"][0]] * 2 + [look.viable_adjacent_hu["arterial"][1], 0.0, 0.0])
    assert look.adjacent_offset("portal", np.array([1.0])) is None
    # rendered: the surviving viable voxels within 2 / 2-4 mm of the voxels that die take the offsets, the others not
    art, por, lab, _ = synth_case(7, radius=8.0)
    ctx, (les,) = _context(lab, art, por)
    plan = K.Plan({les.index: (les.total_ml, les.viable_ml * 0.3)}, 0.0)
    bands = K.Appearance(necrosis_hu=ZERO_LOOK.necrosis_hu, viable_shift_hu=ZERO_LOOK.viable_shift_hu,
                         released_pvtt_hu=ZERO_LOOK.released_pvtt_hu,
                         new_lesion_contrast_hu=ZERO_LOOK.new_lesion_contrast_hu,
                         viable_adjacent_hu={"arterial": (70.0, 20.0)})
    plain_phases, plain_labels = R.render(ctx, plan, ZERO_LOOK)
    phases, labels = R.render(ctx, plan, bands)
    assert np.array_equal(labels, plain_labels)
    dies = (labels == NECROSIS) & (np.asarray(lab[ctx.region]) != NECROSIS)
    dist = ndimage.distance_transform_edt(~dies, sampling=SPACING[::-1])
    viable = labels == VIABLE_TUMOR
    diff = phases["arterial"] - plain_phases["arterial"]
    for sel, value in ((viable & (dist <= 2.0), 70.0), (viable & (dist > 2.0) & (dist <= 4.0), 20.0),
                       (viable & (dist > 4.0), 0.0), (~viable, 0.0)):
        assert sel.any() and np.allclose(diff[sel], value, atol=1e-3), value
    assert np.array_equal(phases["portal"], plain_phases["portal"])
    # a model of an earlier version (no band array) renders every surviving voxel alike
    state = model.state()
    old = K.KineticModel.from_state({k: v for k, v in state.items() if k != "viable_adjacent_hu"}, model.regimens,
                                    model.weeks, features=model.features)
    assert old.appearance(SHRINK, 8).viable_adjacent_hu == {}
    again = K.KineticModel.from_state(state, model.regimens, model.weeks, features=model.features)
    assert again.appearance(SHRINK, 8).viable_adjacent_hu["arterial"] == pytest.approx(
        look.viable_adjacent_hu["arterial"], abs=1e-3)
