"""Inference: a checkpoint on any GeoTIFF (predict) or on catalog tiles (evaluate)."""
