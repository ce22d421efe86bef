"""Model files shared by every HCCTwin model: safetensors weights + a JSON model card with the file's sha256.

Layout: ``<name>.safetensors`` and ``<name>.json`` side by side, in :func:`weights_dir` (this package folder, or the
folder named by the environment variable ``HCCTWIN_WEIGHTS_DIR``).

Security rules:

- weights are never unpickled: ``.safetensors`` is read with safetensors; a legacy ``.pt``/``.pth`` is read only with
  ``torch.load(weights_only=True)`` (tensors and plain containers, nothing executable);
- every file needs its model card, and the card's ``sha256`` must match the file before anything is parsed.
  A mismatch raises :class:`ModelFileError` (the file was modified or corrupted). The hash proves integrity against
  the card next to it, not who wrote it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import HCCTwinError

WEIGHTS_SUFFIX = ".safetensors"
LEGACY_SUFFIXES = (".pt", ".pth")
CARD_SUFFIX = ".json"
#: Keys every model card written by :func:`save_model` carries (missing optional ones are filled with defaults).
CARD_KEYS = ("name", "version", "architecture", "architecture_kwargs", "input_phases", "spacing_mm", "label_map",
             "training_data", "hyperparameters", "metrics", "sha256", "created")
REQUIRED_KEYS = ("name", "architecture")


class ModelFileError(HCCTwinError):
    """A model file or its card is missing, modified, corrupted or in a refused format."""


def weights_dir() -> Path:
    """Folder of the installed model files: ``HCCTWIN_WEIGHTS_DIR`` when set, else this package folder."""
    override = os.environ.get("HCCTWIN_WEIGHTS_DIR")
    return Path(override).expanduser() if override else Path(__file__).resolve().parent


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path(path: str | os.PathLike) -> Path:
    """The model card next to a weights file: ``<name>.json``."""
    path = Path(path)
    return path.with_name(path.name[: -len(path.suffix)] + CARD_SUFFIX) if path.suffix else path.with_suffix(
        CARD_SUFFIX)


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A path to an existing file, or a bare model name looked up in :func:`weights_dir` (``<name>.safetensors``)."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (WEIGHTS_SUFFIX, *LEGACY_SUFFIXES) or path.parent != Path(".") or path.exists():
        return path
    for suffix in (WEIGHTS_SUFFIX, *LEGACY_SUFFIXES):
        candidate = weights_dir() / f"{path.name}{suffix}"
        if candidate.exists():
            return candidate
    return weights_dir() / f"{path.name}{WEIGHTS_SUFFIX}"


def _state_dict_of(model_or_state) -> tuple[dict, dict[str, str]]:
    """CPU copies of the tensors, each storage once, and ``{alias: key}`` for entries sharing a tensor.

    (MONAI's DynUNet registers its blocks twice, e.g. ``skip_layers.*`` aliases ``input_block.*``: stored once.)
    """
    import torch

    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else dict(model_or_state)
    out, aliases, seen = {}, {}, {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"state entry {key!r} is a {type(value).__name__}, not a tensor; only tensors "
                                 f"can be stored in a safetensors file.")
        ident = (value.device, value.data_ptr(), tuple(value.shape), tuple(value.stride()), value.dtype)
        if value.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        # clone: safetensors refuses tensors that share memory; contiguous CPU copies are always safe.
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out, aliases


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(model, path: str | os.PathLike, card: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``model`` (a module or a state dict) to ``path`` (.safetensors) and its model card next to it.

    The card gets ``sha256`` (of the written file), ``created`` (UTC ISO date, unless given), ``file`` and
    ``format``; keys of :data:`CARD_KEYS` that are missing are filled with empty defaults. Returns both paths.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        if path.suffix in LEGACY_SUFFIXES:
            raise ModelFileError(f"{path}: HCCTwin writes model files only as safetensors; use a "
                                 f"'{WEIGHTS_SUFFIX}' name.")
        path = path.with_name(path.name + WEIGHTS_SUFFIX)
    missing = [k for k in REQUIRED_KEYS if not card.get(k)]
    if missing:
        raise ValueError(f"model card is missing {missing}")
    state, aliases = _state_dict_of(model)
    meta = {"name": str(card["name"]), "version": str(card.get("version", "")), "format": "pt"}
    if aliases:
        meta["hcctwin_aliases"] = json.dumps(aliases)
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    full = _default_card()
    full.update(json.loads(json.dumps(dict(card), default=_json_default)))
    full.update({"sha256": sha256_file(path), "file": path.name, "format": "safetensors",
                 "size_bytes": path.stat().st_size,
                 "n_parameters": int(sum(t.numel() for t in state.values()))})
    if not full.get("created"):
        full["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cpath = card_path(path)
    _atomic_write(cpath, lambda tmp: Path(tmp).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n"))
    return path, cpath


def _default_card() -> dict[str, Any]:
    from ..labels import LABELS

    label_map = {"0": "background"}
    label_map.update({str(info.value): info.key for info in LABELS})
    return {"name": None, "version": None, "architecture": None, "architecture_kwargs": {}, "input_phases": [],
            "spacing_mm": None, "label_map": label_map, "training_data": {}, "hyperparameters": {}, "metrics": {},
            "sha256": None, "created": None}


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read the model card of a weights file (``path`` is the weights file or the card itself)."""
    path = Path(path)
    cpath = path if path.suffix == CARD_SUFFIX else card_path(path)
    if not cpath.is_file():
        raise ModelFileError(f"{path}: model card {cpath.name} is missing. HCCTwin loads only model files that come "
                             f"with their card (it holds the sha256 that proves the file is intact); copy the card "
                             f"next to the file or re-export the model.")
    try:
        card = json.loads(cpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{cpath}: model card is unreadable ({exc}); re-export the model.") from exc
    if not isinstance(card, dict):
        raise ModelFileError(f"{cpath}: model card is not a JSON object; re-export the model.")
    return card


def verify(path: str | os.PathLike, card: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check the file against the sha256 of its card; returns the card. Raises :class:`ModelFileError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found. Install the weights (or train a model) or set "
                             f"HCCTWIN_WEIGHTS_DIR to the folder that holds them.")
    card = dict(card) if card is not None else load_card(path)
    expected = str(card.get("sha256") or "").lower()
    if len(expected) != 64:
        raise ModelFileError(f"{path}: the model card has no valid sha256, so the file cannot be verified; refusing "
                             f"to load it. Re-export the model with HCCTwin (save_model).")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelFileError(f"{path}: sha256 {actual[:16]}... does not match the model card ({expected[:16]}...): "
                             f"the file was modified or corrupted after it was written. Re-install or re-train the "
                             f"model; do not use this file.")
    return card


def load_state(path: str | os.PathLike, *, device="cpu") -> tuple[dict, dict[str, Any]]:
    """Verify and read a model file: returns ``(state_dict, card)``.

    ``path`` is a ``.safetensors`` file (or a legacy ``.pt``/``.pth`` read with ``weights_only=True``) or a bare
    model name looked up in :func:`weights_dir`. The card's sha256 is checked before the file is parsed.
    """
    path = resolve_model_path(path)
    suffix = path.suffix.lower()
    if suffix not in (WEIGHTS_SUFFIX, *LEGACY_SUFFIXES):
        raise ModelFileError(f"{path}: unsupported model file type {suffix!r}; HCCTwin loads '{WEIGHTS_SUFFIX}' "
                             f"files (or legacy .pt/.pth tensor files) with a model card.")
    card = verify(path)
    device = str(device)
    if suffix == WEIGHTS_SUFFIX:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=device) as fh:
                state = {key: fh.get_tensor(key) for key in fh.keys()}
                aliases = json.loads((fh.metadata() or {}).get("hcctwin_aliases", "{}"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{path}: not a valid safetensors file ({exc}); re-export the model.") from exc
        for alias, key in aliases.items():
            if key not in state:
                raise ModelFileError(f"{path}: alias {alias!r} points to missing tensor {key!r}; re-export it.")
            state[alias] = state[key]
        return state, card
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # "pickle protocol N" notices from the restricted unpickler
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError, ValueError) as exc:
        raise ModelFileError(f"{path}: refused: the file holds something other than tensors (it would need full "
                             f"unpickling, which can run arbitrary code). Convert it to safetensors in a trusted "
                             f"environment. ({str(exc).splitlines()[0][:200]})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: the file does not hold a state dict of tensors; convert it to safetensors.")
    return obj, card


def list_models(folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Cards of the model files in ``folder`` (default :func:`weights_dir`), unverified, for display."""
    folder = Path(folder) if folder is not None else weights_dir()
    cards = []
    for file in sorted(folder.glob(f"*{WEIGHTS_SUFFIX}")):
        try:
            card = load_card(file)
        except ModelFileError:
            continue
        card["path"] = str(file)
        cards.append(card)
    return cards
