"""The plug-in contract: what a modality or task gives the engine, and the registry of plug-ins.

A plug-in (a subclass of `Plugin`, registered with `@register_plugin`) supplies the data, the model
around the backbone, the loss, the metrics, the prediction output, an example input for
`reparam`/`export`, and its own options (a dataclass). The engine calls it and imports none: the
built-in plug-ins register when `largekernel.modalities` is imported (the package's `__init__` does
that), other installed packages add theirs through the `largekernel.plugins` entry-point group.
"""
from __future__ import annotations

import dataclasses
import logging
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from ..models.checkpoint import load_checkpoint
from ..models.registry import create_model
from .commands import Command
from .data import DataBundle, Skipped, collate  # noqa: F401  (re-exported for plug-in authors)
from .evaluate import run_evaluation

if TYPE_CHECKING:
    from .config import TrainConfig
    from .inference import Trained

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "largekernel.plugins"


class Metrics(Protocol):
    """A task's metric accumulator: the evaluation loop feeds it every batch, then asks for numbers."""

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch (outputs are float32 on the CPU; V x test-time copies when the plug-in has them)."""

    def compute(self) -> dict:
        """The metrics: numbers, plus lists for per-class or per-variable detail."""


class Plugin:
    """The contract. Subclasses implement `datasets`, `load`, `task_metrics`, `loss` and usually
    `build_model`/`example_input`; the classification task (`engine.classification.Classification`)
    supplies every task method for class-per-sample plug-ins."""

    name: str = ""
    extensions: tuple[str, ...] = ()  # file suffixes `predict` may route to this plug-in
    options: type | None = None  # a dataclass of this plug-in's own options (flat keys in configs)
    metric: str = "loss"  # the validation metric that selects best.safetensors
    higher_is_better: bool = False
    eval_copies: bool = False  # evaluation samples are stacks of V test-time copies (V x input)
    data_generators: tuple[Command, ...] = ()  # `largekernel make-data NAME` (alias `make-NAME`)
    commands: tuple[Command, ...] = ()  # extra subcommands, e.g. audio's `audio-stats`
    predict_arguments: tuple[tuple[tuple, dict], ...] = ()  # `predict` flags, handed on in `options`
    weight_options: tuple[str, ...] = ()  # own options that fetch weights (cleared when a checkpoint is loaded)

    # ---- data ----------------------------------------------------------------------------------
    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train/val datasets of (input, target) and the output names; train=False: the eval set."""
        raise NotImplementedError

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """One evaluation-ready input for `predict`; raises ValueError naming the file if unreadable."""
        raise NotImplementedError

    # ---- model ---------------------------------------------------------------------------------
    def build_model(self, cfg: TrainConfig, num_outputs: int) -> nn.Module:
        """The network: by default a UniRepLKNet from the registry with the config's options."""
        return create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_outputs,
                            in_chans=cfg.in_chans, drop_path_rate=cfg.drop_path,
                            head_init_scale=cfg.head_init_scale, **cfg.model_kwargs)

    def init_weights(self, model: nn.Module, path: str | Path) -> None:
        """Fine-tuning start (`init_checkpoint`): load a weights file into the freshly built model
        (by default the backbone loader, which drops a classifier head whose classes differ)."""
        load_checkpoint(model, path)

    def example_input(self, cfg: TrainConfig, batch: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """A random batch shaped like the model's input (for `reparam` and `export`)."""
        return torch.randn(batch, cfg.in_chans, cfg.input_size, cfg.input_size, generator=generator)

    def input_contract(self, cfg: TrainConfig) -> dict[str, str]:
        """What the exported graph takes: `input` (the tensor) and `preprocessing` (what a caller
        does before it, outside the graph). Written into the exported file's metadata."""
        return dict(input=f"float32 N x {cfg.in_chans} x {cfg.input_size} x {cfg.input_size}",
                    preprocessing="none stated by this plug-in")

    # ---- task ----------------------------------------------------------------------------------
    def prepare_batch(self, x: torch.Tensor, y: torch.Tensor, num_outputs: int, cfg: TrainConfig,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-level augmentation and training targets (default: unchanged)."""
        return x, y

    def loss(self, output: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        raise NotImplementedError

    def task_metrics(self, cfg: TrainConfig, classes: list[str], dataset: Dataset) -> Metrics:
        """A fresh metric accumulator for one evaluation of `dataset`."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset: Dataset, cfg: TrainConfig, classes: list[str],
                 device: torch.device, batch_size: int | None = None) -> dict:
        """Validation metrics: the engine's evaluation loop with this plug-in's accumulator."""
        return run_evaluation(model, dataset, self.task_metrics(cfg, classes, dataset),
                              batch_size or cfg.batch_size, device, cfg.amp, workers=cfg.workers,
                              copies=self.eval_copies)

    def report(self, metrics: dict, classes: list[str], out: Path) -> str:
        """Human-readable text for `largekernel eval`; may write figures next to `eval.json` in `out`."""
        return "".join(f"{k}: {v}\n" for k, v in metrics.items() if isinstance(v, (int, float)))

    def trained_from_file(self, path: Path, model_name: str | None) -> Trained | None:
        """A weights file `largekernel train` did not write but this plug-in recognises (e.g. the
        authors' mmseg segmentation checkpoints), ready for `eval`/`predict`; None: not its kind."""
        return None

    def predict(self, trained: Trained, paths: list[str | Path], topk: int = 5,
                options: dict | None = None) -> list[dict]:
        """One result per file: `top` (label, index, prob), or `error`; a plug-in may instead
        write files and list them under `written` (with a one-line `summary`)."""
        raise NotImplementedError


PLUGINS: dict[str, type[Plugin]] = {}
_entry_points_loaded: set[str] = set()


def register_plugin(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make `cls` available as `modality=<cls.name>`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__}: a plug-in needs a `name`")
    if cls.options is not None and not dataclasses.is_dataclass(cls.options):
        raise TypeError(f"{cls.__qualname__}.options must be a dataclass, got {cls.options!r}")
    PLUGINS[cls.name] = cls
    return cls


def discover_plugins() -> None:
    """Load the `largekernel.plugins` entry points not loaded yet (a module that registers its
    plug-ins, or a `Plugin` subclass). A broken one is logged and skipped."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _entry_points_loaded:
            continue
        _entry_points_loaded.add(key)
        try:
            obj = ep.load()
        except Exception as e:  # a third-party package must not break the CLI
            log.warning("plug-in entry point %s (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if isinstance(obj, type) and issubclass(obj, Plugin) and obj.name not in PLUGINS:
            register_plugin(obj)


def _ensure_discovered() -> None:
    if not _entry_points_loaded:
        _entry_points_loaded.add("")  # scanned once per process; discover_plugins() rescans
        discover_plugins()


def get_plugin(name: str) -> Plugin:
    """A fresh instance of the plug-in registered as `name`."""
    _ensure_discovered()
    if name not in PLUGINS:
        raise ValueError(f"unknown modality {name!r}; available: {', '.join(sorted(PLUGINS))}")
    return PLUGINS[name]()


def plugin_for_file(path: str | Path) -> Plugin:
    """The plug-in that reads files with this extension."""
    _ensure_discovered()
    ext = Path(path).suffix.lower()
    for cls in PLUGINS.values():
        if ext in cls.extensions:
            return cls()
    known = sorted(e for cls in PLUGINS.values() for e in cls.extensions)
    raise ValueError(f"{path}: no modality reads '{ext}' files (known: {', '.join(known)})")


def all_plugins() -> dict[str, type[Plugin]]:
    """Every registered plug-in class by name (entry points included)."""
    _ensure_discovered()
    return dict(PLUGINS)


def plugin_options(name: str) -> Any:
    """The options dataclass of plug-in `name` (None when it declares none)."""
    _ensure_discovered()
    cls = PLUGINS.get(name)
    return None if cls is None else cls.options
