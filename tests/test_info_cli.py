"""`largekernel.tools.info` numbers against the spec, and the `largekernel` CLI (`info`, errors)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from largekernel import create_model
from largekernel.cli import main
from largekernel.tools.info import count_macs, model_info, resolve_model_names

# The spec's variants table (section 1): params (deploy), params (train), GMACs at 224.
SPEC = {
    "unireplknet_a": (4_437_300, 4_649_060, 0.640),
    "unireplknet_f": (6_235_216, 6_489_328, 0.905),
    "unireplknet_p": (10_741_704, 11_080_520, 1.573),
    "unireplknet_n": (18_318_560, 18_818_880, 2.767),
    "unireplknet_t": (31_037_980, 31_693_420, 4.899),
    "unireplknet_s": (55_645_984, 56_456_704, 9.094),
    "unireplknet_b": (98_008_456, 99_089_416, 16.057),
    "unireplknet_l": (218_454_616, 220_076_056, 35.882),
    "unireplknet_xl": (386_529_064, 388_690_984, 63.570),
}
DIMS = {"unireplknet_a": 40, "unireplknet_t": 80, "unireplknet_xl": 256}


@pytest.mark.parametrize("name", list(SPEC))
def test_model_info_matches_spec(name):
    deploy, train, gmacs = SPEC[name]
    info = model_info(name)
    assert (info.params_deploy, info.params_train) == (deploy, train)
    assert round(info.gmacs, 3) == gmacs
    assert info.feature_strides == (4, 8, 16, 32)
    assert info.input_size == (224, 224) and info.num_classes == 1000 and info.in_chans == 3


def test_macs_count_deploy_form_only():
    # The train form (extra dilated branches) counts more; the spec's column is the deploy form.
    train = create_model("unireplknet_a", device="meta")
    assert round(count_macs(train, 224) / 1e9, 3) == 0.675
    assert model_info("unireplknet_a").macs == 639_843_520


def test_info_json_exact(capsys):
    assert main(["info", "--json", "unireplknet_a", "unireplknet_t"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["model"] for d in out] == ["unireplknet_a", "unireplknet_t"]
    for d in out:
        deploy, train, gmacs = SPEC[d["model"]]
        assert (d["params_deploy"], d["params_train"]) == (deploy, train)
        assert round(d["macs"] / 1e9, 3) == gmacs and d["gmacs"] == d["macs"] / 1e9
        assert d["feature_strides"] == [4, 8, 16, 32]
        c = DIMS[d["model"]]
        assert d["feature_channels"] == [c, 2 * c, 4 * c, 8 * c]
        assert d["input_size"] == [224, 224]


def test_info_table_all_variants(capsys):
    assert main(["info"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].split()[:2] == ["model", "params"] and "GMACs@224" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == list(SPEC)
    for line, (name, (deploy, train, gmacs)) in zip(lines[1:], SPEC.items()):
        assert line.split()[1:4] == [f"{train:,}", f"{deploy:,}", f"{gmacs:.3f}"]
        assert "4/8/16/32" in line
    assert "256/512/1024/2048" in lines[-1]
    # aligned: every row starts its strides column where the header does
    col = lines[0].index("strides")
    assert all(ln[col:].startswith("4/8/16/32") for ln in lines[1:])


def test_wildcards(capsys):
    assert resolve_model_names(["unireplknet_[ls]*"]) == ["unireplknet_s", "unireplknet_l"]
    assert resolve_model_names(["unireplknet_s.*"])[0] == "unireplknet_s.in1k"
    assert resolve_model_names([]) == list(SPEC)
    assert resolve_model_names(["unireplknet_*"]) == list(SPEC)
    assert main(["info", "--json", "unireplknet_[af]"]) == 0
    assert [d["model"] for d in json.loads(capsys.readouterr().out)] == ["unireplknet_a", "unireplknet_f"]
    assert main(["info", "--json", "*_x?", "unireplknet_xl"]) == 0  # no repeats
    assert [d["model"] for d in json.loads(capsys.readouterr().out)] == ["unireplknet_xl", "upernet_unireplknet_xl"]
    assert main(["info", "nothing_*"]) == 2
    assert capsys.readouterr().err.startswith("error: no model matches 'nothing_*'")


def test_input_size_scales_macs(capsys):
    assert main(["info", "--json", "--input-size", "384", "unireplknet_s"]) == 0
    d = json.loads(capsys.readouterr().out)[0]
    macs_224 = model_info("unireplknet_s").macs
    assert d["input_size"] == [384, 384]
    assert d["macs"] == count_macs(create_model("unireplknet_s", device="meta", deploy=True), 384)
    assert d["macs"] == pytest.approx(macs_224 * (384 / 224) ** 2, rel=0.02)
    assert d["params_deploy"] == SPEC["unireplknet_s"][0]


def test_num_classes_and_in_chans(capsys):
    assert main(["info", "--json", "--num-classes", "10", "--in-chans", "1", "unireplknet_a"]) == 0
    d = json.loads(capsys.readouterr().out)[0]
    deploy = SPEC["unireplknet_a"][0]
    # head 320 -> 10 instead of 1000; stem conv 1 -> 20 channels instead of 3
    assert d["params_deploy"] == deploy - 990 * 321 - 2 * 20 * 9
    assert (d["num_classes"], d["in_chans"]) == (10, 1)


def test_unknown_model(capsys):
    assert main(["info", "unireplknet_q"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: unknown model 'unireplknet_q'.")
    assert "Did you mean" in captured.err and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1


def test_verbose_shows_traceback_and_usage_errors(capsys):
    assert main(["-v", "info", "unireplknet_q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: unknown model")
    assert main(["info", "--input-size", "0"]) == 2
    assert "--input-size" in capsys.readouterr().err
    assert main([]) == 2
    capsys.readouterr()
    assert main(["info", "-q", "-v"]) == 2  # mutually exclusive
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "info" in capsys.readouterr().out


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "largekernel", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: largekernel") and "info" in r.stdout


def test_console_script():
    # the script pip installed beside this interpreter (the venv's bin/), else the one on PATH
    beside = Path(sys.executable).parent / "largekernel"
    exe = str(beside) if beside.is_file() else shutil.which("largekernel")
    assert exe, "the largekernel console script is not installed: pip install -e ."
    r = subprocess.run([exe, "info", "unireplknet_a"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "unireplknet_a" in r.stdout and "4,437,300" in r.stdout and "0.640" in r.stdout
