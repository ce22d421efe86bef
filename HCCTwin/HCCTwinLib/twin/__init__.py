"""Virtual follow-ups: the baseline-anchored twin (default), the earlier rectified-flow network, baselines.

The installed generator (``hcctwin_twin``, architecture ``anchored-kinetic``, issue 23) is the anchored twin:
per-lesion kinetics from pre-treatment covariates (:mod:`.kinetic`) rendered on the patient's own image
(:mod:`.render`), with the generator interface (:mod:`.anchored`); ``hcctwin train generator`` fits it on a cohort's
observed follow-ups (:mod:`.fit`). The rectified-flow network (:mod:`.model`, :mod:`.train`, :class:`Generator`,
crop grid :mod:`.crop`) stays loadable and trainable (``--architecture flow``) for comparison; it is measured worse
on every generator metric (``benchmarks/results/generator_evaluation*.md``).

Public API::

    get_generator(weights=None, device="auto") -> AnchoredGenerator | Generator   # by the model card's architecture
    .generate(case_or_phases, labels=None, geometry=None, *, regimens, weeks=(8, 16, 24), samples=4,
              seed=0, steps=None, progress=None) -> {regimen: {weeks: FollowUp}}
    train_kinetic(cohort_dir, out_dir, ...)                             # fit.py: the anchored twin
    train_generator(cohort_dir, out_dir, *, epochs, ...)               # train.py: the flow network
    copy_baseline(...), ExponentialBaseline.fit_cohort(...).predict(...)   # baselines.py

torch and MONAI are imported when a function needs them, not at import time of this package.
"""

from .anchored import AnchoredGenerator, PatchFollowUp
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
from .fit import train_kinetic
from .generator import DEFAULT_MODEL_NAME, Generator, clear_cache, default_weights_path, get_generator
from .train import discover_pairs, train_generator

__all__ = [
    "AnchoredGenerator", "PatchFollowUp", "train_kinetic",
    "DEFAULT_CROP_KJI", "DEFAULT_MODEL_NAME", "CropBox", "CropFollowUp", "ExponentialBaseline", "Generator",
    "PasteContext", "blend_weight",
    "clear_cache", "copy_baseline", "default_weights_path", "discover_pairs", "get_generator", "make_crop_box",
    "paste_image", "paste_labels", "to_crop", "train_generator",
]
