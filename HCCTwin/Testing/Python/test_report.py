"""Tumor-board report: HTML / PDF / PNG contents, de-identification, and tolerance of absent data."""

from __future__ import annotations

import base64
import copy
import json
import re
import zlib

import numpy as np
import pytest
from matplotlib.image import imread

from HCCTwinLib import DISCLAIMER, __version__
from HCCTwinLib.clinical import compute_scores, eligibility_warnings
from HCCTwinLib.regimens import load_catalogue
from HCCTwinLib.report import plot_survival, write_report

PATIENT_ID = "HCC-PT-90417"
PATIENT_NAME = "Doe^Jane"
REGIMENS = ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]
MEDIANS_OS = {"tace_pd1_len": 22.0, "haic_pd1_len": 27.5, "pd1_tki": None}  # pd1_tki: median not reached
CLINICAL = {"age_years": 58, "sex": "F", "ecog": 1, "albumin_g_l": 37.0, "bilirubin_umol_l": 18.0, "inr": 1.1,
            "ascites": "none", "encephalopathy": "none", "afp_ng_ml": 820.0, "n_tumors": 3, "max_diameter_mm": 81.0,
            "pvtt": 1, "extrahepatic_spread": 0, "resectable": 0}


def _curve(median, seed, horizon=36.0):
    """A step curve on a monthly grid with a 95% band, shaped like what the survival engineer's model writes."""
    rng = np.random.default_rng(seed)
    times = np.arange(0.0, horizon + 0.1, 1.0)
    hazard = np.log(2) / (median if median else 70.0)
    surv = np.exp(-hazard * times) * (1 - 0.002 * rng.random(times.size))
    surv[0] = 1.0
    lower, upper = np.clip(surv - 0.04 - 0.003 * times, 0, 1), np.clip(surv + 0.04 + 0.003 * times, 0, 1)
    s12, s24 = float(np.exp(-hazard * 12)), float(np.exp(-hazard * 24))
    rmst = float(np.trapezoid(np.exp(-hazard * times[times <= 24]), times[times <= 24]))
    lower[3] = None  # a null inside the band (NaN in result.json) must not break the plot
    return {"times": times.tolist(), "survival": surv.tolist(), "lower": [None if np.isnan(v) else v for v in lower],
            "upper": upper.tolist(), "median": median,
            "median_ci": [median - 4.0, median + 6.0] if median else [30.1, None],
            "s12": s12, "s12_ci": [s12 - 0.07, s12 + 0.06], "s24": s24, "s24_ci": [s24 - 0.09, None],
            "rmst24": rmst, "rmst24_ci": [rmst - 1.5, rmst + 1.4], "interval_method": "posterior 95% (bootstrap)"}


def make_summary(*, survival=True, followups=True, pfs=True):
    """A result.json as TwinResult.summary() writes it, with the survival part of the agreed schema."""
    scores = compute_scores(CLINICAL)
    summary = {
        "hcctwin_version": __version__, "disclaimer": DISCLAIMER, "patient_id": PATIENT_ID, "modality": "CT",
        "phases": ["arterial", "portal"],
        "geometry": {"shape_kji": [48, 96, 96], "spacing_mm": [0.9, 0.9, 3.0], "origin_lps_mm": [0, 0, 0],
                     "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        "regimens": list(REGIMENS), "weeks": [8, 16, 24],
        "clinical": {**CLINICAL, "patient_name": PATIENT_NAME},
        "scores": scores,
        "eligibility_warnings": {r: eligibility_warnings(r, CLINICAL) for r in REGIMENS},
        "label_volumes_ml": {"background": 0.0, "liver": 1480.2, "viable_tumor": 212.4, "necrosis": 31.0,
                             "pvtt": 4.2, "tumor_total": 247.6},
        "real_followup": None, "survival": {}, "virtual_followups": {},
        "provenance": {"segmentation": "model hcctwin-seg 0.1.0", "generator": "model hcctwin-twin 0.1.0, 4 samples, "
                                                                               f"seed 0 (case {PATIENT_ID})"},
        "timings_s": {"segmentation": 3.2, "generate": 41.0},
        "notes": [],
        "models": {"segmentation": {"name": "hcctwin-seg", "version": "0.1.0", "sha256": "ab" * 32,
                                    "training_data": "simulated cohort (seed 11), 400 patients",
                                    "metrics": {"dice_tumor": 0.81, "dice_liver": 0.95}}},
    }
    if followups:
        summary["virtual_followups"] = {
            r: {f"w{w:02d}": {"liver": 1470.0, "viable_tumor": round(212.4 * (1 - 0.01 * w * k), 1),
                              "necrosis": 31.0 + w, "pvtt": 4.0, "tumor_total": 250.0} for w in (8, 16, 24)}
            for k, r in enumerate(REGIMENS, 1)}
        summary["response"] = {r: {f"w{w:02d}": {"mrecist": ["SD", "PR", "CR"][min(k, 2)] if w > 8 else "SD",
                                                 "recist": "SD"} for w in (8, 16, 24)}
                               for k, r in enumerate(REGIMENS)}
    else:
        summary["notes"].append("Generator: no model file installed (run `hcctwin train twin`); virtual "
                                "follow-ups are not available.")
    if survival:
        endpoints = {"os": {r: _curve(MEDIANS_OS[r], i) for i, r in enumerate(REGIMENS)}}
        if pfs:
            endpoints["pfs"] = {r: _curve(m / 2 if m else 14.0, 10 + i) for i, (r, m) in enumerate(MEDIANS_OS.items())}
        summary["survival"] = {
            "model": "hcctwin-surv 0.1.0 (Weibull AFT, demo weights)",
            "endpoints": endpoints,
            "rmst24_differences": [
                {"regimen_a": "haic_pd1_len", "regimen_b": "tace_pd1_len", "tau_months": 24, "estimate": 1.9,
                 "lower": -0.4, "upper": 4.1, "prob_a_better": 0.94},
                {"regimen_a": "pd1_tki", "regimen_b": "tace_pd1_len", "tau_months": 24, "estimate": float("nan"),
                 "lower": None, "upper": None, "prob_a_better": None}],
            "recommendation": {"regimen": "haic_pd1_len", "endpoint": "os", "tau_months": 24, "eligible_only": True,
                               "probability_best": {"haic_pd1_len": 0.71, "tace_pd1_len": 0.22, "pd1_tki": 0.07}},
            "metastasis": {"horizon_months": 24, "risk": 0.31, "lower": 0.22, "upper": 0.41,
                           "points": {"afp_ng_ml": 28.0, "pvtt": 40.0, "total": 68.0},
                           "landmark": {"w08": {"risk": 0.18, "lower": 0.11, "upper": 0.27, "source": "virtual"},
                                        "w16": {"risk": 0.12, "lower": 0.07, "upper": 0.2, "source": "observed"}}},
            "notes": ["<script>alert('x')</script> survival note with markup"],
        }
    else:
        summary["notes"].append("Per-regimen survival curves are not available yet in this version (no survival "
                                "model shipped).")
    # round-trip through JSON as result.json does (NaN stays NaN, None is null)
    return json.loads(json.dumps(summary))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Full report and de-identified report, with a fake layout PNG (written by matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    base = tmp_path_factory.mktemp("report")
    fig = Figure(figsize=(6, 2))
    FigureCanvasAgg(fig)
    for i in range(3):
        fig.add_subplot(1, 3, i + 1).imshow(np.random.default_rng(i).random((20, 20)), cmap="gray")
    layout = base / "layout.png"
    fig.savefig(layout)
    summary = make_summary()
    images = {f"Linked views (pre | real | virtual) for {PATIENT_ID}": layout}
    full = write_report(summary, base / "full", images=images)
    deid = write_report(summary, base / "deid", images=images, deidentify=True)
    return summary, full, deid


def _pdf_text(path) -> bytes:
    """All PDF bytes plus the text of every content stream (matplotlib compresses the streams and writes text as
    TJ arrays with one glyph per string, so the raw bytes alone would never show a drawn word)."""
    raw = path.read_bytes()
    out = [raw]
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", raw, re.S):
        try:
            stream = zlib.decompress(m.group(1))
        except zlib.error:
            continue
        if b"/Image" in raw[raw.rfind(b" obj", 0, m.start()):m.start()]:  # pixels, not text
            continue
        for arr in re.findall(rb"\[(.*?)\]\s*TJ", stream, re.S):
            out.append(b"".join(re.findall(rb"\(((?:\\.|[^\\)])*)\)", arr)))
        out += re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", stream)
    return b"\n".join(out)


def _pages(path) -> int:
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", path.read_bytes()))


def test_files_written_and_html_self_contained(reports):
    summary, full, _ = reports
    assert set(full) == {"html", "pdf", "survival_png", "survival_pfs_png"}
    html = full["html"].read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # embedded images only, no external resource of any kind
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 3 and all(s.startswith("data:image/png;base64,") for s in imgs)  # layout, OS, PFS
    assert base64.b64decode(imgs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(?!data:)', html) and "<link" not in html and "<script" not in html
    assert "&lt;script&gt;" in html  # the summary's markup is escaped, not executed
    assert PATIENT_ID in html and "<style>" in html


def test_html_contents(reports):
    summary, full, _ = reports
    html = full["html"].read_text(encoding="utf-8")
    catalogue = load_catalogue()
    for rid in REGIMENS:  # one row per regimen in the survival table, with its display name
        rows = re.findall(rf'<tr data-key="{rid}">(.*?)</tr>', html, re.S)
        assert len(rows) >= 3  # eligibility, survival, recommendation tables
        assert any(catalogue[rid].name.replace("+", "") in r.replace("+", "") for r in rows)
    surv_row = re.findall(r'<section id="survival">.*?</section>', html, re.S)[0]
    tace = re.search(r'<tr data-key="tace_pd1_len">(.*?)</tr>', surv_row, re.S).group(1)
    assert "22.0 (18.0–28.0)" in tace  # median OS with CI
    assert "w16: PR / SD" in re.search(r'<tr data-key="haic_pd1_len">(.*?)</tr>', surv_row, re.S).group(1)
    pd1 = re.search(r'<tr data-key="pd1_tki">(.*?)</tr>', surv_row, re.S).group(1)
    assert "NR (30.1–NR)" in pd1  # median not reached
    assert "31% (22–41%) at 24 mo" in surv_row
    met = re.findall(r'<section id="metastasis">.*?</section>', html, re.S)[0]
    assert re.search(r"w08</td>\s*<td>virtual</td>\s*<td>18% \(11–27%\)", met)  # risk updated at the landmarks
    assert re.search(r"w16</td>\s*<td>observed</td>\s*<td>12% \(7–20%\)", met)
    assert "+1.9" not in html and "1.9 (-0.4–4.1) mo" in html and "94%" in html  # RMST difference + P(A better)
    assert "probability 71%" in html and "eligible regimens only" in html
    scores = summary["scores"]
    assert f"<td>BCLC stage</td><td>{scores['bclc']}</td>" in html
    assert "ALBI grade" in html and "mHAP-II" in html and "Child-Pugh" in html
    assert "hcctwin-seg" in html and "dice_tumor" in html and "hcctwin-surv" in html  # model cards, provenance
    assert DISCLAIMER in html and "synthetic" in html and "research use only" in html.lower()
    assert "Viable tumour" in html and "212.4" in html


def test_deidentified_report_leaks_no_identifier(reports):
    _, full, deid = reports
    full_html = full["html"].read_text(encoding="utf-8")
    deid_html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", deid["html"].read_text(encoding="utf-8"))
    full_pdf, deid_pdf = _pdf_text(full["pdf"]), _pdf_text(deid["pdf"])
    assert PATIENT_ID in full_html and PATIENT_ID.encode() in full_pdf  # the check can fail
    assert PATIENT_ID.encode() in full["pdf"].read_bytes()  # (in the metadata)
    assert full_pdf.count(PATIENT_ID.encode()) >= 3  # and drawn on the pages (title, header table, provenance)
    for ident in (PATIENT_ID, PATIENT_NAME):
        assert ident not in deid_html
        assert ident.encode() not in deid_pdf
    assert "de-identified" in deid_html and b"de-identified" in deid_pdf
    # the rest of the content is still there
    assert deid_html.count('<tr data-key="tace_pd1_len">') == full_html.count('<tr data-key="tace_pd1_len">')


def test_pdf_pages_and_metadata(reports):
    _, full, deid = reports
    raw = full["pdf"].read_bytes()
    assert raw.startswith(b"%PDF")
    # 2 text pages (header .. volumes) + layout, OS and PFS image pages + 3 text pages (tables, cards, notes)
    assert _pages(full["pdf"]) == 8
    assert _pages(deid["pdf"]) == _pages(full["pdf"])
    assert b"HCCTwin tumor-board report" in raw and b"/Creator (HCCTwin" in raw


def test_survival_png_has_one_coloured_curve_per_regimen(reports, tmp_path):
    summary, full, _ = reports
    img = imread(full["survival_png"])[..., :3]
    assert img.std() > 0.05  # not blank
    catalogue = load_catalogue()
    for rid in REGIMENS:
        rgb = np.array([int(catalogue[rid].color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        hits = (np.abs(img - rgb).max(axis=-1) < 0.03).sum()
        assert hits > 300, f"curve of {rid} ({catalogue[rid].color}) not drawn: {hits} pixels"
    # a regimen missing from the survival part is not drawn
    one = copy.deepcopy(summary)
    del one["survival"]["endpoints"]["os"]["pd1_tki"]
    img2 = imread(plot_survival(one, tmp_path / "two.png"))[..., :3]
    green = np.array([int(catalogue["pd1_tki"].color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    assert (np.abs(img2 - green).max(axis=-1) < 0.03).sum() < 20
    # two regimens with the same curve: both stay visible (a line style per regimen, not only a colour)
    same = copy.deepcopy(summary)
    os_curves = same["survival"]["endpoints"]["os"]
    for rid in REGIMENS[1:]:
        os_curves[rid] = copy.deepcopy(os_curves[REGIMENS[0]])
    img3 = imread(plot_survival(same, tmp_path / "same.png"))[..., :3]
    for rid in REGIMENS:
        rgb = np.array([int(catalogue[rid].color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        hits = (np.abs(img3 - rgb).max(axis=-1) < 0.03).sum()
        assert hits > 140, f"curve of {rid} hidden under another one: {hits} pixels"


def test_absent_data_gives_not_available_with_reason(tmp_path):
    summary = make_summary(survival=False, followups=False)
    summary.pop("models")
    summary.pop("response", None)
    summary["scores"] = {}
    summary["eligibility_warnings"] = {}
    paths = write_report(summary, tmp_path)
    assert set(paths) == {"html", "pdf", "survival_png"}  # no PFS plot without PFS curves
    html = paths["html"].read_text(encoding="utf-8")
    assert "Not available: Per-regimen survival curves are not available yet" in html
    assert "Not available: virtual follow-ups: Generator: no model file installed" in html
    assert html.count("Not available") >= 6
    assert paths["pdf"].read_bytes().startswith(b"%PDF") and _pages(paths["pdf"]) >= 2
    assert imread(paths["survival_png"]).std() > 0.01


def test_minimal_summary_does_not_crash(tmp_path):
    paths = write_report({"patient_id": "X1", "notes": []}, tmp_path)
    html = paths["html"].read_text(encoding="utf-8")
    assert "<tr" in html and "Not available" in html and DISCLAIMER in html


def test_deidentify_keeps_only_known_clinical_values():
    """Issue 24 item 2: a site's extra columns (names, date of birth, initials) never survive --deidentify, and their
    values are scrubbed from every text too (allow-list, not a list of key names)."""
    from HCCTwinLib.report.content import deidentify_summary

    summary = {"patient_id": "PAT-77", "clinical": {"PatientName": "Doe^Jane", "Patient Name": "Jane Doe",
                                                    "dob": "1950-01-01", "Surname": "Doeson", "initials": "JD",
                                                    "age_years": 61, "bilirubin_umol_l": 20.0, "os_event": 1,
                                                    "smoker": "none"},
               "notes": ["read for Jane Doe (Doe^Jane), born 1950-01-01; Doeson"]}
    out = deidentify_summary(summary)
    assert out["clinical"] == {"age_years": 61, "bilirubin_umol_l": 20.0, "os_event": 1}
    text = " ".join(out["notes"])
    for ident in ("Jane Doe", "Doe^Jane", "1950-01-01", "Doeson", "PAT-77"):
        assert ident not in text, ident
    assert out["patient_id"] == "de-identified"
