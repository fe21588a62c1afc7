"""The hand-written reverse mode of the right-hand side against JAX's own."""

import jax
import jax.numpy as jnp
import pytest

from fields import Tissue
from solver.physics import coefficients, diffusion_rhs_with_adjoint, has_adjoint, rhs_with_adjoint
from tests.helpers import assert_close, small_problem, small_problem_3d


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("drug", [False, True])
def test_the_hand_written_rhs_adjoint_matches_jax_reverse_mode(ndim, drug):
    """rhs_with_adjoint's reverse mode against JAX's through rhs: cotangents of the state, the time
    and every parameter (the diffusivity tables through the cell diffusivities), with and without
    the losses and the diffusion terms (the split steppers' right-hand sides), and of diffusion_rhs."""
    options, params, domain, state = (small_problem if ndim == 2 else small_problem_3d)(drug=drug)
    state = state._replace(drug=0.5 * domain.cytokine, cartilage=state.cartilage * 0.8)
    t = jnp.asarray(0.3)  # inside the injury window, so its time profile's parameters count
    g = jax.tree.map(lambda u: jnp.sin(3.0 * u) + 0.5, state)
    assert has_adjoint(options)

    def pullback(make, g=g):
        out = {}
        for mode in ("autodiff", "adjoint"):
            fn = make(adjoint=mode == "adjoint")
            assert ("custom_vjp_call" in str(jax.make_jaxpr(fn)(state, t, params))) == (mode == "adjoint"), mode
            out[mode] = jax.vjp(fn, state, t, params)[1](g)
        return out

    def compare(out, what):
        flat_auto = jax.tree.flatten_with_path(out["autodiff"])[0]
        flat_adj = jax.tree.leaves(out["adjoint"])
        assert len(flat_adj) == len(flat_auto)
        for (path, theirs), ours in zip(flat_auto, flat_adj):
            scale = float(jnp.max(jnp.abs(theirs))) + 1e-300
            assert_close(ours / scale, theirs / scale, rtol=0, atol=1e-12, what=f"{what} {jax.tree_util.keystr(path)}")

    for losses in (True, False):
        for diffusion in (True, False):

            def make(adjoint, losses=losses, diffusion=diffusion):
                def fn(y, t, p):
                    coeffs = coefficients(p, domain)
                    return rhs_with_adjoint(y, t, p, coeffs, domain, options, losses, diffusion, adjoint=adjoint)

                return fn

            out = pullback(make)
            compare(out, f"{losses=} {diffusion=}")
            # what the options switch on is differentiated (cartilage's TNF diffusivity also sets the depth
            # TNF reaches into cartilage, whose matrix it damages: that part counts without diffusion)
            fluid = int(Tissue.SYNOVIAL_FLUID)
            assert (float(jnp.abs(out["adjoint"][2].diffusivity_tnf[fluid])) > 0) == diffusion
            assert float(jnp.abs(out["adjoint"][2].decay_tnf)) > 0 if losses else True
            assert float(jnp.abs(out["adjoint"][2].chemotaxis)) > 0 and float(jnp.abs(out["adjoint"][1])) > 0

    def make_diffuse(adjoint):
        def diffuse(y, t, p):
            return diffusion_rhs_with_adjoint(y._replace(cartilage=None), coefficients(p, domain), options, adjoint=adjoint)

        return diffuse

    compare(pullback(make_diffuse, g._replace(cartilage=None)), "diffusion_rhs")
