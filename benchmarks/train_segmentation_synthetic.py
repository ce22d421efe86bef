"""Run 9 of the segmentation (issue 22): the shipped model fine-tuned on SynthSeg-style images synthesised from
simulated tissue maps (HCCTwinLib.segmentation.synth) mixed with the simulator cohort's own images.

    .venv/bin/python benchmarks/train_segmentation_synthetic.py --cohort /work/data/train101 --out RUN_DIR

(the cohort: `hcctwin simulate --n 120 --seed 101 --no-truth-images --out /work/data/train101`; ``--templates``:
the CHAOS T2 label maps with their images, e.g. from github shenqq377/Q-Net data/CHAOST2/chaos_MR_T2_normalized,
CC BY-SA 4.0, see benchmarks/data/chaos_templates.md). The log is copied to
benchmarks/results/segmentation_training/run9_synthetic_train_log.jsonl.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-budget", type=float, default=3300.0)
    ap.add_argument("--synthetic", type=int, default=150)
    ap.add_argument("--synthetic-prob", type=float, default=0.7)
    ap.add_argument("--templates", help="folder of real label maps + images (CHAOS T2: label_<id>/image_<id>.nii.gz)")
    args = ap.parse_args()
    import torch

    from HCCTwinLib.segmentation import train_segmentation
    from HCCTwinLib.segmentation.inference import default_weights_path
    from HCCTwinLib.weights import load_card

    torch.set_num_threads(2)
    card = load_card(default_weights_path())
    summary = train_segmentation(
        args.cohort, args.out, epochs=30, batch_size=2, patch_size=tuple(card["patch_size_kji"]), lr=5e-4, seed=0,
        spacing_mm=tuple(card["spacing_mm"]),
        device="cpu", architecture=card["architecture"], architecture_kwargs=card["architecture_kwargs"],
        include_followups=False, iterations_per_epoch=150, val_max_cases=4, coarse_fraction=0.15,
        time_budget_s=args.time_budget, warmup_epochs=0.1, init_weights=default_weights_path(),
        cpu_precision="bf16", lesion_sampling=True, phase_dropout=0.3, synthetic=args.synthetic,
        synthetic_seed=7001, synthetic_prob=args.synthetic_prob, synthetic_templates=args.templates,
        template_repeats=4, name="hcctwin_seg_envelope", version="0.1.0",
        data_description="HCCTwin simulator cohort seed 101 (pre-treatment studies) + synthetic images from "
                         "simulated tissue maps (seed 7001)" + (" and from the CHAOS T2 label maps (20 abdomens, "
                                                                "CC BY-SA 4.0; shapes only)" if args.templates else ""))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
