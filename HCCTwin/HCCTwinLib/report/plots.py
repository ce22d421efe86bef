"""Survival plots for the report (matplotlib, Agg canvas; no pyplot state, so it is safe in worker threads)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..survival_result import Curve
from .content import ENDPOINT_NAMES, curves, disclaimer_text, num, reason, regimen_info, survival_part

X_MAX_MONTHS = 36.0


def _array(values) -> np.ndarray:
    return np.array([np.nan if num(v) is None else float(v) for v in values or []], dtype=float)


def _curve_arrays(curve: Curve) -> tuple[np.ndarray, ...]:
    """Times, survival, lower, upper as float arrays (NaN for nulls), starting at t = 0 with S = 1."""
    t, s = _array(curve.times), _array(curve.survival)
    n = min(len(t), len(s))
    t, s = t[:n], s[:n]
    lo, hi = _array(curve.lower)[:n], _array(curve.upper)[:n]
    if len(lo) != n:
        lo = np.full(n, np.nan)
    if len(hi) != n:
        hi = np.full(n, np.nan)
    keep = np.isfinite(t)
    t, s, lo, hi = t[keep], s[keep], lo[keep], hi[keep]
    order = np.argsort(t, kind="stable")
    t, s, lo, hi = t[order], s[order], lo[order], hi[order]
    if len(t) == 0 or t[0] > 0:
        t, s, lo, hi = (np.r_[0.0, t], np.r_[1.0, s], np.r_[1.0, lo], np.r_[1.0, hi])
    return t, s, lo, hi


#: solid, dashed, dash-dot, dotted-dense: one per regimen, in the order of the legend
LINE_STYLES = ("-", (0, (6, 2)), (0, (5, 1.5, 1.5, 1.5)), (0, (1.5, 1)))


def survival_figure(summary: Mapping, endpoint: str = "os", *, figsize=(8.0, 5.2)):
    """A matplotlib ``Figure`` with one step curve per regimen, its 95% band and its median; when the endpoint has
    no curves the figure says so, with the reason from the notes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.09, 0.17, 0.60, 0.72))
    name = ENDPOINT_NAMES.get(endpoint, endpoint.upper())
    by_reg = curves(summary, endpoint)
    order = [r for r in summary.get("regimens") or [] if r in by_reg] + [r for r in by_reg
                                                                        if r not in (summary.get("regimens") or [])]
    info = regimen_info(order)
    for n, rid in enumerate(order):
        curve = by_reg[rid]
        t, s, lo, hi = _curve_arrays(curve)
        color = info[rid]["color"]
        med = num(curve.median)
        median_text = f"{med:.1f} mo" if med is not None else "not reached"
        label = "\n".join(textwrap.wrap(info[rid]["name"], 30)) + f"\nmedian {median_text}"
        band = np.isfinite(lo) & np.isfinite(hi)
        if band.any():
            ax.fill_between(t, np.where(band, lo, np.nan), np.where(band, hi, np.nan), step="post", color=color,
                            alpha=0.18, linewidth=0)
        # a line style per regimen as well as a colour: curves that coincide (e.g. two regimens with the same
        # predicted survival) stay visible, and the plot survives black-and-white printing
        ax.step(t, s, where="post", color=color, linewidth=2.0, label=label,
                linestyle=LINE_STYLES[n % len(LINE_STYLES)])
        if med is not None and med <= X_MAX_MONTHS:
            ax.plot([0, med], [0.5, 0.5], color=color, linewidth=0.8, linestyle=":")
            ax.plot([med, med], [0, 0.5], color=color, linewidth=0.8, linestyle=":")
            ax.plot([med], [0.5], marker="o", color=color, markersize=5)
    ax.set_xlim(0, X_MAX_MONTHS)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(np.arange(0, X_MAX_MONTHS + 1, 6))
    ax.set_xlabel("Months since start of treatment")
    ax.set_ylabel(f"{name} probability")
    ax.grid(True, color="#dddddd", linewidth=0.6)
    model = survival_part(summary).model
    title = f"{name} by regimen"
    ax.set_title(title + (f"\n{model}" if model else ""), fontsize=11)
    if order:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5, frameon=False,
                  title="Regimen (dotted: median)", title_fontsize=8)
    else:
        why = reason(summary, "surviv", default="no survival model ran for this result.")
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(f"{name} not available: {why}", 60)), ha="center", va="center",
                transform=ax.transAxes, fontsize=9, color="#444444")
    fig.text(0.01, 0.015, "\n".join(textwrap.wrap(disclaimer_text(summary), 150)), fontsize=6, color="#555555",
             va="bottom")
    return fig


def plot_survival(summary: Mapping, out_png: str | Path, endpoint: str = "os") -> Path:
    """Write the ``endpoint`` ("os" or "pfs") survival plot of ``summary`` (``result.json`` as a dict) to a PNG."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig = survival_figure(summary, endpoint)
    fig.savefig(out_png, dpi=120)
    return out_png
