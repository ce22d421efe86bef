"""``hcctwin`` command line: headless engine for batch work, training, validation and the demo.

Each sub-command lives in one function ``cmd_<name>(args)``; heavy packages are imported lazily so ``hcctwin --help``
is fast. Errors a user can cause (bad input, wrong units) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import DISCLAIMER, __version__
from .errors import HCCTwinError, InputError
from .pipeline import DEFAULT_REGIMENS, DEFAULT_WEEKS
from .progress import SubProgress
from .survival_result import SurvivalResult

_T_START = time.perf_counter()  # `hcctwin view` reports its start-up from here
PHASE_ALIGNMENT_HELP = ("leave the phases as read (default: a phase acquired in another breath-hold than the "
                        "arterial one is shifted onto it before segmentation; result.json phase_alignment)")


class ProgressBar:
    """Text progress bar on stderr; the same ``(fraction, message)`` callback the Slicer module uses."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self._last = ""

    #: True while a bar's line is unfinished on stderr (a message printed then starts on a new line)
    open_line = False

    def __call__(self, fraction: float, message: str):
        filled = int(round(self.width * fraction))
        line = (f"\r[{'#' * filled}{'.' * (self.width - filled)}] {100 * fraction:5.1f}% "
                f"{time.perf_counter() - self.start:6.1f}s {message[:60]:<60}")
        if line != self._last:
            self.stream.write(line)
            self.stream.flush()
            self._last = line
            ProgressBar.open_line = True
        if fraction >= 1.0:
            self.stream.write("\n")
            ProgressBar.open_line = False
        return None


def _error_line(text: str) -> None:
    """One line on stderr, on a line of its own (after an unfinished progress bar)."""
    if ProgressBar.open_line:
        sys.stderr.write("\n")
        ProgressBar.open_line = False
    print(text, file=sys.stderr)


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _bounded_int(text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number for {what}, got {text!r}") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, got {value}")
    return value


def _seed(text: str) -> int:
    """``--seed``: a whole number 0 .. 2**32 - 1 (what numpy's generators take)."""
    return _bounded_int(text, 0, 2**32 - 1, "the seed")


def _samples(text: str) -> int:
    """``--samples``: 1 .. ``twin.generator.MAX_SAMPLES`` generator samples (bounded: all noise is drawn up front)."""
    from .twin.generator import MAX_SAMPLES

    return _bounded_int(text, 1, MAX_SAMPLES, "--samples")


def _positive_int(text: str) -> int:
    """``--max-cases``: a whole number, 1 or more."""
    return _bounded_int(text, 1, 10**9, "this option")


def _bootstrap(text: str) -> int:
    """``--bootstrap``: 0 (no bands) .. 10000 resamples."""
    return _bounded_int(text, 0, 10_000, "--bootstrap")


def _regimen(text: str) -> str:
    """A regimen id of the installed catalogue (``regimens.json``)."""
    from .regimens import load_catalogue

    known = list(load_catalogue())
    value = text.strip()
    if value not in known:
        raise argparse.ArgumentTypeError(f"unknown regimen {text!r}; known: {', '.join(known)}")
    return value


def _regimen_list(text: str) -> list[str]:
    """``--regimens``: one or more comma-separated regimen ids of the catalogue."""
    items = _csv_list(text)
    if not items:
        raise argparse.ArgumentTypeError("expected one or more comma-separated regimen ids, got nothing")
    return [_regimen(t) for t in items]


def _mirror_axes(text: str) -> list[int]:
    """``--mirror-axes``: 'none' (or empty) or comma-separated model-grid axes 0, 1, 2."""
    from .segmentation.inference import mirror_sets

    if text.strip().lower() in ("", "none"):
        return []
    try:
        axes = sorted({int(v) for v in text.split(",") if v.strip()})
        mirror_sets(axes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'none' or model-grid axes 0, 1, 2 (K, J, I) such as 1,2; "
                                         f"got {text!r}") from None
    return axes


def read_clinical_row(csv_path: str | Path, patient_id: str) -> dict:
    """One patient's row of a cohort ``clinical.csv`` as a dict (empty cells dropped); notes about how the table was
    read (delimiter, encoding, ...) go to stderr. See :func:`HCCTwinLib.io.read_clinical_row`."""
    from .io import read_clinical_row as _read

    values, notes = _read(csv_path, patient_id)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return values


# ----------------------------------------------------------------------------------------------- sub-commands
def cmd_demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(Path(args.out), seed=args.seed, progress=ProgressBar())
    print(json.dumps({k: summary[k] for k in ("patient_id", "outputs") if k in summary}, indent=2))
    print(DISCLAIMER)
    return 0


def cmd_inspect(args) -> int:
    from .io import load_case

    paths = _phase_paths(args)
    case = load_case(args.pre, paths=paths or None, labels_path=args.labels)
    g = case.geometry
    info = {"patient_id": case.patient_id, "modality": case.modality, "phases": case.phase_names,
            "shape_kji": list(g.shape), "spacing_mm": list(g.spacing), "origin_lps_mm": list(g.origin),
            "direction": list(g.direction), "sources": case.source,
            "hu_range": {n: [float(a.min()), float(a.max())] for n, a in case.phases.items()}}
    if case.labels is not None:
        from .pipeline import label_volumes_ml

        info["label_volumes_ml"] = label_volumes_ml(case.labels, g.voxel_volume_ml)
    print(json.dumps(info, indent=2))
    return 0


def cmd_scores(args) -> int:
    from . import clinical

    values = read_clinical_row(args.clinical, args.patient) if args.clinical else {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in clinical.CLINICAL_FIELDS:
            raise InputError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(clinical.CLINICAL_FIELDS)}"
                             f" (a misspelt key would be ignored).")
        values[key] = value.strip()
    scores = clinical.compute_scores(values)
    regimens = args.regimens or None
    from .regimens import REGIMEN_IDS, eligibility_warnings

    warnings = {r: eligibility_warnings(r, values) for r in (regimens or REGIMEN_IDS)}
    print(json.dumps({"scores": scores, "eligibility_warnings": warnings}, indent=2, default=str))
    return 0


def cmd_simulate(args) -> int:
    if args.format == "dicom":
        from .simulate.dicom_export import simulate_dicom_cohort

        table = simulate_dicom_cohort(args.n, args.seed, Path(args.out), fast=args.fast, progress=ProgressBar())
        print(f"wrote {len(table)} patients as DICOM to {Path(args.out) / 'dicom'} (+ clinical_site.csv, "
              f"mapping.json, truth/); import with: hcctwin import --dicom {Path(args.out) / 'dicom'} --clinical "
              f"{Path(args.out) / 'clinical_site.csv'} --mapping {Path(args.out) / 'mapping.json'} --out COHORT")
        return 0
    from .simulate import simulate_cohort

    table = simulate_cohort(args.n, args.seed, Path(args.out), fast=args.fast, progress=ProgressBar(),
                            write_truth_images=not args.no_truth_images)
    print(f"wrote {len(table)} patients to {args.out}")
    return 0


def cmd_import(args) -> int:
    from .errors import InputError

    table, notes = None, []
    if args.clinical:  # read (and check) the table before any image is written
        if args.mapping:
            from .sitemap import read_site_clinical

            table, notes = read_site_clinical(args.clinical, args.mapping)
        else:
            from .io import read_clinical_table

            table, notes = read_clinical_table(args.clinical)
    elif args.mapping:
        raise InputError("--mapping reads a site's clinical table: give the table with --clinical too.")
    segment_map = None
    if args.segment_map:
        try:
            segment_map = json.loads(Path(args.segment_map).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{args.segment_map}: segment mapping unreadable ({exc}); give a JSON object such as "
                             f"{{\"Mass\": \"viable_tumor\", \"Portal vein\": \"ignore\"}}.") from exc
        if not isinstance(segment_map, dict):
            raise InputError(f"{args.segment_map}: the segment mapping must be a JSON object (segment -> label).")
    from .dicom import import_dicom_cohort

    out = Path(args.out)
    log = import_dicom_cohort(args.dicom, out, phase_rules=args.phase_rules, segment_map=segment_map,
                              progress=ProgressBar())
    imported = [p["patient_id"] for p in log["patients"] if p["status"] == "imported"]
    summary = dict(log["summary"])
    if table is not None:
        followups = {p["patient_id"]: ";".join(p["followups"]) for p in log["patients"] if p["status"] == "imported"}
        ids = [str(i) for i in table["patient_id"]]
        table["followups"] = [followups.get(i, "") for i in ids]
        table.to_csv(out / "clinical.csv", index=False)
        clinical = {"table": str(args.clinical), "mapping": str(args.mapping) if args.mapping else None,
                    "rows": len(table), "notes": notes,
                    "patients_without_images": sorted(set(ids) - set(imported)),
                    "patients_without_clinical_row": sorted(set(imported) - set(ids))}
        log["clinical"] = clinical
        (out / "import_log.json").write_text(json.dumps(log, indent=2, allow_nan=False), encoding="utf-8")
        summary.update({k: clinical[k] for k in ("rows", "patients_without_images", "patients_without_clinical_row")})
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    for skip in log["skipped"]:
        what = f"{skip['patient_id']} {skip['study_date'] or ''}".strip()
        print(f"skipped {what}: {skip['reason']}", file=sys.stderr)
    print(json.dumps({"out": str(out), **summary}, indent=2))
    if not imported:
        print(f"hcctwin import: error: no patient could be imported; see {out / 'import_log.json'}", file=sys.stderr)
        return 2
    return 0


def _phase_paths(args) -> dict:
    """The phase files given on the command line (one, two or three of --arterial, --portal, --delayed)."""
    return {k: v for k in ("arterial", "portal", "delayed") if (v := getattr(args, k, None))}


def _followup_paths(args) -> dict:
    """The real follow-up's phase files given on the command line (--followup-arterial, --followup-portal)."""
    return {k: v for k in ("arterial", "portal") if (v := getattr(args, f"followup_{k}", None))}


def _load_case_args(args):
    from .io import load_case

    paths = _phase_paths(args)
    return load_case(args.pre, paths=paths or None)


def cmd_segment(args) -> int:
    from .domain import assess
    from .io import refuse_overwriting_inputs, write_image
    from .pipeline import align_and_segment, label_volumes_ml
    from .segmentation import get_segmenter

    case = _load_case_args(args)
    refuse_overwriting_inputs([args.out], case.source.values())
    segmenter = get_segmenter(args.weights, device=args.device)
    print(segmenter.message, file=sys.stderr)
    t0 = time.perf_counter()
    case, labels, alignment = align_and_segment(case, segmenter, align=not args.no_phase_alignment,
                                                progress=ProgressBar())
    for a in alignment:
        if not a.aligned_already:
            print(f"note: {a.note()}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    write_image(labels, case.geometry, args.out, labels=True)
    verdict = assess(case.phases, case.geometry, labels, confidence=segmenter.last_info.get("confidence"),
                     card=segmenter.last_card, modality=case.modality)
    for message in segmenter.last_info.get("messages", []):
        if message and message != segmenter.message:
            print(f"note: {message}", file=sys.stderr)
    if verdict.verdict != "inside":
        print(f"{verdict.verdict.upper()}: {verdict.headline()}", file=sys.stderr)
        for reason in verdict.reasons:
            print(f"  {reason}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "seconds": round(seconds, 2),
                      "label_volumes_ml": label_volumes_ml(labels, case.geometry.voxel_volume_ml),
                      "phase_alignment": [a.to_dict() for a in alignment], "domain": verdict.to_dict()}, indent=2))
    return 0


def _predict_outputs(out: Path, args) -> list[Path]:
    """Every file ``hcctwin predict`` may write under ``out`` (checked against its inputs before computing)."""
    files = [out / n for n in ("result.json", "report.html", "report.pdf", "survival.png", "survival_pfs.png",
                               "landmark.png", "key_image.png")]
    files += [out / "pre" / f"{n}.nii.gz" for n in ("arterial", "portal", "delayed", "labels")]
    if (getattr(args, "followup", None) or _followup_paths(args)) and args.followup_weeks is not None:
        files += [out / "real" / f"w{int(args.followup_weeks):02d}" / f"{n}.nii.gz"
                  for n in ("arterial", "portal", "delayed", "labels")]
    names = ("arterial", "portal", "labels", "arterial_std", "portal_std")
    for regimen in args.regimens:
        for w in args.weeks:
            files += [out / regimen / f"w{int(w):02d}" / f"{n}.nii.gz" for n in names]
    return files


def _predict_cohort(args) -> int:
    """``hcctwin predict --cohort``: every patient of the cohort (see :mod:`HCCTwinLib.batch`)."""
    from .batch import PREDICTIONS_CSV, predict_cohort
    from .pipeline import PipelineOptions

    single = [f"--{name.replace('_', '-')}" for name in ("pre", "arterial", "portal", "delayed", "labels", "clinical",
                                                         "patient", "followup", "followup_arterial",
                                                         "followup_portal", "followup_weeks", "followup_regimen")
              if getattr(args, name, None) is not None]
    if single:
        raise InputError(f"--cohort reads each patient's pre-treatment study and clinical row from the cohort folder; "
                         f"leave out {', '.join(single)} (they are for one patient).")
    options = PipelineOptions(device=args.device, samples=args.samples, seed=args.seed,
                              segmentation_weights=args.segmentation_weights,
                              generator_weights=args.generator_weights, survival_model=args.survival_model,
                              segmentation="model" if args.resegment else "auto",
                              allow_missing_models=args.allow_missing_models,
                              align_phases=not args.no_phase_alignment)
    table = predict_cohort(args.cohort, args.out, regimens=args.regimens, weeks=args.weeks, options=options,
                           max_cases=args.max_cases, report=args.report, deidentify=args.deidentify,
                           scheduler=args.scheduler, workers=args.workers, progress=ProgressBar())
    failed = table[table["status"] != "ok"]
    key = table.columns[0]
    for _, row in failed.iterrows():
        print(f"{row[key]}: {row['message']}", file=sys.stderr)
    print(json.dumps({"predictions": str(Path(args.out) / PREDICTIONS_CSV), "patients": len(table),
                      "ok": int(len(table) - len(failed)), "failed": int(len(failed))}, indent=2))
    print(DISCLAIMER)
    return 0 if len(failed) < len(table) else 2


def cmd_predict(args) -> int:
    if args.cohort:
        return _predict_cohort(args)
    if not (args.pre or _phase_paths(args)):
        raise InputError("give the pre-treatment study (--pre, or --arterial / --portal / --delayed), or --cohort.")
    from .cases import ObservedScan
    from .io import load_case, refuse_overwriting_inputs, relocate_paths, staged_output
    from .jsonutil import jsonable
    from .pipeline import PipelineOptions, run_case, save_result

    clinical = read_clinical_row(args.clinical, args.patient) if args.clinical else {}
    paths = _phase_paths(args)
    case = load_case(args.pre, patient_id=args.patient, paths=paths or None, labels_path=args.labels,
                     clinical=clinical)
    real = None
    fu_paths = _followup_paths(args)
    if args.followup or fu_paths:
        if args.followup_weeks is None:
            raise InputError("--followup needs --followup-weeks (weeks since the start of treatment).")
        fu_case = load_case(args.followup, paths=fu_paths or None)
        real = ObservedScan(weeks=args.followup_weeks, phases=dict(fu_case.phases), geometry=fu_case.geometry,
                            labels=fu_case.labels, regimen=args.followup_regimen,
                            deformable=not args.no_deformable)
    refuse_overwriting_inputs(_predict_outputs(Path(args.out), args),
                              [*case.source.values(), args.clinical, args.labels,
                               *((fu_case.source.values()) if real is not None else ())])
    options = PipelineOptions(device=args.device, samples=args.samples, seed=args.seed,
                              segmentation_weights=args.segmentation_weights,
                              generator_weights=args.generator_weights, survival_model=args.survival_model,
                              segmentation="model" if args.resegment else "auto",
                              allow_missing_models=args.allow_missing_models,
                              align_phases=not args.no_phase_alignment)
    out = Path(args.out)
    with staged_output(out) as stage:  # the outputs are complete or absent (an interrupted run changes nothing)
        result = run_case(case, args.regimens, args.weeks, real_followup=real, options=options,
                          progress=ProgressBar())
        summary = jsonable(result.summary(), finite=True)
        if args.deidentify:  # result.json and the report without the patient's name or ID
            from .report.content import deidentify_summary

            summary = deidentify_summary(summary)
        paths = save_result(result, stage, summary=summary)
        if args.report:
            from .report import write_report

            paths.update({k: str(v) for k, v in write_report(summary, stage, deidentify=args.deidentify).items()})
    paths = relocate_paths(paths, stage, out)
    rec = SurvivalResult.from_dict(result.survival).recommendation
    shown = {"outputs": paths, "recommendation": rec.to_dict() if rec is not None else None, "notes": result.notes}
    if args.deidentify:
        from .report.content import deidentify_summary

        shown = deidentify_summary({**shown, "patient_id": result.case.patient_id})
    print(json.dumps(shown, indent=2, default=str))
    print(DISCLAIMER)
    return 0


def cmd_register(args) -> int:
    from .registration import run_register_command

    summary = run_register_command(args.fixed, args.moving, args.out, deformable=not args.no_deformable,
                                   progress=ProgressBar())
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import run_evaluate_command
    from .pipeline import PipelineOptions

    metrics = run_evaluate_command(args.cohort, args.out, max_cases=args.max_cases, images=not args.no_images,
                                   options=PipelineOptions(device=args.device, samples=args.samples, seed=args.seed),
                                   progress=ProgressBar(), scheduler=args.scheduler, workers=args.workers)
    surv = metrics.get("survival", {})
    summary = {"metrics_json": str(Path(args.out) / "metrics.json"), "notes": metrics["notes"]}
    if "os" in surv:
        summary["os_harrell_c"] = surv["os"]["model"]["harrell_c"]
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_study(args) -> int:
    from .pipeline import PipelineOptions
    from .study import run_study

    study = run_study(args.cohort, args.out, splits=_csv_list(args.splits), train=args.train,
                      images=not args.no_images, max_cases=args.max_cases, n_bootstrap=args.bootstrap,
                      seed=args.seed, with_ids=args.with_ids,
                      options=PipelineOptions(device=args.device, samples=args.samples, seed=args.seed),
                      progress=ProgressBar(), scheduler=args.scheduler, workers=args.workers)
    summary = {"study_html": str(Path(args.out) / "study.html"), "study_json": str(Path(args.out) / "study.json"),
               "split_sizes": study["split_sizes"], "survival_model": study["models"]["survival"]["source"]}
    for name, res in study["results"].items():
        os_m = (res.get("survival") or {}).get("os")
        if os_m:
            summary[f"{name}_os_harrell_c"] = os_m["model"]["harrell_c"]
        im = (res.get("images") or {}).get("model")
        if im and im.get("n_followups"):
            summary[f"{name}_tumour_dice"] = im["tumour_dice_mean"]
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_report(args) -> int:
    from .io import relocate_paths, staged_output
    from .report import write_report
    from .report.figures import KEY_IMAGE

    result_json = Path(args.result)
    if result_json.is_dir():
        result_json = result_json / "result.json"
    try:
        summary = json.loads(result_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--result {args.result}: no result.json there; give the result.json that `hcctwin predict` "
                         f"wrote, or its folder.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--result {result_json}: not a readable result.json ({exc}); give the result.json that "
                         f"`hcctwin predict` wrote.") from None
    if not isinstance(summary, dict) or "patient_id" not in summary or "hcctwin_version" not in summary:
        raise InputError(f"--result {result_json}: not a result.json of `hcctwin predict` (no patient_id / "
                         f"hcctwin_version); give the result.json that `hcctwin predict` wrote.")
    images = {}
    for caption, path in (("Linked views", args.layout or result_json.parent / "layout.png"),):
        if path and Path(path).is_file():
            images[caption] = Path(path)
    out = Path(args.out or result_json.parent)
    with staged_output(out) as stage:  # report.html and report.pdf of one run, never of two
        try:
            key = result_json.parent / KEY_IMAGE
            paths = write_report(summary, stage, images=images or None, deidentify=args.deidentify,
                                 key_image=key if key.is_file() else None)
        except HCCTwinError:
            raise
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            raise InputError(f"--result {result_json}: the result.json is damaged or edited ({type(exc).__name__}: "
                             f"{exc}); write it again with `hcctwin predict`.") from None
    paths = relocate_paths(paths, stage, out)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def cmd_view(args) -> int:
    from .scene.viewer import serve

    serve(args.result, port=args.port, phase=args.phase, show_patient_id=args.show_patient_id, t0=_T_START)
    return 0


def _train_survival(cohort_dir, out_dir, *, n_bootstrap: int = 50, seed: int = 0, images: bool = True,
                    progress=None, scheduler: str | None = "serial", workers: int | None = None) -> dict:
    """``hcctwin train survival``: feature table of the cohort, fit, save ``out_dir/hcctwin_survival.safetensors``
    + card."""
    from .survival.cohort import cohort_feature_table
    from .survival.engine import ENGINE_NAME, fit_engine
    from .survival.store import save_engine

    t0 = time.perf_counter()
    table, notes = cohort_feature_table(cohort_dir, images=images, progress=SubProgress(progress, 0.0, 0.4),
                                        scheduler=scheduler, workers=workers)
    engine, fit_notes = fit_engine(table, n_bootstrap=n_bootstrap, seed=seed, progress=SubProgress(progress, 0.4, 1))
    notes += fit_notes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    training = {"cohort": Path(cohort_dir).name, "n_patients": int(len(table)),
                "n_os_events": int(engine.os.n_events_), "regimens": engine.os.regimen_counts_, "notes": notes,
                "seed": seed, "fit_seconds": round(time.perf_counter() - t0, 1)}
    weights, card = save_engine(engine, out / f"{ENGINE_NAME}.safetensors", training_data=training)
    return {"weights": str(weights), "card": str(card), "notes": notes, "n_patients": len(table)}


def cmd_train(args) -> int:
    if getattr(args, "records_cache", None) and not (args.model == "generator" and args.architecture == "anchored"):
        raise InputError("--records-cache applies to `hcctwin train generator` (the anchored twin) only.")
    if args.model == "survival":
        summary = _train_survival(args.cohort, args.out, n_bootstrap=args.bootstrap, seed=args.seed,
                                  images=not args.no_images, progress=ProgressBar(), scheduler=args.scheduler,
                                  workers=args.workers)
        print(json.dumps(summary, indent=2, default=str))
        return 0
    if args.model == "generator" and args.architecture == "anchored":
        from .twin.fit import train_kinetic

        flow_only = [f"--{name.replace('_', '-')}" for name in ("batch_size", "lr", "time_budget", "cpu_bf16",
                                                                 "init_weights", "regimen_prior")
                     if getattr(args, name, None)]
        if flow_only:
            raise InputError(f"{', '.join(flow_only)} apply to the network generator only (--architecture flow); "
                             f"the anchored twin is fitted in one pass.")
        summary = train_kinetic(args.cohort, args.out, max_cases=args.max_cases, progress=ProgressBar(),
                                scheduler=args.scheduler, workers=args.workers, cache=args.records_cache)
        print(json.dumps({k: summary[k] for k in ("weights", "card", "training_data")}, indent=2, default=str))
        return 0
    if args.model == "segmentation":
        from .segmentation import train_segmentation as train
    else:
        from .twin.train import train_generator as train
    kwargs = {"epochs": args.epochs, "seed": args.seed, "device": args.device, "resume": not args.restart,
              "max_cases": args.max_cases, "progress": ProgressBar()}
    if args.batch_size:
        kwargs["batch_size"] = args.batch_size
    if args.lr:
        kwargs["lr"] = args.lr
    if args.time_budget:
        kwargs["time_budget_s"] = args.time_budget
    if args.cpu_bf16:
        kwargs["cpu_precision"] = "bf16"
    if args.init_weights:
        kwargs["init_weights"] = args.init_weights
    if args.model == "generator":
        kwargs["regimen_prior"] = args.regimen_prior
    elif args.regimen_prior:
        raise InputError("--regimen-prior applies to the generator only.")
    if args.pvtt_stage:
        if args.model != "segmentation":
            raise InputError("--pvtt-stage applies to the segmentation only.")
        from .segmentation.train import PVTT_STAGE_SETTINGS

        kwargs.update(PVTT_STAGE_SETTINGS)
    if args.small_lesions:
        if args.model != "segmentation":
            raise InputError("--small-lesions applies to the segmentation only.")
        kwargs.update({"lesion_sampling": True, "small_lesion_weight": args.small_lesions})
    for flag, key in (("appearance", "appearance_prob"), ("phase_dropout", "phase_dropout")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if args.model != "segmentation":
            raise InputError(f"--{flag.replace('_', '-')} applies to the segmentation only.")
        if not 0.0 <= value <= 1.0:
            raise InputError(f"--{flag.replace('_', '-')} {value}: a probability between 0 and 1.")
        kwargs[key] = value
    if kwargs.get("phase_dropout", 0.0) >= 1.0:  # every patch one phase: a single-phase model, named as such
        from .segmentation.train import SINGLE_PHASE_MODEL_NAME

        kwargs["name"] = SINGLE_PHASE_MODEL_NAME
    if getattr(args, "synthetic", None):
        if args.model != "segmentation":
            raise InputError("--synthetic applies to the segmentation only.")
        if args.synthetic < 1:
            raise InputError(f"--synthetic {args.synthetic}: the number of simulated tissue maps, at least 1.")
        if not 0.0 < args.synthetic_prob <= 1.0:
            raise InputError(f"--synthetic-prob {args.synthetic_prob}: a probability in (0, 1].")
        kwargs.update({"synthetic": args.synthetic, "synthetic_prob": args.synthetic_prob,
                       "synthetic_seed": args.synthetic_seed})
        if args.synthetic_templates:
            if not Path(args.synthetic_templates).is_dir():
                raise InputError(f"--synthetic-templates {args.synthetic_templates}: not a folder (label_<id>.nii.gz "
                                 f"with image_<id>.nii.gz, e.g. the CHAOS label maps).")
            kwargs["synthetic_templates"] = args.synthetic_templates
    elif getattr(args, "synthetic_templates", None):
        raise InputError("--synthetic-templates goes with --synthetic N (the simulated tissue maps they join).")
    if getattr(args, "flip_prob", None) is not None:
        if args.model != "segmentation":
            raise InputError("--flip-prob applies to the segmentation only.")
        if not 0.0 <= args.flip_prob <= 1.0:
            raise InputError(f"--flip-prob {args.flip_prob}: a probability between 0 and 1.")
        kwargs["flip_prob"] = args.flip_prob
    summary = train(args.cohort, args.out, **kwargs)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _stage_model(option: str, value: str, weights: Path, device: str):
    """The stage model given by ``--<option>``: a file in the main model's folder (its card names the stage by file
    name), loaded."""
    from .segmentation import get_segmenter
    from .weights import resolve_model_path

    path = resolve_model_path(value)
    if path.resolve().parent != weights.resolve().parent:
        raise InputError(f"--{option} {path}: put it (with its .json card) in the folder of {weights.name} "
                         f"({weights.resolve().parent}); the card names it by file name.")
    return get_segmenter(path, device=device)


def _write_tuning_report(path: str | None, section) -> None:
    """``--report``: the full tuning section as JSON."""
    from .jsonutil import jsonable

    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(jsonable(section, finite=True), indent=2) + "\n", encoding="utf-8")


def _tune_single_phase(args, segmenter, weights) -> int:
    """``hcctwin tune single-phase``: measure the single-phase model against the main model on the cohort's
    single-phase studies and pin it in the main card when it reads them at least as well."""
    from .jsonutil import jsonable
    from .segmentation.tuning import apply_single_phase_to_card, tune_single_phase

    if not args.single_phase_model:
        raise InputError("tune single-phase needs --single-phase-model (a model trained with --phase-dropout 1).")
    stage = _stage_model("single-phase-model", args.single_phase_model, weights, args.device)
    segmenter.attach_single_phase_stage(stage)  # checks grid, window, phases and that it reads one phase
    segmenter.attach_single_phase_stage(None)
    section = tune_single_phase(segmenter, stage, args.cohort, max_cases=args.max_cases, progress=ProgressBar())
    summary = {"weights": str(weights), "single_phase_stage": section}
    _write_tuning_report(args.report, section)
    if args.dry_run:
        summary["card"] = "not changed (--dry-run)"
    elif "rejected" in section:
        apply_single_phase_to_card(weights, None)
        summary["card"] = "no single-phase stage (it did not read the single-phase studies better)"
    else:
        summary["card"] = str(apply_single_phase_to_card(weights, section))
    print(json.dumps(jsonable(summary, finite=True), indent=2))
    return 0


def cmd_tune(args) -> int:
    from .jsonutil import jsonable
    from .segmentation import get_segmenter
    from .segmentation.inference import default_weights_path
    from .segmentation.tuning import apply_to_card, tune_segmentation
    from .weights import resolve_model_path

    weights = resolve_model_path(args.weights) if args.weights else default_weights_path()
    if args.model == "envelope":  # tuned on the main model alone; its card may pin an envelope file now replaced
        from .segmentation.inference import Segmenter

        segmenter = Segmenter.from_file(weights, device=args.device, with_envelope=False)
    elif args.model == "single-phase":  # its card may pin a single-phase file now replaced
        from .segmentation.inference import Segmenter

        segmenter = Segmenter.from_file(weights, device=args.device, with_single_phase=False)
    else:
        segmenter = get_segmenter(weights, device=args.device)
    print(segmenter.message, file=sys.stderr)
    if args.model == "domain":
        from .domain import apply_domain_to_card, tune_domain

        section = tune_domain(segmenter, args.cohort, max_cases=args.max_cases, cohort_name=Path(args.cohort).name,
                              progress=ProgressBar())
        summary = {"weights": str(weights), "domain": section}
        summary["card"] = "not changed (--dry-run)" if args.dry_run else str(apply_domain_to_card(weights, section))
        print(json.dumps(jsonable(summary, finite=True), indent=2))
        return 0
    if args.model == "single-phase":
        return _tune_single_phase(args, segmenter, weights)
    if args.model == "envelope":
        from .segmentation.tuning import apply_envelope_to_card, tune_envelope

        if not args.envelope_model:
            raise InputError("tune envelope needs --envelope-model (a model trained with --synthetic).")
        envelope = _stage_model("envelope-model", args.envelope_model, weights, args.device)
        segmenter.attach_envelope_stage(envelope)  # checks grid, window and phases
        segmenter.attach_envelope_stage(None)
        section = tune_envelope(segmenter, envelope, args.cohort, max_cases=args.max_cases, progress=ProgressBar())
        summary = {"weights": str(weights), "envelope_stage": section}
        _write_tuning_report(args.report, section)
        if args.dry_run or "rejected" in section:
            summary["card"] = "not changed" + (" (--dry-run)" if args.dry_run else ": no margin qualified")
        else:
            summary["card"] = str(apply_envelope_to_card(weights, section))
        print(json.dumps(jsonable(summary, finite=True), indent=2))
        return 0
    stage = None
    if args.pvtt_model:
        stage = _stage_model("pvtt-model", args.pvtt_model, weights, args.device)
        segmenter.attach_pvtt_stage(stage)  # checks grid, window and phases; the card decides whether it is used
        segmenter.attach_pvtt_stage(None)
    section = tune_segmentation(segmenter, args.cohort, max_fp=args.max_fp, max_false_pvtt=args.max_false_pvtt,
                                max_cases=args.max_cases, pvtt_model=stage, mirror_axes=args.mirror_axes,
                                progress=ProgressBar())
    summary = {"weights": str(weights), "class_bias": section["class_bias"],
               "min_tumor_confidence": section["min_tumor_confidence"], "mirror_axes": section["mirror_axes"],
               "pvtt_stage": section.get("pvtt_stage"),
               "untuned": section["tuning"]["untuned"], "chosen": section["tuning"]["chosen"]}
    if "pvtt_stage_rejected" in section["tuning"]:
        summary["pvtt_stage"] = section["tuning"]["pvtt_stage_rejected"]
    _write_tuning_report(args.report, section)
    if args.report:
        summary["report"] = str(args.report)
    if args.dry_run:
        summary["card"] = "not changed (--dry-run)"
    else:
        summary["card"] = str(apply_to_card(weights, section, report=args.report))
    print(json.dumps(jsonable(summary, finite=True), indent=2))
    return 0


def cmd_survival(args) -> int:
    from .survival import run_cv_command

    metrics = run_cv_command(args.clinical, args.endpoint, args.folds, args.seed, args.out,
                             extra_scores=args.score_columns or (), select_engine=not args.no_engine)
    keys = ("n", "n_events", "best_baseline", "selected_minus_best_baseline_harrell_c")
    print(json.dumps({k: metrics.get(k) for k in keys}, indent=2, default=str))
    return 0


def _add_scheduler_arguments(p) -> None:
    from .parallel import SCHEDULER_HELP, parse_scheduler

    def scheduler(text):
        try:
            parse_scheduler(text)  # refused with one line before any work
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    p.add_argument("--scheduler", type=scheduler, default="serial", help=SCHEDULER_HELP)
    p.add_argument("--workers", type=_positive_int, help="--scheduler local: worker processes (default: CPU cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcctwin",
        description="HCCTwin: virtual follow-up CT per regimen and survival curves for HCC (headless engine). "
                    + DISCLAIMER)
    parser.add_argument("--version", action="version", version=f"hcctwin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the main job end to end on the embedded default case")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="write a simulated cohort in the HCCTwin cohort layout")
    p.add_argument("--n", type=int, required=True, help="number of patients")
    p.add_argument("--seed", type=_seed, required=True, help="random seed")
    p.add_argument("--out", required=True, help="output cohort folder")
    p.add_argument("--fast", action="store_true", help="small volumes (for tests)")
    p.add_argument("--no-truth-images", action="store_true", help="skip counterfactual follow-up images")
    p.add_argument("--format", choices=["nifti", "dicom"], default="nifti",
                   help="nifti: the HCCTwin cohort layout (default); dicom: a TCIA-like DICOM tree (CT series + "
                        "DICOM SEG per study) with a site-style clinical table and its mapping.json, as a site "
                        "brings a cohort (no truth images)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("import", help="import a DICOM cohort (TCIA-like tree, DICOM SEG masks) into the HCCTwin "
                                      "cohort layout")
    p.add_argument("--dicom", required=True, help="root folder of the DICOM tree (any nesting)")
    p.add_argument("--out", required=True, help="new cohort folder (cases/, clinical.csv, import_log.json)")
    p.add_argument("--clinical", help="the site's clinical table (CSV); with --mapping in the site's own columns")
    p.add_argument("--mapping", help="column mapping JSON that reads --clinical into HCCTwin columns")
    p.add_argument("--phase-rules", help="JSON: phase -> SeriesDescription keywords, e.g. {\"arterial\": "
                                         "[\"art\"], \"portal\": [\"pv\"], \"ignore\": [\"delayed\"]}")
    p.add_argument("--segment-map", help="JSON: DICOM SEG segment label -> HCCTwin label (liver, viable_tumor, "
                                         "necrosis, pvtt, ignore), overriding the name rules")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("inspect", help="load and validate a pre-treatment study; print its geometry")
    p.add_argument("--pre", help="folder with arterial/portal[/labels] files or DICOM series folders")
    p.add_argument("--arterial", help="arterial phase file or DICOM folder")
    p.add_argument("--portal", help="portal venous phase file or DICOM folder")
    p.add_argument("--delayed", help="delayed / equilibrium phase file or DICOM folder (read as portal venous when "
                                     "no portal phase is given)")
    p.add_argument("--labels", help="label map file")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("segment", help="segment liver, viable tumor, necrosis and PVTT (in-process, GPU or CPU)")
    p.add_argument("--pre", help="folder with arterial/portal files or DICOM series folders")
    p.add_argument("--arterial", help="arterial phase file or DICOM folder")
    p.add_argument("--portal", help="portal venous phase file or DICOM folder")
    p.add_argument("--delayed", help="delayed / equilibrium phase file or DICOM folder (read as portal venous when "
                                     "no portal phase is given)")
    p.add_argument("--out", required=True, help="output label map (.nii.gz / .nrrd)")
    p.add_argument("--weights", help="model file (.safetensors with its .json card); default: installed model")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--no-phase-alignment", action="store_true", help=PHASE_ALIGNMENT_HELP)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("train", help="train a model on a cohort in the HCCTwin cohort layout")
    p.add_argument("model", choices=["segmentation", "generator", "survival"],
                   help="segmentation (pre-treatment and follow-up labels), generator (observed follow-ups only) or "
                        "survival (OS/PFS per regimen, landmark, metastasis; clinical.csv + label maps)")
    p.add_argument("--cohort", required=True, help="cohort folder (clinical.csv + cases/)")
    p.add_argument("--out", required=True, help="model folder (checkpoints, log, final model + card)")
    p.add_argument("--epochs", type=int, default=100, help="total epochs (re-run with more to continue)")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the train/validation split and sampling")
    p.add_argument("--max-cases", type=_positive_int, help="use at most this many patients")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--time-budget", type=float, help="segmentation/generator: stop after the epoch that passes this "
                                                      "many seconds of wall time (re-run to continue)")
    p.add_argument("--cpu-bf16", action="store_true", help="segmentation/generator: bfloat16 autocast on a CPU "
                                                           "with native bfloat16 (AMX/AVX512-BF16), 2-5x faster")
    p.add_argument("--records-cache", metavar="DIR",
                   help="generator (anchored): keep each patient's follow-up records here and read them back while "
                        "the patient's files and clinical row are unchanged (a refit then takes seconds instead of "
                        "the minutes of reading the images)")
    p.add_argument("--architecture", choices=["anchored", "flow"], default="anchored",
                   help="generator: anchored (default: per-lesion kinetics fitted on the observed follow-ups, "
                        "rendered on the patient's own image; seconds to fit) or flow (the earlier rectified-flow "
                        "network drawing the liver crop from noise; hours, measured worse: "
                        "benchmarks/results/generator_evaluation.md)")
    p.add_argument("--regimen-prior", action="store_true",
                   help="generator: condition on each regimen's expected viable-volume change as well (rates fitted "
                        "on the cohort's observed follow-ups, stored in the model card)")
    p.add_argument("--init-weights", help="segmentation/generator: start a new run from this model file (same "
                                          "architecture; a generator input layer without the regimen-prior channel "
                                          "is zero-padded)")
    p.add_argument("--appearance", type=float, metavar="P",
                   help="segmentation: randomise the appearance of this share of the training patches (intensity "
                        "curve, per-label contrast, bias, blur, slice thickness, noise) for real scans, e.g. 0.6")
    p.add_argument("--phase-dropout", type=float, metavar="P",
                   help="segmentation: copy one phase onto both channels in this share of the patches, so the model "
                        "also reads single-phase studies (listed in its card), e.g. 0.3; 1: a single-phase model "
                        "(hcctwin_seg_single_phase, validated on each phase alone; `hcctwin tune single-phase`)")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="segmentation: also train on images synthesised from N simulated tissue maps with a random "
                        "appearance per patch (SynthSeg-style, for real scans; HCCTwinLib.segmentation.synth), "
                        "e.g. 150")
    p.add_argument("--synthetic-prob", type=float, default=0.5, metavar="P",
                   help="segmentation with --synthetic: share of the patches drawn from them (default 0.5)")
    p.add_argument("--synthetic-seed", type=int, default=7001, help="segmentation with --synthetic: simulator seed")
    p.add_argument("--synthetic-templates", metavar="DIR",
                   help="segmentation with --synthetic: real label maps with their images (label_<id>.nii.gz, "
                        "image_<id>.nii.gz, e.g. CHAOS) added to the tissue maps, shapes only")
    p.add_argument("--flip-prob", type=float, metavar="P",
                   help="segmentation: mirror each patch axis with this probability (default 0.2; 0 keeps the "
                        "liver on the patient's right, as the envelope stage 0.2.0 was trained)")
    p.add_argument("--small-lesions", type=float, metavar="W",
                   help="segmentation: emphasise small lesions (tumour patch centres drawn per lesion, plus a "
                        "cross-entropy whose weight for lesions under 4 mL grows up to W, e.g. 10)")
    p.add_argument("--pvtt-stage", action="store_true",
                   help="segmentation: train a PVTT-stage model (hcctwin_seg_pvtt: thrombus weighted and oversampled;"
                        " best started with --init-weights from the main model), then choose its threshold with "
                        "`hcctwin tune segmentation --pvtt-model`")
    p.add_argument("--bootstrap", type=_bootstrap, default=50, help="survival: bootstrap replicates for the bands")
    p.add_argument("--no-images", action="store_true", help="survival: clinical features only")
    _add_scheduler_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="tune a trained segmentation model's decision rules (PVTT prior, lesion "
                                    "confidence) on labelled cases outside its training and evaluation cohorts, or "
                                    "('domain') record the out-of-domain guard's reference ranges in its card")
    p.add_argument("model", choices=["segmentation", "domain", "envelope", "single-phase"],
                   help="segmentation: decision rules; domain: the guard's training-domain reference (p1-p99 of "
                        "its measures on a cohort of the training domain, not the evaluation hold-out); envelope: the "
                        "margin of an appearance-robust envelope model (--envelope-model) around the liver; "
                        "single-phase: whether a single-phase model (--single-phase-model) reads one-phase studies "
                        "in the main model's place")
    p.add_argument("--cohort", required=True, help="tuning cohort folder (cases/<id>/pre/{arterial,portal,labels})")
    p.add_argument("--weights", help="model file (.safetensors; its .json card is updated); default: installed model")
    p.add_argument("--max-fp", type=float, default=0.2,
                   help="false-positive lesions per patient allowed when choosing the lesion-confidence threshold "
                        "(default 0.2)")
    p.add_argument("--max-false-pvtt", type=float, default=0.1,
                   help="fraction of the patients without PVTT that may get a predicted PVTT when choosing the PVTT "
                        "logit bias (default 0.1; a false thrombus changes the BCLC stage)")
    p.add_argument("--max-cases", type=_positive_int, help="use at most this many cases")
    p.add_argument("--envelope-model", help="tune envelope: a model trained with --synthetic (randomised appearance) "
                                            "in the folder of the main model; its liver bounds the main model's "
                                            "labels on real scans (the margin is chosen on --cohort)")
    p.add_argument("--single-phase-model", help="tune single-phase: a model trained with --phase-dropout 1 in the "
                                                "folder of the main model, with its own tuned rules; pinned in the "
                                                "main card when it reads the cohort's one-phase studies better")
    p.add_argument("--pvtt-model", help="a PVTT-stage model (`hcctwin train segmentation --pvtt-stage`) in the same "
                                        "folder: tune its threshold instead of the PVTT logit bias (the stage is "
                                        "written into the card only when it finds thrombus within --max-false-pvtt)")
    p.add_argument("--mirror-axes", type=_mirror_axes, metavar="AXES",
                   help="test-time mirroring to tune for: model-grid axes 0,1,2 (K, J, I), e.g. '1,2' (4 passes) or "
                        "'none' (one pass); default: the card's current setting")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--report", help="also write the full tuning tables to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="print the result, leave the model card as it is")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("predict", help="virtual follow-ups per regimen and time point, survival, recommendation")
    p.add_argument("--pre", help="pre-treatment folder (arterial/portal[/labels] files or DICOM series folders)")
    p.add_argument("--arterial", help="arterial phase file or DICOM folder")
    p.add_argument("--portal", help="portal venous phase file or DICOM folder")
    p.add_argument("--delayed", help="delayed / equilibrium phase file or DICOM folder (read as portal venous when "
                                     "no portal phase is given)")
    p.add_argument("--labels", help="a (corrected) label map to use instead of running the segmentation")
    p.add_argument("--resegment", action="store_true", help="run the segmentation even when labels are given")
    p.add_argument("--clinical", help="clinical.csv (cohort layout columns)")
    p.add_argument("--patient", help="patient_id in clinical.csv")
    p.add_argument("--regimens", type=_regimen_list, default=list(DEFAULT_REGIMENS),
                   help="comma-separated regimen ids (default tace_pd1_len,haic_pd1_len,pd1_tki)")
    p.add_argument("--weeks", type=_int_list, default=list(DEFAULT_WEEKS), help="time points (default 8,16,24)")
    p.add_argument("--samples", type=_samples, default=4, help="generator samples per request (default 4)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--followup", help="a real follow-up folder (arterial / portal images named as in --pre; "
                                      "registered to the pre-treatment scan after its segmentation)")
    p.add_argument("--followup-arterial", help="the real follow-up's arterial phase: file or DICOM folder")
    p.add_argument("--followup-portal", help="the real follow-up's portal venous phase: file or DICOM folder")
    p.add_argument("--no-deformable", action="store_true", help="real follow-up: rigid + affine registration only")
    p.add_argument("--no-phase-alignment", action="store_true", help=PHASE_ALIGNMENT_HELP)
    p.add_argument("--followup-weeks", type=int, help="weeks of the real follow-up since the start of treatment")
    p.add_argument("--allow-missing-models", action="store_true",
                   help="run the other steps when a model is not installed or is refused (noted in result.json); "
                        "default: stop with the reason")
    p.add_argument("--followup-regimen", type=_regimen, help="regimen the patient received (for the real follow-up)")
    p.add_argument("--segmentation-weights", help="segmentation model file (default: installed)")
    p.add_argument("--generator-weights", help="generator model file (default: installed)")
    p.add_argument("--survival-model", help="survival engine file (default: installed)")
    p.add_argument("--report", action="store_true", help="also write report.html / report.pdf / survival.png")
    p.add_argument("--deidentify", action="store_true", help="result.json and report without patient name or ID")
    p.add_argument("--cohort", help="a cohort folder (clinical.csv + cases/<id>/pre): every patient, OUT/<id>/ each "
                                    "and OUT/predictions.csv (one row per patient); with --scheduler for Dask")
    p.add_argument("--max-cases", type=_positive_int, help="--cohort: the first N patients only")
    p.add_argument("--out", required=True, help="output folder")
    _add_scheduler_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("register", help="register a real follow-up to the pre-treatment scan (rigid, affine, "
                                        "deformable in the liver)")
    p.add_argument("--fixed", required=True, help="pre-treatment folder (arterial/portal[/labels])")
    p.add_argument("--moving", required=True, help="follow-up folder")
    p.add_argument("--out", required=True, help="output folder (registered images, transform.h5, registration.json)")
    p.add_argument("--no-deformable", action="store_true", help="rigid + affine only")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("evaluate", help="measure the installed models on a cohort (writes OUT/metrics.json)")
    p.add_argument("--cohort", required=True, help="cohort folder (clinical.csv + cases/)")
    p.add_argument("--out", required=True, help="output folder for metrics.json")
    p.add_argument("--max-cases", type=_positive_int, default=20, help="patients for the image models (default 20)")
    p.add_argument("--no-images", action="store_true", help="survival from the clinical table only")
    p.add_argument("--samples", type=_samples, default=4)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_scheduler_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("study", help="validation study per split: virtual-vs-real image fidelity, survival "
                                     "discrimination and calibration, next to the copy baseline and the established "
                                     "scores (OUT/study.html)")
    p.add_argument("--cohort", required=True, help="cohort folder (clinical.csv + cases/); see hcctwin import")
    p.add_argument("--out", required=True, help="output folder (study.html, study.json, splits.csv, models/)")
    p.add_argument("--splits", default="development,validation,test",
                   help="comma-separated split names; the first is the development split the survival engine is "
                        "trained on (default development,validation,test). Taken from the clinical table's 'split' "
                        "column when it has one, else assigned by a hash of the patient ID")
    p.add_argument("--train", default="auto", choices=["auto", "always", "never"],
                   help="train the survival engine on the development split (auto: when it is large enough)")
    p.add_argument("--max-cases", type=_positive_int, default=20,
                   help="patients per split for the image models (default 20)")
    p.add_argument("--no-images", action="store_true", help="survival from the clinical table only")
    p.add_argument("--bootstrap", type=_bootstrap, default=50, help="bootstrap resamples for the survival bands")
    p.add_argument("--with-ids", action="store_true",
                   help="keep patient IDs in study.json (default: study codes; the key is in splits.csv)")
    p.add_argument("--samples", type=_samples, default=4, help="generator samples per virtual follow-up")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_scheduler_arguments(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("report", help="tumor-board report (HTML + PDF) from a result.json")
    p.add_argument("--result", required=True, help="result.json or the folder holding it")
    p.add_argument("--layout", help="rendered layout PNG to include (default: layout.png next to result.json)")
    p.add_argument("--out", help="output folder (default: next to result.json)")
    p.add_argument("--deidentify", action="store_true", help="leave out patient name and ID")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("view", help="read-only browser viewer of a result (linked pre | real | virtual views, "
                                    "regimen and time point, uncertainty, survival) on http://127.0.0.1")
    p.add_argument("result", help="a result folder of `hcctwin predict` or `hcctwin demo`")
    p.add_argument("--port", type=lambda t: _bounded_int(t, 0, 65535, "--port"), default=0,
                   help="port on 127.0.0.1 (default: a free one, printed)")
    p.add_argument("--phase", default="portal", choices=["portal", "arterial", "delayed"],
                   help="phase shown (default portal)")
    p.add_argument("--show-patient-id", action="store_true", help="show the patient ID in the page title")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("survival", help="survival models on a site's clinical table")
    ssub = p.add_subparsers(dest="survival_command", metavar="ACTION", required=True)
    q = ssub.add_parser("cv", help="cross-validated C-index of the models and the established scores")
    q.add_argument("--clinical", required=True, help="clinical.csv (cohort layout columns)")
    q.add_argument("--endpoint", choices=["os", "pfs"], default="os")
    q.add_argument("--folds", type=lambda t: _bounded_int(t, 2, 20, "--folds"), default=5)
    q.add_argument("--seed", type=_seed, default=0)
    q.add_argument("--score-columns", type=_csv_list,
                   help="the table's own established scores as numbers, higher = worse (e.g. clip_score,okuda); "
                        "compared and used as anchors like the computed HAP, mHAP-II, ...")
    q.add_argument("--no-engine", action="store_true",
                   help="leave the per-regimen Cox engine out of the model selection (faster)")
    q.add_argument("--out", required=True, help="output folder for metrics.json")
    q.set_defaults(func=cmd_survival)

    p = sub.add_parser("scores", help="clinical scores (ALBI, Child-Pugh, BCLC, HAP, ...) and regimen eligibility")
    p.add_argument("--clinical", help="clinical.csv of a cohort")
    p.add_argument("--patient", help="patient_id in clinical.csv")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="clinical values, e.g. bilirubin_umol_l=20")
    p.add_argument("--regimens", type=_regimen_list, help="comma-separated regimen ids (default: all)")
    p.set_defaults(func=cmd_scores)
    return parser


def _warn_unusable_cuda(args) -> None:
    """One warning line, in every command, when a GPU is asked for (--device or HCCTWIN_DEVICE) and none is usable
    (the models then run on the CPU)."""
    import os

    asked = str(getattr(args, "device", None) or "auto").strip().lower()
    if asked == "auto":
        asked = (os.environ.get("HCCTWIN_DEVICE") or "").strip().lower()
    if not asked.startswith("cuda"):
        return
    from .device import cuda_usable

    if not cuda_usable():
        print(f"hcctwin {args.command}: warning: CUDA was requested ({asked}) but no usable CUDA GPU is visible; "
              f"the models run on the CPU (slower).", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        from .device import check_environment

        check_environment()
        _warn_unusable_cuda(args)
        out = getattr(args, "out", None)
        if out:  # an unusable --out fails now, not after the computation
            from .io import check_writable

            check_writable(out, folder=args.command != "segment")
        return int(args.func(args) or 0)
    except HCCTwinError as exc:
        _error_line(f"hcctwin {args.command}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _error_line(f"hcctwin {args.command}: interrupted; outputs of this run were not written (or are incomplete "
                    f"where a command writes as it goes: training checkpoints, a cohort being simulated).")
        return 130
    except OSError as exc:  # a disk full, a file removed or locked while running: one line, not a traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _error_line(f"hcctwin {args.command}: error: {where}{exc.strerror or exc}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
