"""The twin check: a real follow-up against the virtual follow-up of the regimen the patient received, at the same
week, and against the unchanged pre-treatment scan (the copy baseline).

What a tumor board asks when the follow-up scan comes back: did the twin say more than "nothing changes"? Both
images are compared with the real one inside the region where anything can change (within
:data:`CHANGE_MARGIN_MM` of tumour or PVTT in the pre-treatment, virtual or real labels; outside it the anchored
twin equals the pre-treatment scan, so both comparisons would be the same there); with the real follow-up's labels
also the tumour overlap, the volumes and the mRECIST category. Registration error and scanner differences enter both
comparisons alike. One patient is an anecdote: the cohort-level comparison is ``hcctwin evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cases import Case, FollowUp
from .labels import PVTT, TUMOR_LABELS, VIABLE_TUMOR, foreground_box

#: the compared region: voxels within this distance (mm) of tumour or PVTT in any of the three label maps
CHANGE_MARGIN_MM = 10.0
#: a difference of mean |HU difference| below this (HU) is "as close as" (noise of the comparison)
HU_TIE = 1.0
#: viable volume errors closer than this (mL, or this share of the real viable volume) are "as close as"
VOLUME_TIE_ML = 1.0
VOLUME_TIE_FRACTION = 0.1


@dataclass
class TwinCheck:
    """The virtual follow-up of ``regimen`` at ``week`` and the copy baseline, each against the real follow-up."""

    week: int
    regimen: str
    region_ml: float
    #: mean |HU difference| from the real follow-up inside the region, per phase
    hu_mae_virtual: dict[str, float] = field(default_factory=dict)
    hu_mae_copy: dict[str, float] = field(default_factory=dict)
    #: with the real follow-up's labels: Dice of viable tumour with the real labels (what responds: a tumour that
    #: necroses keeps its outline, so the tumour outline alone barely tells a response from none)
    viable_dice_virtual: float | None = None
    viable_dice_copy: float | None = None
    #: volumes (mL) of viable tumour and of tumour (viable + necrosis): pre-treatment, virtual, real (None: no labels)
    viable_ml: dict[str, float | None] = field(default_factory=dict)
    tumour_ml: dict[str, float | None] = field(default_factory=dict)
    mrecist_virtual: str | None = None
    mrecist_real: str | None = None
    #: the regimen's name for the headline (the catalogue's; the id when not given)
    regimen_name: str | None = None

    @property
    def closer(self) -> bool | None:
        """Whether the virtual follow-up is closer to the real one than the unchanged pre-treatment scan: in the
        image near the tumours and, with the real labels, in viable tumour volume (what the twin predicts: how much
        responds). None when the two disagree or both tie."""
        votes = []
        phases = [p for p in self.hu_mae_virtual if p in self.hu_mae_copy]
        if phases:
            diff = float(np.mean([self.hu_mae_copy[p] - self.hu_mae_virtual[p] for p in phases]))
            votes.append(None if abs(diff) < HU_TIE else diff > 0)
        real, virtual, pre = (self.viable_ml.get(k) for k in ("real", "virtual", "pre-treatment"))
        if real is not None and virtual is not None and pre is not None:
            d = abs(pre - real) - abs(virtual - real)
            votes.append(None if abs(d) < max(VOLUME_TIE_ML, VOLUME_TIE_FRACTION * real) else d > 0)
        decided = {v for v in votes if v is not None}
        return decided.pop() if len(decided) == 1 else None

    @property
    def verdict(self) -> str:
        """The verdict in words (what the report, the CLI and the Slicer module show)."""
        return {True: "closer to the real scan than the unchanged pre-treatment scan",
                False: "not closer to the real scan than the unchanged pre-treatment scan",
                None: "neither clearly closer nor farther than the unchanged pre-treatment scan"}[self.closer]

    def headline(self) -> str:
        name = self.regimen_name or self.regimen
        verdict = self.verdict
        parts = []
        phases = [p for p in self.hu_mae_virtual if p in self.hu_mae_copy]
        if phases:
            parts.append("mean |HU difference| near the tumours, virtual vs unchanged: " + ", ".join(
                f"{p} {self.hu_mae_virtual[p]:.0f} vs {self.hu_mae_copy[p]:.0f}" for p in phases))
        if self.viable_ml.get("real") is not None:
            parts.append(f"viable tumour {self.viable_ml['real']:.1f} mL real, {self.viable_ml['virtual']:.1f} mL "
                         f"virtual, {self.viable_ml['pre-treatment']:.1f} mL before")
        if self.mrecist_real and self.mrecist_virtual:
            parts.append(f"mRECIST real {self.mrecist_real}, virtual {self.mrecist_virtual}")
        return (f"Twin check at week {self.week} ({name}): the virtual follow-up is {verdict}"
                + (f" ({'; '.join(parts)})." if parts else "."))

    def to_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(float(v), 3)  # noqa: E731
        return {"week": self.week, "regimen": self.regimen, "regimen_name": self.regimen_name,
                "region_ml": r(self.region_ml), "margin_mm": CHANGE_MARGIN_MM,
                "hu_mae_virtual": {k: r(v) for k, v in self.hu_mae_virtual.items()},
                "hu_mae_copy": {k: r(v) for k, v in self.hu_mae_copy.items()},
                "viable_dice_virtual": r(self.viable_dice_virtual), "viable_dice_copy": r(self.viable_dice_copy),
                "viable_ml": {k: r(v) for k, v in self.viable_ml.items()},
                "tumour_ml": {k: r(v) for k, v in self.tumour_ml.items()},
                "mrecist_virtual": self.mrecist_virtual, "mrecist_real": self.mrecist_real,
                "closer": self.closer, "headline": self.headline()}


def _lesion_region(label_maps: list[np.ndarray], spacing_kji: np.ndarray
                   ) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The index box around tumour / PVTT of any label map (padded by the margin) and, inside it, the voxels within
    the margin of them. None when no map has tumour or PVTT."""
    from scipy import ndimage

    lesion = np.zeros(label_maps[0].shape, bool)
    for labels in label_maps:
        lesion |= np.isin(labels, (*TUMOR_LABELS, PVTT))
    pad = tuple(int(np.ceil(CHANGE_MARGIN_MM / s)) + 1 for s in spacing_kji)
    box = foreground_box(lesion.view(np.uint8), pad)
    if box is None:
        return None
    region = tuple(slice(lo, hi) for lo, hi in zip(*box))
    dist = ndimage.distance_transform_edt(~lesion[region], sampling=spacing_kji)
    return region, dist <= CHANGE_MARGIN_MM


def compare_with_real(case: Case, virtual: FollowUp, real: FollowUp, response: Mapping | None = None
                      ) -> TwinCheck | None:
    """The twin check of one virtual follow-up against the real one (both on ``case``'s grid, same week). None when
    no map has tumour or PVTT (nothing to compare)."""
    from .imagemetrics import hu_mae, label_dice, viable_volume_ml  # (scipy: not on the Slicer module's import path)

    if case.labels is None:
        return None
    g = case.geometry
    spacing = np.asarray(g.spacing, float)[::-1]
    v_labels = virtual.labels
    maps = [np.asarray(case.labels)] + [np.asarray(m) for m in (v_labels, real.labels) if m is not None]
    found = _lesion_region(maps, spacing)
    if found is None:
        return None
    region, near = found
    check = TwinCheck(week=int(real.weeks), regimen=str(virtual.regimen or real.regimen),
                      region_ml=float(near.sum()) * g.voxel_volume_ml)
    for phase in real.phases:
        if phase not in virtual.phases or phase not in case.phases:
            continue
        truth = np.asarray(real.phases[phase], np.float32)[region]
        check.hu_mae_virtual[phase] = hu_mae(virtual.phase_region(phase, region), truth, near)
        check.hu_mae_copy[phase] = hu_mae(np.asarray(case.phases[phase], np.float32)[region], truth, near)
    ml = g.voxel_volume_ml
    named = {"pre-treatment": case.labels, "virtual": v_labels, "real": real.labels}
    check.viable_ml = {k: None if m is None else viable_volume_ml(m, ml) for k, m in named.items()}
    check.tumour_ml = {k: None if m is None else float(np.isin(m, TUMOR_LABELS).sum()) * ml for k, m in named.items()}
    if real.labels is not None and v_labels is not None:
        check.viable_dice_virtual = label_dice(v_labels, real.labels, (VIABLE_TUMOR,))
        check.viable_dice_copy = label_dice(case.labels, real.labels, (VIABLE_TUMOR,))
    key = f"w{int(real.weeks):02d}"
    response = response or {}
    check.mrecist_virtual = ((response.get(check.regimen) or {}).get(key) or {}).get("mrecist")
    check.mrecist_real = ((response.get("observed") or {}).get(key) or {}).get("mrecist")
    return check


def twin_check_reason(real: FollowUp | None, regimens, followups: Mapping) -> str | None:
    """Why no twin check can be made for this run (None: it can)."""
    if real is None:
        return None
    if not real.regimen:
        return ("Twin check: not made, the real follow-up's regimen was not given (--followup-regimen): the virtual "
                "follow-up to compare it with is the one of the regimen the patient received.")
    if real.regimen not in regimens:
        return (f"Twin check: not made, the regimen the patient received ({real.regimen}) was not among the regimens "
                f"run.")
    if int(real.weeks) not in (followups.get(real.regimen) or {}):
        return "Twin check: not made, no virtual follow-up of the received regimen at the real follow-up's week."
    return None


__all__ = ["CHANGE_MARGIN_MM", "TwinCheck", "compare_with_real", "twin_check_reason"]
