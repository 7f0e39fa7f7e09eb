"""Helpers shared by the ml_collections files under `configs/`."""
