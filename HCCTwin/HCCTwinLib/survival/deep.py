"""Deep features of a pre-treatment study from the installed segmentation network's encoder (issue 6).

The segmentation network (:mod:`HCCTwinLib.segmentation`, a MONAI DynUNet) has learned what liver, viable tumour,
necrosis and PVTT look like in the arterial and portal phases; its deepest feature maps summarise a region's
appearance beyond what the hand-made ``img_*`` / ``rad_*`` features measure. This module turns them into a few
survival / metastasis covariates:

1. :func:`deep_raw_features` crops the study to the liver (label map > 0, plus :data:`MARGIN_MM`), resamples the
   phases onto the network's model grid with the segmentation package's own preprocessing
   (:func:`~HCCTwinLib.segmentation.preprocessing.to_model_grid`: same spacing and HU window as inference), pads
   the crop to at least the inference ROI and to a multiple of the network's total stride (padding = air), and runs
   the network once on the CPU. Forward hooks on the encoder's last down-sampling block and on the bottleneck (no
   re-implementation of the network) catch the two deepest feature maps; each is **masked-average-pooled** over the
   tumour (labels 2|3|4, dilated by one model-grid voxel) and over the tumour-free liver parenchyma (label 1), the
   masks being area-weighted down to each feature map's grid. Result: a fixed-length vector per patient,
   ``deepraw_<region>_<layer>_<channel>`` (region ``tumor`` / ``liver``, layer ``down`` / ``bott``); NaN for a
   region the label map does not have.
2. :class:`DeepFeatureReducer` is fitted on the **training split** only: per region, the raw columns are
   standardised and reduced with a PCA (SVD) to a few whitened components ``deep_tumor_1..k``,
   ``deep_liver_1..m`` (unit variance on the training data; the sign of each component fixed so its largest
   loading is positive, so a refit on the same data gives the same columns). The means, scales and components
   travel in the survival engine's safetensors file (``deep/...`` arrays; the card names the segmentation model
   they belong to, by sha256).

Deterministic (CPU, inference mode, no sampling), no downloads. Without an installed segmentation model
:func:`deep_raw_features` returns no features and a note (never an error); the engine then leaves the ``deep_*``
columns out. Research use only (demo weights trained on simulated data, not for clinical use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["RAW_PREFIX", "DEEP_PREFIX", "REGIONS", "LAYERS", "MARGIN_MM", "TUMOR_LABELS", "DeepFeatureReducer",
           "deep_raw_features", "encoder_id", "get_encoder", "raw_columns", "raw_deep_columns"]

RAW_PREFIX = "deepraw_"
DEEP_PREFIX = "deep_"
#: pooled regions: tumour (viable, necrosis, PVTT; dilated) and liver parenchyma outside it
REGIONS = ("tumor", "liver")
#: hooked blocks of the DynUNet: the last encoder down-sampling block and the bottleneck
LAYERS = ("down", "bott")
TUMOR_LABELS = (2, 3, 4)
#: margin around the liver's bounding box (mm) before the crop is resampled onto the model grid
MARGIN_MM = 20.0
#: default number of PCA components per region
DEFAULT_COMPONENTS = {"tumor": 3, "liver": 2}


# ----------------------------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------------------------

def get_encoder(weights=None):
    """``(segmenter, note)``: the installed segmentation model on the CPU (cached by the segmentation package), or
    ``(None, note)`` when none is installed or it cannot be read."""
    from ..segmentation import get_segmenter
    from ..weights import ModelFileError

    try:
        seg = get_segmenter(weights, device="cpu")
    except ModelFileError as exc:
        return None, f"deep features not computed: {exc}"
    if not hasattr(seg.model, "bottleneck") or not hasattr(seg.model, "downsamples"):
        return None, (f"deep features not computed: the segmentation model is a "
                      f"{seg.card.get('architecture', '?')}, not a DynUNet (no encoder blocks to read).")
    return seg, ""


def encoder_id(segmenter) -> dict[str, Any]:
    """What identifies the encoder the deep features came from (name, sha256, feature sizes)."""
    card = segmenter.card
    filters = list(card.get("architecture_kwargs", {}).get("filters", []))
    return {"name": str(card.get("name", "?")), "sha256": str(card.get("sha256", "")),
            "channels": {"down": int(filters[-2]) if len(filters) > 1 else 0,
                         "bott": int(filters[-1]) if filters else 0}}


def raw_columns(channels: Mapping[str, int]) -> dict[str, list[str]]:
    """Raw column names per region for the feature sizes ``{"down": C1, "bott": C2}``."""
    return {region: [f"{RAW_PREFIX}{region}_{layer}_{c:03d}" for layer in LAYERS for c in range(int(channels[layer]))]
            for region in REGIONS}


def raw_deep_columns(frame: pd.DataFrame) -> list[str]:
    """The raw deep-feature columns present in a table."""
    return [c for c in frame.columns if str(c).startswith(RAW_PREFIX)]


def _sub_geometry(geometry, lo, hi):
    from ..cases import Geometry

    origin = geometry.ijk_to_lps() @ np.array([lo[2], lo[1], lo[0], 1.0])
    return Geometry(shape=tuple(int(b - a) for a, b in zip(lo, hi)), spacing=geometry.spacing,
                    origin=tuple(origin[:3]), direction=geometry.direction)


def _liver_crop(labels: np.ndarray, geometry) -> tuple[tuple[slice, ...], Any] | None:
    idx = np.argwhere(labels > 0)
    if not len(idx):
        return None
    spacing_kji = np.asarray(geometry.spacing, float)[::-1]
    margin = np.ceil(MARGIN_MM / spacing_kji).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, np.asarray(labels.shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), _sub_geometry(geometry, lo, hi)


def _window(image: np.ndarray, labels: np.ndarray, roi: Sequence[int], stride: Sequence[int]):
    """The ``roi``-sized window (rounded up to a multiple of ``stride``) of a ``(C, K, J, I)`` image and its
    ``(K, J, I)`` labels centred on the tumour (on the liver when there is no tumour), padded with air /
    background where the volume is smaller: the input size the network was trained and is applied with."""
    size = (np.ceil(np.asarray(roi) / np.asarray(stride)) * np.asarray(stride)).astype(int)
    shape = np.asarray(labels.shape)
    focus = np.isin(labels, TUMOR_LABELS)
    if not focus.any():
        focus = labels > 0
    centre = np.round(np.argwhere(focus).mean(0)).astype(int) if focus.any() else shape // 2
    lo = np.clip(centre - size // 2, 0, np.maximum(shape - size, 0))
    hi = np.minimum(lo + size, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    image, labels = image[(slice(None), *box)], labels[box]
    before = (size - (hi - lo)) // 2
    pads = [(int(b), int(t - n - b)) for b, t, n in zip(before, size, hi - lo)]
    return np.pad(image, [(0, 0)] + pads, constant_values=0.0), np.pad(labels, pads, constant_values=0)


class _EncoderDone(Exception):
    """Raised by the bottleneck hook: the decoder is not needed."""


def _pool(feature, mask: np.ndarray) -> np.ndarray:
    """Masked average of ``feature`` (torch ``(1, C, k, j, i)``) over ``mask`` (input-grid bool), the mask
    area-weighted onto the feature grid. NaN when the mask is empty."""
    import torch
    import torch.nn.functional as F

    shape = np.asarray(mask.shape)
    fshape = np.asarray(feature.shape[2:])
    factor = tuple(int(f) for f in shape // fshape)
    if not mask.any():
        return np.full(int(feature.shape[1]), np.nan)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    w = F.avg_pool3d(m, kernel_size=factor, stride=factor)[0, 0]
    w = w[: fshape[0], : fshape[1], : fshape[2]]
    total = float(w.sum())
    if total <= 0:
        return np.full(int(feature.shape[1]), np.nan)
    pooled = (feature[0].float().cpu() * w[None]).sum(dim=(1, 2, 3)) / total
    return pooled.double().numpy()


def deep_raw_features(labels: np.ndarray, geometry, arterial: np.ndarray | None, portal: np.ndarray | None,
                      *, segmenter=None) -> tuple[dict[str, float], list[str]]:
    """Raw pooled encoder features of one pre-treatment study. Returns ``(features, notes)``.

    ``labels`` (0 bg, 1 liver, 2 viable, 3 necrosis, 4 PVTT), ``arterial`` and ``portal`` (HU) are ``[k, j, i]``
    arrays on ``geometry``. ``segmenter``: a :class:`~HCCTwinLib.segmentation.Segmenter` (default: the installed
    model on the CPU). Without a segmentation model, without one of the phases the model needs, or without liver in
    the label map, the features are empty and ``notes`` says why.
    """
    import torch
    from scipy import ndimage

    from ..segmentation.preprocessing import labels_to_model_grid, to_model_grid

    if segmenter is None:
        segmenter, note = get_encoder()
        if segmenter is None:
            return {}, [note]
    phases = {"arterial": arterial, "portal": portal}
    missing = [p for p in segmenter.phases if phases.get(p) is None]
    if missing:
        return {}, [f"deep features not computed: the segmentation encoder needs the {', '.join(missing)} phase(s)."]
    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(geometry.shape):
        raise InputError(f"labels have shape {labels.shape}, but the geometry says {geometry.shape}.")
    crop = _liver_crop(labels, geometry)
    if crop is None:
        return {}, ["deep features not computed: the label map has no liver."]
    box, sub = crop
    stack = [np.asarray(phases[p], np.float32)[box] for p in segmenter.phases]
    image, mgeom = to_model_grid(stack, sub, segmenter.spacing_mm, segmenter.window_hu)
    lab = labels_to_model_grid(np.ascontiguousarray(labels[box]), sub, mgeom)
    image, lab = _window(image, lab, segmenter.roi_size, segmenter.stride)
    tumor = ndimage.binary_dilation(np.isin(lab, TUMOR_LABELS), iterations=1)
    liver = (lab == 1) & ~tumor
    model = segmenter.model
    device = next(model.parameters()).device
    caught: dict[str, Any] = {}

    def keep(name, stop=False):
        def hook(module, inputs, output):
            caught[name] = output
            if stop:
                raise _EncoderDone
        return hook

    hooks = [model.downsamples[-1].register_forward_hook(keep("down")),
             model.bottleneck.register_forward_hook(keep("bott", stop=True))]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None].to(device))
    except _EncoderDone:
        pass
    finally:
        for h in hooks:
            h.remove()
    names = raw_columns({k: int(v.shape[1]) for k, v in caught.items()})
    out: dict[str, float] = {}
    for region, mask in (("tumor", tumor), ("liver", liver)):
        values = np.concatenate([_pool(caught[layer], mask) for layer in LAYERS])
        out.update({n: float(v) for n, v in zip(names[region], values)})
    notes = [] if tumor.any() else ["deep features: no tumour in the label map, tumour features left empty."]
    return out, notes


# ----------------------------------------------------------------------------------------------------------------
# PCA reduction (fitted on the training split, stored in the engine)
# ----------------------------------------------------------------------------------------------------------------

class DeepFeatureReducer:
    """Per-region standardisation + PCA of the raw deep features into whitened ``deep_<region>_<n>`` columns."""

    def __init__(self, n_components: Mapping[str, int] | None = None):
        self.n_components = dict(DEFAULT_COMPONENTS if n_components is None else n_components)

    @property
    def columns_(self) -> list[str]:
        return [c for region in self.blocks_ for c in self.blocks_[region]["out"]]

    def fit(self, table: pd.DataFrame, encoder: Mapping[str, Any] | None = None) -> DeepFeatureReducer:
        """Fit on the training rows of ``table`` (raw ``deepraw_*`` columns; rows without a region are ignored for
        that region). ``encoder``: :func:`encoder_id` of the network the raw features came from."""
        self.encoder_ = dict(encoder or {})
        self.blocks_: dict[str, dict[str, Any]] = {}
        for region in REGIONS:
            cols = sorted(c for c in raw_deep_columns(table) if c.startswith(f"{RAW_PREFIX}{region}_"))
            if not cols:
                continue
            x = table[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
            x = x[np.isfinite(x).all(axis=1)]
            k = min(int(self.n_components.get(region, 0)), len(x) - 1, len(cols))
            if k < 1:
                continue
            mean = x.mean(0)
            sd = x.std(0)
            sd = np.where(sd > 1e-9, sd, 1.0)
            z = (x - mean) / sd
            _, s, vt = np.linalg.svd(z, full_matrices=False)
            comp = vt[:k]
            flip = np.sign(comp[np.arange(k), np.argmax(np.abs(comp), axis=1)])
            comp = comp * flip[:, None]
            var = s ** 2 / max(len(x) - 1, 1)
            scale = np.sqrt(np.where(var[:k] > 1e-12, var[:k], 1.0))
            self.blocks_[region] = {"raw": cols, "mean": mean, "sd": sd, "components": comp, "scale": scale,
                                    "explained": (var[:k] / var.sum()).tolist() if var.sum() > 0 else [0.0] * k,
                                    "n_fit": int(len(x)),
                                    "out": [f"{DEEP_PREFIX}{region}_{i + 1}" for i in range(k)]}
        if not self.blocks_:
            raise InputError("deep features: no complete raw deep-feature rows to fit the PCA on.")
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``deep_*`` columns (index of ``frame``); NaN for rows whose raw features of a region are missing."""
        out = pd.DataFrame(index=frame.index)
        for b in self.blocks_.values():
            x = frame.reindex(columns=b["raw"]).apply(pd.to_numeric, errors="coerce").to_numpy(float)
            ok = np.isfinite(x).all(axis=1)
            y = np.full((len(x), len(b["out"])), np.nan)
            if ok.any():
                y[ok] = ((x[ok] - b["mean"]) / b["sd"]) @ b["components"].T / b["scale"]
            for j, name in enumerate(b["out"]):
                out[name] = y[:, j]
        return out

    def add_columns(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with its ``deep_*`` columns (re)computed from its raw columns (a copy)."""
        out = frame.copy()
        for name, values in self.transform(frame).items():
            out[name] = values.to_numpy()
        return out

    def to_state(self, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        blocks = {}
        for region, b in self.blocks_.items():
            for key in ("mean", "sd", "components", "scale"):
                arrays[f"{prefix}{region}.{key}"] = np.asarray(b[key], float)
            blocks[region] = {"n_raw": len(b["raw"]), "raw_first": b["raw"][0], "raw_last": b["raw"][-1],
                              "out": list(b["out"]), "explained_variance_ratio": list(b["explained"]),
                              "n_fit": b["n_fit"]}
        meta = {"kind": "DeepFeatureReducer", "encoder": dict(self.encoder_), "blocks": blocks,
                "n_components": dict(self.n_components), "regions": list(REGIONS), "layers": list(LAYERS),
                "pooling": "masked average (tumour labels 2|3|4 dilated 1 voxel; liver label 1 outside it)"}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prefix: str = ""
                   ) -> DeepFeatureReducer:
        self = cls(n_components=meta.get("n_components"))
        self.encoder_ = dict(meta.get("encoder", {}))
        channels = self.encoder_.get("channels") or {}
        names = raw_columns(channels) if channels else {}
        self.blocks_ = {}
        for region, bm in meta["blocks"].items():
            raw = sorted(names.get(region, []))
            if len(raw) != int(bm["n_raw"]) or raw[0] != bm["raw_first"] or raw[-1] != bm["raw_last"]:
                raise InputError(f"deep features in the model file: the {region} block's raw columns do not match "
                                 f"the encoder's feature sizes {channels}.")
            b = {key: np.asarray(arrays[f"{prefix}{region}.{key}"], float)
                 for key in ("mean", "sd", "components", "scale")}
            b.update({"raw": raw, "out": list(bm["out"]), "explained": list(bm["explained_variance_ratio"]),
                      "n_fit": int(bm["n_fit"])})
            self.blocks_[region] = b
        return self
