"""Element, scale and block formats: the constants of OCP MX v1.0, NVFP4 and the baselines.

An element format with `ebits` exponent bits, `mbits` mantissa bits and smallest normal exponent
`emin` has the quantum (ulp) 2^(max(floor(log2|v|), emin) − mbits) at value v; its largest finite
value is `max_normal`. INT8 of MXINT8 fits the same description as a fixed-point format: quantum
2^-6 everywhere (`emin` = 0, `mbits` = 6), largest value 127/64. That single description drives the
rounding in `numerics.kernels`.

References:
    OCP Microscaling Formats (MX) Specification v1.0 (2023), §5 (element and scale formats), §6.3.
    Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv 2310.10537, Table 1.
    NVIDIA, "Introducing NVFP4" (2025) and the Blackwell block-scaling recipe (E4M3 scale, 16 values).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import ml_dtypes
import numpy as np

Kind = Literal["mx", "nvfp4", "per_tensor", "cast", "identity"]
KINDS = ("mx", "nvfp4", "per_tensor", "cast", "identity")
SCALE_RULES = ("floor", "rceil")
ROUNDINGS = ("even", "away", "stochastic")


@dataclasses.dataclass(frozen=True)
class ElementFormat:
    """A scalar element format: sign, `ebits` exponent bits, `mbits` mantissa bits.

    Attributes:
        name: short name, e.g. "e4m3".
        ebits: exponent bits (0 for the fixed-point INT8 of MXINT8).
        mbits: mantissa bits (fraction bits for INT8).
        emin: exponent of the smallest normal value (quantum below it is constant).
        emax: exponent of the largest normal value.
        max_normal: largest finite magnitude.
        dtype: the ml_dtypes/numpy type holding one value.
        has_inf: whether the format encodes infinities.
        has_nan: whether the format encodes NaN.
    """

    name: str
    ebits: int
    mbits: int
    emin: int
    emax: int
    max_normal: float
    dtype: type
    has_inf: bool = False
    has_nan: bool = False

    def __post_init__(self):
        if self.mbits < 0 or self.ebits < 0 or self.emin > self.emax:
            raise ValueError(f"inconsistent element format {self}")
        top = self.max_normal / 2.0**self.emax
        if not 1.0 <= top < 2.0 or float(np.ldexp(top, self.mbits)) != int(np.ldexp(top, self.mbits)):
            raise ValueError(f"max_normal={self.max_normal} is not on the grid of {self.name}")

    @property
    def bits(self) -> int:
        """Storage bits of one element (sign included)."""
        return 1 + self.ebits + self.mbits if self.ebits else 8

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, 2^emin (the INT8 step boundary for INT8)."""
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, 2^(emin − mbits)."""
        return 2.0 ** (self.emin - self.mbits)

    @property
    def bias(self) -> int:
        """Exponent bias of the encoding (1 − emin for IEEE-like formats)."""
        return 1 - self.emin

    @property
    def max_mantissa(self) -> float:
        """Mantissa of the largest value, max_normal / 2^emax (1.75 for E4M3, 1.5 for E2M1)."""
        return self.max_normal / 2.0**self.emax


@dataclasses.dataclass(frozen=True)
class ScaleFormat:
    """A block or tensor scale format.

    Attributes:
        name: "e8m0" (MX) or "e4m3" (NVFP4).
        bits: storage bits per scale.
        dtype: ml_dtypes/numpy type of one scale (E8M0 is stored as its uint8 exponent byte).
        emin: smallest exponent (E8M0: −127).
        emax: largest exponent (E8M0: 127; 0xFF is NaN).
    """

    name: str
    bits: int
    dtype: type
    emin: int
    emax: int


# source: OCP MX v1.0 §5, element format tables; ml_dtypes.finfo agrees (tests/numerics/test_formats.py).
E4M3 = ElementFormat("e4m3", 4, 3, -6, 8, 448.0, ml_dtypes.float8_e4m3fn, has_nan=True)
E5M2 = ElementFormat("e5m2", 5, 2, -14, 15, 57344.0, ml_dtypes.float8_e5m2, has_inf=True, has_nan=True)
E3M2 = ElementFormat("e3m2", 3, 2, -2, 4, 28.0, ml_dtypes.float6_e3m2fn)
E2M3 = ElementFormat("e2m3", 2, 3, 0, 2, 7.5, ml_dtypes.float6_e2m3fn)
E2M1 = ElementFormat("e2m1", 2, 1, 0, 2, 6.0, ml_dtypes.float4_e2m1fn)
# source: OCP MX v1.0 §5 (MXINT8): 8-bit two's complement with an implicit scale of 2^-6 (saturating
# symmetrically at ±127/64 as the spec's "max normal"; the code −128 decodes to −2 but is never produced).
INT8 = ElementFormat("int8", 0, 6, 0, 0, 127.0 / 64.0, np.int8)
BF16 = ElementFormat("bf16", 8, 7, -126, 127, float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),
                     ml_dtypes.bfloat16, has_inf=True, has_nan=True)
FP32 = ElementFormat("fp32", 8, 23, -126, 127, float(np.finfo(np.float32).max), np.float32,
                     has_inf=True, has_nan=True)
ELEMENT_FORMATS = {f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1, INT8, BF16, FP32)}

# source: OCP MX v1.0 §5 (scale data type): E8M0, bias 127, exponents −127..127, 0xFF = NaN, no zero/Inf.
E8M0 = ScaleFormat("e8m0", 8, np.uint8, -127, 127)
# source: NVIDIA NVFP4: block scale in FP8 E4M3, tensor scale in FP32.
E4M3_SCALE = ScaleFormat("e4m3", 8, ml_dtypes.float8_e4m3fn, -9, 8)


@dataclasses.dataclass(frozen=True)
class BlockFormat:
    """A quantization format: elements, how they are scaled, and the default scale rule.

    Attributes:
        name: the format's name (one of FORMAT_NAMES for the presets).
        kind: "mx" (E8M0 scale per block), "nvfp4" (E4M3 scale per block and an FP32 tensor scale),
            "per_tensor" (one FP32 scale), "cast" (plain cast, no scale) or "identity" (fp32).
        element: the element format.
        block_size: elements sharing one scale along the quantized axis (None when not block-scaled).
        scale: the block scale format (None when there is none).
        tensor_scale: whether a per-tensor FP32 scale is applied.
        default_scale_rule: "floor" for MX (OCP §6.3); None where the rule is fixed by the format.

    Raises:
        ValueError: if the block size does not suit the kind (must be a positive int for "mx" and
            "nvfp4", None otherwise) or the scale format does not match the kind.
    """

    name: str
    kind: Kind
    element: ElementFormat
    block_size: int | None = None
    scale: ScaleFormat | None = None
    tensor_scale: bool = False
    default_scale_rule: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"format {self.name!r}: unknown kind {self.kind!r}; valid: {KINDS}")
        size = self.block_size
        if self.kind in ("mx", "nvfp4"):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"format {self.name!r}: block_size={size!r} must be a positive int")
        elif size is not None:
            raise ValueError(f"format {self.name!r} of kind {self.kind!r} has no blocks; got block_size={size!r}")
        want_scale = {"mx": E8M0, "nvfp4": E4M3_SCALE}.get(self.kind)
        if self.scale != want_scale:
            raise ValueError(f"format {self.name!r} of kind {self.kind!r} needs scale {want_scale}, "
                             f"got {self.scale}")
        if self.kind == "nvfp4" and self.element != E2M1:
            raise ValueError(f"nvfp4 needs E2M1 elements, got {self.element.name}")
        if self.default_scale_rule not in (None, *SCALE_RULES):
            raise ValueError(f"unknown scale rule {self.default_scale_rule!r}; valid: {SCALE_RULES}")

    @property
    def bits_per_element(self) -> float:
        """Storage bits per element including the block-scale overhead (tensor scales ignored)."""
        if self.kind == "identity":
            return 32.0
        extra = self.scale.bits / self.block_size if self.scale is not None else 0.0
        return float(self.element.bits) + extra

    def with_block_size(self, block_size: int) -> BlockFormat:
        """The same format with another block size (research use; the specs fix 32 and 16)."""
        return dataclasses.replace(self, name=f"{self.name}@{block_size}", block_size=block_size)


def _mx(name: str, element: ElementFormat) -> BlockFormat:
    # source: OCP MX v1.0 §5, concrete MX formats: all use k = 32 and an E8M0 scale.
    return BlockFormat(name, "mx", element, 32, E8M0, default_scale_rule="floor")


_PRESETS = (
    _mx("mxfp8_e4m3", E4M3),
    _mx("mxfp8_e5m2", E5M2),
    _mx("mxfp6_e3m2", E3M2),
    _mx("mxfp6_e2m3", E2M3),
    _mx("mxfp4_e2m1", E2M1),
    _mx("mxint8", INT8),
    BlockFormat("nvfp4", "nvfp4", E2M1, 16, E4M3_SCALE, tensor_scale=True),  # source: NVIDIA NVFP4
    BlockFormat("fp8_e4m3", "per_tensor", E4M3, tensor_scale=True),
    BlockFormat("bf16", "cast", BF16),
    BlockFormat("fp32", "identity", FP32),
)
FORMATS: dict[str, BlockFormat] = {f.name: f for f in _PRESETS}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def get_format(name: str | BlockFormat, *, block_size: int | None = None) -> BlockFormat:
    """Looks up a block format by name (or passes a BlockFormat through).

    Args:
        name: one of FORMAT_NAMES, or a BlockFormat.
        block_size: optional override of the block size (only for "mx" and "nvfp4" formats).

    Returns:
        The BlockFormat.

    Raises:
        ValueError: unknown name (the message lists the valid ones), or a block size that does not suit
            the format.
    """
    if isinstance(name, BlockFormat):
        fmt = name
    elif isinstance(name, str) and name in FORMATS:
        fmt = FORMATS[name]
    else:
        raise ValueError(f"unknown format {name!r}; valid names: {', '.join(FORMAT_NAMES)}")
    if block_size is not None and block_size != fmt.block_size:
        if fmt.block_size is None:
            raise ValueError(f"format {fmt.name!r} is not block-scaled; "
                             f"block_size={block_size!r} does not apply")
        fmt = fmt.with_block_size(block_size)
    return fmt


def bits_per_element(fmt: str | BlockFormat) -> float:
    """Storage bits per element, block-scale overhead included.

    bits = element bits + scale bits / block size: MXFP4 = 4 + 8/32 = 4.25, NVFP4 = 4 + 8/16 = 4.5,
    MXFP8 = 8.25, fp8_e4m3 = 8 (one FP32 scale per tensor is negligible), bf16 = 16, fp32 = 32.

    Args:
        fmt: a format name or BlockFormat.

    Returns:
        Bits per element as a float.

    Raises:
        ValueError: unknown format name.

    References:
        OCP MX v1.0 §5; arXiv 2310.10537 Table 1.
    """
    return get_format(fmt).bits_per_element
