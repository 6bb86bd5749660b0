"""Shared file handling of the file-based plug-ins: class-per-folder and CSV scanning, the stratified
split, and the train / validation / evaluation skeleton of `Plugin.datasets`.

A plug-in describes its layout with a `Reader` (path, part, classes, source) -> (samples, classes,
has_parts) and its samples with a `make(samples, classes, part)` dataset factory; `file_datasets`
does the rest, so every plug-in answers `train`, `val`, `val_split` and eval-only the same way.
"""
from __future__ import annotations

import csv
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from ..engine.config import TrainConfig
from ..engine.data import DataBundle

CSV_HEADER_NAMES = {"path", "file", "filename", "filepath", "image", "img", "video", "clip", "audio"}
Sample = tuple[str, int]
# (path, part "train" | "val" | "test", classes or None, where a fixed class list came from)
#   -> (samples, classes, has_parts: the layout itself names its validation/test part)
Reader = Callable[[str | Path, str, "list[str] | None", str], tuple[list[Sample], list[str], bool]]


@contextmanager
def one_thread():
    """Run per-sample work on one intra-op thread: on small tensors a thread pool costs more than
    it saves (training transform at 32 px: 27 ms with 2 threads vs 3 ms with 1, on 2 busy cores)."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def check_classes(found: list[str], classes: list[str], where: str, source: str) -> None:
    extra = [c for c in found if c not in classes]
    if extra:
        raise ValueError(f"{where}: class(es) {extra} are not in {source} {classes}; "
                         f"remove them or fix the class list")


def scan_folder(root: Path, classes: list[str] | None, source: str, extensions: tuple[str, ...],
                kind: str = "files", example: str = "<file>",
                skip: tuple[str, ...] = (".",)) -> tuple[list[Sample], list[str]]:
    """root/<class>/**/<file> -> samples and classes (sorted folder names unless given); files with
    `extensions` count, folders whose name starts with one of `skip` are not classes. `kind` and
    `example` word the errors (e.g. "videos", "<clip>.mp4")."""
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(skip))
    if not dirs:
        raise ValueError(f"{root}: no {kind} found; expected one subfolder per class "
                         f"({root}/<class_name>/{example}) or a CSV of path,label")
    found = [d.name for d in dirs]
    if classes is None:
        classes = found
    else:
        check_classes(found, classes, str(root), source)
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for d in dirs:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in extensions and p.is_file()
                       and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{d}: class folder has no {kind} ({' '.join(extensions)}); "
                             f"add {kind} or remove the folder")
        samples += [(str(p), index[d.name]) for p in files]
    return samples, classes


def read_csv(path: Path, classes: list[str] | None, source: str,
             kind: str = "files") -> tuple[list[Sample], list[str]]:
    """A CSV of path,label (optional header; relative paths against the CSV's folder)."""
    rows: list[tuple[int, str, str]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}, line {line}: expected 2 columns 'path,label', got {row}")
            p, label = row[0].strip(), row[1].strip()
            if not rows and line == 1 and p.lower() in CSV_HEADER_NAMES:
                continue  # header
            rows.append((line, p, label))
    if not rows:
        raise ValueError(f"{path}: the CSV lists no {kind}; expected lines of path,label")
    if classes is None:
        classes = sorted({label for _, _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    missing = []
    for line, p, label in rows:
        if label not in index:
            raise ValueError(f"{path}, line {line}: label {label!r} is not in {source} {classes}; "
                             f"fix the label or the class list")
        file = Path(p) if Path(p).is_absolute() else path.parent / p
        if not file.is_file():
            missing.append((line, file))
        samples.append((str(file), index[label]))
    if missing:
        line, file = missing[0]
        raise ValueError(f"{path}, line {line}: file {file} does not exist ({len(missing)} missing "
                         f"file(s) in all); relative paths are resolved against the CSV's folder")
    return samples, classes


def load_samples(path: str | Path, classes: list[str] | None, source: str,
                 extensions: tuple[str, ...], kind: str = "files",
                 example: str = "<file>") -> tuple[list[Sample], list[str]]:
    """A folder or a CSV -> (samples, classes); `source` names where a fixed class list came from."""
    p = Path(path)
    if p.is_dir():
        return scan_folder(p, classes, source, extensions, kind, example)
    if p.is_file():
        return read_csv(p, classes, source, kind)
    raise ValueError(f"{p} does not exist; pass a folder with one subfolder per class or a CSV "
                     f"of path,label")


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out round(fraction * n) of each class (at least 1 when a class has 2+ samples)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_split={fraction} must be in [0, 1)")
    if fraction == 0:
        return samples, []
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in sorted(by_class):
        items = by_class[c]
        n_val = min(max(round(fraction * len(items)), 1), len(items) - 1)
        order = torch.randperm(len(items), generator=g).tolist()
        val += [items[i] for i in sorted(order[:n_val])]
        train += [items[i] for i in sorted(order[n_val:])]
    return train, val


def folder_or_csv(extensions: tuple[str, ...], kind: str, example: str) -> Reader:
    """The Reader of the plain layouts: a class-per-folder tree or a CSV of path,label (no parts)."""
    def read(path: str | Path, part: str, classes: list[str] | None, source: str):
        return (*load_samples(path, classes, source, extensions, kind, example), False)
    return read


def split_samples(cfg: TrainConfig, read: Reader, train_hint: str
                  ) -> tuple[list[Sample], list[Sample], list[str]]:
    """(train, val, classes): `val` given, else the layout's own validation part, else a stratified
    split of `train` by `val_split`."""
    if not cfg.train:
        raise ValueError(f"no training data: set train=PATH ({train_hint})")
    samples, classes, has_parts = read(cfg.train, "train", cfg.classes, "the configured classes")
    if cfg.val:
        val = read(cfg.val, "val", classes, "the training classes")[0]
    elif has_parts:
        val = read(cfg.train, "val", classes, "the training classes")[0]
    else:
        samples, val = stratified_split(samples, cfg.val_split, cfg.seed)
    return samples, val, classes


def file_datasets(cfg: TrainConfig, train: bool, read: Reader,
                  make: Callable[[list[Sample], list[str], str], Dataset],
                  train_hint: str, eval_hint: str) -> DataBundle:
    """Train + val datasets (`split_samples`); with train=False only the evaluation set, the
    "test" part of `val` (or of `train`) with the checkpoint's classes."""
    if not train:
        path = cfg.val or cfg.train
        if not path:
            raise ValueError(f"no data to evaluate: pass {eval_hint} (val=PATH)")
        samples, classes, _ = read(path, "test", cfg.classes, "the checkpoint's classes")
        return DataBundle(None, make(samples, classes, "test"), classes)
    samples, val, classes = split_samples(cfg, read, train_hint)
    return DataBundle(make(samples, classes, "train"), make(val, classes, "val") if val else None,
                      classes)
