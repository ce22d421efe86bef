"""A simulated cohort written the way sites bring real ones: a TCIA-like DICOM tree and a site-style clinical table.

``hcctwin simulate --format dicom`` (:func:`simulate_dicom_cohort`) writes::

    DIR/dicom/<PatientID>/<MM-DD-YYYY>-NA-<study description>-<uid tail>/
        2.000000-ARTERIAL-<uid tail>/1-001.dcm ...          CT series, one file per slice
        3.000000-PORTAL VENOUS-<uid tail>/1-001.dcm ...     CT series
        300.000000-Segmentation-<uid tail>/1-1.dcm          DICOM SEG of the labels, referencing the portal series
    DIR/clinical_site.csv      clinical table in the site's columns / units / codes
                               (``sitemap.SIMULATED_SITE_MAPPING``), with three simulated readers' mRECIST of the
                               first observed follow-up
    DIR/mapping.json           the column mapping that reads clinical_site.csv back (``hcctwin import --mapping``;
                               the entries of :data:`SIMULATED_SITE_MAPPING` whose column the table has)
    DIR/cohort.json            how the cohort was made (``"format": "dicom"``)
    DIR/truth/clinical.csv     the HCCTwin clinical table (with the readers' reads), for checking an import
    DIR/truth/counterfactuals.csv, DIR/truth/patients.csv    as the NIfTI format writes them

One study per visit: the pre-treatment study and one per observed follow-up (``followups`` of the clinical table),
StudyDate = a baseline date drawn per patient + 7 x weeks, give or take up to 2 days (so the import's rounding of days
to weeks is exercised). The images, labels and tables are exactly those of ``simulate_cohort(n, seed, fast=...)``
(NIfTI format, same seed); UIDs are derived from the seed, so the same command writes the same files.

Readers: each of three simulated readers reads the truth's mRECIST of the received regimen at the first observed
follow-up (``response_wNN`` of ``truth/counterfactuals.csv``) and flips it to an adjacent category (CR-PR-SD-PD)
with probability :data:`READER_FLIP_PROBABILITY`, deterministic from the cohort seed. Synthetic data, not for
clinical use.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import ProgressCallback, SubProgress, report

READER_FLIP_PROBABILITY = 0.15
N_READERS = 3
MRECIST_ORDER = ("CR", "PR", "SD", "PD")
SERIES = (("arterial", 2, "ARTERIAL"), ("portal", 3, "PORTAL VENOUS"))
SEG_SERIES_NUMBER = 300
#: Baseline scan dates are drawn from this date onwards (spread over five years).
FIRST_BASELINE = _dt.date(2016, 1, 4)


def reader_reads(clinical: pd.DataFrame, counterfactuals: pd.DataFrame, seed: int, *,
                 flip_probability: float = READER_FLIP_PROBABILITY, n_readers: int = N_READERS) -> pd.DataFrame:
    """``clinical`` with ``reader1_mrecist`` ... added: the readers' mRECIST of each patient's first observed
    follow-up (missing when there is none or the truth is not evaluable). Deterministic from ``seed``."""
    truth = counterfactuals[counterfactuals["received"].astype(int) == 1].set_index("patient_id")
    out = clinical.copy()
    reads = {r: [] for r in range(1, n_readers + 1)}
    for index, row in enumerate(clinical.itertuples(index=False)):
        weeks = [w for w in str(row.followups or "").split(";") if w.startswith("w")]
        value = None
        if weeks and row.patient_id in truth.index:
            value = truth.loc[row.patient_id].get(f"response_{weeks[0]}")
        for r in reads:
            rng = np.random.default_rng([int(seed), index, r, 0x5EAD])
            flip, side = rng.random(), rng.random()
            if value not in MRECIST_ORDER:
                reads[r].append(None)
                continue
            pos = MRECIST_ORDER.index(value)
            if flip < flip_probability:
                neighbours = [p for p in (pos - 1, pos + 1) if 0 <= p < len(MRECIST_ORDER)]
                pos = neighbours[0] if len(neighbours) == 1 else neighbours[int(side < 0.5)]
            reads[r].append(MRECIST_ORDER[pos])
    for r, values in reads.items():
        out[f"reader{r}_mrecist"] = values
    return out


def _study_dates(seed: int, index: int, weeks: list[int]) -> dict[int, _dt.date]:
    rng = np.random.default_rng([int(seed), int(index), 0xDA7E])
    base = FIRST_BASELINE + _dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    dates = {0: base}
    for w in weeks:
        dates[w] = base + _dt.timedelta(days=7 * int(w) + int(rng.integers(-2, 3)))
    return dates


def _folder_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in " ._-" else "_" for ch in text).strip()


def export_patient_dicom(case_dir: Path, dicom_root: Path, patient_id: str, seed: int, index: int) -> list[Path]:
    """Write one simulated patient's NIfTI studies (``cases/<id>/pre`` and ``followup/wNN``) as DICOM studies under
    ``dicom_root/<patient_id>/``; returns the study folders."""
    from pydicom.uid import generate_uid

    from ..dicom.seg import write_seg
    from ..dicom.series import write_ct_series
    from ..io import path_inside, read_image

    visits = [(0, case_dir / "pre")]
    followup = case_dir / "followup"
    if followup.is_dir():
        visits += sorted((int(p.name[1:]), p) for p in followup.iterdir() if p.is_dir() and p.name[1:].isdigit())
    dates = _study_dates(seed, index, [w for w, _ in visits if w])
    patient_dir = path_inside(dicom_root, patient_id)
    written = []
    for week, folder in visits:
        entropy = (seed, patient_id, f"w{week:02d}")
        study_uid = generate_uid(entropy_srcs=[*map(str, entropy), "study"])
        for_uid = generate_uid(entropy_srcs=[*map(str, entropy), "frame-of-reference"])
        date = dates[week]
        description = "CT ABDOMEN MULTIPHASE " + ("BASELINE" if week == 0 else "FOLLOW-UP")
        study_dir = patient_dir / _folder_name(f"{date:%m-%d-%Y}-NA-{description}-{study_uid[-5:]}")
        labels, geom = read_image(folder / "labels.nii.gz", labels=True)
        portal_headers = None
        for phase, number, series_description in SERIES:
            hu, g = read_image(folder / f"{phase}.nii.gz")
            if not g.same_grid(geom):
                raise InputError(f"{folder}: {phase} is not on the label map's grid")
            series_uid = generate_uid(entropy_srcs=[*map(str, entropy), phase])
            series = write_ct_series(
                hu, g, study_dir / _folder_name(f"{number}.000000-{series_description}-{series_uid[-5:]}"),
                patient_id=patient_id, patient_name=f"SIMULATED^PATIENT{index:05d}", study_uid=study_uid,
                series_uid=series_uid, frame_of_reference_uid=for_uid, study_date=date,
                study_description=description, study_id=f"{week}", accession_number=f"SIM{index:05d}W{week:02d}",
                series_description=series_description, series_number=number, uid_entropy=(*entropy, phase))
            if phase == "portal":
                portal_headers = series.headers
        seg_series_uid = generate_uid(entropy_srcs=[*map(str, entropy), "seg"])
        seg_dir = study_dir / _folder_name(f"{SEG_SERIES_NUMBER}.000000-Segmentation-{seg_series_uid[-5:]}")
        write_seg(labels, portal_headers, seg_dir / "1-1.dcm", series_uid=seg_series_uid,
                  series_number=SEG_SERIES_NUMBER, series_description="Segmentation", uid_entropy=(*entropy, "seg"),
                  content_datetime=_dt.datetime.combine(date, _dt.time(11, 0)))
        written.append(study_dir)
    return written


def simulate_dicom_cohort(n: int, seed: int, out: Path | str, *, fast: bool = False, shape=None,
                          progress: ProgressCallback | None = None, workers: int | None = None) -> pd.DataFrame:
    """Simulate ``n`` patients (as :func:`~.cohort.simulate_cohort` with the same seed) and write them as a
    TCIA-like DICOM cohort at ``out`` (module docstring). Returns the HCCTwin clinical table with the readers'
    reads. ``out`` must be new or empty."""
    from ..sitemap import SIMULATED_SITE_MAPPING, ColumnMapping, site_table
    from .cohort import simulate_cohort

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: the output folder exists and is not empty; give a new or empty folder (the "
                         f"simulator never overwrites files).")
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".nifti-staging"
    try:
        table = simulate_cohort(n, seed, staging, fast=fast, shape=shape, write_truth_images=False,
                                workers=workers, progress=SubProgress(progress, 0.0, 0.5))
        dicom_root = out / "dicom"
        for index, pid in enumerate(table["patient_id"]):
            report(progress, 0.5 + 0.45 * index / len(table), f"writing DICOM for patient {index + 1}/{len(table)}")
            export_patient_dicom(staging / "cases" / pid, dicom_root, pid, seed, index)
        (out / "truth").mkdir()
        for name in ("counterfactuals.csv", "patients.csv"):
            shutil.copyfile(staging / "truth" / name, out / "truth" / name)
        counterfactuals = pd.read_csv(staging / "truth" / "counterfactuals.csv")
        table = reader_reads(table, counterfactuals, seed)
        table.to_csv(out / "truth" / "clinical.csv", index=False)
        site_table(table, SIMULATED_SITE_MAPPING).to_csv(out / "clinical_site.csv", index=False)
        # the mapping written names only the columns the table has (it must read this table back)
        mapping = ColumnMapping({k: r for k, r in SIMULATED_SITE_MAPPING.rules.items() if k in table.columns},
                                source=str(out / "mapping.json"))
        mapping.to_json(out / "mapping.json")
        meta = json.loads((staging / "cohort.json").read_text())
        meta.update({"format": "dicom", "images": True, "truth_images": False,
                     "layout": {"dicom": "dicom/<PatientID>/<study>/<series>/*.dcm (CT series + DICOM SEG)",
                                "clinical_site.csv": "site-style clinical table (read with mapping.json)",
                                "truth/clinical.csv": "the HCCTwin clinical table with the readers' reads"},
                     "readers": {"n": N_READERS, "flip_probability": READER_FLIP_PROBABILITY,
                                 "read": "mRECIST of the first observed follow-up"},
                     "array_convention": "DICOM LPS; CT int16 with RescaleIntercept -1024"})
        (out / "cohort.json").write_text(json.dumps(meta, indent=2))
    except BaseException:
        for child in list(out.iterdir()):  # the folder was empty: everything in it is a partial write of ours
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(progress, 1.0, f"wrote {len(table)} patients as DICOM to {out / 'dicom'}")
    return table
