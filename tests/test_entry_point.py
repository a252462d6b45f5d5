"""After pip install, backend="autoremat" resolves through the entry point without importing autoremat,
and the options given to torch.compile reach the partitioner."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    assert "autoremat" not in sys.modules
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    x = torch.randn(3, 4, requires_grad=True)
    options = {"compiler": "eager", "memory_budget": 0.5, "solver": "greedy"}
    torch.compile(model, backend="autoremat", options=options)(x).sum().backward()
    import autoremat
    print("PLANS", json.dumps([json.loads(p.to_json()) for p in autoremat.recent_plans()]))
    """
)


def test_backend_name_resolves_via_entry_point_and_passes_the_options_through():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("PLANS "))
    (plan,) = json.loads(line[len("PLANS ") :])
    assert plan["status"] == "optimal" and plan["budget"] == "0.5"
    assert plan["solver_stats"].get("milp_solves", 0) == 0, "solver='greedy' must not run the MILP"
    # The peak of this model is its weights and gradients: recomputing lowers nothing, so the least
    # and the runtime-optimal peaks coincide and every budget gets the runtime-optimal min-cut plan.
    assert plan["least_bytes"] == plan["runtime_optimal_bytes"] == plan["predicted_peak_bytes"]
    assert plan["solver"] == "min-cut"
