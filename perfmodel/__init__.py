"""perfmodel: a differentiable analytical cost model of LLM inference."""

from .specs import Layout as Layout
from .specs import ModelSpec as ModelSpec
