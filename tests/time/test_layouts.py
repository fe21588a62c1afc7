"""How a step's Runge-Kutta stages are laid out for XLA: in a loop, behind optimization barriers or
as conditionals, all with the same results; by default the layout follows the platform."""

import jax
import jax.numpy as jnp
import pytest

from solver import Solver
from tests.helpers import assert_close, small_problem


def _layout_ops(lowered) -> dict[str, int]:
    """Optimization barriers and while loops of a lowered program, and the conditionals left in it
    after XLA:CPU compiled it (the platform choices, which lower to conditionals too, fold away)."""
    text = lowered.as_text()
    compiled = lowered.compile().as_text()
    return {
        "barriers": text.count("optimization_barrier"),
        "conditionals": compiled.count(" conditional("),
        "loops": text.count("stablehlo.while"),
    }


@pytest.mark.slow  # three layouts compiled with their gradients: ~40 s (ssp_rk3) on 2 cores
@pytest.mark.parametrize("stepper", ["ssp_rk3", "strang_rkl2"])
def test_the_stage_layouts_give_the_same_states_and_gradients(stepper):
    """The Runge-Kutta stages in a loop, written out behind optimization barriers (the GPU layout)
    and written out as conditionals (the CPU layout), all run here: same states, same gradients,
    float32 kept float32."""
    stages = 3 if stepper == "strang_rkl2" else 0

    def run(layout, precision=jnp.float64):
        options, params, domain, state = small_problem(drug=True, dtype=precision)
        state = state._replace(drug=0.5 * domain.cytokine)
        solver = Solver(options, stepper, 5, stages, layout=layout)

        def loss(p):
            final, frames = solver.trajectory(state, p, domain, 0.01, 2, checkpoint="steps")
            return jnp.sum(frames.tnf[-1] * domain.fluid) + 1e-2 * jnp.sum(final.leukocytes)

        final = solver.advance(state, 0.0, 0.01, params, domain)
        lowered = solver.advance.lower(state, 0.0, 0.01, params, domain)
        return final, jax.grad(loss)(params), _layout_ops(lowered)

    looped, looped_grad, looped_ops = run("loop")
    # stage passes per traced step: SSP-RK3 3; RKL2 s = 3 per super-step, in the opening half
    # super-step and in the step
    passes = 3 + 2 * stages
    assert looped_ops == {"barriers": 0, "conditionals": 0, "loops": 2 + (2 if stages else 0)}
    for layout in ("barrier", "conditional"):
        written, written_grad, ops = run(layout)
        if layout == "barrier":
            # SSP-RK3: between stages 1-2 and 2-3; RKL2: on its input and before each of its stages 2..s
            assert ops == {"barriers": 2 + 2 * stages, "conditionals": 0, "loops": 1}  # the steps' loop only
        else:  # a barrier only on the conditionals' predicate, one per sequence of stages
            assert ops == {"barriers": 1 + (2 if stages else 0), "conditionals": passes, "loops": 1}
        for name in ("tnf", "il1", "leukocytes", "cartilage", "drug"):
            assert_close(getattr(written, name), getattr(looped, name), rtol=1e-12, atol=1e-12, what=f"{layout} {name}")
        for name in ("chemotaxis", "decay_tnf", "diffusivity_tnf", "recruitment_rate", "drug_tnf_binding"):
            assert_close(getattr(written_grad, name), getattr(looped_grad, name), rtol=1e-10, atol=1e-14, what=f"{layout} {name}")
        if stepper == "ssp_rk3":
            written32, _, _ = run(layout, jnp.float32)
            assert all(u.dtype == jnp.float32 for u in written32)
            assert_close(written32.tnf, looped.tnf, rtol=1e-5, atol=1e-5, what=f"{layout} float32 tnf")


def test_the_stage_layout_follows_the_platform_it_is_lowered_for():
    """By default the layout is chosen per platform at lowering: stages as conditionals for a CPU,
    written out with barriers for a GPU (lowered here without one); the steps stay a loop."""
    options, params, domain, state = small_problem()
    solver = Solver(options, "ssp_rk3", 4)
    args = (state, 0.0, 0.01, params, domain)
    cpu = _layout_ops(solver.advance.trace(*args).lower(lowering_platforms=("cpu",)))
    assert cpu == {"barriers": 1, "conditionals": 3, "loops": 1}  # the barrier: on the conditionals' predicate
    # lowered for a GPU without one: not compiled here, so its conditionals are not counted
    gpu = solver.advance.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert gpu.count("optimization_barrier") == 2 and gpu.count("stablehlo.while") == 1
