"""One cache of loaded models for every model kind (segmentation, generator, survival engine; issue 26).

A model file is loaded and verified once per (file, device, options) and kept warm, so the second case is fast.
One rule for all: the key holds the file's modification time and size, so a file replaced on disk is loaded again and
the older versions of that file on that device are dropped (no stale model, no growing memory); loading happens
under a lock, so two threads (the Slicer module's worker and its GUI, a batch run) never load a model twice or see
a half-filled cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class ModelCache:
    """Loaded models by (file, modification time, size, device, options)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(path: str | os.PathLike, device: Any = "cpu", options: Mapping[str, Any] | None = None) -> tuple:
        path = Path(path)
        st = path.stat()
        return (str(path.resolve()), st.st_mtime_ns, st.st_size, str(device),
                tuple(sorted((str(k), str(v)) for k, v in (options or {}).items())))

    def get(self, path: str | os.PathLike, device: Any, load: Callable[[], Any],
            options: Mapping[str, Any] | None = None) -> Any:
        """The cached model for ``path`` on ``device`` (with ``options``), loading it with ``load()`` when absent
        or when the file changed since it was loaded."""
        key = self.key(path, device, options)
        with self._lock:
            model = self._items.get(key)
            if model is None:
                for old in [k for k in self._items if k[0] == key[0] and k[3] == key[3]]:
                    del self._items[old]
                model = load()
                self._items[key] = model
            return model

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def model_label(card: Mapping[str, Any]) -> str:
    """``model NAME VERSION`` of a model card (how provenance names a model)."""
    return f"model {card.get('name', '?')} {card.get('version', '')}".strip()


__all__ = ["ModelCache", "model_label"]
