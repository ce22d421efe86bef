"""Figures for the README: a simulated case (arterial and portal, pre-treatment and week 8 under two regimens).

    .venv/bin/python scripts/make_readme_figures.py   # writes docs/simulated_case.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))

SEED, INDEX = 0, 3
REGIMENS = ("tace_pd1_len", "haic_pd1_len")


def main() -> int:
    from matplotlib.figure import Figure

    from HCCTwinLib import DISCLAIMER
    from HCCTwinLib.simulate import simulate_patient

    p = simulate_patient(SEED, INDEX)
    k = int(np.argmax(np.isin(p.labels, (2, 3)).sum(axis=(1, 2))))
    rows = [("pre-treatment", {"arterial": p.arterial, "portal": p.portal})]
    for regimen in REGIMENS:
        rows.append((f"week 8, {regimen}", p.render_followups(regimen, [8])[8]))
    fig = Figure(figsize=(6.4, 2.45 * len(rows) + 0.3), dpi=100, facecolor="black")
    axes = fig.subplots(len(rows), 2)
    for r, (title, imgs) in enumerate(rows):
        for c, phase in enumerate(("arterial", "portal")):
            ax = axes[r, c]
            ax.imshow(imgs[phase][k], cmap="gray", vmin=-160, vmax=240)
            ax.set_title(f"{title} - {phase}", color="white", fontsize=9)
            ax.set_axis_off()
    fig.suptitle(f"Simulated patient {p.patient_id} (received {p.regimen}), axial slice {k}", color="white",
                 fontsize=10)
    fig.text(0.5, 0.005, DISCLAIMER, ha="center", va="bottom", color="#bbbbbb", fontsize=6)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.02, wspace=0.03, hspace=0.12)
    out = ROOT / "docs" / "simulated_case.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, facecolor="black")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
