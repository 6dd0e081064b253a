"""perfmodel: a differentiable analytical cost model of LLM inference."""

from .presets import HARDWARE as HARDWARE
from .presets import MODELS as MODELS
from .presets import get_hardware as get_hardware
from .presets import get_model as get_model
from .specs import HardwareSpec as HardwareSpec
from .specs import Layout as Layout
from .specs import LinkLevel as LinkLevel
from .specs import ModelSpec as ModelSpec
from .specs import Workload as Workload
from .specs import format_bits as format_bits
