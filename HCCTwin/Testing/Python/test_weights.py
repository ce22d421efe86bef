"""Model files: safetensors + model card with sha256; tampered, card-less and pickled files are refused."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from HCCTwinLib.errors import HCCTwinError
from HCCTwinLib.weights import (
    CARD_KEYS,
    ModelFileError,
    card_path,
    list_models,
    load_state,
    resolve_model_path,
    save_model,
    sha256_file,
    weights_dir,
)

CARD = {"name": "tiny", "version": "0.0.1", "architecture": "Conv3d",
        "architecture_kwargs": {"in_channels": 2, "out_channels": 5, "kernel_size": 3},
        "input_phases": ["arterial", "portal"], "spacing_mm": [1.5, 1.5, 3.0],
        "training_data": {"description": "none (test)"}, "hyperparameters": {"lr": 1e-3}, "metrics": {"dice": 0.5}}


def _model():
    torch.manual_seed(0)
    return torch.nn.Conv3d(2, 5, 3)


def test_round_trip(tmp_path):
    model = _model()
    wpath, cpath = save_model(model, tmp_path / "tiny.safetensors", CARD)
    assert wpath.is_file() and cpath == tmp_path / "tiny.json" and cpath.is_file()
    card = json.loads(cpath.read_text())
    assert all(k in card for k in CARD_KEYS)
    assert card["sha256"] == sha256_file(wpath) and len(card["sha256"]) == 64
    assert card["created"] and card["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert card["label_map"]["4"] == "pvtt"
    state, card2 = load_state(wpath)
    assert card2 == card
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    # the name without suffix gets one
    wpath2, _ = save_model(model.state_dict(), tmp_path / "other", CARD)
    assert wpath2.name == "other.safetensors"


def test_tampered_file_is_refused(tmp_path):
    wpath, _ = save_model(_model(), tmp_path / "tiny.safetensors", CARD)
    data = bytearray(wpath.read_bytes())
    data[-3] ^= 0xFF  # one weight changes, the file still parses
    wpath.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="modified or corrupted") as info:
        load_state(wpath)
    assert isinstance(info.value, HCCTwinError)


def test_missing_or_hashless_card_is_refused(tmp_path):
    wpath, cpath = save_model(_model(), tmp_path / "tiny.safetensors", CARD)
    card = json.loads(cpath.read_text())
    cpath.unlink()
    with pytest.raises(ModelFileError, match="card"):
        load_state(wpath)
    card.pop("sha256")
    cpath.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="sha256"):
        load_state(wpath)
    cpath.write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable"):
        load_state(wpath)


class _Evil:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_with_arbitrary_object_is_refused(tmp_path, writer):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(2), "payload": _Evil(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    # even with a matching card (hash correct), the pickle is never executed
    card_path(path).write_text(json.dumps(dict(CARD, sha256=sha256_file(path))))
    with pytest.raises(ModelFileError, match="refused"):
        load_state(path)
    assert not marker.exists()


def test_legacy_tensor_file_needs_card_and_loads_weights_only(tmp_path):
    model = _model()
    path = tmp_path / "legacy.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelFileError, match="card"):
        load_state(path)
    card_path(path).write_text(json.dumps(dict(CARD, sha256=sha256_file(path))))
    state, _ = load_state(path)
    assert torch.equal(state["weight"], model.weight.detach())
    with pytest.raises(ModelFileError, match="safetensors"):
        save_model(model, tmp_path / "new.pt", CARD)


def test_unknown_suffix_and_missing_file(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unsupported"):
        load_state(bad)
    with pytest.raises(ModelFileError, match="not found"):
        load_state(tmp_path / "absent.safetensors")


def test_weights_dir_override(tmp_path, monkeypatch):
    monkeypatch.delenv("HCCTWIN_WEIGHTS_DIR", raising=False)
    assert weights_dir().name == "weights" and weights_dir().parent.name == "HCCTwinLib"
    monkeypatch.setenv("HCCTWIN_WEIGHTS_DIR", str(tmp_path))
    assert weights_dir() == tmp_path
    save_model(_model(), tmp_path / "tiny.safetensors", CARD)
    assert resolve_model_path("tiny") == tmp_path / "tiny.safetensors"
    state, card = load_state("tiny")
    assert card["name"] == "tiny" and "weight" in state
    assert [c["name"] for c in list_models()] == ["tiny"]


def test_model_cache_one_rule_for_every_model(tmp_path):
    """weights.cache.ModelCache (issue 26): one version per (file, device), a changed file reloaded, one load when
    two threads ask at once."""
    import os
    import threading
    import time

    from HCCTwinLib.weights.cache import ModelCache, model_label

    path = tmp_path / "m.safetensors"
    path.write_bytes(b"one")
    cache = ModelCache("test")
    loads = []

    def load():
        loads.append(path.read_bytes())
        time.sleep(0.05)
        return object()

    first = cache.get(path, "cpu", load)
    assert cache.get(path, "cpu", load) is first and len(loads) == 1
    other_device = cache.get(path, "cuda:0", load)
    assert other_device is not first and len(cache) == 2
    path.write_bytes(b"two!")  # replaced on disk: size and mtime change
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = cache.get(path, "cpu", load)
    assert second is not first and loads[-1] == b"two!"
    assert len(cache) == 2  # the old cpu version was dropped, the cuda one kept
    cache.clear()
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(path, "cpu", load))) for _ in range(4)]
    n = len(loads)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == n + 1 and all(g is got[0] for g in got)
    assert model_label({"name": "hcctwin_seg", "version": "0.6.0"}) == "model hcctwin_seg 0.6.0"
