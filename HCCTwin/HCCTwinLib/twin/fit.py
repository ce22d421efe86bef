"""``hcctwin train generator``: fit the anchored twin's kinetics on a cohort's observed follow-ups and write the model.

Reads ``COHORT/clinical.csv`` (``patient_id``, ``regimen`` received, and the clinical covariates when present) and
``COHORT/cases/<id>/pre`` + ``followup/wNN`` (arterial, portal, labels; a follow-up on another grid is resampled
onto the pre-treatment grid in physical space, so it must already be registered to it). Only the follow-ups each
patient really had enter the fit (never counterfactual truth). Writes ``OUT/<name>.safetensors`` (the model arrays)
and its model card (data, regimens, weeks, per-cell counts and residual spreads, covariates, limitations).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import cohort_clinical_rows, find_image, read_image, to_sitk, write_text_atomic
from ..jsonutil import jsonable
from ..parallel import map_ordered
from ..progress import ProgressCallback, report
from ..regimens import REGIMEN_IDS
from ..weights import save_model
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
from .train import discover_pairs

VERSION = "1.4.0"


def _on_grid(array: np.ndarray, geometry, target, *, labels: bool) -> np.ndarray:
    if geometry == target:
        return array
    import SimpleITK as sitk

    img = to_sitk(array, geometry)
    ref = target.apply_to(sitk.Image(list(target.size_xyz), sitk.sitkUInt8))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                        0.0 if labels else -1000.0, img.GetPixelID())
    return sitk.GetArrayFromImage(out)


def patient_records(pre_folder: str, followups: Sequence[tuple[str, int, str]],
                    clinical: dict[str, Any] | None, patient_id: str = "") -> list[FollowUpRecord]:
    """The observed follow-up records of one patient: ``followups`` = ``[(regimen, weeks, folder)]`` (a module-level
    function of plain arguments, so that :func:`cohort_records` can run it on Dask workers)."""
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


#: how the model's volumes become an image (twin/render.py), as the model card says it
RENDERING = ("each lesion's outline moved along its normals to the planned volume (its interior and the liver within "
             "10 mm follow, the identity beyond, nothing outside the liver moves); new necrosis as a core, or, once "
             "treatment necrosis passes 10 % of the lesion, everything but one compact residual viable nodule against "
             "the wall; learned median HU per (regimen, week), the change of surviving viable HU a line in the "
             "lesion's own pre-treatment viable HU where that beats the median (leave-one-out), plus an offset for "
             "viable tumour within 2 mm and 2-4 mm of new necrosis (lipiodol blur after TACE); see twin/render.py")

#: version of the records' content: a cache written by another version is not read (2: the pre-treatment viable HU
#: of each viable-HU change; 3: the tissue change measured beyond the bands next to new necrosis, and the bands)
RECORDS_FORMAT = 3


def _files_stamp(folder: str) -> list:
    """Name, size and modification time of the files of ``folder`` (what decides whether its records changed)."""
    out = []
    for f in sorted(Path(folder).iterdir()):
        if f.is_file():
            st = f.stat()
            out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def records_key(item: tuple) -> str:
    """The cache key of one patient's records: its images' names, sizes and times, its follow-ups, its clinical row
    and :data:`RECORDS_FORMAT` (an edited image, a new follow-up or a changed clinical value gives a new key)."""
    pre_folder, followups, clinical, patient_id = item
    stamp = {"format": RECORDS_FORMAT, "patient_id": patient_id, "pre": _files_stamp(pre_folder),
             "followups": [[r, int(w), _files_stamp(f)] for r, w, f in followups],
             "clinical": sorted((str(k), str(v)) for k, v in (clinical or {}).items())}
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()


def _records_to_json(records: Sequence[FollowUpRecord]) -> str:
    return json.dumps({"format": RECORDS_FORMAT, "records": [jsonable(dataclasses.asdict(r)) for r in records]})


def _records_from_json(text: str) -> list[FollowUpRecord]:
    data = json.loads(text)
    if data.get("format") != RECORDS_FORMAT:
        raise ValueError("another records format")
    return [FollowUpRecord(**r) for r in data["records"]]


def cohort_records(cohort_dir: str | os.PathLike, *, max_cases: int | None = None,
                   progress: ProgressCallback | None = None, log=None, scheduler: str | None = "serial",
                   workers: int | None = None, cache: str | os.PathLike | None = None
                   ) -> tuple[list[FollowUpRecord], dict]:
    """Observed follow-up records of a cohort (see :func:`.kinetic.followup_record`) and what was read; one patient
    per task on ``scheduler`` (:mod:`HCCTwinLib.parallel`: serial, a local Dask cluster or a distributed one), the
    records in the cohort's order whatever the scheduler. With ``cache`` (a folder), each patient's records are kept
    there as JSON under :func:`records_key` and read back instead of the images while the patient's files and
    clinical row are unchanged (refitting with other settings then takes seconds, not the minutes of reading)."""
    root = Path(cohort_dir).expanduser().resolve()
    pairs = discover_pairs(root, max_cases=max_cases)
    clinical = cohort_clinical_rows(root)
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

    cache_dir = None if cache is None else Path(cache).expanduser()
    keys = [records_key(item) for item in items] if cache_dir is not None else []
    per_patient: list[list[FollowUpRecord] | None] = [None] * n_total
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for n, key in enumerate(keys):
            path = cache_dir / f"{key}.json"
            if path.is_file():
                try:
                    per_patient[n] = _records_from_json(path.read_text(encoding="utf-8"))
                except (OSError, ValueError, TypeError, KeyError):  # damaged or older: read the images again
                    per_patient[n] = None
    todo = [n for n in range(n_total) if per_patient[n] is None]
    if log is not None and cache_dir is not None:
        log(f"  {n_total - len(todo)}/{n_total} patients' records from the cache {cache_dir}")
    read = map_ordered(patient_records, [items[n] for n in todo], scheduler=scheduler, workers=workers,
                       progress=step)
    for n, recs in zip(todo, read):
        per_patient[n] = recs
        if cache_dir is not None:
            write_text_atomic(cache_dir / f"{keys[n]}.json", _records_to_json(recs))
    records = [rec for recs in per_patient for rec in recs]
    info = {"cohort": str(root), "patients": n_total, "followups": len(records),
            "regimens_seen": sorted({r.regimen for r in records}), "weeks": sorted({r.weeks for r in records})}
    if cache_dir is not None:
        info["read_from_cache"] = n_total - len(todo)
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
                              "residual SD (leave-one-out) = spread of the response no covariate shows, split "
                              "into the share a patient's lesions have in common (shared_viable / shared_total: one-"
                              "way analysis of variance of the residuals over the patients with two or more lesions; "
                              "the patient's latent response z) and each lesion's own deviation; samples draw z "
                              "stratified over its quantiles",
                     "matching": f"follow-up tumour within {MATCH_MM:.0f} mm of a pre-treatment lesion belongs to it",
                     "per_cell": summary},
        "rendering": RENDERING,
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
                  cache: str | os.PathLike | None = None, **fit_kwargs) -> dict[str, Any]:
    """Fit on ``cohort_dir``'s observed follow-ups and write ``out_dir/<name>.safetensors`` + card
    (``fit_kwargs``: :func:`.kinetic.fit_kinetics` settings, e.g. ``min_patients``; ``scheduler``/``workers``: where
    the follow-ups are read, ``cache``: where the read records are kept, see :func:`cohort_records`)."""
    import torch

    t0 = time.perf_counter()
    records, info = cohort_records(cohort_dir, max_cases=max_cases, progress=progress, log=log, scheduler=scheduler,
                                   workers=workers, cache=cache)
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


__all__ = ["RECORDS_FORMAT", "VERSION", "cohort_records", "kinetic_card", "patient_records", "records_key",
           "train_kinetic"]
