"""The survival result as types: the schema of ``result.json["survival"]`` in one place.

The survival engine (:meth:`HCCTwinLib.survival.engine.SurvivalEngine.predict`) builds a :class:`SurvivalResult`
and writes its :meth:`~SurvivalResult.to_dict`; the readers (report, scene, browser viewer, ``predict --cohort``,
CLI) parse the dict once with :meth:`SurvivalResult.from_dict` (or :meth:`SurvivalResult.from_summary` for a whole
``result.json``) and read attributes instead of string keys::

    SurvivalResult
      model                  "hcctwin_survival 0.2"
      endpoints              {"os": {regimen: Curve}, "pfs": {regimen: Curve}}
      rmst24_differences     (RmstDifference, ...)    every pair of regimens, RMST(a) - RMST(b) to tau months
      recommendation         Recommendation | None    None when withheld (see recommendation_withheld)
      neoadjuvant            RmstDifference | None    neoadjuvant HAIC + ... then resection vs resection (+ question)
      metastasis             Metastasis | None        2-year distant-metastasis risk (TACE model)
      landmark               {regimen: LandmarkRegimen} | None   timepoints {"wWW": LandmarkCurve}, response features
      notes                  (str, ...)
      recommendation_withheld str | None              why there is no recommendation (domain guard)

Round trip: ``SurvivalResult.from_dict(d).to_dict() == d`` for every dict the engine writes, in the engine's key
order (so ``result.json`` is the same byte for byte). A key that an older ``result.json`` lacks stays absent (listed
in the record's ``absent``; its attribute reads None or empty), a key the types do not know is kept in ``extra`` and
written back after the known ones. A part of the wrong kind (a curve that is not an object, a list where a mapping
belongs) is left out, as the readers always did: the report then says "not available". Only a ``survival`` value
that is not an object at all is an error (:class:`~HCCTwinLib.errors.InputError`).

Numbers are kept as they are in the dict: ``null`` (NaN or a bound that is not reached) reads None. Format them with
:mod:`HCCTwinLib.formatting`. Pure Python; imports only :mod:`HCCTwinLib.errors` (floor 1 of docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .errors import InputError

__all__ = ["Curve", "RmstDifference", "Recommendation", "Metastasis", "MetastasisUpdate", "LandmarkCurve",
           "LandmarkRegimen", "SurvivalResult", "ENDPOINTS"]

#: the endpoints the engine predicts, in its order
ENDPOINTS = ("os", "pfs")


def _plain(value: Any) -> Any:
    """JSON-shaped copy: records -> dicts, tuples -> lists, mappings -> dicts."""
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _seq(value: Any) -> tuple:
    """A list of the dict as a tuple; anything else (a malformed value) as an empty one."""
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def _pair(value: Any) -> tuple | None:
    """An interval ``[lower, upper]`` as a tuple; None when it is not a 2-sequence."""
    return tuple(value) if isinstance(value, (list, tuple)) and len(value) == 2 else None


def _map(value: Any) -> dict | None:
    return dict(value) if isinstance(value, Mapping) else None


def _records(value: Any, parse) -> dict:
    """``{key: parse(part)}`` of a mapping of parts, leaving out parts that are not objects ({} for a non-mapping)."""
    if not isinstance(value, Mapping):
        return {}
    return {k: parse(v) for k, v in value.items() if isinstance(v, Mapping)}


@dataclass(frozen=True)
class _Record:
    """A part of the result: :meth:`to_dict` writes the fields in declaration order (the engine's key order),
    leaving out those in ``absent`` that still hold nothing and the ``_OPTIONAL`` ones that are None, then
    ``extra``."""

    #: fields left out of the dict when None (parts the engine writes only when it has them; never ``null``)
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    #: fields that are not keys of the dict (e.g. a curve's regimen, its key in the endpoint's mapping)
    _NOT_KEYS: ClassVar[frozenset[str]] = frozenset()

    #: known keys the source dict lacked (an older result.json); left out of :meth:`to_dict` again
    absent: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False, compare=False)
    #: keys these types do not know, kept as they were and written back after the known ones
    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in ("absent", "extra") and f.name not in cls._NOT_KEYS]

    @classmethod
    def _split(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``absent`` and ``extra`` of ``data`` as keyword arguments."""
        keys = cls._keys()
        return {"absent": frozenset(k for k in keys if k not in data),
                "extra": {k: v for k, v in data.items() if k not in keys}}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._keys():
            value = getattr(self, key)
            if value is None and key in self._OPTIONAL:
                continue
            if key in self.absent and (value is None or value == () or value == {}):
                continue  # still absent (a value given later, e.g. by dataclasses.replace, is written)
            out[key] = _plain(value)
        for key, value in self.extra.items():
            out.setdefault(key, _plain(value))
        return out


def _require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InputError(f"{what} is a {type(data).__name__}, not an object (mapping): the result file is damaged "
                         f"or not an HCCTwin result.json; run the prediction again.")
    return data


@dataclass(frozen=True)
class Curve(_Record):
    """One regimen's predicted survival for one endpoint (``PerRegimenSurvival.predict_curves``).

    ``times`` (months) and ``survival`` with the pointwise 95% band ``lower`` / ``upper`` (None where there is no
    band, e.g. a model without bootstrap); ``median`` is None when the curve never reaches 0.5 (not reached), and a
    bound of ``median_ci`` is None when it is not reached in the bootstrap either (an open interval, "NR").
    ``s12`` / ``s24``: survival at 12 / 24 months; ``rmst24``: restricted mean survival time to 24 months; each with
    its 95% interval (``*_ci`` = (lower, upper) or None when the dict lacks it).
    """

    _NOT_KEYS: ClassVar[frozenset[str]] = frozenset({"regimen"})

    regimen: str = ""
    times: tuple[float, ...] = ()
    survival: tuple[float | None, ...] = ()
    median: float | None = None
    s12: float | None = None
    s24: float | None = None
    rmst24: float | None = None
    lower: tuple[float | None, ...] = ()
    upper: tuple[float | None, ...] = ()
    s12_ci: tuple[float | None, float | None] | None = None
    s24_ci: tuple[float | None, float | None] | None = None
    rmst24_ci: tuple[float | None, float | None] | None = None
    median_ci: tuple[float | None, float | None] | None = None
    interval_method: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], regimen: str = "") -> Curve:
        data = _require_mapping(data, f"survival curve {regimen}".strip())
        return cls(regimen=str(regimen), times=_seq(data.get("times")), survival=_seq(data.get("survival")),
                   median=data.get("median"), s12=data.get("s12"), s24=data.get("s24"), rmst24=data.get("rmst24"),
                   lower=_seq(data.get("lower")), upper=_seq(data.get("upper")), s12_ci=_pair(data.get("s12_ci")),
                   s24_ci=_pair(data.get("s24_ci")), rmst24_ci=_pair(data.get("rmst24_ci")),
                   median_ci=_pair(data.get("median_ci")), interval_method=data.get("interval_method"),
                   **cls._split(data))

    @property
    def has_points(self) -> bool:
        """The curve has at least one time point (what a plot or a median needs)."""
        return bool(self.times)

    @property
    def median_reached(self) -> bool:
        """False when the curve never falls to 0.5 within its times (median "not reached", NR)."""
        return self.median is not None


@dataclass(frozen=True)
class RmstDifference(_Record):
    """RMST(``regimen_a``) - RMST(``regimen_b``) to ``tau_months`` for one patient (months; positive: more months
    alive with A), its 95% bootstrap interval (None without bootstrap) and the share of bootstrap replicates in
    which A is better. The neoadjuvant comparison carries its ``question`` too."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"question"})

    regimen_a: str = ""
    regimen_b: str = ""
    tau_months: float | None = None
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    prob_a_better: float | None = None
    question: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RmstDifference:
        data = _require_mapping(data, "RMST difference")
        return cls(regimen_a=data.get("regimen_a"), regimen_b=data.get("regimen_b"),
                   tau_months=data.get("tau_months"), estimate=data.get("estimate"), lower=data.get("lower"),
                   upper=data.get("upper"), prob_a_better=data.get("prob_a_better"), question=data.get("question"),
                   **cls._split(data))


@dataclass(frozen=True)
class Recommendation(_Record):
    """The regimen most often best (highest RMST to ``tau_months`` of ``endpoint``) over the bootstrap replicates,
    among ``chosen_among`` (the eligible regimens when ``eligible_only``; None when the dict does not say);
    ``probability_best`` per regimen."""

    regimen: str | None = None
    probability_best: Mapping[str, float] = field(default_factory=dict)
    endpoint: str | None = None
    tau_months: float | None = None
    eligible_only: bool | None = None
    chosen_among: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recommendation:
        data = _require_mapping(data, "recommendation")
        return cls(regimen=data.get("regimen"), probability_best=_map(data.get("probability_best")) or {},
                   endpoint=data.get("endpoint"), tau_months=data.get("tau_months"),
                   eligible_only=data.get("eligible_only"),
                   chosen_among=_seq(data["chosen_among"]) if "chosen_among" in data else None,
                   **cls._split(data))

    def probability(self, regimen: str) -> float | None:
        """The probability that ``regimen`` is best; None when it did not compete."""
        return self.probability_best.get(regimen)


@dataclass(frozen=True)
class _HorizonRisk(_Record):
    """A risk by ``horizon_months`` as ``MetastasisModel.predict`` writes it: with its 95% interval, nomogram
    ``points`` and how the interval was drawn (the fields, in the model's key order, that :class:`Metastasis` and
    :class:`MetastasisUpdate` share)."""

    horizon_months: float | None = None
    risk: float | None = None
    lower: float | None = None
    upper: float | None = None
    points: Mapping[str, float] | None = None
    interval_method: str | None = None

    @staticmethod
    def _risk_fields(data: Mapping[str, Any]) -> dict[str, Any]:
        return {"horizon_months": data.get("horizon_months"), "risk": data.get("risk"), "lower": data.get("lower"),
                "upper": data.get("upper"), "points": _map(data.get("points")),
                "interval_method": data.get("interval_method")}


@dataclass(frozen=True)
class MetastasisUpdate(_HorizonRisk):
    """The 2-year metastasis risk updated at one landmark week with the response of the TACE follow-up seen then
    (``LandmarkMetastasis.predict``; the key in :attr:`Metastasis.landmark` is ``"wWW"``): the risk fields of
    :class:`_HorizonRisk`, the landmark week, the follow-up's ``source`` ("virtual" or "observed") and the
    ``question`` it answers."""

    landmark_weeks: int | None = None
    source: str | None = None
    question: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetastasisUpdate:
        data = _require_mapping(data, "metastasis landmark update")
        return cls(**cls._risk_fields(data), landmark_weeks=data.get("landmark_weeks"), source=data.get("source"),
                   question=data.get("question"), **cls._split(data))


@dataclass(frozen=True)
class LandmarkCurve(_Record):
    """Overall survival from one landmark week on (``LandmarkModel.predict``), given the response read on that
    week's follow-up (``source``: "virtual" or "observed"; ``mrecist``: its category): ``survival`` at
    ``times_after_landmark`` (months after the landmark) with the pointwise 95% band (None where there is none),
    ``median`` None when not reached."""

    landmark_week: int | None = None
    landmark_months: float | None = None
    source: str | None = None
    times_after_landmark: tuple[float, ...] = ()
    survival: tuple[float | None, ...] = ()
    median: float | None = None
    lower: tuple[float | None, ...] = ()
    upper: tuple[float | None, ...] = ()
    mrecist: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LandmarkCurve:
        data = _require_mapping(data, "landmark curve")
        return cls(landmark_week=data.get("landmark_week"), landmark_months=data.get("landmark_months"),
                   source=data.get("source"), times_after_landmark=_seq(data.get("times_after_landmark")),
                   survival=_seq(data.get("survival")), median=data.get("median"), lower=_seq(data.get("lower")),
                   upper=_seq(data.get("upper")), mrecist=data.get("mrecist"), **cls._split(data))


@dataclass(frozen=True)
class LandmarkRegimen(_Record):
    """One regimen's dynamic risk: ``timepoints`` ``{"wWW": LandmarkCurve}`` in the engine's order and the response
    features read on its follow-ups (a mapping of numbers)."""

    timepoints: Mapping[str, LandmarkCurve] = field(default_factory=dict)
    response_features: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LandmarkRegimen:
        data = _require_mapping(data, "landmark entry")
        return cls(timepoints=_records(data.get("timepoints"), LandmarkCurve.from_dict),
                   response_features=_map(data.get("response_features")) or {}, **cls._split(data))

    def weeks(self) -> list[str]:
        """The landmark keys ("w08", ...) in the engine's order."""
        return list(self.timepoints)


@dataclass(frozen=True)
class Metastasis(_HorizonRisk):
    """Distant-metastasis risk by ``horizon_months`` (the logistic TACE model, ``applies_to``; ``population`` says
    for whom) with its 95% interval and nomogram ``points``; ``not_applicable`` (and no risk) when metastasis is
    already present at baseline. ``landmark``: ``{"wWW": MetastasisUpdate}``, the risk updated with the response of
    the TACE follow-ups; ``competing_risk``: the cumulative incidence with death competing; ``by_regimen``:
    ``{regimen: {risk, lower, upper}}`` when a model gives one per regimen (these two stay mappings). The engine
    builds it with :meth:`from_dict` (the not-applicable record has no ``horizon_months`` / ``risk`` / ``lower`` /
    ``upper`` keys: they are ``absent``, not ``null``)."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({
        "not_applicable", "points", "interval_method", "applies_to", "population", "landmark", "competing_risk",
        "by_regimen"})

    not_applicable: str | None = None  # written instead of the risk fields (never beside them)
    applies_to: str | None = None
    population: str | None = None
    landmark: Mapping[str, MetastasisUpdate] | None = None
    competing_risk: Mapping[str, Any] | None = None
    by_regimen: Mapping[str, Mapping[str, Any]] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metastasis:
        data = _require_mapping(data, "metastasis risk")
        return cls(**cls._risk_fields(data), not_applicable=data.get("not_applicable"),
                   applies_to=data.get("applies_to"), population=data.get("population"),
                   landmark=_records(data["landmark"], MetastasisUpdate.from_dict)
                   if isinstance(data.get("landmark"), Mapping) else None,
                   competing_risk=_map(data.get("competing_risk")),
                   by_regimen=_map(data.get("by_regimen")), **cls._split(data))

    @property
    def has_risk(self) -> bool:
        """The patient-level risk is given (the dict has ``risk``; not when metastasis is already present)."""
        return "risk" not in self.absent


@dataclass(frozen=True)
class SurvivalResult(_Record):
    """``result.json["survival"]``: see the module's docstring. An empty dict (no survival model ran) reads as a
    result with every part absent (:attr:`empty`)."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({
        "recommendation", "neoadjuvant", "metastasis", "landmark", "recommendation_withheld"})

    model: str | None = None
    endpoints: Mapping[str, Mapping[str, Curve]] = field(default_factory=dict)
    rmst24_differences: tuple[RmstDifference, ...] = ()
    recommendation: Recommendation | None = None
    neoadjuvant: RmstDifference | None = None
    metastasis: Metastasis | None = None
    landmark: Mapping[str, LandmarkRegimen] | None = None
    notes: tuple[str, ...] = ()
    recommendation_withheld: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SurvivalResult:
        """Parse ``result.json["survival"]`` (None reads as ``{}``); parts of the wrong kind are left out."""
        data = _require_mapping({} if data is None else data, 'result.json "survival"')
        endpoints = {}
        for name, by_regimen in (_map(data.get("endpoints")) or {}).items():
            if isinstance(by_regimen, Mapping):
                endpoints[name] = {r: Curve.from_dict(c, r) for r, c in by_regimen.items() if isinstance(c, Mapping)}
        diffs = data.get("rmst24_differences")
        rec, neo, met = data.get("recommendation"), data.get("neoadjuvant"), data.get("metastasis")
        return cls(
            model=data.get("model"), endpoints=endpoints,
            rmst24_differences=tuple(RmstDifference.from_dict(d) for d in diffs if isinstance(d, Mapping))
            if isinstance(diffs, list) else (),
            recommendation=Recommendation.from_dict(rec) if isinstance(rec, Mapping) else None,
            neoadjuvant=RmstDifference.from_dict(neo) if isinstance(neo, Mapping) else None,
            metastasis=Metastasis.from_dict(met) if isinstance(met, Mapping) else None,
            landmark=_records(data["landmark"], LandmarkRegimen.from_dict)
            if isinstance(data.get("landmark"), Mapping) else None,
            notes=tuple(data.get("notes")) if isinstance(data.get("notes"), (list, tuple)) else (),
            recommendation_withheld=data.get("recommendation_withheld"),
            **cls._split(data))

    @classmethod
    def of(cls, value: SurvivalResult | Mapping[str, Any] | None) -> SurvivalResult:
        """``value`` as is when it is already a result, else :meth:`from_dict` (``TwinResult.survival`` is the
        dict)."""
        return value if isinstance(value, SurvivalResult) else cls.from_dict(value)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> SurvivalResult:
        """The survival part of a whole ``result.json`` (:meth:`TwinResult.summary`); an empty result when it has
        none or it is not an object (as every reader did before the types)."""
        part = summary.get("survival") if isinstance(summary, Mapping) else None
        return cls.from_dict(part if isinstance(part, Mapping) else {})

    @property
    def empty(self) -> bool:
        """No survival model ran (the dict is ``{}``)."""
        return not self.to_dict()

    def curves(self, endpoint: str = "os", *, with_points: bool = False) -> dict[str, Curve]:
        """``{regimen: Curve}`` of ``endpoint`` ({} when it has none); with ``with_points`` only the curves that
        have at least one time point."""
        by_regimen = self.endpoints.get(endpoint) or {}
        return {r: c for r, c in by_regimen.items() if c.has_points or not with_points}

    def curve(self, endpoint: str, regimen: str) -> Curve | None:
        return (self.endpoints.get(endpoint) or {}).get(regimen)

    def probability_best(self, regimen: str) -> float | None:
        """The probability that ``regimen`` is best, None without a recommendation or when it did not compete."""
        return self.recommendation.probability(regimen) if self.recommendation is not None else None
