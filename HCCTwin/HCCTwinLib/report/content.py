"""What the report says, independent of how it is drawn: ``result.json`` (the summary dict) -> sections of blocks.

The HTML and the PDF writers render the same :class:`Section` list, so both always carry the same content. Every
section tolerates absent data: it then holds a "not available" block with the reason taken from the summary's notes.
Numbers that are ``None`` or NaN (``null`` in JSON) print as "n/a".
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .. import DISCLAIMER, __version__
from ..formatting import fmt, fmt_ci, fmt_median, fmt_pct, fmt_sampled, num  # noqa: F401 - one formatting for report and scene
from ..survival_result import Curve, Metastasis, SurvivalResult

DEMO_SENTENCE = ("The shipped demo weights are trained on synthetic (simulated) data only. This report is for "
                 "research use only and must not be used for clinical or treatment decisions.")
DEIDENTIFIED = "de-identified"
ENDPOINT_NAMES = {"os": "Overall survival", "pfs": "Progression-free survival"}
#: Keys that name or identify a patient; dropped everywhere when de-identifying.
IDENTIFYING_KEYS = ("patient_id", "patient_name", "name", "mrn", "accession_number", "birth_date", "date_of_birth",
                    "dicom_patient_id", "dicom_patient_name", "study_uid", "series_uid", "study_instance_uid",
                    "series_instance_uid")
_SCORE_LABELS = {
    "albi_score": "ALBI score", "albi_grade": "ALBI grade", "child_pugh_points": "Child-Pugh points",
    "child_pugh_class": "Child-Pugh class", "child_pugh_label": "Child-Pugh", "bclc": "BCLC stage",
    "hap_points": "HAP points", "hap_class": "HAP class", "mhap2_points": "mHAP-II points",
    "mhap2_class": "mHAP-II class", "six_twelve_cm": "Six-and-twelve (cm)",
    "six_twelve_stratum": "Six-and-twelve stratum", "up_to_seven_value": "Up-to-seven value",
    "within_up_to_seven": "Within up-to-seven", "tbs": "Tumour burden score", "tbs_group": "Tumour burden group",
}
_VOLUME_LABELS = {"liver": "Liver", "viable_tumor": "Viable tumour", "necrosis": "Necrosis", "pvtt": "PVTT",
                  "tumor_total": "Tumour total", "background": "Background"}


# ----------------------------------------------------------------------------------------------------------------
# Blocks and sections
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Block:
    """One piece of a section. ``kind``: "text", "list" (``items``), "table" (``header`` + ``rows``, optional
    ``row_keys`` naming each row, e.g. the regimen id), "image" (``image`` path + ``text`` caption), "na" (``text``:
    the reason), "warning" (``text``)."""

    kind: str
    text: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    row_keys: list[str] = field(default_factory=list)
    image: str | None = None


@dataclass
class Section:
    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------

def scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    if value is None:
        return "n/a"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {scalar_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(scalar_text(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# Regimens, curves, reasons
# ----------------------------------------------------------------------------------------------------------------

_FALLBACK_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def regimen_info(regimen_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{id: {"name", "short_name", "color"}}`` from the regimen catalogue; an id the catalogue does not know (a
    site's own regimen) keeps its id as name and gets a distinct fallback colour."""
    try:
        from ..regimens import load_catalogue

        catalogue = load_catalogue()
    except Exception:  # a broken site catalogue must not stop the report
        catalogue = {}
    out, used = {}, set()
    for rid in regimen_ids:
        reg = catalogue.get(rid)
        if reg is not None:
            out[rid] = {"name": reg.name, "short_name": reg.short_name, "color": reg.color}
            used.add(reg.color.lower())
    spare = [c for c in _FALLBACK_COLORS if c not in used]
    for rid in regimen_ids:
        if rid not in out:
            color = spare.pop(0) if spare else _FALLBACK_COLORS[len(out) % len(_FALLBACK_COLORS)]
            out[rid] = {"name": str(rid), "short_name": str(rid), "color": color}
    return out


def survival_part(summary: Mapping) -> SurvivalResult:
    """The survival part of ``summary`` as types (an empty result when there is none or it is not an object)."""
    return SurvivalResult.from_summary(summary)


def curves(summary: Mapping, endpoint: str = "os") -> dict[str, Curve]:
    """The endpoint's curves ``{regimen: Curve}`` that have at least one time point (empty when none)."""
    return survival_part(summary).curves(endpoint, with_points=True)


def all_notes(summary: Mapping) -> list[str]:
    notes = [str(n) for n in summary.get("notes") or []]
    notes += [str(n) for n in survival_part(summary).notes if str(n) not in notes]
    return notes


def reason(summary: Mapping, *keywords: str, default: str) -> str:
    """The first note mentioning one of ``keywords`` (case-insensitive), else ``default``."""
    for note in all_notes(summary):
        low = note.lower()
        if any(k.lower() in low for k in keywords):
            return note
    return default


def _endpoint_key(endpoint: Any) -> str:
    """The recommendation's endpoint as a key of :data:`ENDPOINT_NAMES` ("os" when it does not say)."""
    return "os" if endpoint is None else str(endpoint)


def regimen_order(summary: Mapping) -> list[str]:
    """Regimens in the order of the run, then any others the survival / response parts mention."""
    order = [str(r) for r in summary.get("regimens") or []]
    extra: list[str] = []
    for endpoint in ("os", "pfs"):
        extra += list(curves(summary, endpoint))
    for part in (summary.get("response"), summary.get("eligibility_warnings"), summary.get("virtual_followups")):
        if isinstance(part, Mapping):
            extra += [str(k) for k in part]
    for rid in extra:
        if rid not in order:
            order.append(rid)
    return order


# ----------------------------------------------------------------------------------------------------------------
# De-identification
# ----------------------------------------------------------------------------------------------------------------

def identifiers(summary: Mapping) -> list[str]:
    """Strings that identify the patient (ID, name, ...), longest first."""
    found = set()
    for part in (summary, summary.get("clinical") if isinstance(summary.get("clinical"), Mapping) else {}):
        for key in IDENTIFYING_KEYS:
            value = part.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                found.add(str(value).strip())
    return sorted(found, key=len, reverse=True)


def _clinical_allow() -> frozenset[str]:
    from ..clinical import CLINICAL_FIELDS

    outcomes = ("regimen", "os_months", "os_event", "pfs_months", "pfs_event", "metastasis_months",
                "metastasis_event", "best_response_mrecist")
    return frozenset((*CLINICAL_FIELDS, *outcomes))


#: the clinical values a de-identified output keeps (issue 24: an allow-list, not a list of names to remove)
CLINICAL_ALLOW = _clinical_allow()
#: values of dropped columns that are ordinary words, not identifiers (never searched for inside text)
_HARMLESS_WORDS = frozenset({"none", "true", "false", "male", "female", "unknown", "absent", "present", "n/a"})


def deidentify_summary(summary: Mapping) -> dict:
    """A copy without identifying keys and with every identifier inside any string (notes, provenance, model
    names, captions) replaced by "de-identified". Identifiers shorter than 3 characters are dropped as keys but not
    searched for inside text (that would mangle ordinary words and numbers)."""
    clinical = summary.get("clinical") if isinstance(summary.get("clinical"), Mapping) else None
    dropped = [str(v).strip() for k, v in (clinical or {}).items()
               if k not in CLINICAL_ALLOW and isinstance(v, str) and len(v.strip()) >= 4
               and v.strip().lower() not in _HARMLESS_WORDS]
    ids = sorted({i for i in [*identifiers(summary), *dropped] if len(i) >= 3}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(i) for i in ids), re.IGNORECASE) if ids else None

    def scrub(value):
        if isinstance(value, Mapping):
            return {scrub(str(k)): scrub(v) for k, v in value.items() if str(k).lower() not in IDENTIFYING_KEYS}
        if isinstance(value, (list, tuple)):
            return [scrub(v) for v in value]
        if isinstance(value, str) and pattern is not None:
            return pattern.sub(DEIDENTIFIED, value)
        return value

    out = scrub(copy.deepcopy(dict(summary)))
    if clinical is not None:  # an allow-list: a site's extra columns (names, dates of birth, initials) never pass
        out["clinical"] = {k: v for k, v in out.get("clinical", {}).items() if k in CLINICAL_ALLOW}
    out["patient_id"] = DEIDENTIFIED
    return out


def scrub_text(text: str, summary: Mapping) -> str:
    for ident in identifiers(summary):
        if len(ident) >= 3:
            text = re.sub(re.escape(ident), DEIDENTIFIED, text, flags=re.IGNORECASE)
    return text


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------

def disclaimer_text(summary: Mapping) -> str:
    base = str(summary.get("disclaimer") or DISCLAIMER).strip()
    return f"{base} {DEMO_SENTENCE}"


def patient_label(summary: Mapping) -> str:
    pid = summary.get("patient_id")
    return str(pid) if pid not in (None, "") else "not given"


def _na(text: str) -> Block:
    return Block("na", text=f"Not available: {text}")


def header_section(summary: Mapping, date: str | None = None) -> Section:
    surv = survival_part(summary)
    rows = [
        ["Patient", patient_label(summary)],
        ["Report date", date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
        ["HCCTwin version", f"{summary.get('hcctwin_version') or 'n/a'} (report writer {__version__})"],
        ["Modality / phases", f"{summary.get('modality') or 'n/a'} / {scalar_text(summary.get('phases') or 'n/a')}"],
        ["Regimens evaluated", scalar_text([regimen_info([r])[r]["name"] for r in regimen_order(summary)] or "n/a")],
        ["Time points (weeks)", scalar_text(summary.get("weeks") or "n/a")],
        ["Survival model", str(surv.model or "n/a")],
    ]
    return Section("header", "Patient and run", [Block("table", header=["Item", "Value"], rows=rows)])


def domain_section(summary: Mapping) -> Section:
    """The out-of-domain guard's verdict (:mod:`HCCTwinLib.domain`), right under the patient: an "outside" verdict
    says the results are unreliable for this scan before any number is read."""
    sec = Section("domain", "Scan check (out-of-domain guard)")
    dom = summary.get("domain")
    if not isinstance(dom, Mapping) or not dom.get("verdict"):
        sec.blocks.append(_na("the scan was not checked (result written before the guard existed)."))
        return sec
    verdict = str(dom["verdict"])
    headline = str(dom.get("headline") or verdict)
    kind = "text" if verdict == "inside" else "warning"
    sec.blocks.append(Block(kind, text=f"{verdict.upper()}: {headline}"))
    reasons = [str(r) for r in dom.get("reasons") or []]
    if reasons:
        sec.blocks.append(Block("list", items=reasons))
    moved = [a for a in summary.get("phase_alignment") or [] if isinstance(a, Mapping) and a.get("applied")]
    for a in moved:  # the images the models read are not the files as acquired: say so where the scan is checked
        sec.blocks.append(Block("text", text=(
            f"Phase alignment: the {a.get('phase')} phase was shifted by {float(a.get('shift_mm') or 0.0):.1f} mm onto "
            f"the {a.get('reference')} phase before segmentation (separate breath-holds).")))
    return sec


def scores_section(summary: Mapping) -> Section:
    sec = Section("scores", "Clinical scores")
    scores = summary.get("scores")
    if not isinstance(scores, Mapping) or not [k for k in scores if k != "notes"]:
        sec.blocks.append(_na(reason(summary, "clinical", "score", default="no clinical scores in this result.")))
        return sec
    rows = [[_SCORE_LABELS.get(k, k.replace("_", " ")), scalar_text(v)] for k, v in scores.items() if k != "notes"]
    sec.blocks.append(Block("table", header=["Score", "Value"], rows=rows))
    if scores.get("notes"):
        sec.blocks.append(Block("list", items=[str(n) for n in scores["notes"]]))
    clinical = summary.get("clinical")
    if isinstance(clinical, Mapping) and clinical:
        from ..clinical import CLINICAL_FIELDS

        shown = [[k, scalar_text(clinical[k])] for k in CLINICAL_FIELDS if k in clinical]
        if shown:
            sec.blocks.append(Block("text", text="Clinical inputs:"))
            sec.blocks.append(Block("table", header=["Field", "Value"], rows=shown))
    return sec


def eligibility_section(summary: Mapping, info: Mapping) -> Section:
    sec = Section("eligibility", "Eligibility per regimen")
    warnings = summary.get("eligibility_warnings")
    if not isinstance(warnings, Mapping) or not warnings:
        sec.blocks.append(_na(reason(summary, "eligib", "clinical", default="eligibility was not checked.")))
        return sec
    rows, keys = [], []
    for rid in regimen_order(summary):
        if rid not in warnings:
            continue
        items = [str(w) for w in warnings[rid] or []]
        rows.append([info[rid]["name"], "; ".join(items) if items else "no warning"])
        keys.append(rid)
    sec.blocks.append(Block("table", header=["Regimen", "Eligibility warnings"], rows=rows, row_keys=keys))
    return sec


def volumes_section(summary: Mapping, info: Mapping) -> Section:
    sec = Section("volumes", "Tumour volumes (mL)")
    pre = summary.get("label_volumes_ml")
    real = summary.get("real_followup") if isinstance(summary.get("real_followup"), Mapping) else None
    virtual = summary.get("virtual_followups") if isinstance(summary.get("virtual_followups"), Mapping) else {}
    rows: list[list[str]] = []
    keys = [k for k in ("liver", "viable_tumor", "necrosis", "pvtt", "tumor_total")]
    if isinstance(pre, Mapping) and pre:
        keys += [k for k in pre if k not in keys and k != "background"]
        rows.append(["pre-treatment", *[fmt(pre.get(k)) for k in keys]])
    else:
        sec.blocks.append(_na(reason(summary, "segment", default="no segmentation in this result.")))
        return sec
    if real and isinstance(real.get("label_volumes_ml"), Mapping):
        label = f"real follow-up w{int(num(real.get('weeks')) or 0):02d}"
        if real.get("regimen"):
            label += f" ({info.get(real['regimen'], {}).get('short_name', real['regimen'])})"
        rows.append([label, *[fmt(real["label_volumes_ml"].get(k)) for k in keys]])
    n_virtual = 0
    for rid, by_week in virtual.items():
        if not isinstance(by_week, Mapping):
            continue
        for week, vols in sorted(by_week.items()):
            if isinstance(vols, Mapping):
                short = info.get(rid, {}).get("short_name", rid)
                rows.append([f"virtual {short} {week}", *[fmt(vols.get(k)) for k in keys]])
                n_virtual += 1
    sec.blocks.append(Block("table", header=["Volume", *[_VOLUME_LABELS.get(k, k) for k in keys]], rows=rows))
    if n_virtual == 0:
        sec.blocks.append(_na("virtual follow-ups: " + reason(summary, "follow-up", "generator",
                                                             default="none were generated.")))
    return sec


def twin_check_section(summary: Mapping) -> Section | None:
    """The real follow-up against the virtual one of the received regimen and the unchanged pre-treatment scan
    (:mod:`HCCTwinLib.twincheck`); None without a real follow-up."""
    check = summary.get("twin_check") if isinstance(summary.get("twin_check"), Mapping) else None
    if not check:
        return None
    sec = Section("twin_check", f"Twin check: the real follow-up at week {check.get('week')}")
    sec.blocks.append(Block("text", text=str(check.get("headline", ""))))
    virt = check.get("hu_mae_virtual") if isinstance(check.get("hu_mae_virtual"), Mapping) else {}
    unchanged = check.get("hu_mae_copy") if isinstance(check.get("hu_mae_copy"), Mapping) else {}
    rows = [[f"mean |HU difference| from the real scan, {phase} (within {fmt(check.get('margin_mm'))} mm of the "
             f"tumours, {fmt(check.get('region_ml'))} mL)", fmt(virt.get(phase)), fmt(unchanged.get(phase)), "0"]
            for phase in virt]
    viable = check.get("viable_ml") if isinstance(check.get("viable_ml"), Mapping) else {}
    tumour = check.get("tumour_ml") if isinstance(check.get("tumour_ml"), Mapping) else {}
    if viable.get("real") is not None:
        rows.append(["viable tumour (mL)", fmt(viable.get("virtual")), fmt(viable.get("pre-treatment")),
                     fmt(viable.get("real"))])
        rows.append(["tumour, viable + necrotic (mL)", fmt(tumour.get("virtual")), fmt(tumour.get("pre-treatment")),
                     fmt(tumour.get("real"))])
        rows.append(["viable tumour Dice with the real labels", fmt(check.get("viable_dice_virtual")),
                     fmt(check.get("viable_dice_copy")), "1"])
    if check.get("mrecist_real"):
        rows.append(["mRECIST", str(check.get("mrecist_virtual") or "n/a"), "SD (no change)",
                     str(check["mrecist_real"])])
    sec.blocks.append(Block("table", header=["Measure", "Virtual follow-up", "Unchanged pre-treatment scan",
                                             "Real follow-up"], rows=rows))
    if viable.get("real") is None:
        sec.blocks.append(_na("volumes and mRECIST: the real follow-up has no labels (none given, and the model's "
                              "segmentation of it was not made or not usable: see the notes)."))
    sec.blocks.append(Block("text", text="One patient is an anecdote; registration error and scanner differences "
                                         "enter both comparisons alike. The cohort-level comparison is hcctwin "
                                         "evaluate."))
    return sec


def images_section(summary: Mapping, images: Mapping[str, str]) -> Section:
    sec = Section("images", "Linked views")
    if not images:
        sec.blocks.append(_na(reason(summary, "layout", "render", default="no rendered layout was given to the "
                                                                          "report writer.")))
    for caption, path in images.items():
        sec.blocks.append(Block("image", text=str(caption), image=str(path)))
    return sec


def _response_text(by_week: Any) -> str:
    if not isinstance(by_week, Mapping) or not by_week:
        return "n/a"
    parts = []
    for week, reading in sorted(by_week.items()):
        if isinstance(reading, Mapping):
            parts.append(f"{week}: {reading.get('mrecist') or 'n/a'} / {reading.get('recist') or 'n/a'}")
    return "; ".join(parts) or "n/a"


def sampled_response_blocks(response: Mapping, info: Mapping) -> list[Block]:
    """mRECIST of each virtual follow-up beside the categories of its sampled responses (none without samples)."""
    rows, keys, weeks, n = [], [], [], 0
    for rid, by_week in response.items():
        if rid == "observed" or not isinstance(by_week, Mapping):
            continue
        sampled = {w: r for w, r in by_week.items() if isinstance(r, Mapping) and isinstance(r.get("sampled"), Mapping)}
        if sampled:
            weeks = sorted(set(weeks) | set(sampled))
            keys.append(rid)
            n = max(n, *(int(num(r["sampled"].get("samples")) or 0) for r in sampled.values()))
    if not keys:
        return []
    for rid in keys:
        by_week = response[rid]
        rows.append([info.get(rid, {}).get("name", rid),
                     *[f"{by_week[w].get('mrecist') or 'n/a'}; samples {fmt_sampled(by_week[w])}"
                       if isinstance(by_week.get(w), Mapping) else "n/a" for w in weeks]])
    return [Block("text", text=f"mRECIST of each virtual follow-up and of its {n} sampled responses. The virtual "
                               "follow-up shows the median response; each sample is a draw of the patient's latent "
                               "response (the part no pre-treatment information shows), rendered and read by the "
                               "same rules. Where the samples disagree, the reading is uncertain."),
            Block("table", header=["Regimen", *weeks], rows=rows, row_keys=keys)]


def horizon_of(meta: Metastasis) -> int:
    return int(num(meta.horizon_months) or 24)


def metastasis_by_regimen(summary: Mapping) -> tuple[dict[str, str], str | None]:
    """Per-regimen metastasis risk text, and the patient-level one (the schema's single estimate) when given."""
    meta = survival_part(summary).metastasis
    if meta is None:
        return {}, None
    horizon = horizon_of(meta)
    per: dict[str, str] = {}
    for rid, m in (meta.by_regimen or {}).items():
        if isinstance(m, Mapping):
            per[rid] = f"{fmt_ci(m.get('risk'), [m.get('lower'), m.get('upper')], 'pct')} at {horizon} mo"
    overall = None
    if meta.has_risk:
        overall = f"{fmt_ci(meta.risk, [meta.lower, meta.upper], 'pct')} at {horizon} mo"
    return per, overall


def survival_section(summary: Mapping, info: Mapping, plots: Mapping[str, str]) -> Section:
    sec = Section("survival", "Survival per regimen")
    os_curves, pfs_curves = curves(summary, "os"), curves(summary, "pfs")
    for endpoint, png in plots.items():
        sec.blocks.append(Block("image", text=f"{ENDPOINT_NAMES.get(endpoint, endpoint)} by regimen (shaded: 95% "
                                               f"interval)", image=str(png)))
    if not os_curves and not pfs_curves:
        sec.blocks.append(_na(reason(summary, "surviv", default="no survival model ran for this result.")))
    response = summary.get("response") if isinstance(summary.get("response"), Mapping) else {}
    meta_per, meta_all = metastasis_by_regimen(summary)
    header = ["Regimen", "Median OS, mo (95% CI)", "1-year OS (95% CI)", "2-year OS (95% CI)",
              "RMST-24, mo (95% CI)", "Median PFS, mo (95% CI)", "mRECIST / RECIST", "Metastasis risk"]
    rows, keys = [], []
    for rid in regimen_order(summary):
        os_c, pfs_c = os_curves.get(rid), pfs_curves.get(rid)
        rows.append([
            info[rid]["name"],
            fmt_median(os_c) if os_c else "n/a",
            fmt_ci(os_c.s12, os_c.s12_ci, "pct") if os_c else "n/a",
            fmt_ci(os_c.s24, os_c.s24_ci, "pct") if os_c else "n/a",
            fmt_ci(os_c.rmst24, os_c.rmst24_ci) if os_c else "n/a",
            fmt_median(pfs_c) if pfs_c else "n/a",
            _response_text(response.get(rid)),
            meta_per.get(rid) or (f"{meta_all} (patient-level)" if meta_all else "n/a"),
        ])
        keys.append(rid)
    sec.blocks.append(Block("table", header=header, rows=rows, row_keys=keys))
    sec.blocks.extend(sampled_response_blocks(response, info))
    methods = sorted({str(c.interval_method) for c in [*os_curves.values(), *pfs_curves.values()]
                      if c.interval_method})
    if methods:
        sec.blocks.append(Block("text", text=f"Intervals: {', '.join(methods)}. NR: not reached within follow-up."))
    if not response:
        sec.blocks.append(_na("mRECIST / RECIST response: " + reason(
            summary, "response", "recist", "follow-up", default="no response readings in this result.")))
    return sec


def benefit_section(summary: Mapping, info: Mapping) -> Section:
    sec = Section("benefit", "Treatment benefit: RMST-24 differences")
    diffs = survival_part(summary).rmst24_differences
    if not diffs:
        sec.blocks.append(_na(reason(summary, "rmst", "benefit", "surviv",
                                     default="no between-regimen comparison in this result.")))
        return sec
    rows = []
    for d in diffs:
        a, b = str(d.regimen_a), str(d.regimen_b)
        na, nb = (info.get(r, {}).get("short_name", r) for r in (a, b))
        tau = fmt(d.tau_months, 0)
        diff = fmt_ci(d.estimate, [d.lower, d.upper])
        rows.append([f"{na} vs {nb}", diff if diff == "n/a" else f"{diff} mo",
                     tau, fmt_pct(d.prob_a_better)])
    sec.blocks.append(Block("table", header=["Comparison (A vs B)", "RMST difference A - B (95% CI)",
                                             "Horizon (mo)", "P(A better)"], rows=rows))
    sec.blocks.append(Block("text", text="A positive difference means more months alive within the horizon "
                                         "with regimen A."))
    return sec


def recommendation_section(summary: Mapping, info: Mapping) -> Section:
    sec = Section("recommendation", "Model recommendation")
    surv = survival_part(summary)
    rec, withheld = surv.recommendation, surv.recommendation_withheld
    if withheld:
        sec.blocks.append(Block("warning", text=str(withheld)))
        return sec
    if rec is None or not rec.regimen:
        sec.blocks.append(_na(reason(summary, "recommend", "surviv",
                                     default="no recommendation in this result.")))
        return sec
    rid = str(rec.regimen)
    probs = rec.probability_best
    endpoint = ENDPOINT_NAMES.get(_endpoint_key(rec.endpoint), str(rec.endpoint))
    scope = "eligible regimens only" if rec.eligible_only else "all regimens"
    name = info.get(rid, {}).get("name", rid)
    sec.blocks.append(Block("text", text=(
        f"{name}: probability {fmt_pct(probs.get(rid))} of giving the longest restricted mean "
        f"{endpoint.lower()} over {fmt(rec.tau_months, 0)} months ({scope}). A model estimate to inform "
        f"discussion, not a treatment decision.")))
    if probs:
        order = sorted(probs, key=lambda r: -(num(probs[r]) or 0))
        sec.blocks.append(Block("table", header=["Regimen", "Probability best"],
                                rows=[[info.get(r, {}).get("name", r), fmt_pct(probs[r])] for r in order],
                                row_keys=list(order)))
    return sec


def metastasis_section(summary: Mapping) -> Section:
    sec = Section("metastasis", "Distant metastasis risk")
    meta = survival_part(summary).metastasis
    if meta is None:
        sec.blocks.append(_na(reason(summary, "metasta", default="no metastasis model ran for this result.")))
        return sec
    per, overall = metastasis_by_regimen(summary)
    if overall:
        sec.blocks.append(Block("text", text=f"Risk of distant metastasis: {overall}."))
    for rid, text in per.items():
        sec.blocks.append(Block("text", text=f"{rid}: {text}"))
    competing = meta.competing_risk
    if competing is not None and competing.get("cumulative_incidence") is not None:
        sec.blocks.append(Block("text", text=(
            f"Cumulative incidence of distant metastasis by {fmt(competing.get('horizon_months'), 0)} mo with death "
            f"as a competing risk: {fmt_pct(competing.get('cumulative_incidence'))} (cause-specific Cox models; the "
            f"risk above counts only patients whose 2-year status is known, so it is higher when many die first).")))
    landmark = meta.landmark
    if landmark:
        rows = [[str(k), m.source or "", fmt_ci(m.risk, [m.lower, m.upper], "pct")]
                for k, m in sorted(landmark.items())]
        sec.blocks.append(Block("text", text="Updated with the response of the TACE follow-ups (for a patient still "
                                             "free of distant metastasis at that time point):"))
        sec.blocks.append(Block("table", header=["Time point", "Follow-up", f"Risk at {horizon_of(meta)} mo"],
                                rows=rows))
    points = meta.points
    if points:
        sec.blocks.append(Block("table", header=["Nomogram feature", "Points"],
                                rows=[[str(k), fmt(v)] for k, v in points.items()]))
    return sec


def landmark_section(summary: Mapping, info: Mapping, plots: Mapping[str, str]) -> Section | None:
    """The dynamic (landmark) risk: the curves as a plot and their medians per time point as a table (never the
    arrays themselves)."""
    landmark = survival_part(summary).landmark
    if not landmark:
        return None
    sec = Section("landmark", "Dynamic (landmark) risk")
    if plots.get("landmark"):
        sec.blocks.append(Block("image", text="Overall survival from each follow-up time point, per regimen, given "
                                              "that follow-up's (virtual) response (shaded: 95% interval)",
                                image=str(plots["landmark"])))
    weeks = sorted({w for entry in landmark.values() for w in entry.timepoints})
    rows, keys = [], []
    order = regimen_order(summary)
    for rid in [r for r in order if r in landmark] + [r for r in landmark if r not in order]:
        tps = landmark[rid].timepoints
        if not tps:
            continue
        cells = []
        for w in weeks:
            tp = tps.get(w)
            if tp is None:
                cells.append("n/a")
                continue
            med = num(tp.median)
            cells.append(f"{tp.mrecist or 'n/a'}; median {'NR' if med is None else f'{med:.1f}'} mo "
                         f"({tp.source or 'n/a'})")
        rows.append([info.get(rid, {}).get("name", rid), *cells])
        keys.append(rid)
    if rows:
        sec.blocks.append(Block("table", header=["Regimen", *[f"from {w}" for w in weeks]], rows=rows,
                                row_keys=keys))
    return sec


def _card_rows(card: Any, prefix: str = "") -> list[list[str]]:
    rows = []
    if isinstance(card, Mapping):
        for k, v in card.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and prefix.count(".") < 1:
                rows += _card_rows(v, f"{key}.")
            else:
                rows.append([key, scalar_text(v)])
    else:
        rows.append([prefix.rstrip(".") or "value", scalar_text(card)])
    return rows


def provenance_section(summary: Mapping) -> Section:
    sec = Section("provenance", "Model cards and provenance")
    prov = summary.get("provenance")
    if isinstance(prov, Mapping) and prov:
        sec.blocks.append(Block("table", header=["Step", "Model / source"],
                                rows=[[str(k), scalar_text(v)] for k, v in prov.items()]))
    surv_model = survival_part(summary).model
    if surv_model:
        sec.blocks.append(Block("text", text=f"Survival model: {surv_model}"))
    models = summary.get("models")
    cards: list[tuple[str, Any]] = []
    if isinstance(models, Mapping):
        cards = list(models.items())
    elif isinstance(models, list):
        cards = [(str(c.get("name", f"model {i + 1}")) if isinstance(c, Mapping) else f"model {i + 1}", c)
                 for i, c in enumerate(models)]
    for name, card in cards:
        sec.blocks.append(Block("text", text=f"Model card: {name}"))
        sec.blocks.append(Block("table", header=["Field", "Value"], rows=_card_rows(card)))
    if not sec.blocks:
        sec.blocks.append(_na(reason(summary, "model", default="no model ran for this result.")))
    timings = summary.get("timings_s")
    if isinstance(timings, Mapping) and timings:
        sec.blocks.append(Block("text", text="Run time (s): " + ", ".join(f"{k} {fmt(v, 2)}"
                                                                           for k, v in timings.items())))
    return sec


def notes_section(summary: Mapping) -> Section:
    notes = all_notes(summary)
    return Section("notes", "Notes", [Block("list", items=notes) if notes else Block("text", text="No notes.")])


def disclaimer_section(summary: Mapping) -> Section:
    return Section("disclaimer", "Disclaimer", [Block("warning", text=disclaimer_text(summary))])


def _last_response(by_week: Any) -> str:
    """mRECIST of each virtual follow-up in time order, e.g. "SD → SD → PR"."""
    if not isinstance(by_week, Mapping):
        return "n/a"
    seq = [str(r.get("mrecist") or "n/a") for _w, r in sorted(by_week.items()) if isinstance(r, Mapping)]
    return " → ".join(seq) if seq else "n/a"


def decision_lines(summary: Mapping, info: Mapping) -> list[Block]:
    """The recommendation (or why it is withheld) with its probability, and the RMST-24 differences of the
    recommended regimen against each other one: the sentences a board reads first."""
    surv = survival_part(summary)
    withheld = surv.recommendation_withheld
    if withheld:
        return [Block("warning", text=f"Recommendation withheld: {withheld}")]
    rec = surv.recommendation
    if rec is None or not rec.regimen:
        return [_na(reason(summary, "recommend", "surviv", default="no recommendation in this result."))]
    rid = str(rec.regimen)
    probs = rec.probability_best
    endpoint = ENDPOINT_NAMES.get(_endpoint_key(rec.endpoint), str(rec.endpoint)).lower()
    tau = fmt(rec.tau_months, 0)
    blocks = [Block("text", text=(
        f"Model recommendation: {info.get(rid, {}).get('name', rid)} — probability {fmt_pct(probs.get(rid))} that it "
        f"gives the longest restricted mean {endpoint} over {tau} months "
        f"({'eligible regimens only' if rec.eligible_only else 'all regimens'}). A model estimate to inform "
        f"the discussion, not a treatment decision."))]
    items = []
    for d in surv.rmst24_differences:
        if rid not in (d.regimen_a, d.regimen_b):
            continue
        sign = 1.0 if d.regimen_a == rid else -1.0
        other = d.regimen_b if sign > 0 else d.regimen_a
        est, lo, hi = num(d.estimate), num(d.lower), num(d.upper)
        if est is None:
            continue
        bounds = sorted(sign * x for x in (lo, hi) if x is not None)
        ci = f" (95% CI {bounds[0]:+.1f} to {bounds[1]:+.1f})" if len(bounds) == 2 else ""
        items.append(f"vs {info.get(other, {}).get('name', other)}: {sign * est:+.1f} months alive within "
                     f"{fmt(d.tau_months, 0)} months{ci}")
    if items:
        blocks.append(Block("text", text=f"RMST-24 difference, {info.get(rid, {}).get('short_name', rid)} minus:"))
        blocks.append(Block("list", items=items))
    return blocks


def summary_section(summary: Mapping, info: Mapping, plots: Mapping[str, str], key_image: str | None,
                    date: str | None = None) -> Section:
    """The first page: what a tumor board reads in one minute. Patient (or study code), the scan check, the
    recommendation with its probability and RMST-24 differences, one row per regimen (median OS/PFS with CI,
    1- and 2-year OS, mRECIST of the virtual follow-ups, probability best), the key image and the OS curves."""
    sec = Section("summary", "Tumor-board summary")
    weeks = scalar_text(summary.get("weeks") or "n/a")
    sec.blocks.append(Block("text", text=(
        f"Patient {patient_label(summary)} · {date or datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} · "
        f"{summary.get('modality') or 'n/a'} ({scalar_text(summary.get('phases') or 'n/a')}) · virtual follow-ups "
        f"at weeks {weeks}")))
    dom = summary.get("domain")
    if isinstance(dom, Mapping) and dom.get("verdict"):
        verdict = str(dom["verdict"])
        line = f"Scan check: {verdict.upper()} — {dom.get('headline') or verdict}"
        reasons = [str(r) for r in dom.get("reasons") or []]
        if verdict != "inside" and reasons:
            line += " (" + "; ".join(reasons[:3]) + (f"; {len(reasons) - 3} more below" if len(reasons) > 3
                                                      else "") + ")"
        sec.blocks.append(Block("text" if verdict == "inside" else "warning", text=line))
    else:
        sec.blocks.append(_na("scan check: the scan was not checked (result written before the guard existed)."))
    sec.blocks += decision_lines(summary, info)
    os_curves, pfs_curves = curves(summary, "os"), curves(summary, "pfs")
    response = summary.get("response") if isinstance(summary.get("response"), Mapping) else {}
    rec = survival_part(summary).recommendation
    probs = rec.probability_best if rec is not None else {}
    rows, keys = [], []
    for rid in regimen_order(summary):
        os_c, pfs_c = os_curves.get(rid), pfs_curves.get(rid)
        if rid == "observed" or not (os_c or pfs_c or rid in response):
            continue
        rows.append([info[rid]["name"], fmt_median(os_c) if os_c else "n/a",
                     fmt_ci(os_c.s12, os_c.s12_ci, "pct") if os_c else "n/a",
                     fmt_ci(os_c.s24, os_c.s24_ci, "pct") if os_c else "n/a",
                     fmt_median(pfs_c) if pfs_c else "n/a", _last_response(response.get(rid)),
                     fmt_pct(probs.get(rid)) if rid in probs else "n/a"])
        keys.append(rid)
    if rows:
        sec.blocks.append(Block("table", header=["Regimen", "Median OS, mo (95% CI)", "1-year OS", "2-year OS",
                                                 "Median PFS, mo (95% CI)", f"mRECIST, virtual w{weeks}",
                                                 "P(best)"], rows=rows, row_keys=keys))
    else:
        sec.blocks.append(_na(reason(summary, "surviv", default="no survival model ran for this result.")))
    observed = response.get("observed") if isinstance(response.get("observed"), Mapping) else None
    if observed:
        seq = {w: r for w, r in observed.items() if isinstance(r, Mapping)}
        sec.blocks.append(Block("text", text=f"Real follow-up: mRECIST {_last_response(seq)} "
                                             f"({info.get(observed.get('regimen'), {}).get('name', 'regimen n/a')})."))
    check = summary.get("twin_check") if isinstance(summary.get("twin_check"), Mapping) else None
    if check and check.get("headline"):
        sec.blocks.append(Block("text", text=str(check["headline"])))
    if key_image:
        sec.blocks.append(Block("image", text="Pre-treatment | real | virtual follow-up per regimen at the largest "
                                              "lesion (yellow: tumour outline)", image=str(key_image)))
    if plots.get("os"):
        sec.blocks.append(Block("image", text="Overall survival by regimen (shaded: 95% interval)",
                                image=str(plots["os"])))
    sec.blocks.append(Block("text", text=disclaimer_text(summary)))
    return sec


def build_sections(summary: Mapping, *, images: Mapping[str, str] | None = None,
                   plots: Mapping[str, str] | None = None, date: str | None = None,
                   key_image: str | None = None) -> list[Section]:
    """All sections in report order: the one-page summary, then the details. ``summary`` should already be
    de-identified when wanted. ``plots``: ``os``, ``pfs``, ``landmark`` PNGs; ``key_image``: the pre | real |
    virtual picture (:mod:`HCCTwinLib.report.figures`)."""
    info = regimen_info(regimen_order(summary))
    plots = dict(plots or {})
    details_plots = {k: v for k, v in plots.items() if k in ("os", "pfs")}
    sections = [summary_section(summary, info, plots, key_image, date),
                header_section(summary, date), domain_section(summary), scores_section(summary),
                eligibility_section(summary, info),
                volumes_section(summary, info), *filter(None, [twin_check_section(summary)]),
                images_section(summary, dict(images or {})),
                survival_section(summary, info, {k: v for k, v in details_plots.items() if k != "os"}),
                benefit_section(summary, info), recommendation_section(summary, info), metastasis_section(summary)]
    landmark = landmark_section(summary, info, plots)
    if landmark is not None:
        sections.append(landmark)
    sections += [provenance_section(summary), notes_section(summary), disclaimer_section(summary)]
    return sections
