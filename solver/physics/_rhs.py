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

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from fields import State, Tissue

from ._domain import DRUG_FIELDS, TRANSPORTED, Domain, ModelOptions, layer_thickness, species_region
from ._forcing import Forcing, forcing_at
from ._operators import advection, diffusion, face_diffusivities, gradient_on_faces, lower, pad_faces, upper
from ._params import DIFFUSIVITY_OF, Params


class Coefficients(NamedTuple):
    """Per-run transport coefficients: cell and face diffusivities, open faces for leukocytes."""

    d_cell: dict
    d_faces: dict
    leukocyte_faces: tuple


def per_tissue(table: jax.Array, labels: jax.Array) -> jax.Array:
    """The field ``table[labels]`` of a per-tissue value, as a sum over tissues of value x mask.

    Not a gather: the gradient of a gather is a scatter-add of every cell into a few table
    entries, which a GPU serialises on atomics (benchmarks case ``gradient``). Here the gradient is
    one masked sum per tissue.
    """
    return cast(jax.Array, sum(table[k] * (labels == k).astype(table.dtype) for k in range(table.shape[0])))  # >= 1 tissue


def coefficients(params: Params, domain: Domain) -> Coefficients:
    """Diffusivity fields from the per-tissue table (zero outside each species' region)."""
    d_cell = {s: per_tissue(getattr(params, DIFFUSIVITY_OF[s]), domain.labels) * species_region(domain, s) for s in TRANSPORTED}
    d_faces = {s: face_diffusivities(d) for s, d in d_cell.items()}
    leukocyte_faces = tuple(
        pad_faces(lower(domain.leukocyte, a) * upper(domain.leukocyte, a), a) for a in range(domain.labels.ndim)
    )
    return Coefficients(d_cell, d_faces, leukocyte_faces)


def il1_signal(A, params: Params, options: ModelOptions):
    """The fraction of IL-1 signalling left by an IL-1 receptor antagonist at ``A`` (ug/mL): 1/(1 + A/K_B),
    the competitive shift of IL-1's dose-response; 1 without one."""
    return 1.0 / (1.0 + A * (1.0 / params.drug_il1_block)) if options.blocks_il1 else 1.0


def grid_sum(u: jax.Array, fixed_order: bool = False) -> jax.Array:
    """The sum of a grid field. XLA chooses the order of a reduction's additions per program: another one
    where the field is one of a batch (``jax.vmap``, ``sweep --ensemble``) or split over devices
    (``run.devices``). With ``fixed_order`` (``run.reproducible``) the values are added pairwise in an
    order fixed by the shape alone, the same in every program: each axis from the last halved again and
    again (an odd length padded with a zero)."""
    if not fixed_order:
        return jnp.sum(u)
    for _ in range(u.ndim):
        n = u.shape[-1]
        while n > 1:
            if n % 2:
                u = jnp.concatenate([u, jnp.zeros_like(u[..., :1])], axis=-1)
                n += 1
            u = u[..., : n // 2] + u[..., n // 2 :]
            n //= 2
        u = u[..., 0]
    return u


def masked_mean(u: jax.Array, mask: jax.Array, fixed_order: bool = False) -> jax.Array:
    """Mean of ``u`` over the cells of a 0/1 ``mask`` (0 for an empty mask); ``fixed_order``: :func:`grid_sum`'s."""
    return grid_sum(u * mask, fixed_order) / jnp.maximum(grid_sum(mask, fixed_order), 1.0)


def fluid_mean(u: jax.Array, domain: Domain, options: ModelOptions) -> jax.Array:
    """Mean of ``u`` over the synovial fluid (0 without fluid)."""
    return masked_mean(u, domain.fluid, options.fixed_order_sums)


def exposure_weight(domain: Domain, options: ModelOptions, diffusivity: jax.Array, decay: jax.Array) -> jax.Array:
    """Mean of exp(-z/delta) over each cartilage cell's depth range, delta = sqrt(D_cartilage / k) (mm).

    A cytokine entering cartilage from the fluid (diffusivity D, decay k) falls off as
    exp(-z/delta) below the surface. The weight integrates that profile over the layer from
    ``domain.cartilage_depth`` to one cell deeper, so that the sum of weight x thickness over a
    column is delta whatever the grid (the penetration is a sub-grid surface layer when delta is
    below a cell). Zero outside cartilage.
    """
    delta = jnp.sqrt(jnp.maximum(diffusivity[int(Tissue.CARTILAGE)], 1e-30) / jnp.maximum(decay, 1e-30))
    # times the reciprocal, as every field divided by a parameter (solver.physics._forcing.injury_profile)
    per_mm = 1.0 / jnp.maximum(delta, 1e-9)
    x = layer_thickness(options.grid.spacing) * per_mm
    mean_over_layer = jnp.where(x > 1e-6, -jnp.expm1(-jnp.minimum(x, 1e3)) / jnp.maximum(x, 1e-6), 1.0 - 0.5 * x)
    return jnp.exp(-domain.cartilage_depth * per_mm) * mean_over_layer * domain.cartilage


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
    return w_t * fluid_mean(state.tnf, domain, options), w_i * fluid_mean(state.il1, domain, options)


def fragment_signal(cartilage: jax.Array, w_i: jax.Array, fixed_order: bool = False) -> jax.Array:
    """Phi in [0, 1]: the mean damage (1 - C) of the surface layer that IL-1 reaches (weights ``w_i``,
    :func:`exposure_weights`).

    Matrix fragments are shed from damaged surface matrix into the well-mixed fluid and cleared
    within hours, so their level in the fluid follows this damage. 0 without cartilage.
    """
    return grid_sum(w_i * (1.0 - cartilage), fixed_order) / jnp.maximum(grid_sum(w_i, fixed_order), 1e-30)


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
        e_i = e_i * il1_signal(fluid_mean(A, domain, options), p, options)
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
    # State's fields are Arrays to its users; a stepper's carry leaves fields out as None
    left_out: dict[str, Any] = dict.fromkeys(DRUG_FIELDS)
    return state._replace(**left_out)


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


def reactions(
    state: State, t, params: Params, domain: Domain, options: ModelOptions, losses: bool = True, forcing: Forcing | None = None
) -> State:
    """Every term of :func:`rhs` but diffusion and chemotaxis.

    ``forcing`` gives the injury and plasma profiles' values (a stepper's stage values,
    solver.physics._forcing); without it they are taken at ``t``.

    Most are pointwise; fluid mixing, entry into the fluid, the cartilage exposure and the
    fragment signal read means over the fluid or the cartilage. JAX
    differentiates all of them (:func:`rhs_with_adjoint` takes this part's ``jax.vjp``).
    """
    p = params
    T, I, L, C, A, B = state
    forcing = forcing_at(params, options, t) if forcing is None else forcing
    with jax.named_scope("reactions"):
        secreting = domain.synovium + domain.fluid
        t_bar, i_bar, l_bar = (fluid_mean(u, domain, options) for u in (T, I, L))
        w_t, w_i = exposure_weights(p, domain, options)
        fragments = fragment_signal(C, w_i, options.fixed_order_sums)
        # IL-1 as cells sense it: less an IL-1 receptor antagonist's share
        i_seen, i_bar_seen = I, i_bar
        if options.blocks_il1:
            i_seen, i_bar_seen = I * il1_signal(A, p, options), i_bar * il1_signal(fluid_mean(A, domain, options), p, options)
        amplification = p.il1_amplification_of_tnf * i_seen / (p.il1_half_saturation_amplification + i_seen)
        leuk_tnf = p.tnf_per_leukocyte * L * (1.0 + amplification)
        injury = p.injury_rate * forcing.injury * domain.injury
        # TNF bound by an anti-TNF and released from the complex: split off with the losses
        # (split_losses) when losses are, as one exact exchange
        binding = p.drug_tnf_binding * A * T if options.binds_tnf else 0.0
        release = p.drug_tnf_unbinding * B if options.binds_tnf else 0.0
        activated = p.recruitment_from_fragments * fragments  # chemokines of the fragment-activated lining
        drive = T + p.il1_weight_recruitment * i_seen + activated
        fluid_drive = t_bar + p.il1_weight_recruitment * i_bar_seen + activated
        capacity = 1.0 - L * (1.0 / p.leukocyte_capacity)
        e_t, e_i = w_t * t_bar, w_i * i_bar_seen
        inhibition = 1.0 + (e_t + e_i) * (1.0 / p.repair_inhibition_half_saturation)
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
            delivered = p.drug_vascular_exchange * forcing.plasma * domain.synovium
            dA = delivered + p.drug_per_tnf_bound * release + p.fluid_mixing * (fluid_mean(A, domain, options) - A) * domain.fluid
            dB = p.fluid_mixing * (fluid_mean(B, domain, options) - B) * domain.fluid
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
    forcing: Forcing | None = None,
) -> State:
    """Time derivative of every field (same units as the state, per hour).

    With the drug off, ``state.drug`` may be None (the stepper leaves it out); its derivative is then None.
    ``losses=False`` leaves out the loss terms of :func:`loss_rates` and ``diffusion=False`` the
    terms of :func:`diffusion_rhs` (for a split stepper); ``forcing`` is as for :func:`reactions`.
    """
    h = options.grid.spacing
    T, I, L, C, A, B = state
    react = reactions(state, t, params, domain, options, losses, forcing)

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
