"""Physical parameters of the model: one immutable pytree, with defaults, units and sources.

Every field is a JAX array leaf, so a new value never recompiles the solver and
``jax.grad`` / ``jax.vmap`` over :class:`Params` work. Per-tissue diffusivities are
arrays of shape ``(N_TISSUES,)`` indexed by the tissue code (``fields.Tissue``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fields import N_TISSUES, TISSUE_NAMES

from ._drugs import DEFAULT_DRUG, drug_parameters, drug_sources


class Params(NamedTuple):
    """Model parameters (see :data:`PARAMETERS` for symbol, unit, default and source)."""

    decay_tnf: jax.Array
    decay_il1: jax.Array
    tnf_per_leukocyte: jax.Array
    il1_amplification_of_tnf: jax.Array
    il1_half_saturation_amplification: jax.Array
    il1_per_leukocyte: jax.Array
    tnf_half_saturation_il1: jax.Array
    chemotaxis: jax.Array
    chemotaxis_half_saturation: jax.Array
    recruitment_rate: jax.Array
    il1_weight_recruitment: jax.Array
    recruitment_half_saturation: jax.Array
    leukocyte_capacity: jax.Array
    leukocyte_death: jax.Array
    basal_tnf: jax.Array
    basal_il1: jax.Array
    fluid_recruitment: jax.Array
    fluid_mixing: jax.Array
    recruitment_from_fragments: jax.Array
    cartilage_repair: jax.Array
    repair_inhibition_half_saturation: jax.Array
    cartilage_damage_tnf: jax.Array
    cartilage_damage_il1: jax.Array
    drug_bioavailability: jax.Array
    drug_absorption: jax.Array
    drug_elimination: jax.Array
    drug_volume: jax.Array
    drug_vascular_exchange: jax.Array
    drug_clearance: jax.Array
    drug_tnf_binding: jax.Array
    drug_tnf_unbinding: jax.Array
    drug_per_tnf_bound: jax.Array
    drug_il1_block: jax.Array
    injury_rate: jax.Array
    injury_onset: jax.Array
    injury_duration: jax.Array
    injury_decay: jax.Array
    drug_dose: jax.Array
    drug_infusion: jax.Array
    diffusivity_tnf: jax.Array
    diffusivity_il1: jax.Array
    diffusivity_leukocytes: jax.Array
    diffusivity_drug: jax.Array


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """What a parameter is: its symbol in docs/model.md, unit, default, allowed range and source."""

    symbol: str
    unit: str
    default: float
    description: str
    source: str
    lower: float = 0.0
    upper: float = math.inf


_EST = "estimate (not measured directly; fittable with `synovia fit`)"
_REST = (
    "calibrated: the joint at rest holds healthy fluid, TNF 2.9, IL-1 1.1 pg/mL, 150 cells/uL "
    "(configs/calibration/calibrate_rest.toml)"
)
_OA = "calibrated to OA synovial fluid (configs/calibration/calibrate_oa.toml)"
_RA = (
    "calibrated to RA synovial fluid, where many leukocytes set the IL-1 (130 pg/mL at ~13000 cells/uL; "
    "configs/calibration/calibrate_ra.toml)"
)


def _drug_parameters() -> dict[str, ParamInfo]:
    """The drug's [parameters] with the default drug's (etanercept's) values and sources;
    ``[drug] name`` sets them to its drug's (solver._drugs)."""
    values, sources = drug_parameters(DEFAULT_DRUG), drug_sources(DEFAULT_DRUG)
    rows = {
        "drug_bioavailability": ("F", "1", "fraction of a subcutaneous dose that reaches the plasma"),
        "drug_absorption": ("k_a", "1/h", "first-order absorption from the subcutaneous depot"),
        "drug_elimination": ("k_e", "1/h", "elimination from the plasma"),
        "drug_volume": ("V", "L", "volume of distribution"),
        "drug_vascular_exchange": ("k_v", "1/h", "exchange of drug between the plasma and the synovium"),
        "drug_clearance": ("k_A", "1/h", "lymphatic drainage of drug and drug-TNF complex from the synovium"),
        "drug_tnf_binding": ("k_on", "1/h per ug/mL", "association of drug with TNF"),
        "drug_tnf_unbinding": ("k_off", "1/h", "dissociation of the drug-TNF complex"),
        "drug_per_tnf_bound": ("s_AT", "ug/mL per pg/mL", "drug bound per TNF bound"),
        "drug_il1_block": ("K_B", "ug/mL", "IL-1 receptor antagonist that halves IL-1 signalling"),
    }
    positive = ("drug_volume", "drug_il1_block")
    return {
        name: ParamInfo(sym, unit, values[name], doc, sources[name], lower=1e-12 if name in positive else 0.0)
        for name, (sym, unit, doc) in rows.items()
    }


#: Scalar parameters: config section ``[parameters]`` (injury and drug schedule keys live
#: in ``[injury]`` and ``[drug]``, see solver._config).
PARAMETERS: dict[str, ParamInfo] = {
    "decay_tnf": ParamInfo("k_T", "1/h", 2.25, "TNF decay (t1/2 18.5 min)", "Ferraiolo et al. 1988, Drug Metab Dispos 16:270"),
    "decay_il1": ParamInfo("k_I", "1/h", 2.2, "IL-1 decay (t1/2 19 min)", "Cancer Res 1990;50:5751"),
    "tnf_per_leukocyte": ParamInfo("a_TL", "(pg/mL)/h per cell/uL", 0.01, "TNF secretion per leukocyte", _EST),
    "il1_amplification_of_tnf": ParamInfo("b_TI", "1", 1.0, "maximal IL-1 amplification of leukocyte TNF secretion", _EST),
    "il1_half_saturation_amplification": ParamInfo("K_I", "pg/mL", 50.0, "IL-1 at half-maximal amplification", _EST, lower=1e-12),
    "il1_per_leukocyte": ParamInfo("a_IL", "(pg/mL)/h per cell/uL", 0.028924, "TNF-induced IL-1 secretion per leukocyte", _RA),
    "tnf_half_saturation_il1": ParamInfo("K_T", "pg/mL", 20.0, "TNF at half-maximal IL-1 induction", _EST, lower=1e-12),
    "chemotaxis": ParamInfo(
        "chi",
        "mm^2/h",
        0.05,
        "chemotactic coefficient up grad f(TNF)",
        "not confirmed in the literature: a parameter to fit",
    ),
    "chemotaxis_half_saturation": ParamInfo(
        "K_chi", "pg/mL", 10.0, "receptor saturation of chemotactic sensing", _EST, lower=1e-12
    ),
    "recruitment_rate": ParamInfo("r_syn", "(cells/uL)/h", 200.0, "maximal leukocyte recruitment in the synovium", _EST),
    "il1_weight_recruitment": ParamInfo("w_I", "1", 0.5, "weight of IL-1 relative to TNF in recruitment", _EST),
    "recruitment_half_saturation": ParamInfo(
        "K_r", "pg/mL", 50.0, "cytokine level at half-maximal recruitment", _EST, lower=1e-12
    ),
    "leukocyte_capacity": ParamInfo("L_max", "cells/uL", 50000.0, "tissue capacity for leukocytes", _EST, lower=1e-12),
    "leukocyte_death": ParamInfo(
        "d_L",
        "1/h",
        0.03,
        "leukocyte death/egress (tissue lifetime about a day)",
        "estimate (tissue neutrophil lifetime about a day)",
    ),
    "basal_tnf": ParamInfo(
        "s_T", "(pg/mL)/h", 5.0558, "basal TNF secretion by resident synovial cells (synovium and fluid)", _REST
    ),
    "basal_il1": ParamInfo(
        "s_I", "(pg/mL)/h", 1.9067, "basal IL-1 secretion by resident synovial cells (synovium and fluid)", _REST
    ),
    "fluid_recruitment": ParamInfo(
        "r_F", "(cells/uL)/h", 58.713, "maximal leukocyte entry into the synovial fluid across the lining", _REST
    ),
    "fluid_mixing": ParamInfo(
        "k_mix",
        "1/h",
        2.0,
        "mixing of the synovial fluid by joint motion",
        "estimate: a knee flexion moves ~20% of the anterior fluid (rabbit, PMC3241937), faster than the hours of "
        "intra-articular clearance (Evans, Kraus & Setton 2014, Nat Rev Rheumatol 10:11); no measured rate, fittable",
    ),
    "recruitment_from_fragments": ParamInfo(
        "w_F",
        "pg/mL",
        35.62,
        "leukocyte recruitment drive of matrix fragments (chemokines of the activated lining), in TNF-equivalents",
        f"{_OA}; matrix fragments activate the lining through Toll-like receptors (Scanzello & Goldring 2012, Bone 51:249)",
    ),
    "cartilage_repair": ParamInfo(
        "r_C",
        "1/h",
        0.002,
        "cartilage matrix (proteoglycan) repair",
        "proteoglycan lost after intra-articular IL-1 replaced over 3-4 weeks (rabbit; Page Thomas et al. 1991, Ann "
        "Rheum Dis); the collagen network renews with a half-life of 117 y (Verzijl et al. 2000, J Biol Chem 275:39027)",
    ),
    "repair_inhibition_half_saturation": ParamInfo("K_rep", "pg/mL", 50.0, "cytokine level halving repair", _EST, lower=1e-12),
    "cartilage_damage_tnf": ParamInfo(
        "g_T",
        "1/h per pg/mL",
        5.2e-9,
        "TNF-driven matrix degradation",
        "g_I / 10: IL-1 ten-fold more potent than TNF on explant proteoglycan (IL-1 1-100, TNF 10-1000 ng/mL, 6 days; "
        "'Effect of interleukin-1-beta and tumor necrosis factor-alpha on cartilage proteoglycan metabolism in vitro')",
    ),
    "cartilage_damage_il1": ParamInfo(
        "g_I",
        "1/h per pg/mL",
        5.2e-8,
        "IL-1-driven matrix degradation",
        "bovine explants: EC50 of IL-1 for proteoglycan release 200 ng/mL, release saturating within 4 days "
        "(Neidel & Zeidler 1993, Agents Actions 39:82): slope (1/96 h) / 2e5 pg/mL",
    ),
    **_drug_parameters(),
    "injury_rate": ParamInfo(
        "s_inj",
        "(pg/mL)/h",
        15000.0,
        "TNF release rate in the injury region",
        "scenario: in the default knee fluid TNF peaks at ~160 pg/mL in the first hours; a knee 2 days after a bleed "
        "holds 83 +- 34 pg/mL (mouse; Haxaire et al. 2018, Blood 132:1064)",
    ),
    "injury_onset": ParamInfo("-", "h", 0.0, "time the injury starts", "scenario"),
    "injury_duration": ParamInfo("-", "h", 24.0, "time the injury source lasts", "scenario"),
    "injury_decay": ParamInfo("-", "h", 6.0, "e-folding time of the injury source after onset", "scenario", lower=1e-12),
    "drug_dose": ParamInfo("D", "mg", 50.0, "drug per dose ([drug] dose_mg, or dose_mg_per_kg x body_weight_kg)", "scenario"),
    "drug_infusion": ParamInfo("T_inf", "h", 2.0, "duration of an intravenous infusion", "scenario", lower=1e-12),
}

#: Scenario parameters: set in the config's ``[injury]`` and ``[drug]`` sections, not ``[parameters]``.
SCENARIO_PARAMETERS = frozenset(
    {
        "injury_rate",
        "injury_onset",
        "injury_duration",
        "injury_decay",
        "drug_dose",
        "drug_infusion",
    }
)

_FLUID_TNF, _TISSUE_TNF = 0.27, 0.019
_ANTIBODY_SCALE = (51.0 / 150.0) ** (1.0 / 3.0)  # Stokes-Einstein, 51 kDa TNF trimer vs 150 kDa IgG
_IL1_SCALE = 0.39 / 0.27

#: Per-tissue diffusivities, mm^2/h, config section ``[tissues.<name>]`` keys ``diffusivity_<species>``.
#: Order: excluded, bone, cartilage, synovial_fluid, synovium, capsule.
DIFFUSIVITIES: dict[str, tuple[tuple[float, ...], str]] = {
    "diffusivity_tnf": (
        (0.0, 0.0, _TISSUE_TNF, _FLUID_TNF, _TISSUE_TNF, _TISSUE_TNF),
        "fluid: Hao & Friedman 2016 (0.27 mm^2/h); dense tissue: GranSim (0.019 mm^2/h)",
    ),
    "diffusivity_il1": (
        (0.0, 0.0, _TISSUE_TNF * _IL1_SCALE, 0.39, _TISSUE_TNF * _IL1_SCALE, _TISSUE_TNF * _IL1_SCALE),
        "Stokes-Einstein from TNF (17 vs 51 kDa), estimate",
    ),
    "diffusivity_leukocytes": (
        (0.0, 0.0, 0.0, 0.01, 0.01, 0.01),
        "random motility from neutrophil speed 17 um/min (Butler 2010); none in cartilage and bone",
    ),
    "diffusivity_drug": (
        tuple(d * _ANTIBODY_SCALE for d in (0.0, 0.0, _TISSUE_TNF, _FLUID_TNF, _TISSUE_TNF, _TISSUE_TNF)),
        "Stokes-Einstein from TNF (150 kDa IgG), estimate",
    ),
}

#: Which species each diffusivity belongs to.
DIFFUSIVITY_OF = {
    "tnf": "diffusivity_tnf",
    "il1": "diffusivity_il1",
    "leukocytes": "diffusivity_leukocytes",
    "drug": "diffusivity_drug",
    "complex": "diffusivity_drug",
}


def default_params(dtype=jnp.float32, **overrides: float | np.ndarray) -> Params:
    """Parameters with their defaults (docs/model.md), overridden by keyword, as arrays of ``dtype``."""
    values: dict[str, object] = {name: info.default for name, info in PARAMETERS.items()}
    values.update({name: default for name, (default, _) in DIFFUSIVITIES.items()})
    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(values)}")
    values.update(overrides)
    out = {}
    for name, value in values.items():
        arr = jnp.asarray(value, dtype=dtype)
        if name in DIFFUSIVITIES and arr.shape != (N_TISSUES,):
            raise ValueError(f"{name} needs one value per tissue {TISSUE_NAMES}, got shape {arr.shape}")
        out[name] = arr
    return Params(**out)


def params_as_dict(params: Params) -> dict[str, object]:
    """Plain Python values (floats, lists for per-tissue arrays), e.g. for reports."""
    out: dict[str, object] = {}
    for name, value in params._asdict().items():
        arr = np.asarray(value)
        out[name] = arr.tolist() if arr.ndim else float(arr)
    return out
