"""Metrics layer: masks to polygons and SpaceNet scoring (below the engine: validation uses them)."""
