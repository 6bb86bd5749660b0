"""Resolving pretrained weights: a local file, or the Hugging Face Hub (honouring its cache)."""
from __future__ import annotations

import logging
from pathlib import Path

from .weights import PretrainedCfg

log = logging.getLogger(__name__)


class PretrainedNotAvailable(RuntimeError):
    """The weights of a pretrained tag could not be found locally or downloaded."""


def resolve_pretrained_file(cfg: PretrainedCfg, cache_dir: str | Path | None = None) -> Path:
    """Path of the weights for `cfg`: its `file` if set, else the Hub file (cache first).

    huggingface_hub handles the cache and offline mode (HF_HUB_OFFLINE=1 or HF_HUB_CACHE / HF_HOME
    for the location): a file already cached is used without any network access.
    """
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise PretrainedNotAvailable(f"pretrained file {path} for {cfg.architecture} does not exist")
        return path
    if not (cfg.hf_hub_id and cfg.hf_hub_filename):
        raise PretrainedNotAvailable(f"{cfg.architecture}.{cfg.tag} has no pretrained weights")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename,
                               cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as e:  # connection, offline-mode, missing-entry and auth errors alike
        raise PretrainedNotAvailable(
            f"could not get {cfg.hf_hub_filename} for {cfg.architecture}.{cfg.tag} from the Hugging "
            f"Face Hub repo {cfg.hf_hub_id} or its local cache ({type(e).__name__}: {e}). "
            "Without network access, copy the file here and pass checkpoint_path=PATH "
            "(CLI: --checkpoint PATH), or put it in the Hub cache."
        ) from None
    log.info("pretrained weights for %s.%s: %s", cfg.architecture, cfg.tag, path)
    return Path(path)
