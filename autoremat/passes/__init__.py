"""Solving and rewriting: the budget solvers behind one interface (``solver.py``, ``registry.py``),
the search that verifies their plans (``search.py``, ``pool.py``), and the rewrite that splits the
joint graph by the chosen plan (docs/architecture.md, "Solving")."""
