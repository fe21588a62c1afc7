"""Strict numerics for every test: float64 available, no silent rank promotion."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def assert_close(actual, expected, *, rtol: float, atol: float = 0.0, what: str = "") -> None:
    """The one comparison helper: tolerance stated at each call."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol, err_msg=what)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
