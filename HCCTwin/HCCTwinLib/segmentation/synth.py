"""Training images synthesised from the simulator's tissue maps (issue 22: a segmentation that holds on real CT).

The simulator's CT has one appearance per tissue: a network trained on it learns the simulator's HU, contrast timing,
noise and sharpness, and on a real scan draws liver into the stomach. SynthSeg (Billot et al., Med Image Anal 2023)
trains instead on images *generated from label maps* with an appearance drawn at random for every training patch,
so the network has to recognise organs by shape and context. Here the label maps are the simulator's full anatomy:
33 tissues (:class:`HCCTwinLib.simulate.anatomy.T`: body wall, ribs, spine, lungs and heart base, stomach with gas
and fluid, bowel, spleen, kidneys, pancreas, great vessels, the intrahepatic portal and hepatic veins, ...) plus the
patient's lesions (viable tumour, necrosis, PVTT) at a visit.

* :func:`synth_volume` draws one simulated patient at one visit as a *class map* (tissue codes, lesions on top) and
  the training labels, both on the model grid.
* :func:`prepare_synthetic` caches ``n`` of them (``.npy``, memory-mapped by the patch sampler of :mod:`.train`).
* :func:`template_volume` / :func:`prepare_templates` do the same for *real* anatomy: label maps of real abdomens
  (e.g. CHAOS, 20 livers with kidneys and spleen outlined on T2 MRI, CC BY-SA 4.0) whose unlabelled body is split
  into pseudo-tissues by clustering the intensities of their own image (as SynthSeg does for unlabelled structures),
  upsampled to the model grid with smooth per-class interpolation. The images themselves are never used: only the
  shapes reach the network, through :func:`synthesize`.
* :func:`synthesize` turns a class-map patch into a two-phase image patch, normalised like a real input (card window):
  per class a mean HU per phase drawn either around CT values with random contrast timing (unenhanced to late
  arterial, oral contrast or not, lipiodol in necrosis sometimes) or uniformly over the window (SynthSeg's fully
  random mode), a random within-class spread, partial-volume blur, a smooth bias field, slice-thickness blur along z
  (thin to 7 mm), correlated noise of random strength; with ``phase_dropout`` one synthetic phase on both channels.

Every draw comes from the caller's ``numpy.random.Generator`` (reproducible for a seed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import labels as L

#: class codes beyond the simulator's tissues: the lesions drawn on top
VIABLE, NECROSIS, PVTT_CLASS = 33, 34, 35
#: pseudo-tissues of a template's unlabelled body (intensity clusters of its own image, :func:`template_volume`)
CLUSTER_CODES = (36, 37, 38, 39, 40, 41)
N_CLASSES = 42
CACHE_VERSION = 1

DESCRIPTION = ("synthetic training images (SynthSeg-style) from {n} simulated tissue maps (33 tissues + viable "
               "tumour, necrosis, PVTT; simulator seed {seed}) drawn for {p:.0%} of the patches: per-class HU per "
               "phase either CT-like with random contrast timing (x0-1.4 enhancement, +-25 HU per class, oral "
               "contrast p=0.3, lipiodol in necrosis p=0.15) or uniform over the window (p=0.4), within-class SD "
               "0-25 HU, blur sigma 0.3-1.3 voxel in plane and 0-1.3 along z, bias field +-40 HU, correlated noise "
               "SD 2-30 HU, one phase on both channels p={d}")


def _tissue_codes():
    from ..simulate.anatomy import BASE_HU, T

    return T, BASE_HU


def synth_volume(seed: int, index: int, spacing_mm: Sequence[float], week: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Class map and labels (uint8, ``(K, J, I)`` on the model grid of ``spacing_mm`` (x, y, z)) of simulated
    patient ``index`` of cohort ``seed``, at ``week`` under its own regimen (None: the pre-treatment scan)."""
    from ..simulate.patient import baseline_trajectory, sample_patient
    from ..simulate.render import PatientRenderer

    model = sample_patient(int(seed), int(index))
    renderer = PatientRenderer(model)
    traj = baseline_trajectory(model) if week is None else model.trajectories[model.regimen]
    labels = renderer.render(traj, 0 if week is None else int(week))["labels"]
    classes = renderer.static.tissue.copy()
    classes[labels == L.VIABLE_TUMOR] = VIABLE
    classes[labels == L.NECROSIS] = NECROSIS
    classes[labels == L.PVTT] = PVTT_CLASS
    # liver replaced by nothing else keeps its tissue code; tumour drawn over other tissue keeps the lesion code
    sp_kji = np.array([renderer.grid.spacing[2], renderer.grid.spacing[1], renderer.grid.spacing[0]], float)
    target = np.array([float(spacing_mm[2]), float(spacing_mm[1]), float(spacing_mm[0])])
    shape = np.maximum(np.rint(np.array(classes.shape) * sp_kji / target).astype(int), 1)
    zoom = shape / np.array(classes.shape)
    cls = ndimage.zoom(classes, zoom, order=0, mode="nearest", grid_mode=True)
    lbl = ndimage.zoom(labels, zoom, order=0, mode="nearest", grid_mode=True)
    return cls.astype(np.uint8), lbl.astype(np.uint8)


def prepare_synthetic(cache_dir: str | Path, n: int, seed: int, spacing_mm: Sequence[float], *,
                      log=None) -> list[tuple[Path, Path]]:
    """``n`` synthetic class maps + labels of cohort ``seed`` cached under ``cache_dir`` (re-used when present);
    returns ``(classes.npy, labels.npy)`` paths (classes ``(1, K, J, I)``, labels ``(1, K, J, I)``). Every third
    patient is drawn at a follow-up visit (weeks 8-24) so necrosis and shrunken lesions are represented."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(int(n)):
        week = None if i % 3 else (8, 16, 24)[(i // 3) % 3]
        stem = f"synth{int(seed):04d}-{i:05d}"
        cls_p, lbl_p, meta_p = (cache / f"{stem}.{s}" for s in ("cls.npy", "lbl.npy", "json"))
        meta = {"version": CACHE_VERSION, "seed": int(seed), "index": i, "week": week,
                "spacing_mm": [float(s) for s in spacing_mm]}
        try:
            if cls_p.is_file() and lbl_p.is_file() and json.loads(meta_p.read_text()) == meta:
                out.append((cls_p, lbl_p))
                continue
        except (OSError, json.JSONDecodeError):
            pass
        cls, lbl = synth_volume(seed, i, spacing_mm, week)
        np.save(cls_p, cls[None])
        np.save(lbl_p, lbl[None])
        meta_p.write_text(json.dumps(meta))
        out.append((cls_p, lbl_p))
        if log is not None and (i + 1) % 10 == 0:
            log(f"[synthetic] {i + 1}/{n} tissue maps")
    return out


def template_volume(image_path: str | Path, label_path: str | Path, spacing_mm: Sequence[float],
                    n_clusters: int = len(CLUSTER_CODES)) -> tuple[np.ndarray, np.ndarray]:
    """Class map and labels (uint8 ``(K, J, I)`` on the model grid of ``spacing_mm``) of one real abdomen from a
    label map in the CHAOS convention (1 liver, 2 right kidney, 3 left kidney, 4 spleen, 0 the rest) and its image
    (any modality: only its intensity clusters inside the body are used, as pseudo-tissues)."""
    from ..io import read_image
    from ..simulate.anatomy import T
    from .preprocessing import model_grid, resample_to

    labels, geom = read_image(label_path)
    image, igeom = read_image(image_path)
    labels = np.rint(np.asarray(labels)).astype(np.int16)
    image = np.asarray(image, np.float32)
    if image.shape != labels.shape:
        raise ValueError(f"{image_path}: image and label map differ in shape")
    # body: the image above a low threshold, holes filled; unlabelled body voxels clustered by intensity
    lo, hi = np.percentile(image, (50, 99.5))
    body = ndimage.binary_closing(image > 0.03 * hi, structure=np.ones((1, 7, 7), bool))
    body = ndimage.binary_fill_holes(ndimage.binary_opening(body, iterations=2))
    classes = np.zeros(labels.shape, np.int16)
    free = body & (labels == 0)
    vals = image[free]
    edges = np.quantile(vals, np.linspace(0.0, 1.0, n_clusters + 1)[1:-1]) if vals.size else []
    classes[free] = np.asarray(CLUSTER_CODES[:n_clusters], np.int16)[np.searchsorted(edges, vals)]
    for value, code in ((1, T.LIVER), (2, T.KCORTEX), (3, T.KCORTEX), (4, T.SPLEEN)):
        classes[labels == value] = code
    # smooth per-class interpolation onto the model grid (thick MRI slices become smooth surfaces)
    target = model_grid(geom, spacing_mm)
    codes = np.unique(classes)
    best = np.full(target.shape, -1.0, np.float32)
    out = np.zeros(target.shape, np.uint8)
    for code in codes:
        onehot = ndimage.gaussian_filter((classes == code).astype(np.float32), (0.0, 0.7, 0.7))
        prob = np.asarray(resample_to(onehot, geom, target, default_value=0.0 if code else 1.0), np.float32)
        better = prob > best
        out[better] = code
        best[better] = prob[better]
    lbl = (out == T.LIVER).astype(np.uint8)
    return out, lbl


def prepare_templates(folder: str | Path, cache_dir: str | Path, spacing_mm: Sequence[float], *,
                      log=None) -> list[tuple[Path, Path]]:
    """Every ``label_<id>.nii.gz`` + ``image_<id>.nii.gz`` pair of ``folder`` as a cached class map + labels
    (:func:`template_volume`); returns ``(classes.npy, labels.npy)`` paths like :func:`prepare_synthetic`."""
    folder, cache = Path(folder), Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    pairs = sorted((p, p.with_name(p.name.replace("label_", "image_", 1))) for p in folder.glob("label_*.nii*"))
    pairs = [(lbl, img) for lbl, img in pairs if img.is_file()]
    if not pairs:
        raise ValueError(f"{folder}: no label_<id>.nii.gz with image_<id>.nii.gz next to it")
    out = []
    for lbl_path, img_path in pairs:
        stem = "tmpl-" + lbl_path.name.split(".")[0].replace("label_", "", 1)
        cls_p, lbl_p, meta_p = (cache / f"{stem}.{s}" for s in ("cls.npy", "lbl.npy", "json"))
        meta = {"version": CACHE_VERSION, "source": [lbl_path.name, lbl_path.stat().st_size, img_path.name,
                                                     img_path.stat().st_size],
                "spacing_mm": [float(s) for s in spacing_mm]}
        try:
            if cls_p.is_file() and lbl_p.is_file() and json.loads(meta_p.read_text()) == meta:
                out.append((cls_p, lbl_p))
                continue
        except (OSError, json.JSONDecodeError):
            pass
        cls, lbl = template_volume(img_path, lbl_path, spacing_mm)
        np.save(cls_p, cls[None])
        np.save(lbl_p, lbl[None])
        meta_p.write_text(json.dumps(meta))
        out.append((cls_p, lbl_p))
        if log is not None:
            log(f"[synthetic] template {lbl_path.name}: {int(lbl.sum()) * float(np.prod(spacing_mm)) / 1000:.0f} mL "
                f"liver")
    return out


def class_means(rng: np.random.Generator, window_hu: Sequence[float], n_channels: int = 2) -> np.ndarray:
    """Mean HU per class and channel (``(n_channels, N_CLASSES)``) for one synthetic image."""
    T, base = _tissue_codes()
    lo, hi = float(window_hu[0]), float(window_hu[1])
    means = np.zeros((n_channels, N_CLASSES), np.float32)
    fixed = {T.AIR: -1000.0, T.GAS: -990.0, T.LUNG: float(rng.uniform(-920, -780))}
    if rng.random() < 0.4:  # SynthSeg mode: any tissue any value
        means[:] = rng.uniform(lo - 50.0, hi + 50.0, means.shape)
        fat = float(rng.uniform(-140.0, -40.0))
        for c in range(n_channels):
            if rng.random() < 0.7:  # fat stays darker than soft tissue in most draws (CT, T1 MRI)
                means[c, [T.FAT, T.VFAT, T.KSINUS, T.STOOL]] = fat + rng.normal(0.0, 10.0, 4)
    else:
        offset = float(rng.normal(0.0, 12.0))
        oral = rng.random() < 0.3
        lipiodol = rng.random() < 0.15
        for c in range(n_channels):
            f = float(rng.uniform(0.0, 1.4))
            col = 1 if c == 0 else 2  # arterial / portal enhancement of the simulator's table
            if rng.random() < 0.3:
                col = 3 - col  # the timing of the other phase
            for t, hu in base.items():
                means[c, t] = hu[0] + f * hu[col] + offset + float(rng.normal(0.0, 25.0))
            liver = means[c, T.LIVER]
            means[c, VIABLE] = liver + float(rng.uniform(-70.0, 90.0))
            means[c, NECROSIS] = (float(rng.uniform(200.0, 900.0)) if lipiodol
                                  else float(rng.uniform(-15.0, 45.0)) + offset)
            means[c, PVTT_CLASS] = liver + float(rng.uniform(-50.0, 60.0))
            if oral:
                means[c, T.GIFLUID] = float(rng.uniform(150.0, 700.0))
            means[c, T.CORTICAL] = float(rng.uniform(500.0, 1200.0))
    for t, v in fixed.items():
        means[:, t] = v
    # a template's pseudo-tissues (intensity clusters of another modality): any soft-tissue or fat value
    means[:, list(CLUSTER_CODES)] = rng.uniform(-130.0, 220.0, (n_channels, len(CLUSTER_CODES)))
    return means


def synthesize(classes: np.ndarray, rng: np.random.Generator, window_hu: Sequence[float],
               n_channels: int = 2, phase_dropout: float = 0.0) -> np.ndarray:
    """A synthetic image patch ``(n_channels, K, J, I)`` in [0, 1] (clipped to ``window_hu``) from a class-map patch
    ``(K, J, I)`` (codes < :data:`N_CLASSES`)."""
    cls = np.asarray(classes, dtype=np.intp)
    lo, hi = float(window_hu[0]), float(window_hu[1])
    means = class_means(rng, window_hu, n_channels)
    single = phase_dropout > 0 and rng.random() < phase_dropout
    sd = rng.uniform(0.0, 25.0, N_CLASSES).astype(np.float32)
    sig_xy = float(rng.uniform(0.3, 1.3))
    sig_z = float(rng.uniform(0.0, 1.3)) if rng.random() < 0.6 else 0.0
    shape = cls.shape
    out = np.empty((n_channels, *shape), np.float32)
    for c in range(n_channels):
        if single and c > 0:
            out[c] = out[0]
            continue
        img = means[c][cls] + sd[cls] * rng.standard_normal(shape, dtype=np.float32)
        img = ndimage.gaussian_filter(img, (sig_z, sig_xy, sig_xy), truncate=2.0, mode="nearest")
        if rng.random() < 0.6:
            coarse = rng.uniform(-40.0, 40.0, (2, 3, 3)).astype(np.float32)
            img += ndimage.zoom(coarse, np.array(shape) / np.array(coarse.shape), order=1, mode="nearest",
                                grid_mode=True)[:shape[0], :shape[1], :shape[2]]
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, (0.0, 0.7, 0.7), truncate=2.0)
        img += noise * (float(rng.uniform(2.0, 30.0)) / max(float(noise.std()), 1e-6))
        out[c] = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    return out


__all__ = ["synth_volume", "prepare_synthetic", "template_volume", "prepare_templates", "synthesize", "class_means",
           "N_CLASSES", "DESCRIPTION"]
