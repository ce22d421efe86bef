"""Simulated patients and cohorts in the HCCTwin cohort layout (the layout a site uses for its own data).

::

    DIR/clinical.csv                          one row per patient (clinical values, received regimen, outcomes)
    DIR/cohort.json                           how the cohort was made (seed, n, grid, version, column glossary)
    DIR/cases/<id>/pre/{arterial,portal,labels}.nii.gz
    DIR/cases/<id>/followup/w08/{arterial,portal,labels}.nii.gz     (w16, w24: observed scans while alive)
    DIR/truth/counterfactuals.csv             every eligible regimen's outcome for every patient
    DIR/truth/patients.csv                    hidden patient parameters (biology, phenotype, scanner)
    DIR/truth/cases/<id>/<regimen>/w08/{arterial,portal,labels}.nii.gz   counterfactual follow-ups

Observed outcomes are censored (administrative censoring and loss to follow-up); the truth tables are not.
Counterfactual follow-ups are drawn for every listed week whether or not the patient would be alive then (they show
the tumour's course under that regimen). Synthetic data, not for clinical use.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from .. import DISCLAIMER, __version__
from ..cases import Case, Geometry
from ..errors import InputError
from ..progress import ProgressCallback, report
from .outcomes import Outcome, metastasis_static_lp, outcome
from .patient import PatientModel, baseline_trajectory, sample_patient
from .treatment import MONTHS_PER_WEEK, Trajectory, program_for, run_program

FOLLOWUP_WEEKS = (8, 16, 24)
PHASE_FILES = ("arterial", "portal", "labels")

CLINICAL_COLUMNS = (
    "patient_id", "age_years", "sex", "ecog", "child_pugh_points", "albumin_g_l", "bilirubin_umol_l", "inr",
    "ascites", "encephalopathy", "afp_ng_ml", "etiology", "n_tumors", "max_diameter_mm", "pvtt",
    "extrahepatic_spread", "bclc", "resectable", "regimen", "os_months", "os_event", "pfs_months", "pfs_event",
    "metastasis_months", "metastasis_event", "best_response_mrecist",
)
EXTRA_COLUMNS = ("pvtt_grade", "child_pugh_class", "albi_score", "albi_grade", "followups", "scanner")
COUNTERFACTUAL_COLUMNS = (
    "patient_id", "regimen", "os_months", "pfs_months", "best_response_mrecist", "rmst24_months", "received",
    "pfs_reason", "metastasis_months", "response_w08", "response_w16", "response_w24", "immune_responder",
    "tace_sessions", "resection_months", "surgery_cancelled", "metastasis_risk24",
)
COLUMN_GLOSSARY = {
    "ascites": "0 none, 1 mild, 2 moderate-severe", "encephalopathy": "0 none, 1 grade I-II, 2 grade III-IV",
    "pvtt": "portal-vein tumour thrombus 0/1 (grade in pvtt_grade, Vp1-4)",
    "regimen": "received regimen id (regimens.json)",
    "os_months": "months from baseline to death or censoring (os_event 1 = death)",
    "pfs_months": "months to mRECIST progression (8-weekly scans) or death, or censoring (pfs_event 1 = event)",
    "metastasis_months": "months to distant metastasis, or censoring / death (metastasis_event 1 = metastasis); "
                         "0 with event 1 when extrahepatic spread is present at baseline",
    "best_response_mrecist": "CR / PR / SD / PD, NE when no evaluable scan (death before w08, resection)",
    "followups": "observed follow-up scans in cases/<id>/followup/",
    "rmst24_months": "truth only: expected restricted mean survival to 24 months from the true hazard",
    "metastasis_risk24": "truth only: expected probability of distant metastasis within 24 months (before death) "
                         "from the true hazards; 1 when present at baseline",
}


# -------------------------------------------------------------------------------------------------------------------
# one patient
# -------------------------------------------------------------------------------------------------------------------

@dataclass
class SimulatedPatient:
    """A simulated patient: the pre-treatment study (arterial / portal HU float32, labels uint8, geometry), clinical
    values, received regimen, true outcomes under every eligible regimen, and follow-up rendering.

    ``render_followups(regimen, weeks)`` draws the follow-up scans under any regimen (eligible or not) on the same
    grid with the same visit noise; week 0 is the baseline scan itself.
    """

    patient_id: str
    arterial: np.ndarray
    portal: np.ndarray
    labels: np.ndarray
    geometry: Geometry
    clinical: dict
    regimen: str
    eligible: list
    outcomes: dict
    model: PatientModel = field(repr=False)
    renderer: object = field(repr=False)

    @property
    def case(self) -> Case:
        """The pre-treatment study as a :class:`~HCCTwinLib.cases.Case` (phases arterial + portal, labels)."""
        return Case(patient_id=self.patient_id, phases={"arterial": self.arterial, "portal": self.portal},
                    geometry=self.geometry, labels=self.labels, clinical=dict(self.clinical), modality="CT",
                    source={"simulator": f"seed {self.model.seed} patient {self.model.index}"})

    def trajectory(self, regimen: str) -> Trajectory:
        """The growth / kill course under a regimen (computed on demand for a non-eligible one)."""
        m = self.model
        if regimen not in m.trajectories:
            traj = run_program(regimen, program_for(regimen), m.bio, m.lesions, m.pvtt, m.hazard_clinical,
                               resection_ids=m.resection_ids)
            m.trajectories[regimen] = traj
            m.outcomes[regimen] = outcome(traj, m.bio, m.hazard_clinical, m.lesions, m.pvtt,
                                          bool(m.clinical["extrahepatic_spread"]))
        return m.trajectories[regimen]

    def outcome(self, regimen: str) -> Outcome:
        self.trajectory(regimen)
        return self.model.outcomes[regimen]

    def render_followups(self, regimen: str, weeks=FOLLOWUP_WEEKS) -> dict[int, dict[str, np.ndarray]]:
        """``{week: {"arterial", "portal", "labels"}}`` under ``regimen`` (weeks after the baseline scan)."""
        traj = self.trajectory(regimen)
        out = {}
        for w in weeks:
            w = int(w)
            if w < 0:
                raise ValueError(f"week {w}: follow-up weeks count from the baseline scan and must be >= 0")
            out[w] = self.renderer.render(traj, w)
        return out

    def followup_case(self, regimen: str, week: int) -> Case:
        imgs = self.render_followups(regimen, [week])[int(week)]
        return Case(patient_id=f"{self.patient_id}_{regimen}_w{int(week):02d}",
                    phases={"arterial": imgs["arterial"], "portal": imgs["portal"]}, geometry=self.geometry,
                    labels=imgs["labels"], clinical=dict(self.clinical), modality="CT")


def simulate_patient(seed: int, patient_index: int = 0, fast: bool = False, shape=None) -> SimulatedPatient:
    """Patient ``patient_index`` of the cohort ``simulate_cohort(n, seed, ...)`` with its pre-treatment images.

    Same seed and index give the same patient (and the same images for the same ``fast`` / ``shape``)."""
    from .render import PatientRenderer

    model = sample_patient(seed, patient_index)
    renderer = PatientRenderer(model, shape=shape, fast=fast)
    pre = renderer.render(baseline_trajectory(model), 0)
    return SimulatedPatient(patient_id=model.patient_id, arterial=pre["arterial"], portal=pre["portal"],
                            labels=pre["labels"], geometry=renderer.grid.geometry, clinical=dict(model.clinical),
                            regimen=model.regimen, eligible=list(model.eligible),
                            outcomes={r: _truth_row(model, r) for r in model.eligible}, model=model,
                            renderer=renderer)


# -------------------------------------------------------------------------------------------------------------------
# tables
# -------------------------------------------------------------------------------------------------------------------

def _r2(x: float) -> float:
    return float(np.round(x, 2))


def _response_at(o: Outcome, week: int) -> str:
    for w, r in o.responses:
        if w == week:
            return r
    if o.os_months < week * MONTHS_PER_WEEK:
        return "NE"  # died before the scan
    if any(r == "PD" for _, r in o.responses):
        return "PD"  # progressed before: no longer assessed
    return "NE"


def _truth_row(model: PatientModel, regimen: str) -> dict:
    o = model.outcomes[regimen]
    return {
        "patient_id": model.patient_id, "regimen": regimen, "os_months": _r2(o.os_months),
        "pfs_months": _r2(o.pfs_months), "best_response_mrecist": o.best_response, "rmst24_months": _r2(o.rmst24),
        "received": int(regimen == model.regimen), "pfs_reason": o.pfs_reason,
        "metastasis_months": _r2(o.metastasis_months),
        **{f"response_w{w:02d}": _response_at(o, w) for w in FOLLOWUP_WEEKS},
        "immune_responder": int(o.io_responder), "tace_sessions": int(o.extra["tace_sessions"]),
        "resection_months": _r2(o.resection_months) if o.resection_months is not None else np.nan,
        "surgery_cancelled": int(bool(o.extra["surgery_cancelled"])),
        "metastasis_risk24": round(float(o.metastasis_risk24), 4),
    }


def observed_row(model: PatientModel) -> dict:
    """The clinical.csv row: clinical values, received regimen, censored observed outcomes."""
    o = model.outcomes[model.regimen]
    c = model.bio.censor_months
    end = min(o.os_months, c)
    if model.clinical["extrahepatic_spread"]:
        met, met_event = 0.0, 1
    else:
        met, met_event = min(o.metastasis_months, end), int(o.metastasis_months <= end)
    # best response over the scans seen before censoring (after a resection only recurrence is assessed)
    res_t = o.resection_months
    seen = [r for w, r in o.responses
            if w * MONTHS_PER_WEEK <= c and not (res_t is not None and w * MONTHS_PER_WEEK >= res_t)]
    order = ("CR", "PR", "SD", "PD")
    best = min((r for r in seen if r in order), key=order.index, default="NE")
    row = {"patient_id": model.patient_id}
    row.update({k: model.clinical[k] for k in CLINICAL_COLUMNS[1:18]})
    row.update({
        "regimen": model.regimen, "os_months": _r2(end), "os_event": int(o.os_months <= c),
        "pfs_months": _r2(min(o.pfs_months, c)), "pfs_event": int(o.pfs_months <= c),
        "metastasis_months": _r2(met), "metastasis_event": met_event, "best_response_mrecist": best,
        "pvtt_grade": model.latent["vp_grade"], "child_pugh_class": model.latent["child_pugh_class"],
        "albi_score": round(model.latent["albi_score"], 3), "albi_grade": model.latent["albi_grade"],
        "followups": ";".join(f"w{w:02d}" for w in observed_weeks(model)),
        "scanner": model.scanner.model,
    })
    return row


def observed_weeks(model: PatientModel, weeks=FOLLOWUP_WEEKS) -> list[int]:
    """Follow-up scans that exist in the observed world: alive and still followed at the visit."""
    o = model.outcomes[model.regimen]
    end = min(o.os_months, model.bio.censor_months)
    return [w for w in weeks if w * MONTHS_PER_WEEK < end]


def latent_row(model: PatientModel) -> dict:
    b = model.bio
    lat = {k: v for k, v in model.latent.items() if not k.startswith("_")}
    return {
        "patient_id": model.patient_id, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in lat.items()},
        "tace_kappa": round(b.tace_kappa, 4), "haic_rate_per_month": round(b.haic_rate, 4),
        "tki_relative_kill": round(b.tki_rel, 4), "io_u": round(b.io_u, 4), "e_death": round(b.e_death, 4),
        "e_metastasis": round(b.e_met, 4), "censor_months": round(b.censor_months, 2),
        "eligible": ";".join(model.eligible), "propensity_received": round(model.propensity[model.regimen], 4),
        "scanner": model.scanner.model, "scanner_kernel": model.scanner.kernel,
        "noise_sd_hu": round(model.scanner.noise_sd, 2), "psf_mm": round(model.scanner.psf_mm, 3),
        "n_lesions_visible": sum(not les.occult for les in model.lesions),
        "lesion_diameters_mm": ";".join(f"{les.diameter_mm(les.volume0_ml):.1f}" for les in model.lesions
                                        if not les.occult),
        # the pre-treatment parts of the true hazards (what no response can add to): death and metastasis
        "death_lp_baseline": round(float(model.outcomes[model.regimen].extra["lp"]), 4),
        "metastasis_lp_baseline": round(metastasis_static_lp(model.hazard_clinical, model.lesions, model.pvtt), 4),
    }


# -------------------------------------------------------------------------------------------------------------------
# cohort
# -------------------------------------------------------------------------------------------------------------------

def _write_set(imgs: dict, geometry: Geometry, folder: Path) -> None:
    from ..io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    # the images hold whole HU in the 12-bit CT range: store them as int16 (lossless)
    write_image(imgs["arterial"].astype(np.int16), geometry, folder / "arterial.nii.gz")
    write_image(imgs["portal"].astype(np.int16), geometry, folder / "portal.nii.gz")
    write_image(imgs["labels"], geometry, folder / "labels.nii.gz", labels=True)


def _link_set(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in PHASE_FILES:
        s, d = src / f"{name}.nii.gz", dst / f"{name}.nii.gz"
        if d.exists():
            d.unlink()
        try:
            os.link(s, d)
        except OSError:
            shutil.copyfile(s, d)


def _patient_job(seed: int, index: int, out: str | None, fast: bool, shape, write_images: bool,
                 write_truth_images: bool, weeks=FOLLOWUP_WEEKS) -> dict:
    """Simulate one patient and write its files; returns its table rows (runs in a worker process)."""
    model = sample_patient(seed, index)
    result = {"index": index, "clinical": observed_row(model),
              "counterfactuals": [_truth_row(model, r) for r in model.eligible], "latent": latent_row(model)}
    if out is None or not (write_images or write_truth_images):
        return result
    from .render import PatientRenderer

    out = Path(out)
    renderer = PatientRenderer(model, shape=shape, fast=fast)
    geom = renderer.grid.geometry
    case_dir = out / "cases" / model.patient_id
    obs = observed_weeks(model, weeks)
    if write_images:
        _write_set(renderer.render(baseline_trajectory(model), 0), geom, case_dir / "pre")
        for w in obs:
            _write_set(renderer.render(model.trajectories[model.regimen], w), geom, case_dir / "followup" / f"w{w:02d}")
    if write_truth_images:
        for r in model.eligible:
            traj = model.trajectories[r]
            for w in weeks:
                dst = out / "truth" / "cases" / model.patient_id / r / f"w{w:02d}"
                if write_images and r == model.regimen and w in obs:
                    _link_set(case_dir / "followup" / f"w{w:02d}", dst)  # identical by construction
                else:
                    _write_set(renderer.render(traj, w), geom, dst)
    result["geometry"] = {"shape_kji": list(geom.shape), "spacing_mm": [round(s, 4) for s in geom.spacing]}
    return result


def default_workers() -> int:
    env = os.environ.get("HCCTWIN_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def simulate_cohort(n: int, seed: int, out: Path | str | None, *, fast: bool = False, shape=None,
                    progress: ProgressCallback | None = None, write_images: bool = True,
                    write_truth_images: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Simulate ``n`` patients of the cohort ``seed`` and write them to ``out`` in the HCCTwin cohort layout.

    Returns the clinical table (``clinical.csv``). ``fast`` draws small volumes (96 x 96 x 32) for tests;
    ``shape`` (k, j, i) sets the grid explicitly. ``out=None`` writes nothing (tables only). Patients are drawn
    independently from ``(seed, index)``, so the result does not depend on ``workers`` and patient ``i`` equals
    :func:`simulate_patient` ``(seed, i)``. ``out`` must be a new or empty folder (nothing is overwritten).
    """
    n = int(n)
    if n < 1:
        raise InputError(f"--n {n}: the cohort needs at least one patient.")
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"{out}: the output folder exists and is not empty; give a new or empty folder "
                             f"(the simulator never overwrites files).")
        out.mkdir(parents=True, exist_ok=True)
    workers = min(int(workers or default_workers()), n)
    report(progress, 0.0, f"Simulating {n} patients (seed {seed}, {workers} worker(s))")
    t0 = time.perf_counter()
    args = [(seed, i, str(out) if out is not None else None, fast, shape, write_images, write_truth_images)
            for i in range(n)]
    results: list[dict] = []
    if workers == 1:
        for k, a in enumerate(args):
            results.append(_patient_job(*a))
            report(progress, (k + 1) / n, f"patient {k + 1}/{n}")
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(),
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(_patient_job, *a) for a in args]
            try:
                for k, fut in enumerate(as_completed(futures)):
                    results.append(fut.result())
                    report(progress, (k + 1) / n, f"patient {k + 1}/{n}")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    results.sort(key=lambda r: r["index"])
    clinical = pd.DataFrame([r["clinical"] for r in results], columns=list(CLINICAL_COLUMNS + EXTRA_COLUMNS))
    if out is not None:
        cf = pd.DataFrame([row for r in results for row in r["counterfactuals"]], columns=list(COUNTERFACTUAL_COLUMNS))
        latent = pd.DataFrame([r["latent"] for r in results])
        clinical.to_csv(out / "clinical.csv", index=False)
        (out / "truth").mkdir(exist_ok=True)
        cf.to_csv(out / "truth" / "counterfactuals.csv", index=False)
        latent.to_csv(out / "truth" / "patients.csv", index=False)
        geoms = [r["geometry"] for r in results if "geometry" in r]
        meta = {
            "generator": "HCCTwin digital-twin cohort simulator", "hcctwin_version": __version__,
            "disclaimer": DISCLAIMER + " Synthetic patients: not real data.",
            "seed": int(seed), "n": n, "fast": bool(fast), "shape_kji": list(geoms[0]["shape_kji"]) if geoms else None,
            "images": bool(write_images), "truth_images": bool(write_truth_images),
            "followup_weeks": list(FOLLOWUP_WEEKS), "array_convention": "NIfTI, LPS; numpy [k, j, i]",
            "labels": {"0": "background", "1": "liver parenchyma", "2": "viable tumor",
                       "3": "necrotic / non-enhancing tumor (incl. lipiodol-laden)", "4": "portal-vein tumor thrombus"},
            "regimens": sorted({r for res in results for r in (row["regimen"] for row in res["counterfactuals"])}),
            "columns": COLUMN_GLOSSARY, "seconds": round(time.perf_counter() - t0, 1),
        }
        (out / "cohort.json").write_text(json.dumps(meta, indent=2))
    report(progress, 1.0, f"Simulated {n} patients in {time.perf_counter() - t0:.0f} s")
    return clinical


def _mp_context():
    """``fork`` on Linux (fast, and works from scripts without a ``__main__`` guard) unless threaded libraries
    (torch, Qt/Slicer) are loaded in this process, where ``spawn`` is the safe choice."""
    import sys

    threaded = any(m in sys.modules for m in ("torch", "qt", "slicer", "PyQt5", "PySide2"))
    if sys.platform.startswith("linux") and not threaded:
        return get_context("fork")
    return get_context("spawn")


def _worker_init() -> None:  # pragma: no cover - runs in worker processes
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:
        pass
