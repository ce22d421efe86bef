"""bfloat16 vs float32 inference on the CPU: time and agreement (issues 4, 5 and 8).

    python benchmarks/cpu_precision.py [--threads 2] [--repeats 2] [--out benchmarks/results]
        [--seg-eval fp32=JSON --seg-eval bf16=JSON] [--gen-eval fp32=JSON --gen-eval bf16=JSON]

CPUs with native bfloat16 (AMX-BF16 or AVX512-BF16, e.g. Intel Sapphire Rapids and later) run oneDNN's 3D
convolutions much faster in bfloat16; ``HCCTwinLib.device.cpu_precision`` then runs model *inference* under bfloat16
autocast (``HCCTWIN_CPU_PRECISION=fp32`` turns it off; CPUs without native bfloat16 stay in float32). This script
times, in one process and for each precision, the warm segmentation of a simulated 512 x 512 x 120 patient (as in
``segmentation_evaluation.py``) and the generator's demo request (3 regimens x 3 time points x 4 samples, 4 steps, on
the 512 x 512 x 120 phantom of ``generator_speed.py``), best of ``--repeats`` after an untimed run, and measures how
far the two precisions' outputs are apart on those inputs (label agreement; generated mean HU in the liver box).
Quality on the hold-out cohorts comes from the evaluation scripts run once per precision
(``HCCTWIN_CPU_PRECISION=fp32|bf16 python benchmarks/segmentation_evaluation.py ...`` and
``generator_evaluation.py ...``); pass their JSON files to put the metrics side by side (default: the files
``OUT/cpu_precision/{segmentation,generator}_{fp32,bf16}.json`` that exist; the recorded ones are the 30-patient
segmentation hold-out and the first 8 patients of the generator hold-out, ``--max-cases 8 --steps 4``).
Output: ``OUT/cpu_precision.md`` and ``.json`` with machine, CPU flags and date.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(ROOT / "benchmarks"))

PRECISIONS = ("fp32", "bf16")
REGIMENS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki")
WEEKS = (8, 16, 24)
SAMPLES = 4
STEPS = 4


def _best(fn, repeats: int) -> tuple[float, list[float], object]:
    """Best warm time of ``fn`` (``generator_speed._time``: one untimed run first), its times and its last output."""
    from generator_speed import _time

    last = {}
    times = _time(lambda: last.__setitem__("out", fn()), repeats)
    return min(times), [round(t, 3) for t in times], last["out"]


def time_segmentation(repeats: int, seed: int = 900, log=print) -> dict:
    from HCCTwinLib.segmentation import get_segmenter
    from HCCTwinLib.simulate import simulate_patient

    p = simulate_patient(seed, 0, shape=(120, 512, 512))
    seg = get_segmenter(None, device="cpu")
    res, labels = {"case": f"simulated patient (seed {seed}, index 0), 512x512x120", "model": seg.card.get("name"),
                   "sha256": seg.card.get("sha256")}, {}
    for prec in PRECISIONS:
        seg.cpu_precision = prec
        best, all_s, labels[prec] = _best(lambda: seg.segment(p.case), repeats)
        res[prec] = {"warm_s": round(best, 3), "all_s": all_s}
        log(f"segmentation {prec}: {best:.2f} s")
    a, b = labels["fp32"], labels["bf16"]
    res["voxels_differing"] = int((a != b).sum())
    res["voxels_differing_fraction_of_labelled"] = float((a != b).sum() / max(1, int(((a > 0) | (b > 0)).sum())))
    res["voxels_per_label"] = {prec: [int((labels[prec] == k).sum()) for k in range(5)] for prec in PRECISIONS}
    res["speedup"] = round(res["fp32"]["warm_s"] / res["bf16"]["warm_s"], 2)
    return res


def time_generator(repeats: int, log=print) -> dict:
    import numpy as np
    from generator_evaluation import demo_phantom

    from HCCTwinLib.twin import generator as G

    gen = G.get_generator(None, device="cpu")
    phases, labels, geometry = demo_phantom()
    res, outs = {"case": "synthetic 512x512x120 phantom (generator_speed.py)", "model": gen.card.get("name"),
                 "sha256": gen.card.get("sha256"), "steps": STEPS, "samples": SAMPLES,
                 "regimens": list(REGIMENS), "weeks": list(WEEKS)}, {}
    for prec in PRECISIONS:
        gen.cpu_precision = prec

        def request():
            return gen.generate(phases, labels, geometry, regimens=REGIMENS, weeks=WEEKS, samples=SAMPLES, seed=0,
                                steps=STEPS)

        best, all_s, outs[prec] = _best(request, repeats)
        res[prec] = {"warm_s": round(best, 3), "all_s": all_s, "network_s": gen.last_info.get("network_s")}
        log(f"generator {prec}: {best:.2f} s")
    diffs, sd_diffs, label_agree = [], [], []
    for r in REGIMENS:
        for w in WEEKS:
            a, b = outs["fp32"][r][w], outs["bf16"][r][w]
            diffs.append(float(np.abs(a.residual - b.residual).max()))
            sd_diffs.append(float(np.abs(a.std_crop - b.std_crop).max()))
            label_agree.append(float((a.crop_labels == b.crop_labels).mean()))
    res["mean_hu_max_abs_diff"] = round(max(diffs), 2)
    res["sd_hu_max_abs_diff"] = round(max(sd_diffs), 2)
    res["crop_label_agreement_min"] = round(min(label_agree), 5)
    res["speedup"] = round(res["fp32"]["warm_s"] / res["bf16"]["warm_s"], 2)
    return res


def _pairs(values) -> dict[str, Path]:
    out = {}
    for v in values or []:
        prec, _, path = v.partition("=")
        if prec not in PRECISIONS or not path:
            raise SystemExit(f"expected fp32=FILE or bf16=FILE, got {v!r}")
        out[prec] = Path(path)
    return out


SEG_METRICS = (("Dice liver (labels 1-3)", ("liver_total", "mean")), ("Dice viable tumour", ("viable_tumor", "mean")),
               ("Dice necrosis", ("necrosis", "mean")), ("Dice PVTT", ("pvtt", "mean")),
               ("lesion sensitivity >= 10 mm", ("sensitivity_10mm",)), ("false-positive lesions / patient",
                                                                         ("fp_per_patient",)))


def _dig(d, keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _gen_summary(d: dict) -> dict:
    return (d.get("summary") or {}).get("generator") or {}


def _rel(f: Path) -> str:
    try:
        return str(f.resolve().relative_to(ROOT))
    except ValueError:
        return str(f)


def quality_tables(seg: dict[str, Path], gen: dict[str, Path]) -> dict:
    out = {}
    if seg:
        data = {p: json.loads(f.read_text()) for p, f in seg.items()}
        out["segmentation"] = {"files": {p: _rel(f) for p, f in seg.items()},
                               "n": {p: d.get("n") for p, d in data.items()},
                               "metrics": {name: {p: _dig(d["quality"]["summary"], keys) for p, d in data.items()}
                                           for name, keys in SEG_METRICS}}
    if gen:
        data = {p: json.loads(f.read_text()) for p, f in gen.items()}
        names = list(dict.fromkeys(k for d in data.values() for k, v in _gen_summary(d).items()
                                   if isinstance(v, (int, float))))
        out["generator"] = {"files": {p: _rel(f) for p, f in gen.items()},
                            "n_patients": {p: d.get("n_patients") for p, d in data.items()},
                            "metrics": {k: {p: _gen_summary(d).get(k) for p, d in data.items()}
                                        for k in names}}
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def write(res: dict, out: Path) -> tuple[Path, Path]:
    from _common import write_results

    m, s, g = res["machine"], res["segmentation"], res["generator"]
    lines = ["# CPU inference in bfloat16 vs float32", "", "Demo weights, synthetic data, not for clinical use.", "",
             f"Date {res['date']}. Machine: {m.get('cpu')}, {m.get('cpu_count')} cores, torch {m.get('torch')} with "
             f"{m.get('torch_threads')} threads, no GPU used. Native bfloat16 on this CPU: "
             f"{res['cpu_native_bf16']} (flags {', '.join(res['cpu_bf16_flags']) or 'none'}); the default "
             f"(`HCCTWIN_CPU_PRECISION=auto`) here is **{res['default_precision']}**. Load average at start "
             f"{m.get('load_average_1_5_15')}, at end {m.get('load_average_end')}.", "",
             "## Time (warm, best of the repeats after one untimed run, same process)", "",
             "| what | float32 s | bfloat16 s | speed-up |", "|---|---|---|---|",
             f"| segmentation, {s['case']} | {s['fp32']['warm_s']:.2f} | {s['bf16']['warm_s']:.2f} | "
             f"{s['speedup']:.2f}x |",
             f"| generator demo request, {len(g['regimens'])} regimens x {len(g['weeks'])} weeks x {g['samples']} "
             f"samples, {g['steps']} steps | {g['fp32']['warm_s']:.2f} | {g['bf16']['warm_s']:.2f} | "
             f"{g['speedup']:.2f}x |", "",
             "## Agreement of the two precisions on these inputs", "",
             f"- Segmentation: {s['voxels_differing']} voxels differ "
             f"({100 * s['voxels_differing_fraction_of_labelled']:.2f} % "
             f"of the voxels labelled by either); voxels per label 0-4: float32 {s['voxels_per_label']['fp32']}, "
             f"bfloat16 {s['voxels_per_label']['bf16']}.",
             f"- Generator: max |difference| of the mean HU change {g['mean_hu_max_abs_diff']} HU, of the per-voxel SD "
             f"{g['sd_hu_max_abs_diff']} HU; crop labels agree on >= {100 * g['crop_label_agreement_min']:.3f} % of "
             "the crop voxels (worst regimen/week).", ""]
    q = res.get("quality") or {}
    if "segmentation" in q:
        qs = q["segmentation"]
        lines += ["## Segmentation quality on the hold-out, per precision", "",
                  f"Files: {', '.join(f'{p} `{f}`' for p, f in qs['files'].items())}; patients {qs['n']}.", "",
                  "| metric | float32 | bfloat16 |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v.get('fp32'))} | {_fmt(v.get('bf16'))} |" for k, v in qs["metrics"].items()]
        lines.append("")
    if "generator" in q:
        qg = q["generator"]
        lines += ["## Generator quality on the hold-out, per precision", "",
                  f"Files: {', '.join(f'{p} `{f}`' for p, f in qg['files'].items())}; patients {qg['n_patients']}.",
                  "", "| metric | float32 | bfloat16 |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v.get('fp32'))} | {_fmt(v.get('bf16'))} |" for k, v in qg["metrics"].items()]
        lines.append("")
    write_results(out, "cpu_precision", res, lines, echo=False)
    return out / "cpu_precision.md", out / "cpu_precision.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seg-eval", action="append", help="PRECISION=segmentation_evaluation.json (repeatable)")
    ap.add_argument("--gen-eval", action="append", help="PRECISION=generator_evaluation.json (repeatable)")
    ap.add_argument("--skip-timing", action="store_true", help="only rebuild the quality tables (keeps the "
                                                                 "recorded timing from OUT/cpu_precision.json)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    import torch
    from _common import machine_info, utc_now

    from HCCTwinLib import device as devices

    torch.set_num_threads(args.threads)
    if args.skip_timing:
        res = json.loads((args.out / "cpu_precision.json").read_text())
    else:
        res = {"date": utc_now(), "machine": machine_info(),
               "cpu_native_bf16": devices.cpu_native_bf16(), "cpu_bf16_flags": list(devices.cpu_bf16_flags()),
               "default_precision": devices.cpu_precision("auto")}
        res["segmentation"] = time_segmentation(args.repeats)
        res["generator"] = time_generator(args.repeats)
        res["machine"]["load_average_end"] = list(os.getloadavg())
    seg, gen = _pairs(args.seg_eval), _pairs(args.gen_eval)
    for kind, given in (("segmentation", seg), ("generator", gen)):
        if not given:
            given.update({p: f for p in PRECISIONS if (f := args.out / "cpu_precision" / f"{kind}_{p}.json").is_file()})
    res["quality"] = quality_tables(seg, gen)
    md, js = write(res, args.out)
    print(f"written {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
