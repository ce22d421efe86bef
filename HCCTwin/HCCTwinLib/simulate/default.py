"""The embedded default case of the demo and the Slicer self-test: one simulated patient and its observed 8-week
follow-up (here, below the demo and the scene, so both can use it without importing each other)."""

from __future__ import annotations

from ..cases import Case, FollowUp
from .cohort import simulate_patient

#: The embedded default case: simulator seed and patient index (a patient with HCC eligible for the three main
#: regimens). Changing it changes the demo's pictures, not its code path.
DEFAULT_SEED = 0
DEFAULT_PATIENT_INDEX = 2  # HAIC + PD-1 + lenvatinib received; single 54 mm tumour with portal vein tumour thrombus
REAL_FOLLOWUP_WEEKS = 8


def default_case(seed: int = DEFAULT_SEED, small: bool = False, index: int = DEFAULT_PATIENT_INDEX
                 ) -> tuple[Case, FollowUp]:
    """The default simulated patient and its observed 8-week follow-up under the regimen it received."""
    patient = simulate_patient(seed, index, fast=small)
    imgs = patient.render_followups(patient.regimen, [REAL_FOLLOWUP_WEEKS])[REAL_FOLLOWUP_WEEKS]
    follow = FollowUp(weeks=REAL_FOLLOWUP_WEEKS, phases={"arterial": imgs["arterial"], "portal": imgs["portal"]},
                      labels=imgs["labels"], kind="observed", regimen=patient.regimen)
    return patient.case, follow


__all__ = ["DEFAULT_SEED", "DEFAULT_PATIENT_INDEX", "REAL_FOLLOWUP_WEEKS", "default_case"]
