"""audio modality (being written)."""
