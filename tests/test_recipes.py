"""Defaults that cannot trap a first run: warm-up relative to the run, fine-tuning defaults when a
run starts from weights, presets that load the weights they name, and `data` as a config key."""
from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml

import largekernel as lk
from clitools import run_cli
from largekernel.engine.config import FINETUNE, PRESETS, TrainConfig, parse_overrides, resolve_config
from largekernel.models.hub import resolve_pretrained_file
from test_hub import make_cache
from test_train import write_stripes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--model", "unireplknet_a", "--in-chans", "1", "--input-size", "32", "--val-split", "0.25",
         "--max-steps", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_stripes(tmp_path_factory.mktemp("stripes") / "data")


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    """An offline Hub cache without any weights: a download attempt fails at once."""
    cache = make_cache(tmp_path / "hub", {})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


# ------------------------------------------------------------------------------------ warm-up

@pytest.mark.parametrize("epochs, warmup", [(300, 20.0), (1000, 20.0), (30, 3.0), (5, 0.5)])
def test_unset_warmup_is_a_tenth_of_the_run_at_most_20(epochs, warmup):
    assert resolve_config(overrides={"epochs": epochs}).warmup_epochs == warmup
    assert TrainConfig(epochs=epochs).warmup_epochs == warmup


def test_explicit_warmup_is_kept_from_flags_yaml_and_presets(tmp_path):
    assert resolve_config(overrides={"epochs": 30, "warmup_epochs": "7"}).warmup_epochs == 7
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 30, "warmup_epochs": 0}))
    assert resolve_config(yaml_path=path).warmup_epochs == 0
    assert resolve_config("in1k_t", overrides={"epochs": 30}).warmup_epochs == 20  # the preset's value
    # an explicit "none" asks for the rule again
    assert resolve_config("in1k_t", overrides={"epochs": 30, "warmup_epochs": "none"}).warmup_epochs == 3


def test_train_stores_and_prints_the_resolved_warmup(data, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", data, "--output", run, *SMALL, "--epochs", "4",
                              "--batch-size", "6", "--randaug", "none", "--reprob", "0"])
    assert code == 0, err[-3000:]
    assert json.loads((run / "config.json").read_text())["warmup_epochs"] == 0.4
    assert "4 epochs, 0.4 warm-up" in err and "from random init" in err, err


# ------------------------------------------------------------------------------ fine-tuning

def test_finetune_preset_values_and_that_it_needs_weights():
    cfg = resolve_config("finetune", overrides={"pretrained": True, "model": "unireplknet_s.in1k"})
    assert cfg.blr * cfg.batch_size / 256 == pytest.approx(1e-4)  # lr 1e-4 at its batch of 32
    assert (cfg.epochs, cfg.warmup_epochs, cfg.randaug, cfg.reprob, cfg.mixup, cfg.cutmix) == \
        (10, 1, None, 0.0, 0.0, 0.0)
    assert (cfg.layer_decay, cfg.drop_path, cfg.scale) == (0.8, 0.1, (0.25, 1.0))
    with pytest.raises(ValueError, match="add --pretrained .* or --init-checkpoint FILE"):
        resolve_config("finetune")
    with pytest.raises(ValueError, match="add --pretrained"):
        resolve_config("finetune", overrides=parse_overrides(["pretrained=false"]))


def test_starting_from_weights_without_a_preset_gets_finetune_defaults_under_own_settings(tmp_path):
    for start in ({"pretrained": True}, {"init_checkpoint": "w.pth"}, parse_overrides(["pretrained=true"])):
        cfg = resolve_config(overrides={**start, "epochs": 3, "lr": 5e-4})
        assert (cfg.epochs, cfg.lr) == (3, 5e-4)  # the user's own values win
        assert (cfg.randaug, cfg.reprob, cfg.layer_decay, cfg.warmup_epochs, cfg.batch_size) == \
            (None, 0.0, 0.8, 0.3, 32), start  # warm-up: a tenth of the user's 3 epochs
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"pretrained": True, "randaug": "m5"}))
    assert resolve_config(yaml_path=path).randaug == "m5"
    # from scratch, or with a preset: the preset / the defaults, untouched
    assert resolve_config().randaug == "m9" and resolve_config().layer_decay is None
    with_preset = resolve_config("in1k_t", overrides={"pretrained": True})
    assert (with_preset.randaug, with_preset.reprob, with_preset.epochs) == ("m9", 0.25, 300)
    assert set(FINETUNE) <= set(TrainConfig.__dataclass_fields__)


def test_offline_finetune_from_a_local_file_never_asks_the_hub(data, tmp_path, empty_offline_hub):
    """`train --pretrained --init-checkpoint FILE` offline: the file replaces the Hub weights, the
    fine-tuning defaults apply, and the body starts from the file (lr 0 keeps it)."""
    torch.manual_seed(7)
    src = lk.create_model("unireplknet_a", in_chans=1, num_classes=5)
    init = lk.save_checkpoint(src, tmp_path / "local.safetensors")
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", data, "--output", run, *SMALL, "--pretrained",
                              "--init-checkpoint", init, "--lr", "0", "--min-lr", "0",
                              "--weight-decay", "0", "--batch-size", "6"])
    assert code == 0, err[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["epochs"], cfg["warmup_epochs"], cfg["randaug"], cfg["reprob"], cfg["layer_decay"]) == \
        (10, 1, None, 0.0, 0.8)
    assert f"from weights {init}" in err, err
    from safetensors.torch import load_file

    last, ref = load_file(run / "last.safetensors"), src.state_dict()
    assert torch.equal(last["stages.2.0.dwconv.lk_origin.weight"], ref["stages.2.0.dwconv.lk_origin.weight"])


def test_missing_init_checkpoint_names_the_flag(data, tmp_path):
    code, out, err = run_cli(["train", "--data", data, "--output", tmp_path / "run", *SMALL,
                              "--init-checkpoint", tmp_path / "nope.pth"])
    assert code == 2 and f"--init-checkpoint {tmp_path / 'nope.pth'} does not exist" in err, err


def test_pretrained_offline_says_to_pass_init_checkpoint(data, tmp_path, empty_offline_hub):
    code, out, err = run_cli(["train", "--data", data, "--output", tmp_path / "run", *SMALL,
                              "--pretrained"])
    assert code == 2, err[-3000:]
    assert "unireplknet_a_in1k_224_acc77.03.pth" in err and "--init-checkpoint PATH (train)" in err, err


# ----------------------------------------------------------------------- presets' weights

@pytest.mark.parametrize("variant", ["s", "b", "l", "xl"])
def test_in22k_finetune_presets_start_from_the_22k_weights(variant, empty_offline_hub):
    cfg = resolve_config(f"in22k_ft_in1k_384_{variant}")
    assert cfg.pretrained is True and cfg.model == f"unireplknet_{variant}.in22k"
    pcfg = lk.get_pretrained_cfg(cfg.model)
    assert pcfg.hf_hub_filename == f"unireplknet_{variant}_in22k_pretrain.pth" and pcfg.num_classes == 21841
    with pytest.raises(lk.PretrainedNotAvailable) as e:  # offline: what to fetch and which flag takes it
        resolve_pretrained_file(pcfg)
    assert f"unireplknet_{variant}_in22k_pretrain.pth" in str(e.value)
    assert "--init-checkpoint PATH (train)" in str(e.value)


def test_digits_preset_is_the_demo_recipe():
    from largekernel.tools.demo import DEMO_CONFIG

    assert {k: DEMO_CONFIG[k] for k in PRESETS["digits"]} == PRESETS["digits"]
    cfg = resolve_config("digits")
    assert (cfg.model, cfg.input_size, cfg.in_chans, cfg.epochs, cfg.randaug, cfg.hflip) == \
        ("unireplknet_a", 32, 1, 8, None, 0.0)


# ------------------------------------------------------------------------------- data: key

def test_data_is_a_config_key_for_the_training_data(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": "photos/", "epochs": 3}))
    assert resolve_config(yaml_path=path).train == "photos/"
    assert resolve_config(overrides=parse_overrides(["data=photos/"])).train == "photos/"
    assert resolve_config(overrides={"data": "a/", "train": "a/"}).train == "a/"
    path.write_text(yaml.safe_dump({"data": "a/", "train": "b/"}))
    with pytest.raises(ValueError, match="set both 'data' and 'train'"):
        resolve_config(yaml_path=path)


def test_cli_set_data_trains_on_that_folder(data, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--set", f"data={data}", "--output", run, *SMALL,
                              "--batch-size", "6", "--warmup-epochs", "0", "--epochs", "1"])
    assert code == 0, err[-3000:]
    assert json.loads((run / "config.json").read_text())["train"] == str(data)
