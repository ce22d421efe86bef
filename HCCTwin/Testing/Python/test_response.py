"""RECIST 1.1 / mRECIST response reading (HCCTwinLib.response)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from HCCTwinLib.cases import Geometry
from HCCTwinLib.errors import InputError
from HCCTwinLib.response import (
    CATEGORIES,
    ResponseConfig,
    category_ordinal,
    extract_lesions,
    feret_diameter_2d,
    read_response,
    select_targets,
    target_response,
    weighted_kappa,
)

LIVER_HU, ENHANCING_HU, WASHED_OUT_HU = 80.0, 150.0, 85.0


def rotation_z(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])


def lps_points(geom: Geometry) -> np.ndarray:
    """LPS position (mm) of every voxel centre, shape (K, J, I, 3)."""
    k, j, i = np.indices(geom.shape)
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ geom.ijk_to_lps().T)[..., :3]


def ellipsoid(geom: Geometry, center_ijk, semi_axes_mm, axes=None) -> np.ndarray:
    """Voxels whose centre lies in an ellipsoid (physical semi-axes along the columns of ``axes``)."""
    pts = lps_points(geom)
    c = geom.ijk_to_lps() @ np.array([*center_ijk, 1.0])
    local = (pts - c[:3]) @ (np.eye(3) if axes is None else np.asarray(axes))
    return (((local / np.asarray(semi_axes_mm)) ** 2).sum(-1)) <= 1.0


def line_labels(geom: Geometry, n_pixels: int, *, k=3, j=8, i0=10, value=2, labels=None) -> np.ndarray:
    """A one-pixel-thick row: its Feret diameter is exactly n_pixels * spacing_x."""
    labels = np.zeros(geom.shape, np.uint8) if labels is None else labels
    labels[k, j, i0:i0 + n_pixels] = value
    return labels


LINE_GEOM = Geometry(shape=(8, 24, 160), spacing=(0.5, 0.5, 2.0))


# ------------------------------------------------------------------------------------------------ diameters

@pytest.mark.parametrize("spacing", [(0.8, 0.8, 2.5), (0.6, 1.1, 2.5)])
@pytest.mark.parametrize("direction", [np.eye(3), rotation_z(30.0) @ np.diag([1.0, -1.0, 1.0]),
                                       np.diag([-1.0, -1.0, 1.0])])
def test_ellipsoid_diameters_on_anisotropic_rotated_grid(spacing, direction):
    geom = Geometry(shape=(24, 90, 90), spacing=spacing, origin=(-30.0, 12.0, 100.0), direction=direction)
    axes = rotation_z(20.0)                                # long axis at 20 degrees in the axial plane (LPS)
    mask = ellipsoid(geom, (45, 45, 12), (20.0, 10.0, 12.0), axes)
    labels = np.where(mask, 2, 0).astype(np.uint8)
    (les,) = extract_lesions(labels, geom)
    tol = max(spacing[:2])
    assert les.longest_diameter_mm == pytest.approx(40.0, abs=tol)
    assert les.short_axis_mm == pytest.approx(20.0, abs=tol)
    assert les.slice_index == 12
    assert les.viable_longest_diameter_mm == pytest.approx(les.longest_diameter_mm)
    assert les.volume_ml == pytest.approx(4 / 3 * math.pi * 20 * 10 * 12 / 1000, rel=0.1)
    c = geom.ijk_to_lps() @ np.array([45, 45, 12, 1.0])
    assert np.allclose(les.centroid_lps, c[:3], atol=0.5)
    assert les.measurable and les.measurable_mrecist


@pytest.mark.parametrize("diameter_mm", [10.0, 17.0, 31.0])
def test_sphere_diameter_within_one_voxel(diameter_mm):
    geom = Geometry(shape=(30, 64, 64), spacing=(0.8, 0.8, 2.5), direction=rotation_z(-45.0))
    labels = ellipsoid(geom, (31.3, 32.6, 15), (diameter_mm / 2,) * 3).astype(np.uint8) * 2
    (les,) = extract_lesions(labels, geom)
    assert abs(les.longest_diameter_mm - diameter_mm) <= 0.8
    assert abs(les.short_axis_mm - diameter_mm) <= 0.8 * math.sqrt(2)


def test_feret_exact_on_simple_shapes():
    inplane = np.array([[0.5, 0.0], [0.0, 2.0], [0.0, 0.0]])      # x spacing 0.5, y spacing 2 mm
    row = np.zeros((5, 30), bool)
    row[2, 3:23] = True
    assert feret_diameter_2d(row, inplane) == pytest.approx((10.0, 2.0))     # 20 px * 0.5 mm; width = 1 px in y
    col = np.zeros((8, 4), bool)
    col[1:7, 2] = True
    assert feret_diameter_2d(col, inplane)[0] == pytest.approx(12.0)          # 6 px * 2 mm
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    assert feret_diameter_2d(single, inplane)[0] == pytest.approx(2.0)
    assert feret_diameter_2d(np.zeros((3, 3), bool), inplane) == (0.0, 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_feret_matches_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((9, 13)) < 0.3
    inplane = (rotation_z(37.0) @ np.diag([0.7, 1.3, 2.5]))[:, :2]
    j, i = np.nonzero(mask)
    pts = np.concatenate([np.stack([i + di, j + dj], 1) for di, dj in ((-.5, 0), (.5, 0), (0, -.5), (0, .5))])
    phys = pts @ inplane.T
    brute = np.sqrt(((phys[:, None] - phys[None]) ** 2).sum(-1)).max()
    assert feret_diameter_2d(mask, inplane)[0] == pytest.approx(brute, rel=1e-12)


def test_line_lesion_measures_exactly_and_noise_is_ignored():
    labels = line_labels(LINE_GEOM, 100)
    labels[6, 20, 150] = 2                                       # one voxel = 0.5 mm < noise floor
    (les,) = extract_lesions(labels, LINE_GEOM)
    assert les.longest_diameter_mm == pytest.approx(50.0)
    assert les.slice_index == 3
    assert extract_lesions(line_labels(LINE_GEOM, 19), LINE_GEOM)[0].measurable is False   # 9.5 mm
    assert extract_lesions(line_labels(LINE_GEOM, 20), LINE_GEOM)[0].measurable is True    # 10 mm
    assert extract_lesions(line_labels(LINE_GEOM, 19), LINE_GEOM, min_diameter_mm=9.0)[0].measurable is True


# ------------------------------------------------------------------------------------------------ targets

def three_lesion_case():
    geom = Geometry(shape=(24, 96, 128), spacing=(0.8, 0.8, 2.5))
    labels = np.zeros(geom.shape, np.uint8)
    labels[2:22, 5:90, 5:123] = 1
    for center, d in (((30, 30, 12), 15.0), ((95, 40, 12), 30.0), ((40, 75, 12), 20.0)):
        labels[ellipsoid(geom, center, (d / 2,) * 3)] = 2
    return geom, labels


def test_target_selection_two_per_organ_largest_first():
    geom, labels = three_lesion_case()
    lesions = extract_lesions(labels, geom)
    assert [les.longest_diameter_mm for les in lesions] == pytest.approx([30, 20, 15], abs=0.8)
    targets = select_targets(lesions, "recist")
    assert [t.id for t in targets] == [1, 2]
    assert [les.is_target for les in lesions] == [True, True, False]
    reading = read_response(labels, [], geom)
    assert reading.target_ids == {"recist": [1, 2], "mrecist": [1, 2]}
    assert reading.baseline_sum_mm == pytest.approx(lesions[0].longest_diameter_mm + lesions[1].longest_diameter_mm)
    assert reading.categories("recist") == [] and reading.best_overall["recist"] is None
    cfg = ResponseConfig(max_targets_per_organ=10, max_targets_total=2)
    assert [t.id for t in select_targets(lesions, "recist", cfg)] == [1, 2]
    cfg = ResponseConfig(max_targets_per_organ=5)
    assert [t.id for t in select_targets(lesions, "recist", cfg)] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ categories

def read_lines(base_px, followup_px, **kw):
    fus = [(8.0 * (n + 1), line_labels(LINE_GEOM, px) if px else np.zeros(LINE_GEOM.shape, np.uint8), None)
           for n, px in enumerate(followup_px)]
    return read_response(line_labels(LINE_GEOM, base_px), fus, LINE_GEOM, **kw)


def test_partial_response_boundary_minus_30_vs_minus_29():
    r = read_lines(100, [70])                   # 50 -> 35 mm = -30.0 %
    assert r.timepoints[0].sum_diameters_mm == pytest.approx(35.0)
    assert r.timepoints[0].change_from_baseline_pct["recist"] == pytest.approx(-30.0)
    assert r.categories("recist") == ["PR"] and r.categories("mrecist") == ["PR"]
    r = read_lines(100, [71])                   # 35.5 mm = -29 %
    assert r.categories("recist") == ["SD"] and r.categories("mrecist") == ["SD"]
    assert r.objective_response == {"recist": False, "mrecist": False}


def test_progression_absolute_5mm_rule_recist_only():
    r = read_lines(40, [48])                    # 20 -> 24 mm: +20 % but only +4 mm
    assert r.categories("recist") == ["SD"]
    assert r.categories("mrecist") == ["PD"]    # mRECIST: +20 % vs nadir, no absolute minimum
    r = read_lines(40, [50])                    # 20 -> 25 mm: +25 %, +5 mm
    assert r.categories("recist") == ["PD"] and r.categories("mrecist") == ["PD"]
    r = read_lines(40, [47])                    # +17.5 %
    assert r.categories("recist") == ["SD"] and r.categories("mrecist") == ["SD"]


def test_nadir_across_three_timepoints():
    r = read_lines(100, [60, 72, 71])           # 50 -> 30 (PR) -> 36 (+20 % of nadir, still -28 % vs baseline)
    assert r.categories("recist") == ["PR", "PD", "SD"]       # 35.5 mm: -29 % vs baseline, not > nadir+20 %
    tp = r.timepoints[1]
    assert tp.nadir_sum_mm == pytest.approx(30.0)
    assert tp.change_from_nadir_pct["recist"] == pytest.approx(20.0)
    assert tp.change_from_baseline_pct["recist"] == pytest.approx(-28.0)
    assert r.best_overall == {"recist": "PR", "mrecist": "PR"}
    assert r.objective_response["recist"] is True
    r = read_lines(100, [60, 71])               # 35.5 mm: +18 % over nadir, -29 % vs baseline -> SD
    assert r.categories("recist") == ["PR", "SD"]


def test_followups_read_in_week_order_and_duplicates_refused():
    fu = [(16.0, line_labels(LINE_GEOM, 72), None), (8.0, line_labels(LINE_GEOM, 60), None)]
    r = read_response(line_labels(LINE_GEOM, 100), fu, LINE_GEOM)
    assert r.weeks == [8.0, 16.0] and r.categories("recist") == ["PR", "PD"]
    with pytest.raises(InputError, match="trajectory"):
        read_response(line_labels(LINE_GEOM, 100), [fu[0], fu[0]], LINE_GEOM)


def test_target_response_function_thresholds():
    assert target_response(35.0, 50.0, 50.0) == "PR"
    assert target_response(35.5, 50.0, 50.0) == "SD"
    assert target_response(0.0, 50.0, 30.0) == "CR"
    assert target_response(36.0, 50.0, 30.0) == "PD"
    assert target_response(24.0, 20.0, 20.0, criterion="recist") == "SD"
    assert target_response(24.0, 20.0, 20.0, criterion="mrecist") == "PD"
    assert target_response(6.0, 20.0, 0.0) == "PD"            # regrowth after CR
    assert target_response(4.0, 20.0, 0.0, criterion="recist") == "PR"   # < 5 mm, -80 % vs baseline


def test_new_lesion_is_progression_small_one_is_not():
    base = line_labels(LINE_GEOM, 100)
    fu = line_labels(LINE_GEOM, 70)             # -30 %: would be PR
    fu[6, 20, 130:154] = 2                      # 12 mm, far from the baseline lesion (> 0.5 x 50 mm)
    r = read_response(base, [(8, fu, None)], LINE_GEOM)
    tp = r.timepoints[0]
    assert r.categories("recist") == ["PD"] and r.categories("mrecist") == ["PD"]
    assert len(tp.new_lesions) == 1 and tp.new_lesions[0].longest_diameter_mm == pytest.approx(12.0)
    assert tp.new_lesions_mrecist[0].matched_baseline_id is None
    small = line_labels(LINE_GEOM, 70)
    small[6, 20, 140:150] = 2                   # 5 mm: equivocal, not PD
    assert read_response(base, [(8, small, None)], LINE_GEOM).categories("recist") == ["PR"]
    necrotic = line_labels(LINE_GEOM, 70)
    necrotic[6, 20, 130:154] = 3                # 12 mm but not enhancing: RECIST new lesion, not mRECIST
    r = read_response(base, [(8, necrotic, None)], LINE_GEOM)
    assert r.categories("recist") == ["PD"] and r.categories("mrecist") == ["PR"]


def test_complete_response_when_all_tumour_disappears():
    r = read_lines(100, [0, 0])
    assert r.categories("recist") == ["CR", "CR"] and r.categories("mrecist") == ["CR", "CR"]
    assert r.timepoints[0].target_diameters_mm == {1: 0.0}
    assert r.best_overall == {"recist": "CR", "mrecist": "CR"} and r.objective_response["mrecist"] is True
    # a small residual (equivocal) lesion prevents CR: target CR + non-target non-CR/non-PD = PR
    fu = np.zeros(LINE_GEOM.shape, np.uint8)
    fu[6, 20, 140:150] = 2
    assert read_response(line_labels(LINE_GEOM, 100), [(8, fu, None)], LINE_GEOM).categories("recist") == ["PR"]


def liver_case():
    geom = Geometry(shape=(20, 80, 80), spacing=(0.8, 0.8, 2.5), direction=np.diag([-1.0, 1.0, 1.0]))
    labels = np.zeros(geom.shape, np.uint8)
    labels[1:19, 4:76, 4:76] = 1
    tumor = ellipsoid(geom, (40, 40, 10), (12.0, 12.0, 12.0))
    labels[tumor] = 2
    arterial = np.full(geom.shape, -100.0, np.float32)
    arterial[labels == 1] = LIVER_HU
    arterial[tumor] = ENHANCING_HU
    return geom, labels, arterial, tumor


def test_mrecist_tace_lesion_same_size_non_enhancing():
    geom, labels, arterial, tumor = liver_case()
    (les,) = extract_lesions(labels, geom, arterial)
    assert les.liver_reference_hu == pytest.approx(LIVER_HU)
    assert les.viable_longest_diameter_mm == pytest.approx(les.longest_diameter_mm) and les.measurable_mrecist
    # lipiodol-laden / necrotic: label 3, hyperdense on the arterial phase but not viable
    lipiodol = labels.copy()
    lipiodol[tumor] = 3
    art_lip = arterial.copy()
    art_lip[tumor] = 600.0
    # still labelled viable, but no longer enhancing over the surrounding liver
    washed = arterial.copy()
    washed[tumor] = WASHED_OUT_HU
    # residual enhancing nodule (radius 4 mm) in an otherwise non-enhancing lesion
    nodule = arterial.copy()
    nodule[tumor] = WASHED_OUT_HU
    nodule[ellipsoid(geom, (40, 40, 10), (4.0, 4.0, 4.0)) & tumor] = ENHANCING_HU
    fus = [(8, lipiodol, art_lip), (16, labels, washed), (24, labels, nodule)]
    r = read_response(labels, fus, geom, baseline_arterial=arterial)
    assert r.categories("recist") == ["SD", "SD", "SD"]
    assert r.categories("mrecist") == ["CR", "CR", "PD"]      # viable regrowth after CR (nadir 0) is progression
    assert r.timepoints[1].sum_diameters_mm == pytest.approx(r.baseline_sum_mm)
    assert r.timepoints[1].sum_viable_mm == 0.0
    assert 6.0 <= r.timepoints[2].sum_viable_mm <= 9.6
    assert r.best_overall == {"recist": "SD", "mrecist": "CR"}
    r = read_response(labels, [(8, labels, nodule)], geom, baseline_arterial=arterial)
    assert r.categories("recist") == ["SD"] and r.categories("mrecist") == ["PR"]
    # without an arterial phase, label 2 is viable: the washed-out lesion stays SD under mRECIST too
    r = read_response(labels, [(8, labels, None)], geom)
    assert r.categories("mrecist") == ["SD"]
    # the margin is configurable: a 10 HU margin makes 85 HU (liver 80) enhancing again
    r = read_response(labels, [(16, labels, washed)], geom, baseline_arterial=arterial,
                      config=ResponseConfig(enhancement_margin_hu=4.0))
    assert r.categories("mrecist") == ["SD"]


def test_pvtt_appearing_or_growing_is_progression():
    geom, labels, arterial, tumor = liver_case()
    fu = labels.copy()
    fu[tumor] = 3
    fu[tumor & ~ellipsoid(geom, (40, 40, 10), (9.0, 9.0, 12.0))] = 0       # shrinks: RECIST target PR region
    pvtt = np.zeros(geom.shape, bool)
    pvtt[8:12, 60:70, 60:70] = True                                         # 0.64 ml
    with_pvtt = fu.copy()
    with_pvtt[pvtt] = 4
    r = read_response(labels, [(8, fu, None), (16, with_pvtt, None)], geom)
    assert r.categories("mrecist") == ["CR", "PD"]
    assert r.categories("recist")[1] == "PD"
    assert "new PVTT" in r.timepoints[1].reasons["mrecist"]
    assert r.timepoints[1].nontarget_response["recist"] == "PD"
    assert r.timepoints[1].pvtt_volume_ml == pytest.approx(400 * geom.voxel_volume_ml)
    # stable PVTT present from baseline: not progression, but it prevents CR
    base = labels.copy()
    base[pvtt] = 4
    r = read_response(base, [(8, with_pvtt, None)], geom)
    assert r.categories("mrecist") == ["PR"]
    bigger = with_pvtt.copy()
    bigger[6:14, 58:72, 58:72] = 4                                          # ~1.25 ml: +0.6 ml, +95 %
    r = read_response(base, [(8, bigger, None)], geom)
    assert r.categories("mrecist") == ["PD"] and r.categories("recist") == ["PD"]


def test_lesion_matched_by_centroid_when_not_overlapping():
    base = line_labels(LINE_GEOM, 40, i0=10)                                 # 20 mm, centre i = 29.5
    fu = line_labels(LINE_GEOM, 30, i0=20, j=11)                             # no overlap; centre 2.9 mm away
    r = read_response(base, [(8, fu, None)], LINE_GEOM)
    assert r.timepoints[0].lesions[0].matched_baseline_id == 1
    assert r.timepoints[0].new_lesions == []
    far = line_labels(LINE_GEOM, 30, i0=100)                                 # 40 mm away: new lesion
    r = read_response(base, [(8, far, None)], LINE_GEOM)
    assert r.categories("recist") == ["PD"] and r.timepoints[0].target_diameters_mm == {1: 0.0}


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="shape"):
        read_response(np.zeros((4, 4, 4), np.uint8), [], LINE_GEOM)
    with pytest.raises(InputError, match="outside"):
        extract_lesions(np.full(LINE_GEOM.shape, 7, np.uint8), LINE_GEOM)
    with pytest.raises(InputError, match="criterion"):
        read_lines(100, [70], criteria=("who",))
    r = read_lines(100, [70], criteria=("mrecist",))
    assert r.timepoints[0].category_recist is None
    with pytest.raises(InputError):
        r.categories("recist")


# ------------------------------------------------------------------------------------------------ kappa

def test_category_ordinal():
    assert [category_ordinal(c) for c in ("CR", "pr", "SD", "PD")] == [0, 1, 2, 3]
    with pytest.raises(InputError):
        category_ordinal("NE")


def test_weighted_kappa_known_values():
    a = ["CR", "PR", "SD", "PD"]
    b = ["CR", "SD", "SD", "PD"]
    # Hand computation (k = 4, n = 4). Observed: one disagreement PR/SD, |i-j| = 1.
    #   linear w = |i-j|/3: sum(wO) = (1/4)(1/3) = 1/12. Marginals a = (1,1,1,1)/4, b = (1,0,2,1)/4;
    #   sum(wE) = 1/4 * sum_j b_j * sum_i |i-j| / 3 = 1/4 * (6 + 0 + 2*4 + 6)/4 / 3 = 5/12 -> kappa = 1 - 1/5 = 0.8
    #   quadratic w = (i-j)^2/9: sum(wO) = 1/36; sum(wE) = 1/4 * (14 + 0 + 2*6 + 14)/4 / 9 = 10/36 -> 0.9
    assert weighted_kappa(a, b, "linear") == pytest.approx(0.8)
    assert weighted_kappa(a, b, "quadratic") == pytest.approx(0.9)
    assert weighted_kappa(b, a, "linear") == pytest.approx(0.8)
    assert weighted_kappa(a, a) == pytest.approx(1.0)
    assert weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], "quadratic") == pytest.approx(1.0)
    assert weighted_kappa(["SD"] * 5, ["SD"] * 5) == 1.0
    # complete reversal: CR<->PD, PR<->SD; linear: sum(wO) = (2*1 + 2*1/3)/4 = 2/3, uniform marginals give
    # sum(wE) = (1/16) * (6 + 4 + 4 + 6)/3 = 5/12 -> kappa = 1 - 8/5 = -0.6
    assert weighted_kappa(a, a[::-1]) == pytest.approx(-0.6)
    with pytest.raises(InputError):
        weighted_kappa(a, b[:3])
    with pytest.raises(InputError):
        weighted_kappa(a, b, "cubic")


# ------------------------------------------------------------------------------------------------ robustness

def test_large_volume_is_fast():
    geom = Geometry(shape=(120, 512, 512), spacing=(0.75, 0.75, 2.5))
    labels = np.zeros(geom.shape, np.uint8)
    labels[10:110, 100:420, 60:300] = 1
    k, j, i = np.ogrid[:120, :512, :512]
    for (ck, cj, ci), r in (((60, 250, 150), 40), ((40, 330, 230), 15), ((80, 180, 240), 10)):
        ball = ((k - ck) * 2.5) ** 2 + ((j - cj) * 0.75) ** 2 + ((i - ci) * 0.75) ** 2 <= (r * 0.75) ** 2
        labels[ball] = 2
    labels[(k - 60) ** 2 + (j - 250) ** 2 + (i - 150) ** 2 <= 100] = 3
    arterial = np.where(labels == 2, 160.0, 80.0).astype(np.float32)
    extract_lesions(labels, geom, arterial)                                  # warm-up
    t0 = time.perf_counter()
    lesions = extract_lesions(labels, geom, arterial)
    elapsed = time.perf_counter() - t0
    assert len(lesions) == 3
    assert lesions[0].longest_diameter_mm == pytest.approx(60.0, abs=0.75)
    assert elapsed < 1.0, f"extract_lesions took {elapsed:.2f} s on 512x512x120"


label_boxes = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, 15), st.integers(0, 15), st.integers(1, 6), st.integers(1, 10),
              st.integers(1, 10), st.sampled_from([1, 2, 2, 3, 4])),
    max_size=6)


def draw_labels(boxes):
    labels = np.zeros((10, 16, 16), np.uint8)
    for k, j, i, dk, dj, di, value in boxes:
        labels[k:k + dk, j:j + dj, i:i + di] = value
    return labels


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=label_boxes, fus=st.lists(st.tuples(label_boxes, st.booleans()), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_read_response_is_deterministic_and_categories_valid(base, fus, seed):
    geom = Geometry(shape=(10, 16, 16), spacing=(1.2, 0.9, 2.5), direction=rotation_z(15.0))
    rng = np.random.default_rng(seed)
    followups = []
    for n, (boxes, with_arterial) in enumerate(fus):
        art = rng.normal(100, 40, geom.shape).astype(np.float32) if with_arterial else None
        followups.append((8.0 * (n + 1), draw_labels(boxes), art))
    base_art = rng.normal(100, 40, geom.shape).astype(np.float32)
    first = read_response(draw_labels(base), followups, geom, baseline_arterial=base_art)
    second = read_response(draw_labels(base), followups, geom, baseline_arterial=base_art)
    assert json.dumps(first.to_dict(), sort_keys=True) == json.dumps(second.to_dict(), sort_keys=True)
    for crit in ("recist", "mrecist"):
        cats = first.categories(crit)
        assert len(cats) == len(followups) and set(cats) <= set(CATEGORIES)
        assert first.best_overall[crit] == min(cats, key=category_ordinal)
        assert len(first.target_ids[crit]) <= 2
