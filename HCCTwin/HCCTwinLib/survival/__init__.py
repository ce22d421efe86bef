"""Survival and decision engine: per-regimen survival curves with bands, dynamic (landmark) risk from real or
virtual follow-ups, distant-metastasis risk with a nomogram, benefit (probability each regimen is best), the
established scores as baselines, and the evaluation metrics (Harrell / Uno C, time-dependent AUC, Brier / IBS, ICI,
decision curves) implemented with numpy + lifelines.

Import cost: lifelines is imported lazily inside the functions that need it. Research use only (demo models trained
on synthetic data, not for clinical use).
"""

from .cv import cross_validate, run_cv_command
from .features import (
    DEFAULT_COVARIATES,
    SCORE_BASELINES,
    clinical_features,
    imaging_features,
    radiomics_features,
    response_features,
)
from .metrics import (
    binary_auc,
    brier,
    decision_curve,
    decision_curve_survival,
    harrell_c,
    ici,
    integrated_brier,
    km_by_risk_group,
    time_dependent_auc,
    uno_c,
)
from .models import LandmarkModel, MetastasisModel, PerRegimenSurvival, landmark_dataset, rmst_step

__all__ = [
    "DEFAULT_COVARIATES", "SCORE_BASELINES", "clinical_features", "imaging_features", "radiomics_features",
    "response_features", "binary_auc", "brier", "decision_curve", "decision_curve_survival", "harrell_c", "ici",
    "integrated_brier", "km_by_risk_group", "time_dependent_auc", "uno_c", "LandmarkModel", "MetastasisModel",
    "PerRegimenSurvival", "landmark_dataset", "rmst_step", "cross_validate", "run_cv_command",
]
