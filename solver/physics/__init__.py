"""The model as pure functions of arrays: parameters, the drug catalogue, the joint's masks, the
discrete operators, the right-hand side and its hand-written adjoint, the stability limits and the
per-frame diagnostics.

Nothing here steps in time, reads files or keeps state: every function takes the state, the
:class:`Params` pytree, the :class:`Domain` arrays and the static :class:`ModelOptions` as arguments,
so JAX can jit, vmap and differentiate it. The equations and units are in ``_rhs``'s docstring and
docs/model.md.
"""

from ._adjoint import GRADIENTS as GRADIENTS
from ._adjoint import diffusion_rhs_with_adjoint as diffusion_rhs_with_adjoint
from ._adjoint import has_adjoint as has_adjoint
from ._adjoint import rhs_with_adjoint as rhs_with_adjoint
from ._diagnostics import DRUG_SUMMARIES as DRUG_SUMMARIES
from ._diagnostics import SUMMARY_UNITS as SUMMARY_UNITS
from ._diagnostics import health as health
from ._diagnostics import summaries as summaries
from ._diagnostics import summary_names as summary_names
from ._domain import CYTOKINE_TISSUES as CYTOKINE_TISSUES
from ._domain import DRUG_FIELDS as DRUG_FIELDS
from ._domain import LEUKOCYTE_TISSUES as LEUKOCYTE_TISSUES
from ._domain import TRANSPORTED as TRANSPORTED
from ._domain import Domain as Domain
from ._domain import ModelOptions as ModelOptions
from ._domain import cartilage_depth as cartilage_depth
from ._domain import layer_thickness as layer_thickness
from ._domain import make_domain as make_domain
from ._domain import species_region as species_region
from ._drugs import DEFAULT_DRUG as DEFAULT_DRUG
from ._drugs import DRUGS as DRUGS
from ._drugs import ROUTES as ROUTES
from ._drugs import TARGETS as TARGETS
from ._drugs import Drug as Drug
from ._drugs import dose_times as dose_times
from ._drugs import drug_parameters as drug_parameters
from ._drugs import drug_sources as drug_sources
from ._drugs import plasma_concentration as plasma_concentration
from ._drugs import plasma_peak_bound as plasma_peak_bound
from ._forcing import Forcing as Forcing
from ._forcing import event_times as event_times
from ._forcing import forcing_at as forcing_at
from ._forcing import forcing_moments as forcing_moments
from ._forcing import injury_profile as injury_profile
from ._forcing import plasma_drug as plasma_drug
from ._operators import NO_FLUX as NO_FLUX
from ._operators import WallCondition as WallCondition
from ._operators import advection as advection
from ._operators import diffusion as diffusion
from ._operators import diffusion_vjp as diffusion_vjp
from ._operators import gradient_on_faces as gradient_on_faces
from ._params import DIFFUSIVITIES as DIFFUSIVITIES
from ._params import DIFFUSIVITY_OF as DIFFUSIVITY_OF
from ._params import PARAMETERS as PARAMETERS
from ._params import SCENARIO_PARAMETERS as SCENARIO_PARAMETERS
from ._params import Params as Params
from ._params import default_params as default_params
from ._params import params_as_dict as params_as_dict
from ._rhs import Coefficients as Coefficients
from ._rhs import coefficients as coefficients
from ._rhs import diffusion_rhs as diffusion_rhs
from ._rhs import fluid_mean as fluid_mean
from ._rhs import loss_rates as loss_rates
from ._rhs import masked_mean as masked_mean
from ._rhs import reactions as reactions
from ._rhs import rhs as rhs
from ._rhs import split_losses as split_losses
from ._rhs import without_drug as without_drug
from ._stability import SPLIT_ACCURACY as SPLIT_ACCURACY
from ._stability import Outflow as Outflow
from ._stability import outflow_rates as outflow_rates
from ._stability import stable_dt as stable_dt
