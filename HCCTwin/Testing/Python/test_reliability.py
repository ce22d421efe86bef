"""Bad input, determinism and security (issue 8): every bad input gives an HCCTwinError whose message names the
problem and what to do, and no input file is changed; same input + seed = same output; model files are never
unpickled and must match their card; cohort paths cannot leave the cohort; de-identified reports carry no patient
name or ID (checked on a case loaded from a DICOM series that carries both).

Tiny volumes throughout (at most 24 x 48 x 48); the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from HCCTwinLib.cases import Geometry
from HCCTwinLib.clinical import compute_scores
from HCCTwinLib.errors import ClinicalValueError, HCCTwinError, InputError
from HCCTwinLib.io import (
    assemble_case,
    cohort_clinical_rows,
    load_case,
    path_inside,
    read_clinical_row,
    read_clinical_table,
    read_image,
    write_image,
)

from conftest import make_phantom, sitk_image, write_dicom_series

sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's own console warnings; our errors carry the message

#: Words of a remedy: every bad-input message must say what to do, not only what is wrong.
REMEDY = re.compile(r"\b(re-?export|export|copy|fix|give|check|crop|resample|raise|put|pass|split|apply|load|"
                    r"multiply|remap|fill|use|convert|save|quote|delete|keep|segment|leave|re-install|re-train|"
                    r"train|remove|point|register|correct|rename|merge|do not use)\b", re.IGNORECASE)
SHAPE = (12, 20, 24)
FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def digest(path: Path) -> str:
    """sha256 of a file, or of every file (name + bytes) under a folder."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def assert_clear(exc: BaseException, *problem: str) -> str:
    """The message names the problem (every regex in ``problem``) and a remedy."""
    message = str(exc)
    assert isinstance(exc, HCCTwinError), f"{type(exc).__name__}: {message}"
    for word in problem:
        assert re.search(word, message, re.IGNORECASE), f"{word!r} not in: {message}"
    assert REMEDY.search(message), f"no remedy in: {message}"
    return message


def expect_error(fn, inputs, *problem: str, exc_type=InputError) -> str:
    """Call ``fn``; it must raise ``exc_type`` with a clear message; ``inputs`` (files/folders) stay unchanged."""
    inputs = [Path(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    before = [digest(p) for p in inputs]
    with pytest.raises(exc_type) as info:
        fn()
    assert [digest(p) for p in inputs] == before, "an input file was changed"
    return assert_clear(info.value, *problem)


def write(tmp_path, array, name, **kw):
    path = tmp_path / name
    sitk.WriteImage(sitk_image(array, **kw) if isinstance(array, np.ndarray) else array, str(path))
    return path


@pytest.fixture(scope="module")
def phantom_small():
    return make_phantom(SHAPE)


# ----------------------------------------------------------------------------------------------------------------
# corrupt and truncated files: NIfTI, NRRD, MetaImage
# ----------------------------------------------------------------------------------------------------------------
def _truncate(path: Path, keep: float | int):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else len(data) - keep])
    return path


CORRUPTIONS = {
    "nii.gz cut in half": lambda p: _truncate(p, 0.5),
    "nii raw data cut short": lambda p: _truncate(p, 3000),
    "nii header only": lambda p: _truncate(p, 200),
    "nrrd raw data cut short": lambda p: _truncate(p, 3000),
    "nrrd gzip cut in half": lambda p: _truncate(p, 0.5),
    "mha raw data cut short": lambda p: _truncate(p, 3000),
    "empty nii.gz": lambda p: p.write_bytes(b"") or p,
    "random bytes nrrd": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)) or p,
    "text posing as nii": lambda p: p.write_bytes(b"patient_id,bilirubin\nP1,20\n" * 20) or p,
}
SUFFIX = {"nii.gz cut in half": (".nii.gz", True), "nii raw data cut short": (".nii", False),
          "nii header only": (".nii", False), "nrrd raw data cut short": (".nrrd", False),
          "nrrd gzip cut in half": (".nrrd", True), "mha raw data cut short": (".mha", False),
          "empty nii.gz": (".nii.gz", True), "random bytes nrrd": (".nrrd", False),
          "text posing as nii": (".nii", False)}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_or_truncated_file(tmp_path, phantom_small, kind):
    suffix, compress = SUFFIX[kind]
    path = tmp_path / f"portal{suffix}"
    sitk.WriteImage(sitk_image(phantom_small[0]), str(path), compress)
    CORRUPTIONS[kind](path)
    expect_error(lambda: read_image(path), path, r"truncated|unreadable|not a supported")
    expect_error(lambda: load_case(paths={"portal": path}), path, r"truncated|unreadable|not a supported")


def test_nhdr_with_missing_data_file(tmp_path):
    path = tmp_path / "portal.nhdr"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 24 20 12\nencoding: raw\nendian: little\n"
                    "data file: portal.raw\n\n")
    expect_error(lambda: read_image(path), path, r"unreadable|truncated")


@pytest.mark.parametrize("suffix", [".nii", ".nrrd"])
def test_random_header_damage_never_escapes_as_an_unhandled_error(tmp_path_factory, phantom_small, suffix):
    folder = tmp_path_factory.mktemp("hdr")
    base_path = folder / f"base{suffix}"
    sitk.WriteImage(sitk_image(phantom_small[0]), str(base_path), False)
    base = base_path.read_bytes()
    header_len = 348 if suffix == ".nii" else base.index(b"\n\n") + 2

    @FAST
    @given(st.lists(st.tuples(st.integers(0, header_len - 1), st.integers(0, 255)), min_size=1, max_size=4))
    def check(edits):
        data = bytearray(base)
        for pos, value in edits:
            data[pos] = value
        path = folder / f"damaged{suffix}"
        path.write_bytes(bytes(data))
        before = digest(path)
        try:
            array, geom = read_image(path)
        except InputError as exc:
            assert_clear(exc)
        else:
            assert array.ndim == 3 and np.isfinite(array).all() and len(geom.shape) == 3
        assert digest(path) == before

    check()


# ----------------------------------------------------------------------------------------------------------------
# DICOM series: a slice cut short, a missing slice, mixed series, duplicates, budget
# ----------------------------------------------------------------------------------------------------------------
def _series(tmp_path, hu, name="arterial", **kw):
    return write_dicom_series(hu, tmp_path / name, **kw)


def test_dicom_series_reads_and_ignores_unrelated_files(tmp_path, phantom_small):
    folder = _series(tmp_path, phantom_small[0])
    (folder / "README.txt").write_text("exported by PACS")
    array, geom = read_image(folder)
    assert array.shape == SHAPE and geom.spacing == pytest.approx((0.8, 0.8, 2.5), abs=1e-3)


@pytest.mark.parametrize("cut", [200, 0.3])
def test_dicom_slice_cut_short(tmp_path, phantom_small, cut):
    folder = _series(tmp_path, phantom_small[0])
    _truncate(sorted(folder.iterdir())[5], cut)
    expect_error(lambda: read_image(folder), folder, r"could not be read|missing|not evenly spaced")


def test_dicom_missing_slice_in_the_middle(tmp_path, phantom_small):
    folder = _series(tmp_path, phantom_small[0])
    (sorted(folder.iterdir())[6]).unlink()
    msg = expect_error(lambda: read_image(folder), folder, r"not evenly spaced", r"missing")
    assert "2.50 mm" in msg and "5.00 mm" in msg


def test_dicom_mixed_series_of_similar_size(tmp_path, phantom_small):
    hu = phantom_small[0]
    folder = _series(tmp_path, hu)
    other = _series(tmp_path, hu + 30, name="tmp", series_uid="1.2.826.0.1.3680043.8.498.77")
    for f in other.iterdir():
        f.rename(folder / f"b_{f.name}")
    other.rmdir()
    msg = expect_error(lambda: read_image(folder), folder, r"mixes 2 DICOM series", r"own folder")
    assert "1.2.826.0.1.3680043.8.498.77" in msg
    # naming the series resolves it
    array, _ = read_image(folder, series_uid="1.2.826.0.1.3680043.8.498.77")
    assert array.shape == SHAPE


def test_dicom_small_extra_series_is_ignored(tmp_path, phantom_small):
    hu = phantom_small[0]
    folder = _series(tmp_path, hu)
    scout = _series(tmp_path, hu[:3], name="scout", series_uid="1.2.826.0.1.3680043.8.498.15")  # UID prefix
    for f in scout.iterdir():
        f.rename(folder / f"scout_{f.name}")
    array, _ = read_image(folder)
    assert array.shape == SHAPE


def test_dicom_duplicate_slice_positions(tmp_path, phantom_small):
    hu = phantom_small[0]
    folder = _series(tmp_path, hu)
    copy = _series(tmp_path, hu + 5, name="copy")  # same series UID and positions, other SOP files
    for f in copy.iterdir():
        f.rename(folder / f"copy_{f.name}")
    expect_error(lambda: read_image(folder), folder, r"same position")


def test_dicom_single_slice_and_budget(tmp_path, phantom_small, monkeypatch):
    hu = phantom_small[0]
    one = _series(tmp_path, hu[:1], name="one")
    expect_error(lambda: read_image(one), one, r"single slice")
    folder = _series(tmp_path, hu)
    monkeypatch.setenv("HCCTWIN_MAX_VOXELS", "1000")
    expect_error(lambda: read_image(folder), folder, r"memory budget", r"HCCTWIN_MAX_VOXELS")


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "arterial"
    folder.mkdir()
    (folder / "image.dcm").write_bytes(np.random.default_rng(1).bytes(3000))
    expect_error(lambda: read_image(folder), folder, r"no DICOM series")


# ----------------------------------------------------------------------------------------------------------------
# wrong modality ranges, 2D / 4D, empty, NaN / Inf, extreme spacing
# ----------------------------------------------------------------------------------------------------------------
def _portal(tmp_path, array, name="portal.nii.gz", **kw):
    return write(tmp_path, array, name, **kw)


def test_unsigned_ct_without_rescale(tmp_path, phantom_small):
    hu = phantom_small[0].copy()
    hu[:, :2, :2] = 1200.0  # a little bone: raw values reach 2224
    raw = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)
    path = _portal(tmp_path, raw)
    expect_error(lambda: load_case(paths={"portal": path}), path, r"without the DICOM rescale", r"1024")


def test_unsigned_ct_from_dicom_without_rescale(tmp_path, phantom_small):
    hu = phantom_small[0].copy()
    hu[:, :2, :2] = 1200.0
    folder = _series(tmp_path, np.clip(hu + 1024, 0, 4095), name="portal")  # raw, rescale intercept 0
    expect_error(lambda: load_case(paths={"portal": folder}), folder, r"rescale", r"Hounsfield")


def test_mr_like_image_as_ct_phase(tmp_path, phantom_small):
    rng = np.random.default_rng(2)
    mr = (rng.random(SHAPE) * 800).astype(np.float32)
    path = _portal(tmp_path, mr)
    expect_error(lambda: load_case(paths={"arterial": path}), path, r"not a CT in Hounsfield", r"MR")


def test_normalised_image_as_ct_phase(tmp_path, phantom_small):
    z = (phantom_small[0] - phantom_small[0].mean()) / phantom_small[0].std()
    path = _portal(tmp_path, z.astype(np.float32), name="portal.nrrd")
    expect_error(lambda: load_case(paths={"portal": path}), path, r"normalised")


def test_mr_sequence_names_are_not_held_to_hu(tmp_path):
    mr = (np.random.default_rng(3).random(SHAPE) * 800).astype(np.float32)
    path = _portal(tmp_path, mr, name="t1.nii.gz")
    case = load_case(paths={"t1_arterial": path}, patient_id="mr")
    assert case.modality == "MR"


def test_2d_and_4d_and_multicomponent(tmp_path):
    flat = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), str(flat))
    expect_error(lambda: read_image(flat), flat, r"2D", r"3D volume")
    dyn = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(3, 4, 10, 10).astype(np.float32)), str(dyn))
    expect_error(lambda: read_image(dyn), dyn, r"4D", r"separate files")
    vec = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 10, 10, 3).astype(np.float32), isVector=True), str(vec))
    expect_error(lambda: load_case(paths={"portal": vec}), vec, r"multi-component")


def test_empty_images(tmp_path):
    const = _portal(tmp_path, np.full(SHAPE, -1024, np.int16))
    expect_error(lambda: read_image(const), const, r"empty")
    line = _portal(tmp_path, np.random.rand(30, 1, 1).astype(np.float32), name="line.nrrd")
    expect_error(lambda: read_image(line), line, r"line of voxels|single slice|2D")


@pytest.mark.parametrize("name", ["bad.nii", "bad.nii.gz", "bad.nrrd", "bad.mha"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_in_every_format(tmp_path, phantom_small, name, value):
    arr = phantom_small[0].copy()
    arr[3, 4, 5] = value
    path = write(tmp_path, arr, name)
    # ITK's NIfTI reader would silently turn these voxels into 0 HU; HCCTwin reads the data itself
    expect_error(lambda: read_image(path), path, r"NaN or infinite", r"1 NaN")


@pytest.mark.parametrize("spacing", [(0.001, 0.001, 0.001), (0.8, 0.8, 80.0), (0.8, 0.8, 25.0)])
def test_extreme_spacing(tmp_path, phantom_small, spacing):
    path = _portal(tmp_path, phantom_small[0], spacing=spacing)
    expect_error(lambda: read_image(path), path, r"spacing", r"outside the plausible range")


def test_phases_with_mismatched_geometry(tmp_path, phantom_small):
    hu, labels = phantom_small
    portal = _portal(tmp_path, hu, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    far = _portal(tmp_path, hu, name="arterial.nii.gz", spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 400.0))
    expect_error(lambda: load_case(paths={"arterial": far, "portal": portal}), [portal, far], r"do not overlap",
                 r"arterial")
    lab = write(tmp_path, labels, "labels.nii.gz", spacing=(1.0, 1.0, 2.0), origin=(500.0, 0.0, 0.0))
    expect_error(lambda: load_case(paths={"portal": portal}, labels_path=lab), [portal, lab],
                 r"label map does not overlap")
    # overlapping but on another grid (finer, rotated): resampled, not refused
    rotated = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    art = _portal(tmp_path, hu, name="art_rot.nrrd", spacing=(1.0, 1.0, 2.0), origin=(0.0, 22.0, 0.0),
                  direction=rotated)
    case = load_case(paths={"arterial": art, "portal": portal}, patient_id="p")
    assert case.phases["arterial"].shape == case.phases["portal"].shape == hu.shape


def test_volume_beyond_memory_budget(tmp_path, phantom_small, monkeypatch):
    path = _portal(tmp_path, phantom_small[0])
    monkeypatch.setenv("HCCTWIN_MAX_VOXELS", str(int(np.prod(SHAPE)) - 1))
    msg = expect_error(lambda: load_case(paths={"portal": path}), path, r"memory budget", r"crop|resample")
    assert f"{int(np.prod(SHAPE)):,}" in msg
    monkeypatch.setenv("HCCTWIN_MAX_VOXELS", str(int(np.prod(SHAPE))))
    load_case(paths={"portal": path})


# ----------------------------------------------------------------------------------------------------------------
# liver not found
# ----------------------------------------------------------------------------------------------------------------
def test_label_map_without_liver(tmp_path, phantom_small):
    hu, _ = phantom_small
    portal = _portal(tmp_path, hu)
    empty = write(tmp_path, np.zeros(SHAPE, np.uint8), "labels.nii.gz")
    expect_error(lambda: load_case(paths={"portal": portal}, labels_path=empty), [portal, empty],
                 r"liver was not found", r"label map")
    with pytest.raises(InputError, match="liver"):
        g = Geometry(shape=SHAPE)
        assemble_case("p", {"portal": (hu, g)}, labels=(np.zeros(SHAPE, np.uint8), g))


class _EmptySegmenter:
    message = ""
    card = {"name": "empty-stub", "version": "0"}

    def segment(self, case, progress=None):
        return np.zeros(case.geometry.shape, np.uint8)

    def describe(self):
        return "model empty-stub 0"


def test_segmentation_that_finds_no_liver_is_named(monkeypatch, phantom_small):
    import HCCTwinLib.segmentation as seg
    from HCCTwinLib.cases import Case
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    monkeypatch.setattr(seg, "get_segmenter", lambda *a, **k: _EmptySegmenter())
    hu, _ = phantom_small
    case = Case("p", {"arterial": hu + 20, "portal": hu}, Geometry(shape=SHAPE))
    try:
        result = run_case(case, ["tace_pd1_len"], [8], options=PipelineOptions(segmentation="model"))
    except HCCTwinError as exc:
        assert_clear(exc, r"liver")
    else:
        assert any("liver" in n.lower() and "not found" in n.lower() for n in result.notes), result.notes


# ----------------------------------------------------------------------------------------------------------------
# clinical values: out of range, wrong unit
# ----------------------------------------------------------------------------------------------------------------
GOOD = dict(age_years=61, sex="M", ecog=0, albumin_g_l=42.0, bilirubin_umol_l=12.0, inr=1.05, ascites="none",
            encephalopathy="none", afp_ng_ml=35.0, etiology="HBV", n_tumors=2, max_diameter_mm=45.0, pvtt=0,
            extrahepatic_spread=0, resectable=1)


@pytest.mark.parametrize("field, value, problem", [
    ("bilirubin_umol_l", 1.2, r"looks like mg/dL.*17\.1"),
    ("albumin_g_l", 3.9, r"looks like g/dL"),
    ("max_diameter_mm", 0.45, r"looks like cm"),
    ("inr", 13.0, r"out of range.*seconds"),
    ("ecog", 6, r"out of range"),
    ("age_years", 150, r"out of range"),
    ("afp_ng_ml", -5, r"negative"),
    ("ascites", 3, r"not recognised"),
    ("pvtt", "maybe", r"not a yes/no"),
    ("bilirubin_umol_l", "12,5", r"not a number"),
    ("bilirubin_umol_l", float("nan"), r"missing"),
    ("albumin_g_l", float("inf"), r"missing|not finite"),
    ("sex", "X", r"not recognised"),
])
def test_clinical_value_out_of_range_or_wrong_unit(field, value, problem):
    values = dict(GOOD, **{field: value})
    frozen = json.dumps(values, default=str)
    with pytest.raises(ClinicalValueError) as info:
        compute_scores(values)
    assert_clear(info.value, field, problem)
    assert json.dumps(values, default=str) == frozen  # the caller's values are not modified


# ----------------------------------------------------------------------------------------------------------------
# malformed clinical CSV
# ----------------------------------------------------------------------------------------------------------------
HEADER = ["patient_id", "age_years", "sex", "ecog", "albumin_g_l", "bilirubin_umol_l", "inr", "ascites",
          "encephalopathy", "afp_ng_ml", "n_tumors", "max_diameter_mm", "pvtt", "extrahepatic_spread"]
ROW = ["P001", "61", "M", "0", "42", "12", "1.05", "none", "none", "35", "2", "45", "0", "0"]


def _csv(tmp_path, rows, name="clinical.csv", delimiter=",", encoding="utf-8", quoting=csv.QUOTE_MINIMAL):
    buf = _io.StringIO()
    csv.writer(buf, delimiter=delimiter, quoting=quoting, lineterminator="\n").writerows(rows)
    path = tmp_path / name
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def test_clinical_csv_well_formed_variants(tmp_path):
    variants = {
        "plain": _csv(tmp_path, [HEADER, ROW], "a.csv"),
        "semicolon": _csv(tmp_path, [HEADER, ROW], "b.csv", delimiter=";"),
        "tab": _csv(tmp_path, [HEADER, ROW], "c.tsv", delimiter="\t"),
        "quoted numbers": _csv(tmp_path, [HEADER, ROW], "d.csv", quoting=csv.QUOTE_ALL),
        "utf-8 bom": _csv(tmp_path, [HEADER, ROW], "e.csv", encoding="utf-8-sig"),
        "utf-16": _csv(tmp_path, [HEADER, ROW], "f.csv", encoding="utf-16"),
        "latin-1": _csv(tmp_path, [HEADER + ["etiology"], ROW + ["hépatite B"]], "g.csv", encoding="latin-1"),
        "spaces and blank lines": tmp_path / "h.csv",
    }
    variants["spaces and blank lines"].write_text(
        "\n" + ", ".join(HEADER) + "\n\n" + ", ".join(ROW) + "\n,,,\n")
    for label, path in variants.items():
        before = digest(path)
        values, notes = read_clinical_row(path, "P001")
        assert values["bilirubin_umol_l"] == 12 and values["inr"] == pytest.approx(1.05), label
        assert values["patient_id"] == "P001" and values["sex"] == "M", label
        assert compute_scores(values)["child_pugh_class"] == "A", label
        assert digest(path) == before
        if label in ("semicolon", "tab", "latin-1"):
            assert notes, label  # what was guessed is said
    assert read_clinical_row(variants["latin-1"], "P001")[0]["etiology"] == "hépatite B"


@pytest.mark.parametrize("label, content, problem", [
    ("no patient_id column", "id,bilirubin_umol_l\nP001,12\n", r"no 'patient_id' column"),
    ("duplicate patient", "patient_id,bilirubin_umol_l\nP001,12\nP002,14\nP001,13\n",
     r"'P001' occur more than once"),
    ("empty patient id", "patient_id,bilirubin_umol_l\nP001,12\n ,13\n", r"row\(s\) 3 have no patient_id"),
    ("ragged row", "patient_id,bilirubin_umol_l\nP001,12,5,7\n", r"row 2 has 4 cells"),
    ("duplicate column", "patient_id,inr,INR\nP001,1.1,1.2\n", r"'inr'.*more than once|more than once"),
    ("unnamed column", "patient_id,,inr\nP001,3,1.1\n", r"column 2 of the header has no name"),
    ("empty file", "", r"empty"),
    ("only blank lines", "\n\n,,\n", r"empty"),
    ("binary", "\x00\x01\x02PK\x03\x04", r"binary"),
    ("stray quote", 'patient_id,inr\n"P001,1.1\n', r"not a well-formed CSV|has no patient|cells"),
])
def test_clinical_csv_malformed(tmp_path, label, content, problem):
    path = tmp_path / "clinical.csv"
    path.write_bytes(content.encode("utf-8"))
    expect_error(lambda: read_clinical_table(path), path, problem)


def test_clinical_csv_value_in_the_wrong_unit(tmp_path):
    from HCCTwinLib.survival.features import clinical_features

    row = dict(zip(HEADER, ROW), bilirubin_umol_l="1.2")  # mg/dL in the umol/L column
    path = _csv(tmp_path, [HEADER, [row[h] for h in HEADER], ["P002"] + ROW[1:]])
    values, _ = read_clinical_row(path, "P001")
    with pytest.raises(ClinicalValueError) as info:
        compute_scores(values)
    assert_clear(info.value, r"bilirubin_umol_l = 1\.2", r"mg/dL", r"17\.1")
    table, _ = read_clinical_table(path)
    features, notes = clinical_features(table)  # a cohort table goes on, and names the row
    assert len(features) == 2 and any("P001" in n and "mg/dL" in n for n in notes), notes


def test_clinical_csv_patient_not_found_and_missing_file(tmp_path):
    path = _csv(tmp_path, [HEADER, ROW])
    expect_error(lambda: read_clinical_row(path, "P999"), path, r"'P999' not found")
    expect_error(lambda: read_clinical_table(tmp_path / "absent.csv"), path, r"not found")


def test_cohort_clinical_rows_one_reader_for_every_stage(tmp_path):
    """The twin fit, the generator's regimen reader and the evaluations read a cohort's table with
    read_clinical_table's rules: numbers as numbers, missing cells left out, semicolons and a BOM read, a duplicate
    patient refused, no table -> {}; read_received_regimens needs the regimen column."""
    from HCCTwinLib.twin.train import read_received_regimens

    assert cohort_clinical_rows(tmp_path) == {}
    (tmp_path / "clinical.csv").write_text("\ufeffpatient_id;regimen;afp_ng_ml;albi\nP002;haic;1.50;NA\n"
                                          "P001;tace;;-2.1\n", encoding="utf-8")
    rows = cohort_clinical_rows(tmp_path)
    assert list(rows) == ["P002", "P001"]  # file order
    assert rows["P002"] == {"patient_id": "P002", "regimen": "haic", "afp_ng_ml": 1.5}
    assert rows["P001"] == {"patient_id": "P001", "regimen": "tace", "albi": -2.1}
    assert read_received_regimens(tmp_path) == {"P002": "haic", "P001": "tace"}
    (tmp_path / "clinical.csv").write_text("patient_id,afp_ng_ml\nP1,3\n", encoding="utf-8")
    expect_error(lambda: read_received_regimens(tmp_path), tmp_path / "clinical.csv", r"'regimen'")
    (tmp_path / "clinical.csv").write_text("patient_id,regimen\nP1,tace\nP1,haic\n", encoding="utf-8")
    expect_error(lambda: cohort_clinical_rows(tmp_path), tmp_path / "clinical.csv", r"more than once")


@pytest.mark.parametrize("content", ["patient_id,inr\nP001,1.1\nP002,1.2,9,9\n", b"\xff\xfe\x00\x00garbage"])
def test_cli_reports_malformed_csv_in_one_line(tmp_path, capsys, content):
    from HCCTwinLib.cli import main

    path = tmp_path / "clinical.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    assert main(["scores", "--clinical", str(path), "--patient", "P001"]) == 2
    assert "clinical.csv" in capsys.readouterr().err


_CELL = st.one_of(
    st.text(max_size=8),
    st.text(alphabet='0123456789.,;-+eE" \t', max_size=8),
    st.sampled_from(["", "NA", "nan", "inf", "-inf", "1e400", "12,5", '"42"', "none", "yes", "Ⅻ", "١٢", "\u00a0",
                     "𝟙𝟚", "12 mg/dL", "=1+1", "\r", "\n", '"', "\x00"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**12, 10**12).map(str),
)
_COLUMN = st.one_of(st.sampled_from(HEADER + ["regimen", "os_months", "bclc", "child_pugh_points", "Patient ID",
                                              "bilirubin_umol_l"]), st.text(max_size=6))


@FAST
@given(columns=st.lists(_COLUMN, min_size=1, max_size=8), n_rows=st.integers(0, 4), data=st.data(),
       delimiter=st.sampled_from([",", ";", "\t", "|"]), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_clinical_csv_property_never_an_unhandled_exception(tmp_path, columns, n_rows, data, delimiter, encoding):
    """Random headers (missing / duplicate columns, unicode), random garbage cells, random delimiter and encoding:
    reading, scoring and building survival features give a result (with notes) or an HCCTwinError with a clear
    message, never another exception; the file is never changed."""
    from HCCTwinLib.survival.features import clinical_features

    rows = [columns] + [[data.draw(_CELL) for _ in columns] for _ in range(n_rows)]
    buf = _io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    try:
        raw = buf.getvalue().encode(encoding)
    except UnicodeEncodeError:
        raw = buf.getvalue().encode("utf-8")
    path = tmp_path / "clinical.csv"
    path.write_bytes(raw)
    before = digest(path)
    try:
        table, notes = read_clinical_table(path)
    except InputError as exc:
        assert_clear(exc)
        assert digest(path) == before
        return
    assert digest(path) == before
    assert list(table.columns) and all(isinstance(n, str) for n in notes)
    assert table["patient_id"].is_unique
    for _, row in table.iterrows():
        values = {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and np.isnan(v))}
        try:
            scores = compute_scores(values)
        except ClinicalValueError as exc:
            assert_clear(exc)
        else:
            assert isinstance(scores["notes"], list)
    try:
        features, notes = clinical_features(table)
    except HCCTwinError as exc:
        assert_clear(exc)
    else:
        assert len(features) == len(table) and all(isinstance(n, str) for n in notes)


@FAST
@given(st.binary(max_size=400))
def test_clinical_csv_property_random_bytes(tmp_path, blob):
    path = tmp_path / "clinical.csv"
    path.write_bytes(blob)
    try:
        table, _ = read_clinical_table(path)
    except InputError as exc:
        assert_clear(exc)
    else:
        assert "patient_id" in table.columns and table["patient_id"].is_unique
    assert path.read_bytes() == blob


# ----------------------------------------------------------------------------------------------------------------
# determinism: same input + seed = same output
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_generator_file(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai")
    from HCCTwinLib.twin.generator import Generator
    from HCCTwinLib.weights import save_model

    arch = {"channels": [8, 16, 16], "attention_levels": [False, False, False], "num_res_blocks": 1,
            "norm_num_groups": 8}
    gen = Generator.untrained(["tace_pd1_len", "pd1_tki"], (16, 24, 24), arch, seed=0, steps=2)
    torch.manual_seed(0)
    with torch.no_grad():  # the zero-initialised output layer would give "no change": randomise it
        for p in gen.model.out.parameters():
            p.normal_(0.0, 0.2)
    path, _ = save_model(gen.model, tmp_path_factory.mktemp("gen") / "tiny_twin.safetensors", gen.card)
    return path


def _without_timings(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timings_s"}


def test_same_input_and_seed_give_the_same_output(tiny_generator_file):
    import torch

    from HCCTwinLib.pipeline import PipelineOptions, run_case
    from HCCTwinLib.simulate import simulate_patient

    patient = simulate_patient(3, 0, shape=(24, 48, 48))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = []
        for seed in (5, 5, 6):
            case = patient.case
            case.labels = case.labels.copy()  # each run gets its own copy of the input
            options = PipelineOptions(segmentation="given", samples=2, seed=seed, steps=1, device="cpu",
                                      generator_weights=str(tiny_generator_file))
            runs.append(run_case(case, ["tace_pd1_len", "pd1_tki"], [8, 16], options=options))
    finally:
        torch.set_num_threads(threads)
    a, b, c = runs
    assert a.followups, a.notes
    for regimen in ("tace_pd1_len", "pd1_tki"):
        for week in (8, 16):
            fa, fb = a.followups[regimen][week], b.followups[regimen][week]
            assert np.array_equal(fa.labels, fb.labels)
            assert np.array_equal(fa.phases["arterial"], fb.phases["arterial"])
            assert np.array_equal(fa.std["portal"], fb.std["portal"])
    sa, sb = _without_timings(a.summary()), _without_timings(b.summary())
    assert json.dumps(sa, sort_keys=True) == json.dumps(sb, sort_keys=True)
    assert "seed 5" in sa["provenance"]["generator"]
    # a different seed gives different samples (so the equality above is not trivial)
    assert any(not np.array_equal(a.followups[r][w].phases["arterial"], c.followups[r][w].phases["arterial"])
               for r in ("tace_pd1_len", "pd1_tki") for w in (8, 16))


# ----------------------------------------------------------------------------------------------------------------
# security: model files
# ----------------------------------------------------------------------------------------------------------------
class CustomPayload:
    """A custom class inside a .pt file: unpickling it would import and construct arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):  # runs only if the file were unpickled fully
        Path(state["marker"]).write_text("code ran")
        self.__dict__.update(state)


def _card_for(path: Path, architecture: str):
    from HCCTwinLib.weights import card_path, sha256_file

    card_path(path).write_text(json.dumps({"name": path.stem, "architecture": architecture,
                                           "sha256": sha256_file(path)}))


@pytest.mark.parametrize("loader", ["load_state", "load_engine", "load_generator", "get_segmenter"])
def test_pt_with_custom_class_is_refused_even_with_a_matching_card(tmp_path, loader):
    torch = pytest.importorskip("torch")
    from HCCTwinLib.segmentation import get_segmenter
    from HCCTwinLib.survival.engine import ARCHITECTURE
    from HCCTwinLib.survival.store import load_engine
    from HCCTwinLib.twin.generator import load_generator
    from HCCTwinLib.weights import ModelFileError, load_state

    marker = tmp_path / "code_ran"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3), "extra": CustomPayload(str(marker))}, path)
    _card_for(path, ARCHITECTURE)
    fn = {"load_state": load_state, "load_engine": load_engine, "load_generator": load_generator,
          "get_segmenter": lambda p: get_segmenter(p, device="cpu")}[loader]
    msg = expect_error(lambda: fn(path), path, r"refused", exc_type=ModelFileError)
    assert "safetensors" in msg
    assert not marker.exists()


def test_pipeline_with_a_pickled_model_file_notes_the_refusal(tmp_path, phantom_small):
    torch = pytest.importorskip("torch")
    from HCCTwinLib.cases import Case
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    marker = tmp_path / "code_ran"
    path = tmp_path / "generator.pt"
    torch.save({"weight": torch.zeros(3), "extra": CustomPayload(str(marker))}, path)
    _card_for(path, "generator")
    hu, labels = phantom_small
    case = Case("p", {"arterial": hu + 20, "portal": hu}, Geometry(shape=SHAPE), labels=labels)
    before = digest(path)
    result = run_case(case, ["tace_pd1_len"], [8], options=PipelineOptions(generator_weights=str(path)))
    assert any(n.startswith("Generator:") and "refused" in n for n in result.notes), result.notes
    assert not result.followups and not marker.exists() and digest(path) == before


def test_legacy_pt_is_read_with_weights_only(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from HCCTwinLib.weights import load_state

    path = tmp_path / "legacy.pt"
    torch.save({"weight": torch.ones(2)}, path)
    _card_for(path, "Conv3d")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state, _ = load_state(path)
    assert torch.equal(state["weight"], torch.ones(2))
    assert calls and all(kw.get("weights_only") is True for kw in calls)


@pytest.fixture(scope="module")
def tiny_engine_file(tmp_path_factory):
    """A survival engine file with only an OS model fitted on 60 simulated patients' clinical values (no images)."""
    pytest.importorskip("torch")
    from HCCTwinLib.survival.engine import PerRegimenSurvival, SurvivalEngine
    from HCCTwinLib.survival.store import save_engine

    rng = np.random.default_rng(0)
    n = 60
    table = {"regimen": np.array(["tace_pd1_len", "pd1_tki"] * (n // 2)), "os_months": rng.exponential(20, n),
             "os_event": rng.integers(0, 2, n)}
    for col in ("age_years", "ecog", "albi_score", "child_pugh_points", "log_afp", "n_tumors", "max_diameter_cm",
                "pvtt", "extrahepatic_spread"):
        table[col] = rng.normal(size=n)
    import pandas as pd

    data = pd.DataFrame(table)
    covariates = ["age_years", "albi_score", "log_afp"]
    os_model = PerRegimenSurvival(n_bootstrap=2, seed=0).fit(data, "os_months", "os_event", "regimen", covariates)
    engine = SurvivalEngine(os=os_model, clinical_fill_values={}, feature_fill_values={})
    path = tmp_path_factory.mktemp("engine") / "hcctwin_survival.safetensors"
    save_engine(engine, path)
    return path


def test_tampered_survival_engine_is_refused(tiny_engine_file, tmp_path):
    from HCCTwinLib.survival.store import load_engine
    from HCCTwinLib.weights import ModelFileError

    assert load_engine(tiny_engine_file).os is not None  # the intact file loads
    bad = tmp_path / tiny_engine_file.name
    data = bytearray(tiny_engine_file.read_bytes())
    data[-5] ^= 0x01  # one coefficient's last byte: still a valid safetensors file
    bad.write_bytes(bytes(data))
    card = tiny_engine_file.with_suffix(".json")
    (tmp_path / card.name).write_text(card.read_text())
    expect_error(lambda: load_engine(bad), [bad, tmp_path / card.name], r"modified or corrupted",
                 exc_type=ModelFileError)


# ----------------------------------------------------------------------------------------------------------------
# security: cohort paths cannot escape the cohort root
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "..", ".", "", "/etc", "a/b", "a\\b", "x\x00y", "../../etc/passwd"])
def test_cohort_names_cannot_escape(tmp_path, name):
    (tmp_path / "cases").mkdir()
    with pytest.raises(InputError) as info:
        path_inside(tmp_path, "cases", name)
    assert_clear(info.value, r"not a valid case name|outside the cohort")


def test_symlink_out_of_the_cohort_is_refused(tmp_path):
    cohort, outside = tmp_path / "cohort", tmp_path / "elsewhere"
    (cohort / "cases").mkdir(parents=True)
    outside.mkdir()
    (cohort / "cases" / "P001").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError) as info:
        path_inside(cohort, "cases", "P001")
    assert_clear(info.value, r"outside the cohort folder", r"symbolic link")
    # a link that stays inside the cohort is fine
    (cohort / "cases" / "real").mkdir()
    (cohort / "cases" / "alias").symlink_to(cohort / "cases" / "real", target_is_directory=True)
    assert path_inside(cohort, "cases", "alias") == (cohort / "cases" / "real").resolve()


def test_relative_or_symlinked_cohort_root_works(tmp_path, monkeypatch):
    real = tmp_path / "data" / "cohort"
    (real / "cases" / "P001").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert path_inside(Path("data/cohort"), "cases", "P001") == (real / "cases" / "P001").resolve()
    assert path_inside(link / "cohort", "cases", "P001") == (real / "cases" / "P001").resolve()
    with pytest.raises(InputError):
        path_inside(Path("data/cohort"), "cases", "..")


def test_cohort_csv_with_escaping_patient_id_is_refused(tmp_path):
    from HCCTwinLib.simulate import simulate_cohort
    from HCCTwinLib.survival.cohort import cohort_feature_table

    cohort = tmp_path / "cohort"
    (cohort / "cases").mkdir(parents=True)
    table = simulate_cohort(3, 7, None, write_images=False, workers=1)
    table.loc[1, "patient_id"] = "../../outside"
    table.to_csv(cohort / "clinical.csv", index=False)
    (tmp_path / "outside").mkdir()
    expect_error(lambda: cohort_feature_table(cohort), cohort, r"not a valid case name", r"\.\./\.\./outside")


# ----------------------------------------------------------------------------------------------------------------
# security: de-identified reports from a DICOM-derived case
# ----------------------------------------------------------------------------------------------------------------
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PAT-4711"


@pytest.fixture(scope="module")
def dicom_result(tmp_path_factory):
    from HCCTwinLib.pipeline import PipelineOptions, run_case

    hu, labels = make_phantom((16, 32, 36))
    root = tmp_path_factory.mktemp("dicom_case")
    kw = dict(patient_name=PATIENT_NAME, patient_id=PATIENT_ID, spacing=(0.9, 0.9, 3.0), origin=(-20.0, -30.0, 5.0))
    art = write_dicom_series(hu + 20, root / "study" / "art", series_uid="1.2.826.0.1.3680043.8.498.11", **kw)
    por = write_dicom_series(hu, root / "study" / "por", series_uid="1.2.826.0.1.3680043.8.498.12", **kw)
    geom = Geometry(shape=hu.shape, spacing=(0.9, 0.9, 3.0), origin=(-20.0, -30.0, 5.0))
    lab = write_image(labels, geom, root / "study" / "labels.nii.gz", labels=True)
    before = digest(root)
    case = load_case(paths={"arterial": art, "portal": por}, labels_path=lab, clinical=dict(GOOD))
    result = run_case(case, ["tace_pd1_len", "pd1_tki"], [8], options=PipelineOptions(segmentation="given"))
    assert digest(root) == before  # the DICOM files are only read
    return case, result


def _identifiers(blob: bytes) -> list[str]:
    """The patient's ID or name (or a part of the name, as a word) found in ``blob``."""
    found = []
    for ident in (PATIENT_ID, "Doe", "Jane"):
        if re.search(rb"(?<![A-Za-z])" + re.escape(ident.encode()) + rb"(?![a-z])", blob):
            found.append(ident)
    return found


def test_dicom_case_takes_the_patient_id_but_never_the_name(dicom_result):
    case, result = dicom_result
    assert case.patient_id == PATIENT_ID  # the DICOM PatientID names the case when no id is given
    text = json.dumps({"source": case.source, "clinical": case.clinical, "summary": result.summary()}, default=str)
    assert "Doe" not in text and "Jane" not in text  # the patient's name is never read into HCCTwin


def test_deidentified_report_has_no_name_or_id(dicom_result, tmp_path, caplog, capsys):
    from test_report import _pdf_text

    from HCCTwinLib.report import write_report

    _, result = dicom_result
    summary = result.summary()
    with caplog.at_level(logging.DEBUG):
        deid = write_report(summary, tmp_path / "deid", deidentify=True)
        full = write_report(summary, tmp_path / "full", deidentify=False)
    for key in ("html", "pdf"):
        assert _identifiers(deid[key].read_bytes()) == [], key
    assert _identifiers(_pdf_text(deid["pdf"])) == []
    for png in (p for k, p in deid.items() if k.endswith("png")):
        assert _identifiers(png.read_bytes()) == []
    captured = capsys.readouterr()
    assert PATIENT_ID not in caplog.text + captured.out + captured.err
    assert "Doe" not in caplog.text + captured.out + captured.err
    # when the user asks for it, the ID is there (so the check above can fail)
    assert PATIENT_ID.encode() in full["html"].read_bytes() and PATIENT_ID.encode() in _pdf_text(full["pdf"])
    assert _identifiers(full["html"].read_bytes()) == [PATIENT_ID]  # the name never, even then


def test_deidentified_summary_and_file_names_have_no_id(dicom_result, tmp_path, capsys):
    """The de-identified summary (what --deidentify writes next to the report) and the file names: no ID or name."""
    from HCCTwinLib.report import write_report
    from HCCTwinLib.report.content import deidentify_summary

    _, result = dicom_result
    summary = deidentify_summary(result.summary())
    assert _identifiers(json.dumps(summary).encode()) == []
    paths = write_report(summary, tmp_path, deidentify=True)
    assert all(PATIENT_ID not in str(p) for p in paths.values())
    assert os.listdir(tmp_path)  # something was written, none of it named after the patient
    assert all(PATIENT_ID not in name for name in os.listdir(tmp_path))
