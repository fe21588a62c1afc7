"""Running scenarios to files: one run (the frame loop with its divergence checks, a new file or a
resumed one) and many (sweeps over config values, their study folders and tables, the measures
read from each run).
"""

from ._ensemble import batch_key as batch_key
from ._ensemble import describe_batches as describe_batches
from ._ensemble import run_batched as run_batched
from ._run import Callback as Callback
from ._run import Diverged as Diverged
from ._run import Frame as Frame
from ._run import FrameCount as FrameCount
from ._run import RunResult as RunResult
from ._run import file_attrs as file_attrs
from ._run import interactive as interactive
from ._run import new_writer as new_writer
from ._run import open_run as open_run
from ._run import resume_run as resume_run
from ._run import run as run
from ._run import start_processes as start_processes
from ._run import time_courses as time_courses
from ._run import to_host as to_host
from ._slurm import ClusterError as ClusterError
from ._slurm import PointsTask as PointsTask
from ._slurm import SlurmOptions as SlurmOptions
from ._slurm import parse_slurm_time as parse_slurm_time
from ._slurm import queued as queued
from ._slurm import read_jobs as read_jobs
from ._slurm import submit_slurm as submit_slurm
from ._study import MEASURES as MEASURES
from ._study import START as START
from ._study import Measure as Measure
from ._study import PointResult as PointResult
from ._study import StudyTable as StudyTable
from ._study import Sweep as Sweep
from ._study import is_study as is_study
from ._study import load_sweep as load_sweep
from ._study import measure as measure
from ._study import point_name as point_name
from ._study import point_running as point_running
from ._study import prepare_folder as prepare_folder
from ._study import read_study as read_study
from ._study import run_point as run_point
from ._study import run_study as run_study
from ._study import sweep_from_dict as sweep_from_dict
from ._study import write_study_h5 as write_study_h5
from ._study import write_summary as write_summary
