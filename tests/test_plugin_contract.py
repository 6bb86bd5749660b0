"""The plug-in contract: a toy plug-in (tests/plugins/toy_plugin.py) installed from a temporary
folder through the `largekernel.plugins` entry-point group is trained two steps by the real
trainer, evaluated, used to predict, re-parameterized and exported; and the engine imports no
plug-in (the layering docs/plugins.md describes)."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

import largekernel
from largekernel.engine import plugin as plugin_mod
from largekernel.models import unireplknet
from clitools import run_cli

SRC = Path(largekernel.__file__).parent
TOY = Path(__file__).parent / "plugins" / "toy_plugin.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def toy_installed(tmp_path, monkeypatch):
    """toy_plugin.py plus a dist-info declaring it under the entry-point group, on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(TOY, site / "toy_plugin.py")
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugin_mod.ENTRY_POINT_GROUP}]\ntoy = toy_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(unireplknet.VARIANTS, "unireplknet_a", ((1, 1, 1, 1), (8, 16, 32, 64)))
    yield site
    plugin_mod.PLUGINS.pop("toy", None)
    plugin_mod._entry_points_loaded.discard("toy=toy_plugin")
    import sys
    sys.modules.pop("toy_plugin", None)


def test_entry_point_registers_the_toy_plugin(toy_installed):
    assert "toy" not in plugin_mod.PLUGINS
    plugin_mod.discover_plugins()
    assert plugin_mod.get_plugin("toy").name == "toy"
    assert type(plugin_mod.plugin_for_file("x.toy")).__name__ == "Toy"


def test_toy_plugin_trains_evaluates_predicts_and_reparameterizes(toy_installed, tmp_path):
    plugin_mod.discover_plugins()
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--modality", "toy", "--model", "unireplknet_a",
                              "--model-kwargs", '{"kernel_sizes": [3, 3, 3, 3]}', "--in-chans", "2",
                              "--input-size", "32", "--batch-size", "4", "--epochs", "1",
                              "--max-steps", "2", "--warmup-epochs", "0", "--toy-samples", "20",
                              "--output", run])
    assert code == 0, err
    assert "trained        1 epochs, 2 steps" in out
    stored = json.loads((run / "config.json").read_text())
    assert stored["modality"] == "toy" and stored["toy_samples"] == 20 and "mel_bins" not in stored
    code, out, err = run_cli(["eval", run / "last.safetensors", "--data", "-", "--json"])
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n"] == 5 and metrics["classes"] == ["neg", "pos"]
    assert sum(map(sum, metrics["confusion"])) == 5
    code, out, err = run_cli(["make-data", "toy", tmp_path / "files", "--count", "1"])
    assert code == 0 and out == f"wrote 1 toy files to {tmp_path / 'files'}\n", err
    code, out, err = run_cli(["predict", tmp_path / "files" / "0.toy", "--checkpoint",
                              run / "last.safetensors", "--json"])
    assert code == 0, err
    top = json.loads(out)[0]["top"]
    assert [t["label"] for t in top] in (["neg", "pos"], ["pos", "neg"])
    assert abs(sum(t["prob"] for t in top) - 1) < 1e-6
    code, out, err = run_cli(["reparam", run / "last.safetensors", "-o", tmp_path / "d.safetensors"])
    assert code == 0 and "(OK, tolerance 1e-5)" in out, err + out
    code, out, err = run_cli(["export", run / "last.safetensors", "-o", tmp_path / "toy.onnx", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] and result["input_shape"] == [2, 2, 32, 32] and result["output_shapes"] == [[2, 2]]
    assert result["input_contract"]["modality"] == "toy"


def test_make_data_dispatches_to_the_plugins_generators_and_keeps_the_old_names(toy_installed, tmp_path):
    from largekernel.cli import build_parser

    plugin_mod.discover_plugins()
    code, new, _ = run_cli(["make-data", "series", tmp_path / "a.csv", "--length", "60", "--variables", "2"])
    code2, old, _ = run_cli(["make-series", tmp_path / "b.csv", "--length", "60", "--variables", "2"])
    assert code == code2 == 0 and new.replace("a.csv", "b.csv") == old
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    code, out, _ = run_cli(["make-toy", tmp_path / "t", "--count", "2"])
    assert code == 0 and sorted(p.name for p in (tmp_path / "t").iterdir()) == ["0.toy", "1.toy"]
    help_text = " ".join(build_parser().format_help().split())
    assert "make-data write a dataset a plug-in can generate (KIND: clips, digits, scenes, series, shapes, speech, toy)" in help_text
    cli_source = (SRC / "cli.py").read_text()
    assert not any(name in cli_source for name in ("modalities", "speech_data", "series_data", "shapes_data",
                                                    "clips_data", "mel_bins"))


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    package = "largekernel." + ".".join(path.relative_to(SRC).parent.parts)
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rstrip(".").split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module)
    return names


def test_the_engine_imports_no_plugin_tool_or_cli():
    for path in sorted((SRC / "engine").glob("*.py")):
        bad = [n for n in _imports(path) if n.startswith(("largekernel.modalities", "largekernel.tools",
                                                          "largekernel.cli"))]
        assert not bad, f"{path.name} imports {bad}"


def test_every_option_has_a_help_sentence_in_its_plugins_group(toy_installed):
    import argparse
    import dataclasses

    from largekernel.cli import build_parser
    from largekernel.engine.config import TrainConfig

    plugin_mod.discover_plugins()
    fields = list(dataclasses.fields(TrainConfig))[:-1]  # the last, `options`, holds the plug-in's
    for cls in plugin_mod.all_plugins().values():
        fields += list(dataclasses.fields(cls.options)) if cls.options else []
    for f in fields:
        words = f.metadata.get("help", "").split()
        assert len(words) >= 3, f"option {f.name} has no help sentence"
    train = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    titles = {g.title: [a.dest for a in g._group_actions] for g in train._action_groups}
    assert titles["toy options (--modality toy)"] == ["cfg_toy_samples"]
    assert titles["audio options (--modality audio)"][:2] == ["cfg_sample_rate", "cfg_mel_bins"]
    assert "cfg_lr" in titles["engine options"] and "cfg_mel_bins" not in titles["engine options"]
    text = " ".join(train.format_help().split())  # independent of the terminal's width
    assert ("--toy-samples V random tensors in all; the last quarter is the validation set "
            "(default: 16)") in text


def test_flat_keys_reach_the_plugin_options_and_foreign_keys_are_dropped():
    from largekernel.engine.config import resolve_config

    cfg = resolve_config(overrides=dict(modality="audio", mel_bins="40", lookback=12, lr="1e-3"))
    assert cfg.mel_bins == 40 and cfg.options.mel_bins == 40 and cfg.lr == 1e-3
    assert "lookback" not in cfg.to_dict() and cfg.to_dict()["mel_bins"] == 40
    with pytest.raises(AttributeError, match="no option 'lookback' for modality 'audio'"):
        cfg.lookback
    with pytest.raises(ValueError, match=r"unknown config option\(s\) \['mel_binz'\]"):
        resolve_config(overrides=dict(modality="audio", mel_binz=3))
    assert resolve_config(overrides=cfg.to_dict()) == cfg


def test_the_models_package_imports_point_down():
    """weights.py (the pretrained table) is a leaf; hub and checkpoint sit below the registry."""
    models = SRC / "models"
    ours = {p.stem: [n for n in _imports(p) if n.startswith("largekernel.")] for p in models.glob("*.py")}
    assert ours["weights"] == []
    assert ours["hub"] == ["largekernel.models.weights"]
    assert sorted(ours["registry"]) == ["largekernel.models.checkpoint", "largekernel.models.hub",
                                        "largekernel.models.segmentation", "largekernel.models.unireplknet",
                                        "largekernel.models.weights"]
    top_level = [n for node in ast.parse((models / "checkpoint.py").read_text()).body
                 if isinstance(node, ast.ImportFrom) and node.level for n in [node.module]]
    assert "registry" not in top_level and "hub" not in top_level
