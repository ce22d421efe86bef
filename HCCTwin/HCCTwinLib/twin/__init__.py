"""Conditional follow-up generator: liver crop, rectified-flow model, sampling, training, baselines.

Public API::

    get_generator(weights=None, device="auto") -> Generator            # generator.py (cached per file + device)
    Generator.generate(case_or_phases, labels=None, geometry=None, *, regimens, weeks=(8, 16, 24), samples=4,
                       seed=0, steps=None, progress=None) -> {regimen: {weeks: CropFollowUp}}
    CropFollowUp: a FollowUp kept as the generated crop, pasted into the full grid when read     # crop.py
    Generator.untrained(regimens=None, crop_shape=(32, 64, 64), architecture_kwargs=None, seed=0)
    train_generator(cohort_dir, out_dir, *, epochs, steps_per_epoch, batch_size, lr, seed, device, resume,
                    max_cases, progress, ...)                          # train.py
    make_crop_box / to_crop / paste_image / paste_labels / blend_weight    # crop.py
    copy_baseline(...), ExponentialBaseline.fit_cohort(...).predict(...)   # baselines.py

torch and MONAI are imported when a function needs them, not at import time of this package.
"""

from .baselines import ExponentialBaseline, copy_baseline
from .crop import (
    DEFAULT_CROP_KJI,
    CropBox,
    CropFollowUp,
    PasteContext,
    blend_weight,
    make_crop_box,
    paste_image,
    paste_labels,
    to_crop,
)
from .generator import DEFAULT_MODEL_NAME, Generator, clear_cache, default_weights_path, get_generator
from .train import discover_pairs, train_generator

__all__ = [
    "DEFAULT_CROP_KJI", "DEFAULT_MODEL_NAME", "CropBox", "CropFollowUp", "ExponentialBaseline", "Generator",
    "PasteContext", "blend_weight",
    "clear_cache", "copy_baseline", "default_weights_path", "discover_pairs", "get_generator", "make_crop_box",
    "paste_image", "paste_labels", "to_crop", "train_generator",
]
