"""The browser viewer (`hcctwin view`, issue 25): started as a user starts it, driven in headless Chromium (Debian's
``chromium`` + Python Playwright; `.ci/run` installs the browser), the regimen, the time point and the uncertainty
overlay changed from the page, each screenshot checked. The timing targets are measured by
``benchmarks/viewer_timing.py``, not here; this test only bounds them loosely."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from HCCTwinLib.errors import InputError

from conftest import load_benchmark

CHROMIUM = os.environ.get("HCCTWIN_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory):
    from HCCTwinLib.demo import run_demo

    out = tmp_path_factory.mktemp("view") / "demo"
    run_demo(out, small=True, render=False)
    return out


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make setup does)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    bench = load_benchmark("viewer_timing")
    with sync_api.sync_playwright() as p:
        b = bench.launch(p, CHROMIUM)
        yield b
        b.close()


def test_viewer_shows_the_twin_and_follows_the_page(demo_result, browser, tmp_path):
    bench = load_benchmark("viewer_timing")
    pid = json.loads((demo_result / "result.json").read_text(encoding="utf-8"))["patient_id"]
    run = bench.measure(browser, demo_result, tmp_path, screenshot=tmp_path / "page.png", patient_id=pid)
    assert bench.check(run) == [], run
    assert run["views"] == ["view-pre", "view-real", "view-virtual"]
    assert run["table_rows"] == 3 and run["survival_image"] == 1
    # loose bounds (the targets are the benchmark's): a change is a frame, not a reload
    assert run["first_paint_s"] < 60 and max(run["more_changes_s"]) < 5
    assert (tmp_path / "page.png").stat().st_size > 50_000


def test_viewer_refuses_a_folder_without_a_result_or_its_inputs(tmp_path, demo_result):
    from HCCTwinLib.scene.viewer import ResultFolder

    with pytest.raises(InputError, match="no result.json"):
        ResultFolder(tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(demo_result / "result.json", old / "result.json")  # a result written before pre/ was saved
    with pytest.raises(InputError, match="run `hcctwin predict` again"):
        ResultFolder(old)
    folder = ResultFolder(demo_result)
    assert folder.real() is not None and folder.virtual(folder.regimens[0], folder.weeks[0]) is not None
