"""Clinical scores for HCC: ALBI, Child-Pugh, BCLC 2022, HAP / mHAP-II, six-and-twelve, up-to-seven, tumour burden
score, plus validation of clinical values and regimen eligibility warnings.

Pure Python (stdlib + numpy only): no Slicer, no torch. Clinical values use the cohort columns of the HCCTwin
cohort layout, with units in the names:

``age_years, sex, ecog, child_pugh_points, albumin_g_l, bilirubin_umol_l, inr, ascites, encephalopathy, afp_ng_ml,
etiology, n_tumors, max_diameter_mm, pvtt, extrahepatic_spread, bclc, resectable``

Categorical coding: ``ascites`` 0 none / 1 mild / 2 moderate-severe and ``encephalopathy`` 0 none / 1 grade I-II /
2 grade III-IV (categories, *not* Child-Pugh points). ``pvtt``, ``extrahepatic_spread`` and ``resectable`` are
booleans (0/1). Tumour sizes are in millimetres; the size-based scores convert to centimetres themselves.

Boundary convention (applied everywhere and tested): a cut-off quoted as "<x" / ">x" in the source is strict, and
a band quoted as "a-b" includes both ends. Values are compared after rounding to 6 decimals, so that a unit
conversion such as 3 mg/dL x 17.1 = 51.300000000000004 umol/L still lands on the boundary it was meant to hit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import ClinicalValueError

__all__ = [
    "CLINICAL_FIELDS", "REQUIRED_FIELDS", "CHILD_PUGH_INPUT_FIELDS", "OPTIONAL_FIELDS", "SCORE_FIELDS",
    "BILIRUBIN_UMOL_PER_MG_DL", "ChildPugh", "ScoreClass", "TumorScore",
    "albi_score", "albi_grade", "child_pugh", "child_pugh_class", "bclc_stage", "hap_score", "mhap2_score",
    "six_and_twelve", "up_to_seven", "tumor_burden_score", "validate_clinical", "compute_scores",
]

#: 1 mg/dL of bilirubin = 17.1 umol/L.
BILIRUBIN_UMOL_PER_MG_DL = 17.1

#: Needed by every score (BCLC needs ECOG, tumour burden, PVTT and spread; HAP needs AFP, ...).
REQUIRED_FIELDS = ("ecog", "albumin_g_l", "bilirubin_umol_l", "afp_ng_ml", "n_tumors", "max_diameter_mm", "pvtt",
                   "extrahepatic_spread")
#: Needed to compute Child-Pugh from labs; required unless ``child_pugh_points`` is given.
CHILD_PUGH_INPUT_FIELDS = ("inr", "ascites", "encephalopathy")
#: Validated when present, never required.
OPTIONAL_FIELDS = ("age_years", "sex", "etiology", "child_pugh_points", "bclc", "resectable")
#: All clinical columns, in cohort-table order.
CLINICAL_FIELDS = ("age_years", "sex", "ecog", "child_pugh_points", "albumin_g_l", "bilirubin_umol_l", "inr",
                   "ascites", "encephalopathy", "afp_ng_ml", "etiology", "n_tumors", "max_diameter_mm", "pvtt",
                   "extrahepatic_spread", "bclc", "resectable")
#: Keys :func:`compute_scores` returns (besides ``notes``).
SCORE_FIELDS = ("albi_score", "albi_grade", "child_pugh_points", "child_pugh_class", "child_pugh_label", "bclc",
                "hap_points", "hap_class", "mhap2_points", "mhap2_class", "six_twelve_cm", "six_twelve_stratum",
                "up_to_seven_value", "within_up_to_seven", "tbs", "tbs_group")

BCLC_STAGES = ("0", "A", "B", "C", "D")

_ASCITES_WORDS = {"none": 0, "absent": 0, "no": 0, "mild": 1, "slight": 1, "moderate": 2, "severe": 2,
                  "moderate-severe": 2, "moderate-to-severe": 2, "tense": 2}
_ENCEPHALOPATHY_WORDS = {"none": 0, "absent": 0, "no": 0, "grade1-2": 1, "grade 1-2": 1, "grade i-ii": 1,
                         "i-ii": 1, "1-2": 1, "mild": 1, "grade3-4": 2, "grade 3-4": 2, "grade iii-iv": 2,
                         "iii-iv": 2, "3-4": 2, "severe": 2}
_TRUE_WORDS = {"1", "true", "yes", "y", "present"}
_FALSE_WORDS = {"0", "false", "no", "n", "absent", "none"}
_SEX_WORDS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}


# ----------------------------------------------------------------------------------------------------------------
# Value checks shared by the score functions and validate_clinical
# ----------------------------------------------------------------------------------------------------------------

def _r(x: float) -> float:
    """Round for boundary comparisons (see the module docstring)."""
    return round(float(x), 6)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == "" or value.strip().lower() in {"nan", "na", "n/a"}
    if type(value).__name__ == "NAType":  # pandas.NA without importing pandas
        return True
    try:
        return bool(value != value)  # NaN
    except (TypeError, ValueError):
        return False


def _number(field: str, value: Any, unit: str) -> float:
    if _is_missing(value):
        raise ClinicalValueError(f"{field} is missing: give a number in {unit}.")
    if isinstance(value, bool):
        raise ClinicalValueError(f"{field} = {value!r} is a yes/no value: give a number in {unit}.")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ClinicalValueError(f"{field} = {value!r} is not a number: give a number in {unit}.") from None
    if not math.isfinite(number):
        raise ClinicalValueError(f"{field} = {value!r} is not finite: give a number in {unit}.")
    return number


def _integer(field: str, value: Any, lo: int, hi: int | None, what: str) -> int:
    number = _number(field, value, what)
    if number != int(number):
        raise ClinicalValueError(f"{field} = {value!r} is not a whole number: give an integer {what}.")
    number = int(number)
    if number < lo or (hi is not None and number > hi):
        rng = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        raise ClinicalValueError(f"{field} = {value!r} is out of range: expected an integer {what} ({rng}). Correct "
                                 f"the value.")
    return number


def _check_bilirubin(value: Any) -> float:
    field = "bilirubin_umol_l"
    v = _number(field, value, "umol/L")
    if 0 < v < 3:
        raise ClinicalValueError(
            f"{field} = {value!r} looks like mg/dL, but the unit is umol/L (typically 5-600). Multiply mg/dL by "
            f"{BILIRUBIN_UMOL_PER_MG_DL} to get umol/L ({v:g} mg/dL = {v * BILIRUBIN_UMOL_PER_MG_DL:.1f} umol/L).")
    if not 3 <= v <= 1000:
        raise ClinicalValueError(
            f"{field} = {value!r} is implausible: expected total bilirubin in umol/L, typically 5-600 (accepted "
            f"3-1000). Check the value and its unit (1 mg/dL = {BILIRUBIN_UMOL_PER_MG_DL} umol/L).")
    return v


def _check_albumin(value: Any) -> float:
    field = "albumin_g_l"
    v = _number(field, value, "g/L")
    if 0 < v < 10:
        raise ClinicalValueError(
            f"{field} = {value!r} looks like g/dL, but the unit is g/L (plausibly 15-60). Multiply g/dL by 10 to get "
            f"g/L ({v:g} g/dL = {v * 10:g} g/L).")
    if not 10 <= v <= 80:
        raise ClinicalValueError(
            f"{field} = {value!r} is implausible: expected serum albumin in g/L, plausibly 15-60 (accepted 10-80). "
            f"Check the value and its unit.")
    return v


def _check_inr(value: Any) -> float:
    v = _number("inr", value, "INR (ratio, no unit)")
    if not 0.5 <= v <= 10:
        raise ClinicalValueError(
            f"inr = {value!r} is out of range: expected the international normalized ratio, 0.5-10 (not the "
            f"prothrombin time in seconds or percent). Give the INR from the lab report.")
    return v


def _check_afp(value: Any) -> float:
    v = _number("afp_ng_ml", value, "ng/mL")
    if v < 0:
        raise ClinicalValueError(f"afp_ng_ml = {value!r} is negative: AFP is a concentration in ng/mL (>= 0). Correct "
                                 f"the value.")
    return v


def _check_ecog(value: Any) -> int:
    return _integer("ecog", value, 0, 4, "ECOG performance status")


def _check_n_tumors(value: Any) -> int:
    return _integer("n_tumors", value, 0, None, "number of tumour nodules")


#: A largest diameter under this many mm given with a decimal (7.2) is noted as a possible value in cm.
CM_SUSPECT_DIAMETER_MM = 15.0


def diameter_consistency_note(max_diameter_mm: Any, largest_lesion_ml: float) -> str | None:
    """A note when the given largest diameter is impossible for the largest segmented lesion: any body of volume V
    has a largest diameter of at least 0.816 x the diameter of the sphere of volume V (Jung's theorem); below half of
    that sphere's diameter the value is almost surely in the wrong unit (cm for mm) or belongs to another lesion."""
    try:
        d = float(max_diameter_mm)
    except (TypeError, ValueError):
        return None
    if not (d > 0 and largest_lesion_ml > 0):
        return None
    sphere_mm = (6.0 * largest_lesion_ml * 1000.0 / math.pi) ** (1.0 / 3.0)
    if d >= 0.5 * sphere_mm:
        return None
    return (f"max_diameter_mm = {d:g} but the largest segmented tumour has {largest_lesion_ml:.0f} mL (a sphere of "
            f"{sphere_mm:.0f} mm; its largest diameter is at least {0.816 * sphere_mm:.0f} mm): is the diameter in "
            f"cm ({d * 10:g} mm)? The scores (BCLC, HAP, up-to-seven, ...) use the given {d:g} mm; correct the value "
            f"if it is wrong.")


def _check_diameter(value: Any, n_tumors: int | None = None) -> float:
    field = "max_diameter_mm"
    v = _number(field, value, "mm")
    if not 0 <= v <= 300:
        raise ClinicalValueError(
            f"{field} = {value!r} is out of range: expected the largest tumour diameter in mm, 0-300. Check the "
            f"value and its unit.")
    if n_tumors is not None:
        if n_tumors > 0 and v == 0:
            raise ClinicalValueError(
                f"{field} = 0 but n_tumors = {n_tumors}: give the largest tumour diameter in mm (> 0).")
        if n_tumors > 0 and v < 1:
            raise ClinicalValueError(
                f"{field} = {value!r} is below 1 mm for a counted tumour: it looks like cm (or m), but the unit is "
                f"mm. Multiply cm by 10 to get mm ({v:g} cm = {v * 10:g} mm).")
        if n_tumors == 0 and v > 0:
            raise ClinicalValueError(
                f"{field} = {value!r} but n_tumors = 0: give n_tumors >= 1, or max_diameter_mm = 0 when no tumour "
                f"is visible.")
    return v


def _check_category(field: str, value: Any, words: Mapping[str, int], spelled: str) -> int:
    if _is_missing(value):
        raise ClinicalValueError(f"{field} is missing: give {spelled}.")
    if isinstance(value, str):
        key = value.strip().lower()
        if key in words:
            return words[key]
        if key in {"0", "1", "2"}:
            return int(key)
        raise ClinicalValueError(f"{field} = {value!r} is not recognised: use {spelled}.")
    if isinstance(value, bool):
        raise ClinicalValueError(f"{field} = {value!r} is a yes/no value: expected {spelled}.")
    if isinstance(value, numbers.Number) and float(value) in (0.0, 1.0, 2.0):
        return int(value)
    raise ClinicalValueError(
        f"{field} = {value!r} is not recognised: use {spelled} (categories 0/1/2, not Child-Pugh points 1-3).")


def _check_ascites(value: Any) -> int:
    return _check_category("ascites", value, _ASCITES_WORDS, '"none"/"mild"/"moderate" or 0/1/2')


def _check_encephalopathy(value: Any) -> int:
    return _check_category("encephalopathy", value, _ENCEPHALOPATHY_WORDS,
                           '"none"/"grade1-2"/"grade3-4" or 0/1/2')


def _check_bool(field: str, value: Any) -> bool:
    if _is_missing(value):
        raise ClinicalValueError(f"{field} is missing: give 0 (no) or 1 (yes).")
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _TRUE_WORDS:
            return True
        if key in _FALSE_WORDS:
            return False
    elif isinstance(value, numbers.Number) and float(value) in (0.0, 1.0):
        return bool(value)
    raise ClinicalValueError(f"{field} = {value!r} is not a yes/no value: give 0 (no) or 1 (yes).")


def _check_bclc(value: Any) -> str:
    text = str(value).strip().upper()
    for prefix in ("BCLC-", "BCLC "):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    if text.endswith(".0"):  # 0.0 read from a numeric column
        text = text[:-2]
    if text not in BCLC_STAGES:
        raise ClinicalValueError(f"bclc = {value!r} is not a BCLC stage: use one of 0, A, B, C, D, or leave it empty "
                                 f"(HCCTwin computes the stage).")
    return text


def _check_child_pugh_class(value: Any) -> str:
    text = str(value).strip().upper()
    if text not in ("A", "B", "C"):
        raise ClinicalValueError(f"child_pugh_class = {value!r} is not a Child-Pugh class: use A, B or C.")
    return text


# ----------------------------------------------------------------------------------------------------------------
# Liver function
# ----------------------------------------------------------------------------------------------------------------

def albi_score(bilirubin_umol_l: float, albumin_g_l: float) -> float:
    """Albumin-bilirubin (ALBI) score: ``0.66 * log10(bilirubin umol/L) - 0.085 * albumin g/L``.

    Source: Johnson PJ et al., J Clin Oncol 2015;33:550-558. Raises :class:`ClinicalValueError` for values that look
    like mg/dL (bilirubin) or g/dL (albumin).
    """
    bili = _check_bilirubin(bilirubin_umol_l)
    alb = _check_albumin(albumin_g_l)
    return 0.66 * math.log10(bili) - 0.085 * alb


def albi_grade(score: float) -> int:
    """ALBI grade (Johnson 2015 J Clin Oncol): 1 if score <= -2.60, 2 if -2.60 < score <= -1.39, 3 if > -1.39."""
    s = _r(_number("albi_score", score, "ALBI units"))
    if s <= -2.60:
        return 1
    if s <= -1.39:
        return 2
    return 3


@dataclass(frozen=True)
class ChildPugh:
    """Child-Pugh points (5-15) and class A (5-6), B (7-9), C (10-15)."""

    points: int
    cls: str

    @property
    def label(self) -> str:
        """E.g. ``"A5"``, ``"B9"``."""
        return f"{self.cls}{self.points}"

    def __str__(self) -> str:
        return self.label


def child_pugh_class(points: int) -> str:
    """Child-Pugh class from points (Pugh 1973): A 5-6, B 7-9, C 10-15."""
    p = _integer("child_pugh_points", points, 5, 15, "Child-Pugh score")
    return "A" if p <= 6 else ("B" if p <= 9 else "C")


def child_pugh(bilirubin_umol_l: float, albumin_g_l: float, inr: float, ascites: Any, encephalopathy: Any) -> ChildPugh:
    """Child-Pugh score (Pugh RNH et al., Br J Surg 1973;60:646-649; INR version of the prothrombin criterion).

    Points 1 / 2 / 3 per item:

    - bilirubin < 2 / 2-3 / > 3 mg/dL, i.e. < 34.2 / 34.2-51.3 / > 51.3 umol/L (34.2 exactly scores 2);
    - albumin > 35 / 28-35 / < 28 g/L (35 exactly scores 2, 28 exactly scores 2);
    - INR < 1.7 / 1.7-2.3 / > 2.3 (1.7 and 2.3 score 2);
    - ascites none / mild / moderate-severe (0 / 1 / 2 or words);
    - encephalopathy none / grade I-II / grade III-IV (0 / 1 / 2 or words).

    Middle bands include both ends (see module docstring). Class A 5-6, B 7-9, C 10-15.
    """
    bili = _r(_check_bilirubin(bilirubin_umol_l))
    alb = _r(_check_albumin(albumin_g_l))
    ratio = _r(_check_inr(inr))
    asc = _check_ascites(ascites)
    enc = _check_encephalopathy(encephalopathy)
    lo_bili, hi_bili = _r(2 * BILIRUBIN_UMOL_PER_MG_DL), _r(3 * BILIRUBIN_UMOL_PER_MG_DL)
    points = (1 if bili < lo_bili else 2 if bili <= hi_bili else 3)
    points += (1 if alb > 35 else 2 if alb >= 28 else 3)
    points += (1 if ratio < 1.7 else 2 if ratio <= 2.3 else 3)
    points += 1 + asc + 1 + enc
    return ChildPugh(points, child_pugh_class(points))


# ----------------------------------------------------------------------------------------------------------------
# Staging and prognostic scores
# ----------------------------------------------------------------------------------------------------------------

class ScoreClass(NamedTuple):
    """A points-based score and its class letter (compares equal to ``(points, cls)``)."""

    points: int
    cls: str


class TumorScore(NamedTuple):
    """A tumour-burden value and its group (compares equal to ``(value, group)``)."""

    value: float
    group: Any


def bclc_stage(*, n_tumors: int, max_diameter_mm: float, ecog: int, child_pugh_class: str, pvtt: bool = False,
               extrahepatic_spread: bool = False) -> str:
    """BCLC stage "0", "A", "B", "C" or "D" per the 2022 update (Reig M et al., J Hepatol 2022;76:681-693).

    Checked in this order:

    - D: end-stage liver function (here: Child-Pugh C) or ECOG 3-4;
    - C: portal invasion / macrovascular invasion (``pvtt``) or extrahepatic spread, or ECOG 1-2;
    - 0: single nodule <= 20 mm, ECOG 0 and preserved liver function (here: Child-Pugh A);
    - A: single nodule of any size, or 2-3 nodules all <= 30 mm (``max_diameter_mm`` <= 30), ECOG 0;
    - B: otherwise (multinodular beyond A, ECOG 0, no invasion or spread).

    Simplification: BCLC 2022 asks for "preserved liver function" in 0-B; a Child-Pugh B patient who is not end-stage
    is staged by tumour burden here (a single <= 20 mm nodule then counts as A, not 0). Needs ``n_tumors`` >= 1
    unless stage C or D is already decided.
    """
    ecog = _check_ecog(ecog)
    cls = _check_child_pugh_class(child_pugh_class)
    n = _check_n_tumors(n_tumors)
    d = _r(_check_diameter(max_diameter_mm, n))
    pvtt = _check_bool("pvtt", pvtt)
    ehs = _check_bool("extrahepatic_spread", extrahepatic_spread)
    if cls == "C" or ecog >= 3:
        return "D"
    if pvtt or ehs or ecog >= 1:
        return "C"
    if n == 0:
        raise ClinicalValueError(
            "n_tumors = 0: BCLC 0-B needs at least one counted nodule. Give n_tumors >= 1 (and max_diameter_mm), "
            "or give the stage in the bclc column.")
    if n == 1 and d <= 20 and cls == "A":
        return "0"
    if n == 1 or (n <= 3 and d <= 30):
        return "A"
    return "B"


def _hap_points(albumin_g_l: float, bilirubin_umol_l: float, afp_ng_ml: float, max_diameter_mm: float) -> int:
    alb = _r(_check_albumin(albumin_g_l))
    bili = _r(_check_bilirubin(bilirubin_umol_l))
    afp = _r(_check_afp(afp_ng_ml))
    d = _r(_check_diameter(max_diameter_mm))
    return int(alb < 36) + int(bili > 17) + int(afp > 400) + int(d > 70)


def _abcd(points: int) -> str:
    return "ABCD"[min(points, 3)]


def hap_score(albumin_g_l: float, bilirubin_umol_l: float, afp_ng_ml: float, max_diameter_mm: float) -> ScoreClass:
    """Hepatoma arterial-embolisation prognostic (HAP) score (Kadalayil L et al., Ann Oncol 2013;24:2565-2570).

    1 point each for albumin < 36 g/L, bilirubin > 17 umol/L, AFP > 400 ng/mL, dominant tumour > 7 cm (> 70 mm);
    cut-offs are strict (albumin 36, bilirubin 17, AFP 400, 70 mm score 0). Class A 0, B 1, C 2, D 3-4
    (median OS 27.6 / 18.5 / 9.0 / 3.6 months in the derivation cohort).
    """
    points = _hap_points(albumin_g_l, bilirubin_umol_l, afp_ng_ml, max_diameter_mm)
    return ScoreClass(points, _abcd(points))


def mhap2_score(albumin_g_l: float, bilirubin_umol_l: float, afp_ng_ml: float, max_diameter_mm: float,
                n_tumors: int) -> ScoreClass:
    """Modified HAP-II (mHAP-II) score (Park Y et al., Liver Int 2016;36:100-107).

    HAP points (see :func:`hap_score`) + 1 point for tumour multiplicity (>= 2 nodules); range 0-5. Classes as in
    Park 2016: A 0, B 1, C 2, D >= 3.
    """
    n = _check_n_tumors(n_tumors)
    points = _hap_points(albumin_g_l, bilirubin_umol_l, afp_ng_ml, max_diameter_mm) + int(n >= 2)
    return ScoreClass(points, _abcd(points))


def _burden_cm(max_diameter_mm: float, n_tumors: int) -> tuple[float, int]:
    n = _check_n_tumors(n_tumors)
    d_cm = _check_diameter(max_diameter_mm, n) / 10.0
    return d_cm, n


def six_and_twelve(max_diameter_mm: float, n_tumors: int) -> TumorScore:
    """Six-and-twelve score (Wang Q et al., J Hepatol 2019;70:893-903): largest tumour diameter (cm) + tumour number.

    Strata ``"<=6"`` (sum <= 6), ``"6-12"`` (6 < sum <= 12) and ``">12"`` (sum > 12), for TACE candidates.
    Returns ``(sum_cm, stratum)``.
    """
    d_cm, n = _burden_cm(max_diameter_mm, n_tumors)
    total = _r(d_cm + n)
    stratum = "<=6" if total <= 6 else ("6-12" if total <= 12 else ">12")
    return TumorScore(total, stratum)


def up_to_seven(max_diameter_mm: float, n_tumors: int) -> TumorScore:
    """Up-to-seven criterion (Mazzaferro V et al., Lancet Oncol 2009;10:35-43; with Yao's UCSF expanded criteria as
    context): largest tumour diameter (cm) + number of tumours; within when the sum is <= 7.

    Returns ``(value, within)`` with ``within`` a bool.
    """
    d_cm, n = _burden_cm(max_diameter_mm, n_tumors)
    value = _r(d_cm + n)
    return TumorScore(value, value <= 7)


def tumor_burden_score(max_diameter_mm: float, n_tumors: int) -> TumorScore:
    """Tumour burden score ``sqrt(d_cm**2 + n**2)`` with ``d_cm`` the largest diameter in cm and ``n`` the number of
    tumours (Sasaki K et al., Ann Surg 2018;267:132-141, derived for colorectal liver metastases with zones 3 / 9).

    HCC groups use the cut-offs 3.36 and 13.74 of the project's reference notes (HCC cohorts): ``"low"`` < 3.36,
    ``"intermediate"`` 3.36-13.74 (both ends included), ``"high"`` > 13.74. Returns ``(tbs, group)``.
    """
    d_cm, n = _burden_cm(max_diameter_mm, n_tumors)
    tbs = math.hypot(d_cm, n)
    t = _r(tbs)
    group = "low" if t < 3.36 else ("intermediate" if t <= 13.74 else "high")
    return TumorScore(tbs, group)


# ----------------------------------------------------------------------------------------------------------------
# Whole records
# ----------------------------------------------------------------------------------------------------------------

def _normalize_optional(field: str, value: Any, out: dict[str, Any]) -> None:
    if field == "age_years":
        age = _number(field, value, "years")
        if not 0 <= age <= 120:
            raise ClinicalValueError(f"age_years = {value!r} is out of range: expected age in years, 0-120. "
                                     f"Correct the value (not a birth year or days).")
        out[field] = int(age) if age == int(age) else age
    elif field == "sex":
        key = str(value).strip().lower()
        if key not in _SEX_WORDS:
            raise ClinicalValueError(f"sex = {value!r} is not recognised: use M or F (male / female), or leave it "
                                     f"empty.")
        out[field] = _SEX_WORDS[key]
    elif field == "etiology":
        out[field] = str(value).strip()
    elif field == "child_pugh_points":
        out[field] = _integer(field, value, 5, 15, "Child-Pugh score")
    elif field == "bclc":
        out[field] = _check_bclc(value)
    elif field == "resectable":
        out[field] = _check_bool(field, value)


def validate_clinical(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check clinical values and return a normalised copy (the input is never modified).

    Normalisation: ``ecog``, ``n_tumors``, ``child_pugh_points`` -> int; ``ascites`` / ``encephalopathy`` -> 0/1/2;
    ``pvtt``, ``extrahepatic_spread``, ``resectable`` -> bool; ``sex`` -> "M"/"F"; ``bclc`` -> "0".."D"; lab values
    -> float. Missing optional values (None, NaN, "") become None; keys that are not clinical columns pass through.

    Required: :data:`REQUIRED_FIELDS`, and :data:`CHILD_PUGH_INPUT_FIELDS` unless ``child_pugh_points`` is given.
    Raises :class:`ClinicalValueError` on the first problem, naming the field, the value, the expected range or unit,
    and what to do (e.g. bilirubin 1.2 "looks like mg/dL ... multiply by 17.1").
    """
    if not isinstance(values, Mapping):
        raise ClinicalValueError(f"clinical values must be a mapping of column -> value, got {type(values).__name__}; "
                                 f"pass a dict.")
    out: dict[str, Any] = dict(values)
    have_points = "child_pugh_points" in values and not _is_missing(values["child_pugh_points"])
    for field in CLINICAL_FIELDS:
        value = values.get(field)
        if _is_missing(value):
            if field in REQUIRED_FIELDS:
                raise ClinicalValueError(f"{field} is missing: it is required for the clinical scores; give it "
                                         f"({_EXPECTED[field]}).")
            if field in CHILD_PUGH_INPUT_FIELDS and not have_points:
                raise ClinicalValueError(f"{field} is missing: it is needed to compute Child-Pugh "
                                         f"({_EXPECTED[field]}); give it, or give child_pugh_points.")
            if field in values:
                out[field] = None
            continue
        if field in OPTIONAL_FIELDS:
            _normalize_optional(field, value, out)
        elif field == "max_diameter_mm":
            out[field] = _check_diameter(value, _check_n_tumors(values.get("n_tumors")))
        else:
            out[field] = _CHECKS[field](value)
    return out


_CHECKS = {
    "ecog": _check_ecog, "albumin_g_l": _check_albumin, "bilirubin_umol_l": _check_bilirubin, "inr": _check_inr,
    "ascites": _check_ascites, "encephalopathy": _check_encephalopathy, "afp_ng_ml": _check_afp,
    "n_tumors": _check_n_tumors, "pvtt": lambda v: _check_bool("pvtt", v),
    "extrahepatic_spread": lambda v: _check_bool("extrahepatic_spread", v),
}
_EXPECTED = {
    "ecog": "ECOG performance status 0-4", "albumin_g_l": "albumin in g/L", "bilirubin_umol_l": "bilirubin in umol/L",
    "afp_ng_ml": "AFP in ng/mL", "n_tumors": "number of tumour nodules", "max_diameter_mm": "largest diameter in mm",
    "pvtt": "portal-vein tumour thrombus 0/1", "extrahepatic_spread": "extrahepatic spread 0/1",
    "inr": "INR", "ascites": "none/mild/moderate or 0/1/2", "encephalopathy": "none/grade1-2/grade3-4 or 0/1/2",
}


def compute_scores(values: Mapping[str, Any]) -> dict[str, Any]:
    """All clinical scores of one patient (values are validated first with :func:`validate_clinical`).

    Returns a dict with :data:`SCORE_FIELDS` and ``notes`` (list of strings, possibly empty):

    - Child-Pugh is computed from the labs when bilirubin, albumin, INR, ascites and encephalopathy are all given.
      A given ``child_pugh_points`` that differs from the computed one by more than 1 point is reported in ``notes``
      (the computed value is kept). Without INR/ascites/encephalopathy the given points are used (noted).
    - ``bclc`` is computed (:func:`bclc_stage`); a given ``bclc`` that differs is reported in ``notes``. When BCLC
      cannot be computed (``n_tumors`` = 0 and no stage C/D feature) the given stage is used, or None (noted).
    """
    v = validate_clinical(values)
    notes: list[str] = []
    labs_complete = all(v.get(f) is not None for f in CHILD_PUGH_INPUT_FIELDS)
    given_points = v.get("child_pugh_points")
    if labs_complete:
        cp = child_pugh(v["bilirubin_umol_l"], v["albumin_g_l"], v["inr"], v["ascites"], v["encephalopathy"])
        if given_points is not None and abs(given_points - cp.points) > 1:
            notes.append(f"child_pugh_points given as {given_points} but the labs give {cp.points} ({cp.label}); "
                         f"using the computed {cp.points}.")
    else:
        cp = ChildPugh(given_points, child_pugh_class(given_points))
        missing = ", ".join(f for f in CHILD_PUGH_INPUT_FIELDS if v.get(f) is None)
        notes.append(f"Child-Pugh {cp.label} taken from child_pugh_points ({missing} not given).")

    score = albi_score(v["bilirubin_umol_l"], v["albumin_g_l"])
    given_bclc = v.get("bclc")
    try:
        bclc = bclc_stage(n_tumors=v["n_tumors"], max_diameter_mm=v["max_diameter_mm"], ecog=v["ecog"],
                          child_pugh_class=cp.cls, pvtt=v["pvtt"], extrahepatic_spread=v["extrahepatic_spread"])
    except ClinicalValueError as exc:
        bclc = given_bclc
        notes.append(f"BCLC not computed ({exc}); using the given stage {given_bclc}.")
    else:
        if given_bclc is not None and given_bclc != bclc:
            notes.append(f"bclc given as {given_bclc} but the values give BCLC {bclc} (BCLC 2022); using {bclc}.")

    d = v["max_diameter_mm"]
    if 0 < d < CM_SUSPECT_DIAMETER_MM and d != round(d):
        notes.append(f"max_diameter_mm = {d:g}: a largest nodule under {CM_SUSPECT_DIAMETER_MM / 10:g} cm with a "
                     f"decimal looks like a value in cm; the unit is mm (if it is {d:g} cm, give {d * 10:g}). BCLC, "
                     f"HAP, "
                     f"mHAP-II, six-and-twelve, up-to-seven and TBS use {d:g} mm.")
    hap = hap_score(v["albumin_g_l"], v["bilirubin_umol_l"], v["afp_ng_ml"], v["max_diameter_mm"])
    mhap = mhap2_score(v["albumin_g_l"], v["bilirubin_umol_l"], v["afp_ng_ml"], v["max_diameter_mm"], v["n_tumors"])
    six = six_and_twelve(v["max_diameter_mm"], v["n_tumors"])
    u7 = up_to_seven(v["max_diameter_mm"], v["n_tumors"])
    tbs = tumor_burden_score(v["max_diameter_mm"], v["n_tumors"])
    return {
        "albi_score": score, "albi_grade": albi_grade(score),
        "child_pugh_points": cp.points, "child_pugh_class": cp.cls, "child_pugh_label": cp.label,
        "bclc": bclc,
        "hap_points": hap.points, "hap_class": hap.cls, "mhap2_points": mhap.points, "mhap2_class": mhap.cls,
        "six_twelve_cm": six.value, "six_twelve_stratum": six.group,
        "up_to_seven_value": u7.value, "within_up_to_seven": u7.group,
        "tbs": tbs.value, "tbs_group": tbs.group,
        "notes": notes,
    }
