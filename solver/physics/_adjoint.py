"""The hand-written reverse mode of the right-hand side (:func:`rhs_with_adjoint`).

Diffusion and upwind chemotaxis have stencil adjoints (solver.physics._operators); the reactions
are differentiated by JAX. The caller chooses per call (``adjoint=``) whether to use them: the
solver's ``gradient`` option.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fields import State

from ._domain import DRUG_FIELDS, TRANSPORTED, Domain, ModelOptions
from ._operators import diffusion_vjp, upwind_chemotaxis_vjp
from ._params import Params
from ._rhs import Coefficients, diffusion_rhs, reactions, rhs, sensing

#: How reverse mode goes through :func:`rhs`: "adjoint" (the hand-written stencil adjoints of
#: :func:`rhs_with_adjoint`, where :func:`has_adjoint` allows) or "autodiff" (JAX differentiates
#: :func:`rhs`; forward mode needs it).
GRADIENTS = ("adjoint", "autodiff")


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
    adjoint: bool = True,
    forcing=None,
) -> State:
    """:func:`rhs`, with a hand-written reverse mode where ``adjoint`` and :func:`has_adjoint` allow.

    The same values. ``coeffs`` must be ``coefficients(params, domain)``: the adjoint passes the
    diffusivities' cotangents to the cell diffusivities ``coeffs.d_cell`` (one cell array per
    species, not one face array per species and axis), and from there JAX takes them on to the
    per-tissue tables. Domain masks and leukocyte faces are taken as constants. Forward mode
    (``jax.jvp``, ``jax.jacfwd``) cannot go through it: pass ``adjoint=False`` for those (JAX then
    says "can't apply forward-mode autodiff (jvp) to a custom_vjp function" otherwise).
    """
    if not (adjoint and has_adjoint(options)):
        return rhs(state, t, params, coeffs, domain, options, losses, diffusion, forcing)
    d_cell, d_faces, constants = _split_coefficients(coeffs, state, options, diffusion)
    return _rhs_custom(
        options, losses, diffusion, state, t, forcing, params, d_cell, d_faces, constants, jax.lax.stop_gradient(domain)
    )


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
def _rhs_custom(options, losses, diffusion, state, t, forcing, params, d_cell, d_faces, coeffs, domain):
    return rhs(state, t, params, _with_faces(coeffs, d_faces), domain, options, losses, diffusion, forcing)


def _rhs_custom_fwd(options, losses, diffusion, state, t, forcing, params, d_cell, d_faces, coeffs, domain):
    # nothing but the inputs is kept: the adjoint recomputes what it needs, inside its own stencils
    coeffs = _with_faces(coeffs, d_faces)
    out = rhs(state, t, params, coeffs, domain, options, losses, diffusion, forcing)
    return out, (state, t, forcing, params, d_cell, coeffs, domain)


def _rhs_custom_bwd(options, losses, diffusion, residuals, g):
    state, t, forcing, params, d_cell, coeffs, domain = residuals
    h = options.grid.spacing
    T, L = state.tnf, state.leukocytes
    # the reactions by JAX (pointwise terms and the means over the fluid and the cartilage)
    _, pointwise = jax.vjp(lambda y, t, fo, p: reactions(y, t, p, domain, options, losses, fo), state, t, forcing, params)
    state_bar, t_bar, forcing_bar, params_bar = pointwise(g)
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
    return state_bar, t_bar, forcing_bar, params_bar, d_bar, None, None, None


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


def diffusion_rhs_with_adjoint(state: State, coeffs: Coefficients, options: ModelOptions, adjoint: bool = True) -> State:
    """:func:`diffusion_rhs`, with the hand-written reverse mode of :func:`rhs_with_adjoint` where it applies."""
    if not (adjoint and has_adjoint(options)):
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
