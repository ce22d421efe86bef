"""``hcctwin predict --cohort``: the whole pipeline for every patient of a cohort, serial or on Dask (issue 27).

A site that wants the twin for a whole cohort (a tumor board's list, a retrospective series) gives the cohort folder
(``clinical.csv`` + ``cases/<id>/pre``); each patient is one task of :func:`HCCTwinLib.parallel.map_ordered`, so
``--scheduler local`` spreads them over the cores of this machine and ``--scheduler distributed://HOST:PORT`` over a
cluster. Each patient's folder ``OUT/<id>/`` is what ``hcctwin predict`` writes for one patient (complete or absent);
``OUT/predictions.csv`` has one row per patient (in the order of ``clinical.csv``, whatever order the workers finish
in): the guard's verdict, the segmented volumes, the recommendation, and median OS / RMST-24 per regimen. A patient
whose input is refused gets a row with ``status`` = ``error`` and the reason; the others go on.

With ``deidentify`` the folders and rows carry study codes (``P0001``, ...) and ``OUT/codes.csv`` holds the key
(keep it at the site).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import HCCTwinError, InputError
from .formatting import num
from .io import clinical_row_values, path_inside, read_clinical_row, read_clinical_table, staged_output
from .jsonutil import jsonable
from .parallel import map_ordered
from .pipeline import PipelineOptions, run_case, save_result
from .progress import ProgressCallback
from .survival_result import SurvivalResult

PREDICTIONS_CSV = "predictions.csv"
CODES_CSV = "codes.csv"


def cohort_patients(cohort: Path, max_cases: int | None = None, *, table=None) -> list[str]:
    """Patient IDs of ``clinical.csv`` (table order; ``table``: already read) that have a ``cases/<id>/pre``
    folder."""
    if table is None:
        table, _ = read_clinical_table(cohort / "clinical.csv")
    ids = []
    for pid in (str(p) for p in table["patient_id"]):
        if path_inside(cohort, "cases", pid, "pre").is_dir():
            ids.append(pid)
        if max_cases is not None and len(ids) >= max_cases:
            break
    return ids


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    """One line of ``predictions.csv`` from a patient's ``result.json``."""
    surv = SurvivalResult.from_dict(summary.get("survival") or {})
    rec = surv.recommendation
    vols = summary.get("label_volumes_ml") or {}
    domain = summary.get("domain") or {}
    row: dict[str, Any] = {
        "status": "ok",
        "domain_verdict": domain.get("verdict", ""),
        **{f"{key}_ml": num(value) for key, value in vols.items() if key != "background"},
        "recommended_regimen": rec.regimen if rec is not None and "regimen" not in rec.absent else "",
        "probability_best": num(rec.probability_best.get(rec.regimen)) if rec is not None else None,
        "recommendation_withheld": bool(surv.recommendation_withheld),
    }
    for regimen, curve in surv.curves("os").items():
        row[f"os_median_months_{regimen}"] = num(curve.median)
        row[f"os_rmst24_months_{regimen}"] = num(curve.rmst24)
    return row


def predict_patient(cohort: str, patient_id: str, out_dir: str, regimens: list[str], weeks: list[int],
                    options: dict[str, Any], report: bool = False, deidentify: bool = False,
                    clinical: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one cohort patient and write ``out_dir`` (a task of :func:`predict_cohort`, also on a Dask worker: plain
    arguments, models loaded there once per worker process). ``clinical``: the patient's values (``predict_cohort``
    reads ``clinical.csv`` once); None reads them from the cohort's table. Returns the ``predictions.csv`` row."""
    from .io import load_case

    try:
        cohort_path = Path(cohort)
        if clinical is None:
            clinical, _ = read_clinical_row(cohort_path / "clinical.csv", patient_id)
        case = load_case(path_inside(cohort_path, "cases", patient_id, "pre"), patient_id=patient_id,
                         clinical=clinical)
        with staged_output(out_dir) as stage:  # complete or absent, as for one patient
            result = run_case(case, regimens, weeks, options=PipelineOptions(**options))
            summary = jsonable(result.summary(), finite=True)
            if deidentify:
                from .report.content import deidentify_summary

                summary = deidentify_summary(summary)
            save_result(result, stage, summary=summary)
            if report:
                from .report import write_report

                write_report(summary, stage, deidentify=deidentify)
    except HCCTwinError as exc:  # a refused input stops this patient, not the cohort
        message = str(exc)
        if deidentify:  # the message names the patient's files: the study code instead of the ID
            message = re.sub(re.escape(patient_id), Path(out_dir).name, message, flags=re.IGNORECASE)
        return {"status": "error", "message": message}
    return _row(summary)


def predict_cohort(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, *, regimens, weeks,
                   options: PipelineOptions | None = None, max_cases: int | None = None, report: bool = False,
                   deidentify: bool = False, scheduler: str | None = "serial", workers: int | None = None,
                   progress: ProgressCallback | None = None) -> pd.DataFrame:
    """Every patient of the cohort through the pipeline; writes ``OUT/<id or code>/`` and ``OUT/predictions.csv``
    (and ``OUT/codes.csv`` with ``deidentify``); returns the table."""
    cohort, out = Path(cohort_dir), Path(out_dir)
    if not (cohort / "clinical.csv").is_file():
        raise InputError(f"--cohort {cohort}: no clinical.csv there (the HCCTwin cohort layout: clinical.csv + "
                         f"cases/<patient_id>/pre).")
    table, _notes = read_clinical_table(cohort / "clinical.csv")  # once, not once per patient
    ids = cohort_patients(cohort, max_cases, table=table)
    if not ids:
        raise InputError(f"--cohort {cohort}: no patient of clinical.csv has a cases/<patient_id>/pre folder.")
    out.mkdir(parents=True, exist_ok=True)
    names = [f"P{n + 1:04d}" for n in range(len(ids))] if deidentify else ids
    opts = options or PipelineOptions()
    option_values = {k: getattr(opts, k) for k in opts.__dataclass_fields__}
    items = [(str(cohort), pid, str(out / name), list(regimens), [int(w) for w in weeks], option_values, report,
              deidentify, clinical_row_values(table, pid, cohort / "clinical.csv")) for pid, name in zip(ids, names)]
    rows = map_ordered(predict_patient, items, scheduler=scheduler, workers=workers, progress=progress)
    key = "study_code" if deidentify else "patient_id"
    table = pd.DataFrame([{key: name, **row} for name, row in zip(names, rows)])
    if "message" not in table.columns:
        table["message"] = ""
    table.to_csv(out / PREDICTIONS_CSV, index=False)
    if deidentify:
        pd.DataFrame({"patient_id": ids, "study_code": names}).to_csv(out / CODES_CSV, index=False)
    (out / "predictions.json").write_text(json.dumps(
        {"cohort": str(cohort), "patients": len(ids), "ok": int((table["status"] == "ok").sum()),
         "regimens": list(regimens), "weeks": [int(w) for w in weeks], "scheduler": scheduler or "serial"},
        indent=2), encoding="utf-8")
    return table


__all__ = ["CODES_CSV", "PREDICTIONS_CSV", "cohort_patients", "predict_cohort", "predict_patient"]
