"""Segmentation and (flow) generator training with torch.distributed (issue 27): ``torchrun --nproc_per_node 2`` on
the CPU (gloo), the two processes' gradients averaged by DistributedDataParallel, rank 0 alone validating and writing
the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_segmentation import TINY, _write_cohort

from HCCTwinLib.distributed import DistContext, setup

DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(1)
from HCCTwinLib.segmentation import train_segmentation
tiny = json.loads(sys.argv[4])
summary = train_segmentation(sys.argv[1], sys.argv[2], epochs=2, batch_size=1, patch_size=(16, 32, 32),
                             architecture_kwargs=tiny, device="cpu", seed=3, iterations_per_epoch=4,
                             val_max_cases=1, log=print)
# one file per process (their stdout lines can interleave in torchrun's output)
from pathlib import Path
Path(sys.argv[2], "rank%s.json" % os.environ.get("RANK")).write_text(json.dumps(
    {"epochs": summary["epochs_completed"], "distributed": summary["distributed"]}))
"""


def test_without_torchrun_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, dev = setup("cpu")
    assert ctx == DistContext() and dev == "cpu" and not ctx.enabled and ctx.any(True) and not ctx.any(False)
    model = object()
    assert ctx.wrap(model) is model and ctx.describe() is None
    said = []
    assert ctx.speakers(said.append, model) == (said.append, model)  # rank 0 keeps its log and progress
    log, progress = DistContext(rank=1, world=2).speakers(said.append, model)
    log("from rank 1")
    assert progress is None and said == []  # the other ranks are silent
    ctx.barrier()
    ctx.teardown()


def test_torchrun_two_processes_train_one_model(tmp_path):
    cohort, out = tmp_path / "cohort", tmp_path / "run"
    _write_cohort(cohort, n=3)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    lib = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(driver), str(cohort), str(out), lib, json.dumps(TINY)],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):  # both processes ran the whole training
        done = json.loads((out / f"rank{rank}.json").read_text())
        assert done == {"epochs": 2, "distributed": {"world_size": 2, "backend": "gloo"}}, (rank, done)
    assert "rank 0 of 2 processes (gloo)" in proc.stdout
    card = json.loads((out / "hcctwin_seg.json").read_text())
    assert card["hyperparameters"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert card["hyperparameters"]["iterations_per_epoch"] == 2  # 4 iterations per epoch shared by 2 processes
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all(e["iterations"] == 2 for e in log)  # one log, rank 0's
    assert (out / "checkpoint.safetensors").is_file()


GENERATOR_DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(1)
from HCCTwinLib.twin.train import train_generator
kw = json.loads(sys.argv[4])
summary = train_generator(sys.argv[1], sys.argv[2], epochs=2, steps_per_epoch=4, batch_size=2, device="cpu",
                          crop_shape=kw["crop"], architecture_kwargs=kw["arch"], ema_decay=None, log=print)
from pathlib import Path
Path(sys.argv[2], "rank%s.json" % os.environ.get("RANK")).write_text(json.dumps(
    {"epochs": summary["epochs_completed"], "steps": summary["steps"], "distributed": summary["distributed"]}))
"""


def test_torchrun_two_processes_train_one_generator(tmp_path):
    """The flow generator under torchrun: each rank trains on its own batches of the epoch (4 steps shared: 2 per
    process), gradients averaged, rank 0 alone logs and writes the checkpoint and the model."""
    from test_twin import TINY_ARCH, TINY_CROP, write_cohort

    cohort, out = write_cohort(tmp_path / "cohort", 4), tmp_path / "run"
    driver = tmp_path / "gen_driver.py"
    driver.write_text(GENERATOR_DRIVER)
    lib = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(driver), str(cohort), str(out), lib,
                           json.dumps({"crop": list(TINY_CROP), "arch": TINY_ARCH})],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        done = json.loads((out / f"rank{rank}.json").read_text())
        assert done == {"epochs": 2, "steps": 4, "distributed": {"world_size": 2, "backend": "gloo"}}, (rank, done)
    assert "rank 0 of 2 processes (gloo)" in proc.stdout
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all(e["steps"] == 2 for e in log)  # one log, rank 0's
    card = json.loads((out / "hcctwin_twin.json").read_text())
    assert card["hyperparameters"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert card["training"]["steps"] == 4 and (out / "checkpoint.safetensors").is_file()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA on this machine")
def test_setup_puts_each_process_on_its_gpu(monkeypatch):  # pragma: no cover - needs a GPU
    import torch

    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx, dev = setup(torch.device("cuda"))
    assert not ctx.enabled and dev.type == "cuda"
