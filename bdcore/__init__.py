"""bdcore: building-footprint segmentation on SpaceNet imagery (library behind the Streamlit workbench)."""

__version__ = "0.1.0"
