"""How the anchored twin changes the HU of surviving viable tumour, compared on a tuning cohort (issue 23).

    python benchmarks/generator_viable_shift.py --tune TUNE [--holdout HOLDOUT]
        [--weights HCCTwin/HCCTwinLib/weights/hcctwin_twin.safetensors] [--out benchmarks/results]

mRECIST counts a voxel of viable tumour only where its arterial HU is at least 20 HU above the surrounding liver. A
twin that shifts every surviving lesion by the population's median change (e.g. -13 HU after HAIC at week 8) pushes a
hypovascular lesion (52 HU against a liver of 80) below any enhancement it had and the reading calls a complete
response while hundreds of mL of viable tumour remain (hold-out seed 2026, patient 5). Devascularisation takes away
*enhancement*, so a lesion with little has little to lose. The variants, on the same fitted model (``--weights``,
fitted with the per-lesion line where it beat the median on leave-one-out):

- **median change** per (regimen, week, phase) for every lesion (twin 1.1.0; the line dropped from the model);
- **line in the lesion's own pre-treatment viable HU**, clipped to the 5-95 % range of the observed changes, kept
  per (regimen, week, phase) only where its leave-one-out error on the training records is lower (shipped).

Each renders the **median** response of every patient of ``TUNE`` (``hcctwin simulate --seed 950 --n 60``), where the
choice is made, scored as ``generator_evaluation.py`` scores it, plus the median |difference| of the mean arterial HU of
the viable tumour (virtual vs true follow-up, where both have viable tumour). ``HOLDOUT`` (seed 900) is shown beside and
is never used to choose.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402
from generator_render_choices import compare, confusion_lines, fmt, header_lines, tuning_parser  # noqa: E402

MEDIAN = "median change for every lesion (twin 1.1.0)"
LINE = "line in the lesion's own viable HU (shipped)"


def variants(gen) -> list[tuple[str, object, None]]:
    """The model as fitted and the same model without its per-lesion line (every lesion shifted by the median)."""
    from HCCTwinLib.twin.anchored import AnchoredGenerator

    flat = copy.copy(gen.model)
    flat.arrays = {k: v for k, v in gen.model.arrays.items() if k != "viable_shift_fit"}
    if "viable_shift_fit" not in gen.model.arrays:
        raise SystemExit("these weights have no per-lesion viable-HU line (fitted by twin 1.1.0): refit them")
    return [(MEDIAN, AnchoredGenerator(flat, gen.card), None), (LINE, gen, None)]


def main(argv=None) -> int:
    args = tuning_parser(__doc__).parse_args(argv)
    from HCCTwinLib.twin.generator import get_generator

    gen = get_generator(args.weights)
    slopes = {reg: {w: c.get("viable_shift_slope") for w, c in cells.items()}
              for reg, cells in ((gen.card.get("kinetics") or {}).get("per_cell") or {}).items()}
    tune, hold, result = compare(args, gen, variants(gen), slopes=slopes)
    lines = header_lines("How the anchored twin changes the HU of surviving viable tumour", result, args, tune) + [
        "| viable HU change | tune: mRECIST agreement | tune: kappa | tune: viable arterial HU error | "
        "tune: tumour Dice | hold-out: mRECIST | hold-out: kappa | hold-out: viable HU error |",
        "|---|---|---|---|---|---|---|---|"]
    for name, t in tune.items():
        h = hold.get(name) or {}
        lines.append(f"| {name} | {fmt(t['mrecist_agreement'])} | {fmt(t['mrecist_weighted_kappa'])} | "
                     f"{fmt(t['viable_arterial_hu_median_abs_error'])} | {fmt(t['tumour_dice_mean'])} | "
                     f"{fmt(h.get('mrecist_agreement'))} | {fmt(h.get('mrecist_weighted_kappa'))} | "
                     f"{fmt(h.get('viable_arterial_hu_median_abs_error'))} |")
    lines += confusion_lines(tune)
    lines += ["", "Slopes kept (HU change per HU of pre-treatment viable tumour; cells without one use the median):",
              ""]
    for reg, cells in slopes.items():
        kept = {w: s for w, s in cells.items() if s}
        lines.append(f"- {reg}: " + ("; ".join(f"{w} " + ", ".join(f"{p} {v:+.2f}" for p, v in s.items())
                                               for w, s in kept.items()) or "none"))
    lines += ["", "Volumes do not depend on the variant (same kinetics, same voxel counts): viable volume error and "
              "ordering are equal across rows; the variants differ in the HU of the surviving viable tumour, which "
              "decides what mRECIST counts as enhancing."]
    write_results(args.out, "generator_viable_shift", result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
