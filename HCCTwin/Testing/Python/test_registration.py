"""Follow-up registration (rigid, affine, deformable in the liver) on small phantoms with known misalignments."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from HCCTwinLib.cases import Case, Geometry
from HCCTwinLib.errors import CancelledError, InputError
from HCCTwinLib.io import read_image, save_case
from HCCTwinLib.registration import register_followup, run_register_command, tre_summary
from HCCTwinLib.simulate.misalignment import Misalignment, simulate_misalignment

SPACING = (4.0, 4.0, 5.0)  # x, y, z mm


def phantom(shape=(32, 48, 48), seed=3) -> Case:
    """Abdomen-like CT: body ellipse with fat rim, spine, kidney, liver with smooth texture and two lesions."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape).astype(float)
    c = (np.asarray(shape) - 1) / 2
    body = ((j - c[1]) / (0.44 * shape[1])) ** 2 + ((i - c[2]) / (0.46 * shape[2])) ** 2 <= 1
    inner = ((j - c[1]) / (0.38 * shape[1])) ** 2 + ((i - c[2]) / (0.40 * shape[2])) ** 2 <= 1
    liver = (((k - c[0]) / (0.33 * shape[0])) ** 2 + ((j - c[1] + 2) / (0.26 * shape[1])) ** 2
             + ((i - 0.62 * shape[2]) / (0.2 * shape[2])) ** 2) <= 1
    spine = ((j - 0.78 * shape[1]) ** 2 + (i - c[2]) ** 2) <= 9
    kidney = (((k - c[0]) / 5) ** 2 + ((j - 0.65 * shape[1]) / 4) ** 2 + ((i - 0.3 * shape[2]) / 3.5) ** 2) <= 1
    lesion1 = ((k - c[0] - 2) ** 2 + (j - c[1] + 3) ** 2 + (i - 0.62 * shape[2] + 2) ** 2) <= 9
    lesion2 = ((k - c[0] + 5) ** 2 + (j - c[1] - 4) ** 2 + (i - 0.67 * shape[2]) ** 2) <= 4
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32)), 2.0))
    texture = texture / texture.std()
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = -100.0
    hu[inner] = 40.0 + 15.0 * texture[inner]
    hu[liver] = 110.0 + 12.0 * texture[liver]
    hu[kidney] = 180.0
    hu[spine] = 500.0
    hu[liver & (lesion1 | lesion2)] = 60.0
    hu += rng.normal(0, 5, size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[liver & (lesion1 | lesion2)] = 2
    geom = Geometry(shape=shape, spacing=SPACING, origin=(-90.0, -100.0, -150.0))
    return Case("phantom", {"arterial": hu + 20.0 * (labels == 2), "portal": hu}, geom, labels)


@pytest.fixture(scope="module")
def case() -> Case:
    return phantom()


def _copy(case: Case) -> tuple[dict, np.ndarray]:
    return {n: a.copy() for n, a in case.phases.items()}, case.labels.copy()


def test_rigid_misalignment_is_recovered_on_the_fixed_grid(case):
    mis = simulate_misalignment(case, seed=5, max_rotation_deg=10.0, max_translation_mm=20.0, deformation_mm=0.0,
                                max_scale=0.0)
    assert isinstance(mis, Misalignment) and not mis.geometry.same_grid(case.geometry)
    assert mis.parameters["inversion_residual_mm"] < 1e-3
    assert mis.landmark_kinds.count("lesion") == 2
    before_phases, before_labels = _copy(case)
    moving_before = {n: a.copy() for n, a in mis.phases.items()}
    result = register_followup(case, mis.phases, mis.geometry, mis.labels, deformable=False, threads=2)
    voxel = min(SPACING)
    before, after = mis.tre(), mis.tre(result.transform)
    assert before.mean() > 2 * voxel
    assert after.mean() < 2 * voxel / 2 and after.max() < 2 * voxel, tre_summary(after)
    # outputs on the fixed grid, labels integer 0..4
    assert result.geometry == case.geometry
    assert set(result.phases) == {"arterial", "portal"}
    for arr in result.phases.values():
        assert arr.shape == case.geometry.shape and arr.dtype == np.float32 and np.isfinite(arr).all()
    assert result.labels.shape == case.geometry.shape and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 1, 2, 3, 4}
    overlap = result.metrics["overlap"]
    assert overlap["final"]["liver_dice"] > 0.9 > overlap["identity"]["liver_dice"]
    assert result.metrics["mi_eval"]["affine"] < result.metrics["mi_eval"]["identity"]
    assert "deformable" not in result.stage_transforms and result.wall_time_s > 0
    # inputs untouched
    for n in case.phases:
        np.testing.assert_array_equal(case.phases[n], before_phases[n])
        np.testing.assert_array_equal(mis.phases[n], moving_before[n])
    np.testing.assert_array_equal(case.labels, before_labels)
    # the FollowUp the pipeline takes
    fu = result.followup(8, "tace_pd1_len")
    assert fu.kind == "observed" and fu.weeks == 8 and fu.labels is result.labels


def test_identity_stays_identity_and_is_deterministic(case):
    moving = {n: a.copy() for n, a in case.phases.items()}
    runs = [register_followup(case, moving, case.geometry, case.labels.copy(), deformable=True, threads=2)
            for _ in range(2)]
    r = runs[0]
    pts = np.array([[-10.0, -5.0, -70.0], [20.0, 0.0, -80.0], [0.0, 10.0, -60.0]])
    moved = np.array([r.transform.TransformPoint(tuple(p)) for p in pts])
    assert np.abs(moved - pts).max() < 0.5 * min(SPACING)
    assert r.metrics["overlap"]["final"]["liver_dice"] > 0.97
    assert np.abs(r.phases["portal"] - case.phases["portal"]).mean() < 10.0
    # same inputs, seed and threads: the same transform and images
    assert np.array_equal(runs[0].stage_transforms["affine"].GetParameters(),
                          runs[1].stage_transforms["affine"].GetParameters())
    np.testing.assert_array_equal(runs[0].phases["portal"], runs[1].phases["portal"])


def test_deformable_stage_improves_the_liver_overlap(case):
    mis = simulate_misalignment(case, seed=11, max_rotation_deg=0.0, max_translation_mm=0.0, deformation_mm=9.0,
                                max_scale=0.0)
    result = register_followup(case, mis.phases, mis.geometry, mis.labels, deformable=True, threads=2)
    overlap = result.metrics["overlap"]
    assert "deformable" in result.stage_transforms, result.notes
    assert overlap["deformable"]["liver_dice"] > overlap["affine"]["liver_dice"]
    assert mis.tre(result.transform).mean() < mis.tre(result.transform_after("affine")).mean()
    assert result.metrics["deformable"]["jacobian_min"] > 0.05


def test_without_liver_mask_the_deformable_stage_is_skipped(case):
    result = register_followup((case.phases, case.geometry), case.phases, case.geometry, deformable=True,
                               threads=2)
    assert "deformable" not in result.stage_transforms and result.labels is None
    assert any("no liver mask" in n for n in result.notes)


def test_bad_inputs_raise_input_error(case):
    g = case.geometry
    portal = case.phases["portal"]
    with pytest.raises(InputError, match="no image phase"):
        register_followup(case, {}, g)
    with pytest.raises(InputError, match="shape"):
        register_followup(case, {"portal": portal[:-1]}, g)
    with pytest.raises(InputError, match="empty"):
        register_followup(case, {"portal": np.zeros_like(portal)}, g)
    bad = portal.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        register_followup(case, {"portal": bad}, g)
    with pytest.raises(InputError, match="liver mask"):
        register_followup(case, {"portal": portal}, g, liver_mask=np.zeros(g.shape, bool))
    with pytest.raises(InputError, match="label map is empty"):
        register_followup(case, {"portal": portal}, g, np.zeros(g.shape, np.uint8))
    with pytest.raises(InputError, match="too thin"):
        register_followup(case, {"portal": portal[:2]}, Geometry((2, *g.shape[1:]), g.spacing, g.origin))
    # a follow-up slab that holds almost none of the liver
    slab = Geometry((4, *g.shape[1:]), g.spacing, g.origin)
    with pytest.raises(InputError, match="cover"):
        register_followup(case, {"portal": portal[:4]}, slab)


def test_cancel_through_progress(case):
    seen = []

    def progress(fraction, message):
        seen.append(fraction)
        return False if "rigid" in message else None

    with pytest.raises(CancelledError):
        register_followup(case, case.phases, case.geometry, progress=progress, threads=2)
    assert seen and seen[0] == 0.0


def test_run_register_command_writes_the_registered_follow_up(case, tmp_path):
    mis = simulate_misalignment(case, seed=2, max_rotation_deg=5.0, max_translation_mm=8.0, deformation_mm=0.0)
    # the follow-up stored with a flipped direction (RAS-like rows/columns): same physical content
    g = mis.geometry
    corner = g.ijk_to_lps() @ np.array([g.size_xyz[0] - 1, g.size_xyz[1] - 1, 0, 1.0])
    flipped = Geometry(g.shape, g.spacing, tuple(corner[:3]), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    save_case(case, tmp_path / "pre")
    save_case(Case("p", {n: a[:, ::-1, ::-1] for n, a in mis.phases.items()}, flipped, mis.labels[:, ::-1, ::-1]),
              tmp_path / "w08")
    with pytest.raises(InputError, match="output folder"):
        run_register_command(tmp_path / "pre", tmp_path / "w08", tmp_path / "w08")
    summary = run_register_command(tmp_path / "pre", tmp_path / "w08", tmp_path / "out", deformable=False)
    assert summary["stages"] == ["rigid", "affine"]
    portal, geom = read_image(tmp_path / "out" / "portal.nii.gz")
    assert geom.same_grid(case.geometry) and portal.shape == case.geometry.shape
    labels, _ = read_image(tmp_path / "out" / "labels.nii.gz", labels=True)
    assert summary["metrics"]["overlap"]["final"]["liver_dice"] > 0.9
    assert labels.max() <= 4
    tx = sitk.ReadTransform(str(tmp_path / "out" / "transform.h5"))
    assert mis.tre(tx).mean() < min(SPACING) < mis.tre().mean()
    assert (tmp_path / "out" / "registration.json").is_file()


def test_a_reverted_stage_is_not_listed_as_kept():
    """Provenance says which stages were kept: a deformable stage that folded and was reverted is not among them."""
    import SimpleITK as sitk

    from HCCTwinLib.cases import Geometry
    from HCCTwinLib.registration import RegistrationResult

    ident = sitk.Transform(3, sitk.sitkIdentity)
    r = RegistrationResult(phases={}, labels=None, geometry=Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
                           transform=ident, stage_transforms={"rigid": ident, "affine": ident, "deformable": ident},
                           metrics={"rigid": {}, "affine": {}, "deformable": {"reverted": True}})
    assert r.kept_stages == ["rigid", "affine"]
    assert r.summary()["stages"] == ["rigid", "affine", "deformable"] and r.summary()["kept_stages"] == r.kept_stages
