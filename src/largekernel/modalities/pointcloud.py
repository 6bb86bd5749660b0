"""pointcloud modality (being written)."""
