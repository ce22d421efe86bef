"""Label values used everywhere in HCCTwin (segmentations, simulator, response reading, scene).

0 background, 1 liver parenchyma, 2 viable tumor, 3 necrotic or non-enhancing tumor (including lipiodol-laden tumor
after TACE), 4 portal-vein tumor thrombus (PVTT).
"""

from __future__ import annotations

from dataclasses import dataclass

BACKGROUND = 0
LIVER = 1
VIABLE_TUMOR = 2
NECROSIS = 3
PVTT = 4


@dataclass(frozen=True)
class LabelInfo:
    value: int
    key: str
    name: str
    color_rgb: tuple[float, float, float]


LABELS: tuple[LabelInfo, ...] = (
    LabelInfo(LIVER, "liver", "Liver parenchyma", (0.86, 0.55, 0.42)),
    LabelInfo(VIABLE_TUMOR, "viable_tumor", "Viable tumor", (0.95, 0.20, 0.15)),
    LabelInfo(NECROSIS, "necrosis", "Necrotic / non-enhancing tumor", (0.95, 0.85, 0.20)),
    LabelInfo(PVTT, "pvtt", "Portal-vein tumor thrombus", (0.30, 0.55, 0.95)),
)

LABEL_BY_VALUE = {info.value: info for info in LABELS}
MAX_LABEL = PVTT
TUMOR_LABELS = (VIABLE_TUMOR, NECROSIS)
