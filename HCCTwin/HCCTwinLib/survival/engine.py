"""The survival and decision engine behind ``result.json["survival"]``: fitted once on a cohort, saved as a model
file, loaded by the pipeline, the CLI and the Slicer module.

It bundles these models, fitted on the same feature table (:func:`.cohort.cohort_feature_table`):

- ``os`` and ``pfs``: :class:`~HCCTwinLib.survival.models.PerRegimenSurvival` (Cox S-learner with regimen x covariate
  interactions, stabilised propensity weights, bootstrap bands);
- ``landmark``: :class:`~HCCTwinLib.survival.models.LandmarkModel` at 8 and 16 weeks on response features read from
  the follow-up images (real when there is one, virtual otherwise);
- ``metastasis``: :class:`~HCCTwinLib.survival.models.MetastasisModel`, 2-year distant metastasis after TACE
  (clinical + imaging + radiomics + deep features, points table);
- ``metastasis_competing``: :class:`~HCCTwinLib.survival.models.CompetingRiskMetastasis`, the same outcome as time
  to event with death competing (cause-specific Cox models, cumulative incidence), beside the logistic model;
- ``metastasis_landmark``: :class:`~HCCTwinLib.survival.models.LandmarkMetastasis`, the same 2-year risk updated at
  8 and 16 weeks with the response of the TACE trajectory (real follow-up when there is one, virtual otherwise);
- ``deep`` (when the training table has them): :class:`~HCCTwinLib.survival.deep.DeepFeatureReducer`, the PCA of
  the segmentation encoder's pooled features (fitted on the training table only) into a few ``deep_*`` columns.

Features of one patient come from the same functions at training and at prediction time (one place, :mod:`.cohort`):
:func:`~.cohort.baseline_image_features` (segmentation + phases; with ``deep=True`` also the raw encoder features of
:mod:`.deep`) and :func:`~.cohort.trajectory_readings` (RECIST / mRECIST reading of a follow-up trajectory with
:func:`HCCTwinLib.response.read_response`); saving, loading and the cache are in :mod:`.store`. The engine turns
raw encoder features into its ``deep_*`` columns (:meth:`SurvivalEngine.derived_columns`), so a table or a patient
row only ever carries the raw ones.

Model file: ``<name>.safetensors`` (all numeric arrays) + ``<name>.json`` (model card with the sha256, the feature
names, fill values and the metrics measured when it was trained), through :mod:`HCCTwinLib.weights`: nothing is ever
unpickled. Research use only: the demo engine is fitted on simulated patients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..jsonutil import jsonable
from ..progress import ProgressCallback, SubProgress, report
from ..survival_result import Curve, LandmarkRegimen, Metastasis, Recommendation, RmstDifference, SurvivalResult
from ..weights.cache import model_label
from .deep import RAW_PREFIX, DeepFeatureReducer, raw_deep_columns
from .features import DEFAULT_COVARIATES, clinical_features, response_features
from .models import (
    DEFAULT_TIMES,
    CompetingRiskMetastasis,
    LandmarkMetastasis,
    LandmarkModel,
    MetastasisModel,
    PerRegimenSurvival,
)

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
    metastasis_competing: CompetingRiskMetastasis | None = None
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
        for model in (self.os, self.pfs, self.landmark, self.metastasis, self.metastasis_landmark,
                      self.metastasis_competing):
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
        """``result.json["survival"]`` for one patient: a :class:`~HCCTwinLib.survival_result.SurvivalResult`
        (the schema) written as a JSON-ready dict (NaN -> None); read it back with ``SurvivalResult.from_dict``.

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
        endpoints = {"os": _curves(self.os.predict_curves(row, regimens, times))}
        if self.pfs is not None:
            endpoints["pfs"] = _curves(self.pfs.predict_curves(row, regimens, times))
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
                lower, upper, prob_a_better = float("nan"), float("nan"), float(est > 0)
                if len(boot):
                    db = boot[:, 0, col[a]] - boot[:, 0, col[b]]
                    lower, upper = float(min(np.percentile(db, 2.5), est)), float(max(np.percentile(db, 97.5), est))
                    prob_a_better = float((db > 0).mean())
                diffs.append(RmstDifference(regimen_a=a, regimen_b=b, tau_months=self.os.tau, estimate=est,
                                            lower=lower, upper=upper, prob_a_better=prob_a_better))
        recommendation = Recommendation(regimen=best, probability_best=prob, endpoint="os", tau_months=self.os.tau,
                                        eligible_only=eligible is not None, chosen_among=tuple(choose))
        neoadjuvant = None
        neo, res = "neoadj_haic_pd1_len_resection", "resection"
        if {neo, res} <= set(self.os.regimens_) and str(dict(clinical).get("resectable", "")).lower() in (
                "1", "1.0", "true", "yes"):
            neoadjuvant = replace(
                RmstDifference.from_dict(self.os.rmst_difference(row, neo, res)),
                question="benefit of neoadjuvant HAIC + PD-1 + lenvatinib before resection vs direct resection "
                         "(RMST-24 difference, months)")
        metastasis = None
        if self.metastasis is not None:
            if float(row["extrahepatic_spread"].iloc[0]) > 0 if "extrahepatic_spread" in row.columns else False:
                metastasis = Metastasis.from_dict({
                    "not_applicable": "extrahepatic spread at baseline: distant metastasis is already present",
                    "applies_to": TACE})
            else:
                met = self.metastasis.predict(row)
                met["applies_to"] = TACE
                met["population"] = "TACE patients without extrahepatic spread at baseline"
                if self.metastasis_landmark is not None and readings and TACE in readings:
                    met["landmark"] = self._metastasis_landmarks(row, readings[TACE],
                                                                 (readings_source or {}).get(TACE, "virtual"))
                if self.metastasis_competing is not None:
                    met["competing_risk"] = self.metastasis_competing.predict(row)
                metastasis = Metastasis.from_dict(met)
        landmark = None
        if self.landmark is not None and readings:
            landmark = {r: LandmarkRegimen.from_dict(entry)
                        for r, entry in self._landmarks(row, readings, readings_source or {}, times).items()}
        result = SurvivalResult(
            model=f"{self.card.get('name', ENGINE_NAME)} {self.card.get('version', '')}".strip(),
            endpoints=endpoints, rmst24_differences=tuple(diffs), recommendation=recommendation,
            neoadjuvant=neoadjuvant, metastasis=metastasis, landmark=landmark, notes=tuple(notes))
        return jsonable(result.to_dict(), finite=True)

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


def _curves(by_regimen: Mapping[str, Mapping[str, Any]]) -> dict[str, Curve]:
    """``predict_curves``' ``{regimen: curve dict}`` as typed curves."""
    return {r: Curve.from_dict(c, r) for r, c in by_regimen.items()}


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
    metastasis_competing = None
    if metastasis is not None and {"os_months", "os_event"} <= set(tace.columns):
        report(progress, 0.95, "Fitting the competing-risk metastasis model")
        try:
            metastasis_competing = CompetingRiskMetastasis().fit(tace, feats)
        except InputError as exc:
            notes.append(f"competing-risk metastasis model not fitted: {exc}")
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
                            metastasis_landmark=metastasis_landmark, metastasis_competing=metastasis_competing,
                            deep=reducer,
                            clinical_fill_values=clinical_fills, feature_fill_values=fills)
    report(progress, 1.0, "Survival engine fitted")
    return engine, notes


# ----------------------------------------------------------------------------------------------------------------
# Model file
# ----------------------------------------------------------------------------------------------------------------
