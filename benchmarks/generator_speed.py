"""Where the generator's time goes on the CPU: memory layout and number of sampling steps (issues 5 and 8).

    python benchmarks/generator_speed.py [--weights FILE] [--threads 2] [--steps 4,2] [--repeats 2]
        [--out benchmarks/results]

The demo-size request of issue 5 (3 regimens x 3 time points x 4 samples on a 512 x 512 x 120 case, the same
synthetic phantom as ``generator_evaluation.py``) is timed warm (best of ``--repeats`` after one untimed run), for
each number of sampling steps, with the network in the default (NCDHW) layout and in channels-last (NDHWC, what
inference uses on the CPU). One network pass of a full CPU batch is timed the same way. The same flow in both layouts
is checked (max |difference| of the generated crops, network units). Output: ``OUT/generator_speed.md`` and
``.json`` with the machine, load average and date. Quality per number of steps is measured by
``generator_evaluation.py --steps N`` (see ``generator_steps.md``); this script measures time only, in the CPU
precision the installed generator uses (``HCCTWIN_CPU_PRECISION``; bfloat16 vs float32: ``cpu_precision.py``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(ROOT / "benchmarks"))

REGIMENS = ("tace_pd1_len", "haic_pd1_len", "pd1_tki")
WEEKS = (8, 16, 24)
SAMPLES = 4


def _layout(gen, layout: str):
    """The same loaded generator with its CPU network in ``layout`` ("default" or "channels_last")."""
    import torch

    g = copy.copy(gen)
    g.cpu_memory_format = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    g.model = copy.deepcopy(gen.model).to(memory_format=g.cpu_memory_format)
    return g


def _time(fn, repeats: int) -> list[float]:
    fn()  # untimed: first-call allocations
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(weights: Path | None, steps_list, repeats: int, log=print) -> dict:
    import numpy as np
    import torch
    from _common import machine_info, utc_now
    from generator_evaluation import demo_phantom

    from HCCTwinLib import device as devices
    from HCCTwinLib.twin import generator as G
    from HCCTwinLib.twin import model as tm

    gen = G.get_generator(weights, device="cpu")
    phases, labels, geometry = demo_phantom()
    res: dict = {"date": utc_now(), "machine": machine_info(),
                 "model": gen.card.get("name"), "sha256": gen.card.get("sha256"),
                 "request": {"regimens": list(REGIMENS), "weeks": list(WEEKS), "samples": SAMPLES,
                             "shape_kji": list(geometry.shape), "case": "synthetic 512x512x120 phantom"},
                 "crop_kji": list(gen.crop_shape), "cpu_max_batch": G.CPU_MAX_BATCH,
                 "cpu_precision": gen.cpu_precision, "runs": []}
    # one network pass of a full CPU batch
    torch.manual_seed(0)
    b = G.CPU_MAX_BATCH
    x = torch.randn(b, tm.OUT_CHANNELS, *gen.crop_shape)
    cond = torch.randn(b, tm.COND_CHANNELS, *gen.crop_shape)
    t = torch.full((b,), 500.0)
    regs = torch.zeros(b, dtype=torch.long)
    outs = {}
    for layout in ("default", "channels_last"):
        g = _layout(gen, layout)
        fmt = torch.channels_last_3d if layout == "channels_last" else None

        def one_pass(g=g, fmt=fmt, layout=layout):
            with torch.inference_mode(), devices.autocast("cpu", g.cpu_precision):
                outs[layout] = tm.network(g.model, x, t, cond, regs, fmt).float()

        times = _time(one_pass, repeats)
        res["runs"].append({"what": f"one network pass, batch {b}", "layout": layout, "steps": None,
                            "seconds": min(times), "all_s": [round(v, 3) for v in times]})
        log(f"pass batch {b} {layout}: {min(times):.2f} s")
    res["layout_max_abs_diff"] = float((outs["default"] - outs["channels_last"]).abs().max())
    for steps in steps_list:
        for layout in ("default", "channels_last"):
            g = _layout(gen, layout)

            def request(g=g, steps=steps):
                g.generate(phases, labels, geometry, regimens=REGIMENS, weeks=WEEKS, samples=SAMPLES, seed=0,
                           steps=steps)

            times = _time(request, repeats)
            res["runs"].append({"what": "demo request 3 x 3 x 4", "layout": layout, "steps": steps,
                                "seconds": min(times), "all_s": [round(v, 3) for v in times],
                                "network_s": g.last_info.get("network_s"),
                                "network_passes": int(np.ceil(len(REGIMENS) * len(WEEKS) * SAMPLES
                                                              / G.CPU_MAX_BATCH)) * steps})
            log(f"request steps {steps} {layout}: {min(times):.2f} s")
    res["machine"]["load_average_end"] = list(os.getloadavg())
    return res


def write(res: dict, out: Path) -> tuple[Path, Path]:
    from _common import write_results

    m = res["machine"]
    lines = ["# Generator speed on the CPU: layout and sampling steps", "",
             "Demo weights, synthetic data, not for clinical use.", "",
             f"Date {res['date']}. Machine: {m.get('cpu')}, {m.get('cpu_count')} cores, torch {m.get('torch')} with "
             f"{m.get('torch_threads')} threads, no GPU used, CPU inference in "
             f"{'bfloat16' if res.get('cpu_precision') == 'bf16' else 'float32'}. "
             f"Load average at start {m.get('load_average_1_5_15')}, "
             f"at end {m.get('load_average_end')}.", "",
             f"Model `{res['model']}` (sha256 {str(res['sha256'])[:12]}), crop {res['crop_kji']} voxels, "
             f"{res['cpu_max_batch']} items per CPU pass. Request: {', '.join(res['request']['regimens'])} x weeks "
             f"{res['request']['weeks']} x {res['request']['samples']} samples on the {res['request']['case']}; "
             "best warm time of the repeats (one untimed run first).", "",
             "| what | steps | default layout s | channels-last s | speed-up |", "|---|---|---|---|---|"]
    keyed = {(r["what"], r["steps"], r["layout"]): r for r in res["runs"]}
    for what, steps in dict.fromkeys((r["what"], r["steps"]) for r in res["runs"]):
        a, b = keyed[(what, steps, "default")]["seconds"], keyed[(what, steps, "channels_last")]["seconds"]
        lines.append(f"| {what} | {steps if steps is not None else ''} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    lines += ["", f"Same flow in both layouts: max |difference| of one pass {res['layout_max_abs_diff']:.1e} "
                  "(network units; 1 unit of the image residual = 100 HU x g(weeks)).", "",
              "Targets: demo request <= 60 s on 2 CPU cores (issue 5); the whole warm pipeline <= 30 s "
              "(issue 8, `pipeline_benchmark.md`)."]
    write_results(out, "generator_speed", res, lines, echo=False)
    return out / "generator_speed.md", out / "generator_speed.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None, help="generator model file (default: the installed one)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--steps", default="4,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = run(args.weights, [int(s) for s in args.steps.split(",")], args.repeats)
    md, js = write(res, args.out)
    print(f"written {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
