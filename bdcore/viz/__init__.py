"""Drawing only, no Streamlit (unit-testable): ``maps`` (offline folium maps), ``figures`` (plotly), ``overlays``
(image overlays for Explore and Review) and ``leaflet`` (the static Leaflet assets the maps link). Functions take
arrays and frames already read (by the caller, through the data layer); nothing here opens a file or scores."""
