"""``hcctwin train generator``: fit the anchored twin's kinetics on a cohort's observed follow-ups and write the model.

Reads ``COHORT/clinical.csv`` (``patient_id``, ``regimen`` received, and the clinical covariates when present) and
``COHORT/cases/<id>/pre`` + ``followup/wNN`` (arterial, portal, labels; a follow-up on another grid is resampled
onto the pre-treatment grid in physical space, so it must already be registered to it). Only the follow-ups each
patient really had enter the fit (never counterfactual truth). Writes ``OUT/<name>.safetensors`` (the model arrays)
and its model card (data, regimens, weeks, per-cell counts and residual spreads, covariates, limitations).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import ProgressCallback, report
from .anchored import ARCHITECTURE
from .kinetic import (
    CATEGORY_FEATURES,
    CLINICAL_FEATURES,
    LEGACY_FEATURES,
    MATCH_MM,
    PHASES,
    SIZE_WEIGHT,
    SMOOTH_ML,
    FollowUpRecord,
    find_lesions,
    fit_kinetics,
    followup_record,
)

VERSION = "1.1.0"


def _read_clinical(cohort: Path) -> dict[str, dict[str, str]]:
    path = cohort / "clinical.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return {str(row.get("patient_id", "")).strip(): row for row in csv.DictReader(fh)}


def _on_grid(array: np.ndarray, geometry, target, *, labels: bool) -> np.ndarray:
    if geometry == target:
        return array
    import SimpleITK as sitk

    from ..io import to_sitk

    img = to_sitk(array, geometry)
    ref = target.apply_to(sitk.Image(list(target.size_xyz), sitk.sitkUInt8))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                        0.0 if labels else -1000.0, img.GetPixelID())
    return sitk.GetArrayFromImage(out)


def patient_records(pre_folder: str, followups: Sequence[tuple[str, int, str]],
                    clinical: dict[str, str] | None, patient_id: str = "") -> list[FollowUpRecord]:
    """The observed follow-up records of one patient: ``followups`` = ``[(regimen, weeks, folder)]`` (a module-level
    function of plain arguments, so that :func:`cohort_records` can run it on Dask workers)."""
    from ..io import find_image, read_image

    pre_folder = Path(pre_folder)
    pre_phases, geom = {}, None
    for p in PHASES:
        pre_phases[p], geom = read_image(find_image(pre_folder, p))
    pre_labels, _ = read_image(find_image(pre_folder, "labels"), labels=True)
    lesions = find_lesions(pre_labels, geom, pre_phases, clinical)
    out = []
    for regimen, weeks, folder in followups:
        folder = Path(folder)
        post_phases = {}
        for p in PHASES:
            arr, g = read_image(find_image(folder, p))
            post_phases[p] = _on_grid(arr, g, geom, labels=False)
        arr, g = read_image(find_image(folder, "labels"), labels=True)
        post_labels = _on_grid(arr, g, geom, labels=True)
        out.append(followup_record(pre_phases, pre_labels, post_phases, post_labels, geom, regimen, weeks, clinical,
                                   pre_lesions=lesions, patient_id=patient_id))
    return out


def cohort_records(cohort_dir: str | os.PathLike, *, max_cases: int | None = None,
                   progress: ProgressCallback | None = None, log=None, scheduler: str | None = "serial",
                   workers: int | None = None) -> tuple[list[FollowUpRecord], dict]:
    """Observed follow-up records of a cohort (see :func:`.kinetic.followup_record`) and what was read; one patient
    per task on ``scheduler`` (:mod:`HCCTwinLib.parallel`: serial, a local Dask cluster or a distributed one), the
    records in the cohort's order whatever the scheduler."""
    from ..parallel import map_ordered
    from .train import discover_pairs

    root = Path(cohort_dir).expanduser().resolve()
    pairs = discover_pairs(root, max_cases=max_cases)
    clinical = _read_clinical(root)
    by_patient: dict[str, list] = {}
    for pair in pairs:
        by_patient.setdefault(pair.patient_id, []).append(pair)
    items = [(str(ps[0].pre_folder), [(pair.regimen, pair.weeks, str(pair.followup_folder)) for pair in ps],
              clinical.get(pid), pid) for pid, ps in by_patient.items()]
    n_total = len(items)
    t0 = time.perf_counter()

    def step(fraction, message):
        report(progress, 0.9 * fraction, f"Observed follow-ups: {message}")
        done = round(fraction * n_total)
        if log is not None and done and done % 20 == 0:
            log(f"  {done}/{n_total} patients read ({time.perf_counter() - t0:.0f} s)")

    per_patient = map_ordered(patient_records, items, scheduler=scheduler, workers=workers, progress=step)
    records = [rec for recs in per_patient for rec in recs]
    info = {"cohort": str(root), "patients": n_total, "followups": len(records),
            "regimens_seen": sorted({r.regimen for r in records}), "weeks": sorted({r.weeks for r in records})}
    return records, info


def kinetic_card(model, summary: dict, info: dict, *, name: str, version: str = VERSION) -> dict[str, Any]:
    return {
        "name": name, "version": version, "architecture": ARCHITECTURE,
        "task": "virtual follow-ups per regimen and week: per-lesion kinetics from pre-treatment covariates, rendered "
                "on the patient's own pre-treatment image",
        "architecture_kwargs": {"features": list(model.features), "array_keys": sorted(model.arrays)},
        "input_phases": list(PHASES), "regimens": list(model.regimens), "weeks_fitted": list(model.weeks),
        "spacing_mm": None,
        "covariates": {"lesion": list(LEGACY_FEATURES[:4]), "patient": list(LEGACY_FEATURES[4:7]),
                       "categories": [f for f in model.features if f in CATEGORY_FEATURES],
                       "clinical": {k: v for k, v in CLINICAL_FEATURES.items()},
                       "missing": "training median (standardised 0)"},
        "kinetics": {"targets": "log((V_t + a) / (V_0 + a)) of viable and of total (viable + necrotic) volume per "
                                f"lesion, a = {SMOOTH_ML:.1f} mL",
                     "model": "ridge regression per (regimen, observed week), penalty by exact leave-one-out, "
                              f"lesions weighted by (mL + 1) ** {SIZE_WEIGHT}; later weeks refitted through the "
                              "earlier one on the patients observed at both (poor responders leave follow-up); "
                              "residual SD (leave-one-out) = spread of the latent response",
                     "matching": f"follow-up tumour within {MATCH_MM:.0f} mm of a pre-treatment lesion belongs to it",
                     "per_cell": summary},
        "rendering": "homothety of each lesion about its centroid + monotone ramp to the identity 10 mm outside; "
                     "necrotic core / residual crescent; learned median HU per (regimen, week); see twin/render.py",
        "training_data": {**info, "source": "observed follow-ups only (the regimen each patient received)"},
        "limitations": ["PVTT is never grown (where a thrombus extends cannot be seen on one scan)",
                        "resection is rendered as lesions shrinking to nothing, not as a resection cavity",
                        "regimens without observed follow-ups in the training cohort are shown unchanged",
                        "the position of residual viable tumour inside a treated lesion is a rule (towards the "
                        "existing viable rim or the liver centre), not a prediction"],
        "disclaimer": "Demo weights fitted on the simulator; not for clinical use.",
    }


def train_kinetic(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, *, regimens: Sequence[str] | None = None,
                  max_cases: int | None = None, name: str = "hcctwin_twin", progress: ProgressCallback | None = None,
                  log=print, scheduler: str | None = "serial", workers: int | None = None,
                  **fit_kwargs) -> dict[str, Any]:
    """Fit on ``cohort_dir``'s observed follow-ups and write ``out_dir/<name>.safetensors`` + card
    (``fit_kwargs``: :func:`.kinetic.fit_kinetics` settings, e.g. ``min_patients``; ``scheduler``/``workers``: where
    the follow-ups are read, see :func:`cohort_records`)."""
    import torch

    from ..regimens import REGIMEN_IDS
    from ..weights import save_model

    t0 = time.perf_counter()
    records, info = cohort_records(cohort_dir, max_cases=max_cases, progress=progress, log=log, scheduler=scheduler,
                                   workers=workers)
    if not records:
        raise InputError(f"{cohort_dir}: no observed follow-ups to fit the generator on.")
    regimens = list(regimens) if regimens else list(REGIMEN_IDS)
    model, summary = fit_kinetics(records, regimens, **fit_kwargs)
    card = kinetic_card(model, summary, info, name=name)
    card["training_history"] = [{"fitted_s": round(time.perf_counter() - t0, 1), "followups": len(records)}]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state().items()}
    path, cpath = save_model(state, out / f"{name}.safetensors", card)
    report(progress, 1.0, "Generator fitted")
    if log is not None:
        log(f"fitted on {info['followups']} follow-ups of {info['patients']} patients in "
            f"{time.perf_counter() - t0:.0f} s -> {path}")
    return {"weights": str(path), "card": str(cpath), "training_data": info, "per_cell": summary}


__all__ = ["VERSION", "cohort_records", "kinetic_card", "patient_records", "train_kinetic"]
