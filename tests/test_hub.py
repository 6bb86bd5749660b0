"""Pretrained weights through huggingface_hub, tested against a real Hub cache the test builds."""
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import largekernel as lk

from goldens import GOLDEN_PARAMS, TINY, TOL, golden_param

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_cache(root: Path, files: dict[str, Path]) -> Path:
    """A Hugging Face Hub cache holding `files` for DingXiaoH/UniRepLKNet at refs/main."""
    repo = root / "models--DingXiaoH--UniRepLKNet"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)
    return root


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_pretrained_tags_and_cfgs():
    assert lk.list_models("unireplknet_s*", pretrained=True) == [
        "unireplknet_s.in1k", "unireplknet_s.in22k", "unireplknet_s.in22k_ft_in1k_384"]
    cfg = lk.get_pretrained_cfg("unireplknet_xl.in22k_ft_in1k_384")
    assert cfg.hf_hub_id == "DingXiaoH/UniRepLKNet"
    assert cfg.hf_hub_filename == "unireplknet_xl_in22k_to_in1k_384_acc87.96.pth"
    assert cfg.input_size == (3, 384, 384) and cfg.crop_pct == 1.0
    assert lk.get_pretrained_cfg("unireplknet_b").tag == "in22k_ft_in1k_384"
    assert lk.get_pretrained_cfg("unireplknet_t").hf_hub_filename == "unireplknet_t_in1k_224_acc83.21.pth"
    assert lk.get_pretrained_cfg("unireplknet_l.in22k").num_classes == 21841
    with pytest.raises(ValueError, match="available: unireplknet_a.in1k"):
        lk.get_pretrained_cfg("unireplknet_a.in22k")


@pytest.fixture(params=GOLDEN_PARAMS)
def golden(request):
    return golden_param(request)


def test_pretrained_from_hub_cache_offline(tmp_path, offline, golden):
    cache = make_cache(tmp_path, {"unireplknet_a_in1k_224_acc77.03.pth": golden.file("train.pth")})
    io = golden.load("io.pt")
    model = golden.create(pretrained=True, cache_dir=cache).eval()
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max() <= TOL
    assert model.pretrained_cfg["tag"] == "in1k"


def test_pretrained_22k_file_into_other_class_count(tmp_path, offline):
    # a 21841-class file (the 22K tag's layout) loads into a 1000-class model with the head dropped
    sd = TINY.load("train.pth")
    sd["head.weight"], sd["head.bias"] = torch.zeros(21841, 128), torch.zeros(21841)
    src = tmp_path / "src.pth"
    torch.save(sd, src)
    cache = make_cache(tmp_path / "hub", {"unireplknet_a_in1k_224_acc77.03.pth": src})
    model = TINY.create(pretrained=True, cache_dir=cache, num_classes=1000)
    assert model.head.weight.abs().sum() > 0  # fresh init, not the file's zeros


def test_missing_file_offline_gives_clear_error(tmp_path, offline):
    cache = make_cache(tmp_path, {})
    with pytest.raises(lk.PretrainedNotAvailable, match="checkpoint_path"):
        lk.create_model("unireplknet_s.in22k", pretrained=True, cache_dir=cache)


def test_local_file_overlay(tmp_path):
    model = TINY.create(pretrained=True, pretrained_cfg_overlay=dict(file=str(TINY.file("train.pth"))))
    sd = TINY.load("train.pth")
    assert torch.equal(model.head.weight, sd["head.weight"])
    with pytest.raises(lk.PretrainedNotAvailable, match="does not exist"):
        lk.create_model("unireplknet_a", pretrained=True,
                        pretrained_cfg_overlay=dict(file=str(tmp_path / "missing.pth")))


def test_hub_cache_env_in_fresh_process(tmp_path):
    """HF_HUB_CACHE + HF_HUB_OFFLINE set in the environment, read at import as users do."""
    cache = make_cache(tmp_path, {"unireplknet_a_in1k_224_acc77.03.pth": TINY.file("train.pth")})
    code = ("import largekernel as lk; m = lk.create_model('unireplknet_a.in1k', pretrained=True, "
            f"num_classes=10, **{TINY.layout!r}); print(float(m.head.weight.abs().sum()))")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    sd = TINY.load("train.pth")
    assert abs(float(out.stdout) - float(sd["head.weight"].abs().sum())) < 1e-2


def test_unreachable_hub_fails_at_once_without_retries(tmp_path, monkeypatch):
    """Online mode but no route to the Hub: the clear message at once, huggingface_hub never retried."""
    import huggingface_hub

    calls = []
    real = huggingface_hub.hf_hub_download

    def counting(*args, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counting)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(lk.PretrainedNotAvailable) as e:
        lk.create_model("unireplknet_a", pretrained=True, cache_dir=make_cache(tmp_path, {}))
    assert "http://127.0.0.1:9 cannot be reached" in str(e.value)
    assert "--checkpoint PATH --model NAME" in str(e.value) and "--init-checkpoint PATH (train)" in str(e.value)
    assert calls == [True]  # the cache lookup only


def test_cli_predict_pretrained_offline_says_how_to_pass_the_file(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from clitools import run_cli

    monkeypatch.setenv("HF_HUB_CACHE", str(make_cache(tmp_path / "hub", {})))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    Image.new("RGB", (32, 32)).save(tmp_path / "cat.png")
    code, out, err = run_cli(["predict", tmp_path / "cat.png", "--model", "unireplknet_a.in1k"])
    assert code == 2 and out == ""
    assert "HF_HUB_OFFLINE is set and the file is not in the cache" in err
    assert "--checkpoint PATH --model NAME (predict, eval)" in err
