"""The segmentation network: a MONAI DynUNet (nnU-Net-style), 2 input phases -> 5 labels.

Default size: filters 16-32-64-128-256, five levels, 5.64 M parameters = 22.6 MB as float32 safetensors.
Tensors are ``(N, C, K, J, I)`` on the *model grid* (see :mod:`.preprocessing`): k = S (z), j = P (y), i = L (x), so
the first down-sampling ``(1, 2, 2)`` keeps the coarser z axis (3 mm vs 1.5 mm) and later ones are isotropic.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..jsonutil import jsonable

ARCHITECTURES = ("DynUNet", "SegResNet")
DEFAULT_ARCHITECTURE = "DynUNet"
DEFAULT_FILTERS = (16, 32, 64, 128, 256)
#: model-grid spacing in (x, y, z) mm
DEFAULT_SPACING_MM = (1.5, 1.5, 3.0)
#: training patch / sliding-window ROI in (k, j, i) voxels: 144 x 144 x 144 mm at the default spacing
DEFAULT_PATCH_KJI = (48, 96, 96)


def default_strides(n_levels: int) -> list[list[int]]:
    if n_levels < 2:
        raise ValueError("DynUNet needs at least 2 levels")
    return [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * (n_levels - 2)


def model_kwargs(architecture: str = DEFAULT_ARCHITECTURE, **overrides) -> dict[str, Any]:
    """Complete, JSON-able constructor kwargs for ``architecture`` (what the model card stores)."""
    if architecture == "DynUNet":
        filters = [int(f) for f in overrides.pop("filters", DEFAULT_FILTERS)]
        strides = overrides.pop("strides", None) or default_strides(len(filters))
        strides = [[int(s) for s in (st if isinstance(st, (list, tuple)) else [st] * 3)] for st in strides]
        if len(strides) != len(filters):
            raise ValueError(f"DynUNet: {len(filters)} filters but {len(strides)} strides")
        kw = {"spatial_dims": 3, "in_channels": 2, "out_channels": 5,
              "kernel_size": [[3, 3, 3]] * len(filters), "strides": strides,
              "upsample_kernel_size": strides[1:], "filters": filters, "norm_name": "instance",
              "deep_supervision": False, "res_block": False}
    elif architecture == "SegResNet":
        kw = {"spatial_dims": 3, "in_channels": 2, "out_channels": 5, "init_filters": 16,
              "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}
    else:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    kw.update(overrides)
    return jsonable(kw)


def build_model(architecture: str = DEFAULT_ARCHITECTURE, **kwargs):
    """Build the network from the model card's ``architecture`` and ``architecture_kwargs`` (or defaults)."""
    from monai.networks.nets import DynUNet, SegResNet

    kw = copy.deepcopy(model_kwargs(architecture, **kwargs))
    if architecture == "DynUNet":
        return DynUNet(**kw)
    return SegResNet(**kw)


def total_stride(architecture: str, kwargs: dict[str, Any]) -> tuple[int, int, int]:
    """Product of the down-sampling strides per axis (k, j, i): patch/ROI sizes must be multiples of it."""
    if architecture == "DynUNet":
        return tuple(int(np.prod([s[a] for s in kwargs["strides"]])) for a in range(3))
    n = 2 ** (len(kwargs.get("blocks_down", [1, 2, 2, 4])) - 1)
    return (n, n, n)


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))
