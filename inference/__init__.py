"""Observations, losses and fitting: optax through the differentiable solver; the ``fit`` and
``synth`` commands (``inference.cli``, added to ``synovia`` through entry points).

Above ``solver`` in the stack: it uses solver's public API only. Examples: README.md ("Fitting
parameters to data") and docs/fitting.md.
"""

from fields import __version__ as __version__

from ._fit import FitResult as FitResult
from ._fit import FitSettings as FitSettings
from ._fit import Progress as Progress
from ._fit import fit as fit
from ._fit import fit_result as fit_result
from ._fit import fitted_config as fitted_config
from ._fit import optimise as optimise
from ._fit import read_report as read_report
from ._fit import write_report as write_report
from ._observations import COLUMNS as COLUMNS
from ._observations import KINDS as KINDS
from ._observations import FieldMap as FieldMap
from ._observations import ObservationError as ObservationError
from ._observations import ObservationOperator as ObservationOperator
from ._observations import Observations as Observations
from ._observations import load_observations as load_observations
from ._observations import make_observations as make_observations
from ._observations import save_observations as save_observations
from ._petab import PetabTables as PetabTables
from ._petab import read_petab as read_petab
from ._petab import write_petab as write_petab
from ._plot import figure_fit as figure_fit
from ._plot import figure_fit_maps as figure_fit_maps
from ._plot import plot_fit as plot_fit
from ._problem import LITERATURE_PRIORS as LITERATURE_PRIORS
from ._problem import FitError as FitError
from ._problem import FitParameter as FitParameter
from ._problem import Problem as Problem
from ._problem import fittable_names as fittable_names
from ._problem import gauss_newton as gauss_newton
from ._profile import Profile as Profile
from ._profile import chi2_threshold as chi2_threshold
from ._profile import profile as profile
from ._profile import write_profile as write_profile
from ._synth import synthesize as synthesize
