"""Resolving pretrained weights: a local file, or the Hugging Face Hub (honouring its cache)."""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

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
    from huggingface_hub import constants, hf_hub_download

    def unavailable(why: str) -> PretrainedNotAvailable:
        return PretrainedNotAvailable(
            f"could not get {cfg.hf_hub_filename} for {cfg.architecture}.{cfg.tag} from the Hugging "
            f"Face Hub repo {cfg.hf_hub_id} or its local cache ({why}). Without network access, copy "
            "the file here and pass it: checkpoint_path=PATH in Python; on the command line "
            "--checkpoint PATH --model NAME (predict, eval), SOURCE --model NAME (export), "
            "--init-checkpoint PATH (train); or put it in the Hub cache (HF_HUB_CACHE)."
        )

    cache = str(cache_dir) if cache_dir else None
    try:  # the cache first: no network access at all when the file is there
        path = hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename, cache_dir=cache, local_files_only=True)
    except Exception:
        if constants.HF_HUB_OFFLINE:
            raise unavailable("HF_HUB_OFFLINE is set and the file is not in the cache") from None
        reason = hub_unreachable(constants.ENDPOINT)
        if reason:  # fail at once rather than after huggingface_hub's retries
            raise unavailable(reason) from None
        try:
            path = hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename, cache_dir=cache)
        except Exception as e:  # connection, missing-entry and auth errors alike
            raise unavailable(f"{type(e).__name__}: {e}") from None
    log.info("pretrained weights for %s.%s: %s", cfg.architecture, cfg.tag, path)
    return Path(path)


def hub_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why the Hub's host cannot be reached (name lookup or TCP connect within `timeout` s), or None."""
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{endpoint} cannot be reached: {e}"
    return None
