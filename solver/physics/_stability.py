"""Stability limits of the explicit steps (:func:`stable_dt`).

Positivity of a forward-Euler step ``u + dt f(u)`` needs, in every cell, ``dt * a <= 1`` where
``a`` is the rate at which the cell's own value leaves it (the diagonal of the linearised update):
the diffusion through its faces and walls, the chemotactic outflow, the losses and the fluid
mixing, summed. An SSP Runge-Kutta scheme keeps positivity for ``ssp_coefficient`` times that step.
:func:`outflow_rates` gives ``a`` per species and cell, split by cause; :func:`stable_dt` the step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fields import TISSUE_NAMES, State

from ._domain import TRANSPORTED, Domain, ModelOptions
from ._drugs import plasma_peak_bound
from ._params import DIFFUSIVITY_OF, Params

#: Empirical accuracy cap of a diffusion-splitting step: dt * (fastest constant loss rate) <= this.
SPLIT_ACCURACY = 0.25

_NAMES = {"tnf": "TNF", "il1": "IL-1", "leukocytes": "leukocytes", "cartilage": "cartilage", "drug": "drug",
          "complex": "drug-TNF complex"}  # fmt: skip


class Outflow(NamedTuple):
    """Per-cell outflow rates (1/h) of one species, by cause (arrays of the grid's shape)."""

    diffusion: np.ndarray  # through the faces and the Dirichlet/Robin walls
    chemotaxis: np.ndarray  # the largest chemotactic outflow (leukocytes; else zero)
    reaction: np.ndarray  # losses, binding, recruitment capacity, fluid mixing

    @property
    def total(self) -> np.ndarray:
        return self.diffusion + self.chemotaxis + self.reaction


def _wall_rate(d_cell: np.ndarray, h: float, wall) -> np.ndarray:
    """The rate (1/h) at which a wall of this condition drains its cells (solver.physics._operators)."""
    if wall.kind == "dirichlet":
        return 2.0 * d_cell / (h * h)
    if wall.kind == "robin":
        half_cell = 2.0 * d_cell / h
        with np.errstate(invalid="ignore", divide="ignore"):
            series = np.where(half_cell > 0, wall.coefficient * half_cell / (wall.coefficient + half_cell), 0.0)
        return np.nan_to_num(series) / h
    return np.zeros_like(d_cell)


def diffusion_outflow(d_cell: np.ndarray, spacing, walls) -> np.ndarray:
    """Diagonal of the diffusion operator (1/h, positive): the sum over a cell's faces of the
    harmonic face diffusivity over h^2, plus 2 D/h^2 at a Dirichlet wall (the half-cell closure)
    and the series drainage at a Robin wall."""
    d = np.asarray(d_cell, dtype=float)
    out = np.zeros_like(d)
    for axis, h in enumerate(spacing):
        a = np.take(d, range(d.shape[axis] - 1), axis=axis)
        b = np.take(d, range(1, d.shape[axis]), axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            face = np.where((a > 0) & (b > 0), 2.0 * a * b / np.where(a + b > 0, a + b, 1.0), 0.0) / (h * h)
        pad_low = [(0, 0)] * d.ndim
        pad_high = [(0, 0)] * d.ndim
        pad_low[axis], pad_high[axis] = (1, 0), (0, 1)
        out += np.pad(face, pad_low) + np.pad(face, pad_high)
        for side, wall in zip((0, d.shape[axis] - 1), walls[axis] if walls else ()):
            index = [slice(None)] * d.ndim
            index[axis] = slice(side, side + 1)
            out[tuple(index)] += _wall_rate(d[tuple(index)], h, wall)
    return out


def _open_faces_along(region: np.ndarray, axis: int) -> np.ndarray:
    """Per cell, how many of its two faces along ``axis`` are open to leukocytes (both sides in their region)."""
    n = region.shape[axis]
    both = np.take(region, range(n - 1), axis=axis) * np.take(region, range(1, n), axis=axis)
    low, high = [(0, 0)] * region.ndim, [(0, 0)] * region.ndim
    low[axis], high[axis] = (1, 0), (0, 1)
    return np.pad(both, low) + np.pad(both, high)


def _bounds(params: Params, state: State, options: ModelOptions) -> tuple[float, float]:
    """(largest drug level, largest cytokine level) the nonlinear loss rates are bounded with."""
    # the tissue's drug stays below the plasma's highest level (it fills from the plasma)
    peak = plasma_peak_bound(params, options.drug_route, options.dose_times) if options.drug else 0.0
    a_max = (float(np.max(state.drug)) if state.drug is not None else 0.0) + peak
    # cytokine levels bound the nonlinear loss rates; allow a tenfold rise over the start
    cyt_max = max(1e3, 10.0 * float(np.max(state.tnf)), 10.0 * float(np.max(state.il1)))
    return a_max, cyt_max


def outflow_rates(
    params: Params,
    state: State,
    options: ModelOptions,
    domain: Domain,
    split_losses: bool = False,
    split_diffusion: bool = False,
) -> dict[str, Outflow]:
    """Per species and cell, the rates (1/h) at which the explicit part of a step drains a cell's own
    value (:class:`Outflow`): what a forward-Euler step of ``dt`` keeps non-negative for
    ``dt * total <= 1``.

    - diffusion: the operator's diagonal, walls included (:func:`diffusion_outflow`); left out with
      ``split_diffusion`` (a stepper that advances :func:`diffusion_rhs` by itself);
    - chemotaxis: |f(T_R) - f(T_L)| < 1 bounds a face velocity by chi / h, so a cell loses at most
      c chi / h^2 per open face, c = 1 (upwind) or 2 (limited: positive for half the step);
    - reaction: the linear loss rates, with the drug at its largest expected level for TNF binding
      and the cytokines at ten times their largest start value for the nonlinear ones (left out with
      ``split_losses``, a stepper that integrates :func:`loss_rates` exactly), plus what is never
      split: fluid mixing (k_mix in the fluid), the recruitment capacity (r / L_max) and cartilage repair.
    """
    return dict(_outflows(params, state, options, domain, split_losses, split_diffusion))


def _outflows(params, state, options, domain, split_losses=False, split_diffusion=False):
    """:func:`outflow_rates`, one species at a time (a large grid holds one species' arrays at once)."""
    p = {k: float(np.asarray(v)) for k, v in params._asdict().items() if np.ndim(v) == 0}
    h = tuple(float(x) for x in options.grid.spacing)
    labels = np.asarray(domain.labels)
    a_max, cyt_max = _bounds(params, state, options)
    explicit = 0.0 if split_losses else 1.0
    binds = options.binds_tnf

    def mask(name):
        return np.asarray(getattr(domain, name), float)

    def mixing():
        return p["fluid_mixing"] * mask("fluid")

    def drained():
        return (p["drug_vascular_exchange"] + p["drug_clearance"]) * mask("synovium")

    losses = {
        "tnf": lambda: explicit * (p["decay_tnf"] + (p["drug_tnf_binding"] * a_max if binds else 0.0)) + mixing(),
        "il1": lambda: explicit * p["decay_il1"] + mixing(),
        "leukocytes": lambda: (
            explicit * p["leukocyte_death"]
            + (p["recruitment_rate"] * mask("synovium") + p["fluid_recruitment"] * mask("fluid")) / p["leukocyte_capacity"]
            + mixing()
        ),
        "cartilage": lambda: p["cartilage_repair"] + explicit * (p["cartilage_damage_tnf"] + p["cartilage_damage_il1"]) * cyt_max,
    }
    if options.drug:
        binding = p["drug_per_tnf_bound"] * p["drug_tnf_binding"] * cyt_max if binds else 0.0
        losses["drug"] = lambda: explicit * (drained() + binding) + mixing()
        losses["complex"] = lambda: explicit * (drained() + (p["drug_tnf_unbinding"] if binds else 0.0)) + mixing()
    c = 2.0 if options.chemotaxis_scheme == "limited" else 1.0
    chi = p["chemotaxis"]
    zeros = np.zeros(labels.shape)
    for s, loss in losses.items():
        region = mask({"leukocytes": "leukocyte", "cartilage": "cartilage"}.get(s, "cytokine"))
        diffusion = zeros
        if s in TRANSPORTED and not split_diffusion:
            d_cell = np.asarray(getattr(params, DIFFUSIVITY_OF[s]), float)[labels] * region
            diffusion = diffusion_outflow(d_cell, h, options.walls_for(s))
        chemo = zeros
        if s == "leukocytes" and chi > 0:
            # faces along each axis count with that axis' 1/h^2
            chemo = sum(c * chi / (hx * hx) * _open_faces_along(region, axis) for axis, hx in enumerate(h)) * region
        yield s, Outflow(diffusion, chemo, loss() * region)


def stable_dt(
    params: Params,
    state: State,
    options: ModelOptions,
    domain: Domain,
    ssp_coefficient: float = 1.0,
    split_losses: bool = False,
    split_diffusion: bool = False,
    causes: dict[str, str] | None = None,
) -> dict[str, float]:
    """Largest stable forward-Euler steps (h) per limit, times the stepper's SSP coefficient.
    A ``causes`` dict given is filled with the cell, parameters and values behind each limit, in words.

    - positivity: 1 / the largest :func:`outflow_rates` total over species and cells (diffusion, walls
      included, chemotaxis and reactions summed in each cell): the step that binds;
    - diffusion, chemotaxis, reaction: 1 / the largest of each part alone (for reports; "diffusion"
      is also the forward-Euler step of the diffusion operator, which sets an RKL2 super-step's stages).

    With ``split_diffusion`` (a stepper that advances :func:`diffusion_rhs` by itself) the positivity
    and chemotaxis limits leave diffusion out. Such a step is then capped for accuracy instead, by
    "splitting" = ``SPLIT_ACCURACY`` / (the fastest constant loss rate k): 0.11 h for TNF's 2.25 /h.
    The cap is empirical: uniform decay commutes with diffusion, but the sources and reactions that
    vary in space do not, and cytokine fields change on the time scale of their turnover 1/k. The
    error at the cap, in the fluid time courses of the 0.5 mm knee with an injury and a dose, and its
    second-order fall at a quarter of the step are measured in tests/time/test_plan.py.
    """
    diffusing = 0.0 if split_diffusion else 1.0
    # per limit: (fastest rate, its species, its cell, the three parts' rates there)
    fastest: dict[str, tuple] = {}
    for s, r in _outflows(params, state, options, domain, split_losses):
        per_limit = {
            "positivity": diffusing * r.diffusion + r.chemotaxis + r.reaction,
            "diffusion": r.diffusion,
            "reaction": r.reaction,
        }
        if s == "leukocytes":
            per_limit["chemotaxis"] = r.chemotaxis + diffusing * r.diffusion
        for key, rate in per_limit.items():
            cell = np.unravel_index(int(np.argmax(rate)), rate.shape)
            if key not in fastest or rate[cell] > fastest[key][0]:
                fastest[key] = (float(rate[cell]), s, cell, (r.diffusion[cell], r.chemotaxis[cell], r.reaction[cell]))
    limits = {key: 1.0 / f[0] if f[0] > 0 else np.inf for key, f in fastest.items()}
    if split_diffusion:
        p = params
        rate = max(float(p.decay_tnf), float(p.decay_il1), float(p.leukocyte_death))
        if options.drug:
            rate = max(rate, float(p.drug_vascular_exchange) + float(p.drug_clearance))
        limits["splitting"] = SPLIT_ACCURACY / rate if rate > 0 else np.inf
    if causes is not None:
        causes.update(_causes(params, state, options, domain, fastest, diffusing))
    return {k: v * ssp_coefficient for k, v in limits.items()}


def _causes(params, state, options, domain, fastest, diffusing) -> dict[str, str]:
    """What sets each limit of :func:`stable_dt`: the fastest cell, its species and the parameters behind
    each part of its rate, in words."""
    h = tuple(float(x) for x in options.grid.spacing)
    labels = np.asarray(domain.labels)
    a_max, cyt_max = _bounds(params, state, options)
    p = {k: float(np.asarray(v)) for k, v in params._asdict().items() if np.ndim(v) == 0}
    spacing = f"spacing {', '.join(f'{x:g}' for x in h)} mm"
    reaction_text = {
        "tnf": f"TNF loss (decay_tnf = {p['decay_tnf']:g} /h, drug_tnf_binding = {p['drug_tnf_binding']:g} x drug up to "
        f"{a_max:g} ug/mL, fluid_mixing = {p['fluid_mixing']:g} /h)",
        "il1": f"IL-1 loss (decay_il1 = {p['decay_il1']:g} /h, fluid_mixing = {p['fluid_mixing']:g} /h)",
        "leukocytes": f"leukocyte turnover (leukocyte_death = {p['leukocyte_death']:g} /h, recruitment_rate = "
        f"{p['recruitment_rate']:g} or fluid_recruitment = {p['fluid_recruitment']:g} over leukocyte_capacity = "
        f"{p['leukocyte_capacity']:g}, fluid_mixing = {p['fluid_mixing']:g} /h)",
        "cartilage": f"cartilage turnover (cartilage_repair = {p['cartilage_repair']:g} /h, cartilage_damage_tnf = "
        f"{p['cartilage_damage_tnf']:g} and cartilage_damage_il1 = {p['cartilage_damage_il1']:g} x cytokines up to "
        f"{cyt_max:g} pg/mL)",
        "drug": f"drug loss (drug_vascular_exchange = {p['drug_vascular_exchange']:g}, drug_clearance = "
        f"{p['drug_clearance']:g} /h, binding to TNF)",
        "complex": f"complex loss (drug_tnf_unbinding = {p['drug_tnf_unbinding']:g} /h, drainage)",
    }

    def where(species, cell):
        tissue = TISSUE_NAMES[int(labels[cell])]
        walls = options.walls_for(species) if species in TRANSPORTED else ()
        axes = "zyx"[-labels.ndim :]  # the config's wall names: z_min ... x_max
        beside = [
            f"the {kind} wall {axes[axis]}_{side}"
            for axis, pair in enumerate(walls)
            for side, kind, at in (("min", pair[0].kind, 0), ("max", pair[1].kind, labels.shape[axis] - 1))
            if kind != "no_flux" and cell[axis] == at
        ]
        return f"{_NAMES[species]} in {tissue}" + (f" next to {' and '.join(beside)}" if beside else "")

    def diffusion_text(species, cell):
        d = float(np.asarray(getattr(params, DIFFUSIVITY_OF[species]))[int(labels[cell])])
        return f"{DIFFUSIVITY_OF[species]} = {d:g} mm^2/h at {spacing}"

    def chemotaxis_text():
        return f"chemotaxis = {p['chemotaxis']:g} mm^2/h at {spacing}"

    out = {}
    for key, (_, species, cell, (diffusion, chemotaxis, reaction)) in fastest.items():
        terms = []
        if key != "reaction" and (key == "diffusion" or diffusing) and diffusion > 0:
            terms.append(("diffusion", diffusion, diffusion_text(species, cell)))
        if key in ("positivity", "chemotaxis") and chemotaxis > 0:
            terms.append(("chemotaxis", chemotaxis, chemotaxis_text()))
        if key in ("positivity", "reaction") and reaction > 0:
            terms.append(("reaction", reaction, reaction_text[species]))
        terms.sort(key=lambda term: -term[1])
        out[key] = f"{where(species, cell)}: " + " + ".join(f"{name} {rate:.3g} /h from {text}" for name, rate, text in terms)
    out["splitting"] = "the fastest constant loss rate (decay_tnf, decay_il1, leukocyte_death, drug drainage)"
    return out
