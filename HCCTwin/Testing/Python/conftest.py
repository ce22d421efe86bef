"""Shared pytest fixtures: tiny synthetic volumes written in the formats a site brings."""

from __future__ import annotations

import contextlib
import locale
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

os.environ.setdefault("HCCTWIN_NUM_THREADS", "2")

# Installed models for the test session: every shipped model file (the generator is the anchored twin since issue 23:
# seconds per request, so every pipeline test runs with it). SLOW_SHIPPED_MODELS names models left out of the
# session's weights folder; test_shipped_models.py points HCCTWIN_WEIGHTS_DIR back at the package folder.
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "HCCTwinLib" / "weights"
SLOW_SHIPPED_MODELS: tuple[str, ...] = ()
if "HCCTWIN_WEIGHTS_DIR" not in os.environ:
    import tempfile

    _session_weights = Path(tempfile.mkdtemp(prefix="hcctwin_test_weights_"))
    for _f in SHIPPED_WEIGHTS_DIR.iterdir():
        if _f.suffix in (".safetensors", ".json") and _f.stem not in SLOW_SHIPPED_MODELS:
            (_session_weights / _f.name).symlink_to(_f)
    os.environ["HCCTWIN_WEIGHTS_DIR"] = str(_session_weights)


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` of this checkout as a module (the benchmark scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_torch_thread():
    """torch on one CPU thread for the test (small networks are faster and deterministic timing is not needed)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def headless_app():
    """A headless Slicer core (slicer-core + trame-slicer) shared by the tests of one module; closed after them."""
    from HCCTwinLib.scene.headless import HeadlessSlicer

    app = HeadlessSlicer()
    yield app
    app.close()


def make_phantom(shape=(24, 40, 48), seed=0):
    """Small CT-like phantom: body ellipse (fat/muscle), liver block, a bright tumour sphere. Returns HU + labels."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    c = np.array(shape) / 2
    body = ((j - c[1]) / (0.45 * shape[1])) ** 2 + ((i - c[2]) / (0.45 * shape[2])) ** 2 <= 1
    liver = body & (i < c[2]) & (np.abs(k - c[0]) < 0.35 * shape[0])
    tumor = ((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - 0.6 * c[2]) ** 2) <= 16
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0
    hu[liver] = 90.0
    hu[tumor & liver] = 140.0
    hu += rng.normal(0, 8, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[tumor & liver] = 2
    return hu, labels


def sitk_image(array, spacing=(1.5, 1.5, 3.0), origin=(-30.0, -40.0, 10.0), direction=None):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def write_dicom_series(array_hu: np.ndarray, folder: Path, spacing=(0.8, 0.8, 2.5), origin=(-20.0, -30.0, 5.0),
                       series_uid="1.2.826.0.1.3680043.8.498.1", patient_name="Doe^Jane", patient_id="PAT-001"):
    """Write a CT DICOM series slice by slice (axial, LPS) the way scanners do: one file per slice, int16 + rescale."""
    folder.mkdir(parents=True, exist_ok=True)
    with keep_locale():
        return _write_dicom_series(array_hu, folder, spacing, origin, series_uid, patient_name, patient_id)


@contextlib.contextmanager
def keep_locale():
    """GDCM's DICOM writer (SimpleITK ImageFileWriter on .dcm) sets the process locale to "C": Python's default text
    encoding then becomes ASCII for every later test. Put the locale back."""
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(array_hu, folder, spacing, origin, series_uid, patient_name, patient_id):
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    img = sitk_image(np.rint(array_hu).astype(np.int16), spacing, origin)
    date = time.strftime("%Y%m%d")
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        pos = img.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "CT", "0008|0020": date, "0010|0010": patient_name, "0010|0020": patient_id,
            "0020|000d": "1.2.826.0.1.3680043.8.498.2", "0020|000e": series_uid,
            "0020|0032": "\\".join(f"{p:.4f}" for p in pos), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(z + 1), "0018|0050": f"{spacing[2]:.3f}", "0028|1052": "0", "0028|1053": "1",
            "0008|0018": f"1.2.826.0.1.3680043.8.498.3.{z + 1}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(sl)
    return folder


@pytest.fixture
def phantom():
    return make_phantom()


@pytest.fixture
def pre_folder(tmp_path):
    """A small two-phase study with its label map in the cohort layout (``tmp_path/cases/P7/pre``)."""
    from HCCTwinLib.cases import Geometry
    from HCCTwinLib.io import write_image

    hu, labels = make_phantom((16, 32, 32))
    g = Geometry(hu.shape, (1.0, 1.0, 2.5), (0, 0, 0))
    pre = tmp_path / "cases" / "P7" / "pre"
    write_image(hu + 30, g, pre / "arterial.nii.gz")
    write_image(hu, g, pre / "portal.nii.gz")
    write_image(labels, g, pre / "labels.nii.gz", labels=True)
    return pre
