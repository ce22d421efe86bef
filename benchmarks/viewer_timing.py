"""The browser viewer (`hcctwin view`) driven in headless Chromium: what it shows and how fast.

Starts ``hcctwin view RESULT --port P`` (a subprocess; the browser is already running, its start is not counted),
opens the page, waits for the first paint (every slice view has a decoded, non-blank frame), then changes the
regimen, the time point and the uncertainty overlay and checks each time that the virtual panel changed and the
pre-treatment panel did not; scrolls the pre-treatment view with the mouse wheel and checks that every linked view
moved. Seconds are measured in the page: process start -> first paint, click -> first new frame of the virtual view.

    python benchmarks/viewer_timing.py [--result DIR] [--runs 3] [--out benchmarks/results]

Without ``--result`` it runs ``hcctwin demo`` into a temporary folder first. Needs Debian's ``chromium`` (or
``--chromium PATH``) and the Python package ``playwright`` (its own browser download is not used). Writes
``viewer_timing.json`` / ``.md`` and, with ``--screenshot``, the page as a PNG. Targets (issue 25): first paint <= 3 s
after start, regimen or time-point change <= 0.5 s.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, machine_line, utc_now, write_results  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGETS = {"first_paint_s": 3.0, "change_s": 0.5}

#: installed before the page's scripts: every decoded frame of a remote view (trame-rca puts each frame into an
#: <img class="image-display-area">) with its page time, mean grey and a 96x96 grey thumbnail, per panel
INSTRUMENT_JS = """
window.__frames = []; window.__last = {};
document.addEventListener('load', (e) => {
  const img = e.target;
  if (!(img instanceof HTMLImageElement) || !img.classList.contains('image-display-area')) return;
  const t = performance.now(), panel = img.closest('[id^="view-"]'), n = 96, c = document.createElement('canvas');
  c.width = n; c.height = n;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0, n, n);
  const d = ctx.getImageData(0, 0, n, n).data, thumb = new Array(n * n);
  let sum = 0;
  for (let i = 0; i < n * n; i++) { thumb[i] = (d[4*i] + d[4*i+1] + d[4*i+2]) / 3; sum += thumb[i]; }
  const rec = {panel: panel ? panel.id : null, t, mean: sum / (n * n), thumb};
  window.__frames.push(rec); if (window.__frames.length > 400) window.__frames.shift();
  if (rec.panel) window.__last[rec.panel] = rec;
}, true);
window.__thumbDiff = (a, b) => { let s = 0; for (let i = 0; i < a.length; i++) s += Math.abs(a[i] - b[i]) > 10;
                                  return s; };
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_viewer(result: Path, port: int, log_path: Path, extra=()) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process by the caller's terminate
    return subprocess.Popen([sys.executable, "-m", "HCCTwinLib.cli", "view", str(result), "--port", str(port),
                             *extra], stdout=log, stderr=subprocess.STDOUT)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the viewer exited with {proc.returncode} before serving")
        try:
            urllib.request.urlopen(url, timeout=0.5)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def wait_quiet(page, quiet_ms: int = 700, timeout_s: float = 10.0) -> None:
    """Until no view received a frame for ``quiet_ms`` (a fast frame, then a still-quality frame, follow a change)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        idle = page.evaluate("() => performance.now() - Math.max(0, ...window.__frames.map(f => f.t))")
        if idle >= quiet_ms:
            return
        time.sleep((quiet_ms - idle) / 1000 + 0.02)


def change(page, selector: str) -> dict:
    """Click ``selector``: seconds to the first virtual frame that differs, and the pixels that changed in the
    virtual and the pre-treatment panels once the page is quiet."""
    wait_quiet(page)
    before_v, before_p = (_png(page.locator(p).screenshot()) for p in ("#view-virtual", "#view-pre"))
    page.evaluate("() => { window.__ref = window.__last['view-virtual']; }")
    t_click = page.evaluate(f"() => {{ const t = performance.now(); document.querySelector('{selector}').click(); "
                            f"return t; }}")
    frame = page.wait_for_function(
        f"""() => {{ const f = window.__frames.find(f => f.panel === 'view-virtual' && f.t > {t_click} &&
                                                   window.__thumbDiff(f.thumb, window.__ref.thumb) >= 3);
                    return f ? {{t: f.t}} : null; }}""", timeout=20000, polling="raf").json_value()
    wait_quiet(page)
    after_v, after_p = (_png(page.locator(p).screenshot()) for p in ("#view-virtual", "#view-pre"))
    return {"seconds": (frame["t"] - t_click) / 1000.0,
            "virtual_changed_px": int((np.abs(after_v - before_v).max(axis=2) > 10).sum()),
            "pre_changed_px": int((np.abs(after_p - before_p).max(axis=2) > 10).sum())}


def visibly_different(result: Path, a: tuple[str, int], b: tuple[str, int], min_px: int = 12) -> bool:
    """Whether the virtual views of states ``a`` and ``b`` (regimen, week) differ where the frame detector looks: the
    slice the viewer opens on (the largest tumour cross-section), the viewer's phase at its abdominal window, reduced
    to the detector's 96 x 96 grey thumbnail (block means), at least ``min_px`` thumbnail pixels more than 10 grey
    levels apart (the detector needs 3 of its own; the slice fills only part of the panel, hence the margin). Two
    close time points can look the same there (e.g. lipiodol, white at this window, whose HU alone changes, or a
    change of a few voxels that the thumbnail averages away); a change that shows nothing there cannot be timed by
    its frame."""
    from HCCTwinLib.io import read_image
    from HCCTwinLib.labels import lesion_focus
    from HCCTwinLib.scene.nodes import ABDOMEN_WINDOW_LEVEL
    from HCCTwinLib.scene.viewer import ResultFolder

    folder = ResultFolder(result)
    labels, _ = read_image(folder.pre("labels"), labels=True)
    focus = lesion_focus(labels)
    k = labels.shape[0] // 2 if focus is None else focus[0]
    width, level = ABDOMEN_WINDOW_LEVEL

    def thumb(state):
        image, _ = read_image(folder.virtual(*state))
        grey = np.clip((image[k].astype(float) - (level - width / 2)) / width * 255.0, 0, 255)
        for axis in (0, 1):
            n = grey.shape[axis]
            edges = np.unique(np.linspace(0, n, min(n, 96) + 1).astype(int))[:-1]
            counts = np.diff(np.append(edges, n))
            grey = np.add.reduceat(grey, edges, axis=axis) / (counts[:, None] if axis == 0 else counts[None, :])
        return grey

    return int((np.abs(thumb(a) - thumb(b)) > 10).sum()) >= min_px


def measure(browser, result: Path, work: Path, *, screenshot: Path | None = None, patient_id: str | None = None
            ) -> dict:
    """One run of the viewer on ``result``: timings and the checks of what the page shows (raises AssertionError
    when the page does not behave)."""
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.add_init_script(INSTRUMENT_JS)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    out: dict = {}
    t0 = time.perf_counter()
    proc = start_viewer(result, port, work / f"viewer_{port}.log")
    try:
        wait_http(url, proc)
        out["http_up_s"] = time.perf_counter() - t0
        page.goto(url)
        page.wait_for_function(
            """() => { const ids = [...document.querySelectorAll('[id^="view-"]')].map(e => e.id);
                       return ids.length >= 2 && ids.every(id => window.__last[id] && window.__last[id].mean > 5); }""",
            timeout=90000, polling="raf")
        out["first_paint_s"] = time.perf_counter() - t0
        out["views"] = page.evaluate("() => [...document.querySelectorAll('[id^=\"view-\"]')].map(e => e.id)")
        wait_quiet(page)
        content = page.content()
        assert not patient_id or patient_id not in content, "the patient ID is shown without --show-patient-id"
        out["table_rows"] = page.locator("#results-table tbody tr").count()
        out["survival_image"] = page.locator("#survival-img").count()
        regimens = page.evaluate("() => [...document.querySelectorAll('#regimen-select .v-btn')].map(b => b.id)")
        weeks = page.evaluate("() => [...document.querySelectorAll('#week-select .v-btn')].map(b => b.id)")
        active = page.evaluate("() => document.querySelector('#regimen-select .v-btn--active').id")
        out["regimen_change"] = change(page, "#" + next(r for r in regimens if r != active))
        active = page.evaluate("() => document.querySelector('#week-select .v-btn--active').id")
        out["timepoint_change"] = change(page, "#" + next(w for w in reversed(weeks) if w != active))
        out["uncertainty_toggle"] = change(page, "#uncertainty-toggle")
        # and off again: the further changes are timed on the image itself (under the overlay a small change of the
        # virtual image, e.g. two close time points, can stay below the frame detector's threshold)
        out["uncertainty_off"] = change(page, "#uncertainty-toggle")
        more, unseen = [], []

        def state():
            r = page.evaluate("() => document.querySelector('#regimen-select .v-btn--active').id")
            w = page.evaluate("() => document.querySelector('#week-select .v-btn--active').id")
            return r.removeprefix("regimen-"), int(w.removeprefix("week-"))

        for sel in [*(f"#{w}" for w in weeks), *(f"#{r}" for r in regimens)]:
            if "v-btn--active" in (page.get_attribute(sel, "class") or ""):
                continue
            now = state()
            target = (sel[len("#regimen-"):], now[1]) if sel.startswith("#regimen-") else \
                (now[0], int(sel[len("#week-"):]))
            if visibly_different(result, now, target):
                more.append(change(page, sel)["seconds"])
            else:  # clicked all the same; nothing on screen to time
                page.click(sel)
                wait_quiet(page)
                unseen.append(sel[1:])
            assert state() == target, f"{sel}: the page shows {state()}, not {target}"
        out["more_changes_s"] = more
        out["more_changes_not_visible"] = unseen
        if screenshot is not None:
            wait_quiet(page)
            page.screenshot(path=str(screenshot))
        # linked views: the mouse wheel over the pre-treatment view moves every view
        wait_quiet(page)
        before = {p: _png(page.locator(f"#{p}").screenshot()) for p in out["views"]}
        page.locator("#view-pre").hover()
        for _ in range(3):
            page.mouse.wheel(0, 120)
            time.sleep(0.15)
        wait_quiet(page)
        out["wheel_changed_px"] = {p: int((np.abs(_png(page.locator(f"#{p}").screenshot()) - b).max(axis=2) > 10)
                                          .sum()) for p, b in before.items()}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        page.close()
    return out


def check(run: dict) -> list[str]:
    """What the page must do, whatever the speed."""
    problems = []
    if run["table_rows"] < 1:
        problems.append("results table empty")
    if run["survival_image"] != 1:
        problems.append("no survival curve")
    for key in ("regimen_change", "timepoint_change", "uncertainty_toggle", "uncertainty_off"):
        if run[key]["virtual_changed_px"] < 50:
            problems.append(f"{key}: the virtual view did not change")
        if run[key]["pre_changed_px"] >= 50:
            problems.append(f"{key}: the pre-treatment view changed")
    if min(run["wheel_changed_px"].values()) < 50:
        problems.append(f"scrolling did not move every linked view: {run['wheel_changed_px']}")
    return problems


def launch(playwright, chromium: str = CHROMIUM):
    return playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--result", help="result folder (default: `hcctwin demo` into a temporary folder)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chromium", default=CHROMIUM)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--screenshot", help="save the page (after the changes) as this PNG")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="hcctwin-viewer-"))
    result = Path(args.result) if args.result else work / "demo"
    if not args.result:
        subprocess.run([sys.executable, "-m", "HCCTwinLib.cli", "demo", "--out", str(result)], check=True,
                       capture_output=True)
    summary = json.loads((result / "result.json").read_text(encoding="utf-8"))
    runs = []
    with sync_playwright() as p:
        browser = launch(p, args.chromium)
        for i in range(args.runs):
            shot = Path(args.screenshot) if args.screenshot and i == args.runs - 1 else None
            runs.append(measure(browser, result, work, screenshot=shot, patient_id=summary.get("patient_id")))
            print(json.dumps({k: v for k, v in runs[-1].items() if k.endswith("_s")}), flush=True)
        browser.close()
    problems = sorted({p for r in runs for p in check(r)})
    first = [r["first_paint_s"] for r in runs]
    changes = [c for r in runs for c in (r["regimen_change"]["seconds"], r["timepoint_change"]["seconds"],
                                         *r["more_changes_s"])]
    res = {"date": utc_now(), "machine": machine_info(),
           "cpu_cores": len(__import__("os").sched_getaffinity(0)), "result": str(result), "runs": runs,
           "first_paint_s": {"median": float(np.median(first)), "max": float(np.max(first))},
           "change_s": {"median": float(np.median(changes)), "max": float(np.max(changes)), "n": len(changes)},
           "uncertainty_toggle_s": float(np.median([r["uncertainty_toggle"]["seconds"] for r in runs])),
           "targets": TARGETS, "problems": problems}
    res["first_paint_met"] = res["first_paint_s"]["median"] <= TARGETS["first_paint_s"]
    res["change_met"] = res["change_s"]["max"] <= TARGETS["change_s"]
    md = ["# Browser viewer (`hcctwin view`) in headless Chromium", "",
          f"{res['date']}, {machine_line(res['machine'])}, {res['cpu_cores']} cores available (slice views rendered "
          f"offscreen by Mesa on the CPU). Command: `python benchmarks/viewer_timing.py` ({args.runs} runs on the "
          f"`hcctwin demo` "
          f"result; the browser is running before the viewer starts).", "",
          "| measure | median | max | target | met |", "|---|---|---|---|---|",
          f"| first paint after the viewer process starts (s) | {res['first_paint_s']['median']:.2f} | "
          f"{res['first_paint_s']['max']:.2f} | <= {TARGETS['first_paint_s']} | {res['first_paint_met']} |",
          f"| regimen or time-point change, click to new frame (s, n = {len(changes)}) | "
          f"{res['change_s']['median']:.2f} | {res['change_s']['max']:.2f} | <= {TARGETS['change_s']} | "
          f"{res['change_met']} |",
          f"| uncertainty overlay on (s) | {res['uncertainty_toggle_s']:.2f} | | | |", "",
          "Checked on every run: the results table and the survival curve are shown; each regimen, time-point and "
          "uncertainty change alters the virtual view and leaves the pre-treatment view unchanged; the mouse wheel "
          "over the pre-treatment view moves every linked view; no patient ID in the page. Problems: "
          + ("; ".join(problems) if problems else "none") + "."]
    unseen = sorted({c for r in runs for c in r.get("more_changes_not_visible", [])})
    if unseen:
        md += ["", f"Clicked but not timed ({', '.join(unseen)}): the two states look the same at the slice the viewer "
               "opens on, at its window (no new frame differs), so there is no frame to time."]
    write_results(args.out, "viewer_timing", res, md, echo=False)
    print(json.dumps({k: res[k] for k in ("first_paint_s", "change_s", "first_paint_met", "change_met",
                                          "problems")}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
