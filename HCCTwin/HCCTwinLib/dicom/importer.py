"""Import a DICOM tree (TCIA-like: per patient a pre-treatment and later multiphase CT studies, masks as DICOM SEG)
into the HCCTwin cohort layout.

::

    OUT/cases/<PatientID>/pre/{arterial,portal[,labels]}.nii.gz         earliest study with a usable phase
    OUT/cases/<PatientID>/followup/wNN/{arterial,portal[,labels]}.nii.gz later studies, NN = round(days / 7)
    OUT/clinical.csv                                                     patient_id, followups (w08;w16), one row
                                                                         per imported patient
    OUT/import_log.json                                                  found / used / skipped (and why)

Phases are chosen from SeriesDescription by keyword rules (:data:`DEFAULT_PHASE_RULES`, or a JSON file / dict with
the keys to replace): whole words, case-insensitive; a series matching an ``ignore`` keyword (delayed, pre-contrast,
scouts, reformats) is never used, one matching two phases is ambiguous and not used; of several series matching one
phase the one a SEG references wins, then the one with most slices. Labels come from the SEG series that references
one of the study's series (in the same or another study of the patient), read onto the grid of the series it
references (:mod:`.seg`); all phases and labels of a study are brought onto its portal venous (else first) phase's
grid and checked as :func:`HCCTwinLib.io.load_case` checks them. Follow-ups stay on their own grid: register them to
the pre-treatment scan (``hcctwin register``, or the pipeline does it) before training the generator on them.

Problems never stop the whole import: a patient whose pre-treatment study cannot be read is skipped, a follow-up
study that cannot be read is skipped, a SEG that cannot be read leaves that study without labels; each with its
reason in ``import_log.json``. The log names patients by PatientID only (names are never read). Output paths are
built with :func:`HCCTwinLib.io.path_inside`, so no PatientID can write outside ``OUT``. ``OUT`` must be new or
empty; the DICOM tree is only read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from .. import DISCLAIMER, __version__
from ..cases import CT_PHASES, MRI_SEQUENCES
from ..errors import InputError
from ..io import assemble_case, path_inside, write_image
from ..jsonutil import jsonable
from ..labels import LIVER, MAX_LABEL
from ..progress import ProgressCallback, SubProgress, report
from .inventory import Inventory, PatientEntry, SeriesEntry, StudyEntry, scan_dicom_tree
from .seg import _paint, _words, normalize_segment_map, read_seg_for_series
from .series import read_ct_series

#: Default phase rules: phase -> whole-word keywords of SeriesDescription; "ignore" keywords exclude a series.
DEFAULT_PHASE_RULES: dict[str, tuple[str, ...]] = {
    "arterial": ("arterial", "art", "late arterial", "early arterial", "hepatic arterial", "arterial phase"),
    "portal": ("portal", "portal venous", "pv", "pvp", "venous", "portovenous", "portal phase"),
    "ignore": ("delayed", "delay", "equilibrium", "equil", "pre", "pre contrast", "precontrast", "non contrast",
               "noncontrast", "unenhanced", "without contrast", "native", "plain", "scout", "localizer",
               "localiser", "topogram", "surview", "dose", "report", "mip", "mpr", "coronal", "sagittal", "cor", "sag",
               "3d", "vr"),
}
IMAGE_MODALITIES = ("CT", "MR")
#: A later study closer than this to the baseline (in weeks, rounded) cannot be a follow-up.
MIN_FOLLOWUP_WEEK = 1


def load_phase_rules(rules: Mapping | str | os.PathLike | None = None) -> dict[str, tuple[str, ...]]:
    """Phase rules from a dict or a JSON file (``{"arterial": [...], "portal": [...], "ignore": [...]}``; keys given
    replace the defaults, others keep them). Keys: CT phases, MRI sequence names, ``ignore``."""
    merged = {k: tuple(v) for k, v in DEFAULT_PHASE_RULES.items()}
    if rules is None:
        return merged
    if not isinstance(rules, Mapping):
        path = Path(rules)
        try:
            rules = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: phase rules unreadable ({exc}); give a JSON object such as "
                             f"{{\"arterial\": [\"arterial\", \"art\"], \"portal\": [\"portal\", \"pv\"]}}.") from exc
        if not isinstance(rules, Mapping):
            raise InputError(f"{path}: phase rules must be a JSON object of phase -> list of keywords.")
    allowed = (*CT_PHASES, *MRI_SEQUENCES, "ignore")
    for key, words in rules.items():
        if key not in allowed:
            raise InputError(f"phase rules: unknown phase {key!r}; use {', '.join(allowed)}.")
        if isinstance(words, str):
            words = [words]
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in words):
            raise InputError(f"phase rules: {key!r} needs a list of keywords (strings), got {words!r}.")
        merged[key] = tuple(_words(w).strip() for w in words)
    return merged


def classify_series(description: str, rules: Mapping[str, tuple[str, ...]]) -> tuple[str | None, str]:
    """``(phase or None, why)`` for a SeriesDescription under the phase rules."""
    words = _words(description)
    hit = next((kw for kw in rules.get("ignore", ()) if f" {_words(kw).strip()} " in words), None)
    if hit is not None:
        return None, f"ignored (keyword {hit!r})"
    matches = {}
    for phase, keywords in rules.items():
        if phase == "ignore":
            continue
        kw = next((k for k in keywords if f" {_words(k).strip()} " in words), None)
        if kw is not None:
            matches[phase] = kw
    if len(matches) == 1:
        phase, kw = next(iter(matches.items()))
        return phase, f"keyword {kw!r}"
    if matches:
        return None, f"ambiguous: matches {' and '.join(sorted(matches))}"
    return None, "no phase keyword in the description"


# ---------------------------------------------------------------------------------------------------- planning
def _study_plan(study: StudyEntry, rules, seg_refs: set[str]) -> tuple[dict[str, SeriesEntry], list[dict]]:
    """The series to use per phase, and why each other series is not used."""
    candidates: dict[str, list[SeriesEntry]] = {}
    unused = []
    for series in sorted(study.series.values(), key=lambda s: (s.number is None, s.number or 0, s.uid)):
        line = {"series_uid": series.uid, "description": series.description, "modality": series.modality,
                "files": len(series.files)}
        if series.modality == "SEG":
            continue  # labels, handled separately
        if series.modality not in IMAGE_MODALITIES:
            unused.append({**line, "why": f"modality {series.modality or '?'} is not an image series HCCTwin uses"})
            continue
        phase, why = classify_series(series.description, rules)
        if phase is None:
            unused.append({**line, "why": why})
            continue
        if (phase in CT_PHASES) != (series.modality == "CT"):
            unused.append({**line, "why": f"{why}, but a {series.modality} series cannot be the {phase} phase"})
            continue
        candidates.setdefault(phase, []).append(series)
    chosen = {}
    for phase, series_list in candidates.items():
        ranked = sorted(series_list, key=lambda s: (s.uid not in seg_refs, -len(s.files), s.number or 0))
        chosen[phase] = ranked[0]
        for other in ranked[1:]:
            unused.append({"series_uid": other.uid, "description": other.description, "modality": other.modality,
                           "files": len(other.files),
                           "why": f"another {phase} series was preferred ({ranked[0].description!r}, "
                                  f"{len(ranked[0].files)} files"
                                  f"{', referenced by the SEG' if ranked[0].uid in seg_refs else ''})"})
    return chosen, unused


def _label_series_for(study: StudyEntry, segs: list[SeriesEntry]) -> list[SeriesEntry]:
    """SEG series referencing one of the study's series; the study's own SEGs first."""
    uids = set(study.series)
    found = [s for s in segs if set(s.referenced_series) & uids]
    return sorted(found, key=lambda s: (s.uid not in study.series, s.number or 0, s.uid))


def _load_study(patient: PatientEntry, study: StudyEntry, chosen: dict[str, SeriesEntry], segs: list[SeriesEntry],
                inventory: Inventory, segment_map) -> tuple[object, dict | None, list[str]]:
    """Read the chosen series (InputError on a problem) and the labels (a problem there becomes a note)."""
    images = {}
    for phase, series in chosen.items():
        try:
            images[phase] = read_ct_series(series.files)
        except InputError as exc:
            raise InputError(f"{phase} series {series.description!r}: {exc}") from exc
    reference = "portal" if "portal" in images else next(iter(images))
    notes: list[str] = []
    labels = None
    labels_info = None
    seg_series = _label_series_for(study, segs)
    if len(seg_series) > 1:
        notes.append(f"{len(seg_series)} SEG series reference this study; used {seg_series[0].description!r} "
                     f"({seg_series[0].uid})")
    if seg_series:
        seg = seg_series[0]
        prefer = [chosen[reference].uid, *(s.uid for p, s in chosen.items() if p != reference)]
        try:
            merged = None
            info = {"seg_series_uid": seg.uid, "description": seg.description, "segments": [], "notes": []}
            for f in seg.files:  # some tools write one SEG instance per segment: merged
                result, on_uid = read_seg_for_series(f, inventory.series_files(), prefer=prefer, mapping=segment_map)
                info["segments"].extend(result.segments)
                info["notes"].extend(result.notes)
                info["on_series"] = on_uid
                if merged is None:
                    merged = result
                else:
                    _merge_labels(merged, result, str(f))
            labels = (merged.labels, merged.geometry)
            on_phase = next((p for p, s in chosen.items() if s.uid == info["on_series"]), None)
            info["on_phase"] = on_phase
            if on_phase is None:
                notes.append(f"the SEG references a series not used as a phase ({info['on_series']}); its labels "
                             f"are resampled onto the {reference} phase")
            labels_info = info
        except InputError as exc:
            notes.append(f"labels not imported: {exc}")
            labels = None
    else:
        notes.append("no DICOM SEG references this study: imported without labels (the segmentation will run)")
    source = {phase: f"series {s.uid} ({s.description})" for phase, s in chosen.items()}
    try:
        case = assemble_case(patient.patient_id, images, labels, None, source)
    except InputError as exc:
        if labels is None:
            raise
        notes.append(f"labels not imported: {exc}")
        labels_info = None
        case = assemble_case(patient.patient_id, images, None, None, source)
    return case, labels_info, notes


def _merge_labels(target, other, where: str) -> None:
    if not other.geometry.same_grid(target.geometry):
        raise InputError(f"{where}: the SEG instances of one series lie on different grids; export them as one SEG.")
    names = {v: f"label {v}" for v in range(MAX_LABEL + 1)}
    for value in (LIVER, *range(2, MAX_LABEL + 1)):
        mask = other.labels == value
        if mask.any():
            _paint(target.labels, (slice(None),) * 3, mask, value, names, where)


def _write_case(case, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, arr in case.phases.items():
        write_image(arr, case.geometry, folder / f"{name}.nii.gz")
        written.append(f"{name}.nii.gz")
    if case.labels is not None:
        write_image(case.labels, case.geometry, folder / "labels.nii.gz", labels=True)
        written.append("labels.nii.gz")
    return written


def _study_line(study: StudyEntry) -> dict:
    return {"study_uid": study.uid, "study_date": study.date.isoformat() if study.date else None,
            "description": study.description}


def _import_patient(inventory: Inventory, patient: PatientEntry, out: Path, rules, segment_map) -> dict:
    pid = patient.patient_id
    record: dict = {"patient_id": pid, "status": "skipped", "studies": [], "skipped": []}
    if not pid:
        record["reason"] = "DICOM files without PatientID: cannot tell whose they are"
        return record
    try:
        path_inside(out, "cases", pid)
    except InputError:
        record["reason"] = ("the PatientID cannot be a folder name (it holds a path separator, is '.' or '..', or "
                            "leads out of the output folder); give the patient a plain ID (letters, digits, _ - .)")
        return record
    segs = [s for s in patient.all_series().values() if s.modality == "SEG"]
    seg_refs = {uid for s in segs for uid in s.referenced_series}
    plans = []
    for study in patient.ordered_studies():
        chosen, unused = _study_plan(study, rules, seg_refs)
        plans.append((study, chosen, unused))
    usable = [p for p in plans if p[1]]
    for study, chosen, unused in plans:
        if not chosen:
            descriptions = sorted({s.description for s in study.series.values() if s.modality != "SEG"})
            if descriptions:
                reason = (f"no series matched the phase rules (series: "
                          f"{', '.join(repr(d) for d in descriptions[:8])}); give --phase-rules")
            else:
                reason = "no image series (only " + ", ".join(sorted({s.modality for s in study.series.values()})) + ")"
            record["skipped"].append({**_study_line(study), "reason": reason, "unused_series": unused})
    if not usable:
        why = "; ".join(f"{st['study_date'] or 'undated'}: {st['reason']}" for st in record["skipped"])
        record["reason"] = f"no study with an arterial or portal venous series ({why})"
        return record
    dated = [p for p in usable if p[0].date is not None]
    if dated:
        baseline = dated[0]
        for study, _, unused in usable:
            if study.date is None:
                record["skipped"].append({**_study_line(study), "unused_series": unused,
                                          "reason": "no StudyDate: cannot place the study in time"})
    elif len(usable) == 1:
        baseline = usable[0]
        record.setdefault("notes", []).append("the study has no StudyDate; used as the pre-treatment study")
    else:
        record["reason"] = f"{len(usable)} studies without StudyDate: cannot tell which is pre-treatment"
        return record
    base_date = baseline[0].date
    # pre-treatment study: without it the patient is skipped
    study, chosen, unused = baseline
    try:
        case, labels_info, notes = _load_study(patient, study, chosen, segs, inventory, segment_map)
    except InputError as exc:
        record["reason"] = f"pre-treatment study ({study.date or 'undated'}) unusable: {exc}"
        return record
    written = _write_case(case, path_inside(out, "cases", pid, "pre"))
    record["status"] = "imported"
    record["baseline_date"] = base_date.isoformat() if base_date else None
    record["studies"].append(_used(study, "pre", 0, chosen, labels_info, notes, unused, written, case))
    weeks_taken: dict[int, str] = {}
    for study, chosen, unused in dated[1:] if dated else []:
        if study is baseline[0]:
            continue
        days = (study.date - base_date).days
        week = int(round(days / 7))
        line = {**_study_line(study), "days_from_baseline": days, "unused_series": unused}
        if week < MIN_FOLLOWUP_WEEK:
            record["skipped"].append({**line, "reason": f"{days} day(s) after the baseline study: same week, not a "
                                                        f"follow-up (a repeat or a second part of the baseline)"})
            continue
        if week in weeks_taken:
            record["skipped"].append({**line, "reason": f"same week w{week:02d} as study {weeks_taken[week]} "
                                                        f"(kept the earlier one)"})
            continue
        try:
            case, labels_info, notes = _load_study(patient, study, chosen, segs, inventory, segment_map)
        except InputError as exc:
            record["skipped"].append({**line, "reason": f"follow-up unusable: {exc}"})
            continue
        target = f"w{week:02d}"
        written = _write_case(case, path_inside(out, "cases", pid, "followup", target))
        weeks_taken[week] = study.uid
        record["studies"].append(_used(study, f"followup/{target}", days, chosen, labels_info, notes, unused,
                                       written, case))
    record["followups"] = [s["target"].split("/")[1] for s in record["studies"] if s["target"] != "pre"]
    return record


def _used(study, target, days, chosen, labels_info, notes, unused, written, case) -> dict:
    g = case.geometry
    return {**_study_line(study), "target": target, "days_from_baseline": days,
            "phases": {p: {"series_uid": s.uid, "description": s.description, "files": len(s.files)}
                       for p, s in chosen.items()},
            "labels": labels_info, "files_written": written, "grid": {"shape_kji": list(g.shape),
                                                                      "spacing_mm": [round(v, 4) for v in g.spacing]},
            "notes": notes, "unused_series": unused}


def import_dicom_cohort(root: str | os.PathLike, out: str | os.PathLike, *,
                        phase_rules: Mapping | str | os.PathLike | None = None, segment_map: Mapping | None = None,
                        progress: ProgressCallback | None = None) -> dict:
    """Import the DICOM tree ``root`` into the cohort layout at ``out`` (module docstring); returns the import log
    (also written to ``out/import_log.json``). ``phase_rules``: dict or JSON file (:func:`load_phase_rules`);
    ``segment_map``: SEG segment label -> HCCTwin label overrides (:func:`.seg.map_segment_label`)."""
    import pandas as pd

    t0 = time.perf_counter()
    root, out = Path(root).expanduser(), Path(out).expanduser()
    rules = load_phase_rules(phase_rules)
    normalize_segment_map(segment_map)  # a bad mapping fails before any work
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: the output folder exists and is not empty; give a new or empty folder (the import "
                         f"never overwrites files).")
    inventory = scan_dicom_tree(root, progress=SubProgress(progress, 0.0, 0.2))
    if not inventory.patients:
        raise InputError(f"{root}: no DICOM image files found ({inventory.non_dicom} other file(s), "
                         f"{len(inventory.unreadable)} unreadable); point to the folder of the DICOM download.")
    out.mkdir(parents=True, exist_ok=True)
    records = []
    pids = sorted(inventory.patients)
    for n, pid in enumerate(pids):
        report(progress, 0.2 + 0.8 * n / len(pids), f"importing patient {n + 1}/{len(pids)}")
        try:
            records.append(_import_patient(inventory, inventory.patients[pid], out, rules, segment_map))
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # never let one patient stop the import
            records.append({"patient_id": pid, "status": "skipped", "studies": [], "skipped": [],
                            "reason": f"unexpected error: {type(exc).__name__}: {str(exc)[:200]}"})
    imported = [r for r in records if r["status"] == "imported"]
    table = pd.DataFrame([{"patient_id": r["patient_id"], "followups": ";".join(r.get("followups", []))}
                          for r in imported], columns=["patient_id", "followups"])
    table.to_csv(out / "clinical.csv", index=False)
    skipped = []  # a skipped patient: one line (its reason names the studies); else one line per skipped study
    for r in records:
        if r["status"] != "imported":
            skipped.append({"patient_id": r["patient_id"], "study_uid": None, "study_date": None,
                            "reason": r.get("reason", "")})
            continue
        for st in r["skipped"]:
            skipped.append({"patient_id": r["patient_id"], "study_uid": st["study_uid"],
                            "study_date": st["study_date"], "reason": st["reason"],
                            "unused_series": st.get("unused_series", [])})
    used = [{"patient_id": r["patient_id"], **s} for r in imported for s in r["studies"]]
    log = {
        "generator": "hcctwin import (DICOM -> HCCTwin cohort layout)", "hcctwin_version": __version__,
        "disclaimer": DISCLAIMER, "dicom_root": str(root), "out": str(out), "phase_rules": rules,
        "segment_map": dict(segment_map or {}),
        "summary": {"patients_found": len(records), "patients_imported": len(imported),
                    "patients_skipped": len(records) - len(imported),
                    "studies_imported": len(used), "followups_imported": sum(s["target"] != "pre" for s in used),
                    "studies_skipped": sum(1 for s in skipped if s["study_uid"]),
                    "studies_with_labels": sum(1 for s in used if s["labels"])},
        "found": inventory.to_dict(),
        "used": used,
        "skipped": skipped,
        "patients": [{"patient_id": r["patient_id"], "status": r["status"], "reason": r.get("reason"),
                      "baseline_date": r.get("baseline_date"), "followups": r.get("followups", []),
                      "notes": r.get("notes", [])} for r in records],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log = jsonable(log, finite=True)
    (out / "import_log.json").write_text(json.dumps(log, indent=2, allow_nan=False), encoding="utf-8")
    report(progress, 1.0, f"imported {len(imported)}/{len(records)} patient(s), {len(used)} studies")
    return log
