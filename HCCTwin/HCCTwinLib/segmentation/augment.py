"""Appearance randomisation and phase dropout for segmentation training (issue 22: models that hold on real scans).

The simulator's images have one appearance per tissue; a network trained on them alone learns the simulator's
contrast, noise and sharpness, and on a real scan draws liver into the stomach and tumour into the heart. These
augmentations act on a normalised training patch (``(C, K, J, I)`` in [0, 1], the HU window of the model card) and
its label patch, in the spirit of SynthSeg-style domain randomisation (Billot et al., Med Image Anal 2023), within
what the cached, already-windowed volumes allow:

* a random monotone intensity curve per phase (piecewise linear through jittered control points): the relative
  contrast of every tissue changes, background organs included, while their order is kept;
* per-label intensity offsets (liver, viable tumour, necrosis, PVTT): liver-to-tumour contrast of other scanners and
  contrast timings;
* a smooth multiplicative bias field; Gaussian blur in plane and along z (thin to 7 mm slices, partial volume);
  slice-thickness loss (every other slice averaged and repeated); correlated noise of random strength;
* **phase dropout**: with probability ``phase_dropout`` one phase is copied onto the other channel, which is how a
  single-phase study (portal only, arterial only, or a delayed phase given as portal) is fed to the network at
  inference (:meth:`HCCTwinLib.segmentation.inference.Segmenter`).

Every draw comes from the caller's ``numpy.random.Generator`` (reproducible for a seed).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: description written into the model card's hyper-parameters
DESCRIPTION = ("appearance randomisation (p={p}): random monotone intensity curve per phase (5 jittered control "
               "points), per-label offsets sd 0.05 (25 HU), smooth bias field +-10%, blur sigma <= 1.2 voxel in plane "
               "and <= 1.0 along z, slice averaging (p=0.2), correlated noise sd <= 0.05; phase dropout p={d} (one "
               "phase copied onto both channels)")


def random_curve(x: np.ndarray, rng: np.random.Generator, n_points: int = 5, jitter: float = 0.12) -> np.ndarray:
    """A random monotone piecewise-linear map of [0, 1] onto itself applied to ``x`` (values outside are clipped)."""
    xp = np.linspace(0.0, 1.0, n_points)
    yp = np.clip(xp + rng.uniform(-jitter, jitter, n_points), 0.0, 1.0)
    yp[0], yp[-1] = min(yp[0], 0.1), max(yp[-1], 0.9)
    yp = np.maximum.accumulate(yp)
    return np.interp(np.clip(x, 0.0, 1.0), xp, yp).astype(np.float32)


def bias_field(shape, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """A smooth multiplicative field around 1 (``1 +- strength``) over a ``(K, J, I)`` patch."""
    coarse = rng.uniform(-strength, strength, (2, 3, 3)).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse.shape)]
    field = ndimage.zoom(coarse, zoom, order=1, mode="nearest")
    out = np.ones(shape, np.float32)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, field.shape))
    out[sl] += field[sl]
    return out


def randomise_appearance(img: np.ndarray, lbl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A randomised-appearance copy of a normalised ``(C, K, J, I)`` patch (labels ``(K, J, I)`` unchanged)."""
    out = np.empty_like(img, dtype=np.float32)
    offsets = {lab: rng.normal(0.0, 0.05, img.shape[0]) for lab in (1, 2, 3, 4)}
    bias = bias_field(img.shape[1:], rng) if rng.random() < 0.5 else None
    sig_xy = rng.uniform(0.0, 1.2) if rng.random() < 0.5 else 0.0
    sig_z = rng.uniform(0.0, 1.0) if rng.random() < 0.5 else 0.0
    thick = rng.random() < 0.2
    noise_sd = rng.uniform(0.0, 0.05) if rng.random() < 0.5 else 0.0
    for c in range(img.shape[0]):
        ch = random_curve(img[c], rng)
        for lab, off in offsets.items():
            ch[lbl == lab] += float(off[c])
        if bias is not None:
            ch *= bias
        if sig_xy > 0 or sig_z > 0:
            ch = ndimage.gaussian_filter(ch, (sig_z, sig_xy, sig_xy), truncate=2.0, mode="nearest")
        if thick and ch.shape[0] >= 2:
            k = ch.shape[0] // 2 * 2
            pairs = 0.5 * (ch[0:k:2] + ch[1:k:2])
            ch[0:k:2], ch[1:k:2] = pairs, pairs
        if noise_sd > 0:
            noise = rng.normal(0.0, 1.0, ch.shape).astype(np.float32)
            noise = ndimage.gaussian_filter(noise, (0.0, 0.7, 0.7), truncate=2.0)
            ch += noise * (noise_sd / max(float(noise.std()), 1e-6))
        out[c] = ch
    return out


def drop_phase(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copy one randomly chosen phase onto every channel (a single-phase study as the network sees it)."""
    keep = int(rng.integers(0, img.shape[0]))
    return np.repeat(img[keep:keep + 1], img.shape[0], axis=0)
