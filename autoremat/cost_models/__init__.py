"""Cost models: what (re)computing a node costs on the target device (DESIGN §5).

Device specs (datasheet or calibrated) → per-node roofline cost → fusion-aware recompute cost. Solvers
consume ``CostModel.for_graph(analysis)``; nothing else in the tree computes a time.
"""

from autoremat.cost_models.calibration import Calibration, calibrate
from autoremat.cost_models.device_specs import SPECS, DeviceSpec, spec_for_device, spec_for_name
from autoremat.cost_models.flops import node_flops, node_flops_expr
from autoremat.cost_models.model import CostModel, GraphCosts, default_cost_model

__all__ = [
    "SPECS",
    "Calibration",
    "CostModel",
    "DeviceSpec",
    "GraphCosts",
    "calibrate",
    "default_cost_model",
    "node_flops",
    "node_flops_expr",
    "spec_for_device",
    "spec_for_name",
]
