"""Run files: the HDF5 layout (one file per run, appended frame by frame, readable while written and
after a crash, with the dimension scales and CF attributes netCDF tools read), its XDMF sidecar for
ParaView, resuming a file, ``synovia info``'s description, and :func:`open_dataset` (a run file as an
xarray Dataset; xarray is the optional extra ``synovia[xarray]``). The layout is documented in
``_runfile``'s docstring and docs/hdf5.md.
"""

from ._dataset import XARRAY_EXTRA as XARRAY_EXTRA
from ._dataset import open_dataset as open_dataset
from ._runfile import CF_CONVENTIONS as CF_CONVENTIONS
from ._runfile import LAYOUT_VERSION as LAYOUT_VERSION
from ._runfile import SIDECAR_EVERY_S as SIDECAR_EVERY_S
from ._runfile import NotARunFile as NotARunFile
from ._runfile import RunFile as RunFile
from ._runfile import RunWriter as RunWriter
from ._runfile import axis_names as axis_names
from ._runfile import check_output_name as check_output_name
from ._runfile import describe as describe
from ._runfile import repair as repair
from ._runfile import resume_writer as resume_writer
from ._runfile import write_xdmf as write_xdmf
