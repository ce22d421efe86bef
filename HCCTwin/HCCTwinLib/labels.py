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


def foreground_box(labels, pad_kji=(0, 0, 0)) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """``(lo, hi)`` index box (k, j, i; end exclusive) of the voxels with a label > 0, padded by ``pad_kji`` voxels
    and clipped to the grid; None when no voxel is labelled."""
    import numpy as np

    labels = np.asarray(labels)
    spans = [np.flatnonzero(labels.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(len(s) == 0 for s in spans):
        return None
    lo = tuple(max(0, int(s[0]) - int(p)) for s, p in zip(spans, pad_kji))
    hi = tuple(min(n, int(s[-1]) + 1 + int(p)) for s, p, n in zip(spans, pad_kji, labels.shape))
    return lo, hi


def lesion_focus(labels) -> tuple[int, float, float] | None:
    """Where a picture of a label map should look: ``(k, j, i)`` with ``k`` the axial slice of the largest tumour
    cross-section (viable + necrosis; PVTT when there is no tumour) and ``(j, i)`` the tumour's centroid on it; None
    without tumour or PVTT. One rule for the report's key image, the rendered views and the browser viewer."""
    import numpy as np

    labels = np.asarray(labels)
    for values in (TUMOR_LABELS, (PVTT,)):
        mask = np.isin(labels, values)
        area = mask.sum(axis=(1, 2))
        if area.max(initial=0) > 0:
            k = int(np.argmax(area))
            j, i = (float(v.mean()) for v in np.nonzero(mask[k]))
            return k, j, i
    return None
