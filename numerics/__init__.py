"""numerics: emulated MX block-scaled formats (OCP MX v1.0), NVFP4 and baselines; quantized matmuls."""

from .dot import mx_dot_general as mx_dot_general
from .einsum import mx_einsum as mx_einsum
from .formats import FORMAT_NAMES as FORMAT_NAMES
from .formats import FORMATS as FORMATS
from .formats import ROUNDINGS as ROUNDINGS
from .formats import SCALE_RULES as SCALE_RULES
from .formats import BlockFormat as BlockFormat
from .formats import ElementFormat as ElementFormat
from .formats import ScaleFormat as ScaleFormat
from .formats import bits_per_element as bits_per_element
from .formats import get_format as get_format
from .metrics import max_abs_error as max_abs_error
from .metrics import relative_l2_error as relative_l2_error
from .metrics import sqnr_db as sqnr_db
from .policy import QuantPolicy as QuantPolicy
from .quantize import QuantizedArray as QuantizedArray
from .quantize import dequantize as dequantize
from .quantize import fake_quantize as fake_quantize
from .quantize import quantize as quantize
