"""Training of the follow-up generator on a cohort folder's *observed* follow-ups (as a site would have them).

Cohort layout::

    COHORT/clinical.csv                  (columns patient_id, regimen = the regimen the patient received)
    COHORT/cases/<id>/pre/{arterial,portal,labels}.nii.gz
    COHORT/cases/<id>/followup/wNN/{arterial,portal,labels}.nii.gz     (same grid as pre; NN = weeks)

``COHORT/truth/`` (counterfactuals) is never read here. Each (pre, follow-up) pair is cropped once to the liver box of
the pre labels on the crop grid (:mod:`.crop`) and cached as ``out_dir/cache/<patient>.npz``, so epochs are cheap.
Training: rectified flow with an x0-parametrised network (:mod:`.model`); loss = velocity MSE x (t/T)^2 = weighted MSE
with weight ``1 + tumour_weight`` on voxels within one voxel of tumour/PVTT (pre or follow-up) and ``label_weight``
on the label channels; AdamW, cosine learning rate, optional EMA of the weights (the EMA weights are the ones saved),
optional condition dropout (regimen -> "none" class) for classifier-free guidance later. No flips by default: the
liver is right-sided and the portal anatomy asymmetric, so mirrored livers are not harmless (``flip_axes`` allows
it for a site that wants it). Per-epoch loss goes to ``out_dir/train_log.jsonl``; after every epoch a checkpoint
(``checkpoint.safetensors`` [+ ``checkpoint_ema.safetensors``] + card, ``checkpoint_optimizer.pt`` read with
``weights_only=True``, ``train_state.json``) lets ``resume=True`` continue after the last finished epoch. The final
model is written with :func:`HCCTwinLib.weights.save_model` as ``out_dir/<name>.safetensors`` + model card.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, distributed
from .. import device as devices
from ..errors import InputError
from ..io import cohort_clinical_rows, find_image, load_case, read_image, read_training_state
from ..io import path_inside as _inside
from ..progress import ProgressCallback, SubProgress, report
from ..weights import ModelFileError, load_state, resolve_model_path, save_model, sha256_file
from . import model as tm
from .crop import DEFAULT_CROP_KJI, DEFAULT_PAD_MM, make_crop_box, to_crop
from .generator import DEFAULT_MODEL_NAME, PHASES, generator_card

CACHE_VERSION = 1
_TP_RE = re.compile(r"^w(\d+)$")


@dataclass(frozen=True)
class Pair:
    """One observed follow-up of a patient with the regimen received."""

    patient_id: str
    regimen: str
    weeks: int
    tp: str
    pre_folder: Path
    followup_folder: Path


def read_received_regimens(cohort_dir: str | os.PathLike) -> dict[str, str]:
    """``{patient_id: regimen}`` from ``clinical.csv`` (columns ``patient_id`` and ``regimen``), in file order."""
    root = Path(cohort_dir).expanduser().resolve()
    csv_path = root / "clinical.csv"
    if not csv_path.is_file():
        raise InputError(f"{root}: clinical.csv not found; the generator needs the received regimen per patient "
                         f"(columns patient_id, regimen).")
    rows = cohort_clinical_rows(root, required=("patient_id", "regimen"))
    out = {}
    for pid, values in rows.items():
        reg = str(values.get("regimen", "")).strip()
        if reg:
            out[pid] = reg
    return out


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all(find_image(folder, n) is not None for n in (*PHASES, "labels"))


def discover_pairs(cohort_dir: str | os.PathLike, *, max_cases: int | None = None,
                   regimens: Sequence[str] | None = None) -> list[Pair]:
    """Observed (pre, follow-up wNN) pairs of patients with complete pre and follow-up images, in CSV order."""
    root = Path(cohort_dir).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"{cohort_dir}: cohort folder not found.")
    received = read_received_regimens(root)
    pairs: list[Pair] = []
    n_patients = 0
    for pid, reg in received.items():
        if max_cases is not None and n_patients >= max_cases:
            break
        if regimens is not None and reg not in regimens:
            continue
        pre = _inside(root, "cases", pid, "pre")
        fu_root = _inside(root, "cases", pid, "followup")
        if not _complete(pre) or not fu_root.is_dir():
            continue
        found = []
        for tp in sorted(p.name for p in fu_root.iterdir()):
            m = _TP_RE.match(tp)
            folder = _inside(root, "cases", pid, "followup", tp)
            if m and int(m.group(1)) > 0 and _complete(folder):
                found.append(Pair(pid, reg, int(m.group(1)), tp, pre, folder))
        if found:
            pairs.extend(found)
            n_patients += 1
    if not pairs:
        raise InputError(f"{root}: no patient has pre/ and followup/wNN/ with arterial, portal and labels images; "
                         f"nothing to train the generator on.")
    return pairs


def _signature(folder: Path) -> list:
    sig = []
    for name in (*PHASES, "labels"):
        p = find_image(folder, name)
        st = p.stat()
        sig.append([p.name, st.st_size, st.st_mtime_ns])
    return sig


def prepare_patient(pairs: Sequence[Pair], cache_dir: Path, crop_shape: Sequence[int], pad_mm: float) -> Path:
    """Crop one patient's pre study and observed follow-ups to the crop grid once; returns the cached ``.npz``."""
    pid = pairs[0].patient_id
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", pid)
    npz, meta_p = cache_dir / f"{stem}.npz", cache_dir / f"{stem}.json"
    meta = {"version": CACHE_VERSION, "crop_kji": [int(c) for c in crop_shape], "pad_mm": float(pad_mm),
            "pre": _signature(pairs[0].pre_folder), "regimen": pairs[0].regimen,
            "followups": [[p.tp, p.weeks, _signature(p.followup_folder)] for p in pairs]}
    if npz.is_file() and meta_p.is_file():
        try:
            if json.loads(meta_p.read_text()) == meta:
                return npz
        except (OSError, json.JSONDecodeError):
            pass
    case = load_case(pairs[0].pre_folder, patient_id=pid)
    if case.labels is None:  # pragma: no cover - discover_pairs checked it
        raise InputError(f"{pairs[0].pre_folder}: no labels.")
    box = make_crop_box(case.labels, case.geometry, crop_shape, pad_mm)
    pre_hu = np.stack([to_crop(case.phases[p], box) for p in PHASES])
    pre_lab = to_crop(case.labels, box, labels=True)
    fu_hu, fu_lab = [], []
    for pair in pairs:
        phases = {}
        for p in PHASES:
            arr, geom = read_image(find_image(pair.followup_folder, p))
            if not geom.same_grid(case.geometry):
                raise InputError(f"{pair.followup_folder}: follow-up {p} is not on the pre-treatment grid; register "
                                 f"and resample follow-ups onto the pre grid first.")
            phases[p] = arr
        lab, geom = read_image(find_image(pair.followup_folder, "labels"), labels=True)
        if not geom.same_grid(case.geometry):
            raise InputError(f"{pair.followup_folder}: follow-up labels are not on the pre-treatment grid.")
        fu_hu.append(np.stack([to_crop(phases[p], box) for p in PHASES]))
        fu_lab.append(to_crop(lab, box, labels=True))
    tmp = npz.with_name(npz.stem + ".tmp.npz")
    np.savez(tmp, pre_hu=pre_hu.astype(np.float32), pre_lab=pre_lab, fu_hu=np.stack(fu_hu).astype(np.float32),
             fu_lab=np.stack(fu_lab), weeks=np.array([p.weeks for p in pairs], np.int32))
    os.replace(tmp, npz)
    meta_p.write_text(json.dumps(meta))
    return npz


def _lr_at(t: float, lr: float, warmup: float = 0.02) -> float:
    """Cosine schedule with linear warm-up over the first 2 % of steps and a 5 % floor; ``t`` in [0, 1]."""
    if t < warmup:
        return lr * (0.1 + 0.9 * t / warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0))))


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def fit_prior_rates(npz_paths: Sequence[Path]) -> dict[str, float]:
    """Per-regimen viable-volume rates (1/week) of the regimen-prior channel from the cached observed pairs: the
    exponential baseline's least-squares fit (:class:`.baselines.ExponentialBaseline`) on viable-tumour voxel counts
    of the crop (a voxel is the unit; follow-ups without viable tumour count as 1 voxel, pre studies with less than
    one voxel are left out)."""
    from ..labels import VIABLE_TUMOR
    from .baselines import ExponentialBaseline

    records = []
    for path in npz_paths:
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as d:
            v0 = float((d["pre_lab"] == VIABLE_TUMOR).sum())
            for lab, wk in zip(d["fu_lab"], d["weeks"]):
                records.append((meta["regimen"], float(wk), v0, float((lab == VIABLE_TUMOR).sum())))
    return ExponentialBaseline.fit(records, min_volume_ml=1.0).rates


def build_arrays(npz_paths: Sequence[Path], regimens: Sequence[str], tumour_weight: float,
                 prior_rates: dict[str, float] | None = None):
    """In-memory training arrays: cond (N, 7, ...) (8 with ``prior_rates``: the regimen-prior channel), x0 (N, 6,
    ...), voxel weight (N, 1, ...), regimen index (N,), weeks (N,)."""
    from scipy import ndimage

    conds, xs, ws, regs, weeks = [], [], [], [], []
    for path in npz_paths:
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as d:
            pre_hu, pre_lab, fu_hu, fu_lab, wk = d["pre_hu"], d["pre_lab"], d["fu_hu"], d["fu_lab"], d["weeks"]
        for t in range(len(wk)):
            prior = None if prior_rates is None else tm.prior_value(prior_rates.get(meta["regimen"]), float(wk[t]))
            conds.append(tm.condition(pre_hu[0], pre_hu[1], pre_lab, float(wk[t]), prior))
            xs.append(tm.target(pre_hu, fu_hu[t], pre_lab, fu_lab[t], float(wk[t])))
            tumour = (pre_lab >= 2) | (fu_lab[t] >= 2)
            tumour = ndimage.binary_dilation(tumour, iterations=1)
            ws.append((1.0 + tumour_weight * tumour.astype(np.float32))[None])
            regs.append(regimens.index(meta["regimen"]))
            weeks.append(int(wk[t]))
    return (np.stack(conds), np.stack(xs), np.stack(ws).astype(np.float32), np.array(regs, np.int64),
            np.array(weeks, np.int32))


def train_generator(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, *, epochs: int = 100,
                    steps_per_epoch: int | None = None, batch_size: int = 4, lr: float = 3e-4, seed: int = 0,
                    device: str = "auto", resume: bool = True, max_cases: int | None = None,
                    progress: ProgressCallback | None = None, crop_shape: Sequence[int] = DEFAULT_CROP_KJI,
                    pad_mm: float = DEFAULT_PAD_MM, architecture_kwargs: dict | None = None,
                    tumour_weight: float = 4.0, label_weight: float = 2.0, cond_dropout: float = 0.1,
                    ema_decay: float | None = 0.999, weight_decay: float = 1e-4, flip_axes: Sequence[int] = (),
                    sampling_steps: int = tm.DEFAULT_STEPS, name: str = DEFAULT_MODEL_NAME, version: str = "0.1.0",
                    data_description: str = "", cpu_precision: str = "fp32",
                    time_budget_s: float | None = None, regimen_prior: bool = False,
                    init_weights: str | os.PathLike | None = None, log=print) -> dict[str, Any]:
    """Train (or resume) the generator; returns a summary dict (model path, epochs, final loss, ...).

    ``epochs`` is the total: re-running with a larger value continues from the last checkpoint. One epoch =
    ``steps_per_epoch`` optimizer steps (default: one pass over the pairs, ``ceil(n_pairs / batch_size)``).
    ``flip_axes`` are crop-grid axes (0 = k/S, 1 = j/P, 2 = i/L) flipped at random (default none).
    ``cpu_precision="bf16"`` trains on the CPU under bfloat16 autocast (float32 weights, optimizer and loss; for CPUs
    with native bfloat16, :func:`HCCTwinLib.device.cpu_native_bf16`); ``"fp32"`` (default) is plain float32. CUDA
    always uses its autocast. ``time_budget_s``: stop after the epoch during which this much wall time has passed
    (the model is saved as after the last epoch; re-running with the same ``epochs`` continues).
    Under ``torchrun --nproc_per_node N`` (:mod:`HCCTwinLib.distributed`) each process trains on its own batches of
    the epoch (the epoch's steps shared out: the same number of pairs per epoch), DistributedDataParallel averages
    the gradients, rank 0 alone prepares the crops, logs and writes checkpoints and the model; the ranks stop
    together on the time budget.
    ``regimen_prior``: add the regimen-prior conditioning channel (:mod:`.model`), its rates fitted on these pairs
    and stored in the model card. ``init_weights``: start a new run (not a resume) from this generator file; an input
    convolution with fewer input channels (a model without the regimen prior) is zero-padded, so the new channel
    starts with no effect and the model's output is unchanged until training uses it.
    """
    import torch

    from ..regimens import REGIMEN_IDS

    t_start = time.perf_counter()
    devices.training_precision("cpu", cpu_precision)  # a wrong value fails before any work
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    dev, message = devices.select_device(device)
    ctx, dev = distributed.setup(dev)  # torchrun: one process per core / GPU, gradients averaged (DDP)
    log, progress = ctx.speakers(log, progress)
    log(f"[generator training] {message}" + (f"; rank 0 of {ctx.world} processes ({ctx.backend})"
                                               if ctx.enabled else ""))
    regimens = list(REGIMEN_IDS)

    report(progress, 0.0, "Reading the cohort")
    pairs = discover_pairs(cohort_dir, max_cases=max_cases)
    unknown = sorted({p.regimen for p in pairs} - set(regimens))
    if unknown:
        raise InputError(f"{cohort_dir}: clinical.csv names regimen(s) {unknown} that are not in the regimen "
                         f"catalogue ({', '.join(regimens)}).")
    by_patient: dict[str, list[Pair]] = {}
    for p in pairs:
        by_patient.setdefault(p.patient_id, []).append(p)
    cache = out / "cache"
    prep = SubProgress(progress, 0.0, 0.1)
    npz_paths = []
    if not ctx.main:  # rank 0 crops the cases first; the others then read its cache
        ctx.barrier()
    for n, (_pid, plist) in enumerate(by_patient.items()):
        npz_paths.append(prepare_patient(plist, cache, crop_shape, pad_mm))
        report(prep, (n + 1) / len(by_patient), f"Cropping cases {n + 1}/{len(by_patient)}")
    if ctx.main:
        ctx.barrier()
    prior_rates = fit_prior_rates(npz_paths) if regimen_prior else None
    if prior_rates is not None:
        log("[generator training] regimen prior rates (1/week): "
            + ", ".join(f"{r} {v:+.4f}" for r, v in sorted(prior_rates.items())))
    cond_np, x0_np, w_np, reg_np, weeks_np = build_arrays(npz_paths, regimens, tumour_weight, prior_rates)
    n_pairs = len(reg_np)
    steps_per_epoch = int(steps_per_epoch or max(1, math.ceil(n_pairs / batch_size)))
    steps_per_epoch = max(1, math.ceil(steps_per_epoch / ctx.world))  # per process: same pairs per epoch
    total_steps = epochs * steps_per_epoch

    card = generator_card(regimens, crop_shape, architecture_kwargs, pad_mm=pad_mm, steps=sampling_steps,
                          name=name, version=version, prior_rates=prior_rates)
    config = {"architecture_kwargs": card["architecture_kwargs"], "crop_kji": card["crop_kji"],
              "pad_mm": float(pad_mm), "regimens": regimens, "seed": int(seed), "batch_size": int(batch_size),
              "steps_per_epoch": steps_per_epoch, "tumour_weight": tumour_weight, "label_weight": label_weight,
              "cond_dropout": cond_dropout, "ema_decay": ema_decay, "flip_axes": [int(a) for a in flip_axes],
              "max_cases": max_cases, "regimen_prior": prior_rates}

    torch.manual_seed(seed)
    model = tm.build_model(**card["architecture_kwargs"]).to(dev)
    ema = copy.deepcopy(model).eval() if ema_decay else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    state_path, log_path = out / "train_state.json", out / "train_log.jsonl"
    ckpt, ckpt_ema, opt_path = out / "checkpoint.safetensors", out / "checkpoint_ema.safetensors", \
        out / "checkpoint_optimizer.pt"
    state: dict[str, Any] = {"epoch": 0, "step": 0, "config": config}
    if ctx.enabled:  # a resume with another number of processes would change the schedule
        config["world_size"] = ctx.world
    if resume and state_path.is_file():
        state = _load_checkpoint(state_path, config, model, ema, optimizer, ckpt, ckpt_ema, opt_path, dev)
        log(f"[generator training] resuming after epoch {state['epoch']} (step {state['step']})")
    else:
        if log_path.exists() and ctx.main:
            log_path.unlink()
        if init_weights is not None:
            init_from(model, init_weights)
            if ema is not None:
                ema.load_state_dict(model.state_dict())
            log(f"[generator training] starting from {init_weights}")

    cond_t, x0_t = torch.from_numpy(cond_np), torch.from_numpy(x0_np)
    w_t, reg_t = torch.from_numpy(w_np), torch.from_numpy(reg_np)
    ch_w = torch.ones(tm.OUT_CHANNELS)
    ch_w[tm.IMAGE_CHANNELS:] = label_weight
    ch_w = (ch_w / ch_w.mean()).view(1, -1, 1, 1, 1).to(dev)
    null_index = len(regimens)
    hyper = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size, "lr": lr,
             "weight_decay": weight_decay, "optimizer": "AdamW", "schedule": "cosine, 2% warm-up, 5% floor",
             "loss": "rectified-flow velocity MSE x (t/T)^2 (= x0 MSE, x0-parametrised network), voxel weight "
                     "1 + tumour_weight near tumour/PVTT, label channels x label_weight",
             "tumour_weight": tumour_weight, "label_weight": label_weight,
             "cond_dropout": cond_dropout, "ema_decay": ema_decay, "flip_axes": list(flip_axes),
             "timestep_sampling": "uniform", "seed": seed,
             "precision": devices.training_precision(dev, cpu_precision), "regimen_prior": bool(regimen_prior),
             "init_weights": (f"{Path(init_weights).name} (sha256 {sha256_file(resolve_model_path(init_weights))[:12]})"
                              if init_weights is not None else None),
             "distributed": ctx.describe()}
    net = ctx.wrap(model)  # DDP: rank 0's weights broadcast to every rank, gradients averaged at each step
    last_loss = None
    for epoch in range(int(state["epoch"]), epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])  # the epoch's order of pairs: the same on every rank
        flip_rng = rng if ctx.main else np.random.default_rng([seed, epoch, ctx.rank])
        gen = torch.Generator().manual_seed(seed * 1000003 + epoch + 100003 * ctx.rank)
        model.train()
        losses = []
        ep_prog = SubProgress(progress, 0.1 + 0.9 * epoch / epochs, 0.1 + 0.9 * (epoch + 1) / epochs)
        order = np.concatenate([rng.permutation(n_pairs) for _ in range(
            math.ceil(steps_per_epoch * ctx.world * batch_size / n_pairs) + 1)])
        for it in range(steps_per_epoch):
            g = it * ctx.world + ctx.rank  # this rank's batch of the epoch's global step
            idx = torch.from_numpy(order[g * batch_size:(g + 1) * batch_size])
            cond, x0, wv, reg = cond_t[idx], x0_t[idx], w_t[idx], reg_t[idx].clone()
            for axis in flip_axes:
                if flip_rng.random() < 0.5:
                    dims = [2 + int(axis)]
                    cond, x0, wv = cond.flip(dims), x0.flip(dims), wv.flip(dims)
            if cond_dropout > 0:
                drop = torch.rand(len(reg), generator=gen) < cond_dropout
                reg[drop] = null_index
                if prior_rates is not None and bool(drop.any()):  # the "none" class has no prior either
                    cond = cond.clone()
                    cond[drop, -1] = 0.0
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.rand(len(reg), generator=gen) * tm.NUM_TRAIN_TIMESTEPS
            x_t, _v_target = tm.rf_training_pair(x0, noise, t)
            x_t, x0, cond, wv, reg, t = (a.to(dev) for a in (x_t, x0, cond, wv, reg, t))
            current_lr = _lr_at(state["step"] / max(total_steps, 1), lr)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            optimizer.zero_grad(set_to_none=True)
            with devices.autocast(dev, cpu_precision):
                x0_hat = tm.network(net, x_t, t, cond, reg)
            # velocity MSE weighted by (t/T)^2 == x0 MSE for the x0-parametrised network
            loss = (wv * ch_w * (x0_hat.float() - x0) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            state["step"] += 1
            if ema is not None:
                decay = min(float(ema_decay), (1.0 + state["step"]) / (10.0 + state["step"]))
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.mul_(decay).add_(pm.detach(), alpha=1.0 - decay)
            losses.append(float(loss.detach()))
            report(ep_prog, (it + 1) / steps_per_epoch,
                   f"Generator epoch {epoch + 1}/{epochs}: step {it + 1}/{steps_per_epoch}, loss {losses[-1]:.4f}")
        last_loss = float(np.mean(losses))
        entry = {"epoch": epoch + 1, "step": state["step"], "train_loss": last_loss, "lr": current_lr,
                 "seconds": round(time.perf_counter() - t0, 2), "device": str(dev), "precision": hyper["precision"],
                 "steps": steps_per_epoch}
        state["epoch"] = epoch + 1
        if ctx.main:  # rank 0 logs and writes the checkpoint; the others wait for it
            with open(log_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            log(f"[generator training] epoch {epoch + 1}/{epochs} loss {last_loss:.4f} [{entry['seconds']:.1f} s]")
            _save_checkpoint(state, model, ema, optimizer, state_path, ckpt, ckpt_ema, opt_path)
        ctx.barrier()
        if ctx.any(time_budget_s is not None and time.perf_counter() - t_start > time_budget_s) \
                and epoch + 1 < epochs:
            log(f"[generator training] time budget of {time_budget_s:.0f} s reached after epoch {epoch + 1}")
            break

    final = ema if ema is not None else model
    counts = np.bincount(reg_np, minlength=len(regimens))
    regimen_counts = {r: int(counts[i]) for i, r in enumerate(regimens) if counts[i]}
    card.update({
        "training_data": {"cohort": Path(cohort_dir).name, "description": data_description or
                          "HCCTwin cohort folder, observed follow-ups only (synthetic digital-twin cohort unless "
                          "stated otherwise)", "n_patients": len(by_patient), "n_pairs": n_pairs,
                          "pairs_per_regimen": regimen_counts,
                          "weeks": sorted({int(w) for w in weeks_np.tolist()}),
                          "regimens_seen": sorted(regimen_counts)},
        "hyperparameters": hyper,
        "training": {"epochs_completed": int(state["epoch"]), "steps": int(state["step"]),
                     "final_train_loss": last_loss, "weights": "EMA" if ema is not None else "raw"},
        "metrics": {},
        "metrics_note": "filled by benchmarks/generator_evaluation.py on a hold-out cohort",
        "software": {"hcctwin": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "trained_on": str(dev)},
        "disclaimer": "Demo weights trained on synthetic data; research use only, not for clinical use.",
    })
    model_path, card_path = out / f"{name}.safetensors", out / f"{name}.json"
    if ctx.main:
        model_path, card_path = save_model(final, model_path, card)
    ctx.barrier()
    report(progress, 1.0, "Generator training done")
    summary = {"model_path": str(model_path), "card_path": str(card_path), "epochs_completed": int(state["epoch"]),
               "steps": int(state["step"]), "final_train_loss": last_loss, "n_pairs": n_pairs,
               "n_patients": len(by_patient), "log_path": str(log_path), "device": str(dev),
               "seconds": round(time.perf_counter() - t_start, 2), "distributed": ctx.describe()}
    ctx.teardown()
    return summary


def init_from(model, weights: str | os.PathLike) -> None:
    """Load a generator file's weights into ``model``; a tensor whose only difference is a larger input-channel
    dimension (dim 1, the input convolution of a model with more conditioning channels) is zero-padded there."""
    import torch

    state, card = load_state(weights)
    if card.get("architecture") != tm.ARCHITECTURE:
        raise ModelFileError(f"{weights}: not an HCCTwin generator model (architecture {card.get('architecture')!r}).")
    own = model.state_dict()
    if set(state) != set(own):
        raise ModelFileError(f"{weights}: its tensors do not match this architecture "
                             f"({len(set(state) ^ set(own))} names differ).")
    new = {}
    for key, value in state.items():
        target = own[key]
        if value.shape == target.shape:
            new[key] = value
        elif (value.dim() == target.dim() >= 2 and value.shape[0] == target.shape[0]
              and value.shape[2:] == target.shape[2:] and value.shape[1] < target.shape[1]):
            padded = torch.zeros_like(target)
            padded[:, : value.shape[1]] = value
            new[key] = padded
        else:
            raise ModelFileError(f"{weights}: tensor {key} has shape {tuple(value.shape)}, this model needs "
                                 f"{tuple(target.shape)}.")
    model.load_state_dict(new)


def _save_checkpoint(state, model, ema, optimizer, state_path, ckpt, ckpt_ema, opt_path) -> None:
    import torch

    card = {"name": "checkpoint", "version": str(state["epoch"]), "architecture": tm.ARCHITECTURE,
            "architecture_kwargs": state["config"]["architecture_kwargs"], "training_state": {"epoch": state["epoch"]}}
    save_model(model, ckpt, card)
    if ema is not None:
        save_model(ema, ckpt_ema, dict(card, name="checkpoint_ema"))
    tmp = opt_path.with_name(opt_path.name + ".tmp")
    torch.save(optimizer.state_dict(), tmp)
    os.replace(tmp, opt_path)
    _write_json_atomic(state_path, dict(state, optimizer_sha256=sha256_file(opt_path)))


def _load_checkpoint(state_path, config, model, ema, optimizer, ckpt, ckpt_ema, opt_path, dev) -> dict:
    import torch

    state = read_training_state(state_path, config)
    model.load_state_dict(load_state(ckpt)[0])
    if ema is not None:
        ema.load_state_dict(load_state(ckpt_ema)[0])
    if not opt_path.is_file() or sha256_file(opt_path) != state.get("optimizer_sha256"):
        raise ModelFileError(f"{opt_path}: optimizer checkpoint missing, modified or corrupted; re-run with "
                             f"resume=False.")
    optimizer.load_state_dict(torch.load(opt_path, map_location=dev, weights_only=True))
    return state


__all__ = ["Pair", "build_arrays", "discover_pairs", "fit_prior_rates", "init_from", "prepare_patient",
           "read_received_regimens", "train_generator"]
