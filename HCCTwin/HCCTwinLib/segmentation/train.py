"""Training of the segmentation network on a cohort folder (the simulator's layout or a site's own data).

Cohort layout::

    COHORT/clinical.csv                       (column ``patient_id``; optional: without it every cases/<id> is used)
    COHORT/cases/<id>/pre/{arterial,portal,labels}.nii.gz
    COHORT/cases/<id>/followup/<tp>/{arterial,portal,labels}.nii.gz   (optional; extra training samples)

The train/validation split is by patient (a patient's follow-ups stay on its side) and deterministic for a seed.
Every path derived from the CSV must stay inside the cohort folder. Volumes are resampled once to the model grid and
cached as ``.npy`` under ``out_dir/cache`` (or ``cache_dir``). Each epoch: ``iterations_per_epoch`` batches of
random patches drawn in numpy from memory-mapped volumes with class-balanced centres (tumor and PVTT oversampled;
optionally some from the 2x coarser grid used by the liver-box stage), optional flips, intensity jitter; DiceCE loss
(optionally class-weighted); AdamW with a per-iteration cosine schedule (optionally bounded by a wall-time budget);
full-volume sliding-window validation Dice per class on all or the first ``val_max_cases`` validation patients
(printed and appended to ``out_dir/train_log.jsonl``); a checkpoint
(``checkpoint.safetensors`` + card, ``checkpoint_optimizer.pt`` (tensors only, read with weights_only=True),
``train_state.json``). Re-running with ``resume=True`` continues after the last finished epoch. The best epoch (mean
validation Dice) is written with :func:`HCCTwinLib.weights.save_model` as ``out_dir/<name>.safetensors`` + card.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, distributed
from .. import device as devices
from ..errors import InputError
from ..io import find_image, load_case, read_training_state
from ..io import path_inside as _inside
from ..progress import ProgressCallback, SubProgress, report
from ..weights import ModelFileError, load_state, save_model, sha256_file
from . import augment, postprocessing, synth
from .inference import DEFAULT_MODEL_NAME, sliding_window_argmax
from .metrics import dice_per_label, mean_dice
from .model import (
    DEFAULT_ARCHITECTURE,
    DEFAULT_PATCH_KJI,
    DEFAULT_SPACING_MM,
    build_model,
    model_kwargs,
    total_stride,
)
from .preprocessing import DEFAULT_WINDOW_HU, labels_to_model_grid, to_model_grid

INPUT_PHASES = ("arterial", "portal")
#: sampling ratios of patch centres per label (background, liver, viable tumor, necrosis, PVTT)
CLASS_RATIOS = (1.0, 1.0, 2.0, 1.0, 1.5)
DICE_KEYS = ("liver", "viable_tumor", "necrosis", "pvtt")
#: settings of a PVTT-stage model (:mod:`.inference`, ``hcctwin train segmentation --pvtt-stage``): the thrombus
#: weighted 20x in the loss and most patch centres drawn on it where a volume has one; the other classes stay in the
#: loss, so the stage also learns what is not thrombus. Its PVTT probability is thresholded at a value tuned on a
#: labelled cohort (:mod:`.tuning`); the main model keeps the other labels.
#: the name of a model trained with phase dropout 1 (one phase on both channels in every patch): the single-phase
#: stage a main model's card can name (:meth:`.inference.Segmenter.attach_single_phase_stage`)
SINGLE_PHASE_MODEL_NAME = "hcctwin_seg_single_phase"
PVTT_STAGE_SETTINGS = {"name": "hcctwin_seg_pvtt", "class_weights": (1.0, 1.0, 1.0, 1.0, 20.0),
                       "class_ratios": (0.5, 0.5, 1.0, 0.5, 6.0)}
CACHE_VERSION = 1
#: small-lesion emphasis (``small_lesion_weight``): a tumour component (labels 2|3, 6-connected, in the whole volume)
#: smaller than this volume gets the CE weight ``min(small_lesion_weight, SMALL_LESION_REF_ML / its volume)``, on its
#: voxels and a one-voxel ring around them, so missing a 0.4 mL nodule costs about as much as missing a 4 mL one
SMALL_LESION_REF_ML = 4.0


@dataclass(frozen=True)
class Sample:
    """One training volume: a patient's pre-treatment study or one follow-up time point."""

    sample_id: str
    patient_id: str
    folder: Path
    kind: str  # "pre" or "followup/<tp>"


# ---------------------------------------------------------------------------------------------------------------
# cohort reading (path-safe)
def cohort_patient_ids(cohort_dir: str | os.PathLike) -> list[str]:
    """Patient ids in ``clinical.csv`` order (column ``patient_id``), else the sorted ``cases/`` sub-folders."""
    root = Path(cohort_dir).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"{cohort_dir}: cohort folder not found.")
    csv_path = root / "clinical.csv"
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "patient_id" not in reader.fieldnames:
                raise InputError(f"{csv_path}: no 'patient_id' column (columns: {reader.fieldnames}).")
            ids = [str(row["patient_id"] or "").strip() for row in reader]
        ids = [i for i in dict.fromkeys(ids) if i]
    else:
        cases = root / "cases"
        if not cases.is_dir():
            raise InputError(f"{root}: neither clinical.csv nor a cases/ folder; not an HCCTwin cohort.")
        ids = sorted(p.name for p in cases.iterdir() if p.is_dir())
    if not ids:
        raise InputError(f"{root}: the cohort lists no patients.")
    return ids


def _has_training_data(folder: Path) -> bool:
    return folder.is_dir() and all(find_image(folder, n) is not None for n in (*INPUT_PHASES, "labels"))


def discover_samples(cohort_dir: str | os.PathLike, *, max_cases: int | None = None, include_followups: bool = True
                     ) -> dict[str, list[Sample]]:
    """``{patient_id: [Sample, ...]}`` for patients whose ``pre/`` has both phases and labels (in CSV order)."""
    root = Path(cohort_dir).expanduser().resolve()
    out: dict[str, list[Sample]] = {}
    for pid in cohort_patient_ids(root):
        if max_cases is not None and len(out) >= max_cases:
            break
        pre = _inside(root, "cases", pid, "pre")
        if not _has_training_data(pre):
            continue
        samples = [Sample(_sample_id(pid, "pre"), pid, pre, "pre")]
        fu_root = _inside(root, "cases", pid, "followup")
        if include_followups and fu_root.is_dir():
            for tp in sorted(p.name for p in fu_root.iterdir()):
                folder = _inside(root, "cases", pid, "followup", tp)
                if _has_training_data(folder):
                    samples.append(Sample(_sample_id(pid, f"followup_{tp}"), pid, folder, f"followup/{tp}"))
        out[pid] = samples
    if not out:
        raise InputError(f"{root}: no case has pre/arterial, pre/portal and pre/labels images; nothing to train on.")
    return out


def _sample_id(pid: str, kind: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{pid}__{kind}")
    return f"{safe}_{hashlib.sha1(f'{pid}/{kind}'.encode()).hexdigest()[:6]}"


def split_patients(patient_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by patient: the same ids, fraction and seed always give the same split."""
    ids = sorted(patient_ids)
    if len(ids) < 2 or val_fraction <= 0:
        return ids, []
    n_val = min(max(1, int(round(val_fraction * len(ids)))), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in set(val)], val


# ---------------------------------------------------------------------------------------------------------------
# preprocessing cache
def _source_signature(folder: Path) -> list:
    sig = []
    for name in (*INPUT_PHASES, "labels"):
        p = find_image(folder, name)
        st = p.stat()
        sig.append([p.name, st.st_size, st.st_mtime_ns])
    return sig


def prepare_sample(sample: Sample, cache_dir: Path, spacing_mm: Sequence[float],
                   window_hu: Sequence[float] = DEFAULT_WINDOW_HU) -> tuple[Path, Path]:
    """Resample one sample to the model grid once; returns the cached ``(image.npy, labels.npy)`` paths."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    img_p, lbl_p, meta_p = (cache_dir / f"{sample.sample_id}.{s}" for s in ("img.npy", "lbl.npy", "json"))
    meta = {"version": CACHE_VERSION, "source": _source_signature(sample.folder),
            "spacing_mm": [float(s) for s in spacing_mm], "window_hu": [float(w) for w in window_hu]}
    if img_p.is_file() and lbl_p.is_file() and meta_p.is_file():
        try:
            if json.loads(meta_p.read_text()) == meta:
                return img_p, lbl_p
        except (OSError, json.JSONDecodeError):
            pass
    case = load_case(sample.folder, patient_id=sample.patient_id)
    if case.labels is None:  # pragma: no cover - discover_samples checked it
        raise InputError(f"{sample.folder}: no labels.")
    image, mgeom = to_model_grid(case.stacked(INPUT_PHASES), case.geometry, spacing_mm, window_hu)
    labels = labels_to_model_grid(case.labels, case.geometry, mgeom)
    np.save(img_p, image.astype(np.float16))
    np.save(lbl_p, labels[None].astype(np.uint8))
    meta_p.write_text(json.dumps(meta))
    return img_p, lbl_p


#: at most this many candidate centres are kept per label and volume (random subset; background is drawn uniformly)
_MAX_CENTRES = 20000


def _tumour_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(np.isin(labels, (2, 3)), structure=ndimage.generate_binary_structure(3, 1))


def _lesion_centres(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Flat voxel indices of each tumour component (labels 2|3; at most ``_MAX_CENTRES`` per component)."""
    comp, n = _tumour_components(labels)
    if n == 0:
        return []
    flat = comp.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, n + 2))
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = order[a:b]
        if idx.size > _MAX_CENTRES:
            idx = rng.choice(idx, _MAX_CENTRES, replace=False)
        out.append(idx.astype(np.int64))
    return out


def small_lesion_weights(labels: np.ndarray, voxel_ml: float, max_weight: float,
                         ref_ml: float = SMALL_LESION_REF_ML) -> np.ndarray:
    """Per-voxel CE weights (uint8, >= 1) that emphasise small tumour components: each component of volume ``v``
    below ``ref_ml`` weighs ``min(max_weight, ref_ml / v)`` (rounded) on its voxels and a one-voxel ring around them
    (so a missed nodule and a nodule drawn too large both cost); everything else 1."""
    from scipy import ndimage

    out = np.ones(labels.shape, np.uint8)
    comp, n = _tumour_components(labels)
    if n == 0 or max_weight <= 1:
        return out
    sizes_ml = np.bincount(comp.ravel(), minlength=n + 1)[1:] * float(voxel_ml)
    ring = ndimage.generate_binary_structure(3, 1)
    boxes = ndimage.find_objects(comp)
    for index in range(n):  # where rings overlap, the larger weight wins
        v = sizes_ml[index]
        if v >= ref_ml:
            continue
        w = int(round(min(float(max_weight), ref_ml / max(v, 1e-6), 255.0)))
        if w <= 1:
            continue
        sl = boxes[index]
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = ndimage.binary_dilation(comp[grown] == index + 1, structure=ring)
        out[grown][mask] = np.maximum(out[grown][mask], w)
    return out


def _label_centres(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray | None]:
    """Flat voxel indices per label 1..4 (a random subset of at most ``_MAX_CENTRES``); None for absent labels."""
    flat = labels.ravel()
    out: list[np.ndarray | None] = [None]
    for value in range(1, len(CLASS_RATIOS)):
        idx = np.flatnonzero(flat == value)
        if idx.size > _MAX_CENTRES:
            idx = rng.choice(idx, _MAX_CENTRES, replace=False)
        out.append(idx.astype(np.int64) if idx.size else None)
    return out


class _PatchSampler:
    """Random training patches from the cached volumes, drawn in numpy (no per-patch scan of the volume).

    Images are memory-mapped (only the patch is read); candidate centres per label are computed once. Each patch comes
    from the next volume in a shuffled cycle; its centre is a voxel of a label drawn with ``class_ratios`` (default
    ``CLASS_RATIOS``) among the labels present (background: anywhere). With ``coarse_fraction`` > 0 that fraction of
    patches is cut from the volume sub-sampled by 2 on every axis (the grid of the coarse liver-box stage at inference),
    so the same network also finds the liver at twice the spacing. Augmentation: optional flips, intensity scale and
    shift, Gaussian noise.

    ``lesion_sampling``: a centre on viable tumour or necrosis is a voxel of a tumour component drawn uniformly among
    the volume's components (default: a voxel drawn among all voxels of that label, so large lesions dominate).
    ``small_lesion_weight`` > 1: :meth:`batch` also returns per-voxel CE weights (:func:`small_lesion_weights`,
    ``voxel_ml`` the model grid's voxel volume).
    """

    def __init__(self, items: list[tuple[Path, Path]], patch: Sequence[int], seed: int, *,
                 coarse_fraction: float = 0.0, flip_prob: float = 0.2,
                 class_ratios: Sequence[float] = CLASS_RATIOS, lesion_sampling: bool = False,
                 small_lesion_weight: float = 0.0, voxel_ml: float = 0.0, appearance_prob: float = 0.0,
                 phase_dropout: float = 0.0, synthetic_items: list[tuple[Path, Path]] = (),
                 synthetic_prob: float = 0.0, window_hu: Sequence[float] = DEFAULT_WINDOW_HU):
        self.patch = tuple(int(p) for p in patch)
        #: share of patches synthesised from a simulated tissue map (:mod:`.synth`) instead of cut from a volume
        self.synthetic_prob = float(synthetic_prob) if synthetic_items else 0.0
        if not 0.0 <= self.synthetic_prob <= 1.0:
            raise ValueError(f"synthetic_prob is a probability in [0, 1]; got {synthetic_prob}")
        self.window_hu = tuple(float(w) for w in window_hu)
        #: probability of :func:`.augment.randomise_appearance` and of :func:`.augment.drop_phase` per patch
        self.appearance_prob = float(appearance_prob)
        self.phase_dropout = float(phase_dropout)
        if not (0.0 <= self.appearance_prob <= 1.0 and 0.0 <= self.phase_dropout <= 1.0):
            raise ValueError(f"appearance_prob and phase_dropout are probabilities in [0, 1]; got "
                             f"{appearance_prob}, {phase_dropout}")
        self.class_ratios = tuple(float(r) for r in class_ratios)
        if len(self.class_ratios) != len(CLASS_RATIOS) or min(self.class_ratios) < 0 or \
                sum(self.class_ratios[1:]) <= 0:
            raise ValueError(f"class_ratios needs {len(CLASS_RATIOS)} values >= 0 (background, liver, viable tumor, "
                             f"necrosis, PVTT), not all labels zero; got {class_ratios}")
        self.coarse_fraction = float(coarse_fraction)
        self.flip_prob = float(flip_prob)
        self.lesion_sampling = bool(lesion_sampling)
        self.weighted = float(small_lesion_weight) > 1.0
        if self.weighted and voxel_ml <= 0:
            raise ValueError("small_lesion_weight needs the model grid's voxel volume (voxel_ml)")
        self.rng = np.random.default_rng(seed)
        self.volumes, self.coarse = [], []
        for img_p, lbl_p in items:
            image = np.load(img_p, mmap_mode="r")
            labels = np.ascontiguousarray(np.load(lbl_p)[0])
            weights = small_lesion_weights(labels, voxel_ml, small_lesion_weight) if self.weighted else None
            self.volumes.append((image, labels, self._centres(labels), weights))
            if self.coarse_fraction > 0:
                c_img = np.ascontiguousarray(image[:, ::2, ::2, ::2])
                c_lbl = np.ascontiguousarray(labels[::2, ::2, ::2])
                c_w = small_lesion_weights(c_lbl, 8 * voxel_ml, small_lesion_weight) if self.weighted else None
                self.coarse.append((c_img, c_lbl, self._centres(c_lbl), c_w))
        #: synthetic volumes: (class map, labels, centres); the image of a patch is drawn from its class map
        self.synthetic = []
        for cls_p, lbl_p in synthetic_items:
            labels = np.ascontiguousarray(np.load(lbl_p)[0])
            self.synthetic.append((np.load(cls_p, mmap_mode="r"), labels, self._centres(labels)))
        if not self.volumes and not self.synthetic:
            raise ValueError("no training volumes")
        self._order: list[int] = []
        self._synth_order: list[int] = []

    def _centres(self, labels: np.ndarray) -> list:
        """Candidate centres per label (:func:`_label_centres`) plus, with lesion sampling, per tumour component."""
        return [*_label_centres(labels, self.rng), _lesion_centres(labels, self.rng) if self.lesion_sampling else []]

    def set_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._order = []

    def _next_volume(self) -> int:
        if not self._order:
            self._order = list(self.rng.permutation(len(self.volumes)))
        return int(self._order.pop())

    def _next_synthetic(self) -> int:
        if not self._synth_order:
            self._synth_order = list(self.rng.permutation(len(self.synthetic)))
        return int(self._synth_order.pop())

    def patch_from(self, image, labels, centres, weights=None, synthetic: bool = False):
        """``(image patch, label patch)`` and, with ``weights`` (a volume of CE weights), its patch as a third item.
        ``synthetic``: ``image`` is a class map (``(1, K, J, I)``, :mod:`.synth`) and the patch's image is synthesised
        from it (then neither :func:`.augment.randomise_appearance` nor the intensity jitter apply; phase dropout is
        part of the synthesis)."""
        rng, shape = self.rng, labels.shape
        present = [c for c in range(len(self.class_ratios))
                   if (c == 0 or centres[c] is not None) and self.class_ratios[c] > 0] or [0]
        ratios = np.array([self.class_ratios[c] for c in present], float) + 1e-12
        cls = present[int(rng.choice(len(present), p=ratios / ratios.sum()))]
        lesions = centres[len(self.class_ratios)]
        if cls == 0:
            centre = [int(rng.integers(0, s)) for s in shape]
        elif cls in (2, 3) and lesions:
            voxels = lesions[int(rng.integers(0, len(lesions)))]
            centre = np.unravel_index(int(voxels[rng.integers(0, voxels.size)]), shape)
        else:
            centre = np.unravel_index(int(centres[cls][rng.integers(0, centres[cls].size)]), shape)
        starts = [min(max(int(c) - p // 2, 0), max(s - p, 0)) for c, p, s in zip(centre, self.patch, shape)]
        box = tuple(slice(a, a + p) for a, p in zip(starts, self.patch))
        img = np.asarray(image[(slice(None), *box)], dtype=np.float32)
        lbl = np.asarray(labels[box], dtype=np.int64)
        wgt = None if weights is None else np.asarray(weights[box], dtype=np.float32)
        if img.shape[1:] != self.patch:  # volume smaller than the patch: pad (image with 0 = air, labels background)
            pad = [(0, p - s) for p, s in zip(self.patch, img.shape[1:])]
            img = np.pad(img, [(0, 0), *pad])
            lbl = np.pad(lbl, pad)
            wgt = None if wgt is None else np.pad(wgt, pad, constant_values=1.0)
        for axis in range(3):
            if self.flip_prob > 0 and rng.random() < self.flip_prob:
                img, lbl = np.flip(img, axis + 1), np.flip(lbl, axis)
                wgt = None if wgt is None else np.flip(wgt, axis)
        if synthetic:
            img = synth.synthesize(img[0], rng, self.window_hu, n_channels=2, phase_dropout=self.phase_dropout)
            return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(lbl)
        if rng.random() < 0.5:
            img = img * float(1.0 + rng.uniform(-0.1, 0.1))
        if rng.random() < 0.5:
            img = img + float(rng.uniform(-0.05, 0.05))
        if rng.random() < 0.15:
            img = img + rng.normal(0.0, 0.02, img.shape).astype(np.float32)
        if self.appearance_prob > 0 and rng.random() < self.appearance_prob:
            img = augment.randomise_appearance(img, lbl, rng)
        if self.phase_dropout > 0 and rng.random() < self.phase_dropout:
            img = augment.drop_phase(img, rng)
        if wgt is None:
            return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(lbl)
        return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(lbl), np.ascontiguousarray(wgt)

    def batch(self, batch_size: int):
        """``(images, labels)`` of ``batch_size`` patches, plus their CE weights with ``small_lesion_weight``."""
        xs, ys, ws = [], [], []
        for _ in range(batch_size):
            if self.synthetic and (not self.volumes or self.rng.random() < self.synthetic_prob):
                out = self.patch_from(*self.synthetic[self._next_synthetic()], synthetic=True)
                if self.weighted:
                    out = (*out, np.ones(out[1].shape, np.float32))
            else:
                v = self._next_volume()
                use_coarse = self.coarse and self.rng.random() < self.coarse_fraction
                out = self.patch_from(*(self.coarse[v] if use_coarse else self.volumes[v]))
            xs.append(out[0])
            ys.append(out[1][None])
            if self.weighted:
                ws.append(out[2][None])
        if self.weighted:
            return np.stack(xs), np.stack(ys), np.stack(ws)
        return np.stack(xs), np.stack(ys)


# ---------------------------------------------------------------------------------------------------------------
def weighted_ce(logits, target, weights):
    """Cross-entropy averaged with per-voxel ``weights``: ``sum(w * ce) / sum(w)`` (logits ``(B, C, ...)``, target
    and weights ``(B, 1, ...)``)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
    w = weights[:, 0].to(ce.dtype)
    return (w * ce).sum() / w.sum().clamp_min(1e-6)


def _lr_at(progress_epochs: float, total_epochs: int, lr: float, warmup_epochs: float = 0.0) -> float:
    if warmup_epochs > 0 and progress_epochs < warmup_epochs:
        return lr * (0.1 + 0.9 * progress_epochs / warmup_epochs)
    t = min(max(progress_epochs / max(total_epochs, 1), 0.0), 1.0)
    return lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def validate(model, items: list[tuple[Path, Path]], *, patch: Sequence[int], device, spacing_mm: Sequence[float],
             postprocess: bool = True, progress: ProgressCallback | None = None,
             cpu_precision: str = "fp32", inputs: Sequence[int | None] = (None,)) -> dict[str, float]:
    """Mean (over volumes) Dice per label of full-volume sliding-window predictions on the model grid.

    ``inputs``: how each volume is fed, once per entry: None = its phases as they are, ``c`` = phase ``c`` copied
    onto every channel (a single-phase study; :func:`.augment.drop_phase`)."""
    model.eval()
    per_key: dict[str, list[float]] = {}
    for n, (img_p, lbl_p) in enumerate(items):
        volume = np.load(img_p).astype(np.float32)
        truth = np.load(lbl_p)[0]
        for phase in inputs:
            image = volume if phase is None else np.repeat(volume[phase:phase + 1], volume.shape[0], axis=0)
            pred = sliding_window_argmax(model, image, roi_size=patch, device=device, overlap=0.25,
                                         cpu_precision=cpu_precision)
            if postprocess:
                pred = postprocessing.postprocess(pred, spacing_mm)
            for key, value in dice_per_label(pred, truth).items():
                per_key.setdefault(key, []).append(value)
        report(progress, (n + 1) / len(items), f"Validation {n + 1}/{len(items)}")
    out = {}
    for key, values in per_key.items():
        finite = [v for v in values if math.isfinite(v)]
        out[key] = float(np.mean(finite)) if finite else float("nan")
    out["mean"] = mean_dice(out, DICE_KEYS)
    return out


def train_segmentation(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, *, epochs: int = 100,
                       batch_size: int = 2, patch_size: Sequence[int] = DEFAULT_PATCH_KJI, lr: float = 1e-3,
                       val_fraction: float = 0.2, seed: int = 0, device: str = "auto", resume: bool = True,
                       max_cases: int | None = None, progress: ProgressCallback | None = None,
                       spacing_mm: Sequence[float] = DEFAULT_SPACING_MM, architecture: str = DEFAULT_ARCHITECTURE,
                       architecture_kwargs: dict | None = None, samples_per_volume: int = 2,
                       include_followups: bool = True, weight_decay: float = 3e-5, num_workers: int = 0,
                       name: str = DEFAULT_MODEL_NAME, version: str = "0.1.0",
                       data_description: str = "", log=print, iterations_per_epoch: int | None = None,
                       val_max_cases: int | None = None, coarse_fraction: float = 0.0, flip_prob: float = 0.2,
                       time_budget_s: float | None = None, cache_dir: str | os.PathLike | None = None,
                       warmup_epochs: float = 0.0, class_weights: Sequence[float] | None = None,
                       init_weights: str | os.PathLike | None = None,
                       class_ratios: Sequence[float] = CLASS_RATIOS, cpu_precision: str = "fp32",
                       lesion_sampling: bool = False, small_lesion_weight: float = 0.0,
                       appearance_prob: float = 0.0, phase_dropout: float = 0.0, synthetic: int = 0,
                       synthetic_seed: int = 7001, synthetic_prob: float = 0.5,
                       synthetic_templates: str | os.PathLike | None = None,
                       template_repeats: int = 4) -> dict[str, Any]:
    """Train (or resume training) the segmentation model; returns a summary dict with the model path and metrics.

    ``patch_size`` is (k, j, i) voxels on the model grid (``spacing_mm`` is (x, y, z)); it is rounded up to a multiple
    of the network's total stride. ``epochs`` is the total number of epochs: re-running with a larger value continues
    from the last checkpoint. ``log`` receives one line per epoch (default ``print``).

    ``iterations_per_epoch`` (default: every training volume ``samples_per_volume`` times) and ``val_max_cases``
    (default: all validation patients) trade the length of an epoch against how often it is validated.
    ``coarse_fraction`` of the patches come from the 2x sub-sampled volumes (see :class:`_PatchSampler`).
    ``time_budget_s`` bounds this call's wall time: the learning-rate schedule follows whichever of iterations or
    elapsed time is further along, and training stops (after validating and checkpointing the partial epoch) when the
    budget is spent. ``cache_dir`` (default ``out_dir/cache``) may be shared between runs with the same spacing.
    ``num_workers`` is kept for compatibility; patches are drawn in the main process. ``class_weights`` (one per label
    0-4) weight the loss (CE and Dice terms); ``class_ratios`` (one per label 0-4) are the odds of a patch centre on
    each label present in the volume (default ``CLASS_RATIOS``). ``init_weights`` starts a new run from a verified model
    file of the same architecture (e.g. an earlier run's checkpoint); it is ignored when resuming.
    ``cpu_precision="bf16"`` trains and validates on the CPU under bfloat16 autocast (float32 weights, optimizer and
    loss; for CPUs with native bfloat16); ``"fp32"`` (default) is plain float32. CUDA always uses its autocast.
    Small lesions (a Dice loss hardly notices a missed 0.4 mL nodule next to a 40 mL tumour): ``lesion_sampling``
    draws tumour patch centres per lesion instead of per voxel, and ``small_lesion_weight`` > 1 adds a cross-entropy
    term whose voxel weights grow for tumour components below ``SMALL_LESION_REF_ML`` (:func:`small_lesion_weights`,
    capped at that value); both are recorded in the card.
    Real scans (:mod:`.augment`): ``appearance_prob`` of the patches get a randomised appearance (intensity curve,
    per-label contrast, bias, blur, slice thickness, noise) and ``phase_dropout`` of them one phase copied onto both
    channels, so the model also reads single-phase studies; the card then lists the single phases it accepts.
    ``synthetic`` > 0 (:mod:`.synth`): that many simulated tissue maps of simulator seed ``synthetic_seed`` are
    cached and ``synthetic_prob`` of the patches are images synthesised from them with a random appearance
    (SynthSeg-style domain randomisation; their phase dropout is ``phase_dropout``). ``synthetic_templates``: a
    folder of real abdominal label maps with their images (:func:`.synth.prepare_templates`, e.g. CHAOS) added to
    the synthetic maps, each ``template_repeats`` times in the cycle (real liver shapes weigh more).
    """
    import torch
    from monai.losses import DiceCELoss

    devices.training_precision("cpu", cpu_precision)  # a wrong value fails before any work

    t_start = time.perf_counter()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    dev, message = devices.select_device(device)
    ctx, dev = distributed.setup(dev)  # torchrun: one process per core / GPU, gradients averaged (DDP)
    log, progress = ctx.speakers(log, progress)
    log(f"[segmentation training] {message}" + (f"; rank 0 of {ctx.world} processes ({ctx.backend})"
                                                 if ctx.enabled else ""))
    arch_kwargs = model_kwargs(architecture, **(architecture_kwargs or {}))
    stride = total_stride(architecture, arch_kwargs)
    patch = tuple(int(math.ceil(p / s) * s) for p, s in zip(patch_size, stride))
    config = {"architecture": architecture, "architecture_kwargs": arch_kwargs,
              "spacing_mm": [float(s) for s in spacing_mm], "patch_size_kji": list(patch),
              "input_phases": list(INPUT_PHASES), "window_hu": list(DEFAULT_WINDOW_HU), "seed": int(seed),
              "val_fraction": float(val_fraction), "max_cases": max_cases, "include_followups": include_followups}

    # ---- data (rank 0 fills the caches first; the other ranks then read them)
    if not ctx.main:
        ctx.barrier()
    report(progress, 0.0, "Reading the cohort")
    by_patient = discover_samples(cohort_dir, max_cases=max_cases, include_followups=include_followups)
    train_ids, val_ids = split_patients(list(by_patient), val_fraction, seed)
    train_samples = [s for pid in train_ids for s in by_patient[pid]]
    val_samples = [s for pid in val_ids for s in by_patient[pid] if s.kind == "pre"] if val_ids else []
    if not val_samples:
        log("[segmentation training] Warning: no validation patients (cohort too small or val_fraction 0); "
            "validating on the training patients' pre-treatment studies (optimistic).")
        val_samples = [s for pid in train_ids for s in by_patient[pid] if s.kind == "pre"]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else out / "cache"
    prep = SubProgress(progress, 0.0, 0.05)
    all_samples = train_samples + [s for s in val_samples if s not in train_samples]
    prepared = {}
    for n, s in enumerate(all_samples):
        prepared[s.sample_id] = prepare_sample(s, cache, spacing_mm)
        report(prep, (n + 1) / len(all_samples), f"Preparing volumes {n + 1}/{len(all_samples)}")
    train_items = [prepared[s.sample_id] for s in train_samples]
    val_items = [prepared[s.sample_id] for s in val_samples]
    if val_max_cases is not None:
        val_items = val_items[:max(1, int(val_max_cases))]
    #: a single-phase model (phase dropout 1) is validated, and its epoch chosen, on each phase alone
    val_inputs = tuple(range(len(INPUT_PHASES))) if float(phase_dropout) >= 1.0 else (None,)

    synthetic_items = []
    if synthetic:
        if not 0.0 < float(synthetic_prob) <= 1.0:
            raise InputError(f"synthetic_prob must be in (0, 1]; got {synthetic_prob}")
        log(f"[segmentation training] preparing {synthetic} synthetic tissue maps (simulator seed {synthetic_seed})")
        synthetic_items = synth.prepare_synthetic(cache / "synthetic", int(synthetic), int(synthetic_seed),
                                                  spacing_mm, log=log)
    templates = []
    if synthetic_templates:
        if not synthetic:
            raise InputError("synthetic_templates needs synthetic > 0 (the simulated tissue maps they join).")
        templates = synth.prepare_templates(synthetic_templates, cache / "templates", spacing_mm, log=log)
        synthetic_items = synthetic_items + templates * max(1, int(template_repeats))

    if ctx.main:
        ctx.barrier()

    # ---- model, optimiser, state
    torch.manual_seed(seed)
    model = build_model(architecture, **arch_kwargs).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    state_path, ckpt_path, opt_path = out / "train_state.json", out / "checkpoint.safetensors", \
        out / "checkpoint_optimizer.pt"
    log_path = out / "train_log.jsonl"
    state = {"epoch": 0, "best_score": None, "best_epoch": None, "config": config}
    if resume and state_path.is_file():
        state = _load_checkpoint(state_path, ckpt_path, opt_path, config, model, optimizer, dev)
        log(f"[segmentation training] resuming after epoch {state['epoch']} (best mean Dice "
            f"{state['best_score']} at epoch {state['best_epoch']})")
    else:
        if log_path.exists():
            log_path.unlink()
        if init_weights is not None:
            init_state, _ = load_state(init_weights, device="cpu")
            model.load_state_dict(init_state)
            log(f"[segmentation training] starting from the weights of {init_weights}")

    net = ctx.wrap(model)  # DDP: rank 0's weights broadcast to every rank, gradients averaged at each step
    weight = None if class_weights is None else torch.tensor([float(w) for w in class_weights], device=dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=weight)
    sampler = _PatchSampler(train_items, patch, seed, coarse_fraction=coarse_fraction, flip_prob=flip_prob,
                            class_ratios=class_ratios, lesion_sampling=lesion_sampling,
                            small_lesion_weight=small_lesion_weight,
                            voxel_ml=float(np.prod([float(v) for v in spacing_mm])) / 1000.0,
                            appearance_prob=appearance_prob, phase_dropout=phase_dropout,
                            synthetic_items=synthetic_items, synthetic_prob=synthetic_prob)
    n_iter = int(iterations_per_epoch or max(1, math.ceil(len(train_items) * samples_per_volume / batch_size)))
    n_iter = max(1, math.ceil(n_iter / ctx.world))  # per process: the epoch sees the same number of patches
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported()) if use_amp \
        else None
    card_path_best = out / f"{name}.safetensors"
    hyper = {"epochs": epochs, "batch_size": batch_size, "patch_size_kji": list(patch), "lr": lr,
             "weight_decay": weight_decay, "optimizer": "AdamW", "schedule": "cosine (per iteration), floor 1% lr",
             "loss": "DiceCE (softmax, batch Dice)" + (
                 f" + small-lesion weighted CE (components < {SMALL_LESION_REF_ML} mL weigh "
                 f"min({small_lesion_weight}, {SMALL_LESION_REF_ML} mL / volume))" if sampler.weighted else ""),
             "class_weights": class_weights, "lesion_sampling": bool(lesion_sampling),
             "small_lesion_weight": float(small_lesion_weight),
             "init_weights": None if init_weights is None else Path(init_weights).name,
             "samples_per_volume": samples_per_volume,
             "class_sampling_ratios": [float(r) for r in class_ratios], "seed": seed, "val_fraction": val_fraction,
             "iterations_per_epoch": n_iter, "val_max_cases": val_max_cases, "coarse_fraction": coarse_fraction,
             "time_budget_s": time_budget_s, "warmup_epochs": warmup_epochs,
             "precision": devices.training_precision(dev, cpu_precision),
             "augmentation": f"class-balanced patch centres, flips (p={flip_prob}/axis), intensity scale +-10%, "
                             f"shift +-0.05, Gaussian noise (p=0.15, sd 0.02)"
                             + (f"; {augment.DESCRIPTION.format(p=appearance_prob, d=phase_dropout)}"
                                if appearance_prob or phase_dropout else ""),
             "appearance_prob": float(appearance_prob), "phase_dropout": float(phase_dropout),
             "synthetic": int(synthetic), "synthetic_seed": int(synthetic_seed) if synthetic else None,
             "synthetic_prob": float(synthetic_prob) if synthetic else 0.0,
             "synthetic_templates": ({"folder": Path(synthetic_templates).name, "n": len(templates),
                                      "repeats": int(template_repeats)} if templates else None),
             "distributed": ctx.describe()}
    if synthetic:
        hyper["augmentation"] += "; " + synth.DESCRIPTION.format(n=int(synthetic), seed=int(synthetic_seed),
                                                                 p=float(synthetic_prob), d=phase_dropout)
    start_epoch = int(state["epoch"])
    for epoch in range(start_epoch, epochs):
        if time_budget_s and epoch > start_epoch and ctx.any(time.perf_counter() - t_start >= float(time_budget_s)):
            log(f"[segmentation training] time budget of {time_budget_s:.0f} s spent after epoch {epoch}")
            break
        t0 = time.perf_counter()
        sampler.set_seed(((seed * 100003 + epoch) * ctx.world + ctx.rank) % (2**32))
        net.train()
        losses = []
        out_of_time = False
        ep_progress = SubProgress(progress, 0.05 + 0.95 * epoch / epochs, 0.05 + 0.95 * (epoch + 1) / epochs)
        for it in range(n_iter):
            progress_epochs = epoch + it / n_iter
            if time_budget_s:
                used = (time.perf_counter() - t_start) / float(time_budget_s)
                if ctx.any(used >= 1.0 and bool(losses)):
                    out_of_time = True
                    break
                progress_epochs = max(progress_epochs, used * epochs)
            current_lr = _lr_at(progress_epochs, epochs, lr, warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            xb, yb, *wb = sampler.batch(batch_size)
            x = torch.from_numpy(xb).to(dev, non_blocking=True)
            y = torch.from_numpy(yb).to(dev, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with devices.autocast(dev, cpu_precision):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            if wb:
                loss = loss + weighted_ce(logits.float(), y, torch.from_numpy(wb[0]).to(dev, non_blocking=True))
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                optimizer.step()
            losses.append(float(loss.detach()))
            report(ep_progress, 0.8 * (it + 1) / n_iter, f"Epoch {epoch + 1}/{epochs}: batch {it + 1}/{n_iter}, "
                                                         f"loss {losses[-1]:.3f}")
        if not ctx.main:  # rank 0 validates and writes the checkpoint; the others wait for it
            state["epoch"] = epoch + 1
            ctx.barrier()
            if out_of_time:
                break
            continue
        val = validate(model, val_items, patch=patch, device=dev, spacing_mm=spacing_mm,
                       progress=SubProgress(ep_progress, 0.8, 1.0), cpu_precision=cpu_precision,
                       inputs=val_inputs)
        score = val["mean"]
        improved = math.isfinite(score) and (state["best_score"] is None or score > state["best_score"])
        entry = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, "lr": current_lr,
                 "val_dice": _nan_to_none({k: v for k, v in val.items() if k != "mean"}),
                 "val_mean_dice": None if not math.isfinite(score) else score,
                 "seconds": round(time.perf_counter() - t0, 2), "device": str(dev), "best": bool(improved),
                 "iterations": len(losses), "precision": hyper["precision"]}
        with open(log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        log(f"[segmentation training] epoch {epoch + 1}/{epochs} loss {entry['train_loss']:.4f} val Dice "
            + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                        for k, v in entry["val_dice"].items() if k in DICE_KEYS)
            + f" (mean {score:.3f}){' *best*' if improved else ''} [{entry['seconds']:.1f} s]")
        if improved or state["best_epoch"] is None:
            state["best_score"] = score if math.isfinite(score) else state["best_score"]
            state["best_epoch"] = epoch + 1
            card = _model_card(name, version, config, hyper, val, epoch + 1, by_patient, train_ids, val_ids,
                               train_samples, cohort_dir, data_description, dev)
            save_model(model, card_path_best, card)
        state["epoch"] = epoch + 1
        _save_checkpoint(state_path, ckpt_path, opt_path, state, model, optimizer)
        ctx.barrier()
        if out_of_time:
            log(f"[segmentation training] time budget of {time_budget_s:.0f} s spent; stopped after "
                f"{len(losses)}/{n_iter} iterations of epoch {epoch + 1}")
            break

    summary = {"model_path": str(card_path_best), "card_path": str(card_path_best.with_suffix(".json")),
               "epochs_completed": int(state["epoch"]), "best_epoch": state["best_epoch"],
               "best_val_mean_dice": state["best_score"], "log_path": str(log_path),
               "train_patients": train_ids, "val_patients": val_ids, "device": str(dev),
               "seconds": round(time.perf_counter() - t_start, 2), "distributed": ctx.describe()}
    ctx.teardown()
    report(progress, 1.0, "Training done")
    return summary


def accepted_inputs(input_phases: Sequence[str], phase_dropout: float) -> list[list[str]]:
    """The phase combinations a model reads (card ``accepted_inputs``): all its input phases and, when trained with
    phase dropout, each phase alone (the missing channel is filled with the given phase at inference); with phase
    dropout 1 (every patch one phase: a single-phase model) each phase alone only."""
    single = [[p] for p in input_phases] if phase_dropout > 0 and len(input_phases) > 1 else []
    if phase_dropout >= 1.0 and single:  # a single-phase model: it never saw two different phases
        return single
    return [list(input_phases)] + single


def _model_card(name, version, config, hyper, val, epoch, by_patient, train_ids, val_ids, train_samples, cohort_dir,
                data_description, dev) -> dict[str, Any]:
    import monai
    import torch

    from ..labels import LABELS

    label_map = {"0": "background"}
    label_map.update({str(i.value): i.key for i in LABELS})
    return {
        "name": name, "version": version, "task": "segmentation: liver, viable tumor, necrosis, PVTT",
        "architecture": config["architecture"], "architecture_kwargs": config["architecture_kwargs"],
        "input_phases": config["input_phases"], "spacing_mm": config["spacing_mm"],
        "accepted_inputs": accepted_inputs(config["input_phases"], float(hyper.get("phase_dropout") or 0.0)),
        "grid": "model grid: identity direction (LPS), axes (k, j, i) = (S, P, L); inputs resampled onto it",
        "intensity": {"window_hu": config["window_hu"], "scaling": "clip to window, map to [0, 1] per phase"},
        "patch_size_kji": config["patch_size_kji"], "inference_roi_kji": config["patch_size_kji"],
        "label_map": label_map,
        "training_data": {"cohort": Path(cohort_dir).name, "description": data_description or
                          "HCCTwin cohort folder (synthetic digital-twin cohort unless stated otherwise)",
                          "n_patients": len(by_patient), "n_train_patients": len(train_ids),
                          "n_val_patients": len(val_ids), "n_train_volumes": len(train_samples),
                          "val_patients": val_ids},
        "hyperparameters": hyper,
        "metrics": {"selected_epoch": epoch, "val_dice": _nan_to_none({k: v for k, v in val.items() if k != "mean"}),
                    "val_mean_dice": None if not math.isfinite(val["mean"]) else val["mean"],
                    "validation": "full-volume sliding window + post-processing on the model grid"},
        "software": {"hcctwin": __version__, "torch": torch.__version__, "monai": monai.__version__,
                     "python": platform.python_version(), "trained_on": str(dev)},
        "disclaimer": "Demo weights trained on synthetic data; research use only, not for clinical use.",
    }


def _save_checkpoint(state_path: Path, ckpt_path: Path, opt_path: Path, state: dict, model, optimizer) -> None:
    import torch

    save_model(model, ckpt_path, {"name": "checkpoint", "version": str(state["epoch"]),
                                  "architecture": state["config"]["architecture"],
                                  "architecture_kwargs": state["config"]["architecture_kwargs"],
                                  "spacing_mm": state["config"]["spacing_mm"],
                                  "input_phases": state["config"]["input_phases"],
                                  "training_state": {"epoch": state["epoch"]}})
    tmp = opt_path.with_name(opt_path.name + ".tmp")
    torch.save(optimizer.state_dict(), tmp)
    os.replace(tmp, opt_path)
    state = dict(state, optimizer_sha256=sha256_file(opt_path))
    _write_json_atomic(state_path, state)


def _load_checkpoint(state_path: Path, ckpt_path: Path, opt_path: Path, config: dict, model, optimizer, dev) -> dict:
    import torch

    state = read_training_state(state_path, config)
    weights, _ = load_state(ckpt_path, device="cpu")
    model.load_state_dict(weights)
    if not opt_path.is_file() or sha256_file(opt_path) != state.get("optimizer_sha256"):
        raise ModelFileError(f"{opt_path}: optimizer checkpoint missing, modified or corrupted; re-run with "
                             f"resume=False.")
    optimizer.load_state_dict(torch.load(opt_path, map_location=dev, weights_only=True))
    return state


__all__ = ["train_segmentation", "discover_samples", "split_patients", "prepare_sample", "validate",
           "cohort_patient_ids", "Sample"]
