"""Observations, losses and fitting: optax through the differentiable solver.

import inference, solver
obs = inference.load_observations("data.h5")
result = inference.fit(solver.load_config("configs/fit_small.toml"), obs,
                       {"tnf_per_leukocyte": (1e-4, 1.0), "recruitment_rate": (1.0, 1e4)})
print(result.summary())
"""

from ._fit import FitResult as FitResult
from ._fit import fit as fit
from ._fit import fitted_config as fitted_config
from ._fit import read_report as read_report
from ._observations import COLUMNS as COLUMNS
from ._observations import KINDS as KINDS
from ._observations import FieldMap as FieldMap
from ._observations import ObservationError as ObservationError
from ._observations import ObservationOperator as ObservationOperator
from ._observations import Observations as Observations
from ._observations import load_observations as load_observations
from ._observations import make_observations as make_observations
from ._observations import save_observations as save_observations
from ._problem import LITERATURE_PRIORS as LITERATURE_PRIORS
from ._problem import FitError as FitError
from ._problem import FitParameter as FitParameter
from ._problem import Problem as Problem
from ._problem import fittable_names as fittable_names
from ._problem import gauss_newton as gauss_newton
from ._synth import synthesize as synthesize
