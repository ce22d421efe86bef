"""Conditional rectified-flow generator of follow-up liver crops (MONAI ``DiffusionModelUNet`` + ``RFlowScheduler``).

Generated channels (``x``, 6): ``[res_arterial, res_portal, liver, viable, necrosis, pvtt]``

- ``res_*`` = (follow-up - pre) HU / (:data:`RESIDUAL_SCALE_HU` * g(weeks)), clipped to +-:data:`RESIDUAL_CLIP`;
  the image residual actually applied is ``g(weeks) * RESIDUAL_SCALE_HU * res``, with the gate
  ``g(w) = 1 - exp(-w / GATE_WEEKS)``, so ``g(0) == 0`` exactly: interval 0 gives back the input exactly.
- label channels = change of the one-hot labels 1..4 (follow-up - pre) / 2, in [-1, 1] (0 = unchanged), generated
  jointly with the image so each sample's labels match its image. At 0 weeks the labels are the pre labels (the
  generator does not sample there).

Conditioning channels (7, concatenated to ``x_t``): pre arterial and portal ((clip(HU, -300, 1500) - 100) / 200),
pre label one-hot 1..4 in [-1, 1], and a constant ``weeks / 24`` channel. The regimen is a class embedding
(``num_class_embeds = len(regimens) + 1``; the last index is the "no regimen" class used for condition dropout).

Optional 8th channel, the *regimen prior* (model card ``regimen_prior``): the expected log change of the viable
tumour volume under the regimen at this interval, ``clip(rate_r * weeks, -5, 2) / 2.5``, with one rate per regimen
fitted on the training cohort's observed follow-ups (the exponential baseline's fit). The class embedding has to
learn each regimen's effect from that regimen's patients alone; this channel gives every regimen the same
dose-response axis, learned from all pairs together (0 for the "no regimen" class and regimens without training
data). A model without it (7 channels) loads and runs as before.

Rectified flow (MONAI convention): ``x_t = (1 - t/T) x0 + (t/T) noise``, velocity ``v = x0 - noise``; sampling
integrates from t = T to 0 with ``RFlowScheduler.step`` (Euler), which works for 3D as is. The network is
*x0-parametrised*: it outputs ``x0_hat`` and the velocity is ``(x0_hat - x_t) / (t/T)``. Its zero-initialised output
layer therefore starts as "no change" (the residual prior), which a small model on a small cohort learns from in a
few hundred steps, where a plain velocity output first has to learn to cancel the noise. Training minimises the
velocity MSE weighted by ``(t/T)^2`` (= the x0 MSE; the unweighted velocity loss explodes as t -> 0 for this
parametrisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..labels import MAX_LABEL

ARCHITECTURE = "DiffusionModelUNet-RF"
IMAGE_CHANNELS = 2
LABEL_CHANNELS = MAX_LABEL  # labels 1..4
OUT_CHANNELS = IMAGE_CHANNELS + LABEL_CHANNELS
COND_CHANNELS = 2 + LABEL_CHANNELS + 1
RESIDUAL_SCALE_HU = 100.0
RESIDUAL_CLIP = 12.0
GATE_WEEKS = 8.0
WEEKS_SCALE = 24.0
HU_CLIP = (-300.0, 1500.0)
HU_CENTER, HU_SCALE = 100.0, 200.0
#: regimen-prior channel: expected log viable-volume ratio, clipped and scaled
PRIOR_LOG_RATIO_CLIP = (-5.0, 2.0)
PRIOR_SCALE = 2.5
NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_STEPS = 4

DEFAULT_MODEL_KWARGS: dict[str, Any] = {
    "channels": [8, 16, 32, 64],
    "attention_levels": [False, False, False, False],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
}


def gate(weeks: float) -> float:
    """Residual gate g(w) = 1 - exp(-w / 8 weeks); g(0) == 0.0 exactly, g(8) = 0.63, g(24) = 0.95."""
    w = float(weeks)
    if w < 0 or not math.isfinite(w):
        raise ValueError(f"weeks must be a finite number >= 0, got {weeks!r}")
    return 1.0 - math.exp(-w / GATE_WEEKS)


def normalize_hu(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu, *HU_CLIP) - HU_CENTER) / HU_SCALE).astype(np.float32)


def onehot_labels(labels: np.ndarray) -> np.ndarray:
    """(4, ...) float32 in {-1, 1} for labels 1..4."""
    labels = np.asarray(labels)
    return np.stack([(labels == v).astype(np.float32) * 2.0 - 1.0 for v in range(1, MAX_LABEL + 1)])


def prior_value(rate_per_week: float | None, weeks: float) -> float:
    """Regimen-prior channel value: ``clip(rate * weeks, -5, 2) / 2.5``; 0 for an unknown rate (None)."""
    if rate_per_week is None:
        return 0.0
    return float(np.clip(float(rate_per_week) * float(weeks), *PRIOR_LOG_RATIO_CLIP) / PRIOR_SCALE)


def cond_channels(regimen_prior: bool) -> int:
    return COND_CHANNELS + int(bool(regimen_prior))


def condition(pre_arterial: np.ndarray, pre_portal: np.ndarray, pre_labels: np.ndarray, weeks: float,
              prior: float | None = None) -> np.ndarray:
    """(7, K, J, I) conditioning channels on the crop grid; (8, ...) with the regimen-prior value ``prior``."""
    w = np.full((1, *pre_labels.shape), float(weeks) / WEEKS_SCALE, np.float32)
    parts = [normalize_hu(pre_arterial)[None], normalize_hu(pre_portal)[None], onehot_labels(pre_labels), w]
    if prior is not None:
        parts.append(np.full((1, *pre_labels.shape), float(prior), np.float32))
    return np.concatenate(parts).astype(np.float32)


def target(pre_hu: np.ndarray, fu_hu: np.ndarray, pre_labels: np.ndarray, fu_labels: np.ndarray,
           weeks: float) -> np.ndarray:
    """(6, K, J, I) training target ``x0`` from a pre/follow-up pair on the crop grid (``*_hu``: (2, K, J, I))."""
    g = gate(weeks)
    if g <= 0:
        raise ValueError("training pairs need weeks > 0")
    res = np.clip((fu_hu - pre_hu) / (RESIDUAL_SCALE_HU * g), -RESIDUAL_CLIP, RESIDUAL_CLIP)
    return np.concatenate([res.astype(np.float32), (onehot_labels(fu_labels) - onehot_labels(pre_labels)) / 2.0])


def decode(x0: np.ndarray, weeks: float, pre_labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generated ``x0`` (..., 6, K, J, I) -> (HU residual (..., 2, K, J, I), label probabilities (..., 4, K, J, I)).

    Label channels are the change of the one-hot labels (follow-up - pre, / 2, in [-1, 1]); probabilities =
    ``clip(pre_onehot01 + change, 0, 1)`` (``pre_labels`` None: no pre labels, i.e. change from background)."""
    x0 = np.asarray(x0, dtype=np.float32)
    res = np.clip(x0[..., :IMAGE_CHANNELS, :, :, :], -RESIDUAL_CLIP, RESIDUAL_CLIP)
    residual = (res * np.float32(gate(weeks) * RESIDUAL_SCALE_HU)).astype(np.float32)
    base = 0.0 if pre_labels is None else (onehot_labels(pre_labels) + 1.0) / 2.0
    probs = np.clip(base + x0[..., IMAGE_CHANNELS:, :, :, :], 0.0, 1.0).astype(np.float32)
    return residual, probs


def labels_from_probs(probs: np.ndarray) -> np.ndarray:
    """(4, ...) probabilities of labels 1..4 -> uint8 labels: argmax where its probability > 0.5, else background."""
    best = np.argmax(probs, axis=0)
    top = np.take_along_axis(probs, best[None], axis=0)[0]
    return np.where(top > 0.5, best + 1, 0).astype(np.uint8)


def model_kwargs(regimens: Sequence[str], regimen_prior: bool = False, **overrides) -> dict[str, Any]:
    kw = dict(DEFAULT_MODEL_KWARGS)
    kw.update(overrides)
    kw.update({"spatial_dims": 3, "in_channels": OUT_CHANNELS + cond_channels(regimen_prior),
               "out_channels": OUT_CHANNELS,
               "num_class_embeds": len(regimens) + 1})
    kw["channels"] = [int(c) for c in kw["channels"]]
    kw["attention_levels"] = [bool(a) for a in kw.get("attention_levels") or [False] * len(kw["channels"])]
    return kw


def build_model(**kwargs):
    """The velocity network: ``DiffusionModelUNet(**kwargs)`` (see :func:`model_kwargs`)."""
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(**kwargs)


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def make_scheduler(discrete: bool = False):
    """``RFlowScheduler`` with T = 1000: continuous timesteps for training, integer ones for sampling (its ``step``
    casts the next timestep to int, so integer timesteps make the Euler steps sum exactly to T)."""
    from monai.networks.schedulers import RFlowScheduler

    return RFlowScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, use_discrete_timesteps=discrete,
                          sample_method="uniform")


def network(model, x_t, t, cond, regimen_index, memory_format=None):
    """One network evaluation: ``model(cat(x_t, cond), t, class_labels=regimen_index)`` (the predicted ``x0``).

    ``memory_format`` (e.g. ``torch.channels_last_3d`` for a model converted with ``model.to(memory_format=...)``)
    lays the input out the same way; the result is the same up to float rounding."""
    import torch

    inp = torch.cat([x_t, cond], dim=1)
    if memory_format is not None:
        inp = inp.contiguous(memory_format=memory_format)
    return model(inp, timesteps=t, class_labels=regimen_index).contiguous()


def velocity_from_x0(x0_hat, x_t, t):
    """RF velocity implied by an ``x0`` prediction: ``v = (x0_hat - x_t) / (t / T)`` (t > 0)."""
    s = (t.float() / NUM_TRAIN_TIMESTEPS).clamp_min(1e-3).view(-1, *([1] * (x_t.dim() - 1)))
    return (x0_hat - x_t) / s


def sample_rf(model, cond, regimen_index, noise, *, steps: int = DEFAULT_STEPS, autocast=None, callback=None,
              memory_format=None):
    """Euler integration of the learned flow from ``noise`` (t = T) to ``x0`` (t = 0) with ``RFlowScheduler.step``.

    The network predicts ``x0``; the velocity handed to the scheduler is :func:`velocity_from_x0`, so the last step
    (from t = T / steps to 0) lands exactly on the last ``x0`` prediction. ``memory_format``: see :func:`network`.
    """
    import contextlib

    import torch

    scheduler = make_scheduler(discrete=True)
    scheduler.set_timesteps(int(steps), device=noise.device)
    timesteps = [int(t) for t in scheduler.timesteps]
    x = noise
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    for n, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)
        with ctx:
            x0_hat = network(model, x, t_batch, cond, regimen_index, memory_format)
        v = velocity_from_x0(x0_hat.float(), x, t_batch)
        next_t = timesteps[n + 1] if n + 1 < len(timesteps) else 0
        x, _ = scheduler.step(v, t, x, next_t)
        if callback is not None:
            callback(n + 1, len(timesteps))
    return x


def rf_training_pair(x0, noise, t):
    """``(x_t, v_target)`` for rectified-flow training at timesteps ``t`` (N,) in [0, T)."""
    scheduler = make_scheduler()
    return scheduler.add_noise(x0, noise, t), x0 - noise


__all__ = ["ARCHITECTURE", "COND_CHANNELS", "DEFAULT_MODEL_KWARGS", "DEFAULT_STEPS", "OUT_CHANNELS", "build_model",
           "cond_channels", "condition", "count_parameters", "prior_value", "decode", "gate", "labels_from_probs",
           "model_kwargs", "normalize_hu", "network", "onehot_labels", "rf_training_pair", "sample_rf", "target",
           "velocity_from_x0"]
