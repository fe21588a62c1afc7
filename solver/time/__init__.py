"""Time stepping: the steppers (one file per family, one ``step``/``steps`` contract in ``_base``),
the step plan that picks a stepper's step and stages from the stability limits, the compiled
:class:`Solver` that advances an output interval or scans a trajectory for ``jax.grad``, and
relaxation to a steady state.

Options steer the numerics as arguments, not globals: ``Solver(gradient=..., layout=...)`` and
``Solver.trajectory(checkpoint=..., members=..., memory_budget=...)``.
"""

from ._base import LAYOUTS as LAYOUTS
from ._base import PLATFORM_LAYOUTS as PLATFORM_LAYOUTS
from ._base import Stepper as Stepper
from ._base import Terms as Terms
from ._plan import StepPlan as StepPlan
from ._plan import StepTooLarge as StepTooLarge
from ._plan import binding_limits as binding_limits
from ._plan import choose_substeps as choose_substeps
from ._plan import limit_reason as limit_reason
from ._plan import super_step_stages as super_step_stages
from ._rkl2 import StrangRKL2 as StrangRKL2
from ._rkl2 import rkl2 as rkl2
from ._rkl2 import rkl2_stages as rkl2_stages
from ._solver import CHECKPOINTS as CHECKPOINTS
from ._solver import Solver as Solver
from ._solver import get_solver as get_solver
from ._ssp import SSPRK2 as SSPRK2
from ._ssp import SSPRK3 as SSPRK3
from ._ssp import ForwardEuler as ForwardEuler
from ._ssp import ShuOsher as ShuOsher
from ._steady import FLOORS as FLOORS
from ._steady import REST_INDEPENDENT as REST_INDEPENDENT
from ._steady import SteadyState as SteadyState
from ._steady import relative_change as relative_change
from ._steady import relax as relax
from ._steady import resting_params as resting_params
from ._steppers import STEPPERS as STEPPERS
from ._steppers import make_stepper as make_stepper
from ._steppers import stepper_class as stepper_class
from ._strang import StrangSSPRK3 as StrangSSPRK3
from ._strang import exponential_losses as exponential_losses
