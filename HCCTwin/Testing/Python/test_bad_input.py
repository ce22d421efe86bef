"""Bad input and faults, round two (issue 24 items 4-8 and 11-13): every case is refused with one line (exit 2) or
noted, inputs are never changed, outputs are complete or absent. Each test fails without its fix."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from HCCTwinLib import clinical
from HCCTwinLib.cases import Geometry
from HCCTwinLib.cli import main
from HCCTwinLib.errors import InputError
from HCCTwinLib.io import check_ct_range, load_case, read_image, spreadsheet_safe, staged_output, write_image

from conftest import keep_locale, make_phantom, sitk_image


def _write_series(folder: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.5), shear_mm_per_slice=0.0) -> Path:
    """A CT series slice by slice; ``shear_mm_per_slice`` moves each slice along y (gantry tilt)."""
    folder.mkdir(parents=True, exist_ok=True)
    with keep_locale():
        _write_slices(folder, array, spacing, shear_mm_per_slice)
    return folder


def _write_slices(folder: Path, array: np.ndarray, spacing, shear_mm_per_slice) -> None:
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    img = sitk_image(np.rint(array).astype(np.int16), spacing, (0.0, 0.0, 0.0))
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        pos = (0.0, shear_mm_per_slice * z, z * spacing[2])
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.8.498.20",
                "0020|000e": "1.2.826.0.1.3680043.8.498.21", "0020|0032": "\\".join(f"{p:.4f}" for p in pos),
                "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(z + 1), "0028|1052": "0", "0028|1053": "1",
                "0008|0018": f"1.2.826.0.1.3680043.8.498.22.{z + 1}"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{z:03d}.dcm"))
        writer.Execute(sl)


def _ct(shape=(12, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000.0, np.float32)
    a[:, 8:32, 8:32] = 40 + rng.normal(0, 10, (shape[0], 24, 24))
    return a


# ---------------------------------------------------------------------------------------------------- item 4
def test_a_phase_covering_part_of_the_scan_is_refused(tmp_path):
    """3 of 32 slices of the arterial phase beside a whole portal phase: refused (was resampled and accepted)."""
    hu, _ = make_phantom((32, 40, 40))
    g = Geometry(hu.shape, (1.0, 1.0, 2.5), (0, 0, 0))
    part = Geometry((3, 40, 40), (1.0, 1.0, 2.5), (0, 0, 30.0))
    write_image(hu, g, tmp_path / "portal.nii.gz")
    write_image(hu[12:15] + 30, part, tmp_path / "arterial.nii.gz")
    with pytest.raises(InputError, match="cover different parts"):
        load_case(paths={"arterial": tmp_path / "arterial.nii.gz", "portal": tmp_path / "portal.nii.gz"})
    # an arterial phase limited to the liver (40 % of the portal's extent) is a normal study
    liver = Geometry((13, 40, 40), (1.0, 1.0, 2.5), (0, 0, 25.0))
    write_image(hu[10:23] + 30, liver, tmp_path / "arterial.nii.gz")
    case = load_case(paths={"arterial": tmp_path / "arterial.nii.gz", "portal": tmp_path / "portal.nii.gz"})
    assert case.geometry.shape == (32, 40, 40)


def test_nifti_with_a_negative_dimension_is_refused(tmp_path):
    path = tmp_path / "portal.nii"
    write_image(_ct(), Geometry((12, 40, 40), (1.0, 1.0, 2.5)), path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 42 + 2, -40)  # dim[2] (j) negative
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="dimensions .* invalid"):
        read_image(path)


def test_a_one_row_slab_is_not_a_volume(tmp_path):
    path = tmp_path / "slab.nii.gz"
    sitk.WriteImage(sitk_image(np.zeros((12, 1, 40), np.int16) - 1000), str(path))
    with pytest.raises(InputError, match="single slice"):
        read_image(path)


@pytest.mark.parametrize("spacing", [[0, 0], None])
def test_dicom_pixel_spacing_zero_or_missing_is_refused(tmp_path, spacing):
    folder = _write_series(tmp_path / "s", _ct())
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        if spacing is None:
            del ds.PixelSpacing
        else:
            ds.PixelSpacing = spacing
        ds.save_as(f)
    with pytest.raises(InputError, match="PixelSpacing"):
        read_image(folder)


# ---------------------------------------------------------------------------------------------------- item 5
def test_gantry_tilted_dicom_under_pre_is_refused(tmp_path):
    pre = tmp_path / "cases" / "P1" / "pre"
    _write_series(pre / "portal", _ct(), shear_mm_per_slice=1.0)
    with pytest.raises(InputError, match="gantry tilt"):
        load_case(pre)
    straight = tmp_path / "cases" / "P2" / "pre"
    _write_series(straight / "portal", _ct())
    assert load_case(straight).geometry.shape == (12, 40, 40)


# ---------------------------------------------------------------------------------------------------- item 6
def test_raw_stored_ct_with_padding_and_absurd_values_are_not_hu():
    raw = _ct() + 1024.0
    raw[:, :4, :] = -2000.0  # padding outside the reconstruction circle
    with pytest.raises(InputError, match="DICOM rescale"):
        check_ct_range("phase", raw)
    huge = _ct()
    huge[0, 0, 0] = 1e15
    with pytest.raises(InputError, match="outside the range"):
        check_ct_range("phase", huge)
    padded = _ct()
    padded[:, :4, :] = -3024.0
    check_ct_range("phase", padded)  # HU with padding is fine


# ---------------------------------------------------------------------------------------------------- item 7
def test_spacing_in_cm_is_refused(tmp_path):
    a = np.full((8, 128, 128), -1000.0, np.float32)
    a[:, 20:100, 20:100] = 50.0
    write_image(a, Geometry(a.shape, (0.15, 0.15, 0.25)), tmp_path / "portal.nii.gz")
    with pytest.raises(InputError, match="in cm"):
        load_case(paths={"portal": tmp_path / "portal.nii.gz"})
    write_image(a, Geometry(a.shape, (1.5, 1.5, 2.5)), tmp_path / "portal.nii.gz")
    load_case(paths={"portal": tmp_path / "portal.nii.gz"})


# ---------------------------------------------------------------------------------------------------- item 8
BASE = {"bilirubin_umol_l": 20, "albumin_g_l": 38, "inr": 1.1, "ascites": "none", "encephalopathy": "none",
        "ecog": 0, "afp_ng_ml": 500, "n_tumors": 1, "pvtt": 0, "extrahepatic_spread": 0}


def test_a_diameter_that_looks_like_cm_is_noted():
    notes = clinical.compute_scores({**BASE, "max_diameter_mm": 7.2})["notes"]
    assert any("in cm" in n and "72" in n for n in notes)
    assert not any("in cm" in n for n in clinical.compute_scores({**BASE, "max_diameter_mm": 72})["notes"])
    assert not any("in cm" in n for n in clinical.compute_scores({**BASE, "max_diameter_mm": 8})["notes"])
    # 137 mL is a sphere of 64 mm: 7.2 is impossible as mm, 60 is possible
    assert "in cm" in clinical.diameter_consistency_note(7.2, 137.0)
    assert clinical.diameter_consistency_note(60, 137.0) is None


def test_predict_notes_a_diameter_the_label_map_contradicts(pre_folder, tmp_path, capsys):
    from HCCTwinLib.pipeline import largest_lesion_ml

    labels, g = read_image(pre_folder / "labels.nii.gz", labels=True)
    largest = largest_lesion_ml(labels, g.voxel_volume_ml)
    assert largest > 0
    table = tmp_path / "clinical.csv"
    pd.DataFrame([{"patient_id": "P7", **BASE, "max_diameter_mm": 0.1 * (6 * largest * 1000 / np.pi) ** (1 / 3)}]
                 ).to_csv(table, index=False)
    assert main(["predict", "--pre", str(pre_folder), "--clinical", str(table), "--patient", "P7", "--regimens",
                 "tace_pd1_len", "--weeks", "8", "--samples", "1", "--out", str(tmp_path / "out")]) == 0
    notes = json.loads((tmp_path / "out" / "result.json").read_text())["notes"]
    assert any("largest segmented tumour" in n for n in notes)


# ---------------------------------------------------------------------------------------------------- item 11
def test_outputs_are_complete_or_absent(tmp_path):
    out = tmp_path / "out"
    with staged_output(out) as stage:
        (stage / "result.json").write_text('{"run": 1}')
        (stage / "a" / "w08").mkdir(parents=True)
        (stage / "a" / "w08" / "labels.nii.gz").write_bytes(b"one")
    assert json.loads((out / "result.json").read_text()) == {"run": 1}
    for failure in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with staged_output(out) as stage:
                (stage / "a" / "w08").mkdir(parents=True)
                (stage / "a" / "w08" / "labels.nii.gz").write_bytes(b"")  # a half-written volume
                raise failure
        assert (out / "a" / "w08" / "labels.nii.gz").read_bytes() == b"one"
        assert json.loads((out / "result.json").read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_an_interrupted_volume_write_leaves_the_previous_file(tmp_path, monkeypatch):
    g = Geometry((4, 8, 8))
    path = tmp_path / "labels.nii.gz"
    write_image(np.ones(g.shape, np.uint8), g, path, labels=True)
    before = path.read_bytes()

    def interrupted(self, image):
        Path(self.GetFileName()).write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(np.zeros(g.shape, np.uint8), g, path, labels=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_predict_interrupted_keeps_the_previous_result(pre_folder, tmp_path, monkeypatch, capsys):
    from HCCTwinLib import pipeline

    out = tmp_path / "out"
    args = ["predict", "--pre", str(pre_folder), "--regimens", "tace_pd1_len", "--weeks", "8", "--samples", "1",
            "--out", str(out)]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_save = pipeline.save_result

    def save_then_interrupt(result, out_dir, **kw):
        real_save(result, out_dir, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "save_result", save_then_interrupt)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases", "out"]


# ---------------------------------------------------------------------------------------------------- item 12
def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_report_refuses_a_picture_that_declares_gigapixels(tmp_path, capsys):
    from HCCTwinLib.pipeline import __version__

    (tmp_path / "result.json").write_text(json.dumps({"patient_id": "P1", "hcctwin_version": __version__}))
    layout = _png_header_only(tmp_path / "layout.png", 20000, 20000)
    assert main(["report", "--result", str(tmp_path), "--layout", str(layout), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "20000 x 20000" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    damaged = _png_header_only(tmp_path / "damaged.png", 64, 48)
    assert main(["report", "--result", str(tmp_path), "--layout", str(damaged), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "damaged.png" in err and "damaged or truncated" in err and "result.json" not in err


# ---------------------------------------------------------------------------------------------------- item 13
@pytest.mark.parametrize("variable,value", [("HCCTWIN_DEVICE", "gpu0"), ("HCCTWIN_NUM_THREADS", "two"),
                                            ("HCCTWIN_NUM_THREADS", "0"), ("HCCTWIN_CPU_PRECISION", "fp8"),
                                            ("HCCTWIN_MAX_VOXELS", "auto"), ("HCCTWIN_MAX_VOXELS", "-5")])
def test_bad_environment_values_are_named(variable, value, pre_folder, monkeypatch, capsys):
    monkeypatch.setenv(variable, value)
    assert main(["inspect", "--pre", str(pre_folder)]) == 2
    err = capsys.readouterr().err
    assert f"{variable}={value!r}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cuda_requested_without_a_gpu_warns_in_every_command(pre_folder, monkeypatch, capsys):
    from HCCTwinLib import device

    monkeypatch.setattr(device, "cuda_usable", lambda: False)
    monkeypatch.setenv("HCCTWIN_DEVICE", "cuda")
    assert main(["inspect", "--pre", str(pre_folder)]) == 0
    assert "CUDA was requested" in capsys.readouterr().err


def test_unusable_out_fails_before_computing(pre_folder, tmp_path, monkeypatch, capsys):
    from HCCTwinLib import segmentation

    monkeypatch.setattr(segmentation, "get_segmenter",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded before the check")))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for argv in (["segment", "--pre", str(pre_folder), "--out", str(blocker / "l.nii.gz")],
                 ["predict", "--pre", str(pre_folder), "--out", str(blocker / "out")],
                 ["predict", "--pre", str(pre_folder), "--out", str(blocker)],
                 ["evaluate", "--cohort", str(tmp_path), "--out", str(blocker / "m")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "Traceback" not in err


def test_report_with_a_bad_result_is_one_line(tmp_path, capsys):
    cases = {"missing": None, "garbage": b"\x00\xff not json", "list": b"[1, 2]", "other json": b'{"a": 1}'}
    for name, content in cases.items():
        path = tmp_path / name / "result.json"
        path.parent.mkdir()
        if content is not None:
            path.write_bytes(content)
        assert main(["report", "--result", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert "--result" in err and "Traceback" not in err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nifti_with_nan_or_infinite_offsets_is_refused(tmp_path, value):
    """ITK reads an infinite offset as origin 0 (after a failed SVD): the header is checked first."""
    path = tmp_path / "portal.nii.gz"
    write_image(_ct(), Geometry((12, 40, 40), (1.0, 1.0, 2.5)), path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 272, value)  # qoffset_y
    struct.pack_into("<f", raw, 296 + 12, value)  # srow_y[3]
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="NaN or infinite"):
        read_image(path)


@pytest.mark.parametrize("argv,message", [
    (["scores", "--regimens", ""], "regimen"),
    (["scores", "--regimens", "tace,haic"], "unknown regimen"),
    (["predict", "--pre", "x", "--out", "o", "--followup-regimen", "surgery"], "unknown regimen"),
    (["evaluate", "--cohort", "c", "--out", "o", "--max-cases", "-1"], "between 1"),
    (["study", "--cohort", "c", "--out", "o", "--bootstrap", "-5"], "between 0"),
])
def test_bad_option_values_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_unknown_set_key_and_same_file_twice_are_refused(pre_folder, capsys):
    assert main(["scores", "--set", "bilirubin=20", "albumin_g_l=38"]) == 2
    assert "KEY one of" in capsys.readouterr().err
    portal = str(pre_folder / "portal.nii.gz")
    assert main(["inspect", "--arterial", portal, "--portal", portal]) == 2
    assert "both the 'arterial' and the 'portal' phase" in capsys.readouterr().err


def test_a_generator_file_given_to_segment_is_refused(pre_folder, tmp_path, capsys):
    from HCCTwinLib.twin.generator import default_weights_path

    assert main(["segment", "--pre", str(pre_folder), "--weights", str(default_weights_path()), "--out",
                 str(tmp_path / "l.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "not a segmentation model" in err and "Traceback" not in err


def test_ctrl_c_is_one_line_and_exit_130(pre_folder, monkeypatch, capsys):
    from HCCTwinLib import io

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "load_case", interrupted)
    assert main(["inspect", "--pre", str(pre_folder)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_refused_model_stops_predict_unless_allowed(pre_folder, tmp_path, capsys):
    broken = tmp_path / "gen.safetensors"
    broken.write_bytes(b"\x01")
    argv = ["predict", "--pre", str(pre_folder), "--regimens", "tace_pd1_len", "--weeks", "8", "--samples", "1",
            "--generator-weights", str(broken)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "--allow-missing-models" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*argv, "--out", str(tmp_path / "b"), "--allow-missing-models"]) == 0
    notes = json.loads((tmp_path / "b" / "result.json").read_text())["notes"]
    assert any(n.startswith("Generator:") for n in notes)


def test_non_overlapping_followup_is_one_line_or_aligned(pre_folder, tmp_path, capsys):
    hu, labels = make_phantom((16, 32, 32))
    far = tmp_path / "far"
    g = Geometry(hu.shape, (1.0, 1.0, 2.5), (5000.0, 5000.0, 5000.0))
    write_image(hu + 30, g, far / "arterial.nii.gz")
    write_image(hu, g, far / "portal.nii.gz")
    code = main(["register", "--fixed", str(pre_folder), "--moving", str(far), "--out", str(tmp_path / "reg"),
                 "--no-deformable"])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err


def test_formula_patient_ids_are_escaped_for_spreadsheets():
    assert spreadsheet_safe("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert spreadsheet_safe("+41") == "'+41" and spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
    assert spreadsheet_safe("P001") == "P001" and spreadsheet_safe(7) == 7


def test_too_few_events_says_why():
    from HCCTwinLib.survival.models import PerRegimenSurvival

    df = pd.DataFrame({"t": np.arange(1.0, 21.0), "e": [1] * 20, "r": ["a"] * 20, "x": [np.nan] * 20})
    with pytest.raises(InputError, match="no patient has every value"):
        PerRegimenSurvival().fit(df, "t", "e", "r", ["x"])


# ---------------------------------------------------------------------------------------------------- fuzz
#: NIfTI-1 header fields (offset, struct format) a damaged or hand-edited header gets wrong
_FIELDS = {"dim0": (40, "<h"), "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"), "datatype": (70, "<h"),
           "bitpix": (72, "<h"), "pixdim1": (80, "<f"), "pixdim2": (84, "<f"), "pixdim3": (88, "<f"),
           "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "qform_code": (252, "<h"),
           "sform_code": (254, "<h"), "quatern_b": (256, "<f"), "qoffset_x": (268, "<f"), "qoffset_z": (276, "<f"),
           "srow_x0": (280, "<f"), "srow_x3": (292, "<f"), "srow_z2": (320, "<f"), "srow_z3": (324, "<f")}
_VALUES = {"<h": [-32768, -40, -1, 0, 1, 2, 3, 4, 7, 8, 16, 64, 512, 32767],
           "<f": [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e-6, 0.01, 0.15, 1.0, 2.5, 352.0, 1e6,
                  1e30, -1e30]}


def test_fuzz_nifti_header_fields_are_refused_or_give_a_sane_study(tmp_path_factory):
    """Random values (NaN, inf, zero, negative, huge, cm-sized) in the NIfTI header's dimension, type, spacing,
    scaling and position fields: the study is refused with an InputError, or it is read with a finite geometry,
    plausible spacing, at least 2 voxels along every axis, finite HU; the file is never changed."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from HCCTwinLib.io import MAX_SPACING_MM, MIN_SPACING_MM

    folder = tmp_path_factory.mktemp("fuzz")
    base = folder / "base.nii"
    hu, _ = make_phantom((12, 140, 140))
    write_image(hu, Geometry(hu.shape, (1.0, 1.0, 2.5), (0, 0, 0)), base)
    data0 = base.read_bytes()
    field = st.sampled_from(sorted(_FIELDS))

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(field, st.integers(0, 13)), min_size=1, max_size=3))
    def check(edits):
        data = bytearray(data0)
        for name, pick in edits:
            offset, fmt = _FIELDS[name]
            struct.pack_into(fmt, data, offset, _VALUES[fmt][pick % len(_VALUES[fmt])])
        path = folder / "portal.nii"
        path.write_bytes(bytes(data))
        try:
            case = load_case(paths={"portal": path})
        except InputError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip()
        else:
            g = case.geometry
            assert all(np.isfinite(g.origin)) and all(np.isfinite(g.direction))
            assert MIN_SPACING_MM <= min(g.spacing) and max(g.spacing) <= MAX_SPACING_MM
            assert min(g.shape) >= 2 and np.isfinite(case.phases["portal"]).all()
        assert path.read_bytes() == bytes(data)

    check()


@pytest.mark.parametrize("column", ["max_diameter_mm", "os_event", "afp_ng_ml", "patient_id"])
def test_fuzz_clinical_values_in_a_table_are_refused_noted_or_scored(tmp_path_factory, column):
    """Random cell values (units, formulas, codes, unicode digits) in a clinical column: read and scored, or refused
    with a one-line InputError; a scored diameter under 15 mm with a decimal always carries the cm note."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from HCCTwinLib.io import read_clinical_table

    folder = tmp_path_factory.mktemp("csvfuzz")
    cell = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 400).map(str),
                     st.sampled_from(["7.2", "0.72", "72", "7,2", "72 mm", "=1+1", "+72", "@SUM(A1)", "2", "1", "0",
                                      "", "NA", "١٢", "yes", "-0"]),
                     st.text(max_size=6))

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(cell)
    def check(value):
        row = {"patient_id": "P1", **BASE, "max_diameter_mm": 40, "os_months": 12, "os_event": 1}
        row[column] = value
        path = folder / "clinical.csv"
        pd.DataFrame([row]).to_csv(path, index=False)
        try:
            table, _notes = read_clinical_table(path)
            values = {k: v for k, v in table.iloc[0].items() if v is not None and v == v}
            scores = clinical.compute_scores(values)
        except InputError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip()
            return
        d = float(values.get("max_diameter_mm", 40))
        if 0 < d < clinical.CM_SUSPECT_DIAMETER_MM and d != round(d):
            assert any("in cm" in n for n in scores["notes"])

    check()
