"""The anchored twin (virtual follow-ups) on one real public CT scan, re-runnable by anyone who has the scans listed
in ``benchmarks/real_scans.json``:

    .venv/bin/python benchmarks/real_scan_twin.py [--data-root /tmp/real] [--scan hcc009_pre]
        [--out benchmarks/results] [--figure docs/images/real_twin.png]

The scan is loaded as ``benchmarks/real_scans.py`` loads it (both phases), segmented with the installed segmentation
model, and the installed generator renders virtual follow-ups for three regimens at weeks 8/16/24. Measured for each
(regimen, week): tumour (labels 2|3) and viable (label 2) volumes before and virtual; the mean and max |HU
difference| virtual - input (arterial and portal) over the voxels farther than 10 mm from tumour/PVTT (labels 2, 3,
4) of the input or the virtual follow-up; the max |HU difference| outside the liver (input labels == 0).

Caveat (domain guard): real scans lie outside the segmentation model's training domain (simulated cases), so the
lesions it finds are not trustworthy; this run shows that the twin runs on a real scan and what it changes (outside
the liver, and within the liver beyond 10 mm of the tumours), not that its lesions or responses are right.

Results: ``<out>/real_scan_twin.{json,md}`` and one picture (``--figure``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
real_scans = importlib.import_module("real_scans")  # also puts HCCTwin/ on sys.path
sys.path.insert(0, str(ROOT / "HCCTwin"))
from _common import machine_info, machine_line, utc_now, write_results  # noqa: E402

REGIMENS = ["tace_pd1_len", "haic_pd1_len", "pd1_tki"]
WEEKS = [8, 16, 24]
MARGIN_MM = 10.0
WINDOW = (50.0 - 200.0, 50.0 + 200.0)  # W400 / L50
def caveat(verdict: str) -> str:
    """The warning printed above the results: what the guard's verdict on this scan means for the numbers."""
    said = {"outside": "flags this scan OUT OF DOMAIN",
            "caution": "calls this scan CAUTION (parts of it are unlike the training data)",
            "inside": "finds this scan inside the training domain"}.get(verdict, f"says {verdict!r}")
    return ("Domain guard: HCCTwin's models were trained on simulated cases and randomised appearance, never on "
            f"a real patient's follow-ups; the guard {said}, no manual mask checks the lesions segmented here, so the "
            "virtual follow-ups' volumes are not a prediction for this patient. The point of this run is that the "
            "anchored twin runs on a real scan, and what it changes: outside the liver nothing, and within the liver "
            "only the tumours and a 10 mm margin (the measurement below checks this).")


def load_scan(data_root: Path, scan_id: str | None):
    """``(manifest entry, Case)``: the scan's phases loaded as ``benchmarks/real_scans.py`` loads them."""
    from HCCTwinLib.io import load_case

    manifest = json.loads(real_scans.MANIFEST.read_text())
    specs = manifest["cases"]
    if scan_id is None:
        pre = [s for s in specs if s["id"].endswith("_pre")]
        available = [s for s in pre if all((data_root / p).exists() for p in s["phases"].values())]
        if not available:
            raise SystemExit(f"no pre-treatment scan of {real_scans.MANIFEST} found under {data_root}")
        spec = available[0]
    else:
        spec = next((s for s in specs if s["id"] == scan_id), None)
        if spec is None:
            raise SystemExit(f"{scan_id}: not in {real_scans.MANIFEST} ({', '.join(s['id'] for s in specs)})")
    name, rel = real_scans._inputs(spec)[0]  # all phases together, as real_scans.py's first run
    missing = [str(data_root / p) for p in rel.values() if not (data_root / p).exists()]
    if missing:
        raise SystemExit(f"{spec['id']}: data missing: {missing}")
    case = load_case(paths={p: data_root / r for p, r in rel.items()}, patient_id=spec["id"])
    return spec, case


def _ml(mask: np.ndarray, geometry) -> float:
    return round(float(np.count_nonzero(mask)) * geometry.voxel_volume_ml, 2)


def measure(pre_phases, pre_labels, fu, geometry) -> dict:
    from scipy import ndimage

    lab = fu.labels
    near = np.isin(pre_labels, (2, 3, 4)) | np.isin(lab, (2, 3, 4))
    far = ndimage.distance_transform_edt(~near, sampling=geometry.spacing[::-1]) > MARGIN_MM
    outside_liver = pre_labels == 0
    far_liver = far & (pre_labels == 1)
    row = {"tumour_ml": _ml(np.isin(lab, (2, 3)), geometry), "viable_ml": _ml(lab == 2, geometry),
           "pvtt_ml": _ml(lab == 4, geometry), "far_voxels": int(far.sum()),
           "far_liver_ml": _ml(far_liver, geometry),
           "region_kji": [[s.start, s.stop] for s in fu.region] if getattr(fu, "region", None) else None}
    for p in ("arterial", "portal"):
        diff = np.abs(np.asarray(fu.phases[p], np.float32) - np.asarray(pre_phases[p], np.float32))
        row[f"{p}_mean_absdiff_far_hu"] = float(diff[far].mean()) if far.any() else None
        row[f"{p}_max_absdiff_far_hu"] = float(diff[far].max()) if far.any() else None
        row[f"{p}_mean_absdiff_far_liver_hu"] = float(diff[far_liver].mean()) if far_liver.any() else None
        row[f"{p}_changed_far_liver_ml"] = _ml(far_liver & (diff > 0), geometry)
        row[f"{p}_max_absdiff_outside_liver_hu"] = float(diff[outside_liver].max()) if outside_liver.any() else None
        row[f"{p}_changed_voxels"] = int(np.count_nonzero(diff))
        row[f"{p}_max_absdiff_hu"] = float(diff.max())
        row[f"{p}_max_std_hu"] = float(np.asarray(fu.std[p]).max())
        del diff
    return row


def figure(spec, case, pre_phases, pre_labels, out, path: Path, regimen_names: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    geometry = case.geometry
    tumour = np.isin(pre_labels, (2, 3))
    comp, n = ndimage.label(tumour)
    if n:
        sizes = np.bincount(comp.ravel())[1:]
        biggest = comp == (int(np.argmax(sizes)) + 1)
        k = int(np.argmax(biggest.sum(axis=(1, 2))))
    else:
        k = pre_labels.shape[0] // 2
    pre = np.asarray(pre_phases["portal"])[k].astype(np.float32)
    tace = out["tace_pd1_len"][24]
    haic = out["haic_pd1_len"][24]
    tace_img, tace_lab = tace.phases["portal"][k], tace.labels[k]
    haic_img, haic_lab = haic.phases["portal"][k], haic.labels[k]
    diff = np.abs(haic_img - pre)
    pre_lab = pre_labels[k]

    body = np.argwhere(pre > -500)  # crop to the body (air outside it carries nothing)
    (j0, i0), (j1, i1) = body.min(0), body.max(0) + 1
    pad = 8
    j0, i0 = max(0, j0 - pad), max(0, i0 - pad)
    j1, i1 = min(pre.shape[0], j1 + pad), min(pre.shape[1], i1 + pad)
    crop = (slice(j0, j1), slice(i0, i1))
    # radiological convention whatever the file's direction: patient right on the left, anterior at the top
    flip_lr = geometry.direction_matrix[0, 0] < 0
    flip_ap = geometry.direction_matrix[1, 1] < 0

    def view(a):
        a = a[crop]
        a = a[:, ::-1] if flip_lr else a
        return a[::-1, :] if flip_ap else a

    aspect = geometry.spacing[1] / geometry.spacing[0]  # row (j) spacing / column (i) spacing
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.9))
    panels = [("pre-treatment", pre, pre_lab),
              (f"virtual week 24 {regimen_names['tace_pd1_len']}", tace_img, tace_lab),
              (f"virtual week 24 {regimen_names['haic_pd1_len']}", haic_img, haic_lab)]
    for ax, (title, img, lab) in zip(axes, panels):
        ax.imshow(view(img), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="nearest")
        if lab is not pre_lab and np.isin(pre_lab, (2, 3)).any():
            ax.contour(view(np.isin(pre_lab, (2, 3)).astype(np.uint8)), levels=[0.5], colors=["#00bcd4"],
                       linewidths=0.7, linestyles="dashed")
        if np.isin(lab, (2, 3)).any():
            ax.contour(view(np.isin(lab, (2, 3)).astype(np.uint8)), levels=[0.5], colors=["#ff1744"],
                       linewidths=0.9)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    vmax = max(50.0, float(np.percentile(diff[diff > 0], 99))) if (diff > 0).any() else 50.0
    im = axes[3].imshow(view(diff), cmap="inferno", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
    axes[3].set_title("|difference| HAIC (portal, HU)", fontsize=10)
    axes[3].axis("off")
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.02)
    fig.suptitle(f"{spec['id']} ({spec['title']}): anchored twin, axial slice {k} - research demo, not for "
                 f"clinical use", fontsize=11)
    fig.text(0.01, 0.01, "Portal venous phase, W400/L50. Red: tumour outline (viable + necrotic labels) of each panel; "
             "dashed cyan: pre-treatment outline; flat grey: liver filled with its mean HU by the twin's warp.\n"
             "Lesions from the segmentation model, which is outside its training domain on real scans (not "
             "trustworthy). Scan: TCIA HCC-TACE-Seg HCC_009 (Moawad, Fuentes et al. 2021), CC BY 4.0.", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    for dpi in (90, 80, 70, 60, 50):
        fig.savefig(path, dpi=dpi)
        if path.stat().st_size < 300_000:
            break
    plt.close(fig)
    return {"path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), "slice_k": k, "dpi": dpi,
            "bytes": path.stat().st_size, "diff_colour_max_hu": round(vmax, 1)}


def run(args) -> dict:
    import torch

    from HCCTwinLib import domain
    from HCCTwinLib.cases import fill_missing_phases
    from HCCTwinLib.pipeline import align_and_segment
    from HCCTwinLib.segmentation import get_segmenter
    from HCCTwinLib.twin import get_generator

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    spec, case = load_scan(Path(args.data_root), args.scan)
    load_s = time.perf_counter() - t
    geometry = case.geometry
    print(f"{spec['id']}: {geometry.shape} voxels, spacing {geometry.spacing} mm, loaded in {load_s:.1f} s",
          flush=True)

    seg = get_segmenter(None, device="cpu")
    t = time.perf_counter()
    # as hcctwin predict does: the phases moved onto the arterial one when their breath-holds differ
    case, labels, alignment = align_and_segment(case, seg)
    for a in alignment:
        print(a.note(), flush=True)
    seg_s = time.perf_counter() - t
    verdict = domain.assess(case.phases, geometry, labels, confidence=seg.last_info.get("confidence"),
                            card=seg.last_card)
    phases, filled = fill_missing_phases(case.phases)
    pre_phases = {p: phases[p] for p in ("arterial", "portal")}
    pre = {"tumour_ml": _ml(np.isin(labels, (2, 3)), geometry), "viable_ml": _ml(labels == 2, geometry),
           "pvtt_ml": _ml(labels == 4, geometry), "liver_and_tumour_ml": _ml(labels > 0, geometry)}
    print(f"segmented in {seg_s:.1f} s: {pre}; guard {verdict.verdict}", flush=True)

    gen = get_generator(None, device="cpu")
    t = time.perf_counter()
    out = gen.generate(pre_phases, labels, geometry, regimens=REGIMENS, weeks=WEEKS, samples=4, seed=0)
    gen_s = time.perf_counter() - t
    print(f"generate: {gen_s:.2f} s ({gen.last_info.get('lesions')} lesions, region {gen.last_info.get('region_kji')})",
          flush=True)
    # the request's memory, in a second (untimed) run: the peak of the arrays numpy allocates (numpy reports its
    # buffers to tracemalloc), the request's results included, the inputs already held not
    import tracemalloc

    del out
    tracemalloc.start()
    out = gen.generate(pre_phases, labels, geometry, regimens=REGIMENS, weeks=WEEKS, samples=4, seed=0)
    gen_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"generate: peak {gen_peak_mb:.0f} MiB of arrays", flush=True)

    from HCCTwinLib.twin.kinetic import find_lesions

    _, lesions = find_lesions(labels, geometry, pre_phases, None)
    lesion_rows = [{"index": les.index, "total_ml": round(les.viable_ml + les.necrosis_ml, 2),
                    "rmax_mm": round(float(les.rmax_mm), 1),
                    "equivalent_sphere_radius_mm": round((3e3 * (les.viable_ml + les.necrosis_ml) / (4 * np.pi))
                                                         ** (1 / 3), 1)} for les in lesions]
    rows = []
    for r in REGIMENS:
        for w in WEEKS:
            row = {"regimen": r, "week": w, **measure(pre_phases, labels, out[r][w], geometry)}
            rows.append(row)
            print(f"{r} w{w}: tumour {row['tumour_ml']} mL, viable {row['viable_ml']} mL, far mean |d| art "
                  f"{row['arterial_mean_absdiff_far_hu']:.4g} / port {row['portal_mean_absdiff_far_hu']:.4g} HU, "
                  f"max outside liver {row['arterial_max_absdiff_outside_liver_hu']:.4g} / "
                  f"{row['portal_max_absdiff_outside_liver_hu']:.4g} HU; far liver changed "
                  f"{row['portal_changed_far_liver_ml']} of {row['far_liver_ml']} mL, mean |d| "
                  f"{row['portal_mean_absdiff_far_liver_hu']:.4g} HU", flush=True)

    names = {"tace_pd1_len": "TACE+PD-1+lenvatinib", "haic_pd1_len": "HAIC+PD-1+lenvatinib", "pd1_tki": "PD-1+TKI"}
    fig = figure(spec, case, pre_phases, labels, out, Path(args.figure), names) if args.figure else None

    return {"scan": spec["id"], "title": spec["title"], "source": spec.get("source"), "licence": spec.get("licence"),
            "attribution": spec.get("attribution"), "scan_note": spec.get("note"),
            "date": utc_now(), "machine": machine_info(torch_threads=args.threads),
            "command": "benchmarks/real_scan_twin.py " + " ".join(sys.argv[1:]),
            "grid": {"shape_kji": list(geometry.shape), "spacing_xyz_mm": list(geometry.spacing)},
            "phases_filled": filled,
            "segmentation": {"model_version": seg.card.get("version"), "seconds": round(seg_s, 2),
                             "guard_verdict": verdict.verdict, "guard_reasons": verdict.reasons},
            "generator": {"name": gen.card.get("name"), "version": gen.card.get("version"),
                          "architecture": gen.card.get("architecture"), "generate_seconds": round(gen_s, 3),
                          "generate_peak_array_mib": round(gen_peak_mb, 1),
                          "regimens": REGIMENS, "weeks": WEEKS, "samples": 4, "seed": 0,
                          "last_info": gen.last_info},
            "margin_mm": MARGIN_MM, "pre": pre, "lesions": lesion_rows, "virtual": rows, "figure": fig,
            "caveat": caveat(verdict.verdict)}


def markdown(res: dict) -> list[str]:
    g, s, pre = res["generator"], res["segmentation"], res["pre"]
    lines = [f"# Anchored twin on a real CT scan ({res['scan']})", "",
             f"{res['date']}, {machine_line(res['machine'])}, {res['machine']['torch_threads']} torch threads. "
             f"Command: `.venv/bin/python {res['command']}`.", "",
             f"Scan: {res['title']} ({res['grid']['shape_kji'][0]} slices, spacing "
             f"{', '.join(f'{v:.2f}' for v in res['grid']['spacing_xyz_mm'])} mm). {res['source']}. Licence "
             f"{res['licence']}. Attribution: {res['attribution']}", "",
             f"> **{res['caveat']}** Guard verdict on this scan: **{s['guard_verdict']}** "
             f"({'; '.join(s['guard_reasons'])}).", "",
             f"Segmentation model {s['model_version']} ({s['seconds']:.0f} s); generator {g['name']} {g['version']} "
             f"({g['architecture']}), {len(g['regimens'])} regimens x weeks {g['weeks']}, {g['samples']} samples: "
             f"**generate {g['generate_seconds']:.2f} s** ({g['last_info'].get('lesions')} lesions, changed region "
             f"k,j,i = {g['last_info'].get('region_kji')}); peak memory of the arrays of one request (a second, "
             f"untimed run under tracemalloc, results included): "
             f"{g['generate_peak_array_mib']:.0f} MiB." if g.get("generate_peak_array_mib") is not None else
             f"**generate {g['generate_seconds']:.2f} s** ({g['last_info'].get('lesions')} lesions, changed region "
             f"k,j,i = {g['last_info'].get('region_kji')}).", "",
             f"Pre-treatment (segmented): tumour {pre['tumour_ml']:.1f} mL, viable {pre['viable_ml']:.1f} mL, PVTT "
             f"{pre['pvtt_ml']:.1f} mL, liver + tumour {pre['liver_and_tumour_ml']:.0f} mL.", "",
             "Segmented lesions (R = largest distance from the centroid; the twin moves each outline along its "
             "normals and the liver within 10 mm of it, whatever the shape):", "",
             "| lesion | total mL | R (mm) | radius of a sphere of that volume (mm) |", "|---|---|---|---|"]
    lines += [f"| {les['index']} | {les['total_ml']:.1f} | {les['rmax_mm']:.0f} | "
              f"{les['equivalent_sphere_radius_mm']:.0f} |" for les in res["lesions"]]
    lines += ["", f"Far = voxels more than {res['margin_mm']:.0f} mm from tumour/PVTT (labels 2, 3, 4) of the input "
              "or the virtual follow-up (whole grid, mostly body and air); far liver = far voxels of input label 1; "
              "outside liver = input label 0. Differences are |virtual - input| HU, arterial / portal.", "",
              "| regimen | week | tumour mL (pre -> virtual) | viable mL (pre -> virtual) | mean \\|d\\| far (HU) | "
              "max \\|d\\| far (HU) | far liver changed (mL of mL) | mean \\|d\\| far liver (HU) | "
              "max \\|d\\| outside liver (HU) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in res["virtual"]:
        lines.append(f"| {r['regimen']} | {r['week']} | {pre['tumour_ml']:.1f} -> {r['tumour_ml']:.1f} | "
                     f"{pre['viable_ml']:.1f} -> {r['viable_ml']:.1f} | "
                     f"{r['arterial_mean_absdiff_far_hu']:.3g} / {r['portal_mean_absdiff_far_hu']:.3g} | "
                     f"{r['arterial_max_absdiff_far_hu']:.4g} / {r['portal_max_absdiff_far_hu']:.4g} | "
                     f"{r['portal_changed_far_liver_ml']:.0f} of {r['far_liver_ml']:.0f} | "
                     f"{r['arterial_mean_absdiff_far_liver_hu']:.3g} / {r['portal_mean_absdiff_far_liver_hu']:.3g} | "
                     f"{r['arterial_max_absdiff_outside_liver_hu']:.3g} / "
                     f"{r['portal_max_absdiff_outside_liver_hu']:.3g} |")
    outside = max(max(r["arterial_max_absdiff_outside_liver_hu"], r["portal_max_absdiff_outside_liver_hu"])
                  for r in res["virtual"])
    far_liver = max(r["portal_changed_far_liver_ml"] for r in res["virtual"])
    lines += ["", f"Outside the liver the virtual follow-ups equal the input (max |difference| {outside:.3g} HU)."]
    if far_liver > 0:
        lines[-1] += (f" Inside the liver, up to {far_liver:.0f} mL of liver farther than 10 mm from any tumour "
                      "changes (the margin is measured on the voxel grid: voxels one slice beyond it), mean |HU "
                      "difference| there in the table.")
    else:
        lines[-1] += " Inside the liver nothing farther than 10 mm from the tumours changes."
    if res.get("figure"):
        lines += ["", f"Picture: `{res['figure']['path']}` (axial slice {res['figure']['slice_k']} through the "
                      "largest segmented tumour component)."]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="/tmp/real", help="root folder of the public scans (real_scans.json)")
    ap.add_argument("--scan", help="scan id in real_scans.json (default: the first pre-treatment scan found)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--figure", default=str(ROOT / "docs" / "images" / "real_twin.png"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    res = run(args)
    write_results(args.out, "real_scan_twin", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
