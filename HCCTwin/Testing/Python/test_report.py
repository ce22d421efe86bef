"""Tumor-board report: HTML / PDF / PNG contents, de-identification, and tolerance of absent data."""

from __future__ import annotations

import base64
import copy
import json
import re

import numpy as np
import pytest
from matplotlib.image import imread

from HCCTwinLib import DISCLAIMER, __version__
from HCCTwinLib.clinical import compute_scores
from HCCTwinLib.regimens import eligibility_warnings, load_catalogue
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
                                        "w16": {"risk": 0.12, "lower": 0.07, "upper": 0.2, "source": "observed"}},
                           "competing_risk": {"horizon_months": 24, "cumulative_incidence": 0.2345,
                                              "method": "cause-specific Cox models"}},
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
    """The text drawn on every page of the PDF plus its metadata (pypdfium2), as UTF-8 bytes."""
    import pypdfium2

    pdf = pypdfium2.PdfDocument(str(path))
    try:
        text = [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
        text += [str(v) for v in pdf.get_metadata_dict().values()]
    finally:
        pdf.close()
    return "\n".join(text).encode("utf-8")


def _page_texts(path) -> list[str]:
    import pypdfium2

    pdf = pypdfium2.PdfDocument(str(path))
    try:
        return [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
    finally:
        pdf.close()


def _pages(path) -> int:
    return len(_page_texts(path))


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
    assert "by 24 mo with death as a competing risk: 23%" in met  # issue 27: the cumulative incidence beside it
    benefit = re.findall(r'<section id="benefit">.*?</section>', html, re.S)[0]
    assert "+1.9" not in benefit and "1.9 (-0.4–4.1) mo" in benefit and "94%" in benefit  # RMST diff + P(A better)
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
    assert full_pdf.count(PATIENT_ID.encode()) >= 4  # drawn on the pages (title, summary, header table) + metadata
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
    # the one-page summary, then the details on a few pages (not 12 pages of text tables)
    assert 3 <= _pages(full["pdf"]) <= 8
    assert _pages(deid["pdf"]) == _pages(full["pdf"])
    import pypdfium2

    meta = pypdfium2.PdfDocument(str(full["pdf"])).get_metadata_dict()
    assert meta["Title"].startswith("HCCTwin tumor-board report") and meta["Author"] == "HCCTwin"
    assert "research use only" in meta["Keywords"]


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


def _with_landmark(summary):
    """The summary with landmark curves as the engine writes them (145-point arrays per regimen and time point)."""
    out = copy.deepcopy(summary)
    t = [0.25 * i for i in range(145)]
    out["survival"]["landmark"] = {
        r: {"timepoints": {f"w{w:02d}": {"landmark_week": w, "landmark_months": w / 4.35, "source": "virtual",
                                         "times_after_landmark": t,
                                         "survival": [float(np.exp(-x / (10 + 5 * k))) for x in t],
                                         "lower": [float(np.exp(-x / (8 + 5 * k))) for x in t],
                                         "upper": [float(np.exp(-x / (12 + 5 * k))) for x in t],
                                         "median": round((10 + 5 * k) * np.log(2), 1), "mrecist": "SD"}
                            for w in (8, 16)},
            "response_features": {"viable_change": [0.1, -0.2]}}
        for k, r in enumerate(REGIMENS)}
    return out


def test_first_page_alone_carries_the_decision(tmp_path):
    """Issue 25: page 1 is the tumor-board summary: patient, scan check, recommendation with its probability and
    the RMST-24 differences, median OS/PFS with CI, 1/2-year OS and the mRECIST of the virtual follow-ups per
    regimen, the key image and the OS curves; the details start on page 2."""
    from matplotlib.figure import Figure

    key = tmp_path / "key_image.png"
    fig = Figure(figsize=(8, 2.4))
    fig.add_subplot().imshow(np.random.default_rng(0).normal(size=(60, 200)), cmap="gray")
    fig.savefig(key)
    summary = _with_landmark(make_summary())
    summary["domain"] = {"verdict": "caution", "headline": "Some measures lie outside the training domain.",
                         "reasons": ["liver hu iqr 47.0 outside the training-domain range 14.4..33.6."]}
    paths = write_report(summary, tmp_path / "r", key_image=key)
    pages = _page_texts(paths["pdf"])
    first = " ".join(pages[0].split())
    catalogue = load_catalogue()
    for needle in (PATIENT_ID, "Tumor-board summary", "Scan check: CAUTION", "liver hu iqr",
                   f"Model recommendation: {catalogue['haic_pd1_len'].name}", "probability 71%",
                   "RMST-24 difference", "+1.9 months alive within 24 months (95% CI -0.4 to +4.1)",
                   "22.0 (18.0–28.0)", "NR (30.1–NR)", "SD → PR → PR", "P(best)", "71%",
                   "Overall survival by regimen", "Pre-treatment | real | virtual"):
        assert needle in first, f"{needle!r} not on the first page"
    assert "1-year OS" in first and "2-year OS" in first and "Median PFS" in first
    assert "Patient and run" not in first and "Patient and run" in pages[1]  # details from page 2
    html = paths["html"].read_text(encoding="utf-8")
    assert html.index('id="summary"') < html.index('id="header"')
    # the first page carries the key image and the OS plot as pictures
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    page = pypdfium2.PdfDocument(str(paths["pdf"]))[0]
    assert len(list(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]))) >= 2


_RAW_ARRAY = re.compile(r"(?:-?\d+(?:\.\d+)?(?:e-?\d+)?\s*[,;]\s*){12,}")


def test_no_section_prints_raw_arrays_and_every_page_renders(tmp_path):
    """The landmark curves (arrays of 145 values) and every other curve are plots, never numbers in text; every
    page renders to a non-blank PNG."""
    import pypdfium2

    summary = _with_landmark(make_summary())
    paths = write_report(summary, tmp_path)
    assert "landmark_png" in paths
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", paths["html"].read_text(encoding="utf-8"))
    text = re.sub(r"<[^>]+>", " ", html)
    assert not _RAW_ARRAY.search(text), _RAW_ARRAY.search(text).group(0)[:200]
    pdf_text = _pdf_text(paths["pdf"]).decode()
    assert not _RAW_ARRAY.search(pdf_text)
    assert "Dynamic (landmark) risk" in pdf_text and "from w08" in pdf_text
    pdf = pypdfium2.PdfDocument(str(paths["pdf"]))
    for i in range(len(pdf)):
        png = tmp_path / f"page{i + 1}.png"
        pdf[i].render(scale=1.0).to_pil().save(png)
        pixels = imread(png)[..., :3]
        assert pixels.shape[0] > pixels.shape[1] > 500 and pixels.std() > 0.02, f"page {i + 1} is blank"


def test_predict_draws_the_key_image_and_the_report_shows_it(pre_folder, tmp_path):
    """`hcctwin predict --report` draws key_image.png (pre | virtual per regimen at the largest lesion) and the
    report's first page shows it; `hcctwin report` on that folder finds it again."""
    from HCCTwinLib.cli import main

    pre = pre_folder
    out = tmp_path / "out"
    assert main(["predict", "--pre", str(pre), "--regimens", "tace_pd1_len,haic_pd1_len", "--weeks", "8",
                 "--samples", "1", "--report", "--out", str(out)]) == 0
    key = imread(out / "key_image.png")[..., :3]
    assert key.shape[1] > 2 * key.shape[0] and key.std() > 0.05  # three panels side by side, not blank
    assert "Pre-treatment | real | virtual" in _page_texts(out / "report.pdf")[0]
    assert main(["report", "--result", str(out), "--out", str(tmp_path / "again")]) == 0
    assert "Pre-treatment | real | virtual" in _page_texts(tmp_path / "again" / "report.pdf")[0]


def test_scene_table_and_report_write_the_same_numbers():
    """One formatting (HCCTwinLib.formatting) for the Slicer results table, the viewer and the report: the same
    curve gives the same median, 1/2-year OS and RMST text in both (they used to disagree: "10.2-19.6" vs
    "10.2–19.6", "not reached (...)" vs "NR (...)")."""
    from types import SimpleNamespace

    from HCCTwinLib.report.content import build_sections
    from HCCTwinLib.scene.build import COL_MEDIAN_OS, COL_OS12, COL_OS24, COL_RMST24, survival_table_columns

    summary = make_summary()
    table = survival_table_columns(SimpleNamespace(regimens=list(REGIMENS), weeks=[8, 16, 24],
                                                   survival=summary["survival"], response=summary["response"]))
    report_rows = {k: row for sec in build_sections(summary) if sec.key == "survival" for b in sec.blocks
                   if b.kind == "table" for k, row in zip(b.row_keys, b.rows)}
    for n, rid in enumerate(REGIMENS):
        median, s12, s24, rmst = report_rows[rid][1:5]
        assert (table[COL_MEDIAN_OS][n], table[COL_OS12][n], table[COL_OS24][n], table[COL_RMST24][n]) == (
            median, s12, s24, rmst)
    assert "NR (30.1–NR)" in table[COL_MEDIAN_OS]


def test_the_scan_check_says_when_a_phase_was_moved():
    from HCCTwinLib.report.content import domain_section

    summary = {"domain": {"verdict": "caution", "headline": "Check the scan.", "reasons": ["caution: x"]},
               "phase_alignment": [{"phase": "portal", "reference": "arterial", "shift_mm": 5.42, "applied": True},
                                   {"phase": "delayed", "reference": "arterial", "shift_mm": 0.1, "applied": False}]}
    texts = [b.text for b in domain_section(summary).blocks if b.kind == "text"]
    assert texts == ["Phase alignment: the portal phase was shifted by 5.4 mm onto the arterial phase before "
                     "segmentation (separate breath-holds)."]
    summary["phase_alignment"] = []
    assert not [b for b in domain_section(summary).blocks if b.kind == "text"]


def test_sampled_responses_are_shown_beside_each_virtual_reading():
    """A virtual follow-up read on its sampled responses: the report lists the categories of the samples beside the
    virtual follow-up's own (and the Slicer table says how many samples agree); none without samples."""
    from types import SimpleNamespace

    from HCCTwinLib.formatting import fmt_reading, fmt_sampled
    from HCCTwinLib.report.content import build_sections
    from HCCTwinLib.scene.build import survival_table_columns

    summary = make_summary()
    plain = [b for sec in build_sections(summary) if sec.key == "survival" for b in sec.blocks if b.kind == "table"]
    rid = REGIMENS[0]
    summary["response"][rid]["w08"]["sampled"] = {"samples": 4, "mrecist": {"PR": 0.25, "SD": 0.75},
                                                  "recist": {"SD": 1.0}}
    tables = [b for sec in build_sections(summary) if sec.key == "survival" for b in sec.blocks if b.kind == "table"]
    assert len(plain) == 1 and len(tables) == 2
    sampled = tables[1]
    assert sampled.header == ["Regimen", "w08"] and sampled.row_keys == [rid]
    cat = summary["response"][rid]["w08"]["mrecist"]
    assert sampled.rows[0][1] == f"{cat}; samples PR 1/4 · SD 3/4"
    assert fmt_sampled(summary["response"][rid]["w08"]) == "PR 1/4 · SD 3/4"
    assert fmt_reading({"mrecist": "SD", "sampled": {"samples": 4, "mrecist": {"PR": 0.25, "SD": 0.75}}}) == \
        "SD (3/4 samples)"
    assert fmt_reading({"mrecist": "PR"}) == "PR" and fmt_reading(None) == "n/a" and fmt_sampled({}) == "n/a"
    table = survival_table_columns(SimpleNamespace(regimens=list(REGIMENS), weeks=[8, 16, 24],
                                                   survival=summary["survival"], response=summary["response"]))
    assert table["mRECIST w08"][0] == fmt_reading(summary["response"][rid]["w08"])
    assert table["mRECIST w08"][1] == summary["response"][REGIMENS[1]]["w08"]["mrecist"]
