"""Outcomes of a regimen's trajectory: mRECIST on 8-weekly scans, progression, distant metastasis and death.

**Death** follows a Weibull baseline (shape ``k``) with a Cox-style linear predictor (clinical reference notes,
simulator recipe) that is *time-varying* through the tumour: liver function (ALBI, Child-Pugh), ECOG, AFP, age,
macrovascular invasion grade, baseline burden, plus the log-ratio of the current viable intrahepatic burden and of
the PVTT volume to their baselines (response lowers the hazard, progression raises it), treatment toxicity,
perioperative mortality, and distant metastasis (hazard x ``exp(beta_met)`` from its onset).

**Distant metastasis** has its own hazard, rising with tumour size, nodule number, AFP and PVTT and with the current
intrahepatic burden (as reported for metastasis after TACE).

Random times come from the patient's common random numbers ``E ~ Exp(1)``: ``T = H^-1(E)``, so a patient's
counterfactual times under two regimens differ only through the hazards. ``rmst24`` is the *expected* restricted
mean survival to 24 months from the true hazard, integrating over the metastasis time (no sampling noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .lesions import MEASURABLE_MM, VISIBLE_MM, LesionState, nodule_stretch, r_eq_mm
from .treatment import DT, MONTHS_PER_WEEK, T_MAX, TIME, Trajectory

RESPONSE_ORDER = {"CR": 0, "PR": 1, "SD": 2, "PD": 3, "NE": 4}


@dataclass(frozen=True)
class HazardParams:
    """Calibrated hazard constants (months)."""

    shape: float = 1.5
    scale_months: float = 20.5  # Weibull scale of the reference patient (LP = 0, burden unchanged)
    b_albi: float = 0.4  # per ALBI unit above -2.6
    b_cp: float = 0.1  # per Child-Pugh point above 5
    b_ecog: float = 0.15
    b_afp: float = 0.12  # per log10(AFP / 20 ng/mL), AFP above 20
    b_age: float = 0.08  # per decade above 60
    b_vp: tuple = (0.0, 0.1, 0.2, 0.35, 0.55)  # by Vp grade 0..4
    b_burden0: float = 0.12  # per log(1 + baseline viable mL) above log(1 + 50)
    b_hypovascular: float = 0.15
    g_burden: float = 0.4  # per log ratio of current to baseline viable volume, below baseline (response)
    g_diam: float = 0.4  # per log ratio of current to baseline sum of viable diameters (number of lesions)
    g_burden_prog: float = 0.1  # same, above baseline (progression; second-line therapy blunts it)
    g_diam_prog: float = 0.3
    burden_floor_ml: float = 0.2
    diam_floor_mm: float = 8.0
    g_pvtt: float = 0.5  # per log ratio of current to baseline PVTT volume
    b_met: float = 0.45  # after distant metastasis (or extrahepatic spread at baseline)
    met_rate: float = 0.014  # per month, reference patient (50 mm, 1 nodule, AFP 20, no PVTT)
    m_size: float = 0.6  # per log(max diameter / 50 mm)
    m_number: float = 0.3  # per log(n tumours)
    m_afp: float = 0.25  # per log10(AFP / 20)
    m_pvtt: float = 0.5
    m_burden: float = 0.45  # per log ratio of current to baseline burden
    m_io: float = -0.5  # immune responders on PD-1


PARAMS = HazardParams()


@dataclass
class Outcome:
    """One regimen's outcome for one patient (uncensored truth)."""

    regimen: str
    os_months: float
    pfs_months: float
    pfs_reason: str
    metastasis_months: float  # inf when it never happens before T_MAX (or 0 when present at baseline)
    best_response: str
    responses: list  # (week, response) of the assessments until progression/death
    rmst24: float
    io_responder: bool
    resection_months: float | None
    extra: dict = field(default_factory=dict)
    #: expected probability of distant metastasis within 24 months while alive (1.0 when present at baseline)
    metastasis_risk24: float = float("nan")


def static_lp(clinical: dict, lesions, pvtt, hyper_all: bool, p: HazardParams = PARAMS) -> float:
    lp = p.b_albi * (clinical["_albi"] + 2.6)
    lp += p.b_cp * (clinical["child_pugh_points"] - 5)
    lp += p.b_ecog * clinical["ecog"]
    lp += p.b_afp * max(np.log10(max(clinical["afp_ng_ml"], 1.0) / 20.0), 0.0)
    lp += p.b_age * max(clinical["age_years"] - 60, 0) / 10.0
    lp += p.b_vp[pvtt.grade if pvtt is not None else 0]
    v0 = sum(les.volume0_ml * (1 - les.necrosis0) for les in lesions if not les.occult)
    lp += p.b_burden0 * (np.log1p(v0) - np.log1p(50.0))
    lp += p.b_hypovascular * (not hyper_all)
    return float(lp)


def death_hazard(traj: Trajectory, lp: float, p: HazardParams = PARAMS) -> np.ndarray:
    """Hazard of death per month on TIME, before any distant metastasis (periop hazard added)."""
    t_mid = TIME + DT / 2
    lam = 1.0 / p.scale_months
    base = p.shape * lam * (lam * t_mid) ** (p.shape - 1)
    B = traj.burden()
    lr_b = np.clip(np.log((B + p.burden_floor_ml) / (B[0] + p.burden_floor_ml)), -4.0, 3.0)
    D = traj.diameter_sum()
    lr_d = np.clip(np.log((D + p.diam_floor_mm) / (D[0] + p.diam_floor_mm)), -2.5, 2.0)
    # response lowers the hazard more steeply than progression raises it (second-line therapy after progression)
    dyn = (p.g_burden * np.minimum(lr_b, 0) + p.g_burden_prog * np.maximum(lr_b, 0)
           + p.g_diam * np.minimum(lr_d, 0) + p.g_diam_prog * np.maximum(lr_d, 0))
    if traj.P[0] > 0:
        dyn = dyn + p.g_pvtt * np.clip(np.log((traj.P + 0.2) / (traj.P[0] + 0.2)), -4.0, 3.0)
    h = base * np.exp(lp + dyn + traj.tox)
    return h + traj.periop


def metastasis_static_lp(clinical: dict, lesions, pvtt, p: HazardParams = PARAMS) -> float:
    """The pre-treatment part of the metastasis hazard's linear predictor (size, nodules, AFP, PVTT)."""
    vis = [les for les in lesions if not les.occult]
    dmax = max(les.diameter_mm(les.volume0_ml) for les in vis)
    lp = p.m_size * np.log(dmax / 50.0) + p.m_number * np.log(len(vis))
    lp += p.m_afp * np.log10(max(clinical["afp_ng_ml"], 1.0) / 20.0) + p.m_pvtt * (pvtt is not None)
    return float(lp)


def metastasis_hazard(traj: Trajectory, clinical: dict, lesions, pvtt, p: HazardParams = PARAMS) -> np.ndarray:
    lp = metastasis_static_lp(clinical, lesions, pvtt, p)
    B = traj.burden()
    dyn = p.m_burden * np.clip(np.log((B + 1.0) / (B[0] + 1.0)), -3.0, 2.0)
    if traj.io_responder:
        dyn = dyn + p.m_io
    return p.met_rate * np.exp(lp + dyn)


def _cumulative(h: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(h[:-1]) * DT])


def invert(H: np.ndarray, h: np.ndarray, e: float) -> float:
    """First time the cumulative hazard reaches ``e`` (linear within a step; constant hazard beyond T_MAX)."""
    if H[-1] < e:
        return float(T_MAX + (e - H[-1]) / max(h[-1], 1e-12))
    n = int(np.searchsorted(H, e, side="left"))
    if n == 0:
        return 0.0
    frac = (e - H[n - 1]) / max(H[n] - H[n - 1], 1e-300)
    return float(TIME[n - 1] + frac * DT)


def death_time(h0: np.ndarray, met_time: float, e: float, p: HazardParams = PARAMS) -> float:
    h = h0.copy()
    if met_time < T_MAX:
        h[TIME + DT / 2 >= met_time] *= np.exp(p.b_met)
    return invert(_cumulative(h), h, e)


def rmst(h0: np.ndarray, hm: np.ndarray | None, tau: float = 24.0, p: HazardParams = PARAMS) -> float:
    """Expected restricted mean survival to ``tau`` months; ``hm`` None = metastatic from baseline."""
    n = int(round(tau / DT)) + 1
    H0 = _cumulative(h0)[:n]
    c = np.exp(p.b_met)
    if hm is None:
        S = np.exp(-c * H0)
    else:
        Hm = _cumulative(hm)[:n]
        no_met = np.exp(-Hm - H0)
        dens = hm[:n] * np.exp(-Hm - H0 + c * H0) * DT  # metastasis at m, alive until then
        # S(t) = no_met(t) + sum_{m < t} dens[m] * exp(-c H0(t))
        S = no_met + np.concatenate([[0.0], np.cumsum(dens[:-1])]) * np.exp(-c * H0)
    return float(np.sum(0.5 * (S[1:] + S[:-1])) * DT)


def metastasis_risk(h0: np.ndarray, hm: np.ndarray | None, tau: float = 24.0) -> float:
    """Expected probability of distant metastasis by ``tau`` months before death (cumulative incidence with death as
    a competing risk, from the true hazards: no sampling noise); 1.0 for ``hm`` None (metastatic from baseline)."""
    if hm is None:
        return 1.0
    n = int(round(tau / DT))
    Hm, H0 = _cumulative(hm)[:n], _cumulative(h0)[:n]
    return float(np.sum(hm[:n] * np.exp(-Hm - H0)) * DT)


# -------------------------------------------------------------------------------------------------------------------
# lesion states and mRECIST
# -------------------------------------------------------------------------------------------------------------------

def lesion_state(traj: Trajectory, i: int, it: int) -> LesionState:
    nk, nl = float(traj.Nkill[i, it]), float(traj.Nlip[i, it])
    return LesionState(viable_ml=float(traj.V[i, it]), necrosis_ml=float(traj.Nsp[i, it]) + nk + nl,
                       treated_ml=nk + nl, lipiodol_ml=nl, lipiodol_level=float(traj.lip_level[it]),
                       devasc=float(traj.devasc[it]),
                       resected=bool(traj.resected[i]) and traj.resection_time is not None
                       and TIME[it] >= traj.resection_time)


def viable_diameters(traj: Trajectory, lesions, idx: np.ndarray) -> np.ndarray:
    """Measured viable diameters (mm), shape (n_lesions, len(idx)), following the drawing rules of lesions.py."""
    V = traj.V[:, idx]
    N = traj.Nsp[:, idx] + traj.Nkill[:, idx] + traj.Nlip[:, idx]
    treated = traj.Nkill[:, idx] + traj.Nlip[:, idx]
    tot = V + N
    nodule = treated >= 0.1 * tot
    fac = np.array([les.axial_factor for les in lesions])[:, None]
    d_v = 2 * r_eq_mm(V) * fac * np.minimum(nodule_stretch(V, tot), 1.6)
    d_t = 2 * r_eq_mm(tot) * fac
    d = np.where(nodule, d_v, d_t)
    d = np.where(2 * r_eq_mm(V) * fac < VISIBLE_MM, 0.0, d)
    if traj.resection_time is not None:
        gone = traj.resected[:, None] & (TIME[idx] >= traj.resection_time)[None, :]
        d = np.where(gone, 0.0, d)
    return d


def assessment_times(until: float, weeks: int = 8) -> np.ndarray:
    step = weeks * MONTHS_PER_WEEK
    n = int(np.floor(min(until, T_MAX) / step))
    return np.arange(1, n + 1) * step


def assess(traj: Trajectory, lesions, death: float, met: float, weeks: int = 8):
    """mRECIST at every 8-weekly scan until progression or death.

    Targets: the (up to) 2 largest measurable (>= 10 mm) lesions at baseline (mRECIST, 2 per organ); non-targets:
    the other lesions and the PVTT. PD: target sum +20 % and +5 mm over the nadir, unequivocal non-target growth
    (volume x2 and +2 mL), a new intrahepatic lesion >= 10 mm, or distant metastasis. After a resection only
    recurrence (new lesion, metastasis) is assessed and the response is not evaluable.
    Returns (best_response, pfs_months, reason, [(week, response), ...]).
    """
    times = assessment_times(min(death, T_MAX), weeks)
    occult = np.array([les.occult for les in lesions])
    idx0 = np.array([0])
    d0 = viable_diameters(traj, lesions, idx0)[:, 0]
    vis = np.nonzero(~occult)[0]
    order = vis[np.argsort(-d0[vis])]
    targets = [i for i in order if d0[i] >= MEASURABLE_MM][:2]
    nontargets = [i for i in vis if i not in targets]
    responses = []
    best = "NE"
    if len(times) == 0:
        return best, death, "death", responses
    idx = np.clip(np.rint(times / DT).astype(int), 0, len(TIME) - 1)
    D = viable_diameters(traj, lesions, idx)
    V = traj.V[:, idx]
    Vnt0 = traj.V[nontargets, 0].sum() + traj.P[0]
    s0 = d0[targets].sum()
    nadir_s, nadir_nt = s0, Vnt0
    res_t = traj.resection_time
    for j, tj in enumerate(times):
        week = int(round(tj / MONTHS_PER_WEEK))
        post_op = res_t is not None and tj >= res_t
        new = bool(np.any(occult & (D[:, j] >= MEASURABLE_MM)))
        if met <= tj:
            responses.append((week, "PD"))
            return _best(best, "PD", post_op), tj, "metastasis", responses
        if new:
            responses.append((week, "PD"))
            return _best(best, "PD", post_op), tj, "new_lesion", responses
        if post_op:
            responses.append((week, "NE"))
            continue
        s = D[targets, j].sum()
        nt = V[nontargets, j].sum() + traj.P[idx[j]]
        if targets and s >= 1.2 * nadir_s and s - nadir_s >= 5.0:
            responses.append((week, "PD"))
            return _best(best, "PD"), tj, "target", responses
        if nt > 2.0 * nadir_nt and nt - nadir_nt > 2.0:
            responses.append((week, "PD"))
            return _best(best, "PD"), tj, "non_target", responses
        all_gone = (D[vis, j] == 0).all() and traj.P[idx[j]] < 0.05
        if all_gone:
            r = "CR"
        elif targets and s <= 0.7 * s0:
            r = "PR"
        else:
            r = "SD"
        responses.append((week, r))
        best = _best(best, r)
        nadir_s = min(nadir_s, s)
        nadir_nt = min(nadir_nt, nt)
    return best, float(death), "death", responses


def _best(best: str, r: str, post_op: bool = False) -> str:
    if post_op:
        return best
    return r if RESPONSE_ORDER[r] < RESPONSE_ORDER[best] else best


def outcome(traj: Trajectory, bio, clinical: dict, lesions, pvtt, ehs: bool, p: HazardParams = PARAMS) -> Outcome:
    hyper_all = all(les.hypervascular for les in lesions if not les.occult)
    lp = static_lp(clinical, lesions, pvtt, hyper_all, p)
    h0 = death_hazard(traj, lp, p)
    if ehs:
        met, hm = 0.0, None
    else:
        hm = metastasis_hazard(traj, clinical, lesions, pvtt, p)
        met = invert(_cumulative(hm), hm, bio.e_met)
    death = death_time(h0, met, bio.e_death, p)
    best, pfs, reason, responses = assess(traj, lesions, death, met if not ehs else np.inf)
    return Outcome(regimen=traj.regimen, os_months=death, pfs_months=min(pfs, death), pfs_reason=reason,
                   metastasis_months=met, best_response=best, responses=responses, rmst24=rmst(h0, hm, 24.0, p),
                   io_responder=traj.io_responder, resection_months=traj.resection_time,
                   extra={"lp": lp, "tace_sessions": len(traj.tace_sessions),
                          "surgery_cancelled": traj.surgery_cancelled},
                   metastasis_risk24=metastasis_risk(h0, hm, 24.0))
