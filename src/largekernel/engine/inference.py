"""Using trained models: load one with its recorded config and classes, predict files."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..layers.reparam import reparameterize
from ..models.checkpoint import (STEP_CKPT, checkpoint_form, load_checkpoint, model_from_checkpoint,
                                 read_metadata, read_state_dict)
from .config import TrainConfig, resolve_config
from .plugin import Plugin, all_plugins, get_plugin, plugin_for_file
from .state import load_training_state

log = logging.getLogger(__name__)


@dataclass
class Trained:
    model: nn.Module
    cfg: TrainConfig
    classes: list[str] | None
    modality: Plugin | None


def load_trained(path: str | Path, model_name: str | None = None, ema: bool = False) -> Trained:
    """A model from a run's `*.safetensors` (weights + recorded config) or a training checkpoint
    `checkpoints/step*.pt` (`ema=True` takes its EMA weights), a file a plug-in recognises
    (`Plugin.trained_from_file`), or an authors'/other weights file (then `model_name` is needed
    and there is no recorded config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if STEP_CKPT.search(path.name):
        state = load_training_state(path)
        cfg = resolve_config(overrides={k: v for k, v in state["config"].items()})
        modality = get_plugin(cfg.modality)
        model = modality.build_model(_no_download(cfg), len(state["classes"]))
        weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
        model.load_state_dict(weights)
        return Trained(model.eval(), cfg, state["classes"], modality)
    meta = read_metadata(path)
    if "train_config" in meta:
        cfg = resolve_config(overrides=json.loads(meta["train_config"]))
        classes = json.loads(meta["classes"])
        modality = get_plugin(cfg.modality)
        model = modality.build_model(_no_download(cfg), len(classes)).eval()
        if checkpoint_form(read_state_dict(path)) == "deploy":
            reparameterize(model, inplace=True)  # a file written by `largekernel reparam`
        load_checkpoint(model, path)
        return Trained(model, cfg, classes, modality)
    for plugin in all_plugins().values():  # a file another tool wrote, in a plug-in's own format
        trained = plugin().trained_from_file(path, model_name)
        if trained is not None:
            return trained
    model = model_from_checkpoint(path, model_name).eval()
    cfg = TrainConfig(model=model_name or meta.get("architecture", "unknown"))
    return Trained(model, cfg, None, None)


def records_training(path: str | Path) -> bool:
    """Whether `path` was written by `largekernel train` (a step checkpoint, or weights whose
    metadata holds the training config): `load_trained` then rebuilds the plug-in's model."""
    path = Path(path)
    return bool(STEP_CKPT.search(path.name)) or "train_config" in read_metadata(path)


def _no_download(cfg: TrainConfig) -> TrainConfig:
    """The config with `pretrained` (and the plug-in's `weight_options`) off: weights come from the
    checkpoint, not the Hub."""
    off = {name: None for name in get_plugin(cfg.modality).weight_options}
    return resolve_config(overrides=dict(cfg.to_dict(), pretrained=False, init_checkpoint=None, **off))


@torch.no_grad()
def predict_files(trained: Trained, paths: list[str | Path], topk: int = 5,
                  load: Callable[[str | Path], torch.Tensor] | None = None) -> list[dict]:
    """Top-k predictions per file; an unreadable file gives an entry with `error` set. `load`
    (path -> one input, ValueError when unreadable) replaces the plug-in's reader, e.g. the
    pretrained weights' own preprocessing. For a modality with test-time copies (`eval_copies`),
    the plug-in's `load` gives the stack of copies and the softmax scores are averaged over them,
    as `eval` does."""
    results = []
    for p in paths:
        modality = trained.modality or plugin_for_file(p)
        try:
            x = load(p) if load is not None else modality.load(p, trained.cfg)
        except ValueError as e:
            log.error("%s", e)
            results.append(dict(path=str(p), error=str(e)))
            continue
        copies = modality.eval_copies and load is None
        probs = trained.model(x if copies else x[None]).float().softmax(-1).mean(0)
        k = min(topk, probs.numel())
        top = probs.topk(k)
        names = trained.classes or [str(i) for i in range(probs.numel())]
        results.append(dict(path=str(p), top=[dict(label=names[i], index=int(i), prob=float(v))
                                               for v, i in zip(top.values, top.indices)]))
    return results
