"""Anti-cytokine drugs as a clinic gives them: label schedules, plasma pharmacokinetics, their targets.

A dose in mg enters a well-mixed plasma compartment, subcutaneously (first-order absorption with
bioavailability F) or by intravenous infusion; plasma clears it at the first-order rate k_e.
With V the volume of distribution, the plasma concentration (ug/mL = mg/L) of doses D at
times tau_j is, with s = t - tau_j > 0::

    s.c.:  C_p = sum_j F D k_a / V * (exp(-k_e s) - exp(-k_a s)) / (k_a - k_e)
    i.v.:  C_p = sum_j D / (T_inf V k_e) * (1 - exp(-k_e min(s, T_inf))) * exp(-k_e max(s - T_inf, 0))

the exact solution of the depot and plasma ODEs. The joint does not act back on the plasma
(a knee holds a few mL against litres of distribution volume), so the plasma level is this closed
form: a dose's amount reaches the plasma exactly, whatever the joint's time step, and the
pharmacokinetic rates stay differentiable (fittable). The synovium exchanges drug with the plasma
(k_v (C_p - A)) and drains it to lymph (k_A A); the fluid and the cartilage fill from the synovium
by diffusion (docs/model.md).

Each drug's values and their sources are in :data:`DRUGS`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

#: What a drug blocks: "tnf" (an anti-TNF antibody or receptor binds TNF, reversibly), or
#: "il1_receptor" (an IL-1 receptor antagonist: competes with IL-1 for its receptor).
TARGETS = ("tnf", "il1_receptor")
ROUTES = ("sc", "iv")
#: Molar mass of the TNF trimer, kDa (3 x 17.3 kDa).
TNF_KDA = 52.0


@dataclasses.dataclass(frozen=True)
class Drug:
    """A drug's label schedule, pharmacokinetics and target, each value with its source.

    ``schedule`` holds ``[drug]`` config keys, ``parameters`` ``[parameters]`` keys (fittable; an
    anti-TNF's binding rates follow from ``kd_molar`` and its molar mass, :func:`drug_parameters`);
    ``sources`` maps a key of either to where its value comes from.
    """

    name: str
    target: str
    molar_mass_kda: float
    schedule: dict
    parameters: dict
    sources: dict
    levels: str  # published plasma and synovial-fluid levels the model is compared with
    kd_molar: float = 0.0  # an anti-TNF's dissociation constant for TNF (M): k_off = K_D k_on


def per_ug_ml_per_h(k_on_per_molar_second: float, molar_mass_kda: float) -> float:
    """An association rate (1/M/s) as 1/h per ug/mL of drug: 1 ug/mL is 1e-3 / (1e3 kDa) mol/L."""
    return k_on_per_molar_second * 3600.0 * 1e-3 / (molar_mass_kda * 1e3)


def _half_life(hours: float) -> float:
    return math.log(2.0) / hours


#: Joint transport of a protein drug (1/h). Proteins leave the joint through synovial lymph
#: whatever their size, and the joint's protein clearance is fast (RA knee effusions clear labelled
#: albumin at 5.3 +- 1.9 mL/h: a half-life of 2.6-4 h in 20-30 mL; Owen et al. 1994, Br J Clin
#: Pharmacol): k_v + k_A = 0.2 /h. Adalimumab's synovial-fluid level is 31-96% of serum in RA
#: (Humira label): k_v / (k_v + k_A) = 0.6, the fluid/plasma ratio at equilibrium.
_JOINT = {"drug_vascular_exchange": 0.12, "drug_clearance": 0.08}
_JOINT_SOURCES = {
    "drug_vascular_exchange": "k_v / (k_v + k_A) = 0.6: synovial fluid 31-96% of serum in RA (adalimumab, Humira label)",
    "drug_clearance": "k_v + k_A = 0.2 /h: RA knee effusions clear albumin at 5.3 mL/h (Owen et al. 1994, Br J Clin "
    "Pharmacol), lymphatic clearance being size-independent",
}
#: No association rate of an anti-TNF has been measured in a form found here: 1e6 /M/s is assumed
#: (as Marcantonio et al. 2022, Front Pharmacol) and k_off = K_D k_on.
_K_ON = 1.0e6
_K_ON_SOURCE = "k_on 1e6 /M/s assumed (no measured value found; Marcantonio et al. 2022 assume the same)"

DEFAULT_DRUG = "etanercept"

DRUGS: dict[str, Drug] = {
    "etanercept": Drug(
        name="etanercept",
        target="tnf",
        molar_mass_kda=150.0,
        schedule={"route": "sc", "dose_mg": 50.0, "interval_h": 168.0},
        parameters={
            "drug_bioavailability": 0.58,
            "drug_absorption": math.log(2.0) / 20.9,
            "drug_elimination": _half_life(102.0),
            "drug_volume": 0.58 * 0.160 / _half_life(102.0),
            **_JOINT,
        },
        sources={
            "drug_bioavailability": "58% (Zhou 2005, J Clin Pharmacol 45:490)",
            "drug_absorption": "absorption t1/2 20.9 h (RA population PK, Lee et al., PAGE abstract 350)",
            "drug_elimination": "t1/2 102 h after 25 mg s.c. in RA (Enbrel label)",
            "drug_volume": "CL/F 160 mL/h in RA (Enbrel label): V = F CL/F / k_e",
            "drug_tnf_unbinding": "K_D not found: taken as adalimumab's (8.6 pM), the anti-TNFs being equally effective in RA "
            "(Nixon et al. 2007); etanercept's complexes are less stable (Scallon et al. 2002, J "
            "Pharmacol Exp Ther 301:418): an estimate, fittable",
            **_JOINT_SOURCES,
        },
        levels=(
            "plasma, 50 mg weekly at steady state: Cmax 2.4 +- 1.5 ug/mL (Expert Rev Clin Pharmacol 2017, Table 3); "
            "3.0 (1.7-5.6) ug/mL; synovial fluid: not found"
        ),
        kd_molar=8.6e-12,
    ),
    "adalimumab": Drug(
        name="adalimumab",
        target="tnf",
        molar_mass_kda=148.0,
        schedule={"route": "sc", "dose_mg": 40.0, "interval_h": 336.0},
        parameters={
            "drug_bioavailability": 0.64,
            "drug_absorption": 0.28 / 24.0,
            "drug_elimination": _half_life(14.0 * 24.0),
            "drug_volume": 0.012 / _half_life(14.0 * 24.0),
            **_JOINT,
        },
        sources={
            "drug_bioavailability": "64% (Humira label)",
            "drug_absorption": "k_a 0.28 /day (RA population PK, Ternant et al. 2015, Br J Clin Pharmacol)",
            "drug_elimination": "t1/2 ~2 weeks (Humira label)",
            "drug_volume": "CL ~12 mL/h (Humira label): V = CL / k_e = 5.8 L (label: 4.7-6.0 L)",
            "drug_tnf_unbinding": "K_D 8.6 pM (Kaymakcalan et al. 2009, Clin Immunol): k_off = K_D k_on",
            **_JOINT_SOURCES,
        },
        levels=(
            "plasma, 40 mg every other week at steady state: trough ~5 ug/mL without methotrexate, 8-9 with (Humira label); "
            "synovial fluid 31-96% of serum (Humira label)"
        ),
        kd_molar=8.6e-12,
    ),
    "infliximab": Drug(
        name="infliximab",
        target="tnf",
        molar_mass_kda=149.1,
        schedule={
            "route": "iv",
            "dose_mg_per_kg": 3.0,
            "loading_h": [0.0, 336.0, 1008.0],
            "interval_h": 1344.0,
            "infusion_h": 2.0,
        },
        parameters={
            "drug_bioavailability": 1.0,
            "drug_absorption": 1.0,
            "drug_elimination": _half_life(8.5 * 24.0),
            "drug_volume": 3.0,
            **_JOINT,
        },
        sources={
            "drug_bioavailability": "intravenous",
            "drug_absorption": "intravenous (not used)",
            "drug_elimination": "t1/2 8-9.5 days (Remicade label)",
            "drug_volume": "Vss 3.0-4.1 L (Remicade label)",
            "drug_tnf_unbinding": "K_D 4.2 pM (Kaymakcalan et al. 2009, Clin Immunol): k_off = K_D k_on",
            **_JOINT_SOURCES,
        },
        levels=(
            "plasma, 3 mg/kg: median Cmax 77 ug/mL (Remicade label); trough 8 weeks after the week-6 dose: median 3.6 "
            "(IQR 1.4-8.2) ug/mL in responders (Wolbink et al. 2005, Ann Rheum Dis 64:704); synovial fluid: not found"
        ),
        kd_molar=4.2e-12,
    ),
    "anakinra": Drug(
        name="anakinra",
        target="il1_receptor",
        molar_mass_kda=17.3,
        schedule={"route": "sc", "dose_mg": 100.0, "interval_h": 24.0},
        parameters={
            "drug_bioavailability": 0.95,
            "drug_absorption": _half_life(5.0),
            "drug_elimination": 6.4 / 10.0,
            "drug_volume": 0.95 * 10.0,
            "drug_il1_block": 0.013,
            **_JOINT,
        },
        sources={
            "drug_bioavailability": "95% (Kineret label)",
            "drug_absorption": "terminal t1/2 4-6 h after s.c. doses (Kineret label), set by absorption: elimination is "
            "faster (next row); Tmax 3 h (label: 3-7 h)",
            "drug_elimination": "CL/F 6.4 L/h (23 + 0.343 CrCl + 0.713 weight mL/min at 70 kg) and V/F 0.142 L/kg (Yang et "
            "al. 2003, Clin Pharmacol Ther; EULAR 2001 abstract): k_e = CL/V",
            "drug_volume": "V/F 0.142 L/kg at 70 kg (Yang et al.): V = F x 10 L",
            "drug_il1_block": "a 100-fold or greater molar excess of IL-1Ra over IL-1 is needed to block IL-1 (Arend 1993, Adv "
            "Immunol): 100 x RA fluid IL-1 (130 pg/mL, 7.5 pM) = 0.75 nM = 0.013 ug/mL; an estimate, fittable",
            "drug_vascular_exchange": "as for the antibodies (no synovial-fluid level found): an estimate, fittable",
            "drug_clearance": "as for the antibodies: lymphatic clearance is size-independent",
        },
        levels=(
            "plasma, 100 mg daily: average steady state 0.4-0.65 ug/mL (from Yang et al.'s CL/F; a 0.4 mg/L target, Urien "
            "et al. 2013); Cmax at steady state: not found; synovial fluid: not found"
        ),
    ),
}


def dose_times(first_dose_h: float, loading_h: tuple, interval_h: float, t_end_h: float) -> tuple[float, ...]:
    """Dose times (h) up to ``t_end_h``: ``first_dose_h`` plus each loading offset (or at
    ``first_dose_h`` alone without any), then every ``interval_h`` after the last of them."""
    start = [first_dose_h + o for o in (sorted(loading_h) or [0.0])]
    times = [t for t in start if t <= t_end_h]
    t = start[-1] + interval_h
    while t <= t_end_h:
        times.append(t)
        t += interval_h
    return tuple(float(t) for t in times)


def plasma_concentration(params, route: str, times: tuple[float, ...], t) -> jax.Array:
    """Plasma drug concentration (ug/mL) at time ``t`` (h) after doses at ``times`` (the closed form above)."""
    if not times:
        return jnp.zeros((), jnp.result_type(params.drug_dose))
    p = params
    s = jnp.maximum(t - jnp.asarray(times, jnp.result_type(p.drug_dose)), 0.0)
    k_e = p.drug_elimination
    if route == "sc":
        k_a = p.drug_absorption
        slow, gap = jnp.minimum(k_a, k_e), jnp.abs(k_a - k_e)
        small = gap * s < 1e-6
        safe_gap = jnp.where(small, 1.0, gap)
        # (exp(-k_e s) - exp(-k_a s)) / (k_a - k_e), symmetric in the two rates, its limit s when they meet
        bateman = jnp.exp(-slow * s) * jnp.where(small, s, -jnp.expm1(-safe_gap * s) / safe_gap)
        per_dose = p.drug_bioavailability * p.drug_dose * k_a / p.drug_volume * bateman
    else:
        infused = jnp.minimum(s, p.drug_infusion)
        per_dose = (
            p.drug_dose / (p.drug_infusion * p.drug_volume * k_e)
            * -jnp.expm1(-k_e * infused)
            * jnp.exp(-k_e * (s - infused))
        )  # fmt: skip
    return jnp.sum(per_dose)


def plasma_peak_bound(params, route: str, times: tuple[float, ...]) -> float:
    """An upper bound of the plasma concentration (ug/mL) over the whole schedule, for step limits:
    each dose's whole bioavailable amount at once, accumulated at the shortest dose spacing."""
    if not times:
        return 0.0
    f = float(params.drug_bioavailability) if route == "sc" else 1.0
    single = f * float(params.drug_dose) / float(params.drug_volume)
    gap = float(np.min(np.diff(times))) if len(times) > 1 else math.inf
    return single / -math.expm1(-float(params.drug_elimination) * gap) if math.isfinite(gap) else single


def drug_parameters(name: str) -> dict[str, float]:
    """The drug ``name``'s values of every drug key of ``[parameters]``: its own, those of a target
    it lacks switched off (no TNF binding for an IL-1 receptor antagonist; an anti-TNF keeps
    anakinra's IL-1 receptor block, unused), and the drug bound per TNF bound from molar masses."""
    drug = DRUGS[name]
    out = {"drug_tnf_binding": 0.0, "drug_tnf_unbinding": 0.0, "drug_il1_block": DRUGS["anakinra"].parameters["drug_il1_block"]}
    if drug.target == "tnf":
        out["drug_tnf_binding"] = per_ug_ml_per_h(_K_ON, drug.molar_mass_kda)
        out["drug_tnf_unbinding"] = drug.kd_molar * _K_ON * 3600.0
    out.update(drug.parameters)
    out["drug_per_tnf_bound"] = drug.molar_mass_kda / TNF_KDA * 1e-6
    return out


def drug_sources(name: str) -> dict[str, str]:
    """Where each of :func:`drug_parameters` comes from."""
    drug = DRUGS[name]
    out = {"drug_per_tnf_bound": f"1:1 binding, molar masses {drug.molar_mass_kda:g} kDa (drug) and {TNF_KDA:g} kDa (TNF trimer)"}
    if drug.target == "tnf":
        out["drug_il1_block"] = "not used by an anti-TNF drug (anakinra's value)"
        out["drug_tnf_binding"] = _K_ON_SOURCE
    else:
        out["drug_tnf_binding"] = out["drug_tnf_unbinding"] = "not used: anakinra does not bind TNF"
    return {**out, **drug.sources}
