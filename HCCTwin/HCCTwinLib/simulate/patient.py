"""One simulated patient: clinical values, anatomy, lesions, latent biology, regimen assignment and outcomes.

Everything here is grid-independent and drawn from named random streams of ``(seed, patient_index)``, so the same
patient comes out whatever the image size (``fast`` mode only changes the voxel grid, never the clinical values or
the outcomes) and whether or not images are written.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from .anatomy import Anatomy, sample_anatomy
from .imaging import Scanner
from .lesions import PVTT, Lesion, make_pvtt, place_lesions, r_eq_mm
from .outcomes import Outcome, outcome
from .treatment import Biology, Program, Trajectory, program_for, run_program

ETIOLOGIES = ("HBV", "HCV", "alcohol", "MASLD", "other")
ETIOLOGY_P = (0.72, 0.08, 0.08, 0.08, 0.04)
#: How many times a patient is redrawn when no regimen of the catalogue is open to them (study population).
MAX_REDRAWS = 50


def rng_for(seed: int, index: int, stream: str, *keys: int) -> np.random.Generator:
    """Independent random stream for (seed, patient, purpose, keys...)."""
    code = zlib.crc32(stream.encode())
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), code, *map(int, keys))))


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@dataclass
class PatientModel:
    """A patient of the synthetic cohort, before any image is drawn."""

    seed: int
    index: int
    patient_id: str
    clinical: dict  # cohort-layout clinical columns (public)
    latent: dict  # hidden truth (phenotype, sensitivities, ...)
    anatomy: Anatomy
    lesions: list[Lesion]
    pvtt: PVTT | None
    bio: Biology
    scanner: Scanner
    eligible: list[str]
    regimen: str  # received regimen
    resection_ids: set
    propensity: dict = field(default_factory=dict)
    trajectories: dict[str, Trajectory] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def hazard_clinical(self) -> dict:
        return self.latent["_hazard_clinical"]


def _clinical_draw(rng: np.random.Generator) -> dict:
    """Clinical values and the latent factors behind them, for an intermediate-advanced HCC population."""
    sex = "M" if rng.random() < 0.84 else "F"
    age = int(np.clip(np.rint(rng.normal(57, 10.5)), 28, 84))
    etiology = str(rng.choice(ETIOLOGIES, p=ETIOLOGY_P))
    aggr = float(rng.normal())
    z_liv = float(rng.normal())
    n = int(rng.choice(np.arange(1, 9), p=[0.36, 0.14, 0.11, 0.11, 0.09, 0.08, 0.06, 0.05]))
    dmax = float(np.clip(np.exp(rng.normal(np.log(62) + 0.12 * aggr, 0.5)), 12, 150))
    hypo = rng.random() < _sigmoid(-1.7 + 0.45 * aggr)
    pvtt = rng.random() < _sigmoid(-1.75 + 0.9 * (dmax > 50) + 0.6 * (dmax > 100) + 0.35 * (n >= 4) + 0.45 * aggr
                                   + 0.4 * hypo)
    vp = int(rng.choice([1, 2, 3, 4], p=[0.1, 0.25, 0.4, 0.25])) if pvtt else 0
    ehs = rng.random() < _sigmoid(-2.7 + 0.5 * aggr + 0.5 * pvtt + 0.3 * (n >= 4))
    log_afp = 1.55 + 0.7 * aggr + 0.35 * pvtt + 0.3 * np.log(dmax / 50) + rng.normal(0, 0.75)
    afp = float(np.round(10 ** np.clip(log_afp, 0.3, 5.4), 1))
    frail = 0.35 * z_liv + 0.25 * (dmax > 100) + 0.15 * age / 10 + rng.normal(0, 1)
    ecog = 0 if frail < 1.35 else (1 if frail < 2.95 else 2)
    albumin = float(np.round(np.clip(39.5 - 3.9 * z_liv + rng.normal(0, 1.8), 22, 52), 1))
    bili = float(np.round(np.clip(np.exp(np.log(15.0) + 0.38 * z_liv + rng.normal(0, 0.25)), 4, 90), 1))
    inr = float(np.round(np.clip(1.05 + 0.07 * z_liv + rng.normal(0, 0.05), 0.85, 2.4), 2))
    ascites = 0
    if rng.random() < _sigmoid(-3.3 + 1.3 * z_liv):
        ascites = 2 if rng.random() < 0.15 else 1
    enceph = 1 if rng.random() < _sigmoid(-6.0 + 1.4 * z_liv) else 0
    return dict(sex=sex, age=age, etiology=etiology, aggr=aggr, z_liv=z_liv, n=n, dmax=dmax, hypo=hypo, vp=vp,
                ehs=ehs, afp=afp, ecog=ecog, albumin=albumin, bili=bili, inr=inr, ascites=ascites, enceph=enceph)


def _resectable(c: dict, lesions: list[Lesion], cp_class: str, albi_grade: int, rng) -> bool:
    """Surgeon's call (simplified Asian practice): Child-Pugh A, ALBI 1-2, ECOG 0-1, no extrahepatic spread,
    PVTT at most Vp2, at most 3 nodules all in one lobe (or a single tumour of any size up to 13 cm)."""
    vis = [les for les in lesions if not les.occult]
    lobes = {les.lobe for les in vis}
    ok = (cp_class == "A" and albi_grade <= 2 and c["ecog"] <= 1 and not c["ehs"] and c["vp"] <= 2
          and (len(vis) <= 3 or (len(vis) == 4 and c["dmax"] <= 80)) and len(lobes) == 1 and c["dmax"] <= 130)
    return bool(ok and rng.random() < 0.85)


def _assignment_logits(values: dict, scores: dict, hypo: bool, vp: int) -> dict:
    """Treating physicians' preferences (confounding by indication)."""
    n, d = values["n_tumors"], values["max_diameter_mm"]
    bclc = scores["bclc"]
    cp_b = scores["child_pugh_class"] == "B"
    return {
        "tace_pd1_len": 1.4 + 0.3 * (bclc == "B") - 0.6 * (vp in (1, 2)) - 1.6 * (vp >= 3) - 0.5 * hypo
        - 0.4 * (n >= 4) - 0.5 * (d > 100),
        "haic_pd1_len": 0.1 + 1.1 * (vp > 0) + 0.5 * (vp >= 3) + 0.6 * (n >= 4) + 0.7 * (d > 100) + 0.4 * hypo,
        "pd1_tki": 0.5 + 0.6 * values["extrahepatic_spread"] + 0.5 * cp_b + 0.2 * (values["ecog"] >= 1)
        + 0.3 * (n >= 6) + 0.4 * (vp == 4),
        "resection": 1.6 + 0.8 * (bclc in ("0", "A")) - 0.5 * (d > 50) - 0.4 * (n > 1),
        "neoadj_haic_pd1_len_resection": 0.8 + 0.8 * (d > 50) + 0.6 * (n >= 2) + 0.5 * (values["afp_ng_ml"] > 400),
    }


def draw_biology(rng_b: np.random.Generator, aggressiveness: float, n_lesions: int) -> tuple[Biology, float]:
    """A patient's latent biology (growth, treatment sensitivities, event draws) from the population prior given the
    aggressiveness phenotype and the number of lesions; returns ``(biology, doubling time in months)``.

    The only part of a patient that no pre-treatment information reveals: ``benchmarks/generator_ceiling.py`` redraws
    it to measure how well any model that sees everything else can predict the follow-ups."""
    c_aggr, n_les = float(aggressiveness), int(n_lesions)
    td = float(np.clip(np.exp(rng_b.normal(np.log(4.2) - 0.3 * c_aggr, 0.35)), 1.2, 15.0))
    g = np.log(2) / td
    bio = Biology(
        growth=g * np.exp(rng_b.normal(0, 0.15, size=n_les)), pvtt_growth=1.1 * g,
        tace_kappa=float(np.exp(rng_b.normal(np.log(0.7), 0.9))),
        haic_rate=float(np.exp(rng_b.normal(np.log(0.4), 0.75))),
        haic_tau=float(np.exp(rng_b.normal(np.log(8.0), 0.4))),
        tki_rel=float(np.exp(rng_b.normal(np.log(1.3), 0.45))),
        tki_tau=float(np.exp(rng_b.normal(np.log(8.0), 0.5))),
        io_u=float(rng_b.random()), io_rate=float(rng_b.uniform(0.25, 0.6)),
        io_tau=float(np.exp(rng_b.normal(np.log(30.0), 0.4))),
        lesion_het=np.exp(rng_b.normal(0, 0.25, size=n_les)),
        e_death=float(rng_b.exponential()), e_met=float(rng_b.exponential()),
        censor_months=float(min(rng_b.uniform(24, 60), rng_b.exponential(150.0))))
    return bio, td


def sample_patient(seed: int, index: int, catalogue=None) -> PatientModel:
    """Draw patient ``index`` of the cohort of ``seed`` (with outcomes under every eligible regimen)."""
    from .. import clinical as clin
    from ..regimens import eligibility_warnings, load_catalogue

    catalogue = catalogue or load_catalogue()
    patient_id = f"SIM{int(seed):04d}-{int(index):05d}"
    for attempt in range(MAX_REDRAWS):
        rng = rng_for(seed, index, "clinical", attempt)
        c = _clinical_draw(rng)
        rng_l = rng_for(seed, index, "lesions", attempt)
        # lesion sizes: the dominant tumour and satellites; occult micro-lesions (future new lesions)
        sizes = [c["dmax"]] + sorted((float(np.clip(c["dmax"] * rng_l.uniform(0.15, 0.75), 10, c["dmax"]))
                                      for _ in range(c["n"] - 1)), reverse=True)
        hyper = [(not c["hypo"]) if rng_l.random() > 0.1 else c["hypo"] for _ in sizes]
        hyper[0] = not c["hypo"]
        n_occ = int(min(10, rng_l.poisson(0.25 + 0.4 * (c["n"] - 1) + 0.8 * (c["vp"] > 0) + 0.4 * (c["dmax"] > 50)
                                          + 0.3 * max(c["aggr"], 0))))
        occ_d = rng_l.uniform(2.0, 9.0, size=n_occ)
        tumor_ml = float(sum(np.pi / 6 * (d ** 3) / 1000 for d in sizes))
        rng_a = rng_for(seed, index, "anatomy", attempt)
        cirr = float(np.clip(rng_a.normal(0.65 if c["etiology"] in ("HBV", "HCV", "alcohol") else 0.4, 0.2), 0, 1))
        steat = float(np.clip(rng_a.normal(0.45, 0.2) if c["etiology"] in ("MASLD", "alcohol")
                              else rng_a.normal(0.05, 0.08), 0, 1))
        anat = sample_anatomy(rng_a, sex=c["sex"], age=c["age"], cirrhosis=cirr, steatosis=steat,
                              splenomegaly=1.0 + 0.25 * max(c["z_liv"] + 0.5, 0) * cirr, extra_liver_ml=tumor_ml,
                              ascites=c["ascites"])
        lesions = place_lesions(rng_l, anat, sizes, hyper, n_occ, occ_d, satellite_frac=0.65)
        pvtt = make_pvtt(rng_l, anat, lesions[0], c["vp"]) if c["vp"] else None
        # measured values as a radiologist would report them
        vis = [les for les in lesions if not les.occult]
        values = {
            "age_years": c["age"], "sex": c["sex"], "ecog": c["ecog"], "albumin_g_l": c["albumin"],
            "bilirubin_umol_l": c["bili"], "inr": c["inr"], "ascites": c["ascites"], "encephalopathy": c["enceph"],
            "afp_ng_ml": c["afp"], "etiology": c["etiology"], "n_tumors": len(vis),
            "max_diameter_mm": round(max(les.diameter_mm(les.volume0_ml) for les in vis), 1),
            "pvtt": int(c["vp"] > 0), "extrahepatic_spread": int(c["ehs"]),
        }
        cp = clin.child_pugh(c["bili"], c["albumin"], c["inr"], c["ascites"], c["enceph"])
        albi = clin.albi_score(c["bili"], c["albumin"])
        grade = clin.albi_grade(albi)
        values["child_pugh_points"] = cp.points
        values["resectable"] = int(_resectable(c, lesions, cp.cls, grade, rng))
        scores = clin.compute_scores(values)
        values["bclc"] = scores["bclc"]
        eligible = [r for r in catalogue if not eligibility_warnings(r, values, catalogue)]
        if eligible:
            break
    else:  # pragma: no cover - the population makes this practically impossible
        raise RuntimeError(f"patient {index}: no eligible regimen after {MAX_REDRAWS} draws")

    # latent biology (shared by every regimen: common random numbers)
    bio, td = draw_biology(rng_for(seed, index, "biology"), c["aggr"], len(lesions))
    scanner = Scanner.sample(rng_for(seed, index, "scanner"))

    # received regimen: physicians' preference among the eligible ones (Gumbel-max = softmax sampling)
    logits = _assignment_logits(values, scores, c["hypo"], c["vp"])
    rng_t = rng_for(seed, index, "assign")
    gumbel = {r: float(rng_t.gumbel()) for r in catalogue}
    lg = {r: logits.get(r, 0.0) for r in eligible}
    z = np.array(list(lg.values()))
    prop = np.exp(z - z.max())
    prop /= prop.sum()
    regimen = max(eligible, key=lambda r: lg[r] + gumbel[r])

    resection_ids = {les.index for les in vis}
    for les in lesions:
        if les.occult:
            for v in vis:
                reach = float(r_eq_mm(v.volume0_ml)) * float(np.max(v.axes)) + 12.0
                if np.linalg.norm(les.center - v.center) <= reach:
                    resection_ids.add(les.index)
    hazard_clinical = dict(values)
    hazard_clinical["_albi"] = albi
    hazard_clinical["_albi_grade"] = grade
    latent = {
        "aggressiveness": c["aggr"], "liver_dysfunction": c["z_liv"], "hypovascular": bool(c["hypo"]),
        "vp_grade": c["vp"], "doubling_time_months": td, "n_occult": int(sum(les.occult for les in lesions)),
        "cirrhosis": cirr, "steatosis": steat, "albi_score": albi, "albi_grade": grade,
        "child_pugh_class": cp.cls, "_hazard_clinical": hazard_clinical, "draws": attempt + 1,
    }
    model = PatientModel(seed=int(seed), index=int(index), patient_id=patient_id, clinical=values, latent=latent,
                         anatomy=anat, lesions=lesions, pvtt=pvtt, bio=bio, scanner=scanner, eligible=eligible,
                         regimen=regimen, resection_ids=resection_ids,
                         propensity=dict(zip(lg, (float(p) for p in prop))))
    for r in eligible:
        prog = program_for(r, catalogue)
        traj = run_program(r, prog, bio, lesions, pvtt, hazard_clinical, resection_ids=resection_ids)
        model.trajectories[r] = traj
        model.outcomes[r] = outcome(traj, bio, hazard_clinical, lesions, pvtt, bool(c["ehs"]))
    return model


def baseline_trajectory(model: PatientModel) -> Trajectory:
    """A no-treatment course (used for the baseline scan: its time-0 state equals every regimen's)."""
    return run_program("baseline", Program(), model.bio, model.lesions, model.pvtt, model.hazard_clinical)
