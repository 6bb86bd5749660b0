"""Training checkpoints: atomic writes, keep the last N plus the best, and every RNG state.

A training checkpoint holds model, optimizer, grad scaler, EMA, epoch, step, RNG states and the
resolved config, using only tensors and plain containers, so it loads with `weights_only=True`.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..models.checkpoint import STEP_CKPT

log = logging.getLogger(__name__)


def rng_state() -> dict:
    mt = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), python=_py_state_to_tensor(),
                 numpy=dict(keys=torch.from_numpy(mt[1].astype(np.int64)), pos=int(mt[2]),
                            has_gauss=int(mt[3]), gauss=float(mt[4])))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = 3, tuple(int(v) for v in state["python"].tolist()), None
    random.setstate((version, internal, gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_tensor() -> torch.Tensor:
    version, internal, _ = random.getstate()
    return torch.tensor(internal, dtype=torch.int64)


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def step_checkpoints(folder: Path) -> list[Path]:
    """Step checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if STEP_CKPT.search(p.name))


def save_training_state(folder: Path, step: int, state: dict, keep_last: int) -> Path:
    path = folder / f"step{step:08d}.pt"
    atomic_save(state, path)
    for old in step_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    log.debug("checkpoint %s", path)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    found = step_checkpoints(folder)
    return found[-1] if found else None


def load_training_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot resume from {path}: {e}. Delete it to fall back to the "
                         "previous checkpoint, or start a new run directory.") from None


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch, sharded over ranks in blocks of `block` samples, that can
    start part-way through.

    The order is a pure function of (seed, epoch), so a resumed run sees the same batches. Rank r
    takes blocks r, r+W, r+2W, ...: with `block` = the per-rank batch, the W ranks of one step see the
    same groups of samples as W accumulation micro-batches of a single process. The order is padded
    (by repeating it) to whole optimizer steps of W x block x `accum` samples.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 block: int = 1, accum: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.block, self.accum = block, accum
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch`, skipping this rank's first `start` samples."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        stride = self.world * self.block
        whole_steps = stride * self.accum  # pad to whole optimizer steps, so 1 and N ranks agree
        total = -(-self.n // whole_steps) * whole_steps
        order = (order * (total // max(1, self.n) + 1))[:total]  # pad so every rank has as many
        return [order[b + i] for b in range(self.rank * self.block, total, stride)
                for i in range(self.block)]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return len(self.indices()) - self.start


class SeededSamples(torch.utils.data.Dataset):
    """Make each sample's random augmentation a function of (seed, epoch, index) only, so it does
    not depend on worker count, batch order or where a resumed run starts."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.dataset[i]
