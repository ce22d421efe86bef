"""The survival and decision engine behind ``result.json["survival"]``: fitted once on a cohort, saved as a model
file, loaded by the pipeline, the CLI and the Slicer module.

It bundles these models, fitted on the same feature table (:func:`cohort_feature_table`):

- ``os`` and ``pfs``: :class:`~HCCTwinLib.survival.models.PerRegimenSurvival` (Cox S-learner with regimen x covariate
  interactions, stabilised propensity weights, bootstrap bands);
- ``landmark``: :class:`~HCCTwinLib.survival.models.LandmarkModel` at 8 and 16 weeks on response features read from
  the follow-up images (real when there is one, virtual otherwise);
- ``metastasis``: :class:`~HCCTwinLib.survival.models.MetastasisModel`, 2-year distant metastasis after TACE
  (clinical + imaging + radiomics + deep features, points table);
- ``metastasis_landmark``: :class:`~HCCTwinLib.survival.models.LandmarkMetastasis`, the same 2-year risk updated at
  8 and 16 weeks with the response of the TACE trajectory (real follow-up when there is one, virtual otherwise);
- ``deep`` (when the training table has them): :class:`~HCCTwinLib.survival.deep.DeepFeatureReducer`, the PCA of
  the segmentation encoder's pooled features (fitted on the training table only) into a few ``deep_*`` columns.

Features of one patient come from the same functions at training and at prediction time (one place):
:func:`baseline_image_features` (segmentation + phases; with ``deep=True`` also the raw encoder features of
:mod:`.deep`) and :func:`trajectory_readings` (RECIST / mRECIST reading of a follow-up trajectory with
:func:`HCCTwinLib.response.read_response`). The engine turns raw encoder features into its ``deep_*`` columns
(:meth:`SurvivalEngine.derived_columns`), so a table or a patient row only ever carries the raw ones.

Model file: ``<name>.safetensors`` (all numeric arrays) + ``<name>.json`` (model card with the sha256, the feature
names, fill values and the metrics measured when it was trained), through :mod:`HCCTwinLib.weights`: nothing is ever
unpickled. Research use only: the demo engine is fitted on simulated patients.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..jsonutil import jsonable
from ..labels import foreground_box
from ..progress import ProgressCallback, SubProgress, report
from ..weights.cache import ModelCache, model_label
from .deep import RAW_PREFIX, DeepFeatureReducer, raw_deep_columns
from .features import DEFAULT_COVARIATES, clinical_features, imaging_features, radiomics_features, response_features
from .models import DEFAULT_TIMES, LandmarkMetastasis, LandmarkModel, MetastasisModel, PerRegimenSurvival

ENGINE_NAME = "hcctwin_survival"
ARCHITECTURE = "survival-engine/cox-s-learner+landmark+logistic"
TACE = "tace_pd1_len"
LANDMARK_WEEKS = (8, 16)

#: Imaging covariates added to the clinical ones (computed by :func:`baseline_image_features`).
IMAGING_COVARIATES = ("img_log_viable_volume_ml", "img_necrosis_fraction", "img_arterial_enhancement_ratio",
                      "img_log_pvtt_volume_ml")
#: Covariates whose effect may differ between regimens (regimen x covariate interactions). A short list measured
#: better than "all covariates" for choosing the best regimen (benchmarks/results/survival_evaluation.md).
INTERACTION_COVARIATES = ("pvtt", "img_arterial_enhancement_ratio", "max_diameter_cm")
#: Response features of the landmark models per landmark week.
RESPONSE_COVARIATES = {w: (f"rel_change_viable_volume_w{w:02d}", f"rel_change_sum_viable_w{w:02d}",
                           f"mrecist_w{w:02d}") for w in LANDMARK_WEEKS}
#: Metastasis model features: clinical, imaging, radiomics of the arterial phase inside the tumour. A short list with
#: a strong penalty: with a few hundred TACE patients, eleven features over-fitted (hold-out AUC fell below the
#: clinical-only model, benchmarks/results/survival_evaluation.md).
METASTASIS_FEATURES = ("max_diameter_cm", "n_tumors", "log_afp", "pvtt", "img_log_viable_volume_ml",
                       "img_arterial_enhancement_ratio", "rad_fo_entropy")
METASTASIS_L2 = 10.0
#: Baseline features of the metastasis landmark models (plus the response at each landmark week <= the landmark):
#: the four clinical ones beat the seven above at every penalty in 5 x 5-fold cross-validation on the development
#: cohort (AUC 0.668 vs 0.662 at 8 weeks, 0.719 vs 0.698 at 16 weeks; benchmarks/results/survival_evaluation.md).
#: The penalty of each landmark is chosen by cross-validation when the engine is fitted.
METASTASIS_LANDMARK_FEATURES = ("max_diameter_cm", "n_tumors", "log_afp", "pvtt")
#: Deep (segmentation-encoder) features: PCA components per region (:class:`~HCCTwinLib.survival.deep.
#: DeepFeatureReducer`), which of them the metastasis model adds to :data:`METASTASIS_FEATURES`, and which the OS /
#: PFS / landmark models add to their covariates. Chosen by 5-fold cross-validation on the development cohort
#: (benchmarks/results/survival_evaluation.md): the three tumour components were the best metastasis set (AUC
#: 0.593 vs 0.590 without, 5 x 5 folds; adding the liver components lowered it to 0.580); in the OS model every deep
#: set lowered the C-index slightly (0.656 vs 0.657), so OS / PFS use none.
DEEP_COMPONENTS = {"tumor": 3, "liver": 2}
METASTASIS_DEEP_FEATURES = ("deep_tumor_1", "deep_tumor_2", "deep_tumor_3")
SURVIVAL_DEEP_COVARIATES: tuple[str, ...] = ()
#: A regimen needs this many patients in the training table to get its own curve.
MIN_PATIENTS_PER_REGIMEN = 15
RADIOMICS_KEYS = ("fo_mean", "fo_sd", "fo_entropy", "fo_skewness", "shape_sphericity", "shape_elongation",
                  "glcm_contrast", "glcm_homogeneity")


# ----------------------------------------------------------------------------------------------------------------
# Features of one patient (the same code at training and prediction time)
# ----------------------------------------------------------------------------------------------------------------

def baseline_image_features(labels: np.ndarray, geometry, arterial: np.ndarray | None = None,
                            portal: np.ndarray | None = None, *, deep: bool = False, segmenter=None
                            ) -> dict[str, float]:
    """``img_*`` (segmentation), derived log volumes and ``rad_*`` (arterial radiomics inside the tumour); with
    ``deep`` also the raw ``deepraw_*`` segmentation-encoder features (:func:`.deep.deep_raw_features`, with
    ``segmenter`` or the installed model; none when no model is installed).

    Every feature depends only on the labelled voxels, so they are computed on the box around ``labels > 0`` (same
    numbers, a fraction of the time and memory on a whole-body-sized CT)."""
    deep_inputs = (labels, geometry, arterial, portal)
    for name, phase in (("arterial", arterial), ("portal", portal)):
        if phase is not None and np.shape(phase) != np.shape(labels):
            raise InputError(f"{name} phase has shape {np.shape(phase)}, labels {np.shape(labels)}; put the phases "
                             f"and the labels on one grid first.")
    box = _feature_box(labels)
    if box is not None:
        from ..cases import sub_geometry

        geometry = sub_geometry(geometry, box)
        labels = np.asarray(labels)[box]
        arterial = None if arterial is None else np.asarray(arterial)[box]
        portal = None if portal is None else np.asarray(portal)[box]
    base = imaging_features(labels, geometry, arterial, portal)
    out = {f"img_{k}": float(v) for k, v in base.items()}
    out["img_log_viable_volume_ml"] = float(np.log1p(base["viable_volume_ml"]))
    out["img_log_tumor_volume_ml"] = float(np.log1p(base["tumor_volume_ml"]))
    out["img_log_pvtt_volume_ml"] = float(np.log1p(base["pvtt_volume_ml"]))
    tumor = np.isin(labels, (2, 3))
    if arterial is not None and int(tumor.sum()) >= 2:
        rad = radiomics_features(arterial, tumor, geometry)
        out.update({f"rad_{k}": float(rad[k]) for k in RADIOMICS_KEYS})
    if deep:
        from .deep import deep_raw_features

        out.update(deep_raw_features(*deep_inputs, segmenter=segmenter)[0])
    return out


def _feature_box(labels: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Index box around the labelled voxels (one voxel of margin), or None when there is none or it is the whole
    grid (then nothing is gained by cropping)."""
    labels = np.asarray(labels)
    found = foreground_box(labels, (1, 1, 1)) if labels.ndim == 3 else None
    if found is None or (found[0] == (0, 0, 0) and found[1] == labels.shape):
        return None
    return tuple(slice(a, b) for a, b in zip(*found))


def trajectory_readings(baseline_labels: np.ndarray, geometry, followups: Sequence[tuple[int, np.ndarray, Any]],
                        baseline_arterial: np.ndarray | None = None) -> dict[int, dict[str, Any]]:
    """Readings ``{0: baseline, week: {...}}`` of one trajectory (one regimen) for :func:`response_features`:
    viable / tumour volumes from the labels and the mRECIST / RECIST 1.1 reading of
    :func:`HCCTwinLib.response.read_response` (targets, sums of viable diameters, category, new lesions)."""
    from ..response import read_response

    voxel_ml = geometry.voxel_volume_ml

    def volumes(lab):
        return {"viable_volume_ml": float((lab == 2).sum() * voxel_ml),
                "tumor_volume_ml": float(np.isin(lab, (2, 3)).sum() * voxel_ml)}

    reading = read_response(baseline_labels, [(w, lab, art) for w, lab, art in followups], geometry,
                            baseline_arterial=baseline_arterial)
    out: dict[int, dict[str, Any]] = {0: {**volumes(baseline_labels), "sum_viable_mm": reading.baseline_sum_viable_mm}}
    by_week = {int(round(w)): lab for w, lab, _ in followups}
    for tp in reading.timepoints:
        w = int(round(tp.weeks))
        out[w] = {**volumes(by_week[w]), "sum_viable_mm": tp.sum_viable_mm, "category_mrecist": tp.category_mrecist,
                  "category_recist": tp.category_recist, "new_lesion": float(bool(tp.new_lesions_mrecist))}
    return out


def _read_folder(folder: Path) -> dict[str, Any]:
    from ..io import find_image, read_image

    out: dict[str, Any] = {}
    for name in ("labels", "arterial", "portal"):
        path = find_image(folder, name)
        if path is not None:
            out[name], out["geometry"] = read_image(path, labels=(name == "labels"))
    return out


def patient_image_row(case_dir: Path, weeks: Sequence[int] = LANDMARK_WEEKS, *, segmenter=None
                      ) -> dict[str, Any] | None:
    """Baseline image features + observed response features of one cohort case folder (None without labels);
    with ``segmenter`` also the raw deep features of the pre-treatment study."""
    pre = _read_folder(case_dir / "pre")
    if "labels" not in pre:
        return None
    g = pre["geometry"]
    row = baseline_image_features(pre["labels"], g, pre.get("arterial"), pre.get("portal"),
                                  deep=segmenter is not None, segmenter=segmenter)
    fus = []
    for w in weeks:
        fu = _read_folder(case_dir / "followup" / f"w{w:02d}")
        if "labels" not in fu:
            continue
        if not fu["geometry"].same_grid(g):
            # a real follow-up on its own grid: rigid + affine registration to the pre-treatment scan (sizes and
            # diameters do not depend on a deformable refinement, which costs ~20 s per scan)
            from ..cases import Case, ObservedScan
            from ..registration import register_observed

            phases = {k: fu[k] for k in ("arterial", "portal") if k in fu}
            pre_phases = {k: pre[k] for k in ("arterial", "portal") if k in pre}
            if not phases or not pre_phases:
                continue
            case = Case(patient_id=case_dir.name, phases=pre_phases, geometry=g, labels=pre["labels"])
            reg = register_observed(case, ObservedScan(weeks=w, phases=phases, geometry=fu["geometry"],
                                                       labels=fu["labels"], deformable=False))
            fu = {"labels": reg.labels, "arterial": reg.phases.get("arterial")}
        fus.append((w, fu["labels"], fu.get("arterial")))
    if fus:
        row.update(response_features(trajectory_readings(pre["labels"], g, fus, pre.get("arterial")), weeks=weeks))
    return row


def cohort_feature_table(cohort_dir: str | os.PathLike, *, images: bool = True, deep: bool | str = "auto",
                         progress: ProgressCallback | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The training / evaluation table of a cohort folder: clinical features and scores, outcomes, and (with
    ``images``) image + observed response features read from ``cases/<id>/``; with ``deep`` ("auto": when a
    segmentation model is installed) also the raw segmentation-encoder features (``deepraw_*``, about 0.5 s per
    patient on one CPU core). Returns ``(table, notes)``."""
    from ..io import path_inside

    cohort = Path(cohort_dir)
    csv = cohort / "clinical.csv"
    if not csv.is_file():
        raise InputError(f"{csv} not found: a cohort folder needs clinical.csv (see the README's data layout).")
    from ..io import read_clinical_table

    clinical, notes = read_clinical_table(csv)
    feats, feat_notes = clinical_features(clinical)
    notes = list(notes) + list(feat_notes)
    table = feats.copy()
    for col in ("patient_id", "regimen", "os_months", "os_event", "pfs_months", "pfs_event", "metastasis_months",
                "metastasis_event"):
        if col in clinical.columns:
            table[col] = clinical[col].values
    table.attrs["fill_values"] = feats.attrs.get("fill_values", {})
    if not images:
        return table, notes
    segmenter = None
    if deep:
        from .deep import get_encoder

        segmenter, note = get_encoder()
        if segmenter is None:
            notes.append(note)
            if deep is True:
                raise InputError(f"{note} (deep features were asked for).")
    rows = []
    ids = [str(p) for p in clinical["patient_id"]]
    for n, pid in enumerate(ids):
        case_dir = path_inside(cohort, "cases", pid)
        row = patient_image_row(case_dir, segmenter=segmenter) if case_dir.is_dir() else None
        if row is not None:
            row["patient_id"] = pid
            rows.append(row)
        report(progress, (n + 1) / len(ids), f"image features {n + 1}/{len(ids)}")
    if not rows:
        notes.append("no case folder with a pre-treatment label map: imaging features not used.")
        return table, notes
    if len(rows) < len(ids):
        notes.append(f"{len(ids) - len(rows)} of {len(ids)} patient(s) have no pre-treatment label map: their "
                     f"imaging features are imputed with the cohort median.")
    img = pd.DataFrame(rows)
    merged = table.merge(img, on="patient_id", how="left")
    merged.index = table.index
    merged.attrs = table.attrs
    return merged, notes


def cohort_deep_table(cohort_dir: str | os.PathLike, *, segmenter=None, progress: ProgressCallback | None = None
                      ) -> tuple[pd.DataFrame, list[str]]:
    """Raw deep (segmentation-encoder) features of every pre-treatment study of a cohort folder: ``patient_id`` +
    ``deepraw_*`` (:func:`HCCTwinLib.survival.deep.deep_raw_features`). Without an installed segmentation model the
    table has only ``patient_id`` and the notes say why. Returns ``(table, notes)``."""
    from ..io import path_inside, read_clinical_table
    from .deep import get_encoder

    cohort = Path(cohort_dir)
    clinical, _ = read_clinical_table(cohort / "clinical.csv")
    ids = [str(p) for p in clinical["patient_id"]]
    notes: list[str] = []
    if segmenter is None:
        segmenter, note = get_encoder()
        if segmenter is None:
            return pd.DataFrame({"patient_id": ids}), [note]
    rows = []
    missing = 0
    for n, pid in enumerate(ids):
        case_dir = path_inside(cohort, "cases", pid)
        row = _deep_row(case_dir / "pre", segmenter) if case_dir.is_dir() else None
        if row is None:
            missing += 1
            row = {}
        row["patient_id"] = pid
        rows.append(row)
        report(progress, (n + 1) / len(ids), f"deep features {n + 1}/{len(ids)}")
    if missing:
        notes.append(f"deep features: {missing} of {len(ids)} patient(s) have no pre-treatment label map and both "
                     f"phases: imputed.")
    return pd.DataFrame(rows), notes


def _deep_row(pre_dir: Path, segmenter) -> dict[str, float] | None:
    from .deep import deep_raw_features

    pre = _read_folder(pre_dir)
    if "labels" not in pre:
        return None
    feats, _ = deep_raw_features(pre["labels"], pre["geometry"], pre.get("arterial"), pre.get("portal"),
                                 segmenter=segmenter)
    return feats or None


# ----------------------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class SurvivalEngine:
    """Fitted models + the feature conventions they were fitted with."""

    os: PerRegimenSurvival
    pfs: PerRegimenSurvival | None = None
    landmark: LandmarkModel | None = None
    metastasis: MetastasisModel | None = None
    metastasis_landmark: LandmarkMetastasis | None = None
    deep: DeepFeatureReducer | None = None
    clinical_fill_values: dict[str, Any] = field(default_factory=dict)
    feature_fill_values: dict[str, float] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._attach_derived()

    @property
    def regimens(self) -> list[str]:
        return list(self.os.regimens_)

    @property
    def uses_deep(self) -> bool:
        """Whether the models need the raw segmentation-encoder features (``baseline_image_features(deep=True)``)."""
        return self.deep is not None

    def encoder_mismatch(self, segmenter=None) -> str | None:
        """A warning when the segmentation model that computes the raw deep features now (``segmenter``, default
        the installed one) is not the one the engine was fitted with (sha256 in the engine's card); None when they
        match, when either sha256 is unknown, or when the engine has no deep features. Same feature sizes but other
        weights give other features, silently: a retrained segmentation model needs the engine re-trained too."""
        if self.deep is None:
            return None
        fitted = str(getattr(self.deep, "encoder_", {}).get("sha256", ""))
        if segmenter is None:
            from .deep import get_encoder

            segmenter, _ = get_encoder()
        if segmenter is None or not fitted:
            return None
        from .deep import encoder_id

        now = encoder_id(segmenter).get("sha256", "")
        if not now or now == fitted:
            return None
        return (f"deep (segmentation-encoder) features come from segmentation model sha256 {now[:12]}, but the "
                f"survival engine was fitted on features of {fitted[:12]}: its deep features, and the predictions "
                f"that use them, may be off. Re-train the survival engine ('hcctwin train survival') after changing "
                f"the segmentation model.")

    def derived_columns(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the engine's derived columns (``deep_*`` from the raw ``deepraw_*`` ones) added; the
        same frame when the engine has none."""
        if self.deep is None:
            return frame
        out = self.deep.add_columns(frame)
        for col in self.deep.columns_:  # a region the label map lacks (no tumour): the training median
            if col in self.feature_fill_values:
                out[col] = out[col].fillna(self.feature_fill_values[col])
        return out

    def _attach_derived(self) -> None:
        """Let every model compute the ``deep_*`` columns itself from a table that has only the raw ones (tables
        from :func:`cohort_feature_table`, e.g. in ``hcctwin evaluate`` / ``hcctwin study``)."""
        derive = self.derived_columns if self.deep is not None else None
        for model in (self.os, self.pfs, self.landmark, self.metastasis, self.metastasis_landmark):
            if model is not None:
                model.derive_ = derive

    # -- features of one patient -------------------------------------------------------------------------------
    def patient_row(self, clinical: Mapping[str, Any], image_features: Mapping[str, float] | None = None
                    ) -> tuple[pd.DataFrame, list[str]]:
        """One-row feature table for a patient (training fill values for anything missing, each one noted)."""
        raw = pd.DataFrame([{k: v for k, v in dict(clinical).items()}])
        feats, notes = clinical_features(raw, fill_values=self.clinical_fill_values)
        notes = [n for n in notes if not n.startswith("ignored")]
        row = feats.copy()
        extra = {k: v for k, v in dict(image_features or {}).items()}
        if extra:
            row = pd.concat([row, pd.DataFrame([extra], index=row.index)], axis=1)
        have: list[str] = []
        if self.deep is not None:
            have = raw_deep_columns(row)
            if not have:
                notes.append("deep (segmentation-encoder) features not computed for this patient (no segmentation "
                             "model, phase or liver): the training medians are used.")
            else:
                mismatch = self.encoder_mismatch()
                if mismatch:
                    notes.append(mismatch)
            row = self.deep.add_columns(row)
            row = row.drop(columns=have)
        needed = set(self.os.covariates_) | (set(self.metastasis.features_) if self.metastasis else set())
        raw_ok = self.deep is None or bool(have)
        for col in sorted(needed):
            value = row[col].iloc[0] if col in row.columns else np.nan
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                fill = self.feature_fill_values.get(col, 0.0)
                row[col] = fill
                if col.startswith(("img_", "rad_")) or (col.startswith("deep_") and raw_ok):
                    notes.append(f"{col} not available for this patient (no segmentation or image): the training "
                                 f"median {fill:.3g} is used.")
        row = row.apply(pd.to_numeric, errors="coerce").astype(float)
        row.attrs = {}
        return row, notes

    # -- prediction --------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for provenance (``result.json`` ``provenance.survival``)."""
        return model_label(self.card) if self.card else f"model {ENGINE_NAME} (not saved)"

    def predict(self, clinical: Mapping[str, Any], image_features: Mapping[str, float] | None = None,
                regimens: Sequence[str] | None = None, *, eligible: Sequence[str] | None = None,
                readings: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
                readings_source: Mapping[str, str] | None = None, times=None) -> dict[str, Any]:
        """``result.json["survival"]`` for one patient.

        ``regimens``: curves to give (default all the model knows); ``eligible``: the regimens the recommendation
        chooses among (default ``regimens``); ``readings``: ``{regimen: {week: reading}}`` from
        :func:`trajectory_readings` of the virtual (or real) follow-ups, with ``readings_source[regimen]`` =
        "virtual" or "observed"; they feed the landmark models.
        """
        regimens = list(regimens) if regimens is not None else self.regimens
        unknown = [r for r in regimens if r not in self.os.regimens_]
        notes: list[str] = []
        if unknown:
            notes.append(f"the survival model was not trained on {', '.join(unknown)}: no curve for it.")
        regimens = [r for r in regimens if r in self.os.regimens_]
        if not regimens:
            raise InputError("none of the chosen regimens is known to the survival model "
                             f"(it knows {', '.join(self.os.regimens_)}).")
        row, row_notes = self.patient_row(clinical, image_features)
        notes += row_notes
        times = np.asarray(DEFAULT_TIMES if times is None else times, float)
        endpoints = {"os": self.os.predict_curves(row, regimens, times)}
        if self.pfs is not None:
            endpoints["pfs"] = self.pfs.predict_curves(row, regimens, times)
        choose = [r for r in (eligible if eligible is not None else regimens) if r in regimens] or regimens
        # one RMST matrix (point + bootstrap) for the differences and the probability of being best
        point, boot = self.os.rmst_matrix(row, regimens)
        col = {r: i for i, r in enumerate(regimens)}
        mats = boot[:, 0, :] if len(boot) else point
        sub = mats[:, [col[r] for r in choose]]
        is_best = sub == sub.max(axis=1, keepdims=True)
        prob = {r: float(v) for r, v in zip(choose, (is_best / is_best.sum(axis=1, keepdims=True)).mean(axis=0))}
        best = max(prob, key=lambda r: (prob[r], point[0, col[r]]))
        diffs = []
        for i, a in enumerate(regimens):
            for b in regimens[i + 1:]:
                est = float(point[0, col[a]] - point[0, col[b]])
                d = {"regimen_a": a, "regimen_b": b, "tau_months": self.os.tau, "estimate": est,
                     "lower": float("nan"), "upper": float("nan"), "prob_a_better": float(est > 0)}
                if len(boot):
                    db = boot[:, 0, col[a]] - boot[:, 0, col[b]]
                    d.update({"lower": float(min(np.percentile(db, 2.5), est)),
                              "upper": float(max(np.percentile(db, 97.5), est)),
                              "prob_a_better": float((db > 0).mean())})
                diffs.append(d)
        out: dict[str, Any] = {
            "model": f"{self.card.get('name', ENGINE_NAME)} {self.card.get('version', '')}".strip(),
            "endpoints": endpoints,
            "rmst24_differences": diffs,
            "recommendation": {"regimen": best, "probability_best": prob, "endpoint": "os",
                               "tau_months": self.os.tau, "eligible_only": eligible is not None,
                               "chosen_among": choose},
        }
        neo, res = "neoadj_haic_pd1_len_resection", "resection"
        if {neo, res} <= set(self.os.regimens_) and str(dict(clinical).get("resectable", "")).lower() in (
                "1", "1.0", "true", "yes"):
            out["neoadjuvant"] = self.os.rmst_difference(row, neo, res)
            out["neoadjuvant"]["question"] = ("benefit of neoadjuvant HAIC + PD-1 + lenvatinib before resection vs "
                                              "direct resection (RMST-24 difference, months)")
        if self.metastasis is not None:
            if float(row["extrahepatic_spread"].iloc[0]) > 0 if "extrahepatic_spread" in row.columns else False:
                out["metastasis"] = {"not_applicable": "extrahepatic spread at baseline: distant metastasis is "
                                                       "already present", "applies_to": TACE}
            else:
                met = self.metastasis.predict(row)
                met["applies_to"] = TACE
                met["population"] = "TACE patients without extrahepatic spread at baseline"
                if self.metastasis_landmark is not None and readings and TACE in readings:
                    met["landmark"] = self._metastasis_landmarks(row, readings[TACE],
                                                                 (readings_source or {}).get(TACE, "virtual"))
                out["metastasis"] = met
        if self.landmark is not None and readings:
            out["landmark"] = self._landmarks(row, readings, readings_source or {}, times)
        out["notes"] = notes
        return jsonable(out, finite=True)

    def _metastasis_landmarks(self, row: pd.DataFrame, by_week, source: str) -> dict[str, Any]:
        """Updated 2-year metastasis risk at each landmark week with a reading of the TACE trajectory."""
        out: dict[str, Any] = {}
        for w in sorted(self.metastasis_landmark.models_):
            if w not in by_week:
                continue
            pred = self.metastasis_landmark.predict(_landmark_frame(row, by_week, w), w)
            pred["source"] = source
            pred["question"] = (f"2-year distant-metastasis risk updated with the response at {w} weeks "
                                f"({source} follow-up), for a patient still free of distant metastasis then")
            out[f"w{w:02d}"] = pred
        return out

    def _landmarks(self, row: pd.DataFrame, readings, source, times) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for regimen, by_week in readings.items():
            feats = response_features(by_week, weeks=LANDMARK_WEEKS)
            entry = {}
            for w in sorted(self.landmark.models_):
                if w not in by_week:
                    continue
                frame = _landmark_frame(row, by_week, w)
                regs = self.landmark.models_[w]["regimens"]
                if regs and regimen not in regs:
                    continue
                pred = self.landmark.predict(frame, w, times=times, source=source.get(regimen, "virtual"),
                                             regimen=regimen if regs else None)
                pred["mrecist"] = by_week[w].get("category_mrecist")
                entry[f"w{w:02d}"] = pred
            if entry:
                out[regimen] = {"timepoints": entry, "response_features": feats}
        return out


def _landmark_frame(row: pd.DataFrame, by_week, week: int) -> pd.DataFrame:
    """The patient's row plus the response features read up to ``week`` (what a landmark model at ``week`` sees)."""
    frame = row.copy()
    for k, v in response_features(by_week, weeks=LANDMARK_WEEKS, up_to_week=week).items():
        frame[k] = v
    return frame


def metastasis_population(table: pd.DataFrame) -> pd.DataFrame:
    """Rows the metastasis model is for: TACE patients without extrahepatic spread at baseline (a patient with
    extrahepatic spread already has distant metastasis: counting them as events would only re-discover it)."""
    if "regimen" not in table.columns:
        return table.iloc[:0]
    rows = table["regimen"].astype(str) == TACE
    if "extrahepatic_spread" in table.columns:
        rows &= pd.to_numeric(table["extrahepatic_spread"], errors="coerce").fillna(0) == 0
    return table[rows]


def _fit_deep(table: pd.DataFrame, deep: bool | None, notes: list[str]) -> DeepFeatureReducer | None:
    """The PCA of the raw deep features of the training table (None when they are absent or not wanted)."""
    raw = raw_deep_columns(table)
    complete = table[raw].notna().all(axis=1).mean() if raw else 0.0
    if deep is False:
        return None
    if not raw or complete < 0.5:
        msg = ("deep (segmentation-encoder) features not used: " + ("the table has none (no segmentation model "
               "installed when it was built)." if not raw else f"only {complete:.0%} of the patients have them."))
        if deep:
            raise InputError(msg)
        notes.append(msg)
        return None
    from .deep import encoder_id, get_encoder

    segmenter, _ = get_encoder()
    encoder = encoder_id(segmenter) if segmenter is not None else {}
    channels = {layer: sum(1 for c in raw if c.startswith(f"{RAW_PREFIX}tumor_{layer}_")) for layer in ("down", "bott")}
    if encoder.get("channels") and encoder["channels"] != channels:
        encoder = {}
    if not encoder:
        encoder = {"name": "?", "sha256": "", "channels": channels}
        notes.append("deep features: the installed segmentation model does not match the table's raw features; the "
                     "engine does not record which encoder they came from.")
    return DeepFeatureReducer(DEEP_COMPONENTS).fit(table, encoder)


def fit_engine(table: pd.DataFrame, *, n_bootstrap: int = 50, seed: int = 0, images: bool | None = None,
               deep: bool | None = None, progress: ProgressCallback | None = None
               ) -> tuple[SurvivalEngine, list[str]]:
    """Fit the models on a feature table from :func:`cohort_feature_table`. Returns ``(engine, notes)``.

    ``deep``: use the raw segmentation-encoder features when the table has them (None), always (True: an error
    when absent) or never (False). Their PCA is fitted on ``table`` (the training rows) only."""
    notes: list[str] = []
    has = [c for c in IMAGING_COVARIATES if c in table.columns and table[c].notna().mean() > 0.5]
    use_images = (len(has) == len(IMAGING_COVARIATES)) if images is None else images
    covariates = list(DEFAULT_COVARIATES) + (list(IMAGING_COVARIATES) if use_images else [])
    if not use_images:
        notes.append("imaging features not used (no label maps in the cohort).")
    reducer = _fit_deep(table, deep, notes) if use_images else None
    data = table.copy()
    met_features = list(METASTASIS_FEATURES)
    if reducer is not None:
        data = reducer.add_columns(data).drop(columns=raw_deep_columns(data))
        covariates += [c for c in SURVIVAL_DEEP_COVARIATES if c in reducer.columns_]
        met_features += [c for c in METASTASIS_DEEP_FEATURES if c in reducer.columns_]
    fills = {}
    for col in set(covariates) | set(met_features):
        if col in data.columns:
            values = pd.to_numeric(data[col], errors="coerce")
            fills[col] = float(values.median()) if values.notna().any() else 0.0
            k = int(values.isna().sum())
            if k:
                notes.append(f"{col}: {k} missing value(s) imputed with the median {fills[col]:.3g}.")
            data[col] = values.fillna(fills[col])
    counts = data["regimen"].astype(str).value_counts()
    rare = [r for r, k in counts.items() if k < MIN_PATIENTS_PER_REGIMEN]
    if rare:
        notes.append(f"regimen(s) with fewer than {MIN_PATIENTS_PER_REGIMEN} patients left out of the survival models "
                     f"(no curve for them): " + ", ".join(f"{r} ({counts[r]})" for r in rare) + ".")
        data = data[~data["regimen"].astype(str).isin(rare)]
    inter = [c for c in INTERACTION_COVARIATES if c in covariates]
    report(progress, 0.0, "Fitting the OS model")
    os_model = PerRegimenSurvival(n_bootstrap=n_bootstrap, interaction_covariates=inter, seed=seed).fit(
        data, "os_months", "os_event", "regimen", covariates, progress=SubProgress(progress, 0.0, 0.45))
    pfs_model = None
    if {"pfs_months", "pfs_event"} <= set(data.columns):
        report(progress, 0.45, "Fitting the PFS model")
        pfs_model = PerRegimenSurvival(n_bootstrap=n_bootstrap, interaction_covariates=inter, seed=seed).fit(
            data, "pfs_months", "pfs_event", "regimen", covariates, progress=SubProgress(progress, 0.45, 0.85))
    landmark = None
    resp = {w: [c for c in cols if c in data.columns and data[c].notna().any()]
            for w, cols in RESPONSE_COVARIATES.items()}
    if all(resp.values()):
        report(progress, 0.85, "Fitting the landmark models")
        landmark = LandmarkModel(landmarks_weeks=LANDMARK_WEEKS, n_bootstrap=min(n_bootstrap, 20), seed=seed).fit(
            data, "os_months", "os_event", covariates, resp, regimen_col="regimen")
        notes += landmark.notes_
    else:
        notes.append("no follow-up response features in the cohort: no landmark (dynamic) model.")
    metastasis = None
    feats = [c for c in met_features if c in data.columns]
    tace = metastasis_population(data)
    if "metastasis_event" in data.columns and len(tace):
        report(progress, 0.93, "Fitting the metastasis model")
        try:
            metastasis = MetastasisModel(l2=METASTASIS_L2, n_bootstrap=min(n_bootstrap * 4, 200),
                                         seed=seed).fit(tace, feats)
        except InputError as exc:
            notes.append(f"metastasis model not fitted: {exc}")
    metastasis_landmark = None
    if metastasis is not None and landmark is not None:
        report(progress, 0.97, "Fitting the metastasis landmark models")
        try:
            metastasis_landmark = LandmarkMetastasis(LANDMARK_WEEKS, n_bootstrap=min(n_bootstrap * 4, 200),
                                                     seed=seed).fit(tace, [c for c in METASTASIS_LANDMARK_FEATURES
                                                                           if c in tace.columns])
            notes += metastasis_landmark.notes_
        except InputError as exc:
            notes.append(str(exc))
    clinical_fills = {k: (v.item() if hasattr(v, "item") else v)
                      for k, v in dict(table.attrs.get("fill_values", {})).items()}
    engine = SurvivalEngine(os=os_model, pfs=pfs_model, landmark=landmark, metastasis=metastasis,
                            metastasis_landmark=metastasis_landmark, deep=reducer,
                            clinical_fill_values=clinical_fills, feature_fill_values=fills)
    report(progress, 1.0, "Survival engine fitted")
    return engine, notes


# ----------------------------------------------------------------------------------------------------------------
# Model file
# ----------------------------------------------------------------------------------------------------------------

_PARTS = ("os", "pfs", "landmark", "metastasis", "metastasis_landmark", "deep")


def save_engine(engine: SurvivalEngine, path: str | os.PathLike, *, training_data: Mapping[str, Any] | None = None,
                metrics: Mapping[str, Any] | None = None, version: str = "0.1") -> tuple[Path, Path]:
    """Write ``path`` (.safetensors, all arrays) and its model card (structure, fill values, sha256)."""
    import torch

    from ..weights import save_model

    arrays: dict[str, np.ndarray] = {}
    parts: dict[str, Any] = {}
    for name in _PARTS:
        model = getattr(engine, name)
        if model is None:
            continue
        a, meta = model.to_state(prefix=f"{name}/")
        arrays.update(a)
        parts[name] = meta
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in arrays.items()}
    path = Path(path)
    card = {
        "name": path.stem, "version": version, "architecture": ARCHITECTURE,
        "architecture_kwargs": {"parts": parts, "clinical_fill_values": engine.clinical_fill_values,
                                "feature_fill_values": engine.feature_fill_values},
        "input_phases": ["arterial", "portal"], "label_map": None,
        "training_data": dict(training_data or {}), "metrics": dict(metrics or {}),
        "hyperparameters": {"os_penalizer": engine.os.penalizer_, "n_bootstrap": len(engine.os.boot_),
                            "interaction_covariates": [engine.os.covariates_[i] for i in engine.os._inter_idx],
                            "covariates": engine.os.covariates_},
        "intended_use": "Research use only; demo engine fitted on simulated patients, not for clinical decisions.",
        "software": {"hcctwin": __version__, "python": platform.python_version()},
    }
    return save_model(state, path, card)


def load_engine(path: str | os.PathLike) -> SurvivalEngine:
    """Verify (sha256) and read a survival engine file written by :func:`save_engine`."""
    from ..weights import ModelFileError, load_state, resolve_model_path

    state, card = load_state(resolve_model_path(path))
    if card.get("architecture") != ARCHITECTURE:
        raise ModelFileError(f"{path} is a {card.get('architecture')!r} model file, not a survival engine.")
    arrays = {k: v.numpy() for k, v in state.items()}
    kw = card.get("architecture_kwargs", {})
    parts = kw.get("parts", {})
    builders = {"os": PerRegimenSurvival, "pfs": PerRegimenSurvival, "landmark": LandmarkModel,
                "metastasis": MetastasisModel, "metastasis_landmark": LandmarkMetastasis,
                "deep": DeepFeatureReducer}
    models = {}
    for name, meta in parts.items():
        if name not in builders:
            raise ModelFileError(f"{path}: unknown part {name!r} in the model card.")
        models[name] = builders[name].from_state(arrays, meta, prefix=f"{name}/")
    if "os" not in models:
        raise ModelFileError(f"{path}: the survival engine has no OS model.")
    return SurvivalEngine(**models, clinical_fill_values=dict(kw.get("clinical_fill_values", {})),
                          feature_fill_values={k: float(v) for k, v in kw.get("feature_fill_values", {}).items()},
                          card=card)


_CACHE = ModelCache("survival")


def get_survival_engine(path: str | os.PathLike | None = None, device: str | None = None) -> SurvivalEngine:
    """The installed engine (``hcctwin_survival`` in the weights folder) or ``path``; cached between runs.
    Raises :class:`~HCCTwinLib.weights.ModelFileError` when none is installed. ``device`` is accepted for the
    pipeline's common model interface (the engine runs on the CPU)."""
    from ..weights import ModelFileError, resolve_model_path

    resolved = resolve_model_path(path or ENGINE_NAME)
    if not resolved.is_file():
        raise ModelFileError(f"no survival engine installed ({resolved} not found); train one with "
                             f"'hcctwin train survival --cohort DIR --out DIR' and install it, or pass its path.")
    return _CACHE.get(resolved, "cpu", lambda: load_engine(resolved))


def clear_cache() -> None:
    """Forget the loaded survival engines."""
    _CACHE.clear()


def train_survival_command(cohort_dir, out_dir, *, n_bootstrap: int = 50, seed: int = 0, images: bool = True,
                           name: str = ENGINE_NAME, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """``hcctwin train survival``: feature table of the cohort, fit, save ``out_dir/<name>.safetensors`` + card."""
    t0 = time.perf_counter()
    table, notes = cohort_feature_table(cohort_dir, images=images, progress=SubProgress(progress, 0.0, 0.4))
    engine, fit_notes = fit_engine(table, n_bootstrap=n_bootstrap, seed=seed, progress=SubProgress(progress, 0.4, 1))
    notes += fit_notes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    training = {"cohort": Path(cohort_dir).name, "n_patients": int(len(table)),
                "n_os_events": int(engine.os.n_events_), "regimens": engine.os.regimen_counts_, "notes": notes,
                "seed": seed, "fit_seconds": round(time.perf_counter() - t0, 1)}
    weights, card = save_engine(engine, out / f"{name}.safetensors", training_data=training)
    return {"weights": str(weights), "card": str(card), "notes": notes, "n_patients": len(table)}
