"""UniRepLKNet models, their registry, checkpoints and hub loading."""
