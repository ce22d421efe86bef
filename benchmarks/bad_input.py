"""Bad input and faults: run every case of issue 24 through the real command line and record what happened.

Each case builds its inputs in a scratch folder, runs ``python -m HCCTwinLib.cli ...`` in a subprocess (optionally
interrupted with SIGINT after a delay) and records the exit status, whether a Python traceback was printed, the
last line of stderr, whether any input file changed (SHA-256 before/after), and for de-identified outputs whether an
identifier planted in the inputs appears in any output file. A case passes when the command refused it with one
line (exit 2), noted it (exit 0 and the expected words in the output), or handled it as specified.

    python benchmarks/bad_input.py [--out benchmarks/results] [--only NAME]

Writes ``bad_input.json`` and ``bad_input.md``. Targets (issue 24): 0 tracebacks, 0 changed inputs, 0 identifiers in
any de-identified output, 0 silently accepted unit errors.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, write_results  # noqa: E402

from HCCTwinLib.cases import Geometry  # noqa: E402
from HCCTwinLib.io import write_image  # noqa: E402

SENTINELS = ("Doe^Jane", "Jane Doe", "1961-04-02", "JDX", "Smithson")
CLINICAL = {"bilirubin_umol_l": 20, "albumin_g_l": 38, "inr": 1.1, "ascites": "none", "encephalopathy": "none",
            "ecog": 0, "afp_ng_ml": 500, "n_tumors": 1, "max_diameter_mm": 40, "pvtt": 0, "extrahepatic_spread": 0}


def phantom(shape=(16, 40, 40), seed=0):
    k, j, i = np.indices(shape)
    c = np.array(shape) / 2
    body = ((j - c[1]) / (0.45 * shape[1])) ** 2 + ((i - c[2]) / (0.45 * shape[2])) ** 2 <= 1
    liver = body & (i < c[2] + 4) & (np.abs(k - c[0]) < 0.4 * shape[0])
    tumor = ((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2] + 6) ** 2) <= 16
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0
    hu[liver] = 60.0
    hu[tumor & liver] = 110.0
    hu += rng.normal(0, 8, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[tumor & liver] = 2
    return hu, labels


def write_study(pre: Path, shape=(16, 40, 40), spacing=(1.0, 1.0, 2.5), labels=True, hu_shift=0.0) -> Path:
    hu, lab = phantom(shape)
    g = Geometry(hu.shape, spacing, (0, 0, 0))
    write_image(hu + 30 + hu_shift, g, pre / "arterial.nii.gz")
    write_image(hu + hu_shift, g, pre / "portal.nii.gz")
    if labels:
        write_image(lab, g, pre / "labels.nii.gz", labels=True)
    return pre


def write_clinical(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def write_dicom(folder: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.5), shear=0.0, pixel_spacing=None):
    import locale

    import pydicom
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    saved = locale.setlocale(locale.LC_ALL, None)  # GDCM's writer sets the process locale to "C"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    img = sitk.GetImageFromArray(np.rint(array).astype(np.int16))
    img.SetSpacing(spacing)
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        tags = {"0008|0060": "CT", "0010|0010": "Doe^Jane", "0010|0020": "PAT-9",
                "0020|000d": "1.2.826.0.1.3680043.8.498.30",
                "0020|000e": "1.2.826.0.1.3680043.8.498.31",
                "0020|0032": "\\".join(f"{p:.4f}" for p in (0.0, shear * z, z * spacing[2])),
                "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(z + 1), "0028|1052": "0", "0028|1053": "1",
                "0008|0018": f"1.2.826.0.1.3680043.8.498.32.{z + 1}"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{z:03d}.dcm"))
        writer.Execute(sl)
    locale.setlocale(locale.LC_ALL, saved)
    if pixel_spacing is not None:
        for f in folder.iterdir():
            ds = pydicom.dcmread(f)
            ds.PixelSpacing = pixel_spacing
            ds.save_as(f)
    return folder


@dataclass
class Case:
    name: str
    item: str
    expect: str  # "refuse": exit 2 with one error line; "note:<words>": exit 0 and the words; "exit:<n>"; "ok"
    setup: object  # callable(tmp: Path) -> (argv list, env dict)
    interrupt_after_s: float | None = None
    #: send SIGINT as soon as the command's staging folder (``.partial-``) appears: interrupted while writing
    interrupt_on_staging: bool = False
    check: object = None  # callable(tmp) -> str | None (a problem) after the run
    deidentified: bool = False
    notes: list = field(default_factory=list)


def _nifti_patch(path: Path, offset: int, fmt: str, value) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(gzip.compress(bytes(raw)))


def cases() -> list[Case]:
    out: list[Case] = []

    def add(name, item, expect, setup, **kw):
        out.append(Case(name, item, expect, setup, **kw))

    def study(tmp, **kw):
        return write_study(tmp / "cases" / "P1" / "pre", **kw)

    # item 1: outputs onto inputs
    add("segment --out is an input phase", "1", "refuse",
        lambda t: (["segment", "--pre", str(study(t)), "--out", str(t / "cases/P1/pre/portal.nii.gz")], {}))
    add("segment --out is the label map", "1", "refuse",
        lambda t: (["segment", "--pre", str(study(t)), "--out", str(t / "cases/P1/pre/labels.nii.gz")], {}))

    def predict_labels_in_out(t):
        pre = study(t)
        lab = t / "out" / "tace_pd1_len" / "w08" / "labels.nii.gz"
        lab.parent.mkdir(parents=True)
        shutil.copy(pre / "labels.nii.gz", lab)
        return ["predict", "--pre", str(pre), "--labels", str(lab), "--regimens", "tace_pd1_len", "--weeks", "8",
                "--out", str(t / "out")], {}
    add("predict --labels inside its own --out", "1", "refuse", predict_labels_in_out)

    # item 2: de-identification by allow-list
    def deid(t):
        pre = study(t)
        table = write_clinical(t / "clinical.csv", [{"patient_id": "P1", **CLINICAL, "PatientName": "Doe^Jane",
                                                     "Patient Name": "Jane Doe", "dob": "1961-04-02",
                                                     "Surname": "Smithson", "initials": "JDX"}])
        return ["predict", "--pre", str(pre), "--clinical", str(table), "--patient", "P1", "--regimens",
                "tace_pd1_len", "--weeks", "8", "--samples", "1", "--deidentify", "--report", "--out",
                str(t / "out")], {}
    add("predict --deidentify with name/dob/surname/initials columns", "2", "ok", deid, deidentified=True)

    # item 3: label values that wrap
    def wrap(value):
        def setup(t):
            pre = study(t, labels=False)
            _, lab = phantom()
            lab = lab.astype(np.int32)
            lab[lab == 2] = value
            write_image(lab, Geometry(lab.shape, (1.0, 1.0, 2.5)), pre / "labels.nii.gz")
            return ["inspect", "--pre", str(pre)], {}
        return setup
    add("label value 65538 (wraps to 2 in 16 bits)", "3", "refuse", wrap(65538))
    add("label value 258 (wraps to 2 in 8 bits)", "3", "refuse", wrap(258))

    # item 4: partial phases, damaged dimensions, PixelSpacing 0
    def partial(t):
        pre = study(t, shape=(32, 40, 40))
        hu, _ = phantom((32, 40, 40))
        write_image(hu[12:15] + 30, Geometry((3, 40, 40), (1.0, 1.0, 2.5), (0, 0, 30.0)), pre / "arterial.nii.gz")
        return ["predict", "--pre", str(pre), "--regimens", "tace_pd1_len", "--weeks", "8", "--out",
                str(t / "out")], {}
    add("arterial phase 3 of 32 slices", "4", "refuse", partial)

    def negdim(t):
        pre = study(t)
        raw = bytearray(gzip.decompress((pre / "portal.nii.gz").read_bytes()))
        struct.pack_into("<h", raw, 44, -40)
        (pre / "portal.nii.gz").write_bytes(gzip.compress(bytes(raw)))
        return ["inspect", "--pre", str(pre)], {}
    add("NIfTI with a negative dimension", "4", "refuse", negdim)

    def slab(t):
        a = np.full((12, 1, 40), -1000.0, np.float32)
        write_image(a, Geometry(a.shape, (1.0, 1.0, 2.5)), t / "slab.nii.gz")
        return ["inspect", "--portal", str(t / "slab.nii.gz")], {}
    add("NIfTI one row thick", "4", "refuse", slab)

    def spacing0(t):
        hu, _ = phantom((12, 40, 40))
        write_dicom(t / "pre" / "portal", hu, pixel_spacing=[0, 0])
        return ["inspect", "--portal", str(t / "pre" / "portal")], {}
    add("DICOM PixelSpacing 0", "4", "refuse", spacing0)

    # item 5: gantry tilt under --pre
    def tilt(t):
        hu, _ = phantom((12, 40, 40))
        write_dicom(t / "cases" / "P1" / "pre" / "portal", hu, shear=1.0)
        return ["inspect", "--pre", str(t / "cases" / "P1" / "pre")], {}
    add("gantry-tilted DICOM series under --pre", "5", "refuse", tilt)

    # item 6: raw stored values
    def raw(pad):
        def setup(t):
            hu, _ = phantom()
            a = hu + 1024.0
            a[:, :3, :] = pad
            write_image(a, Geometry(a.shape, (1.0, 1.0, 2.5)), t / "portal.nii.gz")
            return ["inspect", "--portal", str(t / "portal.nii.gz")], {}
        return setup
    add("raw stored CT (HU + 1024) with padding -2000", "6", "refuse", raw(-2000.0))
    add("raw stored CT (HU + 1024) with padding -3024", "6", "refuse", raw(-3024.0))

    def huge(t):
        hu, _ = phantom()
        a = hu.astype(np.float64)
        a[0, 0, 0] = 1e15
        write_image(a, Geometry(a.shape, (1.0, 1.0, 2.5)), t / "portal.nii.gz")
        return ["inspect", "--portal", str(t / "portal.nii.gz")], {}
    add("values near 1e15", "6", "refuse", huge)

    # item 7: spacing in cm
    def cm(t):
        hu, _ = phantom((8, 128, 128))
        write_image(hu, Geometry(hu.shape, (0.15, 0.15, 0.25)), t / "portal.nii.gz")
        return ["inspect", "--portal", str(t / "portal.nii.gz")], {}
    add("spacing in cm (0.15 cm in-plane, 512-like matrix)", "7", "refuse", cm)

    # item 8: diameter in cm
    add("scores max_diameter_mm=7.2 (cm)", "8", "note:in cm",
        lambda t: (["scores", "--set", *[f"{k}={v}" for k, v in {**CLINICAL, "max_diameter_mm": 7.2}.items()]], {}))

    def diam_labels(t):
        pre = study(t)
        table = write_clinical(t / "clinical.csv", [{"patient_id": "P1", **CLINICAL, "max_diameter_mm": 3}])
        return ["predict", "--pre", str(pre), "--clinical", str(table), "--patient", "P1", "--regimens",
                "tace_pd1_len", "--weeks", "8", "--samples", "1", "--out", str(t / "out")], {}
    add("predict: max_diameter_mm 3 with a segmented 0.7 mL lesion (a sphere of 11 mm)", "8",
        "note:largest segmented tumour", diam_labels)

    # item 9: event coding
    def events(t):
        rows = [{"patient_id": f"P{i}", **CLINICAL, "regimen": "tace_pd1_len", "os_months": 5 + i,
                 "os_event": 1 + (i % 2)} for i in range(20)]
        return ["survival", "cv", "--clinical", str(write_clinical(t / "c.csv", rows)), "--out", str(t / "cv")], {}
    add("os_event coded 1/2 (R style)", "9", "refuse", events)

    # item 10: far weeks
    add("predict --weeks 1000", "10", "refuse",
        lambda t: (["predict", "--pre", str(study(t)), "--regimens", "tace_pd1_len", "--weeks", "1000", "--out",
                    str(t / "out")], {}))
    add("predict --weeks 30 (past the trained 24)", "10", "note:extrapolat",
        lambda t: (["predict", "--pre", str(study(t)), "--regimens", "tace_pd1_len", "--weeks", "30", "--samples",
                    "1", "--out", str(t / "out")], {}))

    # item 11: interrupted re-run
    def rerun(t):
        pre = study(t, shape=(48, 160, 160))  # large enough that the re-run is still computing when interrupted
        argv = ["predict", "--pre", str(pre), "--regimens", "tace_pd1_len,haic_pd1_len", "--weeks", "8,16,24",
                "--samples", "4", "--report", "--out", str(t / "out")]
        subprocess.run([sys.executable, "-m", "HCCTwinLib.cli", *argv], capture_output=True, env=_env({}),
                       check=True, cwd=t)
        (t / "before.json").write_text(json.dumps(_hashes(t / "out")))
        return argv, {}

    def same_as_before(t):
        before = json.loads((t / "before.json").read_text())
        after = _hashes(t / "out")
        if before != after:
            return f"output folder changed: {sorted(set(before.items()) ^ set(after.items()))[:3]}"
        left = [p.name for p in t.iterdir() if ".partial-" in p.name]
        return f"staging left behind: {left}" if left else None
    add("predict re-run into the same --out, Ctrl-C after 3 s", "11", "exit:130", rerun, interrupt_after_s=3.0,
        check=same_as_before)
    add("predict re-run into the same --out, Ctrl-C as soon as it has started", "11", "exit:130", rerun,
        interrupt_on_staging=True, check=same_as_before)

    def report_rerun(t):
        argv, _ = rerun(t)
        from PIL import Image

        Image.new("RGB", (640, 480), (40, 40, 40)).save(t / "l.png")
        return ["report", "--result", str(t / "out"), "--layout", str(t / "l.png")], {}
    add("report re-run into the same folder, Ctrl-C while it writes", "11", "exit:130", report_rerun,
        interrupt_on_staging=True, check=same_as_before)

    # item 12: memory bombs
    def bomb(t):
        argv, _ = rerun(t)
        return ["report", "--result", str(t / "out"), "--layout", str(png_header_only(t / "l.png", 20000, 20000)),
                "--out", str(t / "r")], {}
    add("report --layout PNG declaring 20000x20000", "12", "refuse", bomb)
    def damaged_png(t):
        argv, _ = rerun(t)
        return ["report", "--result", str(t / "out"), "--layout", str(png_header_only(t / "l.png", 640, 480)),
                "--out", str(t / "r")], {}
    add("report --layout PNG with damaged pixel data", "12", "refuse", damaged_png)
    add("predict --samples 10000", "12", "exit:2",
        lambda t: (["predict", "--pre", str(study(t)), "--samples", "10000", "--out", str(t / "out")], {}))

    # item 13: tracebacks
    def unusable_out(command):
        def setup(t):
            (t / "blocker").write_text("x")
            pre = study(t)
            out = str(t / "blocker" / "sub")
            argv = {"segment": ["segment", "--pre", str(pre), "--out", out + "/l.nii.gz"],
                    "predict": ["predict", "--pre", str(pre), "--out", out],
                    "register": ["register", "--fixed", str(pre), "--moving", str(pre), "--out", out],
                    "evaluate": ["evaluate", "--cohort", str(t), "--out", out],
                    "study": ["study", "--cohort", str(t), "--out", out],
                    "simulate": ["simulate", "--n", "1", "--fast", "--out", out],
                    "report": ["report", "--result", str(t), "--out", out],
                    "demo": ["demo", "--out", out],
                    "train": ["train", "generator", "--cohort", str(t), "--out", out],
                    "survival": ["survival", "cv", "--clinical", str(t / "x.csv"), "--out", out]}[command]
            return argv, {}
        return setup
    for command in ("segment", "predict", "register", "evaluate", "study", "simulate", "report", "demo", "train",
                    "survival"):
        add(f"{command} --out below a file", "13", "refuse", unusable_out(command))

    add("report --result that does not exist", "13", "refuse",
        lambda t: (["report", "--result", str(t / "nothing")], {}))

    def garbage_result(t):
        (t / "result.json").write_bytes(b"\x00\xffgarbage")
        return ["report", "--result", str(t / "result.json")], {}
    add("report --result that is not JSON", "13", "refuse", garbage_result)

    def other_result(t):
        (t / "result.json").write_text('{"survival": 3}')
        return ["report", "--result", str(t / "result.json")], {}
    add("report --result that is other JSON", "13", "refuse", other_result)

    for var, value in (("HCCTWIN_DEVICE", "gpu"), ("HCCTWIN_NUM_THREADS", "two"), ("HCCTWIN_NUM_THREADS", "0"),
                       ("HCCTWIN_CPU_PRECISION", "fp8"), ("HCCTWIN_MAX_VOXELS", "auto"),
                       ("HCCTWIN_MAX_VOXELS", "-1"), ("HCCTWIN_GPU_MEMORY_GB", "lots"), ("HCCTWIN_WORKERS", "x")):
        add(f"{var}={value}", "13", "refuse",
            lambda t, var=var, value=value: (["inspect", "--pre", str(study(t))], {var: value}))

    def nan_origin(t):
        pre = study(t)
        _nifti_patch(pre / "portal.nii.gz", 268, "<f", float("nan"))
        _nifti_patch(pre / "portal.nii.gz", 292, "<f", float("nan"))
        return ["inspect", "--pre", str(pre)], {}
    add("NIfTI with NaN origin", "13", "refuse", nan_origin)

    def inf_origin(t):
        pre = study(t)
        _nifti_patch(pre / "portal.nii.gz", 272, "<f", float("inf"))
        _nifti_patch(pre / "portal.nii.gz", 308, "<f", float("inf"))
        return ["inspect", "--pre", str(pre)], {}
    add("NIfTI with infinite origin", "13", "refuse", inf_origin)

    def far_followup(command):
        def setup(t):
            pre = study(t)
            hu, lab = phantom()
            g = Geometry(hu.shape, (1.0, 1.0, 2.5), (5000.0, 5000.0, 5000.0))
            write_image(hu + 30, g, t / "far" / "arterial.nii.gz")
            write_image(hu, g, t / "far" / "portal.nii.gz")
            if command == "register":
                return ["register", "--fixed", str(pre), "--moving", str(t / "far"), "--out", str(t / "reg"),
                        "--no-deformable"], {}
            return ["predict", "--pre", str(pre), "--followup", str(t / "far"), "--followup-weeks", "8",
                    "--regimens", "tace_pd1_len", "--weeks", "8", "--samples", "1", "--no-deformable", "--out",
                    str(t / "out")], {}
        return setup
    add("register: follow-up 5 m away (no physical overlap)", "13", "any", far_followup("register"))
    add("predict --followup 5 m away", "13", "any", far_followup("predict"))
    add("predict --regimens unknown", "13", "exit:2",
        lambda t: (["predict", "--pre", str(study(t)), "--regimens", "surgery", "--out", str(t / "out")], {}))
    add("predict --seed 1e20", "13", "exit:2",
        lambda t: (["predict", "--pre", str(study(t)), "--seed", "1e20", "--out", str(t / "out")], {}))
    add("simulate --seed -1", "13", "exit:2",
        lambda t: (["simulate", "--n", "1", "--seed", "-1", "--out", str(t / "sim")], {}))

    def gen_to_segment(t):
        from HCCTwinLib.twin.generator import default_weights_path

        return ["segment", "--pre", str(study(t)), "--weights", str(default_weights_path()), "--out",
                str(t / "l.nii.gz")], {}
    add("generator file given to segment --weights", "13", "refuse", gen_to_segment)
    add("segment of a 64x256x256 study, Ctrl-C after 3 s", "13", "exit:130",
        lambda t: (["segment", "--pre", str(study(t, shape=(64, 256, 256))), "--out", str(t / "l.nii.gz")], {}),
        interrupt_after_s=3.0)

    # also
    def refused_model(allow):
        def setup(t):
            (t / "g.safetensors").write_bytes(b"\x01")
            argv = ["predict", "--pre", str(study(t)), "--regimens", "tace_pd1_len", "--weeks", "8", "--samples",
                    "1", "--generator-weights", str(t / "g.safetensors"), "--out", str(t / "out")]
            return argv + (["--allow-missing-models"] if allow else []), {}
        return setup
    add("predict with a refused (1-byte) generator", "also", "refuse", refused_model(False))
    add("predict with a refused generator, --allow-missing-models", "also", "note:Generator:", refused_model(True))
    add("predict --followup-regimen unknown", "also", "exit:2",
        lambda t: (["predict", "--pre", str(study(t)), "--followup-regimen", "surgery", "--out", str(t / "o")], {}))
    add("predict --regimens ''", "also", "exit:2",
        lambda t: (["predict", "--pre", str(study(t)), "--regimens", "", "--out", str(t / "o")], {}))
    add("evaluate --max-cases -1", "also", "exit:2",
        lambda t: (["evaluate", "--cohort", str(t), "--max-cases", "-1", "--out", str(t / "o")], {}))
    add("study --bootstrap -5", "also", "exit:2",
        lambda t: (["study", "--cohort", str(t), "--bootstrap", "-5", "--out", str(t / "o")], {}))
    add("scores --set unknown key", "also", "refuse",
        lambda t: (["scores", "--set", "bilirubin=20", "albumin_g_l=38"], {}))

    def same_file(t):
        pre = study(t)
        return ["inspect", "--arterial", str(pre / "portal.nii.gz"), "--portal", str(pre / "portal.nii.gz")], {}
    add("the same file as both phases", "also", "refuse", same_file)

    def cuda(t):
        return ["inspect", "--pre", str(study(t))], {"HCCTWIN_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}
    add("HCCTWIN_DEVICE=cuda without a GPU (inspect)", "also", "note:CUDA was requested", cuda)

    def cuda_predict(t):
        return ["predict", "--pre", str(study(t)), "--regimens", "tace_pd1_len", "--weeks", "8", "--samples", "1",
                "--out", str(t / "out")], {"HCCTWIN_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}
    add("HCCTWIN_DEVICE=cuda without a GPU (predict)", "also", "note:CUDA was requested", cuda_predict)

    def no_events(t):
        rows = [{"patient_id": f"P{i}", **CLINICAL, "afp_ng_ml": "", "regimen": "tace_pd1_len", "os_months": 5 + i,
                 "os_event": 1} for i in range(20)]
        return ["survival", "cv", "--clinical", str(write_clinical(t / "c.csv", rows)), "--out", str(t / "cv")], {}
    add("survival cv where no row is complete", "also", "refuse", no_events)
    return out


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCCTWIN_")}
    env["PYTHONPATH"] = str(ROOT / "HCCTwin") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HCCTWIN_NUM_THREADS", "2")
    env.update(extra)
    return env


def run_case(case: Case, scratch: Path) -> dict:
    tmp = scratch / f"case{abs(hash(case.name)) % 10**8}"
    tmp.mkdir(parents=True)
    argv, env = case.setup(tmp)
    inputs_before = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp.rglob("*")
                     if p.is_file() and "out" not in p.relative_to(tmp).parts[:1]}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "HCCTwinLib.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(env), cwd=tmp)
    if case.interrupt_after_s is not None:
        try:
            proc.wait(timeout=case.interrupt_after_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    if case.interrupt_on_staging:
        while proc.poll() is None:
            if any(".partial-" in p.name for p in tmp.iterdir()):
                time.sleep(0.05)  # into the writing
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=900)
    seconds = time.perf_counter() - t0
    changed = [p for p, h in inputs_before.items() if not Path(p).exists()
               or hashlib.sha256(Path(p).read_bytes()).hexdigest() != h]
    if case.name.startswith(("predict re-run", "report re-run")):
        changed = [p for p in changed if "/out/" not in p]  # judged by the check below
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines()
             if ln.strip() and not ln.startswith(("ITK ERROR", "["))]
    errors = [ln for ln in lines if "error:" in ln]
    record = {"name": case.name, "item": case.item, "expect": case.expect, "argv": argv, "env": env,
              "exit": proc.returncode, "seconds": round(seconds, 1), "traceback": "Traceback (most recent" in stderr,
              "error_lines": len(errors), "last_stderr": (lines[-1] if lines else "")[:300],
              "inputs_changed": changed}
    problems = []
    if record["traceback"]:
        problems.append("traceback")
    if changed:
        problems.append(f"inputs changed: {changed[:3]}")
    kind, _, words = case.expect.partition(":")
    text = stdout + stderr
    if kind == "refuse" and (proc.returncode != 2 or len(errors) != 1):
        problems.append(f"expected one error line and exit 2, got exit {proc.returncode}, {len(errors)} error lines")
    elif kind == "exit" and proc.returncode != int(words):
        problems.append(f"expected exit {words}, got {proc.returncode}")
    elif kind == "note" and (proc.returncode != 0 or words not in text):
        problems.append(f"expected exit 0 and a note with {words!r}, got exit {proc.returncode}")
    elif kind == "ok" and proc.returncode != 0:
        problems.append(f"expected exit 0, got {proc.returncode}")
    elif kind == "any" and proc.returncode not in (0, 2, 130, -signal.SIGINT):  # -2: SIGINT before Python started
        problems.append(f"unexpected exit {proc.returncode}")
    if case.deidentified:
        found = sorted({s for p in (tmp / "out").rglob("*") if p.is_file() for s in SENTINELS
                        if s.encode() in p.read_bytes()} | {s for s in SENTINELS if s in stdout})
        record["identifiers_found"] = found
        if found:
            problems.append(f"identifiers in de-identified output: {found}")
    if case.check is not None:
        issue = case.check(tmp)
        if issue:
            problems.append(issue)
    record["problems"] = problems
    record["passed"] = not problems
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--only", help="run the cases whose name contains this text")
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="hcctwin-bad-input-"))
    records = []
    try:
        for case in cases():
            if args.only and args.only not in case.name:
                continue
            rec = run_case(case, scratch)
            records.append(rec)
            print(f"{'ok  ' if rec['passed'] else 'FAIL'} [{rec['item']:>4}] {rec['name']} (exit {rec['exit']}, "
                  f"{rec['seconds']} s) {'; '.join(rec['problems'])}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {"cases": len(records), "passed": sum(r["passed"] for r in records),
               "tracebacks": sum(r["traceback"] for r in records),
               "changed_inputs": sum(bool(r["inputs_changed"]) for r in records),
               "identifiers_in_deidentified_outputs": sum(len(r.get("identifiers_found", [])) for r in records),
               "silently_accepted_unit_errors": sum(1 for r in records if r["item"] in ("6", "7", "8")
                                                    and not r["passed"])}
    machine = machine_info()
    result = {"date": machine["date"], "machine": machine, "summary": summary, "cases": records}
    if args.only:
        print(json.dumps(summary))
        return 0 if summary["passed"] == summary["cases"] else 1
    lines = ["# Bad input and faults through the command line (issue 24)", "",
             f"{result['date']}, {machine_line(machine)}, Python {machine['python']}. Command: "
             f"`python benchmarks/bad_input.py`. Every case runs `python -m HCCTwinLib.cli ...` in a subprocess on "
             f"inputs built for it (a small phantom study unless said otherwise).", "",
             f"**{summary['passed']} of {summary['cases']} cases as specified; tracebacks {summary['tracebacks']}, "
             f"changed inputs {summary['changed_inputs']}, identifiers in de-identified outputs "
             f"{summary['identifiers_in_deidentified_outputs']}, silently accepted unit errors "
             f"{summary['silently_accepted_unit_errors']}.**", "",
             "Expected: *refuse* = exit 2 with one error line; *note: words* = exit 0 and the words in the output; "
             "*exit: n*; *ok* = exit 0; *any* = no traceback (0, 2, 130, or -2: SIGINT before Python started).", "",
             "| item | case | expected | exit | s | outcome | last line of stderr |", "|---|---|---|---|---|---|---|"]
    for r in records:
        last = r["last_stderr"].replace("|", "\\|")
        outcome = "as specified" if r["passed"] else "**" + "; ".join(r["problems"]).replace("|", "\\|") + "**"
        lines.append(f"| {r['item']} | {r['name']} | {r['expect']} | {r['exit']} | {r['seconds']} | {outcome} | "
                     f"{last[:220]} |")
    write_results(args.out, "bad_input", result, lines, echo=False)
    print(json.dumps(summary))
    return 0 if summary["passed"] == summary["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
