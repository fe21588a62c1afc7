"""Strict numerics for every test: float64 available, no silent rank or dtype promotion."""

import contextlib

import jax
import numpy as np
import pytest

# submitit configures logging when first imported, which closes absl's handler (jax's) unless its stream is the
# current sys.stderr: imported under a test's capsys, that closes pytest's own capture. Import it here, once.
with contextlib.suppress(ImportError):
    import submitit  # noqa: F401

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """A small study folder made by ``synovia sweep`` (tests.helpers.STUDY_SWEEP), with its sweep
    config beside it; shared by the session, so a test that changes it works on a copy."""
    from solver.cli import main
    from tests.helpers import sweep_file

    folder = tmp_path_factory.mktemp("study")
    cfg = sweep_file(folder)
    assert main(["sweep", str(cfg), "-o", str(folder / "study"), "-q"]) == 0
    return folder / "study"


@pytest.fixture(autouse=True)
def optax_under_standard_promotion(monkeypatch):
    """optax 0.2.8 mixes dtypes inside its own updates: L-BFGS adds int32 and int64 indices under x64
    (``memory_idx + jnp.arange(memory_size)``) and Adam's decay schedule multiplies its int32 step
    count by a Python float; strict promotion refuses both. The optimisers the fits make (``optax.adam``,
    ``optax.lbfgs``) run their own updates under JAX's standard promotion; the loss L-BFGS's line
    search evaluates (the model) still runs under strict."""
    import optax

    def strict(fn):
        def run(*args, **kwargs):
            with jax.numpy_dtype_promotion("strict"):
                return fn(*args, **kwargs)

        return run

    def standard(make):
        def made(*args, **kwargs):
            tx = make(*args, **kwargs)

            def init(params):
                with jax.numpy_dtype_promotion("standard"):
                    return tx.init(params)

            def update(updates, state, params=None, **extra):
                if extra.get("value_fn") is not None:
                    extra["value_fn"] = strict(extra["value_fn"])
                with jax.numpy_dtype_promotion("standard"):
                    return tx.update(updates, state, params, **extra)

            return tx._replace(init=init, update=update)

        return made

    for name in ("adam", "lbfgs"):
        monkeypatch.setattr(optax, name, standard(getattr(optax, name)))
