"""Data layer: SpaceNet products, catalog, pixels, labels, splits, datasets, download, demo.

Each module imports only those listed before it: ``products``; ``imagery`` (GeoTIFF pixels); ``labels`` (polygons,
masks); ``catalog`` (tile table); ``split``; ``cache`` and ``augment``; ``dataset``; ``download`` and ``demo/`` stand
apart (``download`` needs only ``products``). The commands live in ``bdcore.cli.data``.
"""
