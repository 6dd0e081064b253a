"""experiments: runnable studies, their CLI (`python -m experiments`, `paretolab`) and result files."""

from .registry import EXPERIMENTS as EXPERIMENTS
from .registry import ConfigMismatchError as ConfigMismatchError
from .registry import make_config as make_config
from .registry import names as names
from .registry import run_experiment as run_experiment
from .results import ResultsDir as ResultsDir
from .results import atomic_write_bytes as atomic_write_bytes
from .results import atomic_write_text as atomic_write_text
from .results import collect_metadata as collect_metadata
from .results import sweep as sweep
