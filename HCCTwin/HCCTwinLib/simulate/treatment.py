"""Mechanistic growth / kill model per lesion, per regimen, on a fine time grid (months).

Every lesion (visible, occult micro-lesion, and the portal-vein tumour thrombus) has a viable volume ``V`` that grows
exponentially at the patient's rate (times a lesion factor) and is killed by the regimen's components:

- **TACE** (conventional, lipiodol): instantaneous kill fraction ``1 - exp(-kappa)`` per session, with ``kappa``
  the patient's sensitivity times the lesion's vascularity (hypovascular 0.25), size (large tumours are incompletely
  embolised) and coverage (lesions outside the treated lobe in bilobar multifocal disease 0.45, occult lesions in the
  treated lobe 0.6, PVTT 0.15). Sessions at day 1 and on demand at 6 and 15 weeks while viable tumour persists. The
  killed tumour becomes lipiodol-laden necrosis (resorbed slowly, lipiodol washes out over ~20 months).
- **HAIC** (FOLFOX every 3 weeks): a continuous kill rate during the cycles, little dependent on vascularity,
  reaching every intrahepatic lesion (multifocal and occult disease) and stronger on PVTT; sensitivity wanes.
- **Lenvatinib (TKI)**: kill rate proportional to the growth rate (cytostatic-devascularising), waning by acquired
  resistance; reduces the arterial enhancement of viable tumour.
- **PD-1 inhibitor**: a minority of patients respond immunologically (more often when combined with a locoregional
  treatment that releases antigens); responders get a durable kill rate after a lag.
- **Resection**: removes every visible lesion and the PVTT (Vp1-2), and occult lesions inside the resected region.

Killed tumour becomes necrosis that is resorbed (half-life 2.5 months; lipiodol-laden 8 months), which is what
makes treated lesions first stay large with a non-enhancing centre and then shrink. All randomness sits in the
patient's :class:`Biology` (drawn once); a regimen only changes the program, so counterfactual trajectories of one
patient differ by the treatment effect alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import lfilter

DT = 0.1  # months
T_MAX = 72.0  # months
TIME = np.round(np.arange(0.0, T_MAX + DT / 2, DT), 6)
MONTHS_PER_WEEK = 7.0 / 30.4375
MAX_LESION_ML = 3000.0

RHO_KILL = np.log(2) / 2.5  # resorption of treatment necrosis (per month)
RHO_LIP = np.log(2) / 8.0  # resorption of lipiodol-laden necrosis
RHO_SPONT = np.log(2) / 12.0  # resorption of a spontaneous core once the tumour is killed
TAU_LIPIODOL = 20.0  # months, wash-out of the lipiodol density
HAIC_CYCLE_WEEKS = 3.0
TACE_REPEAT_FACTOR = 0.65  # each repeated TACE session kills less (refractoriness)


@dataclass(frozen=True)
class Program:
    """What a regimen does, in simulator terms."""

    tace: bool = False
    haic_cycles: int = 0
    pd1: bool = False
    tki: bool = False
    resection: str | None = None  # None, "direct" or "neoadjuvant"
    adjuvant_pd1_months: float = 0.0

    @property
    def locoregional(self) -> bool:
        return self.tace or self.haic_cycles > 0


#: Programs of the packaged catalogue's regimens.
PROGRAMS: dict[str, Program] = {
    "tace_pd1_len": Program(tace=True, pd1=True, tki=True),
    "haic_pd1_len": Program(haic_cycles=6, pd1=True, tki=True),
    "pd1_tki": Program(pd1=True, tki=True),
    "neoadj_haic_pd1_len_resection": Program(haic_cycles=4, pd1=True, tki=True, resection="neoadjuvant",
                                             adjuvant_pd1_months=12.0),
    "resection": Program(resection="direct"),
}


def program_for(regimen_id: str, catalogue=None) -> Program:
    """The simulator program of a regimen: the packaged ones by id, a site's own regimen from its component classes
    (chemoembolization -> TACE, arterial infusion -> HAIC, PD-1/PD-L1, kinase inhibitor, resection)."""
    if regimen_id in PROGRAMS:
        return PROGRAMS[regimen_id]
    from ..regimens import get_regimen

    reg = get_regimen(regimen_id, catalogue)
    classes = " ".join(c.drug_class.lower() for c in reg.components)
    surgery = "resection" in classes or "hepatectomy" in classes or "surg" in classes
    haic = "infusion" in classes
    return Program(tace="chemoembolization" in classes, haic_cycles=(4 if surgery else 6) if haic else 0,
                   pd1="pd-1" in classes or "pd-l1" in classes, tki="kinase" in classes,
                   resection=("neoadjuvant" if (haic or "chemoembolization" in classes) else "direct") if surgery
                   else None)


@dataclass
class Biology:
    """A patient's latent tumour biology and treatment sensitivities (shared by all regimens)."""

    growth: np.ndarray  # per lesion, 1/month (index = lesion index)
    pvtt_growth: float
    tace_kappa: float  # patient TACE sensitivity (log-kill per session)
    haic_rate: float  # patient HAIC kill rate (1/month)
    haic_tau: float  # months over which HAIC sensitivity wanes
    tki_rel: float  # TKI kill rate relative to growth
    tki_tau: float  # months to acquired TKI resistance
    io_u: float  # uniform: immune response if io_u < p(response | regimen)
    io_rate: float  # 1/month kill rate of responders
    io_tau: float  # months, durability of the immune response
    lesion_het: np.ndarray  # per lesion sensitivity factor (all modalities)
    e_death: float  # Exp(1) for the death time (common random number)
    e_met: float  # Exp(1) for the distant-metastasis time
    censor_months: float  # administrative censoring / loss to follow-up

    def io_probability(self, prog: Program) -> float:
        """Probability of an immune response under a program (higher with antigen-releasing locoregional therapy)."""
        if not prog.pd1:
            return 0.0
        return 0.33 if prog.locoregional else 0.24

    def io_responder(self, prog: Program) -> bool:
        return self.io_u < self.io_probability(prog)


@dataclass
class Trajectory:
    """One regimen's course on :data:`TIME` (volumes in mL, arrays shape (n_lesions, n_time) or (n_time,))."""

    regimen: str
    program: Program
    V: np.ndarray
    Nsp: np.ndarray
    Nkill: np.ndarray
    Nlip: np.ndarray
    P: np.ndarray  # PVTT viable volume
    devasc: np.ndarray
    lip_level: np.ndarray
    resected: np.ndarray  # bool per lesion
    resection_time: float | None
    pvtt_resected: bool
    tace_sessions: list = field(default_factory=list)
    haic_end: float = 0.0
    io_responder: bool = False
    tox: np.ndarray | None = None  # extra log-hazard of death (toxicity, decompensation)
    periop: np.ndarray | None = None  # extra hazard of death (perioperative), per month
    surgery_cancelled: bool = False

    def index(self, t_months: float) -> int:
        return int(np.clip(np.rint(t_months / DT), 0, len(TIME) - 1))

    def burden(self) -> np.ndarray:
        """Total viable intrahepatic tumour volume (mL) over time."""
        return self.V.sum(axis=0)

    def diameter_sum(self) -> np.ndarray:
        """Sum of the lesions' equivalent viable diameters (mm) over time: grows with the number of lesions."""
        return (2.0 * np.cbrt(self.V * 750.0 / np.pi)).sum(axis=0)


def _first_order_filter(x: np.ndarray, rho: float) -> np.ndarray:
    """y[n] = y[n-1] * exp(-rho dt) + x[n-1] (along the last axis): a resorbing pool fed by x."""
    a = np.exp(-rho * DT)
    y = lfilter([0.0, 1.0], [1.0, -a], x, axis=-1)
    return y


def run_program(regimen: str, prog: Program, bio: Biology, lesions, pvtt, clinical: dict,
                resection_ids: set | None = None) -> Trajectory:
    """Simulate one regimen for one patient."""
    n = len(lesions)
    nt = len(TIME)
    t = TIME
    V0 = np.array([les.volume0_ml * (1.0 - les.necrosis0) for les in lesions])
    g = bio.growth[:n]
    het = bio.lesion_het[:n]
    hyper = np.array([les.hypervascular for les in lesions])
    occult = np.array([les.occult for les in lesions])
    diam0 = np.array([les.diameter_mm(les.volume0_ml) for les in lesions])
    responder = bio.io_responder(prog)

    # ---- continuous kill rates (n, nt) -------------------------------------------------------------------------
    k = np.zeros((n, nt))
    k_pvtt = np.zeros(nt)
    devasc = np.zeros(nt)
    resect_t = None
    if prog.resection == "direct":
        resect_t = 0.7
    elif prog.resection == "neoadjuvant":
        resect_t = prog.haic_cycles * HAIC_CYCLE_WEEKS * MONTHS_PER_WEEK + 0.75
    systemic_end = T_MAX + 1
    if prog.resection == "neoadjuvant":
        systemic_end = resect_t - 0.25  # lenvatinib paused before surgery
    if prog.tki:
        on = (t < systemic_end).astype(float)
        wane = np.exp(-t / bio.tki_tau)
        k += bio.tki_rel * g[:, None] * het[:, None] * (wane * on)[None, :]
        k_pvtt += bio.tki_rel * bio.pvtt_growth * wane * on
        devasc = 0.45 * np.clip(bio.tki_rel, 0, 1.5) / 1.5 * wane * on * (1.0 - np.exp(-t / 0.5))
    if prog.pd1 and responder:
        pd1_end = systemic_end if prog.resection != "neoadjuvant" else resect_t + prog.adjuvant_pd1_months
        on = (t < pd1_end).astype(float)
        ramp = (1.0 - np.exp(-t / 1.2)) * np.exp(-t / bio.io_tau) * on
        k += bio.io_rate * het[:, None] * ramp[None, :]
        k_pvtt += bio.io_rate * ramp
    haic_end = 0.0
    if prog.haic_cycles:
        haic_end = prog.haic_cycles * HAIC_CYCLE_WEEKS * MONTHS_PER_WEEK
        on = (t < haic_end).astype(float)
        vasc = np.ones(n)  # chemotherapy reaches hypovascular tumour as well (unlike embolisation)
        wane = np.exp(-t / bio.haic_tau) * on
        k += bio.haic_rate * (vasc * het)[:, None] * wane[None, :]
        k_pvtt += 1.6 * bio.haic_rate * wane
    rate = g[:, None] - k
    logV = np.log(np.maximum(V0, 1e-9))[:, None] + np.concatenate(
        [np.zeros((n, 1)), np.cumsum(rate[:, :-1], axis=1) * DT], axis=1)
    P0 = pvtt.volume0_ml if pvtt is not None else 0.0
    logP = (np.log(max(P0, 1e-9)) + np.concatenate([[0.0], np.cumsum(bio.pvtt_growth - k_pvtt[:-1]) * DT])
            if pvtt is not None else np.full(nt, -np.inf))

    # ---- TACE sessions (on demand) ------------------------------------------------------------------------------
    sessions: list[float] = []
    lip_in = np.zeros((n, nt))
    if prog.tace:
        dominant_lobe = lesions[0].lobe
        n_visible = int((~occult).sum())
        lobes_visible = {les.lobe for les in lesions if not les.occult}
        bilobar_multi = len(lobes_visible) > 1 and n_visible >= 4
        cover = np.ones(n)
        for i, les in enumerate(lesions):
            if les.occult:
                cover[i] = 0.5 if les.lobe == dominant_lobe else (0.2 if len(lobes_visible) > 1 else 0.0)
            elif bilobar_multi and les.lobe != dominant_lobe:
                cover[i] = 0.4
            elif n_visible >= 4:
                cover[i] = 0.5  # beyond up-to-seven: too many nodules for superselective TACE of each
            elif n_visible == 1:
                cover[i] = 1.2  # a solitary tumour gets a superselective, complete embolisation
        # superselective TACE of small tumours is the most complete; large ones are incompletely embolised
        size = np.select([diam0 <= 30, diam0 <= 50, diam0 <= 100], [1.6, 1.3, 1.0], 0.6)
        vasc = np.where(hyper, 1.0, 0.25)
        capsule = np.array([1.25 if les.capsule_mm > 0 else 1.0 for les in lesions])  # lipiodol retention
        kappa = bio.tace_kappa * vasc * size * cover * capsule * het
        baseline_viable = np.exp(logV[:, 0])
        for ts, needs_residual in ((0.03, False), (1.4, True), (3.5, True), (6.5, True)):
            # diminishing returns of repeated sessions (TACE refractoriness)
            f = np.minimum(1.0 - np.exp(-kappa * TACE_REPEAT_FACTOR ** len(sessions)), 1.0 - 1e-9)
            f_pvtt = 1.0 - np.exp(-0.15 * bio.tace_kappa * TACE_REPEAT_FACTOR ** len(sessions))
            i_s = int(np.ceil(ts / DT))
            if needs_residual:
                frac = np.exp(logV[~occult, i_s]) / np.maximum(baseline_viable[~occult], 1e-9)
                if not np.any(frac >= 0.2):
                    continue
            vol_before = np.exp(logV[:, i_s])
            lip_in[:, i_s] += f * vol_before
            logV[:, i_s:] += np.log1p(-f)[:, None] - 0.0
            if pvtt is not None:
                logP[i_s:] += np.log1p(-f_pvtt)
            sessions.append(float(TIME[i_s]))
    # ---- resection -------------------------------------------------------------------------------------------------
    resected = np.zeros(n, bool)
    pvtt_resected = False
    if prog.resection is not None:
        i_r = int(np.ceil(resect_t / DT))
        go = True
        if prog.resection == "neoadjuvant":
            # no surgery after progression during the neoadjuvant phase: then HAIC continues as palliative therapy
            vis = ~occult
            grow = np.exp(logV[vis, i_r]).sum() / max(np.exp(logV[vis, 0]).sum(), 1e-9)
            new = np.any(occult & (2 * np.cbrt(np.exp(logV[:, i_r]) * 750 / np.pi) >= 10.0))
            go = grow < 1.73 and not new
        if not go:
            # no surgery after progression on neoadjuvant therapy: HAIC + PD-1 + lenvatinib go on as palliation
            palliative = Program(tace=prog.tace, haic_cycles=6 if prog.haic_cycles else 0, pd1=prog.pd1,
                                 tki=prog.tki)
            traj = run_program(regimen, palliative, bio, lesions, pvtt, clinical)
            traj.program = prog
            traj.surgery_cancelled = True
            return traj
        if go:
            ids = resection_ids if resection_ids is not None else {i for i in range(n) if not occult[i]}
            resected = np.array([i in ids for i in range(n)])
            logV[resected, i_r:] = -np.inf
            if pvtt is not None and pvtt.grade <= 2:
                logP[i_r:] = -np.inf
                pvtt_resected = True
    logV = np.minimum(logV, np.log(MAX_LESION_ML))
    V = np.exp(logV)
    P = np.exp(np.minimum(logP, np.log(200.0))) if pvtt is not None else np.zeros(nt)

    # ---- necrosis pools -------------------------------------------------------------------------------------------
    phi = np.where(np.asarray(prog.haic_cycles > 0), 0.8, 0.5)
    killed = k * V * DT * phi
    Nkill = _first_order_filter(killed, RHO_KILL)
    Nlip = _first_order_filter(lip_in, RHO_LIP)
    # lip_in at index i_s is added from index i_s + 1 on (filter delay); shift it to appear at the session index
    Nlip = np.concatenate([Nlip[:, 1:], Nlip[:, -1:] * np.exp(-RHO_LIP * DT)], axis=1)
    c_sp = np.array([les.necrosis0 / max(1 - les.necrosis0, 1e-6) for les in lesions])
    Nsp = c_sp[:, None] * np.maximum(V, V0[:, None] * np.exp(-RHO_SPONT * t)[None, :])
    if resect_t is not None:
        i_r = int(np.ceil(resect_t / DT))
        for arr in (Nkill, Nlip, Nsp):
            arr[resected, i_r:] = 0.0
    lip_level = np.ones(nt)
    if sessions:
        last = np.full(nt, np.nan)
        for s in sessions:
            last[TIME >= s] = s
        lip_level = np.where(np.isnan(last), 1.0, np.exp(-(t - np.nan_to_num(last)) / TAU_LIPIODOL))
        # a new session tops the lipiodol up; the first deposit is the densest
        first = sessions[0]
        lip_level = np.where(t >= first, np.maximum(lip_level, np.exp(-(t - first) / TAU_LIPIODOL)), 1.0)

    traj = Trajectory(regimen=regimen, program=prog, V=V, Nsp=Nsp, Nkill=Nkill, Nlip=Nlip, P=P, devasc=devasc,
                      lip_level=lip_level, resected=resected, resection_time=resect_t, pvtt_resected=pvtt_resected,
                      tace_sessions=sessions, haic_end=haic_end, io_responder=responder)
    traj.tox, traj.periop = _toxicity(prog, traj, clinical, pvtt, lesions)
    return traj


def _toxicity(prog: Program, traj: Trajectory, clinical: dict, pvtt, lesions):
    """Extra log-hazard of death from treatment toxicity / decompensation, and perioperative hazard."""
    t = TIME
    tox = np.zeros(len(t))
    albi_grade = clinical.get("_albi_grade", 1)
    cp = clinical.get("child_pugh_points", 5)
    vp = pvtt.grade if pvtt is not None else 0
    for s in traj.tace_sessions:
        win = (t >= s) & (t < s + 3.0)
        n_vis = sum(1 for les in lesions if not les.occult)
        # post-embolisation liver injury, worse with many nodules and poorer liver function
        extra = (0.05 + 0.15 * (n_vis >= 4) + 0.12 * (albi_grade == 2) + 0.3 * (albi_grade >= 3) + 0.25 * (cp >= 7)
                 + (0.7 if vp >= 3 else 0.0))
        tox[win] += extra
    if prog.haic_cycles:
        win = t < traj.haic_end
        tox[win] += 0.12 * (cp >= 7) + 0.1 * (albi_grade >= 2)
    periop = np.zeros(len(t))
    if traj.resection_time is not None:
        n_vis = sum(1 for les in lesions if not les.occult)
        dmax = max(les.diameter_mm(les.volume0_ml) for les in lesions if not les.occult)
        h_total = 0.015 + 0.02 * (dmax > 50 or n_vis > 1) + 0.02 * (vp > 0) + 0.02 * (albi_grade >= 2) + \
            0.01 * (clinical.get("age_years", 60) > 70)
        if prog.resection == "neoadjuvant":
            h_total += 0.01
        win = (t >= traj.resection_time) & (t < traj.resection_time + 3.0)
        periop[win] = h_total / 3.0
    return tox, periop
