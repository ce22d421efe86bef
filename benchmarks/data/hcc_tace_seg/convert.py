#!/usr/bin/env python3
"""Convert the TCIA HCC-TACE-Seg clinical spreadsheet into an HCCTwin-style cohort CSV.

Source: HCC-TACE-Seg_clinical_data-V2.xlsx (sheet "data table"), TCIA collection HCC-TACE-Seg,
doi:10.7937/TCIA.5FNA-0924, licence CC BY 4.0. See README.md for provenance and column meanings.

Usage:
    python convert.py [--xlsx original/HCC-TACE-Seg_clinical_data-V2.xlsx] [--out hcc_tace_clinical.csv]

Needs pandas and openpyxl only. Nothing is imputed: fields the source does not record stay empty.
Where the source records a band rather than a value (ECOG, number of tumours) the HCCTwin column holds the
LOWER bound of the band and a companion column says so (ecog_band, n_tumors_band).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_XLSX = HERE / "original" / "HCC-TACE-Seg_clinical_data-V2.xlsx"
DEFAULT_OUT = HERE / "hcc_tace_clinical.csv"
# sha256 of the copy taken from github.com/pasqal-io/Pasqal_Hackathon_Feb25_Team_01 (see README)
EXPECTED_SHA256 = "fa030a48dea08917f4bf7eddf6fb27e8fdec1fdc2f9a0f0612ad7b1021375bfa"

DAYS_PER_MONTH = 365.25 / 12  # 30.4375
WEEKS_TO_MONTHS = 7.0 / DAYS_PER_MONTH

HCCTWIN_FIELDS = ["age_years", "sex", "ecog", "child_pugh_points", "albumin_g_l", "bilirubin_umol_l", "inr",
                  "ascites", "encephalopathy", "afp_ng_ml", "etiology", "n_tumors", "max_diameter_mm", "pvtt",
                  "extrahepatic_spread", "bclc", "resectable"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def etiology(hepatitis: str, alcohol: int) -> str:
    h = str(hepatitis).strip()
    if h == "HBV only":
        return "HBV"
    if h == "HCV only":
        return "HCV"
    if h == "HCV and HBV":
        return "HBV+HCV"
    if h == "No virus":
        return "alcohol" if int(alcohol) == 1 else "other"
    raise ValueError(f"unexpected hepatitis value {hepatitis!r}")


def convert(d: pd.DataFrame) -> pd.DataFrame:
    expected_cols = 57
    if d.shape[1] != expected_cols or "TCIA_ID" not in d.columns:
        raise SystemExit(f"unexpected sheet layout: {d.shape}")
    out = pd.DataFrame({"patient_id": d["TCIA_ID"].astype(str)})

    # --- HCCTwin clinical fields -------------------------------------------------------------------------
    out["age_years"] = d["age"].astype(int)
    out["sex"] = d["Sex"].map({1: "M", 2: "F"})                       # glossary: 1=Male, 2=Female
    ps = d["PS_bclc_0_0_1-2_1_3-4_3"].astype(int)                     # 0 -> PS 0, 1 -> PS 1-2, 3 -> PS 3-4
    out["ecog"] = ps.map({0: 0, 1: 1, 3: 3})                           # lower bound of the band
    out["ecog_band"] = ps.map({0: "0", 1: "1-2", 3: "3-4"})
    out["child_pugh_points"] = np.nan                                  # not recorded (class only)
    out["albumin_g_l"] = np.nan                                        # not recorded
    out["bilirubin_umol_l"] = np.nan                                   # not recorded
    out["inr"] = np.nan                                                # not recorded
    out["ascites"] = np.nan                                            # not recorded
    out["encephalopathy"] = np.nan                                     # not recorded
    out["afp_ng_ml"] = d["AFP"].astype(float)
    out["etiology"] = [etiology(h, a) for h, a in zip(d["hepatitis"], d["Alcohol"])]
    uni = d["tumor_nodul"].str.strip().eq("uninodular")
    out["n_tumors"] = np.where(uni, 1, 2)                              # 2 means ">= 2" (multinodular)
    out["n_tumors_band"] = np.where(uni, "1", ">=2")

    # max diameter: Tr_Size (cm) where given; else, for uninodular patients, the mean of the readers' baseline
    # RECIST 1.1 sums (a single target lesion, so the sum is its longest diameter, mm). Multinodular without
    # Tr_Size stays empty (the RECIST sum over up to two lesions is only an upper bound, kept in recist_sum_bl_mm).
    recist_bl = d[["1_RECIST_BL", "2_RECIST_BL", "3_RECIST_BL"]].astype(float).mean(axis=1, skipna=True)
    tr_mm = d["Tr_Size"].astype(float) * 10.0
    maxd = tr_mm.copy()
    src = pd.Series(np.where(tr_mm.notna(), "Tr_Size_cm_x10", ""), index=d.index)
    use_recist = tr_mm.isna() & uni & recist_bl.notna()
    maxd[use_recist] = recist_bl[use_recist]
    src[use_recist] = "RECIST_BL_reader_mean_uninodular"
    out["max_diameter_mm"] = maxd.round(1)
    out["max_diameter_source"] = src
    out["recist_sum_bl_mm"] = recist_bl.round(2)
    # RECIST 1.1 takes at most two target lesions per organ, so a true largest diameter is >= half the sum.
    # Flag Tr_Size values below that (10 patients): Tr_Size may describe another lesion there.
    out["max_diameter_flag"] = np.where((src == "Tr_Size_cm_x10") & (tr_mm < recist_bl / 2.0 - 5.0),
                                        "Tr_Size_below_half_RECIST_sum", "")

    out["pvtt"] = d["Portal Vein Thrombosis"].astype(int)
    out["extrahepatic_spread"] = ((d["Metastasis"].astype(int) == 1) | (d["Lymphnodes"].astype(int) == 1)).astype(int)
    out["bclc"] = d["BCLC"].str.replace("Stage-", "", regex=False).str.strip()
    out["resectable"] = np.nan                                         # not recorded

    # --- outcomes --------------------------------------------------------------------------------------------
    out["os_weeks"] = d["OS"].astype(float)
    out["os_months"] = (d["OS"].astype(float) * WEEKS_TO_MONTHS).round(3)
    out["os_event"] = d["Death_1_StillAliveorLostToFU_0"].astype(int)  # 1 = died, 0 = alive / lost to follow-up
    out["ttp_weeks"] = d["TTP"].astype(float)
    out["ttp_months"] = (d["TTP"].astype(float) * WEEKS_TO_MONTHS).round(3)
    out["ttp_event"] = d["Censored_0_progressed_1"].astype(int)       # 1 = progressed, 0 = censored (incl. death)

    # --- original scores and related source columns --------------------------------------------------------
    out["child_pugh_class"] = d["CPS"].str.strip()
    out["clip_score"] = d["CLIP_Score"].str.replace("Stage_", "", regex=False).astype(int)
    out["clip_group"] = d["CLIP"].str.replace("Stage_ ", "", regex=False).str.replace("Stage_", "", regex=False)
    out["okuda_stage"] = d["Okuda"].str.replace("Stage ", "", regex=False).str.strip()
    out["tnm_stage"] = d["TNM"].str.replace("Stage-", "", regex=False).str.strip()
    out["bclc_original"] = d["BCLC"]
    out["tumor_involvement_gt50pct"] = d["T_involvment"].str.strip().str.startswith(">").astype(int)
    out["vascular_invasion"] = d["Vascular invasion"].astype(int)
    out["metastasis"] = d["Metastasis"].astype(int)
    out["lymph_nodes"] = d["Lymphnodes"].astype(int)
    out["cirrhosis"] = d["Evidence_of_cirh"].astype(int)
    out["hepatitis"] = d["hepatitis"]
    out["alcohol"] = d["Alcohol"].astype(int)
    out["diabetes"] = d["Diabetes"].astype(int)
    out["pathology"] = d["Pathology"]
    out["chemotherapy"] = d["chemotherapy"]
    out["tace_type"] = [("" if pd.isna(v) else ("DEB-TACE" if "bead" in str(v).lower() else "cTACE"))
                        for v in d["chemotherapy"]]  # inferred from the regimen text
    out["interval_dx_minus_bl_ct_days"] = d["Interval_BL"]
    out["mrecist_1"] = d["1_mRECIST"]

    # CLIP recomputed from its components (check; the source score must be reproduced exactly)
    cp = d["CPS"].str.strip().map({"A": 0, "B": 1, "C": 2})
    morph = np.where(out["tumor_involvement_gt50pct"] == 1, 2, np.where(uni, 0, 1))
    out["clip_recomputed"] = (cp + morph + (d["AFP"] >= 400).astype(int) + out["pvtt"]).astype(int)
    return out


def km(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(time, kind="mergesort")
    t, e = time[order], event[order]
    ts = np.unique(t[e == 1])
    s, surv = 1.0, []
    for u in ts:
        at_risk = np.sum(t >= u)
        d = np.sum((t == u) & (e == 1))
        s *= 1 - d / at_risk
        surv.append(s)
    return ts, np.array(surv)


def km_median(time, event) -> float:
    ts, s = km(np.asarray(time, float), np.asarray(event, int))
    below = np.where(s <= 0.5)[0]
    return float(ts[below[0]]) if below.size else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xlsx", type=Path, default=DEFAULT_XLSX)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-checksum", action="store_true", help="accept an xlsx whose sha256 differs")
    args = ap.parse_args()

    digest = sha256(args.xlsx)
    if digest != EXPECTED_SHA256 and not args.no_checksum:
        print(f"sha256 {digest} != expected {EXPECTED_SHA256}; use --no-checksum to accept another copy "
              f"(the data table of the RadTACE copy is identical)", file=sys.stderr)
        return 2
    d = pd.read_excel(args.xlsx, sheet_name="data table")
    out = convert(d)
    if not (out["clip_recomputed"] == out["clip_score"]).all():
        print("WARNING: recomputed CLIP differs from the source CLIP_Score", file=sys.stderr)
    out.to_csv(args.out, index=False)

    n, ev = len(out), int(out["os_event"].sum())
    med_os = km_median(out["os_months"], out["os_event"])
    med_fu = km_median(out["os_months"], 1 - out["os_event"])  # reverse Kaplan-Meier
    med_ttp = km_median(out["ttp_months"], out["ttp_event"])
    print(f"wrote {args.out} ({n} patients, {out.shape[1]} columns)")
    print(f"OS events (deaths): {ev}; censored: {n - ev}")
    print(f"KM median OS: {med_os:.1f} months; reverse-KM median follow-up: {med_fu:.1f} months "
          f"(median observed OS time, all: {out['os_months'].median():.1f}; censored only: "
          f"{out.loc[out.os_event == 0, 'os_months'].median():.1f})")
    print(f"TTP events (progressions): {int(out['ttp_event'].sum())}; KM median TTP: {med_ttp:.1f} months")
    print("CLIP recomputed == source:", bool((out["clip_recomputed"] == out["clip_score"]).all()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
