"""Space: the grid, tissue labels, joint geometry, state and initial conditions."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("synovia")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

from ._files import LOCKING_ENV as LOCKING_ENV
from ._files import FileBusy as FileBusy
from ._files import FileLock as FileLock
from ._files import SoftLockWarning as SoftLockWarning
from ._files import WriterLock as WriterLock
from ._files import atomic_write_text as atomic_write_text
from ._files import check_size as check_size
from ._files import hdf5_problem as hdf5_problem
from ._files import hdf5_shortfall as hdf5_shortfall
from ._files import host_memory_bytes as host_memory_bytes
from ._files import lock_holder as lock_holder
from ._files import size_text as size_text
from ._files import temporary_path as temporary_path
from ._geometry import PRESETS as PRESETS
from ._geometry import Geometry as Geometry
from ._geometry import JointDimensions as JointDimensions
from ._geometry import ball_mask as ball_mask
from ._geometry import box as box
from ._geometry import from_file as from_file
from ._geometry import joint as joint
from ._geometry import preset_dimensions as preset_dimensions
from ._grid import Grid as Grid
from ._initial import add_blob as add_blob
from ._initial import baseline_fields as baseline_fields
from ._initial import load_arrays as load_arrays
from ._initial import set_ball as set_ball
from ._state import SPECIES as SPECIES
from ._state import SPECIES_UNITS as SPECIES_UNITS
from ._state import State as State
from ._tissues import N_TISSUES as N_TISSUES
from ._tissues import SPECIES_TISSUES as SPECIES_TISSUES
from ._tissues import TISSUE_NAMES as TISSUE_NAMES
from ._tissues import Tissue as Tissue
