"""Saving, loading and caching the survival engine (``<name>.safetensors`` + ``<name>.json`` through
:mod:`HCCTwinLib.weights`: nothing is ever unpickled). Split out of :mod:`.engine` (issue 26).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..weights.cache import ModelCache
from .deep import DeepFeatureReducer
from .engine import ARCHITECTURE, ENGINE_NAME, SurvivalEngine
from .models import CompetingRiskMetastasis, LandmarkMetastasis, LandmarkModel, MetastasisModel, PerRegimenSurvival

_PARTS = ("os", "pfs", "landmark", "metastasis", "metastasis_landmark", "metastasis_competing", "deep")


def save_engine(engine: SurvivalEngine, path: str | os.PathLike, *, training_data: Mapping[str, Any] | None = None,
                metrics: Mapping[str, Any] | None = None, version: str = "0.1") -> tuple[Path, Path]:
    """Write ``path`` (.safetensors, all arrays) and its model card (structure, fill values, sha256)."""
    import torch

    from ..weights import save_model

    arrays: dict[str, np.ndarray] = {}
    parts: dict[str, Any] = {}
    for name in _PARTS:
        model = getattr(engine, name)
        if model is None:
            continue
        a, meta = model.to_state(prefix=f"{name}/")
        arrays.update(a)
        parts[name] = meta
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in arrays.items()}
    path = Path(path)
    card = {
        "name": path.stem, "version": version, "architecture": ARCHITECTURE,
        "architecture_kwargs": {"parts": parts, "clinical_fill_values": engine.clinical_fill_values,
                                "feature_fill_values": engine.feature_fill_values},
        "input_phases": ["arterial", "portal"], "label_map": None,
        "training_data": dict(training_data or {}), "metrics": dict(metrics or {}),
        "hyperparameters": {"os_penalizer": engine.os.penalizer_, "n_bootstrap": len(engine.os.boot_),
                            "interaction_covariates": [engine.os.covariates_[i] for i in engine.os._inter_idx],
                            "covariates": engine.os.covariates_},
        "intended_use": "Research use only; demo engine fitted on simulated patients, not for clinical decisions.",
        "software": {"hcctwin": __version__, "python": platform.python_version()},
    }
    return save_model(state, path, card)


def load_engine(path: str | os.PathLike) -> SurvivalEngine:
    """Verify (sha256) and read a survival engine file written by :func:`save_engine`."""
    from ..weights import ModelFileError, load_state, resolve_model_path

    state, card = load_state(resolve_model_path(path))
    if card.get("architecture") != ARCHITECTURE:
        raise ModelFileError(f"{path} is a {card.get('architecture')!r} model file, not a survival engine.")
    arrays = {k: v.numpy() for k, v in state.items()}
    kw = card.get("architecture_kwargs", {})
    parts = kw.get("parts", {})
    builders = {"os": PerRegimenSurvival, "pfs": PerRegimenSurvival, "landmark": LandmarkModel,
                "metastasis": MetastasisModel, "metastasis_landmark": LandmarkMetastasis,
                "metastasis_competing": CompetingRiskMetastasis,
                "deep": DeepFeatureReducer}
    models = {}
    for name, meta in parts.items():
        if name not in builders:
            raise ModelFileError(f"{path}: unknown part {name!r} in the model card.")
        models[name] = builders[name].from_state(arrays, meta, prefix=f"{name}/")
    if "os" not in models:
        raise ModelFileError(f"{path}: the survival engine has no OS model.")
    return SurvivalEngine(**models, clinical_fill_values=dict(kw.get("clinical_fill_values", {})),
                          feature_fill_values={k: float(v) for k, v in kw.get("feature_fill_values", {}).items()},
                          card=card)


_CACHE = ModelCache("survival")


def get_survival_engine(path: str | os.PathLike | None = None, device: str | None = None) -> SurvivalEngine:
    """The installed engine (``hcctwin_survival`` in the weights folder) or ``path``; cached between runs.
    Raises :class:`~HCCTwinLib.weights.ModelFileError` when none is installed. ``device`` is accepted for the
    pipeline's common model interface (the engine runs on the CPU)."""
    from ..weights import ModelFileError, resolve_model_path

    resolved = resolve_model_path(path or ENGINE_NAME)
    if not resolved.is_file():
        raise ModelFileError(f"no survival engine installed ({resolved} not found); train one with "
                             f"'hcctwin train survival --cohort DIR --out DIR' and install it, or pass its path.")
    return _CACHE.get(resolved, "cpu", lambda: load_engine(resolved))


def clear_cache() -> None:
    """Forget the loaded survival engines."""
    _CACHE.clear()
