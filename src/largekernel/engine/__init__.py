"""The modality-agnostic training engine."""
