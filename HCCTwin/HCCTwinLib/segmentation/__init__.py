"""Liver / tumor / necrosis / PVTT segmentation: MONAI network, inference with a warm cache, training, metrics.

Public API::

    build_model(architecture="DynUNet", **kwargs)                      # model.py
    get_segmenter(weights=None, device="auto") -> Segmenter            # inference.py (cached per file + device)
    Segmenter.segment(case_or_arrays, geometry=None, progress=None) -> uint8 labels on the input grid
    postprocess(labels, spacing_xyz, ...)                              # postprocessing.py
    train_segmentation(cohort_dir, out_dir, *, epochs, batch_size, patch_size, lr, val_fraction, seed, device,
                       resume, max_cases, progress, ...)               # train.py
    dice_per_label(pred, truth), lesion_detection(pred, truth, geometry, min_diameter_mm=10)   # metrics.py

torch and MONAI are imported when a function needs them, not at import time of this package.
"""

from .inference import DEFAULT_MODEL_NAME, Segmenter, clear_cache, default_weights_path, get_segmenter, segment_case
from .metrics import (
    cohort_lesion_detection,
    detection_by_size,
    dice_per_label,
    lesion_counts,
    lesion_detection,
    mean_dice,
)
from .model import DEFAULT_PATCH_KJI, DEFAULT_SPACING_MM, build_model, count_parameters, model_kwargs
from .postprocessing import postprocess
from .preprocessing import from_model_grid, model_grid, normalize_hu, to_model_grid
from .train import discover_samples, split_patients, train_segmentation

__all__ = [
    "DEFAULT_MODEL_NAME", "DEFAULT_PATCH_KJI", "DEFAULT_SPACING_MM", "Segmenter", "build_model", "clear_cache",
    "cohort_lesion_detection", "count_parameters", "default_weights_path", "detection_by_size", "dice_per_label",
    "discover_samples", "from_model_grid", "get_segmenter", "lesion_counts", "lesion_detection", "mean_dice",
    "model_grid",
    "model_kwargs", "normalize_hu", "postprocess", "segment_case", "split_patients", "to_model_grid",
    "train_segmentation",
]
