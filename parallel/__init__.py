"""parallel: Helix attention and TP/EP FFN on a JAX device mesh, and a small flax nnx model.

Helix Parallelism (arXiv 2507.07120): attention on KVP × TPA devices with one all-to-all and an
LSE rescale, then TP (dense) or TPF × EP (MoE) FFN on the same devices.
"""

from .mesh import LayoutMesh as LayoutMesh
from .mesh import as_layout_mesh as as_layout_mesh
from .mesh import make_mesh as make_mesh
from .model import Transformer as Transformer
from .model import export_weights as export_weights
from .weights import ModelWeights as ModelWeights
