"""The per-tissue coefficient fields of the right-hand side."""

import jax
import jax.numpy as jnp
import numpy as np

from solver.physics import coefficients
from solver.physics._rhs import per_tissue
from tests.helpers import assert_close, small_problem


def test_per_tissue_fields_and_their_gradient_need_no_gather_or_scatter():
    """Diffusivity fields come from the per-tissue tables by masked sums: equal to indexing the
    table, and the table's gradient (every cell's cotangent summed per tissue) has no scatter,
    which a GPU runs as contended atomic adds."""
    options, params, domain, state = small_problem()
    labels = np.asarray(domain.labels)
    table = params.diffusivity_tnf
    assert_close(per_tissue(table, domain.labels), np.asarray(table)[labels], rtol=0, atol=0)
    assert per_tissue(table.astype(jnp.float32), domain.labels).dtype == jnp.float32  # x64 is on here
    weights = jnp.asarray(np.random.default_rng(3).uniform(size=labels.shape))

    def loss(p):
        return jnp.sum(coefficients(p, domain).d_cell["tnf"] * weights)

    grad = jax.grad(loss)(params).diffusivity_tnf
    cytokine = np.asarray(domain.cytokine, bool)
    expected = [float(np.sum(np.asarray(weights)[(labels == k) & cytokine])) for k in range(table.shape[0])]
    assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert sum(e > 0 for e in expected) >= 3  # several tissues carry TNF
    hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
    assert "scatter" not in hlo and "gather" not in hlo
