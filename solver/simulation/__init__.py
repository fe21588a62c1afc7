"""A run for a notebook or a script: :func:`simulate` runs a scenario (a config, a file or a preset's
name) to an HDF5 run file, with callbacks after each frame and a progress bar when a person watches,
and returns a :class:`Simulation`: the file's path, its xarray dataset (fields and summaries with their
coordinates) and its figures as matplotlib Figures. docs/python.md shows it; docs/example.ipynb uses it.
"""

from ._simulation import Simulation as Simulation
from ._simulation import simulate as simulate
