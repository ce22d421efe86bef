"""How HCCTwin writes its numbers for people: one place for the Slicer module's results table, the report, the
browser viewer and the CLI, so that a median or an interval reads the same everywhere.

``18.2 (14.0–23.5)`` months, ``72% (64–80%)``, a median that is never reached ``NR (30.1–NR)`` (``not reached``
without an interval), ``n/a`` for a missing or non-finite value. Pure Python, no dependency (ground floor).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["num", "fmt", "fmt_pct", "fmt_ci", "fmt_median", "ci_pair"]

#: between the bounds of an interval
DASH = "–"


def num(value: Any) -> float | None:
    """A finite float, or None for None / NaN / inf / booleans / anything not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    x = num(value)
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def fmt_pct(value: Any) -> str:
    x = num(value)
    return "n/a" if x is None else f"{100 * x:.0f}%"


def ci_pair(ci: Any) -> tuple[Any, Any]:
    """``(lower, upper)`` of an interval given as a 2-sequence, else ``(None, None)``."""
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        return ci[0], ci[1]
    return None, None


def fmt_ci(estimate: Any, ci: Any, kind: str = "months") -> str:
    """``"18.2 (14.0–23.5)"`` for months, ``"72% (64–80%)"`` for probabilities; a missing bound prints as n/a."""
    lo, hi = ci_pair(ci)
    if kind == "pct":
        est = fmt_pct(estimate)
        if num(lo) is None and num(hi) is None:
            return est
        return f"{est} ({fmt_pct(lo)[:-1] if num(lo) is not None else 'n/a'}{DASH}{fmt_pct(hi)})"
    est = fmt(estimate)
    if num(lo) is None and num(hi) is None:
        return est
    return f"{est} ({fmt(lo)}{DASH}{fmt(hi)})"


def fmt_median(curve: Any) -> str:
    """A survival curve's median with its interval; a curve that never reaches 0.5 has median "not reached" (NR),
    and an open upper bound reads NR too. ``curve``: a :class:`~HCCTwinLib.survival_result.Curve` (or anything with
    ``median`` and ``median_ci`` attributes) or the curve's dict."""
    if isinstance(curve, Mapping):
        median, median_ci = curve.get("median"), curve.get("median_ci")
    else:
        median, median_ci = getattr(curve, "median", None), getattr(curve, "median_ci", None)
    lo, hi = ci_pair(median_ci)
    med = num(median)
    est = f"{med:.1f}" if med is not None else "NR"
    if num(lo) is None and num(hi) is None:
        return est if med is not None else "not reached"
    return f"{est} ({fmt(lo) if num(lo) is not None else 'n/a'}{DASH}{fmt(hi) if num(hi) is not None else 'NR'})"
