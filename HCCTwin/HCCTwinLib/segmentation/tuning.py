"""Decision rules of a trained segmentation model, tuned on labelled cases it was not trained on.

A network trained with a weighted loss still leaves two decisions that the argmax makes badly, and that can be set
on a *tuning* cohort (labelled cases outside the training and the evaluation cohorts) without training again:

1. ``class_bias``: a value added to the PVTT logit before the argmax (a prior shift for the rarest class: the
   network's PVTT probability is highest in the thrombus, but rarely the largest). Chosen on a grid to maximise the
   mean Dice over liver, viable tumour, necrosis and PVTT, where the PVTT Dice is averaged over the patients with
   PVTT in the truth *or* the prediction (a thrombus drawn where there is none counts as 0), among the biases that
   draw PVTT in at most ``max_false_pvtt`` of the patients without it (a thrombus moves a patient to BCLC C: a
   false one changes the stage and the treatment options, so it is a constraint, not just a lower Dice).
   With a *PVTT stage* (``pvtt_model``: a second network trained with the thrombus weighted and oversampled,
   :data:`.train.PVTT_STAGE_SETTINGS`), its PVTT probability threshold is chosen instead, by the same rule
   (``pvtt_stage.min_probability``; the model's file name and sha256 are pinned in the card). When every threshold
   draws PVTT in more of the patients without it than allowed, the stage is not used.
2. ``min_tumor_confidence``: a tumour component (viable + necrosis, 6-connected) whose mean tumour probability is
   below it becomes liver (:func:`.postprocessing.confident_components`). The free-response trade-off: the highest
   lesion sensitivity (lesions >= 10 mm, :func:`.metrics.lesion_counts`) with at most ``max_fp`` false-positive
   lesions per patient; when no threshold reaches ``max_fp``, the one with the fewest false positives.

Every case is run through the network once (stage-2 logits kept as float16); the grids are then evaluated on the
input grid of each case exactly as the evaluation does. :func:`apply_to_card` writes the result into the model card
(``postprocessing``), where :class:`~.inference.Segmenter` reads it. ``hcctwin tune segmentation``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..cases import accepted_inputs_of
from ..errors import InputError
from ..io import load_case
from ..jsonutil import jsonable
from ..progress import ProgressCallback, SubProgress, report
from ..weights import _atomic_write, load_card
from ..weights import card_path as card_path_of
from . import postprocessing
from .inference import envelope_mask, logits_to_labels, mirror_sets, pvtt_excluded_bias
from .metrics import cohort_lesion_detection, dice_per_label, lesion_counts, mean_dice
from .preprocessing import from_model_grid
from .train import _has_training_data, cohort_patient_ids

PVTT_BIAS_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
CONFIDENCE_GRID = tuple(round(0.5 + 0.01 * i, 2) for i in range(41))  # 0.50 .. 0.90
#: PVTT-stage probability thresholds and smallest thrombus volumes (mL) tried together: a stage trained with the
#: thrombus weighted ranks it well before its probabilities are high, so the grid reaches low thresholds
PVTT_STAGE_GRID = (0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7)
PVTT_VOLUME_GRID_ML = (postprocessing.MIN_PVTT_ML, 0.5, 1.5)
DEFAULT_MAX_FP = 0.2
#: at most this fraction of the tuning patients without PVTT may get a predicted PVTT
DEFAULT_MAX_FALSE_PVTT = 0.1
#: the PVTT logit bias that keeps PVTT out of the argmax: chosen when neither a bias of the grid nor a PVTT-stage
#: threshold draws thrombus in at most ``max_false_pvtt`` of the patients without it (a model that cannot tell
#: thrombus, e.g. from one phase, then draws none rather than a false one in most patients)
PVTT_OFF_BIAS = -1000.0
PVTT = 4
DICE_KEYS = ("liver_total", "viable_tumor", "necrosis", "pvtt")


def _tuning_cases(cohort_dir, max_cases: int | None, inputs: Sequence[Sequence[str]] | None = None):
    """``(id, case without its labels, true labels)`` of each labelled pre-treatment study of a cohort, up to
    ``max_cases`` patients. ``inputs``: the phase combinations to yield of each study (e.g. ``[["arterial"],
    ["portal"]]``: each phase alone, ids ``P001:arterial``...); None: the study as it is."""
    root = Path(cohort_dir)
    n = 0
    for pid in cohort_patient_ids(root):
        pre = root / "cases" / pid / "pre"
        if not _has_training_data(pre):
            continue
        case = load_case(pre, patient_id=pid)
        truth, case.labels = case.labels, None
        if inputs is None:
            yield pid, case, truth
        else:
            for combo in inputs:
                yield f"{pid}:{'+'.join(combo)}", replace(case, phases={p: case.phases[p] for p in combo}), truth
        n += 1
        if max_cases is not None and n >= max_cases:
            return


def tuning_inputs(card) -> list[list[str]] | None:
    """The phase combinations a model is tuned on: None (each study as it is) for a model that reads all its input
    phases, else each combination its card accepts (a single-phase model: each phase alone)."""
    phases = list(card.get("input_phases") or ("arterial", "portal"))
    accepted = accepted_inputs_of(card, phases)
    return None if sorted(phases) in accepted else accepted


def collect_logits(segmenter, cohort_dir, *, max_cases: int | None = None, pvtt_model=None,
                   progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Run ``segmenter`` once on every labelled pre-treatment study of a cohort (``cases/<id>/pre`` with
    arterial, portal and labels; a single-phase model on each phase alone, :func:`tuning_inputs`): the stage-2
    logits, their box and grids, the true labels and, with ``pvtt_model`` (a PVTT-stage
    :class:`~.inference.Segmenter`), its PVTT probability on the same box."""
    items = []
    ids = list(_tuning_cases(cohort_dir, max_cases, tuning_inputs(segmenter.card)))
    if not ids:
        raise InputError(f"{cohort_dir}: no case with arterial, portal and labels under cases/<id>/pre to tune on.")
    for n, (pid, case, truth) in enumerate(ids):
        logits, box, mgeom, geometry, pvtt = segmenter.model_grid_logits(case, pvtt_model=pvtt_model)
        items.append({"patient_id": pid, "logits": logits, "box": box, "model_geometry": mgeom,
                      "geometry": geometry, "truth": np.asarray(truth), "pvtt_prob": pvtt})
        report(progress, (n + 1) / len(ids), f"tuning: network on case {n + 1}/{len(ids)}")
    return items


def _labels(item, class_bias, *, tumor_prob: bool, pvtt_threshold: float | None = None):
    """Model-grid labels (and tumour probability) of an item under a class bias and, when the item has a PVTT
    stage probability and ``pvtt_threshold`` is given, PVTT where that probability reaches it (before
    post-processing)."""
    mgeom = item["model_geometry"]
    staged = pvtt_threshold is not None and item.get("pvtt_prob") is not None
    if staged:  # the stage decides PVTT: it is not an argmax class
        class_bias = pvtt_excluded_bias(class_bias, int(item["logits"].shape[0]))
    out = logits_to_labels(item["logits"], class_bias=class_bias, tumor_prob=tumor_prob)
    labels = np.zeros(mgeom.shape, np.uint8)
    prob = None
    if tumor_prob:
        prob = np.zeros(mgeom.shape, np.float32)
        labels[item["box"]], prob[item["box"]] = out
    else:
        labels[item["box"]] = out
    if staged:
        labels[item["box"]][np.asarray(item["pvtt_prob"], np.float32) >= pvtt_threshold] = PVTT
    return labels, prob


def _bias(n_classes: int, pvtt_bias: float) -> list[float]:
    bias = [0.0] * n_classes
    bias[PVTT] = float(pvtt_bias)
    return bias


def _mean_dice(rows: list[dict[str, float]], has_pvtt: Sequence[bool] | None = None) -> dict[str, float]:
    out = {}
    for key in DICE_KEYS:
        vals = [r[key] for r in rows if math.isfinite(r[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    out["pvtt_patients"] = int(sum(math.isfinite(r["pvtt"]) for r in rows))
    out["mean"] = mean_dice(out, DICE_KEYS)
    if has_pvtt is not None:
        present = [r["pvtt"] for r, h in zip(rows, has_pvtt) if h]
        out["pvtt_where_present"] = float(np.mean(present)) if present else float("nan")
        without = [math.isfinite(r["pvtt"]) for r, h in zip(rows, has_pvtt) if not h]
        out["false_pvtt_fraction"] = float(np.mean(without)) if without else 0.0
    return out


def _stage_args(stage: tuple[float, float] | None) -> tuple[float | None, float]:
    """``(threshold, smallest thrombus mL)`` of a PVTT-stage setting; no stage: the post-processing default."""
    return (None, postprocessing.MIN_PVTT_ML) if stage is None else (float(stage[0]), float(stage[1]))


def _dice_rows(items, class_bias_of, stage: tuple[float, float] | None) -> dict[str, float]:
    """Mean Dice per label (input grid, after post-processing) of every item under one setting (``stage``: the
    PVTT stage's ``(threshold, smallest thrombus mL)`` or None)."""
    threshold, min_ml = _stage_args(stage)
    rows = []
    for item in items:
        labels, _ = _labels(item, class_bias_of(item), tumor_prob=False, pvtt_threshold=threshold)
        labels = postprocessing.postprocess(labels, item["model_geometry"].spacing, min_pvtt_ml=min_ml)
        rows.append(dice_per_label(from_model_grid(labels, item["model_geometry"], item["geometry"]), item["truth"]))
    return _mean_dice(rows, [bool((item["truth"] == PVTT).any()) for item in items])


def sweep_pvtt_bias(items, grid: Sequence[float] = PVTT_BIAS_GRID, progress: ProgressCallback | None = None
                    ) -> list[dict[str, float]]:
    """Mean Dice per label (input grid, after post-processing) for each PVTT logit bias of ``grid``."""
    table = []
    for n, b in enumerate(grid):
        table.append({"pvtt_bias": float(b), **_dice_rows(items, lambda it, b=b: _bias(it["logits"].shape[0], b),
                                                               None)})
        report(progress, (n + 1) / len(grid), f"tuning: PVTT bias {b}")
    return table


def sweep_pvtt_stage(items, grid: Sequence[float] = PVTT_STAGE_GRID,
                     volume_grid: Sequence[float] = PVTT_VOLUME_GRID_ML, progress: ProgressCallback | None = None
                     ) -> list[dict[str, float]]:
    """Mean Dice per label for each PVTT-stage probability threshold of ``grid`` and smallest thrombus volume of
    ``volume_grid`` (no class bias)."""
    table = []
    settings = [(float(t), float(v)) for t in grid for v in volume_grid]
    for n, (t, v) in enumerate(settings):
        table.append({"pvtt_min_probability": t, "pvtt_min_volume_ml": v,
                      **_dice_rows(items, lambda it: None, (t, v))})
        report(progress, (n + 1) / len(settings), f"tuning: PVTT stage threshold {t}, >= {v} mL")
    return table


def sweep_confidence(items, class_bias: Sequence[float] | None, grid: Sequence[float] = CONFIDENCE_GRID,
                     min_diameter_mm: float = 10.0, progress: ProgressCallback | None = None,
                     pvtt_stage: tuple[float, float] | None = None) -> list[dict[str, float]]:
    """Lesion sensitivity, false positives per patient and tumour Dice for each lesion-confidence threshold
    (with the PVTT stage's ``(threshold, smallest thrombus mL)`` when given and the items carry its probability)."""
    threshold, min_ml = _stage_args(pvtt_stage)
    counts: dict[float, list] = {t: [] for t in grid}
    dices: dict[float, list] = {t: [] for t in grid}
    for n, item in enumerate(items):
        mgeom, geometry, truth = item["model_geometry"], item["geometry"], item["truth"]
        labels, prob = _labels(item, class_bias, tumor_prob=True, pvtt_threshold=threshold)
        labels = postprocessing.postprocess(labels, mgeom.spacing, min_pvtt_ml=min_ml)
        tumor = np.isin(labels, (2, 3))
        comp, means = postprocessing.component_confidence(tumor, prob)
        previous = None
        for t in grid:
            drop = np.flatnonzero(means < t) + 1
            if previous is not None and np.array_equal(drop, previous[0]):
                counts[t].append(previous[1])
                dices[t].append(previous[2])
                continue
            cur = labels.copy()
            if len(drop):
                cur[np.isin(comp, drop)] = 1
            native = from_model_grid(cur, mgeom, geometry)
            c = lesion_counts(native, truth, geometry, min_diameter_mm)
            d = dice_per_label(native, truth)
            counts[t].append(c)
            dices[t].append(d)
            previous = (drop, c, d)
        report(progress, (n + 1) / len(items), f"tuning: lesion confidence, case {n + 1}/{len(items)}")
    table = []
    for t in grid:
        sens, fp = cohort_lesion_detection(counts[t])
        md = _mean_dice(dices[t])
        table.append({"min_tumor_confidence": float(t), "sensitivity": sens, "fp_per_patient": fp,
                      "viable_tumor": md["viable_tumor"], "necrosis": md["necrosis"], "mean_dice": md["mean"]})
    return table


def choose_confidence(table: Sequence[dict[str, float]], max_fp: float) -> dict[str, float]:
    """The row with the highest sensitivity among those with at most ``max_fp`` false positives per patient (the
    lowest threshold among ties); the row with the fewest false positives when none qualifies."""
    ok = [r for r in table if r["fp_per_patient"] <= max_fp + 1e-9]
    if ok:
        best = max(r["sensitivity"] for r in ok)
        return min((r for r in ok if r["sensitivity"] >= best - 1e-12), key=lambda r: r["min_tumor_confidence"])
    fewest = min(r["fp_per_patient"] for r in table)
    return min((r for r in table if r["fp_per_patient"] <= fewest + 1e-12), key=lambda r: r["min_tumor_confidence"])


def _acceptable(table: Sequence[dict[str, float]], max_false_pvtt: float) -> list[dict[str, float]]:
    return [r for r in table if math.isfinite(r["mean"]) and r.get("false_pvtt_fraction", 0.0) <= max_false_pvtt + 1e-9]


def choose_pvtt_bias(table: Sequence[dict[str, float]], max_false_pvtt: float) -> dict[str, float]:
    """The row with the highest mean Dice (the smallest bias among ties) among those that draw PVTT in at most
    ``max_false_pvtt`` of the patients without it; the smallest bias when none qualifies or none is scored."""
    ok = _acceptable(table, max_false_pvtt)
    if not ok:
        return min(table, key=lambda r: r["pvtt_bias"])
    return max(ok, key=lambda r: (round(r["mean"], 6), -r["pvtt_bias"]))


def choose_pvtt_stage(table: Sequence[dict[str, float]], max_false_pvtt: float) -> dict[str, float] | None:
    """The PVTT-stage row with the highest mean Dice (among ties the highest threshold, then the largest smallest
    volume) among those that draw PVTT in at most ``max_false_pvtt`` of the patients without it and find some of the
    true thrombus; None (do not use the stage) when none does."""
    ok = [r for r in _acceptable(table, max_false_pvtt) if r.get("pvtt_where_present", 0.0) > 0.0]
    if not ok:
        return None
    return max(ok, key=lambda r: (round(r["mean"], 6), r["pvtt_min_probability"],
                                  r.get("pvtt_min_volume_ml", postprocessing.MIN_PVTT_ML)))


def tune_segmentation(segmenter, cohort_dir, *, max_fp: float = DEFAULT_MAX_FP, max_cases: int | None = None,
                      max_false_pvtt: float = DEFAULT_MAX_FALSE_PVTT,
                      pvtt_grid: Sequence[float] = PVTT_BIAS_GRID, confidence_grid: Sequence[float] = CONFIDENCE_GRID,
                      pvtt_model=None, stage_grid: Sequence[float] = PVTT_STAGE_GRID,
                      volume_grid: Sequence[float] = PVTT_VOLUME_GRID_ML, mirror_axes: Sequence[int] | None = None,
                      progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Tune the PVTT logit bias (or, with ``pvtt_model``, the PVTT stage's threshold), then the lesion-confidence
    threshold (module docstring) on ``cohort_dir``.

    ``mirror_axes``: the test-time mirroring the rules are tuned for (:func:`.inference.mirror_sets`; it changes the
    probabilities the thresholds apply to, so it is part of the section); None: the segmenter's current setting.

    Returns the card's ``postprocessing`` section: ``class_bias``, ``min_tumor_confidence``, ``mirror_axes``,
    ``pvtt_stage`` when the stage is used (its file name, sha256 and threshold) and ``tuning`` (cohort, cases, rule,
    the sweep tables, what the untuned rules gave, date)."""
    t0 = time.perf_counter()
    axes = tuple(segmenter.mirror_axes if mirror_axes is None else sorted({int(a) for a in mirror_axes}))
    mirror_sets(axes)  # validates
    own_axes, segmenter.mirror_axes = segmenter.mirror_axes, axes
    try:
        items = collect_logits(segmenter, cohort_dir, max_cases=max_cases, pvtt_model=pvtt_model,
                               progress=SubProgress(progress, 0.0, 0.4))
    finally:
        segmenter.mirror_axes = own_axes
    section = tune_from_logits(items, max_fp=max_fp, max_false_pvtt=max_false_pvtt, pvtt_grid=pvtt_grid,
                               confidence_grid=confidence_grid, stage_grid=stage_grid, volume_grid=volume_grid,
                               progress=SubProgress(progress, 0.4, 1.0))
    section["mirror_axes"] = list(axes)
    if "pvtt_stage" in section:
        stage = segmenter if pvtt_model is segmenter else pvtt_model
        section["pvtt_stage"] = {"model": stage.path.name, "sha256": stage.card.get("sha256"),
                                 **section["pvtt_stage"]}
    section["tuning"].update({"cohort": str(Path(cohort_dir).name), "device": str(segmenter.device),
                              "cpu_precision": segmenter.cpu_precision,
                              "seconds": round(time.perf_counter() - t0, 1)})
    return section


def tune_from_logits(items, *, max_fp: float = DEFAULT_MAX_FP, max_false_pvtt: float = DEFAULT_MAX_FALSE_PVTT,
                     pvtt_grid: Sequence[float] = PVTT_BIAS_GRID,
                     confidence_grid: Sequence[float] = CONFIDENCE_GRID, stage_grid: Sequence[float] = PVTT_STAGE_GRID,
                     volume_grid: Sequence[float] = PVTT_VOLUME_GRID_ML, progress: ProgressCallback | None = None
                     ) -> dict[str, Any]:
    """The tuning of :func:`tune_segmentation` on already collected logits (:func:`collect_logits`); items with a
    PVTT-stage probability tune the stage's threshold instead of the PVTT logit bias."""
    n_classes = int(items[0]["logits"].shape[0])
    if n_classes <= PVTT:
        raise InputError(f"the model has {n_classes} classes; PVTT (label {PVTT}) is not one of them.")
    staged = all(it.get("pvtt_prob") is not None for it in items)
    bias_table = sweep_pvtt_bias(items, (0.0,) if staged else pvtt_grid, progress=SubProgress(progress, 0.0, 0.3))
    if not any(math.isfinite(r["mean"]) for r in bias_table):
        raise InputError("tuning: no label could be scored; are the labels empty?")
    best_bias = choose_pvtt_bias(bias_table, max_false_pvtt)
    class_bias = _bias(n_classes, best_bias["pvtt_bias"])
    stage_table, stage_row = None, None
    if staged:
        stage_table = sweep_pvtt_stage(items, stage_grid, volume_grid, progress=SubProgress(progress, 0.3, 0.6))
        stage_row = choose_pvtt_stage(stage_table, max_false_pvtt)
    stage = None if stage_row is None else (stage_row["pvtt_min_probability"], stage_row["pvtt_min_volume_ml"])
    pvtt_off = stage_row is None and best_bias["false_pvtt_fraction"] > max_false_pvtt + 1e-9
    if pvtt_off:
        best_bias = sweep_pvtt_bias(items, (PVTT_OFF_BIAS,))[0]
        class_bias = _bias(n_classes, PVTT_OFF_BIAS)
    pvtt_row = best_bias if stage_row is None else stage_row
    conf_table = sweep_confidence(items, class_bias, confidence_grid, progress=SubProgress(progress, 0.6, 1.0),
                                  pvtt_stage=stage)
    untuned = sweep_confidence(items, None, (0.0,))[0]
    chosen = choose_confidence(conf_table, max_fp)
    pvtt_rule = "PVTT-stage probability threshold" if staged else "PVTT logit bias"
    section = {
        "class_bias": class_bias,
        "min_tumor_confidence": chosen["min_tumor_confidence"],
        "tuning": {
            "n_cases": len(items),
            "patients": [it["patient_id"] for it in items],
            "rule": (f"{pvtt_rule}: highest mean Dice (liver, viable, necrosis, PVTT over patients with PVTT in "
                     f"truth or prediction) with PVTT drawn in <= {max_false_pvtt:.0%} of the patients without it "
                     f"(none qualifying: no PVTT drawn, bias {PVTT_OFF_BIAS:g}); lesion confidence: highest "
                     f"sensitivity (lesions >= 10 mm) with <= {max_fp} false-positive lesions per patient"),
            "max_fp": float(max_fp), "max_false_pvtt": float(max_false_pvtt),
            "untuned": {k: untuned[k] for k in ("sensitivity", "fp_per_patient", "viable_tumor", "necrosis")}
            | {k: bias_table[0][k] if bias_table[0]["pvtt_bias"] == 0 else None
               for k in ("pvtt", "pvtt_where_present", "false_pvtt_fraction")},
            "chosen": {"pvtt_bias": best_bias["pvtt_bias"],
                       "pvtt_min_probability": None if stage is None else stage[0],
                       "pvtt_min_volume_ml": None if stage is None else stage[1],
                       "pvtt": pvtt_row["pvtt"], "pvtt_where_present": pvtt_row["pvtt_where_present"],
                       "false_pvtt_fraction": pvtt_row["false_pvtt_fraction"], **chosen},
            "pvtt_bias_table": bias_table, "confidence_table": conf_table,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
    }
    if pvtt_off:
        section["tuning"]["pvtt_off"] = (f"no PVTT rule drew thrombus in <= {max_false_pvtt:.0%} of the patients "
                                         f"without one: PVTT is not drawn (logit bias {PVTT_OFF_BIAS:g})")
    if staged:
        section["tuning"]["pvtt_stage_table"] = stage_table
        if stage_row is None:
            section["tuning"]["pvtt_stage_rejected"] = (
                f"no PVTT-stage threshold found thrombus while drawing it in <= {max_false_pvtt:.0%} of the "
                f"patients without one: the stage is not used")
        else:
            section["pvtt_stage"] = {"min_probability": stage[0], "min_volume_ml": stage[1]}
    return section


def apply_to_card(weights_path, postprocessing_section: dict[str, Any], *, report: str | None = None) -> Path:
    """Write ``postprocessing_section`` into the model card next to ``weights_path`` (the weights and their sha256
    are untouched; the card's other fields are kept), without the two sweep tables (they go to the ``report`` file,
    named in the card when given). Returns the card's path."""
    card_path = card_path_of(Path(weights_path))
    if not card_path.is_file():
        raise InputError(f"{card_path}: model card not found next to {weights_path}.")
    card = load_card(weights_path)
    section = dict(postprocessing_section)
    for key in ("envelope_stage", "single_phase_stage"):  # chosen by `hcctwin tune envelope / single-phase`
        kept = (card.get("postprocessing") or {}).get(key)
        if kept and key not in section:
            section[key] = kept
    tuning = {k: v for k, v in dict(section.get("tuning") or {}).items()
              if k not in ("pvtt_bias_table", "confidence_table", "pvtt_stage_table")}
    if report:
        tuning["report"] = str(report)
    section["tuning"] = tuning
    card["postprocessing"] = jsonable(section, finite=True)
    _atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8"))
    return card_path


# ------------------------------------------------------------------------------------------------ envelope stage
#: margins (mm) tried for the envelope stage, smallest first
ENVELOPE_MARGINS_MM = (3.0, 6.0, 10.0, 15.0)
#: the largest mean-Dice loss (liver + lesions, and tumour) on the tuning cohort an envelope margin may cost
ENVELOPE_MAX_LOSS = 0.002


def tune_envelope(segmenter, envelope, cohort_dir, *, max_cases: int | None = None,
                  margins: Sequence[float] = ENVELOPE_MARGINS_MM, max_loss: float = ENVELOPE_MAX_LOSS,
                  progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Choose the envelope stage's margin on a labelled cohort (issue 22): the smallest margin whose gating costs
    the main model at most ``max_loss`` of mean Dice (liver + lesions together, and tumour) on the cohort, where
    both models are at home; None when every margin costs more (the stage is then not used). The two models run
    once per case on the input grid and each margin is applied there with the same
    :func:`.inference.envelope_mask` the segmenter uses on its model grid. Also records the models' agreement
    (Dice of the two foregrounds) over the cohort: the out-of-domain guard's limit must sit below it.

    Returns the card's ``postprocessing.envelope_stage`` section (model file, sha256, margin, the cohort's numbers)
    or, when no margin qualifies, ``{"rejected": ...}``."""
    t0 = time.perf_counter()
    cases = list(_tuning_cases(cohort_dir, max_cases, tuning_inputs(segmenter.card)))
    if not cases:
        raise InputError(f"{cohort_dir}: no labelled pre-treatment studies to tune on.")
    rows = []
    for n, (pid, case, truth) in enumerate(cases):
        main = segmenter.segment(case)
        env = envelope.segment(case) > 0
        m, e = main > 0, env
        agree = 2.0 * np.count_nonzero(m & e) / max(np.count_nonzero(m) + np.count_nonzero(e), 1)
        row = {"patient_id": pid, "agreement": float(agree), "none": _fg_tumour_dice(main, truth)}
        for mm in margins:
            keep = envelope_mask(e, case.geometry.spacing, float(mm))
            row[str(float(mm))] = _fg_tumour_dice(np.where(keep, main, 0).astype(np.uint8), truth)
        rows.append(row)
        report(progress, (n + 1) / len(cases), f"Envelope tuning {n + 1}/{len(cases)}")

    def mean(key, part):
        vals = [r[key][part] for r in rows if r[key][part] is not None]
        return float(np.mean(vals)) if vals else None

    base = {"foreground": mean("none", "foreground"), "tumor": mean("none", "tumor")}
    table = []
    chosen = None
    for mm in margins:
        k = str(float(mm))
        entry = {"margin_mm": float(mm), "foreground": mean(k, "foreground"), "tumor": mean(k, "tumor")}
        entry["loss"] = max(base[p] - entry[p] for p in ("foreground", "tumor") if base[p] is not None)
        table.append(entry)
        if chosen is None and entry["loss"] <= max_loss:
            chosen = entry
    agreement = np.array([r["agreement"] for r in rows])
    numbers = {"cohort": Path(cohort_dir).name, "n_cases": len(rows), "without_envelope": base, "margins": table,
               "agreement": {"min": float(agreement.min()), "p5": float(np.percentile(agreement, 5)),
                             "median": float(np.median(agreement))},
               "rule": f"smallest margin costing at most {max_loss} mean Dice (liver + lesions, tumour)",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "seconds": round(time.perf_counter() - t0, 1)}
    if chosen is None:
        return {"rejected": numbers}
    return {"model": envelope.path.name, "sha256": envelope.card.get("sha256"),
            "version": envelope.card.get("version"), "margin_mm": chosen["margin_mm"], "tuning": numbers}


def _fg_tumour_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Dice of liver + lesions + PVTT together and of tumour (viable + necrosis) together."""
    out = {}
    for part, values in (("foreground", (1, 2, 3, 4)), ("tumor", (2, 3))):
        p, t = np.isin(pred, values), np.isin(truth, values)
        s = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
        out[part] = 2.0 * int(np.count_nonzero(p & t)) / s if s else None
    return out


def apply_envelope_to_card(weights_path, section: dict[str, Any]) -> Path:
    """Write the envelope stage ``section`` into the card of ``weights_path`` (``postprocessing.envelope_stage``;
    the other decision rules are kept)."""
    card_path = card_path_of(Path(weights_path))
    card = load_card(weights_path)
    post = dict(card.get("postprocessing") or {})
    post["envelope_stage"] = jsonable(section, finite=True)
    card["postprocessing"] = post
    _atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8"))
    return card_path


# -------------------------------------------------------------------------------------------- single-phase stage
def tune_single_phase(segmenter, stage, cohort_dir, *, max_cases: int | None = None,
                      progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Whether ``stage`` (a model trained on one phase at a time, its card accepting single-phase input) should
    read single-phase studies in ``segmenter``'s place: both run on every single-phase input the stage accepts (each
    phase of each labelled study alone); the stage is kept when its mean Dice of liver + lesions together, of
    tumour and of viable tumour are each at least the main model's (the main model reads a single phase copied
    into both channels, as it does without a stage).

    Returns the card's ``postprocessing.single_phase_stage`` section (model file, sha256, version, the cohort's
    numbers per input) or ``{"rejected": numbers}``."""
    t0 = time.perf_counter()
    inputs = [a for a in accepted_inputs_of(stage.card, stage.phases) if len(a) == 1]
    if not inputs:
        raise InputError(f"single-phase stage {stage.card.get('name')}: its card accepts no single-phase input.")
    kept = segmenter.single_phase_stage
    segmenter.attach_single_phase_stage(None)  # the main model alone: what a single-phase study gets without it
    try:
        cases = list(_tuning_cases(cohort_dir, max_cases, inputs))
        if not cases:
            raise InputError(f"{cohort_dir}: no labelled pre-treatment studies to tune on.")
        rows = []
        for n, (pid, case, truth) in enumerate(cases):
            row = {"study": pid, "input": "+".join(case.phases)}
            for who, model in (("main", segmenter), ("stage", stage)):
                pred = model.segment(case)
                row[who] = {**_fg_tumour_dice(pred, truth), "viable": _dice_of(pred, truth, (2,))}
            rows.append(row)
            report(progress, (n + 1) / len(cases), f"Single-phase stage {n + 1}/{len(cases)}")
    finally:
        segmenter.attach_single_phase_stage(kept)

    def mean(sel, who, part):
        vals = [r[who][part] for r in sel if r[who][part] is not None]
        return float(np.mean(vals)) if vals else None

    parts = ("foreground", "tumor", "viable")
    by_input = {}
    for combo in ["+".join(a) for a in inputs] + ["all"]:
        sel = [r for r in rows if combo in ("all", r["input"])]
        by_input[combo] = {who: {p: mean(sel, who, p) for p in parts} for who in ("main", "stage")}
        by_input[combo]["n_studies"] = len(sel)
    total = by_input["all"]
    better = all((total["stage"][p] or 0.0) >= (total["main"][p] or 0.0) for p in parts)
    numbers = {"cohort": Path(cohort_dir).name, "n_cases": len({r["study"].split(":")[0] for r in rows}),
               "by_input": by_input,
               "rule": "kept when its mean Dice of liver + lesions, tumour and viable tumour over the single-phase "
                       "studies are each at least the main model's",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "seconds": round(time.perf_counter() - t0, 1)}
    if not better:
        return {"rejected": numbers}
    return {"model": stage.path.name if stage.path else None, "sha256": stage.card.get("sha256"),
            "version": stage.card.get("version"), "tuning": numbers}


def _dice_of(pred: np.ndarray, truth: np.ndarray, values) -> float | None:
    p, t = np.isin(pred, values), np.isin(truth, values)
    s = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    return 2.0 * int(np.count_nonzero(p & t)) / s if s else None


def apply_single_phase_to_card(weights_path, section: dict[str, Any] | None) -> Path:
    """Write the single-phase stage ``section`` into the card of ``weights_path``
    (``postprocessing.single_phase_stage``; None removes it; the other decision rules are kept)."""
    card_path = card_path_of(Path(weights_path))
    card = load_card(weights_path)
    post = dict(card.get("postprocessing") or {})
    if section is None:
        post.pop("single_phase_stage", None)
    else:
        post["single_phase_stage"] = jsonable(section, finite=True)
    card["postprocessing"] = post
    _atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8"))
    return card_path
