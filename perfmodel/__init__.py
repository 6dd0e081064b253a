"""perfmodel: a differentiable analytical cost model of LLM inference.

Specs and presets (`specs`, `presets`), per-op costs (`ops`) with learnable efficiencies
(`efficiency`), steps of a model under a layout (`step`), per-GPU memory and the Appendix A
roofline (`memory`), serving metrics and Pareto frontiers (`serving`), energy (`energy`),
exhaustive sweeps (`sweep`) and the paper studies (`studies`). Calibration: the timing harness
(`measure`, `kernels`), measurement files (`measurements`, `importers`), the optax fit
(`calibrate`) and fitted hardware profiles (`profile`).
Everything numeric is jnp: jit-able, vmap-able over design points, differentiable.
"""

from .efficiency import LINK_LEVELS as LINK_LEVELS
from .efficiency import OP_CLASSES as OP_CLASSES
from .efficiency import POWER_COMPONENTS as POWER_COMPONENTS
from .efficiency import Efficiency as Efficiency
from .efficiency import EfficiencyParams as EfficiencyParams
from .efficiency import constrain as constrain
from .efficiency import datasheet_params as datasheet_params
from .efficiency import params_from_dict as params_from_dict
from .efficiency import params_to_dict as params_to_dict
from .efficiency import unconstrain as unconstrain
from .energy import Energy as Energy
from .energy import disaggregated_energy as disaggregated_energy
from .energy import energy_per_token as energy_per_token
from .energy import step_power as step_power
from .ops import collective_time as collective_time
from .ops import decode_attention_time as decode_attention_time
from .ops import elementwise_time as elementwise_time
from .ops import gemm_time as gemm_time
from .ops import grouped_gemm_time as grouped_gemm_time
from .ops import prefill_attention_time as prefill_attention_time
from .ops import smooth_max as smooth_max
from .presets import HARDWARE as HARDWARE
from .presets import MODELS as MODELS
from .presets import get_hardware as get_hardware
from .presets import get_model as get_model
from .serving import Serving as Serving
from .serving import colocated as colocated
from .serving import disaggregated as disaggregated
from .serving import envelope as envelope
from .serving import pareto_front as pareto_front
from .serving import pareto_mask as pareto_mask
from .serving import sla_mask as sla_mask
from .specs import HardwareSpec as HardwareSpec
from .specs import Layout as Layout
from .specs import LinkLevel as LinkLevel
from .specs import ModelSpec as ModelSpec
from .specs import Workload as Workload
from .specs import format_bits as format_bits
from .memory import Memory as Memory
from .memory import fits as fits
from .memory import memory_footprint as memory_footprint
from .step import LayoutArrays as LayoutArrays
from .step import StepCost as StepCost
from .step import decode_step as decode_step
from .step import layout_arrays as layout_arrays
from .step import make_layout_arrays as make_layout_arrays
from .step import mixed_step as mixed_step
from .step import prefill_step as prefill_step
from .step import stack_layouts as stack_layouts
from .sweep import decode_sweep as decode_sweep
from .sweep import enumerate_layouts as enumerate_layouts
from .sweep import evaluate as evaluate
from .layer import LayerCost as LayerCost
from .layer import decode_layer_cost as decode_layer_cost
from .comm import layer_collective_bytes as layer_collective_bytes
from .measurements import Measurement as Measurement
from .measurements import MeasurementSet as MeasurementSet
from .measurements import read_csv as read_csv
from .measurements import write_csv as write_csv
from .importers import read_measurements as read_measurements
from .importers import read_nccl_tests as read_nccl_tests
from .calib_params import PRECISIONS as PRECISIONS
from .calib_params import CalibParams as CalibParams
from .calib_params import efficiency_for as efficiency_for
from .calib_params import init_params as init_params
from .calib_params import predict_rows as predict_rows
from .calib_params import precision_index as precision_index
from .calib_data import SPLITS as SPLITS
from .calib_data import STATISTICS as STATISTICS
from .calib_data import measured_times as measured_times
from .calib_data import split_mask as split_mask
from .calib_report import FitReport as FitReport
from .calib_report import percentage_errors as percentage_errors
from .calibrate import fit as fit
from .profile import load_profile as load_profile
from .profile import save_profile as save_profile
from .cpu import cpu_local_spec as cpu_local_spec
from .search import Case as Case
from .search import SearchResult as SearchResult
from .search import SearchSpace as SearchSpace
from .search import exhaustive_search as exhaustive_search
from .search import gradient_search as gradient_search
from .search import sla_sweep as sla_sweep
from .ratematch import elastic_scaling as elastic_scaling
from .ratematch import rate_matching as rate_matching
from .ratematch import traffic_trace as traffic_trace
