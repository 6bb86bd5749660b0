"""Modalities: each turns one kind of file into the backbone's B x C' x H x W input."""
from .base import (DataBundle, Modality, Skipped, collate, get_modality, modality_for_file,
                   register_modality)

__all__ = ["DataBundle", "Modality", "Skipped", "collate", "get_modality", "modality_for_file",
           "register_modality"]
