"""One converter to JSON-ready values, used by result.json, model cards, metrics files and response readings."""

from __future__ import annotations

import math

import numpy as np


def jsonable(value, *, finite: bool = False):
    """Nested dicts / lists / tuples with numpy scalars or arrays -> plain Python (dict keys become strings).
    With ``finite``, NaN and infinities become None (strict JSON: ``null``)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, finite=finite) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), finite=finite)
    if isinstance(value, np.generic):
        value = value.item()
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value
