"""Digital-twin cohort simulator: synthetic multiphase CT patients with HCC, per-regimen follow-ups and survival,
with the ground truth (counterfactual outcomes and images under every eligible regimen) that real data never gives.

Modules: :mod:`.shapes` (grid, implicit shapes), :mod:`.anatomy` (abdominal anatomy), :mod:`.lesions` (HCC lesions,
PVTT, drawing), :mod:`.imaging` (scanner noise / blur), :mod:`.treatment` (mechanistic growth / kill per lesion and
regimen), :mod:`.outcomes` (mRECIST, progression, metastasis, death hazards), :mod:`.patient` (one patient's
clinical values, latent biology, confounded regimen assignment), :mod:`.render` (images at any visit) and
:mod:`.cohort` (:func:`simulate_patient`, :func:`simulate_cohort`, the cohort layout).

Synthetic data: not for clinical use.
"""

from .cohort import (
                     CLINICAL_COLUMNS,
                     COUNTERFACTUAL_COLUMNS,
                     FOLLOWUP_WEEKS,
                     SimulatedPatient,
                     simulate_cohort,
                     simulate_patient,
)

__all__ = ["simulate_cohort", "simulate_patient", "SimulatedPatient", "CLINICAL_COLUMNS", "COUNTERFACTUAL_COLUMNS",
           "FOLLOWUP_WEEKS"]
