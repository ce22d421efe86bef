"""Segmentation: device choice, geometry of the output, warm cache, post-processing, metrics, training + resume."""

from __future__ import annotations

import csv
import json
import math
import os
import time

import numpy as np
import pytest
import torch

from HCCTwinLib import device as devices
from HCCTwinLib.cases import Case, Geometry
from HCCTwinLib.errors import InputError
from HCCTwinLib.io import write_image
from HCCTwinLib.segmentation import (
    Segmenter,
    build_model,
    clear_cache,
    count_parameters,
    dice_per_label,
    get_segmenter,
    lesion_counts,
    lesion_detection,
    model_kwargs,
    postprocess,
    train_segmentation,
)
from HCCTwinLib.segmentation.preprocessing import from_model_grid, labels_to_model_grid, model_grid
from HCCTwinLib.weights import ModelFileError, load_state, save_model

TINY = {"filters": [4, 8, 16], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}
SPACING = (1.5, 1.5, 3.0)
FLIP = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread (conftest ``one_torch_thread``)."""


def _card(**extra):
    card = {"name": "tiny_seg", "version": "0.0.1", "architecture": "DynUNet",
            "architecture_kwargs": model_kwargs("DynUNet", **TINY), "input_phases": ["arterial", "portal"],
            "spacing_mm": list(SPACING), "patch_size_kji": [16, 32, 32]}
    card.update(extra)
    return card


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny_seg.safetensors"
    save_model(build_model("DynUNet", **TINY), path, _card())
    return path


def _sphere_case(shape, spacing, direction=None, center_mm=(0.0, 0.0, 0.0), radius_mm=12.0):
    geom = Geometry(shape=shape, spacing=spacing, origin=(0.0, 0.0, 0.0), direction=direction or np.eye(3))
    # put the origin so that the grid is centred on 0 in LPS
    k, j, i = np.indices(shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    centre_idx = (np.array(shape[::-1]) - 1) / 2.0
    m = geom.ijk_to_lps()
    origin = -(m[:3, :3] @ centre_idx)
    geom = Geometry(shape=shape, spacing=spacing, origin=tuple(origin), direction=geom.direction)
    lps = (geom.ijk_to_lps() @ ijk)[:3].T.reshape(*shape, 3)
    inside = np.linalg.norm(lps - np.asarray(center_mm), axis=-1) <= radius_mm
    art = np.where(inside, 200.0, -100.0).astype(np.float32)
    return art, inside, geom


class _ThresholdNet(torch.nn.Module):
    """Label 1 where the arterial phase is bright (normalised > 0.5), else 0: a deterministic 'network'."""

    def forward(self, x):
        v = x[:, :1] - 0.5
        return torch.cat([-v, v, -torch.ones_like(v), -torch.ones_like(v), -torch.ones_like(v)], dim=1) * 10


# ---------------------------------------------------------------------------------------------------------------
def test_select_device_cpu_and_fallbacks(monkeypatch):
    monkeypatch.delenv("HCCTWIN_DEVICE", raising=False)
    dev, msg = devices.select_device("cpu")
    assert dev.type == "cpu" and "CPU" in msg
    dev, msg = devices.select_device("mps")
    assert dev.type == "cpu" and "MPS" in msg
    dev, msg = devices.select_device("auto")
    assert dev.type == ("cuda" if devices.cuda_usable() else "cpu") and msg
    if not devices.cuda_usable():
        dev, msg = devices.select_device("cuda")
        assert dev.type == "cpu" and msg.startswith("Warning") and "CPU" in msg
    monkeypatch.setenv("HCCTWIN_DEVICE", "cpu")
    assert devices.select_device("auto")[0].type == "cpu"
    n = torch.get_num_threads()
    monkeypatch.setenv("HCCTWIN_NUM_THREADS", str(n + 1))
    try:
        devices.select_device("cpu")
        assert torch.get_num_threads() == n + 1  # the process setting is applied when a model device is chosen
    finally:
        torch.set_num_threads(n)
    monkeypatch.setenv("HCCTWIN_NUM_THREADS", "3")
    assert devices.cpu_threads() == 3  # the same setting bounds the twin's rendering threads
    monkeypatch.delenv("HCCTWIN_NUM_THREADS")
    assert 1 <= devices.cpu_threads() <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="unknown device"):
        devices.select_device("tpu")
    assert devices.gpu_memory_limit("cpu", fraction=0.5) is None
    assert devices.gpu_memory_gb("cpu") == (0.0, 0.0)


def test_cpu_precision_setting_and_autocast(monkeypatch):
    """Inference arithmetic on the CPU: bf16 by default only where the CPU has native bfloat16; the environment
    variable overrides; training contexts (the default ``cpu="fp32"``) stay in float32."""
    monkeypatch.delenv("HCCTWIN_CPU_PRECISION", raising=False)
    assert devices.cpu_precision() == ("bf16" if devices.cpu_native_bf16() else "fp32")
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: True)
    assert devices.cpu_precision() == "bf16" and devices.cpu_precision("auto") == "bf16"
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: False)
    assert devices.cpu_precision() == "fp32"
    assert devices.cpu_precision("bf16") == "bf16"
    monkeypatch.setenv("HCCTWIN_CPU_PRECISION", "bf16")
    assert devices.cpu_precision() == "bf16"
    monkeypatch.setenv("HCCTWIN_CPU_PRECISION", "FP32")
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: True)
    assert devices.cpu_precision() == "fp32" and devices.cpu_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="CPU precision"):
        devices.cpu_precision("fp16")
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with devices.autocast("cpu"):
        assert (a @ b).dtype == torch.float32
    with devices.autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_segmenter_bf16_on_cpu_agrees_with_fp32(tiny_weights, monkeypatch):
    """The same model and input in both CPU precisions: the labels agree almost everywhere and the run records
    which precision it used."""
    clear_cache()
    art, inside, geom = _sphere_case((14, 30, 26), (0.9, 1.3, 2.5))
    monkeypatch.setenv("HCCTWIN_CPU_PRECISION", "fp32")
    seg = get_segmenter(tiny_weights, device="cpu")
    assert seg.cpu_precision == "fp32"
    a = seg.segment({"arterial": art, "portal": art + 10}, geom)
    assert seg.last_info["cpu_precision"] == "fp32"
    seg.cpu_precision = "bf16"
    b = seg.segment({"arterial": art, "portal": art + 10}, geom)
    assert seg.last_info["cpu_precision"] == "bf16"
    assert a.shape == b.shape and (a == b).mean() > 0.97
    clear_cache()


def test_oom_falls_back_to_cpu():
    calls, notes = [], []

    def step(dev):
        calls.append(dev.type)
        if dev.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "ok"

    assert devices.call_with_cpu_fallback(step, torch.device("cuda"), notify=notes.append) == "ok"
    assert calls == ["cuda", "cpu"] and "out of memory" in notes[0]
    with pytest.raises(ValueError):
        devices.call_with_cpu_fallback(lambda d: (_ for _ in ()).throw(ValueError("other")), torch.device("cuda"))
    with pytest.raises(devices.GPUOutOfMemory):
        with devices.oom_guard("cuda"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")


def test_default_model_size(tmp_path):
    model = build_model()
    n = count_parameters(model)
    assert 3e6 < n < 6.25e6  # < 25 MB as float32
    # DynUNet registers its blocks twice (skip_layers.*): stored once, restored on load
    path, _ = save_model(model, tmp_path / "default.safetensors", _card(architecture_kwargs=model_kwargs()))
    assert path.stat().st_size < 25e6
    state, card = load_state(path)
    build_model(card["architecture"], **card["architecture_kwargs"]).load_state_dict(state)
    assert card["n_parameters"] == n
    x = torch.zeros(1, 2, 16, 32, 32)
    with torch.inference_mode():
        assert build_model("DynUNet", **TINY)(x).shape == (1, 5, 16, 32, 32)


def test_model_grid_round_trip_anisotropic_flipped():
    # same spacing as the model, flipped axes: voxel centres coincide, the round trip is exact
    art, inside, geom = _sphere_case((20, 24, 28), SPACING, FLIP)
    mg = model_grid(geom, SPACING)
    assert mg.shape == geom.shape and np.allclose(mg.direction_matrix, np.eye(3))
    lab = labels_to_model_grid(inside.astype(np.uint8), geom, mg)
    assert np.array_equal(lab, inside[::-1, :, ::-1])  # flip of k and i
    assert np.array_equal(from_model_grid(lab, mg, geom), inside)
    # anisotropic spacing different from the model's: aligned within interpolation error
    art, inside, geom = _sphere_case((18, 40, 33), (0.8, 1.1, 2.5), FLIP, center_mm=(5.0, -4.0, 6.0))
    mg = model_grid(geom, SPACING)
    back = from_model_grid(labels_to_model_grid(inside.astype(np.uint8), geom, mg), mg, geom)
    assert back.shape == geom.shape and back.dtype == np.uint8
    assert dice_per_label(back, inside.astype(np.uint8))["liver"] > 0.9


@pytest.mark.parametrize("spacing", [SPACING, (0.8, 1.1, 2.5)])
def test_segment_output_is_on_the_input_grid(spacing):
    art, inside, geom = _sphere_case((18, 40, 36), spacing, FLIP, center_mm=(6.0, -3.0, 4.0))
    seg = Segmenter(_ThresholdNet(), _card(), "cpu")
    labels = seg.segment({"arterial": art, "portal": np.zeros_like(art)}, geom, postprocess=False)
    assert labels.shape == geom.shape and labels.dtype == np.uint8
    truth = inside.astype(np.uint8)
    if spacing == SPACING:
        assert np.array_equal(labels, truth)
    else:
        assert dice_per_label(labels, truth)["liver"] > 0.9
        # centroid in physical space agrees within one model voxel
        m = geom.ijk_to_lps()

        def centroid(mask):
            kji = np.argwhere(mask).mean(axis=0)
            return (m @ np.r_[kji[::-1], 1.0])[:3]

        assert np.linalg.norm(centroid(labels > 0) - centroid(inside)) < 1.5


def test_segmenter_with_real_model_case_and_progress(tiny_weights):
    clear_cache()
    art, inside, geom = _sphere_case((14, 30, 26), (0.9, 1.3, 2.5), FLIP)
    case = Case("p1", {"arterial": art, "portal": art + 10}, geom)
    messages = []
    seg = get_segmenter(tiny_weights, device="cpu")
    labels = seg.segment(case, progress=lambda f, m: messages.append((f, m)))
    assert labels.shape == geom.shape and labels.dtype == np.uint8 and labels.max() <= 4
    assert messages[-1][0] == 1.0 and any("window" in m for _, m in messages)
    # coarse-to-fine path on the same input: still the input grid
    labels2 = seg.segment(case, coarse_to_fine=True)
    assert labels2.shape == geom.shape
    # one phase: copied into the missing channel, and said (this tiny model was not trained on single phases)
    single = seg.segment({"arterial": art}, geom)
    assert single.shape == geom.shape and seg.last_info["filled_phases"] == {"portal": "arterial"}
    assert any("not trained on single-phase" in m for m in seg.last_info["messages"])
    np.testing.assert_array_equal(single, seg.segment({"arterial": art, "portal": art}, geom))
    with pytest.raises(InputError, match="portal"):
        seg.segment({"t2": art}, geom)
    with pytest.raises(InputError, match="geometry"):
        seg.segment({"arterial": art, "portal": art})


def test_model_stays_cached(tiny_weights):
    clear_cache()
    t0 = time.perf_counter()
    first = get_segmenter(tiny_weights, device="cpu")
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = get_segmenter(tiny_weights, device="cpu")
    t_second = time.perf_counter() - t0
    assert second is first and t_second < t_first
    clear_cache()
    assert get_segmenter(tiny_weights, device="cpu") is not first


def test_tampered_weights_are_not_loaded(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(build_model("DynUNet", **TINY), path, _card())
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="modified or corrupted"):
        get_segmenter(path, device="cpu")
    with pytest.raises(ModelFileError, match="no segmentation model"):
        get_segmenter(tmp_path / "absent.safetensors", device="cpu")


# ---------------------------------------------------------------------------------------------------------------
def test_postprocess_removes_islands_and_fills_holes():
    spacing = (1.0, 1.0, 1.0)  # 1 voxel = 0.001 mL
    lab = np.zeros((40, 40, 60), np.uint8)
    lab[5:35, 5:35, 5:35] = 1  # liver
    lab[18:22, 18:22, 18:22] = 0  # a hole (cavity)
    lab[8:16, 8:16, 8:16] = 2  # tumor 512 voxels = 0.51 mL: kept
    lab[25:30, 25:30, 25:30] = 3  # necrosis inside it? separate lesion 125 voxels: kept
    lab[30, 10, 30] = 2  # tumor island of 1 voxel (< 0.1 mL): becomes liver
    lab[2:6, 45:49, 45:49] = 1  # a separate liver island: dropped
    lab[10:13, 10:13, 40:46] = 2  # tumor outside the liver: dropped
    lab[15:20, 15:20, 36:41] = 4  # PVTT next to the liver (1 mm away): kept
    lab[30:35, 30:35, 55:60] = 4  # PVTT far away (>20 mm): dropped
    out = postprocess(lab, spacing)
    assert out.dtype == np.uint8 and out.shape == lab.shape
    assert np.all(out[18:22, 18:22, 18:22] == 1)
    assert np.all(out[8:16, 8:16, 8:16] == 2) and np.all(out[25:30, 25:30, 25:30] == 3)
    assert out[30, 10, 30] == 1
    assert not out[2:6, 45:49, 45:49].any() and not out[10:13, 10:13, 40:46].any()
    assert np.all(out[15:20, 15:20, 36:41] == 4) and not out[30:35, 30:35, 55:60].any()
    assert not postprocess(np.zeros((4, 4, 4), np.uint8), spacing).any()
    # with coarse voxels the 125-voxel lesion is 0.125 mL x 8 = 1 mL: kept; with fine voxels (0.5 mm) dropped
    assert not np.isin(postprocess(lab, (0.5, 0.5, 0.5))[25:30, 25:30, 25:30], (2, 3)).any()


def test_dice_per_label_hand_made():
    truth = np.zeros((4, 5, 5), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :2, :5] = 1  # 10 liver voxels
    pred[0, :2, :4] = 1  # 8 of them
    pred[1, 0, :2] = 1  # + 2 wrong
    truth[2, 0, 0:2] = 2
    pred[2, 0, 0:2] = 2  # tumor perfect
    d = dice_per_label(pred, truth)
    assert d["liver"] == pytest.approx(0.8)
    assert d["viable_tumor"] == pytest.approx(1.0)
    assert np.isnan(d["necrosis"]) and np.isnan(d["pvtt"])
    assert d["tumor_total"] == pytest.approx(1.0)
    assert d["liver_total"] == pytest.approx(2 * 10 / 24)
    with pytest.raises(ValueError):
        dice_per_label(pred[:2], truth)


def test_lesion_detection_hand_made():
    geom = Geometry(shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0))
    truth = np.ones(geom.shape, np.uint8)
    pred = truth.copy()
    truth[2:8, 2:8, 2:8] = 2  # 12 mm lesion: detected
    pred[4:6, 4:6, 4:6] = 3  # (necrosis label counts as tumor)
    truth[2:8, 20:26, 20:26] = 2  # 12 mm lesion: missed
    truth[15, 30, 30] = 2  # 2 mm lesion: below 10 mm, ignored
    pred[12:18, 30:36, 2:8] = 2  # 12 mm predicted lesion, no truth: false positive
    pred[15, 2, 35] = 2  # 2 mm predicted speck: ignored
    sens, fp = lesion_detection(pred, truth, geom)
    assert sens == pytest.approx(0.5) and fp == 1.0
    assert lesion_counts(pred, truth, geom) == {"n_lesions": 2, "detected": 1, "false_positives": 1}
    sens, fp = lesion_detection(pred, truth, geom, min_diameter_mm=1.0)
    assert sens == pytest.approx(1 / 3) and fp == 2.0
    sens, fp = lesion_detection(np.ones_like(truth), np.ones_like(truth), geom)
    assert np.isnan(sens) and fp == 0.0
    from HCCTwinLib.segmentation import detection_by_size

    truth[10:14, 2:18, 2:18] = 3  # 32 mm lesion (extent along j and i), missed
    by_size = detection_by_size(pred, truth, geom)
    assert list(by_size) == ["10-15", "15-20", "20-30", "30+"]
    assert by_size["10-15"] == {"n_lesions": 2, "detected": 1} and by_size["30+"] == {"n_lesions": 1, "detected": 0}
    assert by_size["15-20"]["n_lesions"] == by_size["20-30"]["n_lesions"] == 0
    assert sum(c["n_lesions"] for c in by_size.values()) == lesion_counts(pred, truth, geom)["n_lesions"]
    assert detection_by_size(pred, truth, geom, bins_mm=(1.0, 20.0))["1-20"] == {"n_lesions": 3, "detected": 1}


# ---------------------------------------------------------------------------------------------------------------
def _write_cohort(root, n=3, shape=(32, 48, 48), followup=True):
    geom = Geometry(shape=shape, spacing=SPACING, origin=(-36.0, -36.0, -48.0))
    rows = []
    for c in range(n):
        rng = np.random.default_rng(c)
        k, j, i = np.indices(shape)
        liver = (np.abs(k - 16) < 10) & (np.abs(j - 24) < 15) & (i < 30) & (i > 6)
        tumor = ((k - 16) ** 2 * 4 + (j - 22 - c) ** 2 + (i - 18) ** 2) <= 36
        necro = tumor & (((k - 16) ** 2 * 4 + (j - 22 - c) ** 2 + (i - 18) ** 2) <= 6)
        labels = np.zeros(shape, np.uint8)
        labels[liver] = 1
        labels[tumor & liver] = 2
        labels[necro & liver] = 3
        labels[14:18, 30:33, 30:33] = 4
        base = np.where(labels > 0, 60.0, -50.0)
        art = base + np.select([labels == 2, labels == 3, labels == 4], [80.0, -40.0, 20.0], 0.0)
        por = base + np.select([labels == 2, labels == 3, labels == 4], [-20.0, -40.0, 0.0], 40.0)
        pid = f"P{c:03d}"
        folder = root / "cases" / pid / "pre"
        write_image(art + rng.normal(0, 5, shape), geom, folder / "arterial.nii.gz")
        write_image(por + rng.normal(0, 5, shape), geom, folder / "portal.nii.gz")
        write_image(labels, geom, folder / "labels.nii.gz", labels=True)
        if followup and c == 0:
            fu = root / "cases" / pid / "followup" / "w08"
            write_image(art, geom, fu / "arterial.nii.gz")
            write_image(por, geom, fu / "portal.nii.gz")
            write_image(labels, geom, fu / "labels.nii.gz", labels=True)
        rows.append({"patient_id": pid, "age": 60 + c})
    with open(root / "clinical.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient_id", "age"])
        writer.writeheader()
        writer.writerows(rows)


def test_train_two_epochs_then_resume(tmp_path):
    cohort, out = tmp_path / "cohort", tmp_path / "run"
    _write_cohort(cohort)
    kwargs = dict(batch_size=2, patch_size=(16, 32, 32), lr=2e-3, val_fraction=0.34, seed=1, device="cpu",
                  architecture_kwargs=TINY, log=lambda *_: None)
    progress = []
    summary = train_segmentation(cohort, out, epochs=2, progress=lambda f, m: progress.append(f), **kwargs)
    assert summary["epochs_completed"] == 2 and len(summary["val_patients"]) == 1
    assert progress[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(progress, progress[1:]))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert set(log[0]["val_dice"]) >= {"liver", "viable_tumor", "necrosis", "pvtt"}
    assert all(isinstance(e["train_loss"], float) for e in log)
    ckpt_before = load_state(out / "checkpoint.safetensors")[0]
    # re-run with 3 epochs: continues from epoch 2 (one more epoch, log appended, weights start from the checkpoint)
    lines = []
    summary = train_segmentation(cohort, out, epochs=3, log=lines.append,
                                 **{k: v for k, v in kwargs.items() if k != "log"})
    assert summary["epochs_completed"] == 3 and any("resuming after epoch 2" in str(x) for x in lines)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert json.loads((out / "train_state.json").read_text())["epoch"] == 3
    assert not all(torch.equal(ckpt_before[k], v) for k, v in load_state(out / "checkpoint.safetensors")[0].items())
    state, card = load_state(summary["model_path"])
    assert card["architecture"] == "DynUNet" and card["architecture_kwargs"]["filters"] == [4, 8, 16]
    assert card["input_phases"] == ["arterial", "portal"] and card["spacing_mm"] == list(SPACING)
    assert "liver" in card["metrics"]["val_dice"] and card["metrics"]["selected_epoch"] in (1, 2, 3)
    # P000 has a follow-up: an extra training volume when it is a training patient
    assert card["training_data"]["n_train_volumes"] == 2 + ("P000" in summary["train_patients"])
    assert len(card["sha256"]) == 64 and card["hyperparameters"]["epochs"] in (2, 3)
    # the trained model file runs through the segmenter
    seg = get_segmenter(summary["model_path"], device="cpu")
    assert seg.segment(np.zeros((2, 32, 48, 48), np.float32), Geometry((32, 48, 48), SPACING)).shape == (32, 48, 48)
    # a different setting refuses to resume into the same folder
    with pytest.raises(InputError, match="different settings"):
        train_segmentation(cohort, out, epochs=4, **dict(kwargs, seed=2))


def test_patch_sampler_shapes_padding_coarse_and_seed(tmp_path):
    from HCCTwinLib.segmentation.train import _PatchSampler

    labels = np.zeros((12, 40, 40), np.uint8)
    labels[3:9, 10:30, 10:30] = 1
    labels[5:7, 15:19, 15:19] = 2
    image = np.random.default_rng(0).random((2, *labels.shape)).astype(np.float16)
    np.save(tmp_path / "a.img.npy", image)
    np.save(tmp_path / "a.lbl.npy", labels[None])
    items = [(tmp_path / "a.img.npy", tmp_path / "a.lbl.npy")]
    sampler = _PatchSampler(items, (16, 32, 32), seed=3, coarse_fraction=0.5, flip_prob=0.5)
    x, y = sampler.batch(6)  # the volume is thinner than the patch in k: padded
    assert x.shape == (6, 2, 16, 32, 32) and x.dtype == np.float32
    assert y.shape == (6, 1, 16, 32, 32) and y.dtype == np.int64 and set(np.unique(y)) <= {0, 1, 2}
    assert sampler.coarse[0][1].shape == (6, 20, 20)
    sampler.set_seed(7)
    again = _PatchSampler(items, (16, 32, 32), seed=3, coarse_fraction=0.5, flip_prob=0.5)
    again.set_seed(7)
    for a, b in zip(sampler.batch(4), again.batch(4)):
        np.testing.assert_array_equal(a, b)



def test_patch_sampler_class_ratios_steer_the_centres(tmp_path):
    """Patch centres follow ``class_ratios``: all on the PVTT voxels when only PVTT has odds, never there when it
    has none; bad ratios are refused."""
    from HCCTwinLib.segmentation.train import _PatchSampler

    labels = np.zeros((24, 64, 64), np.uint8)
    labels[4:20, 8:56, 8:56] = 1
    labels[10:14, 50:54, 50:54] = 4  # small PVTT in a corner of the liver
    image = np.zeros((2, *labels.shape), np.float16)
    np.save(tmp_path / "a.img.npy", image)
    np.save(tmp_path / "a.lbl.npy", labels[None])
    items = [(tmp_path / "a.img.npy", tmp_path / "a.lbl.npy")]
    only_pvtt = _PatchSampler(items, (8, 8, 8), seed=0, flip_prob=0.0, class_ratios=(0, 0, 0, 0, 1))
    assert all((only_pvtt.batch(1)[1] == 4).any() for _ in range(20))
    no_pvtt = _PatchSampler(items, (8, 8, 8), seed=0, flip_prob=0.0, class_ratios=(0, 1, 0, 0, 0))
    hits = [(no_pvtt.batch(1)[1] == 4).any() for _ in range(40)]
    assert sum(hits) < 10  # only liver centres close to the PVTT can include it
    for bad in ((1, 1, 1), (1, 0, 0, 0, 0), (1, -1, 1, 1, 1)):
        with pytest.raises(ValueError, match="class_ratios"):
            _PatchSampler(items, (8, 8, 8), seed=0, class_ratios=bad)

def test_train_short_epochs_time_budget_class_weights(tmp_path):
    cohort, out = tmp_path / "cohort", tmp_path / "run"
    _write_cohort(cohort)
    lines = []
    summary = train_segmentation(cohort, out, epochs=3, batch_size=2, patch_size=(16, 32, 32), val_fraction=0.34,
                                 seed=1, device="cpu", architecture_kwargs=TINY, log=lines.append,
                                 iterations_per_epoch=2, val_max_cases=1, coarse_fraction=0.5, flip_prob=0.0,
                                 class_weights=(1, 1, 3, 3, 3), time_budget_s=1e-6)
    # the budget is spent before the first batch: one iteration runs, then validation, checkpoint and stop
    assert summary["epochs_completed"] == 1 and any("time budget" in str(x) for x in lines)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["iterations"] == 1
    _, card = load_state(summary["model_path"])
    hp = card["hyperparameters"]
    assert hp["iterations_per_epoch"] == 2 and hp["class_weights"] == [1, 1, 3, 3, 3] and hp["val_max_cases"] == 1
    # a new run may start from those weights
    summary2 = train_segmentation(cohort, tmp_path / "run2", epochs=1, batch_size=2, patch_size=(16, 32, 32),
                                  val_fraction=0.34, seed=1, device="cpu", architecture_kwargs=TINY,
                                  log=lines.append, iterations_per_epoch=1, init_weights=summary["model_path"],
                                  cpu_precision="bf16")
    assert summary2["epochs_completed"] == 1 and any("starting from the weights" in str(x) for x in lines)
    # ... here in bfloat16 autocast on the CPU (training and validation), recorded in the log and the card
    log2 = [json.loads(line) for line in (tmp_path / "run2" / "train_log.jsonl").read_text().splitlines()]
    assert log2[-1]["precision"] == "bfloat16 autocast (CPU)" and math.isfinite(log2[-1]["train_loss"])
    assert load_state(summary2["model_path"])[1]["hyperparameters"]["precision"].startswith("bfloat16")
    with pytest.raises(ValueError, match="cpu_precision"):
        train_segmentation(cohort, tmp_path / "run3", epochs=1, device="cpu", cpu_precision="fp16")


def test_cohort_paths_must_stay_inside(tmp_path):
    cohort = tmp_path / "cohort"
    _write_cohort(cohort, n=1, shape=(8, 16, 16), followup=False)
    with open(cohort / "clinical.csv", "a") as fh:
        fh.write("../../outside,70\n")
    with pytest.raises(InputError, match="not a valid case name"):
        train_segmentation(cohort, tmp_path / "run", epochs=1, device="cpu", log=lambda *_: None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")
def test_segment_on_cuda_agrees_with_cpu(tiny_weights):
    art, _, geom = _sphere_case((24, 64, 64), (0.9, 1.3, 2.5), FLIP)
    arrays = {"arterial": art, "portal": art + 10}
    gpu = get_segmenter(tiny_weights, device="cuda")
    assert gpu.device.type == "cuda"
    on_gpu = gpu.segment(arrays, geom, postprocess=False)
    on_cpu = get_segmenter(tiny_weights, device="cpu").segment(arrays, geom, postprocess=False)
    assert on_gpu.shape == geom.shape and np.mean(on_gpu == on_cpu) > 0.95  # autocast: bf16/fp16 rounding only


# ---------------------------------------------------------------------------------------------------------------
# Decision rules tuned on a labelled cohort (segmentation.tuning): PVTT logit bias, lesion-confidence filter
# ---------------------------------------------------------------------------------------------------------------

def test_class_bias_and_tumour_probability_of_the_logits():
    from HCCTwinLib.segmentation.inference import logits_to_labels

    logits = np.zeros((5, 2, 3, 4), np.float32)
    logits[1] = 2.0  # liver everywhere ...
    logits[2, 0] = 3.0  # ... tumour in slice 0
    logits[4, 0, 0] = 2.5  # PVTT second best in one row of slice 0
    labels, prob = logits_to_labels(logits, tumor_prob=True)
    assert np.all(labels[0] == 2) and np.all(labels[1] == 1)
    soft = np.exp(logits) / np.exp(logits).sum(0)
    assert np.allclose(prob, soft[2] + soft[3], atol=1e-6)
    shifted = logits_to_labels(logits, class_bias=[0, 0, 0, 0, 1.0])
    assert np.all(shifted[0, 0] == 4) and np.all(shifted[0, 1:] == 2) and np.all(shifted[1] == 1)
    # the probability is the network's, not the shifted one
    assert np.allclose(logits_to_labels(logits, class_bias=[0, 0, 0, 0, 1.0], tumor_prob=True)[1], prob)
    with pytest.raises(ValueError, match="class_bias"):
        logits_to_labels(logits, class_bias=[0, 1.0])


def test_postprocess_drops_uncertain_tumour_components():
    lab = np.ones((20, 30, 30), np.uint8)
    lab[2:8, 2:8, 2:8] = 2  # confident lesion
    lab[12:16, 20:24, 20:24] = 3  # uncertain lesion
    prob = np.zeros(lab.shape, np.float32)
    prob[2:8, 2:8, 2:8] = 0.9
    prob[12:16, 20:24, 20:24] = 0.6
    spacing = (2.0, 2.0, 2.0)
    assert np.array_equal(postprocess(lab, spacing, tumor_prob=prob), postprocess(lab, spacing))  # threshold 0: off
    out = postprocess(lab, spacing, tumor_prob=prob, min_tumor_confidence=0.7)
    assert np.all(out[2:8, 2:8, 2:8] == 2) and np.all(out[12:16, 20:24, 20:24] == 1)
    assert not np.isin(postprocess(lab, spacing, tumor_prob=prob, min_tumor_confidence=0.95), (2, 3)).any()


def _tuning_item(pid, seed, *, with_pvtt=True, fp=True):
    """A hand-made 'network output' with a known best rule: the lesion is confident (p ~ 0.95), the false-positive
    blob is not (p ~ 0.62), the PVTT logit is second to tumour by 1.2 inside the thrombus."""
    rng = np.random.default_rng(seed)
    geom = Geometry(shape=(24, 40, 40), spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0))
    truth = np.zeros(geom.shape, np.uint8)
    truth[4:20, 5:35, 5:35] = 1
    truth[8:14, 10:18, 10:18] = 2
    if with_pvtt:
        truth[8:12, 24:30, 24:30] = 4
    logits = np.zeros((5, *geom.shape), np.float32)
    logits[0] = 4.0
    logits[0, truth > 0] = 0.0
    logits[1, truth == 1] = 4.0
    logits[2, truth == 2] = 4.0 + 3.0
    logits[1, truth == 2] = 4.0
    logits[2, truth == 4], logits[4, truth == 4] = 4.0, 2.8
    if fp:
        blob = (slice(14, 17), slice(26, 31), slice(8 + seed % 3, 13 + seed % 3))
        logits[2][blob] = 4.5  # argmax tumour, p ~ 0.62
    logits += rng.normal(0, 0.01, logits.shape).astype(np.float32)
    box = tuple(slice(0, s) for s in geom.shape)
    return {"patient_id": pid, "logits": logits.astype(np.float16), "box": box, "model_geometry": geom,
            "geometry": geom, "truth": truth}


def test_tuning_finds_the_pvtt_bias_and_the_confidence_threshold():
    from HCCTwinLib.segmentation.tuning import choose_confidence, choose_pvtt_bias, tune_from_logits

    items = [_tuning_item(f"T{i}", i, with_pvtt=i % 2 == 0) for i in range(4)]
    section = tune_from_logits(items, max_fp=0.2, pvtt_grid=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
                               confidence_grid=(0.5, 0.6, 0.7, 0.8))
    tuning = section["tuning"]
    assert section["class_bias"][:4] == [0.0] * 4 and section["class_bias"][4] == 1.5  # smallest bias that works
    assert tuning["chosen"]["pvtt"] == pytest.approx(1.0) and tuning["untuned"]["pvtt"] == 0.0
    assert section["min_tumor_confidence"] == 0.7  # lowest threshold without the false positives
    # untuned: the blob in every case, and the thrombus read as tumour in the two cases with PVTT
    assert tuning["untuned"]["fp_per_patient"] == 1.5 and tuning["chosen"]["fp_per_patient"] == 0.0
    assert tuning["chosen"]["sensitivity"] == 1.0 and tuning["n_cases"] == 4
    rows = {r["min_tumor_confidence"]: r for r in tuning["confidence_table"]}
    assert rows[0.6]["fp_per_patient"] == 1.0 and rows[0.8]["sensitivity"] == 1.0
    assert tuning["chosen"]["false_pvtt_fraction"] == 0.0 and tuning["chosen"]["pvtt_where_present"] == 1.0
    # the PVTT rule: best mean Dice among the biases that draw a thrombus in few patients without one
    bias_table = [{"pvtt_bias": 0.0, "mean": 0.60, "false_pvtt_fraction": 0.0},
                  {"pvtt_bias": 1.0, "mean": 0.62, "false_pvtt_fraction": 0.05},
                  {"pvtt_bias": 2.0, "mean": 0.64, "false_pvtt_fraction": 0.5}]
    assert choose_pvtt_bias(bias_table, 0.1)["pvtt_bias"] == 1.0
    assert choose_pvtt_bias(bias_table, 1.0)["pvtt_bias"] == 2.0
    assert choose_pvtt_bias(bias_table, 0.0)["pvtt_bias"] == 0.0
    # the rule: most sensitive under the limit; else fewest false positives
    table = [{"min_tumor_confidence": 0.5, "sensitivity": 0.9, "fp_per_patient": 0.5},
             {"min_tumor_confidence": 0.6, "sensitivity": 0.8, "fp_per_patient": 0.3},
             {"min_tumor_confidence": 0.7, "sensitivity": 0.7, "fp_per_patient": 0.3}]
    assert choose_confidence(table, 0.4)["min_tumor_confidence"] == 0.6
    assert choose_confidence(table, 0.1)["min_tumor_confidence"] == 0.6
    assert choose_confidence(table, 1.0)["min_tumor_confidence"] == 0.5


def _tuning_copy(tmp_path, tiny_weights):
    """``(tuning cohort of 2 cases, a copy of the tiny model with its card)`` under ``tmp_path``."""
    import shutil

    from HCCTwinLib.weights import card_path

    cohort = tmp_path / "tune"
    _write_cohort(cohort, n=2, followup=False)
    weights = tmp_path / "m" / "tiny_seg.safetensors"
    weights.parent.mkdir()
    shutil.copy(tiny_weights, weights)
    shutil.copy(card_path(tiny_weights), card_path(weights))
    return cohort, weights


def test_tune_command_writes_the_card_and_the_segmenter_uses_it(tmp_path, tiny_weights):
    from HCCTwinLib.cli import main
    from HCCTwinLib.weights import card_path, load_card, verify

    cohort, weights = _tuning_copy(tmp_path, tiny_weights)
    before = card_path(weights).read_text()
    assert main(["tune", "segmentation", "--cohort", str(cohort), "--weights", str(weights), "--device", "cpu",
                 "--dry-run", "--report", str(tmp_path / "tuning.json")]) == 0
    assert card_path(weights).read_text() == before
    report = json.loads((tmp_path / "tuning.json").read_text())
    assert report["tuning"]["n_cases"] == 2 and len(report["tuning"]["confidence_table"]) == 41
    assert main(["tune", "segmentation", "--cohort", str(cohort), "--weights", str(weights), "--device", "cpu",
                 "--max-fp", "0.5"]) == 0
    card = load_card(weights)
    assert card["postprocessing"]["tuning"]["max_fp"] == 0.5 and len(card["postprocessing"]["class_bias"]) == 5
    assert "confidence_table" not in card["postprocessing"]["tuning"]  # the tables stay in the report
    verify(weights)  # the weights and their sha256 are untouched
    clear_cache()
    seg = get_segmenter(weights, device="cpu")
    assert seg.class_bias == tuple(card["postprocessing"]["class_bias"])
    assert seg.min_tumor_confidence == card["postprocessing"]["min_tumor_confidence"]
    clear_cache()


class _TumourNet(torch.nn.Module):
    """Tumour (p ~ 0.72) where the arterial phase is bright, liver elsewhere; PVTT third in the bright part."""

    def forward(self, x):
        bright = (x[:, :1] > 0.5).float()
        zero = torch.zeros_like(bright)
        return torch.cat([zero - 5, zero + 1, bright * 2, zero - 5, bright * 3 - 5], dim=1)


def test_segmenter_applies_the_cards_lesion_confidence():
    art, inside, geom = _sphere_case((16, 32, 32), (1.5, 1.5, 3.0), radius_mm=9.0)
    phases = {"arterial": art, "portal": art}
    plain = Segmenter(_TumourNet(), _card(), "cpu").segment(phases, geom)
    assert np.isin(plain, (2, 3)).sum() > 0.5 * inside.sum()
    kept = Segmenter(_TumourNet(), _card(postprocessing={"min_tumor_confidence": 0.7}), "cpu").segment(phases, geom)
    assert np.array_equal(kept, plain)
    dropped = Segmenter(_TumourNet(), _card(postprocessing={"min_tumor_confidence": 0.8}), "cpu").segment(phases, geom)
    assert not np.isin(dropped, (2, 3)).any() and np.array_equal(dropped > 0, plain > 0)
    shifted = Segmenter(_TumourNet(), _card(postprocessing={"class_bias": [0, 0, 0, 0, 4.5]}), "cpu").segment(
        phases, geom)
    assert (shifted == 4).sum() > 0 and (shifted == 2).sum() == 0
    with pytest.raises(ModelFileError, match="class_bias"):
        Segmenter(_TumourNet(), _card(postprocessing={"class_bias": [0, 1]}), "cpu")


# ---------------------------------------------------------------------------------------------------------------
# The PVTT stage: a second network whose PVTT probability, at a tuned threshold, marks thrombus
# ---------------------------------------------------------------------------------------------------------------

class _PvttNet(torch.nn.Module):
    """PVTT probability rising with the portal phase (channel 1): ~0.2 where it is dark, ~0.9 where it is bright."""

    def forward(self, x):
        por = x[:, 1:2]
        zero = torch.zeros_like(por)
        return torch.cat([zero, zero, zero, zero, (por - 0.5) * 8.0 + 0.5], dim=1)


def _liver_with_thrombus():
    """A bright liver block (arterial) with a tube where the portal phase is bright: the stage's 'thrombus'."""
    geom = Geometry(shape=(16, 32, 32), spacing=(1.5, 1.5, 3.0), origin=(0.0, 0.0, 0.0))
    art = np.full(geom.shape, -100.0, np.float32)
    art[2:14, 4:28, 4:28] = 200.0
    por = np.full(geom.shape, -100.0, np.float32)
    tube = np.zeros(geom.shape, bool)
    tube[4:12, 14:18, 14:18] = True
    por[tube] = 250.0
    return {"arterial": art, "portal": por}, geom, tube


def test_pvtt_stage_marks_thrombus_at_its_threshold():
    phases, geom, tube = _liver_with_thrombus()
    main = Segmenter(_ThresholdNet(), _card(), "cpu")
    assert not (main.segment(phases, geom) == 4).any()
    stage = Segmenter(_PvttNet(), _card(name="tiny_pvtt"), "cpu")
    staged = Segmenter(_ThresholdNet(), _card(postprocessing={"pvtt_stage": {"min_probability": 0.8}}), "cpu",
                       pvtt_stage=stage)
    out = staged.segment(phases, geom)
    assert np.array_equal(out == 4, tube) and np.all(out[~tube] == main.segment(phases, geom)[~tube])
    assert staged.last_info["pvtt_stage"]["min_probability"] == 0.8
    # above the stage's highest probability: no thrombus
    strict = Segmenter(_ThresholdNet(), _card(postprocessing={"pvtt_stage": {"min_probability": 0.999}}), "cpu",
                       pvtt_stage=stage)
    assert not (strict.segment(phases, geom) == 4).any()
    # the thrombus (0.86 mL) is smaller than the card's smallest PVTT volume: dropped by the post-processing
    small = Segmenter(_ThresholdNet(), _card(postprocessing={"pvtt_stage": {"min_probability": 0.8,
                                                                            "min_volume_ml": 1.0}}), "cpu",
                      pvtt_stage=stage)
    assert small.pvtt_min_ml == 1.0 and not (small.segment(phases, geom) == 4).any()
    with pytest.raises(ModelFileError, match="spacing"):
        Segmenter(_ThresholdNet(), _card(), "cpu", pvtt_stage=Segmenter(_PvttNet(), _card(spacing_mm=[2, 2, 2]),
                                                                        "cpu"))
    no_pvtt = _card(architecture_kwargs=model_kwargs("DynUNet", **{**TINY, "out_channels": 4}))
    with pytest.raises(ModelFileError, match="no PVTT class"):
        Segmenter(_ThresholdNet(), _card(), "cpu", pvtt_stage=Segmenter(_PvttNet(), no_pvtt, "cpu"))


def test_pvtt_stage_named_in_the_card_is_loaded_and_pinned(tmp_path, tiny_weights):
    import shutil

    from HCCTwinLib.weights import card_path, load_card

    folder = tmp_path / "models"
    folder.mkdir()
    main, stage = folder / "tiny_seg.safetensors", folder / "tiny_pvtt.safetensors"
    torch.manual_seed(1)
    save_model(build_model("DynUNet", **TINY), stage, _card(name="tiny_pvtt"))
    shutil.copy(tiny_weights, main)
    card = load_card(tiny_weights)

    def write_card(pvtt_stage):
        card_path(main).write_text(json.dumps({**card, "postprocessing": {"pvtt_stage": pvtt_stage}}))
        clear_cache()

    write_card({"model": stage.name, "sha256": load_card(stage)["sha256"], "min_probability": 0.6})
    seg = get_segmenter(main, device="cpu")
    assert seg.pvtt_stage is not None and seg.pvtt_stage.path == stage and seg.pvtt_min_probability == 0.6
    write_card({"model": stage.name, "sha256": "0" * 64, "min_probability": 0.6})
    with pytest.raises(ModelFileError, match="tuned with"):
        get_segmenter(main, device="cpu")
    write_card({"model": "elsewhere.safetensors", "min_probability": 0.6})
    with pytest.raises(ModelFileError, match="missing"):
        get_segmenter(main, device="cpu")
    write_card({"model": "../tiny_pvtt.safetensors", "min_probability": 0.6})
    with pytest.raises(ModelFileError, match="file name next to the model"):
        get_segmenter(main, device="cpu")
    clear_cache()


def _staged_item(pid, seed, *, with_pvtt=True, false_blob=False):
    """A tuning item with a PVTT-stage probability: ~0.85 in the true thrombus (1.7 mL), ~0.55 in a false blob of
    the same size and 0.85 in a small false one (0.2 mL), both in the liver."""
    item = _tuning_item(pid, seed, with_pvtt=with_pvtt, fp=False)
    prob = np.full(item["truth"].shape, 0.01, np.float32)
    prob[item["truth"] == 4] = 0.85
    if false_blob:
        prob[14:18, 8:14, 8:14] = 0.55
        prob[6:8, 30:33, 8:11] = 0.85
    item["pvtt_prob"] = prob.astype(np.float16)
    return item


def test_tuning_chooses_the_pvtt_stage_threshold_or_rejects_the_stage():
    from HCCTwinLib.segmentation.tuning import choose_pvtt_stage, tune_from_logits

    items = [_staged_item(f"S{i}", i, with_pvtt=i % 2 == 0, false_blob=True) for i in range(4)]
    section = tune_from_logits(items, stage_grid=(0.3, 0.5, 0.6, 0.7, 0.9), volume_grid=(0.05, 0.5, 1.5),
                               confidence_grid=(0.5, 0.7))
    tuning = section["tuning"]
    # 0.3 and 0.5 draw the big blob; the small one needs a volume >= 0.5 mL to go; 0.9 finds nothing
    assert section["pvtt_stage"] == {"min_probability": 0.7, "min_volume_ml": 1.5}  # the strictest of the best
    assert section["class_bias"] == [0.0] * 5 and [r["pvtt_bias"] for r in tuning["pvtt_bias_table"]] == [0.0]
    rows = {(r["pvtt_min_probability"], r["pvtt_min_volume_ml"]): r for r in tuning["pvtt_stage_table"]}
    assert len(rows) == 15 and rows[(0.5, 1.5)]["false_pvtt_fraction"] == 1.0
    assert rows[(0.7, 0.05)]["false_pvtt_fraction"] == 1.0 and rows[(0.7, 0.5)]["false_pvtt_fraction"] == 0.0
    assert rows[(0.6, 0.5)]["mean"] == rows[(0.7, 1.5)]["mean"] > rows[(0.7, 0.05)]["mean"]
    assert rows[(0.7, 0.5)]["pvtt_where_present"] > 0.99 and rows[(0.9, 0.5)]["pvtt_where_present"] == 0.0
    assert tuning["chosen"]["pvtt_where_present"] > 0.99 and tuning["untuned"]["pvtt_where_present"] == 0.0
    # a stage that only finds thrombus together with false ones is not used
    bad = [_staged_item(f"B{i}", i, with_pvtt=i % 2 == 0, false_blob=True) for i in range(4)]
    for it in bad:
        it["pvtt_prob"] = np.where(it["pvtt_prob"] > 0.5, 0.85, 0.05).astype(np.float16)
    rejected = tune_from_logits(bad, stage_grid=(0.5, 0.7), volume_grid=(0.05,), confidence_grid=(0.5,))
    assert "pvtt_stage" not in rejected and "not used" in rejected["tuning"]["pvtt_stage_rejected"]
    assert choose_pvtt_stage([{"pvtt_min_probability": 0.5, "mean": 0.7, "false_pvtt_fraction": 0.0,
                               "pvtt_where_present": 0.0}], 0.1) is None
    assert "pvtt_off" not in rejected["tuning"]  # its argmax draws no false thrombus: left as it is


def test_tuning_turns_pvtt_off_when_no_rule_keeps_false_thrombus_rare():
    """A network whose argmax draws a thrombus in every patient without one, and whose stage probability cannot
    separate true from false ones (a single-phase model): PVTT is not drawn at all."""
    from HCCTwinLib.segmentation.tuning import PVTT_OFF_BIAS, tune_from_logits

    items = [_staged_item(f"F{i}", i, with_pvtt=i % 2 == 0, false_blob=True) for i in range(4)]
    for it in items:
        it["pvtt_prob"] = np.where(it["pvtt_prob"] > 0.5, 0.85, 0.05).astype(np.float16)
        logits = it["logits"].astype(np.float32)
        logits[4, 14:18, 8:14, 8:14] = 9.0  # a false thrombus at the argmax in every patient
        it["logits"] = logits.astype(np.float16)
    section = tune_from_logits(items, stage_grid=(0.5, 0.7), volume_grid=(0.05,), confidence_grid=(0.5,))
    chosen = section["tuning"]["chosen"]
    assert section["class_bias"][4] == PVTT_OFF_BIAS and "not drawn" in section["tuning"]["pvtt_off"]
    assert chosen["pvtt_bias"] == PVTT_OFF_BIAS and chosen["false_pvtt_fraction"] == 0.0
    assert chosen["pvtt_where_present"] == 0.0 and "pvtt_stage" not in section
    assert section["tuning"]["untuned"]["false_pvtt_fraction"] == 1.0


def test_train_command_pvtt_stage_settings_reach_the_trainer(monkeypatch, tmp_path):
    import HCCTwinLib.segmentation as segpkg
    from HCCTwinLib.cli import main
    from HCCTwinLib.segmentation.train import PVTT_STAGE_SETTINGS

    seen = {}

    def fake_train(cohort, out, **kwargs):
        seen.update(kwargs)
        return {"model_path": str(out)}

    monkeypatch.setattr(segpkg, "train_segmentation", fake_train)
    assert main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "m"), "--pvtt-stage",
                 "--init-weights", "main.safetensors", "--epochs", "3"]) == 0
    assert seen["name"] == "hcctwin_seg_pvtt" and seen["init_weights"] == "main.safetensors"
    assert tuple(seen["class_weights"]) == PVTT_STAGE_SETTINGS["class_weights"]
    assert seen["class_ratios"][4] == max(seen["class_ratios"]) and seen["epochs"] == 3
    assert main(["train", "generator", "--cohort", str(tmp_path), "--out", str(tmp_path / "g"), "--pvtt-stage"]) == 2
    seen.clear()
    assert main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "m"), "--appearance",
                 "0.6", "--phase-dropout", "0.3"]) == 0
    assert seen["appearance_prob"] == 0.6 and seen["phase_dropout"] == 0.3 and "name" not in seen
    seen.clear()
    assert main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--phase-dropout", "1"]) == 0
    assert seen["phase_dropout"] == 1.0 and seen["name"] == "hcctwin_seg_single_phase"  # not the main model's name
    assert main(["train", "segmentation", "--cohort", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--phase-dropout", "1.5"]) == 2
    assert main(["train", "generator", "--cohort", str(tmp_path), "--out", str(tmp_path / "g"),
                 "--appearance", "0.5"]) == 2


class _ThrombusIntensityNet(torch.nn.Module):
    """PVTT logit peaked at the intensities _write_cohort gives the thrombus (arterial 80 HU, portal 60 HU)."""

    def forward(self, x):
        a, p = x[:, :1], x[:, 1:2]
        zero = torch.zeros_like(a)
        peak = 4.0 - ((a - 0.56) / 0.03) ** 2 - ((p - 0.52) / 0.03) ** 2
        return torch.cat([zero, zero, zero, zero, peak], dim=1)


def test_tune_command_with_a_pvtt_model(tmp_path, tiny_weights, monkeypatch):
    import shutil
    from pathlib import Path

    import HCCTwinLib.segmentation as segpkg
    from HCCTwinLib.cli import main
    from HCCTwinLib.segmentation.tuning import PVTT_STAGE_GRID, PVTT_VOLUME_GRID_ML
    from HCCTwinLib.weights import card_path, load_card

    cohort = tmp_path / "tune"
    _write_cohort(cohort, n=2, followup=False)
    folder = tmp_path / "m"
    folder.mkdir()
    weights, stage = folder / "tiny_seg.safetensors", folder / "tiny_pvtt.safetensors"
    shutil.copy(tiny_weights, weights)
    shutil.copy(card_path(tiny_weights), card_path(weights))
    torch.manual_seed(3)
    save_model(build_model("DynUNet", **TINY), stage, _card(name="tiny_pvtt"))
    elsewhere = tmp_path / "other" / "tiny_pvtt.safetensors"
    elsewhere.parent.mkdir()
    shutil.copy(stage, elsewhere)
    shutil.copy(card_path(stage), card_path(elsewhere))

    # deterministic 'networks' behind the real files: the main model finds the organ, the stage the thrombus
    def fake_get_segmenter(path, device="auto", **options):
        path = Path(path)
        net = _ThrombusIntensityNet() if path.stem == "tiny_pvtt" else _ThresholdNet()
        return Segmenter(net, load_card(path), "cpu", path=path)

    monkeypatch.setattr(segpkg, "get_segmenter", fake_get_segmenter)
    assert main(["tune", "segmentation", "--cohort", str(cohort), "--weights", str(weights), "--device", "cpu",
                 "--pvtt-model", str(elsewhere), "--dry-run"]) == 2
    assert main(["tune", "segmentation", "--cohort", str(cohort), "--weights", str(weights), "--device", "cpu",
                 "--pvtt-model", str(stage), "--report", str(tmp_path / "t.json")]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    rows = report["tuning"]["pvtt_stage_table"]
    assert len(rows) == len(PVTT_STAGE_GRID) * len(PVTT_VOLUME_GRID_ML)
    assert "pvtt_stage_rejected" not in report["tuning"]
    card = load_card(weights)["postprocessing"]
    chosen = next(r for r in rows if r["pvtt_min_probability"] == card["pvtt_stage"]["min_probability"]
                  and r["pvtt_min_volume_ml"] == card["pvtt_stage"]["min_volume_ml"])
    assert chosen["pvtt_where_present"] > 0.5 and chosen["mean"] == max(r["mean"] for r in rows)
    assert report["tuning"]["untuned"]["pvtt_where_present"] == 0.0
    assert card["pvtt_stage"]["model"] == stage.name and card["pvtt_stage"]["sha256"] == load_card(stage)["sha256"]
    assert "pvtt_stage_table" not in card["tuning"]
    monkeypatch.undo()
    clear_cache()
    seg = get_segmenter(weights, device="cpu")  # the real loader: the stage named in the card, pinned by sha256
    assert seg.pvtt_stage is not None and seg.pvtt_stage.path == stage
    clear_cache()


class _EagerPvttNet(torch.nn.Module):
    """Liver where the arterial phase is bright; PVTT the argmax wherever the portal phase is bright too, with a
    probability that is high (~0.95) only where the portal phase is very bright (the 'true' thrombus)."""

    def forward(self, x):
        a, p = x[:, :1], x[:, 1:2]
        bright = (a > 0.5).float()
        zero = torch.zeros_like(a)
        return torch.cat([(0.5 - a) * 20, bright * 2.0, zero - 5, zero - 5, bright * (2.1 + (p - 0.5) * 12)], dim=1)


def test_model_as_its_own_pvtt_stage(tmp_path):
    from HCCTwinLib.segmentation.inference import SELF_STAGE
    from HCCTwinLib.weights import card_path, load_card

    phases, geom, tube = _liver_with_thrombus()
    band = np.zeros(tube.shape, bool)
    band[2:14, 12:20, 4:28] = True
    phases["portal"][band] = 62.0  # p4 ~0.6 in a band around the tube: the argmax draws thrombus there
    phases["portal"][tube] = 290.0  # 'true' thrombus: p4 ~1
    plain = Segmenter(_EagerPvttNet(), _card(), "cpu").segment(phases, geom)
    assert (plain == 4).sum() > 3 * tube.sum()  # the argmax draws thrombus all over the band
    own = Segmenter(_EagerPvttNet(), _card(postprocessing={"pvtt_stage": {"min_probability": 0.9}}), "cpu",
                    pvtt_stage=SELF_STAGE)
    assert own.pvtt_stage is own
    out = own.segment(phases, geom)
    assert np.array_equal(out == 4, tube) and np.all(out[(plain > 0) & ~tube] == 1)
    assert own.last_info["pvtt_stage"]["model"] == "itself"
    # the tuning reads the same probability from the one pass
    logits, box, mgeom, _, pvtt = own.model_grid_logits(phases, geom, pvtt_model=own)
    assert pvtt is not None and pvtt.shape == logits.shape[1:]
    soft = torch.softmax(torch.as_tensor(logits.astype(np.float32)), 0)[4].numpy()
    assert np.allclose(pvtt.astype(np.float32), soft, atol=2e-3)
    # a card that names the model itself: loaded as its own stage, pinned by its own sha256
    path = tmp_path / "own.safetensors"
    save_model(build_model("DynUNet", **TINY), path, _card(name="own"))
    card = load_card(path)
    card_path(path).write_text(json.dumps({**card, "postprocessing": {"pvtt_stage": {
        "model": path.name, "sha256": card["sha256"], "min_probability": 0.4}}}))
    clear_cache()
    seg = get_segmenter(path, device="cpu")
    assert seg.pvtt_stage is seg and seg.pvtt_min_probability == 0.4
    card_path(path).write_text(json.dumps({**card, "postprocessing": {"pvtt_stage": {
        "model": path.name, "sha256": "f" * 64, "min_probability": 0.4}}}))
    clear_cache()
    with pytest.raises(ModelFileError, match="itself"):
        get_segmenter(path, device="cpu")
    clear_cache()


# ---------------------------------------------------------------------------------------------------------------
# Test-time mirroring: the softmax averaged over mirrored copies, tuned with the decision rules and kept in the card
# ---------------------------------------------------------------------------------------------------------------

class _RampNet(torch.nn.Module):
    """Liver logit rising along I (the window's last axis) whatever the image: not mirror-symmetric."""

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=torch.float32) * 0.5 - 1.0
        one = torch.ones_like(x[:, :1])
        return torch.cat([one * 0, one * ramp, one - 3, one - 3, one - 3], dim=1)


def test_mirror_sets_are_every_subset_and_validated():
    from HCCTwinLib.segmentation.inference import mirror_sets

    assert mirror_sets(()) == [()]
    assert mirror_sets([2]) == [(), (2,)]
    assert sorted(mirror_sets([2, 1, 2])) == sorted([(), (1,), (2,), (1, 2)])
    assert len(set(mirror_sets((0, 1, 2)))) == 8
    with pytest.raises(ValueError, match="spatial axes"):
        mirror_sets([3])


def test_mirrored_logits_average_the_mirrored_softmax():
    from HCCTwinLib.segmentation.inference import sliding_window_logits

    image = np.random.default_rng(0).random((2, 4, 4, 6)).astype(np.float32)
    kw = {"roi_size": (4, 4, 6), "device": "cpu"}  # one window: the blended logits are the network's own
    plain = sliding_window_logits(_RampNet(), image, **kw)
    p_plain = torch.softmax(plain, 0).numpy()
    mirrored = sliding_window_logits(_RampNet(), image, mirror_axes=[2], **kw)
    p_mirror = torch.softmax(mirrored, 0).numpy()
    expected = (p_plain + p_plain[..., ::-1]) / 2
    assert np.allclose(p_mirror, expected, atol=1e-5)
    assert np.allclose(p_mirror[1], p_mirror[1][..., ::-1], atol=1e-5)  # the ramp is now symmetric
    assert not np.allclose(p_plain[1], p_mirror[1], atol=1e-2)
    # mirroring along axes the network's output does not depend on changes nothing
    assert np.allclose(torch.softmax(sliding_window_logits(_RampNet(), image, mirror_axes=[0, 1], **kw), 0).numpy(),
                       p_plain, atol=1e-5)
    # a voxel-wise network is mirror-equivariant: the same probabilities over many windows too
    big = np.random.default_rng(1).random((2, 12, 20, 20)).astype(np.float32)
    seen = []
    once = sliding_window_logits(_ThresholdNet(), big, roi_size=(8, 16, 16), device="cpu")
    thrice = sliding_window_logits(_ThresholdNet(), big, roi_size=(8, 16, 16), device="cpu", mirror_axes=(0, 1, 2),
                                   progress=lambda f, m: seen.append(m))
    assert np.allclose(torch.softmax(once, 0).numpy(), torch.softmax(thrice, 0).numpy(), atol=1e-5)
    assert seen[-1].endswith("/64") and "64/64" in seen[-1]  # 8 windows x 8 mirrored copies


def test_segmenter_applies_the_cards_mirroring(tmp_path):
    art, inside, geom = _sphere_case((16, 32, 32), (1.5, 1.5, 3.0), radius_mm=9.0)
    phases = {"arterial": art, "portal": art}
    plain = Segmenter(_RampNet(), _card(patch_size_kji=[16, 32, 32]), "cpu")
    mirrored = Segmenter(_RampNet(), _card(patch_size_kji=[16, 32, 32], postprocessing={"mirror_axes": [2]}), "cpu")
    assert plain.mirror_axes == () and mirrored.mirror_axes == (2,)
    a = plain.segment(phases, geom, postprocess=False)
    b = mirrored.segment(phases, geom, postprocess=False)
    assert mirrored.last_info["mirror_axes"] == [2]
    # the ramp makes the plain output liver on one side only; mirrored, both sides agree
    assert not np.array_equal(a, a[..., ::-1]) and np.array_equal(b, b[..., ::-1])
    for bad in ([5], ["x"], 3):
        with pytest.raises(ModelFileError, match="mirror_axes"):
            Segmenter(_RampNet(), _card(postprocessing={"mirror_axes": bad}), "cpu")


def test_tune_command_sets_the_mirroring_in_the_card(tmp_path, tiny_weights):
    from HCCTwinLib.cli import build_parser, main
    from HCCTwinLib.weights import load_card

    cohort, weights = _tuning_copy(tmp_path, tiny_weights)
    clear_cache()
    assert main(["tune", "segmentation", "--cohort", str(cohort), "--weights", str(weights), "--device", "cpu",
                 "--mirror-axes", "2,1"]) == 0
    assert load_card(weights)["postprocessing"]["mirror_axes"] == [1, 2]
    clear_cache()
    assert get_segmenter(weights, device="cpu").mirror_axes == (1, 2)
    # re-tuning without the option keeps the card's mirroring; 'none' turns it off
    clear_cache()
    assert main(["tune", "segmentation", "--cohort", str(cohort), "--weights", str(weights), "--device", "cpu"]) == 0
    assert load_card(weights)["postprocessing"]["mirror_axes"] == [1, 2]
    clear_cache()
    assert main(["tune", "segmentation", "--cohort", str(cohort), "--weights", str(weights), "--device", "cpu",
                 "--mirror-axes", "none"]) == 0
    assert load_card(weights)["postprocessing"]["mirror_axes"] == []
    clear_cache()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "segmentation", "--cohort", "x", "--mirror-axes", "3"])


# ---------------------------------------------------------------------------------------------------------------
# Small lesions in training: lesion-wise patch centres and a size-weighted cross-entropy
# ---------------------------------------------------------------------------------------------------------------

def _two_lesion_volume():
    """A liver block with one large (4 x 10 x 10 = 400 voxels) and one small (2 x 2 x 2 = 8 voxels) tumour."""
    lbl = np.zeros((12, 40, 40), np.uint8)
    lbl[1:11, 2:38, 2:38] = 1
    lbl[2:6, 5:15, 5:15] = 2
    lbl[8:10, 30:32, 30:32] = 3
    return lbl


def test_small_lesion_weights_follow_the_lesion_volume():
    from HCCTwinLib.segmentation.train import SMALL_LESION_REF_ML, small_lesion_weights

    lbl = _two_lesion_volume()
    voxel_ml = SMALL_LESION_REF_ML / 400  # the large lesion is exactly the reference volume: weight 1
    w = small_lesion_weights(lbl, voxel_ml, max_weight=10)
    assert w.dtype == np.uint8 and w.min() == 1
    assert np.all(w[2:6, 5:15, 5:15] == 1)
    assert np.all(w[8:10, 30:32, 30:32] == 10)  # 400 / 8 = 50, capped at 10
    assert w[7, 30, 30] == 10 and w[8, 29, 30] == 10 and w[7, 29, 29] == 1  # the 6-connected ring, no corners
    assert np.all(small_lesion_weights(lbl, voxel_ml, max_weight=100)[8:10, 30:32, 30:32] == 50)
    assert np.all(small_lesion_weights(lbl, voxel_ml, max_weight=1) == 1)
    assert np.all(small_lesion_weights(np.ones_like(lbl), voxel_ml, 10) == 1)


def test_lesion_sampling_centres_small_lesions_and_batches_carry_weights(tmp_path):
    from HCCTwinLib.segmentation.train import _PatchSampler, weighted_ce

    lbl = _two_lesion_volume()
    lbl[lbl == 3] = 2  # both lesions viable: per voxel the large one gets 400 of 408 centres
    img = np.zeros((2, *lbl.shape), np.float16)
    img[0] = (np.arange(lbl.shape[1]) / lbl.shape[1])[None, :, None]  # channel 0 tells where a patch came from
    np.save(tmp_path / "a.img.npy", img)
    np.save(tmp_path / "a.lbl.npy", lbl[None])
    items = [(tmp_path / "a.img.npy", tmp_path / "a.lbl.npy")]
    ratios = (0, 0, 1, 0, 0)  # centres on viable tumour only

    def small_share(sampler):  # the small lesion lies at j = 30-31, the large one at j = 5-14
        return float(np.mean([sampler.batch(1)[0][0, 0].mean() > 0.6 for _ in range(300)]))

    by_voxel = _PatchSampler(items, (4, 4, 4), seed=0, flip_prob=0.0, class_ratios=ratios)
    by_lesion = _PatchSampler(items, (4, 4, 4), seed=0, flip_prob=0.0, class_ratios=ratios, lesion_sampling=True)
    assert small_share(by_voxel) < 0.08 and 0.38 < small_share(by_lesion) < 0.62
    with pytest.raises(ValueError, match="voxel_ml"):
        _PatchSampler(items, (4, 4, 4), seed=0, small_lesion_weight=10)
    weighted = _PatchSampler(items, (4, 4, 4), seed=0, flip_prob=0.5, class_ratios=ratios, lesion_sampling=True,
                             small_lesion_weight=10, voxel_ml=4.0 / 400)
    x, y, w = weighted.batch(3)
    assert x.shape == (3, 2, 4, 4, 4) and y.shape == w.shape == (3, 1, 4, 4, 4) and w.dtype == np.float32
    assert np.all(w[y == 2] >= 1) and w.max() == 10
    # the weighted CE is the plain CE with uniform weights and leans on the heavy voxels otherwise
    logits = torch.randn(3, 5, 4, 4, 4)
    yt, wt = torch.from_numpy(y), torch.from_numpy(w)
    plain = torch.nn.functional.cross_entropy(logits, yt[:, 0])
    assert torch.allclose(weighted_ce(logits, yt, torch.ones_like(wt)), plain)
    heavy = torch.zeros_like(wt)
    heavy[0, 0, 0, 0, 0] = 1.0
    ce0 = torch.nn.functional.cross_entropy(logits[:1, :, :1, :1, :1], yt[:1, 0, :1, :1, :1])
    assert torch.allclose(weighted_ce(logits, yt, heavy), ce0)


# ---------------------------------------------------------------------------------------------------------------
# Thin scans: a crop smaller than the window is padded by repeating its edge slices, not with air
# ---------------------------------------------------------------------------------------------------------------

class _WindowMeanNet(torch.nn.Module):
    """Liver logit = the mean of the window's first channel minus 0.5: liver only where the whole window looks bright
    (what padding a thin bright slab with zeros takes away)."""

    def forward(self, x):
        mean = x[:, :1].mean(dim=(2, 3, 4), keepdim=True).expand_as(x[:, :1])
        one = torch.ones_like(x[:, :1])
        return torch.cat([one * 0, (mean - 0.5) * 20, one - 9, one - 9, one - 9], dim=1)


def test_thin_scans_are_padded_with_their_edge_slices():
    from HCCTwinLib.segmentation.inference import PADDING_MODE, sliding_window_logits

    slab = np.full((2, 3, 8, 8), 0.9, np.float32)  # 3 bright slices, window of 8: 5 slices of padding
    kw = {"roi_size": (8, 8, 8), "device": "cpu"}
    assert PADDING_MODE == "replicate"
    assert float(sliding_window_logits(_WindowMeanNet(), slab, **kw)[1].min()) > 7  # mean 0.9: liver
    zero_padded = sliding_window_logits(_WindowMeanNet(), slab, padding_mode="constant", **kw)
    assert float(zero_padded[1].max()) < 0  # mean 0.9 * 3/8: not liver
    # the Segmenter passes its padding mode down (stage 2 and the coarse stage)
    art, inside, geom = _sphere_case((4, 32, 32), (1.5, 1.5, 3.0), radius_mm=40.0)
    phases = {"arterial": np.full(art.shape, 250.0, np.float32), "portal": np.full(art.shape, 250.0, np.float32)}
    seg = Segmenter(_WindowMeanNet(), _card(patch_size_kji=[16, 32, 32]), "cpu")
    assert seg.padding_mode == "replicate"
    assert (seg.segment(phases, geom, postprocess=False) == 1).all()
    assert seg.last_info["padded"]["window_kji"] == [16, 32, 32] and seg.last_info["padded"]["crop_kji"][0] < 16
    assert "read in windows of 16 x 32 x 32 (its edges repeated to fill them)" in seg.describe()  # in the provenance
    seg.padding_mode = "constant"
    assert (seg.segment(phases, geom, postprocess=False) == 0).all()
    assert "(constant padding)" in seg.describe()
    big, _, big_geom = _sphere_case((20, 32, 32), (1.5, 1.5, 3.0), radius_mm=9.0)
    seg.segment({"arterial": big, "portal": big}, big_geom, postprocess=False)  # fills the window: no padding
    assert "padded" not in seg.last_info and "read in windows" not in seg.describe()
    assert (seg.predict_model_grid(np.full((2, 4, 32, 32), 0.9, np.float32)) == 0).all()
    seg.padding_mode = "replicate"
    assert (seg.predict_model_grid(np.full((2, 4, 32, 32), 0.9, np.float32)) == 1).all()
