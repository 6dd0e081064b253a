"""parallel: Helix attention and TP/EP FFN on a JAX device mesh, and a small flax nnx model.

Helix Parallelism (arXiv 2507.07120): attention on KVP × TPA devices with one all-to-all and an
LSE rescale, then TP (dense) or TPF × EP (MoE) FFN on the same devices. Everything here runs on any
mesh (8 emulated CPU devices in tests, GPUs or TPUs unchanged) and is tested against the
single-device reference in `parallel.blocks`.
"""

from .blocks import decode_attention as decode_attention
from .blocks import mla_decode_attention as mla_decode_attention
from .decode import DecodeState as DecodeState
from .decode import ShardedDecoder as ShardedDecoder
from .ffn import sharded_ffn as sharded_ffn
from .helix import TOKENS_PER_BLOCK as TOKENS_PER_BLOCK
from .helix import helix_attention as helix_attention
from .helix import helix_mla_attention as helix_mla_attention
from .helix import kv_append as kv_append
from .helix import round_robin_positions as round_robin_positions
from .hlo import collective_bytes as collective_bytes
from .hlo import collectives as collectives
from .layer import LayerPlan as LayerPlan
from .layer import decoder_layer as decoder_layer
from .layer import make_plan as make_plan
from .layer import reference_layer as reference_layer
from .mesh import LayoutMesh as LayoutMesh
from .mesh import as_layout_mesh as as_layout_mesh
from .mesh import make_mesh as make_mesh
from .model import Transformer as Transformer
from .model import export_weights as export_weights
from .model import sharded_decoder as sharded_decoder
from .payload import payload_bytes as payload_bytes
from .weights import LayerWeights as LayerWeights
from .weights import ModelWeights as ModelWeights
