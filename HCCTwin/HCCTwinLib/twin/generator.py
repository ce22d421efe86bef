"""Virtual follow-ups per regimen and time point, with uncertainty: the loaded generator and its warm cache.

``get_generator(weights, device)`` loads (and verifies) a model file once per (file, device) and keeps it in memory.
``Generator.generate(...)`` returns ``{regimen: {weeks: FollowUp}}`` on the full pre-treatment grid:

1. liver box from the labels -> crop grid (:mod:`.crop`); pre phases and labels resampled onto it;
2. all (regimen, week, sample) items with weeks > 0 run through the rectified-flow sampler in as few batched passes as
   memory allows (CUDA autocast on the GPU; a CUDA out-of-memory error re-runs on the CPU);
3. per (regimen, week): mean and per-voxel std over samples of the HU residual, mean label probabilities -> labels,
   kept on the crop grid (:class:`~.crop.CropFollowUp`, about 1 MB per time point at any input size); reading
   ``phases`` / ``std`` / ``labels`` pastes them into the full-resolution input (residual with a smooth seam, labels
   change-only), so only what is shown or saved is ever made at full resolution.

Noise: sample ``s`` uses the noise drawn from ``torch.Generator().manual_seed(seed * 1000003 + s)`` on the CPU, the
same for every regimen and week of the request (common random numbers: regimens are compared on equal footing and a
sample's trajectory over weeks is coherent). Same input + seed + steps + device = same output. Weeks == 0 returns the
input exactly (gate g(0) = 0; the sampler is not run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import device as devices
from ..cases import Case, FollowUp, Geometry
from ..errors import InputError
from ..progress import ProgressCallback, report
from ..weights import ModelFileError, load_state, resolve_model_path, weights_dir
from ..weights.cache import ModelCache, model_label
from . import model as tm
from .crop import DEFAULT_CROP_KJI, DEFAULT_PAD_MM, DEFAULT_SEAM_MM, CropFollowUp, PasteContext, make_crop_box, to_crop

DEFAULT_MODEL_NAME = "hcctwin_twin"
PHASES = ("arterial", "portal")
#: items per network pass: CPU (memory ~40 MB per item at 32x64x64) and CUDA
CPU_MAX_BATCH = 12
CUDA_MAX_BATCH = 36

_CACHE = ModelCache("generator")


def default_weights_path() -> Path:
    return weights_dir() / f"{DEFAULT_MODEL_NAME}.safetensors"


def generator_card(regimens: Sequence[str], crop_shape: Sequence[int] = DEFAULT_CROP_KJI,
                   architecture_kwargs: Mapping[str, Any] | None = None, *, pad_mm: float = DEFAULT_PAD_MM,
                   seam_mm: float = DEFAULT_SEAM_MM, steps: int = tm.DEFAULT_STEPS, name: str = DEFAULT_MODEL_NAME,
                   version: str = "0.1.0", prior_rates: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The parts of the model card that inference needs (training adds data, hyper-parameters, metrics).

    ``prior_rates``: per-regimen viable-volume rates (1/week) of the regimen-prior channel (:mod:`.model`); None =
    a model without it."""
    regimens = [str(r) for r in regimens]
    kw = tm.model_kwargs(regimens, regimen_prior=prior_rates is not None, **dict(architecture_kwargs or {}))
    card = {
        "name": name, "version": version,
        "task": "virtual follow-up generation (arterial + portal residual and labels) per regimen and interval",
        "architecture": tm.ARCHITECTURE, "architecture_kwargs": kw,
        "input_phases": list(PHASES), "regimens": regimens, "null_regimen_index": len(regimens),
        "crop_kji": [int(c) for c in crop_shape], "pad_mm": float(pad_mm), "seam_mm": float(seam_mm),
        "spacing_mm": None,
        "grid": "crop grid: liver box (labels > 0) + pad, identity direction (LPS), in-plane isotropic, fixed size",
        "channels": {"generated": ["res_arterial", "res_portal", "liver", "viable", "necrosis", "pvtt"],
                     "condition": ["pre_arterial", "pre_portal", "pre_liver", "pre_viable", "pre_necrosis",
                                   "pre_pvtt", "weeks/24"], "regimen": "class embedding (last index = none)"},
        "normalization": {"image": f"(clip(HU, {tm.HU_CLIP[0]}, {tm.HU_CLIP[1]}) - {tm.HU_CENTER}) / {tm.HU_SCALE}",
                          "residual": f"(follow-up - pre) HU / ({tm.RESIDUAL_SCALE_HU} * g(weeks)), clip "
                                      f"+-{tm.RESIDUAL_CLIP}",
                          "gate": f"g(w) = 1 - exp(-w / {tm.GATE_WEEKS}); g(0) = 0",
                          "labels": "(one-hot follow-up - one-hot pre) / 2 for labels 1..4"},
        "sampling": {"scheduler": "monai RFlowScheduler (T=1000, Euler)", "steps": int(steps)},
    }
    if prior_rates is not None:
        card["regimen_prior"] = {
            "rates_per_week": {str(r): float(v) for r, v in prior_rates.items()},
            "channel": f"clip(rate * weeks, {tm.PRIOR_LOG_RATIO_CLIP[0]}, {tm.PRIOR_LOG_RATIO_CLIP[1]}) / "
                       f"{tm.PRIOR_SCALE}; 0 for the none class and regimens without a rate",
            "fit": "log(V_t / V_0) = rate * t through the origin, least squares per regimen, on the training "
                   "cohort's observed follow-ups (viable-tumour voxels of the crop)"}
        card["channels"]["condition"].append("regimen_prior")
    return card


#: follow-up weeks of the simulator's training cohorts (w08 / w16 / w24), for model cards that do not list theirs
TRAINED_WEEKS_DEFAULT = (8, 16, 24)
#: the most samples per virtual follow-up (each is a network pass and its noise is drawn up front; the spread over
#: samples is stable long before)
MAX_SAMPLES = 64
#: virtual follow-ups are refused beyond this multiple of the last trained week (and noted beyond the last week)
MAX_EXTRAPOLATION = 2


def check_request(case_or_phases, labels, geometry, regimens, weeks, samples, *, known_regimens: Sequence[str],
                  trained_weeks: Sequence[int]) -> tuple[Mapping[str, np.ndarray], np.ndarray, Geometry, list[str],
                                                         list[int], int]:
    """The checks every generator makes on a ``generate()`` request, with one wording: the phases and labels on the
    geometry's grid, known regimens, distinct weeks >= 0 not beyond :data:`MAX_EXTRAPOLATION` x the last trained
    week, 1..:data:`MAX_SAMPLES` samples. ``case_or_phases``: a :class:`Case` (its labels and geometry are used) or
    ``{phase: HU}``. Returns ``(phases, labels, geometry, regimens, weeks, samples)``; InputError otherwise."""
    if isinstance(case_or_phases, Case):
        phases, labels, geometry = case_or_phases.phases, case_or_phases.labels, case_or_phases.geometry
    else:
        phases = case_or_phases
    if geometry is None:
        raise InputError("generate() needs the geometry of the pre-treatment images.")
    if labels is None:
        raise InputError("generate() needs the pre-treatment label map (liver, tumour); segment the case first.")
    missing = [p for p in PHASES if p not in phases]
    if missing:
        raise InputError(f"the generator needs the {', '.join(PHASES)} phases; missing {missing}.")
    for name in (*PHASES, "labels"):
        arr = labels if name == "labels" else phases[name]
        if tuple(np.shape(arr)) != geometry.shape:
            raise InputError(f"{name} has shape {np.shape(arr)}, geometry says {geometry.shape}; put all "
                             f"phases and labels on one grid first.")
    regimens = list(regimens) if regimens is not None else list(known_regimens)
    unknown = [r for r in regimens if r not in known_regimens]
    if unknown:
        raise InputError(f"the generator model does not know regimen(s) {unknown}; it was built for "
                         f"{', '.join(known_regimens)}.")
    weeks = [int(w) for w in weeks]
    if any(w < 0 for w in weeks) or len(set(weeks)) != len(weeks):
        raise InputError(f"weeks must be distinct intervals >= 0, got {weeks}")
    trained = max(trained_weeks)
    if max(weeks, default=0) > MAX_EXTRAPOLATION * trained:
        raise InputError(f"weeks {max(weeks)}: the generator was trained on follow-ups up to week {trained}; "
                         f"virtual follow-ups beyond week {MAX_EXTRAPOLATION * trained} would be pure "
                         f"extrapolation. Ask for weeks up to {MAX_EXTRAPOLATION * trained} (e.g. 8,16,24).")
    samples = int(samples)
    if samples < 1:
        raise InputError("samples must be >= 1")
    if samples > MAX_SAMPLES:
        raise InputError(f"samples = {samples}: at most {MAX_SAMPLES} per virtual follow-up (the samples are drawn "
                         f"and held together); 4-16 give a stable spread.")
    return phases, np.asarray(labels), geometry, regimens, weeks, samples

class Generator:
    """A loaded generator model and its settings (from the model card)."""

    def __init__(self, model, card: Mapping[str, Any], device="cpu", *, message: str = "", path: Path | None = None):
        import torch

        self.card = dict(card)
        self.device = torch.device(device)
        self.message = message
        self.path = path
        #: network layout on the CPU: channels-last (NDHWC), where oneDNN's 3D convolutions are faster (1.25x per
        #: pass and per demo request on the shipped model, 2 threads; benchmarks/results/generator_speed.md) with the
        #: same numbers up to float rounding; ``torch.contiguous_format`` = PyTorch's default. CUDA keeps the default.
        self.cpu_memory_format = torch.channels_last_3d
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=self.cpu_memory_format)
        self._cpu_model = None
        #: "bf16" or "fp32": inference arithmetic on the CPU (HCCTWIN_CPU_PRECISION; bf16 where the CPU has it natively,
        #: measured in benchmarks/results/cpu_precision.md)
        self.cpu_precision = devices.cpu_precision()
        self.regimens = [str(r) for r in self.card["regimens"]]
        self.crop_shape = tuple(int(c) for c in self.card.get("crop_kji", DEFAULT_CROP_KJI))
        self.pad_mm = float(self.card.get("pad_mm", DEFAULT_PAD_MM))
        self.seam_mm = float(self.card.get("seam_mm", DEFAULT_SEAM_MM))
        self.default_steps = int(self.card.get("sampling", {}).get("steps", tm.DEFAULT_STEPS))
        prior = self.card.get("regimen_prior")
        #: per-regimen rates of the regimen-prior channel (None: a model without that channel)
        self.prior_rates: dict[str, float] | None = (
            {str(k): float(v) for k, v in prior["rates_per_week"].items()} if prior else None)
        expected = tm.OUT_CHANNELS + tm.cond_channels(self.prior_rates is not None)
        if int(self.card["architecture_kwargs"]["in_channels"]) != expected:
            raise ModelFileError(f"{path or 'generator'}: the model card's in_channels "
                                 f"({self.card['architecture_kwargs']['in_channels']}) do not match its conditioning "
                                 f"({expected} with{'' if self.prior_rates is not None else 'out'} the regimen "
                                 f"prior); re-export the model.")
        self.max_batch: int | None = None
        self.last_info: dict[str, Any] = {}
        self._lock = threading.Lock()

    def describe(self, *, samples: int | None = None, seed: int | None = None) -> str:
        """One line for provenance (``result.json`` ``provenance.generator``): the model, the sampling asked for and
        where the last run ran."""
        text = model_label(self.card)
        if samples is not None:
            text += f", {samples} samples"
        if seed is not None:
            text += f", seed {seed}"
        return f"{text}, {devices.compute_label(self.last_info, self.device)}"

    @classmethod
    def untrained(cls, regimens: Sequence[str] | None = None, crop_shape: Sequence[int] = DEFAULT_CROP_KJI,
                  architecture_kwargs: Mapping[str, Any] | None = None, *, seed: int = 0, device="cpu",
                  **card_kwargs) -> Generator:
        """A randomly initialised generator (tests, benchmarks of speed)."""
        import torch

        from ..regimens import REGIMEN_IDS

        card = generator_card(regimens or REGIMEN_IDS, crop_shape, architecture_kwargs, **card_kwargs)
        torch.manual_seed(seed)
        return cls(tm.build_model(**card["architecture_kwargs"]), card, device, message="untrained model")

    @property
    def trained_weeks(self) -> tuple[int, ...]:
        """The follow-up weeks of the training cohort (card ``training_data.weeks``; the simulator's 8, 16, 24 when
        the card does not say)."""
        weeks = (self.card.get("training_data") or {}).get("weeks") or TRAINED_WEEKS_DEFAULT
        return tuple(int(w) for w in weeks)

    def prior(self, regimen: str, weeks: float) -> float:
        """The regimen-prior channel value of ``regimen`` at ``weeks`` (0 without that channel or rate)."""
        if self.prior_rates is None:
            return 0.0
        return tm.prior_value(self.prior_rates.get(regimen), weeks)

    # ------------------------------------------------------------------------------------------------------------
    def _model_on(self, device):
        import torch

        if torch.device(device) == self.device:
            return self.model
        if self._cpu_model is None:
            import copy

            self._cpu_model = copy.deepcopy(self.model).to("cpu", memory_format=self.cpu_memory_format).eval()
        return self._cpu_model

    def _run(self, cond: np.ndarray, weeks_items: Sequence[float], reg_items: Sequence[int], noise_items, steps: int,
             device, progress: ProgressCallback | None) -> np.ndarray:
        import torch

        device = torch.device(device)
        model = self._model_on(device)
        n = len(weeks_items)
        limit = self.max_batch or (CUDA_MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH)
        n_chunks = max(1, int(np.ceil(n / limit)))
        chunk = int(np.ceil(n / n_chunks))
        out = np.empty((n, tm.OUT_CHANNELS, *self.crop_shape), np.float32)
        cond_t = torch.from_numpy(cond[:6]).to(device)  # the static channels, shared by every item
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            b = c1 - c0
            wk = torch.tensor([float(w) / tm.WEEKS_SCALE for w in weeks_items[c0:c1]], device=device)
            parts = [cond_t[None].expand(b, -1, -1, -1, -1), wk[:, None, None, None, None].expand(b, 1,
                                                                                             *self.crop_shape)]
            if self.prior_rates is not None:
                pr = torch.tensor([self.prior(self.regimens[int(r)], w) for r, w in
                                   zip(reg_items[c0:c1], weeks_items[c0:c1])], device=device)
                parts.append(pr[:, None, None, None, None].expand(b, 1, *self.crop_shape))
            cond_b = torch.cat(parts, dim=1)
            regs = torch.tensor(list(reg_items[c0:c1]), dtype=torch.long, device=device)
            noise = torch.stack(list(noise_items[c0:c1])).to(device)

            def on_step(i, total, c0=c0, c1=c1, b=b):
                report(progress, 0.1 + 0.8 * (c0 + b * i / total) / n,
                       f"Generating follow-ups: items {c0 + 1}-{c1} of {n}, step {i}/{total}")

            with torch.inference_mode():
                x0 = tm.sample_rf(model, cond_b, regs, noise, steps=steps,
                                  autocast=devices.autocast(device, self.cpu_precision), callback=on_step,
                                  memory_format=self.cpu_memory_format if device.type == "cpu" else None)
            out[c0:c1] = x0.float().cpu().numpy()
        return out

    def generate(self, case_or_phases: Case | Mapping[str, np.ndarray], labels: np.ndarray | None = None,
                 geometry: Geometry | None = None, *, regimens: Sequence[str] | None = None,
                 weeks: Sequence[int] = (8, 16, 24), samples: int = 4, seed: int = 0, steps: int | None = None,
                 progress: ProgressCallback | None = None) -> dict[str, dict[int, FollowUp]]:
        """``{regimen: {weeks: FollowUp}}`` of virtual follow-ups on the input grid (see the module docstring).

        ``case_or_phases`` is a :class:`Case` (its labels are used) or ``{"arterial": HU, "portal": HU}`` with
        ``labels`` and ``geometry``. ``FollowUp.phases`` = mean HU over samples, ``std`` = per-voxel std over samples,
        ``labels`` = argmax of the mean label probabilities, each computed on access from the crop (the follow-ups
        refer to the input arrays: do not modify those in place while the follow-ups are in use).
        """
        t0 = time.perf_counter()
        phases, labels, geometry, regimens, weeks, samples = check_request(
            case_or_phases, labels, geometry, regimens, weeks, samples, known_regimens=self.regimens,
            trained_weeks=self.trained_weeks)
        trained = max(self.trained_weeks)
        steps = int(steps or self.default_steps)
        if steps < 1:
            raise InputError("steps must be >= 1")
        import torch

        report(progress, 0.0, "Cropping the liver")
        box = make_crop_box(labels, geometry, self.crop_shape, self.pad_mm)
        art_c, por_c = (to_crop(phases[p], box) for p in PHASES)
        lab_c = to_crop(labels, box, labels=True)
        cond = tm.condition(art_c, por_c, lab_c, 0.0)
        noise = [torch.randn((tm.OUT_CHANNELS, *self.crop_shape), generator=torch.Generator().manual_seed(
            int(seed) * 1000003 + s)) for s in range(samples)]
        items = [(r, w, s) for r in regimens for w in weeks if w > 0 for s in range(samples)]
        x0 = None
        messages: list[str] = []  # e.g. the GPU ran out of memory and the CPU took over
        beyond = [w for w in weeks if w > trained]
        if beyond:
            messages.append(f"week(s) {', '.join(map(str, beyond))} lie beyond the follow-ups the generator was "
                            f"trained on (up to week {trained}): extrapolated, less reliable.")
        t_net = time.perf_counter()
        if items:
            args = ([w for _, w, _ in items], [self.regimens.index(r) for r, _, _ in items],
                    [noise[s] for _, _, s in items])

            def notify(msg):
                messages.append(msg)
                report(progress, 0.1, msg)

            x0 = devices.call_with_cpu_fallback(
                lambda dev: self._run(cond, *args, steps, dev, progress), self.device, notify=notify)
        t_net = time.perf_counter() - t_net

        report(progress, 0.9, "Virtual follow-ups: mean, spread and labels per time point")
        context = PasteContext(pre={p: phases[p] for p in PHASES}, pre_labels=labels, box=box, pre_crop_labels=lab_c,
                               seam_mm=self.seam_mm)
        out: dict[str, dict[int, FollowUp]] = {}
        index = {item: n for n, item in enumerate(items)}
        for r in regimens:
            out[r] = {}
            for w in weeks:
                if w == 0:
                    out[r][w] = CropFollowUp(0, context, PHASES, regimen=r)
                    continue
                xs = x0[[index[(r, w, s)] for s in range(samples)]]
                residual, probs = tm.decode(xs, w, lab_c)
                out[r][w] = CropFollowUp(w, context, PHASES, residual=residual.mean(axis=0),
                                         std=(residual - residual[:1]).std(axis=0),
                                         crop_labels=tm.labels_from_probs(probs.mean(axis=0)), regimen=r)
        del x0
        self.last_info = {"box_lo_kji": list(box.lo), "box_hi_kji": list(box.hi), "crop_kji": list(self.crop_shape),
                          "crop_spacing_mm": list(box.crop.spacing), "n_items": len(items), "steps": steps,
                          "samples": samples, "network_s": round(t_net, 3),
                          "total_s": round(time.perf_counter() - t0, 3), "device": str(self.device),
                          "cpu_precision": self.cpu_precision, "messages": messages}
        seen = (self.card.get("training_data") or {}).get("regimens_seen")
        if seen is not None:
            self.last_info["regimens_not_in_training_data"] = [r for r in regimens if r not in seen]
        report(progress, 1.0, "Virtual follow-ups done")
        return out


# ---------------------------------------------------------------------------------------------------------------
def load_generator(path: str | Path, device="cpu", message: str = ""):
    """A generator model file: the anchored twin (:mod:`.anchored`, architecture ``anchored-kinetic``) or the
    rectified-flow network (:class:`Generator`), by its model card."""
    state, card = load_state(path, device="cpu")
    from .anchored import ARCHITECTURE as ANCHORED

    if card.get("architecture") == ANCHORED:
        from .anchored import AnchoredGenerator
        from .kinetic import KineticModel

        try:
            model = KineticModel.from_state(state, card["regimens"], card["weeks_fitted"],
                                            (card.get("training_data") or {}),
                                            features=(card.get("architecture_kwargs") or {}).get("features"))
        except (KeyError, ValueError) as exc:
            raise ModelFileError(f"{path}: the kinetic model's arrays do not match its card ({exc}); re-fit it.") \
                from exc
        return AnchoredGenerator(model, card, path=Path(path), message=message)
    if card.get("architecture") != tm.ARCHITECTURE or "regimens" not in card:
        raise ModelFileError(f"{path}: not an HCCTwin generator model (architecture {card.get('architecture')!r}).")
    model = tm.build_model(**card["architecture_kwargs"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: the weights do not fit the architecture in the model card ({str(exc)[:200]})"
                             f"; re-export the model.") from exc
    return Generator(model, card, device, message=message, path=Path(path))


def get_generator(weights: str | Path | None = None, device: str = "auto"):
    """The generator for ``weights`` (a file or model name; default: the installed demo weights), loaded once per
    (file, device) and kept warm."""
    path = resolve_model_path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise ModelFileError(f"{path}: no generator weights found. Train them with `hcctwin train generator --cohort "
                             f"DIR --out MODELDIR` and pass the .safetensors file, or install the demo weights.")
    dev, message = devices.select_device(device)
    return _CACHE.get(path, dev, lambda: load_generator(path, dev, message))


def clear_cache() -> None:
    _CACHE.clear()


__all__ = ["DEFAULT_MODEL_NAME", "Generator", "clear_cache", "default_weights_path", "generator_card",
           "get_generator", "load_generator"]
