"""timeseries modality (being written)."""
