"""Features for the survival and risk models: clinical values + scores, imaging, radiomics, response.

- :func:`clinical_features` turns a cohort table (the HCCTwin cohort layout's columns) into numeric features plus the
  established scores (:func:`HCCTwinLib.clinical.compute_scores`), imputing missing values (median for numbers,
  mode for categories) and **reporting** every imputation and every ignored column.
- :func:`imaging_features` reads a label map (0 bg, 1 liver, 2 viable, 3 necrosis, 4 PVTT; numpy ``[k, j, i]``)
  with its :class:`~HCCTwinLib.cases.Geometry` (LPS, direction matrix respected).
- :func:`radiomics_features` is a **PyRadiomics-equivalent subset** computed with numpy (PyRadiomics does not
  install here): first order, shape (voxel-face surface, no marching cubes) and GLCM texture averaged over the 13
  directions. Values follow PyRadiomics' definitions but are not bit-identical (surface and binning differ).
- :func:`response_features` summarises per-time-point response readings (real or virtual follow-ups).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..clinical import compute_scores
from ..errors import ClinicalValueError, InputError
from ..labels import LIVER, NECROSIS, PVTT, VIABLE_TUMOR

__all__ = ["KNOWN_COLUMNS", "OUTCOME_COLUMNS", "DEFAULT_COVARIATES", "SCORE_BASELINES", "clinical_features",
           "imaging_features", "radiomics_features", "response_features", "MRECIST_ORDINAL", "WEEKS_PER_MONTH"]

#: weeks per month (365.25 / 12 / 7), for landmark times in months.
WEEKS_PER_MONTH = 365.25 / 12 / 7

#: Outcome and bookkeeping columns of the cohort layout (never used as features).
OUTCOME_COLUMNS = ("patient_id", "regimen", "os_months", "os_event", "pfs_months", "pfs_event", "metastasis_months",
                   "metastasis_event", "best_response_mrecist")
_NUMERIC = ("age_years", "ecog", "child_pugh_points", "albumin_g_l", "bilirubin_umol_l", "inr", "afp_ng_ml",
            "n_tumors", "max_diameter_mm")
_CATEGORICAL = ("sex", "ascites", "encephalopathy", "etiology", "pvtt", "extrahepatic_spread", "bclc", "resectable")
#: Study bookkeeping a cohort table may carry (split, observed follow-ups, readers' mRECIST ``reader<k>_mrecist
#: [_wNN]``): known, never features, no "ignored" note.
BOOKKEEPING_COLUMNS = ("split", "followups")
_READER_COLUMN = re.compile(r"reader\d+_mrecist(_w\d\d)?")
KNOWN_COLUMNS = OUTCOME_COLUMNS + _NUMERIC + _CATEGORICAL + BOOKKEEPING_COLUMNS

#: A compact default covariate set for the Cox models (all columns of :func:`clinical_features`' output).
DEFAULT_COVARIATES = ("age_years", "ecog", "albi_score", "child_pugh_points", "log_afp", "n_tumors",
                      "max_diameter_cm", "pvtt", "extrahepatic_spread")
#: Established scores used as baselines (higher = worse prognosis for all of them).
SCORE_BASELINES = {"HAP": "hap_points", "mHAP-II": "mhap2_points", "six-and-twelve": "six_twelve_cm",
                   "ALBI grade": "albi_grade", "BCLC": "bclc_ordinal"}

#: mRECIST category -> ordinal, higher = worse.
MRECIST_ORDINAL = {"CR": 0, "PR": 1, "SD": 2, "PD": 3}
_BCLC_ORDINAL = {"0": 0, "A": 1, "B": 2, "C": 3, "D": 4}
_SIX_TWELVE_ORDINAL = {"<=6": 0, "6-12": 1, ">12": 2}
_TBS_ORDINAL = {"low": 0, "intermediate": 1, "high": 2}
_WORDS = {
    "sex": {"m": 1, "male": 1, "man": 1, "f": 0, "female": 0, "woman": 0},
    "ascites": {"none": 0, "absent": 0, "no": 0, "mild": 1, "slight": 1, "moderate": 2, "severe": 2,
                "moderate-severe": 2, "tense": 2},
    "encephalopathy": {"none": 0, "absent": 0, "no": 0, "grade1-2": 1, "grade 1-2": 1, "i-ii": 1, "mild": 1,
                       "grade3-4": 2, "grade 3-4": 2, "iii-iv": 2, "severe": 2},
    "bool": {"1": 1, "true": 1, "yes": 1, "y": 1, "present": 1, "0": 0, "false": 0, "no": 0, "n": 0, "absent": 0,
             "none": 0},
}
_ETIOLOGIES = ("hbv", "hcv", "alcohol", "masld")


def _norm_key(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v).strip().lower()
    if s in {"", "nan", "na", "n/a", "none_given"}:
        return None
    if s.endswith(".0"):
        s = s[:-2]
    return s


def _encode_categorical(col: str, series: pd.Series) -> pd.Series:
    if col == "bclc":
        mapping = {k.lower(): v for k, v in _BCLC_ORDINAL.items()}
        return series.map(lambda v: mapping.get((_norm_key(v) or "").replace("bclc-", "").replace("bclc ", ""),
                                                np.nan))
    words = _WORDS["bool"] if col in ("pvtt", "extrahepatic_spread", "resectable") else _WORDS.get(col, {})
    extra = {"0": 0, "1": 1, "2": 2} if col in ("ascites", "encephalopathy") else {}
    return series.map(lambda v: {**words, **extra}.get(_norm_key(v) or "", np.nan)).astype(float)


def clinical_features(df: pd.DataFrame, fill_values: Mapping[str, Any] | None = None
                      ) -> tuple[pd.DataFrame, list[str]]:
    """Numeric features of a cohort table, with the established scores. Returns ``(features, notes)``.

    ``features`` has the index of ``df`` and the columns: the numeric clinical values, ``male``, ``ascites``,
    ``encephalopathy`` (0/1/2), ``pvtt``, ``extrahepatic_spread``, ``resectable`` (0/1), ``etiology_<x>`` one-hots
    (hbv, hcv, alcohol, masld; other = all zero), ``log_afp`` (log10(1 + AFP ng/mL)), ``max_diameter_cm``, and the
    scores ``albi_score``, ``albi_grade``, ``child_pugh_points`` (computed from the labs), ``bclc_ordinal``
    (0, A, B, C, D -> 0..4), ``hap_points``, ``mhap2_points``, ``six_twelve_cm``, ``six_twelve_ordinal``,
    ``up_to_seven_value``, ``beyond_up_to_seven``, ``tbs``, ``tbs_ordinal``.

    Missing or unreadable values are imputed (median for numbers, mode for categories; or ``fill_values``, e.g. the
    training fold's, as returned in ``features.attrs["fill_values"]``) and each imputation is listed in ``notes`` and
    ``features.attrs["imputed"]`` ({column: n rows}). Columns that are neither clinical nor outcome columns are
    ignored with a note (``features.attrs["ignored_columns"]``). A row whose values fail the clinical checks (e.g.
    bilirubin in mg/dL) keeps its raw features but gets median scores, with a note naming the row.
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"clinical_features needs a pandas DataFrame, got {type(df).__name__}.")
    notes: list[str] = []
    ignored = [c for c in df.columns if c not in KNOWN_COLUMNS and not _READER_COLUMN.fullmatch(str(c))]
    if ignored:
        notes.append(f"ignored {len(ignored)} unknown column(s): {', '.join(map(str, ignored))} "
                     f"(not in the HCCTwin cohort layout).")
    raw = pd.DataFrame(index=df.index)
    for col in _NUMERIC:
        raw[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    for col in _CATEGORICAL:
        if col in ("etiology", "bclc"):  # etiology is one-hot encoded below; BCLC is recomputed from the values
            continue
        raw[col] = _encode_categorical(col, df[col]) if col in df.columns else np.nan
    labs_given = all(c in df.columns for c in ("inr", "ascites", "encephalopathy"))
    absent = [c for c in _NUMERIC + _CATEGORICAL if c not in df.columns and c not in ("etiology", "bclc")
              and not (c == "child_pugh_points" and labs_given)]
    if absent:
        notes.append(f"column(s) absent from the table, imputed for every row: {', '.join(absent)}.")
    unreadable = {c: int((raw[c].isna() & df[c].notna()).sum()) for c in raw.columns if c in df.columns}
    for c, k in unreadable.items():
        if k:
            notes.append(f"{c}: {k} value(s) not readable as {'numbers' if c in _NUMERIC else 'categories'}, "
                         f"treated as missing.")
    # child_pugh_points is optional when the labs are given: impute it only if the labs cannot be used
    fills = dict(fill_values or {})
    imputed: dict[str, int] = {}
    for col in raw.columns:
        miss = raw[col].isna()
        if col == "child_pugh_points":
            labs = raw[["inr", "ascites", "encephalopathy"]].notna().all(axis=1)
            miss = miss & ~labs
        if col not in fills:
            vals = raw[col].dropna()
            if col in _NUMERIC:
                fills[col] = float(vals.median()) if len(vals) else _DEFAULT_FILL[col]
            else:
                fills[col] = float(vals.mode().iloc[0]) if len(vals) else _DEFAULT_FILL[col]
        if miss.any():
            raw.loc[miss, col] = fills[col]
            imputed[col] = int(miss.sum())
            how = "median" if col in _NUMERIC else "mode"
            notes.append(f"imputed {col} in {int(miss.sum())} row(s) with the {how} {fills[col]:g}.")
    etiology = df["etiology"].map(_norm_key) if "etiology" in df.columns else pd.Series(None, index=df.index)

    rows = []
    for pos, (idx, r) in enumerate(raw.iterrows()):
        values = {k: (None if pd.isna(v) else v) for k, v in r.items()}
        values["sex"] = {1.0: "M", 0.0: "F"}.get(values.get("sex"))
        for b in ("pvtt", "extrahepatic_spread", "resectable"):
            values[b] = int(values[b]) if values[b] is not None else None
        for c in ("ecog", "n_tumors", "ascites", "encephalopathy"):
            values[c] = int(round(values[c]))
        if values.get("child_pugh_points") is not None:
            values["child_pugh_points"] = int(round(values["child_pugh_points"]))
        try:
            s = compute_scores(values)
            rows.append({"albi_score": s["albi_score"], "albi_grade": s["albi_grade"],
                         "child_pugh_points": s["child_pugh_points"], "bclc_ordinal": _BCLC_ORDINAL.get(s["bclc"]),
                         "hap_points": s["hap_points"], "mhap2_points": s["mhap2_points"],
                         "six_twelve_cm": s["six_twelve_cm"],
                         "six_twelve_ordinal": _SIX_TWELVE_ORDINAL[s["six_twelve_stratum"]],
                         "up_to_seven_value": s["up_to_seven_value"],
                         "beyond_up_to_seven": int(not s["within_up_to_seven"]), "tbs": s["tbs"],
                         "tbs_ordinal": _TBS_ORDINAL[s["tbs_group"]]})
        except ClinicalValueError as exc:
            rows.append({})
            pid = df["patient_id"].iloc[pos] if "patient_id" in df.columns else idx
            notes.append(f"row {pid}: scores not computed ({exc}); scores imputed with the median.")
    scores = pd.DataFrame(rows, index=raw.index, columns=_SCORE_COLUMNS, dtype=float)
    for col in _SCORE_COLUMNS:
        miss = scores[col].isna()
        if miss.any():
            key = "score:" + col
            if key not in fills:
                med = scores[col].median()
                fills[key] = float(med) if not pd.isna(med) else 0.0
            scores.loc[miss, col] = fills[key]
            imputed[col] = int(miss.sum())

    out = pd.DataFrame(index=df.index)
    for col in ("age_years", "ecog", "albumin_g_l", "bilirubin_umol_l", "inr", "ascites", "encephalopathy",
                "afp_ng_ml", "n_tumors", "max_diameter_mm", "pvtt", "extrahepatic_spread", "resectable"):
        out[col] = raw[col].astype(float)
    out["male"] = raw["sex"].astype(float)
    for e in _ETIOLOGIES:
        out[f"etiology_{e}"] = etiology.map(lambda v, e=e: float(isinstance(v, str) and e in v)).astype(float)
    out["log_afp"] = np.log10(1.0 + out["afp_ng_ml"].clip(lower=0))
    out["max_diameter_cm"] = out["max_diameter_mm"] / 10.0
    out["log_bilirubin"] = np.log(out["bilirubin_umol_l"].clip(lower=1e-3))
    for col in _SCORE_COLUMNS:
        out[col] = scores[col].astype(float)
    out.attrs["imputed"] = imputed
    out.attrs["ignored_columns"] = list(map(str, ignored))
    out.attrs["fill_values"] = fills
    return out, notes


_SCORE_COLUMNS = ("albi_score", "albi_grade", "child_pugh_points", "bclc_ordinal", "hap_points", "mhap2_points",
                  "six_twelve_cm", "six_twelve_ordinal", "up_to_seven_value", "beyond_up_to_seven", "tbs",
                  "tbs_ordinal")
_DEFAULT_FILL = {"age_years": 60.0, "ecog": 0.0, "child_pugh_points": 5.0, "albumin_g_l": 38.0,
                 "bilirubin_umol_l": 15.0, "inr": 1.1, "afp_ng_ml": 20.0, "n_tumors": 1.0, "max_diameter_mm": 50.0,
                 "sex": 1.0, "ascites": 0.0, "encephalopathy": 0.0, "pvtt": 0.0, "extrahepatic_spread": 0.0,
                 "bclc": 2.0, "resectable": 0.0}


# ----------------------------------------------------------------------------------------------------------------
# Imaging features from a label map
# ----------------------------------------------------------------------------------------------------------------

def _physical_points(idx_kji: np.ndarray, geometry) -> np.ndarray:
    """(N, 3) [k, j, i] indices -> (N, 3) LPS mm."""
    ijk = idx_kji[:, ::-1].astype(float)
    return ijk @ (geometry.direction_matrix @ np.diag(geometry.spacing)).T + np.asarray(geometry.origin)


def _max_diameter_mm(idx_kji: np.ndarray, geometry) -> float:
    """Largest 3D (Feret) diameter of a voxel set, in mm: max distance between voxel centres of the convex hull,
    plus the voxel's own extent along that direction (so one voxel measures one voxel, not zero)."""
    if len(idx_kji) == 0:
        return 0.0
    m = geometry.direction_matrix @ np.diag(geometry.spacing)
    pts = _physical_points(idx_kji, geometry)
    if len(pts) > 4:
        try:
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # degenerate (flat) sets: use all points
            pass
    if len(pts) > 3000:
        pts = pts[np.random.default_rng(0).choice(len(pts), 3000, replace=False)]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(np.argmax(d2), d2.shape)
    dist = float(np.sqrt(d2[a, b]))
    u = (pts[a] - pts[b]) / dist if dist > 0 else m[:, 0] / np.linalg.norm(m[:, 0])
    extent = float(np.abs(m.T @ u).sum())  # the voxel (parallelepiped) width along u
    return dist + extent


def imaging_features(labels: np.ndarray, geometry, arterial: np.ndarray | None = None,
                     portal: np.ndarray | None = None, min_lesion_ml: float = 0.05) -> dict[str, float]:
    """Tumour features from a segmentation (labels 0 bg, 1 liver, 2 viable, 3 necrosis, 4 PVTT; ``[k, j, i]``).

    Returns ``tumor_count`` (26-connected components of viable + necrosis >= ``min_lesion_ml``),
    ``largest_diameter_mm`` (3D Feret diameter of the largest-diameter lesion, physical mm through the geometry's
    spacing and direction), ``sum_diameter_mm`` (over at most 5 largest lesions), ``viable_volume_ml``,
    ``necrotic_volume_ml``, ``tumor_volume_ml``, ``liver_volume_ml`` (parenchyma + tumour + PVTT),
    ``tumor_liver_ratio``, ``necrosis_fraction``, ``pvtt_present``, ``pvtt_volume_ml``, and with the phases
    ``arterial_enhancement_ratio`` (mean arterial HU of viable tumour / liver parenchyma) and
    ``portal_washout_ratio`` (the same in the portal phase); NaN when the phase or a region is missing.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(geometry.shape):
        raise InputError(f"labels have shape {labels.shape}, but the geometry says {geometry.shape}.")
    vml = geometry.voxel_volume_ml
    viable, necrosis, pvtt, liver = (labels == VIABLE_TUMOR), (labels == NECROSIS), (labels == PVTT), (labels == LIVER)
    tumor = viable | necrosis
    comp, n = ndimage.label(tumor, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel())[1:] if n else np.zeros(0, int)
    keep = [i + 1 for i, s in enumerate(sizes) if s * vml >= min_lesion_ml]
    diameters = []
    if keep:
        objs = ndimage.find_objects(comp)
        for lab in keep:
            sl = objs[lab - 1]
            sub = np.argwhere(comp[sl] == lab) + np.array([s.start for s in sl])
            diameters.append(_max_diameter_mm(sub, geometry))
    diameters.sort(reverse=True)
    v_viable, v_nec, v_pvtt = viable.sum() * vml, necrosis.sum() * vml, pvtt.sum() * vml
    v_tumor = v_viable + v_nec
    v_liver = (liver.sum() + tumor.sum() + pvtt.sum()) * vml
    out = {
        "tumor_count": float(len(keep)),
        "largest_diameter_mm": float(diameters[0]) if diameters else 0.0,
        "sum_diameter_mm": float(sum(diameters[:5])),
        "viable_volume_ml": float(v_viable), "necrotic_volume_ml": float(v_nec), "tumor_volume_ml": float(v_tumor),
        "liver_volume_ml": float(v_liver),
        "tumor_liver_ratio": float(v_tumor / v_liver) if v_liver > 0 else float("nan"),
        "necrosis_fraction": float(v_nec / v_tumor) if v_tumor > 0 else 0.0,
        "pvtt_present": float(v_pvtt > 0), "pvtt_volume_ml": float(v_pvtt),
    }
    for name, phase in (("arterial_enhancement_ratio", arterial), ("portal_washout_ratio", portal)):
        value = float("nan")
        if phase is not None:
            phase = np.asarray(phase, float)
            if phase.shape != labels.shape:
                raise InputError(f"{name.split('_')[0]} phase has shape {phase.shape}, labels {labels.shape}.")
            if viable.any() and liver.any():
                ref = float(phase[liver].mean())
                value = float(phase[viable].mean() / ref) if abs(ref) > 1e-6 else float("nan")
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Radiomics (PyRadiomics-equivalent subset)
# ----------------------------------------------------------------------------------------------------------------

#: The 13 unique directions of a 3D 26-neighbourhood, as (dk, dj, di).
GLCM_DIRECTIONS = ((0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, -1), (1, 0, 0), (1, 0, 1), (1, 0, -1), (1, 1, 0),
                   (1, -1, 0), (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1))


def _glcm_features(q: np.ndarray, m: np.ndarray, n_bins: int) -> dict[str, float]:
    """GLCM (distance 1, symmetric, normalised) per direction on quantised ``q`` (1..n_bins) inside ``m``;
    contrast, homogeneity (inverse difference moment), joint energy and correlation averaged over directions."""
    ii, jj = np.meshgrid(np.arange(1, n_bins + 1), np.arange(1, n_bins + 1), indexing="ij")
    feats = {"glcm_contrast": [], "glcm_homogeneity": [], "glcm_energy": [], "glcm_correlation": []}
    shape = q.shape
    for d in GLCM_DIRECTIONS:
        src = tuple(slice(max(0, -s), shape[a] - max(0, s)) for a, s in enumerate(d))
        dst = tuple(slice(max(0, s), shape[a] + min(0, s)) for a, s in enumerate(d))
        both = m[src] & m[dst]
        if not both.any():
            continue
        a = q[src][both] - 1
        b = q[dst][both] - 1
        p = np.bincount(a * n_bins + b, minlength=n_bins * n_bins).reshape(n_bins, n_bins).astype(float)
        p = p + p.T
        p /= p.sum()
        diff2 = (ii - jj) ** 2
        mu = (ii * p).sum()
        var = (((ii - mu) ** 2) * p).sum()
        feats["glcm_contrast"].append((diff2 * p).sum())
        feats["glcm_homogeneity"].append((p / (1.0 + diff2)).sum())
        feats["glcm_energy"].append((p ** 2).sum())
        feats["glcm_correlation"].append(((ii - mu) * (jj - mu) * p).sum() / var if var > 1e-12 else 1.0)
    return {k: float(np.mean(v)) if v else float("nan") for k, v in feats.items()}


def radiomics_features(image: np.ndarray, mask: np.ndarray, geometry, n_bins: int = 32,
                       bin_width: float | None = None) -> dict[str, float]:
    """Radiomics of ``image`` inside ``mask`` (both ``[k, j, i]`` on ``geometry``): a PyRadiomics-equivalent subset
    computed with numpy (PyRadiomics is not installable here; names follow its feature classes).

    - first order: ``fo_mean``, ``fo_sd``, ``fo_skewness``, ``fo_kurtosis`` (PyRadiomics convention, not excess:
      3 for a normal distribution), ``fo_entropy`` (bits, on the quantised intensities), ``fo_p10``, ``fo_p25``,
      ``fo_median``, ``fo_p75``, ``fo_p90``, ``fo_iqr``, ``fo_min``, ``fo_max``;
    - shape: ``shape_volume_ml``, ``shape_surface_mm2`` (count of exposed voxel faces x face area; no marching
      cubes, so it overestimates a smooth surface by up to ~1.5x), ``shape_sphericity``
      (``pi^(1/3) (6V)^(2/3) / A``, hence < 1 for a voxelised sphere), ``shape_elongation`` and ``shape_flatness``
      (``sqrt(lambda_minor / lambda_major)``, ``sqrt(lambda_least / lambda_major)`` of the physical-coordinate PCA);
    - texture: GLCM ``glcm_contrast``, ``glcm_homogeneity``, ``glcm_energy``, ``glcm_correlation``, distance 1,
      averaged over the 13 3D directions, on the image quantised inside the mask's bounding box into ``n_bins``
      equal bins between the masked min and max (or fixed ``bin_width``, PyRadiomics' default style).
    """
    image = np.asarray(image, float)
    mask = np.asarray(mask).astype(bool)
    if image.shape != mask.shape or tuple(image.shape) != tuple(geometry.shape):
        raise InputError(f"image {image.shape}, mask {mask.shape} and geometry {geometry.shape} must match.")
    if mask.sum() < 2:
        raise InputError("radiomics need a mask with at least 2 voxels; the mask is (nearly) empty.")
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    img, m = image[box], mask[box]
    x = img[m]
    mean, sd = float(x.mean()), float(x.std())
    c = x - mean
    m2 = float((c ** 2).mean())
    skew = float((c ** 3).mean() / m2 ** 1.5) if m2 > 0 else 0.0
    kurt = float((c ** 4).mean() / m2 ** 2) if m2 > 0 else 0.0
    if bin_width is not None:
        q = np.floor((img - x.min()) / bin_width).astype(int) + 1
        nb = int(q[m].max())
    else:
        nb = int(n_bins)
        span = x.max() - x.min()
        q = (np.floor((img - x.min()) / span * nb).astype(int) + 1) if span > 0 else np.ones(img.shape, int)
    q = np.clip(q, 1, nb)
    counts = np.bincount(q[m], minlength=nb + 1)[1:].astype(float)
    pk = counts[counts > 0] / counts.sum()
    pct = np.percentile(x, [10, 25, 50, 75, 90])
    out = {"fo_mean": mean, "fo_sd": sd, "fo_skewness": skew, "fo_kurtosis": kurt,
           "fo_entropy": float(-(pk * np.log2(pk)).sum()), "fo_p10": float(pct[0]), "fo_p25": float(pct[1]),
           "fo_median": float(pct[2]), "fo_p75": float(pct[3]), "fo_p90": float(pct[4]),
           "fo_iqr": float(pct[3] - pct[1]), "fo_min": float(x.min()), "fo_max": float(x.max())}
    # shape
    sx, sy, sz = geometry.spacing
    face_area = {0: sx * sy, 1: sx * sz, 2: sy * sz}  # axis k (z) faces, axis j (y) faces, axis i (x) faces
    padded = np.pad(m, 1)
    area = 0.0
    for axis in range(3):
        area += float(np.count_nonzero(np.diff(padded.astype(np.int8), axis=axis))) * face_area[axis]
    vol_mm3 = float(m.sum()) * sx * sy * sz
    out["shape_volume_ml"] = vol_mm3 / 1000.0
    out["shape_surface_mm2"] = area
    out["shape_sphericity"] = float(math.pi ** (1 / 3) * (6 * vol_mm3) ** (2 / 3) / area)
    pts = _physical_points(idx, geometry)
    ev = np.sort(np.clip(np.linalg.eigvalsh(np.cov(pts.T)), 0, None)) if len(pts) > 3 else np.zeros(3)
    out["shape_elongation"] = float(np.sqrt(ev[1] / ev[2])) if ev[2] > 0 else 0.0
    out["shape_flatness"] = float(np.sqrt(ev[0] / ev[2])) if ev[2] > 0 else 0.0
    out.update(_glcm_features(q, m, nb))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Response features from (real or virtual) follow-ups
# ----------------------------------------------------------------------------------------------------------------

def _week_of(key: Any) -> int:
    if isinstance(key, str):
        s = key.strip().lower().lstrip("w")
        return int(float(s))
    return int(key)


def _mrecist(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, str):
        return float(MRECIST_ORDINAL.get(value.strip().upper(), np.nan))
    v = float(value)
    return v if not math.isnan(v) else float("nan")


def response_features(readings_by_week: Mapping[Any, Mapping[str, Any]], weeks=(8, 16),
                      up_to_week: int | None = None) -> dict[str, float]:
    """Response features from per-time-point readings ``{week: {...}}`` (week as int or ``"w08"``; week 0 =
    baseline). Reading keys used: ``viable_volume_ml``, ``sum_viable_mm`` (mRECIST sum of viable diameters),
    ``tumor_volume_ml``, ``category_mrecist`` ("CR"/"PR"/"SD"/"PD" or the ordinal 0-3 of
    :data:`MRECIST_ORDINAL`, higher = worse), ``new_lesion`` (0/1).

    Returns for each week w in ``weeks`` (suffix ``_wWW``): ``rel_change_viable_volume``, ``rel_change_sum_viable``
    (relative to baseline, e.g. -0.3 = 30% smaller), ``rel_change_tumor_volume``, ``mrecist`` (ordinal),
    ``responder`` (CR/PR), plus over all weeks <= ``up_to_week`` (default: the last of ``weeks``): ``best_mrecist``,
    ``progression`` (any PD) and ``last_rel_change_viable_volume``. Missing readings give NaN (the caller decides
    how to impute). Only weeks <= ``up_to_week`` are used, so a landmark model at 8 weeks never sees week 16.
    """
    by_week = {_week_of(k): dict(v) for k, v in readings_by_week.items()}
    up_to = max(weeks) if up_to_week is None else int(up_to_week)
    base = by_week.get(0, {})
    out: dict[str, float] = {}

    def rel(reading, key):
        b, v = base.get(key), reading.get(key)
        if b is None or v is None:
            return float("nan")
        b, v = float(b), float(v)
        if b <= 0:
            return 0.0 if v <= 0 else float("nan")
        return (v - b) / b

    seen = sorted(w for w in by_week if 0 < w <= up_to)
    for w in weeks:
        r = by_week.get(w, {}) if w <= up_to else {}
        tag = f"_w{w:02d}"
        out["rel_change_viable_volume" + tag] = rel(r, "viable_volume_ml") if r else float("nan")
        out["rel_change_sum_viable" + tag] = rel(r, "sum_viable_mm") if r else float("nan")
        out["rel_change_tumor_volume" + tag] = rel(r, "tumor_volume_ml") if r else float("nan")
        cat = _mrecist(r.get("category_mrecist")) if r else float("nan")
        out["mrecist" + tag] = cat
        out["responder" + tag] = float(cat <= 1) if not math.isnan(cat) else float("nan")
    cats = [_mrecist(by_week[w].get("category_mrecist")) for w in seen]
    cats = [c for c in cats if not math.isnan(c)]
    news = [float(by_week[w].get("new_lesion", 0) or 0) for w in seen]
    out["best_mrecist"] = float(min(cats)) if cats else float("nan")
    out["progression"] = float(any(c == 3 for c in cats) or any(news)) if seen else float("nan")
    out["last_rel_change_viable_volume"] = rel(by_week[seen[-1]], "viable_volume_ml") if seen else float("nan")
    return out
