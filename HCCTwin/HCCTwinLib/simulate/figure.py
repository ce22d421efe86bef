"""Picture of a simulated case: arterial and portal phase, pre-treatment and a follow-up under two regimens.

    python -m HCCTwinLib.simulate.figure --out simulated_case.png [--seed 0] [--index N] [--week 8]

Without ``--index`` the first patient of the seed with a hypervascular tumour of 4-9 cm that is eligible for both
regimens is shown (a case where the two regimens look different). Synthetic data: not for clinical use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import labels as L
from .patient import sample_patient

DEFAULT_REGIMENS = ("tace_pd1_len", "haic_pd1_len")


def pick_showcase(seed: int, regimens=DEFAULT_REGIMENS, limit: int = 200) -> int:
    """Index of the first patient with a 40-90 mm hypervascular dominant tumour, eligible for ``regimens``."""
    for i in range(limit):
        m = sample_patient(seed, i)
        les = m.lesions[0]
        d = m.clinical["max_diameter_mm"]
        if les.hypervascular and 40 <= d <= 90 and set(regimens) <= set(m.eligible) and les.capsule_mm > 0:
            return i
    return 0


def save_case_figure(path, seed: int = 0, index: int | None = None, regimens=DEFAULT_REGIMENS, week: int = 8,
                     window=(-40.0, 220.0)) -> Path:
    """Write a PNG grid (rows: arterial, portal; columns: pre, w<week> under each regimen) with label contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .cohort import simulate_patient
    from .treatment import MONTHS_PER_WEEK

    if index is None:
        index = pick_showcase(seed, regimens)
    p = simulate_patient(seed, index)
    follow = {r: p.render_followups(r, [week])[week] for r in regimens}
    tumour = np.isin(p.labels, (L.VIABLE_TUMOR, L.NECROSIS))
    k = int(np.argmax(tumour.sum(axis=(1, 2)))) if tumour.any() else p.labels.shape[0] // 2
    ys, xs = np.nonzero(p.labels[k] > 0)
    pad = 12
    sl = (slice(max(ys.min() - pad, 0), ys.max() + pad), slice(max(xs.min() - pad, 0), xs.max() + pad)) \
        if len(ys) else (slice(None), slice(None))
    cols = [("pre-treatment", {"arterial": p.arterial, "portal": p.portal, "labels": p.labels})]
    for r in regimens:
        o = p.outcome(r)
        resp = next((x for w, x in o.responses if w == week), "NE")
        cols.append((f"w{week:02d} {r}\nmRECIST {resp}; true RMST24 {o.rmst24:.1f} mo", follow[r]))
    sx, sy = p.geometry.spacing[0], p.geometry.spacing[1]
    fig, axes = plt.subplots(2, len(cols), figsize=(4.2 * len(cols), 8.4), squeeze=False)
    colors = {L.VIABLE_TUMOR: "#ff3b30", L.NECROSIS: "#ffd60a", L.PVTT: "#0a84ff"}
    for c, (title, im) in enumerate(cols):
        for r_, phase in enumerate(("arterial", "portal")):
            ax = axes[r_, c]
            ax.imshow(im[phase][k][sl], cmap="gray", vmin=window[0], vmax=window[1], aspect=sy / sx,
                      interpolation="bilinear")
            for value, col in colors.items():
                m = im["labels"][k][sl] == value
                if m.any():
                    ax.contour(m.astype(float), levels=[0.5], colors=[col], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r_ == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(phase, fontsize=10)
    t_months = week * MONTHS_PER_WEEK
    fig.suptitle(f"Simulated patient {p.patient_id} ({p.clinical['n_tumors']} tumour(s), largest "
                 f"{p.clinical['max_diameter_mm']:.0f} mm, BCLC {p.clinical['bclc']}); follow-up at {t_months:.1f} "
                 f"months. Contours: red viable, yellow necrotic/lipiodol, blue PVTT. Synthetic data, not for "
                 f"clinical use.", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Picture of a simulated case (pre and follow-up under two regimens).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", type=int, default=None)
    ap.add_argument("--week", type=int, default=8)
    ap.add_argument("--regimens", nargs=2, default=list(DEFAULT_REGIMENS))
    args = ap.parse_args(argv)
    print(save_case_figure(args.out, args.seed, args.index, tuple(args.regimens), args.week))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
