"""From a config to a runnable scenario: the config schema and its checks (one "did you mean", one
number check), the scenario (geometry, parameters, masks, initial state, step plan), the generated
config reference (docs/config.md; ``python -m solver.setup.reference``), the memory budget of this machine,
and the shipped presets (:func:`presets`, :func:`find_config`: a config by its name, from any folder).

A :class:`Scenario` holds its :class:`~solver.time.StepPlan` and builds its solver
(``scenario.solver``); :func:`enable_precision` is what an entry point calls once for float64.
"""

from ._checks import ConfigError as ConfigError
from ._checks import check_number as check_number
from ._checks import check_value as check_value
from ._checks import did_you_mean as did_you_mean
from ._checks import option as option
from ._checks import parse_section as parse_section
from ._checks import unknown_key as unknown_key
from ._config import DEFAULT_BASELINE as DEFAULT_BASELINE
from ._config import RESTING_SPECIES as RESTING_SPECIES
from ._config import SECTIONS as SECTIONS
from ._config import STARTS as STARTS
from ._config import WALL_KINDS as WALL_KINDS
from ._config import WALLS as WALLS
from ._config import Blob as Blob
from ._config import Config as Config
from ._config import DrugSection as DrugSection
from ._config import GeometrySection as GeometrySection
from ._config import InjurySection as InjurySection
from ._config import Region as Region
from ._config import RunSection as RunSection
from ._config import apply_overrides as apply_overrides
from ._config import config_from_dict as config_from_dict
from ._config import config_from_toml as config_from_toml
from ._config import frame_count as frame_count
from ._config import load_config as load_config
from ._config import parse_override as parse_override
from ._config import read_toml as read_toml
from ._config import set_key as set_key
from ._memory import CHECKPOINT_SHARE as CHECKPOINT_SHARE
from ._memory import checkpoint_budget_bytes as checkpoint_budget_bytes
from ._memory import device_memory_bytes as device_memory_bytes
from ._memory import host_memory_bytes as host_memory_bytes
from ._presets import Copied as Copied
from ._presets import Preset as Preset
from ._presets import copy_preset as copy_preset
from ._presets import find_config as find_config
from ._presets import preset as preset
from ._presets import preset_files as preset_files
from ._presets import presets as presets
from ._presets import presets_folder as presets_folder
from ._scenario import ARRAYS_PER_CELL as ARRAYS_PER_CELL
from ._scenario import MAX_SUBSTEPS as MAX_SUBSTEPS
from ._scenario import Scenario as Scenario
from ._scenario import build_scenario as build_scenario
from ._scenario import enable_precision as enable_precision
from ._scenario import initial_state as initial_state
