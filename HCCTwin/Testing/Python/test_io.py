"""Case model and I/O: formats, geometry end to end, one grid for all phases, and a clear error for each bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from HCCTwinLib.cases import Case, Geometry
from HCCTwinLib.errors import InputError
from HCCTwinLib.io import assemble_case, load_case, read_image, resample_to, save_case, write_image

from conftest import make_phantom, sitk_image, write_dicom_series

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
OBLIQUE = tuple(np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).ravel())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", [None, FLIPPED, OBLIQUE])
def test_read_keeps_geometry_and_values(tmp_path, phantom, suffix, direction):
    hu, _ = phantom
    img = sitk_image(hu, spacing=(0.7, 0.9, 3.5), origin=(12.5, -80.25, 301.0), direction=direction)
    path = tmp_path / f"arterial{suffix}"
    sitk.WriteImage(img, str(path))
    array, geom = read_image(path)
    np.testing.assert_allclose(array, hu, atol=1e-4)
    assert geom.shape == hu.shape
    assert geom.spacing == pytest.approx((0.7, 0.9, 3.5))
    assert geom.origin == pytest.approx((12.5, -80.25, 301.0))
    assert geom.direction == pytest.approx(direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_geometry_matrices_map_voxels_like_itk():
    img = sitk_image(np.zeros((5, 6, 7), np.float32), spacing=(0.7, 0.9, 3.5), origin=(1.0, 2.0, 3.0),
                     direction=OBLIQUE)
    geom = Geometry.from_sitk(img)
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose((geom.ijk_to_lps() @ [*ijk, 1])[:3], lps, atol=1e-9)
        np.testing.assert_allclose((geom.ijk_to_ras() @ [*ijk, 1])[:3], lps * [-1, -1, 1], atol=1e-9)


def test_write_then_read_round_trip_with_flipped_direction(tmp_path, phantom):
    hu, labels = phantom
    geom = Geometry(shape=hu.shape, spacing=(0.8, 0.8, 2.0), origin=(5, 6, 7), direction=FLIPPED)
    write_image(hu, geom, tmp_path / "portal.nii.gz")
    write_image(labels, geom, tmp_path / "labels.nii.gz", labels=True)
    arr, g2 = read_image(tmp_path / "portal.nii.gz")
    lab, g3 = read_image(tmp_path / "labels.nii.gz", labels=True)
    assert g2.same_grid(geom) and g3.same_grid(geom)
    assert np.abs(arr - hu).max() <= 0.5  # stored as int16 HU
    np.testing.assert_array_equal(lab, labels)
    assert lab.dtype == np.uint8


def test_dicom_series_folder(tmp_path, phantom):
    hu, _ = phantom
    folder = write_dicom_series(hu, tmp_path / "arterial")
    array, geom = read_image(folder)
    assert array.shape == hu.shape
    np.testing.assert_allclose(array, np.rint(hu), atol=0.5)
    assert geom.spacing == pytest.approx((0.8, 0.8, 2.5), abs=1e-3)
    assert geom.origin == pytest.approx((-20.0, -30.0, 5.0), abs=1e-3)


def test_load_case_from_cohort_folder_puts_phases_on_one_grid(tmp_path):
    hu, labels = make_phantom((24, 40, 48))
    portal_geom = Geometry(shape=hu.shape, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    pre = tmp_path / "P001" / "pre"
    write_image(hu, portal_geom, pre / "portal.nii.gz")
    write_image(labels, portal_geom, pre / "labels.nii.gz", labels=True)
    # arterial phase on a different (finer, shifted) grid covering the same body
    art_geom = Geometry(shape=(48, 40, 48), spacing=(1.0, 1.0, 1.0), origin=(0.5, 0.0, 0.0))
    art = resample_to(hu, portal_geom, art_geom)
    write_image(art, art_geom, pre / "arterial.nrrd")
    case = load_case(pre)
    assert case.patient_id == "P001"
    assert case.geometry.same_grid(portal_geom)
    assert set(case.phases) == {"arterial", "portal"}
    assert case.phases["arterial"].shape == hu.shape
    assert case.stacked().shape == (2, *hu.shape)
    inside = labels == 1
    assert abs(np.median(case.phases["arterial"][inside]) - np.median(hu[inside])) < 10
    np.testing.assert_array_equal(case.labels, labels)
    out = save_case(case, tmp_path / "copy")
    assert sorted(p.name for p in out.values()) == ["arterial.nii.gz", "labels.nii.gz", "portal.nii.gz"]


def test_load_case_explicit_paths_and_dicom(tmp_path, phantom):
    hu, _ = phantom
    write_dicom_series(hu, tmp_path / "art_dcm")
    g = Geometry(shape=hu.shape, spacing=(0.8, 0.8, 2.5), origin=(-20.0, -30.0, 5.0))
    write_image(hu, g, tmp_path / "portal.nii.gz")
    case = load_case(paths={"arterial": tmp_path / "art_dcm", "portal": tmp_path / "portal.nii.gz"},
                     patient_id="X")
    assert case.geometry.same_grid(g)
    assert case.modality == "CT"


def test_case_rejects_mismatched_arrays(phantom):
    hu, _ = phantom
    with pytest.raises(ValueError, match="shape"):
        Case("x", {"portal": hu}, Geometry(shape=(1, 2, 3)))


# ---------------------------------------------------------------- bad input: each gives a clear error naming it
def _write(tmp_path, array, name="bad.nii.gz", **kw):
    path = tmp_path / name
    sitk.WriteImage(sitk_image(array, **kw) if isinstance(array, np.ndarray) else array, str(path))
    return path


def test_error_2d(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), str(path))
    with pytest.raises(InputError, match="2D"):
        read_image(path)


def test_error_single_slice(tmp_path):
    with pytest.raises(InputError, match="single slice"):
        read_image(_write(tmp_path, np.random.rand(1, 20, 20).astype(np.float32)))


def test_error_4d(tmp_path):
    path = tmp_path / "dyn.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(3, 4, 10, 10).astype(np.float32)), str(path))
    with pytest.raises(InputError, match="4D"):
        read_image(path)


def test_error_multicomponent(tmp_path):
    path = tmp_path / "vec.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 10, 10, 3).astype(np.float32), isVector=True), str(path))
    with pytest.raises(InputError, match="multi-component"):
        read_image(path)


def test_error_empty_constant(tmp_path):
    with pytest.raises(InputError, match="empty"):
        read_image(_write(tmp_path, np.full((4, 10, 10), -1024, np.float32)))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["bad.nrrd", "bad.mha", "bad.nii.gz"])  # NIfTI: ITK would read NaN as 0; io checks
def test_error_nan_inf(tmp_path, value, name):
    arr = np.random.rand(4, 10, 10).astype(np.float32)
    arr[1, 2, 3] = value
    with pytest.raises(InputError, match="NaN or infinite"):
        read_image(_write(tmp_path, arr, name=name))


@pytest.mark.parametrize("spacing", [(0.001, 0.001, 0.001), (1.0, 1.0, 350.0), (20.0, 20.0, 50.0)])
def test_error_absurd_spacing(tmp_path, spacing):
    with pytest.raises(InputError, match="spacing"):
        read_image(_write(tmp_path, np.random.rand(4, 10, 10).astype(np.float32), spacing=spacing))


def test_error_phases_do_not_overlap(phantom):
    hu, _ = phantom
    g1 = Geometry(shape=hu.shape, spacing=(1, 1, 2), origin=(0, 0, 0))
    g2 = Geometry(shape=hu.shape, spacing=(1, 1, 2), origin=(0, 0, 500))
    with pytest.raises(InputError, match="do not overlap"):
        assemble_case("p", {"arterial": (hu, g2), "portal": (hu, g1)})


def test_error_volume_beyond_memory_budget(tmp_path, monkeypatch):
    path = _write(tmp_path, np.random.rand(8, 32, 32).astype(np.float32))
    monkeypatch.setenv("HCCTWIN_MAX_VOXELS", "1000")
    with pytest.raises(InputError, match="memory budget"):
        read_image(path)


def test_error_unreadable_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match="truncated"):
        read_image(path)


@pytest.mark.parametrize("name", ["t.nii.gz", "t.nrrd", "t.mha"])
def test_error_truncated_file(tmp_path, phantom, name):
    hu, _ = phantom
    path = tmp_path / name
    sitk.WriteImage(sitk_image(hu), str(path), True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_image(path)


def test_error_truncated_uncompressed_nifti(tmp_path, phantom):
    hu, _ = phantom
    path = _write(tmp_path, hu, name="raw.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(InputError, match="truncated"):
        read_image(path)


def test_error_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "empty")
    with pytest.raises(InputError, match="no phase images"):
        load_case(tmp_path / "empty")


def test_error_labels_out_of_range(tmp_path):
    arr = np.zeros((4, 10, 10), np.uint8)
    arr[0, 0, 0] = 7
    with pytest.raises(InputError, match="outside 0..4"):
        read_image(_write(tmp_path, arr, name="labels.nii.gz"), labels=True)


def test_input_files_are_never_modified(tmp_path, phantom):
    hu, _ = phantom
    path = _write(tmp_path, hu, name="portal.nii.gz")
    before = path.read_bytes()
    load_case(paths={"portal": path}, patient_id="p")
    assert path.read_bytes() == before
    assert gzip.decompress(before)  # still a valid gzip stream
