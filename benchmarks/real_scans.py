"""Real-scan check of the segmentation and the out-of-domain guard (issue 22), re-runnable by anyone who has the
public scans listed in ``benchmarks/real_scans.json``:

    .venv/bin/python benchmarks/real_scans.py --data DATA_ROOT [--weights MODEL] [--pictures docs/images]

The scans are not shipped (size); the manifest names each case's public source, licence and attribution, and the
path under ``DATA_ROOT`` it is read from (DICOM series folders or NIfTI files; cases whose files are missing are
listed as such, not skipped silently). For every case and input (both phases, each phase alone) the installed
segmentation runs and the benchmark records liver and tumour volumes, the guard's verdict and reasons, the network's
confidence, and the run time (the phases first aligned as ``hcctwin predict`` does); where the manifest names a
reference mask the liver Dice against it (and whether that mask is manual or another model's output). No reference
mask: the plausibility checks only (adult liver 0.8-3 L, tumour where a radiologist would see one: judged on the
pictures, which go to ``--pictures``).

Results: ``<out>/real_scans.{json,md}``. Nothing here is tuned on these scans: the guard's limits come from anatomy
and from the simulated training domain (``HCCTwinLib.domain``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HCCTwin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_line, write_results  # noqa: E402

MANIFEST = ROOT / "benchmarks" / "real_scans.json"


def _inputs(case_spec: dict) -> list[tuple[str, dict[str, str]]]:
    phases = case_spec["phases"]
    runs = [("+".join(phases), dict(phases))]
    if len(phases) > 1:
        runs += [(p, {p: path}) for p, path in phases.items()]
    return runs


def picture(case, labels, verdict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from HCCTwinLib.domain import _reference_phase

    _, img = _reference_phase(case.phases)
    organ = labels > 0
    ks = np.flatnonzero(organ.any(axis=(1, 2)))
    picks = (list(np.linspace(ks[0], ks[-1], 5).astype(int))[1:4] if ks.size
             else [img.shape[0] // 4, img.shape[0] // 2, 3 * img.shape[0] // 4])
    # radiological convention whatever the file's direction: patient right on the left, anterior at the top
    flip_lr = case.geometry.direction_matrix[0, 0] < 0
    flip_ap = case.geometry.direction_matrix[1, 1] < 0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    colours = {1: "#3cb44b", 2: "#e6194b", 3: "#ffe119", 4: "#4363d8"}
    for ax, k in zip(axes, picks):
        sl, lab = img[k], labels[k]
        if flip_lr:
            sl, lab = sl[:, ::-1], lab[:, ::-1]
        if flip_ap:
            sl, lab = sl[::-1, :], lab[::-1, :]
        ax.imshow(np.clip(sl, -160, 240), cmap="gray", interpolation="nearest")
        for value, colour in colours.items():
            if (lab == value).any():
                ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=0.8)
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    colour = {"inside": "#2e7d32", "caution": "#ef6c00", "outside": "#c62828"}[verdict.verdict]
    fig.suptitle(f"{title} - guard: {verdict.verdict.upper()}", color=colour, fontsize=11)
    reasons = "; ".join(f.message for f in verdict.findings if f.severity != "inside")[:300]
    fig.text(0.01, 0.01, ("green liver, red viable tumour, yellow necrosis, blue PVTT.  " + reasons), fontsize=7,
             wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def png_stack_mask(folder: Path, dicom_folder: Path, geometry) -> np.ndarray:
    """A mask stored as one PNG per DICOM file (CHAOS ``Ground/``: the n-th PNG in name order belongs to the n-th
    DICOM file in name order), placed on the case grid slice by slice from each file's ImagePositionPatient."""
    import pydicom
    from PIL import Image

    dcm = sorted(p for p in Path(dicom_folder).iterdir() if p.is_file())
    png = sorted(Path(folder).glob("*.png"))
    if len(dcm) != len(png):
        raise ValueError(f"{folder}: {len(png)} PNG masks for {len(dcm)} DICOM files")
    direction = np.asarray(geometry.direction_matrix, float)
    origin, dz = np.asarray(geometry.origin, float), float(geometry.spacing[2])
    out = np.zeros(geometry.shape, np.uint8)
    for d, p in zip(dcm, png):
        pos = np.asarray(pydicom.dcmread(d, stop_before_pixels=True).ImagePositionPatient, float)
        k = int(round(float(np.dot(pos - origin, direction[:, 2])) / dz))
        mask = np.asarray(Image.open(p))
        if mask.ndim == 3:
            mask = mask[..., 0]
        if not 0 <= k < out.shape[0] or mask.shape != out.shape[1:]:
            raise ValueError(f"{p.name}: does not fit the scan's grid (slice {k}, shape {mask.shape})")
        out[k] = mask > 0
    return out


def run(data: Path, weights: str | None, pictures: Path | None) -> dict:
    from HCCTwinLib import domain
    from HCCTwinLib.io import load_case, read_image, resample_to
    from HCCTwinLib.pipeline import align_and_segment
    from HCCTwinLib.segmentation import dice_per_label, get_segmenter

    manifest = json.loads(MANIFEST.read_text())
    seg = get_segmenter(weights, "cpu")
    rows = []
    for spec in manifest["cases"]:
        paths = {p: data / rel for p, rel in spec["phases"].items()}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            rows.append({"case": spec["id"], "status": "data missing", "missing": missing})
            print(f"{spec['id']}: data missing ({missing[0]} ...)", flush=True)
            continue
        for name, rel in _inputs(spec):
            case = load_case(paths={p: data / r for p, r in rel.items()}, patient_id=spec["id"])
            t = time.perf_counter()
            # as hcctwin predict / segment do: phases from separate breath-holds moved onto the arterial one
            case, labels, alignment = align_and_segment(case, seg)
            seconds = time.perf_counter() - t
            verdict = domain.assess(case.phases, case.geometry, labels, confidence=seg.last_info.get("confidence"),
                                    card=seg.last_card)
            m = verdict.measures
            row = {"case": spec["id"], "input": name, "status": "ran", "seconds": round(seconds, 2),
                   "liver_ml": round(m.get("liver_ml") or 0.0, 1), "tumor_ml": round(m.get("tumor_ml") or 0.0, 1),
                   "pvtt_ml": round(m.get("pvtt_ml") or 0.0, 1), "verdict": verdict.verdict,
                   "reasons": verdict.reasons,
                   "mean_entropy": m.get("mean_entropy"), "uncertain_fraction": m.get("uncertain_fraction"),
                   "slice_mm": m.get("slice_mm"), "n_slices": case.geometry.shape[0],
                   "read_by": f"{seg.last_card.get('name')} {seg.last_card.get('version')}",
                   "phase_alignment": [a.to_dict() for a in alignment]}
            ref = spec.get("reference")
            if ref and (data / ref["path"]).exists():
                if ref.get("format") == "png_stack":
                    truth = png_stack_mask(data / ref["path"], paths[next(iter(spec["phases"]))], case.geometry)
                else:
                    # read as an image: another tool's label map has its own label values (checked here)
                    arr, geom = read_image(data / ref["path"])
                    values = ref.get("label_values")
                    arr = np.rint(np.asarray(arr)).astype(np.int32)
                    truth = (np.isin(arr, values) if values else arr > 0).astype(np.uint8)
                    if not geom.same_grid(case.geometry):
                        truth = np.asarray(resample_to(truth, geom, case.geometry, labels=True)).astype(np.uint8)
                d = dice_per_label(np.where(labels > 0, 1, 0).astype(np.uint8), truth)
                voxel_ml = float(np.prod(case.geometry.spacing)) / 1000.0
                row["reference"] = ref["kind"]
                row["reference_manual"] = ref["kind"].startswith("manual")
                row["liver_dice_vs_reference"] = d.get("liver")
                row["reference_ml"] = round(float(np.count_nonzero(truth)) * voxel_ml, 1)
            rows.append(row)
            print(f"{spec['id']} [{name}]: liver {row['liver_ml']} mL, tumour {row['tumor_ml']} mL, "
                  f"{verdict.verdict}: {'; '.join(verdict.reasons)[:200]}", flush=True)
            if pictures is not None and name == "+".join(spec["phases"]):
                picture(case, labels, verdict, f"{spec['title']} [{name}], model {seg.card.get('version')}",
                        pictures / f"real_{spec['id']}.png")
    return {"model_version": seg.card.get("version"), "model": seg.describe(), "weights": str(weights or "installed"),
            "rows": rows,
            "machine": machine_info(),
            "sources": {c["id"]: {k: c[k] for k in ("source", "licence", "attribution", "note") if k in c}
                        for c in manifest["cases"]}}


def _ref(row: dict) -> str:
    d = row.get("liver_dice_vs_reference")
    if d is None:
        return "no reference"
    return f"**{d:.3f}** (manual)" if row.get("reference_manual") else f"{d:.3f} (model)"


def _models_line(res: dict) -> str:
    """Which models read the rows: the two-phase model, and the single-phase stage where a one-phase study went to it
    (each row's ``read_by``)."""
    read_by = list(dict.fromkeys(r["read_by"] for r in res["rows"] if r.get("read_by")))
    if not read_by:  # a result written before the rows said which model read them
        return f"Model {res['model_version']}"
    return "Models " + " and ".join(f"`{m}`" for m in read_by) + " (each row's reader in the input column)"


def markdown(res: dict) -> list[str]:
    lines = ["# Real public CT scans: segmentation and out-of-domain guard", "",
             f"{_models_line(res)}, {res['machine']['date']}, {machine_line(res['machine'])}. "
             "Command: `.venv/bin/python benchmarks/real_scans.py --data DATA_ROOT` (sources and licences in "
             "`benchmarks/real_scans.json`). One scan has a manual liver mask (CHAOS CT set 3, a healthy liver: any "
             "tumour drawn there is false); for the others volumes and verdicts are checked for plausibility (adult "
             "liver 0.8-3 L; pictures in the README); where the manifest names another model's mask "
             "(TotalSegmentator), the liver Dice against it is agreement with that model, not accuracy. As in "
             "`hcctwin predict`, a two-phase study's portal phase is first moved onto the arterial one when their "
             "breath-holds differ (the shift applied is in the input column; `phase_alignment` in the JSON).", "",
             "| case | input | slices | liver + tumour (mL) | tumour (mL) | PVTT (mL) | reference liver (mL) | "
             "liver Dice vs reference | guard | reasons |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r["status"] != "ran":
            lines.append(f"| {r['case']} | - | - | - | - | - | - | - | {r['status']} | |")
            continue
        ref_ml = f"{r['reference_ml']:.0f}" if r.get("reference_ml") is not None else "-"
        moved = [a for a in r.get("phase_alignment", []) if a["applied"]]
        shift = "".join(f" ({a['phase']} shifted {a['shift_mm']:.1f} mm)" for a in moved)
        reader = f" [{r['read_by']}]" if r.get("read_by") else ""
        lines.append(f"| {r['case']} | {r['input']}{shift}{reader} | {r['n_slices']} x {r['slice_mm']:.1f} mm | "
                     f"{r['liver_ml']:.0f} | {r['tumor_ml']:.0f} | {r['pvtt_ml']:.0f} | {ref_ml} | {_ref(r)} | "
                     f"**{r['verdict']}** | {'<br>'.join(r['reasons']) or '-'} |")
    lines += ["", "Sources:", ""]
    lines += [f"- {cid}: {s.get('source')} ({s.get('licence')}). {s.get('attribution', '')}"
              for cid, s in res["sources"].items()]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="root folder of the public scans (paths in real_scans.json)")
    ap.add_argument("--weights", help="segmentation model file (default: installed)")
    ap.add_argument("--pictures", help="write one picture per case here (e.g. docs/images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    res = run(Path(args.data), args.weights, Path(args.pictures) if args.pictures else None)
    write_results(args.out, "real_scans", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
