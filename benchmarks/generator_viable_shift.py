"""How the anchored twin changes the HU of surviving viable tumour, compared on a tuning cohort (issue 23).

    python benchmarks/generator_viable_shift.py --tune TUNE [--holdout HOLDOUT]
        [--weights HCCTwin/HCCTwinLib/weights/hcctwin_twin.safetensors] [--earlier WEIGHTS] [--out benchmarks/results]

mRECIST counts a voxel of viable tumour only where its arterial HU is at least 20 HU above the surrounding liver. A
twin that shifts every surviving lesion by the population's median change (e.g. -13 HU after HAIC at week 8) pushes a
hypovascular lesion (52 HU against a liver of 80) below any enhancement it had and the reading calls a complete
response while hundreds of mL of viable tumour remain (hold-out seed 2026, patient 5). Devascularisation takes away
*enhancement*, so a lesion with little has little to lose. And after TACE the scanner's blur spreads the dense
lipiodol into the residual tumour next to it (``tace_viable_blur.md``: +72 HU within 2 mm, -3 HU beyond 8 mm): a twin
that paints that blur's average on every surviving voxel lifts a weakly enhancing real lesion over the threshold and
reads progression while the tumour shrinks (HCC_009, README). The variants:

- **median change** per (regimen, week, phase) for every lesion (twin 1.1.0; the line dropped from ``--weights``);
- **line in the lesion's own pre-treatment viable HU** over all its surviving viable tumour, clipped to the 5-95 %
  range of the observed changes, kept per (regimen, week, phase) only where its leave-one-out error on the training
  records is lower (twin 1.2.0-1.3.0; ``--earlier``, a model file fitted by those versions);
- **the tissue's line** (measured beyond 4 mm of the new necrosis) without the bands next to it (``--weights`` with
  its band offsets dropped);
- **the tissue's line + an offset per band** (within 2 mm and 2-4 mm of the new necrosis; ``--weights``, shipped).

Each renders the **median** response of every patient of ``TUNE`` (``hcctwin simulate --seed 950 --n 60``), where the
choice is made, scored as ``generator_evaluation.py`` scores it, plus the median |difference| of the mean arterial HU of
the viable tumour (virtual vs true follow-up, where both have viable tumour) and the share of follow-ups read PD while
their viable volume fell below the pre-treatment one. ``HOLDOUT`` (seed 900) is shown beside and is never used to
choose.
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
LINE = "line in the lesion's own viable HU over all its viable tumour (twin 1.2.0-1.3.0)"
TISSUE = "the tissue's line (beyond 4 mm of the new necrosis), no bands"
BANDS = "the tissue's line + offsets within 2 mm and 2-4 mm of the new necrosis (shipped)"


def _without(gen, *keys):
    from HCCTwinLib.twin.anchored import AnchoredGenerator

    model = copy.copy(gen.model)
    model.arrays = {k: v for k, v in gen.model.arrays.items() if k not in keys}
    return AnchoredGenerator(model, gen.card)


def variants(gen, earlier=None) -> list[tuple[str, object, None]]:
    """The model as fitted, without its band offsets, without its per-lesion line too (every lesion shifted by the
    median), and an earlier model file (``earlier``) beside."""
    for key in ("viable_shift_fit", "viable_adjacent_hu"):
        if key not in gen.model.arrays:
            raise SystemExit(f"these weights have no {key} (fitted by an earlier version): refit them")
    out = [(MEDIAN, _without(gen, "viable_shift_fit", "viable_adjacent_hu"), None)]
    if earlier is not None:
        out.append((LINE, earlier, None))
    return out + [(TISSUE, _without(gen, "viable_adjacent_hu"), None), (BANDS, gen, None)]


def main(argv=None) -> int:
    ap = tuning_parser(__doc__)
    ap.add_argument("--earlier", type=Path, help="a model file of twin 1.2.0-1.3.0 (viable-HU line over all viable "
                                                 "tumour) rendered beside")
    args = ap.parse_args(argv)
    from HCCTwinLib.twin.generator import get_generator

    gen = get_generator(args.weights)
    earlier = get_generator(args.earlier) if args.earlier else None
    slopes = {reg: {w: c.get("viable_shift_slope") for w, c in cells.items()}
              for reg, cells in ((gen.card.get("kinetics") or {}).get("per_cell") or {}).items()}
    bands = {reg: {w: c.get("viable_adjacent_hu") for w, c in cells.items()}
             for reg, cells in ((gen.card.get("kinetics") or {}).get("per_cell") or {}).items()}
    tune, hold, result = compare(args, gen, variants(gen, earlier), slopes=slopes, band_offsets=bands,
                                 earlier=str(args.earlier) if args.earlier else None)
    lines = header_lines("How the anchored twin changes the HU of surviving viable tumour", result, args, tune) + [
        "| viable HU change | tune: mRECIST agreement | tune: kappa | tune: viable arterial HU error | "
        "tune: PD while viable shrank | tune: tumour Dice | hold-out: mRECIST | hold-out: kappa | "
        "hold-out: viable HU error | hold-out: PD while viable shrank |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in tune.items():
        h = hold.get(name) or {}
        lines.append(f"| {name} | {fmt(t['mrecist_agreement'])} | {fmt(t['mrecist_weighted_kappa'])} | "
                     f"{fmt(t['viable_arterial_hu_median_abs_error'])} | {fmt(t['pd_while_viable_shrank'])} | "
                     f"{fmt(t['tumour_dice_mean'])} | {fmt(h.get('mrecist_agreement'))} | "
                     f"{fmt(h.get('mrecist_weighted_kappa'))} | {fmt(h.get('viable_arterial_hu_median_abs_error'))} | "
                     f"{fmt(h.get('pd_while_viable_shrank'))} |")
    first = next(iter(tune.values()))
    lines += ["", f"True follow-ups read PD while their viable volume fell: {fmt(first['true_pd_while_viable_shrank'])}"
              f" (tuning cohort), {fmt((next(iter(hold.values()), {}) or {}).get('true_pd_while_viable_shrank'))} "
              "(hold-out)."]
    lines += confusion_lines(tune)
    lines += ["", "Slopes kept (HU change per HU of pre-treatment viable tumour; cells without one use the median):",
              ""]
    for reg, cells in slopes.items():
        kept = {w: s for w, s in cells.items() if s}
        lines.append(f"- {reg}: " + ("; ".join(f"{w} " + ", ".join(f"{p} {v:+.2f}" for p, v in s.items())
                                               for w, s in kept.items()) or "none"))
    lines += ["", "Offsets of the surviving viable tumour within 2 mm / 2-4 mm of the new necrosis (HU, against the "
              "viable tumour beyond; cells without one: none):", ""]
    for reg, cells in bands.items():
        kept = {w: b for w, b in cells.items() if b}
        lines.append(f"- {reg}: " + ("; ".join(f"{w} " + ", ".join(f"{p} {v[0]:+.0f} / {v[1]:+.0f}"
                                                                      for p, v in b.items())
                                               for w, b in kept.items()) or "none"))
    lines += ["", "Volumes do not depend on the variant (same kinetics, same voxel counts): viable volume error and "
              "ordering are equal across rows; the variants differ in the HU of the surviving viable tumour, which "
              "decides what mRECIST counts as enhancing."]
    write_results(args.out, "generator_viable_shift", result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
