"""The compiled solver: parameters as arguments (no recompile, grad, vmap), step-size limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _problems import integrate, layered_labels, setup
from conftest import assert_close

from fields import Grid, Tissue
from solver import StepTooLarge, choose_substeps, get_solver
from solver._steppers import SSPRK3


def _problem(**overrides):
    grid = Grid((8, 10), (0.25, 0.25))
    rng = np.random.default_rng(3)
    init = {
        "tnf": 20 * rng.uniform(size=grid.shape),
        "il1": 5 * rng.uniform(size=grid.shape),
        "leukocytes": 300 * rng.uniform(size=grid.shape),
        "cartilage": np.ones(grid.shape),
    }
    mask = np.zeros(grid.shape, bool)
    mask[2:5, 3:6] = True
    return setup(grid, layered_labels(grid.shape), init, injury_mask=mask, **overrides)


def test_a_new_parameter_value_does_not_recompile(caplog):
    """Counted from JAX's compile log (not the jit's C++ dispatch cache, whose size depends on what
    ran before in the process): one compile of the interval function for both parameter sets."""
    import logging

    from solver._simulate import Solver

    options, params, domain, state = _problem()
    solver = Solver(options, "ssp_rk3", 7)  # its own jitted functions, compiled here
    other = params._replace(
        chemotaxis=params.chemotaxis * 3, decay_tnf=params.decay_tnf * 0.5, diffusivity_tnf=params.diffusivity_tnf * 1.1
    )
    with caplog.at_level(logging.DEBUG), jax.log_compiles(True):
        first = solver.advance(state, 0.0, 0.01, params, domain)
        second = solver.advance(state, 0.0, 0.02, other, domain)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage() and "_advance" in r.getMessage()]
    assert len(compiles) == 1, compiles
    assert float(jnp.max(jnp.abs(first.tnf - second.tnf))) > 1e-3  # and the value was used


# strang_rkl2's check (~25 s) runs with the slow validation; its adjoint is compared below
@pytest.mark.parametrize("stepper", ["ssp_rk3", "strang_ssp_rk3", pytest.param("strang_rkl2", marks=pytest.mark.slow)])
def test_gradient_through_the_solver_matches_central_differences(stepper):
    options, params, domain, state = _problem(drug=True)
    state = state._replace(drug=0.5 * domain.cytokine)
    solver = get_solver(options, stepper, 5, stages=3 if stepper == "strang_rkl2" else 0)

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


@pytest.mark.slow  # three layouts compiled with their gradients: ~40 s (ssp_rk3) on 2 cores
@pytest.mark.parametrize("stepper", ["ssp_rk3", "strang_rkl2"])
def test_the_stage_layouts_give_the_same_states_and_gradients(stepper, monkeypatch):
    """The Runge-Kutta stages in a loop, written out behind optimization barriers (the GPU layout)
    and written out as conditionals (the CPU layout), all run here: same states, same gradients,
    float32 kept float32."""
    import solver._steppers as steppers
    from solver._simulate import Solver

    stages = 3 if stepper == "strang_rkl2" else 0

    def run(layout, precision=jnp.float64):
        monkeypatch.setattr(steppers, "STAGE_LAYOUT", layout)
        options, params, domain, state = _problem(drug=True, dtype=precision)
        state = state._replace(drug=0.5 * domain.cytokine)
        solver = Solver(options, stepper, 5, stages)  # not the cached one: the layout is chosen when traced

        def loss(p):
            final, frames = solver.trajectory(state, p, domain, 0.01, 2)
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
    from solver._simulate import Solver

    options, params, domain, state = _problem()
    solver = Solver(options, "ssp_rk3", 4)
    args = (state, 0.0, 0.01, params, domain)
    cpu = _layout_ops(solver.advance.trace(*args).lower(lowering_platforms=("cpu",)))
    assert cpu == {"barriers": 1, "conditionals": 3, "loops": 1}  # the barrier: on the conditionals' predicate
    # lowered for a GPU without one: not compiled here, so its conditionals are not counted
    gpu = solver.advance.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert gpu.count("optimization_barrier") == 2 and gpu.count("stablehlo.while") == 1


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


def test_per_tissue_fields_and_their_gradient_need_no_gather_or_scatter():
    """Diffusivity fields come from the per-tissue tables by masked sums: equal to indexing the
    table, and the table's gradient (every cell's cotangent summed per tissue) has no scatter,
    which a GPU runs as contended atomic adds."""
    from solver._model import coefficients, per_tissue

    options, params, domain, state = _problem()
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


def test_vmap_over_parameter_sets_matches_separate_runs():
    options, params, domain, state = _problem()
    solver = get_solver(options, "ssp_rk3", 5)
    rates = jnp.array([100.0, 200.0, 400.0])
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *x.shape)), params)._replace(recruitment_rate=rates)
    out = jax.vmap(lambda p: solver.advance(state, 0.0, 0.01, p, domain))(batched)
    for i, r in enumerate(rates):
        single = solver.advance(state, 0.0, 0.01, params._replace(recruitment_rate=r), domain)
        assert_close(out.leukocytes[i], single.leukocytes, rtol=1e-12)
    assert float(jnp.max(jnp.abs(out.leukocytes[2] - out.leukocytes[0]))) > 0


def test_a_time_step_above_the_stable_limit_is_refused():
    options, params, domain, state = _problem()
    n_sub, dt, limits = choose_substeps(1.0, params, state, options, SSPRK3(), 0.9)
    assert dt <= 0.9 * min(limits.values()) * (1 + 1e-12)
    with pytest.raises(StepTooLarge, match="above the stable limit"):
        choose_substeps(1.0, params, state, options, SSPRK3(), 0.9, dt=2 * min(limits.values()))
    # right at the limit is accepted and divides the interval exactly
    n_sub, dt, _ = choose_substeps(1.0, params, state, options, SSPRK3(), 0.9, dt=min(limits.values()))
    assert_close(n_sub * dt, 1.0, rtol=1e-14)


def test_the_stable_limit_is_not_far_from_the_real_one():
    """Running pure diffusion at 1.5x the diffusion limit blows up; at 0.9x it does not."""
    from _problems import TRANSPORT_ONLY, uniform_labels

    grid = Grid((16, 16), (0.1, 0.1))
    rng = np.random.default_rng(0)
    options, params, domain, state = setup(
        grid, uniform_labels(grid.shape), {"il1": rng.uniform(size=grid.shape)}, **TRANSPORT_ONLY
    )
    _, _, limits = choose_substeps(1.0, params, state, options, SSPRK3(), 1.0)
    solver = get_solver(options, "ssp_rk3", 200)
    ok = solver.advance(state, 0.0, 0.9 * limits["diffusion"], params, domain)
    bad = solver.advance(state, 0.0, 1.5 * limits["diffusion"], params, domain)
    assert float(jnp.max(jnp.abs(ok.il1))) <= 1.0
    assert not float(jnp.max(jnp.abs(bad.il1))) <= 10.0


@pytest.mark.parametrize("stepper", ["ssp_rk3", "strang_ssp_rk3", "strang_rkl2"])
def test_a_float32_run_computes_in_float32_even_with_x64_on(stepper):
    """x64 is on in the tests; a float32 state must not be promoted to float64 arithmetic."""
    options, params, domain, state = _problem()
    state32 = jax.tree.map(lambda u: u.astype(jnp.float32), state)
    params32 = jax.tree.map(lambda u: u.astype(jnp.float32), params)
    domain32 = domain._replace(**{k: getattr(domain, k).astype(jnp.float32) for k in domain._fields if k != "labels"})
    solver = get_solver(options, stepper, 3, stages=4 if stepper == "strang_rkl2" else 0)
    out = solver.advance(state32, 0.0, 0.01, params32, domain32)
    assert all(u.dtype == jnp.float32 for u in out)
    hlo = solver.advance.lower(state32, 0.0, 0.01, params32, domain32).compile().as_text()
    # only scalars (time, dt) may be float64; no float64 array of the grid's shape
    assert "f64[8,10]" not in hlo


def test_species_stay_zero_outside_their_regions_with_every_term_on():
    """No mask is applied to the derivatives: zero diffusivity, closed faces and local sources must keep
    cytokines out of bone, leukocytes out of cartilage and bone, and integrity inside cartilage."""
    from fields import Tissue

    options, params, domain, state = _problem(drug=True, chemotaxis=2.0)
    state = state._replace(drug=state.tnf * 0 + 1.0 * domain.cytokine)
    final, _, _ = integrate(options, params, domain, state, 2.0)
    labels = np.asarray(domain.labels)
    bone = labels == int(Tissue.BONE)
    for name in ("tnf", "il1", "drug"):
        assert np.all(np.asarray(getattr(final, name))[bone] == 0), name
    no_leuk = np.isin(labels, [int(Tissue.BONE), int(Tissue.CARTILAGE)])
    assert np.all(np.asarray(final.leukocytes)[no_leuk] == 0)
    assert np.all(np.asarray(final.cartilage)[labels != int(Tissue.CARTILAGE)] == 0)
    # and things did happen inside
    assert float(jnp.max(jnp.abs(final.leukocytes - state.leukocytes))) > 1.0


def test_reverse_mode_keeps_about_one_state_per_step():
    """Checkpointing: the compiled gradient's working memory grows by a few states per extra sub-step,
    not by every intermediate of every stage (about 100 fields per step without it). Over 2 frames,
    checkpoint="steps" keeps the steps of both frames, and those of one frame once more while they are
    stacked: 3 states per sub-step. (What "frames" keeps: test_checkpoint_schedules_... below.)"""
    checkpoint, states = "steps", 3
    from _problems import uniform_labels

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


# strang_rkl2's case (~11 s) runs with the slow validation
@pytest.mark.parametrize(
    "stepper, binding", [("strang_ssp_rk3", "diffusion"), pytest.param("strang_rkl2", "splitting", marks=pytest.mark.slow)]
)
def test_split_steppers_step_past_the_drug_binding_limit(stepper, binding):
    """With an anti-TNF on, TNF binding (k_on A, up to ~50 /h at etanercept's peak plasma level) sets
    SSP-RK3's step (0.016 h at 0.5 mm); the split steppers integrate it exactly, with the binding
    exchange of TNF and complex. strang_ssp_rk3's step is then set by diffusion (0.14 h);
    strang_rkl2, which super-steps diffusion too, by its accuracy bound on splitting (0.25 / k_T,
    0.1 h). Against a fine SSP-RK3 reference on the 0.5 mm knee with an injury and a dose, their
    error at that step is the price: measured 3.9e-3 and 1.9e-3 (fluid TNF, IL-1, white cells, drug,
    complex), and at a quarter of the step 2.9e-4 and 1.9e-4 (second order)."""
    from solver import build_scenario, load_config

    sets = ["drug.enabled=true", "drug.first_dose_h=2", "geometry.spacing_mm=0.5", "run.t_end_h=24"]
    sets += ["run.precision='float64'", "injury.rate=2000", "initial.start='baseline'"]

    def run(stepper, *extra):
        sc = build_scenario(load_config("configs/knee2d.toml", [*sets, f"run.stepper='{stepper}'", *extra]))
        solver = get_solver(sc.options, stepper, sc.n_substeps, sc.stages)
        _, frames = solver.trajectory(sc.initial, sc.params, sc.domain, sc.dt, n_frames=sc.n_frames)
        fluid = sc.domain.fluid[None]
        assert all(float(jnp.min(u)) >= 0.0 for u in frames if u is not None)
        names = ("tnf", "il1", "leukocytes", "drug", "complex")
        return sc, {n: jnp.sum(getattr(frames, n) * fluid, axis=(1, 2)) for n in names}

    def error(series, reference):
        return max(float(jnp.max(jnp.abs(series[n] - reference[n])) / jnp.max(jnp.abs(reference[n]))) for n in reference)

    explicit, _ = run("ssp_rk3")
    split, coarse = run(stepper)
    assert min(explicit.stability_limits, key=explicit.stability_limits.get) == "reaction"
    chosen = {k: v for k, v in split.stability_limits.items() if not (k == "diffusion" and stepper == "strang_rkl2")}
    assert min(chosen, key=chosen.get) == binding
    assert split.dt > 4 * explicit.dt  # at 0.5 mm diffusion allows 0.16 h, splitting 0.11 h, binding 0.018 h
    _, reference = run("ssp_rk3", "run.dt_h=0.0025")
    _, fine = run(stepper, f"run.dt_h={split.dt / 4}")
    assert error(coarse, reference) < 3e-2
    assert error(fine, reference) < 3e-3
    assert error(coarse, reference) > 8 * error(fine, reference)


def _problem_3d(**overrides):
    grid = Grid((6, 7, 8), (0.3, 0.25, 0.2))
    rng = np.random.default_rng(5)
    init = {
        "tnf": 20 * rng.uniform(size=grid.shape),
        "il1": 5 * rng.uniform(size=grid.shape),
        "leukocytes": 300 * rng.uniform(size=grid.shape),
        "cartilage": rng.uniform(0.5, 1.0, size=grid.shape),
    }
    mask = np.zeros(grid.shape, bool)
    mask[1:4, 2:5, 2:5] = True
    return setup(grid, layered_labels(grid.shape), init, injury_mask=mask, **overrides)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("drug", [False, True])
def test_the_hand_written_rhs_adjoint_matches_jax_reverse_mode(ndim, drug, monkeypatch):
    """rhs_with_adjoint's reverse mode against JAX's through rhs: cotangents of the state, the time
    and every parameter (the diffusivity tables through the cell diffusivities), with and without
    the losses and the diffusion terms (the split steppers' right-hand sides), and of diffusion_rhs."""
    import solver._model as model

    options, params, domain, state = (_problem if ndim == 2 else _problem_3d)(drug=drug)
    state = state._replace(drug=0.5 * domain.cytokine, cartilage=state.cartilage * 0.8)
    t = jnp.asarray(0.3)  # inside the injury window, so its time profile's parameters count
    g = jax.tree.map(lambda u: jnp.sin(3.0 * u) + 0.5, state)
    assert model.has_adjoint(options)

    def pullback(make, g=g):
        out = {}
        for mode in ("autodiff", "adjoint"):
            monkeypatch.setattr(model, "GRADIENT", mode)
            fn = make()  # a new function per mode: JAX caches traces by function
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

            def make(losses=losses, diffusion=diffusion):
                def fn(y, t, p):
                    coeffs = model.coefficients(p, domain)
                    return model.rhs_with_adjoint(y, t, p, coeffs, domain, options, losses, diffusion)

                return fn

            out = pullback(make)
            compare(out, f"{losses=} {diffusion=}")
            # what the options switch on is differentiated (cartilage's TNF diffusivity also sets the depth
            # TNF reaches into cartilage, whose matrix it damages: that part counts without diffusion)
            fluid = int(Tissue.SYNOVIAL_FLUID)
            assert (float(jnp.abs(out["adjoint"][2].diffusivity_tnf[fluid])) > 0) == diffusion
            assert float(jnp.abs(out["adjoint"][2].decay_tnf)) > 0 if losses else True
            assert float(jnp.abs(out["adjoint"][2].chemotaxis)) > 0 and float(jnp.abs(out["adjoint"][1])) > 0

    def make_diffuse():
        def diffuse(y, t, p):
            return model.diffusion_rhs_with_adjoint(y._replace(cartilage=None), model.coefficients(p, domain), options)

        return diffuse

    compare(pullback(make_diffuse, g._replace(cartilage=None)), "diffusion_rhs")


# SSP-RK3's comparison (~26 s) runs with the slow validation; its right-hand side's adjoint is checked above
@pytest.mark.parametrize("stepper", [pytest.param("ssp_rk3", marks=pytest.mark.slow), "strang_rkl2"])
def test_the_solver_gradient_is_the_same_with_the_hand_written_adjoint(stepper, monkeypatch):
    """Through the whole solver (frames, steps, stages, checkpoints): the same gradient with the
    hand-written adjoint as with JAX's (strang_ssp_rk3 differs from ssp_rk3 only in the right-hand
    side's losses, compared above); the limited scheme and drainage walls keep JAX's."""
    import solver._model as model
    from solver._operators import WallCondition
    from solver._simulate import Solver

    options, params, domain, state = _problem(drug=True)
    state = state._replace(drug=0.5 * domain.cytokine)
    stages = 3 if stepper == "strang_rkl2" else 0

    import solver._steppers as steppers

    monkeypatch.setattr(steppers, "STAGE_LAYOUT", "loop")  # compiles faster on a CPU; layouts are compared above

    def grad(mode, lower_for=None):
        monkeypatch.setattr(model, "GRADIENT", mode)
        solver = Solver(options, stepper, 4, stages)

        def loss(p):
            final, frames = solver.trajectory(state, p, domain, 0.01, 2)
            return jnp.sum(frames.tnf[-1] * domain.fluid) + 1e-2 * jnp.sum(final.leukocytes) + jnp.sum(final.cartilage)

        if lower_for:
            return jax.jit(jax.grad(loss)).trace(params).lower(lowering_platforms=(lower_for,)).as_text()
        return jax.jit(jax.grad(loss))(params)

    auto, adjoint = grad("autodiff"), grad("adjoint")
    if stepper == "ssp_rk3":
        # the point of it, in the program lowered for a GPU (not compiled here): JAX transposes each
        # shifted slice of a stencil into a zero-padded copy; the adjoint's stencils gather instead
        monkeypatch.setattr(steppers, "STAGE_LAYOUT", "platform")  # a GPU's: barriers
        pads = {}
        for mode in ("autodiff", "adjoint"):
            lowered = grad(mode, lower_for="cuda")
            pads[mode] = lowered.count("stablehlo.pad")
            assert "scatter" not in lowered and "gather" not in lowered
        assert pads["adjoint"] < pads["autodiff"] / 2, pads
    for name in params._fields:
        theirs = getattr(auto, name)
        assert_close(getattr(adjoint, name), theirs, rtol=1e-10, atol=1e-13 * (1 + float(jnp.max(jnp.abs(theirs)))), what=name)
    assert float(jnp.abs(adjoint.chemotaxis)) > 0 and float(jnp.max(jnp.abs(adjoint.diffusivity_il1))) > 0

    if stepper == "ssp_rk3":  # forward mode cannot go through the custom_vjp: traced inside autodiff_rhs it can
        monkeypatch.setattr(model, "GRADIENT", "adjoint")
        solver = Solver(options, stepper, 4, stages)

        def final_tnf(chi):
            return jnp.sum(solver.trajectory(state, params._replace(chemotaxis=chi), domain, 0.01, 2)[0].tnf)

        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(final_tnf, (params.chemotaxis,), (1.0,))
        with model.autodiff_rhs():
            tangent = jax.jvp(final_tnf, (params.chemotaxis,), (jnp.ones_like(params.chemotaxis),))[1]
        assert model.GRADIENT == "adjoint"
        assert_close(tangent, jax.grad(final_tnf)(params.chemotaxis), rtol=1e-10, what="jvp = grad")
        # the jitted interval function, traced by a run before the block, is traced anew inside it

        def advanced_tnf(chi):
            return jnp.sum(solver.advance(state, 0.0, 0.01, params._replace(chemotaxis=chi), domain).tnf)

        advanced_tnf(params.chemotaxis)
        with model.autodiff_rhs():
            tangent = jax.jvp(advanced_tnf, (params.chemotaxis,), (jnp.ones_like(params.chemotaxis),))[1]
        assert_close(tangent, jax.grad(advanced_tnf)(params.chemotaxis), rtol=1e-10, what="advance: jvp = grad")
        # a handle taken inside the block traces in its mode wherever it is first called
        with model.autodiff_rhs():
            handle = Solver(options, stepper, 4, stages).advance
        args = (state, 0.0, 0.01, params, domain)
        assert "custom_vjp_call" not in str(jax.make_jaxpr(handle)(*args))
        assert "custom_vjp_call" in str(jax.make_jaxpr(Solver(options, stepper, 4, stages).advance)(*args))

    drained = ((WallCondition("robin", 0.0, 0.1), WallCondition()), (WallCondition(), WallCondition()))
    assert not model.has_adjoint(options.__class__(grid=options.grid, chemotaxis_scheme="limited"))
    assert not model.has_adjoint(options.__class__(grid=options.grid, walls=(("tnf", drained),)))


@pytest.mark.slow  # ~28 s of compiling on 2 cores
def test_a_gradient_through_the_hand_written_adjoint_can_be_differentiated_again(monkeypatch):
    """A Hessian-vector product (forward mode over the gradient) of a loss through two right-hand sides
    is the same with the adjoint as with JAX's reverse mode: its forward and backward passes still
    depend on the face diffusivities."""
    import solver._model as model

    options, params, domain, state = _problem(drug=True)
    state = state._replace(drug=0.5 * domain.cytokine)
    t = jnp.asarray(0.3)
    direction = jax.tree.map(lambda p: 0.1 * p * (1.0 + 0.5 * jnp.cos(jnp.arange(p.size).reshape(p.shape))), params)

    def hvp(mode):
        monkeypatch.setattr(model, "GRADIENT", mode)

        def loss(p):
            coeffs = model.coefficients(p, domain)
            k = model.rhs_with_adjoint(state, t, p, coeffs, domain, options)
            mid = jax.tree.map(lambda y, ki: y + 1e-3 * ki, state, k)
            k2 = model.rhs_with_adjoint(mid, t, p, coeffs, domain, options)
            return sum(jnp.sum(jnp.sin(u)) for u in k2)

        return jax.jvp(jax.grad(loss), (params,), (direction,))[1]

    def hvp_solver(mode):  # through the solver's checkpoints, stages and loop
        monkeypatch.setattr(model, "GRADIENT", mode)
        solver = Solver(options, "ssp_rk3", 2)

        def loss(p):
            return sum(jnp.sum(jnp.sin(u)) for u in solver.advance(state, 0.0, 0.01, p, domain))

        return jax.jvp(jax.grad(loss), (params,), (direction,))[1]

    import solver._steppers as steppers
    from solver._simulate import Solver

    monkeypatch.setattr(steppers, "STAGE_LAYOUT", "loop")  # compiles faster on a CPU
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
    options, params, domain, state = _problem()
    solver = get_solver(options, stepper, 3, stages=3 if stepper == "strang_rkl2" else 0)

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


def test_auto_checkpoint_keeps_steps_where_they_fit(monkeypatch):
    import solver._simulate as simulate
    from solver import vmapped_members

    options, params, domain, state = _problem()
    solver = get_solver(options, "ssp_rk3", 3)
    state_bytes = 4 * state.tnf.size * state.tnf.dtype.itemsize
    monkeypatch.setattr(simulate, "checkpoint_budget_bytes", lambda device=None: 12 * state_bytes)
    # counted: (frames + 1) x 3 steps (one frame's steps twice while the compiled program stacks them)
    assert solver.checkpoint_for(state, 3) == "steps"
    assert solver.checkpoint_for(state, 4) == "frames"
    with vmapped_members(2):
        assert solver.checkpoint_for(state, 1) == "steps"
        assert solver.checkpoint_for(state, 2) == "frames"
    assert solver.checkpoint_for(state, 3) == "steps"  # the block is left

    def kept(n_frames, checkpoint):
        def loss(p):
            return jnp.sum(solver.trajectory(state, p, domain, 0.01, n_frames, checkpoint=checkpoint)[0].tnf)

        return _kept_bytes(loss, params)

    assert kept(3, "auto") == kept(3, "steps") != kept(3, "frames")
    assert kept(4, "auto") == kept(4, "frames") != kept(4, "steps")
    with pytest.raises(ValueError, match="checkpoint = 'all': allowed are 'auto', 'steps', 'frames'"):
        solver.trajectory(state, params, domain, 0.01, 2, checkpoint="all")


def test_checkpoint_budget_is_a_share_of_the_device_memory():
    import os

    import solver._simulate as simulate

    class Device:
        def __init__(self, platform, stats):
            self.platform, self.stats = platform, stats

        def memory_stats(self):
            return self.stats

    assert simulate.checkpoint_budget_bytes(Device("gpu", {"bytes_limit": 80 * 2**30})) == 20 * 2**30
    assert simulate.checkpoint_budget_bytes(Device("gpu", {})) == 0  # no limit reported: one state per frame
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget = simulate.checkpoint_budget_bytes()  # this CPU: at most a quarter of its RAM
    assert 0 < budget <= host // 4
