"""One converter to JSON-ready values, used by result.json, model cards and response readings."""

from __future__ import annotations

import numpy as np


def jsonable(value):
    """Nested dicts / lists / tuples with numpy scalars or arrays -> plain Python (dict keys become strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
