"""video modality (being written)."""
