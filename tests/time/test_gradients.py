"""Reverse mode through the solver: against central differences, with the hand-written adjoint as
with JAX's own, differentiated twice, and what the checkpoint schedules keep."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fields import Grid
from solver import Solver, get_solver
from solver.physics import WallCondition, coefficients, has_adjoint, rhs_with_adjoint
from tests.helpers import assert_close, setup, small_problem, uniform_labels


# the split steppers' checks (~15 and ~25 s) run with the slow validation
@pytest.mark.parametrize(
    "stepper",
    ["ssp_rk3", pytest.param("strang_ssp_rk3", marks=pytest.mark.slow), pytest.param("strang_rkl2", marks=pytest.mark.slow)],
)
def test_gradient_through_the_solver_matches_central_differences(stepper):
    options, params, domain, state = small_problem(drug=True)
    state = state._replace(drug=0.5 * domain.cytokine)
    solver = get_solver(options, stepper, 5, rkl2_stages=3 if stepper == "strang_rkl2" else 0)

    # one state per frame kept for strang_rkl2 (its nested checkpoints), every step's for the others
    checkpoint = "frames" if stepper == "strang_rkl2" else "steps"

    @jax.jit
    def loss(p):
        final, frames = solver.trajectory(state, p, domain, 0.01, 3, checkpoint=checkpoint)
        return jnp.sum(frames.tnf[-1] * domain.fluid) + 1e-2 * jnp.sum(final.leukocytes)

    grads = jax.grad(loss)(params)
    for name in ("chemotaxis", "decay_tnf", "tnf_per_leukocyte", "recruitment_rate", "injury_rate", "drug_tnf_binding"):
        value = getattr(params, name)
        eps = 1e-5 * max(1.0, abs(float(value)))
        up = loss(params._replace(**{name: value + eps}))
        down = loss(params._replace(**{name: value - eps}))
        fd = (up - down) / (2 * eps)
        assert_close(getattr(grads, name), fd, rtol=1e-6, atol=1e-9, what=name)
    # the per-tissue TNF diffusivities, along one direction (through the diffusion operator or RKL2)
    direction = jnp.linspace(0.5, 1.5, params.diffusivity_tnf.size)
    eps = 1e-6
    up = loss(params._replace(diffusivity_tnf=params.diffusivity_tnf + eps * direction))
    down = loss(params._replace(diffusivity_tnf=params.diffusivity_tnf - eps * direction))
    assert_close(jnp.sum(grads.diffusivity_tnf * direction), (up - down) / (2 * eps), rtol=1e-6, atol=1e-9, what="D_T")


# ~20-26 s each: run with the slow validation; the right-hand side's adjoint is checked in
# tests/physics/test_adjoint.py
@pytest.mark.slow
@pytest.mark.parametrize("stepper", ["ssp_rk3", "strang_rkl2"])
def test_the_solver_gradient_is_the_same_with_the_hand_written_adjoint(stepper):
    """Through the whole solver (frames, steps, stages, checkpoints): the same gradient with the
    hand-written adjoint as with JAX's (strang_ssp_rk3 differs from ssp_rk3 only in the right-hand
    side's losses, compared there); the limited scheme and drainage walls keep JAX's."""
    options, params, domain, state = small_problem(drug=True)
    state = state._replace(drug=0.5 * domain.cytokine)
    stages = 3 if stepper == "strang_rkl2" else 0

    # the stages in a loop compile faster on a CPU; the layouts are compared in test_layouts.py
    def grad(mode, layout="loop", lower_for=None):
        solver = Solver(options, stepper, 4, stages, gradient=mode, layout=layout)

        def loss(p):
            final, frames = solver.trajectory(state, p, domain, 0.01, 2, checkpoint="steps")
            return jnp.sum(frames.tnf[-1] * domain.fluid) + 1e-2 * jnp.sum(final.leukocytes) + jnp.sum(final.cartilage)

        if lower_for:
            return jax.jit(jax.grad(loss)).trace(params).lower(lowering_platforms=(lower_for,)).as_text()
        return jax.jit(jax.grad(loss))(params)

    auto, adjoint = grad("autodiff"), grad("adjoint")
    if stepper == "ssp_rk3":
        # the point of it, in the program lowered for a GPU (not compiled here; a GPU's layout:
        # barriers): JAX transposes each shifted slice of a stencil into a zero-padded copy; the
        # adjoint's stencils gather instead
        pads = {}
        for mode in ("autodiff", "adjoint"):
            lowered = grad(mode, layout="platform", lower_for="cuda")
            pads[mode] = lowered.count("stablehlo.pad")
            assert "scatter" not in lowered and "gather" not in lowered
        assert pads["adjoint"] < pads["autodiff"] / 2, pads
    for name in params._fields:
        theirs = getattr(auto, name)
        assert_close(getattr(adjoint, name), theirs, rtol=1e-10, atol=1e-13 * (1 + float(jnp.max(jnp.abs(theirs)))), what=name)
    assert float(jnp.abs(adjoint.chemotaxis)) > 0 and float(jnp.max(jnp.abs(adjoint.diffusivity_il1))) > 0

    if stepper == "ssp_rk3":  # forward mode cannot go through the custom_vjp; a solver with gradient="autodiff" can
        solver = Solver(options, stepper, 4, stages)
        forward = Solver(options, stepper, 4, stages, gradient="autodiff")

        def final_tnf(chi, solver=solver):
            run = solver.trajectory(state, params._replace(chemotaxis=chi), domain, 0.01, 2, checkpoint="steps")
            return jnp.sum(run[0].tnf)

        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(final_tnf, (params.chemotaxis,), (1.0,))
        tangent = jax.jvp(lambda chi: final_tnf(chi, forward), (params.chemotaxis,), (jnp.ones_like(params.chemotaxis),))[1]
        assert_close(tangent, jax.grad(final_tnf)(params.chemotaxis), rtol=1e-10, what="jvp = grad")

        # the jitted interval function of the adjoint solver, traced by a run first, leaves the
        # autodiff solver's its own
        def advanced_tnf(chi, solver=solver):
            return jnp.sum(solver.advance(state, 0.0, 0.01, params._replace(chemotaxis=chi), domain).tnf)

        advanced_tnf(params.chemotaxis)
        tangent = jax.jvp(lambda chi: advanced_tnf(chi, forward), (params.chemotaxis,), (jnp.ones_like(params.chemotaxis),))[1]
        assert_close(tangent, jax.grad(advanced_tnf)(params.chemotaxis), rtol=1e-10, what="advance: jvp = grad")
        # each solver traces in its own mode
        args = (state, 0.0, 0.01, params, domain)
        assert "custom_vjp_call" not in str(
            jax.make_jaxpr(Solver(options, stepper, 4, stages, gradient="autodiff").advance)(*args)
        )
        assert "custom_vjp_call" in str(jax.make_jaxpr(Solver(options, stepper, 4, stages).advance)(*args))

    drained = ((WallCondition("robin", 0.0, 0.1), WallCondition()), (WallCondition(), WallCondition()))
    assert not has_adjoint(options.__class__(grid=options.grid, chemotaxis_scheme="limited"))
    assert not has_adjoint(options.__class__(grid=options.grid, walls=(("tnf", drained),)))


@pytest.mark.slow  # ~28 s of compiling on 2 cores
def test_a_gradient_through_the_hand_written_adjoint_can_be_differentiated_again():
    """A Hessian-vector product (forward mode over the gradient) of a loss through two right-hand sides
    is the same with the adjoint as with JAX's reverse mode: its forward and backward passes still
    depend on the face diffusivities."""
    options, params, domain, state = small_problem(drug=True)
    state = state._replace(drug=0.5 * domain.cytokine)
    t = jnp.asarray(0.3)
    direction = jax.tree.map(lambda p: 0.1 * p * (1.0 + 0.5 * jnp.cos(jnp.arange(p.size).reshape(p.shape))), params)

    def hvp(mode):
        adjoint = mode == "adjoint"

        def loss(p):
            coeffs = coefficients(p, domain)
            k = rhs_with_adjoint(state, t, p, coeffs, domain, options, adjoint=adjoint)
            mid = jax.tree.map(lambda y, ki: y + 1e-3 * ki, state, k)
            k2 = rhs_with_adjoint(mid, t, p, coeffs, domain, options, adjoint=adjoint)
            return sum(jnp.sum(jnp.sin(u)) for u in k2)

        return jax.jvp(jax.grad(loss), (params,), (direction,))[1]

    def hvp_solver(mode):  # through the solver's checkpoints, stages and loop (compiles faster on a CPU)
        solver = Solver(options, "ssp_rk3", 2, gradient=mode, layout="loop")

        def loss(p):
            return sum(jnp.sum(jnp.sin(u)) for u in solver.advance(state, 0.0, 0.01, p, domain))

        return jax.jvp(jax.grad(loss), (params,), (direction,))[1]

    through = {mode: hvp_solver(mode) for mode in ("autodiff", "adjoint")}
    for name in params._fields:
        theirs = getattr(through["autodiff"], name)
        scale = float(jnp.max(jnp.abs(theirs))) + 1e-300
        assert_close(getattr(through["adjoint"], name) / scale, theirs / scale, rtol=0, atol=1e-10, what=f"solver {name}")

    auto, adjoint = hvp("autodiff"), hvp("adjoint")
    for name in params._fields:
        theirs = getattr(auto, name)
        scale = float(jnp.max(jnp.abs(theirs))) + 1e-300
        assert_close(getattr(adjoint, name) / scale, theirs / scale, rtol=0, atol=1e-10, what=name)
    assert float(jnp.max(jnp.abs(adjoint.diffusivity_tnf))) > 0


@pytest.mark.slow  # ~15 s
def test_reverse_mode_keeps_about_one_state_per_step():
    """Checkpointing: the compiled gradient's working memory grows by a few states per extra sub-step,
    not by every intermediate of every stage (about 100 fields per step without it). Over 2 frames,
    checkpoint="steps" keeps the steps of both frames, and those of one frame once more while they are
    stacked: 3 states per sub-step. (What "frames" keeps: test_checkpoint_schedules_... below.)"""
    checkpoint, states = "steps", 3
    grid = Grid((32, 32), (0.1, 0.1))
    y, x = grid.mesh()
    init = {"tnf": 50 * np.exp(-((x - 1.6) ** 2 + (y - 1.6) ** 2)), "leukocytes": np.full(grid.shape, 300.0)}
    options, params, domain, state = setup(grid, uniform_labels(grid.shape), init)

    def temp_bytes(n_sub):
        solver = get_solver(options, "ssp_rk3", n_sub)

        def loss(p):
            final, _ = solver.trajectory(state, p, domain, 1e-3, 2, checkpoint=checkpoint)
            return jnp.sum(final.leukocytes)

        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    state_bytes = 4 * grid.size * 8  # T, I, L, C in float64
    per_step = (temp_bytes(40) - temp_bytes(8)) / 32
    assert per_step < (states + 0.01) * state_bytes, per_step / state_bytes


def _kept_bytes(fn, *args) -> int:
    """Bytes reverse mode keeps for the backward pass (the VJP's saved values), from shapes only."""
    vjp = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp))


# one stepper in the fast suite (~15 s each), the split ones with the slow validation
@pytest.mark.parametrize(
    "stepper",
    ["ssp_rk3", pytest.param("strang_ssp_rk3", marks=pytest.mark.slow), pytest.param("strang_rkl2", marks=pytest.mark.slow)],
)
def test_checkpoint_schedules_give_one_gradient_and_keep_what_they_say(stepper):
    """checkpoint="steps" keeps one state per sub-step (nothing of the stages, nor of the split steppers'
    opening half-steps but their input), "frames" one per frame; the gradients are the same."""
    options, params, domain, state = small_problem()
    solver = get_solver(options, stepper, 3, rkl2_stages=3 if stepper == "strang_rkl2" else 0)

    def loss(p, checkpoint, n_frames):
        final, frames = solver.trajectory(state, p, domain, 0.01, n_frames, checkpoint=checkpoint)
        return jnp.sum(frames.tnf[-1] * domain.fluid) + 1e-2 * jnp.sum(final.leukocytes)

    if stepper != "strang_rkl2":  # (its compile takes 30 s; its "frames" gradient is checked against central differences)
        steps, frames = (jax.jit(jax.grad(lambda p, c=c: loss(p, c, 2)))(params) for c in ("steps", "frames"))
        for a, b in zip(jax.tree.leaves(frames), jax.tree.leaves(steps)):
            assert_close(a, b, rtol=1e-12, atol=1e-300)

    state_bytes = 4 * state.tnf.size * state.tnf.dtype.itemsize  # T, I, L, C (the drug is off)

    def growth(checkpoint):
        return _kept_bytes(lambda p: loss(p, checkpoint, 6), params) - _kept_bytes(lambda p: loss(p, checkpoint, 4), params)

    # two frames more: their states, and a few scalars (their times); a split stepper keeps the input
    # of its opening half-step too (strang_rkl2: without cartilage, which does not diffuse)
    opening = {"ssp_rk3": 0, "strang_ssp_rk3": state_bytes, "strang_rkl2": state_bytes * 3 // 4}[stepper]
    assert 2 * (3 * state_bytes + opening) <= growth("steps") <= 2 * (3 * state_bytes + opening) + 64
    assert 2 * state_bytes <= growth("frames") <= 2 * state_bytes + 64


def test_auto_checkpoint_keeps_steps_where_they_fit():
    options, params, domain, state = small_problem()
    solver = get_solver(options, "ssp_rk3", 3)
    state_bytes = 4 * state.tnf.size * state.tnf.dtype.itemsize
    budget = 12 * state_bytes
    # counted: (frames + 1) x 3 steps (one frame's steps twice while the compiled program stacks them)
    assert solver.checkpoint_for(state, 3, 1, budget) == "steps"
    assert solver.checkpoint_for(state, 4, 1, budget) == "frames"
    # the states of every member jax.vmap runs it over count
    assert solver.checkpoint_for(state, 1, 2, budget) == "steps"
    assert solver.checkpoint_for(state, 2, 2, budget) == "frames"

    def kept(n_frames, checkpoint, members=1):
        def loss(p):
            run = solver.trajectory(
                state, p, domain, 0.01, n_frames, checkpoint=checkpoint, members=members, memory_budget=budget
            )
            return jnp.sum(run[0].tnf)

        return _kept_bytes(loss, params)

    assert kept(3, "auto") == kept(3, "steps") != kept(3, "frames")
    assert kept(4, "auto") == kept(4, "frames") != kept(4, "steps")
    assert kept(2, "auto", members=2) == kept(2, "frames") != kept(2, "steps")
    with pytest.raises(ValueError, match="checkpoint = 'all': allowed are 'auto', 'steps', 'frames'"):
        solver.trajectory(state, params, domain, 0.01, 2, checkpoint="all")
    with pytest.raises(ValueError, match='checkpoint="auto" needs memory_budget'):
        solver.trajectory(state, params, domain, 0.01, 2)
