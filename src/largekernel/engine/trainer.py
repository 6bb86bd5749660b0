"""The training loop: modality-agnostic, resumable to the exact same weights, DDP-aware."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..models.checkpoint import save_checkpoint
from ..precision import set_precision
from .config import TrainConfig
from .data import Skipped, collate
from .ema import ModelEma
from .evaluate import autocast_context
from .optim import build_optimizer, scheduled_lr, set_lr
from .plugin import get_plugin
from .state import (EpochSampler, SeededSamples, latest_checkpoint, load_training_state, rng_state,
                    save_training_state, set_rng_state)

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group `torchrun` describes (gloo on CPU, NCCL on CUDA); 1 process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available; use --device cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False



class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint; the same command resumes."""


class Trainer:
    """Train a model for one modality as described by a `TrainConfig`."""

    def __init__(self, cfg: TrainConfig, resume: str | bool = "auto"):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        self.run_dir = Path(cfg.output)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.modality = get_plugin(cfg.modality)
        data = self.modality.datasets(cfg)
        if data.train is None or len(data.train) == 0:
            raise ValueError("the training set is empty")
        self.classes = data.classes
        cfg.classes = list(self.classes)
        self.train_set = SeededSamples(data.train, cfg.seed)
        self.val_set = data.val
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, True, self.dist.rank,
                                    self.dist.world, block=cfg.batch_size, accum=cfg.accum_steps)
        self.steps_per_epoch = max(1, len(self.sampler) // (cfg.batch_size * cfg.accum_steps))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        if cfg.init_checkpoint:  # a local file replaces the Hub weights: nothing is downloaded
            path = Path(cfg.init_checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--init-checkpoint {path} does not exist (a weights file: "
                                        ".pth, .pt or .safetensors)")
            model = self.modality.build_model(dataclasses.replace(cfg, pretrained=False), len(self.classes))
            self.modality.init_weights(model, path)  # the classifier's head is dropped if classes differ
        else:
            model = self.modality.build_model(cfg, len(self.classes))
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if cfg.sync_bn and self.dist.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if cfg.amp == "bf16":  # an alias of --precision bf16: the per-op policy, not an autocast
            cfg.amp, cfg.precision = None, "bf16"
        set_precision(model, cfg.precision, self.device)
        self.model = model
        self.ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index]
                                                        if self.device.type == "cuda" else None)
                    if self.dist.world > 1 else model)
        global_batch = cfg.batch_size * cfg.accum_steps * self.dist.world
        self.lr = cfg.lr if cfg.lr is not None else cfg.blr * global_batch / 256
        self.optimizer = build_optimizer(model, cfg.opt, self.lr, cfg.weight_decay, cfg.layer_decay,
                                         tuple(cfg.betas))
        autocast_context(cfg.amp, self.device)  # an invalid --amp fails here, before any work
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
        self.epoch, self.step, self.epoch_step = 0, 0, 0
        self.best = dict(metric=-math.inf, epoch=None, path=None)
        self.history: list[dict] = []
        self.skipped: dict[str, str] = {}
        if resume:
            self._resume(resume)

    # ---- checkpoints ---------------------------------------------------------------------------
    def _state(self) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict(),
                    ema=self.ema.module.state_dict() if self.ema else None,
                    epoch=self.epoch, epoch_step=self.epoch_step, step=self.step,
                    best=dict(self.best), history=self.history, rng=rng_state(),
                    config=self.cfg.to_dict(), classes=list(self.classes))

    def _save(self) -> None:
        if self.dist.main:
            save_training_state(self.ckpt_dir, self.step, self._state(), self.cfg.keep_last)

    def _resume(self, resume: str | bool) -> None:
        path = latest_checkpoint(self.ckpt_dir) if resume in (True, "auto") else Path(resume)
        if path is None:
            if resume is True:
                raise ValueError(f"--resume: no checkpoint in {self.ckpt_dir}")
            return
        state = load_training_state(path)
        if state["classes"] != list(self.classes):
            raise ValueError(f"cannot resume from {path}: it was trained on classes "
                             f"{state['classes'][:5]}..., the data now has {self.classes[:5]}...")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch, self.epoch_step, self.step = state["epoch"], state["epoch_step"], state["step"]
        self.best, self.history = dict(state["best"]), list(state["history"])
        set_rng_state(state["rng"])
        log.info("resumed from %s: epoch %d, step %d", path, self.epoch, self.step)

    def _write_weights(self, name: str, model: nn.Module) -> Path:
        meta = dict(train_config=json.dumps(self.cfg.to_dict()), classes=json.dumps(self.classes),
                    modality=self.cfg.modality)
        return save_checkpoint(model, self.run_dir / name, metadata=meta)

    # ---- loop ----------------------------------------------------------------------------------
    def _loader(self, start: int) -> DataLoader:
        self.sampler.set_epoch(self.epoch, start)
        self.train_set.epoch = self.epoch
        # an explicit generator: creating the loader must not draw from the global RNG, whose state
        # (drop path) is saved in checkpoints
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.workers, collate_fn=collate, drop_last=True,
                          generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch))

    def _log(self, record: dict) -> None:
        if not self.dist.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tensorboard.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def _count_skips(self, skipped) -> None:
        for s in skipped:
            if s.path not in self.skipped:
                self.skipped[s.path] = s.reason
                log.warning("skipped unreadable sample %s: %s", s.path, s.reason)

    def fit(self) -> dict:
        cfg = self.cfg
        self.tensorboard = None
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            self.tensorboard = _tensorboard_writer(self.run_dir / "tensorboard")
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        global_batch = cfg.batch_size * cfg.accum_steps * self.dist.world
        if self.dist.main:
            log.info("recipe: %s", recipe_line(cfg, self.lr, global_batch))
        gen = torch.Generator()
        start_time, self.seen = time.perf_counter(), 0
        progress = _progress(self.total_steps, self.step, enabled=self.dist.main)
        stop = []
        handlers = {sig: signal.signal(sig, lambda *_: stop.append(True))
                    for sig in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        try:
            self._train_loop(progress, stop, warmup, gen, start_time)
        finally:
            progress.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return self._finish(time.perf_counter() - start_time, self.seen)

    def _train_loop(self, progress, stop: list, warmup: int, gen: torch.Generator,
                    start_time: float) -> None:
        cfg = self.cfg
        while self.epoch < cfg.epochs and self.step < self.total_steps:
            self.ddp.train()
            micro = 0
            for batch in self._loader(self.epoch_step * cfg.batch_size * cfg.accum_steps):
                self._count_skips(batch["skipped"])
                if batch["x"] is None:
                    continue
                x, y = batch["x"].to(self.device), batch["y"].to(self.device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                gen.manual_seed(cfg.seed * 7919 + self.step * cfg.accum_steps + micro)
                x, target = self.modality.prepare_batch(x, y, len(self.classes), cfg, gen)
                sync = (micro + 1) == cfg.accum_steps
                ctx = self.ddp.no_sync() if (self.dist.world > 1 and not sync) else nullcontext()
                with ctx, autocast_context(cfg.amp, self.device):
                    loss = self.modality.loss(self.ddp(x), target, cfg)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower the "
                                             "learning rate or enable --clip-grad")
                with ctx:
                    self.scaler.scale(loss / cfg.accum_steps).backward()
                micro += 1
                self.seen += x.shape[0] * self.dist.world
                if not sync:
                    continue
                micro = 0
                lr = scheduled_lr(self.step, self.total_steps, self.steps_per_epoch, self.lr, cfg.min_lr,
                                  warmup, cfg.warmup_lr, cfg.sched, cfg.lr_decay, cfg.lr_decay_start,
                                  cfg.poly_power)
                set_lr(self.optimizer, lr)
                if cfg.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema:
                    self.ema.update(self.model)
                self.step += 1
                self.epoch_step += 1
                rate = self.seen / (time.perf_counter() - start_time)
                progress.update(epoch=self.epoch, loss=loss.item(), lr=lr, rate=rate)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._log(dict(kind="step", step=self.step, epoch=self.epoch, loss=loss.item(),
                                   lr=lr, samples_per_s=rate))
                if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                    self._save()
                if stop:
                    self._save()
                    raise Interrupted(f"interrupted at step {self.step}; checkpoint written to "
                                      f"{self.ckpt_dir}; run the same command again to resume")
                if self.step >= self.total_steps or self.epoch_step >= self.steps_per_epoch:
                    break
            self.epoch += 1
            self.epoch_step = 0
            self._end_epoch()

    def _end_epoch(self) -> None:
        record = dict(kind="epoch", epoch=self.epoch, step=self.step)
        if self.val_set is not None and len(self.val_set) and (
                self.epoch % self.cfg.eval_every == 0 or self.epoch >= self.cfg.epochs):
            metrics = self.evaluate(self.model)
            self._count_skips([Skipped(d["path"], d["reason"]) for d in metrics["skipped"]])
            record.update({f"val_{k}": v for k, v in metrics.items() if not isinstance(v, list)})
            if self.ema:
                ema_metrics = self.evaluate(self.ema.module)
                record.update({f"ema_{k}": v for k, v in ema_metrics.items() if not isinstance(v, list)})
            # the best is kept as a score to maximise: the metric, negated when lower is better
            sign = 1.0 if self.modality.higher_is_better else -1.0
            name = self.modality.metric
            plain = sign * record[f"val_{name}"]
            averaged = sign * record[f"ema_{name}"] if self.ema else -math.inf
            score = max(plain, averaged)
            if score > self.best["metric"] and self.dist.main:
                path = self._write_weights("best.safetensors",
                                           self.ema.module if averaged > plain else self.model)
                self.best = dict(metric=score, epoch=self.epoch, path=str(path))
            log.info("epoch %d: val %s %.4g, loss %.4f", self.epoch, name, record[f"val_{name}"],
                     record["val_loss"])
        self.history.append(record)
        self._log(record)
        self._save()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        return self.modality.evaluate(model, self.val_set, self.cfg, self.classes, self.device)

    def _best_value(self) -> float | None:
        if self.best["epoch"] is None:
            return None
        return self.best["metric"] if self.modality.higher_is_better else -self.best["metric"]

    def _finish(self, seconds: float, seen: int) -> dict:
        summary = dict(rank=self.dist.rank, run_dir=str(self.run_dir), epochs=self.epoch, steps=self.step,
                       seconds=seconds, samples_per_s=seen / seconds if seconds else 0.0,
                       metric=self.modality.metric, best_metric=self._best_value(),
                       best_epoch=self.best["epoch"], skipped=len(self.skipped),
                       checkpoints=str(self.ckpt_dir))
        if self.dist.main:
            summary["final"] = str(self._write_weights("last.safetensors", self.model))
            summary["best"] = self.best["path"] or summary["final"]
            if self.skipped:
                (self.run_dir / "skipped.txt").write_text(
                    "".join(f"{p}\t{r}\n" for p, r in sorted(self.skipped.items())))
            try:
                from .plots import plot_run
                summary["plots"] = [str(p) for p in plot_run(self.run_dir)]
            except ImportError:
                log.info("matplotlib not installed: no plots")
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def recipe_line(cfg: TrainConfig, lr: float, global_batch: int) -> str:
    """The resolved settings a newcomer checks first (start weights, schedule, augmentation), one line."""
    start = (f"weights {cfg.init_checkpoint}" if cfg.init_checkpoint else
             f"pretrained {cfg.model}" if cfg.pretrained else "random init")
    how = "" if cfg.lr is not None else f" (blr {cfg.blr:.3g} x {global_batch}/256)"
    return (f"{cfg.model} from {start}; {cfg.epochs} epochs, {cfg.warmup_epochs:g} warm-up, "
            f"lr {lr:.3g}{how}, batch {global_batch}, {cfg.sched}; randaug {cfg.randaug}, "
            f"reprob {cfg.reprob:g}, mixup {cfg.mixup:g}, cutmix {cfg.cutmix:g}, "
            f"drop_path {cfg.drop_path:g}, layer_decay {cfg.layer_decay}")


def _tensorboard_writer(folder: Path):
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(folder))


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


class _progress:
    """A tqdm bar with loss, lr, throughput and ETA (no-op when tqdm is missing or not rank 0)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                                disable=None)
            except ImportError:
                pass

    def update(self, epoch: int, loss: float, lr: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                 img_s=f"{rate:.1f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
