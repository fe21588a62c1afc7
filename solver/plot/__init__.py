"""Figures of run files and study folders (matplotlib, no display needed): maps of the fields at
chosen times, clinical time courses with their reference ranges, a movie, and a study's measures and
time courses; the shared style (``RC``, :func:`species_style`, :func:`new_figure`, :func:`save_figure`)
that inference's fit figures use too. The ``figure_*`` functions return a run's or a study's figures
(matplotlib Figures, for a notebook); :func:`plot_run` and :func:`plot_study` write them as PNG files.
"""

from ._figures import RunLike as RunLike
from ._figures import figure_maps as figure_maps
from ._figures import figure_study as figure_study
from ._figures import figure_study_timecourses as figure_study_timecourses
from ._figures import figure_timecourses as figure_timecourses
from ._run import CLINICAL_RANGES as CLINICAL_RANGES
from ._run import GROUP_COLOUR as GROUP_COLOUR
from ._run import RC as RC
from ._run import SPECIES_STYLE as SPECIES_STYLE
from ._run import ClinicalRange as ClinicalRange
from ._run import RunEvents as RunEvents
from ._run import SpeciesStyle as SpeciesStyle
from ._run import map_figure as map_figure
from ._run import mark_events as mark_events
from ._run import new_figure as new_figure
from ._run import plot_run as plot_run
from ._run import run_events as run_events
from ._run import save_figure as save_figure
from ._run import shade_range as shade_range
from ._run import species_style as species_style
from ._run import timecourse_figure as timecourse_figure
from ._study import plot_study as plot_study
from ._study import study_figure as study_figure
from ._study import study_timecourse_figure as study_timecourse_figure
