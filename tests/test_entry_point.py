"""After pip install, backend="autoremat" resolves through the entry point without importing autoremat."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    assert "autoremat" not in sys.modules
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    x = torch.randn(3, 4, requires_grad=True)
    compiled = torch.compile(model, backend="autoremat", options={"compiler": "eager", "memory_budget": 0.5})
    compiled(x).sum().backward()
    import autoremat
    plans = autoremat.recent_plans()
    assert len(plans) == 1 and plans[0].status != "fallback", plans
    print("OK", plans[0].solver)
    """
)


def test_backend_name_resolves_via_entry_point():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK milp" in result.stdout or "OK greedy" in result.stdout or "OK min-cut" in result.stdout
