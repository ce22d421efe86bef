"""Regimen catalogue: the candidate treatments, their components and machine-readable eligibility criteria.

The catalogue is data (``regimens.json`` next to this file); a site can load its own JSON with extra regimens via
:func:`load_catalogue`. Layout::

    {"schema_version": 1,
     "study_eligibility": [<criterion>, ...],        # optional, applies to every regimen (scope "study")
     "regimens": [{"id", "name", "short_name", "components": [{"agent", "class", "dose", "schedule"}],
                   "assessment_interval_weeks", "intra_arterial", "lipiodol",
                   "eligibility": [<criterion>, ...], "references": [str, ...], "color": "#rrggbb",
                   "notes": str (optional), "preselected": bool (optional, default true: ticked when a
                   user interface first offers the catalogue)}, ...]}

    <criterion> = {"field": <clinical column or score key>, "op": "<=" | "<" | ">=" | ">" | "==" | "!=" | "in" |
                   "not in", "value": <number | string | list>, "source": str, "description": str (optional)}

Criterion fields are the clinical columns and the keys of :func:`HCCTwinLib.clinical.compute_scores`
(e.g. ``child_pugh_points``, ``child_pugh_class``, ``bclc``, ``ecog``, ``resectable``).
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .clinical import CLINICAL_FIELDS, SCORE_FIELDS, compute_scores, validate_clinical
from .errors import InputError

__all__ = ["Component", "Criterion", "Regimen", "eligibility_warnings", "DEFAULT_CATALOGUE_PATH", "REGIMEN_IDS",
           "OPS", "CRITERION_FIELDS",
           "load_catalogue", "get_regimen"]

DEFAULT_CATALOGUE_PATH = Path(__file__).with_name("regimens.json")

OPS = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq, "!=": operator.ne,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}
_ORDER_OPS = ("<=", "<", ">=", ">")
_LIST_OPS = ("in", "not in")
#: Fields a criterion may test.
CRITERION_FIELDS = tuple(dict.fromkeys(CLINICAL_FIELDS + SCORE_FIELDS))

_FIELD_LABELS = {
    "child_pugh_points": "Child-Pugh", "child_pugh_class": "Child-Pugh class", "ecog": "ECOG", "bclc": "BCLC",
    "resectable": "resectable", "pvtt": "PVTT", "extrahepatic_spread": "extrahepatic spread",
    "albi_grade": "ALBI grade",
    "afp_ng_ml": "AFP (ng/mL)", "n_tumors": "number of tumours", "max_diameter_mm": "largest diameter (mm)",
    "age_years": "age (years)",
}


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(_fmt(v) for v in value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _describe_patient(field: str, values: Mapping[str, Any]) -> str:
    value = values[field]
    label = _FIELD_LABELS.get(field, field)
    if field == "child_pugh_points" and values.get("child_pugh_class"):
        return f"Child-Pugh {value} ({values['child_pugh_class']}{value})"
    if field == "child_pugh_class" and values.get("child_pugh_points") is not None:
        return f"Child-Pugh class {value} ({value}{values['child_pugh_points']})"
    if field == "resectable":
        return "resectable (resectable = 1)" if value else "not resectable (resectable = 0)"
    if isinstance(value, bool):
        return f"{label} {'present' if value else 'absent'} ({field} = {_fmt(value)})"
    if isinstance(value, float):
        return f"{label} {value:g}"
    return f"{label} {value}"


@dataclass(frozen=True)
class Component:
    """One treatment component as given in the trials (``drug_class`` is the JSON key ``class``)."""

    agent: str
    drug_class: str
    dose: str
    schedule: str


@dataclass(frozen=True)
class Criterion:
    """A machine-readable eligibility criterion: ``values[field] <op> value`` must hold.

    ``scope`` is ``"trial"`` for a regimen's own criteria and ``"study"`` for the study-wide population criteria.
    """

    field: str
    op: str
    value: Any
    source: str
    scope: str = "trial"
    description: str = ""

    def passes(self, values: Mapping[str, Any]) -> bool | None:
        """True/False, or None when the field is not recorded (missing, None or NaN)."""
        actual = values.get(self.field)
        if actual is None or (isinstance(actual, float) and actual != actual):
            return None
        return bool(OPS[self.op](actual, self.value))

    def check(self, values: Mapping[str, Any], regimen_id: str = "") -> str | None:
        """None when the criterion holds, otherwise a warning naming the criterion and the patient's value, e.g.
        ``"Child-Pugh 9 (B9) exceeds the trial limit of 7 for tace_pd1_len (TACE/HAIC triple-therapy cohorts)"``."""
        ok = self.passes(values)
        if ok:
            return None
        where = f" for {regimen_id}" if regimen_id else ""
        source = f" ({self.source})" if self.source else ""
        label = _FIELD_LABELS.get(self.field, self.field)
        if ok is None:
            return (f"{label} not recorded: cannot check the {self.scope} criterion {self.field} {self.op} "
                    f"{_fmt(self.value)}{where}{source}")
        patient = _describe_patient(self.field, values)
        v = _fmt(self.value)
        verb = {
            "<=": f"exceeds the {self.scope} limit of {v}",
            "<": f"is not below the {self.scope} limit of {v}",
            ">=": f"is below the {self.scope} minimum of {v}",
            ">": f"is not above the {self.scope} minimum of {v}",
            "==": f"does not meet the {self.scope} requirement {self.field} = {v}",
            "!=": f"is excluded by the {self.scope} criterion {self.field} != {v}",
            "in": f"is outside the {self.scope} range ({label} {v})",
            "not in": f"is excluded by the {self.scope} criterion {self.field} not {v}",
        }[self.op]
        return f"{patient} {verb}{where}{source}"


@dataclass(frozen=True)
class Regimen:
    """One candidate regimen of the catalogue."""

    id: str
    name: str
    short_name: str
    components: tuple[Component, ...]
    assessment_interval_weeks: int
    intra_arterial: bool
    lipiodol: bool
    eligibility: tuple[Criterion, ...]
    references: tuple[str, ...]
    color: str
    notes: str = ""
    preselected: bool = True  # ticked when a user interface first offers the catalogue


# ----------------------------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------------------------

_REGIMEN_KEYS = ("id", "name", "short_name", "components", "assessment_interval_weeks", "intra_arterial", "lipiodol",
                 "eligibility", "references", "color")
_COMPONENT_KEYS = ("agent", "class", "dose", "schedule")
_CRITERION_KEYS = ("field", "op", "value", "source")
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


def _fail(where: str, problem: str) -> InputError:
    return InputError(f"Regimen catalogue {where}: {problem}")


def _need_keys(obj: Any, keys: tuple[str, ...], where: str, what: str) -> None:
    if not isinstance(obj, Mapping):
        raise _fail(where, f"each {what} must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _fail(where, f"{what} is missing key(s) {', '.join(missing)} (required: {', '.join(keys)})")


def _need_str(obj: Mapping, key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _need_bool(obj: Mapping, key: str, where: str) -> bool:
    value = obj[key]
    if not isinstance(value, bool):
        raise _fail(where, f"{key!r} must be true or false, got {value!r}")
    return value


def _parse_criterion(obj: Any, where: str, scope: str) -> Criterion:
    _need_keys(obj, _CRITERION_KEYS, where, "criterion")
    field, op, value = obj["field"], obj["op"], obj["value"]
    if field not in CRITERION_FIELDS:
        raise _fail(where, f"unknown field {field!r}; a criterion can test: {', '.join(CRITERION_FIELDS)}")
    if op not in OPS:
        raise _fail(where, f"unknown op {op!r} for field {field!r}; valid ops: {', '.join(OPS)}")
    if op in _ORDER_OPS and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _fail(where, f"op {op!r} on {field!r} needs a number, got {value!r}")
    if op in _LIST_OPS:
        if not isinstance(value, list) or not value:
            raise _fail(where, f"op {op!r} on {field!r} needs a non-empty list, got {value!r}")
        value = tuple(value)
    elif isinstance(value, (list, dict)):
        raise _fail(where, f"op {op!r} on {field!r} needs a single value, got {value!r} (use 'in' for a list)")
    source = obj["source"]
    if not isinstance(source, str):
        raise _fail(where, f"'source' must be a string, got {source!r}")
    return Criterion(field=field, op=op, value=value, source=source, scope=scope,
                     description=str(obj.get("description", "")))


def _parse_component(obj: Any, where: str) -> Component:
    _need_keys(obj, _COMPONENT_KEYS, where, "component")
    return Component(agent=_need_str(obj, "agent", where), drug_class=_need_str(obj, "class", where),
                     dose=_need_str(obj, "dose", where), schedule=_need_str(obj, "schedule", where))


def _parse_regimen(obj: Any, where: str, study: tuple[Criterion, ...]) -> Regimen:
    _need_keys(obj, _REGIMEN_KEYS, where, "regimen")
    rid = obj["id"]
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        raise _fail(where, f"id {rid!r} must be lower-case letters, digits and underscores, starting with a letter")
    where = f"{where} (id {rid!r})"
    components = obj["components"]
    if not isinstance(components, list) or not components:
        raise _fail(where, "'components' must be a non-empty list")
    weeks = obj["assessment_interval_weeks"]
    if isinstance(weeks, bool) or not isinstance(weeks, int) or weeks <= 0:
        raise _fail(where, f"'assessment_interval_weeks' must be a positive integer, got {weeks!r}")
    criteria = obj["eligibility"]
    if not isinstance(criteria, list):
        raise _fail(where, "'eligibility' must be a list of criteria (may be empty)")
    references = obj["references"]
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise _fail(where, "'references' must be a list of strings")
    color = obj["color"]
    if not isinstance(color, str) or not _COLOR_RE.match(color):
        raise _fail(where, f"'color' must be a hex colour like '#1f77b4', got {color!r}")
    return Regimen(
        id=rid, name=_need_str(obj, "name", where), short_name=_need_str(obj, "short_name", where),
        components=tuple(_parse_component(c, f"{where} component {i}") for i, c in enumerate(components)),
        assessment_interval_weeks=weeks, intra_arterial=_need_bool(obj, "intra_arterial", where),
        lipiodol=_need_bool(obj, "lipiodol", where),
        eligibility=tuple(_parse_criterion(c, f"{where} criterion {i}", "trial") for i, c in enumerate(criteria))
        + study,
        references=tuple(references), color=color.lower(), notes=str(obj.get("notes", "")),
        preselected=_need_bool(obj, "preselected", where) if "preselected" in obj else True)


def _parse_catalogue(data: Any, where: str) -> dict[str, Regimen]:
    if not isinstance(data, Mapping) or "regimens" not in data:
        raise _fail(where, 'the top level must be a JSON object with a "regimens" list')
    study_raw = data.get("study_eligibility", [])
    if not isinstance(study_raw, list):
        raise _fail(where, "'study_eligibility' must be a list of criteria")
    study = tuple(_parse_criterion(c, f"{where} study criterion {i}", "study") for i, c in enumerate(study_raw))
    entries = data["regimens"]
    if not isinstance(entries, list) or not entries:
        raise _fail(where, "'regimens' must be a non-empty list")
    catalogue: dict[str, Regimen] = {}
    colors: dict[str, str] = {}
    for i, entry in enumerate(entries):
        regimen = _parse_regimen(entry, f"{where} regimen {i}", study)
        if regimen.id in catalogue:
            raise _fail(where, f"duplicate regimen id {regimen.id!r} (entries must have unique ids)")
        if regimen.color in colors:
            raise _fail(where, f"regimen {regimen.id!r} reuses colour {regimen.color} of {colors[regimen.color]!r}; "
                               f"give each regimen a distinct colour for plots")
        catalogue[regimen.id] = regimen
        colors[regimen.color] = regimen.id
    return catalogue


@lru_cache(maxsize=1)
def _default_catalogue() -> dict[str, Regimen]:
    return _load(DEFAULT_CATALOGUE_PATH)


def _load(path: Path) -> dict[str, Regimen]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"Regimen catalogue {path}: cannot be read ({exc.strerror or exc}); check the path.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"Regimen catalogue {path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from None
    return _parse_catalogue(data, str(path))


def load_catalogue(path: str | Path | None = None) -> dict[str, Regimen]:
    """Load a regimen catalogue: the packaged ``regimens.json`` by default, or a site's own JSON file.

    Returns ``{id: Regimen}`` in file order; each regimen's ``eligibility`` holds its own criteria followed by the
    study-wide ones. Raises :class:`InputError` naming the file, the entry and the problem (unreadable file, invalid
    JSON, missing keys, duplicate ids, unknown op or field, bad types, reused colours).
    """
    if path is None:
        return dict(_default_catalogue())
    return _load(Path(path))


def get_regimen(regimen_id: str, catalogue: Mapping[str, Regimen] | None = None) -> Regimen:
    """The regimen with this id (default catalogue unless ``catalogue`` is given); the error lists the valid ids."""
    regimens = _default_catalogue() if catalogue is None else catalogue
    try:
        return regimens[regimen_id]
    except (KeyError, TypeError):
        raise InputError(f"Unknown regimen id {regimen_id!r}; valid ids: {', '.join(regimens)}.") from None


#: Regimen ids of the packaged catalogue, in catalogue order.
REGIMEN_IDS: tuple[str, ...] = tuple(_default_catalogue())


def eligibility_warnings(regimen_id: str, values: Mapping[str, Any], catalogue: Mapping[str, Any] | None = None
                         ) -> list[str]:
    """Warnings for a patient against a regimen's eligibility criteria (empty list = no warning).

    The criteria are data in the regimen catalogue (``regimens.json``, or ``catalogue`` as returned by
    :func:`load_catalogue`), checked on the validated values merged with
    :func:`~HCCTwinLib.clinical.compute_scores` (computed Child-Pugh and BCLC take precedence over given ones).
    A study-wide criterion is not repeated when a regimen criterion on the same field already warned. A criterion
    whose field is not recorded (e.g. ``resectable``) gives a "not recorded" warning. Raises
    :class:`~HCCTwinLib.errors.ClinicalValueError` for invalid values and :class:`~HCCTwinLib.errors.InputError` for
    an unknown regimen id. (Here, not in :mod:`HCCTwinLib.clinical`: the criteria are the catalogue's, and the
    clinical module stays below the catalogue.)
    """
    regimen = get_regimen(regimen_id, catalogue)
    merged = validate_clinical(values)
    merged.update({k: val for k, val in compute_scores(values).items() if k != "notes"})
    warnings: list[str] = []
    warned_fields: set[str] = set()
    for crit in sorted(regimen.eligibility, key=lambda c: c.scope == "study"):
        if crit.scope == "study" and crit.field in warned_fields:
            continue
        message = crit.check(merged, regimen.id)
        if message is not None:
            warnings.append(message)
            warned_fields.add(crit.field)
    return warnings
