"""py-pde (numba backend) solving the same TNF / IL-1 / leukocyte system on the same grid.

py-pde's ``PDE`` class compiles the expressions below with its numba backend; its operators
are its own: a 5-point Laplacian with Neumann (zero-derivative) walls, which for a uniform
diffusivity is the same stencil as synovia's no-flux finite volumes, and central differences
for the chemotaxis term ``divergence(L * gradient(f(T)))`` (synovia upwinds it), with the
chemotactic flux set to zero at the walls (``bc_ops``) and f's gradient from py-pde's Neumann ghost cells. Cartilage
and drug are omitted: in a box of synovial fluid cartilage is absent, recruitment (synovium
only) is zero and the drug is off, so those terms vanish in synovia too. The injury source
``s_inj exp(-t / tau)`` is written for t < duration (24 h), which the timed window stays in.

Time stepping: py-pde's own explicit solvers are forward Euler and adaptive Runge-Kutta;
to compare at the same scheme and step, the compiled right-hand side is called from an
SSP-RK3 loop compiled with numba (three right-hand sides per step, like synovia).
"""

from __future__ import annotations

import numba
import numpy as np
import pde


def equation(problem):
    """(py-pde PDE, initial FieldCollection) for a 2D :class:`benchmarks._problem.Problem`."""
    if problem.grid.ndim != 2:
        raise ValueError("the py-pde comparison is 2D")
    p = problem.params
    grid_p = problem.grid
    bounds = [[o, o + e] for o, e in zip(grid_p.origin, grid_p.extent)]
    grid = pde.CartesianGrid(bounds, list(grid_p.shape))
    d_fluid = 3  # synovial fluid code: uniform box

    def val(name):
        return float(getattr(p, name))

    consts = {
        "DT": float(np.asarray(p.diffusivity_tnf)[d_fluid]),
        "DI": float(np.asarray(p.diffusivity_il1)[d_fluid]),
        "DL": float(np.asarray(p.diffusivity_leukocytes)[d_fluid]),
        "sinj": val("injury_rate"),
        "tau": val("injury_decay"),
        "inj": pde.ScalarField(grid, np.asarray(problem.injury_mask, dtype=float)),
        "aTL": val("tnf_per_leukocyte"),
        "bTI": val("il1_amplification_of_tnf"),
        "KI": val("il1_half_saturation_amplification"),
        "kT": val("decay_tnf"),
        "aIL": val("il1_per_leukocyte"),
        "KT": val("tnf_half_saturation_il1"),
        "kI": val("decay_il1"),
        "chi": val("chemotaxis"),
        "Kchi": val("chemotaxis_half_saturation"),
        "dL": val("leukocyte_death"),
    }
    eq = pde.PDE(
        {
            "T": "DT * laplace(T) + sinj * inj * exp(-t / tau) + aTL * L * (1 + bTI * I / (KI + I)) - kT * T",
            "I": "DI * laplace(I) + aIL * L * T / (KT + T) - kI * I",
            "L": "DL * laplace(L) - chi * divergence(L * gradient(T / (Kchi + T))) - dL * L",
        },
        bc={"derivative": 0},
        # the chemotactic flux L grad f vanishes at the walls (no-flux), as in synovia
        bc_ops={"L:divergence": {"value": 0}},
        consts=consts,
    )
    fields = [pde.ScalarField(grid, np.asarray(problem.state[k], dtype=float), label=n) for k, n in enumerate("TIL")]
    return eq, pde.FieldCollection(fields)


def build(problem):
    """(rhs, y0, loop) for a 2D :class:`benchmarks._problem.Problem`, compiled with numba."""
    eq, state = equation(problem)
    rhs = eq.make_pde_rhs(state, backend="numba")

    @numba.njit
    def loop(y, n_steps, t0, dt):
        for k in range(n_steps):
            t = t0 + k * dt
            y1 = y + dt * rhs(y, t)
            y2 = 0.75 * y + 0.25 * (y1 + dt * rhs(y1, t + dt))
            y = y / 3.0 + 2.0 / 3.0 * (y2 + dt * rhs(y2, t + 0.5 * dt))
        return y

    y0 = np.ascontiguousarray(state.data.copy())
    return rhs, y0, loop


def multithreading() -> str:
    return str(pde.config["backend.numba.multithreading"]) if "backend.numba.multithreading" in pde.config else "?"
