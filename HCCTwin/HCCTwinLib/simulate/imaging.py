"""CT image formation of the simulator: scanner profiles, partial-volume blur, correlated noise, bolus timing.

A scanner profile fixes the noise level and texture, the in-plane point-spread function and the slice profile. One
patient is scanned on one scanner; each visit (baseline, w08, ...) has its own bolus-timing factors and its own
noise realisation, both drawn from the visit's random stream only: every regimen's follow-up at a given week shares
them (common random numbers), so the difference between two regimens' images is the treatment effect alone, and the
w00 "follow-up" is the baseline scan itself.

Blur is linear: ``blur(base + delta) = blur(base) + blur(delta)``, and ``delta`` (tumours, thrombus, resection) is
non-zero only in a box around the liver, so a follow-up costs one small blur instead of a whole-volume one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .shapes import BBox, pad_bbox

HU_MIN, HU_MAX = -1024.0, 3071.0

SCANNER_MODELS = ("vendor-A 64-row", "vendor-B 128-row", "vendor-C dual-source", "vendor-D 16-row")


@dataclass(frozen=True)
class Scanner:
    """Noise SD (HU, in water-equivalent soft tissue), noise correlation (mm, in-plane), PSF sigma (mm, in-plane),
    slice-profile FWHM as a multiple of the slice spacing, and a small HU calibration offset."""

    model: str
    noise_sd: float
    noise_corr_mm: float
    psf_mm: float
    slice_fwhm: float
    hu_offset: float
    kernel: str

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Scanner:
        i = int(rng.integers(len(SCANNER_MODELS)))
        kernel = "sharp" if rng.random() < 0.3 else "standard"
        return cls(model=SCANNER_MODELS[i],
                   noise_sd=float(rng.uniform(7, 13) * (1.35 if kernel == "sharp" else 1.0)
                                  * (1.25 if i == 3 else 1.0)),
                   noise_corr_mm=float(rng.uniform(0.5, 0.9) if kernel == "sharp" else rng.uniform(0.9, 1.6)),
                   psf_mm=float(rng.uniform(0.4, 0.7) if kernel == "sharp" else rng.uniform(0.7, 1.3)),
                   slice_fwhm=float(rng.uniform(1.0, 1.4)), hu_offset=float(rng.normal(0, 3)), kernel=kernel)

    def blur_sigma_vox(self, spacing_xyz) -> tuple[float, float, float]:
        """Gaussian sigma (voxels, numpy k, j, i order): voxel averaging (box -> s/sqrt(12)) plus the PSF."""
        sx, sy, sz = spacing_xyz
        sig = []
        for s in (sz, sy, sx):
            psf = self.slice_fwhm * sz / 2.355 if s is sz else self.psf_mm
            sig.append(float(np.sqrt((s / np.sqrt(12)) ** 2 + psf ** 2) / s))
        return tuple(sig)

    def noise_sigma_vox(self, spacing_xyz) -> tuple[float, float, float]:
        sx, sy, _ = spacing_xyz
        return (0.0, self.noise_corr_mm / sy, self.noise_corr_mm / sx)


def _kernel_energy(sigma: float, truncate: float = 3.0) -> float:
    """Sum of squared weights of scipy's 1D Gaussian kernel (to normalise filtered white noise)."""
    if sigma <= 0:
        return 1.0
    n = int(truncate * sigma + 0.5)
    delta = np.zeros(2 * n + 1)
    delta[n] = 1.0
    w = ndimage.gaussian_filter1d(delta, sigma, truncate=truncate, mode="constant")
    return float(np.sum(w ** 2))


def blur(array: np.ndarray, sigma_vox) -> np.ndarray:
    return ndimage.gaussian_filter(array, sigma_vox, truncate=3.0, mode="nearest")


def correlated_noise(rng: np.random.Generator, shape, sigma_vox, sd: float) -> np.ndarray:
    """Stationary Gaussian noise with in-plane correlation and standard deviation ``sd`` (float32)."""
    white = rng.standard_normal(size=shape, dtype=np.float32)
    if any(s > 0 for s in sigma_vox):
        white = ndimage.gaussian_filter(white, sigma_vox, truncate=3.0, mode="wrap")
        energy = np.prod([_kernel_energy(s) for s in sigma_vox])
        white *= np.float32(1.0 / np.sqrt(energy))
    white *= np.float32(sd)
    return white


def blur_delta(delta: np.ndarray, bb: BBox, sigma_vox, shape) -> tuple[BBox, np.ndarray]:
    """Blur a change confined to ``bb`` (given as the array over ``bb``): returns the padded box and its blur."""
    pad = tuple(int(np.ceil(3.0 * s)) + 1 for s in sigma_vox)
    pb = pad_bbox(bb, pad, shape)
    full = np.zeros(tuple(s.stop - s.start for s in pb), np.float32)
    inner = tuple(slice(b.start - p.start, b.stop - p.start) for b, p in zip(bb, pb))
    full[inner] = delta
    return pb, ndimage.gaussian_filter(full, sigma_vox, truncate=3.0, mode="constant")


def finalize(hu: np.ndarray) -> np.ndarray:
    """Round to whole HU and clip to the 12-bit CT range (float32, exactly representable as int16)."""
    np.rint(hu, out=hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return hu
