"""Segmentation inference: a warm model cache, coarse-to-fine sliding windows, post-processing, input-grid output.

``get_segmenter(weights, device)`` loads (and verifies) a model file once per (file, device) and keeps it in memory,
so the second case is much faster than the first. ``Segmenter.segment(case_or_arrays, geometry)`` returns a uint8
label map on the *input* grid:

1. phases -> model grid (identity direction, model spacing; :mod:`.preprocessing`), HU window -> [0, 1];
2. optional stage 1 on a 2x coarser grid over the whole volume finds the liver box (auto for large volumes);
3. stage 2: ``monai.inferers.sliding_window_inference`` at model resolution inside the padded box only (Gaussian
   blending, logits held for the box only, argmax in slabs to uint8), CUDA autocast on the GPU, inference_mode;
4. optional PVTT stage (the model card's ``postprocessing.pvtt_stage``): PVTT is then not an argmax class; the PVTT
   probability of the stage model, thresholded at a value tuned on a labelled cohort (:mod:`.tuning`), marks
   portal-vein tumour thrombus inside the same box. The stage is either the model itself (one pass: a model trained
   with the thrombus weighted ranks it well but draws too much of it at the argmax) or a second network of the same
   grid, named by file and pinned by its sha256;
5. optional envelope stage (the model card's ``postprocessing.envelope_stage``, issue 22): a second network trained
   on images synthesised with a random appearance (:mod:`.synth`), which therefore depends less on the simulator's
   look, draws the liver + lesions on the same crop; everything the main model labels farther than ``margin_mm``
   from that envelope becomes background (on real CT the main model spills liver and "tumour" into the stomach and
   bowel; on the simulator the two agree and nothing changes). Their agreement (Dice of the two foregrounds before
   gating) goes to the out-of-domain guard. When they agree less than they ever do on the training domain
   (``takeover_below``, default the guard's caution threshold), the liver is the envelope's (its largest component)
   and a voxel stays tumour only where both networks call it tumour: out of its domain the simulator-trained model
   is the one to distrust (on a real healthy-liver CT it drew the spleen and stomach as liver). With an envelope
   stage, stage 1's liver box is the union of both networks' boxes, so a box drawn around the wrong organ cannot
   crop the liver away;
6. post-processing (:mod:`.postprocessing`) on the model grid, nearest-neighbour back to the input grid.

A study with one phase (portal only, arterial only, a delayed phase) is read by the model card's
``postprocessing.single_phase_stage`` when it names one: a network of the same grid trained with one phase on both
channels (phase dropout 1), with its own decision rules, PVTT and envelope stages and domain reference, attached
only where it read the tuning cohort's single-phase studies better than the main model
(:func:`.tuning.tune_single_phase`). Without one, the missing channel is filled with the given phase and the main
model reads it (what it was not trained on, unless its card accepts that input).

A CUDA out-of-memory error re-runs the step on the CPU with a message
(:func:`HCCTwinLib.device.call_with_cpu_fallback`).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import device as devices
from ..cases import Case, Geometry, accepted_inputs_of, fill_missing_phases, model_input
from ..errors import InputError
from ..labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR
from ..progress import ProgressCallback, SubProgress, report
from ..weights import ModelFileError, load_state, resolve_model_path, weights_dir
from ..weights.cache import ModelCache, model_label
from . import postprocessing
from .model import ARCHITECTURES, DEFAULT_PATCH_KJI, build_model, total_stride
from .preprocessing import DEFAULT_WINDOW_HU, from_model_grid, to_model_grid

DEFAULT_MODEL_NAME = "hcctwin_seg"
#: margin (mm) around the stage-1 liver box: covers stage-1 imprecision and the portal vein at the hilum
BOX_MARGIN_MM = 20.0
#: how a crop smaller than the network's ROI is padded before the sliding windows (MONAI / torch ``F.pad`` mode):
#: "replicate" repeats the edge slices. MONAI's default, "constant" 0, is the bottom of the HU window, i.e. air
#: above and below a thin scan: on 10 / 16 / 24-slice slabs through 12 simulated hold-out livers the liver Dice was
#: 0.68 / 0.92 / 0.96 with it and 0.97 / 0.98 / 0.98 with "replicate", whole studies unchanged
#: (benchmarks/results/segmentation_thin_scans.md)
PADDING_MODE = "replicate"
#: stage 1 runs automatically when the model-grid volume exceeds this many sliding-window ROIs
COARSE_AUTO_ROIS = 4
#: default margin (mm) around the envelope stage's liver within which the main model's labels are kept
ENVELOPE_MARGIN_MM = 6.0
#: agreement (Dice of the two foregrounds) of the main network and its envelope stage (a network trained on
#: randomised appearance, :mod:`.synth`) below which the out-of-domain guard (:mod:`HCCTwinLib.domain`) calls the
#: scan outside / caution, and below whose upper value the envelope stage draws the liver (card
#: ``postprocessing.envelope_stage.takeover_below`` overrides it): two networks that err differently agree closely
#: only where both are right: by the triangle inequality of the Jaccard distance, an agreement below 0.8 means at
#: least one of them has a Dice against the truth below 0.91. On the simulated tuning and hold-out cohorts the two
#: agree at 0.92 or more (envelope 0.2.0: min 0.923 / 0.965; benchmarks/results/segmentation_envelope_tuning.json,
#: segmentation_evaluation.md), so the takeover never happens there.
ENVELOPE_AGREEMENT = (0.80, 0.90)
_ARGMAX_SLAB = 16


#: marks "this model is its own PVTT stage" (card ``postprocessing.pvtt_stage.model`` = the model's own file name)
SELF_STAGE = "self"
#: logit offset that keeps a class out of the argmax
_EXCLUDED = -1.0e4


def pvtt_excluded_bias(class_bias: Sequence[float] | None, n_classes: int) -> tuple[float, ...]:
    """``class_bias`` (or zeros) with PVTT pushed out of the argmax."""
    bias = [0.0] * n_classes if class_bias is None else [float(b) for b in class_bias]
    bias[PVTT] = _EXCLUDED
    return tuple(bias)


def default_weights_path() -> Path:
    return weights_dir() / f"{DEFAULT_MODEL_NAME}.safetensors"


def _round_up(values: Sequence[int], multiple: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(np.ceil(v / m) * m) for v, m in zip(values, multiple))


def n_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI uses for an image of ``shape`` (for progress reporting)."""
    n = 1
    for size, r in zip(shape, roi):
        if size <= r:
            continue
        step = max(int(r * (1 - overlap)), 1)
        n *= int(np.ceil((size - r) / step)) + 1
    return n


def mirror_sets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (spatial axes 0, 1, 2 = K, J, I of the model grid), the empty one first:
    the mirrored copies test-time mirroring averages (nnU-Net's scheme; 2 ** len(axes) network passes)."""
    axes = sorted({int(a) for a in mirror_axes})
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror axes must be spatial axes 0, 1, 2 (K, J, I); got {list(mirror_axes)}")
    return [tuple(a for n, a in enumerate(axes) if mask >> n & 1) for mask in range(2 ** len(axes))]


def sliding_window_logits(model, image: np.ndarray, *, roi_size: Sequence[int], device, overlap: float = 0.25,
                          sw_batch_size: int = 1, progress: ProgressCallback | None = None,
                          cpu_precision: str = "fp32", mirror_axes: Sequence[int] = (),
                          padding_mode: str = PADDING_MODE):
    """Blended logits (a float32 CPU tensor ``(classes, K, J, I)``) of ``model`` over a normalised ``(C, K, J, I)``
    image: Gaussian-weighted sliding windows run on ``device`` (``cpu_precision`` ``"bf16"``: bfloat16 autocast on
    the CPU, :func:`device.cpu_precision`), accumulated on the CPU for this image only.

    ``mirror_axes``: test-time mirroring. The image is also run mirrored along every subset of these spatial axes
    (:func:`mirror_sets`), each prediction mirrored back, and the softmax probabilities averaged; the result is
    then the log of the mean probability (a valid logit: its softmax is that mean). Empty: one plain pass.
    ``padding_mode``: how an image smaller than ``roi_size`` is padded (:data:`PADDING_MODE`)."""
    import torch
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    flips = mirror_sets(mirror_axes)
    per_pass = max(1, int(np.ceil(n_windows(image.shape[1:], roi_size, overlap) / sw_batch_size)))
    total = per_pass * len(flips)
    done = [0]

    def predictor(x):
        with devices.autocast(device, cpu_precision):
            y = model(x)
        done[0] += 1
        report(progress, min(done[0] / total, 1.0), f"Segmentation window {done[0]}/{total}")
        return y.float()

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    roi = tuple(int(r) for r in roi_size)
    with torch.inference_mode():
        mean_prob = None
        for flip in flips:
            dims = [a + 2 for a in flip]
            xf = torch.flip(x, dims) if dims else x
            logits = sliding_window_inference(xf, roi_size=roi, sw_batch_size=sw_batch_size, predictor=predictor,
                                              overlap=overlap, mode="gaussian", sw_device=device,
                                              padding_mode=padding_mode, device=torch.device("cpu"))[0]
            del xf
            if len(flips) == 1:
                return logits
            if dims:
                logits = torch.flip(logits, [d - 1 for d in dims])
            prob = torch.softmax(logits, dim=0)
            del logits
            mean_prob = prob if mean_prob is None else mean_prob.add_(prob)
            del prob
        mean_prob.div_(len(flips))
        return mean_prob.clamp_(min=1e-12).log_()


def logits_to_labels(logits, *, class_bias: Sequence[float] | None = None, tumor_prob: bool = False):
    """Argmax labels (uint8) of ``(classes, K, J, I)`` logits (torch tensor or array), computed in slabs.

    ``class_bias``: one value per class added to the logits before the argmax (a prior shift for a rare class such
    as PVTT, tuned on a labelled cohort by :mod:`.tuning`). ``tumor_prob``: also return the softmax probability of
    viable tumour + necrosis (float32, of the unshifted logits) for the lesion-confidence filter of
    :mod:`.postprocessing`; the result is then ``(labels, tumour probability)``.
    """
    import torch

    logits = torch.as_tensor(logits)
    n_classes = logits.shape[0]
    bias = None
    if class_bias is not None and any(float(b) != 0.0 for b in class_bias):
        if len(class_bias) != n_classes:
            raise ValueError(f"class_bias has {len(class_bias)} values for {n_classes} classes")
        bias = torch.tensor([float(b) for b in class_bias], dtype=torch.float32).view(-1, 1, 1, 1)
    out = np.empty(tuple(logits.shape[1:]), np.uint8)
    prob = np.empty(out.shape, np.float32) if tumor_prob else None
    with torch.inference_mode():
        for k0 in range(0, out.shape[0], _ARGMAX_SLAB):
            slab = logits[:, k0:k0 + _ARGMAX_SLAB].float()
            if prob is not None:
                prob[k0:k0 + _ARGMAX_SLAB] = torch.softmax(slab, dim=0)[2:4].sum(dim=0).numpy()
            if bias is not None:
                slab = slab + bias
            out[k0:k0 + _ARGMAX_SLAB] = torch.argmax(slab, dim=0).to(torch.uint8).numpy()
    return (out, prob) if tumor_prob else out


def confidence_measures(logits, mask: np.ndarray) -> dict[str, float | None]:
    """The network's uncertainty over the voxels it labelled (``mask``, the argmax foreground): mean normalised
    entropy of the softmax (0 certain .. 1 uniform) and the share of voxels whose top class probability is under
    0.6 (computed in slabs; read by the out-of-domain guard, :mod:`HCCTwinLib.domain`)."""
    import torch

    logits = torch.as_tensor(logits)
    n = int(np.count_nonzero(mask))
    if n == 0:
        return {"mean_entropy": None, "uncertain_fraction": None}
    norm = float(np.log(logits.shape[0]))
    ent_sum, unsure = 0.0, 0
    with torch.inference_mode():
        for k0 in range(0, mask.shape[0], _ARGMAX_SLAB):
            m = torch.from_numpy(np.ascontiguousarray(mask[k0:k0 + _ARGMAX_SLAB]))
            if not bool(m.any()):
                continue
            p = torch.softmax(logits[:, k0:k0 + _ARGMAX_SLAB].float(), dim=0)
            ent = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=0) / norm
            ent_sum += float(ent[m].sum())
            unsure += int((p.max(dim=0).values[m] < 0.6).sum())
    return {"mean_entropy": ent_sum / n, "uncertain_fraction": unsure / n}


def softmax_channel(logits, channel: int) -> np.ndarray:
    """Softmax probability of one class (float32 ``(K, J, I)``) of ``(classes, K, J, I)`` logits, in slabs."""
    import torch

    logits = torch.as_tensor(logits)
    out = np.empty(tuple(logits.shape[1:]), np.float32)
    with torch.inference_mode():
        for k0 in range(0, out.shape[0], _ARGMAX_SLAB):
            out[k0:k0 + _ARGMAX_SLAB] = torch.softmax(logits[:, k0:k0 + _ARGMAX_SLAB].float(), dim=0)[channel].numpy()
    return out


def sliding_window_argmax(model, image: np.ndarray, *, roi_size: Sequence[int], device, overlap: float = 0.25,
                          sw_batch_size: int = 1, progress: ProgressCallback | None = None,
                          cpu_precision: str = "fp32", class_bias: Sequence[float] | None = None,
                          tumor_prob: bool = False, mirror_axes: Sequence[int] = (), padding_mode: str = PADDING_MODE):
    """Argmax labels (uint8, ``image.shape[1:]``) of ``model`` over a normalised ``(C, K, J, I)`` image
    (:func:`sliding_window_logits` then :func:`logits_to_labels`; with ``tumor_prob`` the result is
    ``(labels, tumour probability)``)."""
    logits = sliding_window_logits(model, image, roi_size=roi_size, device=device, overlap=overlap,
                                   sw_batch_size=sw_batch_size, progress=progress, cpu_precision=cpu_precision,
                                   mirror_axes=mirror_axes, padding_mode=padding_mode)
    out = logits_to_labels(logits, class_bias=class_bias, tumor_prob=tumor_prob)
    del logits
    return out


class Segmenter:
    """A loaded segmentation model and everything needed to apply it (from its model card)."""

    def __init__(self, model, card: Mapping[str, Any], device="cpu", *, message: str = "", path: Path | None = None,
                 overlap: float = 0.25, sw_batch_size: int = 1, roi_size: Sequence[int] | None = None,
                 pvtt_stage: Segmenter | None = None, envelope_stage: Segmenter | None = None,
                 single_phase_stage: Segmenter | None = None):
        import torch

        self.card = dict(card)
        self.device = torch.device(device)
        self.message = message
        self.path = path
        self.model = model.to(self.device).eval()
        self._cpu_model = None
        #: "bf16" or "fp32": inference arithmetic on the CPU (HCCTWIN_CPU_PRECISION; bf16 where the CPU has it natively)
        self.cpu_precision = devices.cpu_precision()
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        #: how a crop smaller than the ROI is padded (:data:`PADDING_MODE`)
        self.padding_mode = PADDING_MODE
        self.phases = tuple(self.card.get("input_phases") or ("arterial", "portal"))
        self.spacing_mm = tuple(float(s) for s in (self.card.get("spacing_mm") or (1.5, 1.5, 3.0)))
        self.window_hu = tuple(self.card.get("intensity", {}).get("window_hu", DEFAULT_WINDOW_HU))
        self.stride = total_stride(self.card.get("architecture", "DynUNet"), self.card["architecture_kwargs"])
        roi = roi_size or self.card.get("inference_roi_kji") or self.card.get("patch_size_kji") or DEFAULT_PATCH_KJI
        self.roi_size = _round_up(roi, self.stride)
        #: decision rules tuned on a labelled cohort (:mod:`.tuning`), from the card's ``postprocessing`` section:
        #: ``class_bias`` (added to the logits before the argmax) and ``min_tumor_confidence`` (a tumour component
        #: whose mean viable + necrosis probability is lower becomes liver); none in the card: plain argmax
        tuned = dict(self.card.get("postprocessing") or {})
        bias = tuned.get("class_bias")
        if bias is not None and len(bias) != int(self.card["architecture_kwargs"].get("out_channels", len(bias))):
            raise ModelFileError(f"model card: postprocessing.class_bias has {len(bias)} values, the model "
                                 f"{self.card['architecture_kwargs'].get('out_channels')} classes.")
        self.class_bias = tuple(float(b) for b in bias) if bias is not None else None
        self.min_tumor_confidence = float(tuned.get("min_tumor_confidence", 0.0))
        #: test-time mirroring (card ``postprocessing.mirror_axes``, tuned with the rules above): stage 2 and the
        #: PVTT stage average the softmax over the image mirrored along every subset of these model-grid axes
        #: (0, 1, 2 = K, J, I; :func:`mirror_sets`); empty: one plain pass. The liver box (stage 1) is never mirrored.
        try:
            self.mirror_axes = tuple(int(a) for a in tuned.get("mirror_axes", ()))
            mirror_sets(self.mirror_axes)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"model card: postprocessing.mirror_axes {tuned.get('mirror_axes')!r} is not a list "
                                 f"of model-grid axes 0, 1, 2; re-tune (`hcctwin tune segmentation`).") from exc
        #: the PVTT stage (:meth:`attach_pvtt_stage`): a second network whose PVTT probability, at or above
        #: ``pvtt_min_probability`` (card ``postprocessing.pvtt_stage.min_probability``), marks thrombus
        self.pvtt_stage: Segmenter | None = None  # may be ``self``
        self.pvtt_min_probability = float((tuned.get("pvtt_stage") or {}).get("min_probability", 0.5))
        #: smallest PVTT component kept (mL; card ``postprocessing.pvtt_stage.min_volume_ml``, tuned with the stage)
        self.pvtt_min_ml = float((tuned.get("pvtt_stage") or {}).get("min_volume_ml", postprocessing.MIN_PVTT_ML))
        if pvtt_stage is not None:
            self.attach_pvtt_stage(pvtt_stage)
        #: the envelope stage (:meth:`attach_envelope_stage`) and its margin (card
        #: ``postprocessing.envelope_stage.margin_mm``)
        self.envelope_stage: Segmenter | None = None
        self.envelope_margin_mm = float((tuned.get("envelope_stage") or {}).get("margin_mm", ENVELOPE_MARGIN_MM))
        #: agreement below which the envelope stage draws the liver (card
        #: ``postprocessing.envelope_stage.takeover_below``; default the guard's caution threshold)
        self.envelope_takeover_below = float((tuned.get("envelope_stage") or {}).get(
            "takeover_below", ENVELOPE_AGREEMENT[1]))
        if envelope_stage is not None:
            self.attach_envelope_stage(envelope_stage)
        #: the model that reads a single-phase study in this model's place (:meth:`attach_single_phase_stage`)
        self.single_phase_stage: Segmenter | None = None
        if single_phase_stage is not None:
            self.attach_single_phase_stage(single_phase_stage)
        self.last_info: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, device="auto", *, with_envelope: bool = True, with_single_phase: bool = True,
                  **options) -> Segmenter:
        """The model of ``path`` with the stages its card names; ``with_envelope`` / ``with_single_phase`` False:
        without that stage (to re-tune it after its file was replaced: ``hcctwin tune envelope / single-phase``)."""
        dev, message = devices.select_device(device) if isinstance(device, str) else (device, "")
        state, card = load_state(path)
        if "architecture_kwargs" not in card or card.get("architecture", "DynUNet") not in ARCHITECTURES:
            kind = card.get("architecture") or "no architecture"
            raise ModelFileError(f"{path}: model card says {kind!r} ({card.get('name', 'unnamed')}); it is not a "
                                 f"segmentation model ({', '.join(ARCHITECTURES)}). Give a segmentation model file.")
        model = build_model(card.get("architecture", "DynUNet"), **card["architecture_kwargs"])
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelFileError(f"{path}: weights do not fit the architecture in the model card ({str(exc)[:300]})"
                                 ) from exc
        stage = (card.get("postprocessing") or {}).get("pvtt_stage")
        if stage:
            loaded = cls._load_pvtt_stage(Path(path), stage, dev, options)
            if loaded is SELF_STAGE and stage.get("sha256") and stage["sha256"] != card.get("sha256"):
                raise ModelFileError(f"{path}: its card names the model itself as PVTT stage, tuned with sha256 "
                                     f"{str(stage['sha256'])[:12]}..., but the file is {str(card.get('sha256'))[:12]}"
                                     f"...; re-tune (`hcctwin tune segmentation --pvtt-model {Path(path).name}`).")
            options = {**options, "pvtt_stage": loaded}
        envelope = (card.get("postprocessing") or {}).get("envelope_stage") if with_envelope else None
        if envelope:
            inner = cls._load_stage_file(Path(path), envelope, dev, options, "envelope")
            if inner is SELF_STAGE:
                raise ModelFileError(f"{path}: its card names the model itself as its envelope stage; the envelope "
                                     f"stage must be another model (trained with --synthetic).")
            options = {**options, "envelope_stage": inner}
        single = (card.get("postprocessing") or {}).get("single_phase_stage") if with_single_phase else None
        if single:
            inner = cls._load_stage_file(Path(path), single, dev, options, "single-phase")
            if inner is SELF_STAGE:
                raise ModelFileError(f"{path}: its card names the model itself as its single-phase stage; it must be "
                                     f"another model (trained with --phase-dropout 1).")
            options = {**options, "single_phase_stage": inner}
        return cls(model, card, dev, message=message, path=Path(path), **options)

    @classmethod
    def _load_pvtt_stage(cls, path: Path, stage: Mapping[str, Any], dev, options) -> Segmenter:
        """The PVTT-stage model named in the card (:meth:`_load_stage_file`)."""
        return cls._load_stage_file(path, stage, dev, options, "PVTT")

    @classmethod
    def _load_stage_file(cls, path: Path, stage: Mapping[str, Any], dev, options, what: str) -> Segmenter:
        """The stage model named in the card: a file next to ``path`` whose sha256 is the one the card recorded
        when the stage was tuned (another file of the same name would make the tuned rule meaningless)."""
        key, retune = {"PVTT": ("pvtt_stage", "hcctwin tune segmentation --pvtt-model"),
                       "envelope": ("envelope_stage", "hcctwin tune envelope --cohort TUNING_COHORT --envelope-model"),
                       "single-phase": ("single_phase_stage", "hcctwin tune single-phase --cohort TUNING_COHORT "
                                                              "--single-phase-model")}[what]
        name = str(stage.get("model") or "")
        if not name or Path(name).name != name:
            raise ModelFileError(f"{path}: postprocessing.{key}.model must be a file name next to the model, "
                                 f"not {name!r}.")
        if name == path.name:
            return SELF_STAGE
        stage_path = path.parent / name
        if not stage_path.is_file():
            raise ModelFileError(f"{stage_path}: the {what}-stage model named in {path.name}'s card is missing; copy "
                                 f"it (with its .json card) next to {path.name}, or re-tune without it "
                                 f"(`hcctwin tune segmentation`).")
        inner = cls.from_file(stage_path, dev, **{k: v for k, v in options.items()
                                                  if k not in ("pvtt_stage", "envelope_stage", "single_phase_stage")})
        want = stage.get("sha256")
        if want and inner.card.get("sha256") != want:
            raise ModelFileError(f"{stage_path}: sha256 {str(inner.card.get('sha256'))[:12]}... is not the "
                                 f"{str(want)[:12]}... that {path.name}'s card was tuned with; re-tune "
                                 f"(`{retune} {name}`).")
        return inner

    def attach_envelope_stage(self, stage: Segmenter | None) -> None:
        """Use ``stage`` (another model on the same grid, window and phases) as the envelope stage; None: none."""
        if stage is None:
            self.envelope_stage = None
            return
        if stage is self:
            raise ModelFileError("envelope stage: must be another model.")
        self._check_same_grid(stage, "envelope stage")
        self.envelope_stage = stage

    def _check_same_grid(self, stage: Segmenter, what: str) -> None:
        """A stage must read the same model grid as this model: spacing, HU window and input phases."""
        for name, mine, theirs in (("spacing", self.spacing_mm, stage.spacing_mm),
                                   ("HU window", tuple(self.window_hu), tuple(stage.window_hu)),
                                   ("input phases", self.phases, stage.phases)):
            if tuple(mine) != tuple(theirs):
                raise ModelFileError(f"{what}: its {name} {theirs} differs from the main model's {mine}.")

    def attach_single_phase_stage(self, stage: Segmenter | None) -> None:
        """Read single-phase studies with ``stage`` (another model on the same grid, window and phases that accepts
        single-phase input and has no single-phase stage of its own); None: the main model reads them."""
        if stage is None:
            self.single_phase_stage = None
            return
        if stage is self:
            raise ModelFileError("single-phase stage: must be another model.")
        self._check_same_grid(stage, "single-phase stage")
        if not any(len(a) == 1 for a in accepted_inputs_of(stage.card, stage.phases)):
            raise ModelFileError(f"single-phase stage {model_label(stage.card)}: its card accepts no single-phase "
                                 f"input (train it with --phase-dropout 1).")
        if stage.single_phase_stage is not None:
            raise ModelFileError("single-phase stage: it has a single-phase stage of its own.")
        self.single_phase_stage = stage

    def reads_with(self, phases) -> Segmenter:
        """The model that segments a study with these phases (a dict keyed by phase name): the single-phase stage
        for a study it accepts that lacks one of this model's phases, else this model."""
        stage = self.single_phase_stage
        if stage is None or phases is None:
            return self
        used = model_input(phases, self.phases)
        if len(used) < len(self.phases) and used in accepted_inputs_of(stage.card, stage.phases):
            return stage
        return self

    @property
    def last_card(self) -> Mapping[str, Any]:
        """The card of the model that drew the last labels (the single-phase stage's for a study it read): what the
        out-of-domain guard checks the input and the measures against."""
        stage = self.single_phase_stage
        return stage.card if stage is not None and self.last_info.get("single_phase_stage") else self.card

    def describe(self) -> str:
        """One line for provenance: the model, its PVTT and envelope stages with their rules, test-time mirroring
        and where the last run ran (``result.json`` ``provenance.segmentation``)."""
        single = self.last_info.get("single_phase_stage")
        if single and self.single_phase_stage is not None:
            return (f"{model_label(self.card)}: {single['input']}-only study read by its single-phase stage "
                    f"{self.single_phase_stage.describe()}")
        stage = self.pvtt_stage
        rule = f"probability >= {self.pvtt_min_probability:g}, components >= {self.pvtt_min_ml:g} mL"
        text = model_label(self.card)
        if stage is self:
            text += f" (PVTT from its own PVTT probability, {rule})"
        elif stage is not None:
            text += f" + PVTT stage {model_label(stage.card)} ({rule})"
        if self.envelope_stage is not None:
            text += (f" + envelope stage {model_label(self.envelope_stage.card)} (labels kept within "
                     f"{self.envelope_margin_mm:g} mm of its liver; its liver below agreement "
                     f"{self.envelope_takeover_below:g})")
            if (self.last_info.get("envelope") or {}).get("liver_from"):
                text += " [liver from the envelope stage on this scan]"
        if self.single_phase_stage is not None:
            text += f" + single-phase stage {model_label(self.single_phase_stage.card)} (one-phase studies)"
        if self.mirror_axes:
            text += f", test-time mirroring ({2 ** len(self.mirror_axes)} passes)"
        padded = self.last_info.get("padded")
        if padded:
            how = "its edges repeated to fill them" if padded["mode"] == "replicate" else f"{padded['mode']} padding"
            text += (f", a crop of {' x '.join(map(str, padded['crop_kji']))} model-grid voxels read in windows of "
                     f"{' x '.join(map(str, padded['window_kji']))} ({how})")
        return f"{text}, {devices.compute_label(self.last_info, self.device)}"

    def bias_without_pvtt(self) -> tuple[float, ...]:
        """The card's class bias with PVTT taken out of the argmax (the PVTT stage decides PVTT)."""
        return pvtt_excluded_bias(self.class_bias, int(self.card["architecture_kwargs"].get("out_channels", PVTT + 1)))

    def attach_pvtt_stage(self, stage) -> None:
        """Use ``stage`` (a model on the same grid, window and phases with a PVTT class; ``self`` or
        :data:`SELF_STAGE`: this model's own PVTT probability) as the PVTT stage; None: no stage."""
        if stage is None:
            self.pvtt_stage = None
            return
        if stage is SELF_STAGE or stage is self:
            if int(self.card["architecture_kwargs"].get("out_channels", 0)) <= PVTT:
                raise ModelFileError("PVTT stage: the model has no PVTT class (label 4).")
            self.pvtt_stage = self
            return
        self._check_same_grid(stage, "PVTT stage")
        if int(stage.card["architecture_kwargs"].get("out_channels", 0)) <= PVTT:
            raise ModelFileError("PVTT stage: the model has no PVTT class (label 4).")
        self.pvtt_stage = stage

    # -- inputs -------------------------------------------------------------------------------------------------
    def _stack(self, case_or_arrays, geometry: Geometry | None) -> tuple[list[np.ndarray], Geometry]:
        """The model's input phases as a list of ``(K, J, I)`` arrays (the caller's arrays, not a stacked copy:
        each phase is resampled onto the model grid on its own, so no full-resolution copy is made)."""
        if isinstance(case_or_arrays, Case):
            phases, geometry = case_or_arrays.phases, case_or_arrays.geometry
        elif isinstance(case_or_arrays, Mapping):
            phases = case_or_arrays
        else:
            arr = np.asarray(case_or_arrays)
            if arr.ndim == 3 and len(self.phases) == 1:
                arr = arr[None]
            if arr.ndim != 4 or arr.shape[0] != len(self.phases):
                raise InputError(f"segmentation needs {len(self.phases)} phases ({', '.join(self.phases)}) as a "
                                 f"(C, K, J, I) array or a dict of arrays; got an array of shape {arr.shape}.")
            phases = dict(zip(self.phases, arr))
        used = model_input(phases, self.phases)
        phases, filled = fill_missing_phases(phases, self.phases)
        self.last_info["filled_phases"] = filled
        if filled:
            trained = used in accepted_inputs_of(self.card, self.phases)
            self.last_info.setdefault("messages", []).append(
                "Single-phase study: " + ", ".join(f"{src} used as {dst}" for dst, src in filled.items())
                + ("" if trained else " (this model was not trained on single-phase input: results unreliable)")
                + ".")
        missing = [p for p in self.phases if p not in phases]
        if missing:
            raise InputError(f"the segmentation model needs the {', '.join(self.phases)} phases; missing: "
                             f"{', '.join(missing)}. Load the missing phase(s) or choose a model trained on the "
                             f"phases you have.")
        if geometry is None:
            raise InputError("segment(): give the geometry of the arrays (or pass a Case).")
        stack = [np.asarray(phases[p]) for p in self.phases]
        for name, arr in zip(self.phases, stack):
            if tuple(arr.shape) != tuple(geometry.shape):
                raise InputError(f"phase {name!r} has shape {arr.shape} but the geometry says {geometry.shape}.")
        return stack, geometry

    def _model_on(self, dev):
        if dev == self.device:
            return self.model
        if self._cpu_model is None:
            self._cpu_model = copy.deepcopy(self.model).to(dev).eval()
        return self._cpu_model

    # -- prediction ---------------------------------------------------------------------------------------------
    def predict_model_grid(self, image: np.ndarray, *, progress: ProgressCallback | None = None, device=None):
        """Raw argmax labels for a normalised ``(C, K, J, I)`` image already on the model grid (no decision rules:
        the coarse liver-box stage)."""
        dev = self.device if device is None else device

        def run(d):
            return sliding_window_argmax(self._model_on(d), image, roi_size=self.roi_size, device=d,
                                         overlap=self.overlap, sw_batch_size=self.sw_batch_size, progress=progress,
                                         cpu_precision=self.cpu_precision, padding_mode=self.padding_mode)

        return devices.call_with_cpu_fallback(run, dev, notify=lambda m: self._note(progress, m))

    def _note(self, progress, message):
        self.last_info.setdefault("messages", []).append(message)
        report(progress, 0.0, message)

    def segment(self, case_or_arrays, geometry: Geometry | None = None, progress: ProgressCallback | None = None,
                *, postprocess: bool = True, coarse_to_fine: bool | str = "auto") -> np.ndarray:
        """Labels (uint8, 0..4) on the input grid for a :class:`Case`, a dict of phase arrays or a stacked array."""
        with self._lock:
            stage = self.reads_with(_phase_names(case_or_arrays))
            if stage is not self:
                return self._segment_single_phase(stage, case_or_arrays, geometry, progress, postprocess,
                                                  coarse_to_fine)
            return self._segment(case_or_arrays, geometry, progress, postprocess, coarse_to_fine)

    def _segment_single_phase(self, stage: Segmenter, case_or_arrays, geometry, progress, postprocess,
                              coarse_to_fine) -> np.ndarray:
        """A single-phase study read by the single-phase stage; its run information becomes this model's (with
        ``single_phase_stage``: which model read which phase)."""
        labels = stage.segment(case_or_arrays, geometry, progress, postprocess=postprocess,
                               coarse_to_fine=coarse_to_fine)
        used = model_input(_phase_names(case_or_arrays), self.phases)
        self.last_info = {**stage.last_info, "single_phase_stage": {
            "model": stage.path.name if stage.path else None, "version": stage.card.get("version"),
            "input": "+".join(used)}}
        return labels

    def _stage2_input(self, case_or_arrays, geometry, progress, coarse_to_fine):
        """``(crop, box, model grid, input geometry)``: the normalised model-grid image inside the liver box
        (stage 1 on a coarse grid when asked or, with "auto", when the volume is large; else the whole grid)."""
        stack, geometry = self._stack(case_or_arrays, geometry)
        report(progress, 0.02, "Segmentation: resampling to the model grid")
        image, mgeom = to_model_grid(stack, geometry, self.spacing_mm, self.window_hu)
        self.last_info["model_grid_shape"] = mgeom.shape
        use_coarse = coarse_to_fine
        if coarse_to_fine == "auto":
            use_coarse = int(np.prod(mgeom.shape)) > COARSE_AUTO_ROIS * int(np.prod(self.roi_size))
        box = tuple(slice(0, s) for s in mgeom.shape)
        if use_coarse:
            report(progress, 0.05, "Segmentation stage 1: liver box on a coarse grid")
            box = self._liver_box(stack, geometry, mgeom, SubProgress(progress, 0.05, 0.25)) or box
        self.last_info["box"] = [(b.start, b.stop) for b in box]
        crop = np.ascontiguousarray(image[(slice(None), *box)])
        if any(c < r for c, r in zip(crop.shape[1:], self.roi_size)):  # read padded (PADDING_MODE): said in provenance
            self.last_info["padded"] = {"crop_kji": [int(c) for c in crop.shape[1:]],
                                        "window_kji": [int(r) for r in self.roi_size], "mode": self.padding_mode}
        return crop, box, mgeom, geometry

    def crop_logits(self, crop: np.ndarray, progress: ProgressCallback | None = None,
                    mirror_axes: Sequence[int] | None = None):
        """Blended logits (float32 CPU tensor ``(classes, ...)``) of this model over a normalised model-grid crop,
        mirrored at test time along ``mirror_axes`` (default: this model's own; a PVTT stage gets the main
        model's)."""
        axes = self.mirror_axes if mirror_axes is None else tuple(mirror_axes)

        def run(d):
            return sliding_window_logits(self._model_on(d), crop, roi_size=self.roi_size, device=d,
                                         overlap=self.overlap, sw_batch_size=self.sw_batch_size, progress=progress,
                                         cpu_precision=self.cpu_precision, mirror_axes=axes,
                                         padding_mode=self.padding_mode)

        return devices.call_with_cpu_fallback(run, self.device, notify=lambda m: self._note(progress, m))

    def model_grid_logits(self, case_or_arrays, geometry: Geometry | None = None, *,
                          coarse_to_fine: bool | str = "auto", progress: ProgressCallback | None = None,
                          pvtt_model: Segmenter | None = None):
        """``(logits, box, model grid, input geometry, PVTT probability)`` of one study, for tuning the decision
        rules (:mod:`.tuning`): the stage-2 logits (float16 numpy ``(classes, ...)`` inside ``box`` of the model
        grid) and, with ``pvtt_model``, that model's PVTT probability on the same box (float16; else None)."""
        with self._lock:
            self.last_info = {"device": str(self.device), "messages": [], "cpu_precision": self.cpu_precision}
            crop, box, mgeom, geometry = self._stage2_input(case_or_arrays, geometry, progress, coarse_to_fine)
            own = pvtt_model is self or pvtt_model is SELF_STAGE
            end = 1.0 if pvtt_model is None or own else 0.6
            raw = self.crop_logits(crop, SubProgress(progress, 0.25, end))
            pvtt = None
            if own:
                pvtt = softmax_channel(raw, PVTT).astype(np.float16)
            elif pvtt_model is not None:
                pvtt = softmax_channel(pvtt_model.crop_logits(crop, SubProgress(progress, 0.6, 1.0),
                                                              mirror_axes=self.mirror_axes),
                                       PVTT).astype(np.float16)
            logits = raw.numpy().astype(np.float16)
            del raw
            return logits, box, mgeom, geometry, pvtt

    def _segment(self, case_or_arrays, geometry, progress, postprocess, coarse_to_fine):
        t0 = time.perf_counter()
        self.last_info = {"device": str(self.device), "messages": [self.message] if self.message else [],
                          "cpu_precision": self.cpu_precision, "mirror_axes": list(self.mirror_axes)}
        crop, box, mgeom, geometry = self._stage2_input(case_or_arrays, geometry, progress, coarse_to_fine)
        report(progress, 0.25, "Segmentation stage 2: full resolution")
        labels = np.zeros(mgeom.shape, np.uint8)
        tumor_prob = np.zeros(mgeom.shape, np.float32)
        stage = self.pvtt_stage
        own = stage is self
        logits = self.crop_logits(crop, SubProgress(progress, 0.25, 0.9 if stage is None or own else 0.7))
        bias = self.class_bias if stage is None else self.bias_without_pvtt()
        labels[box], tumor_prob[box] = logits_to_labels(logits, class_bias=bias, tumor_prob=True)
        self.last_info["confidence"] = confidence_measures(logits, labels[box] > 0)
        if stage is not None:
            if not own:
                del logits
                report(progress, 0.7, "Segmentation: PVTT stage")
                logits = stage.crop_logits(crop, SubProgress(progress, 0.7, 0.9), mirror_axes=self.mirror_axes)
            pvtt = softmax_channel(logits, PVTT)
            labels[box][pvtt >= self.pvtt_min_probability] = PVTT
            self.last_info["pvtt_stage"] = {"model": "itself" if own else (stage.path.name if stage.path else None),
                                            "min_probability": self.pvtt_min_probability,
                                            "min_volume_ml": self.pvtt_min_ml}
            del pvtt
        del logits
        if self.envelope_stage is not None:
            report(progress, 0.9, "Segmentation: envelope stage")
            labels[box] = self._apply_envelope(labels[box], crop, mgeom, SubProgress(progress, 0.9, 0.93))
        del crop
        if postprocess:
            report(progress, 0.9, "Segmentation: post-processing")
            labels = postprocessing.postprocess(labels, mgeom.spacing, tumor_prob=tumor_prob,
                                                min_tumor_confidence=self.min_tumor_confidence,
                                                min_pvtt_ml=self.pvtt_min_ml)
        del tumor_prob
        report(progress, 0.95, "Segmentation: back to the input grid")
        out = from_model_grid(labels, mgeom, geometry)
        self.last_info["seconds"] = time.perf_counter() - t0
        report(progress, 1.0, "Segmentation done")
        return out

    def _apply_envelope(self, labels: np.ndarray, crop: np.ndarray, mgeom: Geometry, progress) -> np.ndarray:
        """``labels`` (a model-grid crop) with everything farther than the margin from the envelope stage's
        liver + lesions set to background; the agreement of the two models goes to ``last_info["envelope"]``."""
        stage = self.envelope_stage
        env_logits = stage.crop_logits(crop, progress)
        env_labels = logits_to_labels(env_logits, class_bias=stage.bias_without_pvtt())
        env = env_labels > 0
        main = labels > 0
        inter = int(np.count_nonzero(main & env))
        total = int(np.count_nonzero(main)) + int(np.count_nonzero(env))
        agreement = 2.0 * inter / total if total else 1.0
        takeover = agreement < self.envelope_takeover_below
        # where the envelope network itself draws thrombus (its argmax with PVTT, its own class bias): the takeover
        # keeps PVTT only there; the logits are freed before the distance transform of the margin
        env_pvtt = logits_to_labels(env_logits, class_bias=stage.class_bias) == PVTT if takeover else None
        del env_logits
        keep = envelope_mask(env, mgeom.spacing, self.envelope_margin_mm)
        removed = main & ~keep
        voxel_ml = float(np.prod(mgeom.spacing)) / 1000.0
        self.last_info["envelope"] = {
            "model": stage.path.name if stage.path else None, "version": stage.card.get("version"),
            "margin_mm": self.envelope_margin_mm, "agreement_dice": round(agreement, 4),
            "main_ml": round(float(np.count_nonzero(main)) * voxel_ml, 1),
            "envelope_ml": round(float(np.count_nonzero(env)) * voxel_ml, 1),
            "removed_ml": round(float(np.count_nonzero(removed)) * voxel_ml, 1),
            "removed_tumor_ml": round(float(np.count_nonzero(removed & np.isin(labels, (2, 3)))) * voxel_ml, 1)}
        self.last_info.setdefault("confidence", {})["envelope_agreement"] = float(agreement)
        info = self.last_info["envelope"]
        if info["removed_ml"] >= 1.0:
            self.last_info.setdefault("messages", []).append(
                f"Envelope stage ({info['model']} {info['version'] or ''}): {info['removed_ml']:.0f} mL labelled "
                f"farther than {self.envelope_margin_mm:g} mm from its liver removed (tumour "
                f"{info['removed_tumor_ml']:.0f} mL); the two models agree at Dice {agreement:.2f}.")
        if takeover:
            # the network reads the window only: below its lower bound in every phase is air or lung, never liver
            tissue = np.asarray(crop).max(axis=0) > 0.0
            return self._envelope_takeover(labels, np.where(tissue, env_labels, 0).astype(np.uint8), env_pvtt,
                                           voxel_ml)
        out = labels.copy()
        out[removed] = 0
        return out

    def _envelope_takeover(self, labels: np.ndarray, env_labels: np.ndarray, env_pvtt: np.ndarray,
                           voxel_ml: float) -> np.ndarray:
        """The labels when the two networks disagree beyond their training domain: liver = the envelope's largest
        component; viable tumour / necrosis only where the envelope also calls the voxel tumour (the main network's
        label kept); PVTT only where both networks draw thrombus (``env_pvtt``: the envelope's own argmax)."""
        organ = postprocessing.largest_component(env_labels > 0)
        out = np.where(organ, LIVER, 0).astype(np.uint8)
        lesion = organ & np.isin(labels, (VIABLE_TUMOR, NECROSIS)) & np.isin(env_labels, (VIABLE_TUMOR, NECROSIS))
        out[lesion] = labels[lesion]
        main_thrombus = labels == PVTT
        thrombus = main_thrombus & env_pvtt
        out[thrombus] = PVTT
        info = self.last_info["envelope"]
        main_tumour = float(np.count_nonzero(np.isin(labels, (VIABLE_TUMOR, NECROSIS)))) * voxel_ml
        info.update({"liver_from": "envelope stage", "takeover_below": self.envelope_takeover_below,
                     "tumor_ml_main": round(main_tumour, 1),
                     "tumor_ml_kept": round(float(np.count_nonzero(lesion)) * voxel_ml, 1),
                     "pvtt_ml_main": round(float(np.count_nonzero(main_thrombus)) * voxel_ml, 1),
                     "pvtt_ml_kept": round(float(np.count_nonzero(thrombus)) * voxel_ml, 1)})
        self.last_info.setdefault("messages", []).append(
            f"The two segmentation networks disagree (Dice {info['agreement_dice']:.2f} < "
            f"{self.envelope_takeover_below:g}, less than on their training domain): the liver is the envelope "
            f"stage's (appearance-robust) and tumour and PVTT are kept only where both networks draw them "
            f"(tumour {info['tumor_ml_kept']:.0f} of {main_tumour:.0f} mL, PVTT {info['pvtt_ml_kept']:.0f} of "
            f"{info['pvtt_ml_main']:.0f} mL).")
        return out

    def _liver_box(self, stack, geometry, mgeom: Geometry, progress) -> tuple[slice, ...] | None:
        """The stage-2 box on the model grid: the box of the coarse liver + lesions (largest component) plus
        :data:`BOX_MARGIN_MM`; with an envelope stage, the union of both networks' boxes (on a real scan the main
        network may box the spleen and stomach and crop the liver away). None: no liver found."""
        coarse_sp = tuple(2.0 * s for s in self.spacing_mm)
        cimage, cgeom = to_model_grid(stack, geometry, coarse_sp, self.window_hu)
        models = [self] if self.envelope_stage is None else [self, self.envelope_stage]
        boxes = []
        for n, model in enumerate(models):
            part = SubProgress(progress, n / len(models), (n + 1) / len(models))
            box = _organ_box(model.predict_model_grid(cimage, progress=part), cgeom, mgeom)
            if box is not None:
                boxes.append(box)
        if not boxes:
            self.last_info.setdefault("messages", []).append("Stage 1 found no liver; segmenting the whole volume.")
            return None
        return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def _phase_names(case_or_arrays) -> dict[str, None] | None:
    """The phases of a :class:`Case` or a dict of phase arrays (names as keys, what :func:`model_input` reads);
    None for a stacked array (all the model's phases)."""
    if isinstance(case_or_arrays, Case):
        return dict.fromkeys(case_or_arrays.phases)
    if isinstance(case_or_arrays, Mapping):
        return dict.fromkeys(case_or_arrays)
    return None


def _organ_box(clabels: np.ndarray, cgeom: Geometry, mgeom: Geometry) -> tuple[slice, ...] | None:
    """The model-grid box (``mgeom``) of the largest liver + lesion component of coarse labels (``cgeom``), grown by
    :data:`BOX_MARGIN_MM`; None when there is none."""
    organ = np.isin(clabels, (1, 2, 3))
    if not organ.any():
        return None
    organ = postprocessing.largest_component(organ)
    idx = np.argwhere(organ)
    c_sp, f_sp = np.asarray(cgeom.spacing)[::-1], np.asarray(mgeom.spacing)[::-1]
    offset = (np.asarray(cgeom.origin) - np.asarray(mgeom.origin))[::-1]
    lo_mm = offset + (idx.min(axis=0) - 0.5) * c_sp - BOX_MARGIN_MM
    hi_mm = offset + (idx.max(axis=0) + 0.5) * c_sp + BOX_MARGIN_MM
    lo = np.clip(np.floor(lo_mm / f_sp).astype(int), 0, mgeom.shape)
    hi = np.clip(np.ceil(hi_mm / f_sp).astype(int) + 1, 0, mgeom.shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def envelope_mask(envelope: np.ndarray, spacing_xyz: Sequence[float], margin_mm: float) -> np.ndarray:
    """The envelope stage's foreground (its largest connected component: the liver with its lesions) grown by
    ``margin_mm`` (a Euclidean distance on the anisotropic grid); empty envelope: nothing is kept."""
    from scipy import ndimage

    if not envelope.any():
        return np.zeros(envelope.shape, bool)
    organ = postprocessing.largest_component(envelope)
    if margin_mm <= 0:
        return organ
    sampling = (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))
    return ndimage.distance_transform_edt(~organ, sampling=sampling) <= float(margin_mm)


_CACHE = ModelCache("segmentation")


def get_segmenter(weights: str | Path | None = None, device: str = "auto", **options) -> Segmenter:
    """The cached :class:`Segmenter` for ``weights`` (default: the installed ``hcctwin_seg`` model) on ``device``.

    The model is loaded and verified once and stays in memory; a changed file (mtime/size) is reloaded.
    """
    path = resolve_model_path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise ModelFileError(f"{path}: no segmentation model is installed. Train one on a cohort "
                             f"(HCCTwinLib.segmentation.train_segmentation / `hcctwin train`) and copy the "
                             f".safetensors + .json files to {weights_dir()} or set HCCTWIN_WEIGHTS_DIR.")
    dev, message = devices.select_device(device)

    def load() -> Segmenter:
        seg = Segmenter.from_file(path, dev, **options)
        seg.message = message
        return seg

    return _CACHE.get(path, dev, load, options)


def clear_cache() -> None:
    """Forget all loaded models (frees their memory)."""
    _CACHE.clear()
    devices.empty_cache()


def segment_case(case_or_arrays, geometry: Geometry | None = None, *, weights=None, device: str = "auto",
                 progress: ProgressCallback | None = None, **kwargs) -> np.ndarray:
    """Convenience: ``get_segmenter(weights, device).segment(...)``."""
    return get_segmenter(weights, device).segment(case_or_arrays, geometry, progress, **kwargs)
