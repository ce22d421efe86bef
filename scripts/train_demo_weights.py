"""Reproduce the shipped demo weights: simulate the training cohort, train, and install the model files.

    python scripts/train_demo_weights.py segmentation --cohort /work/data/train101 --out /work/models/seg
    python scripts/train_demo_weights.py generator --cohort /work/data/train101 --out /work/models/gen

The training cohort is ``hcctwin simulate --n 120 --seed 101 --no-truth-images`` (seed 101 is never used for
evaluation; hold-out cohorts use seeds >= 900). The final model (.safetensors + .json model card with sha256) is
copied into ``HCCTwin/HCCTwinLib/weights/`` only with ``--install``, after its evaluation showed it improves on the
shipped one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Hyper-parameters of the shipped models (recorded in their model cards too). The shipped segmentation weights came
#: from three CPU runs (1 thread): first 3 epochs with these settings but no class weights and no time budget
#: (``--epochs 3``, class_weights removed); then a new run from its checkpoint with these settings,
#: ``--init-weights RUN1/checkpoint.safetensors --time-budget 3840 --threads 1`` (best epoch 7); then a third run
#: from that model with ``--init-weights RUN2/hcctwin_seg.safetensors --lr 1e-3 --max-cases 120 --val-max-cases 8
#: --class-weights 1,1,3,3,6 --class-ratios 1,1,2,1.5,3 --epochs 14 --time-budget 5100 --threads 1`` (epoch 12).
SEGMENTATION = {
    "epochs": 10, "batch_size": 2, "lr": 2e-3, "seed": 0, "max_cases": 80, "warmup_epochs": 0.1,
    "spacing_mm": (2.0, 2.0, 3.5), "patch_size": (32, 96, 96),
    "architecture": "DynUNet", "architecture_kwargs": {"filters": [8, 16, 32, 64, 128]},
    "iterations_per_epoch": 150, "val_max_cases": 5, "coarse_fraction": 0.15, "flip_prob": 0.0,
    "class_weights": (1.0, 1.0, 3.0, 3.0, 3.0),
    "data_description": "HCCTwin simulator cohort seed 101 (synthetic multiphase CT, pre-treatment and observed "
                        "follow-ups w08/w16/w24)",
}
#: The envelope stage (issue 22; 0.2.0): a continuation of the envelope model with these settings on top of
#: SEGMENTATION (``--envelope --synthetic-templates CHAOS_DIR --init-weights hcctwin_seg_envelope.safetensors
#: --max-cases 120 --val-max-cases 4 --cpu-bf16 --threads 2 --time-budget T``). 0.1.0 had the same synthetic share
#: but mirrored patches (p 0.2 per axis), so it could not tell the liver from the spleen by side.
ENVELOPE = {
    "name": "hcctwin_seg_envelope", "lr": 3e-4, "class_weights": None, "class_ratios": (1.0, 1.0, 2.0, 1.0, 1.5),
    "lesion_sampling": True, "phase_dropout": 0.3, "synthetic": 150, "synthetic_seed": 7001, "synthetic_prob": 0.7,
    "flip_prob": 0.0, "version": "0.2.0",
}
#: The single-phase stage (issue 22; 0.1.0): the main model's settings (PVTT class weight 20, lesion-wise patch
#: centres, small-lesion weights up to 10) with one phase copied onto both channels on every patch, validated on
#: each phase alone; continued from the main model (``--single-phase --init-weights hcctwin_seg.safetensors
#: --cpu-bf16 --threads 2 --time-budget T``). Used instead of the main model when a study has one phase.
SINGLE_PHASE = {
    "version": "0.1.0", "lr": 5e-4, "phase_dropout": 1.0,
    "class_weights": (1.0, 1.0, 1.0, 1.0, 20.0), "class_ratios": (0.5, 0.5, 1.0, 0.5, 6.0),
    "lesion_sampling": True, "small_lesion_weight": 10.0, "max_cases": 120, "val_max_cases": 4, "epochs": 40,
}
#: The shipped generator: these settings for 6 float32 epochs (2 threads), then continued from that checkpoint in
#: bfloat16 autocast with ``--cpu-bf16 --threads 2``: ``--epochs 60`` interrupted after epoch 9, then ``--epochs 34
#: --time-budget 2700`` (epochs 10-34, 25 min); then (0.3.0) ``--epochs 80 --lr 5e-4`` stopped after epoch 47, and a
#: new run from that checkpoint's EMA weights with ``--regimen-prior --init-weights GEN6/checkpoint_ema.safetensors
#: --epochs 40 --lr 5e-4 --cpu-bf16 --threads 2`` (39 epochs by its time budgets); see the card's ``training_history``.
GENERATOR = {"epochs": 6, "batch_size": 8, "lr": 1e-3, "seed": 0, "max_cases": 120,
             "data_description": SEGMENTATION["data_description"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["segmentation", "generator"])
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, help="override the recorded number of epochs")
    parser.add_argument("--install", action="store_true", help="copy the final model into HCCTwinLib/weights/")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--time-budget", type=float, help="stop after the epoch that passes this many seconds")
    parser.add_argument("--cache-dir", help="segmentation: folder of the resampled volumes (default OUT/cache)")
    parser.add_argument("--init-weights", help="start from this model file (segmentation: same architecture; "
                                               "generator: an input layer without the regimen prior is zero-padded)")
    parser.add_argument("--regimen-prior", action="store_true", help="generator: the regimen-prior channel")
    parser.add_argument("--lr", type=float, help="override the recorded peak learning rate")
    parser.add_argument("--max-cases", type=int, help="override the recorded number of training-cohort patients")
    parser.add_argument("--val-max-cases", type=int, help="segmentation: validate on this many patients per epoch")
    parser.add_argument("--class-weights", help="segmentation: loss weights of labels 0-4, comma-separated")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="train under bfloat16 autocast on a CPU with native bfloat16 (2-5x faster)")
    parser.add_argument("--class-ratios", help="segmentation: patch-centre odds of labels 0-4, comma-separated")
    parser.add_argument("--small-lesions", type=float, metavar="W",
                        help="segmentation: lesion-wise patch centres and small-lesion CE weights up to W")
    parser.add_argument("--pvtt-stage", action="store_true",
                        help="segmentation: a PVTT-stage model (hcctwin_seg_pvtt; PVTT_STAGE_SETTINGS of "
                             "HCCTwinLib.segmentation.train, unless --class-weights / --class-ratios say otherwise)")
    parser.add_argument("--appearance", type=float, metavar="P",
                        help="segmentation: appearance randomisation on this fraction of the patches (real scans)")
    parser.add_argument("--phase-dropout", type=float, metavar="P",
                        help="segmentation: one phase copied onto both channels on this fraction of the patches")
    parser.add_argument("--envelope", action="store_true",
                        help="segmentation: the envelope stage (hcctwin_seg_envelope; ENVELOPE settings: "
                             "SynthSeg-style images from simulated tissue maps, real liver shapes with "
                             "--synthetic-templates)")
    parser.add_argument("--single-phase", action="store_true",
                        help="segmentation: the single-phase stage (hcctwin_seg_single_phase; SINGLE_PHASE settings: "
                             "every patch one phase on both channels)")
    parser.add_argument("--synthetic-templates", metavar="DIR",
                        help="segmentation with --envelope: folder of real label maps + images (label_<id>.nii.gz, "
                             "image_<id>.nii.gz; e.g. CHAOS, benchmarks/data/chaos_templates.md), shapes only")
    parser.add_argument("--flip-prob", type=float, metavar="P",
                        help="segmentation: mirror each patch axis with this probability (default 0: the anatomy is "
                             "not mirror-symmetric)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "HCCTwin"))
    from HCCTwinLib.cli import ProgressBar

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.model == "segmentation":
        from HCCTwinLib.segmentation import train_segmentation

        params = dict(SEGMENTATION)
        if args.pvtt_stage:
            from HCCTwinLib.segmentation.train import PVTT_STAGE_SETTINGS

            params.update(PVTT_STAGE_SETTINGS)
        if args.envelope:
            params.update(ENVELOPE)
            if args.synthetic_templates:
                params["synthetic_templates"] = args.synthetic_templates
        elif args.synthetic_templates:
            parser.error("--synthetic-templates goes with --envelope")
        if args.single_phase:
            if args.envelope or args.pvtt_stage:
                parser.error("--single-phase is a model of its own: not with --envelope or --pvtt-stage")
            from HCCTwinLib.segmentation.train import SINGLE_PHASE_MODEL_NAME

            params.update(SINGLE_PHASE, name=SINGLE_PHASE_MODEL_NAME)
        if args.flip_prob is not None:
            params["flip_prob"] = args.flip_prob
        if args.lr:
            params["lr"] = args.lr
        if args.max_cases:
            params["max_cases"] = args.max_cases
        if args.epochs:
            params["epochs"] = args.epochs
        if args.time_budget:
            params["time_budget_s"] = args.time_budget
        if args.cache_dir:
            params["cache_dir"] = args.cache_dir
        if args.init_weights:
            params["init_weights"] = args.init_weights
        if args.val_max_cases:
            params["val_max_cases"] = args.val_max_cases
        if args.cpu_bf16:
            params["cpu_precision"] = "bf16"
        if args.appearance is not None:
            params["appearance_prob"] = args.appearance
        if args.phase_dropout is not None:
            params["phase_dropout"] = args.phase_dropout
        if args.small_lesions:
            params.update({"lesion_sampling": True, "small_lesion_weight": args.small_lesions})
        for key in ("class_weights", "class_ratios"):
            if getattr(args, key):
                params[key] = tuple(float(v) for v in getattr(args, key).split(","))
        summary = train_segmentation(args.cohort, args.out, device=args.device, progress=ProgressBar(), **params)
    else:
        from HCCTwinLib.twin.train import train_generator

        params = dict(GENERATOR)
        if args.epochs:
            params["epochs"] = args.epochs
        if args.lr:
            params["lr"] = args.lr
        if args.cpu_bf16:
            params["cpu_precision"] = "bf16"
        if args.time_budget:
            params["time_budget_s"] = args.time_budget
        if args.init_weights:
            params["init_weights"] = args.init_weights
        if args.regimen_prior:
            params["regimen_prior"] = True
        summary = train_generator(args.cohort, args.out, device=args.device, progress=ProgressBar(), **params)
    print(json.dumps(summary, indent=2, default=str))
    if args.install:
        model = Path(summary["model_path"])
        dest = ROOT / "HCCTwin" / "HCCTwinLib" / "weights"
        for path in (model, model.with_suffix(".json")):
            shutil.copy2(path, dest / path.name)
            print(f"installed {dest / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
