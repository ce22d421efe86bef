"""How HCCTwin writes its numbers for people: one place for the Slicer module's results table, the report, the
browser viewer and the CLI, so that a median or an interval reads the same everywhere.

``18.2 (14.0–23.5)`` months, ``72% (64–80%)``, a median that is never reached ``NR (30.1–NR)`` (``not reached``
without an interval), ``n/a`` for a missing or non-finite value. Pure Python, no dependency (ground floor).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["num", "fmt", "fmt_pct", "fmt_ci", "fmt_median", "ci_pair", "fmt_sampled", "fmt_reading"]

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


def _sampled_counts(reading: Any, criterion: str) -> tuple[int, list[tuple[str, int]]]:
    """``(samples, [(category, count)])`` of a response reading's ``sampled`` entry (best category first)."""
    sampled = reading.get("sampled") if isinstance(reading, Mapping) else None
    if not isinstance(sampled, Mapping):
        return 0, []
    n = int(num(sampled.get("samples")) or 0)
    shares = sampled.get(criterion)
    if n <= 0 or not isinstance(shares, Mapping):
        return 0, []
    return n, [(str(c), int(round(float(num(v) or 0.0) * n))) for c, v in shares.items() if num(v)]


def fmt_sampled(reading: Any, criterion: str = "mrecist") -> str:
    """The categories of a virtual follow-up's sampled responses, e.g. ``"PR 3/4 · SD 1/4"`` (n/a without)."""
    n, counts = _sampled_counts(reading, criterion)
    return " · ".join(f"{c} {k}/{n}" for c, k in counts if k) if counts else "n/a"


def fmt_reading(reading: Any, criterion: str = "mrecist") -> str:
    """A follow-up's category with how many sampled responses read the same, e.g. ``"PR (3/4 samples)"``; the
    category alone without samples, n/a without a reading."""
    cat = reading.get(criterion) if isinstance(reading, Mapping) else None
    if not cat:
        return "n/a"
    n, counts = _sampled_counts(reading, criterion)
    if not n:
        return str(cat)
    return f"{cat} ({dict(counts).get(str(cat), 0)}/{n} samples)"
