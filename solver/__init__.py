"""The joint-inflammation PDE solver: physics, time stepping, scenarios, run files, studies, figures.

Subpackages, each importing only those before it (checked by tests/test_architecture.py):

- ``solver.physics``: the model as pure functions (parameters, drugs, masks, operators, right-hand side, adjoint, limits)
- ``solver.time``: steppers, the step plan, the compiled :class:`Solver`, steady states
- ``solver.setup``: configs, scenarios, the generated config reference, the memory budget
- ``solver.io``: HDF5 run files (netCDF-readable; ``open_dataset`` reads one into xarray) and their XDMF sidecars
- ``solver.study``: running a scenario to a file, and sweeps
- ``solver.plot``: figures of runs and studies
- ``solver.simulation``: :func:`simulate` a scenario into a :class:`Simulation` (its file, dataset, figures)
- ``solver.cli``: the ``synovia`` command

What users import is re-exported here::

    import jax
    import solver

    config = solver.load_config("configs/knee2d.toml")
    solver.enable_precision(config)  # float64 configs turn on JAX's 64-bit mode, once per program
    scenario = solver.build_scenario(config)
    final, frames = scenario.solver.trajectory(
        scenario.initial, scenario.params, scenario.domain, scenario.plan.dt, n_frames=4, checkpoint="steps"
    )
"""

from fields import __version__ as __version__

from .io import RunFile as RunFile
from .io import RunWriter as RunWriter
from .io import open_dataset as open_dataset
from .physics import DIFFUSIVITIES as DIFFUSIVITIES
from .physics import DRUGS as DRUGS
from .physics import PARAMETERS as PARAMETERS
from .physics import SUMMARY_UNITS as SUMMARY_UNITS
from .physics import Coefficients as Coefficients
from .physics import Domain as Domain
from .physics import ModelOptions as ModelOptions
from .physics import Params as Params
from .physics import WallCondition as WallCondition
from .physics import coefficients as coefficients
from .physics import default_params as default_params
from .physics import make_domain as make_domain
from .physics import plasma_drug as plasma_drug
from .physics import rhs as rhs
from .physics import rhs_with_adjoint as rhs_with_adjoint
from .physics import summaries as summaries
from .plot import RunLike as RunLike
from .plot import figure_maps as figure_maps
from .plot import figure_study as figure_study
from .plot import figure_study_timecourses as figure_study_timecourses
from .plot import figure_timecourses as figure_timecourses
from .plot import plot_run as plot_run
from .plot import plot_study as plot_study
from .setup import Config as Config
from .setup import ConfigError as ConfigError
from .setup import Scenario as Scenario
from .setup import build_scenario as build_scenario
from .setup import checkpoint_budget_bytes as checkpoint_budget_bytes
from .setup import config_from_dict as config_from_dict
from .setup import enable_precision as enable_precision
from .setup import load_config as load_config
from .simulation import Simulation as Simulation
from .simulation import simulate as simulate
from .study import Callback as Callback
from .study import Diverged as Diverged
from .study import Frame as Frame
from .study import interactive as interactive
from .study import load_sweep as load_sweep
from .study import open_run as open_run
from .study import read_study as read_study
from .study import run as run
from .study import run_study as run_study
from .study import time_courses as time_courses
from .time import REST_INDEPENDENT as REST_INDEPENDENT
from .time import Solver as Solver
from .time import SteadyState as SteadyState
from .time import StepPlan as StepPlan
from .time import StepTooLarge as StepTooLarge
from .time import get_solver as get_solver
from .time import relax as relax
from .time import resting_params as resting_params
