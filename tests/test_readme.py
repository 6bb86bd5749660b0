"""The README's cheap examples run as written, so the front door cannot drift from the code.

A fenced block preceded by the line `<!-- tested -->` is run here: a `bash` block command by command
(`largekernel ...` in-process, in a scratch folder that holds the files the examples name), a `python`
block with exec, the blocks of one kind sharing a namespace in README order. Pretrained weights come
from a Hugging Face Hub cache the test builds (random UniRepLKNet-A weights under the in1k file name),
offline, so nothing is downloaded.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from PIL import Image

import largekernel as lk
from clitools import run_cli
from test_hub import make_cache

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- tested -->\n```(\w+)\n(.*?)```", re.S)


def marked_blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == kind]


def commands(block: str) -> list[list[str]]:
    """The shell commands of a block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder with the files the examples name (images, an authors'-format checkpoint), and an
    offline Hub cache holding in1k weights."""
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    weights = root / "weights.pth"
    torch.save(lk.create_model("unireplknet_a").state_dict(), weights)
    (root / "unireplknet_a_in1k_224_acc77.03.pth").write_bytes(weights.read_bytes())  # the authors' name
    cache = make_cache(root / "hub", {lk.get_pretrained_cfg("unireplknet_a.in1k").hf_hub_filename: weights})
    gen = torch.Generator().manual_seed(1)
    for name in ("cat.jpg", "dog.png"):
        pixels = (torch.rand(48, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / name)
    return root, cache


@pytest.fixture
def in_scratch(scratch, monkeypatch):
    root, cache = scratch
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return root


def test_readme_marks_blocks_to_run():
    assert marked_blocks("bash") and marked_blocks("python")


def test_bash_blocks(in_scratch):
    for block in marked_blocks("bash"):
        for words in commands(block):
            program, *argv = words
            assert Path(program).name == "largekernel", f"README runs {program!r}; only largekernel is tested"
            code, out, err = run_cli(argv)
            assert code == 0, f"README command failed: {' '.join(words)}\n{out}\n{err}"


def test_python_blocks(in_scratch):
    namespace: dict = {}
    for block in marked_blocks("python"):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
