"""Stability limits of the explicit steps (:func:`stable_dt`)."""

from __future__ import annotations

import numpy as np

from fields import TISSUE_NAMES, State

from ._domain import ModelOptions
from ._drugs import plasma_peak_bound
from ._params import Params

#: Empirical accuracy cap of a diffusion-splitting step: dt * (fastest constant loss rate) <= this.
SPLIT_ACCURACY = 0.25


def stable_dt(
    params: Params,
    state: State,
    options: ModelOptions,
    ssp_coefficient: float = 1.0,
    split_losses: bool = False,
    split_diffusion: bool = False,
    causes: dict[str, str] | None = None,
) -> dict[str, float]:
    """Largest stable forward-Euler steps (h) per limit, times the stepper's SSP coefficient.
    A ``causes`` dict given is filled with the parameters and values behind each limit, in words.

    - diffusion: dt * sum_axes 2 D_max / h_a^2 <= 1 (positivity of the explicit update);
    - chemotaxis: |f(T_R) - f(T_L)| < 1 bounds the face velocity by chi / h, so
      dt * sum_axes 2 (D_L + c chi) / h_a^2 <= 1 with c = 1 (upwind) or 2 (limited);
    - reactions: dt * (fastest linear loss rate) <= 1, with the drug at its largest
      expected level for TNF binding. With ``split_losses`` (a stepper that integrates the
      :func:`loss_rates` terms exactly) only the rates left to the explicit part count.

    With ``split_diffusion`` (a stepper that advances :func:`diffusion_rhs` by itself) the
    chemotaxis limit leaves out D_L; the diffusion limit is still reported (the forward-Euler
    step of the diffusion operator, which sets the super-step's stage count). Such a step is
    then capped for accuracy instead, by "splitting" = ``SPLIT_ACCURACY`` / (the fastest constant
    loss rate k): 0.11 h for TNF's 2.25 /h. The cap is empirical: uniform decay commutes with
    diffusion, but the sources and reactions that vary in space do not, and cytokine fields
    change on the time scale of their turnover 1/k. The error at the cap, in the fluid time
    courses of the 0.5 mm knee with an injury and a dose, and its second-order fall at a quarter
    of the step are measured in tests/time/test_plan.py.
    """
    h = np.asarray(options.grid.spacing, dtype=float)
    inv_h2 = float(np.sum(2.0 / h**2))
    diffused = ("tnf", "il1", "drug", "leukocytes") if split_diffusion else ("tnf", "il1", "drug")
    d_max = max(float(np.max(getattr(params, f"diffusivity_{s}"))) for s in diffused)
    d_leuk = 0.0 if split_diffusion else float(np.max(params.diffusivity_leukocytes))
    c = 2.0 if options.chemotaxis_scheme == "limited" else 1.0
    # the tissue's drug stays below the plasma's highest level (it fills from the plasma)
    peak = plasma_peak_bound(params, options.drug_route, options.dose_times) if options.drug else 0.0
    a_max = float(np.max(state.drug)) + peak
    # cytokine levels bound the nonlinear loss rates; allow a tenfold rise over the start
    cyt_max = max(1e3, 10.0 * float(np.max(state.tnf)), 10.0 * float(np.max(state.il1)))
    explicit = 0.0 if split_losses else 1.0
    # fluid mixing is never split off
    mixing = float(params.fluid_mixing)
    drained = float(params.drug_vascular_exchange) + float(params.drug_clearance)
    rates = [
        explicit * (float(params.decay_tnf) + (float(params.drug_tnf_binding) * a_max if options.binds_tnf else 0.0)) + mixing,
        explicit * float(params.decay_il1) + mixing,
        explicit * float(params.leukocyte_death)
        + max(float(params.recruitment_rate), float(params.fluid_recruitment)) / float(params.leukocyte_capacity)
        + mixing,
        float(params.cartilage_repair)
        + explicit * (float(params.cartilage_damage_tnf) + float(params.cartilage_damage_il1)) * cyt_max,
    ]
    if options.drug:
        binding = float(params.drug_per_tnf_bound * params.drug_tnf_binding) * cyt_max if options.binds_tnf else 0.0
        rates.append(explicit * (drained + binding) + mixing)
        rates.append(explicit * (drained + (float(params.drug_tnf_unbinding) if options.binds_tnf else 0.0)) + mixing)
    if causes is not None:
        causes.update(_causes(params, options, diffused, d_leuk, h, rates, a_max, cyt_max))
    limits = {
        "diffusion": 1.0 / (d_max * inv_h2) if d_max > 0 else np.inf,
        "chemotaxis": 1.0 / ((d_leuk + c * float(params.chemotaxis)) * inv_h2) if (d_leuk + params.chemotaxis) > 0 else np.inf,
        "reaction": 1.0 / max(rates) if max(rates) > 0 else np.inf,
    }
    if split_diffusion:
        fastest = max(float(params.decay_tnf), float(params.decay_il1), float(params.leukocyte_death))
        fastest = max(fastest, drained) if options.drug else fastest
        limits["splitting"] = SPLIT_ACCURACY / fastest if fastest > 0 else np.inf
    return {k: v * ssp_coefficient for k, v in limits.items()}


def _causes(params, options, diffused, d_leuk, h, rates, a_max, cyt_max) -> dict[str, str]:
    """What sets each limit of :func:`stable_dt`: the largest term and its parameters' values."""
    spacing = f"at spacing {', '.join(f'{x:g}' for x in h)} mm"
    d_key, d_values = max(((f"diffusivity_{s}", np.asarray(getattr(params, f"diffusivity_{s}"))) for s in diffused),
                          key=lambda kv: float(np.max(kv[1])))  # fmt: skip
    tissue = TISSUE_NAMES[int(np.argmax(d_values))]
    p = {k: float(np.asarray(getattr(params, k))) for k in (
        "decay_tnf", "decay_il1", "leukocyte_death", "recruitment_rate", "fluid_recruitment", "leukocyte_capacity",
        "cartilage_repair", "cartilage_damage_tnf", "cartilage_damage_il1", "fluid_mixing", "drug_tnf_binding",
        "drug_vascular_exchange", "drug_clearance", "drug_tnf_unbinding")}  # fmt: skip
    terms = [
        f"TNF loss (decay_tnf = {p['decay_tnf']:g} /h, drug_tnf_binding = {p['drug_tnf_binding']:g} x drug up to "
        f"{a_max:g} ug/mL, fluid_mixing = {p['fluid_mixing']:g} /h)",
        f"IL-1 loss (decay_il1 = {p['decay_il1']:g} /h, fluid_mixing = {p['fluid_mixing']:g} /h)",
        f"leukocyte turnover (leukocyte_death = {p['leukocyte_death']:g} /h, recruitment_rate = {p['recruitment_rate']:g}"
        f" or fluid_recruitment = {p['fluid_recruitment']:g} over leukocyte_capacity = {p['leukocyte_capacity']:g})",
        f"cartilage turnover (cartilage_repair = {p['cartilage_repair']:g} /h, cartilage_damage_tnf = "
        f"{p['cartilage_damage_tnf']:g} and cartilage_damage_il1 = {p['cartilage_damage_il1']:g} x cytokines up to "
        f"{cyt_max:g} pg/mL)",
        f"drug loss (drug_vascular_exchange = {p['drug_vascular_exchange']:g}, drug_clearance = {p['drug_clearance']:g} /h, "
        "binding to TNF)",
        f"complex loss (drug_tnf_unbinding = {p['drug_tnf_unbinding']:g} /h, drainage)",
    ]
    k = int(np.argmax(rates))
    return {
        "diffusion": f"{d_key} = {float(np.max(d_values)):g} mm^2/h in {tissue} {spacing}",
        "chemotaxis": f"chemotaxis = {float(params.chemotaxis):g} mm^2/h (with diffusivity_leukocytes = {d_leuk:g}) {spacing}",
        "reaction": f"{terms[k]}: {rates[k]:.3g} /h",
        "splitting": "the fastest constant loss rate (decay_tnf, decay_il1, leukocyte_death, drug drainage)",
    }
