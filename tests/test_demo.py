"""The embedded demo the README runs: it must report an exact fold and an identical reload."""
import json

from largekernel.cli import main


def test_demo_json(capsys):
    assert main(["demo", "--json", "--input-size", "64"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params_train"] == 4_649_060 and r["params_deploy"] == 4_437_300
    assert 0 < r["rel_err"] <= 1e-5  # non-zero: the simulated statistics make every fold do work
    assert r["reload_equal"] is True
    assert r["features"] == [[2, 40, 16, 16], [2, 80, 8, 8], [2, 160, 4, 4], [2, 320, 2, 2]]


def test_demo_table(capsys):
    assert main(["demo", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "train 4,649,060  ->  deploy 4,437,300" in out
    assert "identical outputs" in out
