r"""The joint-inflammation model (docs/model.md), as a pure right-hand side.

With T = TNF, I = IL-1, L = leukocytes, C = cartilage integrity, A = free drug, B = TNF bound in
drug-TNF complexes, f(T) = T / (K_chi + T), bars for means over the synovial fluid and [X] the
indicator of tissue X::

    dT/dt = div(D_T grad T) + s_inj(x,t) + a_TL L (1 + b_TI I'/(K_I + I')) + s_T [S + F]
            - k_T T - k_on A T + k_off B + k_mix (Tbar - T) [F]
    dI/dt = div(D_I grad I) + a_IL L T/(K_T + T) + s_I [S + F] - k_I I + k_mix (Ibar - I) [F]
    dL/dt = div(D_L grad L - chi L grad f(T)) + (r_syn h(T, I') [S] + r_F h(Tbar, Ibar') [F]) (1 - L/L_max)
            - d_L L + k_mix (Lbar - L) [F],        h(T, I) = (T + w_I I + w_F Phi)/(K_r + T + w_I I + w_F Phi)
    dC/dt = r_C (1 - C)/(1 + (e_T + e_I)/K_rep) - (g_T e_T + g_I e_I) C          (cartilage only)
    dA/dt = div(D_A grad A) + (k_v C_p(t) - (k_v + k_A) A) [S] - s_AT (k_on A T - k_off B) + k_mix (Abar - A) [F]
    dB/dt = div(D_A grad B) + k_on A T - k_off B - (k_v + k_A) B [S] + k_mix (Bbar - B) [F]

S: synovium, F: synovial fluid. Leukocytes are recruited from the synovial vessels into the tissue
(driven by the cytokines there) and across the thin lining into the fluid (driven by the fluid's).
e_T = w_T(x) Tbar and e_I = w_I(x) Ibar' are the cytokine exposures of cartilage: inside it a
cytokine falls off as exp(-z/delta) with depth z below the articular surface, delta =
sqrt(D_cartilage / k) (0.09 mm for TNF), thinner than a grid cell; w(x) is the mean of that
profile over the cell's depth range, so the cartilage lost per unit surface does not depend on
the grid. Phi, the matrix-fragment signal, is the mean damage (1 - C) of that exposed surface
layer (weights w_I): fragments shed by damaged matrix, well mixed in the fluid, activate the
synovial lining, whose chemokines recruit leukocytes (w_F Phi adds to the cytokine drive h).

The drug (optional) reaches the synovium from the plasma, whose level C_p(t) is the closed form
of its doses (solver._drugs), and drains to lymph. An anti-TNF binds TNF reversibly (k_on, k_off;
s_AT converts TNF bound, pg/mL, into drug bound, ug/mL); an IL-1 receptor antagonist binds no TNF
(k_on = 0) and leaves the fraction 1/(1 + A/K_B) of IL-1's signal: I' = I/(1 + A/K_B) wherever
IL-1 acts (else I' = I).
Units: mm, h, pg/mL, cells/uL, ug/mL. Cytokines, drug and complex live in every tissue but bone and
excluded cells; leukocytes in synovial fluid, synovium and capsule; C in cartilage. Basal secretion
acts in the synovium and the fluid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fields import Grid, State, Tissue

from ._drugs import plasma_concentration, plasma_peak_bound
from ._operators import (
    NO_FLUX,
    WallCondition,
    advection,
    diffusion,
    diffusion_vjp,
    face_diffusivities,
    gradient_on_faces,
    lower,
    pad_faces,
    upper,
    upwind_chemotaxis_vjp,
)
from ._params import DIFFUSIVITY_OF, Params

CYTOKINE_TISSUES = (Tissue.CARTILAGE, Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE)
LEUKOCYTE_TISSUES = (Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE)
TRANSPORTED = ("tnf", "il1", "leukocytes", "drug", "complex")
#: The fields that exist only with the drug on (None in a stepper's state without it).
DRUG_FIELDS = ("drug", "complex")


class Domain(NamedTuple):
    """Arrays derived from the geometry (traced, one compile per grid shape).

    Masks are 0/1 in the state dtype; ``injury`` is the injury region's 0/1 mask;
    ``cartilage_depth`` is, in cartilage, the depth (mm) of the top of each cell's layer below the
    articular surface (0 for cells facing the fluid) and :data:`FAR` elsewhere.
    """

    labels: jax.Array
    cytokine: jax.Array
    leukocyte: jax.Array
    cartilage: jax.Array
    synovium: jax.Array
    fluid: jax.Array
    injury: jax.Array
    cartilage_depth: jax.Array


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Static choices: changing one recompiles; everything numeric lives in :class:`Params`."""

    grid: Grid
    drug: bool = False
    drug_target: str = "tnf"  # solver._drugs.TARGETS
    drug_route: str = "sc"  # solver._drugs.ROUTES
    dose_times: tuple[float, ...] = ()  # h
    chemotaxis_scheme: str = "upwind"
    walls: tuple[tuple[str, tuple[tuple[WallCondition, WallCondition], ...]], ...] = ()

    def walls_for(self, species: str) -> tuple[tuple[WallCondition, WallCondition], ...]:
        for name, walls in self.walls:
            if name == species:
                return walls
        return ((NO_FLUX, NO_FLUX),) * self.grid.ndim

    @property
    def species(self) -> tuple[str, ...]:
        """Species that are integrated and written out."""
        base = ("tnf", "il1", "leukocytes", "cartilage")
        return base + DRUG_FIELDS if self.drug else base

    @property
    def binds_tnf(self) -> bool:
        """Whether a drug is on that binds TNF (an anti-TNF)."""
        return self.drug and self.drug_target == "tnf"

    @property
    def blocks_il1(self) -> bool:
        """Whether a drug is on that blocks the IL-1 receptor."""
        return self.drug and self.drug_target == "il1_receptor"


#: Depth (mm) given to cells that are not cartilage or face no fluid: far below any penetration.
FAR = 1e3


def make_domain(labels: np.ndarray, injury_mask: np.ndarray, dtype, spacing: tuple[float, ...]) -> Domain:
    """Masks for each species' region from integer tissue labels on a grid of this ``spacing`` (mm)."""
    labels = np.asarray(labels)

    def mask(tissues):
        return jnp.asarray(np.isin(labels, [int(t) for t in tissues]), dtype=dtype)

    return Domain(
        labels=jnp.asarray(labels, dtype=jnp.int32),
        cytokine=mask(CYTOKINE_TISSUES),
        leukocyte=mask(LEUKOCYTE_TISSUES),
        cartilage=mask((Tissue.CARTILAGE,)),
        synovium=mask((Tissue.SYNOVIUM,)),
        fluid=mask((Tissue.SYNOVIAL_FLUID,)),
        injury=jnp.asarray(np.asarray(injury_mask) & np.isin(labels, [int(t) for t in CYTOKINE_TISSUES]), dtype=dtype),
        cartilage_depth=jnp.asarray(cartilage_depth(labels, spacing), dtype=dtype),
    )


def cartilage_depth(labels: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Depth (mm) below the articular surface of the top of each cartilage cell's layer.

    The distance from the cell centre to the nearest synovial-fluid cell centre, less one cell
    (half a cell on each side): 0 for a cell sharing a face with the fluid, one cell for the next
    row. :data:`FAR` outside cartilage and where no fluid is present.
    """
    from scipy.ndimage import distance_transform_edt

    labels = np.asarray(labels)
    fluid = labels == int(Tissue.SYNOVIAL_FLUID)
    out = np.full(labels.shape, FAR)
    cartilage = labels == int(Tissue.CARTILAGE)
    if fluid.any() and cartilage.any():
        distance = distance_transform_edt(~fluid, sampling=spacing)
        out[cartilage] = np.maximum(distance[cartilage] - layer_thickness(spacing), 0.0)
    return out


def layer_thickness(spacing) -> float:
    """Thickness (mm) of one cell's layer below the articular surface: the geometric-mean spacing."""
    spacing = np.asarray(spacing, dtype=float)
    return float(np.prod(spacing) ** (1.0 / spacing.size))


class Coefficients(NamedTuple):
    """Per-run transport coefficients: cell and face diffusivities, open faces for leukocytes."""

    d_cell: dict
    d_faces: dict
    leukocyte_faces: tuple


def per_tissue(table: jax.Array, labels: jax.Array) -> jax.Array:
    """The field ``table[labels]`` of a per-tissue value, as a sum over tissues of value x mask.

    Not a gather: the gradient of a gather is a scatter-add of every cell into a few table
    entries, which a GPU serialises on atomics (40-47% of a value+grad on an H200 at 2048^2,
    benchmarks/README.md). Here the gradient is one masked sum per tissue.
    """
    return sum(table[k] * (labels == k) for k in range(table.shape[0]))


def coefficients(params: Params, domain: Domain) -> Coefficients:
    """Diffusivity fields from the per-tissue table (zero outside each species' region)."""
    region = {"leukocytes": domain.leukocyte}
    d_cell = {
        s: per_tissue(getattr(params, DIFFUSIVITY_OF[s]), domain.labels) * region.get(s, domain.cytokine) for s in TRANSPORTED
    }
    d_faces = {s: face_diffusivities(d) for s, d in d_cell.items()}
    leukocyte_faces = tuple(
        pad_faces(lower(domain.leukocyte, a) * upper(domain.leukocyte, a), a) for a in range(domain.labels.ndim)
    )
    return Coefficients(d_cell, d_faces, leukocyte_faces)


def injury_profile(params: Params, t) -> jax.Array:
    """Time profile of the injury source: exp(-(t - onset)/decay) while it lasts, else 0."""
    since = t - params.injury_onset
    on = (since >= 0) & (since < params.injury_duration)
    return jnp.where(on, jnp.exp(-jnp.maximum(since, 0.0) / params.injury_decay), 0.0)


def plasma_drug(params: Params, options: ModelOptions, t) -> jax.Array:
    """The plasma drug concentration (ug/mL) at ``t`` (h) of the scenario's doses (solver._drugs)."""
    return plasma_concentration(params, options.drug_route, options.dose_times, t)


def il1_signal(A, params: Params, options: ModelOptions):
    """The fraction of IL-1 signalling left by an IL-1 receptor antagonist at ``A`` (ug/mL): 1/(1 + A/K_B),
    the competitive shift of IL-1's dose-response; 1 without one."""
    return 1.0 / (1.0 + A / params.drug_il1_block) if options.blocks_il1 else 1.0


def masked_mean(u: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``u`` over the cells of a 0/1 ``mask`` (0 for an empty mask)."""
    return jnp.sum(u * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def fluid_mean(u: jax.Array, domain: Domain) -> jax.Array:
    """Mean of ``u`` over the synovial fluid (0 without fluid)."""
    return masked_mean(u, domain.fluid)


def exposure_weight(domain: Domain, options: ModelOptions, diffusivity: jax.Array, decay: jax.Array) -> jax.Array:
    """Mean of exp(-z/delta) over each cartilage cell's depth range, delta = sqrt(D_cartilage / k) (mm).

    A cytokine entering cartilage from the fluid (diffusivity D, decay k) falls off as
    exp(-z/delta) below the surface. The weight integrates that profile over the layer from
    ``domain.cartilage_depth`` to one cell deeper, so that the sum of weight x thickness over a
    column is delta whatever the grid (the penetration is a sub-grid surface layer when delta is
    below a cell). Zero outside cartilage.
    """
    delta = jnp.sqrt(jnp.maximum(diffusivity[int(Tissue.CARTILAGE)], 1e-30) / jnp.maximum(decay, 1e-30))
    delta = jnp.maximum(delta, 1e-9)
    x = layer_thickness(options.grid.spacing) / delta
    mean_over_layer = jnp.where(x > 1e-6, -jnp.expm1(-jnp.minimum(x, 1e3)) / jnp.maximum(x, 1e-6), 1.0 - 0.5 * x)
    return jnp.exp(-domain.cartilage_depth / delta) * mean_over_layer * domain.cartilage


def exposure_weights(params: Params, domain: Domain, options: ModelOptions) -> tuple[jax.Array, jax.Array]:
    """(w_T, w_I): :func:`exposure_weight` of TNF and of IL-1."""
    p = params
    return (
        exposure_weight(domain, options, p.diffusivity_tnf, p.decay_tnf),
        exposure_weight(domain, options, p.diffusivity_il1, p.decay_il1),
    )


def cartilage_exposure(state: State, params: Params, domain: Domain, options: ModelOptions) -> tuple[jax.Array, jax.Array]:
    """(e_T, e_I): the TNF and IL-1 (pg/mL) each cartilage cell sees, w(x) x the fluid mean."""
    w_t, w_i = exposure_weights(params, domain, options)
    return w_t * fluid_mean(state.tnf, domain), w_i * fluid_mean(state.il1, domain)


def fragment_signal(cartilage: jax.Array, w_i: jax.Array) -> jax.Array:
    """Phi in [0, 1]: the mean damage (1 - C) of the surface layer that IL-1 reaches (weights ``w_i``,
    :func:`exposure_weights`).

    Matrix fragments are shed from damaged surface matrix into the well-mixed fluid and cleared
    within hours, so their level in the fluid follows this damage. 0 without cartilage.
    """
    return jnp.sum(w_i * (1.0 - cartilage)) / jnp.maximum(jnp.sum(w_i), 1e-30)


def loss_rates(state: State, params: Params, domain: Domain, options: ModelOptions) -> State:
    """First-order loss rates K (1/h) of every species: the terms -K_X X of the equations.

    K_T = k_T + k_on A, K_I = k_I, K_L = d_L, K_C = g_T e_T + g_I e_I (cartilage),
    K_A = (k_v + k_A) [S] + s_AT k_on T, K_B = k_off + (k_v + k_A) [S].
    Each species' loss is proportional to itself, so ``X exp(-K_X dt)`` stays positive whatever
    the step: a split stepper integrates these exactly and the rest with ``rhs(..., losses=False)``.
    (Fluid mixing stays in the rest: it moves amounts, it does not remove them.)
    """
    p = params
    T, I, L, C, A, B = state
    e_t, e_i = cartilage_exposure(state, params, domain, options)
    if options.blocks_il1:
        e_i = e_i * il1_signal(fluid_mean(A, domain), p, options)
    binds = options.binds_tnf
    drained = (p.drug_vascular_exchange + p.drug_clearance) * domain.synovium
    return State(
        tnf=p.decay_tnf + p.drug_tnf_binding * A if binds else p.decay_tnf,
        il1=p.decay_il1,
        leukocytes=p.leukocyte_death,
        cartilage=p.cartilage_damage_tnf * e_t + p.cartilage_damage_il1 * e_i,
        drug=None if A is None else (drained + (p.drug_per_tnf_bound * p.drug_tnf_binding * T if binds else 0.0)),
        complex=None if B is None else p.drug_tnf_unbinding + drained,
    )


def without_drug(state: State) -> State:
    """``state`` with the drug's fields (:data:`DRUG_FIELDS`) left out (None): what a stepper carries
    when the drug is off."""
    return state._replace(**dict.fromkeys(DRUG_FIELDS))


def binding_pair(T, B, a, b, c, d, tau):
    """(T, B) after ``tau`` of dT/dt = -a T + c B, dB/dt = b T - d B (frozen rates >= 0, a >= b, d >= c):
    the exact matrix exponential of the pair. TNF bound by an anti-TNF (b = k_on A) and released
    (c = k_off) moves between free TNF and the complex; a and d are each one's whole loss rate.

    Both eigenvalues m +- s are <= 0 and every entry of exp(M tau) is >= 0 (M's off-diagonals
    are), so the values stay non-negative; what binding moves, it conserves.
    """
    half_gap = 0.5 * (a - d)
    x = half_gap**2 + b * c
    positive = x > 1e-30
    s = jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)
    slow = jnp.exp(-(0.5 * (a + d) + s) * tau)  # exp(lambda_2 tau), the faster-decaying mode
    small = s * tau < 1e-8
    safe = jnp.where(small, 1.0, s)
    # e^(m tau) sinh(s tau) / s and e^(m tau) cosh(s tau), without cancellation
    sinh_s = slow * jnp.where(small, tau, jnp.expm1(2.0 * safe * tau) / (2.0 * safe))
    cosh = slow + s * sinh_s
    return (cosh - half_gap * sinh_s) * T + c * sinh_s * B, b * sinh_s * T + (cosh + half_gap * sinh_s) * B


def split_losses(state: State, tau, params: Params, domain: Domain, options: ModelOptions) -> State:
    """The split part of a split stepper over ``tau``: every :func:`loss_rates` loss, and, with an
    anti-TNF, TNF binding to the drug and its release from the complex (:func:`binding_pair`), the
    rates frozen at the state of a half step (second order) and each part integrated exactly.

    ``rhs(..., losses=False)`` is the rest.
    """

    def advance(y, at, tau):
        rates = loss_rates(at, params, domain, options)
        out = jax.tree.map(lambda yi, ki: yi * jnp.exp(-tau * ki), y, rates)
        if options.binds_tnf:
            p = params
            tnf, bound = binding_pair(
                y.tnf, y.complex, rates.tnf, p.drug_tnf_binding * at.drug, p.drug_tnf_unbinding, rates.complex, tau
            )
            out = out._replace(tnf=tnf, complex=bound)
        return out

    return advance(state, advance(state, state, 0.5 * tau), tau)


def _transport(name: str, u, coeffs: Coefficients, options: ModelOptions):
    with jax.named_scope(f"diffusion_{name}"):
        return diffusion(u, coeffs.d_faces[name], options.grid.spacing, coeffs.d_cell[name], options.walls_for(name))


def diffusion_rhs(state: State, coeffs: Coefficients, options: ModelOptions) -> State:
    """The diffusion terms div(D grad u) alone (T, I, L, A, B; zero for C): linear, time-independent.

    A field given as None (cartilage or the drug's fields, left out by a stepper) gives None.

    A stepper that splits diffusion off (``splits_diffusion``) advances these and
    ``rhs(..., diffusion=False)`` separately.
    """
    T, I, L, C, A, B = state

    def drug_field(name, u):
        return None if u is None else (_transport(name, u, coeffs, options) if options.drug else jnp.zeros_like(u))

    return State(
        _transport("tnf", T, coeffs, options),
        _transport("il1", I, coeffs, options),
        _transport("leukocytes", L, coeffs, options),
        None if C is None else jnp.zeros_like(C),
        drug_field("drug", A),
        drug_field("complex", B),
    )


def sensing(T, params: Params):
    """Receptor-saturated sensing f(T) = T / (K_chi + T) that leukocytes climb."""
    return T / (params.chemotaxis_half_saturation + T)


def reactions(state: State, t, params: Params, domain: Domain, options: ModelOptions, losses: bool = True) -> State:
    """Every term of :func:`rhs` but diffusion and chemotaxis.

    Most are pointwise; fluid mixing, entry into the fluid, the cartilage exposure and the
    fragment signal read means over the fluid or the cartilage. JAX
    differentiates all of them (:func:`rhs_with_adjoint` takes this part's ``jax.vjp``).
    """
    p = params
    T, I, L, C, A, B = state
    with jax.named_scope("reactions"):
        secreting = domain.synovium + domain.fluid
        t_bar, i_bar, l_bar = fluid_mean(T, domain), fluid_mean(I, domain), fluid_mean(L, domain)
        w_t, w_i = exposure_weights(p, domain, options)
        fragments = fragment_signal(C, w_i)
        # IL-1 as cells sense it: less an IL-1 receptor antagonist's share
        i_seen, i_bar_seen = I, i_bar
        if options.blocks_il1:
            i_seen, i_bar_seen = I * il1_signal(A, p, options), i_bar * il1_signal(fluid_mean(A, domain), p, options)
        amplification = p.il1_amplification_of_tnf * i_seen / (p.il1_half_saturation_amplification + i_seen)
        leuk_tnf = p.tnf_per_leukocyte * L * (1.0 + amplification)
        injury = p.injury_rate * injury_profile(p, t) * domain.injury
        # TNF bound by an anti-TNF and released from the complex: split off with the losses
        # (split_losses) when losses are, as one exact exchange
        binding = p.drug_tnf_binding * A * T if options.binds_tnf else 0.0
        release = p.drug_tnf_unbinding * B if options.binds_tnf else 0.0
        activated = p.recruitment_from_fragments * fragments  # chemokines of the fragment-activated lining
        drive = T + p.il1_weight_recruitment * i_seen + activated
        fluid_drive = t_bar + p.il1_weight_recruitment * i_bar_seen + activated
        capacity = 1.0 - L / p.leukocyte_capacity
        e_t, e_i = w_t * t_bar, w_i * i_bar_seen
        inhibition = 1.0 + (e_t + e_i) / p.repair_inhibition_half_saturation
        dT = injury + leuk_tnf + p.basal_tnf * secreting
        dI = p.il1_per_leukocyte * L * T / (p.tnf_half_saturation_il1 + T) + p.basal_il1 * secreting
        recruited = p.recruitment_rate * drive / (p.recruitment_half_saturation + drive) * domain.synovium
        entering = p.fluid_recruitment * fluid_drive / (p.recruitment_half_saturation + fluid_drive) * domain.fluid
        dL = (recruited + entering) * capacity
        # joint motion mixes the fluid: every fluid cell relaxes towards the fluid's mean
        dT = dT + p.fluid_mixing * (t_bar - T) * domain.fluid
        dI = dI + p.fluid_mixing * (i_bar - I) * domain.fluid
        dL = dL + p.fluid_mixing * (l_bar - L) * domain.fluid
        repair = p.cartilage_repair * (1.0 - C) / inhibition
        if losses:
            dT = dT - p.decay_tnf * T - binding + release
            dI = dI - p.decay_il1 * I
            dL = dL - p.leukocyte_death * L
            repair = repair - (p.cartilage_damage_tnf * e_t + p.cartilage_damage_il1 * e_i) * C
        dC = domain.cartilage * repair
        if options.drug:
            # from the plasma across the synovial vessels; TNF released from complexes frees drug
            delivered = p.drug_vascular_exchange * plasma_drug(p, options, t) * domain.synovium
            dA = delivered + p.drug_per_tnf_bound * release + p.fluid_mixing * (fluid_mean(A, domain) - A) * domain.fluid
            dB = p.fluid_mixing * (fluid_mean(B, domain) - B) * domain.fluid
            if losses:
                drained = (p.drug_vascular_exchange + p.drug_clearance) * domain.synovium
                dA = dA - drained * A - p.drug_per_tnf_bound * binding
                dB = dB + binding - release - drained * B
        else:
            dA = None if A is None else jnp.zeros_like(A)
            dB = None if B is None else jnp.zeros_like(B)
    return State(dT, dI, dL, dC, dA, dB)


def chemotaxis_velocities(T, params: Params, options: ModelOptions) -> tuple[jax.Array, ...]:
    """Chemotactic face velocities chi grad f(T) (mm/h, all faces, zero on the walls)."""
    return tuple(params.chemotaxis * g for g in gradient_on_faces(sensing(T, params), options.grid.spacing))


def rhs(
    state: State,
    t,
    params: Params,
    coeffs: Coefficients,
    domain: Domain,
    options: ModelOptions,
    losses: bool = True,
    diffusion: bool = True,
) -> State:
    """Time derivative of every field (same units as the state, per hour).

    With the drug off, ``state.drug`` may be None (the stepper leaves it out); its derivative is then None.
    ``losses=False`` leaves out the loss terms of :func:`loss_rates` and ``diffusion=False`` the
    terms of :func:`diffusion_rhs` (for a split stepper).
    """
    h = options.grid.spacing
    T, I, L, C, A, B = state
    react = reactions(state, t, params, domain, options, losses)

    def transport(name, u, term):
        return _transport(name, u, coeffs, options) + term if diffusion else term

    with jax.named_scope("chemotaxis"):
        velocities = chemotaxis_velocities(T, params, options)
        chemotaxis = advection(L, velocities, h, coeffs.leukocyte_faces, options.chemotaxis_scheme)
    dT = transport("tnf", T, react.tnf)
    dI = transport("il1", I, react.il1)
    dL = transport("leukocytes", L, chemotaxis + react.leukocytes)
    dA = transport("drug", A, react.drug) if options.drug else react.drug
    dB = transport("complex", B, react.complex) if options.drug else react.complex
    # Outside its region a species has zero diffusivity, zero open faces and no source, so its
    # derivative there is zero as long as the field is (build_scenario zeroes it): no mask needed.
    return State(dT, dI, dL, react.cartilage, dA, dB)


#: How reverse mode goes through :func:`rhs` in the solver: "adjoint" (:func:`rhs_with_adjoint`'s
#: hand-written stencil adjoints, where the options allow) or "autodiff" (JAX differentiates
#: :func:`rhs`). The tests and the benchmarks' gradient case compare the two.
GRADIENT = "adjoint"


@contextlib.contextmanager
def autodiff_rhs():
    """Within this block, functions traced differentiate :func:`rhs` by JAX instead of its hand-written adjoint.

    Forward mode (``jax.jvp``, ``jax.jacfwd``) needs this: JAX cannot push tangents through a
    ``custom_vjp`` and says so ("can't apply forward-mode autodiff (jvp) to a custom_vjp
    function"). The choice is made when a function is traced, so trace it (call it the first
    time, or jit it) inside the block: a jitted function of your own traced before keeps what it
    was traced with. ``Solver.advance`` and ``Solver.trajectory`` follow the block.
    Reverse mode works either way, and so does forward mode over a gradient taken with respect to
    inputs that reach the right-hand side (a Hessian-vector product in the parameters or the state).
    """
    with gradient_mode("autodiff"):
        yield


@contextlib.contextmanager
def gradient_mode(mode: str):
    """Within this block, ``GRADIENT`` is ``mode`` ("adjoint" or "autodiff")."""
    global GRADIENT
    if mode not in ("adjoint", "autodiff"):
        raise ValueError(f"gradient mode {mode!r}: allowed adjoint, autodiff")
    saved, GRADIENT = GRADIENT, mode
    try:
        yield
    finally:
        GRADIENT = saved


def has_adjoint(options: ModelOptions) -> bool:
    """Whether :func:`rhs_with_adjoint` has a hand-written adjoint for these options.

    It has for upwind chemotaxis and no-flux walls; the limited scheme and Dirichlet or Robin
    walls are differentiated by JAX.
    """
    no_flux = all(w.kind == "no_flux" for _, walls in options.walls for pair in walls for w in pair)
    return options.chemotaxis_scheme == "upwind" and no_flux


def rhs_with_adjoint(
    state: State,
    t,
    params: Params,
    coeffs: Coefficients,
    domain: Domain,
    options: ModelOptions,
    losses: bool = True,
    diffusion: bool = True,
) -> State:
    """:func:`rhs`, with a hand-written reverse mode where :func:`has_adjoint` (and ``GRADIENT``) allow.

    The same values. ``coeffs`` must be ``coefficients(params, domain)``: the adjoint passes the
    diffusivities' cotangents to the cell diffusivities ``coeffs.d_cell`` (one cell array per
    species, not one face array per species and axis), and from there JAX takes them on to the
    per-tissue tables. Domain masks and leukocyte faces are taken as constants. Forward mode
    (``jax.jvp``, ``jax.jacfwd``) cannot go through it: trace such functions inside :func:`autodiff_rhs`.
    """
    if not _uses_adjoint(options):
        return rhs(state, t, params, coeffs, domain, options, losses, diffusion)
    d_cell, d_faces, constants = _split_coefficients(coeffs, state, options, diffusion)
    return _rhs_custom(options, losses, diffusion, state, t, params, d_cell, d_faces, constants, jax.lax.stop_gradient(domain))


def _uses_adjoint(options: ModelOptions) -> bool:
    return GRADIENT == "adjoint" and has_adjoint(options)


def _split_coefficients(coeffs: Coefficients, state: State, options: ModelOptions, diffusion: bool = True):
    """(cell diffusivities, face diffusivities, the rest behind stop_gradient) of the species whose
    diffusion is computed (none without ``diffusion``; fields given, the drug only when it is on).

    The face diffusivities stay live inputs, though their first-order cotangents are passed to the
    cell diffusivities: a gradient differentiated once more (a Hessian-vector product) then still
    sees that the forward and backward passes depend on them.
    """
    diffused = [s for s in TRANSPORTED if diffusion and getattr(state, s) is not None and (s not in DRUG_FIELDS or options.drug)]
    d_cell = {s: coeffs.d_cell[s] for s in diffused}
    d_faces = {s: coeffs.d_faces[s] for s in diffused}
    return d_cell, d_faces, jax.lax.stop_gradient(coeffs)


def _with_faces(coeffs: Coefficients, d_faces: dict) -> Coefficients:
    return coeffs._replace(d_faces={**coeffs.d_faces, **d_faces})


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _rhs_custom(options, losses, diffusion, state, t, params, d_cell, d_faces, coeffs, domain):
    return rhs(state, t, params, _with_faces(coeffs, d_faces), domain, options, losses, diffusion)


def _rhs_custom_fwd(options, losses, diffusion, state, t, params, d_cell, d_faces, coeffs, domain):
    # nothing but the inputs is kept: the adjoint recomputes what it needs, inside its own stencils
    coeffs = _with_faces(coeffs, d_faces)
    return rhs(state, t, params, coeffs, domain, options, losses, diffusion), (state, t, params, d_cell, coeffs, domain)


def _rhs_custom_bwd(options, losses, diffusion, residuals, g):
    state, t, params, d_cell, coeffs, domain = residuals
    h = options.grid.spacing
    T, L = state.tnf, state.leukocytes
    # the reactions by JAX (pointwise terms and the means over the fluid and the cartilage)
    _, pointwise = jax.vjp(lambda y, t, p: reactions(y, t, p, domain, options, losses), state, t, params)
    state_bar, t_bar, params_bar = pointwise(g)
    # chemotaxis: the stencil adjoint, then the sensing f(T) by JAX
    with jax.named_scope("chemotaxis_adjoint"):
        s, sensing_vjp = jax.vjp(sensing, T, params)
        l_bar, s_bar, chi_bar = upwind_chemotaxis_vjp(L, s, g.leukocytes, params.chemotaxis, coeffs.leukocyte_faces, h)
        t_from_s, p_from_s = sensing_vjp(s_bar)
    params_bar = jax.tree.map(jnp.add, params_bar, p_from_s)
    params_bar = params_bar._replace(chemotaxis=params_bar.chemotaxis + chi_bar)
    state_bar = state_bar._replace(tnf=state_bar.tnf + t_from_s, leukocytes=state_bar.leukocytes + l_bar)
    u_bar, d_bar = _diffusion_adjoint(state, g, d_cell, coeffs, h)
    state_bar = state_bar._replace(**{name: getattr(state_bar, name) + u for name, u in u_bar.items()})
    # None: no cotangent. The face diffusivities' part is in d_bar; masks and open faces are constants.
    return state_bar, t_bar, params_bar, d_bar, None, None, None


_rhs_custom.defvjp(_rhs_custom_fwd, _rhs_custom_bwd)


def _diffusion_adjoint(state, g, d_cell, coeffs, h):
    """Cotangents of the diffusion terms of the species in ``d_cell``: of their fields and cell diffusivities."""
    u_bar, d_bar = {}, {}
    for name in d_cell:
        with jax.named_scope(f"diffusion_{name}_adjoint"):
            u_bar[name], d_bar[name] = diffusion_vjp(
                getattr(state, name), getattr(g, name), coeffs.d_faces[name], d_cell[name], h
            )
    return u_bar, d_bar


def diffusion_rhs_with_adjoint(state: State, coeffs: Coefficients, options: ModelOptions) -> State:
    """:func:`diffusion_rhs`, with the hand-written reverse mode of :func:`rhs_with_adjoint` where it applies."""
    if not _uses_adjoint(options):
        return diffusion_rhs(state, coeffs, options)
    return _diffusion_custom(options, state, *_split_coefficients(coeffs, state, options))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _diffusion_custom(options, state, d_cell, d_faces, coeffs):
    return diffusion_rhs(state, _with_faces(coeffs, d_faces), options)


def _diffusion_custom_fwd(options, state, d_cell, d_faces, coeffs):
    coeffs = _with_faces(coeffs, d_faces)
    return diffusion_rhs(state, coeffs, options), (state, d_cell, coeffs)


def _diffusion_custom_bwd(options, residuals, g):
    state, d_cell, coeffs = residuals
    u_bar, d_bar = _diffusion_adjoint(state, g, d_cell, coeffs, options.grid.spacing)
    # the fields that do not diffuse (cartilage; the drug when it is off) have zero derivatives
    state_bar = jax.tree.map(jnp.zeros_like, state)._replace(**u_bar)
    return state_bar, d_bar, None, None


_diffusion_custom.defvjp(_diffusion_custom_fwd, _diffusion_custom_bwd)


#: Empirical accuracy cap of a diffusion-splitting step: dt * (fastest constant loss rate) <= this.
SPLIT_ACCURACY = 0.25


def stable_dt(
    params: Params,
    state: State,
    options: ModelOptions,
    ssp_coefficient: float = 1.0,
    split_losses: bool = False,
    split_diffusion: bool = False,
) -> dict[str, float]:
    """Largest stable forward-Euler steps (h) per limit, times the stepper's SSP coefficient.

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
    change on the time scale of their turnover 1/k. Measured on the 0.5 mm knee with a dose:
    1.4% error in the fluid time courses at the cap, 0.1% at a quarter of it (tests/test_solver.py).
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


#: Summary scalars written per frame, with units (2D totals are per mm of depth).
SUMMARY_UNITS: dict[str, str] = {
    "synovial_fluid_tnf": "pg/mL",
    "synovial_fluid_il1": "pg/mL",
    "synovial_fluid_leukocytes": "cells/uL",
    "synovial_fluid_drug": "ug/mL",
    "synovial_fluid_complex": "pg/mL",
    "plasma_drug": "ug/mL",
    "cartilage_integrity": "1",
    "total_tnf": "pg",
    "total_il1": "pg",
    "total_leukocytes": "cells",
    "total_drug": "ug",
    "total_complex": "pg",
}

#: The summaries that exist only with the drug on.
DRUG_SUMMARIES = ("synovial_fluid_drug", "synovial_fluid_complex", "plasma_drug", "total_drug", "total_complex")


def summary_names(options: ModelOptions) -> tuple[str, ...]:
    """Names of the per-frame summaries a run with these options writes (drug ones only with the drug)."""
    return tuple(name for name in SUMMARY_UNITS if options.drug or name not in DRUG_SUMMARIES)


def summaries(state: State, domain: Domain, options: ModelOptions, params: Params | None = None, t=0.0) -> dict[str, jax.Array]:
    """Per-frame clinical scalars at time ``t`` (h): synovial-fluid means, mean cartilage integrity,
    the plasma drug level (with the drug on: needs ``params``), totals.

    Totals integrate over the grid: pg/mL * mm^3 * 1e-3 mL/mm^3 = pg; cells/uL * mm^3 = cells.
    """
    vol = options.grid.cell_volume
    mean = masked_mean
    out = {
        "synovial_fluid_tnf": mean(state.tnf, domain.fluid),
        "synovial_fluid_il1": mean(state.il1, domain.fluid),
        "synovial_fluid_leukocytes": mean(state.leukocytes, domain.fluid),
        "synovial_fluid_drug": mean(state.drug, domain.fluid),
        "synovial_fluid_complex": mean(state.complex, domain.fluid),
        "plasma_drug": plasma_drug(params, options, t) if options.drug else None,
        "cartilage_integrity": mean(state.cartilage, domain.cartilage),
        "total_tnf": jnp.sum(state.tnf) * vol * 1e-3,
        "total_il1": jnp.sum(state.il1) * vol * 1e-3,
        "total_leukocytes": jnp.sum(state.leukocytes) * vol,
        "total_drug": jnp.sum(state.drug) * vol * 1e-3,
        "total_complex": jnp.sum(state.complex) * vol * 1e-3,
    }
    return {name: out[name] for name in summary_names(options)}


def health(state: State) -> dict[str, jax.Array]:
    """Divergence checks: whether all values are finite, and each field's minimum and largest magnitude."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(u)) for u in state]))
    fields = state._asdict().items()
    return {
        "finite": finite,
        **{f"min_{name}": jnp.min(u) for name, u in fields},
        **{f"max_abs_{name}": jnp.max(jnp.abs(u)) for name, u in fields},
    }
