"""Cost models: what a plan costs on the target device, in time and in memory, side by side
(docs/architecture.md, "Cost models").

Time: device specs (datasheet or calibrated) → per-node roofline cost → fusion-aware recompute cost
(``time_model.CostModel.for_graph``). Memory: the peak of the step as it runs (``liveness``), kernel
scratch (``workspace``) and what the device has free (``device_memory``). Cost models read only the
bottom layer (``autoremat.graph``), never the solvers. A new model is one new file plus a line in
``TIME_MODELS`` or ``MEMORY_MODELS``.
"""

from autoremat.cost_models.calibration import Calibration, calibrate
from autoremat.cost_models.device_specs import SPECS, DeviceSpec, spec_for_device, spec_for_name
from autoremat.cost_models.flops import node_flops, node_flops_expr
from autoremat.cost_models.liveness import OpByOpMemory, PeakReport
from autoremat.cost_models.time_model import CostModel, GraphCosts, default_cost_model

#: time models by name: ``model(spec, calibration).for_graph(analysis)`` gives per-node costs
TIME_MODELS = {"roofline-fusion": CostModel}
DEFAULT_TIME_MODEL = "roofline-fusion"
#: memory models by name: ``model().peak(analysis, saved)`` predicts a plan's peak
MEMORY_MODELS = {OpByOpMemory.name: OpByOpMemory}
DEFAULT_MEMORY_MODEL = OpByOpMemory.name

__all__ = [
    "DEFAULT_MEMORY_MODEL",
    "DEFAULT_TIME_MODEL",
    "MEMORY_MODELS",
    "SPECS",
    "TIME_MODELS",
    "Calibration",
    "CostModel",
    "DeviceSpec",
    "GraphCosts",
    "OpByOpMemory",
    "PeakReport",
    "calibrate",
    "default_cost_model",
    "node_flops",
    "node_flops_expr",
    "spec_for_device",
    "spec_for_name",
]
