"""Cost models: what (re)computing a node costs. The GPU roofline model lands with its own issue."""

from autoremat.cost_models.flops import node_flops

__all__ = ["node_flops"]
