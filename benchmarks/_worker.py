"""numba timings in a fresh process: ``python -m benchmarks._worker {stencil,pypde} N REPEATS TARGET [NPY]``,
or ``python -m benchmarks._worker fma REPEATS``.

numba's OpenMP/workqueue threads and XLA's CPU thread pool in one process slow each other
down (measured: the stencil ran 3-10x slower after JAX work in the same process), so the
suite times the stencil here, in a process that runs no XLA computation, and reads JSON.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    kind = sys.argv[1]
    if kind == "fma":
        from ._numba_stencil import fma_peak

        return print(json.dumps(fma_peak(int(sys.argv[2]))))
    n, repeats, target = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if kind == "pypde":
        return pypde(n, repeats, target, sys.argv[5])
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from ._harness import Memory, now, time_calls
    from ._numba_stencil import NumbaStencil, threads
    from ._problem import box_problem, steps_per_call

    pb = box_problem((n, n), jnp.float64)
    stencil = NumbaStencil(pb)
    y0 = stencil.initial(pb.state)
    n_steps = steps_per_call(pb.cells, target)
    t = now()
    stencil.advance(y0, 1)
    compile_s = now() - t
    with Memory() as mem:
        timing = time_calls(lambda: stencil.advance(y0, n_steps), repeats)
    rec = {"threads": threads(), "steps_per_call": n_steps, "compile_s": compile_s, "dt": pb.dt}
    print(json.dumps({**rec, **timing, **mem.as_dict()}))


def pypde(n: int, repeats: int, target: float, npy: str) -> None:
    """Compile py-pde's right-hand side, save its fields after one simulated hour to NPY, time it."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from . import _pypde
    from ._harness import Memory, now, time_calls
    from ._problem import box_problem, steps_per_call

    pb = box_problem((n, n), jnp.float64)
    t = now()
    rhs_fn, y0, loop = _pypde.build(pb)
    loop(y0, 1, 0.0, pb.dt)
    compile_s = now() - t
    n_val = max(1, round(1.0 / pb.dt))
    np.save(npy, loop(y0, n_val, 0.0, pb.dt))
    n_steps = max(2, steps_per_call(pb.cells, target) // 4)
    with Memory() as mem:
        timing = time_calls(lambda: loop(y0, n_steps, 0.0, pb.dt), repeats)
    rhs_timing = time_calls(lambda: rhs_fn(y0, 0.0), max(5, repeats))
    rec = {"steps_per_call": n_steps, "compile_s": compile_s, "dt": pb.dt, "agreement_steps": n_val}
    rec.update(rhs_ms=rhs_timing["median_s"] * 1e3, multithreading=_pypde.multithreading())
    print(json.dumps({**rec, **timing, **mem.as_dict()}))


if __name__ == "__main__":
    main()
