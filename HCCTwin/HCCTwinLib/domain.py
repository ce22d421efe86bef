"""Out-of-domain guard: does this scan look like what the installed models were trained on, and is the result
plausible? (issue 22)

A segmentation network trained on one kind of image answers on any image, with the same confident colours. The
guard measures, before and after segmentation, what can be checked without a reference mask and writes a verdict
with its reasons:

``inside``   nothing unusual was found;
``caution``  something limits the result (a single phase, a liver cut by the scan range, thick slices, a measure
             outside the range seen on the training data); read the result with that in mind;
``outside``  the scan or the segmentation is implausible (not CT in HU, liver volume or position impossible, fat or
             gas inside the "liver", the network unsure over much of what it drew): **the results are unreliable
             for this scan** and no treatment recommendation is given from them.

Two kinds of limits are used, and each reason says which:

* anatomical and physical plausibility, fixed here with their source (an adult liver 0.8-3 L, Heymsfield et al.
  1979 / Kwon 2020 CT volumetry; liver attenuation and fat HU ranges of contrast CT; the liver lies in the right
  upper quadrant);
* the range seen on the model's own training-domain cohort, stored in the segmentation model card's ``domain``
  section by :func:`reference_from_cohort` (``hcctwin tune domain``): a measure beyond the p1-p99 range there is a
  caution; far beyond it (the p99 plus the p1-p99 width again) is outside.

Measures (``measures`` in the verdict): image statistics inside the body (fat and soft-tissue HU, noise), the grid,
the phases given, liver and tumour volumes, the share of the liver left of the body's midline, the share of
fat/gas/bone HU inside liver and tumour, the liver's cut at the scan ends, and the network's own uncertainty over
what it drew (mean normalised entropy and share of voxels whose top class probability is under 0.6:
:meth:`HCCTwinLib.segmentation.inference.Segmenter` puts them in ``last_info["confidence"]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cases import MODEL_PHASES, accepted_inputs_of, fill_missing_phases, model_input
from .errors import InputError
from .jsonutil import jsonable
from .labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR
from .progress import report
from .weights import _atomic_write, card_path, load_card

INSIDE, CAUTION, OUTSIDE = "inside", "caution", "outside"
_RANK = {INSIDE: 0, CAUTION: 1, OUTSIDE: 2}

#: adult liver volume (parenchyma + tumour), mL: CT volumetry of adults (Heymsfield 1979; Kwon 2020: 1.0-2.6 L)
LIVER_ML_PLAUSIBLE = (800.0, 3000.0)
#: beyond these the segmentation cannot be a liver (a hepatomegaly with a large HCC stays under 4.5 L)
LIVER_ML_POSSIBLE = (400.0, 4500.0)
#: share of the liver voxels to the patient's left of the body midline: the left lobe reaches past the midline, but
#: a "liver" with more than this share there has taken the stomach or spleen
MAX_LEFT_FRACTION = 0.45
#: share of "liver parenchyma" voxels whose HU are fat / gas (< -30) or bone / dense contrast (> 300) in the
#: reference phase (portal, else the first); a correct mask holds vessels at most
MAX_NONTISSUE_FRACTION = 0.05
#: enhanced (or unenhanced) liver parenchyma median HU range in CT
LIVER_HU_RANGE = (20.0, 220.0)
#: fat HU (subcutaneous / visceral) in CT: median of the body voxels between -250 and -30 HU
FAT_HU_RANGE = (-160.0, -50.0)
#: tumour share of the liver + tumour volume above which the segmentation is implausible
MAX_TUMOR_FRACTION = 0.8
#: slice spacing (mm) above which small lesions are missed and volumes blur (trained: up to 7 mm with randomisation)
THICK_SLICE_MM = 5.0
#: the network's uncertainty over the labelled voxels above which the segmentation is not trusted, whatever the
#: reference says (mean normalised entropy; share of voxels whose top probability is under 0.6)
MAX_ENTROPY = 0.35
MAX_UNCERTAIN_FRACTION = 0.35
#: measures compared with the training-domain reference (p1-p99 of the card's ``domain`` section)
REFERENCE_MEASURES = ("fat_hu", "soft_tissue_hu", "noise_hu", "liver_ml", "tumor_fraction", "left_fraction",
                      "liver_hu_median", "liver_hu_iqr", "liver_nontissue_fraction", "mean_entropy",
                      "uncertain_fraction")
#: reference measures where only values above the reference are a sign of trouble
_UPPER_ONLY = ("mean_entropy", "uncertain_fraction", "left_fraction", "liver_nontissue_fraction")
#: reference measures that only ever count as caution when out of range (their plausibility has its own rule, or
#: they move with the scanner's noise and contrast timing while the segmentation stays right: the liver's HU spread)
_CAUTION_ONLY = ("fat_hu", "soft_tissue_hu", "noise_hu", "liver_ml", "liver_hu_median", "liver_hu_iqr",
                 "tumor_fraction")


#: findings that say the liver mask itself is wrong (or the image is not CT): with one of these at "outside" the
#: segmented liver guides nothing else (:attr:`DomainVerdict.liver_mask_usable`)
LIVER_MASK_MEASURES = ("modality", "liver_ml", "left_fraction", "liver_nontissue_fraction", "liver_hu_median")


@dataclass
class Finding:
    """One reason of a verdict: which measure, its value, what was expected, how serious."""

    measure: str
    severity: str
    message: str
    value: float | None = None
    expected: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "severity": self.severity, "message": self.message,
                "value": None if self.value is None else round(float(self.value), 4), "expected": self.expected}


@dataclass
class DomainVerdict:
    """The guard's verdict (``inside`` / ``caution`` / ``outside``), its reasons and every measure."""

    verdict: str = INSIDE
    findings: list[Finding] = field(default_factory=list)
    measures: dict[str, float | None] = field(default_factory=dict)
    reference: str = ""

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)
        if _RANK[finding.severity] > _RANK[self.verdict]:
            self.verdict = finding.severity

    @property
    def reliable(self) -> bool:
        return self.verdict != OUTSIDE

    @property
    def liver_mask_usable(self) -> bool:
        """Whether the segmented liver may guide other steps (the follow-up registration's masks): no finding says
        the liver mask itself is wrong (its volume, side, HU) or the image is not CT. Uncertainty or the networks'
        disagreement alone does not rule it out: a liver drawn a little too wide still holds the liver."""
        return not any(f.severity == OUTSIDE and f.measure in LIVER_MASK_MEASURES for f in self.findings)

    @property
    def reasons(self) -> list[str]:
        order = sorted(self.findings, key=lambda f: -_RANK[f.severity])
        return [f"{f.severity}: {f.message}" for f in order]

    def headline(self) -> str:
        if self.verdict == OUTSIDE:
            return ("Outside the models' domain: the results are unreliable for this scan and no treatment "
                    "recommendation is given from them.")
        if self.verdict == CAUTION:
            return "Caution: read the results with the limits below in mind."
        return "Inside the models' domain: nothing unusual was found in the scan or the segmentation."

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "headline": self.headline(), "reasons": self.reasons,
                "findings": [f.to_dict() for f in self.findings],
                "measures": {k: (None if v is None else round(float(v), 4)) for k, v in self.measures.items()},
                "reference": self.reference}


# --------------------------------------------------------------------------------------------------- measures
def _reference_phase(phases: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
    for name in ("portal", "delayed", "arterial"):
        if name in phases:
            return name, np.asarray(phases[name])
    name = next(iter(phases))
    return name, np.asarray(phases[name])


def _sub(arr: np.ndarray, step: int) -> np.ndarray:
    return arr[:, ::step, ::step]


def image_measures(phases: Mapping[str, np.ndarray], geometry) -> dict[str, float | None]:
    """Statistics of the reference phase inside the body: fat and soft-tissue median HU, a robust noise SD (HU),
    the body's share of the field of view, and the grid's spacing (in-plane subsampled by 2 for speed)."""
    _, ref = _reference_phase(phases)
    step = 2 if min(ref.shape[1:]) >= 256 else 1
    img = _sub(ref, step).astype(np.float32, copy=False)
    body = img > -500.0
    out: dict[str, float | None] = {"body_fraction": float(body.mean())}
    vals = img[body]
    fat = vals[(vals > -250.0) & (vals < -30.0)]
    soft = vals[(vals >= -30.0) & (vals <= 250.0)]
    out["fat_hu"] = float(np.median(fat)) if fat.size >= 1000 else None
    out["fat_share"] = float(fat.size / max(vals.size, 1))
    out["soft_tissue_hu"] = float(np.median(soft)) if soft.size >= 1000 else None
    # noise: horizontal neighbour differences where both voxels are soft tissue (edges excluded by a robust MAD)
    a, b = img[:, :, :-1], img[:, :, 1:]
    both = (a > 0.0) & (a < 150.0) & (b > 0.0) & (b < 150.0)
    diff = (a - b)[both]
    out["noise_hu"] = (float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))
                       if diff.size >= 1000 else None)
    sx, sy, sz = geometry.spacing
    out["inplane_mm"] = float(max(sx, sy))
    out["slice_mm"] = float(sz)
    return out


def _lps_x(geometry, idx_kji: np.ndarray) -> np.ndarray:
    """LPS x (mm) of voxel indices ``(n, 3)`` in (k, j, i) order."""
    m = geometry.ijk_to_lps()
    ijk = idx_kji[:, ::-1].astype(np.float64)
    return ijk @ m[0, :3] + m[0, 3]


def segmentation_measures(phases: Mapping[str, np.ndarray], geometry, labels: np.ndarray,
                          confidence: Mapping[str, float] | None = None, *, lipiodol: bool = False
                          ) -> dict[str, float | None]:
    """Liver and tumour volumes and plausibility measures of a label map on the phases' grid. ``lipiodol``: the
    scan follows a lipiodol regimen (TACE), so dense necrotic tumour is lipiodol, not bone: it is not counted in
    ``tumor_nontissue_fraction`` (fat or gas there still is)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    vml = geometry.voxel_volume_ml
    counts = np.bincount(labels.ravel(), minlength=PVTT + 1)
    liver_total = int(counts[LIVER] + counts[VIABLE_TUMOR] + counts[NECROSIS])
    tumour = int(counts[VIABLE_TUMOR] + counts[NECROSIS])
    out: dict[str, float | None] = {"liver_ml": liver_total * vml, "tumor_ml": tumour * vml,
                                    "pvtt_ml": float(counts[PVTT]) * vml,
                                    "tumor_fraction": tumour / liver_total if liver_total else None}
    if confidence:
        out.update({k: (None if v is None else float(v)) for k, v in confidence.items()})
    if liver_total == 0:
        return out
    organ = np.isin(labels, (LIVER, VIABLE_TUMOR, NECROSIS))
    # scan-range cut: area of the liver on the first / last slice relative to its largest slice
    area = organ.sum(axis=(1, 2)).astype(float)
    out["edge_slice_ratio"] = float(max(area[0], area[-1]) / max(area.max(), 1.0))
    # largest connected share
    lab, n = ndimage.label(organ[::2, ::2, ::2] if organ.size > 8e6 else organ)
    if n:
        sizes = np.bincount(lab.ravel())[1:]
        out["largest_component_fraction"] = float(sizes.max() / sizes.sum())
    # left of the body's midline (LPS +x = patient left); midline = median x of the body voxels
    _, ref = _reference_phase(phases)
    step = 2 if min(ref.shape[1:]) >= 256 else 1
    body_idx = np.argwhere(_sub(ref, step) > -500.0)[:: max(1, int(np.prod(ref.shape) // step ** 2 // 400000))]
    if body_idx.size:
        body_idx = body_idx * np.array([1, step, step])
        mid = float(np.median(_lps_x(geometry, body_idx)))
        organ_idx = np.argwhere(_sub(organ, step)) * np.array([1, step, step])
        xs = _lps_x(geometry, organ_idx)
        out["left_fraction"] = float(np.mean(xs > mid + 10.0))
    # HU inside the parenchyma and the tumour (reference phase)
    paren = labels == LIVER
    if paren.any():
        v = ref[paren].astype(np.float32)
        out["liver_hu_median"] = float(np.median(v))
        q1, q3 = np.percentile(v, [25, 75])
        out["liver_hu_iqr"] = float(q3 - q1)
        out["liver_nontissue_fraction"] = float(np.mean((v < -30.0) | (v > 300.0)))
    if tumour:
        in_tumour = np.isin(labels, (VIABLE_TUMOR, NECROSIS))
        v = ref[in_tumour].astype(np.float32)
        non = (v < -30.0) | (v > 300.0)
        if lipiodol:  # dense necrosis after TACE: lipiodol deposit
            non &= ~((v > 300.0) & (labels[in_tumour] == NECROSIS))
        out["tumor_nontissue_fraction"] = float(np.mean(non))
    return out


# --------------------------------------------------------------------------------------------------- verdict
def _fmt(v: float, unit: str = "") -> str:
    if abs(v) >= 100:
        return f"{v:.0f}{unit}"
    if abs(v) >= 1:
        return f"{v:.1f}{unit}"
    return f"{v:.3f}{unit}"


def assess(phases: Mapping[str, np.ndarray], geometry, labels: np.ndarray | None = None, *,
           confidence: Mapping[str, float] | None = None, card: Mapping[str, Any] | None = None,
           modality: str = "CT", labels_source: str = "model", lipiodol: bool = False) -> DomainVerdict:
    """The guard's verdict for one study: ``phases`` (HU arrays on ``geometry``), the label map (None: image checks
    only), the segmentation network's ``confidence`` measures, and the segmentation model card (its
    ``accepted_inputs`` and ``domain`` reference). ``labels_source`` "given": labels drawn or corrected by a
    person (no network confidence; volume and position are still checked). ``lipiodol``: a scan after a lipiodol
    regimen (dense necrotic tumour is lipiodol, see :func:`segmentation_measures`)."""
    v = DomainVerdict()
    card = card or {}
    reference = (card.get("domain") or {}).get("reference") or {}
    if reference:
        v.reference = str((card.get("domain") or {}).get("cohort", "training-domain cohort"))
    if modality != "CT":
        v.add(Finding("modality", OUTSIDE, f"{modality} images: the installed models were trained on CT only."))
    m = image_measures(phases, geometry)
    v.measures.update(m)

    # phases
    given = sorted(phases)
    model_phases = list(card.get("input_phases") or MODEL_PHASES)
    accepted = accepted_inputs_of(card, model_phases)
    _, filled = fill_missing_phases(phases, model_phases)
    used = model_input(phases, model_phases)
    v.measures["n_phases"] = float(len(given))
    if card and used and used not in accepted:
        v.add(Finding("phases", OUTSIDE, f"the segmentation model was not trained on {'+'.join(used)} alone "
                                         f"(it reads {' | '.join('+'.join(a) for a in accepted)}).",
                      expected=" | ".join("+".join(a) for a in accepted)))
    elif len(used) == 1 and len(model_phases) > 1:
        # read by a model trained on one phase (the single-phase stage), the liver holds but the tumour does not:
        # on the simulated hold-out tumour Dice 0.43 portal / 0.60 arterial alone vs 0.88 from two phases, most
        # lesions under 3 cm missed, no PVTT (benchmarks/results/segmentation_any_phase.md); the tumour burden the
        # survival models and the twin rest on is then not reliable enough for a recommendation
        v.add(Finding("phases", OUTSIDE, f"single-phase study ({', '.join(given)}): the liver is read, but the "
                                         f"tumour is not reliably (small lesions are missed, PVTT is not drawn, and "
                                         f"arterial enhancement, viable vs necrotic tumour and mRECIST cannot be "
                                         f"told from washout), so no recommendation rests on it."))
    if filled.get("portal") == "delayed":
        v.add(Finding("phases", CAUTION, "delayed / equilibrium phase read as portal venous."))

    # image
    if m.get("fat_hu") is None:
        v.add(Finding("fat_hu", OUTSIDE, "no fat-density tissue (-250..-30 HU) inside the body: the image is not "
                                         "CT in Hounsfield units (MRI, a normalised export or a wrong rescale).",
                      expected="fat present"))
    elif not FAT_HU_RANGE[0] <= m["fat_hu"] <= FAT_HU_RANGE[1]:
        v.add(Finding("fat_hu", OUTSIDE, f"fat median {_fmt(m['fat_hu'], ' HU')} outside "
                                         f"{FAT_HU_RANGE[0]:.0f}..{FAT_HU_RANGE[1]:.0f} HU: the values are not "
                                         f"calibrated Hounsfield units.", m["fat_hu"],
                      f"{FAT_HU_RANGE[0]:.0f}..{FAT_HU_RANGE[1]:.0f} HU"))
    if m["slice_mm"] > THICK_SLICE_MM:
        v.add(Finding("slice_mm", CAUTION, f"slices of {_fmt(m['slice_mm'], ' mm')}: lesions under about twice "
                                           f"that size can be missed and volumes blur.", m["slice_mm"],
                      f"<= {THICK_SLICE_MM:g} mm"))

    if labels is not None:
        s = segmentation_measures(phases, geometry, labels, confidence if labels_source == "model" else None,
                                  lipiodol=lipiodol)
        v.measures.update(s)
        _segmentation_findings(v, s)
    for name in REFERENCE_MEASURES:
        _against_reference(v, name, v.measures.get(name), reference.get(name))
    return v


def _segmentation_findings(v: DomainVerdict, s: Mapping[str, float | None]) -> None:
    from .segmentation.inference import ENVELOPE_AGREEMENT  # the stage that owns the two networks (loads scipy)

    liver = float(s.get("liver_ml") or 0.0)
    if liver <= 0:
        v.add(Finding("liver_ml", OUTSIDE, "no liver was found.", 0.0))
        return
    cut = float(s.get("edge_slice_ratio") or 0.0) > 0.25
    lo, hi = LIVER_ML_PLAUSIBLE
    plo, phi = LIVER_ML_POSSIBLE
    rng = f"{lo / 1000:g}-{hi / 1000:g} L"
    if cut:
        v.add(Finding("edge_slice_ratio", CAUTION, "the liver reaches the first or last slice: the scan does not "
                                                   "cover all of it, so volumes are too small.",
                      s.get("edge_slice_ratio"), "<= 0.25"))
    if liver > phi or (liver < plo and not cut):
        v.add(Finding("liver_ml", OUTSIDE, f"liver + tumour {_fmt(liver, ' mL')}: not a possible adult liver "
                                           f"(plausible {rng}).", liver, rng))
    elif liver > hi or (liver < lo and not cut):
        v.add(Finding("liver_ml", CAUTION, f"liver + tumour {_fmt(liver, ' mL')} outside the usual adult range "
                                           f"{rng}.", liver, rng))
    left = s.get("left_fraction")
    if left is not None and left > MAX_LEFT_FRACTION:
        v.add(Finding("left_fraction", OUTSIDE, f"{100 * left:.0f}% of the liver lies left of the body's midline: "
                                                f"the mask has taken the stomach or spleen.", left,
                      f"<= {MAX_LEFT_FRACTION:g}"))
    non = s.get("liver_nontissue_fraction")
    if non is not None and non > MAX_NONTISSUE_FRACTION:
        v.add(Finding("liver_nontissue_fraction", OUTSIDE, f"{100 * non:.0f}% of the liver mask has fat, gas or "
                                                           f"bone HU: it reaches outside the liver.", non,
                      f"<= {MAX_NONTISSUE_FRACTION:g}"))
    hu = s.get("liver_hu_median")
    if hu is not None and not LIVER_HU_RANGE[0] <= hu <= LIVER_HU_RANGE[1]:
        v.add(Finding("liver_hu_median", OUTSIDE, f"liver median {_fmt(hu, ' HU')} is not liver tissue in CT "
                                                  f"({LIVER_HU_RANGE[0]:.0f}..{LIVER_HU_RANGE[1]:.0f} HU).", hu,
                      f"{LIVER_HU_RANGE[0]:.0f}..{LIVER_HU_RANGE[1]:.0f} HU"))
    tnon = s.get("tumor_nontissue_fraction")
    if tnon is not None and tnon > 2 * MAX_NONTISSUE_FRACTION:
        v.add(Finding("tumor_nontissue_fraction", OUTSIDE, f"{100 * tnon:.0f}% of the tumour mask has fat, gas or "
                                                           f"bone HU.", tnon, f"<= {2 * MAX_NONTISSUE_FRACTION:g}"))
    frac = s.get("tumor_fraction")
    if frac is not None and frac > MAX_TUMOR_FRACTION:
        v.add(Finding("tumor_fraction", OUTSIDE, f"tumour is {100 * frac:.0f}% of liver + tumour.", frac,
                      f"<= {MAX_TUMOR_FRACTION:g}"))
    comp = s.get("largest_component_fraction")
    if comp is not None and comp < 0.9:
        v.add(Finding("largest_component_fraction", CAUTION, f"the liver mask falls apart into pieces (largest "
                                                             f"{100 * comp:.0f}%).", comp, ">= 0.9"))
    agree = s.get("envelope_agreement")
    if agree is not None and agree < ENVELOPE_AGREEMENT[1]:
        severity = OUTSIDE if agree < ENVELOPE_AGREEMENT[0] else CAUTION
        v.add(Finding("envelope_agreement", severity, f"the two segmentation networks (one trained on the simulator's "
                                                      f"look, one on randomised appearance) disagree on the liver "
                                                      f"(Dice {agree:.2f}): at least one is wrong on this scan.",
                      agree, f">= {ENVELOPE_AGREEMENT[1]:g}"))
    ent, unc = s.get("mean_entropy"), s.get("uncertain_fraction")
    if (ent is not None and ent > MAX_ENTROPY) or (unc is not None and unc > MAX_UNCERTAIN_FRACTION):
        v.add(Finding("mean_entropy", OUTSIDE, f"the segmentation network is unsure over much of what it drew "
                                               f"(mean entropy {_fmt(ent or 0.0)}, {100 * (unc or 0.0):.0f}% of "
                                               f"the labelled voxels under 60% confidence).", ent,
                      f"entropy <= {MAX_ENTROPY:g}, share <= {MAX_UNCERTAIN_FRACTION:g}"))


def _against_reference(v: DomainVerdict, name: str, value: float | None, ref: Sequence[float] | None) -> None:
    """Caution beyond the reference's p1-p99 range; outside beyond it by its width again (for measures whose
    plausibility has no fixed rule of its own). Measures where only high values are a problem (uncertainty, liver
    left of the midline, fat in the liver) are checked against the p99 only."""
    if value is None or not ref or len(ref) < 2 or ref[0] is None or ref[1] is None:
        return
    lo, hi = float(ref[0]), float(ref[1])
    width = max(hi - lo, 1e-6)
    if lo <= value <= hi or (name in _UPPER_ONLY and value <= hi):
        return
    far = value > hi + width or value < lo - width
    severity = OUTSIDE if far and name not in _CAUTION_ONLY else CAUTION
    if any(f.measure == name and _RANK[f.severity] >= _RANK[severity] for f in v.findings):
        return
    v.add(Finding(name, severity, f"{name.replace('_', ' ')} {_fmt(value)} outside the training-domain range "
                                  f"{_fmt(lo)}..{_fmt(hi)}.", value, f"{_fmt(lo)}..{_fmt(hi)} (p1-p99)"))


# --------------------------------------------------------------------------------------------------- reference
def reference_from_measures(rows: Sequence[Mapping[str, float | None]]) -> dict[str, list[float]]:
    """p1 and p99 of each :data:`REFERENCE_MEASURES` over a cohort's measures (one dict per study)."""
    ref = {}
    for name in REFERENCE_MEASURES:
        vals = np.array([r[name] for r in rows if r.get(name) is not None], float)
        if vals.size >= 5:
            ref[name] = [float(np.percentile(vals, 1)), float(np.percentile(vals, 99))]
    return ref


def measure_cohort(segmenter, cohort_dir, *, max_cases: int | None = None, progress=None
                   ) -> list[dict[str, float | None]]:
    """The guard's measures of ``segmenter`` on each pre-treatment study of a cohort folder (its labels unused; a
    single-phase model on each phase alone)."""
    from .segmentation.tuning import _tuning_cases, tuning_inputs

    rows = []
    cases = list(_tuning_cases(cohort_dir, max_cases, tuning_inputs(segmenter.card)))
    for n, (pid, case, _truth) in enumerate(cases):
        labels = segmenter.segment(case)
        row = {"patient_id": pid, **image_measures(case.phases, case.geometry),
               **segmentation_measures(case.phases, case.geometry, labels,
                                       (segmenter.last_info or {}).get("confidence"))}
        rows.append(row)
        report(progress, (n + 1) / max(len(cases), 1), f"Domain reference {n + 1}/{len(cases)}")
    return rows


def tune_domain(segmenter, cohort_dir, *, max_cases: int | None = None, cohort_name: str | None = None,
                progress=None) -> dict[str, Any]:
    """The card's ``domain`` section: the p1-p99 range of each reference measure of ``segmenter`` on a cohort of
    its training domain (not its evaluation hold-out), with the per-study measures' count and the cohort's name."""
    import time

    rows = measure_cohort(segmenter, cohort_dir, max_cases=max_cases, progress=progress)
    if len(rows) < 5:
        raise InputError(f"{cohort_dir}: {len(rows)} usable studies; the domain reference needs at least 5.")
    return {"cohort": cohort_name or str(cohort_dir), "n_cases": len(rows),
            "reference": reference_from_measures(rows), "rule": "caution beyond p1-p99; outside beyond it by its "
            "width again (measures without a plausibility rule of their own)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def apply_domain_to_card(weights_path, section: Mapping[str, Any]):
    """Write ``section`` as the ``domain`` section of the model card next to ``weights_path`` (weights untouched)."""
    import json
    from pathlib import Path

    card = load_card(weights_path)
    card["domain"] = jsonable(dict(section), finite=True)
    path = card_path(Path(weights_path))
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8"))
    return path
