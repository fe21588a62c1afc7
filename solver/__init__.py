"""Physics, discrete operators, time stepping, output and the command line."""

from ._config import Config as Config
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._model import SUMMARY_UNITS as SUMMARY_UNITS
from ._model import Domain as Domain
from ._model import ModelOptions as ModelOptions
from ._model import autodiff_rhs as autodiff_rhs
from ._model import make_domain as make_domain
from ._model import rhs as rhs
from ._operators import WallCondition as WallCondition
from ._output import RunFile as RunFile
from ._output import RunWriter as RunWriter
from ._params import DIFFUSIVITIES as DIFFUSIVITIES
from ._params import PARAMETERS as PARAMETERS
from ._params import Params as Params
from ._params import default_params as default_params
from ._scenario import Scenario as Scenario
from ._scenario import build_scenario as build_scenario
from ._simulate import Solver as Solver
from ._simulate import StepTooLarge as StepTooLarge
from ._simulate import choose_substeps as choose_substeps
from ._simulate import get_solver as get_solver
from ._simulate import vmapped_members as vmapped_members
from ._steady import SteadyState as SteadyState
from ._steady import relax as relax
from ._steady import resting_params as resting_params
