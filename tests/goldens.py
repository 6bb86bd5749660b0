"""Golden checkpoints made with the authors' code, and the outputs their code gives.

`tiny` (tests/fixtures/authors/, in the repository: depths 1,1,2,1, dims 16..128, 3x3 and K=13/K=7
blocks, 10 classes) is always there; `official` (UniRepLKNet-A, 1000 classes, ../shared/fixtures/official)
only where the project's shared folder sits beside the repository, as in CI.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import largekernel as lk

TOL = 1e-5  # absolute, logits of magnitude ~1 (both fixture sets' README)
OFFICIAL = Path(os.environ.get("LARGEKERNEL_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"))


@dataclass(frozen=True)
class Golden:
    name: str
    folder: Path
    prefix: str
    num_classes: int
    layout: dict = field(default_factory=dict)  # depths/dims/kernel_sizes of a custom architecture

    def file(self, kind: str) -> Path:
        """`train.pth`, `deploy.pth`, `io.pt`, `backbone_mmseg.pth` or `backbone_io.pt`."""
        path = self.folder / f"{self.prefix}_{kind}"
        assert path.is_file(), f"golden fixture {path} is missing"
        return path

    def load(self, kind: str) -> dict:
        return torch.load(self.file(kind), map_location="cpu", weights_only=True)

    def create(self, **kwargs) -> lk.UniRepLKNet:
        """`create_model("unireplknet_a", ...)` with this set's architecture and class count."""
        return lk.create_model("unireplknet_a", **{**self.layout, "num_classes": self.num_classes, **kwargs})


TINY = Golden("tiny", Path(__file__).resolve().parent / "fixtures" / "authors", "tiny", 10,
              dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), kernel_sizes=((3,), (13,), (13, 3), (7,))))
OFFICIAL_A = Golden("official", OFFICIAL, "unireplknet_a", 1000)
GOLDENS = {"tiny": TINY, "official": OFFICIAL_A}
# fixture params: the official set carries the `shared` marker (CI runs it with ../shared beside the repo)
GOLDEN_PARAMS = [pytest.param("official", marks=pytest.mark.shared), "tiny"]


def golden_param(request) -> Golden:
    """For a fixture parametrized over GOLDENS: the set, or a skip saying why the official one is absent."""
    golden = GOLDENS[request.param]
    if not golden.folder.is_dir():
        pytest.skip(f"{golden.folder} is absent (a clone of the repository alone): the same checks ran "
                    "on the tiny fixtures in tests/fixtures/authors; CI runs both")
    return golden
