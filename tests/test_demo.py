"""The README demo runs end to end (tiny configuration, codegen-free) and reports gradient parity."""

from __future__ import annotations

from autoremat.demo.__main__ import main


def test_demo_prints_table_with_parity(capsys):
    assert (
        main(
            [
                "--compiler",
                "eager",
                "--layers",
                "1",
                "--d-model",
                "32",
                "--batch",
                "2",
                "--seq",
                "16",
                "--steps",
                "1",
                "--budgets",
                "1.0",
                "0.0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| autoremat budget=1 |" in out and "| autoremat budget=0 |" in out
    parity = float(out.rsplit("=", 1)[1])
    assert parity < 1e-3
