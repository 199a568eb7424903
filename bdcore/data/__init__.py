"""Data layer: SpaceNet products, catalog, pixels, labels, splits, datasets, download, demo."""
