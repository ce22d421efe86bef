"""A site's clinical spreadsheet -> the HCCTwin clinical columns, through a column-mapping file.

Sites keep their own column names, units and codes (TCIA's HCC-TACE-Seg, for instance, has ``TCIA_ID``, overall
survival in weeks with a *censored* flag, bilirubin in mg/dL and three readers' mRECIST). A mapping file says, for
each HCCTwin column, which site column holds it, in which unit, and how its codes read::

    {
      "format": "hcctwin-column-mapping/1",
      "columns": {
        "patient_id":       "TCIA_ID",
        "os_months":        {"column": "OS", "unit": "weeks"},
        "os_event":         {"column": "Censored_OS", "invert": true},
        "bilirubin_umol_l": {"column": "T_BIL", "unit": "mg/dL"},
        "sex":              {"column": "Sex", "values": {"1": "M", "2": "F"}},
        "regimen":          {"column": "Treatment", "values": {"TACE+PD-1+lenvatinib": "tace_pd1_len"}},
        "reader1_mrecist":  {"column": "1_mRECIST", "values": {"1": "CR", "2": "PR", "3": "SD", "4": "PD"}}
      }
    }

A value is either the site column's name (same unit, no codes) or an object with ``column`` and optionally ``unit``
(converted to the HCCTwin unit, see :data:`UNITS`), ``values`` (site code -> HCCTwin value; a code not listed is an
error naming it) and ``invert`` (0/1 flag read as 1/0: "censored" -> "event"). Site columns that are not mapped are
dropped; HCCTwin columns that are not mapped stay absent (the engine says which ones it needs).

:func:`read_site_clinical` reads and maps a site table; :func:`site_table` goes the other way (the simulator uses it
to write a site-style table for the DICOM cohort, so the import path runs in CI). Research use only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .clinical import BILIRUBIN_UMOL_PER_MG_DL
from .errors import InputError

MAPPING_FORMAT = "hcctwin-column-mapping/1"

_DAYS_PER_MONTH = 30.4375
_TIME_UNITS = {"months": 1.0, "month": 1.0, "mo": 1.0, "weeks": 7.0 / _DAYS_PER_MONTH, "week": 7.0 / _DAYS_PER_MONTH,
               "wk": 7.0 / _DAYS_PER_MONTH, "days": 1.0 / _DAYS_PER_MONTH, "day": 1.0 / _DAYS_PER_MONTH,
               "d": 1.0 / _DAYS_PER_MONTH, "years": 12.0, "year": 12.0, "y": 12.0}

#: HCCTwin column -> {site unit (lower case): factor that turns a site value into the HCCTwin unit}.
UNITS: dict[str, dict[str, float]] = {
    **{c: _TIME_UNITS for c in ("os_months", "pfs_months", "metastasis_months")},
    "bilirubin_umol_l": {"umol/l": 1.0, "µmol/l": 1.0, "mg/dl": BILIRUBIN_UMOL_PER_MG_DL},
    "albumin_g_l": {"g/l": 1.0, "g/dl": 10.0},
    "max_diameter_mm": {"mm": 1.0, "cm": 10.0},
    # AFP: 1 IU/mL = 1.21 ng/mL (WHO 72/225 standard)
    "afp_ng_ml": {"ng/ml": 1.0, "ug/l": 1.0, "µg/l": 1.0, "iu/ml": 1.21, "kiu/l": 1.21},
    "age_years": {"years": 1.0, "y": 1.0},
}

#: Optional HCCTwin columns for readers' mRECIST of the first follow-up (``reader<k>_mrecist``) or of week NN
#: (``reader<k>_mrecist_wNN``); values CR / PR / SD / PD (NE read as missing).
READER_PREFIX = "reader"


@dataclass
class ColumnRule:
    """How one HCCTwin column is read from the site table."""

    column: str
    unit: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    invert: bool = False

    def to_json(self) -> Any:
        if self.unit is None and not self.values and not self.invert:
            return self.column
        out: dict[str, Any] = {"column": self.column}
        if self.unit is not None:
            out["unit"] = self.unit
        if self.values:
            out["values"] = dict(self.values)
        if self.invert:
            out["invert"] = True
        return out


@dataclass
class ColumnMapping:
    """HCCTwin column -> :class:`ColumnRule`; ``patient_id`` is required."""

    rules: dict[str, ColumnRule]
    source: str = "<mapping>"

    @property
    def id_column(self) -> str:
        return self.rules["patient_id"].column

    def to_dict(self) -> dict[str, Any]:
        return {"format": MAPPING_FORMAT, "columns": {k: r.to_json() for k, r in self.rules.items()}}

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<mapping>") -> ColumnMapping:
        if not isinstance(data, Mapping) or not isinstance(data.get("columns"), Mapping):
            raise InputError(f"{source}: a column mapping is a JSON object with a \"columns\" object (HCCTwin column "
                             f"-> site column); see the example in the README.")
        fmt = data.get("format", MAPPING_FORMAT)
        if fmt != MAPPING_FORMAT:
            raise InputError(f"{source}: format {fmt!r} is not {MAPPING_FORMAT!r}; this HCCTwin reads only that one.")
        rules: dict[str, ColumnRule] = {}
        for target, spec in data["columns"].items():
            rules[str(target)] = _rule(str(target), spec, source)
        if "patient_id" not in rules:
            raise InputError(f"{source}: the mapping has no \"patient_id\" entry; name the site column that holds the "
                             f"patient identifier, e.g. \"patient_id\": \"TCIA_ID\".")
        sites = [r.column for r in rules.values()]
        dupes = sorted({c for c in sites if sites.count(c) > 1})
        if dupes:
            raise InputError(f"{source}: site column(s) {', '.join(map(repr, dupes))} are mapped to more than one "
                             f"HCCTwin column; each site column feeds one HCCTwin column.")
        return cls(rules, source)


def _rule(target: str, spec: Any, source: str) -> ColumnRule:
    if isinstance(spec, str) and spec.strip():
        return ColumnRule(spec.strip())
    if not isinstance(spec, Mapping) or not isinstance(spec.get("column"), str) or not spec["column"].strip():
        raise InputError(f"{source}: the entry for {target!r} must be a site column name or an object with a "
                         f"\"column\" name (and optionally \"unit\", \"values\", \"invert\"); got {spec!r}.")
    unknown = set(spec) - {"column", "unit", "values", "invert"}
    if unknown:
        raise InputError(f"{source}: the entry for {target!r} has unknown key(s) {', '.join(sorted(unknown))}; "
                         f"allowed: column, unit, values, invert.")
    unit = spec.get("unit")
    if unit is not None:
        known = UNITS.get(target)
        if known is None:
            raise InputError(f"{source}: {target!r} has no unit to convert (got unit {unit!r}); remove \"unit\".")
        if str(unit).strip().lower() not in known:
            raise InputError(f"{source}: unit {unit!r} for {target!r} is not one HCCTwin converts; use one of "
                             f"{', '.join(sorted(known))}.")
    values = spec.get("values") or {}
    if not isinstance(values, Mapping):
        raise InputError(f"{source}: \"values\" for {target!r} must map site codes to HCCTwin values.")
    return ColumnRule(spec["column"].strip(), str(unit).strip() if unit is not None else None,
                      {_code(k): v for k, v in values.items()}, bool(spec.get("invert", False)))


def _code(value: Any) -> str:
    """A cell as the lookup key of a ``values`` table: numbers without a trailing .0, strings stripped, lower case."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_mapping(path: str | os.PathLike) -> ColumnMapping:
    """Read a column-mapping JSON file; InputError naming the file and the problem when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: column mapping not found; give the path of the mapping JSON file.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON column mapping ({exc}).") from exc
    return ColumnMapping.from_dict(data, source=str(path))


def apply_mapping(site: pd.DataFrame, mapping: ColumnMapping) -> tuple[pd.DataFrame, list[str]]:
    """The site table in HCCTwin columns and units; returns ``(table, notes)``.

    InputError when a mapped site column is missing from the table, a value is not a number where a unit is
    converted, or a code has no entry in ``values``; the message names column, row (patient) and what to do.
    """
    notes: list[str] = []
    missing = [r.column for r in mapping.rules.values() if r.column not in site.columns]
    if missing:
        raise InputError(f"{mapping.source}: site column(s) {', '.join(map(repr, missing))} are not in the clinical "
                         f"table (its columns: {', '.join(map(str, site.columns[:15]))}); correct the mapping or the "
                         f"table header.")
    ids = site[mapping.id_column]
    out = pd.DataFrame(index=site.index)
    for target, rule in mapping.rules.items():
        column = site[rule.column]
        converted = []
        for pid, value in zip(ids, column):
            converted.append(_convert(target, rule, value, pid, mapping.source))
        out[target] = converted
        if rule.unit is not None and UNITS[target][rule.unit.lower()] != 1.0:
            notes.append(f"{target}: read from {rule.column!r} in {rule.unit}, converted.")
    out["patient_id"] = [str(v).strip() for v in ids]
    for col in out.columns:
        vals = [v for v in out[col] if not _missing(v)]
        if col != "patient_id" and vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[col] = pd.to_numeric(out[col])
    unmapped = [c for c in site.columns if c not in {r.column for r in mapping.rules.values()}]
    if unmapped:
        notes.append(f"site column(s) not mapped, left out: {', '.join(map(str, unmapped[:20]))}"
                     f"{' ...' if len(unmapped) > 20 else ''}.")
    order = ["patient_id"] + [c for c in out.columns if c != "patient_id"]
    return out[order].reset_index(drop=True), notes


def _convert(target: str, rule: ColumnRule, value: Any, pid: Any, source: str) -> Any:
    if _missing(value):
        return None
    if rule.values:
        key = _code(value)
        if key not in rule.values:
            raise InputError(f"{source}: patient {pid}: {rule.column} = {value!r} has no entry in the \"values\" of "
                             f"{target!r} (known codes: {', '.join(sorted(rule.values))}); add it to the mapping.")
        value = rule.values[key]
        if _missing(value):
            return None
    if rule.invert:
        key = _code(value)
        if key not in ("0", "1"):
            raise InputError(f"{source}: patient {pid}: {rule.column} = {value!r} is not 0/1; \"invert\" reads a 0/1 "
                             f"flag (e.g. censored 1 -> event 0).")
        value = 1 - int(key)
    if rule.unit is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{source}: patient {pid}: {rule.column} = {value!r} is not a number, so it cannot be "
                             f"converted from {rule.unit} to {target}.") from None
        if not math.isfinite(number):
            raise InputError(f"{source}: patient {pid}: {rule.column} = {value!r} is not a finite number.")
        value = number * UNITS[target][rule.unit.lower()]
    return value


def read_site_clinical(path: str | os.PathLike, mapping: ColumnMapping | str | os.PathLike
                       ) -> tuple[pd.DataFrame, list[str]]:
    """Read a site's clinical table (CSV, see :func:`HCCTwinLib.io.read_clinical_table`) and map it to HCCTwin
    columns; returns ``(table, notes)``. The file is only read."""
    from .io import read_clinical_table

    if not isinstance(mapping, ColumnMapping):
        mapping = load_mapping(mapping)
    site, notes = read_clinical_table(path, required=(mapping.id_column,))
    site[mapping.id_column] = [None if _missing(v) else str(v).strip() for v in site[mapping.id_column]]
    empty = [n + 2 for n, v in enumerate(site[mapping.id_column]) if not v]
    if empty:
        raise InputError(f"{path}: row(s) {', '.join(map(str, empty[:5]))} have no {mapping.id_column}; give every "
                         f"row a unique patient identifier or delete the row.")
    dupes = sorted(set(site[mapping.id_column][site[mapping.id_column].duplicated()]))
    if dupes:
        raise InputError(f"{path}: {mapping.id_column} value(s) {', '.join(map(repr, dupes[:5]))} occur more than "
                         f"once; each patient needs exactly one row.")
    table, more = apply_mapping(site, mapping)
    return table, notes + more


def site_table(table: pd.DataFrame, mapping: ColumnMapping) -> pd.DataFrame:
    """The inverse of :func:`apply_mapping`: an HCCTwin table in the site's column names, units and codes (HCCTwin
    columns the mapping does not name are left out). Used to write the simulator's site-style table."""
    out = pd.DataFrame(index=table.index)
    for target, rule in mapping.rules.items():
        if target not in table.columns:
            continue
        inverse = {}
        for code, val in rule.values.items():
            inverse.setdefault(_code(val), code)
        cells = []
        for value in table[target]:
            if _missing(value):
                cells.append(None)
                continue
            if rule.unit is not None:
                value = round(float(value) / UNITS[target][rule.unit.lower()], 4)
            if rule.invert:
                value = 1 - int(_code(value))
            if rule.values:
                key = _code(value)
                if key not in inverse:
                    raise InputError(f"{mapping.source}: {target} = {value!r} has no site code in \"values\".")
                value = inverse[key]
                value = int(value) if value.lstrip("-").isdigit() else value
            cells.append(value)
        out[rule.column] = cells
    return out.reset_index(drop=True)


#: The mapping the simulator writes next to its DICOM cohort: TCIA HCC-TACE-Seg-like names, survival in weeks with
#: censored flags, bilirubin in mg/dL, albumin in g/dL, tumour size in cm, coded sex and readers' mRECIST.
SIMULATED_SITE_MAPPING_DICT: dict[str, Any] = {
    "format": MAPPING_FORMAT,
    "columns": {
        "patient_id": "TCIA_ID",
        "age_years": "Age",
        "sex": {"column": "Sex", "values": {"1": "M", "2": "F"}},
        "ecog": "PS",
        "child_pugh_points": "CPS_points",
        "albumin_g_l": {"column": "Alb", "unit": "g/dL"},
        "bilirubin_umol_l": {"column": "T_BIL", "unit": "mg/dL"},
        "inr": "INR",
        "ascites": {"column": "Ascites", "values": {"absent": 0, "mild": 1, "moderate-severe": 2}},
        "encephalopathy": {"column": "HE", "values": {"none": 0, "grade 1-2": 1, "grade 3-4": 2}},
        "afp_ng_ml": {"column": "AFP", "unit": "IU/mL"},
        "etiology": "Etiology",
        "n_tumors": "tumor_nodul",
        "max_diameter_mm": {"column": "Tr_Size", "unit": "cm"},
        "pvtt": "PVT",
        "extrahepatic_spread": "Metastasis",
        "bclc": "BCLC",
        "resectable": "Resectable",
        "regimen": "Treatment",
        "os_months": {"column": "OS", "unit": "weeks"},
        "os_event": {"column": "Censored_OS", "invert": True},
        "pfs_months": {"column": "TTP", "unit": "weeks"},
        "pfs_event": {"column": "Censored_TTP", "invert": True},
        "metastasis_months": {"column": "Time_to_metastasis", "unit": "weeks"},
        "metastasis_event": {"column": "Censored_metastasis", "invert": True},
        "best_response_mrecist": "Best_mRECIST",
        "reader1_mrecist": {"column": "1_mRECIST", "values": {"1": "CR", "2": "PR", "3": "SD", "4": "PD"}},
        "reader2_mrecist": {"column": "2_mRECIST", "values": {"1": "CR", "2": "PR", "3": "SD", "4": "PD"}},
        "reader3_mrecist": {"column": "3_mRECIST", "values": {"1": "CR", "2": "PR", "3": "SD", "4": "PD"}},
        "split": "Cohort",
    },
}
SIMULATED_SITE_MAPPING = ColumnMapping.from_dict(SIMULATED_SITE_MAPPING_DICT, source="simulated site mapping")


def reader_columns(table: pd.DataFrame) -> dict[str, list[str]]:
    """Readers' mRECIST columns of an HCCTwin table grouped by time point: ``{"first": [...], "w08": [...]}``."""
    import re

    groups: dict[str, list[str]] = {}
    for col in table.columns:
        m = re.fullmatch(rf"{READER_PREFIX}(\d+)_mrecist(?:_(w\d\d))?", str(col))
        if m:
            groups.setdefault(m.group(2) or "first", []).append(str(col))
    return {k: sorted(v) for k, v in groups.items()}
