"""DICOM CT series and DICOM SEG: round trips (axial, oblique, left-handed), TCIA segment names, damaged input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from HCCTwinLib import io
from HCCTwinLib.cases import Geometry
from HCCTwinLib.dicom import map_segment_label, read_ct_series, read_seg, write_ct_series, write_seg
from HCCTwinLib.dicom.seg import read_seg_for_series
from HCCTwinLib.errors import InputError
from HCCTwinLib.labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR

from conftest import make_phantom


def _rotation(a: float, b: float) -> np.ndarray:
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


GEOMETRIES = {
    "axial": np.eye(3),
    "oblique": _rotation(0.4, 0.2),
    "left_handed": np.diag([1.0, 1.0, -1.0]),
}


def _volume():
    hu, labels = make_phantom(shape=(12, 20, 24))
    labels[5:7, 8:11, 3:6] = PVTT
    labels[6, 10, 9] = NECROSIS
    hu[0, 0, 0] = 12.3  # a fractional value: within 0.5 HU after the int16 round trip
    return hu, labels


def _geometry(kind: str, shape) -> Geometry:
    direction = GEOMETRIES[kind]
    return Geometry(shape=shape, spacing=(0.8, 0.9, 2.5), origin=(-20.5, 30.25, -100.125), direction=direction.ravel())


@pytest.mark.parametrize("kind", ["axial", "oblique", "left_handed"])
def test_ct_series_round_trip(tmp_path, kind):
    hu, _ = _volume()
    geom = _geometry(kind, hu.shape)
    series = write_ct_series(hu, geom, tmp_path / "ct", patient_id="PAT-7", patient_name="Doe^Jane",
                             study_date="20240131", series_description="PORTAL VENOUS", series_number=3)
    assert len(series.files) == hu.shape[0] and all(f.is_file() for f in series.files)
    ds = pydicom.dcmread(series.files[0])
    assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    assert ds.PatientID == "PAT-7" and str(ds.PatientName) == "Doe^Jane" and ds.StudyDate == "20240131"
    assert ds.SeriesDescription == "PORTAL VENOUS" and ds.SeriesInstanceUID == series.series_uid
    assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.8] and float(ds.SliceThickness) == 2.5
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], geom.origin, atol=1e-6)

    expected, expected_geom = hu, geom
    if kind == "left_handed":  # read back in right-handed order: same physical image, slices reversed
        expected = hu[::-1]
        d = geom.direction_matrix.copy()
        d[:, 2] *= -1
        last = np.asarray(geom.origin) + (hu.shape[0] - 1) * 2.5 * geom.direction_matrix[:, 2]
        expected_geom = Geometry(geom.shape, geom.spacing, tuple(last), d.ravel())
    for reader in ("hcctwin", "simpleitk"):  # our pydicom reader and ITK/GDCM (io.read_image) agree
        if reader == "hcctwin":
            arr, g = read_ct_series(list(reversed(series.files)))  # file order does not matter
        else:
            arr, g = io.read_image(tmp_path / "ct")
        assert g.same_grid(expected_geom, tol=1e-5), (reader, g, expected_geom)
        assert np.abs(arr - expected).max() <= 0.5 + 1e-6
        np.testing.assert_array_equal(arr, np.rint(expected))


def test_ct_series_refuses_damaged_and_incomplete(tmp_path):
    hu, _ = _volume()
    geom = _geometry("axial", hu.shape)
    series = write_ct_series(hu, geom, tmp_path / "ct", patient_id="P", series_description="ARTERIAL")
    files = list(series.files)
    with pytest.raises(InputError, match="missing"):
        read_ct_series(files[:5] + files[6:])
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 200])
    with pytest.raises(InputError, match=files[3].name):
        read_ct_series(files)
    with pytest.raises(InputError, match="NaN"):
        write_ct_series(np.full(hu.shape, np.nan), geom, tmp_path / "nan", patient_id="P")
    with pytest.raises(InputError, match="exists"):  # never overwrites
        write_ct_series(hu, geom, tmp_path / "ct", patient_id="P")


@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_seg_round_trip_voxel_exact(tmp_path, kind):
    hu, labels = _volume()
    assert set(np.unique(labels)) == {0, LIVER, VIABLE_TUMOR, NECROSIS, PVTT}
    geom = _geometry(kind, hu.shape)
    series = write_ct_series(hu, geom, tmp_path / "ct", patient_id="PAT-7", series_description="PORTAL VENOUS")
    path = write_seg(labels, series.headers, tmp_path / "seg" / "seg.dcm")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY" and ds.PatientID == "PAT-7"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [
        "Liver parenchyma", "Viable tumor", "Necrotic / non-enhancing tumor", "Portal-vein tumor thrombus"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in ds.SegmentSequence] == [
        "Liver", "Neoplasm", "Necrosis", "Thrombus"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    result, uid = read_seg_for_series(path, {series.series_uid: series.files})
    assert uid == series.series_uid and not result.resampled and not result.notes
    assert result.labels.dtype == np.uint8 and result.geometry.same_grid(geom)
    np.testing.assert_array_equal(result.labels, labels)
    assert {s["hcctwin_label"]: s["voxels"] for s in result.segments} == {
        "liver": int((labels == LIVER).sum()), "viable_tumor": int((labels == VIABLE_TUMOR).sum()),
        "necrosis": int((labels == NECROSIS).sum()), "pvtt": int((labels == PVTT).sum())}
    # only the labels present get a segment
    only = np.where(labels > VIABLE_TUMOR, LIVER, labels).astype(np.uint8)
    path2 = write_seg(only, series.headers, tmp_path / "seg2.dcm")
    assert len(pydicom.dcmread(path2).SegmentSequence) == 2
    np.testing.assert_array_equal(read_seg(path2, geom).labels, only)


def test_seg_on_another_grid_is_resampled(tmp_path):
    hu, labels = _volume()
    fine = _geometry("axial", hu.shape)
    coarse = Geometry((6, 10, 12), (1.6, 1.8, 5.0), (-20.1, 30.7, -98.875))
    coarse_labels = io.resample_to(labels, fine, coarse, labels=True)
    coarse_series = write_ct_series(io.resample_to(hu, fine, coarse), coarse, tmp_path / "coarse", patient_id="P")
    path = write_seg(coarse_labels, coarse_series.headers, tmp_path / "seg.dcm")
    result = read_seg(path, fine)
    assert result.resampled and any("resampled" in n for n in result.notes)
    np.testing.assert_array_equal(result.labels, io.resample_to(coarse_labels, coarse, fine, labels=True))


@pytest.mark.parametrize("name, meaning, expected", [
    ("Liver", None, LIVER), ("Mass", None, VIABLE_TUMOR), ("Portal vein", None, None),
    ("Abdominal aorta", None, None), ("Hepatic veins", None, None), ("Tumor thrombus", None, PVTT),
    ("PVTT", None, PVTT), ("tumour", None, VIABLE_TUMOR), ("Viable tumor", None, VIABLE_TUMOR),
    ("Necrotic / non-enhancing tumor", None, NECROSIS), ("Necrosis", None, NECROSIS),
    ("Portal-vein tumor thrombus", None, PVTT), ("Liver parenchyma", None, LIVER), ("viable_tumor", None, VIABLE_TUMOR),
    ("Segment_1", "Liver", LIVER), ("Spleen", None, None), ("Lesion 2", None, VIABLE_TUMOR),
])
def test_segment_names_map_to_hcctwin_labels(name, meaning, expected):
    value, how = map_segment_label(name, meaning)
    assert value == expected, (name, how)
    if name in ("Portal vein", "Abdominal aorta"):
        assert "vessel" in how and "not tumour thrombus" in how


def test_segment_mapping_override():
    assert map_segment_label("Mass", mapping={"mass": "necrosis"})[0] == NECROSIS
    assert map_segment_label("Portal vein", mapping={"Portal Vein": "pvtt"})[0] == PVTT
    assert map_segment_label("Liver", mapping={"Liver": "ignore"})[0] is None
    assert map_segment_label("Liver", mapping={"Liver": 2})[0] == VIABLE_TUMOR
    with pytest.raises(InputError, match="not an HCCTwin label"):
        map_segment_label("Liver", mapping={"Liver": "kidney"})


def _tcia_seg(tmp_path, series, masks: dict[str, np.ndarray], name="tcia.dcm"):
    """A SEG as TCIA's HCC-TACE-Seg has them (segments Liver, Mass, Portal vein, Abdominal aorta), from highdicom."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions, stack = [], []
    for number, (label, mask) in enumerate(masks.items(), start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type="MANUAL"))
        stack.append(mask.astype(np.uint8))
    seg = hd.seg.Segmentation(
        source_images=series.headers, pixel_array=np.stack(stack, axis=-1), segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="site", manufacturer_model_name="tool", software_versions="1",
        device_serial_number="1")
    seg.save_as(tmp_path / name)
    return tmp_path / name


def test_tcia_style_seg_maps_mass_and_ignores_vessels(tmp_path):
    hu, labels = _volume()
    geom = _geometry("oblique", hu.shape)
    series = write_ct_series(hu, geom, tmp_path / "ct", patient_id="HCC_001")
    liver = labels > 0  # TCIA's liver mask includes the mass
    mass = labels == VIABLE_TUMOR
    portal = np.zeros_like(liver)
    portal[2:9, 15:17, 10:12] = True  # overlaps the liver, must not become a label
    aorta = np.zeros_like(liver)
    aorta[:, 2:4, 20:22] = True
    path = _tcia_seg(tmp_path, series, {"Liver": liver, "Mass": mass, "Portal vein": portal,
                                        "Abdominal aorta": aorta})
    result = read_seg(path, geom)
    expected = np.zeros(hu.shape, np.uint8)
    expected[liver] = LIVER
    expected[mass] = VIABLE_TUMOR
    np.testing.assert_array_equal(result.labels, expected)
    by_label = {s["label"]: s["hcctwin_label"] for s in result.segments}
    assert by_label == {"Liver": "liver", "Mass": "viable_tumor", "Portal vein": None, "Abdominal aorta": None}
    assert sum("not tumour thrombus" in n for n in result.notes) == 2
    # the site's own mapping wins: portal vein read as thrombus
    pv = read_seg(path, geom, mapping={"Portal vein": "pvtt"}).labels
    assert (pv[portal] == PVTT).all()


def test_overlapping_tumour_segments_are_refused(tmp_path):
    hu, labels = _volume()
    geom = _geometry("axial", hu.shape)
    series = write_ct_series(hu, geom, tmp_path / "ct", patient_id="P")
    tumour = labels == VIABLE_TUMOR
    path = _tcia_seg(tmp_path, series, {"Liver": labels > 0, "Tumor": tumour, "Necrosis": tumour})
    with pytest.raises(InputError, match="overlap.*viable tumor"):
        read_seg(path, geom)
    # resolved by a mapping that ignores one of them
    ok = read_seg(path, geom, mapping={"Necrosis": "ignore"}).labels
    assert (ok[tumour] == VIABLE_TUMOR).all()


def test_damaged_or_mismatched_seg_gives_clear_error(tmp_path):
    hu, labels = _volume()
    geom = _geometry("axial", hu.shape)
    series = write_ct_series(hu, geom, tmp_path / "ct", patient_id="P")
    path = write_seg(labels, series.headers, tmp_path / "seg.dcm")
    data = path.read_bytes()
    # truncated (cut in the pixel data, and in the header)
    for cut in (len(data) - 300, 600):
        broken = tmp_path / f"cut{cut}.dcm"
        broken.write_bytes(data[:cut])
        with pytest.raises(InputError, match="(truncated|damaged)"):
            read_seg(broken, geom)
    # not a SEG
    with pytest.raises(InputError, match="not a DICOM SEG"):
        read_seg(series.files[0], geom)
    # references a series that is not there
    with pytest.raises(InputError, match="none of which is in the DICOM folder"):
        read_seg_for_series(path, {"1.2.3.4": series.files})
    # placed on a CT grid it does not belong to (fewer slices): frames outside
    short = Geometry((4, *hu.shape[1:]), geom.spacing, geom.origin, geom.direction)
    with pytest.raises(InputError, match="outside the referenced CT"):
        read_seg(path, short)
    # another frame of reference
    with pytest.raises(InputError, match="frame of reference"):
        read_seg(path, geom, frame_of_reference_uid="1.2.3.999")
    # two frames of one segment at one position
    ds = pydicom.dcmread(path)
    per = ds.PerFrameFunctionalGroupsSequence
    seg_of = [int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for fg in per]
    a, b = next((i, i + 1) for i in range(len(per) - 1) if seg_of[i] == seg_of[i + 1])
    per[b].PlanePositionSequence[0].ImagePositionPatient = per[a].PlanePositionSequence[0].ImagePositionPatient
    ds.save_as(tmp_path / "dup.dcm")
    with pytest.raises(InputError, match="two frames at the same position"):
        read_seg(tmp_path / "dup.dcm", geom)
