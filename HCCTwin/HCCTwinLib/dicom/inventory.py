"""Inventory of a DICOM tree: patients -> studies (ordered by StudyDate) -> series.

Any nesting works (TCIA's ``<collection>/<PatientID>/<study>/<series>/*.dcm``, a PACS export, one flat folder): every
file is opened with pydicom (header only) and grouped by PatientID, StudyInstanceUID and SeriesInstanceUID. Files
that are not DICOM (spreadsheets, DICOMDIR, notes) are counted and left alone; DICOM files whose header cannot be
read are listed with the reason. Only the PatientID identifies a patient here: the patient's name is never read.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from ..progress import ProgressCallback, report
from .seg import seg_referenced_series

#: Header elements read per file (the patient's name is deliberately not among them).
HEADER_TAGS = ("PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "SeriesInstanceUID",
               "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID", "SOPInstanceUID",
               "FrameOfReferenceUID", "SpecificCharacterSet")
#: Files with these suffixes are not even opened.
NOT_DICOM_SUFFIXES = (".csv", ".xlsx", ".xls", ".json", ".txt", ".md", ".pdf", ".png", ".jpg", ".jpeg", ".nii",
                      ".gz", ".nrrd", ".zip", ".xml", ".html", ".py", ".tsv")


@dataclass
class SeriesEntry:
    uid: str
    modality: str
    description: str
    number: int | None
    sop_class: str
    frame_of_reference_uid: str
    files: list[Path] = field(default_factory=list)
    referenced_series: list[str] = field(default_factory=list)

    def summary(self, root: Path | None = None) -> dict:
        folders = sorted({str(_rel(f.parent, root)) for f in self.files})
        out = {"series_uid": self.uid, "modality": self.modality, "description": self.description,
               "series_number": self.number, "files": len(self.files),
               "folder": folders[0] if len(folders) == 1 else folders}
        if self.modality == "SEG":
            out["referenced_series"] = list(self.referenced_series)
        return out


@dataclass
class StudyEntry:
    uid: str
    date: _dt.date | None
    time: str
    description: str
    series: dict[str, SeriesEntry] = field(default_factory=dict)

    @property
    def sort_key(self):
        return (self.date is None, self.date or _dt.date.min, self.time, self.uid)

    def summary(self, root: Path | None = None) -> dict:
        return {"study_uid": self.uid, "study_date": self.date.isoformat() if self.date else None,
                "description": self.description,
                "series": [s.summary(root) for s in sorted(self.series.values(),
                                                           key=lambda s: (s.number is None, s.number or 0, s.uid))]}


@dataclass
class PatientEntry:
    patient_id: str
    studies: dict[str, StudyEntry] = field(default_factory=dict)

    def ordered_studies(self) -> list[StudyEntry]:
        """Studies by StudyDate (then StudyTime); undated studies last."""
        return sorted(self.studies.values(), key=lambda s: s.sort_key)

    def all_series(self) -> dict[str, SeriesEntry]:
        return {uid: s for st in self.studies.values() for uid, s in st.series.items()}


@dataclass
class Inventory:
    """What a DICOM tree holds. ``unreadable`` lists (relative path, reason) of DICOM-looking files that could not be
    read; ``non_dicom`` counts the other files that were left alone."""

    root: Path
    patients: dict[str, PatientEntry] = field(default_factory=dict)
    n_files: int = 0
    non_dicom: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_studies(self) -> int:
        return sum(len(p.studies) for p in self.patients.values())

    @property
    def n_series(self) -> int:
        return sum(len(s.series) for p in self.patients.values() for s in p.studies.values())

    def series_files(self) -> dict[str, list[Path]]:
        """Series Instance UID -> files, over the whole tree."""
        return {uid: s.files for p in self.patients.values() for uid, s in p.all_series().items()}

    def to_dict(self) -> dict:
        return {"root": str(self.root), "dicom_files": self.n_files, "other_files": self.non_dicom,
                "patients": len(self.patients), "studies": self.n_studies, "series": self.n_series,
                "unreadable_files": [{"file": f, "reason": r} for f, r in self.unreadable],
                "by_patient": {pid: [st.summary(self.root) for st in p.ordered_studies()]
                               for pid, p in sorted(self.patients.items())}}


def _rel(path: Path, root: Path | None):
    if root is None:
        return path
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def parse_date(text: str) -> _dt.date | None:
    """A DICOM DA value (YYYYMMDD, also YYYY.MM.DD of old ACR-NEMA files) as a date, None when absent/malformed."""
    digits = "".join(ch for ch in str(text or "") if ch.isdigit())
    if len(digits) != 8:
        return None
    try:
        return _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def scan_dicom_tree(root: str | os.PathLike, *, progress: ProgressCallback | None = None) -> Inventory:
    """Scan every file under ``root`` (any nesting, symbolic links to folders not followed) into an
    :class:`Inventory`. Reads headers only; never modifies anything. InputError when ``root`` is not a folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give the folder that holds the DICOM tree (e.g. the collection "
                         f"folder of a TCIA download).")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            paths.append(Path(dirpath) / name)
    inv = Inventory(root=root)
    n = max(len(paths), 1)
    for idx, path in enumerate(paths):
        if idx % 200 == 0:
            report(progress, idx / n, f"scanning DICOM files ({idx}/{len(paths)})")
        if path.name.upper() == "DICOMDIR" or path.name.lower().endswith(NOT_DICOM_SUFFIXES) or \
                path.name.startswith("."):
            inv.non_dicom += 1
            continue
        rel = str(_rel(path, root))
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        except InvalidDicomError:
            inv.non_dicom += 1
            continue
        except Exception as exc:  # damaged header
            inv.unreadable.append((rel, f"{type(exc).__name__}: {str(exc)[:120]}"))
            continue
        study_uid, series_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
        if not (study_uid and series_uid):
            if not _text(ds, "SOPClassUID") and not _text(ds, "Modality"):
                inv.non_dicom += 1  # a file pydicom could open but that is no image object
            else:
                inv.unreadable.append((rel, "no StudyInstanceUID / SeriesInstanceUID"))
            continue
        inv.n_files += 1
        pid = _text(ds, "PatientID")
        patient = inv.patients.setdefault(pid, PatientEntry(patient_id=pid))
        study = patient.studies.get(study_uid)
        if study is None:
            study = patient.studies[study_uid] = StudyEntry(
                uid=study_uid, date=parse_date(_text(ds, "StudyDate")), time=_text(ds, "StudyTime"),
                description=_text(ds, "StudyDescription"))
        series = study.series.get(series_uid)
        if series is None:
            number = _text(ds, "SeriesNumber")
            try:
                number_value = int(float(number)) if number else None
            except ValueError:
                number_value = None
            series = study.series[series_uid] = SeriesEntry(
                uid=series_uid, modality=_text(ds, "Modality").upper(), description=_text(ds, "SeriesDescription"),
                number=number_value, sop_class=_text(ds, "SOPClassUID"),
                frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"))
        series.files.append(path)
        if series.modality == "SEG":
            try:
                full = pydicom.dcmread(path, stop_before_pixels=True)
                for uid in seg_referenced_series(full):
                    if uid not in series.referenced_series:
                        series.referenced_series.append(uid)
            except Exception as exc:
                inv.unreadable.append((rel, f"SEG header: {type(exc).__name__}: {str(exc)[:120]}"))
    report(progress, 1.0, f"scanned {len(paths)} files: {len(inv.patients)} patient(s), {inv.n_studies} studies")
    return inv
