"""ImageNet class names for the authors' classifier heads (1000 in1k classes, 21841 in22k classes).

The lists ship as package data (`largekernel/data/`, provenance in its README): index i of a head
is the i-th WordNet synset of the sorted synset list its training set was read from, and its name
is the synset's first lemma ("tench" for n01440764). First lemmas are not unique (ImageNet-1k has
two "crane" and two "maillot" classes); the synset ids are.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from torch import nn

SYNSET_FILES = {1000: "imagenet_synsets.txt", 21841: "imagenet22k_synsets.txt"}
LEMMA_FILE = "imagenet_synset_to_lemma.txt"


def _read(name: str) -> str:
    return (files("largekernel") / "data" / name).read_text(encoding="utf-8")


def _check_count(num_classes: int) -> None:
    if num_classes not in SYNSET_FILES:
        raise ValueError(f"no ImageNet label list has {num_classes} classes; the bundled lists have "
                         "1000 (ImageNet-1k, the in1k and in22k_ft_in1k weights) and 21841 "
                         "(ImageNet-22k, the in22k weights)")


@lru_cache(maxsize=None)
def _synsets(num_classes: int) -> tuple[str, ...]:
    return tuple(_read(SYNSET_FILES[num_classes]).split())


@lru_cache(maxsize=1)
def _lemmas() -> dict[str, str]:
    return dict(line.split("\t", 1) for line in _read(LEMMA_FILE).splitlines() if line)


def imagenet_synsets(num_classes: int = 1000) -> list[str]:
    """WordNet synset ids in head order ("n01440764", ...) for a 1000- or 21841-class head."""
    _check_count(num_classes)
    return list(_synsets(num_classes))


def imagenet_lemmas(num_classes: int = 1000) -> list[str]:
    """Every lemma of each class in head order ("tench, Tinca tinca", ...)."""
    lemmas = _lemmas()
    return [lemmas[s] for s in imagenet_synsets(num_classes)]


def imagenet_names(num_classes: int = 1000) -> list[str]:
    """A short human-readable name per class in head order: the first lemma ("tench", "goldfish", ...)."""
    return [lemma.split(",")[0].strip() for lemma in imagenet_lemmas(num_classes)]


def class_names_for(model: nn.Module) -> list[str] | None:
    """ImageNet names for a registry model whose head has an ImageNet class count, else None.

    The model must carry a `pretrained_cfg` (built by `create_model` or `model_from_checkpoint`);
    its head size (`model.num_classes`) picks the list: 1000 -> ImageNet-1k, 21841 -> ImageNet-22k.
    A head of another size (a model fine-tuned on your classes) has no ImageNet names: None. The
    names describe the outputs only if the weights are the authors' ImageNet weights.
    """
    if getattr(model, "pretrained_cfg", None) is None:
        return None
    num_classes = getattr(model, "num_classes", None)
    return imagenet_names(num_classes) if num_classes in SYNSET_FILES else None
