"""Report figures drawn from data: the key image (pre | real | virtual per regimen at the largest lesion) and the
landmark (dynamic) survival curves. matplotlib on an Agg canvas (no pyplot state); engine code, no qt/slicer.

The key image is drawn when the volumes are in memory (``hcctwin predict`` calls :func:`write_key_image` next to
``result.json``, as ``key_image.png``); the report embeds it when it finds it there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..labels import lesion_focus
from ..survival_result import SurvivalResult
from .content import num, regimen_info

KEY_IMAGE = "key_image.png"
#: soft-tissue window of the key image (portal venous phase)
WINDOW_HU = (-110.0, 240.0)
#: tumour outline colour (viable + necrosis), and PVTT
OUTLINE = "#ffd400"
PVTT_OUTLINE = "#00d0ff"


def _crop_box(labels: np.ndarray, k: int, spacing_xy: tuple[float, float], margin_mm: float = 25.0):
    """In-plane box (j, i slices) around the liver on slice k (the whole slice without a liver), square in mm."""
    sl = labels[k] > 0
    if not sl.any():
        return slice(None), slice(None)
    jj, ii = np.nonzero(sl)
    sx, sy = spacing_xy
    half_mm = max((jj.max() - jj.min() + 1) * sy, (ii.max() - ii.min() + 1) * sx) / 2 + margin_mm
    cj, ci = (jj.min() + jj.max()) / 2, (ii.min() + ii.max()) / 2
    hj, hi = int(round(half_mm / sy)), int(round(half_mm / sx))
    n_j, n_i = labels.shape[1:]
    return (slice(max(0, int(cj) - hj), min(n_j, int(cj) + hj + 1)),
            slice(max(0, int(ci) - hi), min(n_i, int(ci) + hi + 1)))


def key_image_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]], k: int,
                     spacing: tuple[float, float, float], *, crop_labels: np.ndarray | None = None,
                     title: str | None = None):
    """Figure of axial panels at slice ``k``: each ``(caption, volume HU [k, j, i], labels or None)`` shown in a
    soft-tissue window with its tumour outline (yellow) and PVTT (cyan); every panel cropped to the same box around
    the liver of ``crop_labels`` (default: the first panel's labels), with the aspect ratio of the voxels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    ref = crop_labels if crop_labels is not None else panels[0][2]
    box = _crop_box(ref, k, spacing[:2]) if ref is not None else (slice(None), slice(None))
    fig = Figure(figsize=(2.6 * n, 3.0), dpi=110)
    FigureCanvasAgg(fig)
    aspect = spacing[1] / spacing[0]
    for i, (caption, volume, labels) in enumerate(panels):
        ax = fig.add_axes((i / n + 0.004, 0.02, 1 / n - 0.008, 0.84))
        image = np.asarray(volume[k], dtype=np.float32)[box]
        ax.imshow(image, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect, interpolation="bilinear")
        if labels is not None:
            lab = np.asarray(labels[k])[box]
            for values, color in (((2, 3), OUTLINE), ((4,), PVTT_OUTLINE)):
                mask = np.isin(lab, values)
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.1)
        ax.set_axis_off()
        ax.set_title(caption, fontsize=8.5, pad=3)
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    return fig


def write_key_image(result, out_dir: str | Path, *, phase: str = "portal") -> Path | None:
    """``key_image.png`` of a :class:`~HCCTwinLib.pipeline.TwinResult`: pre-treatment | real follow-up (when given)
    | the virtual follow-up of each regimen at the last time point (or at the real follow-up's week), at the slice
    of the largest pre-treatment lesion. None when there is no label map or no such lesion."""
    case = result.case
    if case.labels is None or phase not in case.phases:
        phase = next(iter(case.phases), None)
        if case.labels is None or phase is None:
            return None
    focus = lesion_focus(case.labels)
    if focus is None:
        return None
    k = focus[0]
    info = regimen_info(list(result.regimens))
    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = [("pre-treatment", case.phases[phase], case.labels)]
    real = result.real_followup
    week = None
    if real is not None and phase in real.phases:
        week = int(real.weeks)
        who = info.get(real.regimen, {}).get("short_name", real.regimen) if real.regimen else None
        panels.append((f"real w{week}" + (f" ({who})" if who else ""), real.phases[phase], real.labels))
    for regimen in result.regimens:
        by_week = result.followups.get(regimen) or {}
        if not by_week:
            continue
        w = week if week in by_week else max(by_week)
        fu = by_week[w]
        if phase not in fu.phases:
            continue
        panels.append((f"virtual {info.get(regimen, {}).get('short_name', regimen)} w{int(w)}", fu.phases[phase],
                       fu.labels))
    spacing = case.geometry.spacing
    fig = key_image_figure(panels, k, spacing, crop_labels=case.labels,
                           title=f"{phase} phase, axial slice {k + 1} of {case.geometry.shape[0]} (largest lesion); "
                                 f"yellow: tumour outline, cyan: PVTT")
    path = Path(out_dir) / KEY_IMAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def landmark_figure(summary: Mapping, *, figsize=(8.0, 4.6)):
    """The dynamic (landmark) OS curves: one panel per time point, one curve per regimen (survival after the
    landmark given the virtual or real follow-up's response), with the 95% band; None without landmark curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plots import LINE_STYLES

    landmark = SurvivalResult.from_summary(summary).landmark
    if not landmark:
        return None
    order = [r for r in summary.get("regimens") or [] if r in landmark] + [
        r for r in landmark if r not in (summary.get("regimens") or [])]
    weeks = sorted({w for r in order for w in landmark[r].timepoints})
    if not weeks:
        return None
    info = regimen_info(order)
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    n = len(weeks)
    for p, w in enumerate(weeks):
        ax = fig.add_axes((0.07 + p * 0.9 / n, 0.2, 0.9 / n - 0.04, 0.66))
        for idx, rid in enumerate(order):
            tp = landmark[rid].timepoints.get(w)
            if tp is None:
                continue
            t = np.array([num(v) if num(v) is not None else np.nan for v in tp.times_after_landmark])
            s = np.array([num(v) if num(v) is not None else np.nan for v in tp.survival])
            m = min(len(t), len(s))
            if m == 0:
                continue
            color = info[rid]["color"]
            label = f"{info[rid]['short_name']} ({tp.mrecist or 'n/a'})"
            ax.step(t[:m], s[:m], where="post", color=color, linestyle=LINE_STYLES[idx % len(LINE_STYLES)],
                    linewidth=1.4, label=label)
            lo = np.array([num(v) if num(v) is not None else np.nan for v in tp.lower])
            hi = np.array([num(v) if num(v) is not None else np.nan for v in tp.upper])
            if len(lo) >= m and len(hi) >= m:
                ax.fill_between(t[:m], lo[:m], hi[:m], step="post", color=color, alpha=0.12, linewidth=0)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.set_title(f"from week {int(str(w).lstrip('w') or 0)}", fontsize=9)
        ax.set_xlabel("months after the landmark", fontsize=8)
        if p == 0:
            ax.set_ylabel("overall survival", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower left", title="regimen (mRECIST)", title_fontsize=6.5)
    fig.suptitle("Dynamic risk: overall survival from each follow-up, given its (virtual) response", fontsize=9.5)
    return fig
